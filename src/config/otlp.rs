//! `export.otlp`: where and how chirp pushes metrics and traces over OTLP.
//! Every field can also come from the standard `OTEL_*` environment variables;
//! what the file says wins over the environment, a signal-specific variable
//! (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) over the generic one, and the
//! generic one over the default. Export is on when the file has `export.otlp`
//! or the environment names an endpoint, and off when `OTEL_SDK_DISABLED=true`.

use super::reader::{child, did_you_mean, Fields, Reader};
use super::{read_tls, Endpoint, Env, Secret, TlsConfig};
use serde_yaml::Value;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// The validated OTLP export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// Full URL of the metrics endpoint (for HTTP, with `/v1/metrics`).
    pub metrics_endpoint: Endpoint,
    /// Full URL of the traces endpoint (for HTTP, with `/v1/traces`).
    pub traces_endpoint: Endpoint,
    /// Time between two metric exports.
    pub interval: Duration,
    /// How long one export may take, retries included.
    pub timeout: Duration,
    /// Sent with every export (API keys); values are secret.
    pub headers: Vec<(String, Secret)>,
    pub tls: Option<TlsConfig>,
    pub temporality: Temporality,
    pub gzip: bool,
    /// Traces, when on: the share of canaries whose trace is recorded.
    pub traces: Option<TraceConfig>,
    /// Extra resource attributes from `OTEL_RESOURCE_ATTRIBUTES` and
    /// `OTEL_SERVICE_NAME`, applied over chirp's own.
    pub resource: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceConfig {
    /// 0 to 1: the share of canaries whose traces are sampled.
    pub sample_ratio: f64,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const FIELDS: &[&str] = &[
    "endpoint",
    "protocol",
    "interval",
    "timeout",
    "headers",
    "tls",
    "temporality",
    "compression",
    "traces",
];

/// A value from the file, else from the first environment variable set.
struct Source<'a> {
    env: &'a dyn Env,
}

impl Source<'_> {
    fn var(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|n| {
            self.env
                .get(n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| ((*n).to_owned(), v.trim().to_owned()))
        })
    }
}

fn signal_vars(suffix: &str) -> [String; 3] {
    [
        format!("OTEL_EXPORTER_OTLP_METRICS_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
}

/// Reads `export.otlp` (`value`, when present) together with the environment.
pub(crate) fn read_otlp(
    value: Option<&Value>,
    path: &str,
    env: &dyn Env,
    r: &mut Reader,
) -> Option<OtlpConfig> {
    let src = Source { env };
    if src
        .var(&["OTEL_SDK_DISABLED"])
        .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    let [metrics_ep_var, traces_ep_var, generic_ep_var] = signal_vars("ENDPOINT");
    let env_endpoint = src.var(&[&metrics_ep_var, &traces_ep_var, &generic_ep_var]);
    if value.is_none() && env_endpoint.is_none() {
        return None;
    }
    let empty = Value::Null;
    let f = r.fields(value.unwrap_or(&empty), path, FIELDS);

    let protocol = read_protocol(&f, &src, r);
    let endpoint = r.string(&f, "endpoint");
    let resolve = |signal_var: &str, http_path: &str, r: &mut Reader| -> Endpoint {
        let url = match (&endpoint, src.var(&[signal_var])) {
            (Some(base), _) => signal_url(base, protocol, http_path),
            // A signal-specific variable is the full URL, used as is.
            (None, Some((_, url))) => url,
            (None, None) => match src.var(&[&generic_ep_var]) {
                Some((_, base)) => signal_url(&base, protocol, http_path),
                None => signal_url(default_endpoint(protocol), protocol, http_path),
            },
        };
        check_url(&url, &f.path_of("endpoint"), r);
        Endpoint::new(url)
    };
    let metrics_endpoint = resolve(&metrics_ep_var, "/v1/metrics", r);
    let traces_endpoint = resolve(&traces_ep_var, "/v1/traces", r);

    let interval = match r.duration(&f, "interval") {
        Some(d) => d,
        None => env_millis(&src, &["OTEL_METRIC_EXPORT_INTERVAL"], &f, "interval", r)
            .unwrap_or(DEFAULT_INTERVAL),
    };
    if interval < MIN_INTERVAL {
        r.error(&f.path_of("interval"), "must be at least 1s");
    }
    let timeout = match r.duration(&f, "timeout") {
        Some(d) => d,
        None => {
            env_millis(&src, &signal_vars("TIMEOUT"), &f, "timeout", r).unwrap_or(DEFAULT_TIMEOUT)
        }
    };
    if timeout.is_zero() {
        r.error(&f.path_of("timeout"), "must be more than 0");
    }

    let headers = read_headers(&f, &src, r);
    let tls = read_otlp_tls(&f, &src, r);
    let temporality = read_temporality(&f, &src, r);
    let gzip = read_compression(&f, &src, r);
    let traces = read_traces(&f, &src, r);
    let resource = read_resource(&src, r, path);

    Some(OtlpConfig {
        protocol,
        metrics_endpoint,
        traces_endpoint,
        interval,
        timeout,
        headers,
        tls,
        temporality,
        gzip,
        traces,
        resource,
    })
}

fn default_endpoint(protocol: OtlpProtocol) -> &'static str {
    match protocol {
        OtlpProtocol::Grpc => "http://localhost:4317",
        OtlpProtocol::HttpProtobuf => "http://localhost:4318",
    }
}

/// The URL one signal is sent to: gRPC uses the base as is, HTTP appends the signal's path.
fn signal_url(base: &str, protocol: OtlpProtocol, http_path: &str) -> String {
    match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{}{http_path}", base.trim_end_matches('/')),
    }
}

