//! The metadata proxy, inside the agent.
//!
//! One listener per tenant network (internal or isolated), on port [`nic_port`] for NIC `geN`
//! (Astara's 9600+N), bound to all addresses but with `SO_BINDTODEVICE geN`, so it only accepts
//! connections that arrive on that NIC. The firewall redirects `169.254.169.254:80` arriving on
//! `geN` to that port. The listener maps the client's source address to an instance through
//! that network's allocations (every address, DHCP or not) and forwards the request to
//! `http://ORCHESTRATOR:METADATA_PORT` with:
//!
//! - `X-Forwarded-For`: the client address;
//! - `X-Instance-ID`: the allocation's `device_id`;
//! - `X-Tenant-ID`: the config's `tenant_id`;
//! - `X-Neutron-Network-ID` and `X-Quantum-Network-ID` (Astara's name): the network id.
//!
//! Any such header sent by the client is removed first. Method, path, query, headers and body
//! go through unchanged (bodies are streamed both ways); the upstream status, headers and
//! content type come back unchanged. An unknown source gets 404, an unreachable upstream 502,
//! an upstream that does not answer within the timeout 504.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use akanda_model::config::{Network, RouterConfig};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use http_body_util::Limited;
use tokio::task::JoinHandle;

use super::ServicesError;

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
/// A client's request body, forwarded up to [`MAX_REQUEST_BODY`] bytes (then the upstream
/// request fails and the client gets 502).
type UpstreamBody = Limited<Incoming>;

/// Connections served at once per listener; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold on a listener: more are closed at once, so one
/// instance cannot take the listener from the others on its network.
pub(crate) const MAX_CONNECTIONS_PER_SOURCE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The timeouts of a metadata connection: first request's headers, idle keep-alive. Request
/// bodies (a password POST is the largest) are capped at [`MAX_REQUEST_BODY`] and must arrive
/// within the upstream timeout, which bounds the whole request.
const LIMITS: crate::server::ConnectionLimits = crate::server::ConnectionLimits {
    max_connections: MAX_CONNECTIONS,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(30),
    body_timeout: Duration::from_secs(30),
    max_http2_streams: 1,
};
/// Largest request body forwarded: Nova's metadata takes at most a password (256 bytes).
pub(crate) const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest request head read.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Headers a client may not set: they carry the proxy's identification of the client.
const IDENTITY_HEADERS: [&str; 6] = [
    "x-forwarded-for",
    "x-instance-id",
    "x-instance-id-signature",
    "x-tenant-id",
    "x-neutron-network-id",
    "x-quantum-network-id",
];
/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// What one listener needs to answer: rebuilt on every apply, swapped in without rebinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkMetadata {
    pub(crate) network_id: String,
    pub tenant_id: String,
    /// The orchestrator's metadata endpoint.
    pub(crate) upstream: SocketAddr,
    /// Instance address → `device_id`.
    pub instances: HashMap<IpAddr, String>,
}

/// Astara's metadata ports: the proxy of NIC `geN` listens on `METADATA_BASE_PORT + N`.
pub const METADATA_BASE_PORT: u16 = 9600;

/// The metadata port of NIC `geN`, or `None` for a name that is not `geN`. The one definition
/// of it: the proxy listens there and the firewall redirects `169.254.169.254:80` there.
pub(crate) fn nic_port(ifname: &str) -> Option<u16> {
    listen_port(METADATA_BASE_PORT, ifname)
}

/// The listener port of NIC `geN`: `base + N`. `None` for a name that is not `geN`.
pub(crate) fn listen_port(base: u16, ifname: &str) -> Option<u16> {
    let nic: akanda_model::NicName = ifname.parse().ok()?;
    base.checked_add(nic.index())
}

/// The upstream base URI: `http://1.2.3.4:9697` or `http://[fdca::1]:9697`.
pub(crate) fn upstream_base(upstream: SocketAddr) -> String {
    // SocketAddr's Display brackets IPv6 and leaves IPv4 bare.
    format!("http://{upstream}")
}

