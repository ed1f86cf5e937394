//! DHCP, metadata, GARP and daemon supervision driven through the agent's API (needs root).
//! The components are proven one by one in agent/tests/services_root.rs; this proves the
//! agent wires them to its config, its firewall and its status.

use std::time::{Duration, Instant};

use akanda_tests::{require_root, RouterLab};
use serde_json::Value;

/// An orchestrator stand-in: answers every GET with the request's headers as JSON.
const ORCHESTRATOR: &str = r#"
import http.server, json, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
S(("::", 9697), H).serve_forever()
"#;

fn status(lab: &RouterLab) -> Value {
    lab.http().get("/v1/status").json()
}

#[test]
fn dhcp_metadata_announcements_and_supervision_through_the_agent() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("svc");
    let _agent = lab.start_agent();
    let config = lab.fitted_config();
    let ge2 = lab.ifname_for(RouterLab::ROUTER_MACS[2]);
    // Linux learns new neighbours from gratuitous ARP / unsolicited NA only when told to (as
    // upstream routers in front of floating IP ranges are); it would otherwise only update
    // entries it already has.
    lab.ext().sysctl("net.ipv4.conf.eth0.arp_accept", "1");
    lab.ext()
        .sysctl("net.ipv6.conf.eth0.accept_untracked_na", "1");
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);

    // The external host learnt the floating IP's MAC from the router's announcement, with no
    // traffic to it.
    let router_ext_mac = RouterLab::ROUTER_MACS[1];
    let neigh = lab.ext().sh("ip neigh show 172.16.77.50");
    assert!(
        neigh.contains(router_ext_mac),
        "no announcement seen: {neigh:?}"
    );

    // DHCP: t1 (its MAC is an allocation) gets 192.168.0.2 and its host name from the router.
    let env = lab.t1_dhcp_lease();
    assert!(env.contains("new_ip_address=192.168.0.2"), "{env}");
    assert!(env.contains("new_host_name=192-168-0-2"), "{env}");
    lab.t1().ip("addr replace 192.168.0.2/24 dev eth0");
    lab.t1().sh("ip route replace default via 192.168.0.1");

    // Metadata: the tenant's request reaches the orchestrator with the instance's identity.
    let mut orchestrator = lab.mgmt().spawn(&["python3", "-c", ORCHESTRATOR]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.mgmt().sh("ss -ltn").contains(":9697 ") {
        assert!(
            Instant::now() < deadline,
            "orchestrator stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: Value = serde_json::from_str(
        &lab.t1()
            .sh("curl -sS --max-time 10 http://169.254.169.254/latest/meta-data/instance-id"),
    )
    .unwrap();
    let allocation = &config["networks"][2]["allocations"][0];
    assert_eq!(got["path"], "/latest/meta-data/instance-id");
    assert_eq!(got["x-instance-id"], allocation["device_id"]);
    assert_eq!(got["x-tenant-id"], config["tenant_id"]);
    assert_eq!(
        got["x-neutron-network-id"],
        config["networks"][2]["network_id"]
    );
    assert_eq!(got["x-forwarded-for"], RouterLab::T1_V4);
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();

    // Supervision: dnsmasq is reported, and comes back within 5 s after being killed.
    let s = status(&lab);
    let pid = s["services"]["dnsmasq"][&ge2]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(s["services"]["dnsmasq"][&ge2]["running"], true);
    lab.router().sh(&format!("kill -9 {pid}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(&lab);
        let d = &s["services"]["dnsmasq"][&ge2];
        if d["running"] == true && d["pid"].as_u64() != Some(pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq not back within 5 s: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The upstream router: a real bird in the external namespace, peering with the router's
/// external IPv6 address and importing what it announces.
const PEER: &str = r#"
log stderr all;
router id 172.16.77.1;
protocol device { scan time 2; }
protocol bgp upstream {
  local 2001:db8:77::1 as 64512;
  neighbor 2001:db8:77::2 as 64512;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  ipv6 { import all; export none; };
}
"#;

#[test]
fn bgp_peer_learns_and_loses_the_tenant_prefix_through_the_agent() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("bgp");
    let _agent = lab.start_agent();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("peer.conf");
    let sock = dir.path().join("peer.ctl");
    std::fs::write(&conf, PEER).unwrap();
    let (conf, sock) = (conf.display().to_string(), sock.display().to_string());
    let mut peer = lab.ext().spawn(&["bird", "-f", "-c", &conf, "-s", &sock]);
    let routes = || {
        let out = lab.ext().run(&[
            "birdc", "-s", &sock, "show", "route", "protocol", "upstream",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wait_for = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let table = routes();
            if table.contains("2001:db8:100::/64") == want {
                return table;
            }
            assert!(
                Instant::now() < deadline,
                "prefix present={} never: {table}",
                !want
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };

    let config = lab.fitted_config();
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    let learnt = wait_for(true);
    // Only tenant prefixes: not the management ULA, not the external subnet itself.
    assert!(!learnt.contains("fdca:3ba5"), "{learnt}");
    assert!(!learnt.contains("2001:db8:77::/64"), "{learnt}");

    // The tenant network leaves the router: the peer loses its prefix.
    let mut without = config.clone();
    without["networks"].as_array_mut().unwrap().remove(2);
    without["floating_ips"] = serde_json::json!([]);
    let r = lab.http().put_json("/v1/system/config", &without);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(false);
    let _ = peer.kill();
    let _ = peer.wait();
}

/// The upstream router, passive: it never connects, so the session comes up only when the
/// router's bird connects, and the time measured is the router's own.
const PASSIVE_PEER: &str = r#"
log stderr all;
router id 172.16.77.1;
protocol device { scan time 2; }
protocol bgp upstream {
  local 2001:db8:77::1 as 64512;
  neighbor 2001:db8:77::2 as 64512;
  passive on;
  ipv6 { import all; export none; };
}
"#;

/// The external address goes through duplicate address detection. Added as a plain tentative
/// address, it could not be bound until DAD ended: bird's first connection, about 1 s after the
/// push, failed with `bind: Cannot assign requested address`, and the session waited for bird's
/// retry, about 1 s after DAD. Added as an optimistic address (RFC 4429: usable while DAD
/// runs), bird's first connection succeeds.
///
/// DAD is made to last two probes (`dad_transmits` 2, at least 2 s) so that it surely outlasts
/// bird's first connection: with the default one probe it ends 1 to 2 s after the push, and
/// sometimes just before that connection. The NIC's link-local address has finished its own DAD
/// before the push: the kernel sends neighbour solicitations from it only.
#[test]
fn bgp_session_is_up_at_the_first_connection_after_the_first_push() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("bgpt");
    let agent = lab.start_agent();
    let ext_if = lab.ifname_for(RouterLab::ROUTER_MACS[1]);
    lab.router()
        .sysctl(&format!("net.ipv6.conf.{ext_if}.dad_transmits"), "2");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("peer.conf");
    let sock = dir.path().join("peer.ctl");
    std::fs::write(&conf, PASSIVE_PEER).unwrap();
    let (conf, sock) = (conf.display().to_string(), sock.display().to_string());
    let mut peer = lab.ext().spawn(&["bird", "-f", "-c", &conf, "-s", &sock]);
    let established = || {
        let out = lab
            .ext()
            .run(&["birdc", "-s", &sock, "show", "protocols", "upstream"]);
        String::from_utf8_lossy(&out.stdout).contains("Established")
    };
    let flags = |selector: &str| {
        lab.router()
            .ip(&format!("-6 addr show dev {ext_if} {selector}"))
    };
    let external = format!("to {}", RouterLab::EXT_ROUTER_V6);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::path::Path::new(&sock).exists() || flags("scope link").contains("tentative") {
        assert!(
            Instant::now() < deadline,
            "no peer socket, or the link-local address is still tentative"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let config = lab.fitted_config();
    let pushed = Instant::now();
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    let answered = pushed.elapsed();
    let (up, during_dad) = loop {
        let in_dad = flags(&external).contains("tentative");
        if established() {
            break (pushed.elapsed(), in_dad);
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(30),
            "no BGP session 30 s after the push:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // DAD is kept: the address leaves it afterwards, as a plain address.
    let dad_done = loop {
        let shown = flags(&external);
        if !shown.contains("tentative") {
            assert!(!shown.contains("optimistic"), "{shown}");
            break pushed.elapsed();
        }
        assert!(pushed.elapsed() < Duration::from_secs(10), "{shown}");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "push answered after {answered:.2?}; BGP session established after {up:.2?}; \
         external address out of DAD after {dad_done:.2?}"
    );
    let _ = peer.kill();
    let _ = peer.wait();

    let log = agent.log();
    assert!(
        !log.contains("Cannot assign requested address"),
        "bird could not bind the external address:\n{log}"
    );
    assert!(
        during_dad,
        "the session came up only after DAD ({dad_done:.2?})"
    );
    // bird connects 0.75 to 1 s after it starts, and it starts before the push is answered. A
    // connection that waits for DAD (2 s at least) and bird's retry comes later than this.
    assert!(
        up < answered + Duration::from_millis(1500),
        "BGP session established {up:.2?} after the push (answered after {answered:.2?})"
    );
}
