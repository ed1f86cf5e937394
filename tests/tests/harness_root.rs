//! Self-tests of the harness (no agent): the lab topology forwards traffic
//! when the router is configured by hand, dumps are stable, the HTTP client
//! works from a namespace, and nothing leaks or collides.

use std::collections::HashSet;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use akanda_tests::*;
use serde_json::json;

/// What the agent will do, done by hand: the conformance addresses on
/// eth1/eth2, a second internal network on eth3, IPv4 forwarding on.
fn configure_router_by_hand(lab: &RouterLab) {
    let r = lab.router();
    r.ip("addr add 172.16.77.2/24 dev eth1");
    r.ip("addr add 192.168.0.1/24 dev eth2");
    r.ip("addr add 192.168.1.1/24 dev eth3");
    r.sysctl("net.ipv4.ip_forward", "1");
}

fn assert_gone(names: &[String]) {
    let listed: HashSet<String> = list_netns().into_iter().collect();
    for n in names {
        assert!(!listed.contains(n), "namespace {n} leaked");
    }
}

#[test]
fn lab_forwards_and_dump_is_stable() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let lab = RouterLab::new("hfwd");
    let names: Vec<String> = lab.namespace_names().map(str::to_owned).to_vec();
    eprintln!("lab built in {:?}: {names:?}", t0.elapsed());
    for n in &names {
        assert!(list_netns().contains(n), "{n} missing");
    }

    // The router side is eth0..eth3 with the documented MACs.
    let links = lab.router().ip_json("link show");
    for (i, mac) in lab.router_macs().iter().enumerate() {
        let ifname = format!("eth{i}");
        let link = links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == ifname.as_str())
            .unwrap_or_else(|| panic!("{ifname} missing: {links}"));
        assert_eq!(link["address"], *mac);
    }
    // Management address present before any agent runs.
    assert!(lab
        .router()
        .ip("addr show dev eth0")
        .contains(RouterLab::MGMT_ADDR));

    configure_router_by_hand(&lab);
    assert_pings(lab.t1(), RouterLab::T2_V4);
    assert_pings(lab.t2(), RouterLab::T1_V4);
    assert_pings(lab.ext(), RouterLab::EXT_ROUTER_V4);
    assert_pings(lab.ext(), RouterLab::T1_V4); // via ext's route, no NAT
    assert_pings(lab.mgmt(), RouterLab::MGMT_ADDR);
    assert_pings(lab.router(), RouterLab::MGMT_PEER_ADDR);
    // Nothing routes between mgmt and the tenant networks.
    assert_no_ping(lab.mgmt(), RouterLab::T1_V4);
    eprintln!("pings done at {:?}", t0.elapsed());

    let d1 = lab.dump_router_state();
    sleep(Duration::from_secs(2));
    let d2 = lab.dump_router_state();
    assert_eq!(d1, d2, "dump of an unchanged namespace changed");
    assert!(d1.contains("192.168.1.1") && d1.contains(RouterLab::MGMT_ADDR));
    // And it notices a real change.
    lab.router().ip("addr add 10.99.0.1/32 dev lo");
    assert_ne!(d2, lab.dump_router_state());

    drop(lab);
    assert_gone(&names);
    eprintln!("total {:?}", t0.elapsed());
}

#[test]
fn two_labs_in_parallel() {
    if !require_root() {
        return;
    }
    let build = || {
        std::thread::spawn(|| {
            let lab = RouterLab::new("hpar");
            configure_router_by_hand(&lab);
            lab
        })
    };
    let (a, b) = (build(), build());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let names: Vec<String> = a
        .namespace_names()
        .into_iter()
        .chain(b.namespace_names())
        .map(str::to_owned)
        .collect();
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 10, "{names:?}");
    assert_ne!(a.port(), b.port());
    // Identical addresses in both labs, traffic stays in each.
    for lab in [&a, &b] {
        assert_pings(lab.t1(), RouterLab::T2_V4);
        assert_pings(lab.mgmt(), RouterLab::MGMT_ADDR);
    }
    // Same configuration gives the same dump (modulo nothing).
    assert_eq!(a.dump_router_state(), b.dump_router_state());
    drop((a, b));
    assert_gone(&names);
}

