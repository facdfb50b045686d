//! Subscribes to the catch subject (optionally in a queue group) and hands
//! every message to the probe until chirp stops.

use super::{config::CatchConfig, is_connected, Connected};
use crate::canary;
use crate::transport::{CatchHandle, CatchSink, Caught, Context, SetupError};
use async_nats::Client;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct NatsCatch {
    client: Client,
}

#[async_trait::async_trait]
impl CatchHandle for NatsCatch {
    fn is_up(&self) -> bool {
        is_connected(&self.client)
    }

    /// Connected, and a message to ourselves came back through the server:
    /// the server has processed everything this client sent before it, the
    /// catch subscription included. (The client's `flush` only writes to the
    /// socket: a canary published on the inject client could still reach the
    /// server first, and the first canary was lost on a loaded machine.)
    async fn ready(&self, stop: &CancellationToken) -> bool {
        loop {
            if is_connected(&self.client) && round_trip(&self.client).await {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Sends an empty message to a fresh inbox of `client` and waits (2 s at
/// most) for it to come back.
async fn round_trip(client: &Client) -> bool {
    let inbox = client.new_inbox();
    let Ok(mut sub) = client.subscribe(inbox.clone()).await else {
        return false;
    };
    let back = client.publish(inbox, bytes::Bytes::new()).await.is_ok()
        && tokio::time::timeout(Duration::from_secs(2), sub.next())
            .await
            .is_ok_and(|m| m.is_some());
    let _ = sub.unsubscribe().await;
    back
}

/// Subscribes and spawns the catch loop.
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
    let subject = cfg.subject.clone();
    let sub = match &cfg.queue_group {
        Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
        None => client.subscribe(subject.clone()).await,
    }
    .map_err(|e| {
        SetupError::new(
            format!("probe `{}`: cannot subscribe to `{subject}`", sink.name()),
            true,
            e,
        )
    })?;
    ctx.tasks.spawn(catch_loop(sub, sink, ctx.stop.clone()));
    Ok(Arc::new(NatsCatch { client }))
}

async fn catch_loop(
    mut sub: async_nats::Subscriber,
    sink: Arc<dyn CatchSink>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let at = Instant::now();
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
    }
    if stop.is_cancelled() {
        let _ = sub.unsubscribe().await;
    } else {
        tracing::error!(
            probe = %sink.name(),
            "The NATS subscription ended (the client was closed); this probe's canaries will count as lost."
        );
    }
}
