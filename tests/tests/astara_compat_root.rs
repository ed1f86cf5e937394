//! A config exactly as Astara's own orchestrator builds it, for a router whose tenant network
//! has an IPv6 subnet with the gateway `prefix::` (what Neutron gives a subnet created without
//! a gateway). Astara lists the router's own port among the allocations and names every
//! allocation after its lowest address, so the router's port is `2001-db8-4b--.local` and the
//! VM's `2001-db8-4b--5.local`. The agent refused such a config (422), and Astara's orchestrator
//! then rebuilt the VM over and over.
//!
//! The document is tests/fixtures/astara-router-v6-prefix-gateway.json, with the NIC names
//! mapped by MAC as Astara maps them. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use akanda_tests::{require_root, Netns, RouterLab};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("../fixtures/astara-router-v6-prefix-gateway.json");

/// Astara's rule (astara/api/config/common.py): the port's lowest address as a string, with
/// `:` and `.` replaced by `-`, plus `.local`.
fn astara_hostname(ips: &[&str]) -> String {
    let lowest = ips.iter().min().expect("an allocation has an address");
    format!("{}.local", lowest.replace([':', '.'], "-"))
}

/// `KEY=value` lines of the environment dhclient gave its script for `reason`.
fn event(dir: &Path, reason: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{reason}.env"))).ok()
}

/// One `dhclient -4` or `-6` attempt in `host`, with a script that only records the event.
fn dhclient(host: &Netns, dir: &Path, family: &str) {
    let d = dir.display();
    host.sh(&format!(
        "timeout 30 dhclient -{family} -1 -cf {d}/dhclient.conf -sf {d}/hook \
         -lf {d}/leases{family} -pf {d}/pid{family} eth0 > {d}/dhclient{family}.log 2>&1 || true; \
         kill $(cat {d}/pid{family} 2>/dev/null) 2>/dev/null || true"
    ));
}

#[test]
fn astara_config_with_a_prefix_gateway_is_applied_and_the_vm_gets_its_leases() {
    if !require_root() {
        return;
    }
    let mut config: Value = serde_json::from_str(FIXTURE).expect("the fixture is JSON");
    // The names are Astara's.
    for alloc in config["networks"][2]["allocations"].as_array().unwrap() {
        let ips: Vec<&str> = alloc["ip_addresses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(alloc["hostname"], astara_hostname(&ips), "{alloc}");
    }
    assert_eq!(
        config["networks"][2]["allocations"][0]["hostname"],
        "2001-db8-4b--.local"
    );

    let lab = RouterLab::new("astara");
    let agent = lab.start_agent();
    for (i, mac) in RouterLab::ROUTER_MACS.iter().take(3).enumerate() {
        config["networks"][i]["interface"]["ifname"] = json!(lab.ifname_for(mac));
    }
    let tenant_if = lab.ifname_for(RouterLab::ROUTER_MACS[2]);
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    let addrs = lab.router().ip(&format!("-6 addr show dev {tenant_if}"));
    assert!(addrs.contains("2001:db8:4b::/64"), "{addrs}");

    // t1 is the VM (its MAC is the second allocation's): a real DHCP client, v4 and v6.
    let t1 = lab.t1();
    t1.ip("addr flush dev eth0 scope global");
    let deadline = Instant::now() + Duration::from_secs(5);
    while t1
        .ip("-6 addr show dev eth0 scope link")
        .contains("tentative")
    {
        assert!(Instant::now() < deadline, "t1's link-local stays tentative");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("hook"),
        format!("#!/bin/sh\nenv | sort > {}/\"$reason\".env\n", d.display()),
    )
    .unwrap();
    std::fs::write(
        d.join("dhclient.conf"),
        "timeout 20;\nretry 1;\ninitial-interval 1;\nrequest subnet-mask, routers, host-name;\n",
    )
    .unwrap();
    t1.sh(&format!("chmod +x {}/hook", d.display()));

    dhclient(t1, d, "4");
    let bound = event(d, "BOUND").unwrap_or_else(|| {
        panic!(
            "no DHCPv4 lease: {}\n{}",
            std::fs::read_to_string(d.join("dhclient4.log")).unwrap_or_default(),
            agent.log()
        )
    });
    assert!(bound.contains("new_ip_address=203.0.113.5\n"), "{bound}");
    assert!(bound.contains("new_host_name=2001-db8-4b--5\n"), "{bound}");
    assert!(bound.contains("new_routers=203.0.113.1\n"), "{bound}");

    dhclient(t1, d, "6");
    let bound6 = event(d, "BOUND6").unwrap_or_else(|| {
        panic!(
            "no DHCPv6 lease: {}\n{}",
            std::fs::read_to_string(d.join("dhclient6.log")).unwrap_or_default(),
            agent.log()
        )
    });
    assert!(
        bound6.contains("new_ip6_address=2001:db8:4b::5\n"),
        "{bound6}"
    );

    // dnsmasq gave the DHCPv6 lease the allocation's name, and took every hosts line (the
    // router's own port included) without complaint.
    let log = agent.log();
    let reply = log
        .lines()
        .find(|l| l.contains(&format!("DHCPREPLY({tenant_if}) 2001:db8:4b::5 ")))
        .unwrap_or_else(|| panic!("no DHCPv6 reply logged:\n{log}"));
    assert!(reply.contains(" 2001-db8-4b--5"), "{reply}");
    assert!(!log.contains("bad DHCP host name"), "{log}");
    assert!(!log.contains("bad dhcp-host"), "{log}");
    // Astara always sends "vpn": {}, which asks for no VPN.
    assert!(!log.contains("VPN is not applied"), "{log}");
}
