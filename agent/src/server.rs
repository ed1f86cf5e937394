//! The HTTP listener: our own accept loop serving `warp::service(...)` through hyper-util, so
//! mutual TLS (`tls.rs`) is one more layer around each accepted stream, and handlers see the
//! verified peer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
pub(crate) fn bind_to_device(ifname: &str, port: u16, backlog: i32) -> io::Result<TcpListener> {
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

/// What one client may hold of the agent: connections, time and HTTP/2 streams. Every bound
/// frees what a slow, stalled or hostile client holds; none of them limits the orchestrator's
/// legitimate use (one connection at a time, requests of a few MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once. More wait in the kernel's accept backlog (they are not
    /// accepted, so they cost no file descriptor and no memory in the agent).
    pub max_connections: usize,
    /// From accept to the end of the first request's headers, TLS handshake included; for
    /// later requests on a kept-alive HTTP/1 connection, from their first byte (hyper).
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight and no byte moving is closed after
    /// this.
    pub idle_timeout: Duration,
    /// A request body (a PUT) must have arrived completely within this; otherwise 408, and the
    /// request never reaches the apply lock.
    pub body_timeout: Duration,
    /// HTTP/2 streams (requests) in flight on one connection.
    pub max_http2_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_http2_streams: 16,
        }
    }
}

/// Largest request head (request line and headers) read: the API's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// After a failed `accept` (no file descriptor left, no memory), the loop sleeps before trying
/// again, doubling from the first to the last delay while it keeps failing: a busy loop would
/// take the CPU the connections holding the descriptors need to finish.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The delay after `accept` failed with `error`, given the previous delay (`None`: the last
/// accept succeeded). `None` for errors about one connection (the peer reset it before it was
/// accepted): the next `accept` is tried at once.
pub(crate) fn accept_backoff(error: &io::Error, previous: Option<Duration>) -> Option<Duration> {
    match error.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM) => None,
        _ => Some(previous.map_or(ACCEPT_BACKOFF_FIRST, |d| (d * 2).min(ACCEPT_BACKOFF_MAX))),
    }
}

/// Accepts from `listener` while holding one of `slots`' permits per connection, backing off
/// when `accept` fails. `None` when the slots are closed.
pub(crate) async fn accept_within(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    backoff: &mut Option<Duration>,
    what: &str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                *backoff = None;
                return Some((stream, addr, permit));
            }
            Err(e) => match accept_backoff(&e, *backoff) {
                None => tracing::debug!(listener = what, error = %e, "accept failed"),
                Some(delay) => {
                    // One warning per streak of failures, not one per attempt.
                    if backoff.is_none() {
                        tracing::warn!(listener = what, error = %e, "accept failed: backing off");
                    }
                    *backoff = Some(delay);
                    tokio::time::sleep(delay).await;
                }
            },
        }
    }
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
    limits: ConnectionLimits,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = None;
    loop {
        let (stream, addr, permit) = tokio::select! {
            accepted = accept_within(&listener, &slots, &mut backoff, "api") => match accepted {
                Some(a) => a,
                None => return,
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let inner = TowerToHyperService::new(warp::service(routes.clone()));
        let tls = tls.as_ref().map(|t| t.config());
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let stream = Watched::new(stream, activity.clone());
            match tls {
                None => serve_connection(stream, inner, Peer::plain(addr), activity, limits).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(
                        limits.header_read_timeout,
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
                    serve_connection(stream, inner, peer, activity, limits).await
                }
            }
        });
    }
}

/// What a connection's watchdog knows: when it was accepted, when a byte last moved, how many
/// requests it has begun and how many are in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    accepted: Instant,
    /// Milliseconds after `accepted`.
    last_io_ms: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    /// Counts a request from its start until the guard drops (its response is ready).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Why the connection must be closed now, if it must.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        let now = self.accepted.elapsed();
        if self.requests.load(Ordering::Relaxed) == 0 {
            // Covers what hyper's own header timer does not: the TLS handshake and the
            // protocol detection before the first request.
            return (now > limits.header_read_timeout).then_some("no request in time");
        }
        let idle = now.saturating_sub(Duration::from_millis(
            self.last_io_ms.load(Ordering::Relaxed),
        ));
        (self.in_flight.load(Ordering::Relaxed) == 0 && idle > limits.idle_timeout)
            .then_some("idle")
    }
}

/// One request in flight on a connection (see [`Activity::request`]).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A stream that records in its [`Activity`] when a byte last moved.
    pub(crate) struct Watched<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
    }
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Runs `connection` until it ends or its [`Activity`] says it expired (then it is dropped,
/// which closes the socket: no request is in flight on it, or it never sent one).
pub(crate) async fn watch<C>(
    connection: C,
    activity: &Activity,
    limits: &ConnectionLimits,
    peer: SocketAddr,
) where
    C: Future,
{
    tokio::pin!(connection);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = ticker.tick() => {
                if let Some(why) = activity.expired(limits) {
                    tracing::debug!(%peer, why, "closing the connection");
                    return;
                }
            }
        }
    }
}

