//! Starting and stopping everything: binds the listener, connects the named
//! clients, builds each probe's injector and catch side, runs one inject task
//! per probe and one catch task per subscription, and shuts down in order
//! (stop injecting, let in-flight canaries resolve, stop catching).

use crate::canary::Signer;
use crate::config::{Catch, Config, Connection, Inject, KafkaInject, Partitions};
use crate::otlp::Telemetry;
use crate::probe::{CatchLink, Links, Probe};
use crate::server::{self, AppState};
use crate::transport::{http::HttpInjector, kafka, nats, Injector};
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
    Kafka {
        probe: String,
        source: kafka::KafkaSetupError,
    },
    #[error("connection `{name}`: {source}")]
    KafkaConnection {
        name: String,
        source: kafka::KafkaSetupError,
    },
    #[error("probe `{probe}`: {source}")]
    Http {
        probe: String,
        source: crate::transport::http::BuildError,
    },
    #[error("export.otlp: {0}")]
    Otlp(#[from] crate::otlp::export::ExportSetupError),
}

impl StartError {
    /// Whether the failure is a target that could not be reached (exit 3), as
    /// opposed to a local problem.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StartError::Connect { .. }
                | StartError::Subscribe { .. }
                | StartError::Kafka {
                    source: kafka::KafkaSetupError::Metadata { .. }
                        | kafka::KafkaSetupError::NoTopic(_),
                    ..
                }
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
    /// Embedded Kafka test clusters; stopped last.
    embedded: Vec<kafka::Embedded>,
    kafka_health: Vec<Arc<kafka::Health>>,
    /// OTLP exporters; flushed and stopped last.
    telemetry: Option<Telemetry>,
}

