//! A probe: one scheduled stream of canaries from an inject point to a catch
//! point. The [`ledger::Ledger`] decides each canary's outcome; this module
//! signs and sends canaries on a fixed-rate schedule and classifies every
//! message that reaches the catch side.

pub mod ledger;

use crate::canary::{self, Signer, Token, TokenError};
use crate::config::ProbeConfig;
use crate::otlp::{LaneTelemetry, ProbeTelemetry};
use crate::slo::SloTracker;
use crate::transport::{Ack, Injector, Outgoing};
use ledger::{Arrival, FailureKind, Ledger, Snapshot, Stray};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
            Verdict::Arrival(Arrival::Duplicate) => "duplicate",
            Verdict::Arrival(Arrival::Late) => "late",
            Verdict::Arrival(Arrival::NeverSent) => "rejected",
            Verdict::Stray(Stray::Foreign) => "foreign",
            Verdict::Stray(Stray::Rejected) => "rejected",
            Verdict::Stray(Stray::Unrelated) => "unrelated",
        }
    }
}

/// One sequence of canaries with its own ledger: the whole probe, or one
/// Kafka partition in per-partition mode.
#[derive(Debug)]
pub struct Lane {
    /// The lane number carried in tokens (the partition, in per-partition mode).
    pub id: u32,
    /// The Kafka partition canaries of this lane are produced to.
    pub partition: Option<i32>,
    ledger: Mutex<Ledger>,
}

impl Lane {
    /// The ledger, locked. Critical sections are short and never await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock would be a bug in the ledger; the
        // counts stay consistent (every update is a few integer adds), so keep serving.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One probe's identity, keys and lanes, shared by its inject loop, its
/// catch side and the exporters.
#[derive(Debug)]
pub struct Probe {
    pub config: ProbeConfig,
    pub run_id: u64,
    signer: Signer,
    /// Verifies webhook signatures at `/hooks/{probe}` (the catch's own secret, else the signing key).
    pub hook_signer: Signer,
    /// Kafka per-partition mode: one lane per partition, exported with a `partition` label.
    pub per_partition: bool,
    /// Lanes in id order; partitions added to a topic add lanes.
    lanes: RwLock<Vec<Arc<Lane>>>,
    /// SLO bookkeeping over all lanes, when the probe has objectives.
    slo: Option<Arc<Mutex<SloTracker>>>,
    /// The clients this probe depends on, set once when the runtime connects them.
    links: OnceLock<Links>,
    /// True once the catch side is confirmed listening and the schedule has started.
    ready: tokio::sync::watch::Sender<bool>,
    /// OTLP instruments, when exporting; set once, before the schedule starts.
    telemetry: OnceLock<Arc<ProbeTelemetry>>,
}

/// The clients a probe depends on, for readiness.
pub struct Links {
    pub injector: Arc<Injector>,
    pub catch: CatchLink,
}

/// The catch side's client, for readiness.
pub enum CatchLink {
    /// chirp's own webhook receiver.
    Webhook,
    Nats(async_nats::Client),
    Kafka(Arc<crate::transport::kafka::CatchState>),
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links")
    }
}

impl Probe {
    /// A probe with one lane, or one lane per partition in `partitions`
    /// (per-partition mode). Schedules start when the inject loop starts.
    pub fn new(
        config: ProbeConfig,
        run_id: u64,
        signer: Signer,
        hook_signer: Signer,
        partitions: Option<&[i32]>,
    ) -> Self {
        let slo = SloTracker::new(&config.slo, Instant::now(), std::time::SystemTime::now())
            .map(|t| Arc::new(Mutex::new(t)));
        let mut probe = Probe {
            config,
            run_id,
            signer,
            hook_signer,
            per_partition: partitions.is_some(),
            lanes: RwLock::new(Vec::new()),
            slo: None,
            links: OnceLock::new(),
            ready: tokio::sync::watch::Sender::new(false),
            telemetry: OnceLock::new(),
        };
        probe.slo = slo;
        match partitions {
            None => probe.add_lane(0, None, Instant::now()),
            Some(ps) => {
                for p in ps {
                    probe.add_lane(*p as u32, Some(*p), Instant::now());
                }
            }
        }
        probe
    }

    /// Adds a lane whose schedule starts at `start` (a partition added to the topic).
    pub fn add_lane(&self, id: u32, partition: Option<i32>, start: Instant) {
        let thresholds: Vec<Duration> = self
            .config
            .slo
            .latency
            .iter()
            .map(|l| l.threshold)
            .collect();
        let mut ledger = Ledger::new(
            start,
            self.config.interval,
            self.config.deadline,
            &thresholds,
        );
        if let Some(slo) = &self.slo {
            ledger.set_slo(Arc::clone(slo));
        }
        let lane = Arc::new(Lane {
            id,
            partition,
            ledger: Mutex::new(ledger),
        });
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        // Under the lock, so a lane added while telemetry is set gets it too.
        if let Some(t) = self.telemetry.get() {
            lane.ledger()
                .set_telemetry(LaneTelemetry::new(Arc::clone(t), partition));
        }
        if lanes.iter().all(|l| l.id != id) {
            lanes.push(lane);
            lanes.sort_by_key(|l| l.id);
        }
    }

