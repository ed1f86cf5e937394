//! What the fuzz targets check, shared by them (and by nothing else: this crate is its own
//! workspace, built only by `cargo fuzz`).
//!
//! - [`check_parse`]: the config parser and validator, as the agent's PUT handler runs them
//!   (`akanda_model::parse`, then the management-path check).
//! - [`check_render`]: every pure renderer the apply runs on an accepted config: desired
//!   links/addresses/routes and their reconcile plan, the nf_tables ruleset (its budget, its
//!   nft text, its nftnl batch), dnsmasq's four files, bird's file, the host-name files and
//!   the metadata proxy's headers. A sample of the rendered daemon files is handed to the
//!   daemons' own checks ([`DaemonCheck`]).
//!
//! An invariant that breaks panics, with what broke it: libFuzzer saves the input as a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod mutate;

use akanda_agent::desired::{desired_state, DesiredState};
use akanda_agent::firewall::{self, FirewallOptions};
use akanda_agent::management::ManagementPath;
use akanda_agent::netlink::{Address, Link};
use akanda_agent::reconcile::{plan_floating_ips, plan_links, plan_routes, KernelState, Op};
use akanda_agent::services::{bird, dnsmasq, hostname, metadata};
use akanda_model::bounds::{MAX_RENDERED_RULES, MAX_RULESET_RULES};
use akanda_model::{parse, ConfigError, RouterConfig};

/// The management path of the conformance configs' boot configuration (`ge0`, its address,
/// MTU 1500), as an agent started with `--boot-config` holds it.
pub fn management_path() -> ManagementPath {
    ManagementPath {
        ifname: "ge0".into(),
        addresses: vec!["fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/64"
            .parse()
            .expect("constant")],
        mtu: Some(1500),
        routes: Vec::new(),
    }
}

/// The parser and validator: never a panic; 400 exactly for what is not JSON; a 422 names
/// at least one problem, each with a reason; an accepted config survives what the agent does
/// with it: persisted (canonical JSON) and re-applied at boot, shown (redacted) and hashed.
pub fn check_parse(data: &[u8]) -> Option<RouterConfig> {
    // serde_json's `IgnoredAny` lets a lone surrogate escape (`"\ud800"`) through: a value
    // tree does not, like the parser.
    let not_json = serde_json::from_slice::<serde_json::Value>(data).is_err();
    let answer = parse(data);
    // The one-pass fast path answers exactly as the two passes would.
    match (&answer, &akanda_model::testing::parse_two_pass(data)) {
        (Ok(fast), Ok(checked)) => assert!(fast == checked, "the two parses disagree"),
        (Err(fast), Err(checked)) => assert_eq!(format!("{fast:?}"), format!("{checked:?}")),
        (fast, checked) => panic!("the two parses disagree: {fast:?} / {checked:?}"),
    }
    match answer {
        Err(ConfigError::Syntax(msg)) => {
            assert!(not_json, "valid JSON refused as malformed: {msg}");
            assert!(!msg.is_empty());
            None
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(!not_json, "malformed JSON answered with 422: {problems:?}");
            assert!(!problems.is_empty(), "a 422 without a problem");
            for p in &problems {
                assert!(!p.reason.is_empty(), "a problem without a reason: {p:?}");
            }
            serde_json::to_vec(&problems).expect("problems serialise");
            None
        }
        Ok(config) => {
            assert!(!not_json, "malformed JSON accepted");
            // What the agent persists is what it applies at the next boot.
            let saved = config.document.to_canonical_json();
            let again = parse(&saved).unwrap_or_else(|e| {
                panic!(
                    "the saved form of an accepted config is refused: {e}\n{}",
                    String::from_utf8_lossy(&saved)
                )
            });
            assert!(again == config, "the saved config applies differently");
            assert_eq!(again.document.hash(), config.document.hash());
            // What a GET shows: a PUT of it is refused only for the redacted secrets.
            let shown = serde_json::to_vec(&config.document.redacted()).expect("serialises");
            match parse(&shown) {
                Ok(_) => {}
                Err(ConfigError::Invalid(p)) => assert!(
                    p.iter().all(|p| p.path.ends_with(".psk")),
                    "the shown config is refused for more than its secrets: {p:?}"
                ),
                Err(e) => panic!("the shown config is not JSON: {e}"),
            }
            // The management-path check (PUT handler, saved config at start) never panics,
            // and names a field for every problem.
            for p in management_path().check(&config) {
                assert!(!p.path.is_empty() && !p.reason.is_empty(), "{p:?}");
            }
            Some(config)
        }
    }
}

