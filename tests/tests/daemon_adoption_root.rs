//! After `kill -9` of the agent, its dnsmasq and bird live on (issue 12). The agent started
//! again stops them before it applies anything and starts its own: never two dnsmasq on one
//! NIC, never an orphan bird. They are found by their command line (a config file under the
//! agent's state directory), not by their pid files: a pid file naming an unrelated process
//! (a recycled pid), even one whose command line names the same config file, and a missing
//! pid file mislead nothing. DHCP answers afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use akanda_tests::{process_running, require_root, RouterLab};
use serde_json::Value;

/// `argv` of a process, joined.
fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The router namespace's dnsmasq and bird processes: (pid, command line).
fn daemons(lab: &RouterLab) -> Vec<(i32, String)> {
    lab.router()
        .pids()
        .into_iter()
        .map(|pid| (pid, cmdline(pid)))
        .filter(|(_, argv)| {
            let program = argv.split(' ').next().unwrap_or("");
            let name = Path::new(program).file_name().unwrap_or_default();
            name == "dnsmasq" || name == "bird"
        })
        .collect()
}

/// How many daemons run each config file.
fn per_config(daemons: &[(i32, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (_, argv) in daemons {
        let conf = argv
            .split(' ')
            .find_map(|a| {
                a.strip_prefix("--conf-file=")
                    .or_else(|| a.ends_with("bird.conf").then_some(a))
            })
            .unwrap_or(argv)
            .to_string();
        *out.entry(conf).or_default() += 1;
    }
    out
}

#[test]
fn daemons_left_by_a_killed_agent_are_replaced_not_doubled_root() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("adopt");
    let mut agent = lab.start_agent();
    let r = lab
        .http()
        .put_json("/v1/system/config", &lab.fitted_config());
    assert_eq!(r.status, 200, "{}", r.body);
    let run = lab.state_dir().join("run");
    let confs = [
        run.join("dnsmasq/ge2/dnsmasq.conf"),
        run.join("dnsmasq/ge3/dnsmasq.conf"),
        run.join("bird/bird.conf"),
    ];
    let before = daemons(&lab);
    let expected: std::collections::BTreeMap<String, usize> =
        confs.iter().map(|c| (c.display().to_string(), 1)).collect();
    assert_eq!(per_config(&before), expected, "{before:?}");

    agent.kill();
    // They live on after their agent.
    std::thread::sleep(Duration::from_secs(2));
    for (pid, argv) in &before {
        assert!(
            process_running(*pid),
            "{argv} ({pid}) did not outlive the agent"
        );
    }
    // A decoy: an unrelated process whose command line names ge2's config file, and whose
    // pid is now in ge2's pid file; bird's pid file is gone.
    let ge2_conf = confs[0].display().to_string();
    let mut decoy = lab.router().spawn(&["sh", "-c", "sleep 300; :", &ge2_conf]);
    std::fs::write(
        run.join("dnsmasq/ge2/dnsmasq.pid"),
        format!("{}\n", decoy.id()),
    )
    .unwrap();
    let _ = std::fs::remove_file(run.join("bird/bird.pid"));

    let started = Instant::now();
    let _agent = lab.start_agent();
    let ready = started.elapsed();
    // By the time it answers, the leftovers are gone and the decoy is untouched.
    for (pid, argv) in &before {
        assert!(
            !process_running(*pid),
            "{argv} ({pid}) still runs after the restart"
        );
    }
    assert!(
        decoy.try_wait().unwrap().is_none(),
        "the decoy was stopped: a pid file or a command line alone misled the agent"
    );
    let after = daemons(&lab);
    assert_eq!(per_config(&after), expected, "{after:?}");
    let s: Value = lab.http().get("/v1/status").json();
    let supervised: Vec<u64> = ["ge2", "ge3"]
        .iter()
        .map(|nic| s["services"]["dnsmasq"][nic]["pid"].as_u64().unwrap())
        .chain([s["services"]["bird"]["pid"].as_u64().unwrap()])
        .collect();
    let mut running_pids: Vec<u64> = after.iter().map(|(p, _)| *p as u64).collect();
    running_pids.sort();
    let mut supervised_sorted = supervised.clone();
    supervised_sorted.sort();
    assert_eq!(
        running_pids, supervised_sorted,
        "the daemons running are not the ones the agent supervises"
    );

    // DHCP answers: t1 (its MAC is an allocation) gets its address from the new dnsmasq.
    let env = lab.t1_dhcp_lease();
    assert!(env.contains("new_ip_address=192.168.0.2"), "{env}");
    let _ = decoy.kill();
    let _ = decoy.wait();
    eprintln!(
        "3 daemons left by the killed agent stopped and replaced; ready {ready:.1?} after the restart"
    );
}
