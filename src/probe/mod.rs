//! A probe: one scheduled stream of canaries from an inject point to a catch
//! point. It signs and sends canaries on a fixed-rate schedule, classifies
//! every message its catch side hands it, and tells its observers (SLO,
//! exporters) what its [`ledger::Ledger`]s decided, after releasing their
//! locks. Loss is decided in the ledger, nowhere else.

pub mod ledger;

use crate::canary::{self, Signer, Token, TokenError};
use crate::config::ProbeConfig;
use crate::outcome::{Arrival, Counts, FailureKind, LaneId, LedgerEvent, Observer, Stray, Verdict};
use crate::timer::{self, Timer};
use crate::transport::{
    chain, Ack, CatchHandle, CatchSink, Caught, Inject, Outgoing, PublishError,
};
use futures::stream::{FuturesUnordered, StreamExt};
use ledger::{Events, Ledger, Snapshot};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A canary's confirmation as it comes back: its lane, sequence, when its
/// send began, and what the broker said.
type Confirmed = (Arc<Lane>, u64, Instant, Result<Ack, PublishError>);
type Confirming = Pin<Box<dyn Future<Output = Confirmed> + Send>>;

/// When a probe's canaries go out.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Where in its interval the probe's slots fall (probes are spread).
    pub phase: Duration,
    /// Stop after this many canaries per lane.
    pub limit: Option<u64>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    pub timer: Timer,
}

/// How long a probe waits for its catch side before its schedule starts anyway.
const READY_WAIT: Duration = Duration::from_secs(2);
/// The longest error text kept as a probe's last publish failure.
const FAILURE_TEXT_MAX: usize = 512;

/// A probe's last publish failure, for the status page: its kind, the
/// error as the debug log states it (no secret reaches either), and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFailure {
    pub kind: FailureKind,
    pub error: String,
    pub at: Instant,
}

/// One sequence of canaries with its own ledger: the whole probe, or one
/// Kafka partition in per-partition mode.
#[derive(Debug)]
pub struct Lane {
    pub id: LaneId,
    ledger: Mutex<Ledger>,
}

impl Lane {
    /// The ledger, locked. Critical sections are short and never await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock would be a bug in the ledger; the
        // counts stay consistent (every update is a few integer adds), so keep serving.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One probe's identity, keys, lanes and observers, shared by its inject
/// loop, its catch side and the exporters.
pub struct Probe {
    pub config: ProbeConfig,
    pub run_id: u64,
    signer: Signer,
    /// Per-partition mode: one lane per partition, exported with a `partition` label.
    pub per_partition: bool,
    /// Lanes in id order; partitions added to a topic add lanes.
    lanes: RwLock<Vec<Arc<Lane>>>,
    observers: Vec<Arc<dyn Observer>>,
    /// True once the catch side is confirmed listening and the schedule has started.
    ready: tokio::sync::watch::Sender<bool>,
    inject: OnceLock<Arc<dyn Inject>>,
    catch: OnceLock<Arc<dyn CatchHandle>>,
    /// The catch point on the pipeline's dead-letter queue, if any.
    dead_letter: OnceLock<Arc<dyn CatchHandle>>,
    last_failure: Mutex<Option<PublishFailure>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Probe {
    /// A probe with one lane, or (per-partition mode) one lane per
    /// partition in `partitions`. Schedules start when the inject loop starts.
    pub fn new(
        config: ProbeConfig,
        run_id: u64,
        signer: Signer,
        partitions: Option<&[i32]>,
        observers: Vec<Arc<dyn Observer>>,
    ) -> Self {
        let probe = Probe {
            config,
            run_id,
            signer,
            per_partition: partitions.is_some(),
            lanes: RwLock::new(Vec::new()),
            observers,
            ready: tokio::sync::watch::Sender::new(false),
            inject: OnceLock::new(),
            catch: OnceLock::new(),
            dead_letter: OnceLock::new(),
            last_failure: Mutex::new(None),
        };
        let now = Instant::now();
        match partitions {
            None => probe.add_lane(0, None, now),
            Some(ps) => ps
                .iter()
                .for_each(|p| probe.add_lane(*p as u32, Some(*p), now)),
        }
        probe
    }

    /// Adds a lane whose schedule starts at `start` (a partition added to the topic).
    fn add_lane(&self, id: u32, partition: Option<i32>, start: Instant) {
        let thresholds: Vec<Duration> = self
            .config
            .slo
            .latency
            .iter()
            .map(|l| l.threshold)
            .collect();
        let ledger = Ledger::new(
            start,
            self.config.interval,
            self.config.deadline,
            &thresholds,
        );
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        if lanes.iter().all(|l| l.id.id != id) {
            lanes.push(Arc::new(Lane {
                id: LaneId { id, partition },
                ledger: Mutex::new(ledger),
            }));
            lanes.sort_by_key(|l| l.id.id);
        }
    }

    /// Takes over `old`'s counts, lane by lane (a lane the new probe does
    /// not have yet goes to its first), before this probe sends anything:
    /// a probe started again by a reload keeps its series monotonic.
    pub fn inherit(&self, old: &Probe) {
        let lanes = self.lanes();
        for lane in old.lanes() {
            let into = lanes
                .iter()
                .find(|l| l.id.id == lane.id.id)
                .or(lanes.first());
            match into {
                Some(into) => into.ledger().inherit(&lane.ledger()),
                None => tracing::warn!(
                    probe = %self.name(),
                    "No partition is known yet: the counts of the probe this one replaces start again from zero."
                ),
            }
        }
    }

    /// The lanes, in id order.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lane(&self, id: u32) -> Option<Arc<Lane>> {
        self.lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.id.id == id)
            .cloned()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Records the clients this probe uses; later calls are ignored.
    pub fn attach(
        &self,
        inject: Arc<dyn Inject>,
        catch: Arc<dyn CatchHandle>,
        dead_letter: Option<Arc<dyn CatchHandle>>,
    ) {
        let _ = self.inject.set(inject);
        let _ = self.catch.set(catch);
        if let Some(d) = dead_letter {
            let _ = self.dead_letter.set(d);
        }
    }

