//! Documents as Astara's own orchestrator builds them are accepted: allocation host names
//! derived from any address Neutron assigns, and `"vpn": {}`. Self-contained: the documents
//! are built here, the way Astara's config builder builds them.

use akanda_model::{is_allocation_hostname, parse, ConfigError, Document, Problem};
use serde_json::{json, Value};

/// Astara's rule (astara/api/config/common.py, `_allocation_config`): the port's addresses as
/// Neutron writes them, sorted as strings; the first one with `:` and `.` replaced by `-`,
/// plus `.local`.
fn astara_hostname(ips: &[&str]) -> String {
    let mut sorted = ips.to_vec();
    sorted.sort();
    format!("{}.local", sorted[0].replace([':', '.'], "-"))
}

/// One allocation as Astara builds it: every address with its subnet's `enable_dhcp`.
fn allocation(mac: &str, device_id: &str, ips: &[&str]) -> Value {
    let addresses: serde_json::Map<String, Value> =
        ips.iter().map(|ip| (ip.to_string(), json!(true))).collect();
    json!({
        "ip_addresses": addresses,
        "device_id": device_id,
        "hostname": astara_hostname(ips),
        "mac_address": mac,
    })
}

fn subnet(id: &str, cidr: &str, gateway: &str) -> Value {
    json!({"id": id, "cidr": cidr, "gateway_ip": gateway, "dhcp_enabled": true,
           "dns_nameservers": [], "host_routes": []})
}

/// A router config shaped exactly like Astara's builder output (router.py + common.py): the
/// management network, then one internal network with `subnets`, the router's own port
/// addresses `router` and the `allocations` (the router's port among them, as Astara lists
/// every port of the network).
fn astara_router(subnets: Vec<Value>, router: &[&str], allocations: Vec<Value>) -> Value {
    json!({
        "asn": 64512,
        "neighbor_asn": 64512,
        "default_v4_gateway": "",
        "networks": [
            {"network_id": "1d5b7f58-7d4b-4c3a-9a5e-2f6b0c7d8e90", "network_type": "management",
             "mtu": 1500, "v4_conf_service": "static", "v6_conf_service": "static",
             "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda:f816:3eff:fe2b:ced0/64"],
                           "mtu": 1500},
             "subnets": [{"id": "mgt-subnet", "cidr": "fdca:3ba5:a17a:acda::/64",
                          "gateway_ip": "fdca:3ba5:a17a:acda::1", "dhcp_enabled": true,
                          "dns_nameservers": [], "host_routes": []}],
             "allocations": []},
            {"network_id": "6a0b4c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d", "network_type": "internal",
             "mtu": 1450, "v4_conf_service": "static", "v6_conf_service": "static",
             "interface": {"ifname": "ge2", "addresses": router, "mtu": 1450},
             "subnets": subnets,
             "allocations": allocations}
        ],
        "labels": {},
        "floating_ips": [],
        "tenant_id": "d22b149cee9b4eac8349c517eda00b89",
        "hostname": "ak-d22b149cee9b4eac8349c517eda00b89",
        "orchestrator": {"address": "fdca:3ba5:a17a:acda::1", "metadata_port": 9697,
                         "host": "rug-1"},
        "ha_resource": false,
        "vpn": {}
    })
}

fn problems(doc: &Value) -> Vec<Problem> {
    match parse(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A port: its addresses, the subnets they come from (cidr, gateway), and the router's own
/// addresses on that network.
struct Port {
    what: &'static str,
    ips: &'static [&'static str],
    subnets: &'static [(&'static str, &'static str)],
    router: &'static [&'static str],
    name: &'static str,
}

