//! The document's limits (docs/config.md, "Limits") and the rules that protect the router's
//! neighbours: one test per bound and per rule. Each refusal is a 422 problem naming the path
//! and, for a limit, the limit.

use std::path::PathBuf;

use akanda_model::bounds::*;
use akanda_model::{parse, ConfigError, Problem};
use serde_json::{json, Value};

fn basic() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/astara-router-basic.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn problems(doc: &Value) -> Vec<Problem> {
    match parse(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Asserts that `doc` is refused with a problem at `path` whose reason contains `says`.
#[track_caller]
fn refused(doc: &Value, path: &str, says: &str) {
    let found = problems(doc);
    assert!(
        found
            .iter()
            .any(|p| p.path == path && p.reason.contains(says)),
        "no problem at {path} saying {says:?} in {found:#?}"
    );
}

fn limit(n: usize) -> String {
    format!("the limit is {n}")
}

fn many(n: usize, item: impl Fn(usize) -> Value) -> Value {
    Value::Array((0..n).map(item).collect())
}

/// The external /16 and internal /16 of the tests' floating IP configs.
fn wide(floating_ips: usize) -> Value {
    akanda_model::testing::with_floating_ips(basic(), floating_ips as u32)
}

#[test]
fn twenty_thousand_floating_ips_are_accepted_and_one_more_is_refused() {
    assert_eq!(MAX_FLOATING_IPS, 20_000);
    let doc = wide(MAX_FLOATING_IPS);
    let config = parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.floating_ips.len(), MAX_FLOATING_IPS);
    refused(
        &wide(MAX_FLOATING_IPS + 1),
        "floating_ips",
        &limit(MAX_FLOATING_IPS),
    );
}

/// A change made to the basic document.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn every_list_has_a_limit() {
    let cidr = |i: usize| json!(format!("10.{}.{}.0/24", i / 256, i % 256));
    let cases: Vec<(&str, Mutation, String, usize)> = vec![
        (
            "networks",
            Box::new(|d| d["networks"] = many(MAX_NETWORKS + 1, |_| json!({}))),
            "networks".into(),
            MAX_NETWORKS,
        ),
        (
            "subnets",
            Box::new(|d| d["networks"][2]["subnets"] = many(MAX_SUBNETS + 1, |_| json!({}))),
            "networks[2].subnets".into(),
            MAX_SUBNETS,
        ),
        (
            "addresses",
            Box::new(|d| {
                d["networks"][2]["interface"]["addresses"] =
                    many(MAX_INTERFACE_ADDRESSES + 1, |_| json!("192.168.0.1/24"))
            }),
            "networks[2].interface.addresses".into(),
            MAX_INTERFACE_ADDRESSES,
        ),
        (
            "allocations",
            Box::new(|d| {
                d["networks"][2]["allocations"] = many(MAX_ALLOCATIONS + 1, |_| json!({}))
            }),
            "networks[2].allocations".into(),
            MAX_ALLOCATIONS,
        ),
        (
            "ip_addresses",
            Box::new(|d| {
                d["networks"][2]["allocations"][0]["ip_addresses"] = Value::Object(
                    (0..=MAX_ALLOCATION_ADDRESSES)
                        .map(|i| (format!("192.168.0.{}", i + 2), json!(true)))
                        .collect(),
                )
            }),
            "networks[2].allocations[0].ip_addresses".into(),
            MAX_ALLOCATION_ADDRESSES,
        ),
        (
            "dns",
            Box::new(|d| {
                d["networks"][2]["subnets"][0]["dns_nameservers"] =
                    many(MAX_DNS_NAMESERVERS + 1, |_| json!("8.8.8.8"))
            }),
            "networks[2].subnets[0].dns_nameservers".into(),
            MAX_DNS_NAMESERVERS,
        ),
        (
            "host_routes",
            Box::new(|d| {
                d["networks"][2]["subnets"][0]["host_routes"] =
                    many(MAX_HOST_ROUTES + 1, |_| json!({}))
            }),
            "networks[2].subnets[0].host_routes".into(),
            MAX_HOST_ROUTES,
        ),
        (
            "static_routes",
            Box::new(|d| {
                d["static_routes"] = many(MAX_STATIC_ROUTES + 1, |_| {
                    json!(["10.9.0.0/16", "172.16.77.1"])
                })
            }),
            "static_routes".into(),
            MAX_STATIC_ROUTES,
        ),
        (
            "address_book names",
            Box::new(|d| {
                d["address_book"] = Value::Object(
                    (0..=MAX_NAMED_LISTS)
                        .map(|i| (format!("n{i}"), json!([])))
                        .collect(),
                )
            }),
            "address_book".into(),
            MAX_NAMED_LISTS,
        ),
        (
            "address_book entries",
            Box::new(move |d| d["address_book"] = json!({"big": many(MAX_LIST_ENTRIES + 1, cidr)})),
            "address_book.big".into(),
            MAX_LIST_ENTRIES,
        ),
        (
            "labels",
            Box::new(move |d| d["labels"] = json!({"big": many(MAX_LIST_ENTRIES + 1, cidr)})),
            "labels.big".into(),
            MAX_LIST_ENTRIES,
        ),
        (
            "anchors",
            Box::new(|d| {
                d["anchors"] = many(MAX_ANCHORS + 1, |_| json!({"name": "a", "rules": []}))
            }),
            "anchors".into(),
            MAX_ANCHORS,
        ),
        (
            "rules",
            Box::new(
                |d| d["anchors"] = json!([{"name": "a", "rules": many(MAX_ANCHOR_RULES + 1, |_| json!({"action": "pass"}))}]),
            ),
            "anchors[0].rules".into(),
            MAX_ANCHOR_RULES,
        ),
        (
            "rule keys",
            Box::new(
                |d| d["anchors"] = json!([{"name": "a", "rules": [Value::Object((0..=MAX_RULE_KEYS).map(|i| (format!("k{i}"), json!(1))).collect())]}]),
            ),
            "anchors[0].rules[0]".into(),
            MAX_RULE_KEYS,
        ),
        (
            "services",
            Box::new(|d| {
                d["services"] = Value::Object(
                    (0..=MAX_SERVICES)
                        .map(|i| (format!("s{i}"), json!({})))
                        .collect(),
                )
            }),
            "services".into(),
            MAX_SERVICES,
        ),
        (
            "vpn services",
            Box::new(|d| d["vpn"] = json!({"ipsec": many(MAX_VPN_SERVICES + 1, |_| json!({}))})),
            "vpn.ipsec".into(),
            MAX_VPN_SERVICES,
        ),
        (
            "vpn connections",
            Box::new(
                |d| d["vpn"] = json!({"ipsec": [{"ipsec_connections": many(MAX_VPN_CONNECTIONS + 1, |_| json!({}))}]}),
            ),
            "vpn.ipsec[0].ipsec_connections".into(),
            MAX_VPN_CONNECTIONS,
        ),
        (
            "peer cidrs",
            Box::new(
                move |d| d["vpn"] = json!({"ipsec": [{"ipsec_connections": [{"peer_cidrs": many(MAX_VPN_CIDRS + 1, cidr)}]}]}),
            ),
            "vpn.ipsec[0].ipsec_connections[0].peer_cidrs".into(),
            MAX_VPN_CIDRS,
        ),
    ];
    for (what, mutate, path, max) in cases {
        let mut doc = basic();
        mutate(&mut doc);
        let found = problems(&doc);
        assert!(
            found
                .iter()
                .any(|p| p.path == path && p.reason.contains(&limit(max))),
            "{what}: no problem at {path} naming the limit {max} in {found:#?}"
        );
    }
}

