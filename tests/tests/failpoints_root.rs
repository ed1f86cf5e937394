//! Crash safety of an apply (issue 12), driven by the agent built with failpoints
//! (`akanda-agent-failpoints`, agent/src/failpoint.rs; the shipped agent has none).
//!
//! Every case runs in its own lab: the agent applies config A, then config B, which differs
//! from A in every phase (a new NIC with an MTU and two subnets, a moved and a new floating
//! IP, a static route, a DHCP host renamed, a new prefix for bird to announce), with one
//! failpoint armed on B's apply:
//!
//! - `fail` and `panic`: the answer is a 409 (500 for the panic) that says the previous state
//!   was restored and names the phase; the box is then exactly A (the kernel: links,
//!   addresses, every routing table (the floating IPs' table 44 included) and the policy
//!   rules; the nf_tables ruleset; every file under the state directory but leases and pid
//!   files; the daemons running, one per config file, and the sockets listening), the daemons
//!   were not restarted, and B then applies.
//! - `kill`: the agent sends itself SIGKILL there; the daemons it started outlive it. The
//!   shipped agent is started on the same state directory: the box is then exactly A (B when
//!   the kill came after B's commit), with no daemon left over and none twice.
//!
//! A and B are compared with a reference lab that applied them without a failpoint; A is
//! also compared with the reference in each lab, which checks the comparison itself (NIC
//! indices and namespace ids are left out, nothing else).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use akanda_tests::{
    dump_state, failpoint_agent_bin, process_running, require_root, Agent, RouterLab,
};
use serde_json::{json, Value};

/// The failpoints B's apply reaches, in order, and how many times each was reached before
/// (by A's apply: one hit of each, but for the config checks of A's dnsmasq and bird).
/// `daemon_check` is B's first config check (that of the new NIC's dnsmasq), in the middle
/// of the services phase: the other networks' files are written by then. `persist_*` are
/// reached only when the config changed (B always does).
const APPLY_POINTS: &[(&str, u32)] = &[
    ("links_addresses_routes", 2),
    ("ruleset", 2),
    ("daemon_check", 3),
    ("conntrack", 2),
    ("services", 2),
    ("persist_staged", 2),
    ("persist_committed", 2),
];

/// The phases journaled by the time each failpoint is reached, in the order they unwind.
fn journaled(point: &str) -> Vec<&'static str> {
    let mut order = vec!["persist", "links_addresses_routes"];
    match point {
        "links_addresses_routes" => {}
        "ruleset" => order.push("ruleset"),
        // The sessions are looked for while the services are brought to B.
        _ => order.extend(["ruleset", "services"]),
    }
    order.reverse();
    order
}

/// A: the lab's config without t2's network. B: see the module's documentation.
fn configs(lab: &RouterLab) -> (Value, Value) {
    let mut b = lab.fitted_config();
    let mut a = b.clone();
    a["networks"].as_array_mut().unwrap().remove(3);
    let t2 = &mut b["networks"][3];
    t2["mtu"] = json!(1400);
    t2["interface"]["mtu"] = json!(1400);
    t2["interface"]["addresses"] = json!(["192.168.1.1/24", "2001:db8:101::1/64"]);
    t2["subnets"].as_array_mut().unwrap().push(json!({
        "id": "t2-v6-subnet", "cidr": "2001:db8:101::/64", "gateway_ip": "2001:db8:101::1",
        "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []
    }));
    b["networks"][2]["allocations"][1]["hostname"] = json!("renamed-host.local");
    b["floating_ips"] = json!([
        {"floating_ip": "172.16.77.50", "fixed_ip": "192.168.0.3"},
        {"floating_ip": "172.16.77.51", "fixed_ip": "192.168.0.2"}
    ]);
    b["static_routes"] = json!([["10.77.0.0/16", "172.16.77.254"]]);
    (a, b)
}

/// The box, part by part.
type Snapshot = BTreeMap<String, String>;

fn strip_indices(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for key in ["ifindex", "link_index", "link_netnsid"] {
                m.remove(key);
            }
            m.values_mut().for_each(strip_indices);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_indices),
        _ => {}
    }
}

/// [`dump_state`] without NIC indices and namespace ids (which another lab may number
/// differently), its lists sorted.
fn kernel(lab: &RouterLab) -> String {
    let dump = dump_state(lab.router());
    let mut out = String::new();
    for section in dump.split("## ").filter(|s| !s.trim().is_empty()) {
        let (title, text) = section.split_once('\n').expect("a titled section");
        let mut v: Value = serde_json::from_str(text).expect("JSON");
        strip_indices(&mut v);
        // Routes (and links) in a canonical order: the kernel lists some in the order they
        // were added, which another lab, or a rollback, does differently.
        if let Value::Array(items) = &mut v {
            items.sort_by_cached_key(|item| item.to_string());
        }
        out.push_str(&format!(
            "## {title}\n{}\n",
            serde_json::to_string_pretty(&v).unwrap()
        ));
    }
    out
}