/// A Kafka connection's shared parts.
struct KafkaConn {
    base: rdkafka::ClientConfig,
    health: Arc<kafka::Health>,
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
            let Connection::Nats(nc) = conn else { continue };
            if !used {
                continue;
            }
            let client = nats::connect(name, nc, !opts.fail_fast)
                .await
                .map_err(|source| StartError::Connect {
                    name: name.clone(),
                    source,
                })?;
            clients.insert(name.clone(), client);
        }

        let mut embedded = Vec::new();
        let mut kafka_conns: HashMap<String, KafkaConn> = HashMap::new();
        for (name, conn) in &config.connections {
            let Connection::Kafka(kc) = conn else {
                continue;
            };
            let mut topics: Vec<String> = Vec::new();
            for p in &config.probes {
                if let Inject::Kafka(k) = &p.inject {
                    if &k.connection == name {
                        topics.push(k.topic.clone());
                    }
                }
                if let Catch::Kafka(k) = &p.catch {
                    if &k.connection == name {
                        topics.push(k.topic.clone());
                    }
                }
            }
            if topics.is_empty() {
                continue;
            }
            topics.sort();
            topics.dedup();
            let mut cluster = None;
            if kc.brokers == crate::config::KafkaBrokers::Embedded {
                let e = kafka::Embedded::start(topics).map_err(|source| {
                    StartError::KafkaConnection {
                        name: name.clone(),
                        source,
                    }
                })?;
                tracing::info!(
                    connection = %name,
                    bootstrap = %e.bootstrap,
                    "Started the embedded Kafka test cluster (librdkafka's mock cluster inside chirp, not a Kafka broker)."
                );
                cluster = Some(e);
            }
            let base = kafka::client_config(kc, kafka::bootstrap(kc, cluster.as_ref()));
            embedded.extend(cluster);
            kafka_conns.insert(
                name.clone(),
                KafkaConn {
                    base,
                    health: kafka::Health::new(name),
                },
            );
        }
        type ProducerKey = (String, String, u128);
        let mut producers: HashMap<ProducerKey, rdkafka::producer::FutureProducer<kafka::Context>> =
            HashMap::new();

        let signer = Signer::new(config.signing_key.expose().as_bytes());
        let base_url = format!("http://{}", loopback(addr));
        let n = config.probes.len().max(1) as u32;
        let inject_stop = CancellationToken::new();
        let catch_stop = CancellationToken::new();
        let server_stop = CancellationToken::new();
        // After the connections, so a broker that cannot be reached does not
        // leave exporters to stop.
        let mut telemetry = match &config.otlp {
            Some(c) => Some(Telemetry::start(c, &config.environment)?),
            None => None,
        };
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
                Catch::Nats(_) | Catch::Kafka(_) => signer.clone(),
            };
            let kafka_err = |source| StartError::Kafka {
                probe: pc.name.clone(),
                source,
            };
            let injector = match &pc.inject {
                Inject::Kafka(ki) => {
                    let conn = &kafka_conns[&ki.connection];
                    let key = (
                        ki.connection.clone(),
                        ki.acks.clone(),
                        pc.publish_timeout.as_millis(),
                    );
                    let producer = match producers.get(&key) {
                        Some(p) => p.clone(),
                        None => {
                            let p = kafka::producer(
                                &conn.base,
                                Arc::clone(&conn.health),
                                &ki.acks,
                                pc.publish_timeout,
                            )
                            .map_err(kafka_err)?;
                            producers.insert(key, p.clone());
                            p
                        }
                    };
                    let recipe = kafka::ProducerRecipe {
                        base: conn.base.clone(),
                        acks: ki.acks.clone(),
                        timeout: pc.publish_timeout,
                    };
                    Injector::Kafka(kafka::KafkaInjector::new(
                        producer,
                        recipe,
                        ki.topic.clone(),
                        ki.headers.clone(),
                        Arc::clone(&conn.health),
                    ))
                }
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
            let partitions = match &pc.inject {
                Inject::Kafka(KafkaInject {
                    partitions: Some(Partitions::List(l)),
                    ..
                }) => Some(l.clone()),
                Inject::Kafka(KafkaInject {
                    partitions: Some(Partitions::All),
                    ..
                }) => match inject_partitions(&injector).await {
                    Ok(ps) => Some(ps),
                    Err(e) if opts.fail_fast => return Err(kafka_err(e)),
                    Err(e) => {
                        tracing::warn!(probe = %pc.name, error = %e, "Cannot read the inject topic's partitions yet; retrying.");
                        Some(Vec::new())
                    }
                },
                _ => None,
            };
            let probe = Arc::new(Probe::new(
                pc.clone(),
                run_id,
                signer.clone(),
                hook_signer,
                partitions.as_deref(),
            ));
            if let Some(t) = &telemetry {
                probe.set_telemetry(t.probe(pc));
            }
            if let Inject::Kafka(KafkaInject {
                partitions: Some(Partitions::All),
                ..
            }) = &pc.inject
            {
                others.spawn(watch_partitions(
                    Arc::clone(&probe),
                    Arc::clone(&injector),
                    catch_stop.clone(),
                ));
            }
            let catch_link = match &pc.catch {
                Catch::Kafka(kc) => {
                    let conn = &kafka_conns[&kc.connection];
                    let consumer = Arc::new(
                        kafka::consumer(&conn.base, kc, &pc.name, run_id, Arc::clone(&conn.health))
                            .map_err(kafka_err)?,
                    );
                    let state = kafka::CatchState::new(Arc::clone(&conn.health));
                    let (c, t, st) = (Arc::clone(&consumer), kc.topic.clone(), Arc::clone(&state));
                    let assigned =
                        tokio::task::spawn_blocking(move || kafka::assign_new(&c, &t, &st))
                            .await
                            .unwrap_or(Ok(0));
                    match assigned {
                        Ok(_) => {}
                        Err(e) if opts.fail_fast => return Err(kafka_err(e)),
                        Err(e) => {
                            tracing::warn!(probe = %pc.name, error = %e, "Cannot read the catch topic yet; retrying.")
                        }
                    }
                    others.spawn(kafka::catch_loop(
                        consumer,
                        kc.topic.clone(),
                        kc.commit,
                        Arc::clone(&state),
                        Arc::clone(&probe),
                        catch_stop.clone(),
                    ));
                    CatchLink::Kafka(state)
                }
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
                    CatchLink::Nats(client)
                }
                Catch::Http(_) => CatchLink::Webhook,
            };
            probe.set_links(Links {
                injector: Arc::clone(&injector),
                catch: catch_link,
            });
            injectors.push(injector);
            probes.push(probe);
        }

        let otlp_status = match &mut telemetry {
            Some(t) => {
                t.observe(probes.clone());
                t.status.clone()
            }
            None => Vec::new(),
        };
        let state = AppState::new(
            config.environment.clone(),
            config.prometheus,
            probes.clone(),
            otlp_status,
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
            embedded,
            kafka_health: kafka_conns
                .values()
                .map(|c| Arc::clone(&c.health))
                .collect(),
            telemetry,
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
            let in_flight: u64 = self.probes.iter().map(|p| p.expire(now)).sum();
            if in_flight == 0 || now >= give_up {
                return in_flight;
            }
            // Re-check often: catches resolve canaries at any moment, and the
            // earliest deadline bounds the wait for the rest.
            let next = self
                .probes
                .iter()
                .filter_map(|p| p.next_expiry())
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
        for h in &self.kafka_health {
            h.close();
        }
        // Clients are gone; the embedded clusters can stop.
        let embedded = std::mem::take(&mut self.embedded);
        let _ = tokio::task::spawn_blocking(move || drop(embedded)).await;
        // Last, so the final export has every canary's outcome.
        if let Some(t) = self.telemetry.take() {
            t.shutdown(&self.probes).await;
        }
    }
}

/// Reads the partitions of a Kafka injector's topic (blocking call, off the runtime).
async fn inject_partitions(injector: &Arc<Injector>) -> Result<Vec<i32>, kafka::KafkaSetupError> {
    let inj = Arc::clone(injector);
    tokio::task::spawn_blocking(move || match inj.as_ref() {
        Injector::Kafka(k) => k.partitions(),
        _ => Ok(Vec::new()),
    })
    .await
    .unwrap_or_else(|_| Ok(Vec::new()))
}

/// Adds a lane for every partition added to a Kafka probe's inject topic
/// (per-partition mode with `partitions: all`), re-reading every few seconds.
async fn watch_partitions(probe: Arc<Probe>, injector: Arc<Injector>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(kafka::REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(partitions) = inject_partitions(&injector).await else {
            continue;
        };
        let known: Vec<u32> = probe.lanes().iter().map(|l| l.id).collect();
        for p in partitions {
            if !known.contains(&(p as u32)) {
                tracing::info!(probe = %probe.name(), partition = p, "Sending canaries to a new partition.");
                probe.add_lane(p as u32, Some(p), Instant::now());
            }
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
