//! The ledger decides what happened to every canary of one lane of a probe.
//! It owns the schedule's sequence numbers, resolves each sent canary to
//! exactly one outcome (delivered, dead_lettered, lost, publish_failed) and counts
//! observations (duplicate, late, reordered, foreign, rejected, unrelated).
//! It is a pure state machine: every call takes `now` and appends what
//! resolved to `events`, and it calls nobody. Memory is a fixed ring of one
//! byte per recent canary, whatever the uptime.

use crate::config::limits::{MAX_RETAIN, MIN_RETAIN, RETAIN_DEADLINES};
use crate::outcome::{Arrival, Counts, FailureKind, LedgerEvent, Resolution, Stray};
use crate::stats::{LatencyStats, Summary};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Delivered,
    DeadLettered,
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

/// Where the ledger appends what happened.
pub type Events = Vec<LedgerEvent>;

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
    /// The last catch of one of this lane's canaries (the ledger's creation until the first).
    last_caught: Instant,
    /// Whether one of this lane's canaries was ever caught at the catch
    /// point (the dead-letter queue does not count).
    ever_caught: bool,
    counts: Counts,
    pub e2e: LatencyStats,
    pub publish: LatencyStats,
    pub lag: LatencyStats,
}

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
            last_caught: start,
            ever_caught: false,
            counts: Counts::default(),
            e2e: LatencyStats::new(deadline, thresholds, start),
            publish: LatencyStats::new(deadline, &[], start),
            lag: LatencyStats::new(deadline, crate::stats::LAG_BUCKETS, start),
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

    fn resolve(&mut self, seq: u64, resolution: Resolution, at: Instant, events: &mut Events) {
        self.counts.in_flight -= 1;
        match resolution {
            Resolution::Delivered { .. } => self.counts.delivered += 1,
            Resolution::DeadLettered => self.counts.dead_lettered += 1,
            Resolution::Lost => self.counts.lost += 1,
            Resolution::PublishFailed(kind) => {
                self.counts.publish_failed += 1;
                self.counts.failed_by_kind[kind as usize] += 1;
            }
        }
        events.push(LedgerEvent::Resolved {
            seq,
            slot: self.intended(seq),
            resolution,
            at,
        });
    }

    /// Registers the next canary as sent at `now`; returns its sequence.
    pub fn send(&mut self, now: Instant, events: &mut Events) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        // Room first, then the new state: the ring never outgrows `retain`
        // (pushing first would double its allocation at `retain + 1`).
        while self.states.len() >= self.retain {
            // Config validation keeps `retain` several deadlines long, so only
            // resolved canaries are forgotten; should one still be in flight,
            // it is resolved as lost rather than leaked.
            if self.states.pop_front() == Some(State::InFlight) {
                let old = self.base;
                self.resolve(old, Resolution::Lost, now, events);
            }
            self.base += 1;
            self.expire_cursor = self.expire_cursor.max(self.base);
        }
        self.states.push_back(State::InFlight);
        self.counts.sent += 1;
        self.counts.in_flight += 1;
        let slot = self.intended(seq);
        let lag = now.saturating_duration_since(slot);
        self.lag.record(lag, now);
        events.push(LedgerEvent::Sent { seq, slot, lag });
        seq
    }

    fn state_mut(&mut self, seq: u64) -> Option<&mut State> {
        let i = seq.checked_sub(self.base)?;
        self.states.get_mut(usize::try_from(i).ok()?)
    }

    /// Records the broker's acknowledgement of `seq` after `latency`.
    pub fn published(&mut self, seq: u64, latency: Duration, now: Instant, events: &mut Events) {
        self.publish.record(latency, now);
        events.push(LedgerEvent::Acknowledged {
            seq,
            latency,
            at: now,
        });
    }

    /// The producer refused `seq`. Ignored if it was already resolved (a
    /// canary caught before its publish errored stays delivered).
    pub fn publish_failed(
        &mut self,
        seq: u64,
        kind: FailureKind,
        now: Instant,
        events: &mut Events,
    ) -> bool {
        match self.state_mut(seq) {
            Some(s) if *s == State::InFlight => {
                *s = State::PublishFailed;
                self.resolve(seq, Resolution::PublishFailed(kind), now, events);
                true
            }
            _ => false,
        }
    }

    /// One of our canaries was caught at `now`.
    pub fn caught(&mut self, seq: u64, now: Instant, events: &mut Events) -> Arrival {
        self.arrived(seq, now, false, events)
    }

    /// One of our canaries was caught at `now` on the pipeline's
    /// dead-letter queue. Before its deadline, and not caught before, it
    /// resolves as dead-lettered; after a delivery (or a first
    /// dead-lettering) it is a duplicate; after its deadline, late. It does
    /// not count as a catch for silence: the pipeline's output saw nothing.
    pub fn dead_lettered(&mut self, seq: u64, now: Instant, events: &mut Events) -> Arrival {
        self.arrived(seq, now, true, events)
    }

    /// A catch at the catch point, or (`dead_letter`) at the dead-letter queue.
    fn arrived(
        &mut self,
        seq: u64,
        now: Instant,
        dead_letter: bool,
        events: &mut Events,
    ) -> Arrival {
        if seq >= self.next_seq {
            self.counts.rejected += 1;
            return Arrival::NeverSent;
        }
        if !dead_letter {
            self.last_caught = self.last_caught.max(now);
            self.ever_caught = true;
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
                    // Its deadline passed before the sweep came: lost, and caught late.
                    *state = State::Lost;
                    self.counts.late += 1;
                    self.resolve(seq, Resolution::Lost, now, events);
                    return Arrival::Late;
                }
                if dead_letter {
                    *state = State::DeadLettered;
                    self.resolve(seq, Resolution::DeadLettered, now, events);
                    return Arrival::DeadLettered { latency };
                }
                *state = State::Delivered;
                let reordered = highest.is_some_and(|h| h > seq);
                if reordered {
                    self.counts.reordered += 1;
                } else {
                    self.highest_delivered = Some(seq);
                }
                self.e2e.record(latency, now);
                self.resolve(seq, Resolution::Delivered { latency }, now, events);
                Arrival::Delivered { latency, reordered }
            }
            State::Delivered | State::DeadLettered => {
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
    pub fn expire(&mut self, now: Instant, events: &mut Events) -> u64 {
        let mut lost = 0;
        while self.expire_cursor < self.next_seq {
            let seq = self.expire_cursor;
            if self.intended(seq) + self.deadline > now {
                break;
            }
            if let Some(s) = self.state_mut(seq) {
                if *s == State::InFlight {
                    *s = State::Lost;
                    lost += 1;
                    self.resolve(seq, Resolution::Lost, now, events);
                }
            }
            self.expire_cursor += 1;
        }
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

    /// Takes over what `old` counted (a probe started again by a reload),
    /// so its counters go on rather than start from zero. `old` has no
    /// canary in flight (its probe waited for every deadline); any still
    /// there are dropped from `sent`, as at shutdown.
    pub fn inherit(&mut self, old: &Ledger) {
        let mut c = old.counts;
        c.sent -= c.in_flight;
        c.in_flight = 0;
        self.counts.add(&c);
        self.e2e.inherit(&old.e2e);
        self.publish.inherit(&old.publish);
        self.lag.inherit(&old.lag);
        self.last_caught = self.last_caught.max(old.last_caught);
        self.ever_caught |= old.ever_caught;
    }

    /// When one of this lane's canaries was last caught; the ledger's
    /// creation until the first.
    pub fn last_caught(&self) -> Instant {
        self.last_caught
    }

    /// Whether a canary of this lane was ever caught at the catch point.
    pub fn ever_caught(&self) -> bool {
        self.ever_caught
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
