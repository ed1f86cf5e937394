//! Regressions from the fuzz targets (`fuzz/`, `scripts/fuzz`): each input is the one
//! libFuzzer minimised (or, where noted, the smallest edit of a conformance config that breaks
//! the same invariant), and each is now refused with a 422 naming the field, before anything
//! is rendered.

use std::path::PathBuf;

use akanda_model::bounds::{MAX_LABEL_CIDRS_TOTAL, MAX_LIST_ENTRIES};
use akanda_model::{parse, ConfigError, Problem};
use serde_json::{json, Value};

fn problems(input: &[u8]) -> Vec<Problem> {
    match parse(input) {
        Ok(_) => panic!("accepted: {}", String::from_utf8_lossy(input)),
        Err(ConfigError::Invalid(p)) => p,
        Err(ConfigError::Syntax(e)) => panic!("refused as malformed JSON (400): {e}"),
    }
}

fn assert_refused_at(input: &[u8], path: &str, reason: &str) {
    let found = problems(input);
    assert!(
        found
            .iter()
            .any(|p| p.path == path && p.reason.contains(reason)),
        "expected a problem at {path} containing {reason:?}, got {found:#?}"
    );
}

fn basic() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/astara-router-basic.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Target `config`: well-formed JSON of the wrong shape (a host route as a list of three) was
/// a 400 "malformed JSON: trailing characters"; it is a 422 at the entry.
#[test]
fn a_list_longer_than_the_object_it_fills_is_a_422_at_its_path() {
    assert_refused_at(
        br#"{"networks":[{"subnets":[{"host_routes":[["","",2]]}]}]}"#,
        "networks[0].subnets[0].host_routes[0]",
        "wrong shape",
    );
}

/// Target `render`, `dnsmasq --test`: "bad RA-params". A network with an IPv6 subnet and no
/// IPv6 address passed the MTU check for IPv4 (68), and dnsmasq refused its RA MTU below
/// 1280: the whole apply failed at the services phase.
#[test]
fn an_ipv6_subnet_needs_an_mtu_of_1280() {
    assert_refused_at(
        br#"{"tenant_id":":","hostname":"n","networks":[{"network_id":":","interface":{"ifname":"ge2","mtu":80},"subnets":[{"id":":","cidr":"::/64","dhcp_enabled":true}]}]}"#,
        "networks[0].interface.mtu",
        "IPv6 needs at least 1280",
    );
}

/// Target `render`, `dnsmasq --test` of the options file's lines: "bad IP address" and "bad
/// IPv6 address". A DNS server of the other family went into the subnet's DHCP option, which
/// dnsmasq skipped (with a log line) on every SIGHUP: the subnet's clients got no DNS server.
#[test]
fn a_dns_server_is_of_its_subnets_family() {
    assert_refused_at(
        br#"{"tenant_id":"g","hostname":"g","networks":[{"network_id":"i","interface":{"ifname":"ge1"},"subnets":[{"id":"g","cidr":"1.0.0.0/8","dhcp_enabled":true,"dns_nameservers":["::"]}]}]}"#,
        "networks[0].subnets[0].dns_nameservers[0]",
        "not of the subnet's IP family",
    );
    assert_refused_at(
        br#"{"tenant_id":":","hostname":"r","networks":[{"network_id":"o","interface":{"ifname":"ge2"},"subnets":[{"id":"r","cidr":"::/64","dhcp_enabled":true,"dns_nameservers":["1.0.0.3"]}]}]}"#,
        "networks[0].subnets[0].dns_nameservers[0]",
        "not of the subnet's IP family",
    );
}

/// Target `render`, `bird -p`: "Link-local addresses require defined interface". An external
/// link-local subnet made its gateway a BGP neighbour bird refuses.
#[test]
fn a_subnet_cannot_be_link_local() {
    assert_refused_at(
        br#"{"tenant_id":"149cee9b4eac8349c","hostname":"10.0.0.1","networks":[{"network_id":"in","network_type":"external","interface":{"ifname":"ge1","addresses":["172.16.77.2/24","fe80::2/64"]},"subnets":[{"id":"fe80::1","cidr":"fe80::/64","gateway_ip":"fe80::1","dhcp_enabled":false,"host_routes":[]}]}]}"#,
        "networks[0].subnets[0].cidr",
        "link-local",
    );
    let mut doc = basic();
    doc["networks"][2]["subnets"][1]["cidr"] = json!("fc00::/6");
    assert_refused_at(
        doc.to_string().as_bytes(),
        "networks[2].subnets[1].cidr",
        "link-local",
    );
}

