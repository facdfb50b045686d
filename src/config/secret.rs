//! A string that must never be printed: signing keys, passwords, tokens.
//! `Debug` and `Display` show `***`; the value is reachable only through
//! [`Secret::expose`], so every place that reads it is easy to audit.

use std::fmt;

/// A secret configuration value. Printing it, in any form, shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value is handed to a client or a MAC.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {s:#?}"), "*** *** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// A URL (or comma-separated URLs) that may embed credentials, as in
/// `nats://user:pass@host` or `https://hooks.example/x?token=…`. Printed with
/// the user information and the query replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn new(value: impl Into<String>) -> Self {
        Endpoint(value.into())
    }

    /// The full URL, for the client that connects to it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with credentials hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Hides everything before the last `@` (a password may hold `/`, `?` or
/// `#` unencoded, so the authority cannot be trusted to end at them) and the
/// query. A URL with `@` only in its path is hidden a little too much.
fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let (user, rest) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let rest = match rest.find('?') {
        Some(q) => format!("{}?***", &rest[..q]),
        None => rest.to_owned(),
    };
    format!("{scheme}{user}{rest}")
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Endpoint)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn hides_user_information_and_queries() {
        let e = Endpoint::new("nats://alice:pw@n1:4222,nats://n2:4222");
        assert_eq!(e.redacted(), "nats://***@n1:4222,nats://n2:4222");
        assert_eq!(format!("{e:?}"), "\"nats://***@n1:4222,nats://n2:4222\"");
        let h = Endpoint::new("https://hooks.example/in/x?token=s3cret&a=b");
        assert_eq!(h.to_string(), "https://hooks.example/in/x?***");
        assert_eq!(Endpoint::new("/hooks/self").to_string(), "/hooks/self");
        assert_eq!(h.expose(), "https://hooks.example/in/x?token=s3cret&a=b");
        for raw in [
            "nats://alice:p#ss@h:4222",
            "nats://alice:p/ss@h:4222",
            "nats://alice:p?ss@h",
        ] {
            let shown = Endpoint::new(raw).redacted();
            assert!(
                !shown.contains("ss@") && !shown.contains("alice"),
                "{shown}"
            );
            assert!(shown.starts_with("nats://***@h"), "{shown}");
        }
    }
}
