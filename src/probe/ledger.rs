//! The ledger decides what happened to every canary of one probe. It owns the
//! schedule's sequence numbers, resolves each sent canary to exactly one
//! outcome (delivered, lost, publish_failed) and counts observations
//! (duplicate, late, reordered, foreign, rejected, unrelated). Memory is a
//! fixed ring of one byte per recent canary, whatever the uptime.

use crate::otlp::trace::{wall, CanaryTracer, End};
use crate::otlp::LaneTelemetry;
use crate::slo::{Resolved, SloTracker};
use crate::stats::{LatencyStats, Summary};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
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
    /// Caught again after it was delivered.
    Duplicate,
    /// Caught after it was resolved as not delivered (lost, or its publish failed).
    Late,
    /// A sequence this run never sent (only possible with a leaked key).
    NeverSent,
}

/// Counters, read together under one lock so the invariant holds in every snapshot:
/// `sent = delivered + lost + publish_failed + in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub sent: u64,
    pub delivered: u64,
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
        self.sent == self.delivered + self.lost + self.publish_failed + self.in_flight
    }

    pub fn failed(&self, kind: FailureKind) -> u64 {
        self.failed_by_kind[kind as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Delivered,
    Lost,
    PublishFailed,
}

/// Latency summaries at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latencies {
    pub window: Summary,
    pub cumulative: Summary,
}

/// A consistent view of a probe's ledger.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub counts: Counts,
    pub latency: Latencies,
    pub publish_latency: Latencies,
    pub schedule_lag: Latencies,
}

#[derive(Debug)]
pub struct Ledger {
    start: Instant,
    interval: Duration,
    deadline: Duration,
    /// Sequence of `states[0]`.
    base: u64,
    states: VecDeque<State>,
    retain: usize,
    next_seq: u64,
    /// Lowest sequence that may still be in flight.
    expire_cursor: u64,
    highest_delivered: Option<u64>,
    counts: Counts,
    pub e2e: LatencyStats,
    pub publish: LatencyStats,
    pub lag: LatencyStats,
    /// The probe's SLO bookkeeping, told about every resolution.
    slo: Option<Arc<Mutex<SloTracker>>>,
    /// OTLP instruments and tracer, when exporting.
    otel: Option<LaneTelemetry>,
    /// Producer spans of sampled canaries in flight, ended at resolution.
    spans: HashMap<u64, opentelemetry_sdk::trace::Span>,
}

/// Memory of resolved canaries is kept for this many deadlines, so duplicates
/// and late arrivals are told apart for that long.
const RETAIN_DEADLINES: u32 = 4;
const MIN_RETAIN: usize = 1024;
const MAX_RETAIN: usize = 1 << 20;
/// The most canaries a probe may have in flight (`deadline / interval`).
pub const MAX_IN_FLIGHT: u128 = (MAX_RETAIN / RETAIN_DEADLINES as usize) as u128;

impl Ledger {
    /// A ledger whose schedule starts at `start` and ticks every `interval`.
    /// `thresholds` become exact Prometheus bucket bounds of the latency histogram.
    pub fn new(
        start: Instant,
        interval: Duration,
        deadline: Duration,
        thresholds: &[Duration],
    ) -> Self {
        let per_deadline = (deadline.as_nanos() / interval.as_nanos().max(1)) as usize + 1;
        let retain = per_deadline
            .saturating_mul(RETAIN_DEADLINES as usize)
            .clamp(MIN_RETAIN, MAX_RETAIN);
        Ledger {
            start,
            interval,
            deadline,
            base: 0,
            states: VecDeque::with_capacity(retain.min(4096)),
            retain,
            next_seq: 0,
            expire_cursor: 0,
            highest_delivered: None,
            counts: Counts::default(),
            e2e: LatencyStats::new(deadline, thresholds, start),
            publish: LatencyStats::new(deadline, &[], start),
            lag: LatencyStats::new(deadline, &[], start),
            slo: None,
            otel: None,
            spans: HashMap::new(),
        }
    }

    /// Records latencies (and traces) into OTLP instruments from now on.
    pub fn set_telemetry(&mut self, t: LaneTelemetry) {
        self.otel = Some(t);
    }

    pub fn has_telemetry(&self) -> bool {
        self.otel.is_some()
    }

    /// Starts the producer span of `seq` (just sent) at its slot; returns its
    /// `traceparent`, when tracing.
    pub fn start_trace(&mut self, seq: u64) -> Option<String> {
        let t = self.otel.as_ref()?;
        let tracer = t.tracer()?;
        let lane = t.partition.map_or(0, |p| p as u32);
        let (span, header) = tracer.start(lane, seq, t.partition, wall(self.intended(seq)));
        if let Some(span) = span {
            self.spans.insert(seq, span);
        }
        Some(header)
    }