/// Target `render`, building the nftnl batch: "Comment too big" (an anchor's name goes into
/// its rules' comments, which nftnl caps at 128 bytes) and a NUL in a label's name (a C
/// string). The apply failed at the ruleset phase; the names now follow the name grammar.
/// (The basic config with the one edit.)
#[test]
fn firewall_names_fit_a_rule_comment() {
    let mut doc = basic();
    doc["anchors"] = json!([{"name": "a".repeat(120), "rules": [{"action": "pass"}]}]);
    assert_refused_at(
        doc.to_string().as_bytes(),
        "anchors[0].name",
        "is not a name",
    );
    let mut doc = basic();
    doc["labels"] = json!({"x\u{0}": ["10.0.0.0/8"]});
    assert_refused_at(
        doc.to_string().as_bytes(),
        "labels[\"x\\u0000\"]",
        "is not a name",
    );
}

/// Target `render`, the ruleset budget (found by the invariant's arithmetic, not by an
/// input: libFuzzer's inputs stay far below the megabyte it takes): labels had no total, so
/// 256 names × 256 CIDRs rendered 131,072 counter rules, over the whole ruleset's budget.
#[test]
fn label_cidrs_have_a_total() {
    let mut doc = basic();
    let names = MAX_LABEL_CIDRS_TOTAL / MAX_LIST_ENTRIES + 1;
    doc["labels"] = Value::Object(
        (0..names)
            .map(|n| {
                let cidrs: Vec<Value> = (0..MAX_LIST_ENTRIES)
                    .map(|i| json!(format!("10.{n}.{i}.0/24")))
                    .collect();
                (format!("l{n}"), Value::Array(cidrs))
            })
            .collect(),
    );
    assert_refused_at(
        doc.to_string().as_bytes(),
        "labels",
        &format!("the limit is {MAX_LABEL_CIDRS_TOTAL}"),
    );
}

/// `mutated_configs_root` (seed 1796047825379894825, mutation 2351): the external NIC lost its
/// IPv4 address while `default_v4_gateway` stayed. The kernel refused the default route
/// ("Network is unreachable"), a 409 after a rollback, where the config itself is wrong: the
/// gateway must be on the external NIC's link.
#[test]
fn the_ipv4_default_gateway_is_on_the_external_link() {
    let mut doc = basic();
    doc["networks"][1]["interface"]["addresses"] = json!(["2001:db8:77::2/64"]);
    assert_refused_at(
        doc.to_string().as_bytes(),
        "default_v4_gateway",
        "not on the external network's link",
    );
    // Without default_v4_gateway, the external subnet's gateway_ip is the one named.
    doc.as_object_mut().unwrap().remove("default_v4_gateway");
    assert_refused_at(
        doc.to_string().as_bytes(),
        "networks[1].subnets[0].gateway_ip",
        "not on the external network's link",
    );
    // With its address back, the same config is accepted.
    doc["networks"][1]["interface"]["addresses"] = json!(["172.16.77.2/24", "2001:db8:77::2/64"]);
    parse(doc.to_string().as_bytes()).expect("accepted");
}

/// `mutated_configs_root` (seed 1796048810106355619, mutation 1580): an interface address equal
/// to its IPv6 prefix's network address (the subnet-router anycast address) displaced the
/// kernel's anycast route, and after a failed apply's rollback the route stayed `local`.
/// Refused, unless a subnet's gateway_ip is that address (Neutron allows that gateway).
#[test]
fn the_subnet_router_anycast_address_is_an_address_only_as_the_gateway() {
    let mut doc = basic();
    doc["networks"][1]["interface"]["addresses"] =
        json!(["172.16.77.2/24", "2001:db8:77::/64", "2001:db8:77::2/64"]);
    assert_refused_at(
        doc.to_string().as_bytes(),
        "networks[1].interface.addresses[1]",
        "subnet-router anycast",
    );
    doc["networks"][1]["subnets"][1]["gateway_ip"] = json!("2001:db8:77::");
    doc["networks"][1]["interface"]["addresses"] = json!(["172.16.77.2/24", "2001:db8:77::/64"]);
    let found = match parse(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("{e}"),
    };
    assert!(
        !found
            .iter()
            .any(|p| p.reason.contains("subnet-router anycast")),
        "{found:#?}"
    );
}
