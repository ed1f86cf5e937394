//! Mutual TLS for the tests: a throw-away PKI made with akanda-pki (rcgen) at test time;
//! requests through the harness's HTTP client ([`akanda_netns::HttpClient`]) with a given
//! client config; and, for the tests that need the wire itself (a handshake alone, a request
//! left half-sent across a rotation), a raw rustls connection from a namespace.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use akanda_netns::{HttpClient, HttpOptions};
use akanda_pki::{Ca, Issued, San, Usage, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::{in_netns, Netns};

/// A CA, an agent's server certificate for `server_ip`, and an orchestrator's client
/// certificate, written to a temp dir.
pub struct Pki {
    pub(crate) dir: TempDir,
    pub ca: Ca,
    pub server_ip: IpAddr,
    pub server: Issued,
    pub(crate) client: Issued,
}

impl Pki {
    pub fn new(server_ip: IpAddr) -> Pki {
        let (ca, _key) = Ca::generate("akanda test CA", Validity::days(30)).unwrap();
        let server = issue_server(&ca, server_ip);
        let client = ca.issue_client("rug-lite", Validity::days(30)).unwrap();
        let pki = Pki {
            dir: tempfile::Builder::new()
                .prefix("akanda-pki-")
                .tempdir()
                .unwrap(),
            ca,
            server_ip,
            server,
            client,
        };
        pki.write_server(&pki.server);
        pki.write_ca(pki.ca.cert_pem());
        akanda_pki::write_public(&pki.path("ca.pem"), pki.ca.cert_pem().as_bytes()).unwrap();
        akanda_pki::write_public(&pki.path("client.pem"), pki.client.cert_pem.as_bytes()).unwrap();
        akanda_pki::write_private(&pki.path("client.key"), pki.client.key_pem.as_bytes()).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the agent's server certificate and key files (a rotation).
    pub fn write_server(&self, server: &Issued) {
        akanda_pki::write_private(&self.path("server.key"), server.key_pem.as_bytes()).unwrap();
        akanda_pki::write_public(&self.path("server.pem"), server.cert_pem.as_bytes()).unwrap();
    }

    /// Replaces the agent's client CA file.
    pub fn write_ca(&self, pem: &str) {
        akanda_pki::write_public(&self.path("client-ca.pem"), pem.as_bytes()).unwrap();
    }

    /// `--tls-cert F --tls-key F --client-ca F`.
    pub fn server_args(&self) -> Vec<String> {
        [
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--client-ca", "client-ca.pem"),
        ]
        .iter()
        .flat_map(|(flag, f)| [flag.to_string(), self.path(f).display().to_string()])
        .collect()
    }

    /// The orchestrator's client config: trusts this CA, presents the client certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(self.ca.cert_pem(), Some(&self.client))
    }
}

/// A server certificate for an agent at `ip` (IP SAN), from `ca`.
pub fn issue_server(ca: &Ca, ip: IpAddr) -> Issued {
    ca.issue_server("akanda router test", &[San::Ip(ip)], Validity::days(30))
        .unwrap()
}

/// A certificate with any usages and validity, for the refusal cases.
pub fn issue(ca: &Ca, name: &str, usages: &[Usage], validity: Validity) -> Issued {
    ca.issue(name, &[], usages, validity).unwrap()
}

/// A client config trusting `ca_pem`, presenting `client` (or no certificate).
pub fn client_config(ca_pem: &str, client: Option<&Issued>) -> Arc<ClientConfig> {
    let client = client.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    Arc::new(akanda_pki::tls::client_config(ca_pem, client).unwrap())
}

pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects from `ns` and completes the client's side of the handshake. With TLS 1.3 the
/// server's verdict on the client certificate arrives after this: read to see it.
pub fn connect(
    ns: &Netns,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<TlsStream, String> {
    in_netns(ns, || handshake(addr, config))
}

/// [`connect`] from the calling thread's namespace: TCP connect, then the client's side of the
/// TLS handshake.
pub fn handshake(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsStream, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// SHA-256 (hex) of the server certificate this connection got.
pub fn server_cert_sha256(stream: &TlsStream) -> String {
    let certs = stream.conn.peer_certificates().expect("handshake done");
    hex::encode(Sha256::digest(certs[0].as_ref()))
}

/// SHA-256 (hex) of a PEM certificate.
pub fn pem_sha256(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    hex::encode(Sha256::digest(der.as_ref()))
}

/// The head of a request with `Connection: close`.
pub fn request_head(method: &str, path: &str, body_len: Option<usize>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    if let Some(n) = body_len {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {n}\r\n"
        ));
    }
    head.push_str("\r\n");
    head
}

/// Reads a whole `Connection: close` response: status and body. An error (a TLS alert, a
/// reset) comes back as its message.
pub fn read_response(stream: &mut TlsStream) -> Result<(u16, String), String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // hyper may close without close_notify after a `Connection: close` answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:.200}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One request over a fresh mutual TLS connection from `ns`, with the harness's HTTP client.
/// An error (a TLS alert, a reset) comes back as its message, with all its causes.
pub fn request(
    ns: &Netns,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, String), String> {
    let options = HttpOptions {
        tls: Some(config),
        ..Default::default()
    };
    let client = HttpClient::new(ns.name(), &options).map_err(|e| e.to_string())?;
    let body = body.map(|b| ("application/json", b));
    let url = format!("https://{addr}{path}");
    client
        .request(method, &url, body, Duration::from_secs(60))
        .map(|r| (r.status, r.text()))
        .map_err(|e| e.to_string())
}

/// Paths of a PKI's CA, client certificate and key (`Http::with_tls`).
pub fn curl_files(pki: &Pki) -> [PathBuf; 3] {
    [
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    ]
}
