//! chirp's one HTTP listener: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/` (status page), `/api/probes` (JSON), `POST /-/reload` (`run`), and the
//! webhook receivers (`transport::http`). `/readyz` means "configuration loaded and listener
//! serving": broker state is reported per probe (`chirp_probe_up`,
//! `/api/probes`), never by taking chirp out of its Service.

pub mod auth;
pub mod listener;
pub mod status;
pub mod tls;

use crate::export::catalogue::{Live, Sources};
use crate::export::prometheus::{Exposition, Format};
use crate::report::{self, Watched};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What the handlers share.
pub struct AppState {
    pub environment: String,
    live: Live,
    /// `/metrics`, when `export.prometheus` is on.
    exposition: Option<Exposition>,
    /// Where `POST /-/reload` asks `run` to reload (none in `check`).
    reload: Option<mpsc::Sender<ReloadRequest>>,
}

/// A reload asked for over HTTP, and where its outcome goes.
pub type ReloadRequest = oneshot::Sender<ReloadAnswer>;

/// What a reload did, in words for its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadAnswer {
    /// Applied (200).
    Done(String),
    /// Refused: nothing changed (400).
    Refused(String),
    /// Applied, but some probes could not start (500).
    Partly(String),
}

impl AppState {
    /// `src` is what `/metrics` exports; its probes are also the API's and
    /// the status page's. With `reload`, `POST /-/reload` is served.
    pub fn new(
        environment: String,
        prometheus: bool,
        src: Sources,
        reload: Option<mpsc::Sender<ReloadRequest>>,
    ) -> Arc<Self> {
        let live = src.live.clone();
        let exposition = prometheus.then(|| Exposition::new(&environment, src));
        Arc::new(AppState {
            environment,
            live,
            exposition,
            reload,
        })
    }

    /// The probes running now (the API's and the status page's rows).
    pub fn probes(&self) -> Vec<Watched> {
        self.live.get().probes.clone()
    }
}

/// The listener's routes; `hooks` are the webhook receivers.
pub fn router(state: Arc<AppState>, hooks: Router) -> Router {
    let mut router = Router::new();
    if state.exposition.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    if state.reload.is_some() {
        router = router.route("/-/reload", post(reload));
    }
    router
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/api/probes", get(api_probes))
        .with_state(state)
        .merge(hooks)
}

/// `GET /metrics`: the text format 0.0.4 unless `Accept` asks for OpenMetrics.
/// A scrape this large (hundreds of probes) gives its transient memory back.
const LARGE_SCRAPE: usize = 1 << 20;

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.exposition.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    // With a thousand probes a scrape takes ~100 ms of CPU: the worker's
    // queue moves to another thread meanwhile, so the probes' slots queued
    // behind the scrape are not held up.
    let render = || {
        state
            .exposition
            .as_ref()
            .map(|e| e.render(format))
            .unwrap_or_default()
    };
    // (A single-threaded runtime, as in some tests, has no queue to move.)
    let body = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(render),
        _ => render(),
    };
    if body.len() > LARGE_SCRAPE {
        // Building it took several times its size in small allocations.
        listener::give_back_now();
    }
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            // A cache between Prometheus and chirp must not mix the formats.
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

/// `POST /-/reload`: reloads the configuration file as SIGHUP does and
/// answers once it is done: 200 with what changed, 400 with every error of a
/// file that was refused (nothing changed), 500 when it was applied but a
/// probe could not start, 503 while chirp is stopping.
async fn reload(State(state): State<Arc<AppState>>) -> Response {
    let Some(tx) = &state.reload else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (done, outcome) = oneshot::channel();
    if tx.send(done).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "chirp is stopping\n").into_response();
    }
    match outcome.await {
        Ok(ReloadAnswer::Done(text)) => (StatusCode::OK, text).into_response(),
        Ok(ReloadAnswer::Refused(text)) => (StatusCode::BAD_REQUEST, text).into_response(),
        Ok(ReloadAnswer::Partly(text)) => (StatusCode::INTERNAL_SERVER_ERROR, text).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "chirp is stopping\n").into_response(),
    }
}

fn reports(state: &AppState) -> Vec<report::ProbeReport> {
    let now = Instant::now();
    state
        .probes()
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

/// `GET /`: the status page (`status`), never cached.
async fn status_page(State(state): State<Arc<AppState>>) -> Response {
    match status::render(&state.environment, &state.probes(), Instant::now()) {
        Ok(page) => ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot render the status page.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the status page; /api/probes has the same numbers\n",
            )
                .into_response()
        }
    }
}
