//! Management isolation and anti-spoofing with real traffic (issue 12), in the standard lab:
//!
//! - tenant `pass` rules from anywhere (`pass` with no addresses, from `0.0.0.0/0`, from `::/0`,
//!   to the API port, into the management prefix) still cannot reach the agent's API or SSH on
//!   any router address, the router's management address, nor any host on the management
//!   network, from tenant hosts or from outside; while the same rules do open what they are
//!   for (outside → tenant without a floating IP, which the router's own policy drops);
//! - the metadata proxy answers only through `169.254.169.254:80` on its own network;
//! - forwarded packets whose source the router would not route back out of the NIC they came
//!   in on (another tenant's subnet, the external subnet, the management prefix, an unrouted
//!   prefix, a tenant's subnet claimed from outside) are dropped, even with `pass` rules,
//!   while the right source, and a prefix behind a tenant through a static route, get through.
//!
//! The kernel's own reverse-path filter is switched off in the router namespace, so every drop
//! seen here is the ruleset's; each one is also checked against the counter of its rule.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use akanda_tests::{assert_no_ping, assert_pings, in_netns, require_root, Netns, RouterLab};
use serde_json::{json, Value};

/// How a TCP connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tcp {
    Connected,
    /// A RST: the SYN reached a host with nothing listening (the firewall let it through).
    Refused,
    /// No answer: dropped on the way.
    TimedOut,
    Other(String),
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// One TCP connection attempt from `from` to `to`.
fn connect(from: &Netns, to: SocketAddr, timeout: Duration) -> Tcp {
    in_netns(from, || match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Tcp::Connected,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Tcp::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Tcp::TimedOut,
        Err(e) => Tcp::Other(e.to_string()),
    })
}

/// Connects until it works or 5 s have passed (neighbour discovery may need a moment).
#[track_caller]
fn assert_connects(from: &Netns, to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = connect(from, to, Duration::from_secs(1));
        if got == Tcp::Connected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} cannot connect to {to}: {got:?}",
            from.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every attempt in `cases` (from, to) times out: the SYN was dropped, not refused. The