    /// The span context of `seq`'s producer span, while it is open.
    pub fn span_context(&self, seq: u64) -> Option<opentelemetry::trace::SpanContext> {
        use opentelemetry::trace::Span as _;
        self.spans.get(&seq).map(|s| s.span_context().clone())
    }

    fn end_span(&mut self, seq: u64, end: End, at: Instant) {
        if let Some(span) = self.spans.remove(&seq) {
            CanaryTracer::end(span, end, wall(at));
        }
    }

    /// Ends every open producer span as unresolved (at shutdown).
    pub fn end_open_spans(&mut self, now: Instant) {
        for (_, span) in self.spans.drain() {
            CanaryTracer::end(span, End::Unresolved, wall(now));
        }
    }

    /// Reports every resolution from now on to `slo` (shared by a probe's lanes).
    pub fn set_slo(&mut self, slo: Arc<Mutex<SloTracker>>) {
        self.slo = Some(slo);
    }

    /// Tells the SLO engine that `n` canaries resolved at `now`.
    fn resolved(&self, now: Instant, outcome: Resolved, n: u64) {
        if let (Some(slo), true) = (&self.slo, n > 0) {
            let mut t = slo.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..n {
                t.record(now, outcome);
            }
        }
    }

    /// Moves the schedule's start to `start`, before any canary was sent (a
    /// probe starts its schedule once its catch side is ready). Later calls
    /// are ignored: moving a running schedule would change past latencies.
    pub fn start_schedule(&mut self, start: Instant) {
        if self.next_seq == 0 {
            self.start = start;
        }
    }

