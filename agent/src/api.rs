//! The REST API: Astara's v1 appliance contract on warp.
//!
//! Same paths and success codes as Astara, with its bugs fixed: every error is JSON
//! `{"error": ..., "details": [{"path", "reason"}]}` with a JSON content type; 400 malformed
//! JSON, 415 not JSON, 404 unknown path or geN, 422 invalid config, 409 kernel refused (after
//! rollback), 503 the appliance cannot do its part. PUTs are serialised, and an apply runs to
//! its end even if the client goes away.
//!
//! `GET /` (an addition) reports the API version and the features of this agent. Every
//! config change is logged with the verified peer (`tls::Peer`) and the config hash.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use akanda_model::{ConfigError, Problem};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::appliance::{Appliance, ApplyError, InterfaceReader, Shared};
use crate::management::ManagementPath;
use crate::server::ConnectionLimits;
use crate::tls::{Peer, TlsError, TlsState};

/// Largest config accepted: 10,000 floating IPs and hundreds of ports fit well below this.
const MAX_BODY: u64 = 32 * 1024 * 1024;

/// The API version `GET /` reports: Astara's v1 appliance contract.
pub(crate) const API_VERSION: &str = "v1";

/// What `GET /` lists: the additions to Astara's contract this agent has. An orchestrator
/// uses a feature only when it is listed (rug-lite treats a 404 on `GET /` as a plain Astara
/// appliance, with none of them).
pub(crate) const FEATURES: &[&str] = &[
    // GET / itself.
    "version-discovery",
    // GET /v1/firewall/rules reads the live nf_tables table back.
    "firewall-readback",
    // GET /v1/status: apply records, netlink/netfilter counters, daemons.
    "status",
    // JSON errors naming every invalid field (422), never a 500.
    "json-errors",
    // Secrets (VPN pre-shared keys) are never returned.
    "secret-redaction",
    // The API can be served over mutual TLS (listed as "mutual-tls" in `tls` when it is).
    "mutual-tls",
    // PUT /v1/system/tls replaces the server certificate, key and client CA without a restart.
    "tls-rotation",
];

/// Every path the API serves and its methods: the OpenAPI document (`docs/openapi.yaml`) must
/// list exactly these (a unit test checks it), and the live agent must answer each and refuse
/// every other method with 405 and an `Allow` header (`tests/tests/openapi_root.rs`). `{x}` is
/// one path segment. A trailing slash is accepted everywhere, as warp does.
pub(crate) const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/v1/base", &["GET"]),
    ("/v1/base/", &["GET"]),
    ("/v1/system/interfaces", &["GET"]),
    ("/v1/system/interface/{ifname}", &["GET"]),
    ("/v1/system/config", &["GET", "PUT"]),
    ("/v1/system/tls", &["PUT"]),
    ("/v1/firewall/rules", &["GET"]),
    ("/v1/status", &["GET"]),
];

/// The methods [`ROUTES`] gives `path`, or `None` for a path the API does not have.
pub(crate) fn allowed_methods(path: &str) -> Option<&'static [&'static str]> {
    let trimmed = match path {
        "/" => "/",
        p => p.strip_suffix('/').unwrap_or(p),
    };
    let segments: Vec<&str> = trimmed.split('/').collect();
    ROUTES.iter().find_map(|(template, methods)| {
        let t: Vec<&str> = template.split('/').collect();
        let matches = t.len() == segments.len()
            && t.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') {
                    !s.is_empty()
                } else {
                    t == s
                }
            });
        matches.then_some(*methods)
    })
}

/// Who may use the API, decided at start (see docs/tls.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Mutual TLS: every connection's client certificate was verified in the handshake.
    MutualTls,
    /// Plain HTTP, explicitly allowed by the operator (`--insecure-http` or the config drive's
    /// `meta.akanda_insecure_http`).
    PlainHttp,
    /// Plain HTTP without TLS material and without the operator's opt-in: the agent answers,
    /// but refuses to show or change the config (403).
    ReadOnly { why: String },
}

