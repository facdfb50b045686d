//! `export.otlp`: where and how chirp pushes metrics and traces over OTLP.
//!
//! The OpenTelemetry SDK and exporter read most `OTEL_*` variables themselves
//! (headers, sampler, resource attributes, temporality); chirp passes them a
//! value only when `probes.yaml` sets one, and the file wins. chirp resolves
//! here, in one place, only what it must know itself: which signals are on,
//! and per signal the protocol, endpoint, timeout, compression and TLS files
//! (the SDK cannot be told "no compression", and reads no TLS variables).

use super::de;
use super::errors::{child, Problems};
use super::secret::{Endpoint, Secret};
use super::tls::TlsConfig;
use super::vars::Env;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    Cumulative,
    Delta,
    /// Delta for counters and histograms, cumulative for up-down counters (the SDK's rule).
    LowMemory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Compression {
    Gzip,
    None,
}

/// One signal's destination.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalConfig {
    pub protocol: OtlpProtocol,
    /// The full URL (for HTTP, with `/v1/metrics` or `/v1/traces`).
    pub endpoint: Endpoint,
    /// How long one export may take, retries included.
    pub timeout: Duration,
    pub gzip: bool,
    pub tls: Option<TlsConfig>,
}

/// The validated OTLP export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Metric export, when on.
    pub metrics: Option<SignalConfig>,
    /// Trace export, when on.
    pub traces: Option<SignalConfig>,
    /// Time between two metric exports.
    pub interval: Duration,
    /// From the file, sent over any the environment gives; values are secret.
    pub headers: Vec<(String, Secret)>,
    /// From the file; otherwise the SDK reads `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
    pub temporality: Option<Temporality>,
    /// From the file; otherwise the SDK reads `OTEL_TRACES_SAMPLER` and `_ARG`.
    pub sample_ratio: Option<f64>,
}

/// `export.otlp` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtlp {
    endpoint: Option<String>,
    protocol: Option<OtlpProtocol>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    headers: BTreeMap<String, Secret>,
    #[serde(default, deserialize_with = "super::tls::deserialize")]
    tls: Option<TlsConfig>,
    temporality: Option<Temporality>,
    compression: Option<Compression>,
    #[serde(default, deserialize_with = "traces")]
    traces: Option<Option<f64>>,
}

/// `traces: true | false | {sample_ratio}`: on (`true` or no ratio: every
/// canary, ratio 1) or off (`None`).
fn traces<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tr {
        #[serde(default, deserialize_with = "de::opt_parsed")]
        sample_ratio: Option<f64>,
    }
    match de::switch_or::<Tr, D>(d)? {
        de::SwitchOr::Switch(on) => Ok(on.then_some(Some(1.0))),
        de::SwitchOr::Value(t) => Ok(Some(Some(t.sample_ratio.unwrap_or(1.0)))),
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const OFF_SAMPLERS: [&str; 2] = ["always_off", "parentbased_always_off"];

/// Reads environment variables for one setting; knows which one it used.
struct Vars<'a> {
    env: &'a dyn Env,
}