    /// The intended send time of `seq`: its slot in the fixed-rate schedule.
    pub fn intended(&self, seq: u64) -> Instant {
        let nanos = self.interval.as_nanos().saturating_mul(seq as u128);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The next sequence to send and its intended time.
    pub fn next_slot(&self) -> (u64, Instant) {
        (self.next_seq, self.intended(self.next_seq))
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Registers the next canary as sent at `now`; returns its sequence.
    pub fn send(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.states.push_back(State::InFlight);
        while self.states.len() > self.retain {
            // Config validation keeps `retain` several deadlines long, so only
            // resolved canaries are forgotten; should one still be in flight,
            // it is resolved as lost rather than leaked.
            if self.states.pop_front() == Some(State::InFlight) {
                self.counts.in_flight -= 1;
                self.counts.lost += 1;
                self.resolved(now, Resolved::Failed, 1);
                let deadline = self.deadline;
                self.end_span(self.base, End::Lost { deadline }, now);
            }
            self.base += 1;
            self.expire_cursor = self.expire_cursor.max(self.base);
        }
        self.counts.sent += 1;
        self.counts.in_flight += 1;
        let lag = now.saturating_duration_since(self.intended(seq));
        self.lag.record(lag, now);
        if let Some(t) = &self.otel {
            t.lag(lag);
        }
        seq
    }

    fn state_mut(&mut self, seq: u64) -> Option<&mut State> {
        let i = seq.checked_sub(self.base)?;
        self.states.get_mut(usize::try_from(i).ok()?)
    }

    /// Records the broker's acknowledgement of `seq` after `latency`.
    pub fn published(&mut self, seq: u64, latency: Duration, now: Instant) {
        self.publish.record(latency, now);
        if let Some(t) = &self.otel {
            t.publish(latency);
        }
        if let Some(span) = self.spans.get_mut(&seq) {
            CanaryTracer::acknowledged(span, latency, wall(now));
        }
    }

    /// The producer refused `seq`. Ignored if it was already resolved (a
    /// canary caught before its publish errored stays delivered).
    pub fn publish_failed(&mut self, seq: u64, kind: FailureKind) -> bool {
        match self.state_mut(seq) {
            Some(s) if *s == State::InFlight => {
                *s = State::PublishFailed;
                self.counts.in_flight -= 1;
                self.counts.publish_failed += 1;
                self.counts.failed_by_kind[kind as usize] += 1;
                let now = Instant::now();
                self.resolved(now, Resolved::Failed, 1);
                self.end_span(seq, End::PublishFailed(kind), now);
                true
            }
            _ => false,
        }
    }

    /// One of our canaries was caught at `now`.
    pub fn caught(&mut self, seq: u64, now: Instant) -> Arrival {
        if seq >= self.next_seq {
            self.counts.rejected += 1;
            return Arrival::NeverSent;
        }
        let intended = self.intended(seq);
        let deadline = self.deadline;
        let highest = self.highest_delivered;
        let Some(state) = self.state_mut(seq) else {
            // Older than the ledger remembers: far past its deadline, so it cannot be delivered.
            self.counts.late += 1;
            return Arrival::Late;
        };
        match *state {
            State::InFlight => {
                let latency = now.saturating_duration_since(intended);
                if latency >= deadline {
                    *state = State::Lost;
                    self.counts.in_flight -= 1;
                    self.counts.lost += 1;
                    self.counts.late += 1;
                    self.resolved(now, Resolved::Failed, 1);
                    self.end_span(seq, End::Lost { deadline }, intended + deadline);
                    return Arrival::Late;
                }
                *state = State::Delivered;
                self.counts.in_flight -= 1;
                self.counts.delivered += 1;
                let reordered = highest.is_some_and(|h| h > seq);
                if reordered {
                    self.counts.reordered += 1;
                } else {
                    self.highest_delivered = Some(seq);
                }
                self.e2e.record(latency, now);
                if let Some(t) = &self.otel {
                    t.latency(latency);
                }
                self.resolved(now, Resolved::Delivered(latency), 1);
                self.end_span(seq, End::Delivered, now);
                Arrival::Delivered { latency, reordered }
            }
            State::Delivered => {
                self.counts.duplicate += 1;
                Arrival::Duplicate
            }
            State::Lost | State::PublishFailed => {
                self.counts.late += 1;
                Arrival::Late
            }
        }
    }

    /// Counts a message at the sink that is not one of this probe's canaries.
    pub fn stray(&mut self, kind: Stray) {
        match kind {
            Stray::Foreign => self.counts.foreign += 1,
            Stray::Rejected => self.counts.rejected += 1,
            Stray::Unrelated => self.counts.unrelated += 1,
        }
    }

    /// Declares lost every in-flight canary whose deadline has passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut lost = 0;
        while self.expire_cursor < self.next_seq {
            if self.intended(self.expire_cursor) + self.deadline > now {
                break;
            }
            let seq = self.expire_cursor;
            if let Some(s) = self.state_mut(seq) {
                if *s == State::InFlight {
                    *s = State::Lost;
                    lost += 1;
                    let (deadline, at) = (self.deadline, self.intended(seq) + self.deadline);
                    self.end_span(seq, End::Lost { deadline }, at);
                }
            }
            self.expire_cursor += 1;
        }
        self.counts.in_flight -= lost;
        self.counts.lost += lost;
        self.resolved(now, Resolved::Failed, lost);
        lost
    }

    /// When the oldest in-flight canary expires, if any is in flight.
    pub fn next_expiry(&mut self) -> Option<Instant> {
        if self.counts.in_flight == 0 {
            return None;
        }
        // Skip canaries already resolved: only an in-flight one can expire.
        while self.expire_cursor < self.next_seq {
            match self.state_mut(self.expire_cursor) {
                Some(State::InFlight) => break,
                _ => self.expire_cursor += 1,
            }
        }
        Some(self.intended(self.expire_cursor) + self.deadline)
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        Snapshot {
            counts: self.counts,
            latency: Latencies {
                window: self.e2e.window(now),
                cumulative: self.e2e.cumulative(),
            },
            publish_latency: Latencies {
                window: self.publish.window(now),
                cumulative: self.publish.cumulative(),
            },
            schedule_lag: Latencies {
                window: self.lag.window(now),
                cumulative: self.lag.cumulative(),
            },
        }
    }
}

/// One snapshot over several ledgers (a probe's lanes), all locked by the caller.
pub fn aggregate(ledgers: &mut [std::sync::MutexGuard<'_, Ledger>], now: Instant) -> Snapshot {
    if let [only] = ledgers {
        return only.snapshot(now);
    }
    let mut counts = Counts::default();
    let h = crate::stats::histogram;
    // (window, cumulative) for end-to-end, publish and lag.
    let mut m = [(h(), h()), (h(), h()), (h(), h())];
    for l in ledgers.iter_mut() {
        counts.add(&l.counts);
        l.e2e.add_to(now, &mut m[0].0, &mut m[0].1);
        l.publish.add_to(now, &mut m[1].0, &mut m[1].1);
        l.lag.add_to(now, &mut m[2].0, &mut m[2].1);
    }
    let latencies = |i: usize| Latencies {
        window: Summary::of(&m[i].0),
        cumulative: Summary::of(&m[i].1),
    };
    Snapshot {
        counts,
        latency: latencies(0),
        publish_latency: latencies(1),
        schedule_lag: latencies(2),
    }
}

#[cfg(test)]
mod tests;
