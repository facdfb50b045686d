//! A probe's `payload`: padding, where the catch side looks for the token,
//! and the template of the user's event shape (read and checked here,
//! compiled by `crate::payload`).

use super::de;
use super::errors::{child, Problems};
use super::limits::MAX_PAYLOAD;
use super::secret;
use super::vars::{self, Env};
use crate::transport::InjectConfig;
use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Pad the default JSON body to at least this many bytes.
    pub size: usize,
    /// Where the catch side looks for the token in a JSON body (RFC 6901), before scanning.
    pub token_pointer: Option<String>,
    /// The user's event shape, compiled (and one canary rendered) at load.
    pub template: Option<std::sync::Arc<crate::payload::Template>>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPayload {
    #[serde(default, deserialize_with = "de::opt_parsed")]
    size: Option<u64>,
    token_pointer: Option<String>,
    /// Inline: the event shape itself (a mapping), or its JSON text.
    template: Option<serde_yaml::Value>,
    template_file: Option<String>,
    format: Option<String>,
    schema_file: Option<String>,
    message: Option<String>,
    #[serde(default, deserialize_with = "de::opt_parsed")]
    schema_id: Option<u32>,
    schema_registry: Option<RawRegistry>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: secret::Endpoint,
    /// Default: `<topic>-value` for a Kafka inject (TopicNameStrategy).
    subject: Option<String>,
    username: Option<String>,
    password: Option<secret::Secret>,
}

/// The probe's `payload` with the defaults' applied, checked; `path` is the probe's.
pub(super) fn read(
    defaults: Option<&RawPayload>,
    raw: Option<RawPayload>,
    inject: &InjectConfig,
    path: &str,
    p: &mut Problems,
) -> Payload {
    let at = |key: &str| child(path, key);
    let dp = defaults.cloned().unwrap_or_default();
    let rp = raw.unwrap_or_default();
    let size = rp.size.or(dp.size).unwrap_or(0) as usize;
    // A probe's own template replaces the defaults' as a whole.
    let tp = if rp.template.is_some() || rp.template_file.is_some() {
        rp.clone()
    } else {
        dp.clone()
    };
    let topic = match inject {
        InjectConfig::Kafka(k) => Some(k.topic.as_str()),
        _ => None,
    };
    let template = template_config(&tp, topic, &at("payload"), p).and_then(|c| {
        match crate::payload::Template::compile(&c, size.min(MAX_PAYLOAD)) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add(at(&format!("payload.{}", e.key)), e.message);
                None
            }
        }
    });
    let payload = Payload {
        size,
        token_pointer: rp.token_pointer.or(dp.token_pointer),
        template,
    };
    if payload.size > MAX_PAYLOAD {
        p.add(
            at("payload.size"),
            format!(
                "{} bytes is more than the limit of {MAX_PAYLOAD}",
                payload.size
            ),
        );
    }
    if let Some(ptr) = payload.token_pointer.as_deref() {
        if !ptr.is_empty() && !ptr.starts_with('/') {
            p.add(
                at("payload.token_pointer"),
                format!("`{ptr}` is not a JSON pointer; write e.g. `/meta/chirp_token`"),
            );
        }
    }
    payload
}

/// The template settings of a probe's `payload`, checked for shape (the
/// template itself is compiled by the caller).
fn template_config(
    raw: &RawPayload,
    kafka_topic: Option<&str>,
    path: &str,
    p: &mut Problems,
) -> Option<crate::payload::TemplateConfig> {
    use crate::payload::{Format, Source, TemplateConfig};
    let source = match (&raw.template, &raw.template_file) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{path}.template_file"),
                "give the template inline (`template`) or in a file (`template_file`), not both",
            );
            return None;
        }
        (Some(serde_yaml::Value::String(text)), None) => {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) => Source::Inline(v),
                Err(e) => {
                    p.add(
                        format!("{path}.template"),
                        format!("a template given as text must be JSON: {e} (or write the shape as YAML, with placeholders quoted: \"{{{{token}}}}\")"),
                    );
                    return None;
                }
            }
        }
        (Some(v), None) => match serde_json::to_value(v) {
            Ok(v) => Source::Inline(v),
            Err(e) => {
                p.add(
                    format!("{path}.template"),
                    format!("not a JSON document: {e}"),
                );
                return None;
            }
        },
        (None, Some(f)) => Source::File(f.clone()),
        (None, None) => {
            for (key, set) in [
                ("format", raw.format.is_some()),
                ("schema_file", raw.schema_file.is_some()),
                ("message", raw.message.is_some()),
                ("schema_id", raw.schema_id.is_some()),
                ("schema_registry", raw.schema_registry.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{path}.{key}"),
                        "goes with a template: give `template` or `template_file`",
                    );
                }
            }
            return None;
        }
    };
    let format = match raw.format.as_deref() {
        None => Format::Json,
        Some(f) => match Format::parse(f) {
            Some(f) => f,
            None => {
                p.add(
                    format!("{path}.format"),
                    format!("`{f}` is not a template format (json, avro, protobuf)"),
                );
                return None;
            }
        },
    };
    let registry = match &raw.schema_registry {
        None => None,
        Some(r) => {
            if !r.url.expose().starts_with("http://") && !r.url.expose().starts_with("https://") {
                p.add(
                    format!("{path}.schema_registry.url"),
                    format!("`{}` is not an http(s):// URL", r.url.redacted()),
                );
            }
            if r.username.is_some() != r.password.is_some() {
                p.add(
                    format!("{path}.schema_registry"),
                    "`username` and `password` go together",
                );
            }
            let subject = r
                .subject
                .clone()
                .or_else(|| kafka_topic.map(|t| format!("{t}-value")));
            let Some(subject) = subject else {
                p.add(
                    format!("{path}.schema_registry.subject"),
                    "name the subject (it defaults to `<topic>-value` only for a Kafka inject)",
                );
                return None;
            };
            Some(crate::payload::Registry {
                url: r.url.clone(),
                subject,
                username: r.username.clone(),
                password: r.password.clone(),
            })
        }
    };
    Some(TemplateConfig {
        source,
        format,
        schema_file: raw.schema_file.clone(),
        message: raw.message.clone(),
        schema_id: raw.schema_id,
        registry,
    })
}

/// `${VAR}` in a payload template's strings; nothing else changes.
pub(super) fn prepare_template(value: &mut Value, path: &str, env: &dyn Env, p: &mut Problems) {
    match value {
        Value::String(s) => match vars::interpolate(s, env) {
            Ok(new) => *s = new,
            Err(errors) => errors.iter().for_each(|e| p.add(path, e.to_string())),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prepare_template(item, &format!("{path}[{i}]"), env, p);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                prepare_template(v, &child(path, &key), env, p);
            }
        }
        Value::Tagged(t) => prepare_template(&mut t.value, path, env, p),
        Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}
