//! chirp's webhook receiver, `POST /hooks/{probe}` (or PUT): verifies the
//! HMAC signature of the body, hands the canary (its token found in the
//! signed body, never in a header) to the probe, and answers 2xx only after
//! recording it. Unsigned or badly signed requests get 401 and count as
//! `rejected`.

use super::config::CatchConfig;
use crate::canary::{self, Signer};
use crate::outcome::Stray;
use crate::transport::{CatchHandle, CatchSink, Caught, Context};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The probes that catch webhooks, by name.
#[derive(Default)]
pub struct Hooks {
    by_probe: RwLock<HashMap<String, Arc<Hook>>>,
}

struct Hook {
    sink: Arc<dyn CatchSink>,
    signer: Signer,
    signature_header: String,
}

impl Hooks {
    fn get(&self, probe: &str) -> Option<Arc<Hook>> {
        self.by_probe
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(probe)
            .cloned()
    }

    /// Counts a request the listener refused before routing it (a body too
    /// large or too slow) as `rejected` for the probe whose receiver `path`
    /// names, if any.
    pub fn refused(&self, path: &str) {
        if let Some(hook) = path.strip_prefix("/hooks/").and_then(|n| self.get(n)) {
            hook.sink.on_stray(Stray::Rejected);
        }
    }
}

/// The webhook receiver is chirp's own listener: up while chirp serves.
struct Webhook;

#[async_trait::async_trait]
impl CatchHandle for Webhook {
    fn is_up(&self) -> bool {
        true
    }

    async fn ready(&self, _stop: &CancellationToken) -> bool {
        true
    }
}

/// Registers `sink` at `/hooks/{name}`.
pub fn start(cfg: &CatchConfig, sink: Arc<dyn CatchSink>, ctx: &Context) -> Arc<dyn CatchHandle> {
    let signer = match &cfg.secret {
        Some(s) => Signer::new(s.expose().as_bytes()),
        None => ctx.signer.clone(),
    };
    let hook = Hook {
        sink: Arc::clone(&sink),
        signer,
        signature_header: cfg.signature_header.clone(),
    };
    let hook = Arc::new(hook);
    let name = sink.name().to_owned();
    ctx.hooks
        .by_probe
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), Arc::clone(&hook));
    // A probe that ends (a reload) stops receiving: its path answers 404
    // until a probe of that name catches again.
    let (hooks, stop) = (Arc::clone(&ctx.hooks), ctx.stop.clone());
    ctx.tasks.spawn(async move {
        stop.cancelled().await;
        let mut by_probe = hooks.by_probe.write().unwrap_or_else(|p| p.into_inner());
        if by_probe.get(&name).is_some_and(|h| Arc::ptr_eq(h, &hook)) {
            by_probe.remove(&name);
        }
    });
    Arc::new(Webhook)
}

/// The routes of the webhook receiver.
pub fn router(hooks: Arc<Hooks>) -> Router {
    Router::new()
        .route("/hooks/{probe}", post(hook).put(hook))
        .with_state(hooks)
}

fn answer(status: StatusCode, key: &str, text: &str) -> Response {
    (status, Json(serde_json::json!({ key: text }))).into_response()
}

async fn hook(
    State(hooks): State<Arc<Hooks>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let Some(hook) = hooks.get(&name) else {
        return answer(
            StatusCode::NOT_FOUND,
            "error",
            "no probe catches webhooks at this path",
        );
    };
    let signature = headers
        .get(hook.signature_header.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !hook.signer.verify_signature(&body, signature) {
        hook.sink.on_stray(Stray::Rejected);
        let text = format!("missing or bad {} signature", hook.signature_header);
        return answer(StatusCode::UNAUTHORIZED, "error", &text);
    }
    // The signature covers the body only, so the token is taken from the
    // body: a `Chirp-Token` header could be set by anyone on the way.
    let traceparent = headers
        .get(canary::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let verdict = hook.sink.on_message(Caught {
        token: None,
        traceparent,
        body: &body,
        at,
    });
    answer(StatusCode::OK, "result", verdict.as_str())
}
