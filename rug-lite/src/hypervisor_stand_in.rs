//! **A stand-in for the hypervisor**, for tests only. Where no real guest can run (Nova's fake
//! driver, or a unit test with no cloud at all), this plays the part of Nova's compute host
//! for one server of rug-lite's: it
//!
//! - builds the config-drive directory the way Nova does (`openstack/latest/network_data.json`
//!   from the server's Neutron ports in NIC order, `meta_data.json` with the server's metadata,
//!   and `user_data` exactly as the server was booted with it);
//! - creates a network namespace (the "guest") with one NIC per port, carrying the port's MAC;
//!   the management NIC's peer stays in the test's own namespace with an address on the
//!   management subnet (rug-lite's side of the management network), the other peers go to a
//!   second namespace (the "wire");
//! - runs the real `akanda-agent serve --boot-config DIR` in the guest namespace.
//!
//! Everything after that is the real agent reading a real config drive directory: it
//! configures its management NIC, takes its TLS material from `user_data` and serves.
//! Needs root. Namespaces are named `rlg-<pid>-<n>` / `rlw-<pid>-<n>` and deleted on drop
//! (leftovers of a crashed run are deleted by the next one).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{json, Value};

use crate::neutron::{Port, Subnet};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics without root unless `AKANDA_SKIP_ROOT_TESTS=1` (then false: the test says
/// "skipped"), as the workspace's other root tests do.
pub(crate) fn require_root() -> bool {
    // The effective uid: the second field of /proc/self/status's `Uid:` line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() == Some("0") {
        return true;
    }
    if std::env::var("AKANDA_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: needs root");
        return false;
    }
    panic!("this test needs root (network namespaces); set AKANDA_SKIP_ROOT_TESTS=1 to skip");
}

