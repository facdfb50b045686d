//! Kafka via rdkafka (librdkafka): producers that behave like a careful
//! client (idempotent, `acks=all`, `linger.ms=0`, token in a header and the
//! value, delivery reports as publish latency) and a catch consumer that
//! never joins a group protocol: it assigns the topic's partitions itself,
//! starting at their current end, so there are no rebalances to miscount
//! and no offsets committed anywhere unless configured. Also the embedded
//! test cluster (librdkafka's mock cluster) for trying chirp out.

use super::{Ack, Confirm, Outgoing, PublishError};
use crate::canary;
use crate::config::{KafkaBrokers, KafkaCatch, KafkaConnection};
use crate::probe::ledger::FailureKind;
use crate::probe::Probe;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often partitions and broker health are re-read.
pub const REFRESH: Duration = Duration::from_secs(10);
/// Partitions of each topic the embedded test cluster creates.
pub const EMBEDDED_PARTITIONS: i32 = 3;

/// Why a Kafka client could not be built or a topic read.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot read topic `{topic}` from the brokers: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic `{0}` does not exist (or has no partitions)")]
    NoTopic(String),
    #[error("cannot start the embedded test cluster: {0}")]
    Embedded(KafkaError),
    #[error("cannot start the embedded test cluster's thread: {0}")]
    Thread(std::io::Error),
}

/// Tracks whether the brokers answer, from librdkafka's error callbacks and our metadata reads.
#[derive(Default)]
pub struct Health {
    up: AtomicBool,
    /// Set at shutdown: brokers going away then is expected, not news.
    closing: AtomicBool,
    name: String,
}

impl Health {
    pub fn new(name: &str) -> Arc<Health> {
        Arc::new(Health {
            up: AtomicBool::new(true),
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
            tracing::warn!(connection = %self.name, "Kafka brokers unreachable.");
        } else if !was && up {
            tracing::info!(connection = %self.name, "Kafka brokers reachable again.");
        }
    }
}

/// librdkafka callbacks routed to our logs and health flag. librdkafka's own
/// chatter goes to debug level: a broker restart is one warning, not fifty.
#[derive(Clone)]
pub struct Context(Arc<Health>);

impl ClientContext for Context {
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

impl rdkafka::consumer::ConsumerContext for Context {}

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
pub fn client_config(conn: &KafkaConnection, bootstrap: &str) -> ClientConfig {
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
        if let Some(ca) = &tls.ca_file {
            c.set("ssl.ca.location", ca);
        }
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

/// The bootstrap address of a connection (the embedded cluster's, if embedded).
pub fn bootstrap<'a>(conn: &'a KafkaConnection, embedded: Option<&'a Embedded>) -> &'a str {
    match (&conn.brokers, embedded) {
        (KafkaBrokers::List(b), _) => b,
        (KafkaBrokers::Embedded, Some(e)) => &e.bootstrap,
        (KafkaBrokers::Embedded, None) => "",
    }
}

/// A producer configured for canaries.
pub fn producer(
    base: &ClientConfig,
    health: Arc<Health>,
    acks: &str,
    timeout: Duration,
) -> Result<FutureProducer<Context>, KafkaSetupError> {
    let mut c = base.clone();
    let idempotent = matches!(acks, "all" | "-1");
    c.set("acks", acks)
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        // A canary must not wait in a batch.
        .set("linger.ms", "0")
        // librdkafka gives up on a record after this: a definitive publish failure.
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string());
    c.create_with_context(Context(health))
        .map_err(KafkaSetupError::Client)
}

/// How to make (or remake) a probe's producer.
#[derive(Clone)]
pub struct ProducerRecipe {
    pub base: ClientConfig,
    pub acks: String,
    pub timeout: Duration,
}

impl ProducerRecipe {
    pub fn build(&self, health: &Arc<Health>) -> Result<FutureProducer<Context>, KafkaSetupError> {
        producer(&self.base, Arc::clone(health), &self.acks, self.timeout)
    }
}

/// Delivery timeouts in a row, while the brokers answer, after which the
/// producer is considered stuck and remade.
const STUCK_AFTER: u64 = 5;

pub struct KafkaInjector {
    producer: std::sync::RwLock<FutureProducer<Context>>,
    recipe: ProducerRecipe,
    topic: String,
    headers: Vec<(String, String)>,
    health: Arc<Health>,
    /// Delivery timeouts since the last successful delivery.
    timeouts: Arc<std::sync::atomic::AtomicU64>,
    last_rebuild: Mutex<Instant>,
}

impl KafkaInjector {
    pub fn new(
        producer: FutureProducer<Context>,
        recipe: ProducerRecipe,
        topic: String,
        headers: Vec<(String, String)>,
        health: Arc<Health>,
    ) -> Self {
        KafkaInjector {
            producer: std::sync::RwLock::new(producer),
            recipe,
            topic,
            headers,
            health,
            timeouts: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            last_rebuild: Mutex::new(Instant::now()),
        }
    }

