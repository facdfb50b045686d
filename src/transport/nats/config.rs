//! `nats` settings: a named connection (`connections: {main: {nats: …}}`),
//! and the subjects a probe publishes to and subscribes on.

use super::parse_urls;
use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use crate::config::tls::TlsConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// One or more server URLs, comma separated; may carry `user:password@`
    /// or `token@`, which chirp passes to the client as credentials.
    pub url: Endpoint,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub credentials_file: Option<String>,
    #[serde(default, deserialize_with = "crate::config::tls::deserialize")]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    pub subject: String,
    /// Extra headers on every canary; values are secret (they may carry credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    /// May hold wildcards (`orders.*.out`, `orders.>`).
    pub subject: String,
    pub queue_group: Option<String>,
}

impl ConnectionConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let url_auth = match parse_urls(self.url.expose()) {
            Ok((_, auth)) => auth,
            Err(e) => {
                p.add(format!("{path}.url"), e.to_string());
                None
            }
        };
        let fields = self.token.is_some() || self.user.is_some() || self.password.is_some();
        if url_auth.is_some() && (fields || self.credentials_file.is_some()) {
            p.add(
                format!("{path}.url"),
                "the URL carries credentials and so does `token`, `user`, `password` or `credentials_file`; give them once",
            );
        }
        if self.user.is_some() != self.password.is_some() {
            p.add(path, "`user` and `password` go together");
        }
        if self.token.is_some() && self.user.is_some() {
            p.add(
                path,
                "use either `token` or `user` and `password`, not both",
            );
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), p);
        }
    }
}

/// A subject is dot-separated non-empty tokens without spaces; only a
/// subscription may use the wildcards `*` and `>`.
pub fn check_subject(subject: &str, wildcards: bool, path: &str, p: &mut Problems) {
    let bad = subject.is_empty()
        || subject.contains(char::is_whitespace)
        || subject.split('.').any(str::is_empty)
        || (!wildcards && subject.split('.').any(|t| t == "*" || t == ">"));
    if bad {
        let what = if wildcards {
            ""
        } else {
            " to publish to (no wildcards)"
        };
        p.add(
            format!("{path}.subject"),
            format!("`{subject}` is not a valid NATS subject{what}"),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_subject(&self.subject, false, path, p);
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_subject(&self.subject, true, path, p);
    }
}

pub fn end(subject: &str, connection: &str) -> super::super::End {
    super::super::End {
        messaging: Some("nats"),
        system: "nats",
        destination: Some(subject.to_owned()),
        connection: Some(connection.to_owned()),
        description: format!("NATS subject {subject} (connection {connection})"),
    }
}
