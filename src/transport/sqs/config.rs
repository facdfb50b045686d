//! `sqs` settings (Amazon SQS): a named connection (region, endpoint,
//! credentials or the standard AWS chain), the queue a probe sends to and
//! the queue it receives from, by name or by URL. chirp creates no queue
//! and changes none.

use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use serde::Deserialize;
use std::time::Duration;

/// Without keys, chirp takes credentials and region from the standard AWS
/// chain (environment, profile, web identity, ECS, instance metadata).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// The AWS region (`eu-west-1`); else `AWS_REGION`, the profile, or
    /// the instance's metadata.
    pub region: Option<String>,
    /// Another endpoint than the region's (a VPC endpoint, or an emulator
    /// such as moto for local tests), `http(s)://host[:port]`.
    pub endpoint: Option<Endpoint>,
    /// Static credentials: both keys, and `session_token` for temporary ones.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for ConnectionConfig {
    /// Says which credentials are configured, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |s: &Option<Secret>| if s.is_some() { "***" } else { "none" };
        f.debug_struct("ConnectionConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &given(&self.secret_access_key))
            .field("session_token", &given(&self.session_token))
            .finish()
    }
}

/// A queue as written: its name (resolved with `GetQueueUrl`) or its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queue {
    Name(String),
    Url { url: String, name: String },
}

impl Queue {
    /// `https://sqs.<region>.amazonaws.com/<account>/<name>` or a name.
    pub fn parse(text: &str) -> Result<Queue, String> {
        if !text.contains("://") {
            check_queue_name(text)?;
            return Ok(Queue::Name(text.to_owned()));
        }
        let bad = || {
            format!(
                "`{}` is not a queue URL (write e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/orders, or the queue's name)",
                Endpoint::new(text).redacted()
            )
        };
        let u = url::Url::parse(text).map_err(|_| bad())?;
        if !matches!(u.scheme(), "http" | "https")
            || u.host_str().is_none_or(str::is_empty)
            || u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return Err(bad());
        }
        let name = u
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default()
            .to_owned();
        check_queue_name(&name).map_err(|e| format!("{}: {e}", bad()))?;
        Ok(Queue::Url {
            url: text.to_owned(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Queue::Name(n) | Queue::Url { name: n, .. } => n,
        }
    }

    /// A FIFO queue (its name ends in `.fifo`): every send needs a message
    /// group and a deduplication ID.
    pub fn fifo(&self) -> bool {
        self.name().ends_with(".fifo")
    }
}

/// SQS's own rule: 1–80 of `A-Z a-z 0-9 - _`, `.fifo` at the end of a FIFO
/// queue's name (counted in the 80).
fn check_queue_name(name: &str) -> Result<(), String> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if name.is_empty() {
        return Err("name the queue".into());
    }
    if name.len() > 80
        || base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{}` is not an SQS queue name (1–80 of A-Z a-z 0-9 - _, `.fifo` at the end of a FIFO queue's)",
            name.escape_debug()
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Queue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Queue::parse(text.trim()).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    pub queue: Queue,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    pub queue: Queue,
    /// How long one `ReceiveMessage` waits for a message (long polling):
    /// whole seconds, 1 s to 20 s. A message that arrives meanwhile is
    /// returned at once; the wait only sets how often an empty queue is asked.
    #[serde(
        default = "one_second",
        deserialize_with = "crate::config::de::duration"
    )]
    pub wait: Duration,
    /// How long a received message stays hidden from other receivers before
    /// SQS offers it again (whole seconds, at most 12h); the queue's own
    /// setting when left out.
    #[serde(default, deserialize_with = "crate::config::de::opt_duration")]
    pub visibility_timeout: Option<Duration>,
}

/// SQS's longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

impl ConnectionConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        if let Some(r) = &self.region {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                p.add(
                    format!("{path}.region"),
                    format!(
                        "`{}` is not an AWS region (write e.g. eu-west-1)",
                        r.escape_debug()
                    ),
                );
            }
        }
        if let Some(e) = &self.endpoint {
            if let Err(e) = endpoint_url(e) {
                p.add(format!("{path}.endpoint"), e);
            }
        }
        let empty = |s: Option<&str>| s.is_some_and(|s| s.trim().is_empty());
        for (key, value) in [
            ("access_key_id", self.access_key_id.as_deref()),
            (
                "secret_access_key",
                self.secret_access_key.as_ref().map(Secret::expose),
            ),
            (
                "session_token",
                self.session_token.as_ref().map(Secret::expose),
            ),
        ] {
            if empty(value) {
                p.add(
                    format!("{path}.{key}"),
                    "is empty: leave the key out to use the standard AWS credential chain",
                );
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => p.add(
                path,
                "`access_key_id` needs `secret_access_key` (or leave both out for the standard AWS credential chain)",
            ),
            (None, Some(_)) => p.add(path, "`secret_access_key` needs `access_key_id`"),
            (None, None) if self.session_token.is_some() => p.add(
                format!("{path}.session_token"),
                "a session token goes with `access_key_id` and `secret_access_key`",
            ),
            _ => {}
        }
    }
}

/// The endpoint as the client takes it; the error never quotes credentials.
pub fn endpoint_url(e: &Endpoint) -> Result<String, String> {
    let bad = || {
        format!(
            "`{}` is not an endpoint URL (write e.g. http://127.0.0.1:5000 or https://sqs.eu-west-1.amazonaws.com)",
            e.redacted()
        )
    };
    let u = url::Url::parse(e.expose().trim()).map_err(|_| bad())?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none_or(str::is_empty)
        || !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(e.expose().trim().to_owned())
}

impl InjectConfig {
    pub fn validate(&self, _path: &str, _p: &mut Problems) {
        // The queue was checked as it was read.
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let whole = |d: Duration| d.subsec_nanos() == 0;
        if !whole(self.wait) || self.wait < Duration::from_secs(1) || self.wait > MAX_WAIT {
            p.add(
                format!("{path}.wait"),
                format!(
                    "{} must be whole seconds from 1s to 20s (SQS's long poll)",
                    humantime::format_duration(self.wait)
                ),
            );
        }
        if let Some(v) = self.visibility_timeout {
            if !whole(v) || v.is_zero() || v > MAX_VISIBILITY {
                p.add(
                    format!("{path}.visibility_timeout"),
                    format!(
                        "{} must be whole seconds from 1s to 12h (at 0 a message chirp cannot delete comes straight back, again and again)",
                        humantime::format_duration(v)
                    ),
                );
            }
        }
    }
}

pub fn end(queue: &Queue, connection: &str) -> super::super::End {
    let name = queue.name();
    super::super::End {
        messaging: Some("aws_sqs"),
        system: "sqs",
        destination: Some(name.to_owned()),
        connection: Some(connection.to_owned()),
        description: format!("SQS queue {name} (connection {connection})"),
    }
}
