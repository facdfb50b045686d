//! The template tree: the user's event shape with its placeholders found
//! once, filled per canary. A string that is exactly one placeholder is a
//! typed slot (`"{{seq}}"` becomes a number); a placeholder inside other
//! text is interpolated into the string.

use serde_json::{Map, Value};

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Token,
    Probe,
    Lane,
    Seq,
    /// RFC 3339 with microseconds, UTC.
    SentAt,
    EpochMs,
    EpochUs,
    /// A random UUID (v4), new for every canary.
    Uuid,
    /// `x` repeated to bring the body to `payload.size` bytes.
    Padding,
}

pub const NAMES: [(&str, Slot); 9] = [
    ("token", Slot::Token),
    ("probe", Slot::Probe),
    ("lane", Slot::Lane),
    ("seq", Slot::Seq),
    ("sent_at", Slot::SentAt),
    ("epoch_ms", Slot::EpochMs),
    ("epoch_us", Slot::EpochUs),
    ("uuid", Slot::Uuid),
    ("padding", Slot::Padding),
];

/// One canary's values.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub token: &'a str,
    pub probe: &'a str,
    pub lane: u32,
    pub seq: u64,
    pub sent_unix_us: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Slot(Slot),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// No placeholder inside.
    Fixed(Value),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Slot(Slot),
    Text(Vec<Part>),
}

/// The placeholders of one string, or an error naming the unknown one.
fn parts(s: &str) -> Result<Vec<Part>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        let name = rest[open + 2..open + 2 + close].trim();
        let slot = NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown placeholder `{{{{{name}}}}}` (known: {})",
                    known.join(", ")
                )
            })?;
        if open > 0 {
            out.push(Part::Text(rest[..open].to_owned()));
        }
        out.push(Part::Slot(slot));
        rest = &rest[open + 2 + close + 2..];
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest.to_owned()));
    }
    Ok(out)
}

/// Appends `.key` or `[i]` to a path for messages.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Node {
    /// Parses a template; errors name the path of the bad string.
    pub fn parse(v: &Value) -> Result<Node, String> {
        Self::parse_at(v, "")
    }

    fn parse_at(v: &Value, path: &str) -> Result<Node, String> {
        let at = |e: String| {
            if path.is_empty() {
                e
            } else {
                format!("at `{path}`: {e}")
            }
        };
        Ok(match v {
            Value::String(s) => {
                let parts = parts(s).map_err(at)?;
                match parts.as_slice() {
                    [Part::Slot(slot)] => Node::Slot(*slot),
                    p if p.iter().any(|x| matches!(x, Part::Slot(_))) => Node::Text(parts),
                    _ => Node::Fixed(v.clone()),
                }
            }
            Value::Array(items) => {
                let nodes = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| Self::parse_at(x, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if nodes.iter().all(|n| matches!(n, Node::Fixed(_))) {
                    Node::Fixed(v.clone())
                } else {
                    Node::Array(nodes)
                }
            }
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (k, x) in map {
                    if k.contains("{{") {
                        return Err(at(format!(
                            "placeholders go in values, not in the key `{k}`"
                        )));
                    }
                    fields.push((k.clone(), Self::parse_at(x, &join(path, k))?));
                }
                if fields.iter().all(|(_, n)| matches!(n, Node::Fixed(_))) {
                    Node::Fixed(v.clone())
                } else {
                    Node::Object(fields)
                }
            }
            other => Node::Fixed(other.clone()),
        })
    }

    /// Whether `slot` appears anywhere.
    pub fn has(&self, slot: Slot) -> bool {
        match self {
            Node::Fixed(_) => false,
            Node::Slot(s) => *s == slot,
            Node::Text(parts) => parts.contains(&Part::Slot(slot)),
            Node::Object(f) => f.iter().any(|(_, n)| n.has(slot)),
            Node::Array(a) => a.iter().any(|n| n.has(slot)),
        }
    }

    /// The filled-in document; `padding` is the padding string.
    pub fn fill(&self, v: &Values<'_>, padding: &str) -> Value {
        match self {
            Node::Fixed(x) => x.clone(),
            Node::Slot(s) => slot_value(*s, v, padding),
            Node::Text(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Slot(s) => match slot_value(*s, v, padding) {
                            Value::String(x) => out.push_str(&x),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            Node::Object(fields) => {
                let mut m = Map::with_capacity(fields.len());
                for (k, n) in fields {
                    m.insert(k.clone(), n.fill(v, padding));
                }
                Value::Object(m)
            }
            Node::Array(items) => Value::Array(items.iter().map(|n| n.fill(v, padding)).collect()),
        }
    }
}

fn slot_value(s: Slot, v: &Values<'_>, padding: &str) -> Value {
    match s {
        Slot::Token => Value::from(v.token),
        Slot::Probe => Value::from(v.probe),
        Slot::Lane => Value::from(v.lane),
        Slot::Seq => Value::from(v.seq),
        Slot::SentAt => Value::from(
            humantime::format_rfc3339_micros(
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(v.sent_unix_us),
            )
            .to_string(),
        ),
        Slot::EpochMs => Value::from(v.sent_unix_us / 1000),
        Slot::EpochUs => Value::from(v.sent_unix_us),
        Slot::Uuid => Value::from(uuid::Uuid::new_v4().to_string()),
        Slot::Padding => Value::from(padding),
    }
}