/// Addresses Neutron assigns, written as Neutron writes them (RFC 5952, IPv4-mapped and
/// IPv4-compatible forms in dotted quads as glibc's inet_ntop prints them).
const PORTS: &[Port] = &[
    Port {
        what: "router port; IPv6 subnet created without a gateway: Neutron gives it prefix::",
        ips: &["2001:db8:4b::"],
        subnets: &[("2001:db8:4b::/64", "2001:db8:4b::")],
        router: &["2001:db8:4b::/64"],
        name: "2001-db8-4b--.local",
    },
    Port {
        what: "router port; gateway prefix::1",
        ips: &["2001:db8:4b::1"],
        subnets: &[("2001:db8:4b::/64", "2001:db8:4b::1")],
        router: &["2001:db8:4b::1/64"],
        name: "2001-db8-4b--1.local",
    },
    Port {
        what: "VM on a subnet whose gateway is prefix::",
        ips: &["2001:db8:4b::5"],
        subnets: &[("2001:db8:4b::/64", "2001:db8:4b::")],
        router: &["2001:db8:4b::/64"],
        name: "2001-db8-4b--5.local",
    },
    Port {
        what: "dual-stack router port: \"2001:…\" sorts before \"203.…\"",
        ips: &["203.0.113.1", "2001:db8:4b::"],
        subnets: &[
            ("203.0.113.0/24", "203.0.113.1"),
            ("2001:db8:4b::/64", "2001:db8:4b::"),
        ],
        router: &["203.0.113.1/24", "2001:db8:4b::/64"],
        name: "2001-db8-4b--.local",
    },
    Port {
        what: "dual-stack VM: \"10.…\" sorts first",
        ips: &["10.1.1.5", "2001:db8:4b::5"],
        subnets: &[
            ("10.1.1.0/24", "10.1.1.1"),
            ("2001:db8:4b::/64", "2001:db8:4b::"),
        ],
        router: &["10.1.1.1/24", "2001:db8:4b::/64"],
        name: "10-1-1-5.local",
    },
    Port {
        what: "SLAAC (EUI-64) address, one zero group kept",
        ips: &["2001:db8:4b:0:f816:3eff:fe2b:ced0"],
        subnets: &[("2001:db8:4b::/64", "2001:db8:4b::1")],
        router: &["2001:db8:4b::1/64"],
        name: "2001-db8-4b-0-f816-3eff-fe2b-ced0.local",
    },
    Port {
        what: "SLAAC address with a :: run in the middle",
        ips: &["2001:db8::f816:3eff:fe2b:ced0"],
        subnets: &[("2001:db8::/64", "2001:db8::")],
        router: &["2001:db8::/64"],
        name: "2001-db8--f816-3eff-fe2b-ced0.local",
    },
    Port {
        what: "the longer of two zero runs is the ::",
        ips: &["2001:db8:0:1:a::7"],
        subnets: &[("2001:db8:0:1::/64", "2001:db8:0:1::")],
        router: &["2001:db8:0:1::/64"],
        name: "2001-db8-0-1-a--7.local",
    },
    Port {
        what: "ULA router port, gateway prefix::",
        ips: &["fd00:4b::"],
        subnets: &[("fd00:4b::/64", "fd00:4b::")],
        router: &["fd00:4b::/64"],
        name: "fd00-4b--.local",
    },
    Port {
        what: "no zero group",
        ips: &["2001:db8:1:2:3:4:5:6"],
        subnets: &[("2001:db8:1:2::/64", "2001:db8:1:2::1")],
        router: &["2001:db8:1:2::1/64"],
        name: "2001-db8-1-2-3-4-5-6.local",
    },
    Port {
        what: "the longest IPv6 text (39 characters)",
        ips: &["fd00:ffff:ffff:ffff:ffff:ffff:ffff:fffe"],
        subnets: &[("fd00:ffff:ffff:ffff::/64", "fd00:ffff:ffff:ffff::1")],
        router: &["fd00:ffff:ffff:ffff::1/64"],
        name: "fd00-ffff-ffff-ffff-ffff-ffff-ffff-fffe.local",
    },
    Port {
        what: "the first address of ::/64 is ::",
        ips: &["::"],
        subnets: &[("::/64", "::1:0:0:1")],
        router: &["::1:0:0:1/64"],
        name: "--.local",
    },
    Port {
        what: "IPv4-mapped",
        ips: &["::ffff:10.0.0.5"],
        subnets: &[("::ffff:0:0/96", "::ffff:10.0.0.1")],
        router: &["::ffff:10.0.0.1/96"],
        name: "--ffff-10-0-0-5.local",
    },
    Port {
        what: "IPv4-compatible",
        ips: &["::10.0.0.5"],
        subnets: &[("::/96", "::10.0.0.1")],
        router: &["::10.0.0.1/96"],
        name: "--10-0-0-5.local",
    },
    Port {
        what: "IPv4",
        ips: &["192.168.0.2"],
        subnets: &[("192.168.0.0/24", "192.168.0.1")],
        router: &["192.168.0.1/24"],
        name: "192-168-0-2.local",
    },
    Port {
        what: "IPv4, last host of a /24",
        ips: &["172.16.0.254"],
        subnets: &[("172.16.0.0/24", "172.16.0.1")],
        router: &["172.16.0.1/24"],
        name: "172-16-0-254.local",
    },
];

#[test]
fn the_rule_gives_the_names_in_the_table() {
    for p in PORTS {
        assert_eq!(astara_hostname(p.ips), p.name, "{}", p.what);
    }
}

#[test]
fn every_allocation_astara_builds_from_neutron_addresses_is_accepted() {
    for p in PORTS {
        let subnets = p
            .subnets
            .iter()
            .enumerate()
            .map(|(i, (cidr, gw))| subnet(&format!("subnet-{i}"), cidr, gw))
            .collect();
        let allocations = vec![allocation(
            "fa:16:3e:4b:00:05",
            "0f6e4d3c-2b1a-4c9d-8e7f-6a5b4c3d2e1f",
            p.ips,
        )];
        let doc = astara_router(subnets, p.router, allocations);
        let found = problems(&doc);
        assert!(
            found.is_empty(),
            "{}: {} refused: {found:#?}",
            p.what,
            p.name
        );
        let config = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(config.networks[1].allocations[0].hostname, p.name);
    }
}