    fn current(&self) -> FutureProducer<Context> {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remakes the producer when it failed fatally, or when it keeps timing
    /// out while the brokers answer: an idempotent producer can stay wedged
    /// after its broker lost the producer state (a restart without storage),
    /// and a new producer (a new producer id) is the way out.
    fn heal(&self) {
        let current = self.current();
        let fatal = current.client().fatal_error();
        let stuck = self.timeouts.load(Ordering::Relaxed) >= STUCK_AFTER && self.health.is_up();
        if fatal.is_none() && !stuck {
            return;
        }
        let mut last = self.last_rebuild.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < (self.recipe.timeout * 2).max(Duration::from_secs(10)) {
            return;
        }
        *last = Instant::now();
        match self.recipe.build(&self.health) {
            Ok(fresh) => {
                match &fatal {
                    Some((code, reason)) => {
                        tracing::warn!(topic = %self.topic, error = ?code, reason = %reason, "The Kafka producer failed fatally; making a new one.")
                    }
                    None => {
                        tracing::warn!(topic = %self.topic, "The Kafka producer keeps timing out while the brokers answer; making a new one.")
                    }
                }
                let old = std::mem::replace(
                    &mut *self.producer.write().unwrap_or_else(|p| p.into_inner()),
                    fresh,
                );
                self.timeouts.store(0, Ordering::Relaxed);
                // Dropping a producer purges its queue and may block briefly.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || drop(old));
                }
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "Cannot make a new Kafka producer.")
            }
        }
    }

