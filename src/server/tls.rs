//! TLS on chirp's listener: the certificate chain and key are read at start
//! (a bad pair stops `run`) and read again every few seconds; a changed pair
//! (the same on two reads in a row) that loads replaces the old one for new
//! connections, one that does not is logged once and the old one stays.

use crate::config::listen::ListenTls;
use crate::transport::http::OwnCertificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("listen.tls: {0}")]
pub struct TlsError(String);

/// The acceptor in use, and the file contents it was built from.
pub struct Tls {
    files: ListenTls,
    /// The leaf certificate served, for the self-test loop's client.
    own: Arc<OwnCertificate>,
    current: RwLock<(TlsAcceptor, Vec<u8>)>,
}

impl Tls {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub fn load(files: &ListenTls) -> Result<Arc<Tls>, TlsError> {
        let (pems, acceptor, leaf) = read(files)?;
        let own = Arc::new(OwnCertificate::default());
        own.set(&leaf);
        Ok(Arc::new(Tls {
            files: files.clone(),
            own,
            current: RwLock::new((acceptor, pems)),
        }))
    }

    pub fn own_certificate(&self) -> Arc<OwnCertificate> {
        Arc::clone(&self.own)
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the files again until `stop`; see the module's comment.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        // What was last said, so a problem is logged once, not every few seconds.
        enum Said {
            Nothing,
            Unreadable,
            Unusable(Vec<u8>),
        }
        let mut said = Said::Nothing;
        // A changed pair is loaded once two reads in a row agree, so a
        // reload never catches the certificate written and the key not yet.
        let mut seen: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let files = self.files.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || raw(&files)).await else {
                continue;
            };
            let pems = match read {
                Ok(p) => p,
                Err(e) => {
                    // A file being replaced may be missing for a moment.
                    if !matches!(said, Said::Unreadable) {
                        tracing::warn!(error = %e, "Cannot read the listener's TLS files; keeping the certificate in use.");
                        said = Said::Unreadable;
                    }
                    continue;
                }
            };
            if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == pems {
                said = Said::Nothing;
                seen = None;
                continue;
            }
            if seen.as_ref() != Some(&pems) {
                seen = Some(pems);
                continue;
            }
            match build(&self.files, &pems) {
                Ok((acceptor, leaf)) => {
                    // The loop's client first, so it trusts what new
                    // handshakes will present.
                    self.own.set(&leaf);
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = (acceptor, pems);
                    said = Said::Nothing;
                    tracing::info!("Loaded the listener's new TLS certificate.");
                }
                Err(e) => {
                    if !matches!(&said, Said::Unusable(p) if *p == pems) {
                        tracing::error!(error = %e, "The listener's new TLS certificate does not load; keeping the one in use.");
                        said = Said::Unusable(pems);
                    }
                }
            }
        }
    }
}

/// Both files, concatenated with a separator (compared to see a change).
fn raw(files: &ListenTls) -> Result<Vec<u8>, TlsError> {
    let mut out = Vec::new();
    for f in [&files.cert_file, &files.key_file] {
        let bytes = std::fs::read(f).map_err(|e| TlsError(format!("cannot read `{f}`: {e}")))?;
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

fn read(files: &ListenTls) -> Result<(Vec<u8>, TlsAcceptor, Vec<u8>), TlsError> {
    let pems = raw(files)?;
    let (acceptor, leaf) = build(files, &pems)?;
    Ok((pems, acceptor, leaf))
}

/// The acceptor, and the leaf certificate (DER).
fn build(files: &ListenTls, pems: &[u8]) -> Result<(TlsAcceptor, Vec<u8>), TlsError> {
    let split = |at: usize| -> Option<(&[u8], usize)> {
        let len = u64::from_le_bytes(pems.get(at..at + 8)?.try_into().ok()?) as usize;
        Some((pems.get(at + 8..at + 8 + len)?, at + 8 + len))
    };
    let (cert_pem, next) = split(0).ok_or_else(|| TlsError("unreadable".into()))?;
    let (key_pem, _) = split(next).ok_or_else(|| TlsError("unreadable".into()))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("`{}`: {e}", files.cert_file)))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "`{}` holds no PEM certificate",
            files.cert_file
        )));
    }
    // The key's own parse error could quote key material: say only where.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        TlsError(format!(
            "`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            files.key_file
        ))
    })?;
    let leaf = certs[0].as_ref().to_vec();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            TlsError(format!(
                "`{}` and `{}` do not make a usable pair: {e}",
                files.cert_file, files.key_file
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(cfg)), leaf))
}
