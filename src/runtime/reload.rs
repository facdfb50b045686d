//! Reloading the configuration while running (`Runtime::reload`): which
//! probes and connections stay, end, start or start again, and the ending
//! of probes (every canary in flight counted first).

use super::{drain_until, ends, Runtime, Started};
use crate::config::{Config, ProbeConfig};
use crate::report::Watched;
use crate::transport::{self, Connections, Need, SetupError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a configuration was not applied; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{} cannot change while chirp runs (restart it to apply); nothing was changed", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("stopped by a signal while probes were ending; chirp is stopping")]
    Cancelled,
}

/// What a reload did, by probe name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub unchanged: Vec<String>,
    pub restarted: Vec<String>,
    pub started: Vec<String>,
    pub ended: Vec<String>,
    /// Probes of the new file that could not start (each with its reason).
    pub failed: Vec<String>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "restarted: {}; started: {}; ended: {}; unchanged: {}",
            list(&self.restarted),
            list(&self.started),
            list(&self.ended),
            list(&self.unchanged)
        )?;
        if !self.failed.is_empty() {
            write!(f, "; could not start: {}", self.failed.join("; "))?;
        }
        Ok(())
    }
}

impl Runtime {
    /// Applies `new`: probes whose settings (or connection) are the same
    /// keep running untouched (their ledgers, SLO state and clients);
    /// changed ones end and start again, going on from their predecessor's
    /// counts; removed ones end; added ones start. An ending probe sends no
    /// more canaries and keeps catching until every canary in flight is
    /// caught or past its deadline. Settings that cannot change while
    /// running (listener, keys, exports, environment) refuse the whole file.
    /// A probe that cannot start is reported, the others run. `cancel` (a
    /// stop signal) ends the wait, and the reload, at once.
    pub async fn reload(
        &mut self,
        new: &Config,
        cancel: &CancellationToken,
    ) -> Result<ReloadSummary, ReloadError> {
        let old = &self.config;
        let mut fixed = Vec::new();
        if new.environment != old.environment {
            fixed.push("environment");
        }
        if new.listen != old.listen {
            fixed.push("listen");
        }
        if new.signing_key != old.signing_key
            || new.previous_signing_keys != old.previous_signing_keys
        {
            fixed.push("signing_key");
        }
        if new.prometheus != old.prometheus || new.otlp != old.otlp {
            fixed.push("export");
        }
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        let needs = transport::needs(&new.connections, &ends(new));
        // Connections to make anew: new ones, and those whose settings
        // changed or that must now serve more than they were made for.
        let reconnect: BTreeMap<String, Need> = needs
            .iter()
            .filter(|(name, need)| !self.needs.get(*name).is_some_and(|n| n.serves(need)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Old connections to close: replaced, or no longer used.
        let retire_conns: Vec<String> = self
            .needs
            .keys()
            .filter(|name| reconnect.contains_key(*name) || !needs.contains_key(*name))
            .cloned()
            .collect();
        let fresh = transport::connect_needed(&reconnect, &self.ctx).await?;

        let uses = |pc: &ProbeConfig, names: &[String]| {
            [
                pc.inject.end().connection,
                pc.catch.end(&pc.name).connection,
            ]
            .into_iter()
            .chain(pc.dead_letter.iter().map(|d| d.end(&pc.name).connection))
            .flatten()
            .any(|c| names.contains(&c))
        };
        let mut summary = ReloadSummary::default();
        let mut keep = Vec::new();
        let mut ending = Vec::new();
        for s in std::mem::take(&mut self.started) {
            let c = &s.watched.probe.config;
            match new.probes.iter().find(|p| p.name == c.name) {
                Some(pc) if pc == c && !uses(c, &retire_conns) => {
                    summary.unchanged.push(c.name.clone());
                    keep.push(s);
                }
                Some(_) => {
                    summary.restarted.push(c.name.clone());
                    ending.push(s);
                }
                None => {
                    summary.ended.push(c.name.clone());
                    ending.push(s);
                }
            }
        }
        self.started = keep;
        let predecessors: Vec<Watched> = ending
            .iter()
            .filter(|s| summary.restarted.contains(&s.watched.probe.config.name))
            .map(|s| s.watched.clone())
            .collect();
        if !self.retire(ending, cancel).await {
            self.publish();
            return Err(ReloadError::Cancelled);
        }
        // Carry the reconnect counts of connections made anew forward, so
        // `chirp_transport_reconnects_total` never goes down.
        let old_links = self
            .connections
            .as_ref()
            .map(|c| c.links())
            .unwrap_or_default();
        for link in fresh.links() {
            if let Some(old) = old_links
                .iter()
                .find(|o| o.connection == link.connection && o.role == link.role)
            {
                link.inherit(old);
            }
        }
        let old_conns = self
            .connections
            .get_or_insert_with(Connections::default)
            .take(&retire_conns);
        old_conns.close().await;
        self.connections
            .get_or_insert_with(Connections::default)
            .add(fresh);
        for name in &retire_conns {
            self.needs.remove(name);
        }
        self.needs.extend(reconnect);

        let n = new.probes.len();
        let mut order: Vec<Started> = Vec::with_capacity(n);
        let mut kept = std::mem::take(&mut self.started);
        for (i, pc) in new.probes.iter().enumerate() {
            if let Some(at) = kept
                .iter()
                .position(|s| s.watched.probe.config.name == pc.name)
            {
                order.push(kept.swap_remove(at));
                continue;
            }
            // A probe started by a reload has a run id of its own: canaries
            // of the probe it replaces, still in the pipeline, count as
            // another run's (`foreign`), never as its own.
            let predecessor = predecessors.iter().find(|w| w.probe.config.name == pc.name);
            match self
                .start_probe(pc, rand::random(), i, n, predecessor)
                .await
            {
                Ok(s) => {
                    if !summary.restarted.contains(&pc.name) {
                        summary.started.push(pc.name.clone());
                    }
                    order.push(s);
                }
                Err(e) => {
                    summary.restarted.retain(|r| *r != pc.name);
                    summary
                        .failed
                        .push(format!("{}: {}", pc.name, transport::chain(&e)));
                }
            }
        }
        self.started = order;
        self.config = new.clone();
        self.publish();
        Ok(summary)
    }

    /// Ends `probes`: no new canaries, then catching until every canary
    /// in flight is caught or declared lost at its deadline (so what they
    /// counted is final, and a successor can go on from it), then their
    /// catch sides stop. False when `cancel` cut the wait short.
    async fn retire(&mut self, probes: Vec<Started>, cancel: &CancellationToken) -> bool {
        if probes.is_empty() {
            return true;
        }
        // The longest deadline, and a moment for the last expiry.
        let longest = probes
            .iter()
            .map(|s| s.watched.probe.config.deadline)
            .max()
            .unwrap_or_default();
        let give_up = Instant::now() + longest + Duration::from_secs(1);
        for s in &probes {
            s.inject_stop.cancel();
        }
        let finished = tokio::select! {
            _ = cancel.cancelled() => false,
            left = async {
                for s in &probes {
                    let _ = tokio::time::timeout_at(give_up, s.inject.wait()).await;
                }
                let watched: Vec<Watched> = probes.iter().map(|s| s.watched.clone()).collect();
                drain_until(&watched, give_up).await
            } => {
                if left > 0 {
                    tracing::warn!(
                        in_flight = left,
                        "Probes ended by the reload still had canaries in flight past their deadline; they are not counted."
                    );
                }
                true
            }
        };
        for s in &probes {
            s.stop.cancel();
            if let Some(t) = &mut self.telemetry {
                t.forget(&s.watched.probe.config.name);
            }
        }
        finished
    }
}
