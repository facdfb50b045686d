//! `chirp run`: probe until SIGTERM or SIGINT, then stop injecting, let the
//! canaries in flight resolve for up to `shutdown_grace`, flush exporters
//! and exit 0. SIGHUP and `POST /-/reload` reload the configuration file
//! (`Runtime::reload`). A listener that fails ends it with an error.

use super::{load, Common, Exit};
use crate::runtime::{Options, Runtime};
use crate::server::ReloadAnswer;
use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let path = &args.common.config.config;
    let Some(config) = load(path) else {
        return Ok(Exit::Usage);
    };
    // First, so a signal during start-up is answered as later ones are.
    let mut signals = Signals::new()?;
    let listen = args.common.listen.unwrap_or(config.listen.address);
    let mut rt = Runtime::start(&config, Options::run(listen))
        .await
        .with_context(|| format!("cannot start with {}", path.display()))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        listen = %rt.addr.map(|a| a.to_string()).unwrap_or_default(),
        tls = config.listen.tls.is_some(),
        auth = config.listen.auth.is_some(),
        environment = %config.environment,
        probes = config.probes.len(),
        run_id = %format!("{:016x}", rt.run_id),
        "chirp is running."
    );
    config.probes.iter().for_each(log_started);
    let mut reloads = rt.reload_requests();
    loop {
        // A reload asked for, and where to answer (none for SIGHUP).
        let asked = tokio::select! {
            stop = signals.next() => match stop {
                Signal::Stop => break,
                Signal::Hangup => {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration.");
                    None
                }
            },
            Some(done) = next(&mut reloads) => {
                tracing::info!(config = %path.display(), "POST /-/reload: reloading the configuration.");
                Some(done)
            }
            why = rt.listener_failed() => {
                rt.shutdown().await;
                anyhow::bail!("the HTTP listener on {listen} stopped: {why}");
            }
        };
        // Signals are still answered while a reload waits for ending probes.
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut stopping = false;
        let answer = {
            let reloading = reload(&mut rt, path, &cancel);
            tokio::pin!(reloading);
            loop {
                tokio::select! {
                    a = &mut reloading => break a,
                    s = signals.next(), if !stopping => if s == Signal::Stop {
                        tracing::info!("Stop signal during the reload: ending it.");
                        stopping = true;
                        cancel.cancel();
                    },
                }
            }
        };
        if let Some(done) = asked {
            let _ = done.send(answer);
        }
        if stopping {
            break;
        }
    }
    // No more reloads: `POST /-/reload` answers 503 from now on.
    drop(reloads);
    let grace = rt.config().shutdown_grace;
    tracing::info!(grace = %humantime::format_duration(grace), "Stopping: no new canaries; waiting for those in flight (a second signal stops at once).");
    let left = loop {
        tokio::select! {
            left = rt.drain(grace) => break left,
            s = signals.next() => if s == Signal::Stop {
                tracing::warn!("Second signal: stopping at once; canaries in flight are not counted and exporters are not flushed.");
                return Ok(Exit::Ok);
            },
        }
    };
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "Grace period expired with canaries still in flight; they are not counted."
        );
    }
    rt.shutdown().await;
    tracing::info!("Stopped.");
    Ok(Exit::Ok)
}

/// One line per probe started (at start, or by a reload).
fn log_started(p: &crate::config::ProbeConfig) {
    tracing::info!(
        probe = %p.name,
        inject = p.inject.system(),
        catch = p.catch.system(),
        interval = %humantime::format_duration(p.interval),
        deadline = %humantime::format_duration(p.deadline),
        "Probe started."
    );
}

/// The next reload asked for over HTTP; pending forever when none can be.
async fn next<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads `path` again and applies it. A file with mistakes changes
/// nothing; every mistake is logged. Returns what to answer `POST /-/reload`.
async fn reload(
    rt: &mut Runtime,
    path: &std::path::Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> ReloadAnswer {
    let status = std::sync::Arc::clone(&rt.reload_status);
    let config = match crate::config::load_file(path, &crate::config::ProcessEnv) {
        Ok(c) => c,
        Err(errors) => {
            status.failed();
            for e in &errors.errors {
                tracing::error!(config = %path.display(), "Reload refused, nothing changed: {e}");
            }
            return ReloadAnswer::Refused(errors.to_string());
        }
    };
    match rt.reload(&config, cancel).await {
        Ok(summary) => {
            config
                .probes
                .iter()
                .filter(|pc| {
                    summary.started.contains(&pc.name) || summary.restarted.contains(&pc.name)
                })
                .for_each(log_started);
            if summary.failed.is_empty() {
                status.succeeded();
                tracing::info!(config = %path.display(), "Configuration reloaded: {summary}.");
                ReloadAnswer::Done(format!("reloaded: {summary}\n"))
            } else {
                status.failed();
                tracing::error!(config = %path.display(), "Configuration reloaded, but not every probe could start: {summary}.");
                ReloadAnswer::Partly(format!(
                    "reloaded, but not every probe could start: {summary}\n"
                ))
            }
        }
        Err(e) => {
            status.failed();
            let text = crate::transport::chain(&e);
            tracing::error!(config = %path.display(), "Reload refused: {text}");
            ReloadAnswer::Refused(format!("{}: {text}\n", path.display()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    Hangup,
}

/// The signals `run` answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |k: SignalKind| signal(k).context("cannot listen for signals");
        Ok(Signals {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}