/// The listeners wanted by `config`: NIC name → (port, what it serves).
pub fn desired(config: &RouterConfig, base: u16) -> BTreeMap<String, (u16, NetworkMetadata)> {
    let upstream = SocketAddr::new(
        config.orchestrator.address,
        config.orchestrator.metadata_port,
    );
    config
        .networks
        .iter()
        .filter(|n| n.network_type.is_tenant())
        .filter_map(|n| {
            let port = listen_port(base, &n.ifname)?;
            Some((
                n.ifname.clone(),
                (port, network_metadata(n, &config.tenant_id, upstream)),
            ))
        })
        .collect()
}

fn network_metadata(network: &Network, tenant_id: &str, upstream: SocketAddr) -> NetworkMetadata {
    let mut instances = HashMap::new();
    for alloc in &network.allocations {
        for (ip, _) in &alloc.ip_addresses {
            instances.insert(*ip, alloc.device_id.clone());
        }
    }
    NetworkMetadata {
        network_id: network.id.clone(),
        tenant_id: tenant_id.to_owned(),
        upstream,
        instances,
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    unknown_source: AtomicU64,
    upstream_errors: AtomicU64,
    /// Connections closed at once because their source held too many.
    refused_connections: AtomicU64,
}

/// Connections open per client address on one listener.
#[derive(Default)]
struct PerSource(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection counted in [`PerSource`] until dropped.
struct SourceSlot {
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

struct Listener {
    port: u16,
    shared: Arc<RwLock<NetworkMetadata>>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// All metadata listeners.
pub(crate) struct MetadataProxy {
    timeout: Duration,
    client: Client<HttpConnector, UpstreamBody>,
    listeners: BTreeMap<String, Listener>,
}

impl MetadataProxy {
    pub(crate) fn new(timeout: Duration) -> MetadataProxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        MetadataProxy {
            timeout,
            client,
            listeners: BTreeMap::new(),
        }
    }

    /// Binds listeners for new tenant networks, drops those of removed ones, and swaps in the
    /// new instance maps and upstream for the others (no rebinding).
    pub(crate) fn apply(&mut self, config: &RouterConfig) -> Vec<ServicesError> {
        let mut errors = Vec::new();
        let wanted = desired(config, METADATA_BASE_PORT);
        self.listeners
            .retain(|ifname, l| wanted.get(ifname).is_some_and(|(port, _)| *port == l.port));
        for (ifname, (port, meta)) in wanted {
            if let Some(listener) = self.listeners.get(&ifname) {
                let mut shared = listener.shared.write().unwrap_or_else(|e| e.into_inner());
                if *shared != meta {
                    *shared = meta;
                }
                continue;
            }
            match bind(&ifname, port) {
                Ok(tcp) => {
                    let shared = Arc::new(RwLock::new(meta));
                    let counters = Arc::new(Counters::default());
                    let task = tokio::spawn(serve(
                        tcp,
                        ifname.clone(),
                        shared.clone(),
                        counters.clone(),
                        self.client.clone(),
                        self.timeout,
                    ));
                    tracing::info!(%ifname, port, "metadata listener up");
                    self.listeners.insert(
                        ifname,
                        Listener {
                            port,
                            shared,
                            counters,
                            task,
                        },
                    );
                }
                Err(source) => errors.push(ServicesError::Bind {
                    ifname,
                    port,
                    source,
                }),
            }
        }
        errors
    }

    pub(crate) fn status(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (ifname, l) in &self.listeners {
            let shared = l.shared.read().unwrap_or_else(|e| e.into_inner());
            out.insert(
                ifname.clone(),
                json!({
                    "port": l.port,
                    "network_id": shared.network_id,
                    "upstream": upstream_base(shared.upstream),
                    "instances": shared.instances.len(),
                    "requests": l.counters.requests.load(Ordering::Relaxed),
                    "unknown_source": l.counters.unknown_source.load(Ordering::Relaxed),
                    "upstream_errors": l.counters.upstream_errors.load(Ordering::Relaxed),
                    "refused_connections": l.counters.refused_connections.load(Ordering::Relaxed),
                }),
            );
        }
        Value::Object(out)
    }

    pub(crate) fn shutdown(&mut self) {
        self.listeners.clear();
    }
}

/// The NIC's listener (see [`crate::server::bind_to_device`]).
fn bind(ifname: &str, port: u16) -> std::io::Result<TcpListener> {
    crate::server::bind_to_device(ifname, port, 128)
}

async fn serve(
    tcp: TcpListener,
    ifname: String,
    shared: Arc<RwLock<NetworkMetadata>>,
    counters: Arc<Counters>,
    client: Client<HttpConnector, UpstreamBody>,
    timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(LIMITS.max_connections));
    let sources = Arc::new(PerSource::default());
    let mut backoff = None;
    let what = format!("metadata {ifname}");
    loop {
        let Some((stream, peer, permit)) =
            crate::server::accept_within(&tcp, &slots, &mut backoff, &what).await
        else {
            return;
        };
        let client_ip = peer.ip().to_canonical();
        let Some(source_slot) = sources.take(client_ip) else {
            counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ifname, %client_ip, "metadata connection refused: too many from this address");
            continue;
        };
        let shared = shared.clone();
        let counters = counters.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let _held = (permit, source_slot);
            let activity = crate::server::Activity::new();
            let stream = crate::server::Watched::new(stream, activity.clone());
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |req| {
                let in_flight = requests.request();
                let response = handle(
                    req,
                    client_ip,
                    shared.clone(),
                    counters.clone(),
                    client.clone(),
                    timeout,
                );
                async move {
                    let response = response.await;
                    drop(in_flight);
                    response
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(LIMITS.header_read_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let served = async {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "metadata connection: {e}");
                }
            };
            crate::server::watch(served, &activity, &LIMITS, peer).await;
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Builds the upstream request from the client's (pure apart from moving the body).
pub fn upstream_request<B>(
    req: Request<B>,
    client_ip: IpAddr,
    device_id: &str,
    meta: &NetworkMetadata,
) -> Result<Request<B>, String> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("{}{path}", upstream_base(meta.upstream))
        .parse()
        .map_err(|e| format!("bad upstream URI: {e}"))?;
    let mut out = Request::builder().method(parts.method).uri(uri);
    let headers = out.headers_mut().expect("builder is fresh");
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == HOST.as_str() || HOP_BY_HOP.contains(&n) || IDENTITY_HEADERS.contains(&n) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let set = |headers: &mut hyper::HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "host", &meta.upstream.to_string());
    set(headers, "x-forwarded-for", &client_ip.to_string());
    set(headers, "x-instance-id", device_id);
    set(headers, "x-tenant-id", &meta.tenant_id);
    set(headers, "x-neutron-network-id", &meta.network_id);
    set(headers, "x-quantum-network-id", &meta.network_id);
    out.body(body).map_err(|e| e.to_string())
}

async fn handle(
    req: Request<Incoming>,
    client_ip: IpAddr,
    shared: Arc<RwLock<NetworkMetadata>>,
    counters: Arc<Counters>,
    client: Client<HttpConnector, UpstreamBody>,
    timeout: Duration,
) -> Result<Response<ProxyBody>, Infallible> {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let meta = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(device_id) = meta.instances.get(&client_ip).cloned() else {
        counters.unknown_source.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%client_ip, network = %meta.network_id, "metadata request from an unknown address");
        return Ok(plain(StatusCode::NOT_FOUND, "unknown instance"));
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Ok(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large for the metadata service",
        ));
    }
    let req = req.map(|body| Limited::new(body, MAX_REQUEST_BODY));
    let upstream_req = match upstream_request(req, client_ip, &device_id, &meta) {
        Ok(r) => r,
        Err(e) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, &e));
        }
    };
    match tokio::time::timeout(timeout, client.request(upstream_req)).await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(h);
            }
            let body = body.map_err(|e| Box::new(e) as _).boxed();
            Ok(Response::from_parts(parts, body))
        }
        Ok(Err(e)) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %meta.upstream, "metadata upstream unreachable: {e}");
            Ok(plain(
                StatusCode::BAD_GATEWAY,
                "the metadata service is unreachable",
            ))
        }
        Err(_) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %meta.upstream, "metadata upstream timed out");
            Ok(plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the metadata service did not answer in time",
            ))
        }
    }
}
