//! The agent's API as rug-lite calls it (Astara v1 paths), over mutual TLS (see `tls.rs`: the
//! appliance must prove the router and the address) or, in labs, plain HTTP.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use akanda_model::Document;
use akanda_openstack_auth::error_chain;
use serde_json::Value;

use crate::cloud::{ApplianceError, ApplianceTarget};
use crate::tls::{self, ClientIdentity, IssueClient};

enum Transport {
    Plain(reqwest::Client),
    Mutual(Box<MutualTls>),
}

/// One client per appliance: each verifies that appliance's own identity.
struct MutualTls {
    identity: Mutex<ClientIdentity>,
    /// Re-issues rug-lite's client certificate when less than this is left of it.
    renew: Option<(IssueClient, Duration)>,
    timeout: Duration,
    clients: Mutex<HashMap<(String, IpAddr, u16), reqwest::Client>>,
    /// The end of validity of the certificate each appliance last presented.
    expiry: Mutex<HashMap<(String, IpAddr, u16), SystemTime>>,
}

pub(crate) struct AgentClient {
    transport: Transport,
}

impl AgentClient {
    pub(crate) fn plain_http(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // The management network is reached directly, never through a proxy (Astara set
            // trust_env=False for the same reason).
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(AgentClient {
            transport: Transport::Plain(http),
        })
    }

    #[cfg(test)]
    pub(crate) fn mutual_tls(identity: ClientIdentity, timeout: Duration) -> Self {
        Self::mutual_tls_with_renewal(identity, None, timeout)
    }

