//! TLS settings shared by broker connections and OTLP export: `tls: true`
//! (TLS with the system roots), `tls: false`, or the files to use.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl TlsConfig {
    /// `cert_file` and `key_file` go together.
    pub fn validate(&self, path: &str, p: &mut super::errors::Problems) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.add(path, "`cert_file` and `key_file` go together");
        }
    }
}

/// Reads `tls: true | false | {ca_file, cert_file, key_file}` (scalars arrive as strings).
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TlsConfig>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<TlsConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a mapping with ca_file, cert_file, key_file")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            match s {
                "true" => Ok(Some(TlsConfig::default())),
                "false" => Ok(None),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
            }
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            TlsConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}