pub struct ApiState {
    appliance: Arc<tokio::sync::Mutex<Appliance>>,
    shared: Arc<Mutex<Shared>>,
    interfaces: InterfaceReader,
    /// A request body must have arrived within this (408 otherwise).
    body_timeout: Duration,
    /// The orchestrator's path from the boot configuration: no config may cut it.
    management: Option<ManagementPath>,
    started: Instant,
    started_at: String,
    access: Access,
    tls: Option<Arc<TlsState>>,
}

impl ApiState {
    pub fn new(
        appliance: Arc<tokio::sync::Mutex<Appliance>>,
        shared: Arc<Mutex<Shared>>,
        interfaces: InterfaceReader,
        access: Access,
    ) -> Self {
        ApiState {
            appliance,
            shared,
            interfaces,
            body_timeout: ConnectionLimits::default().body_timeout,
            management: None,
            started: Instant::now(),
            started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            access,
            tls: None,
        }
    }

    /// How long a request body may take to arrive (`--body-timeout`).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The management path a config must keep (`--boot-config`).
    pub fn with_management(mut self, management: Option<ManagementPath>) -> Self {
        self.management = management;
        self
    }

    /// The TLS material in force, which `PUT /v1/system/tls` replaces.
    pub fn with_tls(mut self, tls: Option<Arc<TlsState>>) -> Self {
        self.tls = tls;
        self
    }

    /// 403 unless the config may be read or changed over this listener.
    fn refused(&self) -> Option<Response> {
        match &self.access {
            Access::ReadOnly { why } => Some(error(
                StatusCode::FORBIDDEN,
                &format!("the configuration cannot be read or changed over plain HTTP: {why}"),
                &[Problem::new(
                    "meta.akanda_insecure_http",
                    "plain HTTP was not allowed by the operator, and the config drive carries no TLS material (user_data akanda.tls)",
                )],
            )),
            _ => None,
        }
    }
}

/// The version and features document of `GET /`.
fn discovery(s: &ApiState) -> serde_json::Value {
    json!({
        "agent": "akanda-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "api": { "versions": [API_VERSION], "current": API_VERSION, "base": "/v1/" },
        "features": FEATURES,
        "tls": match &s.access {
            Access::MutualTls => "mutual-tls",
            Access::PlainHttp => "plain-http",
            Access::ReadOnly { .. } => "plain-http-read-only",
        },
    })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    details: &'a [Problem],
}

pub(crate) fn error(status: StatusCode, message: &str, details: &[Problem]) -> Response {
    let body = ErrorBody {
        error: message,
        details,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn ok_json<T: Serialize>(value: &T) -> Response {
    warp::reply::json(value).into_response()
}

/// `{"configuration": <the redacted document>}`, around the canonical JSON already made.
fn configuration_body(json: &[u8]) -> Response {
    let mut body = Vec::with_capacity(json.len() + 20);
    body.extend_from_slice(b"{\"configuration\":");
    body.extend_from_slice(json);
    body.push(b'}');
    warp::reply::with_header(body, "content-type", "application/json").into_response()
}

fn text(body: String) -> Response {
    warp::reply::with_header(body, "content-type", "text/plain; charset=utf-8").into_response()
}

/// All routes, with every rejection turned into a JSON error.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let peer = warp::ext::optional::<Arc<Peer>>();

    let root = warp::path::end()
        .and(warp::get())
        .and(with_state.clone())
        .map(|s: Arc<ApiState>| ok_json(&discovery(&s)));
    let base = warp::path!("v1" / "base")
        .and(warp::get())
        .map(|| text("Akanda appliance API service is active".into()));
    let interfaces = warp::path!("v1" / "system" / "interfaces")
        .and(warp::get())
        .and(with_state.clone())
        .then(get_interfaces);
    let interface = warp::path!("v1" / "system" / "interface" / String)
        .and(warp::get())
        .and(with_state.clone())
        .then(get_interface);
    let get_config = warp::path!("v1" / "system" / "config")
        .and(warp::get())
        .and(with_state.clone())
        .map(|s: Arc<ApiState>| {
            if let Some(refused) = s.refused() {
                return refused;
            }
            let shown = crate::appliance::lock(&s.shared).shown_config.clone();
            configuration_body(shown.as_deref().unwrap_or(b"{}"))
        });
    let put_config = warp::path!("v1" / "system" / "config")
        .and(warp::put())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state.clone())
        .and(peer)
        .then(put_config);
    let put_tls = warp::path!("v1" / "system" / "tls")
        .and(warp::put())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(MAX_TLS_BODY))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state.clone())
        .and(peer)
        .then(put_tls);
    let firewall = warp::path!("v1" / "firewall" / "rules")
        .and(warp::get())
        .then(firewall_rules);
    let status = warp::path!("v1" / "status")
        .and(warp::get())
        .and(with_state)
        .map(|s: Arc<ApiState>| {
            // Daemon states live with the appliance. While an apply holds it, the status shows
            // them as the last apply left them rather than wait.
            let live = s.appliance.try_lock().ok().map(|a| a.services_status());
            let mut body = status(&s);
            body["services_as_of"] = json!(if live.is_some() { "now" } else { "last_apply" });
            body["services"] = match live {
                Some(services) => services,
                None => crate::appliance::lock(&s.shared)
                    .services
                    .clone()
                    .unwrap_or(serde_json::Value::Null),
            };
            ok_json(&body)
        });

    root.or(base)
        .unify()
        .or(interfaces)
        .unify()
        .or(interface)
        .unify()
        .or(get_config)
        .unify()
        .or(put_config)
        .unify()
        .or(put_tls)
        .unify()
        .or(firewall)
        .unify()
        .or(status)
        .unify()
        .or(method_not_allowed())
        .unify()
        .recover(rejection)
        .unify()
}