/// The workspace's `akanda-agent`: `$AKANDA_AGENT_BIN`, else `target/<profile>/akanda-agent`
/// beside this test executable (`cargo build --workspace --bins` builds it; scripts/test does).
pub(crate) fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AKANDA_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let bin = dir.join("akanda-agent");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p akanda-agent` (or --workspace --bins) first",
        bin.display()
    );
    bin
}

#[track_caller]
fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces `rlg-PID-*` / `rlw-PID-*` whose process is gone.
fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("rlg-")
            .or_else(|| name.strip_prefix("rlw-"))
        else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Nova's `network_data.json` for these ports in NIC order (nova/virt/netutils.py
/// `get_network_metadata`): one link per port (`tap<port id[:11]>`), one network per fixed IP,
/// static, with the subnet's default route when it has a gateway.
pub(crate) fn network_data(ports: &[Port], subnets: &[Subnet], mtus: &[Option<u64>]) -> Value {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let tap = format!("tap{}", &port.id[..port.id.len().min(11)]);
        links.push(json!({
            "id": tap, "vif_id": port.id, "type": "tap",
            "mtu": mtus.get(i).copied().flatten(),
            "ethernet_mac_address": port.mac_address,
        }));
        for f in &port.fixed_ips {
            let subnet = subnets
                .iter()
                .find(|s| s.id == f.subnet_id)
                .expect("the port's subnet");
            let net: IpNet = subnet.cidr.parse().expect("subnet cidr");
            let v6 = matches!(net, IpNet::V6(_));
            let routes: Vec<Value> = subnet
                .gateway_ip
                .iter()
                .map(|gw| {
                    if v6 {
                        json!({"network": "::", "netmask": "::", "gateway": gw})
                    } else {
                        json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gw})
                    }
                })
                .collect();
            networks.push(json!({
                "id": format!("network{}", networks.len()),
                "type": if v6 { "ipv6" } else { "ipv4" },
                "link": tap,
                "ip_address": f.ip_address,
                "netmask": net.netmask().to_string(),
                "routes": routes,
                "network_id": port.network_id,
                "services": [],
            }));
        }
    }
    json!({"links": links, "networks": networks, "services": []})
}

/// Writes the config-drive directory (`DIR/openstack/latest/...`) as Nova would.
pub(crate) fn write_config_drive(
    dir: &Path,
    server_id: &str,
    name: &str,
    metadata: &BTreeMap<String, String>,
    network_data: &Value,
    user_data: &str,
) {
    let latest = dir.join("openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    let meta_data = json!({
        "uuid": server_id, "name": name, "hostname": format!("{name}.novalocal"),
        "meta": metadata, "launch_index": 0, "availability_zone": "nova",
        "devices": [], "dedicated_cpus": [],
    });
    std::fs::write(
        latest.join("meta_data.json"),
        serde_json::to_vec_pretty(&meta_data).unwrap(),
    )
    .unwrap();
    std::fs::write(
        latest.join("network_data.json"),
        serde_json::to_vec_pretty(network_data).unwrap(),
    )
    .unwrap();
    std::fs::write(latest.join("user_data"), user_data).unwrap();
}

/// One guest: its namespaces and its running agent. Drop stops the agent and deletes both
/// namespaces (and with them every veth).
pub(crate) struct Guest {
    pub(crate) ns: String,
    wire: String,
    /// Interface name stem and the NICs' MACs, in order.
    tag: String,
    macs: Vec<String>,
    child: Option<Child>,
    log_path: PathBuf,
    pub(crate) config_drive: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Guest {
    /// Boots the "guest": NICs with these MACs (the first is management: its peer, in the
    /// caller's namespace, gets `host_address`), the config drive written by
    /// [`write_config_drive`] into a fresh directory by `fill`, then the agent.
    pub(crate) fn boot(macs: &[String], host_address: IpNet, fill: impl FnOnce(&Path)) -> Guest {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(cleanup_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("rlg-{pid}-{n}");
        let wire = format!("rlw-{pid}-{n}");
        run(&["ip", "netns", "add", &ns]);
        run(&["ip", "netns", "add", &wire]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let tmp = tempfile::Builder::new()
            .prefix("rug-lite-guest-")
            .tempdir()
            .unwrap();
        // Short, unique interface names (15 characters at most).
        let tag = format!("{:x}{n}", pid % 0xfffff);
        let mut guest = Guest {
            ns: ns.clone(),
            wire: wire.clone(),
            tag: tag.clone(),
            macs: macs.to_vec(),
            child: None,
            log_path: tmp.path().join("agent.log"),
            config_drive: tmp.path().join("config-drive"),
            _tmp: tmp,
        };
        for (i, mac) in macs.iter().enumerate() {
            let (inside, outside) = (format!("rg{tag}n{i}"), format!("rh{tag}n{i}"));
            let peer_ns = if i == 0 { None } else { Some(wire.as_str()) };
            let mut argv = vec!["ip", "link", "add", &inside, "address", mac, "netns", &ns];
            argv.extend(["type", "veth", "peer", "name", &outside]);
            if let Some(w) = peer_ns {
                argv.extend(["netns", w]);
            }
            run(&argv);
            match peer_ns {
                None => {
                    let addr = host_address.to_string();
                    run(&["ip", "addr", "add", &addr, "dev", &outside, "nodad"]);
                    run(&["ip", "link", "set", &outside, "up"]);
                }
                Some(w) => {
                    run(&["ip", "-n", w, "link", "set", &outside, "up"]);
                }
            };
        }
        std::fs::create_dir_all(&guest.config_drive).unwrap();
        fill(&guest.config_drive);
        let state = guest._tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let log = File::create(&guest.log_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(agent_bin())
            .args(["serve", "--boot-config"])
            .arg(&guest.config_drive)
            .arg("--state-dir")
            .arg(&state)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn akanda-agent");
        guest.child = Some(child);
        guest
    }

    /// Whether the guest has a NIC with this MAC.
    pub(crate) fn has_nic(&self, mac: &str) -> bool {
        self.macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
    }

    /// Hot-plugs a NIC with this MAC (what the hypervisor does on Nova's interface attach);
    /// its peer goes to the wire namespace.
    pub(crate) fn hotplug(&mut self, mac: &str) {
        let i = self.macs.len();
        let (inside, outside) = (format!("rg{}n{i}", self.tag), format!("rh{}n{i}", self.tag));
        run(&[
            "ip", "link", "add", &inside, "address", mac, "netns", &self.ns, "type", "veth",
            "peer", "name", &outside, "netns", &self.wire,
        ]);
        run(&["ip", "-n", &self.wire, "link", "set", &outside, "up"]);
        self.macs.push(mac.to_string());
    }

    /// `nft list ruleset` in the guest.
    pub(crate) fn ruleset(&self) -> String {
        run(&["ip", "netns", "exec", &self.ns, "nft", "list", "ruleset"])
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `ip -j addr` in the guest.
    pub(crate) fn addresses(&self) -> Vec<IpAddr> {
        let out = run(&["ip", "-n", &self.ns, "-j", "addr", "show"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
            .collect()
    }

    /// Whether the agent process is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the agent: the child is the agent itself.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ({}) ---\n{}", self.ns, self.log());
        }
        for ns in [&self.ns, &self.wire] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