#[test]
fn totals_across_lists_have_limits() {
    // Allocations over several networks.
    let mut doc = basic();
    let per = MAX_ALLOCATIONS_TOTAL / 5 + 1;
    doc["networks"] = many(5, |_| json!({"allocations": many(per, |_| json!({}))}));
    refused(&doc, "networks", &limit(MAX_ALLOCATIONS_TOTAL));
    // Address-book CIDRs over several names.
    let mut doc = basic();
    let names = MAX_ADDRESS_BOOK_TOTAL / MAX_LIST_ENTRIES + 1;
    doc["address_book"] = Value::Object(
        (0..names)
            .map(|n| {
                let list = many(MAX_LIST_ENTRIES, |i| json!(format!("10.{n}.{i}.0/24")));
                (format!("n{n}"), list)
            })
            .collect(),
    );
    refused(&doc, "address_book", &limit(MAX_ADDRESS_BOOK_TOTAL));
    // Rules over several anchors.
    let mut doc = basic();
    let anchors = MAX_ANCHOR_RULES_TOTAL / MAX_ANCHOR_RULES + 1;
    doc["anchors"] = many(
        anchors,
        |i| json!({"name": format!("a{i}"), "rules": many(MAX_ANCHOR_RULES, |_| json!({"action": "pass"}))}),
    );
    refused(&doc, "anchors", &limit(MAX_ANCHOR_RULES_TOTAL));
}