fn check_url(url: &str, path: &str, r: &mut Reader) {
    let shown = Endpoint::new(url).redacted();
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => r.error(
            path,
            format!("`{shown}` is not an http:// or https:// URL with a host"),
        ),
    }
}

/// `what` from an environment variable holding milliseconds.
fn env_millis(
    src: &Source,
    names: &[impl AsRef<str>],
    f: &Fields,
    what: &str,
    r: &mut Reader,
) -> Option<Duration> {
    let names: Vec<&str> = names.iter().map(|n| n.as_ref()).collect();
    let (name, v) = src.var(&names)?;
    match v.parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => {
            r.error(
                &f.path_of(what),
                format!("{name}=`{v}` is not a number of milliseconds"),
            );
            None
        }
    }
}

/// One of `allowed`, from the file or from the environment variables `vars`.
fn choice(
    f: &Fields,
    key: &str,
    src: &Source,
    vars: &[impl AsRef<str>],
    allowed: &[&'static str],
    r: &mut Reader,
) -> Option<&'static str> {
    let vars: Vec<&str> = vars.iter().map(|n| n.as_ref()).collect();
    let (from, v) = match r.string(f, key) {
        Some(v) => (None, v),
        None => {
            let (name, v) = src.var(&vars)?;
            (Some(name), v)
        }
    };
    let lower = v.to_ascii_lowercase();
    if let Some(known) = allowed.iter().find(|a| **a == lower) {
        return Some(known);
    }
    let hint = did_you_mean(&lower, allowed)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    let prefix = from.map(|n| format!("{n}: ")).unwrap_or_default();
    r.error(
        &f.path_of(key),
        format!(
            "{prefix}unknown value `{v}` (one of: {}){hint}",
            allowed.join(", ")
        ),
    );
    None
}

fn read_protocol(f: &Fields, src: &Source, r: &mut Reader) -> OtlpProtocol {
    let vars = [
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ];
    match choice(f, "protocol", src, &vars, &["grpc", "http/protobuf"], r) {
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        _ => OtlpProtocol::Grpc,
    }
}

fn read_temporality(f: &Fields, src: &Source, r: &mut Reader) -> Temporality {
    let vars = ["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"];
    let allowed = ["cumulative", "delta", "lowmemory"];
    match choice(f, "temporality", src, &vars, &allowed, r) {
        // `lowmemory` is delta for the synchronous counters and histograms chirp uses.
        Some("delta" | "lowmemory") => Temporality::Delta,
        _ => Temporality::Cumulative,
    }
}

fn read_compression(f: &Fields, src: &Source, r: &mut Reader) -> bool {
    let vars = signal_vars("COMPRESSION");
    choice(f, "compression", src, &vars, &["gzip", "none"], r) == Some("gzip")
}

