//! Publishes canaries with the token in the `Chirp-Token` header (and the
//! body). Core NATS has no per-message acknowledgement: the publish latency
//! lasts until the client's flush has written the message to its socket
//! (async-nats' `flush` is not a round trip to the server).

use super::{config::InjectConfig, is_connected, Connected};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Inject, Outgoing, PublishError, SetupError};
use async_nats::{Client, HeaderMap};
use std::time::Duration;

pub struct NatsInject {
    client: Client,
    subject: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl NatsInject {
    pub fn new(
        conn: &Connected,
        cfg: &InjectConfig,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let client = conn.inject().cloned().ok_or_else(|| {
            let what = format!("connection `{}`", cfg.connection);
            SetupError::new(what, false, "no client for injects")
        })?;
        Ok(NatsInject {
            client,
            subject: cfg.subject.clone(),
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
        let (client, timeout) = (self.client.clone(), self.timeout);
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, client.flush()).await {
                Ok(Ok(())) => Ok(Ack::Confirmed),
                // Queued in the client: it may still be delivered after a reconnect.
                Ok(Err(_)) | Err(_) => Ok(Ack::Unconfirmed),
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