/// Every renderer on an accepted config; `checks` samples the daemon files.
pub fn check_render(config: &RouterConfig, checks: &DaemonCheck) {
    check_routes(config);
    check_ruleset(config);
    check_services(config, checks);
}

/// Desired links, addresses and routes, planned against a kernel that has the NICs bare,
/// applied to that (simulated) kernel, and planned again: nothing is left to do.
fn check_routes(config: &RouterConfig) {
    let desired = desired_state(config, None);
    assert!(
        desired_state(config, Some(config)) == desired,
        "the same config as the previous one clears a NIC"
    );
    let destinations: BTreeSet<_> = desired.routes.iter().map(|r| r.destination).collect();
    assert_eq!(
        destinations.len(),
        desired.routes.len(),
        "two desired routes share a destination (the kernel keeps one): {:?}",
        desired.routes
    );
    let mut kernel = KernelState {
        links: desired
            .links
            .keys()
            .enumerate()
            .map(|(i, name)| Link {
                index: i as u32 + 2,
                name: name.clone(),
                mac: None,
                mtu: 1500,
                up: false,
                oper_up: false,
                link_type: 1,
                kind: None,
            })
            .collect(),
        ..KernelState::default()
    };
    let ops = plan(&desired, &kernel);
    simulate(&mut kernel, &ops);
    let (add, remove) = plan_floating_ips(&desired, &kernel);
    kernel.floating_ips.extend(add);
    for ip in remove {
        kernel.floating_ips.remove(&ip);
    }
    let left = plan(&desired, &kernel);
    assert!(
        left.is_empty(),
        "after applying its plan the kernel still differs: {left:?}"
    );
    let (add, remove) = plan_floating_ips(&desired, &kernel);
    assert!(add.is_empty() && remove.is_empty());
}

fn plan(desired: &DesiredState, kernel: &KernelState) -> Vec<Op> {
    let mut ops = plan_links(desired, kernel).expect("every NIC of the config is present");
    ops.extend(plan_routes(desired, kernel).expect("every NIC of the config is present"));
    ops
}

/// The kernel's side of each write, as far as the plan depends on it.
fn simulate(kernel: &mut KernelState, ops: &[Op]) {
    for op in ops {
        match op {
            Op::SetMtu { index, mtu, .. } => link_mut(kernel, *index).mtu = *mtu,
            Op::SetUp { index, up, .. } => link_mut(kernel, *index).up = *up,
            Op::AddAddress { index, net, .. } => kernel.addresses.push(Address {
                index: *index,
                net: *net,
            }),
            Op::DelAddress { index, net, .. } => kernel
                .addresses
                .retain(|a| !(a.index == *index && a.net == *net)),
            Op::ReplaceRoute(r) => {
                kernel
                    .routes
                    .retain(|h| h.dst != r.dst || h.table != r.table);
                kernel.routes.push(r.clone());
            }
            Op::DelRoute(r) => kernel.routes.retain(|h| h != r),
        }
    }
}

fn link_mut(kernel: &mut KernelState, index: u32) -> &mut Link {
    kernel
        .links
        .iter_mut()
        .find(|l| l.index == index)
        .expect("a planned link exists")
}

