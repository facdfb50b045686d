//! Consumes the catch topic without a group protocol: the consumer assigns
//! the topic's partitions itself, at their current end (partitions added
//! later from their beginning), and commits nothing unless configured.

use super::config::CatchConfig;
use super::{
    brokers_answered, partitions_of, Callbacks, Connected, Health, KafkaSetupError,
    METADATA_TIMEOUT, REFRESH,
};
use crate::canary;
use crate::transport::{CatchHandle, CatchSink, Caught, Context, SetupError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the catch side shares with the probe: assignment and health.
pub struct CatchState {
    assigned: tokio::sync::watch::Sender<bool>,
    partitions: Mutex<BTreeSet<i32>>,
    health: Arc<Health>,
}

#[async_trait::async_trait]
impl CatchHandle for CatchState {
    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Positioned on every partition of the topic.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut rx = self.assigned.subscribe();
        tokio::select! {
            _ = stop.cancelled() => false,
            r = rx.wait_for(|a| *a) => r.is_ok(),
        }
    }
}

/// Creates the consumer, assigns the topic's partitions and spawns the catch loop.
pub async fn start(
    conn: &Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let what = || format!("probe `{}`: catch", sink.name());
    let mut c = conn.base.clone();
    let group = cfg
        .group_id
        .clone()
        .unwrap_or_else(|| format!("chirp-{}-{:016x}", sink.name(), ctx.run_id));
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
    let consumer: StreamConsumer<Callbacks> = c
        .create_with_context(Callbacks(Arc::clone(&conn.health)))
        .map_err(|e| KafkaSetupError::Client(e).setup(what()))?;
    let consumer = Arc::new(consumer);
    let state = Arc::new(CatchState {
        assigned: tokio::sync::watch::Sender::new(false),
        partitions: Mutex::new(BTreeSet::new()),
        health: Arc::clone(&conn.health),
    });
    match assign(&consumer, &cfg.topic, &state).await {
        Ok(_) => {}
        Err(e) if ctx.fail_fast => return Err(e.setup(what())),
        Err(e) => {
            tracing::warn!(probe = %sink.name(), error = %crate::transport::chain(&e), "Cannot read the catch topic yet; retrying.")
        }
    }
    ctx.tasks.spawn(catch_loop(
        consumer,
        cfg.topic.clone(),
        cfg.commit,
        Arc::clone(&state),
        sink,
        ctx.stop.clone(),
    ));
    Ok(state)
}

/// [`assign_new`] off the runtime.
async fn assign(
    consumer: &Arc<StreamConsumer<Callbacks>>,
    topic: &str,
    state: &Arc<CatchState>,
) -> Result<usize, KafkaSetupError> {
    let (c, t, s) = (Arc::clone(consumer), topic.to_owned(), Arc::clone(state));
    tokio::task::spawn_blocking(move || assign_new(&c, &t, &s))
        .await
        .unwrap_or(Ok(0))
}

/// Assigns partitions of `topic` the consumer does not have yet: at their
/// current end on the first call (only canaries sent from now on matter),
/// from their beginning afterwards (a partition added to the topic is new,
/// and anything in it was sent after we last looked). Blocking.
fn assign_new(
    consumer: &StreamConsumer<Callbacks>,
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

/// Until the topic could be read once, it is read again every second (the
/// probe's schedule may be waiting on it); afterwards every [`REFRESH`].
fn refresh_period(state: &CatchState) -> Duration {
    if *state.assigned.borrow() {
        REFRESH
    } else {
        Duration::from_secs(1)
    }
}

/// Hands every record to the probe until `stop`. Partitions added to the
/// topic are picked up every [`REFRESH`].
async fn catch_loop(
    consumer: Arc<StreamConsumer<Callbacks>>,
    topic: String,
    commit: bool,
    state: Arc<CatchState>,
    sink: Arc<dyn CatchSink>,
    stop: CancellationToken,
) {
    let mut last_error: Option<Instant> = None;
    let mut next_refresh = Instant::now() + refresh_period(&state);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_refresh) => {
                next_refresh = Instant::now() + refresh_period(&state);
                // A metadata read blocks up to 5 s: it must not hold up stopping.
                let assigned = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = assign(&consumer, &topic, &state) => a,
                };
                match assigned {
                    Ok(n) if n > 0 => tracing::info!(probe = %sink.name(), topic = %topic, added = n, "Catching from new partitions."),
                    Err(e) => tracing::debug!(probe = %sink.name(), error = %crate::transport::chain(&e), "Cannot refresh the catch topic's partitions."),
                    _ => {}
                }
            }
            m = consumer.recv() => match m {
                Ok(msg) => {
                    let at = Instant::now();
                    state.health.set(true);
                    let get = |name: &str| {
                        msg.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == name)
                                .and_then(|h| h.value)
                                .and_then(|v| std::str::from_utf8(v).ok())
                        })
                    };
                    sink.on_message(Caught {
                        token: get(canary::HEADER),
                        traceparent: get(canary::TRACEPARENT),
                        body: msg.payload().unwrap_or_default(),
                        at,
                    });
                    if commit {
                        if let Err(e) = consumer.store_offset_from_message(&msg) {
                            tracing::debug!(probe = %sink.name(), error = %e, "Cannot store the offset.");
                        }
                    }
                }
                Err(e) => {
                    // Consumer errors repeat while a broker is away; say it once a minute.
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(probe = %sink.name(), error = %e, "Kafka consumer error.");
                        last_error = Some(Instant::now());
                    }
                }
            }
        }
    }
}