impl Vars<'_> {
    /// The first of `names` that is set and not blank.
    fn first(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|n| {
            let v = self.env.get(n)?;
            let v = v.trim();
            (!v.is_empty()).then(|| ((*n).to_owned(), v.to_owned()))
        })
    }

    fn is(&self, name: &str, value: &str) -> bool {
        self.first(&[name])
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case(value))
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`, then `OTEL_EXPORTER_OTLP_<what>`.
    fn otlp(&self, signal: &str, what: &str) -> Option<(String, String)> {
        self.first(&[
            &format!("OTEL_EXPORTER_OTLP_{signal}_{what}"),
            &format!("OTEL_EXPORTER_OTLP_{what}"),
        ])
    }
}

/// Resolves `export.otlp` (`raw`, when the file has it) with the environment:
/// the file wins, then the signal's own variable, then the generic one.
pub(super) fn resolve(
    raw: Option<RawOtlp>,
    path: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<OtlpConfig> {
    let vars = Vars { env };
    if vars.is("OTEL_SDK_DISABLED", "true") {
        return None;
    }
    let endpoint_var = |s: &str| vars.otlp(s, "ENDPOINT").is_some();
    let in_file = raw.is_some();
    if !in_file && !endpoint_var("METRICS") && !endpoint_var("TRACES") {
        return None;
    }
    let raw = raw.unwrap_or_default();
    let metrics_on =
        (in_file || endpoint_var("METRICS")) && !vars.is("OTEL_METRICS_EXPORTER", "none");
    let traces_on = match raw.traces {
        Some(on) => on.is_some(),
        None => {
            vars.first(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
                .is_some()
                || vars
                    .first(&["OTEL_TRACES_SAMPLER"])
                    .is_some_and(|(_, s)| !OFF_SAMPLERS.contains(&s.as_str()))
        }
    } && !vars.is("OTEL_TRACES_EXPORTER", "none");

    let interval = match raw.interval {
        Some(d) => d,
        None => millis(
            &vars,
            &["OTEL_METRIC_EXPORT_INTERVAL"],
            &child(path, "interval"),
            p,
        )
        .unwrap_or(DEFAULT_INTERVAL),
    };
    if interval < super::limits::MIN_EXPORT_INTERVAL {
        p.add(child(path, "interval"), "must be at least 1s");
    }
    for (name, value) in &raw.headers {
        let at = child(&child(path, "headers"), name);
        if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
            p.add(at, format!("`{name}` is not a valid header name"));
        } else if http::HeaderValue::from_str(value.expose()).is_err() {
            p.add(
                at,
                format!("the value of header `{name}` has characters a header cannot carry"),
            );
        }
    }
    if let Some(Some(r)) = raw.traces {
        if !(0.0..=1.0).contains(&r) {
            p.add(
                child(path, "traces.sample_ratio"),
                "must be between 0 and 1",
            );
        }
    }
    check_sdk_variables(&vars, path, p);
    let mut signal = |on: bool, name: &str, http_path: &str| {
        on.then(|| resolve_signal(&raw, &vars, name, http_path, path, p))
    };
    let metrics = signal(metrics_on, "METRICS", "/v1/metrics");
    let traces = signal(traces_on, "TRACES", "/v1/traces");
    Some(OtlpConfig {
        metrics,
        traces,
        interval,
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        temporality: raw.temporality,
        sample_ratio: raw.traces.flatten(),
    })
}

fn resolve_signal(
    raw: &RawOtlp,
    vars: &Vars,
    signal: &str,
    http_path: &str,
    path: &str,
    p: &mut Problems,
) -> SignalConfig {
    let protocol = match (raw.protocol, vars.otlp(signal, "PROTOCOL")) {
        (Some(pr), _) => pr,
        (None, None) => OtlpProtocol::Grpc,
        (None, Some((name, v))) => match v.as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            other => {
                p.add(
                    child(path, "protocol"),
                    format!("{name}=`{other}` is not supported; use grpc or http/protobuf"),
                );
                OtlpProtocol::Grpc
            }
        },
    };
    let with_path = |base: &str| match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{}{http_path}", base.trim_end_matches('/')),
    };
    let signal_endpoint = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
    let url = match (&raw.endpoint, vars.first(&[&signal_endpoint])) {
        (Some(base), _) => with_path(base),
        // A signal's own variable is the full URL.
        (None, Some((_, url))) => url,
        (None, None) => match vars.first(&["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
            Some((_, base)) => with_path(&base),
            None => with_path(match protocol {
                OtlpProtocol::Grpc => "http://localhost:4317",
                OtlpProtocol::HttpProtobuf => "http://localhost:4318",
            }),
        },
    };
    let endpoint = Endpoint::new(url);
    match endpoint.expose().parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => p.add(
            child(path, "endpoint"),
            format!("`{endpoint}` is not an http:// or https:// URL with a host"),
        ),
    }
    let timeout = match raw.timeout {
        Some(d) => d,
        None => millis(
            vars,
            &[
                &format!("OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"),
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            &child(path, "timeout"),
            p,
        )
        .unwrap_or(DEFAULT_TIMEOUT),
    };
    if timeout.is_zero() {
        p.add(child(path, "timeout"), "must be more than 0");
    }
    // The exporter's own reading: a signal's `none` wins over a generic `gzip`.
    let env_gzip = vars
        .otlp(signal, "COMPRESSION")
        .is_some_and(|(_, v)| v.eq_ignore_ascii_case("gzip"));
    let gzip = match raw.compression {
        Some(c) => c == Compression::Gzip,
        None => env_gzip,
    };
    if protocol == OtlpProtocol::Grpc && !gzip && env_gzip {
        p.add(
            child(path, "compression"),
            format!(
                "`none` cannot be honoured over gRPC while OTEL_EXPORTER_OTLP_{signal}_COMPRESSION or \
                 OTEL_EXPORTER_OTLP_COMPRESSION says gzip: the OTLP exporter applies the variable \
                 whatever chirp says; unset it, or drop `compression: none`"
            ),
        );
    }
    let var_file = |what: &str| vars.otlp(signal, what).map(|(_, v)| v);
    let tls = match &raw.tls {
        Some(t) => Some(t.clone()),
        None => {
            let t = TlsConfig {
                ca_file: var_file("CERTIFICATE"),
                cert_file: var_file("CLIENT_CERTIFICATE"),
                key_file: var_file("CLIENT_KEY"),
            };
            (t != TlsConfig::default()).then_some(t)
        }
    };
    if let Some(t) = &tls {
        t.validate(&child(path, "tls"), p);
    }
    SignalConfig {
        protocol,
        endpoint,
        timeout,
        gzip,
        tls,
    }
}

/// The variables the SDK reads itself (it ignores a bad one without a
/// word): checked here, so a mistake is a configuration error. Errors name
/// the variable and never quote a value, which may be a secret.
fn check_sdk_variables(vars: &Vars, path: &str, p: &mut Problems) {
    for (name, key) in [
        ("OTEL_EXPORTER_OTLP_HEADERS", "headers"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "headers"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "headers"),
        ("OTEL_RESOURCE_ATTRIBUTES", "resource"),
    ] {
        let Some((_, list)) = vars.first(&[name]) else {
            continue;
        };
        for (i, pair) in list
            .split(',')
            .enumerate()
            .filter(|(_, x)| !x.trim().is_empty())
        {
            let good = pair.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                !k.is_empty()
                    && (key != "headers"
                        || http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).is_ok())
            });
            if !good {
                p.add(
                    child(path, key),
                    format!(
                        "{name}: entry {} is not `name=value` with a valid name",
                        i + 1
                    ),
                );
            }
        }
    }
    let choices: [(&str, &str, &[&str]); 4] = [
        (
            "OTEL_TRACES_SAMPLER",
            "traces",
            &[
                "always_on",
                "always_off",
                "traceidratio",
                "parentbased_always_on",
                "parentbased_always_off",
                "parentbased_traceidratio",
            ],
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "temporality",
            &["cumulative", "delta", "lowmemory"],
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "compression",
            &["gzip", "none"],
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
            "compression",
            &["gzip", "none"],
        ),
    ];
    for (name, key, allowed) in choices {
        if let Some((_, v)) = vars.first(&[name]) {
            if !allowed.contains(&v.to_ascii_lowercase().as_str()) {
                p.add(
                    child(path, key),
                    format!("{name}=`{v}` is not one of: {}", allowed.join(", ")),
                );
            }
        }
    }
    if let Some((_, arg)) = vars.first(&["OTEL_TRACES_SAMPLER_ARG"]) {
        if !arg.parse::<f64>().is_ok_and(|x| (0.0..=1.0).contains(&x)) {
            p.add(
                child(path, "traces"),
                format!("OTEL_TRACES_SAMPLER_ARG=`{arg}` is not a ratio between 0 and 1"),
            );
        }
    }
}

/// A duration from the first of `names` that is set, in milliseconds.
fn millis(vars: &Vars, names: &[&str], path: &str, p: &mut Problems) -> Option<Duration> {
    let (name, v) = vars.first(names)?;
    match v.parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => {
            p.add(
                path,
                format!("{name}=`{v}` is not a number of milliseconds"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
