//! Transports: where canaries go in (inject) and come out (catch). Each
//! transport has the same shape: a connection or client, an injector that
//! sends one canary and confirms it, and a catch side that hands every message
//! it sees to the probe. The set is closed, so it is an enum.

pub mod http;
pub mod kafka;
pub mod nats;

use crate::probe::ledger::FailureKind;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::time::Duration;

/// One canary ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub token: String,
    pub body: Bytes,
    /// The Kafka partition, in per-partition mode.
    pub partition: Option<i32>,
    /// The Kafka record key (the probe's name), so a probe's canaries share a partition.
    pub key: String,
    /// The W3C `traceparent` header of the canary's span, when tracing.
    pub traceparent: Option<String>,
}

/// A publish the producer refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    pub kind: FailureKind,
    pub message: String,
}

impl PublishError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        PublishError {
            kind,
            message: message.into(),
        }
    }
}

/// How a publish ended once it was handed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The broker (or webhook) confirmed it; the publish latency is known.
    Confirmed,
    /// No confirmation within the timeout, but the message may still travel
    /// (it sits in the client's buffer during a reconnect). The canary stays
    /// in flight and is decided by the catch side or its deadline.
    Unconfirmed,
}

/// Waits for the broker's answer to one publish, up to the given timeout.
pub type Confirm = BoxFuture<'static, Result<Ack, PublishError>>;

/// Where a probe's canaries are sent.
pub enum Injector {
    Nats(nats::NatsInjector),
    Http(http::HttpInjector),
    Kafka(kafka::KafkaInjector),
}

impl Injector {
    /// Hands the canary to the client, in schedule order. The returned future
    /// waits for the confirmation and may run concurrently with later sends.
    pub async fn send(&self, msg: Outgoing, timeout: Duration) -> Result<Confirm, PublishError> {
        match self {
            Injector::Nats(n) => n.send(msg, timeout).await,
            Injector::Http(h) => Ok(h.send(msg, timeout)),
            Injector::Kafka(k) => k.send(msg),
        }
    }

    /// Whether the client is connected now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        match self {
            Injector::Nats(n) => n.is_connected(),
            Injector::Http(_) => true,
            Injector::Kafka(k) => k.is_connected(),
        }
    }
}
