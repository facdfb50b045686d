//! chirp's one HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/` (status page), `/api/probes` (JSON), and the webhook catch
//! `POST /hooks/{probe}`, which verifies the signature, records the canary,
//! and answers 2xx only after recording.

pub mod metrics;

use crate::probe::ledger::Stray;
use crate::probe::Probe;
use crate::report;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::time::Instant;

/// What the handlers share.
pub struct AppState {
    pub environment: String,
    /// Serve `/metrics`.
    pub prometheus: bool,
    pub probes: Vec<Arc<Probe>>,
    registry: Registry,
}

impl AppState {
    /// `otlp` is the OTLP exporters' status, when exporting.
    pub fn new(
        environment: String,
        prometheus: bool,
        probes: Vec<Arc<Probe>>,
        otlp: Vec<Arc<crate::otlp::export::SignalStatus>>,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        registry.register(
            "chirp_build",
            "chirp's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        registry.register_collector(Box::new(metrics::ProbeCollector {
            environment: environment.clone(),
            probes: probes.clone(),
            otlp,
        }));
        Arc::new(AppState {
            environment,
            prometheus,
            probes,
            registry,
        })
    }

    fn probe(&self, name: &str) -> Option<&Arc<Probe>> {
        self.probes.iter().find(|p| p.name() == name)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    if state.prometheus {
        router = router.route("/metrics", get(metrics_handler));
    }
    router
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/probes", get(api_probes))
        .route("/hooks/{probe}", post(hook).put(hook))
        .with_state(state)
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&state.registry),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let down: Vec<&str> = state
        .probes
        .iter()
        .filter(|p| !p.is_up())
        .map(|p| p.name())
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_owned()).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: probes waiting for a connection: {}\n",
                down.join(", ")
            ),
        )
            .into_response()
    }
}

async fn api_probes(State(state): State<Arc<AppState>>) -> Response {
    let now = Instant::now();
    let probes: Vec<report::ProbeReport> = state
        .probes
        .iter()
        .map(|p| report::ProbeReport::of(p, now))
        .collect();
    Json(serde_json::json!({
        "environment": state.environment,
        "version": env!("CARGO_PKG_VERSION"),
        "probes": probes,
    }))
    .into_response()
}

async fn status_page(State(state): State<Arc<AppState>>) -> Html<String> {
    let now = Instant::now();
    let rows: Vec<report::ProbeReport> = state
        .probes
        .iter()
        .map(|p| report::ProbeReport::of(p, now))
        .collect();
    let mut table = report::text_table(&rows, report::Span::Window);
    let slo = report::slo_lines(&rows);
    if !slo.is_empty() {
        table.push_str("\nSLOs over the period, in this process:\n");
        table.push_str(&slo);
    }
    let escaped = table
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>chirp: {env}</title></head><body><h1>chirp {ver}: {env}</h1>\
         <p>Latency over the last minute; counts since start. \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/api/probes\">/api/probes</a></p>\
         <pre>{escaped}</pre></body></html>",
        env = state.environment.replace('<', "&lt;"),
        ver = env!("CARGO_PKG_VERSION"),
    ))
}

/// The webhook catch. Unsigned or badly signed posts get 401 and count as rejected.
async fn hook(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let Some(probe) = state.probe(&name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such probe"})),
        )
            .into_response();
    };
    let crate::config::Catch::Http(catch) = &probe.config.catch else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "this probe does not catch webhooks"})),
        )
            .into_response();
    };
    let signature = headers
        .get(catch.signature_header.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !probe.hook_signer.verify_signature(&body, signature) {
        probe.stray(Stray::Rejected);
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": format!("missing or bad {} signature", catch.signature_header)})),
        )
            .into_response();
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verdict = probe.on_message(
        get(crate::canary::HEADER),
        get(crate::otlp::trace::TRACEPARENT),
        &body,
        now,
    );
    (
        StatusCode::OK,
        Json(serde_json::json!({"result": verdict.as_str()})),
    )
        .into_response()
}
