//! A test OTLP receiver built from the official protocol definitions
//! (opentelemetry-proto): a tonic gRPC server for the metrics and trace
//! services, and an HTTP server for `/v1/metrics` and `/v1/traces` taking
//! protobuf bodies. It keeps every request it receives.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, ExponentialHistogramDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Everything received, in order.
#[derive(Default, Clone)]
pub struct Received {
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub traces: Vec<ExportTraceServiceRequest>,
    /// `x-api-key` of each request, as sent.
    pub api_keys: Vec<String>,
    /// How each request came: its signal and headers.
    pub requests: Vec<Request>,
}

/// One export request's envelope.
#[derive(Clone, Debug)]
pub struct Request {
    /// `metrics` or `traces`.
    pub signal: &'static str,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body came gzip-compressed.
    pub gzip: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn grpc_request(signal: &'static str, md: &tonic::metadata::MetadataMap) -> Request {
    let headers: Vec<(String, String)> = md
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let gzip = headers
        .iter()
        .any(|(k, v)| k == "grpc-encoding" && v == "gzip");
    Request {
        signal,
        headers,
        gzip,
    }
}

fn http_request(
    signal: &'static str,
    h: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (Request, Vec<u8>) {
    let headers: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let gzip = h.get("content-encoding").is_some_and(|v| v == "gzip");
    let body = if gzip {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
            .expect("a gzip body");
        out
    } else {
        body.to_vec()
    };
    (
        Request {
            signal,
            headers,
            gzip,
        },
        body,
    )
}

type Shared = Arc<Mutex<Received>>;

#[derive(Clone)]
struct Grpc(Shared);

fn api_key(md: &tonic::metadata::MetadataMap) -> String {
    md.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut r = self.0.lock().unwrap();
        r.api_keys.push(api_key(request.metadata()));
        r.requests.push(grpc_request("metrics", request.metadata()));
        r.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut r = self.0.lock().unwrap();
        r.api_keys.push(api_key(request.metadata()));
        r.requests.push(grpc_request("traces", request.metadata()));
        r.traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver listening on a gRPC port and an HTTP port.
pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// While set, the HTTP endpoints answer 400 Bad Request and keep nothing.
    pub refuse: Arc<AtomicBool>,
    data: Shared,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(0, 0).await
    }

    /// Listens on the given ports (0: any free port). A port given is one
    /// the test let go of (a collector that was down): another process may
    /// hold it for a moment, so binding it is retried for 10 s.
    pub async fn start_on(grpc_port: u16, http_port: u16) -> Receiver {
        let data: Shared = Arc::default();
        let stop = CancellationToken::new();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let grpc_listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", grpc_port)).await {
                Ok(l) => break l,
                Err(_) if grpc_port != 0 && std::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind the gRPC port {grpc_port}: {e}"),
            }
        };
        let http_listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
            .await
            .expect("bind the HTTP port");
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();

