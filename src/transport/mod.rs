//! Transports: where canaries go in (inject) and come out (catch). Every
//! transport has the same shape, `transport/<name>/{mod, config, inject,
//! catch, tests}.rs`, and only this file and `connections.rs` name them all:
//! here the config enums (`{nats: {...}}` in `probes.yaml`), there the few
//! matches that connect, build an injector and start a catch. The rest of
//! chirp talks to the small traits below, so it never names a transport.

pub mod amqp;
mod connections;
mod errors;
pub mod http;
pub mod jetstream;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod pubsub;
pub mod redis;
pub mod sqs;

pub use connections::{connect, connect_needed, needs, Connections, Need, Roles};
pub use errors::{chain, classify_io};

use crate::canary::Signer;
use crate::config::errors::{hint, Problems};
use crate::outcome::{FailureKind, Stray, Verdict};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes ring rustls' process-wide default provider (once; a provider
/// installed before stays). Clients that take the process default, as
/// Google's do without their aws-lc-rs feature, need one, or they panic
/// on first use: `main` calls this at start, and so does every transport
/// that needs it, for a runtime built without `main` (tests, benches).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

const ONE_TRANSPORT: &str =
    "name exactly one transport, e.g. `nats: {connection: main, subject: orders.in}`";

/// The error for a key that names no transport.
fn unknown_transport<E: serde::de::Error>(key: &str, known: &[&str]) -> E {
    E::custom(format!(
        "unknown transport `{key}` (one of: {}){}",
        known.join(", "),
        hint(key, known)
    ))
}

/// `{<transport>: {...}}`: a mapping with exactly one key naming the transport.
macro_rules! one_transport {
    ($ty:ident { $($name:literal => $variant:ident($inner:ty)),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::{Error, MapAccess, Visitor};
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a mapping naming one transport, e.g. `nats: {...}`")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        let Some(key) = map.next_key::<String>()? else {
                            return Err(A::Error::custom(ONE_TRANSPORT));
                        };
                        let value = $ty::from_key(&key, &mut map)?;
                        if map.next_key::<String>()?.is_some() {
                            return Err(A::Error::custom(ONE_TRANSPORT));
                        }
                        Ok(value)
                    }
                }
                d.deserialize_map(V)
            }
        }

        impl $ty {
            /// The value of transport key `key`, read from `map`.
            fn from_key<'de, A: serde::de::MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
                Ok(match key {
                    $($name => $ty::$variant(map.next_value::<$inner>()?),)*
                    other => return Err(unknown_transport(other, &[$($name),*])),
                })
            }
        }
    };
}

/// A probe's `catch`: one transport, and optionally `dead_letter`, a second
/// catch point on the pipeline's dead-letter queue or topic.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchSpec {
    pub catch: CatchConfig,
    pub dead_letter: Option<CatchConfig>,
}

impl<'de> Deserialize<'de> for CatchSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CatchSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping naming one transport, e.g. `nats: {...}`, and optionally `dead_letter`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CatchSpec, A::Error> {
                let (mut catch, mut dead_letter) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    if key == "dead_letter" {
                        dead_letter = Some(map.next_value::<CatchConfig>()?);
                    } else if catch.is_some() {
                        return Err(A::Error::custom(ONE_TRANSPORT));
                    } else {
                        catch = Some(CatchConfig::from_key(&key, &mut map)?);
                    }
                }
                let catch = catch.ok_or_else(|| A::Error::custom(ONE_TRANSPORT))?;
                Ok(CatchSpec { catch, dead_letter })
            }
        }
        d.deserialize_map(V)
    }
}

/// A named broker client (`connections:`), shared by the probes that name it.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionConfig {
    Nats(nats::config::ConnectionConfig),
    Kafka(kafka::config::ConnectionConfig),
    Amqp(amqp::config::ConnectionConfig),
    Mqtt(mqtt::config::ConnectionConfig),
    Redis(redis::config::ConnectionConfig),
    Sqs(sqs::config::ConnectionConfig),
    PubSub(pubsub::config::ConnectionConfig),
}

/// Where a probe's canaries go in.
#[derive(Debug, Clone, PartialEq)]
pub enum InjectConfig {
    Nats(nats::config::InjectConfig),
    JetStream(jetstream::config::InjectConfig),
    Http(http::config::InjectConfig),
    Kafka(kafka::config::InjectConfig),
    Amqp(amqp::config::InjectConfig),
    Mqtt(mqtt::config::InjectConfig),
    Redis(redis::config::InjectConfig),
    Sqs(sqs::config::InjectConfig),
    PubSub(pubsub::config::InjectConfig),
}

