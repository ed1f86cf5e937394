//! akanda-pki: the certificates of Akanda's mutual TLS, built on rcgen.
//!
//! One CA (the operator's, or the orchestrator's) signs:
//! - a **server certificate per appliance**, naming it (its management address as an IP SAN,
//!   its router as the DNS SAN `<router id>.router.akanda`), with the `serverAuth` usage only;
//! - **client certificates** for the orchestrator (rug-lite) and operators, with the
//!   `clientAuth` usage only. The agent accepts only clients whose certificate chains to the CA
//!   and carries `clientAuth`.
//!
//! Default lifetimes follow Octavia's practice (`[certificates] cert_validity_time` 30 days,
//! rotated by housekeeping when fewer than `cert_expiry_buffer` = 14 days are left): see
//! [`DEFAULT_SERVER_DAYS`], [`ROTATE_BEFORE_DAYS`], [`DEFAULT_CLIENT_DAYS`], [`DEFAULT_CA_DAYS`].
//!
//! Private keys are written with [`write_private`] (mode 0600, atomically). [`tls`] loads PEM
//! material into rustls (certificates, keys, root stores, client configs) for every user.

pub mod tls;

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A CA lives ten years: replacing it means re-issuing every certificate.
pub const DEFAULT_CA_DAYS: i64 = 3650;
/// Appliance server certificates: 30 days, as Octavia's amphora certificates.
pub const DEFAULT_SERVER_DAYS: i64 = 30;
/// Rotate a server certificate when fewer days than this are left (Octavia's
/// `cert_expiry_buffer`, 14 days).
pub const ROTATE_BEFORE_DAYS: i64 = 14;
/// Orchestrator and operator client certificates: one year.
pub const DEFAULT_CLIENT_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: {reason}")]
    Rcgen { what: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a PEM certificate")]
    NotPem(String),
    #[error("{0}: cannot parse the certificate: {1}")]
    Parse(String, String),
    #[error("{0:?} is neither an IP address nor a DNS name")]
    BadSan(String),
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Rcgen {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// The DNS name that identifies a router's appliance (the same as rug-lite's).
pub fn router_dns_name(router_id: &str) -> String {
    format!("{}.router.akanda", router_id.to_ascii_lowercase())
}

/// A validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew between the CA and the appliance) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// An explicit window, e.g. one in the past (tests of expired certificates).
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Validity {
        Validity {
            not_before,
            not_after,
        }
    }
}

/// A subject alternative name: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl std::str::FromStr for San {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<San, PkiError> {
        let s = s.trim();
        if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
            });
        if ok {
            Ok(San::Dns(s.to_ascii_lowercase()))
        } else {
            Err(PkiError::BadSan(s.to_string()))
        }
    }
}

/// What a certificate may be used for (its extended key usages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
}

