//! Amazon SQS through the AWS SDK for Rust: one client per named
//! connection (region, endpoint, static keys or the standard AWS credential
//! chain; its HTTPS client on rustls with ring), shared by the probes'
//! sends and receives. The injector sends with `SendMessage` (its answer is
//! the publish latency); each catch long-polls `ReceiveMessage`, records
//! every message, then deletes them with `DeleteMessageBatch`.
//!
//! Every call is bounded: two attempts at most, and timeouts that keep a
//! send within `publish_timeout`. SQS has no connection to lose, so an end
//! is up once a call has been answered and down after a call failed for
//! want of SQS (unreachable, timed out, refused credentials, no queue)
//! until one is answered again; each such fall is counted in
//! `chirp_transport_reconnects_total`. Secrets reach the SDK only as
//! credentials, which it never prints.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{BoxError, Context, LinkStatus, Roles, SetupError};
use crate::outcome::FailureKind;
use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use config::Queue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long opening a TCP (and TLS) connection to SQS may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds a call that is not a send: resolving a queue, deleting messages.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call: one retry of a throttled or failed request, no more,
/// so a call stays within its timeout and an outage shows at once.
const ATTEMPTS: u32 = 2;

/// The SQS client of a named connection, and its ends' records.
pub struct Connected {
    client: Client,
    inject: Option<Arc<Link>>,
    /// The catches' record (`role="catch"`), shared by the probe catches on
    /// this connection.
    catch: Option<Arc<LinkStatus>>,
}

impl Connected {
    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        self.inject
            .iter()
            .map(|l| Arc::clone(&l.status))
            .chain(self.catch.iter().cloned())
            .collect()
    }
}

/// Whether the injects of a connection are reaching SQS.
pub struct Link {
    pub status: Arc<LinkStatus>,
    up: AtomicBool,
}

impl Link {
    fn new(name: &str, role: &'static str) -> Arc<Link> {
        Arc::new(Link {
            status: LinkStatus::new(name, role),
            up: AtomicBool::new(false),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// SQS answered a call.
    pub fn answered(&self) {
        self.up.store(true, Ordering::Relaxed);
    }

    /// A call failed: if for want of SQS, the end is down (a fall from up
    /// is counted once).
    pub fn failed(&self, e: &CallError) {
        if e.gone() && self.up.swap(false, Ordering::Relaxed) {
            self.status.lost();
        }
    }
}

/// Makes the client of connection `name`. Nothing is sent yet: the
/// injects and catches check their queues (at once with
/// `ctx.fail_fast`, in `check`).
pub async fn connect(
    name: &str,
    cfg: &config::ConnectionConfig,
    roles: Roles,
    _ctx: &Context,
) -> Result<Connected, SetupError> {
    let what = || format!("connection `{name}`");
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(500));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry.clone())
        .timeout_config(limits(CALL_TIMEOUT));
    if let Some(r) = &cfg.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &cfg.endpoint {
        let url = config::endpoint_url(e).map_err(|e| SetupError::new(what(), false, e))?;
        loader = loader.endpoint_url(url);
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id.clone(),
            secret.expose().to_owned(),
            cfg.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "chirp-configuration",
        ));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(SetupError::new(
            what(),
            false,
            "no AWS region: set `region` in the connection, or AWS_REGION",
        ));
    }
    let client = Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .retry_config(retry)
            .timeout_config(limits(CALL_TIMEOUT))
            .build(),
    );
    Ok(Connected {
        client,
        inject: roles.inject.then(|| Link::new(name, "inject")),
        catch: roles.catch.then(|| LinkStatus::new(name, "catch")),
    })
}

/// Timeouts that end a call (both attempts) within `total`.
fn limits(total: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(total))
        .read_timeout(total)
        .operation_attempt_timeout(total)
        .operation_timeout(total)
        .build()
}

/// A call's own settings: `total` bounds it.
fn bounded(total: Duration) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::default().timeout_config(limits(total))
}

