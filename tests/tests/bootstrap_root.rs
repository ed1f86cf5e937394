//! Bootstrap first (issue 12): on every start path (with and without a saved config, with
//! `--listen` or with the listeners of a boot configuration, plain HTTP or mutual TLS) the
//! bootstrap ruleset is in the kernel before any socket listens (the API, the metadata
//! proxies) and before forwarding is turned on; an agent that cannot install it exits
//! non-zero without having listened.
//!
//! The agent built with failpoints (agent/src/failpoint.rs) holds the start at the bootstrap
//! for a while (`bootstrap=sleep:MS`), which is when the box must still show no listener, no
//! forwarding and no ruleset; or makes the installation fail (`bootstrap=fail`), run under
//! strace to see that `listen(2)` was never called.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use akanda_tests::{failpoint_agent_bin, in_netns, require_root, tls::Pki, Agent, RouterLab};

/// Forwarding off and no agent table, as at boot (a test namespace may start otherwise, and
/// an agent stopped earlier leaves its table).
fn as_at_boot(lab: &RouterLab) {
    lab.router().sysctl("net.ipv4.ip_forward", "0");
    lab.router().sysctl("net.ipv6.conf.all.forwarding", "0");
    lab.router()
        .sh("nft delete table inet akanda 2>/dev/null; true");
}

/// An earlier run saved a config (with tenant networks: metadata proxies, dnsmasq).
fn save_a_config(lab: &RouterLab) {
    let mut first = lab.start_agent();
    let r = lab
        .http()
        .put_json("/v1/system/config", &lab.fitted_config());
    assert_eq!(r.status, 200, "{}", r.body);
    first.stop();
}

fn forwarding(lab: &RouterLab) -> String {
    lab.router().sh(
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding | tr -d '\\n'",
    )
}

fn has_table(lab: &RouterLab) -> bool {
    lab.router()
        .run(&["nft", "list", "table", "inet", "akanda"])
        .status
        .success()
}

fn listeners(lab: &RouterLab) -> String {
    lab.router().sh("ss -H -ltn; ss -H -lun")
}

/// One start path: how the agent is started, and whether a config is saved.
struct StartPath {
    name: &'static str,
    saved_config: bool,
    boot_config: bool,
    tls: bool,
}

const PATHS: &[StartPath] = &[
    StartPath {
        name: "--listen, nothing saved, plain HTTP",
        saved_config: false,
        boot_config: false,
        tls: false,
    },
    StartPath {
        name: "--listen, a saved config, plain HTTP",
        saved_config: true,
        boot_config: false,
        tls: false,
    },
    StartPath {
        name: "--boot-config listeners, nothing saved",
        saved_config: false,
        boot_config: true,
        tls: false,
    },
    StartPath {
        name: "--boot-config listeners, a saved config",
        saved_config: true,
        boot_config: true,
        tls: false,
    },
    StartPath {
        name: "--listen, a saved config, mutual TLS",
        saved_config: true,
        boot_config: false,
        tls: true,
    },
];

