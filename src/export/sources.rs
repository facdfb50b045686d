//! What the exporters read from: the running set (`Live`, swapped whole by
//! a reload), the OTLP exporters' and the listener's counts, and the last
//! configuration reload's outcome.

use super::listener::ListenerStats;
use super::otlp::SignalStatus;
use crate::report::Watched;
use crate::transport::LinkStatus;
use std::sync::Arc;

/// What runs now: the probes (with their SLO engines) and the client
/// connections' records. A reload replaces it as a whole.
#[derive(Debug, Clone, Default)]
pub struct Running {
    pub probes: Vec<Watched>,
    pub links: Vec<Arc<LinkStatus>>,
}

/// The running set, shared by the runtime and every reader.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<std::sync::RwLock<Arc<Running>>>);

impl Live {
    pub fn new(running: Running) -> Live {
        Live(Arc::new(std::sync::RwLock::new(Arc::new(running))))
    }

    /// What runs now (one consistent set for a whole collection).
    pub fn get(&self) -> Arc<Running> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set(&self, running: Running) {
        let old = {
            let mut now = self.0.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *now, Arc::new(running))
        };
        // Outside the lock: the last reference to an ended probe's clients
        // may take a while to drop (a Kafka producer flushes), and readers
        // (scrapes) must not wait for it.
        drop(old);
    }
}

/// The outcome of the last configuration reload, as Prometheus reports its
/// own (`prometheus_config_last_reload_successful`).
#[derive(Debug)]
pub struct ReloadStatus {
    ok: std::sync::atomic::AtomicBool,
    /// Unix seconds (f64 bits) of the last successful load (the start, before any reload).
    at: std::sync::atomic::AtomicU64,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        let s = ReloadStatus {
            ok: std::sync::atomic::AtomicBool::new(true),
            at: std::sync::atomic::AtomicU64::new(0),
        };
        s.succeeded();
        s
    }
}

impl ReloadStatus {
    pub fn succeeded(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.at.store(now.to_bits(), Relaxed);
        self.ok.store(true, Relaxed);
    }

    pub fn failed(&self) {
        self.ok.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// (last reload successful, Unix seconds of the last success).
    pub fn read(&self) -> (bool, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ok.load(Relaxed), f64::from_bits(self.at.load(Relaxed)))
    }
}

/// Everything the exporters read: what runs, the OTLP exporters' counts,
/// the listener's and the configuration's state.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub live: Live,
    pub otlp: Vec<Arc<SignalStatus>>,
    /// chirp's own listener, when it runs.
    pub listener: Option<Arc<ListenerStats>>,
    pub reload: Arc<ReloadStatus>,
}