/// `argv` of a process.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The daemons running in the router's namespace: their command line (the state directory
/// written `STATE`) and how many run it.
fn daemons(lab: &RouterLab) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, argv) in daemon_pids(lab) {
        *out.entry(argv).or_default() += 1;
    }
    out
}

/// The dnsmasq and bird processes in the router's namespace, with their command lines.
fn daemon_pids(lab: &RouterLab) -> Vec<(i32, String)> {
    let state = lab.state_dir().display().to_string();
    let mut out = Vec::new();
    for pid in lab.router().pids() {
        let argv = cmdline(pid);
        let Some(program) = argv.first() else {
            continue;
        };
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "dnsmasq" || name == "bird" {
            out.push((pid, argv.join(" ").replace(&state, "STATE")));
        }
    }
    out
}

/// Every file under the state directory but leases and pid files (a daemon's own data), with
/// the config's slots and commit record read as the one saved config (`config.json`): which
/// slot holds it, and what the other holds, is not part of the box's state.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = raw_files(dir);
    out.retain(|name, _| !akanda_tests::is_saved_config_file(Path::new(name)));
    if let Some(saved) = akanda_tests::saved_config(dir) {
        out.insert(
            "config.json".into(),
            String::from_utf8_lossy(&saved).into_owned(),
        );
    }
    out
}

fn raw_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.display().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() && !name.ends_with(".leases") && !name.ends_with(".pid") {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned(),
                );
            }
        }
    }
    out
}

/// The box as comparable across labs: the lab's API port is written `API_PORT`, its state
/// directory `STATE`.
fn snapshot(lab: &RouterLab) -> Snapshot {
    let port = lab.port().to_string();
    let state = lab.state_dir().display().to_string();
    let mut s = Snapshot::new();
    s.insert("kernel".into(), kernel(lab));
    s.insert(
        "policy rules".into(),
        lab.router().sh("ip rule show; ip -6 rule show"),
    );
    s.insert(
        "nf_tables ruleset".into(),
        lab.router()
            .sh("nft -s list ruleset")
            .replace(&format!("dport {port} "), "dport API_PORT "),
    );
    let mut sockets: Vec<String> = lab
        .router()
        .sh("ss -H -ltn; ss -H -lun")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|a| a.replace(&format!(":{port}"), ":API_PORT"))
        .collect();
    sockets.sort();
    s.insert("listening sockets".into(), sockets.join("\n"));
    s.insert("daemons".into(), format!("{:#?}", daemons(lab)));
    for (path, text) in files(lab.state_dir()) {
        s.insert(format!("file {path}"), text.replace(&state, "STATE"));
    }
    s
}

/// The parts of `got` that differ from `want`, with their first differing line.
fn differences(want: &Snapshot, got: &Snapshot) -> String {
    let mut out = String::new();
    for key in want
        .keys()
        .chain(got.keys().filter(|k| !want.contains_key(*k)))
    {
        let (w, g) = (want.get(key), got.get(key));
        if w == g {
            continue;
        }
        let (w, g) = (w.map_or("(absent)", |s| s), g.map_or("(absent)", |s| s));
        let line = w
            .lines()
            .zip(g.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("    want: {a}\n    got:  {b}"))
            .unwrap_or_else(|| format!("    want:\n{w}\n    got:\n{g}"));
        out.push_str(&format!("  {key}:\n{line}\n"));
    }
    out
}

