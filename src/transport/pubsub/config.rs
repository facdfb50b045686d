//! `pubsub` settings (Google Cloud Pub/Sub): a named connection (the
//! project, where the API is, which credentials), the topic a probe
//! publishes to and the subscription it reads. chirp creates no topic and
//! no subscription: a pipeline's are its owners' to make.

use crate::config::errors::Problems;
use crate::config::secret::Endpoint;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// The Google Cloud project whose topics and subscriptions the probes
    /// name (a full `projects/…/topics/…` name may point at another).
    pub project: String,
    /// Where the Pub/Sub API is: by default Google's
    /// (`https://pubsub.googleapis.com`), or `$PUBSUB_EMULATOR_HOST` when
    /// that is set; `http://host:port` for the emulator (reached without
    /// credentials unless `credentials_file` is given), or a regional or
    /// private `https://` endpoint.
    pub endpoint: Option<Endpoint>,
    /// A credentials file (a service account key, JSON) to use instead of
    /// the standard chain (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// application default credentials, the metadata server). Its contents
    /// never reach a log line or an error.
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub connection: String,
    /// A topic ID in the connection's project, or a full
    /// `projects/<project>/topics/<id>` name.
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub connection: String,
    /// A subscription ID in the connection's project, or a full
    /// `projects/<project>/subscriptions/<id>` name. Give chirp one of its
    /// own: subscribers of one subscription split its messages.
    pub subscription: String,
}

/// Where a connection's clients go, as `connect` decides it from the
/// settings and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// None: Google's endpoint.
    pub endpoint: Option<String>,
    /// No credentials at all (the emulator): an `http://` endpoint without
    /// `credentials_file`.
    pub anonymous: bool,
    /// The endpoint came from `PUBSUB_EMULATOR_HOST`.
    pub from_environment: bool,
}

impl ConnectionConfig {
    /// The endpoint and credentials to use, given `PUBSUB_EMULATOR_HOST`
    /// (`emulator_host`): `endpoint` wins over the variable; plain HTTP
    /// never carries credentials chirp was not explicitly given.
    pub fn target(&self, emulator_host: Option<&str>) -> Target {
        let from_env = emulator_host
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains("://") {
                    h.to_owned()
                } else {
                    format!("http://{h}")
                }
            });
        let (endpoint, from_environment) = match (&self.endpoint, from_env) {
            (Some(e), _) => (Some(e.expose().trim_end_matches('/').to_owned()), false),
            (None, Some(e)) => (Some(e), true),
            (None, None) => (None, false),
        };
        let plain = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        Target {
            anonymous: plain && self.credentials_file.is_none(),
            endpoint,
            from_environment,
        }
    }

    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_project(&self.project, format!("{path}.project"), p);
        if let Some(e) = &self.endpoint {
            if let Err(msg) = check_endpoint(e) {
                p.add(format!("{path}.endpoint"), msg);
            }
        }
        if self.credentials_file.as_deref().is_some_and(str::is_empty) {
            p.add(
                format!("{path}.credentials_file"),
                "name the credentials file, or leave the key out for the standard chain",
            );
        }
    }

    /// The full name of topic `topic` (an ID, or a full name as it is).
    pub fn topic(&self, topic: &str) -> String {
        full_name(&self.project, "topics", topic)
    }

    /// The full name of subscription `subscription`.
    pub fn subscription(&self, subscription: &str) -> String {
        full_name(&self.project, "subscriptions", subscription)
    }
}

fn full_name(project: &str, kind: &str, name: &str) -> String {
    if name.starts_with("projects/") {
        name.to_owned()
    } else {
        format!("projects/{project}/{kind}/{name}")
    }
}

/// `http(s)://host[:port]`, nothing else: no credentials, path or query.
fn check_endpoint(e: &Endpoint) -> Result<(), String> {
    let bad = || {
        format!(
            "`{}` is not a Pub/Sub endpoint (write e.g. https://pubsub.googleapis.com, or http://127.0.0.1:8085 for the emulator)",
            e.redacted()
        )
    };
    let u = url::Url::parse(e.expose()).map_err(|_| bad())?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "`{}`: an endpoint carries no credentials (use `credentials_file`)",
            e.redacted()
        ));
    }
    if u.query().is_some() || u.fragment().is_some() || !matches!(u.path(), "" | "/") {
        return Err(bad());
    }
    Ok(())
}

/// Project IDs are lowercase letters, digits and hyphens; old ones may be
/// domain-scoped (`example.com:name`).
fn check_project(project: &str, path: String, p: &mut Problems) {
    if project.is_empty() {
        p.add(path, "name the Google Cloud project");
    } else if !project
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
    {
        p.add(
            path,
            format!(
                "`{}` is not a project ID (letters, digits, `-`; e.g. my-project)",
                project.escape_debug()
            ),
        );
    }
}

/// A topic or subscription: an ID (3–255 characters, starting with a
/// letter; letters, digits and `-._~+%`; not `goog…`), or a full name
/// `projects/<project>/<kind>/<id>`.
fn check_resource(value: &str, kind: &str, what: &str, path: String, p: &mut Problems) {
    if value.is_empty() {
        p.add(path, format!("name the {what}"));
        return;
    }
    let id = match value.strip_prefix("projects/") {
        Some(rest) => match rest.split('/').collect::<Vec<_>>().as_slice() {
            [project, k, id] if !project.is_empty() && *k == kind => *id,
            _ => {
                p.add(
                    path,
                    format!(
                        "`{}` is not a full {what} name (write projects/<project>/{kind}/<id>, or the ID alone)",
                        value.escape_debug()
                    ),
                );
                return;
            }
        },
        None => value,
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+%".contains(c);
    let ok = (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(allowed)
        && !id.starts_with("goog");
    if !ok {
        p.add(
            path,
            format!(
                "`{}` is not a {what} ID (3 to 255 letters, digits and `-._~+%`, starting with a letter, not `goog`)",
                id.escape_debug()
            ),
        );
    }
}

impl InjectConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_resource(&self.topic, "topics", "topic", format!("{path}.topic"), p);
    }
}

impl CatchConfig {
    pub fn validate(&self, path: &str, p: &mut Problems) {
        check_resource(
            &self.subscription,
            "subscriptions",
            "subscription",
            format!("{path}.subscription"),
            p,
        );
    }
}

pub fn inject_end(cfg: &InjectConfig) -> super::super::End {
    super::super::End {
        messaging: Some("gcp_pubsub"),
        system: "pubsub",
        destination: Some(cfg.topic.clone()),
        connection: Some(cfg.connection.clone()),
        description: format!(
            "Pub/Sub topic {} (connection {})",
            cfg.topic, cfg.connection
        ),
    }
}

pub fn catch_end(cfg: &CatchConfig) -> super::super::End {
    super::super::End {
        messaging: Some("gcp_pubsub"),
        system: "pubsub",
        destination: Some(cfg.subscription.clone()),
        connection: Some(cfg.connection.clone()),
        description: format!(
            "Pub/Sub subscription {} (connection {})",
            cfg.subscription, cfg.connection
        ),
    }
}
