//! Mutual TLS for the API: only the orchestrator can configure the appliance.
//!
//! - The server presents its certificate (`--tls-cert`/`--tls-key`, or the config drive's
//!   `user_data`, see `bootconfig`).
//! - Every client must present a certificate that chains to the client CA (`--client-ca`), is
//!   within its validity, and carries the `clientAuth` extended key usage **explicitly**:
//!   webpki alone would accept a certificate without any extended key usage extension, so
//!   [`ClientAuthOnly`] checks it on top. All of this happens in the handshake: a refused
//!   client never reaches HTTP.
//! - [`TlsState`] holds the current `ServerConfig`. [`TlsState::watch`] re-reads the three
//!   files on SIGHUP and when their contents change (checked every second); a new config
//!   applies to new connections only, so a rotation never touches a connection, or an apply,
//!   in flight. Material that does not load (a key that does not match its certificate, a
//!   half-written file) is refused and the previous config stays in force.
//! - [`Peer`] is the verified identity of a connection; the accept loop puts it in every
//!   request's extensions, where handlers read it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    akanda_pki::tls::provider()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Certificates in a PEM file; at least one.
fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    akanda_pki::tls::certificates(pem).map_err(|e| invalid(path, e))
}

/// Checks that PEM texts are a usable certificate, key and CA, without any file (the config
/// drive parser uses it). Never puts key material in an error.
pub(crate) fn check_pem(cert: &str, key: &str, ca: &str) -> Result<(), String> {
    certs(Path::new("server_cert"), cert.as_bytes()).map_err(|e| e.to_string())?;
    certs(Path::new("ca_cert"), ca.as_bytes()).map_err(|e| e.to_string())?;
    akanda_pki::tls::private_key(key.as_bytes())
        .map_err(|_| "server_key: no PEM private key".to_string())?;
    Ok(())
}

type Stamp = [u8; 32];

/// The SHA-256 of the files' contents: what [`TlsState::watch`] compares.
fn stamp(files: &TlsFiles) -> Option<Stamp> {
    let mut h = Sha256::new();
    for p in [&files.cert, &files.key, &files.client_ca] {
        h.update(std::fs::read(p).ok()?);
        h.update([0u8]);
    }
    Some(h.finalize().into())
}

/// What was loaded, for the log (never the key).
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) server_subject: String,
    pub(crate) server_sans: Vec<String>,
    pub(crate) server_not_after: String,
    pub(crate) server_sha256: String,
    pub(crate) client_ca_subjects: Vec<String>,
}

/// Builds the server config from the three files.
pub(crate) fn server_config(files: &TlsFiles) -> Result<(ServerConfig, Loaded), TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let ca_pem = read(&files.client_ca)?;
    build(files, &cert_pem, &key_pem, &ca_pem)
}

/// The server config from PEM texts; errors name `names`' paths (files, or field names).
fn build(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> Result<(ServerConfig, Loaded), TlsError> {
    let provider = provider();
    let chain = certs(&files.cert, cert_pem)?;
    // The parse error of a key file may quote it: never shown.
    let key = akanda_pki::tls::private_key(key_pem).map_err(|e| invalid(&files.key, e))?;
    let roots = akanda_pki::tls::root_store(ca_pem).map_err(|e| invalid(&files.client_ca, e))?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(&files.client_ca, e))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ClientAuthOnly { inner }))
        .with_single_cert(chain.clone(), key)
        .map_err(|e| {
            invalid(
                &files.key,
                format!("does not go with {}: {e}", files.cert.display()),
            )
        })?;
    let server = akanda_pki::describe(&String::from_utf8_lossy(cert_pem), "server")
        .map_err(|e| invalid(&files.cert, e))?
        .remove(0);
    let cas = akanda_pki::describe(&String::from_utf8_lossy(ca_pem), "client CA")
        .map_err(|e| invalid(&files.client_ca, e))?;
    let now = time::OffsetDateTime::now_utc();
    if now > server.not_after {
        tracing::error!(cert = %files.cert.display(), not_after = %server.not_after,
            "the server certificate has EXPIRED: clients will refuse it");
    } else if server.days_left(now) < akanda_pki::ROTATE_BEFORE_DAYS {
        tracing::warn!(cert = %files.cert.display(), days_left = server.days_left(now),
            "the server certificate expires soon: rotate it");
    }
    let loaded = Loaded {
        server_subject: server.subject,
        server_sans: server.sans,
        server_not_after: server.not_after.to_string(),
        server_sha256: hex::encode(Sha256::digest(chain[0].as_ref())),
        client_ca_subjects: cas.into_iter().map(|c| c.subject).collect(),
    };
    Ok((config, loaded))
}

