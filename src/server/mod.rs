//! chirp's one HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/` (status page), `/api/probes` (JSON), and the webhook receivers
//! (`transport::http`). `/readyz` means "configuration loaded and listener
//! serving": broker state is reported per probe (`chirp_probe_up`,
//! `/api/probes`), never by taking chirp out of its Service.

pub mod auth;
pub mod listener;
pub mod tls;

use crate::export::catalogue::Sources;
use crate::export::prometheus;
use crate::report::{self, Watched};
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::time::Instant;

/// What the handlers share.
pub struct AppState {
    pub environment: String,
    pub probes: Vec<Watched>,
    /// `/metrics`, when `export.prometheus` is on.
    registry: Option<Registry>,
}

impl AppState {
    /// `src` is what `/metrics` exports; its probes are also the API's and the status page's.
    pub fn new(environment: String, prometheus: bool, src: Sources) -> Arc<Self> {
        let probes = src.probes.clone();
        let registry = prometheus.then(|| prometheus::registry(&environment, src));
        Arc::new(AppState {
            environment,
            probes,
            registry,
        })
    }
}

/// The listener's routes; `hooks` are the webhook receivers.
pub fn router(state: Arc<AppState>, hooks: Router) -> Router {
    let mut router = Router::new();
    if state.registry.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/api/probes", get(api_probes))
        .with_state(state)
        .merge(hooks)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .registry
        .as_ref()
        .map(prometheus::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn reports(state: &AppState) -> Vec<report::ProbeReport> {
    let now = Instant::now();
    state
        .probes
        .iter()
        .map(|w| report::ProbeReport::of(w, now))
        .collect()
}

async fn api_probes(State(state): State<Arc<AppState>>) -> Response {
    Json(serde_json::json!({
        "environment": state.environment,
        "version": env!("CARGO_PKG_VERSION"),
        "probes": reports(&state),
    }))
    .into_response()
}

async fn status_page(State(state): State<Arc<AppState>>) -> Html<String> {
    let rows = reports(&state);
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
        env = state.environment.replace('&', "&amp;").replace('<', "&lt;"),
        ver = env!("CARGO_PKG_VERSION"),
    ))
}
