//! Starting and stopping everything: binds the listener (when anything needs
//! it), connects the named clients, builds each probe with its observers,
//! injector and catch side, runs one inject task per probe, and shuts down in
//! order (stop injecting, let in-flight canaries resolve, stop catching,
//! flush exporters), every task tracked and every wait bounded.

use crate::canary::Signer;
use crate::config::limits::SHUTDOWN_MARGIN;
use crate::config::{Config, ProbeConfig};
use crate::export::catalogue::{Live, ReloadStatus, Running, Sources};
use crate::export::listener::ListenerStats;
use crate::export::otlp::{ExportSetupError, Telemetry};
use crate::history::History;
use crate::outcome::Observer;
use crate::probe::{Probe, Schedule};
use crate::report::Watched;
use crate::server::tls::{Tls, TlsError};
use crate::server::{self, AppState, ReloadRequest};
use crate::slo::SloObserver;
use crate::timer::Timer;
use crate::transport::{
    self, CatchConfig, CatchSink, Connections, Context, InjectConfig, Need, SetupError,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod reload;
pub use reload::{ReloadError, ReloadSummary};

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub enum Listen {
    /// Always, here (`run`: `/metrics` and the status page are the point).
    At(SocketAddr),
    /// Only when a probe needs the listener (a webhook catch, the self-test
    /// loop), or when an address is given: there, else on an ephemeral port
    /// of `fallback`'s address (`check`, which may run next to a `run`).
    IfNeeded {
        given: Option<SocketAddr>,
        fallback: SocketAddr,
    },
}

/// How to start.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub listen: Listen,
    /// Stop injecting after this many canaries per probe (per lane).
    pub count: Option<u64>,
    /// Stop injecting after this long.
    pub duration: Option<Duration>,
    /// Fail when a target cannot be reached at start (`check`), instead of
    /// retrying in the background (`run`).
    pub fail_fast: bool,
    /// Serve `POST /-/reload` (`run`).
    pub reload: bool,
}

impl Options {
    /// `run`: listen at `addr`, probe until stopped, keep retrying brokers.
    pub fn run(addr: SocketAddr) -> Options {
        Options {
            listen: Listen::At(addr),
            count: None,
            duration: None,
            fail_fast: false,
            reload: true,
        }
    }
}

/// What to do when the address is taken, most often by a `chirp run`
/// beside a `chirp check` (the OS error follows as the cause).
fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (another process listens there, a running `chirp run`? `chirp run` needs an address of its own: --listen or `listen:`; `chirp check` needs no fixed port: leave --listen out, or give --listen 127.0.0.1:0 for any free port)"
    } else {
        ""
    }
}

/// Why chirp could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}{}", in_use_hint(source))]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] SetupError),
    #[error("export.otlp")]
    Otlp(#[from] ExportSetupError),
}

impl StartError {
    /// Whether a target could not be reached (exit 3), as opposed to a local problem.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StartError::Transport(e) if e.unreachable)
    }
}

/// A running chirp.
pub struct Runtime {
    /// The address the listener is bound to, if it runs.
    pub addr: Option<SocketAddr>,
    pub run_id: u64,
    /// The probes, in configuration order.
    started: Vec<Started>,
    /// What the exporters and the API read; replaced on reload.
    live: Live,
    /// The configuration running now.
    config: Config,
    /// What each named connection was connected for.
    needs: BTreeMap<String, Need>,
    ctx: Context,
    opts: Options,
    /// No new canaries.
    inject_stop: CancellationToken,
    /// Catch loops and background watchers.
    stop: CancellationToken,
    /// Sends and confirmations still waiting give up.
    abort: CancellationToken,
    server_stop: CancellationToken,
    tasks: TaskTracker,
    server: Option<JoinHandle<std::io::Result<()>>>,
    connections: Option<Connections>,
    telemetry: Option<Telemetry>,
    /// The last reload's outcome, exported.
    pub reload_status: Arc<ReloadStatus>,
    /// Reloads asked for over HTTP (`run` only).
    reloads: Option<mpsc::Receiver<ReloadRequest>>,
}