    /// Whether the probe's inject and catch clients (the dead-letter
    /// catch's too) are connected.
    pub fn is_up(&self) -> bool {
        self.inject.get().is_some_and(|i| i.is_up())
            && self.catch.get().is_some_and(|c| c.is_up())
            && self.dead_letter.get().is_none_or(|c| c.is_up())
    }

    /// The last publish failure, if any.
    pub fn last_publish_failure(&self) -> Option<PublishFailure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note_failure(&self, kind: FailureKind, mut error: String) {
        if error.len() > FAILURE_TEXT_MAX {
            let mut end = FAILURE_TEXT_MAX;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push('…');
        }
        let failure = PublishFailure {
            kind,
            error,
            at: Instant::now(),
        };
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    }

    /// Waits until the probe's catch side listens and its schedule has started.
    pub async fn ready(&self) {
        let _ = self.ready.subscribe().wait_for(|r| *r).await;
    }

    /// Hands `events` of `lane` to every observer; called with no lock held.
    fn tell(&self, lane: LaneId, events: &[LedgerEvent]) {
        if events.is_empty() {
            return;
        }
        for o in &self.observers {
            o.observe(lane, events);
        }
    }

    /// Counts summed over all lanes.
    pub fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for lane in self.lanes() {
            total.add(&lane.ledger().counts());
        }
        total
    }