/// The ruleset: within its budget, rendered as nft text, and built as the nftnl batch the
/// agent sends (names and comments nftnl takes).
fn check_ruleset(config: &RouterConfig) {
    let rs = firewall::build(config, FirewallOptions { api_port: 5000 });
    let total: usize = rs.chains.iter().map(|c| c.rules.len()).sum();
    assert!(
        total <= MAX_RULESET_RULES,
        "{total} rules: over the ruleset budget of {MAX_RULESET_RULES}"
    );
    let tenant = rs
        .chains
        .iter()
        .filter(|c| c.name == "tenant_rules")
        .map(|c| c.rules.len())
        .sum::<usize>();
    assert!(
        tenant <= MAX_RENDERED_RULES,
        "{tenant} tenant rules: over the anchors' budget of {MAX_RENDERED_RULES}"
    );
    for chain in &rs.chains {
        for rule in &chain.rules {
            if let Some(c) = &rule.comment {
                assert_eq!(
                    c.trim().len(),
                    c.len(),
                    "comment {c:?} has edge spaces (an empty name?)"
                );
            }
        }
    }
    let text = firewall::text::render(&rs);
    assert_one_line_each(&text, "nft text", |_| true);
    if let Err(e) = firewall::batch::build(&rs) {
        panic!("the nftnl batch cannot be built: {e}");
    }
    assert_eq!(
        firewall::ruleset::element_delta(&rs, &rs),
        Some(vec![]),
        "a ruleset differs from itself"
    );
}

/// No line of a rendered file holds a control character, and `ok` holds for every line.
fn assert_one_line_each(text: &str, what: &str, ok: impl Fn(&str) -> bool) {
    for line in text.lines() {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "{what}: a control character in {line:?}"
        );
        assert!(ok(line), "{what}: unexpected line {line:?}");
    }
}

fn check_services(config: &RouterConfig, checks: &DaemonCheck) {
    let dir = checks.dir();
    let mut dnsmasq_files = Vec::new();
    for network in dnsmasq::served_networks(config) {
        let paths = dnsmasq::DnsmasqPaths::new(&dir, &dir, &network.ifname);
        let files = dnsmasq::render(network, &paths);
        for (what, text) in [
            ("dnsmasq.conf", &files.conf),
            ("hosts", &files.hosts),
            ("opts", &files.opts),
            ("servers", &files.servers),
        ] {
            assert_one_line_each(text, what, |l| !l.trim().is_empty());
        }
        dnsmasq_files.push((network.ifname.clone(), paths, files));
    }
    let bird_conf = bird::render(config);
    if let Some(conf) = &bird_conf {
        assert_one_line_each(conf, "bird.conf", |_| true);
    }

    let name = hostname::render_hostname_file(&config.hostname);
    assert_eq!(name.lines().count(), 1, "/etc/hostname: {name:?}");
    let hosts = hostname::render_hosts_file(&config.hostname, hostname::management_address(config));
    assert_one_line_each(&hosts, "/etc/hosts", |_| true);

    check_metadata(config);

    if checks.sample() {
        for (ifname, paths, files) in &dnsmasq_files {
            checks.dnsmasq(ifname, paths, files);
        }
        if let Some(conf) = &bird_conf {
            checks.bird(conf);
        }
    }
}

