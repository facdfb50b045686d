//! Bearer-token and basic authentication for the listener's routes, except
//! the health endpoints (a kubelet has no credentials) and the webhook
//! receivers (they verify each body's HMAC).

use crate::config::listen::ListenAuth;
use axum::http::{header, HeaderMap};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The credentials one request must carry, as SHA-256 digests: comparing
/// digests in constant time reveals nothing, not even a credential's length.
pub struct Auth {
    bearer: Option<[u8; 32]>,
    /// Of `base64(user:password)`, as a client sends it.
    basic: Option<[u8; 32]>,
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Auth {
    pub fn new(cfg: &ListenAuth) -> Auth {
        Auth {
            bearer: cfg
                .bearer_token
                .as_ref()
                .map(|t| digest(t.expose().as_bytes())),
            basic: cfg.basic.as_ref().map(|(user, password)| {
                digest(
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{}", password.expose()))
                        .as_bytes(),
                )
            }),
        }
    }

    /// Whether `path` asks for credentials.
    pub fn guards(path: &str) -> bool {
        !matches!(path, "/healthz" | "/readyz") && !path.starts_with("/hooks/")
    }

    /// Whether the request's `Authorization` header holds a configured
    /// credential. Compared in constant time; the scheme is case-insensitive.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, given) = (&value[..space], value[space + 1..].trim_ascii());
        let expected = if scheme.eq_ignore_ascii_case(b"bearer") {
            &self.bearer
        } else if scheme.eq_ignore_ascii_case(b"basic") {
            &self.basic
        } else {
            &None
        };
        let given = digest(given);
        expected.is_some_and(|e| bool::from(e.ct_eq(&given)))
    }

    /// The `WWW-Authenticate` challenge for a 401.
    pub fn challenge(&self) -> &'static str {
        if self.bearer.is_some() {
            "Bearer realm=\"chirp\""
        } else {
            "Basic realm=\"chirp\", charset=\"UTF-8\""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use axum::http::HeaderValue;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accepts_only_the_configured_credentials() {
        let auth = Auth::new(&ListenAuth {
            bearer_token: Some(Secret::new("t0ken-t0ken-t0ken")),
            basic: Some(("prom".into(), Secret::new("pa55word-long"))),
        });
        assert!(auth.allows(&with("Bearer t0ken-t0ken-t0ken")));
        assert!(auth.allows(&with("bearer t0ken-t0ken-t0ken")));
        // base64("prom:pa55word-long")
        assert!(auth.allows(&with("Basic cHJvbTpwYTU1d29yZC1sb25n")));
        for bad in [
            "Bearer t0ken-t0ken-t0ke",
            "Bearer t0ken-t0ken-t0ken2",
            "t0ken-t0ken-t0ken",
            "Basic cHJvbTpwYTU1d29yZA==",
            "Digest t0ken-t0ken-t0ken",
            "Bearer",
        ] {
            assert!(!auth.allows(&with(bad)), "{bad}");
        }
        assert!(!auth.allows(&HeaderMap::new()));
        let bearer_only = Auth::new(&ListenAuth {
            bearer_token: Some(Secret::new("t0ken-t0ken-t0ken")),
            basic: None,
        });
        assert!(!bearer_only.allows(&with("Basic cHJvbTpwYTU1d29yZC1sb25n")));
    }

    #[test]
    fn health_and_webhooks_stay_open() {
        assert!(!Auth::guards("/healthz"));
        assert!(!Auth::guards("/readyz"));
        assert!(!Auth::guards("/hooks/orders"));
        for p in [
            "/metrics",
            "/",
            "/api/probes",
            "/-/reload",
            "/nothing",
            "/healthz/x",
        ] {
            assert!(Auth::guards(p), "{p}");
        }
    }
}