/// attempts run at once, each for 2 s.
#[track_caller]
fn assert_all_dropped(what: &str, cases: &[(&Netns, SocketAddr)]) {
    let got: Vec<Tcp> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(from, to)| s.spawn(move || connect(from, *to, Duration::from_secs(2))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter(|(_, g)| **g != Tcp::TimedOut)
        .map(|((from, to), g)| format!("{} → {to}: {g:?}", from.name()))
        .collect();
    assert!(wrong.is_empty(), "{what}: not dropped: {wrong:#?}");
}

/// A TCP listener in `ns` (the kernel completes handshakes from its backlog: no accept loop).
fn listen(ns: &Netns, at: SocketAddr) -> TcpListener {
    in_netns(ns, || {
        TcpListener::bind(at).unwrap_or_else(|e| panic!("bind {at} in {}: {e}", ns.name()))
    })
}

/// The packet counter of the rules of table `inet akanda` whose comment is `comment`, summed.
fn counter(lab: &RouterLab, comment: &str) -> u64 {
    let table = lab.router().sh("nft list table inet akanda");
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(&format!("comment \"{comment}\"")))
        .collect();
    assert!(!lines.is_empty(), "no rule {comment:?} in\n{table}");
    lines
        .iter()
        .map(|l| {
            let n = l
                .split("counter packets ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("no counter in {l}"));
            n.parse::<u64>().unwrap()
        })
        .sum()
}

fn ifname(config: &Value, i: usize) -> String {
    config["networks"][i]["interface"]["ifname"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The metadata proxy port of `geN` (9600 + N).
fn metadata_port(ifname: &str) -> u16 {
    9600 + ifname.trim_start_matches("ge").parse::<u16>().unwrap()
}

/// Every way a tenant rule can say "pass everything", and two that aim at the management
/// network and the API.
fn open_everything(config: &mut Value, api_port: u16) {
    let ext = ifname(config, 1);
    config["anchors"] = json!([{"name": "open", "rules": [
        {"action": "pass"},
        {"action": "pass", "source": "0.0.0.0/0", "destination": "0.0.0.0/0"},
        {"action": "pass", "family": "inet6", "source": "::/0", "destination": "::/0"},
        {"action": "pass", "protocol": "tcp", "destination_port": api_port},
        {"action": "pass", "interface": ext, "destination": "fdca:3ba5:a17a:acda::/64"}
    ]}]);
}

/// The kernel's IPv4 reverse-path filter off in `ns`: on the router, so only the ruleset can
/// drop a spoofed source; on the receivers, so a spoofed source that did get through is seen.
fn kernel_rp_filter_off(ns: &Netns) {
    let nics = ns.sh("ls /proc/sys/net/ipv4/conf");
    for nic in nics.split_whitespace() {
        ns.sysctl(&format!("net.ipv4.conf.{nic}.rp_filter"), "0");
    }
}

#[test]
fn tenant_pass_rules_cannot_reach_the_api_or_the_management_network() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("isolate");
    let _agent = lab.start_agent();
    let port = lab.port();
    let mut config = lab.fitted_config();
    open_everything(&mut config, port);
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    let (t1_if, t2_if) = (ifname(&config, 2), ifname(&config, 3));

    // Routes that would let traffic between the management network and the others flow both
    // ways if the router forwarded it: only the ruleset stands in the way.
    for prefix in ["2001:db8:100::/64", "2001:db8:77::/64"] {
        lab.mgmt().ip(&format!(
            "-6 route add {prefix} via {}",
            RouterLab::MGMT_ADDR
        ));
    }
    lab.ext().ip(&format!(
        "-6 route add fdca:3ba5:a17a:acda::/64 via {}",
        RouterLab::EXT_ROUTER_V6
    ));
    let on_mgmt = sock(RouterLab::MGMT_PEER_ADDR, 7000);
    let _mgmt_host = listen(lab.mgmt(), on_mgmt);
    let _t1_host = listen(lab.t1(), sock("::", 7002));

    // The pass rules are in force: outside → tenant without a floating IP, which the router's
    // own policy drops, now connects, for IPv4 and IPv6. The management host listens and the
    // router reaches it.
    assert_connects(lab.ext(), sock(RouterLab::T1_V4, 7002));
    assert_connects(lab.ext(), sock(RouterLab::T1_V6, 7002));
    assert_connects(lab.router(), on_mgmt);

    // ... yet no host on the management network is reachable through the router.
    let forward_drops = counter(&lab, "management isolation");
    assert_all_dropped(
        "forwarded into the management network",
        &[(lab.t1(), on_mgmt), (lab.ext(), on_mgmt)],
    );
    assert_no_ping(lab.t1(), RouterLab::MGMT_PEER_ADDR);
    assert!(counter(&lab, "management isolation") > forward_drops);

    // The API and SSH, on every address of the router, from every tenant and from outside.
    let router_addrs = [
        RouterLab::MGMT_ADDR,
        "192.168.0.1",
        "2001:db8:100::1",
        "192.168.1.1",
        RouterLab::EXT_ROUTER_V4,
        RouterLab::EXT_ROUTER_V6,
    ];
    let mut cases = Vec::new();
    for from in [lab.t1(), lab.t2(), lab.ext()] {
        // t2's network is IPv4 only.
        let v4_only = std::ptr::eq(from, lab.t2());
        for addr in router_addrs {
            if v4_only && addr.contains(':') {
                continue;
            }
            for p in [port, 22] {
                cases.push((from, sock(addr, p)));
            }
        }
    }
    assert_all_dropped("the API and SSH", &cases);
    // Not even a ping reaches the management address from elsewhere.
    assert_no_ping(lab.t1(), RouterLab::MGMT_ADDR);
    assert_no_ping(lab.ext(), RouterLab::MGMT_ADDR);
    assert_pings(lab.t1(), "192.168.0.1");
    // The orchestrator still reaches it.
    assert_eq!(lab.http().get("/v1/status").status, 200);

    // The metadata proxy: through 169.254.169.254:80 on the tenant's own network (404: t1's
    // extra address is no instance, but the proxy answered); never directly, on another
    // address, from another network or from outside.
    lab.t1().ip("addr add 192.168.0.9/24 dev eth0");
    let answer = lab.t1().sh(
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --interface 192.168.0.9 http://169.254.169.254/latest/meta-data/",
    );
    assert_eq!(answer.trim(), "404", "{answer}");
    let (p1, p2) = (metadata_port(&t1_if), metadata_port(&t2_if));
    assert_all_dropped(
        "the metadata proxies",
        &[
            (lab.t1(), sock("192.168.0.1", p1)),
            (lab.t1(), sock(RouterLab::MGMT_ADDR, p1)),
            (lab.t1(), sock(RouterLab::EXT_ROUTER_V4, p1)),
            (lab.t1(), sock("192.168.1.1", p2)),
            (lab.t2(), sock("192.168.0.1", p1)),
            (lab.t2(), sock("192.168.1.1", p2)),
            (lab.ext(), sock(RouterLab::EXT_ROUTER_V4, p1)),
            (lab.ext(), sock("192.168.0.1", p1)),
        ],
    );
}

/// A UDP probe: `token` sent 3 times from `src` (an address of `from`) to `dst`.
fn send_from(from: &Netns, src: &str, dst: SocketAddr, token: &str) {
    let src: IpAddr = src.parse().unwrap();
    in_netns(from, || {
        let s = UdpSocket::bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("bind {src} in {}: {e}", from.name()));
        for _ in 0..3 {
            s.send_to(token.as_bytes(), dst)
                .unwrap_or_else(|e| panic!("{token}: send {src} → {dst}: {e}"));
            std::thread::sleep(Duration::from_millis(30));
        }
    })
}

/// The tokens a UDP socket has received, until it stays quiet for 500 ms.
fn received(sock: &UdpSocket) -> BTreeSet<String> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

fn udp_sink(ns: &Netns, at: &str, port: u16) -> UdpSocket {
    let at = sock(at, port);
    in_netns(ns, || {
        UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at} in {}: {e}", ns.name()))
    })
}