/// Polls until the box equals `want` (daemons may still be binding after a restart).
#[track_caller]
fn wait_equal(lab: &RouterLab, want: &Snapshot, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = snapshot(lab);
        if &got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: the box differs:\n{}", differences(want, &got));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn status(lab: &RouterLab) -> Value {
    let r = lab.http().get("/v1/status");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The daemons' pids as `/v1/status` shows them.
fn service_pids(lab: &RouterLab) -> Value {
    let s = status(lab);
    let services = &s["services"];
    let mut out = serde_json::Map::new();
    for (nic, d) in services["dnsmasq"].as_object().into_iter().flatten() {
        out.insert(format!("dnsmasq {nic}"), d["pid"].clone());
    }
    out.insert("bird".into(), services["bird"]["pid"].clone());
    Value::Object(out)
}

#[track_caller]
fn put_ok(lab: &RouterLab, config: &Value) {
    let r = lab.http().put_json("/v1/system/config", config);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A and B as applied without failpoint (in a lab of their own), and their hashes.
struct References {
    a: Snapshot,
    b: Snapshot,
    hash_a: Value,
    hash_b: Value,
}

fn references() -> References {
    let lab = RouterLab::new("fp-ref");
    let _agent = lab.start_agent();
    let (a, b) = configs(&lab);
    put_ok(&lab, &a);
    let (snap_a, hash_a) = (snapshot(&lab), status(&lab)["config_hash"].clone());
    put_ok(&lab, &b);
    let (snap_b, hash_b) = (snapshot(&lab), status(&lab)["config_hash"].clone());
    assert_ne!(snap_a, snap_b);
    // (Both have floating IPs, so both have the floating-IP table's rule.)
    for part in [
        "kernel",
        "nf_tables ruleset",
        "daemons",
        "listening sockets",
        "file config.json",
    ] {
        assert_ne!(
            snap_a.get(part),
            snap_b.get(part),
            "A and B differ in {part}"
        );
    }
    References {
        a: snap_a,
        b: snap_b,
        hash_a,
        hash_b,
    }
}

/// A lab whose agent (with failpoints) has applied A, with `spec` armed for B's apply.
fn lab_at_a(tag: &str, spec: &str, refs: &References) -> (RouterLab, Agent, Value, Value) {
    let lab = RouterLab::new(tag);
    let mut agent = Agent::spawn_program_env(
        &failpoint_agent_bin(),
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &[],
        &[("AKANDA_FAILPOINTS", spec)],
        true,
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let (a, b) = configs(&lab);
    put_ok(&lab, &a);
    wait_equal(
        &lab,
        &refs.a,
        &format!("[{spec}] A in this lab against the reference"),
    );
    (lab, agent, a, b)
}

/// B fails (or panics) at `point`: a truthful 409 (500), then the box is A exactly, the
/// daemons were not restarted, and B then applies.
fn fail_case((point, hit): (&str, u32), mode: &str, refs: &References) {
    let spec = format!("{point}={mode}@{hit}");
    let started = Instant::now();
    let (lab, agent, _a, b) = lab_at_a(&format!("fp-{mode}-{point}"), &spec, refs);
    let pids = service_pids(&lab);
    let r = lab.http().put_json("/v1/system/config", &b);
    let want_status = if mode == "panic" { 500 } else { 409 };
    assert_eq!(r.status, want_status, "[{spec}] {}", r.body);
    let body = r.json();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("the previous state was restored")
            && message.contains(&format!("phase {}", phase_of(point))),
        "[{spec}] {message}"
    );
    assert!(
        body["details"].to_string().contains(&format!(
            "failpoint {point}: injected {}",
            if mode == "panic" { "panic" } else { "failure" }
        )),
        "[{spec}] {body}"
    );
    assert_eq!(body["rollback"]["complete"], true, "[{spec}] {body}");
    assert_eq!(
        body["rollback"]["restored"],
        json!(journaled(point)),
        "[{spec}] {body}"
    );
    wait_equal(&lab, &refs.a, &format!("[{spec}] after the refused B"));
    let s = status(&lab);
    assert_eq!(s["health"], "ok", "[{spec}] {s:#}");
    assert_eq!(s["config_hash"], refs.hash_a, "[{spec}]");
    assert_eq!(s["last_apply"]["result"], "error", "[{spec}]");
    assert_eq!(service_pids(&lab), pids, "[{spec}] a daemon was restarted");
    let log = agent.log();
    assert!(
        log.contains("failpoint reached") && log.contains(point),
        "[{spec}] the failpoint was not reached:\n{log}"
    );
    // Nothing is stuck or half-recorded: B applies now (the failpoint fired once).
    put_ok(&lab, &b);
    wait_equal(&lab, &refs.b, &format!("[{spec}] B after the failure"));
    eprintln!("[{spec}] ok in {:.1?}", started.elapsed());
}

fn phase_of(point: &str) -> &str {
    match point {
        "persist_staged" | "persist_committed" => "persist",
        "daemon_check" => "services",
        other => other,
    }
}

#[test]
fn each_phase_that_fails_leaves_the_previous_config_root() {
    if !require_root() {
        return;
    }
    let refs = references();
    for point in APPLY_POINTS {
        fail_case(*point, "fail", &refs);
    }
}

#[test]
fn each_phase_that_panics_is_rolled_back_root() {
    if !require_root() {
        return;
    }
    let refs = references();
    for point in APPLY_POINTS {
        fail_case(*point, "panic", &refs);
    }
}

#[test]
fn a_kill_at_each_phase_restarts_into_the_old_or_the_new_config_root() {
    if !require_root() {
        return;
    }
    let refs = references();
    for &(point, hit) in APPLY_POINTS {
        let spec = format!("{point}=kill@{hit}");
        let started = Instant::now();
        let (lab, mut agent, _a, b) = lab_at_a(&format!("fp-kill-{point}"), &spec, &refs);
        let r = lab.http().with_timeout(Duration::from_secs(20)).request(
            "PUT",
            "/v1/system/config",
            Some(("application/json", b.to_string().as_bytes())),
        );
        assert!(
            r.is_err(),
            "[{spec}] the agent answered: {:?}",
            r.map(|r| (r.status, r.body))
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = agent.try_wait() {
                break exit;
            }
            assert!(Instant::now() < deadline, "[{spec}] the agent did not die");
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit.signal(), Some(9), "[{spec}] {exit}\n{}", agent.log());
        // Its daemons outlived it.
        let orphans = daemon_pids(&lab);
        assert!(
            orphans.iter().any(|(_, d)| d.starts_with("dnsmasq")),
            "[{spec}] no daemon outlived the agent: {orphans:?}"
        );

        // The shipped agent, on the same state directory: once it answers, none of them is
        // left (it stops them before it applies anything).
        let restarted = lab.start_agent();
        let alive: Vec<_> = orphans
            .iter()
            .filter(|(pid, _)| process_running(*pid))
            .collect();
        assert!(alive.is_empty(), "[{spec}] left running: {alive:?}");
        let (want, hash, which) = if point == "persist_committed" {
            (&refs.b, &refs.hash_b, "B")
        } else {
            (&refs.a, &refs.hash_a, "A")
        };
        wait_equal(&lab, want, &format!("[{spec}] after the restart: {which}"));
        let s = status(&lab);
        assert_eq!(s["health"], "ok", "[{spec}]");
        assert_eq!(&s["config_hash"], hash, "[{spec}]");
        drop(restarted);
        eprintln!("[{spec}] ok ({which}) in {:.1?}", started.elapsed());
    }
}

/// A rollback that fails: the answer is a 503 that names what was not restored, the status
/// says degraded (and claims no config hash) until a config applies completely.
#[test]
fn a_failed_rollback_is_a_503_and_degraded_until_a_config_applies_root() {
    if !require_root() {
        return;
    }
    let refs = references();
    let spec = "services=fail@2,rollback_ruleset=fail";
    let (lab, _agent, a, b) = lab_at_a("fp-degraded", spec, &refs);
    let r = lab.http().put_json("/v1/system/config", &b);
    assert_eq!(r.status, 503, "{}", r.body);
    let body = r.json();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("the rollback failed: NOT restored: ruleset")
            && message.contains("restored: services, links_addresses_routes, persist"),
        "{message}"
    );
    assert_eq!(body["rollback"]["complete"], false, "{body}");
    assert_eq!(
        body["rollback"]["not_restored"][0]["phase"], "ruleset",
        "{body}"
    );
    let s = status(&lab);
    assert_eq!(s["health"], "degraded", "{s:#}");
    assert_eq!(s["config_hash"], Value::Null, "{s:#}");
    assert_eq!(s["degraded"]["phase"], "services", "{s:#}");
    assert_eq!(
        s["degraded"]["not_restored"][0]["phase"], "ruleset",
        "{s:#}"
    );
    // Truthful: the ruleset is B's, the rest is A's.
    let now = snapshot(&lab);
    assert_eq!(now["nf_tables ruleset"], refs.b["nf_tables ruleset"]);
    assert_eq!(now["kernel"], refs.a["kernel"]);
    assert_eq!(now["file config.json"], refs.a["file config.json"]);

    // A complete apply (even of the config in force) clears it, and the box is A again.
    put_ok(&lab, &a);
    let s = status(&lab);
    assert_eq!(s["health"], "ok", "{s:#}");
    assert_eq!(s["degraded"], Value::Null, "{s:#}");
    assert_eq!(s["config_hash"], refs.hash_a);
    wait_equal(&lab, &refs.a, "A pushed again after the degraded state");
}

/// The router's first config killed part-way: with nothing saved, the restarted agent
/// clears what it left (addresses, MTUs, routes, floating IPs and their rule, daemons).
#[test]
fn a_killed_first_apply_leaves_a_box_without_config_root() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("fp-first");
    let mut agent = Agent::spawn_program_env(
        &failpoint_agent_bin(),
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &[],
        &[("AKANDA_FAILPOINTS", "services=kill")],
        true,
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let fresh = snapshot(&lab);
    let (_a, b) = configs(&lab);
    let r = lab.http().request(
        "PUT",
        "/v1/system/config",
        Some(("application/json", b.to_string().as_bytes())),
    );
    assert!(r.is_err(), "the agent answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.try_wait().is_none() {
        assert!(Instant::now() < deadline, "the agent did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!daemons(&lab).is_empty(), "no daemon outlived the agent");
    assert!(lab.state_dir().join("applying.json").exists());
    let _restarted = lab.start_agent();
    wait_equal(&lab, &fresh, "after the restart, no config");
    assert_eq!(status(&lab)["config_hash"], Value::Null);
}
