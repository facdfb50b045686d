//! Kafka via rdkafka (librdkafka): producers that behave like a careful
//! client (idempotent, `acks=all`, `linger.ms=0`, token in a header and the
//! value, delivery reports as publish latency) and a catch consumer that
//! never joins a group protocol: it assigns the topic's partitions itself,
//! starting at their current end, so there are no rebalances to miscount
//! and no offsets committed anywhere unless configured. Also the embedded
//! test cluster (librdkafka's mock cluster) for trying chirp out.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use crate::outcome::FailureKind;
use crate::transport::{PublishError, SetupError};
use config::{Brokers, ConnectionConfig};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, ClientContext};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often partitions and broker health are re-read.
pub const REFRESH: Duration = Duration::from_secs(10);
/// Partitions of each topic the embedded test cluster creates.
pub const EMBEDDED_PARTITIONS: i32 = 3;

/// Why a Kafka client could not be built or a topic read.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka client")]
    Client(#[source] KafkaError),
    #[error("cannot read topic `{topic}` from the brokers")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic `{0}` does not exist (or has no partitions)")]
    NoTopic(String),
    #[error("cannot start the embedded test cluster")]
    Embedded(#[source] KafkaError),
    #[error("cannot start the embedded test cluster's thread")]
    Thread(#[source] std::io::Error),
}

impl KafkaSetupError {
    /// A broker or topic that is not there, as opposed to a local problem.
    fn unreachable(&self) -> bool {
        matches!(
            self,
            KafkaSetupError::Metadata { .. } | KafkaSetupError::NoTopic(_)
        )
    }

    pub(crate) fn setup(self, what: impl Into<String>) -> SetupError {
        let unreachable = self.unreachable();
        SetupError::new(what, unreachable, self)
    }
}

/// Tracks whether the brokers answer, from librdkafka's error callbacks and our metadata reads.
pub struct Health {
    up: AtomicBool,
    /// Counts the times the brokers became unreachable.
    link: Arc<crate::transport::LinkStatus>,
    /// Set at shutdown: brokers going away then is expected, not news.
    closing: AtomicBool,
    name: String,
}

impl Health {
    pub fn new(name: &str) -> Arc<Health> {
        Arc::new(Health {
            up: AtomicBool::new(true),
            link: crate::transport::LinkStatus::new(name, "client"),
            closing: AtomicBool::new(false),
            name: name.to_owned(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Stops reporting broker state changes (chirp is shutting down).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn set(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        if was && !up {
            self.link.lost();
            tracing::warn!(connection = %self.name, "Kafka brokers unreachable.");
        } else if !was && up {
            tracing::info!(connection = %self.name, "Kafka brokers reachable again.");
        }
    }
}

/// librdkafka callbacks routed to our logs and health flag. librdkafka's own
/// chatter goes to debug level: a broker restart is one warning, not fifty.
#[derive(Clone)]
pub struct Callbacks(Arc<Health>);

impl ClientContext for Callbacks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::debug!(connection = %self.0.name, facility = fac, "librdkafka: {message}")
            }
            _ => {
                tracing::trace!(connection = %self.0.name, facility = fac, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.0.set(false);
        }
        tracing::debug!(connection = %self.0.name, error = %error, reason, "librdkafka error.");
    }
}

impl rdkafka::consumer::ConsumerContext for Callbacks {}

/// The embedded test cluster: librdkafka's mock cluster, a Kafka stand-in
/// that lives inside this process. It is owned by its own thread (the
/// handle is not `Send`) and stops when this is dropped.
pub struct Embedded {
    pub bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    /// Starts a one-broker mock cluster with `topics` created, each with
    /// [`EMBEDDED_PARTITIONS`] partitions.
    pub fn start(topics: Vec<String>) -> Result<Embedded, KafkaSetupError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("chirp-embedded-kafka".into())
            .spawn(move || {
                let cluster = match rdkafka::mocking::MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, EMBEDDED_PARTITIONS, 1) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Keep the cluster until the owner says stop (or goes away).
                let _ = stop_rx.recv();
            })
            .map_err(KafkaSetupError::Thread)?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaSetupError::Embedded(KafkaError::Global(RDKafkaErrorCode::Fail)))?
            .map_err(KafkaSetupError::Embedded)?;
        Ok(Embedded {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// librdkafka settings for a connection: brokers, TLS, SASL, then the
/// user's pass-through properties (which win).
pub fn client_config(conn: &ConnectionConfig, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    let protocol = match (&conn.tls, &conn.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(tls) = &conn.tls {
        match &tls.ca_file {
            Some(ca) => c.set("ssl.ca.location", ca),
            // OpenSSL is linked statically and its compiled-in certificate
            // directory is not the system's: let librdkafka look in the
            // usual places.
            None => c.set("ssl.ca.location", "probe"),
        };
        if let Some(cert) = &tls.cert_file {
            c.set("ssl.certificate.location", cert);
        }
        if let Some(key) = &tls.key_file {
            c.set("ssl.key.location", key);
        }
    }
    if let Some(sasl) = &conn.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_str());
        c.set("sasl.username", &sasl.username);
        c.set("sasl.password", sasl.password.expose());
    }
    for (k, v) in &conn.properties {
        c.set(k, v.expose());
    }
    c
}

/// A named Kafka connection: its settings, broker health, the embedded
/// cluster when it is one, and the producers its probes share (one per
/// `acks` and publish timeout).
pub struct Connected {
    base: ClientConfig,
    pub health: Arc<Health>,
    embedded: Option<Embedded>,
    producers: Mutex<HashMap<(String, u128), FutureProducer<Callbacks>>>,
}

/// Sets up the connection `name`; with embedded brokers, starts the test
/// cluster with `topics` created.
pub fn connect(
    name: &str,
    conn: &ConnectionConfig,
    topics: Vec<String>,
) -> Result<Connected, SetupError> {
    let mut embedded = None;
    let bootstrap = match &conn.brokers {
        Brokers::List(b) => b.clone(),
        Brokers::Embedded => {
            let mut topics = topics;
            topics.sort();
            topics.dedup();
            let e = Embedded::start(topics).map_err(|e| e.setup(format!("connection `{name}`")))?;
            tracing::info!(
                connection = %name,
                bootstrap = %e.bootstrap,
                "Started the embedded Kafka test cluster (librdkafka's mock cluster inside chirp, not a Kafka broker)."
            );
            let b = e.bootstrap.clone();
            embedded = Some(e);
            b
        }
    };
    Ok(Connected {
        base: client_config(conn, &bootstrap),
        health: Health::new(name),
        embedded,
        producers: Mutex::new(HashMap::new()),
    })
}

impl Connected {
    pub fn link(&self) -> Arc<crate::transport::LinkStatus> {
        Arc::clone(&self.health.link)
    }

    /// Stops reporting broker changes, and stops the embedded cluster.
    pub async fn close(self) {
        self.health.close();
        drop(self.producers);
        let embedded = self.embedded;
        let _ = tokio::task::spawn_blocking(move || drop(embedded)).await;
    }
}

/// Whether a metadata read reached the brokers (a missing topic is an
/// answer; a failed request is not).
fn brokers_answered(r: &Result<Vec<i32>, KafkaSetupError>) -> bool {
    r.as_ref().err().is_none_or(answered)
}

/// Whether this failed metadata read still reached the brokers (a missing
/// topic is an answer; a failed request is not).
fn answered(e: &KafkaSetupError) -> bool {
    match e {
        KafkaSetupError::NoTopic(_) => true,
        KafkaSetupError::Metadata {
            source: KafkaError::MetadataFetch(code),
            ..
        } => matches!(
            code,
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::LeaderNotAvailable
        ),
        _ => false,
    }
}

/// The partitions of `topic`, from the brokers. Blocking (up to [`METADATA_TIMEOUT`]).
pub fn partitions_of<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Vec<i32>, KafkaSetupError> {
    let md = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|source| KafkaSetupError::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| KafkaSetupError::NoTopic(topic.to_owned()))?;
    if let Some(err) = t.error() {
        return Err(KafkaSetupError::Metadata {
            topic: topic.to_owned(),
            source: KafkaError::MetadataFetch(err.into()),
        });
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    if ps.is_empty() {
        return Err(KafkaSetupError::NoTopic(topic.to_owned()));
    }
    Ok(ps)
}

/// Maps a librdkafka error to a publish failure kind.
pub fn classify(e: &KafkaError) -> PublishError {
    use RDKafkaErrorCode as C;
    let kind = match e.rdkafka_error_code() {
        // A purge happens when a stuck producer is replaced: its canaries timed out in effect.
        Some(
            C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::PurgeQueue
            | C::PurgeInflight,
        ) => FailureKind::Timeout,
        Some(C::QueueFull | C::ThrottlingQuotaExceeded) => FailureKind::Throttled,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::TransactionalIdAuthorizationFailed,
        ) => FailureKind::Auth,
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend,
        ) => FailureKind::Unavailable,
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::PolicyViolation
            | C::InvalidRecord
            | C::InvalidRequiredAcks,
        ) => FailureKind::Rejected,
        _ => FailureKind::Other,
    };
    PublishError::new(kind, e.clone())
}
