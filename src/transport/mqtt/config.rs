//! `mqtt` settings: a named connection (`connections: {m: {mqtt: …}}`),
//! and the topics a probe publishes to and subscribes on.

use super::parse_url;
use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use crate::config::tls::TlsConfig;
use serde::Deserialize;
use std::time::Duration;

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// MQTT 5: user properties carry the token, acks carry reason codes.
    #[default]
    V5,
    /// MQTT 3.1.1: the token travels in the payload only.
    V311,
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `version: 5` is a number, `version: 3.1.1` a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(5) => Ok(Version::V5),
            Raw::Text(t) if t == "5" || t == "5.0" => Ok(Version::V5),
            Raw::Text(t) if t == "3.1.1" => Ok(Version::V311),
            Raw::Number(n) => Err(unknown_version(&n.to_string())),
            Raw::Text(t) => Err(unknown_version(&t)),
        }
    }
}

fn unknown_version<E: serde::de::Error>(v: &str) -> E {
    E::custom(format!(
        "MQTT version `{v}` is not supported (write 5 or \"3.1.1\")"
    ))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`; may carry
    /// `user:password@`, which chirp passes to the client as credentials.
    pub url: Endpoint,
    #[serde(default)]
    pub version: Version,
    pub user: Option<String>,
    pub password: Option<Secret>,
    #[serde(default, deserialize_with = "crate::config::tls::deserialize")]
    pub tls: Option<TlsConfig>,
    /// How often the client pings an idle broker (default 30 s).
    #[serde(default, deserialize_with = "crate::config::de::opt_duration")]
    pub keep_alive: Option<Duration>,
}

/// QoS 0, 1 or 2 (checked by `validate`).
fn default_qos() -> u8 {
    1
}

/// `qos: 1` (a scalar reaches serde as a string from `probes.yaml`).
fn qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(t) => t,
    };
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!("QoS `{text}` does not exist: write 0, 1 or 2"))
    })
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    pub topic: String,
    #[serde(default = "default_qos", deserialize_with = "qos")]
    pub qos: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    /// A topic filter: may hold the wildcards `+` and `#`.
    pub topic: String,
    #[serde(default = "default_qos", deserialize_with = "qos")]
    pub qos: u8,
}

impl ConnectionConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let parsed = match parse_url(self.url.expose()) {
            Ok(u) => Some(u),
            Err(e) => {
                p.add(format!("{path}.url"), e.to_string());
                None
            }
        };
        if let Some(u) = &parsed {
            if u.auth.is_some() && (self.user.is_some() || self.password.is_some()) {
                p.add(
                    format!("{path}.url"),
                    "the URL carries credentials and so do `user` and `password`; give them once",
                );
            }
            if !u.tls && self.tls.is_some() {
                p.add(
                    format!("{path}.tls"),
                    "TLS settings need an `mqtts://` URL (mqtt:// is plain TCP)",
                );
            }
        }
        if self.password.is_some() && self.user.is_none() {
            p.add(path, "`password` needs a `user`");
        }
        if self.user.is_some() && self.password.is_none() {
            p.add(path, "`user` needs a `password`");
        }
        if let Some(k) = self.keep_alive {
            // The keep-alive field of CONNECT counts whole seconds, at most
            // u16::MAX; the MQTT 5 client refuses (panics on) less than 5 s.
            if k < Duration::from_secs(5) || k > Duration::from_secs(u16::MAX as u64) {
                p.add(
                    format!("{path}.keep_alive"),
                    "must be between 5s and 18h12m15s (whole seconds)",
                );
            }
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), p);
        }
    }

    /// The keep-alive interval in force.
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive.unwrap_or(Duration::from_secs(30))
    }
}

fn check_qos(qos: u8, path: &str, p: &mut Problems) {
    if qos > 2 {
        p.add(
            format!("{path}.qos"),
            format!("QoS {qos} does not exist: write 0, 1 or 2"),
        );
    }
}

/// A topic name (`filter` false) or filter: not empty, no NUL, at most
/// 65535 bytes; only a filter may hold `+` (a whole level) and `#` (the
/// whole last level).
pub fn check_topic(topic: &str, filter: bool, path: &str, p: &mut Problems) {
    let path = format!("{path}.topic");
    if topic.is_empty() {
        p.add(path, "the topic is empty");
        return;
    }
    if topic.contains('\0') || topic.len() > u16::MAX as usize {
        p.add(path, format!("`{topic}` is not a valid MQTT topic"));
        return;
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let wild = |l: &str| l.contains('+') || l.contains('#');
    if !filter {
        if levels.iter().any(|l| wild(l)) {
            p.add(
                path,
                format!(
                    "`{topic}` has a wildcard (`+` or `#`): a canary is published to one topic"
                ),
            );
        }
        return;
    }
    let last = levels.len() - 1;
    let bad = levels
        .iter()
        .enumerate()
        .any(|(i, l)| (wild(l) && *l != "+" && *l != "#") || (*l == "#" && i != last));
    if bad {
        p.add(
            path,
            format!("`{topic}` is not a valid MQTT topic filter: `+` stands for a whole level, `#` for the whole last level"),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_topic(&self.topic, false, path, p);
        check_qos(self.qos, path, p);
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_topic(&self.topic, true, path, p);
        check_qos(self.qos, path, p);
    }
}

pub fn end(topic: &str, connection: &str) -> super::super::End {
    super::super::End {
        messaging: Some("mqtt"),
        system: "mqtt",
        destination: Some(topic.to_owned()),
        connection: Some(connection.to_owned()),
        description: format!("MQTT topic {topic} (connection {connection})"),
    }
}
