//! Configuration: what the user wrote in `probes.yaml`, read in two steps.
//! First the YAML is parsed, `${VAR}` interpolated and each section
//! deserialized into the types below (a mistake stops only its own probe or
//! connection); then a pure `validate` checks what needs more than one field,
//! collecting *every* error with its path and file position. Nothing here
//! touches the network, and the YAML crate is used only inside this module.
//! The transports' own settings are their types (`transport::*::config`).

pub mod alerts;
pub mod de;
pub mod errors;
pub mod limits;
pub mod listen;
mod locate;
mod otlp;
mod payload;
pub mod secret;
pub mod tls;
pub mod vars;

pub use crate::transport::{CatchConfig, ConnectionConfig, InjectConfig};
pub use errors::ConfigError;
pub use otlp::{OtlpConfig, OtlpProtocol, SignalConfig, Temporality};
pub use payload::Payload;
pub use secret::{Endpoint, Secret};
pub use vars::{Env, ProcessEnv};

use errors::{child, Problems};
use limits::*;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A label on every metric (`environment="prod"`).
    pub environment: String,
    /// The one HTTP listener: metrics, health, API and webhook catch.
    pub listen: listen::ListenConfig,
    /// Key for the canary tokens' HMAC and for webhook signatures.
    pub signing_key: Secret,
    /// Keys being rotated out: what they signed is still accepted at the
    /// catch side (tokens, and webhooks signed with the signing key).
    pub previous_signing_keys: Vec<Secret>,
    /// How long shutdown waits for in-flight canaries to resolve.
    pub shutdown_grace: Duration,
    /// Serve `/metrics` (`export.prometheus`, default true).
    pub prometheus: bool,
    /// OTLP export of metrics and traces, when on.
    pub otlp: Option<OtlpConfig>,
    /// Named broker clients, shared by every probe that names them.
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub probes: Vec<ProbeConfig>,
    /// What `chirp rules` adds to its alerts, and the self-monitoring thresholds.
    pub alerts: alerts::AlertsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// `[A-Za-z0-9_-]{1,64}`, unique; it appears in tokens, URLs and labels.
    pub name: String,
    /// Time between two canaries.
    pub interval: Duration,
    /// After this long an uncaught canary is lost.
    pub deadline: Duration,
    /// How long one publish may take before it is a `publish_failed(timeout)`.
    pub publish_timeout: Duration,
    pub inject: InjectConfig,
    pub catch: CatchConfig,
    /// A second catch point on the pipeline's dead-letter queue or topic:
    /// a canary caught there resolves as dead-lettered.
    pub dead_letter: Option<CatchConfig>,
    pub payload: Payload,
    pub slo: Slo,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub latency: Option<LatencyObjective>,
    pub delivery: Option<DeliveryObjective>,
    /// Compliance time slice, aligned to wall-clock boundaries.
    pub slice: Duration,
    /// Error-budget period.
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyObjective {
    pub threshold: Duration,
    /// Percent, in (0, 100).
    pub objective: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryObjective {
    /// Percent, in (0, 100).
    pub objective: f64,
}

/// Every error found in a configuration file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        let s = if n == 1 { "" } else { "s" };
        writeln!(f, "{}: {n} error{s}:", self.file)?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// The probes that measure a real pipeline while the signing key is the
    /// public demo key (anyone could forge their canaries).
    pub fn demo_key_on_real_probes(&self) -> Vec<&str> {
        if self.signing_key.expose() != DEMO_SIGNING_KEY {
            return Vec::new();
        }
        self.probes
            .iter()
            .filter(|p| !crate::transport::self_test(&p.inject, &p.catch, &self.connections))
            .map(|p| p.name.as_str())
            .collect()
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SLICE: Duration = Duration::from_secs(60);
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9464";
/// The signing key of the shipped `probes.yaml`: public, for trying chirp out.
pub const DEMO_SIGNING_KEY: &str = "chirp-demo-key-not-secret";

/// Reads and validates a configuration file.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    // Errors name the file as read: a relative path made absolute, so
    // "which probes.yaml?" has an answer.
    let file = std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError {
            path: String::new(),
            message: format!("cannot read the file: {e}"),
            location: None,
        }],
    })?;
    load_str(&text, env).map_err(|errors| ConfigErrors { file, errors })
}

