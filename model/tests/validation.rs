//! Validation of config documents: the conformance files (copies in tests/fixtures/) pass, and each kind of bad input is
//! reported with its JSON path.

use std::path::PathBuf;

use akanda_model::{parse, ConfigError, NetworkType, Problem};
use serde_json::{json, Value};

fn conformance(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn basic() -> Value {
    conformance("astara-router-basic.json")
}

fn problems(doc: &Value) -> Vec<Problem> {
    match parse(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Sets the value at a JSON pointer (creating object keys as needed).
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match target {
        Value::Object(m) => {
            m.insert(last.to_string(), value);
        }
        Value::Array(a) => a[last.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} is not a container"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(last);
}

/// Asserts that a problem at exactly `path` has a reason containing `reason`.
fn assert_problem(doc: &Value, path: &str, reason: &str) {
    let found = problems(doc);
    assert!(
        found
            .iter()
            .any(|p| p.path == path && p.reason.contains(reason)),
        "expected a problem at {path} containing {reason:?}, got {found:#?}"
    );
}

#[test]
fn every_conformance_config_is_valid() {
    for name in ["astara-router-basic.json", "astara-router-full.json"] {
        let doc = conformance(name);
        let config = parse(doc.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{name} should be valid: {e}"));
        assert_eq!(config.networks.len(), 3, "{name}");
        assert_eq!(config.asn, 64512);
        assert_eq!(config.floating_ips.len(), 1);
        assert_eq!(config.external_network().unwrap().ifname, "ge1", "{name}");
        assert_eq!(config.management_network().unwrap().ifname, "ge0");
        let internal = &config.networks[2];
        assert_eq!(internal.network_type, NetworkType::Internal);
        assert_eq!(internal.mtu, Some(1450));
        assert_eq!(internal.subnets[0].host_routes.len(), 1);
        assert_eq!(
            internal.subnets[0].host_routes[0].next_hop.to_string(),
            "192.168.0.254"
        );
        assert_eq!(internal.allocations[0].mac_address, "fa:16:3e:aa:bb:01");
    }
}

#[test]
fn network_mtu_applies_when_the_interface_has_none() {
    let config = parse(basic().to_string().as_bytes()).unwrap();
    assert_eq!(config.networks[0].mtu, Some(1500));
}

#[test]
fn unknown_top_level_and_network_keys_are_ignored() {
    let mut doc = basic();
    set(&mut doc, "/some_future_key", json!({"x": 1}));
    set(&mut doc, "/networks/0/unknown", json!(true));
    set(
        &mut doc,
        "/networks/0/subnets/0/ipv6_ra_mode",
        json!("slaac"),
    );
    assert_eq!(problems(&doc), vec![]);
}

#[test]
fn astara_json_quirks_are_accepted() {
    let mut doc = basic();
    // static routes as [destination, next_hop] pairs, and host routes spelled next_hop
    set(
        &mut doc,
        "/static_routes",
        json!([["10.9.0.0/16", "172.16.77.1"]]),
    );
    set(
        &mut doc,
        "/networks/2/subnets/0/host_routes",
        json!([{"destination": "10.50.0.0/16", "next_hop": "192.168.0.254"}]),
    );
    set(&mut doc, "/default_v4_gateway", json!(""));
    set(&mut doc, "/networks/0/subnets/0/gateway_ip", Value::Null);
    let config = parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(config.static_routes.len(), 1);
    assert_eq!(config.default_v4_gateway, None);
    assert_eq!(config.networks[2].subnets[0].host_routes.len(), 1);
}

#[test]
fn malformed_json_is_a_syntax_error() {
    assert!(matches!(
        parse(b"{\"networks\": ["),
        Err(ConfigError::Syntax(_))
    ));
    assert!(matches!(parse(b"[]"), Err(ConfigError::Invalid(_))));
}

#[test]
fn type_errors_name_their_path() {
    let mut doc = basic();
    set(&mut doc, "/networks/2/interface/mtu", json!("big"));
    assert_problem(&doc, "networks[2].interface.mtu", "invalid type");
}

/// Each case: a mutation of the basic config, the path expected, a fragment of the reason.
#[test]
fn each_kind_of_bad_config_names_its_path() {
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation, &str, &str)> = vec![
        (
            "missing tenant_id",
            |d| remove(d, "/tenant_id"),
            "tenant_id",
            "is required",
        ),
        (
            "missing hostname",
            |d| remove(d, "/hostname"),
            "hostname",
            "is required",
        ),
        (
            "bad hostname",
            |d| set(d, "/hostname", json!("bad host;rm -rf")),
            "hostname",
            "not a valid host name",
        ),
        (
            "bad network_type",
            |d| set(d, "/networks/1/network_type", json!("public")),
            "networks[1].network_type",
            "is not one of",
        ),
        (
            "bad v6_conf_service",
            |d| set(d, "/networks/2/v6_conf_service", json!("slaac")),
            "networks[2].v6_conf_service",
            "is not one of",
        ),
        (
            "missing network_id",
            |d| remove(d, "/networks/2/network_id"),
            "networks[2].network_id",
            "is required",
        ),
        (
            "missing interface",
            |d| remove(d, "/networks/2/interface"),
            "networks[2].interface",
            "is required",
        ),
        (
            "bad ifname",
            |d| set(d, "/networks/2/interface/ifname", json!("eth0; reboot")),
            "networks[2].interface.ifname",
            "geN",
        ),
        (
            "bad CIDR",
            |d| set(d, "/networks/2/subnets/0/cidr", json!("192.168.0.0/33")),
            "networks[2].subnets[0].cidr",
            "\"192.168.0.0/33\" is not a valid CIDR",
        ),
        (
            "CIDR host bits",
            |d| set(d, "/networks/2/subnets/0/cidr", json!("192.168.0.1/24")),
            "networks[2].subnets[0].cidr",
            "host bits",
        ),
        (
            "bad interface address",
            |d| {
                set(
                    d,
                    "/networks/2/interface/addresses/0",
                    json!("192.168.0.300/24"),
                )
            },
            "networks[2].interface.addresses[0]",
            "not a valid",
        ),
        (
            "address without prefix",
            |d| set(d, "/networks/2/interface/addresses/0", json!("192.168.0.1")),
            "networks[2].interface.addresses[0]",
            "no prefix length",
        ),
        (
            "gateway outside subnet",
            |d| set(d, "/networks/2/subnets/0/gateway_ip", json!("10.0.0.1")),
            "networks[2].subnets[0].gateway_ip",
            "not inside the subnet",
        ),
        (
            "bad DNS server",
            |d| {
                set(
                    d,
                    "/networks/2/subnets/0/dns_nameservers/0",
                    json!("dns.example"),
                )
            },
            "networks[2].subnets[0].dns_nameservers[0]",
            "not a valid IP",
        ),
        (
            "host route family",
            |d| {
                set(
                    d,
                    "/networks/2/subnets/0/host_routes/0/nexthop",
                    json!("2001:db8::1"),
                )
            },
            "networks[2].subnets[0].host_routes[0].nexthop",
            "same IP family",
        ),
        (
            "FIP outside external",
            |d| set(d, "/floating_ips/0/floating_ip", json!("10.1.1.1")),
            "floating_ips[0].floating_ip",
            "not inside any external subnet",
        ),
        (
            "fixed IP outside internal",
            |d| set(d, "/floating_ips/0/fixed_ip", json!("172.16.77.9")),
            "floating_ips[0].fixed_ip",
            "not inside any internal subnet",
        ),
        (
            "duplicate network id",
            |d| {
                let id = d["networks"][1]["network_id"].clone();
                set(d, "/networks/2/network_id", id)
            },
            "networks[2].network_id",
            "also the id of networks[1]",
        ),
        (
            "duplicate ifname",
            |d| set(d, "/networks/2/interface/ifname", json!("ge1")),
            "networks[2].interface.ifname",
            "also the interface of networks[1]",
        ),
        (
            "two external networks",
            |d| set(d, "/networks/2/network_type", json!("external")),
            "networks[2].network_type",
            "only one external",
        ),
        (
            "two management networks",
            |d| set(d, "/networks/1/network_type", json!("management")),
            "networks[1].network_type",
            "only one management",
        ),
        (
            "anchor interface",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "block", "interface": "ge9"}]}]),
                )
            },
            "anchors[0].rules[0].interface",
            "not the interface of any network",
        ),
        (
            "anchor address book",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "block", "source": "nobody"}]}]),
                )
            },
            "anchors[0].rules[0].source",
            "address_book",
        ),
        (
            "anchor unknown key",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "block", "colour": "red"}]}]),
                )
            },
            "anchors[0].rules[0].colour",
            "not a filter rule field",
        ),
        (
            "anchor action",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "allow"}]}]),
                )
            },
            "anchors[0].rules[0].action",
            "is not one of",
        ),
        (
            "anchor port range",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "pass", "protocol": "tcp", "destination_port": 70000}]}]),
                )
            },
            "anchors[0].rules[0].destination_port",
            "not a port",
        ),
        (
            "anchor redirect",
            |d| {
                set(
                    d,
                    "/anchors",
                    json!([{"name": "a", "rules": [{"action": "pass", "redirect": "10.0.0.1"}]}]),
                )
            },
            "anchors[0].rules[0].redirect",
            "not supported",
        ),
        (
            "MTU too small for IPv6",
            |d| set(d, "/networks/2/interface/mtu", json!(1000)),
            "networks[2].interface.mtu",
            "IPv6 needs at least 1280",
        ),
        (
            "bad MAC",
            |d| {
                set(
                    d,
                    "/networks/2/allocations/0/mac_address",
                    json!("fa:16:3e:aa:bb"),
                )
            },
            "networks[2].allocations[0].mac_address",
            "not a MAC",
        ),
        (
            "allocation outside subnets",
            |d| {
                set(
                    d,
                    "/networks/2/allocations/1/ip_addresses",
                    json!({"10.0.0.3": true}),
                )
            },
            "networks[2].allocations[1].ip_addresses[\"10.0.0.3\"]",
            "not inside any subnet",
        ),
        (
            "default gw not v4",
            |d| set(d, "/default_v4_gateway", json!("2001:db8:77::1")),
            "default_v4_gateway",
            "not an IPv4",
        ),
        (
            "default gw off-link",
            |d| set(d, "/default_v4_gateway", json!("10.1.1.1")),
            "default_v4_gateway",
            "not inside any subnet of the external",
        ),
        (
            "static route pair",
            |d| set(d, "/static_routes", json!([["10.0.0.0/8"]])),
            "static_routes[0]",
            "[destination, next_hop] pair",
        ),
        (
            "static route CIDR",
            |d| set(d, "/static_routes", json!([["10.0.0.0/99", "172.16.77.1"]])),
            "static_routes[0][0]",
            "not a valid CIDR",
        ),
        (
            "duplicate address",
            |d| {
                set(
                    d,
                    "/networks/2/interface/addresses/0",
                    json!("172.16.77.2/24"),
                )
            },
            "networks[2].interface.addresses[0]",
            "also at networks[1]",
        ),
        (
            "overlapping subnets",
            |d| set(d, "/networks/2/subnets/0/cidr", json!("172.16.0.0/16")),
            "networks[2].subnets[0].cidr",
            "overlaps",
        ),
        (
            "bad ASN",
            |d| set(d, "/asn", json!(0)),
            "asn",
            "not an AS number",
        ),
        (
            "bad orchestrator address",
            |d| set(d, "/orchestrator/address", json!("orchestrator")),
            "orchestrator.address",
            "not a valid IP",
        ),
        (
            "unknown service",
            |d| set(d, "/services", json!({"firewall": {}})),
            "services[\"firewall\"]",
            "cannot provide",
        ),
        (
            "HA unsupported",
            |d| set(d, "/ha_resource", json!(true)),
            "ha_resource",
            "not supported",
        ),
        (
            "label CIDR",
            |d| set(d, "/labels/ext/0", json!("192.168.57.0/40")),
            "labels[\"ext\"][0]",
            "not a valid CIDR",
        ),
    ];
    let mut kinds = 0;
    for (name, mutate, path, reason) in &cases {
        let mut doc = basic();
        mutate(&mut doc);
        let found = problems(&doc);
        assert!(
            found
                .iter()
                .any(|p| p.path == *path && p.reason.contains(reason)),
            "{name}: expected a problem at {path} containing {reason:?}, got {found:#?}"
        );
        kinds += 1;
    }
    assert!(kinds >= 15, "{kinds}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut doc = basic();
    remove(&mut doc, "/tenant_id");
    set(
        &mut doc,
        "/networks/2/subnets/0/cidr",
        json!("192.168.0.0/33"),
    );
    set(&mut doc, "/networks/1/interface/ifname", json!("bogus"));
    set(&mut doc, "/orchestrator/metadata_port", json!(0));
    let found = problems(&doc);
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "tenant_id",
        "networks[2].subnets[0].cidr",
        "networks[1].interface.ifname",
        "orchestrator.metadata_port",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert_eq!(
        found
            .iter()
            .find(|p| p.path == "networks[2].subnets[0].cidr")
            .unwrap()
            .to_string(),
        "networks[2].subnets[0].cidr: \"192.168.0.0/33\" is not a valid CIDR"
    );
}

