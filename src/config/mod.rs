//! Configuration: what the user wrote in `probes.yaml`, read in two steps.
//! First the YAML is parsed and `${VAR}` interpolated; then a pure reader turns
//! it into the typed [`Config`] below, collecting *every* error with its path
//! and file position. Nothing here touches the network. The YAML crate is used
//! only inside this module.

mod locate;
mod otlp;
mod probes;
mod reader;
mod secret;
mod vars;

pub use otlp::{OtlpConfig, OtlpProtocol, Temporality, TraceConfig};
pub use reader::ConfigError;
pub use secret::{Endpoint, Secret};
pub use vars::{Env, ProcessEnv};

use reader::{child, did_you_mean, Reader};
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A label on every metric (`environment="prod"`).
    pub environment: String,
    /// The one HTTP listener: metrics, health, API and webhook catch.
    pub listen: SocketAddr,
    /// Key for the canary tokens' HMAC and for webhook signatures.
    pub signing_key: Secret,
    /// How long shutdown waits for in-flight canaries to resolve.
    pub shutdown_grace: Duration,
    /// Serve `/metrics` (`export.prometheus`, default true).
    pub prometheus: bool,
    /// OTLP export of metrics (and traces), when configured.
    pub otlp: Option<OtlpConfig>,
    pub connections: BTreeMap<String, Connection>,
    pub probes: Vec<ProbeConfig>,
}

/// A named broker client, shared by every probe that names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Nats(NatsConnection),
    Kafka(KafkaConnection),
}

/// A Kafka client configuration (librdkafka underneath).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConnection {
    pub brokers: KafkaBrokers,
    /// TLS to the brokers; `Some` with empty files means TLS with the system roots.
    pub tls: Option<TlsConfig>,
    pub sasl: Option<Sasl>,
    /// Passed to librdkafka as is (after chirp's own settings, so they win).
    /// Values are secret: they may hold passwords.
    pub properties: Vec<(String, Secret)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KafkaBrokers {
    /// `host:port,host:port`.
    List(String),
    /// librdkafka's in-process mock cluster: a test cluster inside chirp, not a Kafka.
    Embedded,
}

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
pub struct NatsConnection {
    /// One or more server URLs, comma separated.
    pub url: Endpoint,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub credentials_file: Option<String>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
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
    pub inject: Inject,
    pub catch: Catch,
    pub payload: Payload,
    pub slo: Slo,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Inject {
    Nats(NatsInject),
    Http(HttpInject),
    Kafka(KafkaInject),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaInject {
    pub connection: String,
    pub topic: String,
    /// Per-partition mode: one canary per partition per interval.
    pub partitions: Option<Partitions>,
    /// `acks` (default `all`).
    pub acks: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition of the topic, including ones added later.
    All,
    List(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaCatch {
    pub connection: String,
    pub topic: String,
    /// Consumer group id; default `chirp-<probe>-<run id>`, unique per run.
    pub group_id: Option<String>,
    /// Commit offsets of caught messages to `group_id` (default false: never commit).
    pub commit: bool,
    /// librdkafka `fetch.wait.max.ms` (default 5ms).
    pub fetch_wait_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Catch {
    Nats(NatsCatch),
    Http(HttpCatch),
    Kafka(KafkaCatch),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NatsInject {
    pub connection: String,
    pub subject: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NatsCatch {
    pub connection: String,
    pub subject: String,
    pub queue_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpInject {
    /// An absolute `http(s)://` URL, or a path starting with `/` on chirp's own listener.
    pub url: Endpoint,
    pub method: HttpMethod,
    /// Extra request headers; values are secret (they often carry credentials).
    pub headers: Vec<(String, Secret)>,
    /// Header that carries `sha256=<hex HMAC of the body>`.
    pub signature_header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Post,
    Put,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCatch {
    pub signature_header: String,
    /// Key for the webhook signature; defaults to `signing_key`.
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Pad the default JSON body to at least this many bytes.
    pub size: usize,
    /// Where the catch side looks for the token in a JSON body (RFC 6901), before scanning.
    pub token_pointer: Option<String>,
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

impl Inject {
    pub fn system(&self) -> &'static str {
        match self {
            Inject::Nats(_) => "nats",
            Inject::Http(_) => "http",
            Inject::Kafka(_) => "kafka",
        }
    }
}

impl Catch {
    pub fn system(&self) -> &'static str {
        match self {
            Catch::Nats(_) => "nats",
            Catch::Http(_) => "http",
            Catch::Kafka(_) => "kafka",
        }
    }
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
        writeln!(
            f,
            "{}: {n} error{}:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SLICE: Duration = Duration::from_secs(60);
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Chirp-Signature";
/// The longest deadline chirp accepts; it bounds the latency histograms.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
pub const MAX_PAYLOAD: usize = 1 << 20;
const MIN_KEY_LEN: usize = 16;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9464))
}

const TRANSPORTS: &[&str] = &["nats", "http", "kafka", "jetstream", "amqp", "mqtt"];

/// Reads and validates a configuration file.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
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
    let mut value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![ConfigError {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
                location: e.location().map(|l| (l.line(), l.column())),
            }])
        }
    };
    let mut r = Reader::default();
    interpolate(&mut value, "", env, &mut r);
    let config = read_config(&value, env, &mut r);
    if r.errors.is_empty() {
        if let Some(c) = config {
            return Ok(c);
        }
    }
    let locator = locate::Locator::new(text);
    let mut errors = r.errors;
    for e in &mut errors {
        if e.location.is_none() {
            e.location = locator.find(&e.path);
        }
    }
    errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, 0)));
    if errors.is_empty() {
        errors.push(ConfigError {
            path: String::new(),
            message: "the configuration is empty".into(),
            location: None,
        });
    }
    Err(errors)
}

