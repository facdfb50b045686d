//! Payload templates: canaries in the user's own event shape, so a
//! pipeline that validates its events (a schema registry, a typed consumer)
//! accepts them instead of dropping them as foreign, which would show as
//! loss that is really the prober's own.
//!
//! A template is JSON (inline in `probes.yaml` or `template_file`) with
//! placeholders (`"{{token}}"`, `"{{sent_at}}"`, `"{{seq}}"`, …). It is
//! parsed once; each canary fills it in and encodes it as JSON, as an Avro
//! datum (from a schema file, optionally in the Confluent wire format with a
//! schema id) or as a Protobuf message (from a `.proto` compiled at start-up
//! or a descriptor set). Everything that can be wrong with a template is
//! found when the configuration loads, by rendering one canary: the error
//! names the field.

mod avro;
mod proto;
pub mod registry;
mod template;

pub use registry::Registry;
pub use template::{Slot, Values};

use serde_json::Value as Json;
use std::sync::Arc;
use template::Node;

/// How the rendered document is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Avro,
    Protobuf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "avro" => Some(Format::Avro),
            "protobuf" | "proto" => Some(Format::Protobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
        }
    }

    /// The media type of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Avro => "avro/binary",
            Format::Protobuf => "application/x-protobuf",
        }
    }
}

/// Where the template's text comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Inline(Json),
    /// A JSON (or YAML) file.
    File(String),
}

/// A template as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateConfig {
    pub source: Source,
    pub format: Format,
    /// The Avro schema (`.avsc`), or the `.proto` / descriptor set.
    pub schema_file: Option<String>,
    /// The Protobuf message type, e.g. `shop.v1.OrderCreated`.
    pub message: Option<String>,
    /// Frames Avro datums in the Confluent wire format with this id.
    pub schema_id: Option<u32>,
    /// Looks the Avro schema and its id up by subject when the probe starts.
    pub registry: Option<Registry>,
}

/// A template problem: the `payload` key it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

impl Problem {
    fn new(key: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            key,
            message: message.into(),
        }
    }
}

enum Encoder {
    /// The schema comes from the registry when the probe starts.
    Pending,
    Json,
    Avro(avro::Encoder),
    Protobuf(proto::Encoder),
}

/// A compiled template.
pub struct Template {
    config: TemplateConfig,
    /// The files' text it was compiled from (a reload notices a change).
    texts: Vec<Vec<u8>>,
    tree: Node,
    encoder: Encoder,
    /// `payload.size`, when `{{padding}}` is used.
    pad_to: Option<usize>,
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.texts == other.texts && self.pad_to == other.pad_to
    }
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Template({}, {:?})",
            self.config.format.as_str(),
            self.config.source
        )
    }
}

/// Templates and schemas are small; a larger file is a mistake (or a device).
const MAX_FILE: u64 = 4 << 20;

fn read(path: &str, key: &'static str) -> Result<Vec<u8>, Problem> {
    use std::io::Read;
    let cannot = |e: std::io::Error| Problem::new(key, format!("cannot read `{path}`: {e}"));
    let mut out = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut out)
        .map_err(cannot)?;
    if out.len() as u64 > MAX_FILE {
        return Err(Problem::new(
            key,
            format!("`{path}` is larger than {} MiB", MAX_FILE >> 20),
        ));
    }
    Ok(out)
}

impl Template {
    /// Reads and checks a template (and its schema), and renders one
    /// sample canary through the encoder. `size` is `payload.size`.
    pub fn compile(config: &TemplateConfig, size: usize) -> Result<Arc<Template>, Problem> {
        Self::build(config, size, None)
    }

    /// The registry this template's schema comes from, if any.
    pub fn registry(&self) -> Option<&Registry> {
        self.config.registry.as_ref()
    }

    /// The template with the schema (and its id) the registry gave; the
    /// sample canary must fit it.
    pub fn with_registry_schema(&self, schema: &str, id: u32) -> Result<Arc<Template>, Problem> {
        let size = self.pad_to.unwrap_or(0);
        Self::build(&self.config, size, Some((schema, id)))
    }

