//! HTTP: the injector POSTs (or PUTs) the canary to a URL with the token in a
//! header and an HMAC signature of the body; the catch side is chirp's own
//! `POST /hooks/{probe}` receiver (see `server`), which verifies the
//! signature, records the canary, and only then answers 2xx.

use super::{Ack, Confirm, Outgoing, PublishError};
use crate::canary::{self, Signer};
use crate::config::{HttpInject, HttpMethod};
use crate::probe::ledger::FailureKind;
use std::time::Duration;

pub struct HttpInjector {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    signature_header: String,
    signer: Signer,
}

/// Why an HTTP injector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("header `{0}` is not a valid HTTP header name")]
    HeaderName(String),
    #[error("the value of header `{0}` is not a valid HTTP header value")]
    HeaderValue(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl HttpInjector {
    /// `base` is chirp's own listener, for URLs given as a path (the self-test loop).
    pub fn new(cfg: &HttpInject, base: &str, signer: Signer) -> Result<Self, BuildError> {
        let url = if cfg.url.expose().starts_with('/') {
            format!("{base}{}", cfg.url.expose())
        } else {
            cfg.url.expose().to_owned()
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| BuildError::HeaderName(k.clone()))?;
            let mut value = reqwest::header::HeaderValue::from_str(v.expose())
                .map_err(|_| BuildError::HeaderValue(k.clone()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder();
        if cfg.url.expose().starts_with('/') {
            // The self-test loop talks to our own listener: never through a proxy.
            builder = builder.no_proxy();
        }
        let client = builder
            .pool_max_idle_per_host(4)
            .user_agent(concat!("chirp/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpInjector {
            client,
            url,
            method: match cfg.method {
                HttpMethod::Post => reqwest::Method::POST,
                HttpMethod::Put => reqwest::Method::PUT,
            },
            headers,
            signature_header: cfg.signature_header.clone(),
            signer,
        })
    }

    pub fn send(&self, msg: Outgoing, timeout: Duration) -> Confirm {
        let signature = self.signer.signature(&msg.body);
        let request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone())
            .header(canary::HEADER, msg.token)
            .header(self.signature_header.as_str(), signature);
        let request = match &msg.traceparent {
            Some(tp) => request.header(crate::otlp::trace::TRACEPARENT, tp.as_str()),
            None => request,
        };
        let request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(msg.body);
        Box::pin(async move {
            match request.send().await {
                Ok(resp) => classify_status(resp.status()).map(|()| Ack::Confirmed),
                Err(e) => Err(classify_error(&e)),
            }
        })
    }
}

fn classify_status(status: reqwest::StatusCode) -> Result<(), PublishError> {
    let kind = match status.as_u16() {
        200..=299 => return Ok(()),
        401 | 403 => FailureKind::Auth,
        429 => FailureKind::Throttled,
        408 | 504 => FailureKind::Timeout,
        500..=599 => FailureKind::Unavailable,
        _ => FailureKind::Rejected,
    };
    Err(PublishError::new(
        kind,
        format!("the endpoint answered {status}"),
    ))
}

fn classify_error(e: &reqwest::Error) -> PublishError {
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Unavailable
    } else {
        FailureKind::Other
    };
    // Walk the chain so the log says why (connection refused, DNS, TLS...);
    // without the URL, which may carry a token in its query.
    let mut message = "request failed".to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    PublishError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_failure_kinds() {
        use reqwest::StatusCode as S;
        assert!(classify_status(S::OK).is_ok());
        assert!(classify_status(S::ACCEPTED).is_ok());
        let kind = |s| classify_status(s).unwrap_err().kind;
        assert_eq!(kind(S::UNAUTHORIZED), FailureKind::Auth);
        assert_eq!(kind(S::FORBIDDEN), FailureKind::Auth);
        assert_eq!(kind(S::TOO_MANY_REQUESTS), FailureKind::Throttled);
        assert_eq!(kind(S::GATEWAY_TIMEOUT), FailureKind::Timeout);
        assert_eq!(kind(S::SERVICE_UNAVAILABLE), FailureKind::Unavailable);
        assert_eq!(kind(S::BAD_REQUEST), FailureKind::Rejected);
        assert_eq!(kind(S::MOVED_PERMANENTLY), FailureKind::Rejected);
    }
}