fn start(
    lab: &RouterLab,
    path: &StartPath,
    drive: &Path,
    pki: &Pki,
    failpoints: &str,
    bin: &Path,
) -> Agent {
    let drive = drive.display().to_string();
    let mut args: Vec<String> = Vec::new();
    if path.boot_config {
        args.extend(["--boot-config".to_string(), drive]);
    }
    if path.tls {
        args.extend(pki.server_args());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn_program_env(
        bin,
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &args,
        &[("AKANDA_FAILPOINTS", failpoints)],
        !path.boot_config,
    )
}

/// Whether the API port accepts a TCP connection (from the mgmt namespace).
fn accepts(lab: &RouterLab) -> bool {
    let addr: SocketAddr = lab.listen_addr();
    in_netns(lab.mgmt(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    })
}

#[test]
fn the_bootstrap_ruleset_is_in_place_before_anything_listens_or_forwards_root() {
    if !require_root() {
        return;
    }
    let bin = failpoint_agent_bin();
    for path in PATHS {
        let lab = RouterLab::new("bootfirst");
        let drive = lab.boot_config_drive();
        let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
        if path.saved_config {
            save_a_config(&lab);
        }
        as_at_boot(&lab);
        assert_eq!(forwarding(&lab), "00");

        let mut agent = start(&lab, path, drive.path(), &pki, "bootstrap=sleep:1500", &bin);
        // Held at the bootstrap: nothing listens, nothing forwards, no ruleset yet.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.log().contains("failpoint reached") {
            assert!(
                agent.try_wait().is_none(),
                "[{}] exited:\n{}",
                path.name,
                agent.log()
            );
            assert!(
                Instant::now() < deadline,
                "[{}] never reached the bootstrap",
                path.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..5 {
            assert_eq!(
                listeners(&lab),
                "",
                "[{}] listening before the bootstrap ruleset",
                path.name
            );
            assert_eq!(
                forwarding(&lab),
                "00",
                "[{}] forwarding before the bootstrap ruleset",
                path.name
            );
            assert!(!has_table(&lab), "[{}]", path.name);
            std::thread::sleep(Duration::from_millis(150));
        }
        // The first accepted connection finds the ruleset in place.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepts(&lab) {
            assert!(
                agent.try_wait().is_none(),
                "[{}] exited:\n{}",
                path.name,
                agent.log()
            );
            assert!(
                Instant::now() < deadline,
                "[{}] never accepted:\n{}",
                path.name,
                agent.log()
            );
        }
        assert!(
            has_table(&lab),
            "[{}] accepting without a ruleset",
            path.name
        );
        assert_eq!(forwarding(&lab), "11", "[{}]", path.name);
        if path.saved_config {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !agent.log().contains("last good config re-applied") {
                assert!(
                    Instant::now() < deadline,
                    "[{}]\n{}",
                    path.name,
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // The metadata proxies listen too, now.
            assert!(
                listeners(&lab).contains(":9602"),
                "[{}] {}",
                path.name,
                listeners(&lab)
            );
        }
        eprintln!("[{}] ok", path.name);
    }
}

/// strace in front of the agent, recording `listen(2)` calls (and following threads and
/// children) to `trace`.
fn traced(dir: &Path, bin: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let trace = dir.join("listen.trace");
    let wrapper = dir.join("traced-agent");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -q -e trace=listen -o {} {} \"$@\"\n",
            trace.display(),
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper, trace)
}

#[test]
fn an_agent_that_cannot_install_the_bootstrap_ruleset_exits_without_listening_root() {
    if !require_root() {
        return;
    }
    let bin = failpoint_agent_bin();
    for path in PATHS {
        let lab = RouterLab::new("bootfail");
        let drive = lab.boot_config_drive();
        let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
        if path.saved_config {
            save_a_config(&lab);
        }
        as_at_boot(&lab);
        let dir = tempfile::tempdir().unwrap();
        let (wrapper, trace) = traced(dir.path(), &bin);
        let mut agent = start(&lab, path, drive.path(), &pki, "bootstrap=fail", &wrapper);
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = agent.try_wait() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] still running:\n{}",
                path.name,
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = agent.log();
        assert_eq!(exit.code(), Some(1), "[{}] {exit}\n{log}", path.name);
        assert!(
            log.contains("the bootstrap ruleset could not be installed: not serving"),
            "[{}] {log}",
            path.name
        );
        let calls = std::fs::read_to_string(&trace).unwrap();
        assert!(
            calls.contains("+++ exited with 1 +++") && !calls.contains("listen("),
            "[{}] {calls}",
            path.name
        );
        assert_eq!(forwarding(&lab), "00", "[{}]", path.name);
        assert!(!has_table(&lab), "[{}]", path.name);
        eprintln!("[{}] exit 1, no listen(2), no forwarding", path.name);
    }
}

/// Before the first push, the bootstrap ruleset opens the API (and the DHCP clients) on the
/// management NIC only, once the boot configuration has named it: a tenant NIC plugged at
/// boot cannot reach the API either. Read from the kernel's ruleset.
#[test]
fn before_the_first_push_the_api_is_open_on_the_management_nic_only_root() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("bootmgmt");
    let drive = lab.boot_config_drive();
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    as_at_boot(&lab);
    let path = StartPath {
        name: "boot config, no saved config",
        saved_config: false,
        boot_config: true,
        tls: false,
    };
    let mut agent = start(
        &lab,
        &path,
        drive.path(),
        &pki,
        "",
        &akanda_tests::agent_bin(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !accepts(&lab) {
        assert!(agent.try_wait().is_none(), "exited:\n{}", agent.log());
        assert!(
            Instant::now() < deadline,
            "never listened:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let input = lab.router().sh("nft list chain inet akanda input");
    let port = format!("tcp dport {} ", lab.port());
    let api: Vec<&str> = input.lines().filter(|l| l.contains(&port)).collect();
    assert!(!api.is_empty(), "no API rule:\n{input}");
    for rule in &api {
        assert!(
            rule.contains("iifname \"ge0\""),
            "API open beyond ge0: {rule}\n{input}"
        );
    }
    for rule in input
        .lines()
        .filter(|l| l.contains("udp dport 68 ") || l.contains("udp dport 546 "))
    {
        assert!(
            rule.contains("iifname \"ge0\""),
            "DHCP client open beyond ge0: {rule}"
        );
    }
    agent.stop();
}