/// A known path with a method it does not have: 405 with the `Allow` header (RFC 9110).
/// Anything else falls through to the other routes' rejection (404, 413, ...).
fn method_not_allowed() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path::full().and(warp::method()).and_then(
        |path: warp::path::FullPath, method: warp::http::Method| async move {
            match allowed_methods(path.as_str()) {
                Some(methods) if !methods.contains(&method.as_str()) => {
                    let mut r = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        &format!("{method} is not allowed on this resource"),
                        &[],
                    );
                    r.headers_mut().insert(
                        warp::http::header::ALLOW,
                        warp::http::HeaderValue::from_str(&methods.join(", "))
                            .expect("method names are header values"),
                    );
                    Ok(r)
                }
                _ => Err(warp::reject::not_found()),
            }
        },
    )
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    let (status, message) = if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such resource")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this resource",
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the config is larger than 32 MiB",
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "a Content-Length is required")
    } else {
        tracing::warn!(rejection = ?r, "request rejected");
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(error(status, message, &[]))
}

/// The live ruleset, read back from the kernel with its counters. Astara's liveness probe:
/// it never waits for an apply in progress.
async fn firewall_rules() -> Response {
    let listing = tokio::task::spawn_blocking(|| {
        crate::firewall::readback::list_table(crate::firewall::ruleset::TABLE)
    })
    .await;
    match listing {
        Ok(Ok(Some(rules))) => text(rules),
        Ok(Ok(None)) => text("# no ruleset applied yet\n".into()),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), &[]),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), &[]),
    }
}

async fn get_interfaces(s: Arc<ApiState>) -> Response {
    match s.interfaces.interfaces().await {
        Ok(list) => ok_json(&json!({ "interfaces": list })),
        Err(e) => apply_error(e),
    }
}

async fn get_interface(name: String, s: Arc<ApiState>) -> Response {
    match s.interfaces.interfaces().await {
        Ok(list) => match list.into_iter().find(|i| i.ifname == name) {
            Some(i) => ok_json(&json!({ "interface": i })),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no interface named {name:?} on this appliance"),
                &[],
            ),
        },
        Err(e) => apply_error(e),
    }
}

/// `application/json`, any parameters (`charset`), any letter case.
pub(crate) fn is_json_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("reading the request body: {0}")]
    Read(String),
}

impl BodyError {
    fn response(&self) -> Response {
        let status = match self {
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        };
        error(status, &self.to_string(), &[])
    }
}