    /// One consistent view over all lanes (every lane locked at once).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let lanes = self.lanes();
        let mut guards: Vec<MutexGuard<'_, Ledger>> = lanes.iter().map(|l| l.ledger()).collect();
        ledger::aggregate(&mut guards, now)
    }

    /// Records a message at the sink that is not one of our canaries (on the first lane's books).
    pub fn stray(&self, kind: Stray) {
        match self.lanes().first() {
            Some(lane) => lane.ledger().stray(kind),
            // Per-partition mode before the topic's partitions are known: no
            // canary of ours can be at the sink yet, and there is no series to count on.
            None => {
                tracing::debug!(probe = %self.name(), kind = ?kind, "Message at the sink before any partition is known; not counted.")
            }
        }
    }

    /// Declares lost every expired canary on every lane; returns the number in flight after.
    pub fn expire(&self, now: Instant) -> u64 {
        let mut in_flight = 0;
        for lane in self.lanes() {
            let mut events = Events::new();
            {
                let mut l = lane.ledger();
                l.expire(now, &mut events);
                in_flight += l.counts().in_flight;
            }
            self.tell(lane.id, &events);
        }
        in_flight
    }

    /// The earliest deadline among canaries in flight.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.lanes()
            .iter()
            .filter_map(|l| l.ledger().next_expiry())
            .min()
    }

    /// Once the catch side is ready, starts the schedule `schedule.phase`
    /// later (on the timer's grid) and sends canaries until `stop`, or until
    /// `limit` canaries were sent (per lane) or `duration` has passed. Also
    /// sweeps expired canaries and records publish confirmations; after
    /// `stop` it waits for the confirmations still due. `abort` gives up a
    /// send or confirmation still waiting on its client (at the end of shutdown).
    pub async fn inject_loop(
        self: Arc<Self>,
        stop: CancellationToken,
        abort: CancellationToken,
        schedule: Schedule,
    ) {
        let (Some(inject), Some(catch)) = (self.inject.get().cloned(), self.catch.get().cloned())
        else {
            return;
        };
        let Schedule {
            phase,
            limit,
            duration,
            timer,
        } = schedule;
        // Wait a moment for the catch side to be confirmed listening, so the
        // first canaries are not missed by a subscription on its way; but an
        // unreachable broker must not keep the schedule from starting: its
        // slots show as publish failures, never as silence.
        let dead_letter = self.dead_letter.get().cloned();
        let ready = async {
            if !catch.ready(&stop).await {
                return false;
            }
            match &dead_letter {
                Some(d) => d.ready(&stop).await,
                None => true,
            }
        };
        match tokio::time::timeout(READY_WAIT, ready).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => tracing::warn!(
                probe = %self.name(),
                "The catch side is not confirmed listening yet; starting the schedule anyway."
            ),
        }
        // On the grid, so that probes' slots coincide and share wake-ups.
        let start = timer::align(Instant::now() + phase);
        for lane in self.lanes() {
            lane.ledger().start_schedule(start);
        }
        self.ready.send_replace(true);
        let mut partitions = inject.lanes();
        let until = duration.map(|d| start + d);
        let done = |seq: u64, intended: Instant| {
            limit.is_some_and(|n| seq >= n) || until.is_some_and(|u| intended >= u)
        };
        // Partitions found since the probe was made, or since the last pass, get lanes.
        let sync_lanes = |rx: &mut tokio::sync::watch::Receiver<Vec<i32>>| {
            let at = timer::align(Instant::now().max(start));
            for p in rx.borrow_and_update().iter() {
                self.add_lane(*p as u32, Some(*p), at);
            }
        };
        if let Some(rx) = partitions.as_mut() {
            sync_lanes(rx);
        }
        // Publish confirmations awaited here, not in a task per canary.
        let mut confirms: FuturesUnordered<Confirming> = FuturesUnordered::new();
        loop {
            if let Some(rx) = partitions.as_mut() {
                if rx.has_changed().unwrap_or(false) {
                    sync_lanes(rx);
                }
            }
            let lanes = self.lanes();
            if lanes.is_empty() {
                // Per-partition mode before the topic's partitions are known:
                // lanes appear when they are read.
                let Some(rx) = partitions.as_mut() else { break };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = rx.changed() => match r {
                        Ok(()) => {
                            // The first partitions: give the catch side a
                            // moment to read them too before canaries go out.
                            let _ = tokio::time::timeout(READY_WAIT, catch.ready(&stop)).await;
                            sync_lanes(rx);
                            continue;
                        }
                        Err(_) => break,
                    },
                }
            }
            let mut next_slot: Option<Instant> = None;
            let mut next_expiry: Option<Instant> = None;
            for lane in &lanes {
                let mut l = lane.ledger();
                let (seq, intended) = l.next_slot();
                if !done(seq, intended) {
                    next_slot = Some(next_slot.map_or(intended, |n| n.min(intended)));
                }
                if let Some(e) = l.next_expiry() {
                    next_expiry = Some(next_expiry.map_or(e, |n| n.min(e)));
                }
            }
            let Some(slot) = next_slot else { break };
            // Wake for the next slot, or earlier when a canary's deadline
            // passes, so `lost` is declared on time even with long intervals.
            // Deadlines need no precision: tokio's timer keeps them.
            let wake_for_expiry = next_expiry.filter(|e| *e < slot);
            let wake = async {
                match wake_for_expiry {
                    Some(e) => tokio::time::sleep_until(e).await,
                    None => timer.sleep_until(slot).await,
                }
            };
            tokio::pin!(wake);
            let stopped = loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break true,
                    _ = &mut wake => break false,
                    Some(c) = confirms.next(), if !confirms.is_empty() => self.confirmed(c),
                }
            };
            if stopped {
                break;
            }
            if wake_for_expiry.is_some() {
                self.expire(Instant::now());
                continue;
            }
            // One canary per lane whose slot has come; a lane that fell behind
            // catches up one slot per pass, so lanes stay interleaved.
            let now = Instant::now();
            for lane in &lanes {
                let (seq, intended) = lane.ledger().next_slot();
                if intended <= now && !done(seq, intended) {
                    let sent = tokio::select! {
                        biased;
                        // Shutting down: the canary stays in flight, reported as such.
                        _ = abort.cancelled() => return,
                        c = self.send_one(&inject, lane) => c,
                    };
                    if let Some(c) = sent {
                        confirms.push(c);
                    }
                }
            }
        }
        // Stopped: the confirmations of canaries already sent still count.
        while !confirms.is_empty() {
            tokio::select! {
                biased;
                _ = abort.cancelled() => break,
                Some(c) = confirms.next() => self.confirmed(c),
            }
        }
    }

    /// Registers the lane's next canary as sent and hands it to the
    /// injector; returns its confirmation to wait for, if it was sent.
    async fn send_one(
        self: &Arc<Self>,
        inject: &Arc<dyn Inject>,
        lane: &Arc<Lane>,
    ) -> Option<Confirming> {
        // Only this loop sends on a lane, so the next slot stays the next one
        // while the observers get ready for it (a trace observer opens its
        // span before anything can resolve the canary).
        let (next, intended) = lane.ledger().next_slot();
        let traceparent = self
            .observers
            .iter()
            .find_map(|o| o.sending(lane.id, next, intended));
        let now = Instant::now();
        let mut events = Events::new();
        let seq = {
            let mut l = lane.ledger();
            l.expire(now, &mut events);
            l.send(now, &mut events)
        };
        debug_assert_eq!(seq, next);
        self.tell(lane.id, &events);
        if now.saturating_duration_since(intended) >= self.config.deadline {
            // The producer stalled past this canary's whole deadline: it
            // can no longer be delivered, so it is not sent at all.
            self.note_failure(
                FailureKind::Timeout,
                "not sent: the schedule was behind by more than the deadline".into(),
            );
            self.failed(lane, seq, FailureKind::Timeout);
            return None;
        }
        let fields = Token {
            probe: self.config.name.clone(),
            run_id: self.run_id,
            lane: lane.id.id,
            seq,
            sent_unix_us: canary::unix_now_us(),
        };
        let token = self.signer.encode(&fields);
        let body = match &self.config.payload.template {
            None => canary::body(&token, &fields, self.config.payload.size),
            Some(t) => match t.render(&crate::payload::Values {
                token: &token,
                probe: &fields.probe,
                lane: fields.lane,
                seq,
                sent_unix_us: fields.sent_unix_us,
            }) {
                Ok(b) => b,
                Err(e) => {
                    // Checked when the configuration loaded; a template
                    // that fails later is a failed publish, never silence.
                    self.note_failure(FailureKind::Other, format!("the payload template: {e}"));
                    self.failed(lane, seq, FailureKind::Other);
                    return None;
                }
            },
        };
        let msg = Outgoing {
            token,
            body: body.into(),
            partition: lane.id.partition,
            key: self.config.name.clone(),
            traceparent,
            content_type: self
                .config
                .payload
                .template
                .as_ref()
                .map_or("application/json", |t| t.format().content_type()),
        };
        let started = Instant::now();
        match inject.send(msg).await {
            Err(e) => {
                self.send_failed(lane, seq, e);
                None
            }
            Ok(confirm) => {
                let lane = Arc::clone(lane);
                Some(Box::pin(async move {
                    let confirmed = confirm.await;
                    (lane, seq, started, confirmed)
                }))
            }
        }
    }

    /// Records what the broker said of a canary sent earlier.
    fn confirmed(&self, (lane, seq, started, confirmed): Confirmed) {
        match confirmed {
            Ok(Ack::Confirmed) => {
                let now = Instant::now();
                let mut events = Events::new();
                lane.ledger()
                    .published(seq, now - started, now, &mut events);
                self.tell(lane.id, &events);
            }
            Ok(Ack::Unconfirmed) => {}
            Err(e) => self.send_failed(&lane, seq, e),
        }
    }

    fn send_failed(&self, lane: &Lane, seq: u64, e: PublishError) {
        let error = chain(&e);
        tracing::debug!(probe = %self.name(), lane = lane.id.id, seq, kind = e.kind.as_str(), error = %error, "Publish failed.");
        self.note_failure(e.kind, error);
        self.failed(lane, seq, e.kind);
    }

    fn failed(&self, lane: &Lane, seq: u64, kind: FailureKind) {
        let mut events = Events::new();
        lane.ledger()
            .publish_failed(seq, kind, Instant::now(), &mut events);
        self.tell(lane.id, &events);
    }
}

