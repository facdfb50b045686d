//! `amqp` settings (RabbitMQ, AMQP 0-9-1): a named connection, the exchange
//! and routing key a probe publishes to, and the queue it consumes. chirp
//! declares nothing unless `declare: true`: it probes the real topology.

use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use crate::config::tls::TlsConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `amqp://[user:password@]host[:port][/vhost]` or `amqps://…`.
    pub url: Endpoint,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// The virtual host (`/` unless the URL or this says otherwise).
    pub vhost: Option<String>,
    #[serde(default, deserialize_with = "crate::config::tls::deserialize")]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    /// The exchange; `""` is the default exchange (routing key = queue name).
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
    /// Extra headers on every canary; values are secret.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Declare the exchange (durable, of `exchange_type`) before publishing.
    #[serde(default, deserialize_with = "crate::config::de::flag")]
    pub declare: bool,
    #[serde(default = "topic")]
    pub exchange_type: String,
}

fn topic() -> String {
    "topic".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    pub queue: String,
    /// Declare the queue (durable) and, with `bind`, bind it.
    #[serde(default, deserialize_with = "crate::config::de::flag")]
    pub declare: bool,
    pub bind: Option<Bind>,
    /// Unacked deliveries the broker may send ahead (basic.qos; default 100).
    #[serde(default, deserialize_with = "crate::config::de::opt_parsed")]
    pub prefetch: Option<u16>,
}

impl CatchConfig {
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or(100)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

/// The parts of a connection URL, credentials apart.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Target({}://{}:{}, vhost {:?}, user {:?}, password {})",
            if self.tls { "amqps" } else { "amqp" },
            self.host,
            self.port,
            self.vhost,
            self.user,
            if self.password.is_some() {
                "***"
            } else {
                "none"
            }
        )
    }
}

/// Parses an `amqp(s)://` URL; the error never quotes credentials.
pub fn parse_url(url: &Endpoint) -> Result<Target, String> {
    let bad = || {
        format!(
            "`{}` is not an AMQP URL (write e.g. amqp://host:5672/vhost or amqps://host:5671)",
            url.redacted()
        )
    };
    let u = url::Url::parse(url.expose()).map_err(|_| bad())?;
    let tls = match u.scheme() {
        "amqp" => false,
        "amqps" => true,
        _ => return Err(bad()),
    };
    let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad());
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let path = u.path().strip_prefix('/').unwrap_or_default();
    Ok(Target {
        tls,
        host: host.trim_matches(['[', ']']).to_owned(),
        port: u.port().unwrap_or(if tls { 5671 } else { 5672 }),
        // No path: the default vhost `/`; `/x` is vhost `x` (`%2f` for `/`).
        vhost: if u.path().is_empty() || u.path() == "/" {
            "/".into()
        } else {
            decode(path)
        },
        user: (!u.username().is_empty()).then(|| decode(u.username())),
        password: u.password().map(decode),
    })
}

impl ConnectionConfig {
    /// The target with the fields' credentials and vhost applied.
    pub fn target(&self) -> Result<Target, String> {
        let mut t = parse_url(&self.url)?;
        if let Some(u) = &self.user {
            t.user = Some(u.clone());
        }
        if let Some(p) = &self.password {
            t.password = Some(p.expose().to_owned());
        }
        if let Some(v) = &self.vhost {
            t.vhost = v.clone();
        }
        Ok(t)
    }

    pub fn validate(&self, path: &str, p: &mut Problems) {
        match parse_url(&self.url) {
            Ok(t) => {
                if t.user.is_some() && (self.user.is_some() || self.password.is_some()) {
                    p.add(
                        format!("{path}.url"),
                        "the URL carries credentials and so do `user`/`password`; give them once",
                    );
                }
                if self.tls.is_some() && !t.tls {
                    p.add(format!("{path}.tls"), "`tls` needs an amqps:// URL");
                }
            }
            Err(e) => p.add(format!("{path}.url"), e),
        }
        if self.user.is_some() != self.password.is_some() {
            p.add(path, "`user` and `password` go together");
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), p);
        }
    }
}

/// Exchange, queue and routing-key names are short strings (≤ 255 bytes).
fn check_short(value: &str, what: &str, path: String, p: &mut Problems) {
    if value.len() > 255 || value.chars().any(char::is_control) {
        p.add(path, format!("{what} `{value}` is not a valid AMQP name (at most 255 bytes, no control characters)"));
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_short(&self.exchange, "exchange", format!("{path}.exchange"), p);
        check_short(
            &self.routing_key,
            "routing key",
            format!("{path}.routing_key"),
            p,
        );
        if self.exchange.is_empty() && self.routing_key.is_empty() {
            p.add(
                format!("{path}.routing_key"),
                "the default exchange (`exchange: \"\"`) routes by queue name: give the queue as `routing_key`",
            );
        }
        if self.declare && self.exchange.is_empty() {
            p.add(
                format!("{path}.declare"),
                "the default exchange cannot be declared",
            );
        }
        if !["direct", "topic", "fanout", "headers"].contains(&self.exchange_type.as_str()) {
            p.add(
                format!("{path}.exchange_type"),
                format!(
                    "`{}` is not an exchange type (direct, topic, fanout, headers)",
                    self.exchange_type
                ),
            );
        }
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        if self.queue.is_empty() {
            p.add(format!("{path}.queue"), "name the queue to consume");
        }
        check_short(&self.queue, "queue", format!("{path}.queue"), p);
        if self.bind.is_some() && !self.declare {
            p.add(
                format!("{path}.bind"),
                "`bind` needs `declare: true` (chirp changes no topology otherwise)",
            );
        }
        if self.prefetch == Some(0) {
            p.add(format!("{path}.prefetch"), "at least 1");
        }
    }
}

pub fn inject_end(c: &InjectConfig) -> super::super::End {
    let exchange = if c.exchange.is_empty() {
        "(default)"
    } else {
        c.exchange.as_str()
    };
    super::super::End {
        messaging: Some("rabbitmq"),
        system: "amqp",
        destination: Some(format!("{exchange}/{}", c.routing_key)),
        connection: Some(c.connection.clone()),
        description: format!(
            "RabbitMQ exchange {exchange}, routing key {} (connection {})",
            c.routing_key, c.connection
        ),
    }
}

pub fn catch_end(c: &CatchConfig) -> super::super::End {
    super::super::End {
        messaging: Some("rabbitmq"),
        system: "amqp",
        destination: Some(c.queue.clone()),
        connection: Some(c.connection.clone()),
        description: format!("RabbitMQ queue {} (connection {})", c.queue, c.connection),
    }
}