    pub fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        self.heal();
        let producer = self.current();
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + 1);
        for (k, v) in &self.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        headers = headers.insert(Header {
            key: canary::HEADER,
            value: Some(msg.token.as_bytes()),
        });
        if let Some(tp) = &msg.traceparent {
            headers = headers.insert(Header {
                key: crate::otlp::trace::TRACEPARENT,
                value: Some(tp.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(&self.topic)
            .payload(&msg.body[..])
            .key(msg.key.as_bytes())
            .headers(headers);
        if let Some(p) = msg.partition {
            record = record.partition(p);
        }
        match producer.send_result(record) {
            Err((e, _)) => Err(classify(&e)),
            Ok(delivery) => {
                let health = Arc::clone(&self.health);
                let timeouts = Arc::clone(&self.timeouts);
                Ok(Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            health.set(true);
                            timeouts.store(0, Ordering::Relaxed);
                            Ok(Ack::Confirmed)
                        }
                        Ok(Err((e, _))) => {
                            let failure = classify(&e);
                            if failure.kind == FailureKind::Timeout {
                                timeouts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(failure)
                        }
                        Err(_) => Err(PublishError::new(
                            FailureKind::Other,
                            "the producer was closed before the delivery report",
                        )),
                    }
                }))
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.health.is_up()
    }

    /// Reads the topic's partitions, marking the brokers up or down.
    pub fn partitions(&self) -> Result<Vec<i32>, KafkaSetupError> {
        let r = partitions_of(self.current().client(), &self.topic);
        self.health.set(brokers_answered(&r));
        r
    }
}

/// Whether a metadata read reached the brokers (a missing topic is an
/// answer; a failed request is not).
fn brokers_answered(r: &Result<Vec<i32>, KafkaSetupError>) -> bool {
    match r {
        Ok(_) | Err(KafkaSetupError::NoTopic(_)) => true,
        Err(KafkaSetupError::Metadata {
            source: KafkaError::MetadataFetch(code),
            ..
        }) => matches!(
            code,
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::LeaderNotAvailable
        ),
        Err(_) => false,
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
    PublishError::new(kind, e.to_string())
}

/// What the catch side shares with the probe: assignment and health.
pub struct CatchState {
    assigned: tokio::sync::watch::Sender<bool>,
    partitions: Mutex<BTreeSet<i32>>,
    pub health: Arc<Health>,
}

impl CatchState {
    pub fn new(health: Arc<Health>) -> Arc<CatchState> {
        Arc::new(CatchState {
            assigned: tokio::sync::watch::Sender::new(false),
            partitions: Mutex::new(BTreeSet::new()),
            health,
        })
    }

    /// Waits until the consumer is positioned on every partition.
    pub async fn assigned(&self) {
        let _ = self.assigned.subscribe().wait_for(|a| *a).await;
    }

    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }
}

/// A consumer for one probe's catch: unique group id, no commits unless
/// configured, short fetch wait, positions set by [`assign_new`].
pub fn consumer(
    base: &ClientConfig,
    cfg: &KafkaCatch,
    probe: &str,
    run_id: u64,
    health: Arc<Health>,
) -> Result<StreamConsumer<Context>, KafkaSetupError> {
    let mut c = base.clone();
    let group = cfg
        .group_id
        .clone()
        .unwrap_or_else(|| format!("chirp-{probe}-{run_id:016x}"));
    c.set("group.id", group)
        .set(
            "enable.auto.commit",
            if cfg.commit { "true" } else { "false" },
        )
        .set("enable.auto.offset.store", "false")
        // With the default 500 ms, measured latency would mostly be the fetch wait.
        .set(
            "fetch.wait.max.ms",
            cfg.fetch_wait_max.as_millis().to_string(),
        )
        .set("fetch.min.bytes", "1")
        // Only after a position is lost (the topic was recreated, data
        // deleted): read what is there rather than skip it.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    c.create_with_context(Context(health))
        .map_err(KafkaSetupError::Client)
}

/// Assigns partitions of `topic` the consumer does not have yet: at their
/// current end on the first call (only canaries sent from now on matter),
/// from their beginning afterwards (a partition added to the topic is new,
/// and anything in it was sent after we last looked). Blocking.
pub fn assign_new(
    consumer: &StreamConsumer<Context>,
    topic: &str,
    state: &CatchState,
) -> Result<usize, KafkaSetupError> {
    let found = partitions_of(consumer.client(), topic);
    state.health.set(brokers_answered(&found));
    let partitions = found?;
    let first = !*state.assigned.borrow();
    let mut known = state.partitions.lock().unwrap_or_else(|p| p.into_inner());
    let mut tpl = TopicPartitionList::new();
    for p in partitions.iter().filter(|p| !known.contains(p)) {
        let offset = if first {
            let (_low, high) = consumer
                .fetch_watermarks(topic, *p, METADATA_TIMEOUT)
                .map_err(|source| KafkaSetupError::Metadata {
                    topic: topic.to_owned(),
                    source,
                })?;
            Offset::Offset(high)
        } else {
            Offset::Beginning
        };
        tpl.add_partition_offset(topic, *p, offset)
            .map_err(KafkaSetupError::Client)?;
    }
    let added = tpl.count();
    if added > 0 {
        consumer
            .incremental_assign(&tpl)
            .map_err(KafkaSetupError::Client)?;
        known.extend(partitions);
    }
    drop(known);
    state.assigned.send_replace(true);
    Ok(added)
}

/// Hands every record to the probe until `stop`. Partitions added to the
/// topic are picked up every [`REFRESH`].
pub async fn catch_loop(
    consumer: Arc<StreamConsumer<Context>>,
    topic: String,
    commit: bool,
    state: Arc<CatchState>,
    probe: Arc<Probe>,
    stop: CancellationToken,
) {
    let mut refresh = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = refresh.tick() => {
                let (c, t, s) = (Arc::clone(&consumer), topic.clone(), Arc::clone(&state));
                match tokio::task::spawn_blocking(move || assign_new(&c, &t, &s)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(probe = %probe.name(), topic = %topic, added = n, "Catching from new partitions."),
                    Ok(Err(e)) => tracing::debug!(probe = %probe.name(), error = %e, "Cannot refresh the catch topic's partitions."),
                    _ => {}
                }
            }
            m = consumer.recv() => match m {
                Ok(msg) => {
                    let now = Instant::now();
                    state.health.set(true);
                    let get = |name: &str| {
                        msg.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == name)
                                .and_then(|h| h.value)
                                .and_then(|v| std::str::from_utf8(v).ok())
                        })
                    };
                    probe.on_message(
                        get(canary::HEADER),
                        get(crate::otlp::trace::TRACEPARENT),
                        msg.payload().unwrap_or_default(),
                        now,
                    );
                    if commit {
                        if let Err(e) = consumer.store_offset_from_message(&msg) {
                            tracing::debug!(probe = %probe.name(), error = %e, "Cannot store the offset.");
                        }
                    }
                }
                Err(e) => {
                    // Consumer errors repeat while a broker is away; say it once a minute.
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(probe = %probe.name(), error = %e, "Kafka consumer error.");
                        last_error = Some(Instant::now());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
