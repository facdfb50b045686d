//! Produces canaries: token in the `Chirp-Token` header and the value, the
//! probe's name as key (one partition, so Kafka's ordering makes reordering
//! meaningful) or, in per-partition mode, one canary per partition per
//! interval, following partitions added to the topic. The delivery report is
//! the acknowledgement. A producer that fails fatally, or keeps timing out
//! while the brokers answer, is replaced.

use super::config::{InjectConfig, Partitions};
use super::{classify, partitions_of, Callbacks, Connected, Health, KafkaSetupError, REFRESH};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Delivery timeouts in a row, while the brokers answer, after which the
/// producer is considered stuck and remade.
const STUCK_AFTER: u64 = 5;

/// How to make (or remake) a probe's producer.
#[derive(Clone)]
struct Recipe {
    base: ClientConfig,
    acks: String,
    timeout: Duration,
}

impl Recipe {
    fn build(&self, health: &Arc<Health>) -> Result<FutureProducer<Callbacks>, KafkaSetupError> {
        let mut c = self.base.clone();
        let idempotent = matches!(self.acks.as_str(), "all" | "-1");
        c.set("acks", &self.acks)
            .set(
                "enable.idempotence",
                if idempotent { "true" } else { "false" },
            )
            // A canary must not wait in a batch.
            .set("linger.ms", "0")
            // librdkafka gives up on a record after this: a definitive publish failure.
            .set(
                "message.timeout.ms",
                self.timeout.as_millis().max(1).to_string(),
            );
        c.create_with_context(Callbacks(Arc::clone(health)))
            .map_err(KafkaSetupError::Client)
    }
}

pub struct KafkaInject {
    producer: RwLock<FutureProducer<Callbacks>>,
    recipe: Recipe,
    topic: String,
    headers: Vec<(String, String)>,
    health: Arc<Health>,
    /// Delivery timeouts since the last successful delivery.
    timeouts: Arc<AtomicU64>,
    last_rebuild: Mutex<Instant>,
    /// Per-partition mode: the partitions canaries go to.
    lanes: Option<watch::Sender<Vec<i32>>>,
}

/// Builds the injector of probe `probe`, sharing the connection's producer
/// for the same `acks` and timeout. In per-partition mode with `all`, reads
/// the topic's partitions (in `check`, a topic that cannot be read is an
/// error) and watches for new ones.
pub async fn build(
    conn: &Connected,
    cfg: &InjectConfig,
    probe: &str,
    timeout: Duration,
    ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let what = || format!("probe `{probe}`: inject");
    let recipe = Recipe {
        base: conn.base.clone(),
        acks: cfg.acks.clone(),
        timeout,
    };
    let producer = {
        let mut shared = conn.producers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cfg.acks.clone(), timeout.as_millis());
        match shared.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = recipe.build(&conn.health).map_err(|e| e.setup(what()))?;
                shared.insert(key, p.clone());
                p
            }
        }
    };
    let mut inject = KafkaInject {
        producer: RwLock::new(producer),
        recipe,
        topic: cfg.topic.clone(),
        headers: cfg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect(),
        health: Arc::clone(&conn.health),
        timeouts: Arc::new(AtomicU64::new(0)),
        last_rebuild: Mutex::new(Instant::now()),
        lanes: None,
    };
    match &cfg.partitions {
        None => return Ok(Arc::new(inject)),
        Some(Partitions::List(l)) => inject.lanes = Some(watch::Sender::new(l.clone())),
        Some(Partitions::All) => inject.lanes = Some(watch::Sender::new(Vec::new())),
    }
    let inject = Arc::new(inject);
    if cfg.partitions == Some(Partitions::All) {
        match inject.read_partitions().await {
            Ok(ps) => {
                inject.add_lanes(ps);
            }
            Err(e) if ctx.fail_fast => return Err(e.setup(what())),
            Err(e) if super::answered(&e) => {
                // A topic that does not exist has no partition to stall:
                // partition 0's canaries fail to publish and show it, so
                // the probe is never silent.
                tracing::warn!(probe = %probe, error = %crate::transport::chain(&e), "The inject topic does not exist (yet); sending to partition 0 and retrying.");
                inject.add_lanes(vec![0]);
            }
            Err(e) => {
                // The brokers do not answer. Every topic has a partition 0:
                // its canaries show the outage until the others are known.
                tracing::warn!(probe = %probe, error = %crate::transport::chain(&e), "Cannot read the inject topic's partitions; sending to partition 0 and retrying.");
                inject.add_lanes(vec![0]);
            }
        }
        ctx.tasks.spawn(watch_partitions(
            Arc::clone(&inject),
            probe.to_owned(),
            ctx.stop.clone(),
        ));
    }
    Ok(inject)
}

impl KafkaInject {
    fn current(&self) -> FutureProducer<Callbacks> {
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
                tracing::warn!(topic = %self.topic, error = %crate::transport::chain(&e), "Cannot make a new Kafka producer.")
            }
        }
    }

    /// Reads the topic's partitions (off the runtime), marking the brokers up or down.
    async fn read_partitions(&self) -> Result<Vec<i32>, KafkaSetupError> {
        let (producer, topic, health) =
            (self.current(), self.topic.clone(), Arc::clone(&self.health));
        tokio::task::spawn_blocking(move || {
            let r = partitions_of(producer.client(), &topic);
            health.set(super::brokers_answered(&r));
            r
        })
        .await
        .unwrap_or_else(|_| Ok(Vec::new()))
    }

    /// Adds lanes for partitions not seen before (lanes are never removed).
    fn add_lanes(&self, partitions: Vec<i32>) -> Vec<i32> {
        let mut added = Vec::new();
        if let Some(lanes) = &self.lanes {
            lanes.send_if_modified(|known| {
                for p in partitions {
                    if !known.contains(&p) {
                        known.push(p);
                        added.push(p);
                    }
                }
                known.sort_unstable();
                !added.is_empty()
            });
        }
        added
    }
}

/// Re-reads the topic's partitions every [`REFRESH`] and adds a lane for each new one.
async fn watch_partitions(inject: Arc<KafkaInject>, probe: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = inject.read_partitions() => r,
        };
        if let Ok(ps) = read {
            for p in inject.add_lanes(ps) {
                tracing::info!(probe = %probe, partition = p, "Sending canaries to a new partition.");
            }
        }
    }
}

#[async_trait::async_trait]
impl Inject for KafkaInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        self.heal();
        let producer = self.current();
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + 2);
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
                key: canary::TRACEPARENT,
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
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| classify(&e))?;
        let (health, timeouts) = (Arc::clone(&self.health), Arc::clone(&self.timeouts));
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

    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    fn lanes(&self) -> Option<watch::Receiver<Vec<i32>>> {
        self.lanes.as_ref().map(|l| l.subscribe())
    }
}
