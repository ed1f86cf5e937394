//! Benchmark: the nf_tables side of an apply (needs root; runs in its own namespace).
//!     cargo bench -p akanda-agent --bench firewall
//!
//! For 10, 100, 1,000 and 10,000 floating IPs: building the ruleset (pure), sending it as one
//! batch, the no-op check an identical config costs (ruleset comparison + one GETTABLE, no
//! netfilter write), and one floating IP added then removed (element batches: `+1` is
//! measured 50 ms after the whole apply, whose freed objects the next batch would otherwise
//! wait an RCU grace period for); and `GET /v1/firewall/rules`' read-back at 1,000.

use std::time::{Duration, Instant};

use akanda_agent::firewall::{batch, build, netfilter, ruleset, FirewallOptions};
use akanda_tests::{in_netns, require_root, Netns};

const RUNS: usize = 15;

fn config(fips: u32) -> akanda_model::RouterConfig {
    let doc = akanda_tests::config_with_floating_ips(fips);
    akanda_model::parse(doc.to_string().as_bytes()).expect("valid bench config")
}

/// [`config`] with one floating IP more.
fn config_plus_one(fips: u32) -> akanda_model::RouterConfig {
    let mut doc = akanda_tests::config_with_floating_ips(fips);
    doc["floating_ips"]
        .as_array_mut()
        .expect("a list")
        .push(akanda_tests::floating_ip(fips));
    akanda_model::parse(doc.to_string().as_bytes()).expect("valid bench config")
}

fn median(mut d: Vec<Duration>) -> f64 {
    d.sort();
    d[d.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fwbench");
    let opts = FirewallOptions { api_port: 5000 };
    println!("\nnf_tables, milliseconds (median of {RUNS})");
    println!(
        "{:>8} {:>12} {:>14} {:>16} {:>14} {:>14}",
        "FIPs", "build (pure)", "batch apply", "no-op check", "+1 elements", "-1 elements"
    );
    let mut readback_ms = 0.0;
    for n in [10u32, 100, 1_000, 10_000] {
        let cfg = config(n);
        let plus = build(&config_plus_one(n), opts);
        let (build_ms, apply_ms, noop_ms, plus_ms, minus_ms) = in_netns(&ns, || {
            let mut builds = Vec::new();
            let mut applies = Vec::new();
            let mut noops = Vec::new();
            let (mut pluses, mut minuses) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let t = Instant::now();
                let rs = build(&cfg, opts);
                builds.push(t.elapsed());
                let t = Instant::now();
                batch::apply(&rs).expect("batch applies");
                applies.push(t.elapsed());
                // What an identical config costs: build, compare, confirm the table is there.
                let t = Instant::now();
                let again = build(&cfg, opts);
                assert!(again == rs);
                assert!(netfilter::inet_table_exists(ruleset::TABLE).unwrap());
                noops.push(t.elapsed());
                // One floating IP added, then removed: element batches only. After a pause: the
                // batch after one that freed kernel objects (the table replaced, elements
                // deleted) waits for the RCU grace period that frees them, 7 to 15 ms here.
                std::thread::sleep(Duration::from_millis(50));
                let t = Instant::now();
                let kind = batch::update(Some(&rs), &plus).expect("+1 applies");
                pluses.push(t.elapsed());
                assert_eq!(kind, batch::Update::Elements);
                let t = Instant::now();
                batch::update(Some(&plus), &rs).expect("-1 applies");
                minuses.push(t.elapsed());
            }
            (
                median(builds),
                median(applies),
                median(noops),
                median(pluses),
                median(minuses),
            )
        });
        println!(
            "{n:>8} {build_ms:>12.2} {apply_ms:>14.2} {noop_ms:>16.2} {plus_ms:>14.2} {minus_ms:>14.2}"
        );
        if n == 1_000 {
            readback_ms = in_netns(&ns, || {
                let runs: Vec<Duration> = (0..RUNS)
                    .map(|_| {
                        let t = Instant::now();
                        let text = netfilter::list_table(ruleset::TABLE).unwrap().unwrap();
                        assert!(text.contains("172.16.4.250 : 10.0.4.250"));
                        t.elapsed()
                    })
                    .collect();
                median(runs)
            });
        }
    }
    println!("\nGET /v1/firewall/rules read-back at 1,000 floating IPs: {readback_ms:.2} ms (median of {RUNS})");
}
