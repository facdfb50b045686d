//! Deserializers for values as `probes.yaml` writes them, and plain-language
//! rewrites of serde's messages. Scalars reach serde as strings (numbers and
//! booleans too, so `acks: 1` and `${SIZE}` read alike); the few typed fields
//! parse them here. A leaf: transports use it for their own settings.

use serde::de::{Deserialize, Deserializer, Error};
use std::str::FromStr;
use std::time::Duration;

fn parse_duration<E: Error>(s: &str) -> Result<Duration, E> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        E::custom(format!(
            "`{s}` is not a duration ({e}); write e.g. `250ms`, `1s`, `5m`"
        ))
    })
}

/// A required duration such as `250ms`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?)
}

/// An optional duration (use with `#[serde(default)]`).
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s))
        .transpose()
}

/// An optional number or boolean written as a scalar.
pub fn opt_parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
{
    Option::<String>::deserialize(d)?
        .map(|s| {
            s.trim().parse().map_err(|_| {
                D::Error::custom(format!(
                    "expected {}, found `{s}`",
                    std::any::type_name::<T>()
                        .replace("u64", "a whole number")
                        .replace("f64", "a number")
                        .replace("bool", "true or false")
                ))
            })
        })
        .transpose()
}

/// `true` or `false`, default false (use with `#[serde(default)]`).
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    opt_parsed(d).map(|b| b.unwrap_or(false))
}

/// An objective in percent, written with `%`: `99.9%`. A bare number is an
/// error that shows both readings, since `0.999` and `99.9` are both common
/// ways to mean 99.9 %, and guessing wrong makes an alert that never fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let Some(number) = t.strip_suffix('%') else {
            return Err(D::Error::custom(match t.parse::<f64>() {
                Ok(x) if x > 0.0 && x < 1.0 => format!(
                    "`{t}` needs a `%`: write `{}%` for a ratio of {t}, or `{t}%` if you mean {t} percent",
                    trim_float(x * 100.0)
                ),
                Ok(_) => format!("`{t}` needs a `%`: write `{t}%`"),
                Err(_) => format!("expected a percentage like `99.9%`, found `{t}`"),
            }));
        };
        match number.trim().parse::<f64>() {
            Ok(x) if x > 0.0 && x < 100.0 => Ok(Percent(x)),
            Ok(_) => Err(D::Error::custom(format!(
                "objective `{t}` must be strictly between 0% and 100%"
            ))),
            Err(_) => Err(D::Error::custom(format!(
                "expected a percentage like `99.9%`, found `{t}`"
            ))),
        }
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `key: true | false`, or `key: {…}` (its settings, which mean on).
pub enum SwitchOr<T> {
    Switch(bool),
    Value(T),
}

pub fn switch_or<'de, T, D>(d: D) -> Result<SwitchOr<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = SwitchOr<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false or a mapping")
        }
        fn visit_str<E: Error>(self, s: &str) -> Result<Self::Value, E> {
            match s {
                "true" => Ok(SwitchOr::Switch(true)),
                "false" => Ok(SwitchOr::Switch(false)),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
            }
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(SwitchOr::Value)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// serde's message, said the way the rest of chirp says things. Returns the
/// message and, for a missing field, the field's name (it belongs in the path).
pub fn friendly(message: &str) -> (String, Option<String>) {
    let quoted =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = quoted(rest).into_iter().next();
        return ("is required".to_owned(), name);
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let words = quoted(rest);
        let (key, allowed) = words
            .split_first()
            .map_or(("?", &[][..]), |(k, a)| (k.as_str(), a));
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let text = match super::errors::did_you_mean(key, &allowed) {
            Some(best) => format!("unknown key `{key}`; did you mean `{best}`?"),
            None if allowed.is_empty() => format!("unknown key `{key}`"),
            None => format!(
                "unknown key `{key}`; expected one of: {}",
                allowed.join(", ")
            ),
        };
        return (text, None);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let words = quoted(rest);
        let (value, allowed) = words
            .split_first()
            .map_or(("?", &[][..]), |(k, a)| (k.as_str(), a));
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let hint = super::errors::hint(value, &allowed);
        let text = format!(
            "unknown value `{value}` (one of: {}){hint}",
            allowed.join(", ")
        );
        return (text, None);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return (
                format!("expected {}, found {}", kind(expected), kind(found)),
                None,
            );
        }
    }
    (message.to_owned(), None)
}

/// serde's names for kinds of values, as people say them (never quoting a
/// string, which may be a secret in the wrong place).
fn kind(serde: &str) -> String {
    let s = serde.trim();
    if s.starts_with("string ") || s == "a string" {
        "a string".into()
    } else if s.starts_with("struct ") || s == "a map" || s == "map" {
        "a mapping".into()
    } else if s.contains("sequence") {
        "a list".into()
    } else if s == "unit value" {
        "nothing".into()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percent(s: &str) -> Result<f64, String> {
        let v = serde_yaml::Value::String(s.to_owned());
        Percent::deserialize(v)
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn objectives_need_a_percent_sign_and_bare_numbers_show_both_readings() {
        assert_eq!(percent("99.9%"), Ok(99.9));
        assert_eq!(percent(" 99 % "), Ok(99.0));
        let e = percent("0.999").unwrap_err();
        assert!(e.contains("`0.999` needs a `%`: write `99.9%` for a ratio of 0.999, or `0.999%` if you mean 0.999 percent"), "{e}");
        let e = percent("99.9").unwrap_err();
        assert!(e.contains("`99.9` needs a `%`: write `99.9%`"), "{e}");
        assert!(percent("100%").unwrap_err().contains("strictly between"));
        assert!(percent("0%").unwrap_err().contains("strictly between"));
        assert!(percent("high")
            .unwrap_err()
            .contains("expected a percentage"));
    }

    #[test]
    fn serde_messages_are_rewritten() {
        assert_eq!(
            friendly("unknown field `intervall`, expected one of `name`, `interval`"),
            (
                "unknown key `intervall`; did you mean `interval`?".to_owned(),
                None
            )
        );
        assert_eq!(
            friendly("missing field `subject`"),
            ("is required".to_owned(), Some("subject".to_owned()))
        );
        assert_eq!(
            friendly("unknown variant `grcp`, expected `grpc` or `http/protobuf`").0,
            "unknown value `grcp` (one of: grpc, http/protobuf); did you mean `grpc`?"
        );
    }
}
