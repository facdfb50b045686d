//! Reads typed values out of a parsed YAML tree while collecting every error
//! with its path, instead of stopping at the first one. Unknown keys are
//! reported with a "did you mean" suggestion.

use super::secret::Secret;
use serde_yaml::{Mapping, Value};
use std::time::Duration;

/// One problem in the configuration, with the place it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted path, e.g. `probes[2].inject.nats.subject`; empty for the whole file.
    pub path: String,
    pub message: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some((line, col)) = self.location {
            write!(f, " (line {line}, column {col})")?;
        }
        Ok(())
    }
}

/// Collects errors while reading.
#[derive(Default)]
pub struct Reader {
    pub errors: Vec<ConfigError>,
}

/// The fields of one YAML mapping, checked against the keys it may have.
pub struct Fields<'v> {
    map: Option<&'v Mapping>,
    pub path: String,
}

pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            message: message.into(),
            location: None,
        });
    }

    /// Opens `value` as a mapping whose keys must be among `allowed`. A null
    /// value is an empty mapping (so `http: {}` and `http:` mean the same).
    pub fn fields<'v>(&mut self, value: &'v Value, path: &str, allowed: &[&str]) -> Fields<'v> {
        let map = match value {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                self.error(path, format!("expected a mapping, found {}", kind(other)));
                None
            }
        };
        if let Some(m) = map {
            for key in m.keys() {
                match key.as_str() {
                    Some(k) if allowed.contains(&k) => {}
                    Some(k) => {
                        let message = unknown_key_message(k, allowed);
                        self.error(&child(path, k), message);
                    }
                    None => self.error(path, format!("keys must be strings, found {}", kind(key))),
                }
            }
        }
        Fields {
            map,
            path: path.to_owned(),
        }
    }

    pub fn string(&mut self, f: &Fields, key: &str) -> Option<String> {
        let v = f.get(key)?;
        let path = child(&f.path, key);
        self.string_value(v, &path)
    }

    pub fn string_value(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    pub fn required_string(&mut self, f: &Fields, key: &str) -> Option<String> {
        if f.get(key).is_none() {
            self.error(&child(&f.path, key), "is required");
            return None;
        }
        self.string(f, key)
    }

    /// A secret string. Errors never quote the value.
    pub fn secret(&mut self, f: &Fields, key: &str) -> Option<Secret> {
        let v = f.get(key)?;
        match v {
            Value::String(s) => Some(Secret::new(s.clone())),
            Value::Number(n) => Some(Secret::new(n.to_string())),
            other => {
                self.error(
                    &child(&f.path, key),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub fn duration(&mut self, f: &Fields, key: &str) -> Option<Duration> {
        let s = self.string(f, key)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &child(&f.path, key),
                    format!("`{s}` is not a duration ({e}); write e.g. `250ms`, `1s`, `5m`"),
                );
                None
            }
        }
    }

    pub fn u64(&mut self, f: &Fields, key: &str) -> Option<u64> {
        let v = f.get(key)?;
        let parsed = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                &child(&f.path, key),
                format!("expected a whole number, found {}", describe(v)),
            );
        }
        parsed
    }

    pub fn bool(&mut self, f: &Fields, key: &str) -> Option<bool> {
        let v = f.get(key)?;
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                &child(&f.path, key),
                format!("expected true or false, found {}", describe(v)),
            );
        }
        parsed
    }

    /// A percentage: `99.9%` or `99.9`, strictly between 0 and 100.
    pub fn percent(&mut self, f: &Fields, key: &str) -> Option<f64> {
        let v = f.get(key)?;
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().trim_end_matches('%').trim().parse::<f64>().ok(),
            _ => None,
        };
        let path = child(&f.path, key);
        match parsed {
            Some(p) if p > 0.0 && p < 100.0 => Some(p),
            Some(_) => {
                self.error(
                    &path,
                    format!(
                        "objective {} must be strictly between 0% and 100%",
                        describe(v)
                    ),
                );
                None
            }
            None => {
                self.error(
                    &path,
                    format!("expected a percentage like `99.9%`, found {}", describe(v)),
                );
                None
            }
        }
    }

    /// A mapping of string to string (headers and the like).
    pub fn string_map(&mut self, f: &Fields, key: &str) -> Vec<(String, String)> {
        let Some(v) = f.get(key) else {
            return Vec::new();
        };
        let path = child(&f.path, key);
        let Value::Mapping(m) = v else {
            self.error(&path, format!("expected a mapping, found {}", kind(v)));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, val) in m {
            let Some(k) = k.as_str() else {
                self.error(&path, "keys must be strings");
                continue;
            };
            if let Some(s) = self.string_value(val, &child(&path, k)) {
                out.push((k.to_owned(), s));
            }
        }
        out
    }
}

impl<'v> Fields<'v> {
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }
}

/// `unknown key "subjcet"; did you mean "subject"?`, or the list of keys when nothing is close.
pub fn unknown_key_message(key: &str, allowed: &[&str]) -> String {
    match did_you_mean(key, allowed) {
        Some(best) => format!("unknown key `{key}`; did you mean `{best}`?"),
        None => format!(
            "unknown key `{key}`; expected one of: {}",
            allowed.join(", ")
        ),
    }
}

pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            did_you_mean("subjcet", &["connection", "subject"]),
            Some("subject")
        );
        assert_eq!(
            did_you_mean("intervall", &["interval", "deadline"]),
            Some("interval")
        );
        assert_eq!(did_you_mean("zzz", &["interval", "deadline"]), None);
    }
}