/// Parses, interpolates and validates configuration text.
pub fn load_str(text: &str, env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            message: format!("not valid YAML: {e}"),
            location: e.location().map(|l| (l.line(), l.column())),
        }]
    })?;
    let mut p = Problems::default();
    prepare(&mut value, "", env, &mut p);
    let config = read(&value, env, &mut p);
    let mut errors = p.0;
    if errors.is_empty() {
        if let Some(c) = config {
            return Ok(c);
        }
        errors.push(ConfigError {
            path: String::new(),
            message: "the configuration is empty".into(),
            location: None,
        });
    }
    let locator = locate::Locator::new(text);
    for e in &mut errors {
        e.location = e.location.or_else(|| locator.find(&e.path));
    }
    errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, 0)));
    Err(errors)
}

/// Interpolates `${VAR}` in every string and turns every other scalar into
/// its text, so values read the same whether written literally or from the
/// environment. An empty value is as if the key were not there, except as
/// the only key of its mapping (`catch: {http: }`, `slo: {latency: }`) or
/// for `otlp:`, where it means "this, with the defaults".
fn prepare(value: &mut Value, path: &str, env: &dyn Env, p: &mut Problems) {
    match value {
        Value::String(s) => match vars::interpolate(s, env) {
            Ok(new) => *s = new,
            Err(errors) => errors.iter().for_each(|e| p.add(path, e.to_string())),
        },
        Value::Number(n) => *value = Value::String(n.to_string()),
        Value::Bool(b) => *value = Value::String(b.to_string()),
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prepare(item, &format!("{path}[{i}]"), env, p);
            }
        }
        Value::Mapping(m) => {
            let old = std::mem::take(m);
            let only = old.len() == 1;
            for (k, mut v) in old {
                let key = match k {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        p.add(path, "keys must be plain words");
                        continue;
                    }
                };
                if v.is_null() {
                    if !only && key != "otlp" {
                        continue;
                    }
                    v = Value::Mapping(Default::default());
                }
                let at = child(path, &key);
                if key == "template" && (path == "payload" || path.ends_with(".payload")) {
                    // The user's event shape: its numbers, booleans and
                    // nulls stay what they are.
                    payload::prepare_template(&mut v, &at, env, p);
                } else {
                    prepare(&mut v, &at, env, p);
                }
                m.insert(Value::String(key), v);
            }
        }
        Value::Null | Value::Tagged(_) => {}
    }
}

/// Deserializes one section; a mistake is reported with its full path.
fn section<T: DeserializeOwned>(value: &Value, path: &str, p: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize(value.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let mut at = match inner.as_str() {
                "." | "" => path.to_owned(),
                i if i.starts_with('[') => format!("{path}{i}"),
                i => child(path, i),
            };
            let (message, missing) = de::friendly(&e.into_inner().to_string());
            if let Some(field) = missing {
                at = child(&at, &field);
            }
            p.add(at, message);
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    environment: Option<String>,
    listen: Option<Value>,
    signing_key: Option<Secret>,
    previous_signing_keys: Option<Vec<Secret>>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    shutdown_grace: Option<Duration>,
    defaults: Option<Value>,
    connections: Option<BTreeMap<String, Value>>,
    export: Option<Value>,
    probes: Option<Value>,
    alerts: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    #[serde(default, deserialize_with = "de::opt_parsed")]
    prometheus: Option<bool>,
    otlp: Option<otlp::RawOtlp>,
}

/// What a probe says, and what `defaults` says for every probe.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default, deserialize_with = "de::opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    deadline: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    publish_timeout: Option<Duration>,
    payload: Option<payload::RawPayload>,
    slo: Option<RawSlo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: String,
    #[serde(default, deserialize_with = "de::opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    deadline: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    publish_timeout: Option<Duration>,
    inject: InjectConfig,
    catch: crate::transport::CatchSpec,
    payload: Option<payload::RawPayload>,
    slo: Option<RawSlo>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    latency: Option<RawLatency>,
    delivery: Option<RawDelivery>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    slice: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    period: Option<Duration>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    #[serde(deserialize_with = "de::duration")]
    threshold: Duration,
    objective: de::Percent,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    objective: de::Percent,
}

