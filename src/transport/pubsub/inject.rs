//! Publishes canaries to a topic: the body as the message's data, the
//! token in attribute `Chirp-Token` (and `traceparent` when tracing). The
//! server's message ID is the publish latency. Batching is off (one message
//! per request, sent at once) so no canary waits for company, and the
//! client's retries end within `publish_timeout`.

use super::config::InjectConfig;
use super::{check_topic, classify, Link, Seen};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::error::PublishError as RpcError;
use google_cloud_pubsub::model::Message;
use std::sync::Arc;
use std::time::Duration;

/// How long past `publish_timeout` chirp waits for the client to give up
/// on its own (its retries end at `publish_timeout`).
const MARGIN: Duration = Duration::from_millis(500);
/// A publish unanswered this long makes chirp ask whether Pub/Sub can be
/// reached (the client would retry a refused connection quietly until
/// `publish_timeout`): an outage shows within a second or so, and later
/// slots fail at once instead of waiting too.
const SLOW: Duration = Duration::from_millis(500);

pub struct PubSubInject {
    publisher: Publisher,
    link: Arc<Link>,
    timeout: Duration,
}

/// Builds the injector. In `check` (`ctx.fail_fast`) the topic must exist
/// and Pub/Sub answer, or chirp stops before the first canary (exit 3).
pub async fn build(
    conn: &super::Connected,
    cfg: &InjectConfig,
    timeout: Duration,
    ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let what = || format!("connection `{}`", cfg.connection);
    let link = conn
        .inject
        .clone()
        .ok_or_else(|| SetupError::new(what(), false, "no client for injects"))?;
    let topic = conn.cfg.topic(&cfg.topic);
    if ctx.fail_fast {
        match check_topic(&conn.topics, &topic).await {
            Ok(Seen::Missing) => {
                return Err(SetupError::new(
                    format!("{}: no Pub/Sub topic `{topic}`", what()),
                    true,
                    format!("Pub/Sub at {} says it does not exist", conn.place),
                ))
            }
            Ok(_) => link.answered(),
            Err(e) => {
                return Err(SetupError::new(
                    format!(
                        "{}: cannot check Pub/Sub topic `{topic}` at {}",
                        what(),
                        conn.place
                    ),
                    true,
                    e,
                ))
            }
        }
    }
    let publisher = conn
        .base_publisher(timeout)
        .await?
        .publisher(topic.clone())
        .set_message_count_threshold(1u32)
        .set_delay_threshold(Duration::ZERO)
        .build();
    link.register(&topic);
    Ok(Arc::new(PubSubInject {
        publisher,
        link,
        timeout,
    }))
}

/// The message for a canary.
pub(super) fn message(msg: Outgoing) -> Message {
    let mut attributes = vec![(canary::HEADER, msg.token)];
    if let Some(tp) = msg.traceparent {
        attributes.push((canary::TRACEPARENT, tp));
    }
    Message::new().set_data(msg.body).set_attributes(attributes)
}

/// A publish the client gave up on, classified.
fn failed(link: &Link, e: RpcError) -> PublishError {
    let kind = match &e {
        RpcError::Rpc(inner) => {
            let kind = classify(inner);
            match kind {
                // Pub/Sub could not be reached: the supervisor checks now,
                // and later slots fail at once while it stays so.
                FailureKind::Unavailable | FailureKind::Timeout => link.broken(),
                // It answered, if only to say no.
                FailureKind::Auth | FailureKind::Throttled | FailureKind::Rejected => {
                    link.answered()
                }
                FailureKind::Other => {}
            }
            kind
        }
        // The client stopped (chirp is stopping).
        _ => FailureKind::Other,
    };
    PublishError::new(kind, e)
}

#[async_trait::async_trait]
impl Inject for PubSubInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        if self.link.is_down() {
            return Err(PublishError::new(
                FailureKind::Unavailable,
                "Pub/Sub not reachable (chirp checks again every second)",
            ));
        }
        // Queued to the client's dispatcher now, in schedule order.
        let answer = self.publisher.publish(message(msg));
        let (link, timeout) = (Arc::clone(&self.link), self.timeout);
        Ok(Box::pin(async move {
            let answer = tokio::time::timeout(timeout + MARGIN, answer);
            tokio::pin!(answer);
            let slow = tokio::time::sleep(SLOW);
            tokio::pin!(slow);
            let mut asked = false;
            let answered = loop {
                tokio::select! {
                    a = &mut answer => break a,
                    _ = &mut slow, if !asked => {
                        asked = true;
                        link.broken();
                    }
                }
            };
            match answered {
                Err(_) => {
                    link.broken();
                    Err(PublishError::new(
                        FailureKind::Timeout,
                        "no answer from Pub/Sub within publish_timeout",
                    ))
                }
                Ok(Err(e)) => Err(failed(&link, e)),
                Ok(Ok(_message_id)) => {
                    link.answered();
                    Ok(Ack::Confirmed)
                }
            }
        }))
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}
