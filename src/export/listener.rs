//! What chirp's own listener counts, for the exporters: requests and
//! connections it refused to protect itself, and connections open now.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the listener refused a request or closed a connection early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Connections were at `max_connections`: the oldest one without a
    /// request being answered was closed to make room, or the newcomer.
    Connections,
    /// A TLS handshake failed or did not end within `header_timeout`.
    Tls,
    /// A request's headers did not arrive within `header_timeout`.
    HeaderTimeout,
    /// A request's body did not arrive within `body_timeout` (408).
    BodyTimeout,
    /// A body larger than `max_body` (413).
    BodyTooLarge,
    /// Not HTTP/1, headers too large, or a body cut short (400, 431).
    Malformed,
    /// Missing or wrong credentials where `listen.auth` asks for them (401).
    Unauthorized,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Connections,
        Rejection::Tls,
        Rejection::HeaderTimeout,
        Rejection::BodyTimeout,
        Rejection::BodyTooLarge,
        Rejection::Malformed,
        Rejection::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Connections => "connections",
            Rejection::Tls => "tls",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::Malformed => "malformed",
            Rejection::Unauthorized => "unauthorized",
        }
    }

    fn index(self) -> usize {
        Rejection::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// The listener's counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    rejected: [AtomicU64; Rejection::ALL.len()],
    open: AtomicU64,
    /// Most connections open since [`ListenerStats::peak_and_reset`] last ran.
    peak: AtomicU64,
}

impl ListenerStats {
    /// Counts one rejection; returns the count so far for that reason.
    pub fn reject(&self, why: Rejection) -> u64 {
        self.rejected[why.index()].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why.index()].load(Ordering::Relaxed)
    }

    pub fn set_open(&self, n: usize) {
        self.open.store(n as u64, Ordering::Relaxed);
        self.peak.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// The most connections open since the last call.
    pub fn peak_and_reset(&self) -> u64 {
        self.peak.swap(self.open(), Ordering::Relaxed)
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}
