//! chirp's own certificate, for the self-test loop when the listener speaks
//! TLS: the loop's client trusts exactly the certificate the listener
//! serves (whatever names it carries), and follows it when it is reloaded.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, RwLock};

/// The leaf certificate (DER) the listener serves now, and the one before
/// it (a handshake begun just before a reload still presents that one).
#[derive(Debug, Default)]
pub struct OwnCertificate(RwLock<[Vec<u8>; 2]>);

impl OwnCertificate {
    pub fn set(&self, der: &[u8]) {
        let mut leaves = self.0.write().unwrap_or_else(|p| p.into_inner());
        let current = std::mem::replace(&mut leaves[0], der.to_vec());
        leaves[1] = current;
    }

    fn is(&self, der: &[u8]) -> bool {
        !der.is_empty()
            && self
                .0
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|l| l == der)
    }
}

/// Accepts the listener's own certificate and nothing else.
#[derive(Debug)]
struct Pinned {
    own: Arc<OwnCertificate>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.own.is(end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts only `own`.
pub fn client_config(own: Arc<OwnCertificate>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { own, algorithms }))
        .with_no_client_auth())
}