#[test]
fn psk_is_redacted_and_hash_is_stable() {
    let doc = conformance("astara-router-full.json");
    let config = parse(doc.to_string().as_bytes()).unwrap();
    let shown = serde_json::to_string(&config.document.redacted()).unwrap();
    assert!(!shown.contains("secrete"), "{shown}");
    assert!(shown.contains("\"psk\":\"***\""));
    let again = parse(&config.document.to_canonical_json()).unwrap();
    assert_eq!(again.document.hash(), config.document.hash());
    assert_eq!(again, config);
}

/// `config_hash` (`/v1/status`) is the hash of the redacted document: configs that differ only
/// in their pre-shared key hash alike, so a leaked hash cannot confirm a guessed key offline.
#[test]
fn the_hash_carries_no_secret() {
    let doc = conformance("astara-router-full.json");
    let config = parse(doc.to_string().as_bytes()).unwrap();
    let mut guessed = doc.clone();
    guessed["vpn"]["ipsec"][0]["ipsec_connections"][0]["psk"] = json!("a-wrong-guess");
    let guessed = parse(guessed.to_string().as_bytes()).unwrap();
    assert_eq!(config.document.hash(), guessed.document.hash());
    let redacted = config.document.redacted().to_canonical_json();
    assert_eq!(
        config.document.hash(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&redacted))
    );
    // Everything else still changes it.
    let mut renamed = doc.clone();
    renamed["vpn"]["ipsec"][0]["name"] = json!("another");
    let renamed = parse(renamed.to_string().as_bytes()).unwrap();
    assert_ne!(config.document.hash(), renamed.document.hash());
}