/// Where a probe's canaries come out.
#[derive(Debug, Clone, PartialEq)]
pub enum CatchConfig {
    Nats(nats::config::CatchConfig),
    JetStream(jetstream::config::CatchConfig),
    Http(http::config::CatchConfig),
    Kafka(kafka::config::CatchConfig),
    Amqp(amqp::config::CatchConfig),
    Mqtt(mqtt::config::CatchConfig),
    Redis(redis::config::CatchConfig),
    Sqs(sqs::config::CatchConfig),
    PubSub(pubsub::config::CatchConfig),
}

one_transport!(ConnectionConfig {
    "nats" => Nats(nats::config::ConnectionConfig),
    "kafka" => Kafka(kafka::config::ConnectionConfig),
    "amqp" => Amqp(amqp::config::ConnectionConfig),
    "mqtt" => Mqtt(mqtt::config::ConnectionConfig),
    "redis" => Redis(redis::config::ConnectionConfig),
    "sqs" => Sqs(sqs::config::ConnectionConfig),
    "pubsub" => PubSub(pubsub::config::ConnectionConfig),
});
one_transport!(InjectConfig {
    "nats" => Nats(nats::config::InjectConfig),
    "jetstream" => JetStream(jetstream::config::InjectConfig),
    "http" => Http(http::config::InjectConfig),
    "kafka" => Kafka(kafka::config::InjectConfig),
    "amqp" => Amqp(amqp::config::InjectConfig),
    "mqtt" => Mqtt(mqtt::config::InjectConfig),
    "redis" => Redis(redis::config::InjectConfig),
    "sqs" => Sqs(sqs::config::InjectConfig),
    "pubsub" => PubSub(pubsub::config::InjectConfig),
});
one_transport!(CatchConfig {
    "nats" => Nats(nats::config::CatchConfig),
    "jetstream" => JetStream(jetstream::config::CatchConfig),
    "http" => Http(http::config::CatchConfig),
    "kafka" => Kafka(kafka::config::CatchConfig),
    "amqp" => Amqp(amqp::config::CatchConfig),
    "mqtt" => Mqtt(mqtt::config::CatchConfig),
    "redis" => Redis(redis::config::CatchConfig),
    "sqs" => Sqs(sqs::config::CatchConfig),
    "pubsub" => PubSub(pubsub::config::CatchConfig),
});

impl ConnectionConfig {
    pub fn system(&self) -> &'static str {
        match self {
            ConnectionConfig::Nats(_) => "nats",
            ConnectionConfig::Kafka(_) => "kafka",
            ConnectionConfig::Amqp(_) => "amqp",
            ConnectionConfig::Mqtt(_) => "mqtt",
            ConnectionConfig::Redis(_) => "redis",
            ConnectionConfig::Sqs(_) => "sqs",
            ConnectionConfig::PubSub(_) => "pubsub",
        }
    }

    pub fn validate(&self, path: &str, p: &mut Problems) {
        let path = format!("{path}.{}", self.system());
        match self {
            ConnectionConfig::Nats(c) => c.validate(&path, p),
            ConnectionConfig::Kafka(c) => c.validate(&path, p),
            ConnectionConfig::Amqp(c) => c.validate(&path, p),
            ConnectionConfig::Mqtt(c) => c.validate(&path, p),
            ConnectionConfig::Redis(c) => c.validate(&path, p),
            ConnectionConfig::Sqs(c) => c.validate(&path, p),
            ConnectionConfig::PubSub(c) => c.validate(&path, p),
        }
    }
}

/// One end of a probe, for labels, span names and alert texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The transport: `nats`, `kafka`, `http`.
    pub system: &'static str,
    /// OpenTelemetry's `messaging.system`, for a messaging system (not HTTP).
    pub messaging: Option<&'static str>,
    /// Subject or topic; none for webhooks (URLs may carry credentials).
    pub destination: Option<String>,
    /// The named connection, if any.
    pub connection: Option<String>,
    /// For people: "NATS subject orders.in (connection main)".
    pub description: String,
}

