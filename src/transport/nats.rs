//! Core NATS: named connections with automatic reconnect, an injector that
//! publishes the canary with its token in a header and the body, and a catch
//! loop over a subscription. Publish latency is the round trip of a flush
//! (PING/PONG) after the publish: core NATS has no per-message ack.

use super::{Ack, Confirm, Outgoing, PublishError};
use crate::canary;
use crate::config::NatsConnection;
use crate::probe::ledger::FailureKind;
use crate::probe::Probe;
use async_nats::{Client, ConnectOptions, HeaderMap};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a NATS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read credentials file `{path}`: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a NATS server URL (write e.g. nats://host:4222)")]
    BadUrl(String),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// Connects to NATS. With `retry`, returns at once and keeps reconnecting in
/// the background (a prober must start even when its broker is down); without,
/// fails if the first attempt fails.
pub async fn connect(
    name: &str,
    conn: &NatsConnection,
    retry: bool,
) -> Result<Client, ConnectError> {
    let mut opts = match &conn.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(token) = &conn.token {
        opts = opts.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&conn.user, &conn.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(tls) = &conn.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.into());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(cert.into(), key.into());
        }
    }
    let conn_name = name.to_owned();
    opts = opts
        .name(format!("chirp/{name}"))
        .connection_timeout(Duration::from_secs(5))
        // Reconnect quickly: every second of backoff is a second of canaries stuck in the buffer.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2000))
        })
        .event_callback(move |event| {
            let name = conn_name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(connection = %name, "NATS connected."),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(connection = %name, "NATS disconnected; reconnecting.")
                    }
                    async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                        connection = %name, sid,
                        "NATS slow consumer: messages dropped by the client; canaries among them will count as lost."
                    ),
                    other => tracing::info!(connection = %name, event = %other, "NATS event."),
                }
            }
        });
    if retry {
        opts = opts.retry_on_initial_connect();
    }
    let mut addrs: Vec<async_nats::ServerAddr> = Vec::new();
    for part in conn.url.expose().split(',') {
        match part.trim().parse() {
            Ok(a) => addrs.push(a),
            Err(_) => return Err(ConnectError::BadUrl(conn.url.redacted())),
        }
    }
    opts.connect(addrs)
        .await
        .map_err(|source| ConnectError::Connect {
            url: conn.url.redacted(),
            source,
        })
}

pub struct NatsInjector {
    client: Client,
    subject: String,
    headers: Vec<(String, String)>,
}

impl NatsInjector {
    pub fn new(client: Client, subject: String, headers: Vec<(String, String)>) -> Self {
        NatsInjector {
            client,
            subject,
            headers,
        }
    }

    pub async fn send(&self, msg: Outgoing, timeout: Duration) -> Result<Confirm, PublishError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        headers.insert(canary::HEADER, msg.token.as_str());
        if let Some(tp) = &msg.traceparent {
            headers.insert(crate::otlp::trace::TRACEPARENT, tp.as_str());
        }
        let publish = self
            .client
            .publish_with_headers(self.subject.clone(), headers, msg.body);
        match tokio::time::timeout(timeout, publish).await {
            // Dropping the publish future before it completes means the message was never queued.
            Err(_) => {
                return Err(PublishError::new(
                    FailureKind::Timeout,
                    "the NATS client's send buffer stayed full",
                ))
            }
            Ok(Err(e)) => return Err(classify_publish(&e)),
            Ok(Ok(())) => {}
        }
        let client = self.client.clone();
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, client.flush()).await {
                Ok(Ok(())) => Ok(Ack::Confirmed),
                // Queued in the client: it may still be delivered after a reconnect.
                Ok(Err(_)) | Err(_) => Ok(Ack::Unconfirmed),
            }
        }))
    }

    pub fn is_connected(&self) -> bool {
        is_connected(&self.client)
    }
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

fn classify_publish(e: &async_nats::PublishError) -> PublishError {
    use async_nats::client::PublishErrorKind as K;
    let kind = match e.kind() {
        K::MaxPayloadExceeded | K::InvalidSubject => FailureKind::Rejected,
        K::Send => FailureKind::Unavailable,
    };
    PublishError::new(kind, e.to_string())
}

/// Subscribes to `subject` and hands every message to `probe` until `stop`.
pub async fn subscribe(
    client: &Client,
    subject: &str,
    queue_group: Option<&str>,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    match queue_group {
        Some(q) => {
            client
                .queue_subscribe(subject.to_owned(), q.to_owned())
                .await
        }
        None => client.subscribe(subject.to_owned()).await,
    }
}

pub async fn catch_loop(
    mut sub: async_nats::Subscriber,
    probe: Arc<Probe>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let now = Instant::now();
        let get = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        probe.on_message(
            get(canary::HEADER),
            get(crate::otlp::trace::TRACEPARENT),
            &msg.payload,
            now,
        );
    }
    if stop.is_cancelled() {
        let _ = sub.unsubscribe().await;
    } else {
        tracing::error!(
            probe = %probe.name(),
            "The NATS subscription ended (the client was closed); this probe's canaries will count as lost."
        );
    }
}
