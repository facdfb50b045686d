//! Reads the catch stream until chirp stops: through an ordered ephemeral
//! consumer of new messages (the default), or through the named durable
//! pull consumer, acking each message once it is recorded. A redelivery of a
//! canary already caught (its ack was lost, or came after `ack_wait`) is a
//! second catch, so it counts as `duplicate`.
//!
//! The consumer is made when the catch starts; while the server or the
//! stream is missing, `run` retries every second in the background (the
//! schedule does not wait: the canaries show as lost or failed), and
//! `check` fails at once (exit 3).

use super::config::CatchConfig;
use crate::canary;
use crate::transport::nats::{is_connected, Connected};
use crate::transport::{BoxError, CatchHandle, CatchSink, Caught, Context, SetupError};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::Client;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Messages = BoxStream<'static, Result<async_nats::jetstream::Message, BoxError>>;

struct JetStreamCatch {
    client: Client,
    /// True once a consumer is reading.
    ready: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for JetStreamCatch {
    fn is_up(&self) -> bool {
        is_connected(&self.client) && *self.ready.borrow()
    }

    /// The consumer exists: a canary stored from now on reaches it.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

/// What opens the consumer (again, after the server lost it).
struct Reader {
    js: async_nats::jetstream::Context,
    cfg: CatchConfig,
}

impl Reader {
    /// Opens the consumer. An ordered one reads what is stored after
    /// `after`: the stream's last sequence when it was first opened (new
    /// messages only), then the last sequence read, so a reopened consumer
    /// skips nothing stored meanwhile. A stream that was recreated or
    /// purged meanwhile (its last sequence is below `after`) is read from
    /// its start, and said so.
    async fn open(&self, after: &mut Option<u64>) -> Result<Messages, BoxError> {
        let stream = if self.cfg.declare {
            self.js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: self.cfg.stream.clone(),
                    subjects: self.cfg.subject.iter().cloned().collect(),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create JetStream stream `{}`: {e}", self.cfg.stream))?
        } else {
            self.js
                .get_stream(&self.cfg.stream)
                .await
                .map_err(|e| format!("cannot open JetStream stream `{}`: {e}", self.cfg.stream))?
        };
        Ok(match &self.cfg.consumer {
            Some(name) => {
                let consumer = stream
                    .get_consumer::<pull::Config>(name)
                    .await
                    .map_err(|e| {
                        format!(
                            "no pull consumer `{name}` on stream `{}`: {e}",
                            self.cfg.stream
                        )
                    })?;
                consumer
                    .messages()
                    .await?
                    .map(|m| m.map_err(BoxError::from))
                    .boxed()
            }
            None => {
                let last = stream.cached_info().state.last_sequence;
                let deliver_policy = match *after {
                    Some(seq) if last < seq => {
                        tracing::warn!(stream = %self.cfg.stream, last_read = seq, last_stored = last, "The JetStream stream was recreated or purged; reading it from its start.");
                        DeliverPolicy::All
                    }
                    Some(seq) => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                    None => DeliverPolicy::ByStartSequence {
                        start_sequence: last + 1,
                    },
                };
                if after.is_none_or(|seq| last < seq) {
                    *after = Some(last);
                }
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: self.cfg.subject.clone().unwrap_or_default(),
                        deliver_policy,
                        ..Default::default()
                    })
                    .await?;
                consumer
                    .messages()
                    .await?
                    .map(|m| m.map_err(BoxError::from))
                    .boxed()
            }
        })
    }
}

/// Opens the consumer and spawns the catch loop.
pub async fn start(
    conn: &Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let client = conn.catch().cloned().ok_or_else(|| {
        let what = format!("connection `{}`", cfg.connection);
        SetupError::new(what, false, "no client for catches")
    })?;
    let reader = Reader {
        js: super::context(client.clone(), super::API_TIMEOUT),
        cfg: cfg.clone(),
    };
    let (ready_tx, ready) = watch::channel(false);
    let mut after = None;
    let first = if ctx.fail_fast {
        let what = format!("probe `{}`: catch", sink.name());
        Some(
            reader
                .open(&mut after)
                .await
                .map_err(|e| SetupError::new(what, true, e))?,
        )
    } else {
        None
    };
    ctx.tasks.spawn(catch_loop(
        reader,
        first,
        after,
        sink,
        ready_tx,
        ctx.stop.clone(),
    ));
    Ok(Arc::new(JetStreamCatch { client, ready }))
}

async fn catch_loop(
    reader: Reader,
    mut first: Option<Messages>,
    // The stream sequence read up to (see `Reader::open`).
    mut last: Option<u64>,
    sink: Arc<dyn CatchSink>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let acks = reader.cfg.consumer.is_some();
    loop {
        let mut messages = match first.take() {
            Some(m) => m,
            None => {
                let mut said = false;
                loop {
                    match reader.open(&mut last).await {
                        Ok(m) => break m,
                        Err(e) => {
                            // Once per outage: the canaries meanwhile show as lost.
                            if !said {
                                tracing::warn!(probe = %sink.name(), error = %e, "JetStream catch not reading; retrying every second.");
                                said = true;
                            }
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        ready.send_replace(true);
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                m = messages.next() => m,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                // A missed heartbeat, a lost connection, a consumer the
                // server forgot (a restart): open it again from where it was.
                Some(Err(e)) => {
                    tracing::warn!(probe = %sink.name(), error = %e, "JetStream consumer failed; opening it again.");
                    break;
                }
                None => {
                    tracing::warn!(probe = %sink.name(), "The JetStream consumer ended; opening it again.");
                    break;
                }
            };
            let at = Instant::now();
            if let Ok(info) = msg.info() {
                last = Some(info.stream_sequence);
            }
            let get = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str())
            };
            sink.on_message(Caught {
                token: get(canary::HEADER),
                traceparent: get(canary::TRACEPARENT),
                body: &msg.payload,
                at,
            });
            // Recorded first, then acked: an ack lost on the way brings a
            // redelivery, which the ledger counts as a duplicate.
            if acks {
                let acked = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = tokio::time::timeout(Duration::from_secs(5), msg.ack()) => a,
                };
                if !matches!(acked, Ok(Ok(()))) {
                    tracing::debug!(probe = %sink.name(), "JetStream ack failed; the message will be redelivered.");
                }
            }
        }
        ready.send_replace(false);
        // Not in a tight loop: a consumer that keeps failing is reopened each second.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