impl InjectConfig {
    pub fn end(&self) -> End {
        match self {
            InjectConfig::Nats(c) => nats::config::end(&c.subject, &c.connection),
            InjectConfig::JetStream(c) => jetstream::config::inject_end(c),
            InjectConfig::Http(c) => http::config::inject_end(c),
            InjectConfig::Kafka(c) => kafka::config::end(&c.topic, &c.connection),
            InjectConfig::Amqp(c) => amqp::config::inject_end(c),
            InjectConfig::Mqtt(c) => mqtt::config::end(&c.topic, &c.connection),
            InjectConfig::Redis(c) => redis::config::end(&c.stream, &c.connection),
            InjectConfig::Sqs(c) => sqs::config::end(&c.queue, &c.connection),
            InjectConfig::PubSub(c) => pubsub::config::inject_end(c),
        }
    }

    pub fn system(&self) -> &'static str {
        self.end().system
    }

    pub fn validate(
        &self,
        path: &str,
        conns: &BTreeMap<String, ConnectionConfig>,
        p: &mut Problems,
    ) {
        let path = format!("{path}.{}", self.system());
        match self {
            InjectConfig::Nats(c) => c.validate(&path, p),
            InjectConfig::JetStream(c) => c.validate(&path, p),
            InjectConfig::Http(c) => c.validate(&path, p),
            InjectConfig::Kafka(c) => c.validate(&path, p),
            InjectConfig::Amqp(c) => c.validate(&path, p),
            InjectConfig::Mqtt(c) => c.validate(&path, p),
            InjectConfig::Redis(c) => c.validate(&path, p),
            InjectConfig::Sqs(c) => c.validate(&path, p),
            InjectConfig::PubSub(c) => c.validate(&path, p),
        }
        check_connection(&self.end(), &path, conns, p);
    }

    /// Whether this inject sends to chirp's own listener (the self-test loop).
    pub fn needs_listener(&self) -> bool {
        matches!(self, InjectConfig::Http(c) if c.url.expose().starts_with('/'))
    }
}

impl CatchConfig {
    /// `probe` names the webhook path of an HTTP catch.
    pub fn end(&self, probe: &str) -> End {
        match self {
            CatchConfig::Nats(c) => nats::config::end(&c.subject, &c.connection),
            CatchConfig::JetStream(c) => jetstream::config::catch_end(c),
            CatchConfig::Http(_) => http::config::catch_end(probe),
            CatchConfig::Kafka(c) => kafka::config::end(&c.topic, &c.connection),
            CatchConfig::Amqp(c) => amqp::config::catch_end(c),
            CatchConfig::Mqtt(c) => mqtt::config::end(&c.topic, &c.connection),
            CatchConfig::Redis(c) => redis::config::end(&c.stream, &c.connection),
            CatchConfig::Sqs(c) => sqs::config::end(&c.queue, &c.connection),
            CatchConfig::PubSub(c) => pubsub::config::catch_end(c),
        }
    }

    pub fn system(&self) -> &'static str {
        self.end("").system
    }

    pub fn validate(
        &self,
        path: &str,
        conns: &BTreeMap<String, ConnectionConfig>,
        p: &mut Problems,
    ) {
        let path = format!("{path}.{}", self.system());
        match self {
            CatchConfig::Nats(c) => c.validate(&path, p),
            CatchConfig::JetStream(c) => c.validate(&path, p),
            CatchConfig::Http(c) => c.validate(&path, p),
            CatchConfig::Kafka(c) => c.validate(&path, p),
            CatchConfig::Amqp(c) => c.validate(&path, p),
            CatchConfig::Mqtt(c) => c.validate(&path, p),
            CatchConfig::Redis(c) => c.validate(&path, p),
            CatchConfig::Sqs(c) => c.validate(&path, p),
            CatchConfig::PubSub(c) => c.validate(&path, p),
        }
        check_connection(&self.end(""), &path, conns, p);
    }

    /// What this catch consumes where consumers split the messages between
    /// them (a queue, a subscription, a consumer group, a durable consumer),
    /// for a person; `None` where every reader sees every message.
    pub fn shared_consumer(&self) -> Option<String> {
        let on = |what: String, connection: &str| format!("{what} (connection `{connection}`)");
        match self {
            CatchConfig::Amqp(c) => {
                Some(on(format!("RabbitMQ queue `{}`", c.queue), &c.connection))
            }
            CatchConfig::Sqs(c) => {
                Some(on(format!("SQS queue `{}`", c.queue.name()), &c.connection))
            }
            CatchConfig::PubSub(c) => Some(on(
                format!("Pub/Sub subscription `{}`", c.subscription),
                &c.connection,
            )),
            CatchConfig::Redis(c) => c.group.as_ref().map(|g| {
                on(
                    format!("Redis stream `{}` as consumer group `{g}`", c.stream),
                    &c.connection,
                )
            }),
            CatchConfig::JetStream(c) => c.consumer.as_ref().map(|d| {
                on(
                    format!("JetStream durable consumer `{d}` of stream `{}`", c.stream),
                    &c.connection,
                )
            }),
            _ => None,
        }
    }

    /// Whether this catch is chirp's own webhook receiver.
    pub fn needs_listener(&self) -> bool {
        matches!(self, CatchConfig::Http(_))
    }
}