    fn build(
        config: &TemplateConfig,
        size: usize,
        fetched: Option<(&str, u32)>,
    ) -> Result<Arc<Template>, Problem> {
        let mut texts = Vec::new();
        let (doc, key) = match &config.source {
            Source::Inline(v) => (v.clone(), "template"),
            Source::File(path) => {
                let bytes = read(path, "template_file")?;
                let text = String::from_utf8(bytes.clone()).map_err(|_| {
                    Problem::new("template_file", format!("`{path}` is not UTF-8 text"))
                })?;
                texts.push(bytes);
                // JSON is YAML too; YAML lets a template carry comments.
                let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
                    Problem::new(
                        "template_file",
                        format!("`{path}` is not JSON or YAML: {e}"),
                    )
                })?;
                let doc = serde_json::to_value(yaml).map_err(|e| {
                    Problem::new(
                        "template_file",
                        format!("`{path}` is not a JSON document: {e}"),
                    )
                })?;
                (doc, "template_file")
            }
        };
        let tree = Node::parse(&doc).map_err(|e| Problem::new(key, e))?;
        if !tree.has(Slot::Token) {
            return Err(Problem::new(
                key,
                "the template has no \"{{token}}\": where headers are lost, the catch side could not tell a canary from any other event",
            ));
        }
        let pad_to = match (tree.has(Slot::Padding), size) {
            (true, n) => Some(n),
            (false, 0) => None,
            (false, _) => {
                return Err(Problem::new(
                    "size",
                    "with a template, `size` pads where the template says: put \"{{padding}}\" in a string field",
                ))
            }
        };
        let schema = |want: &str| {
            config.schema_file.as_deref().ok_or_else(|| {
                Problem::new(
                    "schema_file",
                    format!("`format: {want}` needs `schema_file`"),
                )
            })
        };
        let encoder = match config.format {
            Format::Json => {
                if config.schema_file.is_some() {
                    return Err(Problem::new("schema_file", "a JSON template has no schema here; `schema_file` is for `format: avro` or `protobuf`"));
                }
                Encoder::Json
            }
            Format::Avro if config.schema_id.is_some() && config.registry.is_some() => {
                return Err(Problem::new("schema_id", "the registry gives the schema id: leave `schema_id` out with `schema_registry`"));
            }
            Format::Avro if let Some((text, id)) = fetched => {
                // Not in `texts`: the template compares equal to its form
                // before the lookup, so a reload keeps the probe.
                Encoder::Avro(avro::Encoder::new(text, Some(id)).map_err(|e| {
                    Problem::new(
                        "schema_registry",
                        format!("subject's schema (id {id}): {e}"),
                    )
                })?)
            }
            Format::Avro if config.registry.is_some() && config.schema_file.is_none() => {
                Encoder::Pending
            }
            Format::Avro => {
                let path = schema("avro")?;
                let bytes = read(path, "schema_file")?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                texts.push(bytes);
                Encoder::Avro(
                    avro::Encoder::new(&text, config.schema_id)
                        .map_err(|e| Problem::new("schema_file", format!("`{path}`: {e}")))?,
                )
            }
            Format::Protobuf => {
                let path = schema("protobuf")?;
                let bytes = read(path, "schema_file")?;
                let message = config.message.as_deref().ok_or_else(|| {
                    Problem::new(
                        "message",
                        "`format: protobuf` needs `message`, the full name of the message type",
                    )
                })?;
                let encoder = proto::Encoder::new(path, &bytes, message)
                    .map_err(|(k, e)| Problem::new(k, e))?;
                texts.push(bytes);
                Encoder::Protobuf(encoder)
            }
        };
        if config.message.is_some() && config.format != Format::Protobuf {
            return Err(Problem::new(
                "message",
                "`message` names a Protobuf type: it goes with `format: protobuf`",
            ));
        }
        if config.registry.is_some() && config.format != Format::Avro {
            return Err(Problem::new(
                "schema_registry",
                "chirp looks up Avro schemas in a registry: it goes with `format: avro`",
            ));
        }
        if config.schema_id.is_some() && config.format != Format::Avro {
            return Err(Problem::new("schema_id", "`schema_id` frames Avro records (Confluent wire format): it goes with `format: avro`"));
        }
        let t = Template {
            config: config.clone(),
            texts,
            tree,
            encoder,
            pad_to,
        };
        // One canary now: every field that does not fit shows at load.
        let sample = Values {
            token: "chirp1.sample.0000000000000000.0.0.0.00000000000000000000000000000000",
            probe: "sample",
            lane: 0,
            seq: 0,
            sent_unix_us: 1_800_000_000_000_000,
        };
        if !matches!(t.encoder, Encoder::Pending) {
            t.render(&sample).map_err(|e| Problem::new(key, e))?;
        }
        Ok(Arc::new(t))
    }

    pub fn format(&self) -> Format {
        self.config.format
    }

    /// One canary's body; errors name the field that does not fit.
    pub fn render(&self, v: &Values<'_>) -> Result<Vec<u8>, String> {
        let out = self.encode(&self.tree.fill(v, ""))?;
        match self.pad_to {
            Some(size) if out.len() < size => {
                let pad = "x".repeat(size - out.len());
                self.encode(&self.tree.fill(v, &pad))
            }
            _ => Ok(out),
        }
    }

    fn encode(&self, doc: &Json) -> Result<Vec<u8>, String> {
        match &self.encoder {
            Encoder::Pending => Err("the schema was not looked up in the registry".into()),
            Encoder::Json => serde_json::to_vec(doc).map_err(|e| e.to_string()),
            Encoder::Avro(a) => a.encode(doc),
            Encoder::Protobuf(p) => p.encode(doc),
        }
    }
}

#[cfg(test)]
mod tests;
