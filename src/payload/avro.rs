//! Avro datums from a rendered template, guided by the schema: each JSON
//! value is turned into the Avro value its field's type asks for, so a
//! mismatch names the field (`user.id: expected a long, got "x"`), a key the
//! record does not have is an error rather than silently dropped, and a
//! missing field takes its default. With a schema id the datum is framed in
//! the Confluent wire format (byte 0, the id as 4 big-endian bytes).

use apache_avro::schema::{Name, NamesRef, NamespaceRef, ResolvedSchema, Schema};
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;
use std::collections::HashMap;

pub struct Encoder {
    schema: Schema,
    frame: Option<u32>,
}

impl Encoder {
    pub fn new(schema_text: &str, schema_id: Option<u32>) -> Result<Encoder, String> {
        let schema =
            Schema::parse_str(schema_text).map_err(|e| format!("not an Avro schema: {e}"))?;
        ResolvedSchema::try_from(&schema)
            .map_err(|e| format!("the Avro schema does not resolve: {e}"))?;
        Ok(Encoder {
            schema,
            frame: schema_id,
        })
    }

    /// The datum (framed with the schema id, if any); errors name the field.
    pub fn encode(&self, doc: &Json) -> Result<Vec<u8>, String> {
        let root = &self.schema;
        let resolved = ResolvedSchema::try_from(root).map_err(|e| e.to_string())?;
        let value = to_avro(doc, root, resolved.get_names(), None, "")?;
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(root)
            .build()
            .map_err(|e| e.to_string())?;
        let datum = writer
            .write_value_to_vec(value)
            .map_err(|e| format!("the record does not encode: {e}"))?;
        Ok(match self.frame {
            Some(id) => {
                let mut out = Vec::with_capacity(5 + datum.len());
                out.push(0);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&datum);
                out
            }
            None => datum,
        })
    }
}

fn got(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("the boolean {b}"),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the string {:?}", truncate(s)),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_owned()
    }
}

fn wrong(path: &str, want: &str, v: &Json) -> String {
    let field = if path.is_empty() {
        "the document".to_owned()
    } else {
        format!("field `{path}`")
    };
    format!("{field}: expected {want}, got {}", got(v))
}

/// The name a union branch is tagged with in Avro's JSON encoding.
fn type_names(s: &Schema) -> Vec<String> {
    let named = |n: &Name| vec![n.fullname(None), n.name().to_owned()];
    match s {
        Schema::Null => vec!["null".into()],
        Schema::Boolean => vec!["boolean".into()],
        Schema::Int => vec!["int".into()],
        Schema::Long => vec!["long".into()],
        Schema::Float => vec!["float".into()],
        Schema::Double => vec!["double".into()],
        Schema::Bytes => vec!["bytes".into()],
        Schema::String => vec!["string".into()],
        Schema::Array(_) => vec!["array".into()],
        Schema::Map(_) => vec!["map".into()],
        Schema::Record(r) => named(&r.name),
        Schema::Enum(e) => named(&e.name),
        Schema::Fixed(f) => named(&f.name),
        Schema::Ref { name } => named(name),
        Schema::Uuid(_) => vec!["string".into()],
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos
        | Schema::TimeMicros => vec!["long".into()],
        Schema::Date | Schema::TimeMillis => vec!["int".into()],
        _ => Vec::new(),
    }
}

/// RFC 3339 text as units since the epoch (`per_s` units a second).
fn rfc3339(s: &str, per_s: u128) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos() * per_s / 1_000_000_000).ok()
}

