//! Mutual TLS between rug-lite and the appliances, from one CA (`[tls] ca_cert`, `ca_key`),
//! with the workspace's one CA implementation, `akanda-pki`:
//!
//! - each appliance gets a server certificate naming its management address (IP SAN) and its
//!   router (DNS SAN `<router id>.router.akanda`), issued before its server exists (both are
//!   known once its management port is) and carried in `user_data` with the CA;
//! - rug-lite presents a client certificate from the same CA (the agent accepts only those);
//! - rug-lite verifies exactly that identity: chain to the CA, the router's DNS name, and the
//!   address it connected to. A certificate of another router, or of this router at another
//!   address, is refused.
//!
//! **Lifetimes.** Nova admins can read a server's `user_data`, so server certificates are
//! short-lived: `[tls] server_cert_lifetime` (30 days by default, Octavia's
//! `cert_validity_time`). The agent client notes the end of validity of the certificate each
//! appliance presents; when less than `[tls] renew_before` (14 days, Octavia's
//! `cert_expiry_buffer`) is left, the reconciler pushes a new one (`PUT /v1/system/tls`), or
//! replaces the appliance if its agent lacks that API. rug-lite's own client certificate is
//! issued at each start, for a year (`akanda_pki::DEFAULT_CLIENT_DAYS`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use akanda_pki::{San, Validity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::cloud::{CertificateAuthority, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("issuing a certificate: {0}")]
    Issue(#[from] akanda_pki::PkiError),
    #[error("TLS client setup: {0}")]
    Setup(String),
}

/// The DNS name that identifies a router's appliance in its certificate.
pub(crate) use akanda_pki::router_dns_name;

/// Default server certificate lifetime (`[tls] server_cert_lifetime`).
pub(crate) const DEFAULT_SERVER_LIFETIME: Duration =
    Duration::from_secs(akanda_pki::DEFAULT_SERVER_DAYS as u64 * 86_400);
/// Default renewal margin (`[tls] renew_before`).
pub(crate) const DEFAULT_RENEW_BEFORE: Duration =
    Duration::from_secs(akanda_pki::ROTATE_BEFORE_DAYS as u64 * 86_400);

pub(crate) fn provider() -> Arc<CryptoProvider> {
    akanda_pki::tls::provider()
}

/// From an hour ago (clock skew between rug-lite and a fresh VM) for `lifetime`.
fn window(lifetime: Duration) -> Validity {
    let now = SystemTime::now();
    Validity::between(
        (now - Duration::from_secs(3600)).into(),
        (now + lifetime).into(),
    )
}

/// The CA loaded from `[tls]`.
pub(crate) struct Ca {
    inner: akanda_pki::Ca,
    server_lifetime: Duration,
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
        Ok(Ca {
            inner: akanda_pki::Ca::from_pem(cert_pem, key_pem)?,
            server_lifetime: DEFAULT_SERVER_LIFETIME,
        })
    }

    /// Server certificates issued from now on live this long.
    pub(crate) fn with_server_lifetime(mut self, lifetime: Duration) -> Ca {
        self.server_lifetime = lifetime;
        self
    }

    pub(crate) fn ca_cert_pem(&self) -> &str {
        self.inner.cert_pem()
    }

    /// An appliance's server certificate (`serverAuth`), for `server_lifetime`.
    pub(crate) fn issue_server(
        &self,
        router_id: &str,
        address: IpAddr,
    ) -> Result<TlsMaterial, TlsError> {
        let issued = self.inner.issue_server(
            &format!("akanda router {router_id}"),
            &[San::Dns(router_dns_name(router_id)), San::Ip(address)],
            window(self.server_lifetime),
        )?;
        Ok(TlsMaterial {
            ca_cert_pem: self.ca_cert_pem().to_string(),
            server_cert_pem: issued.cert_pem,
            server_key_pem: issued.key_pem,
        })
    }

    /// rug-lite's client certificate (`clientAuth`, CN `rug-lite`; issued at each start).
    pub(crate) fn issue_client(&self) -> Result<(String, String), TlsError> {
        let issued = self
            .inner
            .issue_client("rug-lite", Validity::days(akanda_pki::DEFAULT_CLIENT_DAYS))?;
        Ok((issued.cert_pem, issued.key_pem))
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
    /// When the client certificate stops being valid.
    pub(crate) not_after: SystemTime,
}

/// Issues a fresh client identity (rug-lite's certificate, renewed while it runs).
pub(crate) type IssueClient = Box<dyn Fn() -> Result<ClientIdentity, TlsError> + Send + Sync>;

impl ClientIdentity {
    pub(crate) fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let roots = akanda_pki::tls::root_store(ca_pem.as_bytes()).map_err(|e| setup(&e))?;
        let cert_chain = akanda_pki::tls::certificates(cert_pem.as_bytes())
            .map_err(|e| setup(&format!("client certificate: {e}")))?;
        akanda_pki::tls::private_key(key_pem.as_bytes()).map_err(|e| setup(&e))?;
        let leaf = &cert_chain[0];
        let not_after = akanda_pki::not_after_der(leaf).map_err(|e| setup(&e))?;
        Ok(ClientIdentity {
            roots: Arc::new(roots),
            cert_chain,
            key_pem: key_pem.to_string(),
            not_after: not_after.into(),
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
        let key = akanda_pki::tls::private_key(self.key_pem.as_bytes()).map_err(|e| setup(&e))?;
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

    /// A throw-away CA, as an operator would make one (`akanda-pki init`).
    pub(crate) fn test_ca() -> Ca {
        let (ca, key) = akanda_pki::Ca::generate("akanda test CA", Validity::days(1)).unwrap();
        Ca::from_pem(ca.cert_pem(), &key).unwrap()
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

        // What it names, and for how long.
        let info = &akanda_pki::describe(&m.server_cert_pem, "server").unwrap()[0];
        assert_eq!(
            info.sans,
            [
                "DNS:81a51c84-25a3-4180-8e1c-4d10e1aaebd3.router.akanda",
                "IP:fdca:3ba5:a17a:acda::d1"
            ]
        );
        assert_eq!(info.extended_key_usage, ["serverAuth"]);
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(info.days_left(now), akanda_pki::DEFAULT_SERVER_DAYS - 1);
        let short = test_ca().with_server_lifetime(Duration::from_secs(7200));
        let m = short
            .issue_server("r1", "10.0.0.1".parse().unwrap())
            .unwrap();
        let info = &akanda_pki::describe(&m.server_cert_pem, "server").unwrap()[0];
        let left = info.not_after - now;
        assert!(
            left > time::Duration::minutes(119) && left <= time::Duration::minutes(120),
            "{left}"
        );
        let (client, _) = short.issue_client().unwrap();
        let info = &akanda_pki::describe(&client, "client").unwrap()[0];
        assert_eq!(info.subject, "CN=rug-lite");
        assert_eq!(info.extended_key_usage, ["clientAuth"]);
    }
}
