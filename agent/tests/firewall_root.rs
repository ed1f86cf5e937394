//! The nf_tables batch against the kernel (needs root): each test in its own namespace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use akanda_agent::firewall::{batch, build, netfilter, ruleset, text, FirewallOptions, Ruleset};
use akanda_model::RouterConfig;
use akanda_tests::{conformance_json, in_netns, require_root, Netns};
use serde_json::json;

const OPTS: FirewallOptions = FirewallOptions { api_port: 5000 };

/// The full conformance config plus tenant rules, labels and 200 floating IPs.
fn rich_config() -> RouterConfig {
    let mut doc = conformance_json("astara-router-full.json");
    doc["address_book"] =
        json!({"admins": ["203.0.113.0/24", "198.51.100.7/32"], "v6": ["2001:db8:999::/48"]});
    doc["anchors"] = json!([{"name": "ssh", "rules": [
        {"action": "block", "protocol": "tcp", "source": "admins", "destination_port": 22, "interface": "ge1"},
        {"action": "pass", "protocol": "icmp", "family": "inet6", "source": "v6"},
        {"action": "pass", "protocol": "udp", "destination": "192.168.0.0/24", "destination_port": 53}
    ]}]);
    let mut fips = vec![json!({"floating_ip": "172.16.77.50", "fixed_ip": "192.168.0.2"})];
    for i in 0..199u32 {
        fips.push(json!({"floating_ip": format!("172.16.77.{}", 60 + i % 190), "fixed_ip": format!("192.168.0.{}", 10 + i)}));
    }
    fips.truncate(150); // keep both sides unique inside the /24s
    doc["floating_ips"] = json!(fips);
    akanda_model::parse(doc.to_string().as_bytes()).expect("valid config")
}

fn nft(ns: &Netns, args: &str) -> String {
    ns.sh(&format!("nft {args}"))
}

/// `nft list table` without the per-namespace handles and counters, for comparing.
fn listing(ns: &Netns) -> String {
    nft(ns, "list table inet akanda")
        .lines()
        .map(|l| l.split(" # handle").next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`listing`] with its chains sorted by name: the kernel lists chains in the order they were
/// added, which means nothing (base chains run by priority, regular ones when jumped to), and
/// a rewrite in place keeps the chains already there ahead of those it adds.
fn listing_by_chain(ns: &Netns) -> String {
    let text = listing(ns);
    let (head, chains) = match text.find("\n\tchain ") {
        Some(i) => text.split_at(i),
        None => return text,
    };
    let mut blocks: Vec<String> = chains
        .trim_end()
        .trim_end_matches('}')
        .split("\n\tchain ")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.trim_end().to_string())
        .collect();
    blocks.sort();
    format!("{head}\n\tchain {}\n}}", blocks.join("\n\tchain "))
}

#[test]
fn batch_and_text_renderers_agree() {
    if !require_root() {
        return;
    }
    let rs = build(&rich_config(), OPTS);
    let via_batch = Netns::new("fwb");
    in_netns(&via_batch, || batch::apply(&rs)).expect("batch applies");
    let via_text = Netns::new("fwt");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, text::render(&rs)).unwrap();
    nft(&via_text, &format!("-f {}", file.display()));
    let (a, b) = (listing(&via_batch), listing(&via_text));
    assert_eq!(a, b, "nftnl batch and nft text differ");
    assert!(a.contains("map fip_dnat"), "{a}");
    assert!(a.contains("172.16.77.50 : 192.168.0.2"), "{a}");
    // The number of rules does not grow with floating IPs: 150 here, three NAT map rules and
    // two that mark the sessions.
    let fip_rules = a.lines().filter(|l| l.contains("map @fip_")).count();
    assert_eq!(fip_rules, 5, "{a}");
    // The marks are listed as the numbers of the addresses (nft reads the byte order from
    // the map's user data).
    assert!(a.contains("172.16.77.50 : 0xac104d32"), "{a}");
}