/// Accepts one connection on `argv[1]`:`argv[2]`, reads one request (head and
/// Content-Length body), prints it, then sends `argv[3]` and closes.
const ONE_SHOT_SERVER: &str = r#"
import socket, sys
addr, port, reply = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.bind((addr, port))
s.listen(1)
c, _ = s.accept()
data = b""
while b"\r\n\r\n" not in data:
    data += c.recv(65536)
head, _, body = data.partition(b"\r\n\r\n")
length = 0
for line in head.split(b"\r\n")[1:]:
    name, _, value = line.partition(b":")
    if name.strip().lower() == b"content-length":
        length = int(value)
while len(body) < length:
    body += c.recv(65536)
sys.stdout.buffer.write(head + b"\r\n\r\n" + body)
sys.stdout.flush()
c.sendall(reply)
c.close()
"#;

#[test]
fn http_client_runs_in_namespace() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("hhttp");
    let http = lab.http();
    assert!(http
        .base_url()
        .starts_with("http://[fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0]:"));

    // Nothing listens yet: an error, not a panic or a fake status.
    let err = http.request("GET", "/v1/base/", None).unwrap_err();
    assert!(format!("{err:#}").contains("/v1/base/"), "{err:#}");

    // A one-shot HTTP server in the router namespace on the agent's address: it reads the
    // request, prints it, then answers (an HTTP client may refuse bytes sent before it asked).
    let port = lab.port().to_string();
    let reply = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                 Content-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}";
    let server = lab.router().spawn(&[
        "python3",
        "-c",
        ONE_SHOT_SERVER,
        RouterLab::MGMT_ADDR,
        &port,
        reply,
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.router().exec(&["ss", "-Hltn"]).contains(&port) {
        assert!(Instant::now() < deadline, "the server did not listen");
        sleep(Duration::from_millis(20));
    }
    let r = http.put_json("/v1/system/config", &json!({"hello": "world"}));
    assert_eq!(r.status, 201);
    assert_eq!(r.json(), json!({"ok": true}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let seen = server.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(
        seen.starts_with("PUT /v1/system/config HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("Content-Type: application/json\r\n"),
        "{seen}"
    );
    assert!(seen.ends_with("{\"hello\":\"world\"}"), "{seen}");
}

#[test]
fn drop_kills_processes_in_namespace() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("hkill");
    let name = ns.name().to_owned();
    let mut child = ns.spawn(&["sleep", "60"]);
    assert_eq!(ns.pids(), vec![child.id() as i32]);
    let t0 = Instant::now();
    drop(ns);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_gone(&[name]);
}

#[test]
fn cleanup_stale_removes_only_dead_owners() {
    if !require_root() {
        return;
    }
    // Deletes a hand-made namespace even if the test fails.
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let pid = std::process::id();
    // Not under NS_PREFIX, and with our pid in the prefix: the cleanups
    // that parallel tests and processes run would otherwise race with ours.
    // 99999999 is above any pid_max: that owner is certainly dead.
    let prefix = format!("akstale{pid}-");
    let dead = format!("{prefix}99999999-0");
    let live = format!("{prefix}{pid}-1");
    let _guards = (Del(dead.clone()), Del(live.clone()));
    for n in [&dead, &live] {
        let ok = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // A crashed agent left running inside the stale namespace.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &dead, "sleep", "60"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "pids", &dead])
            .output()
            .unwrap()
            .stdout,
    )
    .contains(&orphan.id().to_string())
    {
        assert!(Instant::now() < deadline, "orphan never entered {dead}");
        sleep(Duration::from_millis(10));
    }

    assert_eq!(cleanup_stale(&prefix), 1);
    assert!(!orphan.wait().unwrap().success(), "orphan not killed");
    let listed = list_netns();
    assert!(!listed.contains(&dead), "{dead} survived");
    assert!(listed.contains(&live), "{live} (live owner) was removed");
}

/// No root needed: the lab's constants are the conformance file's values.
#[test]
fn lab_constants_match_conformance_file() {
    let c = conformance_json(RouterLab::CONFORMANCE);
    let nets = c["networks"].as_array().unwrap();
    let addrs = |ifname: &str| -> Vec<String> {
        nets.iter()
            .find(|n| n["interface"]["ifname"] == ifname)
            .unwrap_or_else(|| panic!("{ifname} not in conformance file"))["interface"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(addrs("ge0"), [format!("{}/64", RouterLab::MGMT_ADDR)]);
    assert_eq!(
        addrs("ge1"),
        [
            format!("{}/24", RouterLab::EXT_ROUTER_V4),
            format!("{}/64", RouterLab::EXT_ROUTER_V6)
        ]
    );
    assert_eq!(addrs("ge2"), ["192.168.0.1/24", "2001:db8:100::1/64"]);
    assert_eq!(c["default_v4_gateway"], RouterLab::EXT_GW_V4);
    assert_eq!(c["orchestrator"]["address"], RouterLab::MGMT_PEER_ADDR);
    let internal = nets
        .iter()
        .find(|n| n["interface"]["ifname"] == "ge2")
        .unwrap();
    let alloc = &internal["allocations"][0];
    assert_eq!(alloc["mac_address"], RouterLab::T1_MAC);
    assert_eq!(alloc["ip_addresses"][RouterLab::T1_V4], true);
    assert_eq!(alloc["ip_addresses"][RouterLab::T1_V6], true);
}

/// Stands in for akanda-agent: logs its arguments, answers every HTTP
/// request with `200 {}` on the `--listen` address (after reading it), exits 0
/// on SIGTERM.
const FAKE_AGENT: &str = r#"#!/bin/sh
echo "fake agent: $*"
while [ $# -gt 0 ]; do
  case "$1" in --listen) listen=$2; shift;; --state-dir) state=$2; shift;; esac
  shift
done
addr=${listen%]:*}; addr=${addr#[}; port=${listen##*:}
echo ran > "$state/fake-agent-ran"
trap 'echo "got TERM"; kill $server 2>/dev/null; exit 0' TERM
python3 -c '
import http.server, socket, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"{}")
    do_PUT = do_POST = do_DELETE = do_GET
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6
Server((sys.argv[1], int(sys.argv[2])), Answer).serve_forever()
' "$addr" "$port" &
server=$!
wait $server
"#;

fn write_script(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn agent_wrapper_with_fake_agent() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("hagent");
    let dir = tempfile::tempdir().unwrap();
    let fake = write_script(dir.path(), "fake-agent", FAKE_AGENT);
    let start = || {
        Agent::spawn_program(
            &fake,
            lab.router(),
            lab.listen_addr(),
            Some(lab.state_dir()),
            &[],
        )
    };

    let mut agent = start();
    assert!(lab.router().pids().contains(&(agent.pid() as i32)));
    agent.wait_ready(lab.mgmt(), Duration::from_secs(10));
    assert_eq!(lab.http().get("/v1/status").json(), json!({}));
    let log = agent.log();
    let expected = format!(
        "fake agent: serve --listen [{}]:{} --state-dir {} --insecure-http",
        RouterLab::MGMT_ADDR,
        lab.port(),
        lab.state_dir().display()
    );
    assert!(log.contains(&expected), "{log}");
    assert!(lab.state_dir().join("fake-agent-ran").exists());
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    assert!(agent.log().contains("got TERM"), "{}", agent.log());

    // Restart on the same state dir and port, then crash it.
    let mut agent = start();
    agent.wait_ready(lab.mgmt(), Duration::from_secs(10));
    let pid = agent.pid() as i32;
    assert!(!agent.kill().success());
    // Only the agent process dies (like a crash); the fake's server may linger
    // until the namespace goes.
    assert!(!lab.router().pids().contains(&pid));
}

#[test]
fn wait_ready_reports_early_exit_with_log() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("hexit");
    let dir = tempfile::tempdir().unwrap();
    let bad = write_script(
        dir.path(),
        "bad-agent",
        "#!/bin/sh\necho 'bad config' >&2\nexit 3\n",
    );
    let mut agent = Agent::spawn_program(&bad, lab.router(), lab.listen_addr(), None, &[]);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        agent.wait_ready(lab.mgmt(), Duration::from_secs(10))
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("exited") && msg.contains("bad config"),
        "{msg}"
    );
}
