//! The OTLP exporters: opentelemetry-otlp's gRPC (tonic) and HTTP/protobuf
//! exporters, configured from one signal's [`SignalConfig`], wrapped so every
//! export is counted and a failing collector is logged once, not once per
//! export. Headers from the environment are the exporter's; the file's are
//! set last, so they win. Over HTTP, chirp's own client compresses.

use crate::config::secret::Secret;
use crate::config::tls::TlsConfig;
use crate::config::{OtlpConfig, OtlpProtocol, SignalConfig, Temporality};
use bytes::Bytes;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Export attempts and failures of one signal, shared with `/metrics`.
#[derive(Debug)]
pub struct SignalStatus {
    pub signal: &'static str,
    endpoint: String,
    /// (exports, failures), updated together so a scrape never sees one without the other.
    counts: Mutex<(u64, u64)>,
    failing: AtomicBool,
    last_warning: Mutex<Option<Instant>>,
}

/// While exports keep failing, the warning is repeated this often.
const REMIND_EVERY: Duration = Duration::from_secs(600);

impl SignalStatus {
    pub fn new(signal: &'static str, endpoint: String) -> Self {
        SignalStatus {
            signal,
            endpoint,
            counts: Mutex::new((0, 0)),
            failing: AtomicBool::new(false),
            last_warning: Mutex::new(None),
        }
    }

    /// Export attempts so far (each may include the exporter's own retries),
    /// and those that did not reach the collector or that it refused.
    pub fn counts(&self) -> (u64, u64) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one export and logs the changes between working and failing.
    fn note(&self, result: &OTelSdkResult) {
        let (_, n) = {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            c.0 += 1;
            c.1 += u64::from(result.is_err());
            *c
        };
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(signal = self.signal, endpoint = %self.endpoint, failures = n, "OTLP export works again.");
                }
            }
            Err(e) => {
                let first = !self.failing.swap(true, Ordering::Relaxed);
                let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if first || last.is_none_or(|t| t.elapsed() >= REMIND_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(signal = self.signal, endpoint = %self.endpoint, failures = n, error = %e, "OTLP export failed; probing goes on, and the next export retries.");
                } else {
                    tracing::debug!(signal = self.signal, failures = n, error = %e, "OTLP export failed again.");
                }
            }
        }
    }
}

