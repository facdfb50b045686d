//! Publishes canaries to a JetStream subject and waits for the stream's
//! acknowledgement (the PubAck: the message is stored). The token is the
//! `Chirp-Token` header, the body's, and the `Nats-Msg-Id`, so a stream
//! with a duplicate window stores a retried canary once.
//!
//! A publish whose PubAck does not come within `publish_timeout` is
//! `publish_failed{kind="timeout"}`; the server may still have stored it,
//! and if it is caught later it counts as `late` (its outcome stays).

use super::config::InjectConfig;
use crate::outcome::FailureKind;
use crate::transport::nats::{is_connected, Connected};
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind};
use async_nats::Client;
use std::sync::Arc;
use std::time::Duration;

/// The header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";

pub struct JetStreamInject {
    client: Client,
    js: async_nats::jetstream::Context,
    subject: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

/// Builds the injector. In `check` (`ctx.fail_fast`) a subject no stream
/// captures is an unreachable target (exit 3), found before the first canary.
pub async fn build(
    conn: &Connected,
    cfg: &InjectConfig,
    timeout: Duration,
    ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let what = || format!("connection `{}`", cfg.connection);
    let client = conn
        .inject()
        .cloned()
        .ok_or_else(|| SetupError::new(what(), false, "no client for injects"))?;
    let js = super::context(client.clone(), timeout);
    if let (true, Some(stream)) = (cfg.declare, &cfg.stream) {
        let api = super::context(client.clone(), super::API_TIMEOUT);
        let created = api
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![cfg.subject.clone()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => {}
            Err(e) if ctx.fail_fast => {
                return Err(SetupError::new(
                    format!("{}: cannot create JetStream stream `{stream}`", what()),
                    true,
                    e,
                ))
            }
            // `run` goes on: publishes show whether the stream is there.
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "Cannot create the JetStream stream yet.")
            }
        }
    }
    if ctx.fail_fast {
        let lookup = super::context(client.clone(), super::API_TIMEOUT);
        lookup
            .stream_by_subject(cfg.subject.clone())
            .await
            .map_err(|e| {
                SetupError::new(
                    format!(
                    "{}: no JetStream stream captures subject `{}` (or JetStream is not enabled)",
                    what(),
                    cfg.subject
                ),
                    true,
                    e,
                )
            })?;
    }
    Ok(Arc::new(JetStreamInject {
        client,
        js,
        subject: cfg.subject.clone(),
        headers: cfg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect(),
        timeout,
    }))
}

#[async_trait::async_trait]
impl Inject for JetStreamInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        if !is_connected(&self.client) {
            return Err(PublishError::new(
                FailureKind::Unavailable,
                "not connected to NATS",
            ));
        }
        let mut headers = crate::transport::nats::inject::headers(&self.headers, &msg);
        headers.insert(MSG_ID, msg.token.as_str());
        let publish = self
            .js
            .publish_with_headers(self.subject.clone(), headers, msg.body);
        let ack = match tokio::time::timeout(self.timeout, publish).await {
            Err(_) => {
                return Err(PublishError::new(
                    FailureKind::Timeout,
                    "the NATS client's send buffer stayed full",
                ))
            }
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(ack)) => ack,
        };
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, ack).await {
                Ok(Ok(_)) => Ok(Ack::Confirmed),
                Ok(Err(e)) => Err(classify(e)),
                Err(_) => Err(PublishError::new(
                    FailureKind::Timeout,
                    "no PubAck from the stream within publish_timeout",
                )),
            }
        }))
    }

    fn is_up(&self) -> bool {
        is_connected(&self.client)
    }
}

fn classify(e: JsPublishError) -> PublishError {
    let kind = match e.kind() {
        PublishErrorKind::TimedOut => FailureKind::Timeout,
        PublishErrorKind::BrokenPipe => FailureKind::Unavailable,
        PublishErrorKind::MaxAckPending => FailureKind::Throttled,
        // No stream captures the subject, the message is too large, or an
        // expectation failed: the server will not store it.
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => FailureKind::Rejected,
        PublishErrorKind::Other => FailureKind::Other,
    };
    PublishError::new(kind, e)
}
