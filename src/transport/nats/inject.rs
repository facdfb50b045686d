//! Publishes canaries with the token in the `Chirp-Token` header (and the
//! body). Core NATS has no per-message acknowledgement: the publish latency
//! lasts until a flush of the client has written the message to its socket
//! (async-nats' `flush` is not a round trip to the server). One flush per
//! connection covers every canary published before it ([`Flusher`]), so
//! canaries sent together cost one flush, not one each.

use super::{config::InjectConfig, is_connected, Connected};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Inject, Outgoing, PublishError, SetupError};
use async_nats::{Client, HeaderMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long one shared flush may take before the next is tried; each
/// canary also waits at most its own probe's timeout.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Flushes: how far they got.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// The last flush that ended (well or not).
    ended: u64,
    /// The last flush that wrote everything before it.
    written: u64,
}

/// One connection's flushes, shared by its probes: a canary takes a ticket
/// (the number of the next flush) after its publish is queued, and is
/// written once a flush with that number or a later one succeeds, since
/// the client writes in order. One flush runs at a time; the canaries
/// queued while it runs share the next.
pub(crate) struct Flusher {
    client: Client,
    /// The number the next flush will have.
    next: Mutex<u64>,
    wake: Arc<Notify>,
    flushed: watch::Sender<Flushed>,
}

impl Flusher {
    /// A flusher for `client`, its task spawned on the current runtime; the
    /// task ends when the last holder drops the flusher. It belongs to the
    /// client, as the client's own connection task does, not to the
    /// runtime's tracked tasks: those are waited for before clients close,
    /// and canaries being confirmed at shutdown still need their flush.
    pub(crate) fn start(client: Client) -> Arc<Flusher> {
        let wake = Arc::new(Notify::new());
        let flusher = Arc::new(Flusher {
            client,
            next: Mutex::new(1),
            wake: Arc::clone(&wake),
            flushed: watch::Sender::new(Flushed::default()),
        });
        tokio::spawn(Flusher::run(Arc::downgrade(&flusher), wake));
        flusher
    }

    async fn run(flusher: Weak<Flusher>, wake: Arc<Notify>) {
        loop {
            wake.notified().await;
            let Some(f) = flusher.upgrade() else { return };
            let number = {
                let mut next = f.next.lock().unwrap_or_else(|p| p.into_inner());
                *next += 1;
                *next - 1
            };
            let ok = matches!(
                tokio::time::timeout(FLUSH_TIMEOUT, f.client.flush()).await,
                Ok(Ok(()))
            );
            f.flushed.send_modify(|s| {
                s.ended = number;
                if ok {
                    s.written = number;
                }
            });
        }
    }

    /// A ticket for what was queued before this call.
    fn ticket(&self) -> u64 {
        let t = *self.next.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
        t
    }

    /// Whether a flush wrote what `ticket` covers, within `timeout`.
    async fn written(&self, ticket: u64, timeout: Duration) -> bool {
        let mut rx = self.flushed.subscribe();
        let ended = tokio::time::timeout(timeout, rx.wait_for(|s| s.ended >= ticket)).await;
        matches!(ended, Ok(Ok(s)) if s.written >= ticket)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Lets the task see that it is the last one and end.
        self.wake.notify_one();
    }
}

pub struct NatsInject {
    client: Client,
    flusher: Arc<Flusher>,
    /// Built once: cloning it per canary copies no string.
    subject: async_nats::Subject,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl NatsInject {
    pub fn new(
        conn: &Connected,
        cfg: &InjectConfig,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let (client, flusher) = conn.inject().zip(conn.flusher()).ok_or_else(|| {
            let what = format!("connection `{}`", cfg.connection);
            SetupError::new(what, false, "no client for injects")
        })?;
        Ok(NatsInject {
            client: client.clone(),
            flusher,
            subject: async_nats::Subject::from(cfg.subject.as_str()),
            headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl Inject for NatsInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        // The client would buffer it until it reconnects: the broker is
        // unreachable now, and that is what this slot shows.
        if !is_connected(&self.client) {
            return Err(PublishError::new(
                FailureKind::Unavailable,
                "not connected to NATS",
            ));
        }
        let headers = headers(&self.headers, &msg);
        let publish = self
            .client
            .publish_with_headers(self.subject.clone(), headers, msg.body);
        match tokio::time::timeout(self.timeout, publish).await {
            // Dropping the publish future before it completes means the message was never queued.
            Err(_) => {
                return Err(PublishError::new(
                    FailureKind::Timeout,
                    "the NATS client's send buffer stayed full",
                ))
            }
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(())) => {}
        }
        let (flusher, timeout) = (Arc::clone(&self.flusher), self.timeout);
        let ticket = flusher.ticket();
        Ok(Box::pin(async move {
            if flusher.written(ticket, timeout).await {
                Ok(Ack::Confirmed)
            } else {
                // Queued in the client: it may still be delivered after a reconnect.
                Ok(Ack::Unconfirmed)
            }
        }))
    }

    fn is_up(&self) -> bool {
        is_connected(&self.client)
    }
}

/// A canary's NATS headers: the configured ones, `Chirp-Token` and, when
/// tracing, `traceparent` (JetStream adds its `Nats-Msg-Id`).
pub(crate) fn headers(extra: &[(String, String)], msg: &Outgoing) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in extra {
        headers.insert(k.as_str(), v.as_str());
    }
    headers.insert(canary::HEADER, msg.token.as_str());
    if let Some(tp) = &msg.traceparent {
        headers.insert(canary::TRACEPARENT, tp.as_str());
    }
    headers
}

pub(super) fn classify(e: async_nats::PublishError) -> PublishError {
    use async_nats::client::PublishErrorKind as K;
    let kind = match e.kind() {
        K::MaxPayloadExceeded | K::InvalidSubject => FailureKind::Rejected,
        K::Send => FailureKind::Unavailable,
    };
    PublishError::new(kind, e)
}