async fn serve_connection<I, S>(
    io: I,
    inner: TowerToHyperService<S>,
    peer: Peer,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
    let requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let in_flight = requests.request();
            let response = hyper::service::Service::call(&inner, req);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        });
    let mut conn = Builder::new(TokioExecutor::new());
    conn.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    conn.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_http2_streams)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(Some(limits.max_http2_streams as usize))
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_read_timeout);
    let connection = conn.serve_connection(TokioIo::new(io), service);
    let served = async {
        if let Err(e) = connection.await {
            tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
        }
    };
    watch(served, &activity, &limits, addr).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    /// An API stand-in: `/slow` answers after 1.5 s, anything else at once.
    fn routes() -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
        use warp::Reply;
        let slow = warp::path("slow").then(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "slow".into_response()
        });
        slow.or(warp::any().map(|| "ok".into_response())).unify()
    }

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(600),
            idle_timeout: Duration::from_millis(800),
            body_timeout: Duration::from_secs(1),
            max_http2_streams: 3,
        }
    }

    /// Serves [`routes`] on a loopback port from its own runtime thread; returns the address.
    fn start(limits: ConnectionLimits) -> SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, routes(), std::future::pending(), None, limits).await;
            });
        });
        rx.recv().unwrap()
    }

    /// Seconds until the server closes `stream` (reads until EOF or reset), or `None` when
    /// it is still open after `within`.
    fn closed_after(stream: &mut StdStream, within: Duration) -> Option<f64> {
        let started = Instant::now();
        stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) if started.elapsed() < within => {
                    return Some(started.elapsed().as_secs_f64())
                }
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
        let mut s = StdStream::connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let addr = start(limits());
        let mut silent = StdStream::connect(addr).unwrap();
        let after = closed_after(&mut silent, Duration::from_secs(5)).expect("closed");
        assert!((0.5..3.0).contains(&after), "closed after {after} s");
    }

    #[test]
    fn headers_dribbled_slower_than_the_header_timeout_are_cut_off() {
        let addr = start(limits());
        let mut slow = StdStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        // One header byte every 100 ms: the bytes keep moving, the headers never end.
        let closed = loop {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"X").is_err() || started.elapsed() > Duration::from_secs(5) {
                break started.elapsed();
            }
        };
        assert!(
            closed < Duration::from_secs(4),
            "still open after {closed:?}"
        );
    }

    #[test]
    fn an_idle_kept_alive_connection_is_closed_but_not_while_a_request_is_in_flight() {
        let addr = start(limits());
        let mut s = StdStream::connect(addr).unwrap();
        // The request takes 1.5 s, longer than the idle timeout: it must still be answered.
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slow"), "{answer}");
        // Then idle: closed after about the idle timeout.
        let after = closed_after(&mut s, Duration::from_secs(5)).expect("closed");
        assert!((0.5..3.0).contains(&after), "closed after {after} s");
    }

    #[test]
    fn connections_beyond_the_cap_wait_until_a_slot_frees() {
        let addr = start(limits());
        let silent: Vec<StdStream> = (0..4).map(|_| StdStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        // The fifth is not served while the four silent ones hold every slot...
        let started = Instant::now();
        let answer = get(addr, "/", Duration::from_secs(5)).unwrap();
        let waited = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // ...but once the header timeout closes them (0.6 s after they were accepted).
        assert!(
            waited >= Duration::from_millis(300),
            "answered after {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
        drop(silent);
    }

    #[test]
    fn http2_connections_are_told_the_stream_limit() {
        let addr = start(limits());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
            let mut client = client.ready().await.unwrap();
            // The server's SETTINGS arrive with the first exchange.
            let request = hyper::Request::get("http://x/").body(()).unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let response = tokio::select! {
                r = response => r.unwrap(),
                c = &mut connection => panic!("connection ended: {c:?}"),
            };
            assert_eq!(response.status(), 200);
            assert_eq!(connection.max_concurrent_send_streams(), 3);
        });
    }

    #[test]
    fn accept_backs_off_while_descriptors_run_out_and_not_for_one_lost_connection() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let first = accept_backoff(&emfile, None).unwrap();
        assert_eq!(first, ACCEPT_BACKOFF_FIRST);
        let mut delay = first;
        for _ in 0..20 {
            let next = accept_backoff(&emfile, Some(delay)).unwrap();
            assert!(next >= delay);
            delay = next;
        }
        assert_eq!(delay, ACCEPT_BACKOFF_MAX);
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(accept_backoff(&aborted, Some(delay)), None);
    }
}
