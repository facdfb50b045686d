//! Appends canaries to a stream with `XADD <stream> [MAXLEN ~ n] *`, the
//! body in the configured field beside `Chirp-Token` (and `traceparent`
//! when tracing). The reply (the entry's ID) is the publish latency. Every
//! probe on a connection shares its multiplexed client, so the appends due
//! at one instant leave in one write.

use super::config::InjectConfig;
use super::{classify, Link};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub struct RedisInject {
    link: Arc<Link>,
    cfg: InjectConfig,
    timeout: Duration,
}

pub fn build(
    conn: &super::Connected,
    cfg: &InjectConfig,
    timeout: Duration,
    _ctx: &Context,
) -> Result<Arc<dyn Inject>, SetupError> {
    let link = conn.inject().cloned().ok_or_else(|| {
        SetupError::new(
            format!("connection `{}`", cfg.connection),
            false,
            "no client for injects",
        )
    })?;
    Ok(Arc::new(RedisInject {
        link,
        cfg: cfg.clone(),
        timeout,
    }))
}

impl RedisInject {
    fn command(&self, msg: &Outgoing) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(&self.cfg.stream);
        if let Some(n) = self.cfg.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg(canary::HEADER)
            .arg(&msg.token)
            .arg(&self.cfg.field)
            .arg(msg.body.as_ref());
        if let Some(tp) = &msg.traceparent {
            cmd.arg(canary::TRACEPARENT).arg(tp);
        }
        cmd
    }
}

fn failed(link: &Link, e: ::redis::RedisError) -> PublishError {
    let (kind, gone) = classify(&e);
    if gone {
        link.broken();
    }
    PublishError::new(kind, e)
}

#[async_trait::async_trait]
impl Inject for RedisInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let Some(mut conn) = self.link.current() else {
            return Err(PublishError::new(
                FailureKind::Unavailable,
                "not connected to Redis",
            ));
        };
        let cmd = self.command(&msg);
        let link = Arc::clone(&self.link);
        let timeout = self.timeout;
        let mut reply = Box::pin(async move {
            match tokio::time::timeout(timeout, cmd.query_async::<::redis::Value>(&mut conn)).await
            {
                Err(_) => Err(PublishError::new(
                    FailureKind::Timeout,
                    "no reply to XADD within publish_timeout",
                )),
                Ok(Err(e)) => Err(failed(&link, e)),
                Ok(Ok(::redis::Value::ServerError(e))) => {
                    Err(failed(&link, ::redis::RedisError::from(e)))
                }
                Ok(Ok(_)) => Ok(Ack::Confirmed),
            }
        });
        // Polled once here, the command is queued on the client now, in
        // schedule order; the reply is awaited with the confirmations.
        match futures::poll!(reply.as_mut()) {
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(a)) => Ok(Box::pin(std::future::ready(Ok(a)))),
            Poll::Pending => Ok(reply),
        }
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}
