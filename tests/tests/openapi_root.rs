//! docs/openapi.yaml against the live agent, over mutual TLS:
//!
//! - every documented path answers every documented method with a documented status, and
//!   refuses every other method with 405 and an `Allow` header naming the documented ones;
//! - schemathesis (PyPI) fuzzes the document against the agent in its namespace with every
//!   check but `positive_data_acceptance` (the config's validation, CIDRs and references
//!   between fields, is not expressible in JSON Schema, so a schema-valid random config is
//!   rightly refused with 422): no 5xx, no status, content type, header or schema violation.
//!   The number of examples is bounded by `AKANDA_SCHEMATHESIS_EXAMPLES` (default 100 per
//!   operation). schemathesis is found as `$AKANDA_SCHEMATHESIS`, `/opt/schemathesis/bin/
//!   schemathesis` (what scripts/install-deps installs) or on PATH; without it the test fails
//!   unless `AKANDA_SKIP_SCHEMATHESIS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use akanda_tests::tls::{self, Pki};
use akanda_tests::{require_root, Agent, Http, RouterLab};
use serde_json::Value;

fn openapi_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml")
}

fn start(lab: &RouterLab, pki: &Pki) -> (Agent, Http) {
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn_tls(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &args,
    );
    let [ca, cert, key] = tls::curl_files(pki);
    let https =
        Http::new(lab.mgmt(), format!("https://{}", lab.listen_addr())).with_tls(&ca, &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = agent.try_wait() {
            panic!("agent exited ({s})\n{}", agent.log());
        }
        if matches!(https.request("GET", "/v1/base/", None), Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (agent, https)
}

#[test]
fn every_documented_route_is_served_and_nothing_else() {
    if !require_root() {
        return;
    }
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(openapi_path()).unwrap()).unwrap();
    let lab = RouterLab::new("oapi");
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let (_agent, https) = start(&lab, &pki);
    let config = lab.fitted_config_with(&https);
    // PUT /v1/system/tls gets real material: a new certificate from the same CA.
    let rotated = tls::issue_server(&pki.ca, pki.server_ip);
    let rotation =
        serde_json::json!({"server_cert": rotated.cert_pem, "server_key": rotated.key_pem});
    let mut checked = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        let path = template.replace("{ifname}", "ge0");
        let documented: Vec<String> = ops
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let body = (method != "GET").then(|| {
                if path == "/v1/system/tls" {
                    rotation.to_string()
                } else {
                    config.to_string()
                }
            });
            let r = https
                .request(
                    method,
                    &path,
                    body.as_deref().map(|b| ("application/json", b.as_bytes())),
                )
                .unwrap();
            if documented.iter().any(|m| m == method) {
                let codes = &ops[method.to_ascii_lowercase()]["responses"];
                assert!(
                    codes.get(r.status.to_string()).is_some(),
                    "{method} {path}: {} is not documented: {}",
                    r.status,
                    r.body
                );
                assert!(r.status < 400, "{method} {path}: {} {}", r.status, r.body);
            } else {
                assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
                let mut allow: Vec<String> = r
                    .header("allow")
                    .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .collect();
                allow.sort();
                let mut want = documented.clone();
                want.sort();
                assert_eq!(allow, want, "{method} {path}");
                assert!(r.json()["error"].is_string());
            }
            checked += 1;
        }
    }
    // An unknown path is a JSON 404.
    let r = https.get("/v1/nothing");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    eprintln!("{checked} (path, method) pairs checked against docs/openapi.yaml");
}

fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AKANDA_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from("/opt/schemathesis/bin/schemathesis");
    if venv.is_file() {
        return Some(venv);
    }
    Command::new("schemathesis")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("schemathesis"))
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation_over_mutual_tls() {
    if !require_root() {
        return;
    }
    let Some(st) = schemathesis() else {
        if std::env::var_os("AKANDA_SKIP_SCHEMATHESIS").is_some() {
            eprintln!(
                "!!! SKIPPED: schemathesis is not installed (AKANDA_SKIP_SCHEMATHESIS is set)"
            );
            return;
        }
        panic!("schemathesis is not installed: run scripts/install-deps (or set AKANDA_SKIP_SCHEMATHESIS=1)");
    };
    let examples = std::env::var("AKANDA_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());
    let lab = RouterLab::new("fuzz");
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let (agent, _https) = start(&lab, &pki);
    let [ca, cert, key] = tls::curl_files(&pki);
    let report = tempfile::tempdir().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", lab.mgmt().name()])
        .arg(&st)
        .arg("run")
        .arg(openapi_path())
        .arg("--url")
        .arg(format!("https://{}", lab.listen_addr()))
        .arg("--request-cert")
        .arg(&cert)
        .arg("--request-cert-key")
        .arg(&key)
        .arg("--tls-verify")
        .arg(&ca)
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", &examples, "--workers", "1", "--seed", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "30"])
        .arg("--report")
        .arg("har")
        .arg("--report-dir")
        .arg(report.path())
        // Its cache (.schemathesis/) goes to the temp dir, not the checkout.
        .current_dir(report.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {}):\n{text}\n--- agent log ---\n{}",
        out.status,
        agent.log()
    );
    // It really ran against the agent: the summary line, and the HAR log of every exchange.
    let summary = text
        .lines()
        .skip_while(|l| !l.contains("Test cases:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no test case summary:\n{text}"))
        .trim()
        .to_string();
    let generated: u64 = summary
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let har = std::fs::read_dir(report.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "har" || e == "json"))
        .expect("HAR report");
    let har: Value = serde_json::from_str(&std::fs::read_to_string(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().expect("HAR entries");
    let mut by_status = std::collections::BTreeMap::<i64, usize>::new();
    for e in entries {
        *by_status
            .entry(e["response"]["status"].as_i64().unwrap_or(0))
            .or_default() += 1;
    }
    eprintln!(
        "schemathesis: {summary}; {} requests, by status: {by_status:?}",
        entries.len()
    );
    assert!(generated >= 100, "too few test cases: {summary}");
    assert!(by_status.get(&200).is_some_and(|n| *n > 0), "{by_status:?}");
    assert!(
        by_status.keys().all(|s| (200..500).contains(s)),
        "a server error or no answer: {by_status:?}"
    );
    assert!(
        !agent.log().contains("panicked"),
        "the agent panicked\n{}",
        agent.log()
    );
}