impl CatchSink for Probe {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// Finds the token (header, JSON pointer, body scan), checks it, and
    /// records the catch on its lane.
    fn on_message(&self, msg: Caught<'_>) -> Verdict {
        self.arrived(msg, false)
    }

    fn on_stray(&self, kind: Stray) {
        self.stray(kind);
    }
}

/// A probe's catch point on the pipeline's dead-letter queue: what arrives
/// there resolves as dead-lettered (see `Ledger::dead_lettered`).
pub struct DeadLetters(pub Arc<Probe>);

impl CatchSink for DeadLetters {
    fn name(&self) -> &str {
        &self.0.config.name
    }

    fn on_message(&self, msg: Caught<'_>) -> Verdict {
        self.0.arrived(msg, true)
    }

    fn on_stray(&self, kind: Stray) {
        self.0.stray(kind);
    }
}

impl Probe {
    /// A message at the catch point, or at the dead-letter queue.
    fn arrived(&self, msg: Caught<'_>, dead_letter: bool) -> Verdict {
        let pointer = self.config.payload.token_pointer.as_deref();
        let Some(text) = canary::find(msg.token, msg.body, pointer) else {
            self.stray(Stray::Unrelated);
            return Verdict::Stray(Stray::Unrelated);
        };
        let token = match self.signer.decode(&text) {
            Err(TokenError::Malformed | TokenError::BadMac) => {
                tracing::debug!(probe = %self.name(), "Rejected a message with an invalid canary token.");
                self.stray(Stray::Rejected);
                return Verdict::Stray(Stray::Rejected);
            }
            Ok(t) if t.run_id != self.run_id || t.probe != self.config.name => {
                self.stray(Stray::Foreign);
                return Verdict::Stray(Stray::Foreign);
            }
            Ok(t) => t,
        };
        let Some(lane) = self.lane(token.lane) else {
            self.stray(Stray::Rejected);
            tracing::warn!(probe = %self.name(), lane = token.lane, "Caught a validly signed canary of a lane this run does not have; is the signing key shared?");
            return Verdict::Arrival(Arrival::NeverSent);
        };
        let mut resolved = Events::new();
        let arrival = if dead_letter {
            lane.ledger()
                .dead_lettered(token.seq, msg.at, &mut resolved)
        } else {
            lane.ledger().caught(token.seq, msg.at, &mut resolved)
        };
        match arrival {
            Arrival::Delivered { .. } | Arrival::DeadLettered { .. } => {}
            Arrival::NeverSent => {
                tracing::warn!(probe = %self.name(), seq = token.seq, "Caught a validly signed canary this run never sent; is the signing key shared?");
                return Verdict::Arrival(arrival);
            }
            other => {
                tracing::debug!(probe = %self.name(), seq = token.seq, arrival = ?other, "Canary caught again or too late.")
            }
        }
        // The catch first: a trace observer still has the producer span open.
        let mut events = vec![LedgerEvent::Caught {
            seq: token.seq,
            arrival,
            at: msg.at,
            traceparent: msg.traceparent.map(str::to_owned),
        }];
        events.append(&mut resolved);
        self.tell(lane.id, &events);
        Verdict::Arrival(arrival)
    }
}

#[cfg(test)]
mod tests;
