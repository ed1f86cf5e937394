//! Benchmark: what mutual TLS costs the orchestrator, measured from the management namespace.
//!
//! Needs root and a release build of the agent:
//!     cargo build --release -p akanda-agent && cargo bench -p akanda-tests --bench tls
//!
//! The same router (the conformance config fitted to a RouterLab) is served first over plain
//! HTTP (`--insecure-http`), then over mutual TLS (certificates made by akanda-pki). For each:
//! - floor: `GET /v1/base/` on a kept-alive connection (a bare HTTP round trip);
//! - new connection: TCP connect + (TLS handshake) + `GET /v1/base/`, and on another new
//!   connection the TCP connect (+ TLS handshake) alone as the client sees it (the server's
//!   verdict on the client certificate arrives with the first response in TLS 1.3, so the
//!   request figure includes it);
//! - `PUT /v1/system/config` of the basic config on a kept-alive connection: a changed apply
//!   (alternating between two configs) and a no-op re-apply (the same config again).
//!
//! The HTTP client is the harness's (`akanda_tests::bench::AgentClient`, reqwest), its sockets
//! in the management namespace. Rounds: `AKANDA_BENCH_ROUNDS` (default 40); figures are p50 /
//! p95 in milliseconds.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use akanda_tests::bench::Connections::{KeepAlive, OnePerRequest};
use akanda_tests::bench::{env_number, percentile_ms, AgentClient};
use akanda_tests::tls::{self, Pki};
use akanda_tests::{in_netns, release_bin, Agent, Http, RouterLab};
use serde_json::{json, Value};

fn ms(samples: &[Duration], p: f64) -> f64 {
    percentile_ms(samples, p)
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

/// `keepalive` for the floor and the PUTs; `fresh` gives a connection's set-up time alone
/// (TCP connect, + TLS handshake) and the time of a GET on a new connection.
fn measure(
    rounds: usize,
    keepalive: &AgentClient,
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
    let rounds: usize = env_number("AKANDA_BENCH_ROUNDS", 40);
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
    let keepalive = AgentClient::new(lab.mgmt(), &format!("http://{addr}"), None, KeepAlive);
    let fresh_client = AgentClient::new(lab.mgmt(), &format!("http://{addr}"), None, OnePerRequest);
    let fresh = || {
        let connect = in_netns(lab.mgmt(), || {
            let t = Instant::now();
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            t.elapsed()
        });
        (connect, fresh_client.timed("GET", "/v1/base/", b""))
    };
    let plain = measure(rounds, &keepalive, fresh, &a, &b);
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
    let url = format!("https://{addr}");
    let keepalive = AgentClient::new(lab.mgmt(), &url, Some(config.clone()), KeepAlive);
    let fresh_client = AgentClient::new(lab.mgmt(), &url, Some(config.clone()), OnePerRequest);
    let fresh = || {
        let handshake = in_netns(lab.mgmt(), || {
            let t = Instant::now();
            tls::handshake(addr, config.clone()).expect("TLS handshake");
            t.elapsed()
        });
        (handshake, fresh_client.timed("GET", "/v1/base/", b""))
    };
    let secure = measure(rounds, &keepalive, fresh, &a, &b);
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
