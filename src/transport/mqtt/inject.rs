//! Publishes canaries (never retained), with the token in the payload and,
//! over MQTT 5, in the `Chirp-Token` user property (and `traceparent`).
//! The publish latency lasts until the broker's PUBACK (QoS 1) or PUBCOMP
//! (QoS 2); a QoS 0 publish is confirmed once written to the socket.

use super::{config::InjectConfig, Connected, Link};
use crate::outcome::FailureKind;
use crate::transport::{Ack, Confirm, Inject, Outgoing, PublishError, SetupError};
use std::sync::Arc;
use std::time::Duration;

pub struct MqttInject {
    link: Arc<Link>,
    topic: String,
    qos: u8,
    timeout: Duration,
}

impl MqttInject {
    pub fn new(
        conn: &Connected,
        cfg: &InjectConfig,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let link = conn.inject().cloned().ok_or_else(|| {
            let what = format!("connection `{}`", cfg.connection);
            SetupError::new(what, false, "no client for injects")
        })?;
        Ok(MqttInject {
            link,
            topic: cfg.topic.clone(),
            qos: cfg.qos,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl Inject for MqttInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let rx = self.link.publish(&self.topic, self.qos, msg)?;
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                // The event loop task ended (chirp stops).
                Ok(Err(_)) => Ok(Ack::Unconfirmed),
                Err(_) => Err(PublishError::new(
                    FailureKind::Timeout,
                    "no acknowledgement from the MQTT broker within publish_timeout",
                )),
            }
        }))
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}
