//! The schema of a subject from a Confluent-compatible schema registry
//! (`GET /subjects/{subject}/versions/latest`): its id, for the wire
//! format, and its text. Looked up when a probe starts, since `validate`
//! touches no network.

use crate::config::secret::{Endpoint, Secret};
use std::time::Duration;

/// `payload.schema_registry`.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub url: Endpoint,
    pub subject: String,
    /// Basic authentication (Confluent Cloud: the API key and secret).
    pub username: Option<String>,
    pub password: Option<Secret>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(serde::Deserialize)]
struct Latest {
    id: u32,
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// The latest version's (id, schema text). Errors never carry credentials.
pub async fn fetch(r: &Registry) -> Result<(u32, String), String> {
    let base = r.url.expose().trim_end_matches('/');
    // A path segment: unreserved characters as they are, the rest encoded.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let subject = percent_encoding::utf8_percent_encode(&r.subject, SEGMENT);
    let url = format!("{base}/subjects/{subject}/versions/latest");
    let shown = format!(
        "{}/subjects/{}/versions/latest",
        r.url.redacted().trim_end_matches('/'),
        r.subject
    );
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .get(&url)
        .header("Accept", "application/vnd.schemaregistry.v1+json");
    if let Some(u) = &r.username {
        req = req.basic_auth(u, r.password.as_ref().map(|p| p.expose()));
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "cannot reach the schema registry at {shown}: {}",
            e.without_url()
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("the schema registry answered {status} for {shown}"));
    }
    let body = resp.bytes().await.map_err(|e| {
        format!(
            "reading the schema registry's answer for {shown}: {}",
            e.without_url()
        )
    })?;
    let latest: Latest = serde_json::from_slice(&body)
        .map_err(|e| format!("the schema registry's answer for {shown} is not a schema: {e}"))?;
    match latest.schema_type.as_deref() {
        None | Some("AVRO") => Ok((latest.id, latest.schema)),
        Some(other) => Err(format!(
            "subject `{}` holds a {other} schema; chirp looks up Avro schemas",
            r.subject
        )),
    }
}
