//! Benchmark: what mutual TLS costs the orchestrator, measured from the management namespace.
//!
//! Needs root and a release build of the agent:
//!     cargo build --release -p akanda-agent && cargo bench -p akanda-tests --bench tls
//!
//! The same router (the conformance config fitted to a RouterLab) is served first over plain
//! HTTP (`--insecure-http`), then over mutual TLS (certificates made by akanda-pki). For each:
//! - floor: `GET /v1/base/` on a kept-alive connection (a bare HTTP round trip);
//! - new connection: TCP connect + (TLS handshake) + `GET /v1/base/`, and for TLS the
//!   handshake alone as the client sees it (the server's verdict on the client certificate
//!   arrives with the first response in TLS 1.3, so the request figure includes it);
//! - `PUT /v1/system/config` of the basic config on a kept-alive connection: a changed apply
//!   (alternating between two configs) and a no-op re-apply (the same config again).
//!
//! Rounds: `AKANDA_BENCH_ROUNDS` (default 40); figures are p50 / p95 in milliseconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use akanda_tests::tls::{self, Pki};
use akanda_tests::{in_netns, release_bin, Agent, Http, RouterLab};
use serde_json::{json, Value};

struct Client<S: Read + Write> {
    stream: BufReader<S>,
}

impl<S: Read + Write> Client<S> {
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s.flush().unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        (status, body)
    }

    fn timed(&mut self, method: &str, path: &str, body: &[u8]) -> Duration {
        let t = Instant::now();
        let (status, resp) = self.request(method, path, body);
        let elapsed = t.elapsed();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        elapsed
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

fn tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut sock = tcp(addr);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    rustls::StreamOwned::new(conn, sock)
}

fn ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn fmt(s: &[Duration]) -> String {
    if s.is_empty() {
        return "-".into();
    }
    format!("{:.3} / {:.3}", ms(s, 0.5), ms(s, 0.95))
}

#[derive(Default)]
struct Figures {
    floor: Vec<Duration>,
    new_conn_get: Vec<Duration>,
    handshake: Vec<Duration>,
    put_changed: Vec<Duration>,
    put_noop: Vec<Duration>,
}

fn measure<S: Read + Write>(
    rounds: usize,
    mut keepalive: Client<S>,
    mut fresh: impl FnMut() -> (Duration, Duration),
    a: &[u8],
    b: &[u8],
) -> Figures {
    let mut f = Figures::default();
    keepalive.timed("PUT", "/v1/system/config", a); // warm-up
    for _ in 0..rounds {
        f.floor.push(keepalive.timed("GET", "/v1/base/", b""));
        let (handshake, total) = fresh();
        f.handshake.push(handshake);
        f.new_conn_get.push(total);
        f.put_changed
            .push(keepalive.timed("PUT", "/v1/system/config", b));
        f.put_noop
            .push(keepalive.timed("PUT", "/v1/system/config", b));
        keepalive.timed("PUT", "/v1/system/config", a);
    }
    f
}

fn main() {
    if !akanda_tests::require_root() {
        return;
    }
    let rounds: usize = std::env::var("AKANDA_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
    // AKANDA_AGENT_BIN names another build (e.g. a copy of the release agent).
    let bin = std::env::var_os("AKANDA_AGENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| release_bin("akanda-agent"));
    let lab = RouterLab::new("btls");
    let addr = lab.listen_addr();
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let [ca, cert, key] = tls::curl_files(&pki);

    // Two configs: the basic one, and the same with the internal network renumbered.
    let configs = |http: &Http| {
        let a = lab.fitted_config_with(http);
        let mut b = a.clone();
        b["networks"][2]["interface"]["addresses"] = json!(["192.168.10.1/24"]);
        b["networks"][2]["subnets"][0]["cidr"] = json!("192.168.10.0/24");
        b["networks"][2]["subnets"][0]["gateway_ip"] = json!("192.168.10.1");
        b["networks"][2]["subnets"][0]["host_routes"] = json!([]);
        b["networks"][2]["allocations"] = json!([]);
        b["floating_ips"] = json!([]);
        (
            serde_json::to_vec(&a).unwrap(),
            serde_json::to_vec(&b).unwrap(),
        )
    };

    // Plain HTTP.
    let mut agent = Agent::spawn_program(&bin, lab.router(), addr, Some(lab.state_dir()), &[]);
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let (a, b) = configs(&lab.http());
    let plain = in_netns(lab.mgmt(), || {
        let fresh = || {
            let t = Instant::now();
            let mut c = Client {
                stream: BufReader::new(tcp(addr)),
            };
            let connected = t.elapsed();
            c.timed("GET", "/v1/base/", b"");
            (connected, t.elapsed())
        };
        measure(
            rounds,
            Client {
                stream: BufReader::new(tcp(addr)),
            },
            fresh,
            &a,
            &b,
        )
    });
    agent.stop();

    // Mutual TLS.
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent =
        Agent::spawn_tls_program(&bin, lab.router(), addr, Some(lab.state_dir()), &args);
    let https = Http::new(lab.mgmt(), format!("https://{addr}")).with_tls(&ca, &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(https.request("GET", "/v1/base/", None), Ok(r) if r.status == 200) {
        assert!(
            Instant::now() < deadline,
            "TLS agent not ready\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a, b) = configs(&https);
    let config = pki.client_config();
    let secure = in_netns(lab.mgmt(), || {
        let fresh = || {
            let t = Instant::now();
            let s = tls_stream(addr, config.clone());
            let handshake = t.elapsed();
            let mut c = Client {
                stream: BufReader::new(s),
            };
            c.timed("GET", "/v1/base/", b"");
            (handshake, t.elapsed())
        };
        measure(
            rounds,
            Client {
                stream: BufReader::new(tls_stream(addr, config.clone())),
            },
            fresh,
            &a,
            &b,
        )
    });
    let log = agent.log();
    agent.stop();
    assert!(log.contains("config changed"), "{log}");

    println!();
    println!(
        "akanda-agent over plain HTTP and over mutual TLS (ECDSA P-256, TLS 1.3), {rounds} rounds, milliseconds p50 / p95"
    );
    println!("{:<58} {:>18} {:>18}", "", "plain HTTP", "mutual TLS");
    let row = |what: &str, p: &[Duration], t: &[Duration]| {
        println!("{what:<58} {:>18} {:>18}", fmt(p), fmt(t));
    };
    row(
        "floor: GET /v1/base/, kept-alive connection",
        &plain.floor,
        &secure.floor,
    );
    row(
        "connect (+ TLS handshake, client side)",
        &plain.handshake,
        &secure.handshake,
    );
    row(
        "new connection + GET /v1/base/",
        &plain.new_conn_get,
        &secure.new_conn_get,
    );
    row(
        "PUT basic config, changed apply (kept-alive)",
        &plain.put_changed,
        &secure.put_changed,
    );
    row(
        "PUT basic config, no-op re-apply (kept-alive)",
        &plain.put_noop,
        &secure.put_noop,
    );
    let v: Value = json!({
        "handshake_ms_p50": ms(&secure.handshake, 0.5),
        "tls_new_connection_get_ms_p50": ms(&secure.new_conn_get, 0.5),
        "put_changed_ms_p50": [ms(&plain.put_changed, 0.5), ms(&secure.put_changed, 0.5)],
        "put_changed_ms_p95": [ms(&plain.put_changed, 0.95), ms(&secure.put_changed, 0.95)],
    });
    println!("\n{v}");
}
