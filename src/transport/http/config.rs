//! `http` settings: the URL canaries are POSTed (or PUT) to, and chirp's own
//! webhook receiver at `/hooks/{probe}`.

use crate::config::errors::Problems;
use crate::config::secret::{Endpoint, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Chirp-Signature";

fn default_signature_header() -> String {
    DEFAULT_SIGNATURE_HEADER.to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// An absolute `http(s)://` URL, or a path starting with `/` on chirp's own listener.
    pub url: Endpoint,
    #[serde(default)]
    pub method: Method,
    /// Extra request headers; values are secret (they often carry credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Header that carries `sha256=<hex HMAC of the body>`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    Post,
    Put,
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not supported; use POST or PUT"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Key for the webhook signature; defaults to `signing_key`.
    pub secret: Option<Secret>,
}

fn check_header_name(name: &str, path: &str, p: &mut Problems) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        p.add(path, format!("`{name}` is not a valid header name"));
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let url = self.url.expose();
        if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with('/')) {
            p.add(
                format!("{path}.url"),
                format!(
                    "`{}` must start with http://, https:// or / (a path on chirp's own listener)",
                    self.url
                ),
            );
        }
        for (name, value) in &self.headers {
            let at = format!("{path}.headers.{name}");
            check_header_name(name, &at, p);
            if http::HeaderValue::from_str(value.expose()).is_err() {
                p.add(
                    at,
                    format!("the value of header `{name}` has characters a header cannot carry"),
                );
            }
        }
        check_header_name(
            &self.signature_header,
            &format!("{path}.signature_header"),
            p,
        );
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_header_name(
            &self.signature_header,
            &format!("{path}.signature_header"),
            p,
        );
    }
}

pub fn inject_end(c: &InjectConfig) -> super::super::End {
    super::super::End {
        system: "http",
        messaging: None,
        destination: None,
        connection: None,
        description: format!("HTTP {}", c.url),
    }
}

pub fn catch_end(probe: &str) -> super::super::End {
    super::super::End {
        system: "http",
        messaging: None,
        destination: None,
        connection: None,
        description: format!("chirp's webhook /hooks/{probe}"),
    }
}
