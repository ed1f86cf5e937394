//! Golden tests: the ruleset of each config in `tests/golden/NAME.json`, as nft text in
//! `tests/golden/NAME.nft`. A change to the ruleset shows up as a reviewable diff of these
//! files. Regenerate with `AKANDA_BLESS=1`.
//!
//! Each case renders a different ruleset, so each test can fail on its own. The inputs live
//! here rather than in the shared conformance folder, so the tests never read outside the repository:
//! `astara-router-basic.json` is a copy of the conformance file; `astara-router-full.json` is
//! the conformance `full` config (whose VPN section does not reach the firewall) plus a second
//! internal network, an isolated one, more floating IPs and labels.

use std::path::PathBuf;

use akanda_agent::firewall::{build, text, FirewallOptions};

fn check(case: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let config = dir.join(format!("{case}.json"));
    let bytes = std::fs::read(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let parsed = akanda_model::parse(&bytes).unwrap_or_else(|e| panic!("{case}.json: {e}"));
    let rendered = text::render(&build(&parsed, FirewallOptions { api_port: 5000 }));
    let path = dir.join(format!("{case}.nft"));
    if std::env::var_os("AKANDA_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with AKANDA_BLESS=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        rendered, want,
        "ruleset of {case}.json differs from {case}.nft"
    );
}

#[test]
fn basic_router() {
    check("astara-router-basic");
}

#[test]
fn full_router() {
    check("astara-router-full");
}

#[test]
fn anchors_with_an_address_book() {
    check("anchors-address-book");
}

#[test]
fn ipv6_tenant_rules() {
    check("ipv6-tenant-rules");
}

#[test]
fn router_without_floating_ips() {
    check("no-floating-ips");
}

#[test]
fn router_without_an_external_network() {
    check("no-external-network");
}

/// Every case differs from every other: a golden file that duplicates another would let a
/// regression hide behind the test that also covers it.
#[test]
fn every_case_renders_a_distinct_ruleset() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut seen = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "nft") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Some(other) = seen.insert(text, path.clone()) {
                panic!("{} and {} are identical", path.display(), other.display());
            }
        }
    }
    assert!(seen.len() >= 6, "{} golden files", seen.len());
}
