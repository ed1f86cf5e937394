//! Benchmark: what the agent does with a config document before and after the kernel work,
//! at 10,000 and 20,000 floating IPs: parse + validate (one typed pass when the bytes are
//! certain to pass the scan, as a valid config's are, else two), hash, serialise (save and
//! answer).
//! The floor beside it is `serde_json::from_slice` into an untyped `Value`.
//!     cargo bench -p akanda-tests --bench request_path

use std::time::{Duration, Instant};

use akanda_tests::bench::percentile_ms;
use akanda_tests::config_with_floating_ips;

fn time(rounds: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    println!("document step, ms p50 (p90), 30 rounds");
    for n in [10_000, 20_000] {
        let body = serde_json::to_vec(&config_with_floating_ips(n)).expect("serialises");
        let config = akanda_model::parse(&body).expect("valid");
        let row = |name: &str, samples: Vec<Duration>| {
            println!(
                "{n:>6} FIPs ({} KB)  {name:<34} {:>7.2} ({:.2})",
                body.len() / 1024,
                percentile_ms(&samples, 0.5),
                percentile_ms(&samples, 0.9)
            )
        };
        row(
            "floor: from_slice::<Value>",
            time(30, || {
                std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
            }),
        );
        row(
            "parse + validate",
            time(30, || {
                std::hint::black_box(akanda_model::parse(&body).unwrap());
            }),
        );
        // An exponent in an unknown key: the parse cannot be certain of the body from one
        // pass, so it checks it in two (scan, then typed), as every body before the fast path.
        let unsure = [&b"{\"unknown\":1e0,"[..], &body[1..]].concat();
        row(
            "parse + validate, two passes",
            time(30, || {
                std::hint::black_box(akanda_model::parse(&unsure).unwrap());
            }),
        );
        row(
            "typed, no path tracking",
            time(30, || {
                std::hint::black_box(
                    serde_json::from_slice::<akanda_model::Document>(&body).unwrap(),
                );
            }),
        );
        let doc: akanda_model::Document = serde_json::from_slice(&body).unwrap();
        row(
            "validate",
            time(30, || {
                std::hint::black_box(akanda_model::validate(&doc).unwrap());
            }),
        );
        row(
            "hash",
            time(30, || {
                std::hint::black_box(config.document.hash());
            }),
        );
        row(
            "to_canonical_json",
            time(30, || {
                std::hint::black_box(config.document.to_canonical_json());
            }),
        );
        row(
            "redacted",
            time(30, || {
                std::hint::black_box(config.document.redacted());
            }),
        );
    }
}
