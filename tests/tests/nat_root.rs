//! NAT, floating IPs and the firewall with real traffic (needs root).
//!
//! RouterLab: t1 (192.168.0.2) has floating IP 172.16.77.50; t2 (192.168.1.2) has none; ext
//! (172.16.77.1) is the outside world and routes 192.168.0.0/16 to the router, so only the
//! router's firewall keeps it out.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use akanda_tests::{assert_no_ping, assert_pings, require_root, Agent, Netns, RouterLab};
use serde_json::{json, Value};

const FIP: &str = "172.16.77.50";

/// TCP server: writes each client's address to `log`, then echoes lines.
const SERVER: &str = r#"
import socket, sys, threading
log = open(sys.argv[2], "a", buffering=1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
def serve(c, a):
    log.write(a[0] + "\n")
    f = c.makefile("rwb", buffering=0)
    for line in f:
        f.write(line)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"#;

/// TCP client: one connection (from source address `argv[4]` when given); sends a line every
/// 100 ms for `secs` seconds and prints how many echoes came back, and whether the session
/// was cut (an echo missing for 1 s) before the time was up.
const CLIENT: &str = r#"
import socket, sys, time
src = (sys.argv[4], 0) if len(sys.argv) > 4 else None
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3, source_address=src)
c.settimeout(1); f = c.makefile("rwb", buffering=0)
ok = 0; end = time.time() + float(sys.argv[3])
while time.time() < end:
    try:
        f.write(b"x\n")
        if f.readline() != b"x\n": break
        ok += 1
    except Exception:
        break
    time.sleep(0.1)
print("echoes", ok, "cut", time.time() < end)
"#;

/// The conformance config on the lab's NICs, plus t2's internal network.
fn config(lab: &RouterLab) -> Value {
    lab.fitted_config()
}

fn put_ok(lab: &RouterLab, config: &Value) -> Value {
    let r = lab.http().put_json("/v1/system/config", config);
    assert_eq!(r.status, 200, "{}", r.body);
    lab.http().get("/v1/status").json()
}

struct Server {
    _child: Child,
    log: PathBuf,
}

