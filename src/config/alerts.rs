//! `alerts:`: what `chirp rules` adds to the alerts it writes (labels, a
//! runbook link) and the thresholds of the alerts on chirp itself.

use super::de;
use super::errors::{child, Problems};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    /// Added to every alert (`team: payments`, `severity` excepted).
    pub labels: BTreeMap<String, String>,
    /// Each alert links to `<runbook_url>/<alert name in lower case>`.
    pub runbook_url: Option<String>,
    /// `ChirpAbsent`: no chirp of this environment reports for this long.
    pub absent_for: Duration,
    /// `ChirpProbeDisconnected`: a probe's clients are down for this long.
    pub disconnected_for: Duration,
    /// `ChirpNoCanaryCaught`: nothing caught for this many intervals (and
    /// at least the probe's deadline).
    pub silent_intervals: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            labels: BTreeMap::new(),
            runbook_url: None,
            absent_for: Duration::from_secs(300),
            disconnected_for: Duration::from_secs(300),
            silent_intervals: 10,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    labels: Option<BTreeMap<String, String>>,
    runbook_url: Option<String>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    absent_for: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    disconnected_for: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_parsed")]
    silent_intervals: Option<u64>,
}

/// Labels `chirp rules` sets itself; the file may not override them.
/// Labels `chirp rules` sets itself, or the series its alerts fire on
/// carry (an alert label replacing one would merge series and break the
/// rule); the file may not set them.
const RESERVED: [&str; 13] = [
    "alertname",
    "environment",
    "probe",
    "sli",
    "severity",
    "burn_rate",
    "long_window",
    "short_window",
    "partition",
    "inject",
    "catch",
    "instance",
    "job",
];

/// Reads `alerts:`; `None` when a mistake was reported.
pub fn read(value: Option<&Value>, p: &mut Problems) -> Option<AlertsConfig> {
    let raw: RawAlerts = match value {
        Some(v) => super::section(v, "alerts", p)?,
        None => RawAlerts::default(),
    };
    let d = AlertsConfig::default();
    let before = p.len();
    let labels = raw.labels.unwrap_or_default();
    for name in labels.keys() {
        let at = child(&child("alerts", "labels"), name);
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid || name.is_empty() || name.starts_with("__") {
            p.add(
                at,
                "is not a Prometheus label name: [a-zA-Z_][a-zA-Z0-9_]*, not starting with __",
            );
        } else if RESERVED.contains(&name.as_str()) {
            p.add(
                at,
                "is set by `chirp rules` itself, or by the series its alerts watch",
            );
        }
    }
    if let Some(url) = &raw.runbook_url {
        let web = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !web {
            p.add(
                child("alerts", "runbook_url"),
                "must be an http:// or https:// URL",
            );
        }
    }
    let bounded = |key: &str, v: Option<Duration>, default: Duration, p: &mut Problems| {
        let v = v.unwrap_or(default);
        if v < Duration::from_secs(60) || v > Duration::from_secs(86_400) {
            p.add(child("alerts", key), "must be between 1m and 1d");
        }
        v
    };
    let absent_for = bounded("absent_for", raw.absent_for, d.absent_for, p);
    let disconnected_for = bounded(
        "disconnected_for",
        raw.disconnected_for,
        d.disconnected_for,
        p,
    );
    let silent_intervals = raw.silent_intervals.unwrap_or(d.silent_intervals as u64);
    if !(2..=10_000).contains(&silent_intervals) {
        p.add(
            child("alerts", "silent_intervals"),
            "must be between 2 and 10000",
        );
    }
    (p.len() == before).then(|| AlertsConfig {
        labels,
        runbook_url: raw.runbook_url.map(|u| u.trim_end_matches('/').to_owned()),
        absent_for,
        disconnected_for,
        silent_intervals: silent_intervals as u32,
    })
}
