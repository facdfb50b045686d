//! The vocabulary of outcomes: what can become of a sent canary, what a
//! message at the sink can turn out to be, and the events the ledger hands to
//! its observers (SLO engine, OTLP metrics and traces). A leaf: it names
//! things and decides nothing; `probe::ledger` decides.

use std::time::Duration;
use tokio::time::Instant;

/// Why a publish failed, as exported in the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Timeout,
    Auth,
    Throttled,
    Unavailable,
    Rejected,
    Other,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Timeout,
        FailureKind::Auth,
        FailureKind::Throttled,
        FailureKind::Unavailable,
        FailureKind::Rejected,
        FailureKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Auth => "auth",
            FailureKind::Throttled => "throttled",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Rejected => "rejected",
            FailureKind::Other => "other",
        }
    }
}

/// Messages at the sink that are not one of this probe's canaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stray {
    /// A valid token of another run, instance or probe.
    Foreign,
    /// A bad MAC, a malformed token, a bad webhook signature, or a sequence never sent.
    Rejected,
    /// No token at all.
    Unrelated,
}

/// What one catch of one of our canaries turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First catch before the deadline; `reordered` if a higher sequence came first.
    Delivered { latency: Duration, reordered: bool },
    /// First catch, before the deadline, at the pipeline's dead-letter queue.
    DeadLettered { latency: Duration },
    /// Caught again after it was delivered (or dead-lettered).
    Duplicate,
    /// Caught after it was resolved as not delivered (lost, or its publish failed).
    Late,
    /// A sequence this run never sent (only possible with a leaked key).
    NeverSent,
}

/// What a message at the catch side turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Arrival(Arrival),
    Stray(Stray),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Arrival(Arrival::Delivered {
                reordered: false, ..
            }) => "delivered",
            Verdict::Arrival(Arrival::Delivered {
                reordered: true, ..
            }) => "delivered_reordered",
            Verdict::Arrival(Arrival::DeadLettered { .. }) => "dead_lettered",
            Verdict::Arrival(Arrival::Duplicate) => "duplicate",
            Verdict::Arrival(Arrival::Late) => "late",
            Verdict::Arrival(Arrival::NeverSent) => "rejected",
            Verdict::Stray(Stray::Foreign) => "foreign",
            Verdict::Stray(Stray::Rejected) => "rejected",
            Verdict::Stray(Stray::Unrelated) => "unrelated",
        }
    }
}

/// Counters, read together under one lock so the invariant holds in every snapshot:
/// `sent = delivered + dead_lettered + lost + publish_failed + in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub sent: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub lost: u64,
    pub publish_failed: u64,
    pub in_flight: u64,
    pub duplicate: u64,
    pub late: u64,
    pub reordered: u64,
    pub foreign: u64,
    pub rejected: u64,
    pub unrelated: u64,
    #[serde(skip)]
    pub failed_by_kind: [u64; 6],
}

impl Counts {
    /// Adds `other` into `self` (lanes into a probe total).
    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.dead_lettered += other.dead_lettered;
        self.lost += other.lost;
        self.publish_failed += other.publish_failed;
        self.in_flight += other.in_flight;
        self.duplicate += other.duplicate;
        self.late += other.late;
        self.reordered += other.reordered;
        self.foreign += other.foreign;
        self.rejected += other.rejected;
        self.unrelated += other.unrelated;
        for (a, b) in self.failed_by_kind.iter_mut().zip(other.failed_by_kind) {
            *a += b;
        }
    }

    pub fn invariant_holds(&self) -> bool {
        self.sent
            == self.delivered
                + self.dead_lettered
                + self.lost
                + self.publish_failed
                + self.in_flight
    }

    pub fn failed(&self, kind: FailureKind) -> u64 {
        self.failed_by_kind[kind as usize]
    }
}

/// How a sent canary resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Delivered {
        latency: Duration,
    },
    /// Caught at the dead-letter queue: the pipeline rejected it. Bad for
    /// both SLIs, like a loss, but not silent: the pipeline said so.
    DeadLettered,
    Lost,
    PublishFailed(FailureKind),
}

/// Which of a probe's sequences an event belongs to: the whole probe, or
/// one Kafka partition in per-partition mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaneId {
    /// The lane number carried in tokens.
    pub id: u32,
    /// The partition canaries of this lane go to, in per-partition mode.
    pub partition: Option<i32>,
}

/// A change in one lane's ledger. The probe hands these to its observers
/// after releasing the ledger's lock, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    /// Canary `seq` was registered as sent; `lag` is actual minus intended send time.
    Sent {
        seq: u64,
        slot: Instant,
        lag: Duration,
    },
    /// The broker acknowledged the publish of `seq` after `latency`.
    Acknowledged {
        seq: u64,
        latency: Duration,
        at: Instant,
    },
    /// One of our canaries was caught at the sink (every catch: first, again, or too late).
    /// `traceparent` is the trace context the message arrived with.
    Caught {
        seq: u64,
        arrival: Arrival,
        at: Instant,
        traceparent: Option<String>,
    },
    /// `seq` resolved at `at`. Its slot was `slot`; a lost canary's
    /// deadline passed at `slot + deadline`, usually a little before `at`.
    Resolved {
        seq: u64,
        slot: Instant,
        resolution: Resolution,
        at: Instant,
    },
}

/// Hears about every canary of one probe. Called without any lock of the
/// probe held, so an observer may take its own locks and take its time.
pub trait Observer: Send + Sync {
    /// Canary `seq` of `lane` is about to be sent for its `slot`: the W3C
    /// `traceparent` it should carry, from an observer that traces canaries.
    fn sending(&self, _lane: LaneId, _seq: u64, _slot: Instant) -> Option<String> {
        None
    }

    /// Events of one lane, in the order they happened.
    fn observe(&self, lane: LaneId, events: &[LedgerEvent]);
}
