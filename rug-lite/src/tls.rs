//! Mutual TLS between rug-lite and the appliances, from one CA (`[tls] ca_cert`, `ca_key`):
//!
//! - each appliance gets a server certificate naming its management address (IP SAN) and its
//!   router (DNS SAN `<router id>.router.akanda`), issued before its server exists (both are
//!   known once its management port is) and carried in `user_data` with the CA;
//! - rug-lite presents a client certificate from the same CA (the agent accepts only those);
//! - rug-lite verifies exactly that identity: chain to the CA, the router's DNS name, and the
//!   address it connected to. A certificate of another router, or of this router at another
//!   address, is refused.
//!
//! Certificates keep rcgen's default validity; rotation comes with appliance replacement.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::cloud::{CertificateAuthority, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("issuing a certificate: {0}")]
    Issue(String),
    #[error("TLS client setup: {0}")]
    Setup(String),
}

/// The DNS name that identifies a router's appliance in its certificate.
pub(crate) fn router_dns_name(router_id: &str) -> String {
    format!("{}.router.akanda", router_id.to_ascii_lowercase())
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA loaded from `[tls]`.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
}

impl Ca {
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Ca, TlsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| TlsError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        Ca::from_pem(&cert_pem, &key_pem).map_err(|e| TlsError::File {
            path: format!("{} / {}", cert.display(), key.display()),
            reason: e.to_string(),
        })
    }

    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Issue(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| TlsError::Issue(e.to_string()))?;
        Ok(Ca {
            issuer,
            ca_cert_pem: cert_pem.to_string(),
        })
    }

    pub(crate) fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), TlsError> {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| TlsError::Issue(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| TlsError::Issue(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// An appliance's server certificate.
    pub(crate) fn issue_server(
        &self,
        router_id: &str,
        address: IpAddr,
    ) -> Result<TlsMaterial, TlsError> {
        let dns = router_dns_name(router_id)
            .try_into()
            .map_err(|e: rcgen::Error| TlsError::Issue(e.to_string()))?;
        let (cert, key) = self.issue(
            &format!("akanda router {router_id}"),
            vec![SanType::DnsName(dns), SanType::IpAddress(address)],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(TlsMaterial {
            ca_cert_pem: self.ca_cert_pem.clone(),
            server_cert_pem: cert,
            server_key_pem: key,
        })
    }

    /// rug-lite's client certificate (issued at each start).
    pub(crate) fn issue_client(&self) -> Result<(String, String), TlsError> {
        self.issue("rug-lite", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl CertificateAuthority for Ca {
    fn issue(&self, router_id: &str, address: IpAddr) -> Result<Option<TlsMaterial>, String> {
        self.issue_server(router_id, address)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Verifies an appliance: the CA's chain and the router's DNS name (the name the connection
/// uses), then the address connected to (the IP SAN).
#[derive(Debug)]
struct ApplianceIdentity {
    inner: Arc<WebPkiServerVerifier>,
    address: IpAddr,
}

impl ServerCertVerifier for ApplianceIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &ServerName::IpAddress(self.address.into()),
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the agent client needs to speak mutual TLS.
pub(crate) struct ClientIdentity {
    roots: Arc<rustls::RootCertStore>,
    cert_chain: Vec<CertificateDer<'static>>,
    key_pem: String,
}

impl ClientIdentity {
    pub(crate) fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| setup(&e))?)
                .map_err(|e| setup(&e))?;
        }
        let cert_chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(&e))?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| setup(&e))?;
        Ok(ClientIdentity {
            roots: Arc::new(roots),
            cert_chain,
            key_pem: key_pem.to_string(),
        })
    }

    /// A client config that accepts only the appliance of `router_id` at `address`.
    pub(crate) fn config_for(&self, address: IpAddr) -> Result<rustls::ClientConfig, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| setup(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| setup(&e))?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ApplianceIdentity { inner, address }))
            .with_client_auth_cert(self.cert_chain.clone(), key)
            .map_err(|e| setup(&e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A throw-away CA, as an operator would make one.
    pub(crate) fn test_ca() -> Ca {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "akanda test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn the_ca_loads_from_files_and_issues_named_certificates() {
        let ca = test_ca();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, ca.ca_cert_pem()).unwrap();
        // A CA key file that is not a key is reported with both paths.
        std::fs::write(&key, "not a key").unwrap();
        let err = Ca::load(&cert, &key).err().unwrap().to_string();
        assert!(err.contains("ca.key"), "{err}");
        assert!(Ca::load(&cert, &dir.path().join("absent")).is_err());

        let m = ca
            .issue_server(
                "81a51c84-25a3-4180-8e1c-4d10e1aaebd3",
                "fdca:3ba5:a17a:acda::d1".parse().unwrap(),
            )
            .unwrap();
        assert!(m.server_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.server_key_pem.contains("PRIVATE KEY"));
        assert_eq!(m.ca_cert_pem, ca.ca_cert_pem());
        // Two issues give two keys.
        let again = ca
            .issue_server(
                "81a51c84-25a3-4180-8e1c-4d10e1aaebd3",
                "fdca:3ba5:a17a:acda::d1".parse().unwrap(),
            )
            .unwrap();
        assert_ne!(m.server_key_pem, again.server_key_pem);
    }
}
