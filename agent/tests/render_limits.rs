//! The renderers at the edges of what the model accepts (regressions of the fuzz target
//! `render`, `fuzz/`): the longest firewall names still fit nftnl's rule comments, the largest
//! ruleset stays within its budget, and dnsmasq takes every line the agent renders for the
//! conformance configs, the hosts and options files' lines included (its `--test` alone does
//! not read those files).

use std::path::{Path, PathBuf};
use std::process::Command;

use akanda_agent::firewall::{batch, build, FirewallOptions};
use akanda_agent::services::{bird, dnsmasq};
use akanda_model::bounds::{
    MAX_LABEL_CIDRS_TOTAL, MAX_LIST_ENTRIES, MAX_RENDERED_RULES, MAX_RULESET_RULES, MAX_SUBNETS,
};
use akanda_model::RouterConfig;
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn parse(doc: &Value) -> RouterConfig {
    akanda_model::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

const OPTS: FirewallOptions = FirewallOptions { api_port: 5000 };

/// nftnl refuses a comment of 128 bytes or more ("Comment too big"), and the apply failed at
/// its ruleset phase: names are now 64 characters at most, which leaves room.
#[test]
fn the_longest_names_fit_the_rule_comments() {
    let mut doc = fixture("astara-router-basic.json");
    doc["labels"] = json!({ "l".repeat(64): ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"] });
    let rules: Vec<Value> = (0..1024).map(|_| json!({"action": "pass"})).collect();
    doc["anchors"] = json!([{"name": "a".repeat(64), "rules": rules}]);
    let rs = build(&parse(&doc), OPTS);
    let longest = rs
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .filter_map(|r| r.comment.as_ref())
        .map(String::len)
        .max()
        .unwrap();
    assert!(longest < 128, "a comment of {longest} bytes");
    batch::build(&rs).unwrap_or_else(|e| panic!("{e}"));
}

/// The largest ruleset the model lets through: 30 internal networks of 32 subnets each, a
/// floating IP (hairpin and SNAT rules per subnet), every label CIDR the total allows, and
/// anchors at the budget. Before labels had a total, 256 × 256 label CIDRs rendered 131,072
/// rules.
#[test]
fn the_largest_ruleset_stays_within_its_budget() {
    let mut doc = fixture("astara-router-basic.json");
    let networks = doc["networks"].as_array_mut().unwrap();
    networks.truncate(2); // management, external
    for n in 0..30u32 {
        let subnets: Vec<Value> = (0..MAX_SUBNETS as u32)
            .map(|s| json!({"id": format!("s{n}-{s}"), "cidr": format!("10.{n}.{s}.0/24"), "dhcp_enabled": true}))
            .collect();
        networks.push(json!({
            "network_id": format!("n{n}"), "network_type": "internal",
            "interface": {"ifname": format!("ge{}", n + 2), "addresses": [format!("10.{n}.0.1/24")]},
            "subnets": subnets,
        }));
    }
    doc["floating_ips"] = json!([{"floating_ip": "172.16.77.50", "fixed_ip": "10.0.0.10"}]);
    let names = MAX_LABEL_CIDRS_TOTAL / MAX_LIST_ENTRIES;
    doc["labels"] = Value::Object(
        (0..names)
            .map(|n| {
                let cidrs: Vec<Value> = (0..MAX_LIST_ENTRIES)
                    .map(|i| json!(format!("198.{}.{i}.0/24", 18 + n % 2)))
                    .collect();
                (format!("label{n}"), Value::Array(cidrs))
            })
            .collect(),
    );
    let book = |base: u32, n: usize| -> Vec<Value> {
        (0..n as u32)
            .map(|i| json!(format!("203.{}.{}.0/24", base + i / 256, i % 256)))
            .collect()
    };
    doc["address_book"] = json!({"a": book(0, 100), "b": book(1, 200)});
    doc["anchors"] = json!([{"name": "all", "rules": [
        {"action": "pass", "source": "a", "destination": "b"}]}]);
    let config = parse(&doc);
    let rs = build(&config, OPTS);
    let tenant: usize = rs
        .chains
        .iter()
        .filter(|c| c.name == "tenant_rules")
        .map(|c| c.rules.len())
        .sum();
    assert_eq!(tenant, MAX_RENDERED_RULES);
    let total: usize = rs.chains.iter().map(|c| c.rules.len()).sum();
    assert!(
        total <= MAX_RULESET_RULES,
        "{total} rules, the budget is {MAX_RULESET_RULES}"
    );
    assert!(
        total > MAX_RENDERED_RULES + 2 * MAX_LABEL_CIDRS_TOTAL,
        "{total}: the case is not the largest"
    );
}

fn dnsmasq_check(file: &Path) -> Result<(), String> {
    let out = Command::new("dnsmasq")
        .args(["--test", "-C"])
        .arg(file)
        .output()
        .map_err(|e| format!("dnsmasq: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every dnsmasq line the agent renders for the conformance configs, as one file that dnsmasq's
/// `--test` reads whole (the hosts, options and servers files' lines as the `dhcp-host=`,
/// `dhcp-option=` and `server=` lines they stand for), and bird's file through `bird -p`.
#[test]
fn dnsmasq_and_bird_take_every_rendered_line_of_the_conformance_configs() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "astara-router-basic.json",
        "astara-router-full.json",
        "astara-router-v6-prefix-gateway.json",
    ] {
        let config = parse(&fixture(name));
        let mut served = 0;
        for network in dnsmasq::served_networks(&config) {
            let paths = dnsmasq::DnsmasqPaths::new(dir.path(), dir.path(), &network.ifname);
            let files = dnsmasq::render(network, &paths);
            let mut all = files.conf.clone();
            all.extend(files.hosts.lines().map(|l| format!("dhcp-host={l}\n")));
            all.extend(files.opts.lines().map(|l| format!("dhcp-option={l}\n")));
            all.push_str(&files.servers);
            assert!(files.hosts.lines().count() > 0 && files.opts.lines().count() > 0);
            let path = dir.path().join("all.conf");
            std::fs::write(&path, &all).unwrap();
            dnsmasq_check(&path)
                .unwrap_or_else(|e| panic!("{name} {}: {e}\n{all}", network.ifname));
            served += 1;
        }
        assert!(served > 0, "{name}");
        let conf = bird::render(&config).expect("the conformance routers peer over BGP");
        let path = dir.path().join("bird.conf");
        std::fs::write(&path, &conf).unwrap();
        let out = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The check fails where it should: a DNS server of the other family in the options file,
    // as the model let through before (now refused at validation).
    let path = dir.path().join("bad.conf");
    std::fs::write(
        &path,
        "dhcp-option=tag:ge2_0,option:dns-server,[2001:db8::53]\n",
    )
    .unwrap();
    assert!(dnsmasq_check(&path).is_err());
}