/// Checks a probe's dead-letter catch point.
pub fn check_dead_letter(dl: &CatchConfig, catch: &CatchConfig, path: &str, p: &mut Problems) {
    if matches!(dl, CatchConfig::Http(_)) {
        p.add(
            path,
            "a dead-letter catch point is a queue, topic, subject or stream: chirp's webhook receiver is the probe's own catch",
        );
    } else if dl == catch {
        p.add(
            path,
            "the dead-letter catch point is the probe's catch point itself; name the pipeline's dead-letter queue or topic",
        );
    }
}

/// Checks that need both ends of a probe.
pub fn check_ends(inject: &InjectConfig, catch: &CatchConfig, path: &str, p: &mut Problems) {
    if let (InjectConfig::Http(i), CatchConfig::Http(c)) = (inject, catch) {
        if i.url.expose().starts_with('/') && c.secret.is_some() {
            p.add(
                format!("{path}.catch.http.secret"),
                "this probe posts to chirp's own listener, signed with `signing_key`: a different `secret` would reject every canary; remove it",
            );
        }
    }
}

/// Whether a probe measures only chirp itself: the self-test loop through
/// chirp's own listener, or Kafka through the embedded test cluster.
pub fn self_test(
    inject: &InjectConfig,
    catch: &CatchConfig,
    conns: &BTreeMap<String, ConnectionConfig>,
) -> bool {
    let embedded = |name: &str| matches!(conns.get(name), Some(ConnectionConfig::Kafka(k)) if k.brokers == kafka::config::Brokers::Embedded);
    match (inject, catch) {
        (InjectConfig::Http(_), CatchConfig::Http(_)) => inject.needs_listener(),
        (InjectConfig::Kafka(i), CatchConfig::Kafka(c)) => {
            embedded(&i.connection) && embedded(&c.connection)
        }
        _ => false,
    }
}

/// The named connection exists and is of the end's transport.
fn check_connection(
    end: &End,
    path: &str,
    conns: &BTreeMap<String, ConnectionConfig>,
    p: &mut Problems,
) {
    let Some(name) = &end.connection else { return };
    let path = format!("{path}.connection");
    // JetStream rides a NATS connection.
    let needs = match end.system {
        "jetstream" => "nats",
        other => other,
    };
    match conns.get(name) {
        Some(c) if c.system() == needs => {}
        Some(c) => p.add(
            path,
            format!(
                "connection `{name}` is a {} connection; this transport needs a {needs} one",
                c.system(),
            ),
        ),
        None => {
            let names: Vec<&str> = conns.keys().map(String::as_str).collect();
            let more = match hint(name, &names) {
                h if !h.is_empty() => h,
                _ if names.is_empty() => "; define it under `connections:`".to_owned(),
                _ => format!("; defined connections: {}", names.join(", ")),
            };
            p.add(path, format!("no connection named `{name}`{more}"));
        }
    }
}

/// One canary ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub token: String,
    pub body: Bytes,
    /// The partition, in per-partition mode.
    pub partition: Option<i32>,
    /// The record key where the transport has one (the probe's name), so a
    /// probe's canaries share a partition and its ordering.
    pub key: String,
    /// The W3C `traceparent` of the canary's span, when tracing.
    pub traceparent: Option<String>,
    /// The body's media type, where the transport carries one (HTTP, AMQP).
    pub content_type: &'static str,
}

/// A publish the producer refused, classified by the transport that saw it.
#[derive(Debug, thiserror::Error)]
#[error("publish failed ({})", .kind.as_str())]
pub struct PublishError {
    pub kind: FailureKind,
    #[source]
    pub source: BoxError,
}