#[test]
fn spoofed_sources_are_not_forwarded_even_with_pass_rules() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("spoof");
    let _agent = lab.start_agent();
    let mut config = lab.fitted_config();
    open_everything(&mut config, lab.port());
    // A prefix behind t1 (a downstream router, say): its sources are legitimate from t1.
    config["static_routes"] = json!([["10.60.0.0/24", RouterLab::T1_V4]]);
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    for ns in [lab.router(), lab.ext(), lab.t1(), lab.t2()] {
        kernel_rp_filter_off(ns);
    }

    // Sources each host will claim, besides its own.
    for a in [
        "192.168.1.77/32",
        "172.16.77.99/32",
        "10.99.0.5/32",
        "10.60.0.5/32",
    ] {
        lab.t1().ip(&format!("addr add {a} dev eth0"));
    }
    for a in ["2001:db8:999::5/128", "2001:db8:77::99/128"] {
        lab.t1().ip(&format!("addr add {a} dev eth0 nodad"));
    }
    for a in ["192.168.0.50/32", "192.168.1.50/32"] {
        lab.ext().ip(&format!("addr add {a} dev eth0"));
    }
    for a in ["2001:db8:100::99/128", "fdca:3ba5:a17a:acda::99/128"] {
        lab.ext().ip(&format!("addr add {a} dev eth0 nodad"));
    }

    let ext_v4 = udp_sink(lab.ext(), "0.0.0.0", 7100);
    let ext_v6 = udp_sink(lab.ext(), "::", 7101);
    let t2_v4 = udp_sink(lab.t2(), "0.0.0.0", 7102);
    let t1_v4 = udp_sink(lab.t1(), "0.0.0.0", 7103);
    let t1_v6 = udp_sink(lab.t1(), "::", 7104);
    let to_ext_v4 = sock(RouterLab::EXT_GW_V4, 7100);
    let to_ext_v6 = sock(RouterLab::EXT_GW_V6, 7101);
    let to_t2 = sock(RouterLab::T2_V4, 7102);
    let to_fip = sock("172.16.77.50", 7103);
    let to_t1_v6 = sock(RouterLab::T1_V6, 7104);

    // (from, source, destination, token, should arrive)
    let probes: [(&Netns, &str, SocketAddr, &str, bool); 17] = [
        // From a tenant: its own addresses, and a prefix routed to it.
        (lab.t1(), RouterLab::T1_V4, to_ext_v4, "t1-own-v4-out", true),
        (
            lab.t1(),
            "10.60.0.5",
            to_ext_v4,
            "t1-routed-prefix-out",
            true,
        ),
        (lab.t1(), RouterLab::T1_V4, to_t2, "t1-own-v4-to-t2", true),
        (lab.t1(), RouterLab::T1_V6, to_ext_v6, "t1-own-v6-out", true),
        // ... claiming another tenant's subnet, the external subnet, or nothing routed there.
        (lab.t1(), "192.168.1.77", to_ext_v4, "t1-as-t2-out", false),
        (lab.t1(), "172.16.77.99", to_ext_v4, "t1-as-ext-out", false),
        (lab.t1(), "172.16.77.99", to_t2, "t1-as-ext-to-t2", false),
        (
            lab.t1(),
            "10.99.0.5",
            to_ext_v4,
            "t1-as-unrouted-out",
            false,
        ),
        (
            lab.t1(),
            "2001:db8:999::5",
            to_ext_v6,
            "t1-as-unrouted-v6-out",
            false,
        ),
        (
            lab.t1(),
            "2001:db8:77::99",
            to_ext_v6,
            "t1-as-ext-v6-out",
            false,
        ),
        // From outside: to a tenant (opened by the pass rules) and through the floating IP.
        (
            lab.ext(),
            RouterLab::EXT_GW_V4,
            to_t2,
            "ext-own-to-t2",
            true,
        ),
        (
            lab.ext(),
            RouterLab::EXT_GW_V4,
            to_fip,
            "ext-own-to-fip",
            true,
        ),
        (
            lab.ext(),
            RouterLab::EXT_GW_V6,
            to_t1_v6,
            "ext-own-v6-to-t1",
            true,
        ),
        // ... claiming a tenant's subnet, or the management network.
        (lab.ext(), "192.168.0.50", to_t2, "ext-as-t1-to-t2", false),
        (lab.ext(), "192.168.1.50", to_fip, "ext-as-t2-to-fip", false),
        (
            lab.ext(),
            "2001:db8:100::99",
            to_t1_v6,
            "ext-as-t1-v6",
            false,
        ),
        (
            lab.ext(),
            "fdca:3ba5:a17a:acda::99",
            to_t1_v6,
            "ext-as-management-v6",
            false,
        ),
    ];
    let spoofed_before = counter(&lab, "spoofed source");
    for (from, src, dst, token, _) in &probes {
        send_from(from, src, *dst, token);
    }
    let mut arrived = BTreeSet::new();
    for sink in [&ext_v4, &ext_v6, &t2_v4, &t1_v4, &t1_v6] {
        arrived.extend(received(sink));
    }
    let wrong: Vec<String> = probes
        .iter()
        .filter(|(_, _, _, token, ok)| arrived.contains(*token) != *ok)
        .map(|(_, src, dst, token, ok)| {
            let what = if *ok { "lost" } else { "forwarded" };
            format!("{token} ({src} → {dst}): {what}")
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\narrived: {arrived:?}");
    let spoofed = counter(&lab, "spoofed source") - spoofed_before;
    let expected = 3 * probes.iter().filter(|p| !p.4).count() as u64;
    assert!(
        spoofed >= expected,
        "the anti-spoofing rule counted {spoofed} drops, {expected} expected"
    );
}