/// Reads the whole body within `timeout` and `limit` bytes. The Content-Length was checked
/// against `limit` already; this also bounds what a lying or chunked client sends.
async fn read_body<S, B>(
    body: S,
    declared: Option<u64>,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let collect = async move {
        let mut body = body;
        // Sized once from the declared length (already checked against the limit): growing by
        // doubling would hold up to twice the body at its peak.
        let mut out = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if (out.len() + chunk.remaining()) as u64 > limit {
                return Err(BodyError::TooLarge(limit));
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| BodyError::TimedOut(timeout))?
}

async fn put_config<S, B>(
    content_type: Option<String>,
    declared: Option<u64>,
    body: S,
    s: Arc<ApiState>,
    peer: Option<Arc<Peer>>,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let who = peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
    if let Some(refused) = s.refused() {
        tracing::warn!(peer = %who, "config change refused: plain HTTP was not allowed");
        return refused;
    }
    if !content_type.as_deref().is_some_and(is_json_content_type) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the config must be sent as Content-Type: application/json",
            &[],
        );
    }
    // The body is read and parsed completely before the apply lock is even asked for: a slow
    // or stalled client holds nothing but its own connection.
    let body = match read_body(body, declared, MAX_BODY, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(peer = %who, error = %e, "config body refused");
            return e.response();
        }
    };
    // Parsing a large config takes a core for a while: off the threads serving reads.
    let parsed = tokio::task::spawn_blocking(move || akanda_model::parse(&body)).await;
    let Ok(parsed) = parsed else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the config parser failed",
            &[],
        );
    };
    let config = match parsed {
        Ok(c) => c,
        Err(ConfigError::Syntax(msg)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("malformed JSON: {msg}"),
                &[],
            )
        }
        Err(ConfigError::Invalid(problems)) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("invalid config: {} problem(s)", problems.len()),
                &problems,
            )
        }
    };
    if let Some(path) = &s.management {
        let problems = path.check(&config);
        if !problems.is_empty() {
            tracing::warn!(peer = %who, "config refused: it would cut the orchestrator's path");
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "the config would cut the orchestrator's path to this appliance: {} problem(s)",
                    problems.len()
                ),
                &problems,
            );
        }
    }
    // The apply runs in its own task: a client that hangs up must not cancel a transaction
    // half-way. The lock serialises concurrent PUTs.
    let appliance = s.appliance.clone();
    // Serialised once: hashed, saved (when it holds no secret) and sent back.
    let shown = config.document.shown();
    let hash = shown.hash.clone();
    tracing::info!(peer = %who, config_hash = %hash, "config change requested");
    let task = tokio::spawn(async move {
        let mut appliance = appliance.lock_owned().await;
        let json = shown.json.clone();
        appliance.apply_shown(config, shown).await.map(|()| json)
    });
    match task.await {
        Ok(Ok(json)) => {
            tracing::info!(peer = %who, config_hash = %hash, "config changed");
            configuration_body(&json)
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %who, config_hash = %hash, "config change failed");
            apply_error(e)
        }
        Err(join) => {
            tracing::error!(error = %join, "apply task failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the apply task failed",
                &[],
            )
        }
    }
}

/// A certificate chain, a key and a CA bundle fit well below this.
const MAX_TLS_BODY: u64 = 1024 * 1024;

