//! Receives the probe's queue until chirp stops: a loop of long polls
//! (`ReceiveMessage`, up to 10 messages, every message attribute), each
//! message handed to the probe, then the batch deleted
//! (`DeleteMessageBatch`) before the next poll. The token is the
//! `Chirp-Token` message attribute, else the probe finds it in the body
//! (an SNS envelope included).
//!
//! Redeliveries: a message recorded whose delete failed comes back after
//! its visibility timeout, a second catch of its token that the ledger
//! counts as `duplicate`. A message SQS delivered before (its
//! `ApproximateReceiveCount` above 1) that chirp never recorded (another
//! consumer had it, or chirp stopped before recording it) is counted as
//! what its token says, delivered if it is this run's: were it forced to
//! `duplicate`, the canary would never be delivered and would count as
//! lost. Failed deletes are logged at debug. A poll in progress when the
//! catch stops is finished and its messages given back (see `give_back`).

use super::config::{CatchConfig, Queue};
use super::{bounded, resolve, CallError};
use crate::canary;
use crate::outcome::FailureKind;
use crate::transport::{chain, CatchHandle, CatchSink, Caught, Context, LinkStatus, SetupError};
use aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// SQS's most messages per receive.
const BATCH: i32 = 10;
/// How long past the long poll's wait a receive may take.
const SLACK: Duration = Duration::from_secs(5);
/// The pause after a failed call before the next.
const RETRY: Duration = Duration::from_secs(1);
/// How long a poll in progress when chirp stops may take to finish (the
/// default `wait` fits; a longer one is dropped, see `give_back`); a third
/// of it again for giving its messages back: within the 2.5 s tasks have
/// to stop.
const GIVE_BACK: Duration = Duration::from_millis(1500);