#[test]
fn replacing_keeps_other_tables_and_a_refused_batch_changes_nothing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fwr");
    nft(&ns, "add table ip operator");
    nft(
        &ns,
        "add chain ip operator watch '{ type filter hook input priority 10; }'",
    );
    nft(&ns, "add rule ip operator watch tcp dport 8080 counter");
    let operator_before = nft(&ns, "list table ip operator");

    let rs = build(&rich_config(), OPTS);
    in_netns(&ns, || batch::apply(&rs)).unwrap();
    let mut smaller = rs.clone();
    smaller.sets.iter_mut().for_each(|s| s.elements.truncate(3));
    in_netns(&ns, || batch::apply(&smaller)).unwrap();
    assert_eq!(operator_before, nft(&ns, "list table ip operator"));
    let applied = nft(&ns, "list table inet akanda");
    assert!(
        !applied.contains("172.16.77.63 :"),
        "old elements must be gone"
    );

    // A batch the kernel refuses (a jump to a chain that does not exist) is rolled back
    // whole: the previous table stays byte-identical.
    let mut broken: Ruleset = rs.clone();
    broken.chains[3].rules.push(ruleset::Rule {
        matches: vec![],
        counter: false,
        verdict: ruleset::Verdict::Jump("no_such_chain".into()),
        comment: None,
    });
    let err = in_netns(&ns, || batch::apply(&broken)).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(applied, nft(&ns, "list table inet akanda"));
    assert_eq!(operator_before, nft(&ns, "list table ip operator"));

    // Deleting our table leaves the operator's alone.
    in_netns(&ns, batch::delete_table).unwrap();
    assert!(!nft(&ns, "list tables").contains("akanda"));
    assert_eq!(operator_before, nft(&ns, "list table ip operator"));
    in_netns(&ns, batch::delete_table).expect("deleting a missing table is fine");
}

#[test]
fn readback_lists_the_live_table_with_counters() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fwl");
    assert_eq!(
        in_netns(&ns, || netfilter::list_table("akanda")).unwrap(),
        None
    );
    let rs = build(&rich_config(), OPTS);
    in_netns(&ns, || batch::apply(&rs)).unwrap();
    let live = in_netns(&ns, || netfilter::list_table("akanda"))
        .unwrap()
        .unwrap();
    assert!(live.contains("table inet akanda"), "{live}");
    assert!(live.contains("counter packets 0 bytes 0"), "{live}");
    assert!(live.contains("172.16.77.50 : 192.168.0.2"));
}

#[test]
fn conntrack_sessions_of_an_address_are_deleted() {
    if !require_root() {
        return;
    }
    // Two namespaces, a UDP "session" through a conntrack entry in the first; deleting the
    // sessions of its destination removes exactly that entry.
    let a = Netns::new("cta");
    let b = Netns::new("ctb");
    akanda_tests::veth(
        &a,
        "eth0",
        "02:00:00:00:0a:01",
        &b,
        "eth0",
        "02:00:00:00:0b:01",
    );
    a.ip("addr add 10.88.0.1/24 dev eth0");
    b.ip("addr add 10.88.0.2/24 dev eth0");
    b.ip("addr add 10.88.0.3/24 dev eth0");
    // A ruleset makes the kernel track connections in `a`.
    nft(&a, "add table ip t");
    nft(
        &a,
        "add chain ip t out '{ type filter hook output priority 0; }'",
    );
    nft(&a, "add rule ip t out ct state new counter");
    // One datagram to each (sendto returns once conntrack has confirmed the entry, in the
    // output path; `nc -w0` could quit before sending).
    a.sh("python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b\"x\", (d, 9999)) for d in (\"10.88.0.2\", \"10.88.0.3\")]'");
    let entries =
        || a.sh("cat /proc/net/nf_conntrack 2>/dev/null || conntrack -L 2>/dev/null || true");
    let before = entries();
    let deleted = in_netns(&a, || {
        akanda_agent::firewall::netfilter::delete_sessions_of(&BTreeSet::from([Ipv4Addr::new(
            10, 88, 0, 2,
        )]))
    })
    .unwrap();
    assert_eq!(deleted, 1, "before: {before}");
    let after = entries();
    if !after.is_empty() {
        assert!(!after.contains("dst=10.88.0.2 "), "{after}");
        assert!(after.contains("dst=10.88.0.3 "), "{after}");
    }
}

