//! Subscribes the probe's topic filter on the connection's catch client
//! and hands every message to the probe until the probe stops. The token
//! is read from the `Chirp-Token` user property (MQTT 5), else the probe
//! finds it in the payload. A QoS 1 message redelivered after a reconnect
//! is a second catch: the ledger counts it as `duplicate`.

use super::{config::CatchConfig, Connected, Link};
use crate::transport::{CatchHandle, CatchSink, Context, SetupError};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct MqttCatch {
    link: Arc<Link>,
    ready: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for MqttCatch {
    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// The broker granted the subscription (its SUBACK came).
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

/// Adds the subscription; it is removed when the probe stops.
pub async fn start(
    conn: &Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let link = conn.catch().cloned().ok_or_else(|| {
        let what = format!("connection `{}`", cfg.connection);
        SetupError::new(what, false, "no client for catches")
    })?;
    // At most QoS 1: a QoS 2 session resumed after a blip makes the broker
    // resend PUBRELs the client has forgotten, and it drops the connection
    // for each. QoS 1's duplicates are counted by the ledger anyway.
    let (id, ready) = link.subscribe(&cfg.topic, cfg.qos.min(1), sink);
    let (l, stop) = (Arc::clone(&link), ctx.stop.clone());
    ctx.tasks.spawn(async move {
        stop.cancelled().await;
        l.unsubscribe(id);
    });
    Ok(Arc::new(MqttCatch { link, ready }))
}