struct SqsCatch {
    up: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for SqsCatch {
    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// SQS found the queue (`GetQueueUrl`, or `GetQueueAttributes` for a
    /// URL): messages sent from now on wait there for the receive loop.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut up = self.up.clone();
        tokio::select! {
            r = up.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

struct Receiver {
    client: Client,
    cfg: CatchConfig,
    sink: Arc<dyn CatchSink>,
    /// The queue's URL, once known.
    url: Option<String>,
    /// The queue was found since the last failed call: a quick answer
    /// that says the catch is up, before a long poll that may wait.
    found: bool,
    /// A delete was refused for the credentials (said once).
    delete_refused: bool,
}

/// Starts the receive loop. With `ctx.fail_fast` (`check`) the queue must
/// be reachable now: an unreachable endpoint, refused credentials or a
/// missing queue is an unreachable target (exit 3).
pub async fn start(
    conn: &super::Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let status = conn.catch.clone().ok_or_else(|| {
        SetupError::new(
            format!("connection `{}`", cfg.connection),
            false,
            "no client for catches",
        )
    })?;
    let (up_tx, up) = watch::channel(false);
    let url = match &cfg.queue {
        Queue::Url { url, .. } => Some(url.clone()),
        Queue::Name(_) => None,
    };
    let mut receiver = Receiver {
        client: conn.client.clone(),
        cfg: cfg.clone(),
        sink,
        url,
        found: false,
        delete_refused: false,
    };
    if ctx.fail_fast {
        let url = resolve(&receiver.client, &cfg.queue, super::CALL_TIMEOUT)
            .await
            .map_err(|e| {
                SetupError::new(
                    format!(
                        "probe `{}`: catch: cannot reach SQS queue `{}`",
                        receiver.sink.name(),
                        cfg.queue.name()
                    ),
                    true,
                    e,
                )
            })?;
        receiver.url = Some(url);
        receiver.found = true;
        up_tx.send_replace(true);
    }
    ctx.tasks
        .spawn(receive_loop(receiver, status, up_tx, ctx.stop.clone()));
    Ok(Arc::new(SqsCatch { up }))
}

async fn receive_loop(
    mut r: Receiver,
    status: Arc<LinkStatus>,
    up: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let name = r.sink.name().to_owned();
    let queue = r.cfg.queue.name().to_owned();
    let mut said = false;
    loop {
        let step = match r.found_url() {
            None => tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                s = r.find() => s,
            },
            Some(url) => {
                let receiving = r.receive(&url);
                tokio::pin!(receiving);
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        r.give_back(&url, receiving).await;
                        return;
                    }
                    out = &mut receiving => match out {
                        Ok(out) => {
                            r.handle(url, out).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                }
            }
        };
        match step {
            Ok(()) => {
                up.send_replace(true);
                if said {
                    tracing::info!(probe = %name, queue = %queue, "SQS catch receiving again.");
                    said = false;
                }
            }
            Err(e) => {
                r.found = false;
                if up.send_replace(false) {
                    status.lost();
                }
                if !said {
                    tracing::warn!(probe = %name, queue = %queue, kind = e.kind.as_str(), error = %chain(&e), "SQS catch cannot receive; retrying every second.");
                    said = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// What a batch delete came to.
enum Deleted {
    All,
    /// Some or all refused: (entry ID, error code) each, or the call's error.
    Refused(Vec<(String, String)>),
    Failed(CallError),
}

impl Receiver {
    /// The queue's URL, if it was found since the last failed call.
    fn found_url(&self) -> Option<String> {
        self.url.clone().filter(|_| self.found)
    }

    /// Finds the queue: `GetQueueUrl` (or `GetQueueAttributes` for a URL)
    /// answers at once, where a first long poll of an empty queue would
    /// keep the probe from starting for its whole wait.
    async fn find(&mut self) -> Result<(), CallError> {
        let u = resolve(&self.client, &self.cfg.queue, super::CALL_TIMEOUT).await?;
        self.url = Some(u);
        self.found = true;
        Ok(())
    }

    /// One long poll.
    fn receive(
        &self,
        url: &str,
    ) -> impl std::future::Future<Output = Result<ReceiveMessageOutput, CallError>> + use<> {
        // Whole seconds, from 1 to 20 and at most 12 h: checked by validate().
        let wait = self.cfg.wait.as_secs().min(20) as i32;
        let sent = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(wait)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .set_visibility_timeout(
                self.cfg
                    .visibility_timeout
                    .map(|v| v.as_secs().min(super::config::MAX_VISIBILITY.as_secs()) as i32),
            )
            .customize()
            .config_override(bounded(self.cfg.wait + SLACK))
            .send();
        async move { sent.await.map_err(|e| CallError::new("ReceiveMessage", e)) }
    }

    /// chirp is stopping (or this probe is being replaced) during a poll.
    /// SQS would still hand a message to a poll dropped half-way, and hide
    /// it for the visibility timeout from the next receiver (the probe's
    /// successor after a reload, or chirp started again): so the poll is
    /// finished, within [`GIVE_BACK`], and what it returns is made visible
    /// again at once, neither recorded nor deleted.
    async fn give_back(
        &self,
        url: &str,
        receiving: impl std::future::Future<Output = Result<ReceiveMessageOutput, CallError>>,
    ) {
        let Ok(Ok(out)) = tokio::time::timeout(GIVE_BACK, receiving).await else {
            return;
        };
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = out
            .messages()
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let given = self
            .client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .customize()
            .config_override(bounded(GIVE_BACK / 3))
            .send()
            .await;
        if let Err(e) = given {
            let e = CallError::new("ChangeMessageVisibilityBatch", e);
            tracing::debug!(probe = %self.sink.name(), error = %chain(&e), "Cannot give back the messages of the last poll; they come back after their visibility timeout.");
        }
    }

    /// Records what a poll returned, then deletes it. (Deleting before the
    /// next poll, not beside it: a FIFO queue holds back the rest of a
    /// message group while a batch of it is undeleted.)
    async fn handle(&mut self, url: String, out: ReceiveMessageOutput) {
        let mut entries = Vec::new();
        for (i, m) in out.messages().iter().enumerate() {
            self.record(m);
            let Some(handle) = m.receipt_handle() else {
                continue;
            };
            match DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
            {
                Ok(e) => entries.push(e),
                Err(e) => {
                    tracing::debug!(probe = %self.sink.name(), error = %e, "Cannot delete an SQS message.")
                }
            }
        }
        if !entries.is_empty() {
            let deleted = delete(&self.client, url, entries).await;
            self.said_deleted(deleted);
        }
    }

    /// Hands one message to the probe.
    fn record(&self, m: &Message) {
        let at = Instant::now();
        let attribute = |name: &str| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(text)
        };
        if let Some(n) = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .filter(|n| n.as_str() != "1")
        {
            // Counted as its token says: see the module's doc.
            tracing::debug!(probe = %self.sink.name(), receive_count = %n, "SQS delivered a message again.");
        }
        self.sink.on_message(Caught {
            token: attribute(canary::HEADER),
            traceparent: attribute(canary::TRACEPARENT),
            body: m.body().unwrap_or_default().as_bytes(),
            at,
        });
    }

    fn said_deleted(&mut self, d: Deleted) {
        let name = self.sink.name();
        match d {
            Deleted::All => {}
            Deleted::Refused(entries) => {
                for (id, code) in &entries {
                    tracing::debug!(probe = %name, entry = %id, code = %code, "SQS did not delete a received message; it comes back after its visibility timeout.");
                }
                let denied = entries
                    .iter()
                    .any(|(_, c)| super::by_code(c, 400) == FailureKind::Auth);
                if denied {
                    self.refused_once();
                }
            }
            Deleted::Failed(e) => {
                tracing::debug!(probe = %name, error = %chain(&e), "SQS did not delete received messages; they come back after their visibility timeout.");
                if e.kind == FailureKind::Auth {
                    self.refused_once();
                }
            }
        }
    }

    /// The credentials may receive but not delete: every message comes
    /// back, again and again. An operator must grant `sqs:DeleteMessage`.
    fn refused_once(&mut self) {
        if !self.delete_refused {
            self.delete_refused = true;
            tracing::warn!(probe = %self.sink.name(), queue = %self.cfg.queue.name(), "SQS refuses to delete received messages for these credentials (allow sqs:DeleteMessage): every message comes back after its visibility timeout, counted as a duplicate.");
        }
    }
}

/// A string or binary attribute's text.
fn text(v: &MessageAttributeValue) -> Option<&str> {
    v.string_value().or_else(|| {
        v.binary_value()
            .and_then(|b| std::str::from_utf8(b.as_ref()).ok())
    })
}

async fn delete(
    client: &Client,
    url: String,
    entries: Vec<DeleteMessageBatchRequestEntry>,
) -> Deleted {
    let sent = client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .customize()
        .config_override(bounded(super::CALL_TIMEOUT))
        .send()
        .await;
    match sent {
        Err(e) => Deleted::Failed(CallError::new("DeleteMessageBatch", e)),
        Ok(out) if out.failed().is_empty() => Deleted::All,
        Ok(out) => Deleted::Refused(
            out.failed()
                .iter()
                .map(|f| (f.id().to_owned(), f.code().to_owned()))
                .collect(),
        ),
    }
}
