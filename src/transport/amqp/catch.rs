//! Consumes a queue with manual acks until chirp stops, acking each
//! delivery once it is recorded. A redelivery of a canary already caught
//! (the `redelivered` flag: its ack was lost with a connection) is a second
//! catch, so it counts as `duplicate`. After a connection loss the consumer
//! is opened again on the new connection.

use super::config::CatchConfig;
use super::{header, Link};
use crate::canary;
use crate::transport::{BoxError, CatchHandle, CatchSink, Caught, Context, SetupError};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct AmqpCatch {
    link: Arc<Link>,
    ready: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for AmqpCatch {
    fn is_up(&self) -> bool {
        self.link.is_up() && *self.ready.borrow()
    }

    /// The consumer is registered (basic.consume-ok): the queue's messages reach it.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

/// Opens a channel and a consumer on the current connection.
async fn open(
    link: &Link,
    cfg: &CatchConfig,
    tag: &str,
    stop: &CancellationToken,
) -> Result<Option<lapin::Consumer>, BoxError> {
    let Some(conn) = link.wait(stop).await else {
        return Ok(None);
    };
    let ch = conn.create_channel().await?;
    ch.basic_qos(cfg.prefetch(), BasicQosOptions::default())
        .await?;
    if cfg.declare {
        ch.queue_declare(
            cfg.queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        if let Some(b) = &cfg.bind {
            ch.queue_bind(
                cfg.queue.clone().into(),
                b.exchange.clone().into(),
                b.routing_key.clone().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let consumer = ch
        .basic_consume(
            cfg.queue.clone().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot consume queue `{}`: {e}", cfg.queue))?;
    Ok(Some(consumer))
}

/// Starts consuming (at once in `check`, where a missing queue is exit 3).
pub async fn start(
    conn: &super::Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let link = conn.catch().cloned().ok_or_else(|| {
        let what = format!("connection `{}`", cfg.connection);
        SetupError::new(what, false, "no client for catches")
    })?;
    let tag = format!("chirp-{}-{:016x}", sink.name(), ctx.run_id);
    let (ready_tx, ready) = watch::channel(false);
    let first = if ctx.fail_fast {
        let what = format!("probe `{}`: catch", sink.name());
        open(&link, cfg, &tag, &ctx.stop)
            .await
            .map_err(|e| SetupError::new(what, true, e))?
    } else {
        None
    };
    ctx.tasks.spawn(catch_loop(
        Arc::clone(&link),
        cfg.clone(),
        tag,
        first,
        sink,
        ready_tx,
        ctx.stop.clone(),
    ));
    Ok(Arc::new(AmqpCatch { link, ready }))
}

async fn catch_loop(
    link: Arc<Link>,
    cfg: CatchConfig,
    tag: String,
    mut first: Option<lapin::Consumer>,
    sink: Arc<dyn CatchSink>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut said = false;
    loop {
        let mut consumer = match first.take() {
            Some(c) => c,
            None => match open(&link, &cfg, &tag, &stop).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    if !said {
                        tracing::warn!(probe = %sink.name(), queue = %cfg.queue, error = %e, "RabbitMQ catch not consuming; retrying every second.");
                        said = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            },
        };
        said = false;
        ready.send_replace(true);
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                d = consumer.next() => d,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(probe = %sink.name(), error = %e, "RabbitMQ consumer failed; consuming again.");
                    break;
                }
                None => {
                    tracing::warn!(probe = %sink.name(), queue = %cfg.queue, "RabbitMQ ended the consumer (queue deleted, or the connection closed); consuming again.");
                    break;
                }
            };
            let at = Instant::now();
            sink.on_message(Caught {
                token: header(&delivery.properties, canary::HEADER),
                traceparent: header(&delivery.properties, canary::TRACEPARENT),
                body: &delivery.data,
                at,
            });
            // Recorded, then acked: an ack lost with the connection brings
            // the message back redelivered, a duplicate to the ledger.
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::debug!(probe = %sink.name(), error = %e, "RabbitMQ ack failed; the message will be redelivered.");
            }
        }
        ready.send_replace(false);
        // Not in a tight loop: a consumer that keeps failing is retried each second.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