#[test]
fn an_address_book_crossed_with_itself_is_held_to_the_ruleset_budget() {
    let mut doc = basic();
    let book = many(200, |i| json!(format!("10.{}.{}.0/24", i / 256, i % 256)));
    doc["address_book"] = json!({"nets": book});
    // 200 × 200 = 40,000 rendered rules from one rule.
    doc["anchors"] = json!([{"name": "a", "rules": [
        {"action": "pass", "source": "nets", "destination": "nets"}]}]);
    refused(
        &doc,
        "anchors[0].rules[0]",
        &format!("budget for all rules is {MAX_RENDERED_RULES}"),
    );
    refused(
        &doc,
        "anchors",
        &format!("the budget is {MAX_RENDERED_RULES}"),
    );
    // Under budget in one rule, over it together.
    let mut doc = basic();
    let book = many(100, |i| json!(format!("10.0.{i}.0/24")));
    doc["address_book"] = json!({"nets": book});
    doc["anchors"] = json!([{"name": "a", "rules": many(3, |_| json!(
        {"action": "pass", "source": "nets", "destination": "nets"}))}]);
    let found = problems(&doc);
    assert!(
        !found.iter().any(|p| p.path.starts_with("anchors[0].rules")),
        "{found:#?}"
    );
    refused(&doc, "anchors", "render 30000 firewall rules");
    // Within budget: accepted.
    doc["anchors"] = json!([{"name": "a", "rules": many(2, |_| json!(
        {"action": "pass", "source": "nets", "destination": "nets"}))}]);
    assert_eq!(problems(&doc), vec![]);
}

#[test]
fn fields_take_no_arbitrary_json() {
    // A filter rule's values are scalars: an array is refused where it starts.
    let mut doc = basic();
    doc["anchors"] = json!([{"name": "a", "rules": [{"action": "pass", "source": [1, 2, 3]}]}]);
    refused(
        &doc,
        "anchors[0].rules[0].source",
        "expected a string, a number, a boolean or null",
    );
    // A static route pair has two entries.
    let mut doc = basic();
    doc["static_routes"] = json!([["10.9.0.0/16", "172.16.77.1", "x"]]);
    refused(&doc, "static_routes[0]", &limit(2));
    // ha_config and services' settings are read and dropped, whatever they hold.
    let mut doc = basic();
    doc["ha_config"] = json!({"peers": many(1000, |i| json!([i, {"x": i}]))});
    doc["services"] = json!({"router": {"anything": many(1000, |i| json!(i))}});
    let config = parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let shown = serde_json::to_value(&config.document).unwrap();
    assert_eq!(shown["ha_config"], json!({}));
    assert_eq!(shown["services"], json!({"router": {}}));
}

#[test]
fn subnets_and_interface_addresses_cannot_be_slash_zero() {
    let mut doc = basic();
    doc["networks"][2]["subnets"][0]["cidr"] = json!("0.0.0.0/0");
    doc["networks"][2]["subnets"][0]["gateway_ip"] = json!("");
    refused(&doc, "networks[2].subnets[0].cidr", "cannot be /0");
    let mut doc = basic();
    doc["networks"][1]["subnets"][1]["cidr"] = json!("::/0");
    refused(&doc, "networks[1].subnets[1].cidr", "cannot be /0");
    let mut doc = basic();
    doc["networks"][2]["interface"]["addresses"] = json!(["192.168.0.1/0"]);
    refused(
        &doc,
        "networks[2].interface.addresses[0]",
        "prefix length 0",
    );
}

#[test]
fn router_addresses_cannot_be_the_upstream_gateway() {
    // A floating IP equal to the external subnet's gateway.
    let mut doc = basic();
    doc["floating_ips"][0]["floating_ip"] = json!("172.16.77.1");
    refused(&doc, "floating_ips[0].floating_ip", "upstream gateway");
    // An external address equal to it.
    let mut doc = basic();
    doc["networks"][1]["interface"]["addresses"] = json!(["172.16.77.1/24", "2001:db8:77::2/64"]);
    refused(
        &doc,
        "networks[1].interface.addresses[0]",
        "upstream gateway",
    );
    // Or to default_v4_gateway when it is another address of the subnet.
    let mut doc = basic();
    doc["default_v4_gateway"] = json!("172.16.77.9");
    doc["floating_ips"][0]["floating_ip"] = json!("172.16.77.9");
    refused(&doc, "floating_ips[0].floating_ip", "upstream gateway");
    // The IPv6 gateway too.
    let mut doc = basic();
    doc["networks"][1]["interface"]["addresses"] = json!(["172.16.77.2/24", "2001:db8:77::1/64"]);
    refused(
        &doc,
        "networks[1].interface.addresses[1]",
        "upstream gateway",
    );
}

