//! `kafka` settings: a named connection (brokers, TLS, SASL, librdkafka
//! properties), the topic a probe produces to (optionally one canary per
//! partition), and the topic it consumes from.

use crate::config::de;
use crate::config::errors::Problems;
use crate::config::secret::Secret;
use crate::config::tls::TlsConfig;
use serde::de::Error;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub brokers: Brokers,
    /// TLS to the brokers; `Some` with no files means TLS with the system roots.
    #[serde(default, deserialize_with = "crate::config::tls::deserialize")]
    pub tls: Option<TlsConfig>,
    pub sasl: Option<Sasl>,
    /// Passed to librdkafka as is (after chirp's own settings, so they win).
    /// Values are secret: they may hold passwords.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Brokers {
    /// `host:port,host:port`.
    List(String),
    /// librdkafka's in-process mock cluster: a test cluster inside chirp, not a Kafka.
    Embedded,
}

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.trim() {
            "embedded" => Brokers::Embedded,
            _ => Brokers::List(s),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl<'de> Deserialize<'de> for SaslMechanism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            other => Err(D::Error::custom(format!(
                "`{other}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    pub topic: String,
    /// Per-partition mode: one canary per partition per interval.
    #[serde(default, deserialize_with = "partitions")]
    pub partitions: Option<Partitions>,
    /// `all` (default), `1` or `0`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// Extra record headers; values are secret (they may carry credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
}

fn default_acks() -> String {
    "all".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition of the topic, including ones added later.
    All,
    List(Vec<i32>),
}

fn partitions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Partitions>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Word(String),
        List(Vec<String>),
    }
    let wrong =
        || D::Error::custom("expected `all` or a list of partition numbers, e.g. `[0, 1, 2]`");
    match Written::deserialize(d).map_err(|_| wrong())? {
        Written::Word(w) if w == "all" => Ok(Some(Partitions::All)),
        Written::Word(_) => Err(wrong()),
        Written::List(items) if items.is_empty() => Err(wrong()),
        Written::List(items) => {
            let mut list = items
                .iter()
                .map(|s| s.trim().parse::<u16>().map(i32::from))
                .collect::<Result<Vec<i32>, _>>()
                .map_err(|_| D::Error::custom("partition numbers are whole numbers from 0"))?;
            list.sort_unstable();
            list.dedup();
            Ok(Some(Partitions::List(list)))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    pub topic: String,
    /// Consumer group id; default `chirp-<probe>-<run id>`, unique per run.
    pub group_id: Option<String>,
    /// Commit offsets of caught messages to `group_id` (default: never commit).
    #[serde(default, deserialize_with = "de::flag")]
    pub commit: bool,
    /// librdkafka `fetch.wait.max.ms` (default 5ms).
    #[serde(default = "default_fetch_wait", deserialize_with = "de::duration")]
    pub fetch_wait_max: Duration,
}

fn default_fetch_wait() -> Duration {
    Duration::from_millis(5)
}

impl ConnectionConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        if self.brokers == Brokers::Embedded && (self.tls.is_some() || self.sasl.is_some()) {
            p.add(
                path,
                "the embedded test cluster takes neither `tls` nor `sasl`",
            );
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), p);
        }
    }
}

fn check_topic(topic: &str, path: &str, p: &mut Problems) {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        p.add(
            format!("{path}.topic"),
            format!("`{topic}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_topic(&self.topic, path, p);
        if !matches!(self.acks.as_str(), "all" | "-1" | "0" | "1") {
            p.add(
                format!("{path}.acks"),
                format!("`{}` is not one of all, 1, 0", self.acks),
            );
        }
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_topic(&self.topic, path, p);
        if self.commit && self.group_id.is_none() {
            p.add(
                format!("{path}.commit"),
                "committing offsets needs an explicit `group_id`",
            );
        }
    }
}

pub fn end(topic: &str, connection: &str) -> super::super::End {
    super::super::End {
        messaging: Some("kafka"),
        system: "kafka",
        destination: Some(topic.to_owned()),
        connection: Some(connection.to_owned()),
        description: format!("Kafka topic {topic} (connection {connection})"),
    }
}
