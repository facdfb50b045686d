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

/// Reads `tls: true | false | {ca_file, cert_file, key_file}`.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TlsConfig>, D::Error> {
    Ok(match super::de::switch_or::<TlsConfig, D>(d)? {
        super::de::SwitchOr::Switch(on) => on.then(TlsConfig::default),
        super::de::SwitchOr::Value(t) => Some(t),
    })
}
