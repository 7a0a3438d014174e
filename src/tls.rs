//! TLS for the proxy's own listener: certificate chain and key from PEM files, ALPN h2 + http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::Error;

pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, Error> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", cert_file.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("parsing {}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(Error::Internal(format!(
            "{} holds no certificate",
            cert_file.display()
        )));
    }
    // The error is about the file, never its content: a key must not reach a log.
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|_| {
        Error::Internal(format!(
            "{} holds no usable private key",
            key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Internal(format!("TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
