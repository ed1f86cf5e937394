//! Prints the nft text of a config's ruleset: `cargo run --example render_ruleset -- FILE`.
fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: render_ruleset CONFIG.json");
    let bytes = std::fs::read(&path).expect("read config");
    let config = akanda_model::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let rs = akanda_agent::firewall::build(
        &config,
        akanda_agent::firewall::FirewallOptions { api_port: 5000 },
    );
    print!("{}", akanda_agent::firewall::text::render(&rs));
}