    /// Mutual TLS whose client certificate is re-issued by `renew.0` when less than `renew.1`
    /// of it is left (checked before each call).
    pub(crate) fn mutual_tls_with_renewal(
        identity: ClientIdentity,
        renew: Option<(IssueClient, Duration)>,
        timeout: Duration,
    ) -> Self {
        AgentClient {
            transport: Transport::Mutual(Box::new(MutualTls {
                identity: Mutex::new(identity),
                renew,
                timeout,
                clients: Mutex::new(HashMap::new()),
                expiry: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// The client and URL for one call.
    fn endpoint(
        &self,
        target: &ApplianceTarget,
        path: &str,
    ) -> Result<(reqwest::Client, String), ApplianceError> {
        // SocketAddr brackets IPv6 addresses.
        let socket = SocketAddr::new(target.address, target.port);
        match &self.transport {
            Transport::Plain(http) => Ok((http.clone(), format!("http://{socket}{path}"))),
            Transport::Mutual(m) => {
                let MutualTls {
                    identity,
                    renew,
                    timeout,
                    clients,
                    ..
                } = &**m;
                // The URL names the router, so TLS checks the router's DNS SAN; `resolve`
                // sends it to the management address, which the verifier checks too.
                let name = tls::router_dns_name(&target.router_id);
                let url = format!("https://{name}:{}{path}", target.port);
                let key = (target.router_id.clone(), target.address, target.port);
                let mut clients = clients.lock().expect("client cache lock");
                let mut identity = identity.lock().expect("client identity lock");
                if let Some((issue, before)) = renew {
                    if identity.not_after < SystemTime::now() + *before {
                        match issue() {
                            Ok(fresh) => {
                                tracing::info!(
                                    not_after = %humantime::format_rfc3339_seconds(fresh.not_after),
                                    "rug-lite's client certificate renewed"
                                );
                                *identity = fresh;
                                // Every cached client carries the old certificate.
                                clients.clear();
                            }
                            Err(e) => tracing::warn!(
                                error = %e,
                                not_after = %humantime::format_rfc3339_seconds(identity.not_after),
                                "rug-lite's client certificate could not be renewed; the current one is kept"
                            ),
                        }
                    }
                }
                if let Some(c) = clients.get(&key) {
                    return Ok((c.clone(), url));
                }
                let setup = |e: &dyn std::fmt::Display| {
                    ApplianceError::Unreachable(format!("TLS client for {name}: {e}"))
                };
                let config = identity.config_for(target.address).map_err(|e| setup(&e))?;
                let client = reqwest::Client::builder()
                    .use_preconfigured_tls(config)
                    // The peer certificate, to renew it before it expires.
                    .tls_info(true)
                    .resolve(&name, socket)
                    .timeout(*timeout)
                    .no_proxy()
                    .build()
                    .map_err(|e| setup(&e))?;
                clients.insert(key, client.clone());
                Ok((client, url))
            }
        }
    }

    /// When the certificate the appliance presented on its last answer stops being valid
    /// (None over plain HTTP, or before any answer).
    pub(crate) fn certificate_expiry(&self, target: &ApplianceTarget) -> Option<SystemTime> {
        match &self.transport {
            Transport::Plain(_) => None,
            Transport::Mutual(m) => m
                .expiry
                .lock()
                .expect("expiry lock")
                .get(&(target.router_id.clone(), target.address, target.port))
                .copied(),
        }
    }

    async fn send(
        &self,
        target: &ApplianceTarget,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), ApplianceError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApplianceError::Unreachable(error_chain(&e)))?;
        if let Transport::Mutual(m) = &self.transport {
            let expiry = &m.expiry;
            let not_after = response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|info| info.peer_certificate())
                .and_then(|der| akanda_pki::not_after_der(der).ok());
            if let Some(t) = not_after {
                expiry.lock().expect("expiry lock").insert(
                    (target.router_id.clone(), target.address, target.port),
                    t.into(),
                );
            }
        }
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApplianceError::Unreachable(error_chain(&e)))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    fn refused(status: reqwest::StatusCode, body: &Value) -> ApplianceError {
        // The agent's errors: {"error": summary, "details": [{"path", "reason"}]}.
        let mut why = format!("{status}: {}", body["error"].as_str().unwrap_or("error"));
        for d in body["details"].as_array().into_iter().flatten().take(10) {
            why.push_str(&format!(
                "; {}: {}",
                d["path"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            ));
        }
        ApplianceError::Refused(why)
    }

    /// `GET /v1/system/interfaces`: MAC → geN.
    pub(crate) async fn interfaces(
        &self,
        target: &ApplianceTarget,
    ) -> Result<BTreeMap<String, String>, ApplianceError> {
        let (http, url) = self.endpoint(target, "/v1/system/interfaces")?;
        let (status, body) = self.send(target, http.get(url)).await?;
        if !status.is_success() {
            return Err(Self::refused(status, &body));
        }
        let mut out = BTreeMap::new();
        for i in body["interfaces"].as_array().into_iter().flatten() {
            if let (Some(mac), Some(name)) = (i["lladdr"].as_str(), i["ifname"].as_str()) {
                out.insert(mac.to_ascii_lowercase(), name.to_string());
            }
        }
        Ok(out)
    }

    /// `GET /v1/status` `config_hash`.
    pub(crate) async fn config_hash(
        &self,
        target: &ApplianceTarget,
    ) -> Result<Option<String>, ApplianceError> {
        let (http, url) = self.endpoint(target, "/v1/status")?;
        let (status, body) = self.send(target, http.get(url)).await?;
        if !status.is_success() {
            return Err(Self::refused(status, &body));
        }
        Ok(body["config_hash"].as_str().map(str::to_string))
    }

    /// `PUT /v1/system/tls`: a new server certificate, key and client CA, used by the agent for
    /// new connections. The next call connects afresh, so it verifies the new certificate.
    pub(crate) async fn put_tls(
        &self,
        target: &ApplianceTarget,
        material: &crate::cloud::TlsMaterial,
    ) -> Result<(), ApplianceError> {
        let (http, url) = self.endpoint(target, "/v1/system/tls")?;
        let body = serde_json::json!({
            "server_cert": material.server_cert_pem,
            "server_key": material.server_key_pem,
            "ca_cert": material.ca_cert_pem,
        });
        let request = http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, body) = self.send(target, request).await?;
        if !status.is_success() {
            return Err(Self::refused(status, &body));
        }
        if let Transport::Mutual(m) = &self.transport {
            let (clients, expiry) = (&m.clients, &m.expiry);
            let key = (target.router_id.clone(), target.address, target.port);
            clients.lock().expect("client cache lock").remove(&key);
            expiry.lock().expect("expiry lock").remove(&key);
        }
        Ok(())
    }

    /// `PUT /v1/system/config`.
    pub(crate) async fn put_config(
        &self,
        target: &ApplianceTarget,
        document: &Document,
    ) -> Result<(), ApplianceError> {
        let (http, url) = self.endpoint(target, "/v1/system/config")?;
        let request = http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(document.to_canonical_json());
        let (status, body) = self.send(target, request).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::refused(status, &body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::TlsMaterial;
    use crate::tls::tests::test_ca;
    use crate::tls::Ca;
    use std::sync::Arc;
    use warp::Filter;

    #[test]
    fn the_client_certificate_is_renewed_before_it_expires() {
        let (ca, ca_key) =
            akanda_pki::Ca::generate("renewal CA", akanda_pki::Validity::days(30)).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let short = ca
            .issue_client(
                "rug-lite",
                akanda_pki::Validity::between(now, now + time::Duration::hours(1)),
            )
            .unwrap();
        let identity = ClientIdentity::new(ca.cert_pem(), &short.cert_pem, &short.key_pem).unwrap();
        let issued = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ca = Arc::new((ca, ca_key));
        let renew: IssueClient = Box::new({
            let (issued, ca) = (Arc::clone(&issued), Arc::clone(&ca));
            move || {
                issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let c =
                    ca.0.issue_client("rug-lite", akanda_pki::Validity::days(20))?;
                ClientIdentity::new(ca.0.cert_pem(), &c.cert_pem, &c.key_pem)
            }
        });
        let client = AgentClient::mutual_tls_with_renewal(
            identity,
            Some((renew, Duration::from_secs(86_400))),
            Duration::from_secs(5),
        );
        let target = ApplianceTarget {
            router_id: "r1".into(),
            address: "fdca::5".parse().unwrap(),
            port: 5000,
        };
        client.endpoint(&target, "/v1/status").unwrap();
        client.endpoint(&target, "/v1/status").unwrap();
        // Once: the fresh certificate has 20 days left, more than the one-day window.
        assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
        let Transport::Mutual(m) = &client.transport else {
            unreachable!()
        };
        let left = m
            .identity
            .lock()
            .unwrap()
            .not_after
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(19 * 86_400), "{left:?}");
    }

    /// A test stand-in for the agent's HTTP API: answers like akanda-agent (docs/agent-api.md)
    /// and validates PUT bodies with the model, as the agent does.
    async fn stand_in_agent() -> (SocketAddr, Arc<Mutex<Option<String>>>) {
        stand_in_agent_with(None).await
    }

    /// The stand-in, optionally behind TLS (`acceptor`).
    async fn stand_in_agent_with(
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> (SocketAddr, Arc<Mutex<Option<String>>>) {
        let held: Arc<Mutex<Option<String>>> = Arc::default();
        let held_get = Arc::clone(&held);
        let held_put = Arc::clone(&held);
        let interfaces = warp::path!("v1" / "system" / "interfaces").map(|| {
            warp::reply::json(&serde_json::json!({"interfaces": [
                {"ifname": "ge0", "lladdr": "FA:16:3E:DE:EE:03", "addresses": [], "mtu": 1450,
                 "state": "up", "description": "", "groups": [], "media": null},
                {"ifname": "ge1", "lladdr": "fa:16:3e:de:21:ce", "addresses": [], "mtu": 1500,
                 "state": "up", "description": "", "groups": [], "media": null}]}))
        });
        let status = warp::path!("v1" / "status").map(move || {
            warp::reply::json(&serde_json::json!({"agent": "akanda-agent",
                "config_hash": *held_get.lock().unwrap()}))
        });
        let put = warp::path!("v1" / "system" / "config")
            .and(warp::put())
            .and(warp::header::exact("content-type", "application/json"))
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| match akanda_model::parse(&body) {
                Ok(c) => {
                    *held_put.lock().unwrap() = Some(c.document.hash());
                    warp::reply::with_status(
                        warp::reply::json(&serde_json::json!({"configuration": {}})),
                        warp::http::StatusCode::OK,
                    )
                }
                Err(e) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"error": "invalid config",
                        "details": [{"path": "networks", "reason": e.to_string()}]})),
                    warp::http::StatusCode::UNPROCESSABLE_ENTITY,
                ),
            });
        let routes = interfaces.or(status).or(put);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let routes = routes.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service =
                        hyper_util::service::TowerToHyperService::new(warp::service(routes));
                    let conn = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match acceptor {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = conn.serve_connection(io, service).await;
                        }
                        Some(a) => {
                            // A refused handshake simply ends the connection.
                            if let Ok(tls) = a.accept(stream).await {
                                let io = hyper_util::rt::TokioIo::new(tls);
                                let _ = conn.serve_connection(io, service).await;
                            }
                        }
                    }
                });
            }
        });
        (addr, held)
    }

    #[tokio::test]
    async fn interfaces_status_and_push_against_an_agent_stand_in() {
        let (addr, held) = stand_in_agent().await;
        let client = AgentClient::plain_http(Duration::from_secs(5)).unwrap();
        let target = ApplianceTarget {
            router_id: "r1".into(),
            address: addr.ip(),
            port: addr.port(),
        };
        let nics = client.interfaces(&target).await.unwrap();
        assert_eq!(nics["fa:16:3e:de:ee:03"], "ge0");
        assert_eq!(nics["fa:16:3e:de:21:ce"], "ge1");
        assert_eq!(client.config_hash(&target).await.unwrap(), None);

        let doc: Document = serde_json::from_slice(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/astara-router-basic.json"),
            )
            .unwrap(),
        )
        .unwrap();
        client.put_config(&target, &doc).await.unwrap();
        let hash = client.config_hash(&target).await.unwrap().unwrap();
        assert_eq!(Some(hash.clone()), *held.lock().unwrap());
        assert_eq!(hash, crate::builder::agent_hash(&doc).unwrap());

        let err = client
            .put_config(&target, &Document::default())
            .await
            .unwrap_err();
        match err {
            ApplianceError::Refused(why) => {
                assert!(why.starts_with("422"), "{why}");
                assert!(why.contains("tenant_id"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// An acceptor with the appliance certificate `material`, requiring client certificates
    /// from `client_ca`.
    fn acceptor(material: &TlsMaterial, client_ca: &str) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = crate::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let certs = CertificateDer::pem_slice_iter(material.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(material.server_key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn mutual_client(ca: &Ca) -> AgentClient {
        let (cert, key) = ca.issue_client().unwrap();
        let identity = ClientIdentity::new(ca.ca_cert_pem(), &cert, &key).unwrap();
        AgentClient::mutual_tls(identity, Duration::from_secs(5))
    }

    const ROUTER: &str = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";

    #[tokio::test]
    async fn mutual_tls_accepts_exactly_the_right_router_at_the_right_address() {
        let ca = test_ca();
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let good = ca.issue_server(ROUTER, localhost).unwrap();
        let (addr, _) = stand_in_agent_with(Some(acceptor(&good, ca.ca_cert_pem()))).await;
        let client = mutual_client(&ca);
        let target = |router: &str| ApplianceTarget {
            router_id: router.into(),
            address: addr.ip(),
            port: addr.port(),
        };
        let nics = client.interfaces(&target(ROUTER)).await.unwrap();
        assert_eq!(nics.len(), 2);
        // Another router's name on this certificate: refused.
        let other = "9447788d-03bb-4a83-820e-cb12245107a2";
        let err = client.interfaces(&target(other)).await.unwrap_err();
        assert!(
            matches!(err, ApplianceError::Unreachable(ref m) if m.contains("certificate")),
            "{err}"
        );

        // The right router, but a certificate for another address: refused.
        let moved = ca
            .issue_server(ROUTER, "10.9.9.9".parse().unwrap())
            .unwrap();
        let (addr2, _) = stand_in_agent_with(Some(acceptor(&moved, ca.ca_cert_pem()))).await;
        let err = client
            .interfaces(&ApplianceTarget {
                router_id: ROUTER.into(),
                address: addr2.ip(),
                port: addr2.port(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApplianceError::Unreachable(ref m) if m.contains("certificate")),
            "{err}"
        );

        // An appliance from another CA: refused.
        let stranger_ca = test_ca();
        let stranger = stranger_ca.issue_server(ROUTER, localhost).unwrap();
        let (addr3, _) =
            stand_in_agent_with(Some(acceptor(&stranger, stranger_ca.ca_cert_pem()))).await;
        let err = client
            .interfaces(&ApplianceTarget {
                router_id: ROUTER.into(),
                address: addr3.ip(),
                port: addr3.port(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ApplianceError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn an_appliance_refuses_a_client_of_another_ca() {
        let ca = test_ca();
        let good = ca
            .issue_server(ROUTER, "127.0.0.1".parse().unwrap())
            .unwrap();
        let (addr, _) = stand_in_agent_with(Some(acceptor(&good, ca.ca_cert_pem()))).await;
        // Trusts the right CA for the server, but presents a client certificate of another.
        let other = test_ca();
        let (cert, key) = other.issue_client().unwrap();
        let identity = ClientIdentity::new(ca.ca_cert_pem(), &cert, &key).unwrap();
        let client = AgentClient::mutual_tls(identity, Duration::from_secs(5));
        let err = client
            .interfaces(&ApplianceTarget {
                router_id: ROUTER.into(),
                address: addr.ip(),
                port: addr.port(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ApplianceError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let client = AgentClient::plain_http(Duration::from_secs(2)).unwrap();
        let target = ApplianceTarget {
            router_id: "r1".into(),
            address: "127.0.0.1".parse().unwrap(),
            port: 9,
        };
        assert!(matches!(
            client.interfaces(&target).await,
            Err(ApplianceError::Unreachable(_))
        ));
    }
}