/// `PUT /v1/system/tls`: `{"server_cert": PEM, "server_key": PEM, "ca_cert": PEM?}` replaces
/// the TLS material (Octavia's `PUT /certificate`): new connections use it, connections in
/// flight keep theirs. Refused (422, naming the field) unless the certificate and key belong
/// together, the certificate is current and the CA parses; the material in force then stays.
/// Only over mutual TLS. The answer names the new certificate, never the key.
async fn put_tls<S, B>(
    content_type: Option<String>,
    declared: Option<u64>,
    body: S,
    s: Arc<ApiState>,
    peer: Option<Arc<Peer>>,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let who = peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
    let Some(tls) = s.tls.clone() else {
        return error(
            StatusCode::FORBIDDEN,
            "this agent is not serving TLS: its TLS material cannot be replaced over plain HTTP",
            &[],
        );
    };
    if !content_type.as_deref().is_some_and(is_json_content_type) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the TLS material must be sent as Content-Type: application/json",
            &[],
        );
    }
    let body = match read_body(body, declared, MAX_TLS_BODY, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        // serde_json's message quotes no input, only positions.
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("malformed JSON: {e}"),
                &[],
            )
        }
    };
    let mut problems = Vec::new();
    let mut field = |name: &str, required: bool| -> Option<String> {
        match doc.get(name) {
            Some(serde_json::Value::String(v)) if !v.trim().is_empty() => Some(v.clone()),
            None | Some(serde_json::Value::Null) if !required => None,
            None | Some(serde_json::Value::Null) => {
                problems.push(Problem::new(name, "required"));
                None
            }
            Some(_) => {
                problems.push(Problem::new(name, "must be a non-empty PEM string"));
                None
            }
        }
    };
    let (cert, key, ca) = (
        field("server_cert", true),
        field("server_key", true),
        field("ca_cert", false),
    );
    if !doc.is_object() {
        problems = vec![Problem::new("", "must be an object")];
    }
    let (Some(cert), Some(key), true) = (cert, key, problems.is_empty()) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid TLS material",
            &problems,
        );
    };
    let result = tokio::task::spawn_blocking(move || tls.replace(&cert, &key, ca.as_deref())).await;
    match result {
        Ok(Ok(loaded)) => {
            tracing::info!(peer = %who, sha256 = %loaded.server_sha256, subject = %loaded.server_subject,
                "TLS material replaced through the API");
            ok_json(&json!({
                "server_cert": {
                    "subject": loaded.server_subject,
                    "sans": loaded.server_sans,
                    "not_after": loaded.server_not_after,
                    "sha256": loaded.server_sha256,
                },
                "client_ca": loaded.client_ca_subjects,
            }))
        }
        Ok(Err(TlsError::Invalid { path, reason })) => {
            tracing::warn!(peer = %who, field = %path, "TLS material refused");
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid TLS material: the material in force stays",
                &[Problem::new(path, reason)],
            )
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), &[]),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), &[]),
    }
}

/// The answer to a failed apply. A phase that failed and was fully rolled back is a 409 (the
/// previous config is in force), or a 500 when the failure was a panic (a bug of the agent's,
/// the previous config still in force). A rollback that failed is a 503: the box is degraded
/// (`/v1/status`), and the body names what was put back and what was not. `rollback` in
/// the body carries the same as data.
pub(crate) fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::DoesNotFit(problems) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the config does not fit this appliance",
            &problems,
        ),
        ApplyError::Failed {
            phase,
            cause,
            rollback,
            panicked,
        } => {
            let what = if panicked {
                format!("the agent failed (a bug: it panicked) in phase {phase}")
            } else {
                format!("{} (phase {phase})", phase.refusal())
            };
            let restored: Vec<&str> = rollback.restored.iter().map(|p| p.name()).collect();
            let (status, message) = if rollback.is_complete() {
                let which = if restored.is_empty() {
                    "nothing had been changed".to_string()
                } else {
                    format!("restored: {}", restored.join(", "))
                };
                (
                    if panicked {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::CONFLICT
                    },
                    format!("{what}; the previous state was restored ({which}): {cause}"),
                )
            } else {
                let failed: Vec<&str> = rollback.failed.iter().map(|(p, _)| p.name()).collect();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{what}, and the rollback failed: NOT restored: {}; restored: {}. The box is degraded until a config applies completely: {cause}",
                        failed.join(", "),
                        if restored.is_empty() { "nothing".to_string() } else { restored.join(", ") },
                    ),
                )
            };
            let mut details = vec![Problem::new("", cause)];
            details.extend(
                rollback
                    .failed
                    .iter()
                    .map(|(phase, e)| Problem::new("", format!("rollback of {phase}: {e}"))),
            );
            details.extend(rollback.notes.iter().map(|n| Problem::new("", n.clone())));
            let body = json!({
                "error": message,
                "details": details,
                "rollback": rollback.to_json(),
            });
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        }
        ApplyError::Unavailable(msg) => error(StatusCode::SERVICE_UNAVAILABLE, &msg, &[]),
    }
}

