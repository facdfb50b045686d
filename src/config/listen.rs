//! chirp's own listener: `listen: 0.0.0.0:9464`, or a mapping with the
//! address, the limits that keep an unauthenticated client from exhausting
//! memory or file descriptors, TLS and authentication.

use super::de;
use super::errors::{child, Problems};
use super::limits::MAX_PAYLOAD;
use super::secret::Secret;
use super::DEFAULT_LISTEN;
use serde::Deserialize;
use serde_yaml::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// The smallest default body limit: a canary without padding is ~300 bytes.
pub const MIN_DEFAULT_BODY: usize = 16 << 10;
/// Room for what a pipeline adds around a padded canary (an envelope, headers
/// rewritten into the body) before the body limit refuses it.
pub const BODY_SLACK: usize = 4 << 10;

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub limits: Limits,
    pub tls: Option<ListenTls>,
    pub auth: Option<ListenAuth>,
}

/// What one client may hold of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; past it the oldest connection without a request
    /// being answered is closed (or the newcomer, if every one is busy).
    pub max_connections: usize,
    /// From a connection's first byte of a request (or its accept) to the
    /// end of the request's headers; also bounds a TLS handshake.
    pub header_timeout: Duration,
    /// To receive a request's whole body once its headers are in.
    pub body_timeout: Duration,
    /// A kept-alive connection with no bytes moving is closed after this.
    pub idle_timeout: Duration,
    /// Largest request body; a larger one gets 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_body: MIN_DEFAULT_BODY,
        }
    }
}

/// Certificate chain and key (PEM), read again whenever the files change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    pub cert_file: String,
    pub key_file: String,
}

/// Credentials for everything but `/healthz`, `/readyz` and the webhook
/// receivers (which verify their HMAC): either one is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAuth {
    pub bearer_token: Option<Secret>,
    pub basic: Option<(String, Secret)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<String>,
    #[serde(default, deserialize_with = "de::opt_parsed")]
    max_connections: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    body_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_parsed")]
    max_body: Option<u64>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_token: Option<Secret>,
    basic: Option<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password: Secret,
}

/// Reads `listen`. `largest_hook` is the largest padded canary a webhook
/// catch expects; the default body limit makes room for it.
pub(super) fn read(
    value: Option<&Value>,
    largest_hook: usize,
    p: &mut Problems,
) -> Option<ListenConfig> {
    let raw = match value {
        None | Some(Value::Null) => RawListen::address_only(None),
        Some(Value::String(s)) => RawListen::address_only(Some(s.clone())),
        Some(v @ Value::Mapping(_)) => super::section(v, "listen", p)?,
        Some(_) => {
            p.add(
                "listen",
                "expected an address (`0.0.0.0:9464`) or a mapping with `address`",
            );
            return None;
        }
    };
    let at = |k: &str| child("listen", k);
    let address_path = if matches!(value, Some(Value::Mapping(_))) {
        at("address")
    } else {
        "listen".to_owned()
    };
    let text = raw.address.as_deref().unwrap_or(DEFAULT_LISTEN);
    let address = text.parse::<SocketAddr>().map_err(|_| {
        p.add(
            address_path,
            format!("`{text}` is not an address; write e.g. `0.0.0.0:9464` or `127.0.0.1:9464`"),
        )
    });
    let d = Limits::default();
    let needed = largest_hook + BODY_SLACK;
    let mut limits = Limits {
        max_connections: raw.max_connections.unwrap_or(d.max_connections as u64) as usize,
        header_timeout: raw.header_timeout.unwrap_or(d.header_timeout),
        body_timeout: raw.body_timeout.unwrap_or(d.body_timeout),
        idle_timeout: raw.idle_timeout.unwrap_or(d.idle_timeout),
        max_body: d.max_body.max(needed),
    };
    if !(1..=1_000_000).contains(&limits.max_connections) {
        p.add(at("max_connections"), "must be between 1 and 1000000");
    }
    let hour = Duration::from_secs(3600);
    for (key, v, most, said) in [
        ("header_timeout", limits.header_timeout, hour, "1h"),
        ("body_timeout", limits.body_timeout, hour, "1h"),
        ("idle_timeout", limits.idle_timeout, 24 * hour, "1d"),
    ] {
        if v < Duration::from_millis(100) {
            p.add(at(key), "must be at least 100ms");
        } else if v > most {
            p.add(at(key), format!("must be at most {said}"));
        }
    }
    if let Some(max) = raw.max_body {
        let max = max.min(usize::MAX as u64) as usize;
        if !(1024..=MAX_PAYLOAD + BODY_SLACK).contains(&max) {
            p.add(
                at("max_body"),
                format!(
                    "must be between 1024 and {} bytes",
                    MAX_PAYLOAD + BODY_SLACK
                ),
            );
        } else if max < largest_hook {
            p.add(
                at("max_body"),
                format!(
                    "{max} bytes is smaller than a webhook probe's canary ({largest_hook} bytes, its `payload.size`)"
                ),
            );
        }
        limits.max_body = max;
    }
    let tls = raw.tls.map(|t| {
        for (key, f) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if f.trim().is_empty() {
                p.add(at(&format!("tls.{key}")), "is empty: name a PEM file");
            }
        }
        ListenTls {
            cert_file: t.cert_file,
            key_file: t.key_file,
        }
    });
    let auth = raw.auth.map(|a| {
        if a.bearer_token.is_none() && a.basic.is_none() {
            p.add(at("auth"), "name `bearer_token`, `basic` or both");
        }
        if a.bearer_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            p.add(
                at("auth.bearer_token"),
                "is too short: use at least 16 bytes",
            );
        }
        if let Some(b) = &a.basic {
            if b.username.is_empty() || b.username.contains(':') {
                p.add(at("auth.basic.username"), "must be non-empty, without `:`");
            }
            if b.password.expose().len() < 12 {
                p.add(
                    at("auth.basic.password"),
                    "is too short: use at least 12 bytes",
                );
            }
        }
        ListenAuth {
            bearer_token: a.bearer_token,
            basic: a.basic.map(|b| (b.username, b.password)),
        }
    });
    Some(ListenConfig {
        address: address.ok()?,
        limits,
        tls,
        auth,
    })
}

impl RawListen {
    fn address_only(address: Option<String>) -> RawListen {
        RawListen {
            address,
            max_connections: None,
            header_timeout: None,
            body_timeout: None,
            idle_timeout: None,
            max_body: None,
            tls: None,
            auth: None,
        }
    }
}
