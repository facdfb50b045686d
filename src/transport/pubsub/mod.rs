//! Google Cloud Pub/Sub through Google's own client (`google-cloud-pubsub`):
//! a named connection holds the credentials, one publisher client per
//! publish timeout (every probe's topic publisher on it shares its gRPC
//! channel), a subscriber client for the catches (a streaming pull each)
//! and the REST admin clients chirp only reads with (`GetTopic`,
//! `GetSubscription`): it creates and changes nothing.
//!
//! The client retries on its own for up to 10 minutes and reconnects a
//! broken stream with a backoff that grows to a minute; chirp bounds both
//! (publishes by `publish_timeout`, streams by re-subscribing itself), so an
//! outage shows within seconds and delivery resumes as soon as Pub/Sub
//! answers again. The inject side's state is what Pub/Sub last said: a
//! publish that fails to reach it (or waits half a second) has chirp ask
//! with a `GetTopic`; if that cannot reach Pub/Sub either the connection is
//! down, every slot then fails as `unavailable` at once, and a check each
//! second (at most) finds it back. Credentials come from `credentials_file` or the standard
//! chain; their contents never reach a log line, an error or `Debug`.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{chain, classify_io, Context, LinkStatus, Roles, SetupError};
use crate::outcome::FailureKind;
use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_pubsub::client::{BasePublisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one check of a topic or subscription may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the inject side's state is looked at while it is up.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// While up, Pub/Sub is asked again only when it has said nothing for this
/// long (publishes answer more often than that on a busy connection, so
/// the admin API, which has a quota, is left alone).
const QUIET: Duration = Duration::from_secs(5);
/// The longest wait between two checks while Pub/Sub cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The inject side of a connection: whether Pub/Sub answered last.
pub struct Link {
    pub status: Arc<LinkStatus>,
    up: AtomicBool,
    /// Pub/Sub was asked at least once: until then a publish is tried
    /// (and fails on its own if it must), though the link is not up yet.
    known: AtomicBool,
    /// A publish failed as if Pub/Sub were gone, or is slow to answer (or
    /// a topic was added): check now (at most once a second while up).
    check: Notify,
    /// The topics publishing on this connection; the first is what the
    /// reachability check asks about.
    topics: Mutex<Vec<String>>,
    /// When Pub/Sub last answered.
    heard: Mutex<Instant>,
}

impl Link {
    fn new(name: &str) -> Arc<Link> {
        Arc::new(Link {
            status: LinkStatus::new(name, "inject"),
            up: AtomicBool::new(false),
            known: AtomicBool::new(false),
            check: Notify::new(),
            topics: Mutex::new(Vec::new()),
            heard: Mutex::new(Instant::now()),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Pub/Sub is known not to answer: a publish now would only wait.
    pub fn is_down(&self) -> bool {
        self.known.load(Ordering::Relaxed) && !self.is_up()
    }

    /// Pub/Sub answered (a publish succeeded, or it said why not).
    pub fn answered(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.up.store(true, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }

    /// Marks the link down; true if it was up.
    fn down(&self) -> bool {
        self.known.store(true, Ordering::Relaxed);
        self.up.swap(false, Ordering::Relaxed)
    }

    /// A publish could not reach Pub/Sub, or waits long: the supervisor
    /// checks soon.
    pub fn broken(&self) {
        self.check.notify_one();
    }

    fn register(&self, topic: &str) {
        let mut t = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if !t.iter().any(|x| x == topic) {
            t.push(topic.to_owned());
        }
        drop(t);
        self.check.notify_one();
    }

    fn topic(&self) -> Option<String> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }

    fn heard_within(&self, d: Duration) -> bool {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < d
    }
}

/// A named connection's clients, and what ends them (a reload, or stop).
pub struct Connected {
    name: String,
    cfg: config::ConnectionConfig,
    target: config::Target,
    credentials: Credentials,
    /// Where the clients go, for people ("Google's endpoint", a URL).
    place: String,
    inject: Option<Arc<Link>>,
    /// Publisher clients by publish timeout (their retry limit).
    publishers: Mutex<HashMap<Duration, BasePublisher>>,
    subscriber: Option<Subscriber>,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    /// The catches' record (`role="catch"`), shared by the probe catches
    /// on this connection.
    catch: Option<Arc<LinkStatus>>,
    stop: CancellationToken,
}

impl Connected {
    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        self.inject
            .iter()
            .map(|l| Arc::clone(&l.status))
            .chain(self.catch.iter().cloned())
            .collect()
    }

    /// The publisher client whose retries end within `timeout`.
    async fn base_publisher(&self, timeout: Duration) -> Result<BasePublisher, SetupError> {
        if let Some(p) = self
            .publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&timeout)
        {
            return Ok(p.clone());
        }
        use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
        use google_cloud_gax::retry_policy::RetryPolicyExt;
        let mut b = BasePublisher::builder()
            .with_credentials(self.credentials.clone())
            .with_retry_policy(
                google_cloud_pubsub::retry_policy::RetryableErrors.with_time_limit(timeout),
            )
            .with_backoff_policy(
                ExponentialBackoffBuilder::new()
                    .with_initial_delay(Duration::from_millis(50))
                    .with_maximum_delay(Duration::from_millis(500))
                    .with_scaling(2.0)
                    .clamp(),
            );
        if let Some(e) = &self.target.endpoint {
            b = b.with_endpoint(e.clone());
        }
        let what = format!("connection `{}`", self.name);
        let p = bounded(&what, b.build()).await?.map_err(|e| {
            SetupError::new(
                format!(
                    "connection `{}`: cannot make a Pub/Sub publisher",
                    self.name
                ),
                false,
                e,
            )
        })?;
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(timeout, p.clone());
        Ok(p)
    }
}

impl Drop for Connected {
    /// Ends the inject side's supervisor.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long making a client may take: with metadata-server credentials it
/// asks for the universe domain, over a client with no time limit of its own.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// `build` within `BUILD_TIMEOUT`; past it, the target is out of reach.
async fn bounded<T>(
    what: &str,
    build: impl std::future::Future<Output = T>,
) -> Result<T, SetupError> {
    tokio::time::timeout(BUILD_TIMEOUT, build)
        .await
        .map_err(|_| {
            SetupError::new(
                format!("{what}: making the Pub/Sub client took longer than {BUILD_TIMEOUT:?}"),
                true,
                "no answer (the metadata server?)",
            )
        })
}

/// Connects `name` for each role that uses it. Nothing goes over the
/// network here: the clients connect on first use, and the injects and
/// catches check their topic and subscription (in `check`, before the
/// first canary).
pub async fn connect(
    name: &str,
    cfg: &config::ConnectionConfig,
    roles: Roles,
    ctx: &Context,
) -> Result<Connected, SetupError> {
    super::install_crypto_provider();
    let what = || format!("connection `{name}`");
    let emulator = std::env::var("PUBSUB_EMULATOR_HOST").ok();
    let target = cfg.target(emulator.as_deref());
    let credentials = credentials(cfg, &target).map_err(|e| SetupError::new(what(), false, e))?;
    let place = match (&target.endpoint, target.from_environment) {
        (Some(e), true) => format!("{e} (PUBSUB_EMULATOR_HOST)"),
        (Some(e), false) => e.clone(),
        (None, _) => "https://pubsub.googleapis.com".to_owned(),
    };
    let admin = |e: google_cloud_gax::client_builder::Error| {
        SetupError::new(
            format!("{}: cannot make a Pub/Sub admin client", what()),
            false,
            e,
        )
    };
    let mut tb = TopicAdmin::builder()
        .with_credentials(credentials.clone())
        .with_retry_policy(NeverRetry);
    let mut sb = SubscriptionAdmin::builder()
        .with_credentials(credentials.clone())
        .with_retry_policy(NeverRetry);
    if let Some(e) = &target.endpoint {
        tb = tb.with_endpoint(e.clone());
        sb = sb.with_endpoint(e.clone());
    }
    let topics = bounded(&what(), tb.build()).await?.map_err(admin)?;
    let subscriptions = bounded(&what(), sb.build()).await?.map_err(admin)?;
    let subscriber = if roles.catch {
        let mut b = Subscriber::builder().with_credentials(credentials.clone());
        if let Some(e) = &target.endpoint {
            b = b.with_endpoint(e.clone());
        }
        Some(bounded(&what(), b.build()).await?.map_err(|e| {
            SetupError::new(
                format!("{}: cannot make a Pub/Sub subscriber", what()),
                false,
                e,
            )
        })?)
    } else {
        None
    };
    let stop = ctx.stop.child_token();
    let inject = roles.inject.then(|| Link::new(name));
    if let Some(link) = &inject {
        ctx.tasks.spawn(supervise(
            Arc::clone(link),
            topics.clone(),
            name.to_owned(),
            place.clone(),
            stop.clone(),
        ));
    }
    Ok(Connected {
        name: name.to_owned(),
        cfg: cfg.clone(),
        target,
        credentials,
        place,
        inject,
        publishers: Mutex::new(HashMap::new()),
        subscriber,
        topics,
        subscriptions,
        catch: roles.catch.then(|| LinkStatus::new(name, "catch")),
        stop,
    })
}

/// The credentials of a connection: none for the emulator, the file's, or
/// the standard chain's. Errors name the file, never its contents.
fn credentials(
    cfg: &config::ConnectionConfig,
    target: &config::Target,
) -> Result<Credentials, String> {
    use google_cloud_auth::credentials as creds;
    if target.anonymous {
        return Ok(creds::anonymous::Builder::new().build());
    }
    let Some(path) = &cfg.credentials_file else {
        return creds::Builder::default()
            .build()
            .map_err(|e| format!("cannot load Google's application default credentials: {e}"));
    };
    let text = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    // serde_json's messages give a place, never the text.
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("`{path}` is not a JSON credentials file ({e})"))?;
    let kind = json
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    let built = match kind.as_str() {
        "service_account" => creds::service_account::Builder::new(json).build(),
        "authorized_user" => creds::user_account::Builder::new(json).build(),
        "external_account" => creds::external_account::Builder::new(json).build(),
        "impersonated_service_account" => creds::impersonated::Builder::new(json).build(),
        // Nothing of the file is quoted, not even its `type`.
        _ => {
            return Err(format!(
                "`{path}`: its `type` is none that chirp takes (`service_account`, a service account key; `authorized_user`, `external_account` or `impersonated_service_account`)"
            ))
        }
    };
    built.map_err(|e| format!("`{path}` holds no usable {kind} credentials: {e}"))
}

/// What a check of a topic or subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Exists,
    Missing,
    /// Pub/Sub answered, but the credentials may not look (a publisher or
    /// subscriber role without `pubsub.*.get`).
    Unknown,
}

/// Asks Pub/Sub whether topic `name` exists (bounded by `CHECK_TIMEOUT`).
async fn check_topic(admin: &TopicAdmin, name: &str) -> Result<Seen, GaxError> {
    let call = admin
        .get_topic()
        .set_topic(name)
        .with_attempt_timeout(CHECK_TIMEOUT)
        .send();
    seen(tokio::time::timeout(CHECK_TIMEOUT, call).await)
}

/// Asks Pub/Sub whether subscription `name` exists.
async fn check_subscription(admin: &SubscriptionAdmin, name: &str) -> Result<Seen, GaxError> {
    let call = admin
        .get_subscription()
        .set_subscription(name)
        .with_attempt_timeout(CHECK_TIMEOUT)
        .send();
    seen(tokio::time::timeout(CHECK_TIMEOUT, call).await)
}

fn seen<T>(
    answer: Result<Result<T, GaxError>, tokio::time::error::Elapsed>,
) -> Result<Seen, GaxError> {
    match answer {
        Err(_) => Err(GaxError::timeout(format!(
            "no answer from Pub/Sub within {CHECK_TIMEOUT:?}"
        ))),
        Ok(Ok(_)) => Ok(Seen::Exists),
        Ok(Err(e)) => match e.status().map(|s| s.code) {
            Some(Code::NotFound) => Ok(Seen::Missing),
            Some(Code::PermissionDenied) => Ok(Seen::Unknown),
            _ => Err(e),
        },
    }
}

/// Keeps the inject side's state until `stop`: while up, a check when a
/// publish could not reach Pub/Sub or waits long, or when Pub/Sub has said
/// nothing for `QUIET`, at most one a second (a slow Pub/Sub is asked, not
/// hammered); while down, a check every second (at most) until it answers.
async fn supervise(
    link: Arc<Link>,
    admin: TopicAdmin,
    name: String,
    place: String,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut said = false;
    let mut last_check: Option<Instant> = None;
    loop {
        if link.is_up() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = link.check.notified() => {}
                _ = tokio::time::sleep(HEARTBEAT) => {
                    if link.heard_within(QUIET) {
                        continue;
                    }
                }
            }
            if let Some(at) = last_check {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at + HEARTBEAT) => {}
                }
            }
        }
        let Some(topic) = link.topic() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = link.check.notified() => {}
            }
            continue;
        };
        last_check = Some(Instant::now());
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = check_topic(&admin, &topic) => a,
        };
        match answer {
            // Any answer of the service (even a missing topic: publishes
            // say so, as `rejected`) means it can be reached.
            Ok(_) => {
                link.answered();
                failures = 0;
                if said {
                    tracing::info!(connection = %name, role = "inject", "Pub/Sub reachable again.");
                    said = false;
                }
            }
            Err(e) if !unreachable(&e) => link.answered(),
            Err(e) => {
                if link.down() {
                    link.status.lost();
                }
                if !said {
                    tracing::warn!(connection = %name, role = "inject", endpoint = %place, error = %chain(&e), "Pub/Sub not reachable; publishes fail as unavailable until it answers.");
                    said = true;
                }
                failures = failures.saturating_add(1);
                let backoff = (Duration::from_millis(200) * failures).min(MAX_BACKOFF);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Whether `e` says Pub/Sub could not be reached (as opposed to an answer).
pub(crate) fn unreachable(e: &GaxError) -> bool {
    matches!(classify(e), FailureKind::Unavailable | FailureKind::Timeout)
}

/// The failure kind of a Pub/Sub error.
pub(crate) fn classify(e: &GaxError) -> FailureKind {
    if e.is_exhausted() {
        // The retries ran out of time (or were throttled): the last error
        // they saw, wrapped inside, says why.
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(inner) = c.downcast_ref::<GaxError>() {
                return classify(inner);
            }
            cause = c.source();
        }
        return FailureKind::Timeout;
    }
    if let Some(s) = e.status() {
        return match s.code {
            Code::PermissionDenied | Code::Unauthenticated => FailureKind::Auth,
            Code::ResourceExhausted => FailureKind::Throttled,
            Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => FailureKind::Rejected,
            Code::Unavailable => FailureKind::Unavailable,
            Code::DeadlineExceeded => FailureKind::Timeout,
            _ => FailureKind::Other,
        };
    }
    if e.is_authentication() {
        // A token that could not be fetched for want of the network (the
        // metadata server, the token endpoint out of reach) is an outage,
        // not refused credentials.
        let transient = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        return if transient {
            FailureKind::Unavailable
        } else {
            FailureKind::Auth
        };
    }
    if e.is_timeout() {
        return FailureKind::Timeout;
    }
    if let Some(code) = e.http_status_code() {
        return match code {
            401 | 403 => FailureKind::Auth,
            429 => FailureKind::Throttled,
            400 | 404 | 409 | 412 => FailureKind::Rejected,
            504 => FailureKind::Timeout,
            500..=599 => FailureKind::Unavailable,
            _ => FailureKind::Other,
        };
    }
    if e.is_connect() || e.is_io() || e.is_transport() {
        return match classify_io(e) {
            Some(FailureKind::Timeout) => FailureKind::Timeout,
            _ => FailureKind::Unavailable,
        };
    }
    FailureKind::Other
}
