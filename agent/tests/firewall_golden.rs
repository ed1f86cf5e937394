//! Golden tests: the ruleset of each conformance config, as nft text. A change to the ruleset
//! shows up as a reviewable diff of these files. Regenerate with `AKANDA_BLESS=1`.

use std::path::PathBuf;

use akanda_agent::firewall::{build, text, FirewallOptions};

fn check(config: &str, golden: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(root.join("../../shared/conformance").join(config)).unwrap();
    let parsed = akanda_model::parse(&bytes).unwrap();
    let rendered = text::render(&build(&parsed, FirewallOptions { api_port: 5000 }));
    let path = root.join("tests/golden").join(golden);
    if std::env::var_os("AKANDA_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with AKANDA_BLESS=1 to create)",
            path.display()
        )
    });
    assert_eq!(rendered, want, "ruleset of {config} differs from {golden}");
}

#[test]
fn basic_router() {
    check("astara-router-basic.json", "astara-router-basic.nft");
}

#[test]
fn full_router() {
    check("astara-router-full.json", "astara-router-full.nft");
}
