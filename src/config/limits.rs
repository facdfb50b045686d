//! Limits chirp enforces, in one place: what validation checks and what the
//! ledger and the listener size themselves by. A leaf, so every layer may
//! read it.

use std::time::Duration;

/// Memory of resolved canaries is kept for this many deadlines, so duplicates
/// and late arrivals are told apart for that long.
pub const RETAIN_DEADLINES: u32 = 4;
/// The ledger remembers at least this many canaries...
pub const MIN_RETAIN: usize = 1024;
/// ...and at most this many (one byte each).
pub const MAX_RETAIN: usize = 1 << 20;
/// The most canaries a probe may have in flight (`deadline / interval`).
pub const MAX_IN_FLIGHT: u128 = (MAX_RETAIN / RETAIN_DEADLINES as usize) as u128;
/// The longest deadline chirp accepts; it bounds the latency histograms.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// The shortest interval between two canaries of one probe.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The largest canary body `payload.size` may ask for.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The shortest signing key.
pub const MIN_KEY_LEN: usize = 16;
/// Probe names appear in tokens, URLs and labels: `[A-Za-z0-9_-]{1,64}`.
pub const MAX_PROBE_NAME: usize = 64;
/// The shortest OTLP metric export interval.
pub const MIN_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// After the grace period, stopping (tasks, exporters, clients) may take at most this long.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Whether `name` is a valid probe name.
pub fn valid_probe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROBE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
