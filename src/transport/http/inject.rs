//! POSTs (or PUTs) canaries with the token in the `Chirp-Token` header and a
//! `sha256=` HMAC signature of the body; a 2xx answer is the acknowledgement.

use super::config::{InjectConfig, Method};
use crate::canary::{self, Signer};
use crate::outcome::FailureKind;
use crate::transport::{
    classify_io, Ack, Confirm, Context, Inject, Outgoing, PublishError, SetupError,
};
use std::sync::Arc;
use std::time::Duration;

pub struct HttpInject {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    signature_header: String,
    signer: Signer,
    timeout: Duration,
}

impl HttpInject {
    /// A URL given as a path goes to chirp's own listener (the self-test loop).
    pub fn new(
        cfg: &InjectConfig,
        probe: &str,
        timeout: Duration,
        ctx: &Context,
    ) -> Result<Self, SetupError> {
        let local = cfg.url.expose().starts_with('/');
        let url = match (&ctx.listener, local) {
            (_, false) => cfg.url.expose().to_owned(),
            (Some(base), true) => format!("{base}{}", cfg.url.expose()),
            (None, true) => {
                return Err(SetupError::new(
                    format!("probe `{probe}`: inject"),
                    false,
                    "the URL is a path on chirp's own listener, which is not running",
                ))
            }
        };
        let bad = |what: String| SetupError::new(format!("probe `{probe}`: inject"), false, what);
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad(format!("`{k}` is not a valid HTTP header name")))?;
            let mut value = reqwest::header::HeaderValue::from_str(v.expose()).map_err(|_| {
                bad(format!(
                    "the value of header `{k}` is not a valid HTTP header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder();
        if local {
            // The self-test loop talks to our own listener: never through a proxy.
            builder = builder.no_proxy();
            if let Some(own) = &ctx.own_certificate {
                let tls = super::own::client_config(Arc::clone(own))
                    .map_err(|e| SetupError::new(format!("probe `{probe}`: inject"), false, e))?;
                builder = builder.use_preconfigured_tls(tls);
            }
        }
        let client = builder
            .pool_max_idle_per_host(4)
            .user_agent(concat!("chirp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::new(format!("probe `{probe}`: inject"), false, e))?;
        Ok(HttpInject {
            client,
            url,
            method: match cfg.method {
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
            },
            headers,
            signature_header: cfg.signature_header.clone(),
            signer: ctx.signer.clone(),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl Inject for HttpInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let signature = self.signer.signature(&msg.body);
        let mut request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone())
            .header(canary::HEADER, msg.token)
            .header(self.signature_header.as_str(), signature);
        if let Some(tp) = &msg.traceparent {
            request = request.header(canary::TRACEPARENT, tp.as_str());
        }
        let request = request
            .header(reqwest::header::CONTENT_TYPE, msg.content_type)
            .timeout(self.timeout)
            .body(msg.body);
        Ok(Box::pin(async move {
            match request.send().await {
                Ok(resp) => classify_status(resp.status()).map(|()| Ack::Confirmed),
                Err(e) => Err(classify_error(e)),
            }
        }))
    }

    fn is_up(&self) -> bool {
        true
    }
}

/// The endpoint answered `status`.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint answered {0}")]
struct Status(reqwest::StatusCode);

pub(super) fn classify_status(status: reqwest::StatusCode) -> Result<(), PublishError> {
    let kind = match status.as_u16() {
        200..=299 => return Ok(()),
        401 | 403 => FailureKind::Auth,
        429 => FailureKind::Throttled,
        408 | 504 => FailureKind::Timeout,
        500..=599 => FailureKind::Unavailable,
        _ => FailureKind::Rejected,
    };
    Err(PublishError::new(kind, Status(status)))
}

fn classify_error(e: reqwest::Error) -> PublishError {
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Unavailable
    } else {
        classify_io(&e).unwrap_or(FailureKind::Other)
    };
    // Without the URL, which may carry a token in its query.
    PublishError::new(kind, e.without_url())
}