/// The URL of `queue`, checked: `GetQueueUrl` for a name, and for a URL
/// `GetQueueAttributes` (the queue exists and the credentials may read it).
pub(crate) async fn resolve(
    client: &Client,
    queue: &Queue,
    total: Duration,
) -> Result<String, CallError> {
    match queue {
        Queue::Name(name) => {
            let out = client
                .get_queue_url()
                .queue_name(name)
                .customize()
                .config_override(bounded(total))
                .send()
                .await
                .map_err(|e| CallError::new("GetQueueUrl", e))?;
            out.queue_url()
                .map(str::to_owned)
                .ok_or_else(|| CallError::other("GetQueueUrl", "SQS answered without a queue URL"))
        }
        Queue::Url { url, .. } => {
            client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .customize()
                .config_override(bounded(total))
                .send()
                .await
                .map_err(|e| CallError::new("GetQueueAttributes", e))?;
            Ok(url.clone())
        }
    }
}

/// An SQS call that failed, and what kind of failure it is.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed")]
pub struct CallError {
    pub op: &'static str,
    pub kind: FailureKind,
    /// The service's error code, when it answered.
    pub code: Option<String>,
    #[source]
    source: BoxError,
}

impl CallError {
    fn new<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> CallError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, code) = classify(&e);
        CallError {
            op,
            kind,
            code,
            source: Box::new(e),
        }
    }

    fn other(op: &'static str, e: impl Into<BoxError>) -> CallError {
        CallError {
            op,
            kind: FailureKind::Other,
            code: None,
            source: e.into(),
        }
    }

    /// chirp gave up waiting for the answer.
    fn timeout(op: &'static str, e: impl Into<BoxError>) -> CallError {
        CallError {
            kind: FailureKind::Timeout,
            ..CallError::other(op, e)
        }
    }

    /// The queue does not exist (or was deleted).
    pub fn missing_queue(&self) -> bool {
        self.code.as_deref().is_some_and(missing_queue)
    }

    /// The failure says SQS cannot be used now (rather than that it
    /// answered and refused one request).
    pub fn gone(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Unavailable | FailureKind::Timeout | FailureKind::Auth
        ) || self.missing_queue()
    }
}

fn missing_queue(code: &str) -> bool {
    code == "QueueDoesNotExist" || code == "AWS.SimpleQueueService.NonExistentQueue"
}

/// The failure kind of an SDK error, and the service's error code.
pub(crate) fn classify<E>(e: &SdkError<E, HttpResponse>) -> (FailureKind, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // No credentials could be found or made: the chain came up empty, or
    // an STS or metadata call failed (unavailable when it timed out).
    let credentials = credentials_failed(e);
    let kind = match e {
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => FailureKind::Timeout,
        _ if credentials.is_some() => credentials.unwrap_or(FailureKind::Auth),
        SdkError::DispatchFailure(d) if d.is_user() => FailureKind::Other,
        SdkError::DispatchFailure(_) => match super::classify_io(e) {
            Some(FailureKind::Timeout) => FailureKind::Timeout,
            _ => FailureKind::Unavailable,
        },
        // An answer that was not one (a connection closed mid-response).
        SdkError::ResponseError(_) => FailureKind::Unavailable,
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            return (
                by_code(code, s.raw().status().as_u16()),
                (!code.is_empty()).then(|| code.to_owned()),
            );
        }
        _ => FailureKind::Other,
    };
    (kind, None)
}

fn credentials_failed(e: &(dyn std::error::Error + 'static)) -> Option<FailureKind> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<CredentialsError>() {
            // A provider that did not answer in time (the instance
            // metadata service, STS out of reach) is an outage, not
            // refused credentials.
            return Some(match c {
                CredentialsError::ProviderTimedOut(_) => FailureKind::Unavailable,
                _ => FailureKind::Auth,
            });
        }
        cur = err.source();
    }
    None
}

/// The failure kind of an error SQS (or AWS's front door) answered with.
pub(crate) fn by_code(code: &str, status: u16) -> FailureKind {
    const AUTH: [&str; 12] = [
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidSecurity",
        "UnrecognizedClientException",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "AuthFailure",
        "RequestExpired",
        "NotAuthorized",
    ];
    if AUTH.contains(&code)
        || code.starts_with("AccessDenied")
        || code.ends_with("AccessDeniedException")
    {
        FailureKind::Auth
    } else if code.contains("Throttl")
        || code == "OverLimit"
        || code == "RequestLimitExceeded"
        || code == "SlowDown"
        || status == 429
    {
        FailureKind::Throttled
    } else if matches!(
        code,
        "ServiceUnavailable" | "InternalError" | "InternalFailure"
    ) || status >= 500
    {
        FailureKind::Unavailable
    } else if code.is_empty() && (status == 401 || status == 403) {
        FailureKind::Auth
    } else {
        FailureKind::Rejected
    }
}
