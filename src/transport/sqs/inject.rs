//! Sends canaries with `SendMessage`: the body as the message body, the
//! token in the `Chirp-Token` message attribute (and `traceparent` when
//! tracing). A FIFO queue's sends carry the probe's name as the message
//! group and the token as the deduplication ID (a send the SDK retried is
//! stored once), and go one at a time, so the queue keeps the canaries'
//! order. The answer
//! is the publish latency; the whole send, retry included, ends within
//! `publish_timeout`.

use super::config::{InjectConfig, Queue};
use super::{bounded, resolve, CallError, Link};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_sdk_sqs::Client;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::OnceCell;

/// SQS's longest deduplication ID.
const MAX_DEDUPLICATION_ID: usize = 128;

pub struct SqsInject {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    queue: Queue,
    /// The queue's URL, once known (resolved on the first send for a name).
    url: OnceCell<String>,
    link: Arc<Link>,
    timeout: Duration,
    /// A FIFO queue's sends go one at a time, in schedule order: SQS
    /// orders a group's messages as they arrive, and two sends in flight
    /// may arrive in either order.
    turn: Option<tokio::sync::Mutex<()>>,
}

/// The injector of a probe. With `ctx.fail_fast` (`check`) the queue must
/// be reachable now: an unreachable endpoint, refused credentials or a
/// missing queue is an unreachable target (exit 3).
pub async fn build(
    conn: &super::Connected,
    cfg: &InjectConfig,
    timeout: Duration,
    ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let link = conn.inject.clone().ok_or_else(|| {
        SetupError::new(
            format!("connection `{}`", cfg.connection),
            false,
            "no client for injects",
        )
    })?;
    let url = OnceCell::new();
    if let Queue::Url { url: u, .. } = &cfg.queue {
        let _ = url.set(u.clone());
    }
    if ctx.fail_fast {
        let resolved = resolve(&conn.client, &cfg.queue, super::CALL_TIMEOUT)
            .await
            .map_err(|e| {
                link.failed(&e);
                SetupError::new(
                    format!(
                        "connection `{}`: cannot reach SQS queue `{}`",
                        cfg.connection,
                        cfg.queue.name()
                    ),
                    true,
                    e,
                )
            })?;
        link.answered();
        let _ = url.set(resolved);
    }
    Ok(Arc::new(SqsInject {
        inner: Arc::new(Inner {
            client: conn.client.clone(),
            queue: cfg.queue.clone(),
            url,
            link,
            timeout,
            turn: cfg.queue.fifo().then(|| tokio::sync::Mutex::new(())),
        }),
    }))
}

/// The deduplication ID of a canary: its token, or the token's last 128
/// characters (they hold its run, sequence, send time and MAC) when longer.
pub(crate) fn deduplication_id(token: &str) -> &str {
    let from = token.len().saturating_sub(MAX_DEDUPLICATION_ID);
    token.get(from..).unwrap_or(token)
}

fn attribute(value: &str) -> Result<MessageAttributeValue, PublishError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| PublishError::new(FailureKind::Other, e))
}

impl Inner {
    async fn publish(&self, body: String, msg: Outgoing) -> Result<Ack, PublishError> {
        let failed = |e: CallError| {
            self.link.failed(&e);
            PublishError::new(e.kind, e)
        };
        let url = self
            .url
            .get_or_try_init(|| resolve(&self.client, &self.queue, self.timeout))
            .await
            .map_err(failed)?;
        let mut send = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_attributes(canary::HEADER, attribute(&msg.token)?);
        if let Some(tp) = &msg.traceparent {
            send = send.message_attributes(canary::TRACEPARENT, attribute(tp)?);
        }
        if self.queue.fifo() {
            send = send
                .message_group_id(&msg.key)
                .message_deduplication_id(deduplication_id(&msg.token));
        }
        send.customize()
            .config_override(bounded(self.timeout))
            .send()
            .await
            .map_err(|e| failed(CallError::new("SendMessage", e)))?;
        self.link.answered();
        Ok(Ack::Confirmed)
    }
}

#[async_trait::async_trait]
impl Inject for SqsInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        // SQS message bodies are text.
        let body = std::str::from_utf8(&msg.body)
            .map_err(|_| {
                PublishError::new(
                    FailureKind::Rejected,
                    "the canary's body is not UTF-8 text, which SQS requires of a message body",
                )
            })?
            .to_owned();
        let inner = Arc::clone(&self.inner);
        let mut confirm: Confirm = Box::pin(async move {
            let sent = async {
                // The lock is fair: turns are taken in the order asked for.
                let _turn = match &inner.turn {
                    Some(t) => Some(t.lock().await),
                    None => None,
                };
                inner.publish(body, msg).await
            };
            match tokio::time::timeout(inner.timeout, sent).await {
                Ok(r) => r,
                Err(_) => {
                    let e = CallError::timeout("SendMessage", "no answer within publish_timeout");
                    inner.link.failed(&e);
                    Err(PublishError::new(FailureKind::Timeout, e))
                }
            }
        });
        // Polled once here, a FIFO send takes its turn now, in schedule
        // order; the answer is awaited with the confirmations.
        match futures::poll!(confirm.as_mut()) {
            Poll::Ready(r) => Ok(Box::pin(std::future::ready(r))),
            Poll::Pending => Ok(confirm),
        }
    }

    fn is_up(&self) -> bool {
        self.inner.link.is_up()
    }
}
