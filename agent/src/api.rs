//! The REST API: Astara's v1 appliance contract on warp.
//!
//! Same paths and success codes as Astara, with its bugs fixed: every error is JSON
//! `{"error": ..., "details": [{"path", "reason"}]}` with a JSON content type; 400 malformed
//! JSON, 415 not JSON, 404 unknown path or geN, 422 invalid config, 409 kernel refused (after
//! rollback), 503 the appliance cannot do its part. PUTs are serialised, and an apply runs to
//! its end even if the client goes away.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use akanda_model::{ConfigError, Problem};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::appliance::{Appliance, ApplyError, Shared};

/// Largest config accepted: 10,000 floating IPs and hundreds of ports fit well below this.
const MAX_BODY: u64 = 32 * 1024 * 1024;

pub struct ApiState {
    appliance: Arc<tokio::sync::Mutex<Appliance>>,
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    started_at: String,
}

impl ApiState {
    pub fn new(appliance: Arc<tokio::sync::Mutex<Appliance>>, shared: Arc<Mutex<Shared>>) -> Self {
        ApiState {
            appliance,
            shared,
            started: Instant::now(),
            started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    details: &'a [Problem],
}

pub fn error(status: StatusCode, message: &str, details: &[Problem]) -> Response {
    let body = ErrorBody {
        error: message,
        details,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn ok_json<T: Serialize>(value: &T) -> Response {
    warp::reply::json(value).into_response()
}

fn text(body: String) -> Response {
    warp::reply::with_header(body, "content-type", "text/plain; charset=utf-8").into_response()
}

/// All routes, with every rejection turned into a JSON error.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());

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
            let shared = s.shared.lock().expect("status lock");
            let doc = shared.current.as_ref().map(|d| d.redacted());
            ok_json(&json!({ "configuration": doc.map(|d| json!(d)).unwrap_or(json!({})) }))
        });
    let put_config = warp::path!("v1" / "system" / "config")
        .and(warp::put())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(put_config);
    let firewall = warp::path!("v1" / "firewall" / "rules")
        .and(warp::get())
        .then(firewall_rules);
    let status = warp::path!("v1" / "status")
        .and(warp::get())
        .and(with_state)
        .then(|s: Arc<ApiState>| async move {
            // Daemon states live with the appliance; an apply in progress holds it, so the
            // status waits at most briefly for them and answers without them otherwise.
            let services = match tokio::time::timeout(
                std::time::Duration::from_millis(200),
                s.appliance.lock(),
            )
            .await
            {
                Ok(appliance) => appliance.services_status(),
                Err(_) => json!("busy: an apply is in progress"),
            };
            let mut body = status(&s);
            body["services"] = services;
            ok_json(&body)
        });

    base.or(interfaces)
        .unify()
        .or(interface)
        .unify()
        .or(get_config)
        .unify()
        .or(put_config)
        .unify()
        .or(firewall)
        .unify()
        .or(status)
        .unify()
        .recover(rejection)
        .unify()
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
    match s.appliance.lock().await.interfaces().await {
        Ok(list) => ok_json(&json!({ "interfaces": list })),
        Err(e) => apply_error(e),
    }
}

async fn get_interface(name: String, s: Arc<ApiState>) -> Response {
    match s.appliance.lock().await.interfaces().await {
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
pub fn is_json_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

async fn put_config(content_type: Option<String>, body: Bytes, s: Arc<ApiState>) -> Response {
    if !content_type.as_deref().is_some_and(is_json_content_type) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the config must be sent as Content-Type: application/json",
            &[],
        );
    }
    let config = match akanda_model::parse(&body) {
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
    // The apply runs in its own task: a client that hangs up must not cancel a transaction
    // half-way. The lock serialises concurrent PUTs.
    let appliance = s.appliance.clone();
    let task = tokio::spawn(async move {
        let mut appliance = appliance.lock_owned().await;
        let shown = config.document.redacted();
        appliance.apply(config).await.map(|()| shown)
    });
    match task.await {
        Ok(Ok(doc)) => ok_json(&json!({ "configuration": doc })),
        Ok(Err(e)) => apply_error(e),
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

fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::DoesNotFit(problems) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the config does not fit this appliance",
            &problems,
        ),
        ApplyError::Kernel { failed, rollback } => {
            let (message, details) = match rollback {
                Ok(()) => (
                    format!("the kernel refused the config; the previous state was restored: {failed}"),
                    vec![Problem::new("", failed)],
                ),
                Err(rb) => (
                    format!("the kernel refused the config and restoring the previous state failed: {failed}"),
                    vec![Problem::new("", failed), Problem::new("", format!("rollback: {rb}"))],
                ),
            };
            error(StatusCode::CONFLICT, &message, &details)
        }
        ApplyError::Unavailable(msg) => error(StatusCode::SERVICE_UNAVAILABLE, &msg, &[]),
    }
}

fn status(s: &ApiState) -> serde_json::Value {
    let shared = s.shared.lock().expect("status lock");
    json!({
        "agent": "akanda-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": s.started_at,
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "config_hash": shared.current_hash,
        "last_apply": shared.last_apply,
        "applies": { "ok": shared.counters.applies_ok, "failed": shared.counters.applies_failed },
        "netlink_writes_total": shared.netlink_writes_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