fn interpolate(value: &mut Value, path: &str, env: &dyn Env, r: &mut Reader) {
    match value {
        Value::String(s) => match vars::interpolate(s, env) {
            Ok(new) => *s = new,
            Err(errors) => {
                for e in errors {
                    r.error(path, e.to_string());
                }
            }
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), env, r);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_owned();
                interpolate(v, &child(path, &key), env, r);
            }
        }
        _ => {}
    }
}

/// Defaults a probe inherits when it does not say otherwise.
pub(crate) struct Defaults {
    interval: Duration,
    deadline: Duration,
    publish_timeout: Option<Duration>,
    payload_size: usize,
    slo: SloDraft,
}

/// SLO fields as written, before defaults are applied.
#[derive(Clone, Default)]
pub(crate) struct SloDraft {
    latency: Option<LatencyObjective>,
    delivery: Option<DeliveryObjective>,
    slice: Option<Duration>,
    period: Option<Duration>,
}

fn read_config(root: &Value, env: &dyn Env, r: &mut Reader) -> Option<Config> {
    let top = r.fields(
        root,
        "",
        &[
            "environment",
            "listen",
            "signing_key",
            "shutdown_grace",
            "defaults",
            "connections",
            "export",
            "probes",
        ],
    );
    let environment = r
        .string(&top, "environment")
        .unwrap_or_else(|| "default".into());
    let listen = match r.string(&top, "listen") {
        None => Some(default_listen()),
        Some(s) => {
            match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    r.error(
                    &top.path_of("listen"),
                    format!("`{s}` is not an address; write e.g. `0.0.0.0:9464` or `127.0.0.1:9464`"),
                );
                    None
                }
            }
        }
    };
    let signing_key = match r.secret(&top, "signing_key") {
        None if !top.has("signing_key") => {
            r.error(
                "signing_key",
                "is required: a secret of at least 16 bytes, e.g. `signing_key: ${CHIRP_SIGNING_KEY}`",
            );
            None
        }
        None => None,
        Some(k) if k.expose().len() < MIN_KEY_LEN => {
            r.error(
                "signing_key",
                format!("is too short: use at least {MIN_KEY_LEN} bytes"),
            );
            None
        }
        Some(k) => Some(k),
    };
    let shutdown_grace = r
        .duration(&top, "shutdown_grace")
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let mut prometheus = true;
    let mut otlp_value = None;
    if let Some(export) = top.get("export") {
        let f = r.fields(export, "export", &["prometheus", "otlp"]);
        prometheus = r.bool(&f, "prometheus").unwrap_or(true);
        otlp_value = f.get("otlp").or_else(|| {
            // `otlp:` with nothing under it still turns export on.
            matches!(export, Value::Mapping(m) if m.contains_key("otlp")).then_some(&Value::Null)
        });
    }
    let otlp = otlp::read_otlp(otlp_value, "export.otlp", env, r);
    let defaults = read_defaults(top.get("defaults"), r);
    let connections = read_connections(top.get("connections"), r);
    let probes = probes::read_probes(top.get("probes"), &defaults, &connections, r);

    Some(Config {
        environment,
        listen: listen?,
        signing_key: signing_key?,
        shutdown_grace,
        prometheus,
        otlp,
        connections,
        probes: probes?,
    })
}

fn read_defaults(value: Option<&Value>, r: &mut Reader) -> Defaults {
    let mut d = Defaults {
        interval: DEFAULT_INTERVAL,
        deadline: DEFAULT_DEADLINE,
        publish_timeout: None,
        payload_size: 0,
        slo: SloDraft::default(),
    };
    let Some(value) = value else { return d };
    let f = r.fields(
        value,
        "defaults",
        &["interval", "deadline", "publish_timeout", "payload", "slo"],
    );
    if let Some(i) = r.duration(&f, "interval") {
        d.interval = i;
    }
    if let Some(dl) = r.duration(&f, "deadline") {
        d.deadline = dl;
    }
    d.publish_timeout = r.duration(&f, "publish_timeout");
    if let Some(p) = f.get("payload") {
        let pf = r.fields(p, &f.path_of("payload"), &["size"]);
        if let Some(size) = r.u64(&pf, "size") {
            d.payload_size = size as usize;
        }
    }
    if let Some(s) = f.get("slo") {
        d.slo = probes::read_slo(s, &f.path_of("slo"), r);
    }
    d
}

