//! Loading PEM material into rustls, the same way for the agent (server), rug-lite (client)
//! and the tests and `akanda-image verify` (clients): certificates, a private key, a root
//! store, a client config. Errors never quote key material.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A PEM block that does not parse (the text of a certificate file, never of a key).
    #[error("{0}")]
    Certificate(String),
    #[error("no PEM certificate in the file")]
    NoCertificate,
    #[error("no PEM private key in the file")]
    NoKey,
    /// A certificate rustls refuses as a trust anchor.
    #[error("{0}")]
    TrustAnchor(String),
    #[error("TLS client config: {0}")]
    ClientConfig(String),
}

/// The one crypto provider of the workspace's TLS: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM text; at least one.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let list = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Certificate(e.to_string()))?;
    if list.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(list)
}

/// The private key in a PEM text. The parser's own error may quote the text: it is dropped.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| PemError::NoKey)
}

/// A root store of the certificates in a PEM text (at least one).
pub fn root_store(pem: &[u8]) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(pem)? {
        roots
            .add(c)
            .map_err(|e| PemError::TrustAnchor(e.to_string()))?;
    }
    Ok(roots)
}

/// A client config that trusts the CA in `ca_pem` and, given `(cert_pem, key_pem)`, presents
/// that certificate (mutual TLS). The server must name the host or address connected to.
pub fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Result<ClientConfig, PemError> {
    let config = |e: rustls::Error| PemError::ClientConfig(e.to_string());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(root_store(ca_pem.as_bytes())?);
    match client {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                certificates(cert_pem.as_bytes())?,
                private_key(key_pem.as_bytes())?,
            )
            .map_err(config),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, Validity};

    #[test]
    fn material_loads_and_errors_never_quote_a_key() {
        let (ca, ca_key) = Ca::generate("pem test CA", Validity::days(1)).unwrap();
        let client = ca.issue_client("client", Validity::days(1)).unwrap();
        assert_eq!(certificates(ca.cert_pem().as_bytes()).unwrap().len(), 1);
        assert!(private_key(ca_key.as_bytes()).is_ok());
        assert_eq!(root_store(ca.cert_pem().as_bytes()).unwrap().len(), 1);
        client_config(ca.cert_pem(), Some((&client.cert_pem, &client.key_pem))).unwrap();
        client_config(ca.cert_pem(), None).unwrap();

        assert!(matches!(
            certificates(b"nothing here"),
            Err(PemError::NoCertificate)
        ));
        let broken = ca_key.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n!!");
        let err = private_key(broken.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "no PEM private key in the file");
        // A key where the certificate belongs is no certificate.
        assert!(client_config(ca.cert_pem(), Some((&client.key_pem, &client.key_pem))).is_err());
    }
}