/// An exporter whose every export is counted in a [`SignalStatus`].
#[derive(Debug)]
pub struct Counted<E> {
    inner: E,
    status: Arc<SignalStatus>,
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.status.note(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.status.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportSetupError {
    #[error("cannot read {what} `{path}`: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("bad TLS settings for OTLP export: {0}")]
    Tls(String),
    #[error("cannot set up the OTLP exporter: {0}")]
    Build(String),
}

/// PEM files of the TLS settings, read once at start.
struct Pems {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_pems(tls: &Option<TlsConfig>) -> Result<Pems, ExportSetupError> {
    let read = |what: &'static str, path: &String| {
        std::fs::read(path).map_err(|source| ExportSetupError::File {
            what,
            path: path.clone(),
            source,
        })
    };
    let Some(t) = tls else {
        return Ok(Pems {
            ca: None,
            identity: None,
        });
    };
    let ca = t.ca_file.as_ref().map(|p| read("ca_file", p)).transpose()?;
    let identity = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
        _ => None,
    };
    Ok(Pems { ca, identity })
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

fn tonic_tls(pems: &Pems) -> tonic::transport::ClientTlsConfig {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    if let Some(ca) = &pems.ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &pems.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

/// Sets the configured headers on every gRPC request, over any the exporter
/// took from the environment (the file wins).
#[derive(Clone)]
struct Headers(
    Arc<
        Vec<(
            tonic::metadata::AsciiMetadataKey,
            tonic::metadata::AsciiMetadataValue,
        )>,
    >,
);

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in self.0.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

fn grpc_headers(headers: &[(String, Secret)]) -> Result<Headers, ExportSetupError> {
    let mut out = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let key = k
            .parse::<tonic::metadata::AsciiMetadataKey>()
            .map_err(|_| {
                ExportSetupError::Build(format!("`{k}` is not a valid gRPC header name"))
            })?;
        let mut value = v
            .expose()
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .map_err(|_| {
                ExportSetupError::Build(format!(
                    "the value of header `{k}` is not valid in gRPC metadata"
                ))
            })?;
        value.set_sensitive(true);
        out.push((key, value));
    }
    Ok(Headers(Arc::new(out)))
}

/// opentelemetry-otlp's HTTP exporter over chirp's own reqwest client, run
/// on the tokio runtime (the SDK calls exporters from its own threads).
struct HttpBridge {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    gzip: bool,
}

impl std::fmt::Debug for HttpBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpBridge")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpBridge {
    async fn send_bytes(
        &self,
        mut request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        for (k, v) in &self.headers {
            request.headers_mut().insert(k.clone(), v.clone());
        }
        if self.gzip
            && !request
                .headers()
                .contains_key(http::header::CONTENT_ENCODING)
        {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(request.body())?;
            let body = gz.finish()?;
            request.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
            *request.body_mut() = body.into();
        }
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let answer = self
            .runtime
            .spawn(async move {
                let resp = client.execute(request).await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await?;
        // Drop the request URL from errors: it is the configured endpoint, which may carry credentials.
        let (status, body) = answer.map_err(|e| e.without_url())?;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        Ok(response)
    }
}

fn http_bridge(
    config: &OtlpConfig,
    signal: &SignalConfig,
    pems: &Pems,
    runtime: tokio::runtime::Handle,
) -> Result<HttpBridge, ExportSetupError> {
    let mut builder = reqwest::Client::builder().timeout(signal.timeout);
    if let Some(ca) = &pems.ca {
        let cert = reqwest::Certificate::from_pem(ca)
            .map_err(|e| ExportSetupError::Tls(format!("ca_file: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some((cert, key)) = &pems.identity {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| ExportSetupError::Tls(format!("cert_file/key_file: {e}")))?;
        builder = builder.identity(id);
    }
    let client = builder
        .build()
        .map_err(|e| ExportSetupError::Build(e.to_string()))?;
    let headers = config
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let name = http::HeaderName::from_bytes(k.as_bytes()).ok()?;
            let mut value = http::HeaderValue::from_str(v.expose()).ok()?;
            value.set_sensitive(true);
            Some((name, value))
        })
        .collect();
    Ok(HttpBridge {
        client,
        runtime,
        headers,
        gzip: signal.gzip,
    })
}

fn build_err(e: impl std::fmt::Display) -> ExportSetupError {
    ExportSetupError::Build(e.to_string())
}

/// Configures an opentelemetry-otlp exporter builder (metrics or spans: the
/// two builder types share their methods but no trait) for one signal.
macro_rules! configured {
    ($builder:expr, $config:expr, $signal:expr) => {{
        let (config, signal): (&OtlpConfig, &SignalConfig) = ($config, $signal);
        let pems = read_pems(&signal.tls)?;
        let url = signal.endpoint.expose();
        match signal.protocol {
            OtlpProtocol::Grpc => {
                let mut b = $builder
                    .with_tonic()
                    .with_endpoint(url)
                    .with_timeout(signal.timeout)
                    .with_interceptor(grpc_headers(&config.headers)?);
                if is_https(url) {
                    b = b.with_tls_config(tonic_tls(&pems));
                }
                if signal.gzip {
                    b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                Builder::Grpc(b)
            }
            OtlpProtocol::HttpProtobuf => {
                let client = http_bridge(config, signal, &pems, tokio::runtime::Handle::current())?;
                Builder::Http(
                    $builder
                        .with_http()
                        .with_endpoint(url)
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_timeout(signal.timeout)
                        .with_http_client(client),
                )
            }
        }
    }};
}

/// A configured builder of either transport.
enum Builder<G, H> {
    Grpc(G),
    Http(H),
}

/// The metric exporter. Must be called inside the tokio runtime.
pub fn metric_exporter(
    config: &OtlpConfig,
    signal: &SignalConfig,
    status: Arc<SignalStatus>,
) -> Result<Counted<opentelemetry_otlp::MetricExporter>, ExportSetupError> {
    use opentelemetry_sdk::metrics::Temporality as T;
    let temporality = config.temporality.map(|t| match t {
        Temporality::Cumulative => T::Cumulative,
        Temporality::Delta => T::Delta,
        Temporality::LowMemory => T::LowMemory,
    });
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let inner = match configured!(builder, config, signal) {
        Builder::Grpc(b) => match temporality {
            Some(t) => b.with_temporality(t).build(),
            None => b.build(),
        },
        Builder::Http(b) => match temporality {
            Some(t) => b.with_temporality(t).build(),
            None => b.build(),
        },
    }
    .map_err(build_err)?;
    Ok(Counted { inner, status })
}

/// The span exporter. Must be called inside the tokio runtime.
pub fn span_exporter(
    config: &OtlpConfig,
    signal: &SignalConfig,
    status: Arc<SignalStatus>,
) -> Result<Counted<opentelemetry_otlp::SpanExporter>, ExportSetupError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let inner = match configured!(builder, config, signal) {
        Builder::Grpc(b) => b.build(),
        Builder::Http(b) => b.build(),
    }
    .map_err(build_err)?;
    Ok(Counted { inner, status })
}