        let svc = Grpc(Arc::clone(&data));
        let s = stop.clone();
        let grpc_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    MetricsServiceServer::new(svc.clone())
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .add_service(
                    TraceServiceServer::new(svc)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener),
                    s.cancelled_owned(),
                )
                .await
                .expect("gRPC receiver");
        });

        let (d1, d2) = (Arc::clone(&data), Arc::clone(&data));
        let refuse = Arc::new(AtomicBool::new(false));
        let (r1, r2) = (Arc::clone(&refuse), Arc::clone(&refuse));
        let app = axum::Router::new()
            .route(
                "/v1/metrics",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let (d, refused) = (Arc::clone(&d1), r1.load(Ordering::SeqCst));
                        async move {
                            if refused {
                                return bad_request();
                            }
                            let (request, body) = http_request("metrics", &headers, body);
                            let req = ExportMetricsServiceRequest::decode(&body[..])
                                .expect("protobuf metrics");
                            let mut r = d.lock().unwrap();
                            r.api_keys.push(header_key(&headers));
                            r.requests.push(request);
                            r.metrics.push(req);
                            protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
                        }
                    },
                ),
            )
            .route(
                "/v1/traces",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let (d, refused) = (Arc::clone(&d2), r2.load(Ordering::SeqCst));
                        async move {
                            if refused {
                                return bad_request();
                            }
                            let (request, body) = http_request("traces", &headers, body);
                            let req = ExportTraceServiceRequest::decode(&body[..])
                                .expect("protobuf traces");
                            let mut r = d.lock().unwrap();
                            r.api_keys.push(header_key(&headers));
                            r.requests.push(request);
                            r.traces.push(req);
                            protobuf(ExportTraceServiceResponse::default().encode_to_vec())
                        }
                    },
                ),
            );
        let s = stop.clone();
        let http_task = tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
                .expect("HTTP receiver");
        });
        Receiver {
            grpc,
            http,
            refuse,
            data,
            stop,
            tasks: vec![grpc_task, http_task],
        }
    }

    pub fn received(&self) -> Received {
        self.data.lock().unwrap().clone()
    }

    /// Stops listening (connections close).
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn header_key(h: &axum::http::HeaderMap) -> String {
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn bad_request() -> axum::response::Response {
    axum::response::Response::builder()
        .status(400)
        .body(axum::body::Body::from("refused by the test"))
        .unwrap()
}

fn protobuf(body: Vec<u8>) -> axum::response::Response {
    axum::response::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(axum::body::Body::from(body))
        .unwrap()
}

pub fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(i)),
            }) => Some(*i),
            _ => None,
        })
}

impl Received {
    /// The resource attributes of the last metrics request.
    pub fn resource(&self) -> Vec<KeyValue> {
        self.metrics
            .last()
            .and_then(|m| m.resource_metrics.first())
            .and_then(|rm| rm.resource.clone())
            .map(|r| r.attributes)
            .unwrap_or_default()
    }

    /// Every metric named `name` across all requests, oldest first.
    pub fn metrics_named(
        &self,
        name: &str,
    ) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
        self.metrics
            .iter()
            .flat_map(|m| &m.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| m.name == name)
            .cloned()
            .collect()
    }

    /// The value of sum (counter) `name` for `probe` in the last request that has it,
    /// summed over its other attributes.
    pub fn last_sum(&self, name: &str, probe: &str) -> Option<f64> {
        let m = self.metrics_named(name).pop()?;
        let Some(metric::Data::Sum(sum)) = m.data else {
            panic!("{name} is not a sum: {:?}", m.data)
        };
        Some(
            sum.data_points
                .iter()
                .filter(|p| str_attr(&p.attributes, "probe") == Some(probe))
                .map(|p| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    None => 0.0,
                })
                .sum(),
        )
    }

    /// Every exponential histogram point of `name` for `probe`, oldest first.
    pub fn exp_points(&self, name: &str, probe: &str) -> Vec<ExponentialHistogramDataPoint> {
        self.metrics_named(name)
            .into_iter()
            .flat_map(|m| match m.data {
                Some(metric::Data::ExponentialHistogram(h)) => h.data_points,
                other => panic!("{name} is not an exponential histogram: {other:?}"),
            })
            .filter(|p| str_attr(&p.attributes, "probe") == Some(probe))
            .collect()
    }

    /// The count of exponential histogram `name` for `probe` in the last
    /// request that has it, summed over its other attributes (partitions).
    pub fn last_exp_count(&self, name: &str, probe: &str) -> Option<u64> {
        let m = self.metrics_named(name).pop()?;
        let Some(metric::Data::ExponentialHistogram(h)) = m.data else {
            panic!("{name} is not an exponential histogram")
        };
        Some(
            h.data_points
                .iter()
                .filter(|p| str_attr(&p.attributes, "probe") == Some(probe))
                .map(|p| p.count)
                .sum(),
        )
    }

    pub fn spans(&self) -> Vec<Span> {
        self.traces
            .iter()
            .flat_map(|t| &t.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }
}