#[test]
fn ten_thousand_floating_ips_apply_in_one_batch() {
    if !require_root() {
        return;
    }
    // Larger than one batch page and than one set-element message: both limits are handled.
    let doc = akanda_tests::config_with_floating_ips(10_000);
    let config = akanda_model::parse(doc.to_string().as_bytes()).unwrap();
    let ns = Netns::new("fwbig");
    in_netns(&ns, || batch::apply(&build(&config, OPTS))).expect("10,000 floating IPs apply");
    let map = nft(&ns, "list map inet akanda fip_dnat");
    assert_eq!(map.matches(" : 10.0.").count(), 10_000);
    assert!(map.contains("172.16.40.250 : 10.0.40.250"));
}

/// The handles of the table and of its base chains (`nft -a`): the same handles mean the
/// kernel kept them (no hook was unregistered, so no RCU grace period was waited for).
fn base_handles(ns: &Netns, rs: &Ruleset) -> Vec<String> {
    let bases: Vec<String> = rs
        .chains
        .iter()
        .filter(|c| c.base.is_some())
        .map(|c| format!("chain {} {{", c.name))
        .collect();
    nft(ns, "-a list table inet akanda")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("table ") || bases.iter().any(|b| l.starts_with(b.as_str())))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_change_of_rules_rewrites_them_in_the_table_and_base_chains_already_there() {
    if !require_root() {
        return;
    }
    let config = |doc: serde_json::Value| akanda_model::parse(doc.to_string().as_bytes()).unwrap();
    let rich = build(&rich_config(), OPTS);
    let full = build(&config(conformance_json("astara-router-full.json")), OPTS);
    let basic = build(&config(conformance_json("astara-router-basic.json")), OPTS);
    let mut no_fips = conformance_json("astara-router-full.json");
    no_fips["floating_ips"] = json!([]);
    no_fips["address_book"] = json!({"other": ["10.77.0.0/16"]});
    no_fips["anchors"] = json!([{"name": "web", "rules": [
        {"action": "pass", "protocol": "tcp", "destination": "other", "destination_port": 443}
    ]}]);
    let no_fips = build(&config(no_fips), OPTS);
    let mut no_external = conformance_json("astara-router-basic.json");
    no_external["networks"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["network_type"] != "external");
    no_external
        .as_object_mut()
        .unwrap()
        .remove("default_v4_gateway");
    no_external["floating_ips"] = json!([]);
    let no_external = build(&config(no_external), OPTS);

    let ns = Netns::new("fwrw");
    in_netns(&ns, || batch::apply(&rich)).unwrap();
    let steps = [
        ("rich → full", &rich, &full),
        ("full → without floating IPs, other rules", &full, &no_fips),
        ("→ basic", &no_fips, &basic),
        ("basic → rich", &basic, &rich),
        ("rich → without external network", &rich, &no_external),
        ("→ rich again", &no_external, &rich),
    ];
    let mut kinds = BTreeSet::new();
    for (what, old, new) in steps {
        assert_ne!(old, new, "{what}: the step changes nothing");
        let handles = base_handles(&ns, old);
        let update = in_netns(&ns, || batch::update(Some(old), new))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // What the kernel holds is what a whole-table apply of the new ruleset gives.
        let fresh = Netns::new("fwrwref");
        in_netns(&fresh, || batch::apply(new)).unwrap();
        assert_eq!(
            listing_by_chain(&ns),
            listing_by_chain(&fresh),
            "{what}: {update:?}"
        );
        kinds.insert(format!("{update:?}"));
        let bases = |rs: &Ruleset| {
            rs.chains
                .iter()
                .filter_map(|c| {
                    c.base
                        .map(|b| format!("{} {:?} {}", c.name, b.hook, b.priority))
                })
                .collect::<BTreeSet<_>>()
        };
        if bases(old) == bases(new) {
            assert_eq!(update, batch::Update::Rules, "{what}");
            assert_eq!(
                base_handles(&ns, new),
                handles,
                "{what}: the table or a base chain was re-created"
            );
        } else {
            assert_eq!(update, batch::Update::Table, "{what}");
        }
    }
    assert_eq!(kinds, BTreeSet::from(["Rules".into()]));
    // The table deleted by hand: the update finds it gone and installs the table whole.
    nft(&ns, "delete table inet akanda");
    let update = in_netns(&ns, || batch::update(Some(&rich), &full)).unwrap();
    assert_eq!(update, batch::Update::Table);
    let fresh = Netns::new("fwrwref");
    in_netns(&fresh, || batch::apply(&full)).unwrap();
    assert_eq!(listing(&ns), listing(&fresh));
}