fn status(s: &ApiState) -> serde_json::Value {
    let shared = crate::appliance::lock(&s.shared);
    // Degraded, the box is neither the config in force nor the refused one: no hash is
    // claimed, so an orchestrator comparing hashes pushes again (which clears it).
    let degraded = shared.degraded.as_ref();
    json!({
        "agent": "akanda-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": s.started_at,
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "health": if degraded.is_some() { "degraded" } else { "ok" },
        "degraded": degraded,
        "config_hash": if degraded.is_some() { None } else { shared.current_hash.as_ref() },
        "last_apply": shared.last_apply,
        "applies": { "ok": shared.counters.applies_ok, "failed": shared.counters.applies_failed },
        "netlink_writes_total": shared.netlink_writes_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_follow_the_route_table() {
        assert_eq!(allowed_methods("/"), Some(&["GET"][..]));
        assert_eq!(
            allowed_methods("/v1/system/config/"),
            Some(&["GET", "PUT"][..])
        );
        assert_eq!(
            allowed_methods("/v1/system/interface/ge3"),
            Some(&["GET"][..])
        );
        assert_eq!(allowed_methods("/v1/system/interface/"), None);
        assert_eq!(allowed_methods("/v1/system/interface/ge3/x"), None);
        assert_eq!(allowed_methods("/v2/status"), None);
    }

    /// docs/openapi.yaml documents exactly the routes served, and an error body for every
    /// error status.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: serde_json::Value =
            serde_norway::from_str(include_str!("../../docs/openapi.yaml")).expect("valid YAML");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let documented: std::collections::BTreeMap<String, Vec<String>> = paths
            .iter()
            .map(|(path, ops)| {
                let mut methods: Vec<String> = ops
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| k.as_str() != "parameters")
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                methods.sort();
                (path.clone(), methods)
            })
            .collect();
        let served: std::collections::BTreeMap<String, Vec<String>> = ROUTES
            .iter()
            .map(|(p, m)| {
                let mut m: Vec<String> = m.iter().map(|s| s.to_string()).collect();
                m.sort();
                (p.to_string(), m)
            })
            .collect();
        assert_eq!(documented, served);
        // Every error response has the JSON error body.
        let responses = &doc["components"]["responses"];
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                for (code, resp) in op["responses"].as_object().unwrap() {
                    if code.starts_with('2') {
                        continue;
                    }
                    let name = resp["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/responses/"))
                        .unwrap_or_else(|| panic!("{method} {path} {code}: not a shared response"));
                    let schema = &responses[name]["content"]["application/json"]["schema"]["$ref"];
                    // ApplyError is Error (`error`, `details`) plus what the rollback restored.
                    assert!(
                        schema == "#/components/schemas/Error"
                            || schema == "#/components/schemas/ApplyError",
                        "{method} {path} {code}: {schema}"
                    );
                }
            }
        }
        // The features GET / reports are the ones the document shows.
        let example =
            &doc["components"]["schemas"]["Discovery"]["properties"]["features"]["example"];
        assert_eq!(example, &serde_json::json!(FEATURES));
    }

    /// Every path a warp filter in this file serves is in [`ROUTES`] (and so, by the test
    /// above, in the OpenAPI document): a route added without them fails here.
    #[test]
    fn every_warp_route_in_this_file_is_in_the_route_table() {
        let source = include_str!("api.rs");
        let mut served = std::collections::BTreeSet::new();
        // Built from pieces so that this test's own text is not matched.
        let (macro_open, end) = (
            concat!("warp::path", "!("),
            concat!("warp::path::", "end()"),
        );
        for (i, _) in source.match_indices(macro_open) {
            let args = &source[i + macro_open.len()..];
            let args = &args[..args.find(')').expect("closed macro")];
            let path: Vec<String> = args
                .split('/')
                .map(|seg| {
                    let seg = seg.trim();
                    match seg.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(lit) => lit.to_string(),
                        None => "{}".to_string(),
                    }
                })
                .collect();
            served.insert(format!("/{}", path.join("/")));
        }
        if source.contains(end) {
            served.insert("/".to_string());
        }
        let table: std::collections::BTreeSet<String> = ROUTES
            .iter()
            .map(|(p, _)| {
                let p = if *p == "/" {
                    p
                } else {
                    p.trim_end_matches('/')
                };
                p.split('/')
                    .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .map(|p| if p.is_empty() { "/".to_string() } else { p })
            .collect();
        assert!(served.len() >= 8, "{served:?}");
        assert_eq!(served, table);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("Application/JSON;charset=UTF-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
        assert!(!is_json_content_type(""));
    }
}