fn read(root: &Value, env: &dyn Env, p: &mut Problems) -> Option<Config> {
    if root.is_null() {
        return None;
    }
    let top: RawTop = section(root, "", p)?;
    let environment = top.environment.unwrap_or_else(|| "default".into());
    // It is a label value, a rule group's name and part of alert text, where
    // Prometheus expands templates: plain printable text only.
    if environment.is_empty()
        || environment.chars().count() > 64
        || environment
            .chars()
            .any(|c| c.is_control() || matches!(c, '{' | '}' | '"' | '\\' | '$'))
    {
        p.add(
            "environment",
            "must be 1 to 64 printable characters without { } \" \\ or $",
        );
    }
    let signing_key = match top.signing_key {
        None => {
            p.add(
                "signing_key",
                "is required: a secret of at least 16 bytes, e.g. `signing_key: ${CHIRP_SIGNING_KEY}`",
            );
            None
        }
        Some(k) if k.expose().len() < MIN_KEY_LEN => {
            p.add(
                "signing_key",
                format!("is too short: use at least {MIN_KEY_LEN} bytes"),
            );
            None
        }
        Some(k) => Some(k),
    };
    let mut previous_signing_keys = Vec::new();
    for (i, k) in top.previous_signing_keys.into_iter().flatten().enumerate() {
        let at = format!("previous_signing_keys[{i}]");
        if k.is_empty() {
            // `${OLD_KEY:-}` with nothing to rotate: no key.
            continue;
        }
        if k.expose().len() < MIN_KEY_LEN {
            p.add(
                at,
                format!("is too short: use at least {MIN_KEY_LEN} bytes"),
            );
        } else if signing_key.as_ref().is_some_and(|s| *s == k) {
            p.add(
                at,
                "is the signing key itself; list only keys being rotated out",
            );
        } else {
            previous_signing_keys.push(k);
        }
    }
    let export: RawExport = match &top.export {
        Some(v) => section(v, "export", p).unwrap_or_default(),
        None => RawExport::default(),
    };
    let otlp = otlp::resolve(export.otlp, "export.otlp", env, p);
    let defaults: RawDefaults = match &top.defaults {
        Some(v) => section(v, "defaults", p).unwrap_or_default(),
        None => RawDefaults::default(),
    };
    let mut connections = BTreeMap::new();
    for (name, v) in top.connections.iter().flatten() {
        let path = child("connections", name);
        if let Some(c) = section::<ConnectionConfig>(v, &path, p) {
            c.validate(&path, p);
            connections.insert(name.clone(), c);
        }
    }
    let probes = read_probes(top.probes.as_ref(), &defaults, &connections, p);
    let largest_hook = probes
        .iter()
        .flatten()
        .filter(|pc| pc.catch.needs_listener())
        .map(|pc| pc.payload.size)
        .max()
        .unwrap_or(0);
    let listen = listen::read(top.listen.as_ref(), largest_hook, p);
    let alerts = alerts::read(top.alerts.as_ref(), p);
    Some(Config {
        environment,
        listen: listen?,
        signing_key: signing_key?,
        previous_signing_keys,
        shutdown_grace: top.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        prometheus: export.prometheus.unwrap_or(true),
        otlp,
        connections,
        probes: probes?,
        alerts: alerts?,
    })
}

fn read_probes(
    value: Option<&Value>,
    defaults: &RawDefaults,
    connections: &BTreeMap<String, ConnectionConfig>,
    p: &mut Problems,
) -> Option<Vec<ProbeConfig>> {
    let items = match value {
        None => {
            p.add("probes", "is required: a list of probes");
            return None;
        }
        Some(Value::Sequence(items)) if items.is_empty() => {
            p.add("probes", "the list is empty: configure at least one probe");
            return None;
        }
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            p.add("probes", "expected a list of probes");
            return None;
        }
    };
    let before = p.len();
    let mut probes: Vec<ProbeConfig> = Vec::new();
    // What each catch point consumes where consumers split the messages.
    let mut consumed: Vec<(String, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("probes[{i}]");
        let Some(raw) = section::<RawProbe>(item, &path, p) else {
            continue;
        };
        let points = [
            (child(&path, "catch"), Some(&raw.catch.catch)),
            (
                format!("{path}.catch.dead_letter"),
                raw.catch.dead_letter.as_ref(),
            ),
        ];
        for (at, catch) in points {
            let Some(what) = catch.and_then(|c| c.shared_consumer()) else {
                continue;
            };
            match consumed.iter().find(|(w, _)| *w == what) {
                Some((_, first)) if !first.starts_with(&format!("{path}.")) => p.add(
                    at,
                    format!(
                        "{what} is consumed by {first} too: its consumers split the messages, so each probe would count the other's canaries as lost (and chirp acknowledges what it reads); give each probe its own"
                    ),
                ),
                Some(_) => {}
                None => consumed.push((what, at)),
            }
        }
        if let Some(first) = probes.iter().position(|q| q.name == raw.name) {
            p.add(
                child(&path, "name"),
                format!(
                    "probe name `{}` is already used by probes[{first}]",
                    raw.name
                ),
            );
        }
        probes.push(probe(raw, &path, defaults, connections, p));
    }
    (p.len() == before).then_some(probes)
}