/// Every identity header the metadata proxy sends carries exactly the config's value (the
/// proxy silently leaves out a value that is not a valid header).
fn check_metadata(config: &RouterConfig) {
    let wanted = metadata::desired(config, metadata::METADATA_BASE_PORT);
    for (ifname, (_, meta)) in &wanted {
        let network = config
            .networks
            .iter()
            .find(|n| &n.ifname == ifname)
            .expect("a listener per network");
        let devices: BTreeMap<IpAddr, &str> = network
            .allocations
            .iter()
            .flat_map(|a| {
                a.ip_addresses
                    .iter()
                    .map(|(ip, _)| (*ip, a.device_id.as_str()))
            })
            .collect();
        for (ip, device_id) in &meta.instances {
            let req = hyper::Request::builder()
                .uri("/latest/meta-data/")
                .body(())
                .expect("request");
            let out = metadata::upstream_request(req, *ip, device_id, meta)
                .unwrap_or_else(|e| panic!("no upstream request for {ip}: {e}"));
            let header = |n: &str| out.headers().get(n).map(|v| v.as_bytes().to_vec());
            assert_eq!(header("x-instance-id"), Some(device_id.as_bytes().to_vec()));
            assert_eq!(
                header("x-tenant-id"),
                Some(meta.tenant_id.as_bytes().to_vec())
            );
            assert_eq!(
                header("x-neutron-network-id"),
                Some(network.id.as_bytes().to_vec())
            );
            assert!(devices.contains_key(ip));
        }
    }
}

/// The daemons' own checks of rendered files: `dnsmasq --test` and `bird -p`. Each costs a
/// process (a few ms), so the render target runs them for one accepted config in
/// `AKANDA_FUZZ_CHECK_EVERY` (default 64; the first always, so a saved crash replays its
/// check), and `scripts/fuzz` replays the whole corpus with 1 afterwards.
pub struct DaemonCheck {
    every: u64,
    seen: AtomicU64,
    dir: PathBuf,
    dnsmasq: PathBuf,
    bird: PathBuf,
}

impl DaemonCheck {
    pub fn from_env() -> DaemonCheck {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let dir = var("AKANDA_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("akanda-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        DaemonCheck {
            every: var("AKANDA_FUZZ_CHECK_EVERY")
                .and_then(|v| v.parse().ok())
                .unwrap_or(64)
                .max(1),
            seen: AtomicU64::new(0),
            dir,
            dnsmasq: var("AKANDA_FUZZ_DNSMASQ")
                .unwrap_or_else(|| "dnsmasq".into())
                .into(),
            bird: var("AKANDA_FUZZ_BIRD")
                .unwrap_or_else(|| "bird".into())
                .into(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn sample(&self) -> bool {
        self.seen.fetch_add(1, Ordering::Relaxed) % self.every == 0
    }

    /// `dnsmasq --test` of the main file as the agent runs it, and of one file holding all
    /// four: `--test` does not read the hosts, options and servers files (dnsmasq reads them
    /// at start and on SIGHUP, and skips a bad line there with a log message), so their lines
    /// are checked as the `dhcp-host=`, `dhcp-option=` and `server=` lines they stand for.
    fn dnsmasq(&self, ifname: &str, paths: &dnsmasq::DnsmasqPaths, files: &dnsmasq::DnsmasqFiles) {
        std::fs::create_dir_all(&paths.dir).expect("dnsmasq directory");
        write(&paths.hosts(), &files.hosts);
        write(&paths.opts(), &files.opts);
        write(&paths.servers(), &files.servers);
        write(&paths.conf(), &files.conf);
        self.run(&self.dnsmasq, &["--test", "-C"], &paths.conf(), &files.conf);
        let mut all = files.conf.clone();
        for line in files.hosts.lines() {
            all.push_str(&format!("dhcp-host={line}\n"));
        }
        for line in files.opts.lines() {
            all.push_str(&format!("dhcp-option={line}\n"));
        }
        all.push_str(&files.servers);
        let combined = self.dir.join(format!("{ifname}-all.conf"));
        write(&combined, &all);
        self.run(&self.dnsmasq, &["--test", "-C"], &combined, &all);
    }

    /// `bird -p -c FILE`: parse only.
    fn bird(&self, conf: &str) {
        let path = self.dir.join("bird.conf");
        write(&path, conf);
        self.run(&self.bird, &["-p", "-c"], &path, conf);
    }

    fn run(&self, program: &Path, args: &[&str], file: &Path, text: &str) {
        let out = Command::new(program)
            .args(args)
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} refuses a rendered file: {}\n--- {}\n{text}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            file.display()
        );
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