impl PublishError {
    pub fn new(kind: FailureKind, source: impl Into<BoxError>) -> Self {
        PublishError {
            kind,
            source: source.into(),
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

/// Waits for the broker's answer to one publish, bounded by the publish timeout.
pub type Confirm = BoxFuture<'static, Result<Ack, PublishError>>;

/// Where a probe's canaries are sent.
#[async_trait::async_trait]
pub trait Inject: Send + Sync {
    /// Hands one canary to the client, in schedule order. The returned
    /// future waits for the confirmation and may run concurrently with later sends.
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError>;

    /// Whether the client is connected now (`chirp_probe_up`).
    fn is_up(&self) -> bool;

    /// In per-partition mode, the partitions canaries go to (one lane
    /// each), updated when the topic grows; `None` for a single lane.
    fn lanes(&self) -> Option<tokio::sync::watch::Receiver<Vec<i32>>> {
        None
    }
}

/// A running catch side.
#[async_trait::async_trait]
pub trait CatchHandle: Send + Sync {
    /// Whether the client is connected now (`chirp_probe_up`).
    fn is_up(&self) -> bool;

    /// Resolves once the catch side is confirmed listening, so the first
    /// canaries cannot pass by a subscription still on its way. False if
    /// chirp stopped first.
    async fn ready(&self, stop: &CancellationToken) -> bool;
}

/// One message as a catch side saw it.
#[derive(Debug, Clone, Copy)]
pub struct Caught<'a> {
    /// The `Chirp-Token` header, where the transport has headers.
    pub token: Option<&'a str>,
    /// The `traceparent` header.
    pub traceparent: Option<&'a str>,
    pub body: &'a [u8],
    /// When it was taken from the client.
    pub at: Instant,
}

/// Where a catch side hands every message it sees (implemented by the probe).
pub trait CatchSink: Send + Sync {
    fn name(&self) -> &str;
    /// Classifies and records one message.
    fn on_message(&self, msg: Caught<'_>) -> Verdict;
    /// Counts a message refused before it could be read (a bad webhook signature).
    fn on_stray(&self, kind: Stray);
}

/// A connection, injector or catch that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SetupError {
    /// "connection `main`", "probe `orders`: catch".
    pub what: String,
    /// The target could not be reached or does not exist (exit 3), as
    /// opposed to a local mistake.
    pub unreachable: bool,
    #[source]
    pub source: BoxError,
}

impl SetupError {
    pub fn new(what: impl Into<String>, unreachable: bool, source: impl Into<BoxError>) -> Self {
        SetupError {
            what: what.into(),
            unreachable,
            source: source.into(),
        }
    }
}

/// What building injectors and catches needs from the runtime.
#[derive(Clone)]
pub struct Context {
    /// Random per process start; names default consumer groups.
    pub run_id: u64,
    /// Signs webhook bodies; the webhook receiver's default key.
    pub signer: Signer,
    /// `http://host:port` (or `https://`) of chirp's own listener, when it has one.
    pub listener: Option<String>,
    /// The certificate chirp's listener serves, when it speaks TLS.
    pub own_certificate: Option<Arc<http::OwnCertificate>>,
    /// Fail when a target cannot be reached at start (`check`), instead of
    /// retrying in the background (`run`).
    pub fail_fast: bool,
    /// Ends catch loops and background watchers.
    pub stop: CancellationToken,
    /// Every task a transport spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// chirp's webhook receivers, by probe.
    pub hooks: Arc<http::Hooks>,
}

/// One client connection's record, exported as
/// `chirp_transport_reconnects_total{connection, role}`.
#[derive(Debug)]
pub struct LinkStatus {
    /// The named connection.
    pub connection: String,
    /// `inject` or `catch` where they have their own client; `client` where
    /// one client serves both (Kafka's shared broker state).
    pub role: &'static str,
    reconnects: std::sync::atomic::AtomicU64,
}

impl LinkStatus {
    /// Goes on from `old`'s count (the same connection and role, made anew
    /// by a reload).
    pub fn inherit(&self, old: &LinkStatus) {
        self.reconnects
            .fetch_add(old.reconnects(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn new(connection: &str, role: &'static str) -> Arc<LinkStatus> {
        Arc::new(LinkStatus {
            connection: connection.to_owned(),
            role,
            reconnects: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The connection was lost (chirp reconnects, or is reconnecting).
    pub fn lost(&self) {
        self.reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Times the connection was lost so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}
