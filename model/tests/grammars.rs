//! Every free string of the document follows its grammar (model/src/grammar.rs, listed in
//! docs/config.md): an injection attempt through any of them is refused with a 422 naming that
//! field, and the conformance values pass.

use std::path::PathBuf;

use akanda_model::{parse, ConfigError, Grammar, Problem};
use serde_json::{json, Value};

fn conformance(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The full conformance config (it has a VPN section), with a firewall: an address book, a
/// label and an anchor whose rule names the address book.
fn base() -> Value {
    let mut doc = conformance("astara-router-full.json");
    doc["address_book"] = json!({"admins": ["203.0.113.0/24"]});
    doc["labels"] = json!({"ext": ["192.168.57.0/24"]});
    doc["anchors"] = json!([{"name": "ssh", "rules": [
        {"action": "pass", "protocol": "tcp", "source": "admins", "destination_port": 22}]}]);
    doc["networks"][2]["name"] = json!("tenant net");
    doc["networks"][2]["interface"]["description"] = json!("the tenant's NIC");
    doc
}

fn problems(doc: &Value) -> Vec<Problem> {
    match parse(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

const IPSEC: &str = "/vpn/ipsec/0";
const CONN: &str = "/vpn/ipsec/0/ipsec_connections/0";

/// Where a string value sits (a JSON pointer), the path a refusal names, its grammar.
fn value_fields() -> Vec<(String, String, Grammar)> {
    let c = "vpn.ipsec[0].ipsec_connections[0]";
    let mut fields: Vec<(String, String, Grammar)> = [
        ("/tenant_id", "tenant_id", Grammar::HeaderValue),
        ("/hostname", "hostname", Grammar::Hostname),
        ("/orchestrator/host", "orchestrator.host", Grammar::DnsName),
        (
            "/networks/2/network_id",
            "networks[2].network_id",
            Grammar::Id,
        ),
        ("/networks/2/name", "networks[2].name", Grammar::Text),
        (
            "/networks/2/interface/description",
            "networks[2].interface.description",
            Grammar::Text,
        ),
        (
            "/networks/2/subnets/0/id",
            "networks[2].subnets[0].id",
            Grammar::Id,
        ),
        (
            "/networks/2/allocations/0/hostname",
            "networks[2].allocations[0].hostname",
            Grammar::DnsName,
        ),
        (
            "/networks/2/allocations/0/device_id",
            "networks[2].allocations[0].device_id",
            Grammar::HeaderValue,
        ),
        ("/anchors/0/name", "anchors[0].name", Grammar::Name),
    ]
    .into_iter()
    .map(|(p, f, g)| (p.to_string(), f.to_string(), g))
    .collect();
    for (k, g) in [
        ("id", Grammar::Id),
        ("name", Grammar::Text),
        ("status", Grammar::Name),
        ("router_id", Grammar::Id),
    ] {
        fields.push((format!("{IPSEC}/{k}"), format!("vpn.ipsec[0].{k}"), g));
    }
    for (k, g) in [
        ("id", Grammar::Id),
        ("tenant_id", Grammar::Id),
        ("name", Grammar::Text),
        ("peer_id", Grammar::Quoted),
        ("psk", Grammar::Quoted),
        ("route_mode", Grammar::Name),
        ("initiator", Grammar::Name),
        ("auth_mode", Grammar::Name),
        ("status", Grammar::Name),
        ("vpnservice_id", Grammar::Id),
        ("dpd/action", Grammar::Name),
        ("ikepolicy/id", Grammar::Id),
        ("ikepolicy/tenant_id", Grammar::Id),
        ("ikepolicy/name", Grammar::Text),
        ("ikepolicy/ike_version", Grammar::Name),
        ("ikepolicy/auth_algorithm", Grammar::Name),
        ("ikepolicy/encryption_algorithm", Grammar::Name),
        ("ikepolicy/pfs", Grammar::Name),
        ("ikepolicy/phase1_negotiation_mode", Grammar::Name),
        ("ikepolicy/lifetime/units", Grammar::Name),
        ("ipsecpolicy/id", Grammar::Id),
        ("ipsecpolicy/transform_protocol", Grammar::Name),
        ("ipsecpolicy/encapsulation_mode", Grammar::Name),
        ("ipsecpolicy/lifetime/units", Grammar::Name),
        ("local_ep_group/id", Grammar::Id),
        ("local_ep_group/name", Grammar::Text),
        ("local_ep_group/type", Grammar::Name),
        ("local_ep_group/endpoints/0", Grammar::Id),
    ] {
        let path = format!("{c}.{}", k.replace('/', "."));
        let path = path.replace(".endpoints.0", ".endpoints[0]");
        fields.push((format!("{CONN}/{k}"), path, g));
    }
    fields
}

/// What an attacker tries: a directive on a new line, a header, a C string's end, quotes, a
/// comment, a statement end, a block, and a value past every grammar's length.
fn injections() -> Vec<String> {
    vec![
        "x\ndhcp-range=0.0.0.0,255.255.255.255".into(),
        "x\r\nX-Injected: 1".into(),
        "x\0y".into(),
        "x\"; protocol static {} #".into(),
        "\"quoted\"".into(),
        "#comment".into(),
        "a;b".into(),
        "{x}".into(),
        "x".repeat(300),
    ]
}

fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    *doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the base config")) = value;
}

#[test]
fn the_base_config_with_every_field_set_is_valid() {
    assert_eq!(problems(&base()), vec![]);
    for (pointer, _, grammar) in value_fields() {
        let doc = base();
        let value = doc.pointer(&pointer).and_then(Value::as_str);
        let value = value.unwrap_or_else(|| panic!("{pointer} is not a string"));
        assert!(grammar.matches(value), "{pointer}: {value:?}");
    }
}

#[test]
fn an_injection_through_any_string_field_is_refused_at_that_field() {
    let fields = value_fields();
    for (pointer, path, grammar) in &fields {
        for bad in injections() {
            let mut doc = base();
            set_pointer(&mut doc, pointer, json!(bad));
            let found = problems(&doc);
            let here = found.iter().any(|p| &p.path == path);
            // A line break, a NUL and 300 characters pass no grammar.
            let universal = bad.contains(['\n', '\0']) || bad.len() > 255;
            if universal || !grammar.matches(&bad) {
                assert!(
                    here,
                    "{pointer} = {bad:?} ({grammar:?}): expected a problem at {path}, got {found:#?}"
                );
            } else {
                assert!(
                    !here,
                    "{pointer} = {bad:?} ({grammar:?}) is inert there and should pass: {found:#?}"
                );
            }
        }
    }
    assert!(fields.len() >= 40, "{} fields", fields.len());
}

#[test]
fn the_refusal_of_a_secret_does_not_repeat_it() {
    let mut doc = base();
    set_pointer(&mut doc, &format!("{CONN}/psk"), json!("top\"secret"));
    let found = problems(&doc);
    let p = found
        .iter()
        .find(|p| p.path == "vpn.ipsec[0].ipsec_connections[0].psk")
        .expect("refused");
    assert!(!p.reason.contains("secret"), "{p:?}");
}

#[test]
fn firewall_names_follow_the_name_grammar() {
    for bad in
        injections()
            .into_iter()
            .chain(["".into(), "a".repeat(65), "-x".into(), "a b".into()])
    {
        for list in ["address_book", "labels"] {
            let mut doc = base();
            doc[list] = json!({ bad.clone(): ["10.0.0.0/8"] });
            if list == "address_book" {
                doc["anchors"] = json!([]);
            }
            let path = format!("{list}[{}]", Value::String(bad.clone()));
            let found = problems(&doc);
            assert!(
                found.iter().any(|p| p.path == path),
                "{list} name {bad:?}: expected a problem at {path}, got {found:#?}"
            );
        }
    }
    // The longest name fits in a rule comment ("label NAME from CIDR", "anchor NAME rule N").
    let mut doc = base();
    doc["labels"] = json!({ "l".repeat(64): ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"] });
    doc["anchors"][0]["name"] = json!("a".repeat(64));
    assert_eq!(problems(&doc), vec![]);
}

#[test]
fn any_cannot_name_an_address_book_list() {
    let mut doc = base();
    doc["address_book"] = json!({"any": ["10.0.0.0/8"]});
    let found = problems(&doc);
    assert!(
        found
            .iter()
            .any(|p| p.path == "address_book[\"any\"]" && p.reason.contains("keyword")),
        "{found:#?}"
    );
}

#[test]
fn vpn_addresses_and_prefixes_are_parsed() {
    for (pointer, value, path) in [
        (
            format!("{IPSEC}/external_v4_ip"),
            "2001:db8::1",
            "vpn.ipsec[0].external_v4_ip",
        ),
        (
            format!("{IPSEC}/external_v6_ip"),
            "x\ny",
            "vpn.ipsec[0].external_v6_ip",
        ),
        (
            format!("{CONN}/peer_address"),
            "peer;reboot",
            "vpn.ipsec[0].ipsec_connections[0].peer_address",
        ),
        (
            format!("{CONN}/peer_ep_group/endpoints/0"),
            "10.0.0.0/33",
            "vpn.ipsec[0].ipsec_connections[0].peer_ep_group.endpoints[0]",
        ),
    ] {
        let mut doc = base();
        set_pointer(&mut doc, &pointer, json!(value));
        let found = problems(&doc);
        assert!(
            found.iter().any(|p| p.path == path),
            "{pointer} = {value:?}: {found:#?}"
        );
    }
    let mut doc = base();
    set_pointer(
        &mut doc,
        &format!("{CONN}/peer_address"),
        json!("vpn.peer.example"),
    );
    doc["vpn"]["ipsec"][0]["ipsec_connections"][0]["peer_cidrs"] = json!(["172.31.155.0/24"]);
    assert_eq!(problems(&doc), vec![]);
    let mut doc = base();
    doc["vpn"]["ipsec"][0]["ipsec_connections"][0]["peer_cidrs"] = json!(["a\nb"]);
    assert!(problems(&doc)
        .iter()
        .any(|p| p.path == "vpn.ipsec[0].ipsec_connections[0].peer_cidrs[0]"));
}