#[test]
fn router_owned_addresses_cannot_collide_with_each_other() {
    // A floating IP equal to an interface address, twice the same floating IP: already refused.
    let mut doc = basic();
    doc["floating_ips"][0]["floating_ip"] = json!("172.16.77.2");
    refused(
        &doc,
        "floating_ips[0].floating_ip",
        "also an interface address",
    );
    let mut doc = basic();
    doc["floating_ips"] = json!([
        {"floating_ip": "172.16.77.50", "fixed_ip": "192.168.0.2"},
        {"floating_ip": "172.16.77.50", "fixed_ip": "192.168.0.3"}]);
    refused(&doc, "floating_ips[1].floating_ip", "also floating_ips[0]");
    // The same interface address on two NICs.
    let mut doc = basic();
    doc["networks"][2]["interface"]["addresses"] = json!(["172.16.77.2/24"]);
    refused(
        &doc,
        "networks[2].interface.addresses[0]",
        "is also at networks[1]",
    );
}

#[test]
fn a_fixed_ip_belongs_to_one_allocation() {
    let mut doc = basic();
    let first = doc["networks"][2]["allocations"][0].clone();
    let ip = first["ip_addresses"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let mut second = first.clone();
    second["mac_address"] = json!("fa:16:3e:00:00:77");
    second["device_id"] = json!("another-instance");
    second["hostname"] = json!("another");
    second["ip_addresses"] = json!({ip.clone(): true});
    doc["networks"][2]["allocations"]
        .as_array_mut()
        .unwrap()
        .push(second);
    refused(
        &doc,
        "networks[2].allocations[2].ip_addresses[0]",
        &format!("{ip} is also the address of networks[2].allocations[0]"),
    );
}

#[test]
fn ipv6_floating_ips_are_refused_until_they_are_implemented() {
    let mut doc = basic();
    doc["floating_ips"] =
        json!([{"floating_ip": "2001:db8:77::50", "fixed_ip": "2001:db8:100::2"}]);
    refused(
        &doc,
        "floating_ips[0].floating_ip",
        "IPv6 floating IPs are not implemented",
    );
}

#[test]
fn garbage_at_the_body_cap_is_refused_without_expanding() {
    // 32 MiB: a list of short strings, each 3 bytes of input that would be a 32-byte JSON value
    // (plus its string) in an untyped tree. Refused at the 65th entry.
    let mut body = String::from(r#"{"networks":[{"interface":{"addresses":["#);
    while body.len() < 32 * 1024 * 1024 - 8 {
        body.push_str(r#""","#);
    }
    body.push_str(r#""""#);
    body.push_str("]}}]}");
    let started = std::time::Instant::now();
    match parse(body.as_bytes()) {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p[0].path, "networks[0].interface.addresses", "{p:?}");
            assert!(
                p[0].reason.contains(&limit(MAX_INTERFACE_ADDRESSES)),
                "{p:?}"
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    println!("32 MiB of garbage refused in {:?}", started.elapsed());
}

#[test]
fn strings_and_keys_have_a_length_limit() {
    let long = "a".repeat(MAX_STRING_BYTES + 1);
    let mut doc = basic();
    doc["hostname"] = json!(long);
    refused(&doc, "hostname", &limit(MAX_STRING_BYTES));
    let mut doc = basic();
    doc["address_book"] = json!({ long.clone(): [] });
    let found = problems(&doc);
    assert!(
        found
            .iter()
            .any(|p| p.path.starts_with("address_book")
                && p.reason.contains(&limit(MAX_STRING_BYTES))),
        "{found:#?}"
    );
    // Even where the key is unknown and would be ignored.
    let mut doc = basic();
    doc["unknown"] = json!([long]);
    refused(&doc, "unknown[0]", &limit(MAX_STRING_BYTES));
    // A string at the limit is fine (as an unknown key's value).
    let mut doc = basic();
    doc["unknown"] = json!("a".repeat(MAX_STRING_BYTES));
    assert_eq!(problems(&doc), vec![]);
}
