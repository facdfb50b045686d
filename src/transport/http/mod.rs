//! HTTP: the injector POSTs (or PUTs) the canary to a URL with the token in
//! a header and an HMAC signature of the body; the catch side is chirp's own
//! receiver at `POST /hooks/{probe}`, which verifies the signature, records
//! the canary, and only then answers 2xx.

pub mod catch;
pub mod config;
pub mod inject;
pub mod own;
#[cfg(test)]
mod tests;

pub use catch::{router, Hooks};
pub use own::OwnCertificate;