fn read_connections(value: Option<&Value>, r: &mut Reader) -> BTreeMap<String, Connection> {
    let mut out = BTreeMap::new();
    let Some(value) = value else { return out };
    let Value::Mapping(m) = value else {
        r.error(
            "connections",
            "expected a mapping of connection names to clients",
        );
        return out;
    };
    for (k, v) in m {
        let Some(name) = k.as_str() else {
            r.error("connections", "connection names must be strings");
            continue;
        };
        let path = child("connections", name);
        if let Some(conn) =
            read_transport_choice(v, &path, &["nats", "kafka"], r).and_then(|(kind, body, p)| {
                match kind {
                    "nats" => read_nats_connection(body, &p, r).map(Connection::Nats),
                    "kafka" => probes::read_kafka_connection(body, &p, r).map(Connection::Kafka),
                    _ => None,
                }
            })
        {
            out.insert(name.to_owned(), conn);
        }
    }
    out
}

fn read_nats_connection(value: &Value, path: &str, r: &mut Reader) -> Option<NatsConnection> {
    let f = r.fields(
        value,
        path,
        &[
            "url",
            "token",
            "user",
            "password",
            "credentials_file",
            "tls",
        ],
    );
    let url = r.required_string(&f, "url");
    if let Some(u) = &url {
        for part in u.split(',') {
            let part = part.trim();
            if part.is_empty() || part.contains(char::is_whitespace) {
                r.error(
                    &f.path_of("url"),
                    format!("`{u}` is not a list of NATS URLs"),
                );
                break;
            }
        }
    }
    let token = r.secret(&f, "token");
    let user = r.string(&f, "user");
    let password = r.secret(&f, "password");
    if user.is_some() != password.is_some() {
        r.error(path, "`user` and `password` go together");
    }
    let credentials_file = r.string(&f, "credentials_file");
    let tls = f.get("tls").map(|t| read_tls(t, &f.path_of("tls"), r));
    Some(NatsConnection {
        url: Endpoint::new(url?),
        token,
        user,
        password,
        credentials_file,
        tls,
    })
}

/// Reads `tls: {ca_file, cert_file, key_file}`.
pub(crate) fn read_tls(value: &Value, path: &str, r: &mut Reader) -> TlsConfig {
    let tf = r.fields(value, path, &["ca_file", "cert_file", "key_file"]);
    let tls = TlsConfig {
        ca_file: r.string(&tf, "ca_file"),
        cert_file: r.string(&tf, "cert_file"),
        key_file: r.string(&tf, "key_file"),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        r.error(path, "`cert_file` and `key_file` go together");
    }
    tls
}

/// Reads `{<transport>: {...}}`: exactly one key naming a transport in `supported`.
pub(crate) fn read_transport_choice<'v>(
    value: &'v Value,
    path: &str,
    supported: &[&str],
    r: &mut Reader,
) -> Option<(&'static str, &'v Value, String)> {
    let Value::Mapping(m) = value else {
        r.error(
            path,
            format!("expected one transport, e.g. `{}: {{...}}`", supported[0]),
        );
        return None;
    };
    if m.len() != 1 {
        r.error(
            path,
            format!(
                "expected exactly one transport (one of: {}), found {}",
                supported.join(", "),
                m.len()
            ),
        );
        return None;
    }
    let (k, body) = m.iter().next()?;
    let Some(name) = k.as_str() else {
        r.error(path, "the transport name must be a string");
        return None;
    };
    let p = child(path, name);
    if let Some(known) = supported.iter().find(|s| **s == name) {
        let known: &'static str = TRANSPORTS.iter().find(|t| *t == known).copied()?;
        return Some((known, body, p));
    }
    if TRANSPORTS.contains(&name) {
        r.error(
            &p,
            format!(
                "transport `{name}` is not supported here by this version of chirp (supported: {})",
                supported.join(", ")
            ),
        );
    } else {
        match did_you_mean(name, supported) {
            Some(s) => r.error(
                &p,
                format!("unknown transport `{name}`; did you mean `{s}`?"),
            ),
            None => r.error(
                &p,
                format!(
                    "unknown transport `{name}`; expected one of: {}",
                    supported.join(", ")
                ),
            ),
        }
    }
    None
}

#[cfg(test)]
mod tests;