/// The router's own port and a VM on an IPv6 subnet whose gateway is `prefix::`, plus a VM on
/// the IPv4 subnet of the same network: the document of the issue's Neutron state.
#[test]
fn the_router_port_named_after_prefix_colon_colon_is_accepted_with_the_others() {
    let doc = astara_router(
        vec![
            subnet("v4", "203.0.113.0/24", "203.0.113.1"),
            subnet("v6", "2001:db8:4b::/64", "2001:db8:4b::"),
        ],
        &["203.0.113.1/24", "2001:db8:4b::/64"],
        vec![
            allocation(
                "fa:16:3e:4b:00:01",
                "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                &["203.0.113.1", "2001:db8:4b::"],
            ),
            allocation(
                "fa:16:3e:4b:00:05",
                "0f6e4d3c-2b1a-4c9d-8e7f-6a5b4c3d2e1f",
                &["203.0.113.5", "2001:db8:4b::5"],
            ),
            allocation(
                "fa:16:3e:4b:00:06",
                "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                &["2001:db8:4b::6"],
            ),
        ],
    );
    let config = parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.networks[1]
        .allocations
        .iter()
        .map(|a| a.hostname.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "2001-db8-4b--.local",
            "2001-db8-4b--5.local",
            "2001-db8-4b--6.local"
        ]
    );
}

#[test]
fn host_names_that_could_break_a_daemons_file_are_refused() {
    let long_label = "a".repeat(64);
    let long_name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62),
    ]
    .join(".");
    assert_eq!(long_name.len(), 254);
    let bad: Vec<String> = [
        "a,b",
        "a b",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\u{0}b",
        "a#b",
        "a=b",
        "a/b",
        "a;b",
        "a\"b",
        "a'b",
        "a\\b",
        "a*b",
        "a[b]",
        "a:b",
        "2001:db8:4b::",
        "\u{e9}t\u{e9}",
        "a..b",
        ".a",
        "a..",
        ".",
        &long_label,
        &long_name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in &bad {
        assert!(!is_allocation_hostname(name), "{name:?} accepted");
        let doc = astara_router(
            vec![subnet("v4", "192.168.0.0/24", "192.168.0.1")],
            &["192.168.0.1/24"],
            vec![
                json!({"ip_addresses": {"192.168.0.2": true}, "device_id": "d",
                        "hostname": name, "mac_address": "fa:16:3e:00:00:02"}),
            ],
        );
        let found = problems(&doc);
        assert!(
            found
                .iter()
                .any(|p| p.path == "networks[1].allocations[0].hostname"
                    && p.reason.contains("not a valid host name")),
            "{name:?}: {found:#?}"
        );
    }
    // What the grammar does take, besides Astara's names.
    for good in [
        "vm-1",
        "host-10-0-0-5.openstacklocal.",
        "under_score",
        "a",
        &"a".repeat(63),
    ] {
        assert!(is_allocation_hostname(good), "{good:?} refused");
    }
}

#[test]
fn the_routers_own_host_name_stays_rfc_1123() {
    let mut doc = astara_router(
        vec![subnet("v4", "192.168.0.0/24", "192.168.0.1")],
        &["192.168.0.1/24"],
        vec![],
    );
    doc["hostname"] = json!("ak-");
    let found = problems(&doc);
    assert!(found.iter().any(|p| p.path == "hostname"), "{found:#?}");
}

fn document(vpn: Option<Value>) -> Document {
    let mut doc = astara_router(
        vec![subnet("v4", "192.168.0.0/24", "192.168.0.1")],
        &["192.168.0.1/24"],
        vec![],
    );
    match vpn {
        Some(v) => doc["vpn"] = v,
        None => {
            doc.as_object_mut().unwrap().remove("vpn");
        }
    }
    parse(doc.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
        .document
}

#[test]
fn an_empty_vpn_section_asks_for_no_vpn() {
    for vpn in [
        None,
        Some(json!(null)),
        Some(json!({})),
        Some(json!({"ipsec": []})),
        Some(json!({"ipsec": null})),
    ] {
        let shown = format!("{vpn:?}");
        assert!(!document(vpn).requests_vpn(), "{shown}");
    }
    let service = json!({"ipsec": [{"id": "vpn-1", "name": "site", "status": "ACTIVE",
        "admin_state_up": true, "external_v4_ip": "172.16.77.2", "external_v6_ip": null,
        "subnet_id": "s", "router_id": "r", "ipsec_connections": [{"psk": "secret"}]}]});
    assert!(document(Some(service)).requests_vpn());
}

/// A VPN kind this agent does not know is refused, not dropped: the orchestrator learns that
/// it was not taken.
#[test]
fn an_unknown_vpn_kind_is_refused() {
    let mut doc = astara_router(
        vec![subnet("v4", "192.168.0.0/24", "192.168.0.1")],
        &["192.168.0.1/24"],
        vec![],
    );
    doc["vpn"] = json!({"wireguard": {"peers": 1}});
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].path, "vpn.wireguard");
    assert!(found[0].reason.contains("unknown field"), "{found:#?}");
}
