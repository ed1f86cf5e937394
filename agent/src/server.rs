//! The HTTP listener: our own accept loop serving `warp::service(...)` through hyper-util, so
//! mutual TLS (`tls.rs`) is one more layer around each accepted stream, and handlers see the
//! verified peer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use warp::reply::Response;
use warp::Filter;

use crate::tls::{Peer, TlsState};

/// Binds with IP_FREEBIND, so the agent can listen on its management address even while the
/// kernel is still running duplicate address detection on it.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// `[::]:port` (dual stack; `0.0.0.0:port` where IPv6 is off) with `SO_BINDTODEVICE ifname`:
/// every address of that NIC and no other NIC's. The one device-bound binder: the API on a
/// DHCP-configured management NIC and each NIC's metadata proxy use it.
pub fn bind_to_device(ifname: &str, port: u16, backlog: i32) -> io::Result<TcpListener> {
    use std::net::{IpAddr, Ipv6Addr};
    let (socket, addr) = match Socket::new(Domain::IPV6, Type::STREAM, None) {
        Ok(s) => {
            s.set_only_v6(false)?;
            (s, SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => (
            Socket::new(Domain::IPV4, Type::STREAM, None)?,
            SocketAddr::from(([0, 0, 0, 0], port)),
        ),
        Err(e) => return Err(e),
    };
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(ifname.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

/// Serves until `shutdown` resolves. Connections already accepted finish on their own tasks.
///
/// With `tls`, each connection first completes a mutual TLS handshake with the config in force
/// when it was accepted (a rotation changes the next handshakes only); a refused client is
/// dropped before any HTTP. Every request carries the connection's [`Peer`] in its extensions.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<TlsState>>,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let inner = TowerToHyperService::new(warp::service(routes.clone()));
        let tls = tls.as_ref().map(|t| t.config());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), inner, Peer::plain(addr)).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let peer =
                        Peer::from_certificates(addr, stream.get_ref().1.peer_certificates());
                    tracing::debug!(%peer, "TLS connection");
                    serve_connection(TokioIo::new(stream), inner, peer).await
                }
            }
        });
    }
}

/// A client that opens a connection and sends nothing is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection<I, S>(io: I, inner: TowerToHyperService<S>, peer: Peer)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    TowerToHyperService<S>: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = Infallible,
        > + Send
        + 'static,
    <TowerToHyperService<S> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Future: Send + 'static,
{
    let addr = peer.addr;
    let peer = Arc::new(peer);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            hyper::service::Service::call(&inner, req)
        });
    let conn = Builder::new(TokioExecutor::new());
    if let Err(e) = conn.serve_connection(io, service).await {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}
