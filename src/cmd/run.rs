//! `chirp run`: probe until SIGTERM or SIGINT, then stop injecting, let the
//! canaries in flight resolve for up to `shutdown_grace`, flush exporters
//! and exit 0. A listener that fails ends it with an error.

use super::{load, Common, Exit};
use crate::runtime::{Options, Runtime};
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
    let listen = args.common.listen.unwrap_or(config.listen);
    let mut rt = Runtime::start(&config, Options::run(listen))
        .await
        .with_context(|| format!("cannot start with {}", path.display()))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        listen = %rt.addr.map(|a| a.to_string()).unwrap_or_default(),
        environment = %config.environment,
        probes = config.probes.len(),
        run_id = %format!("{:016x}", rt.run_id),
        "chirp is running."
    );
    for p in &config.probes {
        tracing::info!(
            probe = %p.name,
            inject = p.inject.system(),
            catch = p.catch.system(),
            interval = %humantime::format_duration(p.interval),
            deadline = %humantime::format_duration(p.deadline),
            "Probe started."
        );
    }
    tokio::select! {
        _ = shutdown_signal() => {}
        why = rt.listener_failed() => {
            rt.shutdown().await;
            anyhow::bail!("the HTTP listener on {listen} stopped: {why}");
        }
    }
    tracing::info!(grace = %humantime::format_duration(config.shutdown_grace), "Stopping: no new canaries; waiting for those in flight.");
    let left = rt.drain(config.shutdown_grace).await;
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