/// The async runtime's threads: `TOKIO_WORKER_THREADS` when set, else one.
/// A canary is a few microseconds of work between wake-ups; on one thread
/// the sends due at one instant go out back to back and the client writes
/// them together, where threads handing work across cores cost more CPU
/// and schedule precision than they add (on 2 cores at 1,000 probes: 18 %
/// of a core and lag p50 31 µs on one thread, 25 % and 55 µs on two).
/// Brokers' client libraries (librdkafka) and blocking work have threads of their own.
pub fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// A probe whose Avro template names a schema registry: its config with
/// the subject's schema and id looked up when it starts (a reload that
/// leaves the probe unchanged keeps its schema); `None` when there is
/// nothing to look up.
async fn with_registry_schema(pc: &ProbeConfig) -> Result<Option<ProbeConfig>, SetupError> {
    let Some(template) = &pc.payload.template else {
        return Ok(None);
    };
    let Some(registry) = template.registry() else {
        return Ok(None);
    };
    let what = |key: &str| format!("probe `{}`: payload.{key}", pc.name);
    let (id, schema) = crate::payload::registry::fetch(registry)
        .await
        .map_err(|e| SetupError::new(what("schema_registry"), true, e))?;
    let template = template
        .with_registry_schema(&schema, id)
        .map_err(|e| SetupError::new(what(e.key), false, e.message))?;
    tracing::info!(probe = %pc.name, subject = %registry.subject, id, "Payload schema looked up in the registry.");
    let mut out = pc.clone();
    out.payload.template = Some(template);
    Ok(Some(out))
}

/// One probe as the runtime runs it.
struct Started {
    watched: Watched,
    /// Ends its inject loop (a child of the runtime's).
    inject_stop: CancellationToken,
    /// Ends its catch loop and watchers (a child of the runtime's).
    stop: CancellationToken,
    /// Its inject loop.
    inject: TaskTracker,
}

