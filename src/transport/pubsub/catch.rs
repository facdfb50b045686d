//! Reads the probe's subscription with a streaming pull until chirp stops.
//! Every message is recorded, then acknowledged (strays too: the
//! subscription is chirp's). The token is attribute `Chirp-Token`, else the
//! probe finds it in the data.
//!
//! A message Pub/Sub delivers again (an acknowledgement lost on its way, an
//! expired lease, a seek) is recorded again: the ledger counts a second
//! catch of a token as `duplicate`. Nothing else is: a delivery attempt
//! above one says only that Pub/Sub tried before, perhaps to a subscriber
//! that never recorded it, so counting it as a duplicate would invent one.
//!
//! The client reconnects a broken stream on its own, out of sight and with
//! a backoff that grows to a minute. So while nothing arrives chirp asks
//! Pub/Sub after 2 s (then 4, 8… up to 30 s of silence) whether the
//! subscription is still there: if Pub/Sub cannot be reached or the
//! subscription is gone (an emulator restarted empty), the catch is down
//! and subscribes again, checking each second until it can.

use super::config::CatchConfig;
use super::{check_subscription, Seen};
use crate::canary;
use crate::transport::{chain, CatchHandle, CatchSink, Caught, Context, LinkStatus, SetupError};
use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Silence after which chirp first asks whether the subscription is there.
const QUIET_MIN: Duration = Duration::from_secs(2);
/// The longest silence between two such questions (they double while
/// Pub/Sub keeps saying yes: an idle subscription costs few admin calls).
const QUIET_MAX: Duration = Duration::from_secs(30);
/// How long a closing stream may take to send its last acknowledgements.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to subscribe.
const RETRY_MAX: Duration = Duration::from_secs(1);

struct PubSubCatch {
    up: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for PubSubCatch {
    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Pub/Sub confirmed the subscription exists (or answered but may not
    /// say): messages published from now on are kept for chirp, whether
    /// or not the stream's connection is open yet.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut up = self.up.clone();
        tokio::select! {
            r = up.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

struct Reader {
    /// The subscription's full name.
    name: String,
    subscriber: Subscriber,
    admin: SubscriptionAdmin,
    sink: Arc<dyn CatchSink>,
    status: Arc<LinkStatus>,
}

/// Starts the catch. In `check` (`ctx.fail_fast`) the subscription must
/// exist and Pub/Sub answer, or chirp stops before the first canary (exit 3).
pub async fn start(
    conn: &super::Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let no_client = || {
        SetupError::new(
            format!("connection `{}`", cfg.connection),
            false,
            "no client for catches",
        )
    };
    let status = conn.catch.clone().ok_or_else(no_client)?;
    let subscriber = conn.subscriber.clone().ok_or_else(no_client)?;
    let reader = Reader {
        name: conn.cfg.subscription(&cfg.subscription),
        subscriber,
        admin: conn.subscriptions.clone(),
        sink,
        status,
    };
    let (up_tx, up) = watch::channel(false);
    let checked = ctx.fail_fast;
    if checked {
        let what = format!("probe `{}`: catch", reader.sink.name());
        match check_subscription(&reader.admin, &reader.name).await {
            Ok(Seen::Missing) => {
                return Err(SetupError::new(
                    format!("{what}: no Pub/Sub subscription `{}`", reader.name),
                    true,
                    format!("Pub/Sub at {} says it does not exist", conn.place),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(SetupError::new(
                    format!(
                        "{what}: cannot check Pub/Sub subscription `{}` at {}",
                        reader.name, conn.place
                    ),
                    true,
                    e,
                ))
            }
        }
        up_tx.send_replace(true);
    }
    ctx.tasks
        .spawn(catch_loop(reader, checked, up_tx, ctx.stop.clone()));
    Ok(Arc::new(PubSubCatch { up }))
}

async fn catch_loop(
    reader: Reader,
    mut checked: bool,
    up: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let probe = reader.sink.name().to_owned();
    // A warning is out: the next failures stay quiet, the recovery is told.
    let mut said = false;
    // Attempts in a row that read nothing, for the backoff.
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let backoff = (Duration::from_millis(200) * failures).min(RETRY_MAX);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        if !checked {
            let seen = tokio::select! {
                _ = stop.cancelled() => return,
                s = check_subscription(&reader.admin, &reader.name) => s,
            };
            let problem = match seen {
                Ok(Seen::Missing) => Some("the subscription does not exist".to_owned()),
                Ok(_) => None,
                Err(e) => Some(chain(&e)),
            };
            if let Some(problem) = problem {
                if !said {
                    tracing::warn!(probe = %probe, subscription = %reader.name, error = %problem, "Pub/Sub catch not reading; checking again every second.");
                    said = true;
                }
                failures = failures.saturating_add(1);
                continue;
            }
        }
        checked = false;
        up.send_replace(true);
        let Some((why, read_some)) = reader.read(&stop, &mut said).await else {
            return;
        };
        up.send_replace(false);
        reader.status.lost();
        if read_some || !said {
            tracing::warn!(probe = %probe, subscription = %reader.name, error = %why, "Pub/Sub catch lost its stream; subscribing again.");
            said = true;
        }
        failures = if read_some {
            1
        } else {
            failures.saturating_add(1)
        };
    }
}

impl Reader {
    /// Reads one stream until it fails (why, and whether it read anything)
    /// or chirp stops (None). `said`: a warning is out; the first message
    /// tells the recovery.
    async fn read(&self, stop: &CancellationToken, said: &mut bool) -> Option<(String, bool)> {
        let mut stream = self
            .subscriber
            .subscribe(self.name.clone())
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        let mut quiet = QUIET_MIN;
        let mut heard = Instant::now();
        let mut read_some = false;
        let why = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    close(stream).await;
                    return None;
                }
                next = stream.next() => match next {
                    Some(Ok((m, handler))) => {
                        self.record(&m);
                        // Recorded, then acknowledged: one whose
                        // acknowledgement is lost comes back, a duplicate.
                        handler.ack();
                        heard = Instant::now();
                        quiet = QUIET_MIN;
                        if !read_some && std::mem::take(said) {
                            tracing::info!(probe = %self.sink.name(), subscription = %self.name, "Pub/Sub catch reading again.");
                        }
                        read_some = true;
                    }
                    Some(Err(e)) => break chain(&e),
                    None => break "the stream ended".to_owned(),
                },
                _ = tokio::time::sleep_until(heard + quiet) => {
                    // Silence: is the stream's subscription still reachable?
                    match check_subscription(&self.admin, &self.name).await {
                        Ok(Seen::Missing) => break "the subscription no longer exists".to_owned(),
                        Ok(_) => {
                            heard = Instant::now();
                            quiet = (quiet * 2).min(QUIET_MAX);
                        }
                        Err(e) => break chain(&e),
                    }
                }
            }
        };
        close(stream).await;
        Some((why, read_some))
    }

    fn record(&self, m: &Message) {
        let at = Instant::now();
        let attribute = |k: &str| m.attributes.get(k).map(String::as_str);
        self.sink.on_message(Caught {
            token: attribute(canary::HEADER),
            traceparent: attribute(canary::TRACEPARENT),
            body: &m.data,
            at,
        });
    }
}

/// Ends a stream, letting it send the acknowledgements it still holds (a
/// little while: Pub/Sub may be the reason it ends).
async fn close(stream: MessageStream) {
    let token = stream.shutdown_token();
    drop(stream);
    let _ = tokio::time::timeout(CLOSE_WAIT, token.shutdown()).await;
}