impl Usage {
    fn rcgen(self) -> ExtendedKeyUsagePurpose {
        match self {
            Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    // Never print a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that can sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA; returns it and its key (PEM).
    pub fn generate(common_name: &str, validity: Validity) -> Result<(Ca, String), PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-signing the CA"))?;
        let key_pem = key.serialize_pem();
        Ok((
            Ca {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// A CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rcgen_err("the CA certificate"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// A CA from `DIR/ca.pem` and `DIR/ca.key` (what `akanda-pki init` writes).
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert = read(&dir.join(CA_CERT))?;
        let key = read(&dir.join(CA_KEY))?;
        Ca::from_pem(&cert, &key)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `common_name` with these SANs and extended key usages (none: no
    /// extended key usage extension at all).
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[San],
        usages: &[Usage],
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s {
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                San::Dns(d) => d
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(rcgen_err("a DNS name")),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.iter().map(|u| u.rcgen()).collect();
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("signing"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An appliance's server certificate (`serverAuth` only).
    pub fn issue_server(
        &self,
        name: &str,
        sans: &[San],
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        self.issue(name, sans, &[Usage::ServerAuth], validity)
    }

    /// A client certificate (`clientAuth` only).
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<Issued, PkiError> {
        self.issue(name, &[], &[Usage::ClientAuth], validity)
    }
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(d) = dir {
        if let Ok(d) = std::fs::File::open(d) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes a private key (or any secret): mode 0600 from its creation, atomically (temp file,
/// fsync, rename), so no other user can ever read it, even half-written.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_mode(path, contents, 0o600)
}

/// Writes a certificate (public): mode 0644, atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_mode(path, contents, 0o644)
}

/// What `akanda-pki show` prints about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub(crate) issuer: String,
    pub(crate) serial: String,
    pub sans: Vec<String>,
    pub(crate) is_ca: bool,
    pub(crate) key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertInfo {
    /// Days of validity left at `now` (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = OffsetDateTime::now_utc();
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "subject:   {}", self.subject)?;
        writeln!(f, "issuer:    {}", self.issuer)?;
        writeln!(f, "serial:    {}", self.serial)?;
        writeln!(f, "CA:        {}", if self.is_ca { "yes" } else { "no" })?;
        writeln!(f, "SANs:      {}", list(&self.sans))?;
        writeln!(f, "usage:     {}", list(&self.key_usage))?;
        writeln!(f, "ext usage: {}", list(&self.extended_key_usage))?;
        writeln!(f, "valid:     {} to {}", self.not_before, self.not_after)?;
        let left = self.days_left(now);
        let state = if now < self.not_before {
            "not yet valid".to_string()
        } else if now > self.not_after {
            format!("EXPIRED {} days ago", -left)
        } else if !self.is_ca && left < ROTATE_BEFORE_DAYS {
            format!("{left} days left: rotate now (< {ROTATE_BEFORE_DAYS})")
        } else {
            format!("{left} days left")
        };
        write!(f, "expiry:    {state}")
    }
}

/// Every certificate in a PEM text, described.
pub fn describe(pem_text: &str, source: &str) -> Result<Vec<CertInfo>, PkiError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::*;
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(pem_text.as_bytes()) {
        let pem = pem.map_err(|e| PkiError::Parse(source.into(), e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let (_, cert) = X509Certificate::from_der(&pem.contents)
            .map_err(|e| PkiError::Parse(source.into(), e.to_string()))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                sans.push(match name {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                        16 => format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                        _ => format!("IP:{b:?}"),
                    },
                    other => format!("{other}"),
                });
            }
        }
        let mut key_usage = Vec::new();
        if let Ok(Some(ku)) = cert.key_usage() {
            let ku = ku.value;
            for (set, name) in [
                (ku.digital_signature(), "digitalSignature"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
            ] {
                if set {
                    key_usage.push(name.to_string());
                }
            }
        }
        let mut extended_key_usage = Vec::new();
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            let e = eku.value;
            for (set, name) in [
                (e.server_auth, "serverAuth"),
                (e.client_auth, "clientAuth"),
                (e.code_signing, "codeSigning"),
                (e.any, "any"),
            ] {
                if set {
                    extended_key_usage.push(name.to_string());
                }
            }
        }
        out.push(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            sans,
            is_ca: cert.is_ca(),
            key_usage,
            extended_key_usage,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        });
    }
    if out.is_empty() {
        return Err(PkiError::NotPem(source.into()));
    }
    Ok(out)
}

/// The end of a DER certificate's validity (e.g. the certificate a peer presented in a TLS
/// handshake), to re-issue it before it expires.
pub fn not_after_der(der: &[u8]) -> Result<OffsetDateTime, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Parse("DER certificate".into(), e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_named_server_and_client_certificates() {
        let (ca, key) = Ca::generate("test CA", Validity::days(10)).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &key).unwrap();
        let sans: Vec<San> = ["fdca:3ba5:a17a:acda::5", "r1.router.akanda"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let server = again
            .issue_server(
                "akanda router r1",
                &sans,
                Validity::days(DEFAULT_SERVER_DAYS),
            )
            .unwrap();
        let info = &describe(&server.cert_pem, "server").unwrap()[0];
        assert_eq!(info.subject, "CN=akanda router r1");
        assert_eq!(info.issuer, "CN=test CA");
        assert_eq!(
            info.sans,
            ["IP:fdca:3ba5:a17a:acda::5", "DNS:r1.router.akanda"]
        );
        assert_eq!(info.extended_key_usage, ["serverAuth"]);
        assert!(!info.is_ca);
        let left = info.days_left(OffsetDateTime::now_utc());
        assert!((29..=30).contains(&left), "{left}");
        let client = ca
            .issue_client("rug-lite", Validity::days(DEFAULT_CLIENT_DAYS))
            .unwrap();
        let info = &describe(&client.cert_pem, "client").unwrap()[0];
        assert_eq!(info.extended_key_usage, ["clientAuth"]);
        assert!(info.sans.is_empty());
        let ca_info = &describe(ca.cert_pem(), "ca").unwrap()[0];
        assert!(ca_info.is_ca);
        assert!(ca_info.key_usage.contains(&"keyCertSign".to_string()));
        // Debug never shows the key.
        assert!(!format!("{client:?}").contains("PRIVATE"));
    }

    #[test]
    fn expired_windows_and_bad_input() {
        let (ca, _) = Ca::generate("test CA", Validity::days(10)).unwrap();
        let past = OffsetDateTime::now_utc() - Duration::days(10);
        let old = ca
            .issue_client("old", Validity::between(past, past + Duration::days(1)))
            .unwrap();
        let info = &describe(&old.cert_pem, "old").unwrap()[0];
        assert!(info.days_left(OffsetDateTime::now_utc()) < -7);
        assert!(info.to_string().contains("EXPIRED"), "{info}");
        assert!(describe("not pem", "x").is_err());
        assert!("bad name!".parse::<San>().is_err());
        assert_eq!(
            "[::1]".parse::<San>().unwrap(),
            San::Ip("::1".parse().unwrap())
        );
        assert!(Ca::from_pem(ca.cert_pem(), "junk").is_err());
    }

    #[test]
    fn not_after_from_der() {
        let (ca, _) = Ca::generate("test CA", Validity::days(10)).unwrap();
        let now = OffsetDateTime::now_utc();
        let issued = ca
            .issue_server("r", &[], Validity::between(now, now + Duration::days(3)))
            .unwrap();
        let pem = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
            .unwrap()
            .1;
        let end = not_after_der(&pem.contents).unwrap();
        assert!((end - (now + Duration::days(3))).abs() < Duration::seconds(2));
        assert!(not_after_der(b"junk").is_err());
    }

    #[test]
    fn private_files_are_0600_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"secret").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        write_public(&dir.path().join("c.pem"), b"cert").unwrap();
        let meta = std::fs::metadata(dir.path().join("c.pem")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }
}