impl Runtime {
    pub async fn start(config: &Config, opts: Options) -> Result<Runtime, StartError> {
        let needed = config
            .probes
            .iter()
            .any(|p| p.inject.needs_listener() || p.catch.needs_listener());
        let bind_at = match opts.listen {
            Listen::At(a) => Some(a),
            Listen::IfNeeded { given: Some(a), .. } => Some(a),
            Listen::IfNeeded {
                given: None,
                fallback,
            } => needed.then_some(SocketAddr::new(fallback.ip(), 0)),
        };
        let listener = match bind_at {
            None => None,
            Some(addr) => Some(bind(addr).map_err(|source| StartError::Bind { addr, source })?),
        };
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls = match (&listener, &config.listen.tls) {
            (Some(_), Some(files)) => Some(Tls::load(files)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut listen = config.listen.clone();
        if listener.is_some() {
            listen.limits.max_connections = connections_allowed(listen.limits.max_connections);
        }
        let listener_stats = listener
            .as_ref()
            .map(|_| Arc::new(ListenerStats::default()));
        let exposed = config.demo_key_on_real_probes();
        if !exposed.is_empty() {
            tracing::warn!(
                probes = %exposed.join(", "),
                "The signing key is the public demo key: anyone can forge these probes' canaries. Set CHIRP_SIGNING_KEY (or `signing_key`) to a secret."
            );
        }
        let run_id: u64 = rand::random();
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let ctx = Context {
            run_id,
            signer: Signer::rotating(
                config.signing_key.expose().as_bytes(),
                &config
                    .previous_signing_keys
                    .iter()
                    .map(|k| k.expose().as_bytes())
                    .collect::<Vec<_>>(),
            ),
            listener: addr.map(|a| format!("{scheme}://{}", loopback(a))),
            own_certificate: tls.as_ref().map(|t| t.own_certificate()),
            fail_fast: opts.fail_fast,
            stop: stop.clone(),
            tasks: tasks.clone(),
            hooks: Arc::default(),
        };
        let needs = transport::needs(&config.connections, &ends(config));
        let connections = transport::connect_needed(&needs, &ctx).await?;
        // After the connections, so a broker that cannot be reached does not
        // leave exporters to stop.
        let telemetry = config
            .otlp
            .as_ref()
            .map(|c| Telemetry::start(c, &config.environment))
            .transpose()?;
        let live = Live::default();
        let reload_status = Arc::new(ReloadStatus::default());
        let (reload_tx, reloads) = match opts.reload {
            true => {
                let (tx, rx) = mpsc::channel(4);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let mut rt = Runtime {
            addr,
            run_id,
            started: Vec::new(),
            live: live.clone(),
            config: config.clone(),
            needs,
            ctx: ctx.clone(),
            opts,
            inject_stop: CancellationToken::new(),
            stop,
            abort: CancellationToken::new(),
            server_stop: CancellationToken::new(),
            tasks: tasks.clone(),
            server: None,
            connections: Some(connections),
            telemetry,
            reload_status: Arc::clone(&reload_status),
            reloads,
        };
        let n = config.probes.len();
        for (i, pc) in config.probes.iter().enumerate() {
            let started = rt.start_probe(pc, run_id, i, n, None).await?;
            rt.started.push(started);
        }
        rt.publish();
        let mut sources = Sources {
            live,
            otlp: Vec::new(),
            listener: listener_stats.clone(),
            reload: reload_status,
        };
        if let Some(t) = &mut rt.telemetry {
            t.observe(sources.clone());
            sources.otlp = t.status.clone();
        }
        rt.server = listener.map(|listener| {
            let state = AppState::new(
                config.environment.clone(),
                config.prometheus,
                sources,
                reload_tx,
            );
            let app = server::router(state, transport::http::router(Arc::clone(&ctx.hooks)));
            if let Some(t) = &tls {
                tasks.spawn(Arc::clone(t).watch(rt.server_stop.clone()));
            }
            let stop = rt.server_stop.clone();
            let hooks = Arc::clone(&ctx.hooks);
            let stats = listener_stats.clone().unwrap_or_default();
            tokio::spawn(async move {
                server::listener::serve(listener, &listen, tls, app, hooks, stats, stop).await
            })
        });
        Ok(rt)
    }

    /// Builds probe `pc` (the `index`-th of `of`) with its observers,
    /// injector and catch side, and starts its inject loop.
    async fn start_probe(
        &mut self,
        pc: &ProbeConfig,
        run_id: u64,
        index: usize,
        of: usize,
        predecessor: Option<&Watched>,
    ) -> Result<Started, SetupError> {
        let resolved = with_registry_schema(pc).await?;
        let pc = resolved.as_ref().unwrap_or(pc);
        let stop = self.stop.child_token();
        let ctx = Context {
            run_id,
            stop: stop.clone(),
            ..self.ctx.clone()
        };
        let connections = self.connections.get_or_insert_with(Connections::default);
        let inject = connections
            .inject(&pc.inject, &pc.name, pc.publish_timeout, &ctx)
            .await
            .inspect_err(|_| stop.cancel())?;
        let partitions = inject.lanes().map(|rx| rx.borrow().clone());
        // A probe started again by a reload goes on where its predecessor
        // stopped: the same SLO engine when the objectives did not change
        // (its windows and budget too), else its totals; the same history.
        let old_slo = predecessor.and_then(|w| w.slo.as_ref());
        let same_slo = predecessor.is_some_and(|w| w.probe.config.slo == pc.slo);
        let slo = match old_slo {
            Some(old) if same_slo => {
                old.set_interval(pc.interval);
                Some(Arc::clone(old))
            }
            _ => {
                let slo = SloObserver::new(&pc.slo, pc.interval);
                if let (Some(new), Some(old)) = (&slo, old_slo) {
                    new.inherit_totals(old);
                }
                slo
            }
        };
        let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
        if let Some(s) = &slo {
            observers.push(Arc::clone(s) as Arc<dyn Observer>);
        }
        let history =
            predecessor.map_or_else(|| Arc::new(History::new()), |w| Arc::clone(&w.history));
        observers.push(Arc::clone(&history) as Arc<dyn Observer>);
        if let Some(t) = &mut self.telemetry {
            observers.extend(t.observers(pc, partitions.is_some()));
        }
        let probe = Arc::new(Probe::new(
            pc.clone(),
            run_id,
            ctx.signer.clone(),
            partitions.as_deref(),
            observers,
        ));
        if let Some(old) = predecessor {
            probe.inherit(&old.probe);
        }
        let sink: Arc<dyn CatchSink> = Arc::clone(&probe) as Arc<dyn CatchSink>;
        let catch = connections
            .catch(&pc.catch, sink, &ctx)
            .await
            .inspect_err(|_| stop.cancel())?;
        let dead_letter = match &pc.dead_letter {
            Some(dl) => {
                let sink: Arc<dyn CatchSink> =
                    Arc::new(crate::probe::DeadLetters(Arc::clone(&probe)));
                Some(
                    connections
                        .catch(dl, sink, &ctx)
                        .await
                        .inspect_err(|_| stop.cancel())?,
                )
            }
            None => None,
        };
        probe.attach(inject, catch, dead_letter);
        // Spread probes over their interval so they do not all send at once.
        let phase = pc.interval * index as u32 / of.max(1) as u32;
        let inject_stop = self.inject_stop.child_token();
        let inject = TaskTracker::new();
        inject.spawn(Arc::clone(&probe).inject_loop(
            inject_stop.clone(),
            self.abort.clone(),
            Schedule {
                phase,
                limit: self.opts.count,
                duration: self.opts.duration,
                timer: Timer::precise(),
            },
        ));
        inject.close();
        Ok(Started {
            watched: Watched {
                probe,
                slo,
                history,
            },
            inject_stop,
            stop,
            inject,
        })
    }

    /// Shows the exporters and the API what runs now.
    fn publish(&self) {
        self.live.set(Running {
            probes: self.started.iter().map(|s| s.watched.clone()).collect(),
            links: self
                .connections
                .as_ref()
                .map(|c| c.links())
                .unwrap_or_default(),
        });
    }

    /// The probes running now, in configuration order.
    pub fn probes(&self) -> Vec<Watched> {
        self.started.iter().map(|s| s.watched.clone()).collect()
    }

    /// The configuration running now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where reloads asked for over HTTP (`POST /-/reload`) arrive (`run`
    /// only; taken once).
    pub fn reload_requests(&mut self) -> Option<mpsc::Receiver<ReloadRequest>> {
        self.reloads.take()
    }

    /// Waits until every probe's catch side listens and its schedule has started.
    pub async fn ready(&self) {
        for s in &self.started {
            s.watched.probe.ready().await;
        }
    }

    /// Waits until every inject loop has ended (its count or duration reached).
    pub async fn injection_done(&mut self) {
        for s in &self.started {
            s.inject.wait().await;
        }
    }

    /// Stops sending new canaries.
    pub fn stop_injecting(&self) {
        self.inject_stop.cancel();
    }

    /// Resolves if the listener stops while chirp runs (it never should):
    /// with the reason. Pending forever when there is no listener.
    pub async fn listener_failed(&mut self) -> String {
        let Some(server) = self.server.as_mut() else {
            return std::future::pending().await;
        };
        let why = match server.await {
            Ok(Ok(())) => "it stopped serving".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("its task failed: {e}"),
        };
        self.server = None;
        why
    }

    /// Stops injecting and waits until no canary is in flight, declaring
    /// expired ones lost, for at most `grace`. Returns how many were still in flight.
    pub async fn drain(&mut self, grace: Duration) -> u64 {
        let give_up = Instant::now() + grace;
        self.stop_injecting();
        let _ = tokio::time::timeout_at(give_up, self.injection_done()).await;
        drain_until(&self.probes(), give_up).await
    }

    /// Stops everything (injecting, catching, the listener, exporters,
    /// clients) within [`SHUTDOWN_MARGIN`], and says so if that was not
    /// enough. Tasks get half of it, so the last OTLP export keeps the rest.
    pub async fn shutdown(mut self) {
        let started = Instant::now();
        let give_up = started + SHUTDOWN_MARGIN;
        self.inject_stop.cancel();
        self.stop.cancel();
        self.server_stop.cancel();
        self.tasks.close();
        // Confirmations still on their way may finish (their publish latency
        // counts); past half the margin they are given up.
        let mut stopped = tokio::time::timeout_at(started + SHUTDOWN_MARGIN / 2, async {
            self.injection_done().await;
            self.tasks.wait().await;
        })
        .await
        .is_ok();
        if !stopped {
            self.abort.cancel();
            let quick = started + SHUTDOWN_MARGIN / 2 + Duration::from_millis(200);
            stopped = tokio::time::timeout_at(quick, async {
                self.injection_done().await;
                self.tasks.wait().await;
            })
            .await
            .is_ok();
        }
        if let Some(s) = self.server.as_mut() {
            stopped &= tokio::time::timeout_at(give_up, s).await.is_ok();
        }
        if !stopped {
            tracing::warn!(
                left = self.tasks.len(),
                "Some tasks did not stop within {}; going on without them.",
                humantime::format_duration(SHUTDOWN_MARGIN / 2)
            );
            if let Some(s) = self.server.take() {
                s.abort();
            }
        }
        // Last, so the final export has every canary's outcome.
        if let Some(t) = self.telemetry.take() {
            t.shutdown(give_up.saturating_duration_since(Instant::now()))
                .await;
        }
        if let Some(c) = self.connections.take() {
            if tokio::time::timeout_at(give_up, c.close()).await.is_err() {
                tracing::warn!("The broker clients did not close in time; exiting anyway.");
            }
        }
    }
}

/// The probes' inject and catch settings, for the connections they use
/// (a dead-letter catch point pairs with its probe's inject again).
fn ends(config: &Config) -> Vec<(&InjectConfig, &CatchConfig)> {
    config
        .probes
        .iter()
        .flat_map(|p| {
            std::iter::once((&p.inject, &p.catch))
                .chain(p.dead_letter.iter().map(move |d| (&p.inject, d)))
        })
        .collect()
}

/// Waits until none of `probes` has a canary in flight, declaring expired
/// ones lost, until `give_up`. Returns how many were still in flight.
async fn drain_until(probes: &[Watched], give_up: Instant) -> u64 {
    loop {
        let now = Instant::now();
        let in_flight: u64 = probes.iter().map(|w| w.probe.expire(now)).sum();
        if in_flight == 0 || now >= give_up {
            return in_flight;
        }
        // Re-check often: catches resolve canaries at any moment, and the
        // earliest deadline bounds the wait for the rest.
        let next = probes
            .iter()
            .filter_map(|w| w.probe.next_expiry())
            .min()
            .unwrap_or(give_up)
            .min(give_up)
            .min(now + Duration::from_millis(10));
        tokio::time::sleep_until(next).await;
    }
}

/// Connections the kernel queues for the listener before it accepts them
/// (capped by `net.core.somaxconn`). The usual 128 overflows when clients
/// connect in a burst, and each dropped SYN costs its client a second.
const BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// File descriptors kept for everything but the listener's connections:
/// broker clients, OTLP, files, the listening socket itself.
const FD_RESERVE: u64 = 256;

/// Raises the open-file limit to its hard limit (the default 1,024 is
/// exhausted by a thousand idle connections), and returns how many
/// connections the listener may hold: `wanted`, or fewer with a warning when
/// the limit does not allow it.
fn connections_allowed(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read or raise the open-file limit");
            return wanted;
        }
    };
    let room = limit.saturating_sub(FD_RESERVE).max(16) as usize;
    if room < wanted {
        tracing::warn!(
            open_files = limit,
            "listen.max_connections is {wanted}, but the open-file limit allows about {room}; using {room}. Raise the limit (ulimit -n, or the container's nofile) to allow more."
        );
        return room;
    }
    wanted
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