/// Applies the defaults to one probe and checks it.
fn probe(
    raw: RawProbe,
    path: &str,
    defaults: &RawDefaults,
    connections: &BTreeMap<String, ConnectionConfig>,
    p: &mut Problems,
) -> ProbeConfig {
    let at = |key: &str| child(path, key);
    if !valid_probe_name(&raw.name) {
        p.add(
            at("name"),
            format!(
                "`{}` is not a valid probe name: use 1 to {MAX_PROBE_NAME} letters, digits, `-` or `_`",
                raw.name
            ),
        );
    }
    let interval = raw
        .interval
        .or(defaults.interval)
        .unwrap_or(DEFAULT_INTERVAL);
    if interval < MIN_INTERVAL {
        p.add(at("interval"), "must be at least 1ms");
    }
    let deadline = raw
        .deadline
        .or(defaults.deadline)
        .unwrap_or(DEFAULT_DEADLINE);
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        p.add(at("deadline"), "must be more than 0 and at most 1h");
    }
    if interval >= MIN_INTERVAL && deadline.as_nanos() / interval.as_nanos() > MAX_IN_FLIGHT {
        p.add(
            at("deadline"),
            format!(
                "deadline / interval allows more than {MAX_IN_FLIGHT} canaries in flight; use a longer interval or a shorter deadline"
            ),
        );
    }
    let publish_timeout = raw
        .publish_timeout
        .or(defaults.publish_timeout)
        .unwrap_or_else(|| DEFAULT_PUBLISH_TIMEOUT.min(deadline));
    if publish_timeout.is_zero() || publish_timeout > deadline {
        p.add(
            at("publish_timeout"),
            "must be more than 0 and no longer than the deadline",
        );
    }
    raw.inject.validate(&at("inject"), connections, p);
    raw.catch.catch.validate(&at("catch"), connections, p);
    crate::transport::check_ends(&raw.inject, &raw.catch.catch, path, p);
    if let Some(dl) = &raw.catch.dead_letter {
        let dl_path = at("catch.dead_letter");
        dl.validate(&dl_path, connections, p);
        crate::transport::check_dead_letter(dl, &raw.catch.catch, &dl_path, p);
    }

    let payload = payload::read(defaults.payload.as_ref(), raw.payload, &raw.inject, path, p);

    let (d, s) = (
        defaults.slo.clone().unwrap_or_default(),
        raw.slo.unwrap_or_default(),
    );
    let slo = Slo {
        latency: s.latency.or(d.latency).map(|l| LatencyObjective {
            threshold: l.threshold,
            objective: l.objective.0,
        }),
        delivery: s.delivery.or(d.delivery).map(|x| DeliveryObjective {
            objective: x.objective.0,
        }),
        slice: s.slice.or(d.slice).unwrap_or(DEFAULT_SLICE),
        period: s.period.or(d.period).unwrap_or(DEFAULT_PERIOD),
    };
    check_slo(&slo, deadline, &at("slo"), p);
    ProbeConfig {
        name: raw.name,
        interval,
        deadline,
        publish_timeout,
        inject: raw.inject,
        catch: raw.catch.catch,
        dead_letter: raw.catch.dead_letter,
        payload,
        slo,
    }
}

fn check_slo(slo: &Slo, deadline: Duration, path: &str, p: &mut Problems) {
    let show = humantime::format_duration;
    if let Some(l) = slo.latency {
        if l.threshold.is_zero() || l.threshold >= deadline {
            p.add(
                child(path, "latency.threshold"),
                format!(
                    "{} must be above 0 and below the probe's deadline ({})",
                    show(l.threshold),
                    show(deadline)
                ),
            );
        }
    }
    let day_ms = 86_400_000u128;
    let slice_ms = slo.slice.as_millis();
    if slice_ms < 1000 || slo.slice.subsec_nanos() != 0 || !day_ms.is_multiple_of(slice_ms) {
        p.add(
            child(path, "slice"),
            format!(
                "{} must be a whole number of seconds that divides a day (e.g. 1m, 5m, 1h)",
                show(slo.slice)
            ),
        );
    } else if !slo.period.as_millis().is_multiple_of(slice_ms) || slo.period < slo.slice {
        p.add(
            child(path, "period"),
            format!(
                "{} must be a whole number of slices ({})",
                show(slo.period),
                show(slo.slice)
            ),
        );
    }
}

#[cfg(test)]
mod tests;