    /// Records this probe's latencies and traces into `t` from now on.
    pub fn set_telemetry(&self, t: Arc<ProbeTelemetry>) {
        if self.telemetry.set(t).is_err() {
            return;
        }
        let lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = self.telemetry.get() {
            for lane in lanes.iter() {
                let mut l = lane.ledger();
                if !l.has_telemetry() {
                    l.set_telemetry(LaneTelemetry::new(Arc::clone(t), lane.partition));
                }
            }
        }
    }

    pub fn telemetry(&self) -> Option<&Arc<ProbeTelemetry>> {
        self.telemetry.get()
    }

    /// Ends the producer spans of canaries still in flight (at shutdown).
    pub fn end_open_spans(&self) {
        let now = Instant::now();
        for lane in self.lanes() {
            lane.ledger().end_open_spans(now);
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
            .find(|l| l.id == id)
            .cloned()
    }

    /// Waits until the probe's catch side listens and its schedule has started.
    pub async fn ready(&self) {
        let _ = self.ready.subscribe().wait_for(|r| *r).await;
    }

    /// Waits until the catch side is confirmed listening (a NATS subscription
    /// acknowledged by the server), so the first canaries cannot be missed by
    /// a subscription still on its way. Returns false if stopped first.
    async fn wait_catch_ready(&self, stop: &CancellationToken) -> bool {
        let client = match self.links.get().map(|l| &l.catch) {
            Some(CatchLink::Nats(c)) => c.clone(),
            Some(CatchLink::Kafka(state)) => {
                return tokio::select! {
                    _ = stop.cancelled() => false,
                    _ = state.assigned() => true,
                };
            }
            Some(CatchLink::Webhook) | None => return true,
        };
        loop {
            if crate::transport::nats::is_connected(&client)
                && tokio::time::timeout(Duration::from_secs(2), client.flush())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Records the clients this probe uses; later calls are ignored.
    pub fn set_links(&self, links: Links) {
        let _ = self.links.set(links);
    }

    /// Whether the probe's inject and catch clients are connected.
    pub fn is_up(&self) -> bool {
        self.links.get().is_some_and(|l| {
            l.injector.is_connected()
                && match &l.catch {
                    CatchLink::Webhook => true,
                    CatchLink::Nats(c) => crate::transport::nats::is_connected(c),
                    CatchLink::Kafka(state) => state.is_up(),
                }
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The SLO state, when the probe has objectives.
    pub fn slo_state(&self, now: Instant) -> Option<crate::slo::SloState> {
        self.slo
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).state(now))
    }

    /// Counts summed over all lanes.
    pub fn counts(&self) -> ledger::Counts {
        let mut total = ledger::Counts::default();
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

    /// Records a message at the sink that is not one of our canaries (on lane 0's books).
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
        self.lanes()
            .iter()
            .map(|l| {
                let mut g = l.ledger();
                g.expire(now);
                g.counts().in_flight
            })
            .sum()
    }

    /// The earliest deadline among canaries in flight.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.lanes()
            .iter()
            .filter_map(|l| l.ledger().next_expiry())
            .min()
    }

    /// Classifies one message caught at `now` and records it. `header` is
    /// the token header and `traceparent` the W3C trace context header, when
    /// the transport has headers.
    pub fn on_message(
        &self,
        header: Option<&str>,
        traceparent: Option<&str>,
        body: &[u8],
        now: Instant,
    ) -> Verdict {
        let Some(text) = canary::find(header, body, self.config.payload.token_pointer.as_deref())
        else {
            self.stray(Stray::Unrelated);
            return Verdict::Stray(Stray::Unrelated);
        };
        match self.signer.decode(&text) {
            Err(TokenError::Malformed | TokenError::BadMac) => {
                tracing::debug!(probe = %self.name(), "Rejected a message with an invalid canary token.");
                self.stray(Stray::Rejected);
                Verdict::Stray(Stray::Rejected)
            }
            Ok(Token { probe, run_id, .. })
                if run_id != self.run_id || probe != self.config.name =>
            {
                self.stray(Stray::Foreign);
                Verdict::Stray(Stray::Foreign)
            }
            Ok(token) => {
                let (arrival, producer) = match self.lane(token.lane) {
                    Some(lane) => {
                        let mut l = lane.ledger();
                        let producer = l.span_context(token.seq);
                        (l.caught(token.seq, now), producer)
                    }
                    None => {
                        self.stray(Stray::Rejected);
                        (Arrival::NeverSent, None)
                    }
                };
                if let Some(tracer) = self.telemetry().and_then(|t| t.tracer.as_ref()) {
                    let at = crate::otlp::trace::wall(now);
                    tracer.caught(traceparent, producer, token.seq, &arrival, at);
                }
                match arrival {
                    Arrival::Delivered { .. } => {}
                    Arrival::NeverSent => {
                        tracing::warn!(probe = %self.name(), seq = token.seq, "Caught a validly signed canary this run never sent; is the signing key shared?");
                    }
                    other => {
                        tracing::debug!(probe = %self.name(), seq = token.seq, arrival = ?other, "Canary caught again or too late.")
                    }
                }
                Verdict::Arrival(arrival)
            }
        }
    }

    /// Once the catch side is ready, starts the schedule `phase` later and
    /// sends canaries until `stop`, or until `limit` canaries were sent (per
    /// lane) or `duration` has passed. Also sweeps expired canaries.
    pub async fn inject_loop(
        self: Arc<Self>,
        injector: Arc<Injector>,
        stop: CancellationToken,
        phase: Duration,
        limit: Option<u64>,
        duration: Option<Duration>,
    ) {
        if !self.wait_catch_ready(&stop).await {
            return;
        }
        let start = Instant::now() + phase;
        for lane in self.lanes() {
            lane.ledger().start_schedule(start);
        }
        self.ready.send_replace(true);
        let until = duration.map(|d| start + d);
        let done = |seq: u64, intended: Instant| {
            limit.is_some_and(|n| seq >= n) || until.is_some_and(|u| intended >= u)
        };
        loop {
            let lanes = self.lanes();
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
            if lanes.is_empty() {
                // Per-partition mode before the topic's partitions are known:
                // lanes appear when they are read.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let Some(slot) = next_slot else { break };
            // Wake for the next slot, or earlier when a canary's deadline
            // passes, so `lost` is declared on time even with long intervals.
            let wake_for_expiry = next_expiry.filter(|e| *e < slot);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(wake_for_expiry.unwrap_or(slot)) => {}
            }
            let now = Instant::now();
            if wake_for_expiry.is_some() {
                for lane in &lanes {
                    lane.ledger().expire(now);
                }
                continue;
            }
            // One canary per lane whose slot has come; a lane that fell behind
            // catches up one slot per pass, so lanes stay interleaved.
            for lane in &lanes {
                let (seq, intended) = lane.ledger().next_slot();
                if intended <= now && !done(seq, intended) {
                    self.send_one(&injector, lane).await;
                }
            }
        }
    }

    /// Registers the lane's next canary as sent and hands it to the injector.
    async fn send_one(self: &Arc<Self>, injector: &Arc<Injector>, lane: &Arc<Lane>) {
        let now = Instant::now();
        let (seq, intended, traceparent) = {
            let mut l = lane.ledger();
            l.expire(now);
            let (_, intended) = l.next_slot();
            let seq = l.send(now);
            (seq, intended, l.start_trace(seq))
        };
        if now.saturating_duration_since(intended) >= self.config.deadline {
            // The producer stalled past this canary's whole deadline: it
            // can no longer be delivered, so it is not sent at all.
            lane.ledger().publish_failed(seq, FailureKind::Timeout);
            return;
        }
        let fields = Token {
            probe: self.config.name.clone(),
            run_id: self.run_id,
            lane: lane.id,
            seq,
            sent_unix_us: canary::unix_now_us(),
        };
        let token = self.signer.encode(&fields);
        let body = canary::body(&token, &fields, self.config.payload.size);
        let msg = Outgoing {
            token,
            body: body.into(),
            partition: lane.partition,
            key: self.config.name.clone(),
            traceparent,
        };
        let started = Instant::now();
        match injector.send(msg, self.config.publish_timeout).await {
            Err(e) => {
                tracing::debug!(probe = %self.name(), lane = lane.id, seq, kind = e.kind.as_str(), error = %e, "Publish failed.");
                lane.ledger().publish_failed(seq, e.kind);
            }
            Ok(confirm) => {
                let probe = Arc::clone(self);
                let lane = Arc::clone(lane);
                tokio::spawn(async move {
                    match confirm.await {
                        Ok(Ack::Confirmed) => {
                            let now = Instant::now();
                            lane.ledger().published(seq, now - started, now);
                        }
                        Ok(Ack::Unconfirmed) => {}
                        Err(e) => {
                            tracing::debug!(probe = %probe.name(), lane = lane.id, seq, kind = e.kind.as_str(), error = %e, "Publish failed.");
                            lane.ledger().publish_failed(seq, e.kind);
                        }
                    }
                });
            }
        }
    }
}
