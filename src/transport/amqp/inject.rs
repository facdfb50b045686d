//! Publishes canaries to an exchange with a routing key on a channel in
//! confirm mode, `mandatory` set, persistent, with the token in the
//! `Chirp-Token` header, the `message_id` and the body. The broker's confirm
//! is the publish latency. A message the broker returns (no queue bound for
//! it), or nacks, is `publish_failed{kind="rejected"}` and the reply text is
//! logged; no confirm within `publish_timeout` is `timeout`.

use super::config::InjectConfig;
use super::Link;
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct AmqpInject {
    link: Arc<Link>,
    cfg: InjectConfig,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// The channel in confirm mode; made again after a connection loss.
    channel: tokio::sync::Mutex<Option<Channel>>,
    /// Set when a confirm did not come in time: the channel is replaced
    /// (lapin keeps every abandoned confirm until its channel closes).
    stale: Arc<std::sync::atomic::AtomicBool>,
    /// Returned messages are logged at most once a minute.
    last_return_log: Arc<std::sync::Mutex<Option<Instant>>>,
}

fn kind(t: &str) -> ExchangeKind {
    match t {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Topic,
    }
}

/// Builds the injector. In `check` a missing exchange is an unreachable
/// target (exit 3), found before the first canary.
pub async fn build(
    conn: &super::Connected,
    cfg: &InjectConfig,
    timeout: Duration,
    ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let what = || format!("connection `{}`", cfg.connection);
    let link = conn
        .inject()
        .cloned()
        .ok_or_else(|| SetupError::new(what(), false, "no client for injects"))?;
    let inject = AmqpInject {
        link,
        cfg: cfg.clone(),
        headers: cfg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect(),
        timeout,
        channel: tokio::sync::Mutex::new(None),
        stale: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        last_return_log: Arc::new(std::sync::Mutex::new(None)),
    };
    if ctx.fail_fast {
        let ch = inject
            .channel()
            .await
            .map_err(|e| SetupError::new(format!("{}: cannot open a channel", what()), true, e))?;
        if !cfg.declare && !cfg.exchange.is_empty() {
            ch.exchange_declare(
                cfg.exchange.clone().into(),
                kind(&cfg.exchange_type),
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                SetupError::new(
                    format!("{}: no exchange `{}`", what(), cfg.exchange),
                    true,
                    e,
                )
            })?;
        }
    }
    Ok(Arc::new(inject))
}

impl AmqpInject {
    /// The open channel, or a new one on the current connection.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if self.stale.swap(false, std::sync::atomic::Ordering::Relaxed) {
            if let Some(old) = slot.take() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        old.close(200, "confirms stopped coming; replaced".into()),
                    )
                    .await;
                });
            }
        }
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        *slot = None;
        let conn = self.link.current().ok_or_else(|| {
            PublishError::new(FailureKind::Unavailable, "not connected to RabbitMQ")
        })?;
        let open = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            if self.cfg.declare {
                ch.exchange_declare(
                    self.cfg.exchange.clone().into(),
                    kind(&self.cfg.exchange_type),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            }
            Ok::<_, lapin::Error>(ch)
        };
        let ch = match tokio::time::timeout(self.timeout, open).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => return Err(classify(e)),
            Err(_) => {
                return Err(PublishError::new(
                    FailureKind::Timeout,
                    "opening a channel took longer than publish_timeout",
                ))
            }
        };
        *slot = Some(ch.clone());
        Ok(ch)
    }
}

#[async_trait::async_trait]
impl Inject for AmqpInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let ch = self.channel().await?;
        let mut headers = FieldTable::default();
        for (k, v) in &self.headers {
            headers.insert(k.clone().into(), AMQPValue::LongString(v.clone().into()));
        }
        headers.insert(
            canary::HEADER.into(),
            AMQPValue::LongString(msg.token.clone().into()),
        );
        if let Some(tp) = &msg.traceparent {
            headers.insert(
                canary::TRACEPARENT.into(),
                AMQPValue::LongString(tp.clone().into()),
            );
        }
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(msg.token.clone().into())
            .with_content_type(msg.content_type.into())
            // Persistent, as the events it stands for usually are.
            .with_delivery_mode(2);
        let publish = ch.basic_publish(
            self.cfg.exchange.clone().into(),
            self.cfg.routing_key.clone().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &msg.body,
            props,
        );
        let confirm = match tokio::time::timeout(self.timeout, publish).await {
            Err(_) => {
                return Err(PublishError::new(
                    FailureKind::Timeout,
                    "the publish was not written within publish_timeout",
                ))
            }
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(c)) => c,
        };
        let (timeout, log, stale) = (
            self.timeout,
            Arc::clone(&self.last_return_log),
            Arc::clone(&self.stale),
        );
        let route = format!(
            "exchange `{}`, routing key `{}`",
            self.cfg.exchange, self.cfg.routing_key
        );
        Ok(Box::pin(async move {
            let answer = match tokio::time::timeout(timeout, confirm).await {
                Err(_) => {
                    stale.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(PublishError::new(
                        FailureKind::Timeout,
                        "no confirm from RabbitMQ within publish_timeout",
                    ));
                }
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(a)) => a,
            };
            match answer {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Ack::Confirmed),
                Confirmation::Ack(Some(ret)) => {
                    let text = format!(
                        "returned by RabbitMQ: {} {} ({route})",
                        ret.reply_code,
                        ret.reply_text.as_str()
                    );
                    let mut last = log.lock().unwrap_or_else(|p| p.into_inner());
                    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        *last = Some(Instant::now());
                        tracing::warn!(reply = %text, "A canary was returned as unroutable (logged once a minute); it counts as publish_failed{{kind=\"rejected\"}}.");
                    }
                    Err(PublishError::new(FailureKind::Rejected, text))
                }
                Confirmation::Nack(_) => Err(PublishError::new(
                    FailureKind::Rejected,
                    format!("nacked by RabbitMQ ({route})"),
                )),
            }
        }))
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

/// lapin's errors in the failure kinds: a closed channel or connection is
/// unavailable; an access refusal is auth; a missing exchange is rejected.
pub(super) fn classify(e: lapin::Error) -> PublishError {
    let text = e.to_string().to_ascii_lowercase();
    let kind = if text.contains("access_refused") || text.contains("access-refused") {
        FailureKind::Auth
    } else if text.contains("not_found") || text.contains("not-found") {
        FailureKind::Rejected
    } else if text.contains("resource_locked") || text.contains("resource-error") {
        FailureKind::Throttled
    } else {
        FailureKind::Unavailable
    };
    PublishError::new(kind, e)
}