/// Headers from the environment (`k=v,k2=v2`, values percent-encoded), then
/// from the file, which wins for the same name. Names are lowercased (gRPC
/// metadata keys must be). Values never appear in errors.
fn read_headers(f: &Fields, src: &Source, r: &mut Reader) -> Vec<(String, Secret)> {
    let mut out: Vec<(String, Secret)> = Vec::new();
    let mut put = |name: String, value: Secret, path: &str, r: &mut Reader| {
        let name = name.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            r.error(path, format!("`{name}` is not a valid header name"));
            return;
        }
        if http::HeaderValue::from_str(value.expose()).is_err() {
            r.error(
                path,
                format!("the value of header `{name}` has characters a header cannot carry"),
            );
            return;
        }
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    };
    let path = f.path_of("headers");
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ] {
        if let Some((name, list)) = src.var(&[var]) {
            for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) => put(k.into(), Secret::new(percent_decode(v.trim())), &path, r),
                    None => r.error(
                        &path,
                        format!("{name}: expected `name=value` pairs separated by commas"),
                    ),
                }
            }
        }
    }
    let Some(v) = f.get("headers") else {
        return out;
    };
    let Value::Mapping(m) = v else {
        r.error(&path, "expected a mapping of header names to values");
        return out;
    };
    for (k, val) in m {
        let Some(k) = k.as_str() else {
            r.error(&path, "header names must be strings");
            continue;
        };
        let p = child(&path, k);
        match val {
            Value::String(s) => put(k.to_owned(), Secret::new(s.clone()), &p, r),
            Value::Number(n) => put(k.to_owned(), Secret::new(n.to_string()), &p, r),
            _ => r.error(&p, "expected a string"),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_otlp_tls(f: &Fields, src: &Source, r: &mut Reader) -> Option<TlsConfig> {
    let mut tls = f.get("tls").map(|v| read_tls(v, &f.path_of("tls"), r));
    let from_env = |suffix: &str| src.var(&signal_vars(suffix).each_ref().map(|s| s.as_str()));
    let env_tls = TlsConfig {
        ca_file: from_env("CERTIFICATE").map(|(_, v)| v),
        cert_file: from_env("CLIENT_CERTIFICATE").map(|(_, v)| v),
        key_file: from_env("CLIENT_KEY").map(|(_, v)| v),
    };
    if env_tls != TlsConfig::default() {
        let t = tls.get_or_insert_with(TlsConfig::default);
        if t.ca_file.is_none() {
            t.ca_file = env_tls.ca_file;
        }
        if t.cert_file.is_none() && t.key_file.is_none() {
            t.cert_file = env_tls.cert_file;
            t.key_file = env_tls.key_file;
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            r.error(
                &f.path_of("tls"),
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together",
            );
        }
    }
    tls
}

/// Traces are on with `traces:` in the file (`sample_ratio` defaults to 1),
/// or with `OTEL_TRACES_SAMPLER` naming a sampler other than `always_off`.
fn read_traces(f: &Fields, src: &Source, r: &mut Reader) -> Option<TraceConfig> {
    let path = f.path_of("traces");
    let mut env_ratio = || -> Option<f64> {
        let (_, sampler) = src.var(&["OTEL_TRACES_SAMPLER"])?;
        match sampler.as_str() {
            "always_off" | "parentbased_always_off" => Some(0.0),
            "traceidratio" | "parentbased_traceidratio" => {
                match src.var(&["OTEL_TRACES_SAMPLER_ARG"]) {
                    None => Some(1.0),
                    Some((_, arg)) => match arg.parse::<f64>() {
                        Ok(x) if (0.0..=1.0).contains(&x) => Some(x),
                        _ => {
                            r.error(
                                &path,
                                format!("OTEL_TRACES_SAMPLER_ARG=`{arg}` is not a ratio between 0 and 1"),
                            );
                            None
                        }
                    },
                }
            }
            _ => Some(1.0),
        }
    };
    let Some(v) = f.get("traces") else {
        return env_ratio()
            .filter(|x| *x > 0.0)
            .map(|sample_ratio| TraceConfig { sample_ratio });
    };
    if let Value::Bool(on) = v {
        return on.then_some(TraceConfig { sample_ratio: 1.0 });
    }
    let tf = r.fields(v, &path, &["sample_ratio"]);
    let sample_ratio = match tf.get("sample_ratio") {
        None => 1.0,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => x,
            _ => {
                r.error(&tf.path_of("sample_ratio"), "must be between 0 and 1");
                1.0
            }
        },
        Some(_) => {
            r.error(
                &tf.path_of("sample_ratio"),
                "expected a number between 0 and 1, e.g. `0.1`",
            );
            1.0
        }
    };
    Some(TraceConfig { sample_ratio })
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-encoded), then
/// `OTEL_SERVICE_NAME`, which wins over a `service.name` there.
fn read_resource(src: &Source, r: &mut Reader, path: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some((_, list)) = src.var(&["OTEL_RESOURCE_ATTRIBUTES"]) {
        for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    out.push((k.trim().to_owned(), percent_decode(v.trim())))
                }
                _ => r.error(
                    path,
                    format!("OTEL_RESOURCE_ATTRIBUTES: `{pair}` is not `key=value`"),
                ),
            }
        }
    }
    if let Some((_, name)) = src.var(&["OTEL_SERVICE_NAME"]) {
        out.push(("service.name".into(), name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(yaml: &str, vars: &[(&str, &str)]) -> (Option<OtlpConfig>, Vec<String>) {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        let mut r = Reader::default();
        let v = if value.is_null() { None } else { Some(&value) };
        let c = read_otlp(v, "export.otlp", &env, &mut r);
        let errors = r.errors.iter().map(|e| e.to_string()).collect();
        (c, errors)
    }

    #[test]
    fn off_without_config_or_endpoint_variable() {
        assert_eq!(read("", &[]).0, None);
        assert_eq!(read("", &[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")]).0, None);
    }

    #[test]
    fn defaults_follow_the_specification() {
        let (c, errors) = read("{}", &[]);
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.metrics_endpoint.expose(), "http://localhost:4317");
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.temporality, Temporality::Cumulative);
        assert_eq!(c.traces, None);
        let (c, _) = read("{protocol: http/protobuf}", &[]);
        let c = c.unwrap();
        assert_eq!(
            c.metrics_endpoint.expose(),
            "http://localhost:4318/v1/metrics"
        );
        assert_eq!(
            c.traces_endpoint.expose(),
            "http://localhost:4318/v1/traces"
        );
    }

    #[test]
    fn the_file_wins_over_the_environment_and_signal_variables_over_generic_ones() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318/"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=from%20env,x-team=sre",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=sre,service.name=ignored"),
            ("OTEL_SERVICE_NAME", "chirp-eu"),
        ];
        // Everything from the environment: export is on without `export.otlp`.
        let (c, errors) = read("", &vars);
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.metrics_endpoint.expose(),
            "http://generic:4318/v1/metrics"
        );
        assert_eq!(c.traces_endpoint.expose(), "http://traces:9999/custom");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.interval, Duration::from_secs(3));
        assert_eq!(c.temporality, Temporality::Delta);
        assert_eq!(c.traces, Some(TraceConfig { sample_ratio: 0.25 }));
        let h: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(h, [("api-key", "from env"), ("x-team", "sre")]);
        assert_eq!(
            c.resource.last(),
            Some(&("service.name".to_owned(), "chirp-eu".to_owned()))
        );

        // The file says otherwise: it wins.
        let yaml = "{endpoint: 'http://file:4317', protocol: grpc, timeout: 1s, interval: 5s,
                     headers: {API-Key: from-file}, temporality: cumulative, traces: {sample_ratio: 1}}";
        let (c, errors) = read(yaml, &vars);
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.metrics_endpoint.expose(), "http://file:4317");
        assert_eq!(c.traces_endpoint.expose(), "http://file:4317");
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.temporality, Temporality::Cumulative);
        assert_eq!(c.traces, Some(TraceConfig { sample_ratio: 1.0 }));
        let h: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(h, [("x-team", "sre"), ("api-key", "from-file")]);
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        assert_eq!(read("{}", &[("OTEL_SDK_DISABLED", "true")]).0, None);
    }

    #[test]
    fn mistakes_are_reported_without_secret_values() {
        let yaml = "{endpoint: 'ftp://x', protocol: grcp, interval: 10ms, temporality: sideways,
                     headers: {'bad name': 'hunter2', ok: \"line\\nbreak-hunter2\"},
                     traces: {sample_ratio: 2}, color: blue}";
        let (_, errors) = read(yaml, &[]);
        let all = errors.join("\n");
        for want in [
            "export.otlp.endpoint: `ftp://x` is not an http:// or https:// URL",
            "export.otlp.protocol: unknown value `grcp` (one of: grpc, http/protobuf); did you mean `grpc`?",
            "export.otlp.interval: must be at least 1s",
            "export.otlp.temporality: unknown value `sideways`",
            "export.otlp.headers.bad name: `bad name` is not a valid header name",
            "export.otlp.headers.ok: the value of header `ok` has characters",
            "export.otlp.traces.sample_ratio: must be between 0 and 1",
            "export.otlp.color",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(!all.contains("hunter2"), "{all}");
    }

    #[test]
    fn debug_output_hides_header_values_and_url_credentials() {
        let (c, _) = read(
            "{endpoint: 'https://user:pw@otlp.example:4317', headers: {x-api-key: s3cr3t}}",
            &[],
        );
        let shown = format!("{:?}", c.unwrap());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pw@"),
            "{shown}"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc%"), "a b,c%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
