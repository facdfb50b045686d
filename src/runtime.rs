//! Starting and stopping everything: binds the listener, connects the named
//! clients, builds each probe's injector and catch side, runs one inject task
//! per probe and one catch task per subscription, and shuts down in order
//! (stop injecting, let in-flight canaries resolve, stop catching).

use crate::canary::Signer;
use crate::config::{Catch, Config, Connection, Inject};
use crate::probe::{Links, Probe};
use crate::server::{self, AppState};
use crate::transport::{http::HttpInjector, nats, Injector};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How to start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Listen here instead of the configured address (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Stop injecting after this many canaries per probe.
    pub count: Option<u64>,
    /// Stop injecting after this long.
    pub duration: Option<Duration>,
    /// Fail when a broker cannot be reached at start (`check`), instead of
    /// retrying in the background (`run`).
    pub fail_fast: bool,
}

/// Why chirp could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection `{name}`: {source}")]
    Connect {
        name: String,
        source: nats::ConnectError,
    },
    #[error("probe `{probe}`: cannot subscribe to `{subject}`: {source}")]
    Subscribe {
        probe: String,
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("probe `{probe}`: {source}")]
    Http {
        probe: String,
        source: crate::transport::http::BuildError,
    },
}

impl StartError {
    /// Whether the failure is a target that could not be reached (exit 3), as
    /// opposed to a local problem.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StartError::Connect { .. } | StartError::Subscribe { .. }
        )
    }
}

/// A running chirp.
pub struct Runtime {
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    pub probes: Vec<Arc<Probe>>,
    pub run_id: u64,
    inject_stop: CancellationToken,
    catch_stop: CancellationToken,
    server_stop: CancellationToken,
    injects: JoinSet<()>,
    others: JoinSet<()>,
}

impl Runtime {
    pub async fn start(config: &Config, opts: Options) -> Result<Runtime, StartError> {
        let addr = opts.listen.unwrap_or(config.listen);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let run_id: u64 = rand::random();

        let mut clients: HashMap<String, async_nats::Client> = HashMap::new();
        for (name, conn) in &config.connections {
            let used = config.probes.iter().any(|p| {
                matches!(&p.inject, Inject::Nats(n) if &n.connection == name)
                    || matches!(&p.catch, Catch::Nats(n) if &n.connection == name)
            });
            if !used {
                continue;
            }
            let Connection::Nats(nc) = conn;
            let client = nats::connect(name, nc, !opts.fail_fast)
                .await
                .map_err(|source| StartError::Connect {
                    name: name.clone(),
                    source,
                })?;
            clients.insert(name.clone(), client);
        }

        let signer = Signer::new(config.signing_key.expose().as_bytes());
        let base_url = format!("http://{}", loopback(addr));
        let start = Instant::now();
        let n = config.probes.len().max(1) as u32;
        let inject_stop = CancellationToken::new();
        let catch_stop = CancellationToken::new();
        let server_stop = CancellationToken::new();
        let mut probes = Vec::new();
        let mut others = JoinSet::new();
        let mut injectors = Vec::new();
        for pc in &config.probes {
            let hook_signer = match &pc.catch {
                Catch::Http(h) => h
                    .secret
                    .as_ref()
                    .map(|s| Signer::new(s.expose().as_bytes()))
                    .unwrap_or_else(|| signer.clone()),
                Catch::Nats(_) => signer.clone(),
            };
            let probe = Arc::new(Probe::new(
                pc.clone(),
                run_id,
                signer.clone(),
                hook_signer,
                start,
            ));
            let injector = match &pc.inject {
                Inject::Nats(ni) => Injector::Nats(nats::NatsInjector::new(
                    clients[&ni.connection].clone(),
                    ni.subject.clone(),
                    ni.headers.clone(),
                )),
                Inject::Http(hi) => {
                    Injector::Http(HttpInjector::new(hi, &base_url, signer.clone()).map_err(
                        |source| StartError::Http {
                            probe: pc.name.clone(),
                            source,
                        },
                    )?)
                }
            };
            let injector = Arc::new(injector);
            let catch_client = match &pc.catch {
                Catch::Nats(nc) => {
                    let client = clients[&nc.connection].clone();
                    let sub = nats::subscribe(&client, &nc.subject, nc.queue_group.as_deref())
                        .await
                        .map_err(|source| StartError::Subscribe {
                            probe: pc.name.clone(),
                            subject: nc.subject.clone(),
                            source,
                        })?;
                    others.spawn(nats::catch_loop(
                        sub,
                        Arc::clone(&probe),
                        catch_stop.clone(),
                    ));
                    Some(client)
                }
                Catch::Http(_) => None,
            };
            probe.set_links(Links {
                injector: Arc::clone(&injector),
                catch: catch_client,
            });
            injectors.push(injector);
            probes.push(probe);
        }

        let state = AppState::new(
            config.environment.clone(),
            config.prometheus,
            probes.clone(),
        );
        let app = server::router(state);
        let stop = server_stop.clone();
        others.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "The HTTP listener failed.");
            }
        });

        let mut injects = JoinSet::new();
        for (i, (probe, injector)) in probes.iter().zip(injectors).enumerate() {
            // Spread probes over their interval so they do not all send at once.
            let phase = probe.config.interval * i as u32 / n;
            injects.spawn(Arc::clone(probe).inject_loop(
                injector,
                inject_stop.clone(),
                phase,
                opts.count,
                opts.duration,
            ));
        }
        Ok(Runtime {
            addr,
            probes,
            run_id,
            inject_stop,
            catch_stop,
            server_stop,
            injects,
            others,
        })
    }

    /// Waits until every probe's catch side listens and its schedule has started.
    pub async fn ready(&self) {
        for p in &self.probes {
            p.ready().await;
        }
    }

    /// Waits until every inject loop has ended (its count or duration reached).
    pub async fn injection_done(&mut self) {
        while self.injects.join_next().await.is_some() {}
    }

    /// Stops sending new canaries.
    pub fn stop_injecting(&self) {
        self.inject_stop.cancel();
    }

    /// Waits until no canary is in flight, declaring expired ones lost, for
    /// at most `grace`. Returns how many were still in flight.
    pub async fn drain(&mut self, grace: Duration) -> u64 {
        self.stop_injecting();
        self.injection_done().await;
        let give_up = Instant::now() + grace;
        loop {
            let now = Instant::now();
            let in_flight: u64 = self
                .probes
                .iter()
                .map(|p| {
                    let mut l = p.ledger();
                    l.expire(now);
                    l.counts().in_flight
                })
                .sum();
            if in_flight == 0 || now >= give_up {
                return in_flight;
            }
            // Re-check often: catches resolve canaries at any moment, and the
            // earliest deadline bounds the wait for the rest.
            let next = self
                .probes
                .iter()
                .filter_map(|p| p.ledger().next_expiry())
                .min()
                .unwrap_or(give_up)
                .min(give_up)
                .min(now + Duration::from_millis(10));
            tokio::time::sleep_until(next).await;
        }
    }

    /// Stops everything: injecting, catching, the listener.
    pub async fn shutdown(mut self) {
        self.inject_stop.cancel();
        self.injection_done().await;
        self.catch_stop.cancel();
        self.server_stop.cancel();
        let wait = async { while self.others.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("Some tasks did not stop within 5s; exiting anyway.");
            self.others.abort_all();
        }
    }
}

/// Our own listener as a client reaches it: a wildcard address becomes loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}