fn to_avro(
    v: &Json,
    s: &Schema,
    names: &NamesRef<'_>,
    ns: NamespaceRef<'_>,
    path: &str,
) -> Result<Avro, String> {
    let int = |want: &str| v.as_i64().ok_or_else(|| wrong(path, want, v));
    let time = |per_s: u128, want: &str| match v {
        Json::String(t) => rfc3339(t, per_s).ok_or_else(|| wrong(path, want, v)),
        _ => int(want),
    };
    Ok(match s {
        Schema::Null => match v {
            Json::Null => Avro::Null,
            _ => return Err(wrong(path, "null", v)),
        },
        Schema::Boolean => Avro::Boolean(v.as_bool().ok_or_else(|| wrong(path, "a boolean", v))?),
        Schema::Int => Avro::Int(
            i32::try_from(int("an int")?).map_err(|_| wrong(path, "an int (32 bits)", v))?,
        ),
        Schema::Long => Avro::Long(int("a long")?),
        Schema::Float => Avro::Float(v.as_f64().ok_or_else(|| wrong(path, "a float", v))? as f32),
        Schema::Double => Avro::Double(v.as_f64().ok_or_else(|| wrong(path, "a double", v))?),
        Schema::String => match v {
            Json::String(t) => Avro::String(t.clone()),
            // `"{{seq}}"` in a string field: its decimal text.
            Json::Number(n) if n.is_i64() || n.is_u64() => Avro::String(n.to_string()),
            _ => return Err(wrong(path, "a string", v)),
        },
        Schema::Bytes => match v {
            Json::String(t) => Avro::Bytes(t.as_bytes().to_vec()),
            _ => return Err(wrong(path, "bytes (a string)", v)),
        },
        Schema::Uuid(_) => match v.as_str().map(uuid::Uuid::parse_str) {
            Some(Ok(u)) => Avro::Uuid(u),
            _ => return Err(wrong(path, "a UUID", v)),
        },
        Schema::Enum(e) => match v
            .as_str()
            .and_then(|t| e.symbols.iter().position(|x| x == t))
        {
            Some(i) => Avro::Enum(i as u32, e.symbols[i].clone()),
            None => {
                return Err(wrong(
                    path,
                    &format!("one of the symbols {}", e.symbols.join(", ")),
                    v,
                ))
            }
        },
        Schema::Fixed(f) => match v.as_str() {
            Some(t) if t.len() == f.size => Avro::Fixed(f.size, t.as_bytes().to_vec()),
            _ => {
                return Err(wrong(
                    path,
                    &format!("a string of exactly {} bytes", f.size),
                    v,
                ))
            }
        },
        Schema::Date => Avro::Date(
            i32::try_from(int("a date (days since the epoch)")?)
                .map_err(|_| wrong(path, "a date", v))?,
        ),
        Schema::TimeMillis => Avro::TimeMillis(
            i32::try_from(int("a time of day in ms")?).map_err(|_| wrong(path, "a time", v))?,
        ),
        Schema::TimeMicros => Avro::TimeMicros(int("a time of day in µs")?),
        Schema::TimestampMillis => Avro::TimestampMillis(time(1_000, "a timestamp (ms)")?),
        Schema::TimestampMicros => Avro::TimestampMicros(time(1_000_000, "a timestamp (µs)")?),
        Schema::TimestampNanos => Avro::TimestampNanos(time(1_000_000_000, "a timestamp (ns)")?),
        Schema::LocalTimestampMillis => {
            Avro::LocalTimestampMillis(time(1_000, "a timestamp (ms)")?)
        }
        Schema::LocalTimestampMicros => {
            Avro::LocalTimestampMicros(time(1_000_000, "a timestamp (µs)")?)
        }
        Schema::LocalTimestampNanos => {
            Avro::LocalTimestampNanos(time(1_000_000_000, "a timestamp (ns)")?)
        }
        Schema::Array(a) => match v {
            Json::Array(items) => Avro::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| to_avro(x, &a.items, names, ns, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(wrong(path, "an array", v)),
        },
        Schema::Map(m) => match v {
            Json::Object(o) => Avro::Map(
                o.iter()
                    .map(|(k, x)| {
                        Ok((
                            k.clone(),
                            to_avro(x, &m.types, names, ns, &super::template::join(path, k))?,
                        ))
                    })
                    .collect::<Result<HashMap<_, _>, String>>()?,
            ),
            _ => return Err(wrong(path, "an object (a map)", v)),
        },
        Schema::Union(u) => {
            let branches = u.variants();
            // Avro's JSON encoding: {"type name": value} picks the branch.
            if let Json::Object(o) = v {
                if o.len() == 1 {
                    if let Some((tag, inner)) = o.iter().next() {
                        if let Some(i) = branches.iter().position(|b| type_names(b).contains(tag)) {
                            let x = to_avro(inner, &branches[i], names, ns, path)?;
                            return Ok(Avro::Union(i as u32, Box::new(x)));
                        }
                    }
                }
            }
            let mut errors = Vec::new();
            for (i, b) in branches.iter().enumerate() {
                match to_avro(v, b, names, ns, path) {
                    Ok(x) => return Ok(Avro::Union(i as u32, Box::new(x))),
                    Err(e) => errors.push((b, e)),
                }
            }
            // One branch besides null (an optional field): its own error.
            let mut others = errors
                .into_iter()
                .filter(|(b, _)| !matches!(b, Schema::Null));
            return Err(match (others.next(), others.next()) {
                (Some((_, e)), None) => e,
                _ => {
                    let kinds: Vec<String> = branches
                        .iter()
                        .filter_map(|b| type_names(b).into_iter().next())
                        .collect();
                    wrong(
                        path,
                        &format!("one of the union's types ({})", kinds.join(", ")),
                        v,
                    )
                }
            });
        }
        Schema::Record(r) => {
            let Json::Object(o) = v else {
                return Err(wrong(
                    path,
                    &format!("an object (record `{}`)", r.name.name()),
                    v,
                ));
            };
            let inner_ns = r.name.namespace().or(ns);
            if let Some(k) = o.keys().find(|k| !r.fields.iter().any(|f| &f.name == *k)) {
                return Err(format!(
                    "field `{}`: record `{}` has no such field (its fields: {})",
                    super::template::join(path, k),
                    r.name.name(),
                    r.fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let at = super::template::join(path, &f.name);
                let value = match (o.get(&f.name), &f.default) {
                    (Some(x), _) => to_avro(x, &f.schema, names, inner_ns, &at)?,
                    // A union's default is of its first branch.
                    (None, Some(d)) => match &f.schema {
                        Schema::Union(u) if !u.variants().is_empty() => Avro::Union(
                            0,
                            Box::new(to_avro(d, &u.variants()[0], names, inner_ns, &at)?),
                        ),
                        other => to_avro(d, other, names, inner_ns, &at)?,
                    },
                    (None, None) => {
                        return Err(format!(
                            "field `{at}`: missing, and the schema gives it no default"
                        ))
                    }
                };
                fields.push((f.name.clone(), value));
            }
            Avro::Record(fields)
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(ns);
            let target = names.get(full.as_ref()).ok_or_else(|| {
                format!(
                    "field `{path}`: the schema names `{}`, which it does not define",
                    full.name()
                )
            })?;
            to_avro(v, target, names, full.namespace(), path)?
        }
        other => {
            return Err(format!(
                "field `{path}`: templates do not fill Avro {:?} fields",
                type_names(other)
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "decimal/duration".into())
            ))
        }
    })
}

/// The datum of a record `enc` made, for tests: (schema id, value).
#[cfg(test)]
pub fn decode(enc: &Encoder, bytes: &[u8]) -> apache_avro::AvroResult<(Option<u32>, Avro)> {
    let (id, mut body) = match (enc.frame, bytes) {
        (Some(_), [_, a, b, c, d, rest @ ..]) => (Some(u32::from_be_bytes([*a, *b, *c, *d])), rest),
        _ => (None, bytes),
    };
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&enc.schema).build()?;
    Ok((id, reader.read_value(&mut body)?))
}