/// The current server config, replaced whole on rotation.
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The stamp of what is loaded, and of the last material that failed (logged once).
    stamps: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    pub fn load(files: TlsFiles) -> Result<Arc<TlsState>, TlsError> {
        let before = stamp(&files);
        let (config, loaded) = server_config(&files)?;
        tracing::info!(
            cert = %files.cert.display(),
            subject = %loaded.server_subject,
            sans = ?loaded.server_sans,
            not_after = %loaded.server_not_after,
            sha256 = %loaded.server_sha256,
            client_ca = ?loaded.client_ca_subjects,
            "mutual TLS: clients must present a clientAuth certificate from the client CA"
        );
        Ok(Arc::new(TlsState {
            files,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new((before, None)),
        }))
    }

    /// The config for the next handshake.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Re-reads the files. `force` reloads even if the contents look unchanged (SIGHUP).
    /// On failure the config in force stays.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        {
            let stamps = self.stamps.lock().expect("tls stamps");
            if !force && (now == stamps.0 || now.is_none() || now == stamps.1) {
                return Ok(false);
            }
        }
        match server_config(&self.files) {
            Ok((config, loaded)) => {
                *self.current.write().expect("tls lock") = Arc::new(config);
                *self.stamps.lock().expect("tls stamps") = (now, None);
                tracing::info!(
                    subject = %loaded.server_subject,
                    sans = ?loaded.server_sans,
                    not_after = %loaded.server_not_after,
                    sha256 = %loaded.server_sha256,
                    client_ca = ?loaded.client_ca_subjects,
                    "TLS material reloaded: new connections use it"
                );
                Ok(true)
            }
            Err(e) => {
                self.stamps.lock().expect("tls stamps").1 = now;
                tracing::error!(error = %e, "TLS material not reloaded: the previous certificate, key and client CA stay in force");
                Err(e)
            }
        }
    }

    /// Replaces the material with new PEMs (`PUT /v1/system/tls`): checks them completely
    /// first (certificate and key belong together, the certificate is current, the CA
    /// parses), then writes the files (key first, each 0600, atomically) and reloads. `ca`
    /// `None` keeps the client CA. Errors name the field (`server_cert`, `server_key`,
    /// `ca_cert`) and never quote the key. Blocking (file I/O).
    pub(crate) fn replace(
        &self,
        cert: &str,
        key: &str,
        ca: Option<&str>,
    ) -> Result<Loaded, TlsError> {
        let fields = TlsFiles {
            cert: PathBuf::from("server_cert"),
            key: PathBuf::from("server_key"),
            client_ca: PathBuf::from("ca_cert"),
        };
        let ca_pem = match ca {
            Some(ca) => ca.as_bytes().to_vec(),
            None => read(&self.files.client_ca)?,
        };
        let (_, loaded) = build(&fields, cert.as_bytes(), key.as_bytes(), &ca_pem)?;
        let info = akanda_pki::describe(cert, "server_cert")
            .map_err(|e| invalid(&fields.cert, e))?
            .remove(0);
        let now = time::OffsetDateTime::now_utc();
        if now > info.not_after || now < info.not_before {
            return Err(invalid(
                &fields.cert,
                format!(
                    "not valid now (valid {} to {})",
                    info.not_before, info.not_after
                ),
            ));
        }
        let write = |path: &Path, bytes: &[u8]| {
            akanda_pki::write_private(path, bytes).map_err(|e| TlsError::Setup(e.to_string()))
        };
        write(&self.files.key, key.as_bytes())?;
        write(&self.files.cert, cert.as_bytes())?;
        if let Some(ca) = ca {
            write(&self.files.client_ca, ca.as_bytes())?;
        }
        self.reload(true)?;
        Ok(loaded)
    }

    /// Reloads on SIGHUP and when the files' contents change (checked every `poll`).
    pub fn watch(self: &Arc<Self>, poll: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: re-reading the TLS material");
                        true
                    }
                };
                let me = me.clone();
                // File reads and parsing: off the async workers.
                let _ = tokio::task::spawn_blocking(move || me.reload(force)).await;
            }
        });
    }
}

/// webpki's client verification (chain to the CA, validity, and `clientAuth` when the
/// certificate names usages), plus: the `clientAuth` usage must be present.
#[derive(Debug)]
struct ClientAuthOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

fn has_client_auth(der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => matches!(cert.extended_key_usage(), Ok(Some(e)) if e.value.client_auth),
        Err(_) => false,
    }
}

impl ClientCertVerifier for ClientAuthOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !has_client_auth(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose,
            ));
        }
        Ok(verified)
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

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) identity: Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A client certificate verified in the handshake.
    Certificate {
        subject: String,
        serial: String,
        /// SHA-256 of the certificate (DER), hex.
        sha256: String,
    },
    /// Plain HTTP: nobody is verified.
    PlainHttp,
}

impl Peer {
    /// The identity from the client's verified certificate chain.
    pub(crate) fn from_certificates(
        addr: SocketAddr,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Peer {
        let identity = match chain.and_then(|c| c.first()) {
            Some(der) => {
                use x509_parser::prelude::*;
                let (subject, serial) = match X509Certificate::from_der(der.as_ref()) {
                    Ok((_, c)) => (c.subject().to_string(), c.raw_serial_as_string()),
                    Err(_) => ("?".into(), "?".into()),
                };
                Identity::Certificate {
                    subject,
                    serial,
                    sha256: hex::encode(Sha256::digest(der.as_ref())),
                }
            }
            None => Identity::PlainHttp,
        };
        Peer { addr, identity }
    }

    pub(crate) fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            identity: Identity::PlainHttp,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Identity::Certificate {
                subject, sha256, ..
            } => write!(
                f,
                "{subject} (cert sha256 {:.16}) from {}",
                sha256, self.addr
            ),
            Identity::PlainHttp => write!(f, "unauthenticated plain HTTP from {}", self.addr),
        }
    }
}
