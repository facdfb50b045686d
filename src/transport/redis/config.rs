//! `redis` settings (Redis Streams): a named connection, the stream a
//! probe appends to, and the stream it reads, as a consumer group or from
//! the stream's end. chirp changes no topology but a consumer group it is
//! told to read as, which it creates when missing.

use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use crate::config::tls::TlsConfig;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS).
    pub url: Endpoint,
    /// An ACL user (Redis 6+); with `password` alone, the default user.
    pub user: Option<String>,
    pub password: Option<Secret>,
    #[serde(default, deserialize_with = "crate::config::tls::deserialize")]
    pub tls: Option<TlsConfig>,
}

/// The entry field the canary's body goes in, and is read from.
fn payload() -> String {
    "payload".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    pub stream: String,
    /// Trim the stream to about this many entries (`XADD … MAXLEN ~ n`).
    #[serde(default, deserialize_with = "crate::config::de::opt_parsed")]
    pub maxlen: Option<u64>,
    #[serde(default = "payload")]
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    pub stream: String,
    /// Read as this consumer group (`XREADGROUP`, `XACK` after recording),
    /// created at the stream's end when missing. Without it chirp reads
    /// with `XREAD` from the stream's end and acknowledges nothing.
    pub group: Option<String>,
    /// The consumer name in `group` (default `chirp-<probe>`): stable, so
    /// entries left pending by a previous run are read and acknowledged.
    pub consumer: Option<String>,
    #[serde(default = "payload")]
    pub field: String,
}

/// The parts of a connection URL, credentials apart.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Target({}://{}:{}/{}, user {:?}, password {})",
            if self.tls { "rediss" } else { "redis" },
            self.host,
            self.port,
            self.db,
            self.user,
            if self.password.is_some() {
                "***"
            } else {
                "none"
            }
        )
    }
}

/// Parses a `redis(s)://` URL; the error never quotes credentials.
pub fn parse_url(url: &Endpoint) -> Result<Target, String> {
    let bad = || {
        format!(
            "`{}` is not a Redis URL (write e.g. redis://host:6379/0 or rediss://host:6380)",
            url.redacted()
        )
    };
    let u = url::Url::parse(url.expose()).map_err(|_| bad())?;
    let tls = match u.scheme() {
        "redis" => false,
        "rediss" => true,
        _ => return Err(bad()),
    };
    let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad());
    }
    let db = match u.path().trim_start_matches('/') {
        "" => 0,
        n => n.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
            format!(
                "`{}`: the path is the database number (e.g. /0)",
                url.redacted()
            )
        })?,
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Ok(Target {
        tls,
        host: host.trim_matches(['[', ']']).to_owned(),
        port: u.port().unwrap_or(6379),
        db,
        user: (!u.username().is_empty()).then(|| decode(u.username())),
        password: u.password().map(decode),
    })
}

impl ConnectionConfig {
    /// The target with the fields' credentials applied.
    pub fn target(&self) -> Result<Target, String> {
        let mut t = parse_url(&self.url)?;
        if let Some(u) = &self.user {
            t.user = Some(u.clone());
        }
        if let Some(p) = &self.password {
            t.password = Some(p.expose().to_owned());
        }
        Ok(t)
    }

    pub fn validate(&self, path: &str, p: &mut Problems) {
        match parse_url(&self.url) {
            Ok(t) => {
                if (t.user.is_some() || t.password.is_some())
                    && (self.user.is_some() || self.password.is_some())
                {
                    p.add(
                        format!("{path}.url"),
                        "the URL carries credentials and so do `user`/`password`; give them once",
                    );
                }
                if self.tls.is_some() && !t.tls {
                    p.add(format!("{path}.tls"), "`tls` needs a rediss:// URL");
                }
            }
            Err(e) => p.add(format!("{path}.url"), e),
        }
        if self.user.is_some() && self.password.is_none() {
            p.add(path, "`user` needs a `password`");
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), p);
        }
    }
}

/// Keys and field names: any bytes to Redis, but chirp writes them in
/// commands and labels, so no control characters.
fn check_name(value: &str, what: &str, path: String, p: &mut Problems) {
    if value.is_empty() {
        p.add(path, format!("name the {what}"));
    } else if value.chars().any(char::is_control) {
        p.add(
            path,
            format!("{what} `{}` holds control characters", value.escape_debug()),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_name(&self.stream, "stream", format!("{path}.stream"), p);
        check_name(&self.field, "field", format!("{path}.field"), p);
        if self.maxlen == Some(0) {
            p.add(
                format!("{path}.maxlen"),
                "at least 1 (a stream trimmed to nothing loses every canary)",
            );
        }
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_name(&self.stream, "stream", format!("{path}.stream"), p);
        check_name(&self.field, "field", format!("{path}.field"), p);
        if let Some(g) = &self.group {
            check_name(g, "consumer group", format!("{path}.group"), p);
        }
        match (&self.consumer, &self.group) {
            (Some(_), None) => p.add(
                format!("{path}.consumer"),
                "`consumer` names chirp in a consumer group: give `group` too",
            ),
            (Some(c), Some(_)) => check_name(c, "consumer", format!("{path}.consumer"), p),
            _ => {}
        }
    }

    /// The consumer name in the group.
    pub fn consumer(&self, probe: &str) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("chirp-{probe}"))
    }
}

pub fn end(stream: &str, connection: &str) -> super::super::End {
    super::super::End {
        messaging: Some("redis"),
        system: "redis",
        destination: Some(stream.to_owned()),
        connection: Some(connection.to_owned()),
        description: format!("Redis stream {stream} (connection {connection})"),
    }
}