impl Server {
    fn start(ns: &Netns, port: u16, dir: &Path) -> Server {
        let log = dir.join(format!("{}-{port}.log", ns.name()));
        std::fs::write(&log, "").unwrap();
        let child = ns.spawn(&[
            "python3",
            "-c",
            SERVER,
            &port.to_string(),
            log.to_str().unwrap(),
        ]);
        let server = Server { _child: child, log };
        // Ready when it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ns.sh("ss -ltn").contains(&format!(":{port} ")) {
            assert!(Instant::now() < deadline, "server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn peers(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// One short TCP exchange; Ok(()) when the echo came back.
fn tcp_echo(from: &Netns, addr: &str, port: u16) -> Result<(), String> {
    let out = from.run(&["python3", "-c", CLIENT, addr, &port.to_string(), "0.3"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !text.contains("echoes 0") {
        Ok(())
    } else {
        Err(text)
    }
}

fn lab_with_agent(tag: &str) -> Option<(RouterLab, Agent, tempfile::TempDir)> {
    if !require_root() {
        return None;
    }
    let lab = RouterLab::new(tag);
    let agent = lab.start_agent();
    Some((lab, agent, tempfile::tempdir().unwrap()))
}

#[test]
fn snat_dnat_hairpin_and_default_drop() {
    let Some((lab, _agent, dir)) = lab_with_agent("nat") else {
        return;
    };
    let cfg = config(&lab);
    put_ok(&lab, &cfg);

    // Outbound: t2 (no floating IP) appears as the router's external address, t1 as its FIP.
    let outside = Server::start(lab.ext(), 8080, dir.path());
    tcp_echo(lab.t2(), RouterLab::EXT_GW_V4, 8080).unwrap();
    tcp_echo(lab.t1(), RouterLab::EXT_GW_V4, 8080).unwrap();
    assert_eq!(
        outside.peers(),
        vec![RouterLab::EXT_ROUTER_V4.to_string(), FIP.to_string()]
    );

    // Inbound through the floating IP: t1 sees the client's real address.
    let inside = Server::start(lab.t1(), 8080, dir.path());
    tcp_echo(lab.ext(), FIP, 8080).unwrap();
    assert_eq!(inside.peers(), vec![RouterLab::EXT_GW_V4.to_string()]);

    // Hairpin: t2 reaches t1 through t1's floating IP.
    tcp_echo(lab.t2(), FIP, 8080).unwrap();
    assert_eq!(inside.peers().len(), 2);

    // Between internal networks: no NAT.
    let t2_server = Server::start(lab.t2(), 8081, dir.path());
    tcp_echo(lab.t1(), RouterLab::T2_V4, 8081).unwrap();
    assert_eq!(t2_server.peers(), vec![RouterLab::T1_V4.to_string()]);

    // From outside without a floating IP: dropped, although ext has a route to the tenants.
    assert!(tcp_echo(lab.ext(), RouterLab::T2_V4, 8081).is_err());
    assert!(tcp_echo(lab.ext(), RouterLab::T1_V4, 8080).is_err());
    assert_no_ping(lab.ext(), RouterLab::T2_V4);
    // Tenants cannot reach the management network; the orchestrator can reach the API.
    assert_no_ping(lab.t1(), RouterLab::MGMT_PEER_ADDR);
    assert_eq!(lab.http().get("/v1/firewall/rules").status, 200);
    // IPv6 tenant prefixes are protected the same way: out yes, in no.
    assert_pings(lab.t1(), RouterLab::EXT_GW_V6);
    assert_no_ping(lab.ext(), RouterLab::T1_V6);
}

#[test]
fn unchanged_floating_ip_loses_nothing_and_removed_one_is_cut() {
    let Some((lab, _agent, dir)) = lab_with_agent("fipflap") else {
        return;
    };
    let cfg = config(&lab);
    put_ok(&lab, &cfg);
    let _server = Server::start(lab.t1(), 8080, dir.path());
    // A second tenant address with its own floating IP, to be removed later.
    lab.t1().ip("addr add 192.168.0.3/24 dev eth0");
    let mut with_second = cfg.clone();
    with_second["floating_ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"floating_ip": "172.16.77.51", "fixed_ip": "192.168.0.3"}));
    put_ok(&lab, &with_second);

    // A fast ping through the unchanged FIP while pushes add and remove 200 other FIPs.
    let mut ping = lab
        .ext()
        .spawn(&["ping", "-n", "-q", "-i", "0.01", "-c", "400", FIP]);
    let mut many = with_second.clone();
    for i in 0..200u32 {
        many["floating_ips"].as_array_mut().unwrap().push(json!({
            "floating_ip": format!("172.16.77.{}", 100 + i % 150), "fixed_ip": format!("192.168.0.{}", 20 + i)
        }));
    }
    many["floating_ips"].as_array_mut().unwrap().truncate(152);
    for round in 0..6 {
        put_ok(&lab, if round % 2 == 0 { &many } else { &with_second });
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = ping.wait_with_output_fallible();
    assert!(
        out.contains(" 0% packet loss"),
        "pings were lost during pushes: {out}"
    );

    // A long-lived TCP session through the second FIP ends when that FIP is removed.
    let client = lab
        .ext()
        .spawn(&["python3", "-c", CLIENT, "172.16.77.51", "8080", "4"]);
    std::thread::sleep(Duration::from_millis(1000));
    let status = put_ok(&lab, &cfg);
    assert_eq!(
        status["last_apply"]["conntrack_flushed"].as_u64(),
        Some(1),
        "{status}"
    );
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cut True"),
        "the session survived the removal: {text}"
    );
    assert!(
        !text.contains("echoes 0 "),
        "the session never worked: {text}"
    );
    // ... while the unchanged floating IP still works.
    tcp_echo(lab.ext(), FIP, 8080).unwrap();
}

/// A long-lived session of [`CLIENT`] from `from` (source `src` if given) to `addr:port`.
fn session(from: &Netns, addr: &str, port: u16, src: Option<&str>) -> Child {
    let port = port.to_string();
    let mut args = vec!["python3", "-c", CLIENT, addr, &port, "4"];
    args.extend(src);
    from.spawn(&args)
}

/// What a [`session`] printed: cut or not, and whether it ever worked.
fn cut(session: Child) -> bool {
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("echoes 0 "),
        "the session never worked: {text}"
    );
    text.contains("cut True")
}

#[test]
fn a_removed_floating_ip_ends_its_sessions_in_out_and_hairpin_and_no_others() {
    let Some((lab, _agent, dir)) = lab_with_agent("fipcut") else {
        return;
    };
    let cfg = config(&lab);
    lab.t1().ip("addr add 192.168.0.3/24 dev eth0");
    let second = json!({"floating_ip": "172.16.77.51", "fixed_ip": "192.168.0.3"});
    // 40 more floating IPs without sessions: removed with the second one, they make the
    // removal too large for flushes by mark, and the agent walks the table instead.
    let others: Vec<Value> = (0..40)
        .map(|i| json!({"floating_ip": format!("172.16.77.{}", 100 + i), "fixed_ip": format!("192.168.0.{}", 100 + i)}))
        .collect();
    let _t1 = Server::start(lab.t1(), 8080, dir.path());
    let _ext = Server::start(lab.ext(), 8090, dir.path());
    for (round, removed_with) in [("by mark", vec![]), ("by a walk", others)] {
        let mut with_second = cfg.clone();
        let fips = with_second["floating_ips"].as_array_mut().unwrap();
        fips.push(second.clone());
        fips.extend(removed_with.iter().cloned());
        put_ok(&lab, &with_second);
        let gone_in = session(lab.ext(), "172.16.77.51", 8080, None);
        let gone_out = session(lab.t1(), RouterLab::EXT_GW_V4, 8090, Some("192.168.0.3"));
        let gone_hairpin = session(lab.t2(), "172.16.77.51", 8080, None);
        let kept_in = session(lab.ext(), FIP, 8080, None);
        let kept_out = session(lab.t1(), RouterLab::EXT_GW_V4, 8090, Some(RouterLab::T1_V4));
        std::thread::sleep(Duration::from_millis(1000));
        let status = put_ok(&lab, &cfg);
        assert_eq!(
            status["last_apply"]["conntrack_flushed"].as_u64(),
            Some(1 + removed_with.len() as u64),
            "{round}: {status}"
        );
        assert!(cut(gone_in), "{round}: the inbound session survived");
        assert!(cut(gone_out), "{round}: the outbound session survived");
        assert!(cut(gone_hairpin), "{round}: the hairpin session survived");
        assert!(
            !cut(kept_in),
            "{round}: another floating IP's session was cut"
        );
        assert!(
            !cut(kept_out),
            "{round}: another floating IP's session was cut"
        );
    }
}

/// `Child::wait_with_output` plus lossy text of both streams.
trait WaitText {
    fn wait_with_output_fallible(&mut self) -> String;
}

impl WaitText for Child {
    fn wait_with_output_fallible(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

#[test]
fn tenant_rule_blocks_exactly_its_traffic_and_counts() {
    let Some((lab, _agent, dir)) = lab_with_agent("anchor") else {
        return;
    };
    let mut cfg = config(&lab);
    let ext_if = cfg["networks"][1]["interface"]["ifname"].clone();
    cfg["address_book"] = json!({"outside-admins": ["172.16.77.1/32"]});
    cfg["anchors"] = json!([{"name": "no-ssh", "rules": [
        {"action": "block", "protocol": "tcp", "source": "outside-admins", "destination_port": 22, "interface": ext_if}
    ]}]);
    put_ok(&lab, &cfg);
    let _ssh = Server::start(lab.t1(), 22, dir.path());
    let _web = Server::start(lab.t1(), 8080, dir.path());
    assert!(
        tcp_echo(lab.ext(), FIP, 22).is_err(),
        "TCP/22 from the address-book entry passed"
    );
    tcp_echo(lab.ext(), FIP, 8080).unwrap();
    tcp_echo(lab.t2(), RouterLab::T1_V4, 22).unwrap();

    // The live ruleset shows the rule with a counter that moved.
    let rules = lab.http().get("/v1/firewall/rules");
    assert_eq!(rules.status, 200);
    let line = rules
        .body
        .lines()
        .find(|l| l.contains("anchor no-ssh rule 0"))
        .unwrap_or_else(|| panic!("{}", rules.body));
    assert!(!line.contains("counter packets 0 "), "{line}");
    assert!(line.contains("tcp dport 22"), "{line}");
}

#[test]
fn other_tables_survive_and_noop_writes_nothing() {
    let Some((lab, _agent, _dir)) = lab_with_agent("tables") else {
        return;
    };
    lab.router().sh("nft add table ip6 operator");
    lab.router()
        .sh("nft add chain ip6 operator mine '{ type filter hook input priority 5; }'");
    lab.router().sh("nft add rule ip6 operator mine counter");
    let theirs = lab
        .router()
        .sh("nft list table ip6 operator | grep -v counter");
    let cfg = config(&lab);
    let s = put_ok(&lab, &cfg);
    assert_eq!(s["last_apply"]["netfilter_batches"], 1);
    let s = put_ok(&lab, &cfg);
    assert_eq!(s["last_apply"]["netfilter_batches"], 0, "{s}");
    assert_eq!(s["last_apply"]["netlink_writes"], 0, "{s}");
    let mut other = cfg.clone();
    other["floating_ips"] = json!([]);
    put_ok(&lab, &other);
    assert_eq!(
        theirs,
        lab.router()
            .sh("nft list table ip6 operator | grep -v counter")
    );
    // Someone deleted our table by hand: the next identical push puts it back.
    lab.router().sh("nft delete table inet akanda");
    let s = put_ok(&lab, &other);
    assert_eq!(s["last_apply"]["netfilter_batches"], 1, "{s}");
    assert!(lab.router().sh("nft list tables").contains("inet akanda"));
}

#[test]
fn before_the_first_push_only_the_api_is_open() {
    let Some((lab, _agent, dir)) = lab_with_agent("bootstrap") else {
        return;
    };
    // The agent is up and answers (wait_ready went through the API port); the router already
    // has the bootstrap ruleset.
    let table = lab.router().sh("nft list table inet akanda");
    assert!(table.contains("no config yet"), "{table}");
    // Something listening on the router, reachable by address from outside: still closed.
    lab.router().ip("addr add 172.16.77.2/24 dev ge1");
    let _server = Server::start(lab.router(), 8080, dir.path());
    assert!(tcp_echo(lab.ext(), RouterLab::EXT_ROUTER_V4, 8080).is_err());
    akanda_tests::assert_pings(lab.ext(), RouterLab::EXT_ROUTER_V4);
    assert_eq!(lab.http().get("/v1/status").status, 200);

    // The first push replaces it with the config's ruleset.
    put_ok(&lab, &config(&lab));
    let table = lab.router().sh("nft list table inet akanda");
    assert!(!table.contains("no config yet"), "{table}");
    assert!(table.contains("fip_dnat"), "{table}");
}

/// Floating IP `i` of the 10,000-floating-IP router: 172.17.A.B ↦ 10.0.A.B, outside the
/// lab's external /24 (ext reaches 172.17.0.0/16 on-link, so it ARPs for each one).
fn scale_fip(i: u32) -> (String, String) {
    let (hi, lo) = (i / 250, 1 + i % 250);
    (format!("172.17.{hi}.{lo}"), format!("10.0.{hi}.{lo}"))
}

fn with_scale_fips(base: &Value, range: std::ops::Range<u32>) -> Value {
    let mut config = base.clone();
    let fips = config["floating_ips"].as_array_mut().unwrap();
    for i in range {
        let (floating, fixed) = scale_fip(i);
        fips.push(json!({"floating_ip": floating, "fixed_ip": fixed}));
    }
    config
}

/// The `# handle N` of table `inet akanda`: a new one means the table was re-created.
fn table_handle(lab: &RouterLab) -> String {
    let out = lab.router().sh("nft -a list table inet akanda | head -1");
    out.split("# handle")
        .nth(1)
        .unwrap_or_else(|| panic!("no handle in {out:?}"))
        .trim()
        .to_string()
}

#[test]
fn ten_thousand_floating_ips_answer_arp_dnat_and_do_not_flap() {
    let Some((lab, _agent, dir)) = lab_with_agent("fip10k") else {
        return;
    };
    let mut base = config(&lab);
    // The floating IPs come from a second external subnet (as a Neutron external network
    // with a second allocation pool); the fixed IPs live on t1's network, in a second subnet.
    base["networks"][1]["subnets"]
        .as_array_mut()
        .unwrap()
        .push(json!({
        "id": "fip-pool", "cidr": "172.17.0.0/16", "gateway_ip": null,
        "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}));
    base["networks"][2]["interface"]["addresses"]
        .as_array_mut()
        .unwrap()
        .push(json!("10.0.0.1/16"));
    base["networks"][2]["subnets"]
        .as_array_mut()
        .unwrap()
        .push(json!({
        "id": "fixed-10", "cidr": "10.0.0.0/16", "gateway_ip": "10.0.0.1",
        "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}));
    let full = with_scale_fips(&base, 0..10_000);
    let status = put_ok(&lab, &full);
    assert_eq!(status["last_apply"]["result"], "ok", "{status}");
    let routes = lab.router().sh("ip route show table 44 | wc -l");
    assert_eq!(routes.trim(), "10001", "one local route per floating IP");
    // The interface view still lists them on the external NIC, as Astara's did.
    let view = lab.http().get("/v1/system/interfaces").json();
    let ext = view["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["lladdr"] == RouterLab::ROUTER_MACS[1])
        .unwrap_or_else(|| panic!("no external NIC in {view}"));
    let listed = ext["addresses"].as_array().unwrap();
    assert!(listed.contains(&json!(format!("{FIP}/32"))), "{ext}");
    assert!(listed.contains(&json!("172.17.39.250/32")), "{ext}");
    lab.ext().ip("route add 172.17.0.0/16 dev eth0");

    // A floating IP chosen at random: ext learns the router's MAC for it by ARP, and
    // reaches the fixed IP behind it (t1 takes that address) through DNAT.
    let pick = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() % 10_000) as u32
    };
    let (floating, fixed) = scale_fip(pick);
    lab.t1().ip(&format!("addr add {fixed}/16 dev eth0"));
    let server = Server::start(lab.t1(), 8080, dir.path());
    tcp_echo(lab.ext(), &floating, 8080)
        .unwrap_or_else(|e| panic!("floating IP {floating} (#{pick}): {e}"));
    assert_eq!(server.peers(), vec![RouterLab::EXT_GW_V4.to_string()]);
    let neigh = lab.ext().sh(&format!("ip neigh show {floating} dev eth0"));
    assert!(
        neigh.contains(RouterLab::ROUTER_MACS[1]),
        "ARP for {floating} not answered by the router: {neigh:?}"
    );
    // A floating IP that is not configured gets no ARP answer.
    assert_no_ping(lab.ext(), "172.17.200.1");
    let neigh = lab.ext().sh("ip neigh show 172.17.200.1 dev eth0");
    assert!(
        !neigh.contains(RouterLab::ROUTER_MACS[1]),
        "ARP answered for an unconfigured address: {neigh:?}"
    );

    // The unchanged floating IP loses no ping while 1,000 others come and go, and those
    // pushes change map elements only: the table is never re-created.
    let handle = table_handle(&lab);
    let more = with_scale_fips(&full, 10_000..11_000);
    let mut ping = lab
        .ext()
        .spawn(&["ping", "-n", "-q", "-i", "0.01", "-c", "400", FIP]);
    for round in 0..6 {
        let status = put_ok(&lab, if round % 2 == 0 { &more } else { &full });
        assert_eq!(status["last_apply"]["netfilter_batches"], 1, "{status}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = ping.wait_with_output_fallible();
    assert!(
        out.contains(" 0% packet loss"),
        "pings were lost during pushes: {out}"
    );
    assert_eq!(table_handle(&lab), handle, "the table was re-created");
    let routes = lab.router().sh("ip route show table 44 | wc -l");
    assert_eq!(routes.trim(), "10001", "the 1,000 added were removed");
    // The chosen one still works after all that.
    tcp_echo(lab.ext(), &floating, 8080).unwrap();

    // Re-pointed to another fixed IP: its old map entries go and the new ones come in the
    // same batch (delete then add of one key), still without re-creating the table.
    lab.t1().ip("addr add 10.0.200.1/16 dev eth0");
    let mut repointed = full.clone();
    repointed["floating_ips"][pick as usize + 1]["fixed_ip"] = json!("10.0.200.1");
    assert_eq!(
        repointed["floating_ips"][pick as usize + 1]["floating_ip"],
        floating
    );
    put_ok(&lab, &repointed);
    assert_eq!(table_handle(&lab), handle, "the table was re-created");
    let map = lab.router().sh("nft list map inet akanda fip_dnat");
    assert!(map.contains(&format!("{floating} : 10.0.200.1")), "{map}");
    assert!(!map.contains(&format!("{floating} : {fixed}")), "{map}");
    tcp_echo(lab.ext(), &floating, 8080).unwrap();
}
