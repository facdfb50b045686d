//! A probe: one scheduled stream of canaries from an inject point to a catch
//! point. The [`ledger::Ledger`] decides each canary's outcome; this module
//! signs and sends canaries on a fixed-rate schedule and classifies every
//! message that reaches the catch side.

pub mod ledger;

use crate::canary::{self, Signer, Token, TokenError};
use crate::config::ProbeConfig;
use crate::transport::{Ack, Injector, Outgoing};
use ledger::{Arrival, FailureKind, Ledger, Snapshot, Stray};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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

/// One probe's identity, keys and ledger, shared by its inject loop, its
/// catch side and the exporters.
#[derive(Debug)]
pub struct Probe {
    pub config: ProbeConfig,
    pub run_id: u64,
    signer: Signer,
    /// Verifies webhook signatures at `/hooks/{probe}` (the catch's own secret, else the signing key).
    pub hook_signer: Signer,
    ledger: Mutex<Ledger>,
    /// The clients this probe depends on, set once when the runtime connects them.
    links: OnceLock<Links>,
    /// True once the catch side is confirmed listening and the schedule has started.
    ready: tokio::sync::watch::Sender<bool>,
}

/// The clients a probe depends on, for readiness.
pub struct Links {
    pub injector: Arc<Injector>,
    pub catch: Option<async_nats::Client>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links")
    }
}

impl Probe {
    /// A probe whose schedule starts at `start`.
    pub fn new(
        config: ProbeConfig,
        run_id: u64,
        signer: Signer,
        hook_signer: Signer,
        start: Instant,
    ) -> Self {
        let thresholds: Vec<Duration> = config.slo.latency.iter().map(|l| l.threshold).collect();
        let ledger = Ledger::new(start, config.interval, config.deadline, &thresholds);
        Probe {
            config,
            run_id,
            signer,
            hook_signer,
            ledger: Mutex::new(ledger),
            links: OnceLock::new(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Waits until the probe's catch side listens and its schedule has started.
    pub async fn ready(&self) {
        let _ = self.ready.subscribe().wait_for(|r| *r).await;
    }

    /// Waits until the catch side is confirmed listening (a NATS subscription
    /// acknowledged by the server), so the first canaries cannot be missed by
    /// a subscription still on its way. Returns false if stopped first.
    async fn wait_catch_ready(&self, stop: &CancellationToken) -> bool {
        let Some(client) = self.links.get().and_then(|l| l.catch.clone()) else {
            return true;
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
                && l.catch
                    .as_ref()
                    .is_none_or(crate::transport::nats::is_connected)
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The ledger, locked. Critical sections are short and never await.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock would be a bug in the ledger; the
        // counts are still consistent (every update is a few integer adds), so keep serving.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.ledger().snapshot(now)
    }

    /// Classifies one message caught at `now` and records it.
    /// `header` is the token header, when the transport has headers.
    pub fn on_message(&self, header: Option<&str>, body: &[u8], now: Instant) -> Verdict {
        let Some(text) = canary::find(header, body, self.config.payload.token_pointer.as_deref())
        else {
            self.ledger().stray(Stray::Unrelated);
            return Verdict::Stray(Stray::Unrelated);
        };
        match self.signer.decode(&text) {
            Err(TokenError::Malformed | TokenError::BadMac) => {
                tracing::debug!(probe = %self.name(), "Rejected a message with an invalid canary token.");
                self.ledger().stray(Stray::Rejected);
                Verdict::Stray(Stray::Rejected)
            }
            Ok(Token { probe, run_id, .. })
                if run_id != self.run_id || probe != self.config.name =>
            {
                self.ledger().stray(Stray::Foreign);
                Verdict::Stray(Stray::Foreign)
            }
            Ok(token) => {
                let arrival = self.ledger().caught(token.seq, now);
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
    /// sends canaries until `stop`, or until `limit` canaries were sent or
    /// `duration` has passed. Also sweeps expired canaries.
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
        self.ledger().start_schedule(start);
        self.ready.send_replace(true);
        let until = duration.map(|d| start + d);
        let timeout = self.config.publish_timeout;
        let deadline = self.config.deadline;
        loop {
            let ((seq, intended), expiry) = {
                let mut l = self.ledger();
                (l.next_slot(), l.next_expiry())
            };
            if limit.is_some_and(|n| seq >= n) || until.is_some_and(|u| intended >= u) {
                break;
            }
            // Wake for the next slot, or earlier when a canary's deadline
            // passes, so `lost` is declared on time even with long intervals.
            let wake_for_expiry = expiry.filter(|e| *e < intended);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(wake_for_expiry.unwrap_or(intended)) => {}
            }
            if wake_for_expiry.is_some() {
                self.ledger().expire(Instant::now());
                continue;
            }
            let now = Instant::now();
            let seq = {
                let mut l = self.ledger();
                l.expire(now);
                l.send(now)
            };
            if now.saturating_duration_since(intended) >= deadline {
                // The producer stalled past this canary's whole deadline: it
                // can no longer be delivered, so it is not sent at all.
                self.ledger().publish_failed(seq, FailureKind::Timeout);
                continue;
            }
            let fields = Token {
                probe: self.config.name.clone(),
                run_id: self.run_id,
                seq,
                sent_unix_us: canary::unix_now_us(),
            };
            let token = self.signer.encode(&fields);
            let body = canary::body(&token, &fields, self.config.payload.size);
            let msg = Outgoing {
                token,
                body: body.into(),
            };
            let started = Instant::now();
            match injector.send(msg, timeout).await {
                Err(e) => {
                    tracing::debug!(probe = %self.name(), seq, kind = e.kind.as_str(), error = %e, "Publish failed.");
                    self.ledger().publish_failed(seq, e.kind);
                }
                Ok(confirm) => {
                    let probe = Arc::clone(&self);
                    tokio::spawn(async move {
                        match confirm.await {
                            Ok(Ack::Confirmed) => {
                                let now = Instant::now();
                                probe.ledger().published(now - started, now);
                            }
                            Ok(Ack::Unconfirmed) => {}
                            Err(e) => {
                                tracing::debug!(probe = %probe.name(), seq, kind = e.kind.as_str(), error = %e, "Publish failed.");
                                probe.ledger().publish_failed(seq, e.kind);
                            }
                        }
                    });
                }
            }
        }
    }
}
