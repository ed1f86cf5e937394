//! The admin socket: a local Unix socket (mode 0600) serving the router status records as JSON
//! over HTTP/1.1, for `rug-lite router list|show`. Local only by construction: Astara's admin
//! API listened on 0.0.0.0 without authentication, reachable from every appliance.
//!
//! - `GET /v1/routers` → array of records;
//! - `GET /v1/routers/ID` → one record, or 404 `{"error": …}`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use warp::Filter;

use crate::status::StatusTable;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("cannot reach rug-lite serve at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("admin socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

fn routes(
    status: StatusTable,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    use warp::reply::{json, with_status, Reply};
    let list_status = status.clone();
    let list = warp::path!("v1" / "routers")
        .and(warp::get())
        .map(move || json(&list_status.list()).into_response());
    let show = warp::path!("v1" / "routers" / String)
        .and(warp::get())
        .map(move |id: String| match status.get(&id) {
            Some(s) => json(&s).into_response(),
            None => with_status(
                json(&serde_json::json!({"error": format!("no router {id} is known to rug-lite")})),
                warp::http::StatusCode::NOT_FOUND,
            )
            .into_response(),
        });
    list.or(show)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(
                with_status(
                    json(&serde_json::json!({"error": "not found"})),
                    warp::http::StatusCode::NOT_FOUND,
                )
                .into_response(),
            )
        })
        .unify()
}

/// Binds the socket: the parent directory is created, a stale socket is replaced, anything
/// else at the path is left alone (an error).
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: UnixListener,
    status: StatusTable,
    shutdown: impl Future<Output = ()>,
) {
    let routes = routes(status);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        tokio::spawn(async move {
            let conn = Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// `GET path` over the socket: (status code, body).
pub(crate) async fn get(socket: &Path, path: &str) -> Result<(u16, Bytes), AdminError> {
    let unreachable = |e: &dyn std::fmt::Display| AdminError::Unreachable {
        path: socket.to_path_buf(),
        reason: e.to_string(),
    };
    let protocol = |e: &dyn std::fmt::Display| AdminError::Protocol {
        path: socket.to_path_buf(),
        reason: e.to_string(),
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "rug-lite")
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(&e))?;
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(&e))?
        .to_bytes();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::RouterState;

    #[tokio::test]
    async fn list_and_show_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.sock");
        let status = StatusTable::default();
        status.update("r1", |s| {
            s.state = RouterState::Configured;
            s.server_id = Some("srv".into());
        });
        status.update("r2", |_| {});
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, status.clone(), async {
            let _ = stopped.await;
        }));

        let (code, body) = get(&path, "/v1/routers").await.unwrap();
        assert_eq!(code, 200);
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 2);
        assert_eq!(list[0]["router_id"], "r1");
        assert_eq!(list[0]["state"], "configured");
        assert_eq!(list[1]["state"], "pending");
        assert!(list[1]["last_push"].is_null());

        let (code, body) = get(&path, "/v1/routers/r1").await.unwrap();
        assert_eq!(code, 200);
        let one: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(one["server_id"], "srv");

        let (code, body) = get(&path, "/v1/routers/nope").await.unwrap();
        assert_eq!(code, 404);
        assert!(String::from_utf8_lossy(&body).contains("no router nope"));

        stop.send(()).unwrap();
        server.await.unwrap();
        // A restart replaces the stale socket.
        drop(bind(&path).unwrap());
    }

    #[tokio::test]
    async fn an_absent_server_is_reported_with_the_path() {
        let err = get(Path::new("/nonexistent/rug-lite.sock"), "/v1/routers")
            .await
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("cannot reach rug-lite serve at /nonexistent/rug-lite.sock"));
    }

    #[test]
    fn bind_refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, "x").unwrap();
        assert!(bind(&path).is_err());
        assert!(path.exists());
    }
}
