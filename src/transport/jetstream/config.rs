//! `jetstream` settings: the subject a probe publishes to (a stream must
//! listen on it), and the stream (and optionally its durable consumer) it
//! catches from. Both name a `nats` connection.

use crate::config::errors::Problems;
use crate::config::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// A `nats` connection.
    pub connection: String,
    /// A subject some stream captures.
    pub subject: String,
    /// Extra headers on every canary; values are secret (they may carry credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// With `declare: true`: the stream to create (file storage, capturing
    /// `subject`) if it does not exist. chirp changes no stream otherwise.
    pub stream: Option<String>,
    #[serde(default, deserialize_with = "crate::config::de::flag")]
    pub declare: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    /// A `nats` connection.
    pub connection: String,
    /// The stream canaries are stored in at the catch point.
    pub stream: String,
    /// Only messages on this subject (wildcards allowed); the whole stream otherwise.
    pub subject: Option<String>,
    /// A durable pull consumer of the stream (with explicit acks) that
    /// must exist: chirp reads and acks through it as a service would.
    /// Without it, chirp reads with an ordered ephemeral consumer that
    /// sees only new messages and acks nothing.
    pub consumer: Option<String>,
    /// Create the stream (file storage, capturing `subject`) if it does
    /// not exist; chirp changes no stream otherwise.
    #[serde(default, deserialize_with = "crate::config::de::flag")]
    pub declare: bool,
}

/// Stream and consumer names: no whitespace, `.`, `*`, `>`, `/` or `\`.
fn check_name(name: &str, what: &str, path: &str, p: &mut Problems) {
    let bad = name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
    if bad {
        p.add(
            path,
            format!("`{name}` is not a valid JetStream {what} name (no spaces, `.`, `*`, `>`, `/` or `\\`)"),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        crate::transport::nats::config::check_subject(&self.subject, false, path, p);
        if let Some(s) = &self.stream {
            check_name(s, "stream", &format!("{path}.stream"), p);
        }
        if self.declare != self.stream.is_some() {
            p.add(
                format!("{path}.stream"),
                "`stream` names the stream `declare: true` creates; give both or neither",
            );
        }
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_name(&self.stream, "stream", &format!("{path}.stream"), p);
        if let Some(s) = &self.subject {
            crate::transport::nats::config::check_subject(s, true, path, p);
        }
        if let Some(c) = &self.consumer {
            check_name(c, "consumer", &format!("{path}.consumer"), p);
        }
        if self.declare && self.subject.is_none() {
            p.add(
                format!("{path}.declare"),
                "declaring the stream needs the `subject` it captures",
            );
        }
        if self.declare && self.consumer.is_some() {
            p.add(
                format!("{path}.declare"),
                "chirp declares a stream, not a durable consumer: create `consumer` yourself, or leave it out",
            );
        }
    }
}

pub fn inject_end(c: &InjectConfig) -> super::super::End {
    super::super::End {
        messaging: Some("nats"),
        system: "jetstream",
        destination: Some(c.subject.clone()),
        connection: Some(c.connection.clone()),
        description: format!(
            "JetStream subject {} (connection {})",
            c.subject, c.connection
        ),
    }
}

pub fn catch_end(c: &CatchConfig) -> super::super::End {
    let filter = c
        .subject
        .as_deref()
        .map(|s| format!(", subject {s}"))
        .unwrap_or_default();
    let consumer = c
        .consumer
        .as_deref()
        .map(|s| format!(", consumer {s}"))
        .unwrap_or_default();
    super::super::End {
        messaging: Some("nats"),
        system: "jetstream",
        destination: Some(c.stream.clone()),
        connection: Some(c.connection.clone()),
        description: format!(
            "JetStream stream {}{filter}{consumer} (connection {})",
            c.stream, c.connection
        ),
    }
}