/// A GET sent back as a PUT carries the placeholder, not the key: refused, naming the field.
#[test]
fn the_redaction_placeholder_is_refused_as_a_secret() {
    let doc = conformance("astara-router-full.json");
    let config = parse(doc.to_string().as_bytes()).unwrap();
    let shown = serde_json::to_vec(&config.document.redacted()).unwrap();
    match parse(&shown) {
        Err(ConfigError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:#?}");
            assert_eq!(problems[0].path, "vpn.ipsec[0].ipsec_connections[0].psk");
            assert!(
                problems[0].reason.contains("redaction placeholder"),
                "{problems:#?}"
            );
        }
        other => panic!("accepted or not a 422: {other:?}"),
    }
}

#[test]
fn anchors_resolve_address_book_and_icmp() {
    let mut doc = basic();
    set(
        &mut doc,
        "/address_book",
        json!({"admins": ["203.0.113.0/24"]}),
    );
    set(
        &mut doc,
        "/anchors",
        json!([{"name": "ssh", "rules": [
            {"action": "block", "protocol": "tcp", "source": "admins", "destination_port": 22, "interface": "ge1"},
            {"action": "pass", "protocol": "imcp", "source": "any", "destination": "192.168.0.0/24"}
        ]}]),
    );
    let config = parse(doc.to_string().as_bytes()).unwrap();
    let rules = &config.anchors[0].rules;
    assert_eq!(
        rules[0].source,
        Some(akanda_model::Endpoint::AddressBook("admins".into()))
    );
    assert_eq!(rules[0].destination_port, Some(22));
    assert_eq!(rules[1].protocol, Some(akanda_model::Protocol::Icmp));
    assert_eq!(rules[1].source, None);
}

#[test]
fn network_and_subnet_ids_cannot_carry_a_directive_or_a_header() {
    // A network id reaches dnsmasq's config file and the metadata proxy's headers.
    for bad in [
        "x\ndhcp-range=0.0.0.0,255.255.255.255",
        "x\r\nX-Injected: 1",
        "a b",
        "\"quoted\"",
        "#comment",
        &"x".repeat(256),
    ] {
        let mut doc = basic();
        set(&mut doc, "/networks/2/network_id", json!(bad));
        assert_problem(&doc, "networks[2].network_id", "is not an id");
        let mut doc = basic();
        set(&mut doc, "/networks/2/subnets/0/id", json!(bad));
        assert_problem(&doc, "networks[2].subnets[0].id", "is not an id");
    }
    for good in [
        "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
        "mgt-subnet-id",
        "a.b:c_d",
    ] {
        let mut doc = basic();
        set(&mut doc, "/networks/2/network_id", json!(good));
        assert!(problems(&doc).is_empty(), "{good}: {:?}", problems(&doc));
    }
}
