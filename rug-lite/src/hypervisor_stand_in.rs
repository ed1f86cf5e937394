//! **A stand-in for the hypervisor**, for tests only. Where no real guest can run (Nova's fake
//! driver, or a unit test with no cloud at all), this plays the part of Nova's compute host
//! for one server of rug-lite's: it
//!
//! - builds the config-drive directory the way Nova does (`openstack/latest/network_data.json`
//!   from the server's Neutron ports in NIC order, `meta_data.json` with the server's metadata,
//!   and `user_data` exactly as the server was booted with it);
//! - creates a network namespace (the "guest") with one NIC per port, carrying the port's MAC,
//!   plugged into a [`Fabric`]: the L2 segments a compute host and its L2 agent provide. The
//!   management NIC's peer joins a bridge in the test's own namespace that carries an address on
//!   the management subnet (rug-lite's side of the management network); every other NIC joins
//!   the bridge of its Neutron network in a second namespace (the "wire"), where test hosts
//!   ([`TestHost`]: a tenant VM, an upstream router) can be plugged too;
//! - runs the real `akanda-agent serve --boot-config DIR` in the guest namespace.
//!
//! Everything after that is the real agent reading a real config drive directory: it
//! configures its management NIC, takes its TLS material from `user_data` and serves.
//! Needs root. Namespaces are the workspace's (akanda-netns): `rl-guest-<pid>-<n>`,
//! `rl-wire-<pid>-<n>` and `rl-host-<pid>-<n>`, deleted with every process in them on drop,
//! and after a crash by the next run; management bridges `rlm<pid hex><n>` carry the alias
//! `rug-lite stand-in <pid>`, and a crashed run's are deleted by the next one too.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{json, Value};

use crate::neutron::{Port, Subnet};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics without root unless `AKANDA_SKIP_ROOT_TESTS=1` (then false: the test says
/// "skipped"), as the workspace's other root tests do.
pub(crate) fn require_root() -> bool {
    if akanda_netns::is_root() {
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
    akanda_netns::run_in_host(argv).unwrap_or_else(|e| panic!("{e}"))
}

/// Prefix of the stand-in's namespaces (akanda-netns removes a crashed run's).
const NS_PREFIX: &str = "rl-";

/// A namespace of the stand-in, `rl-<role>-<pid>-<n>`.
#[track_caller]
fn netns(role: &str) -> akanda_netns::Netns {
    akanda_netns::Netns::new(NS_PREFIX, role).unwrap_or_else(|e| panic!("{e}"))
}

/// Deletes management bridges of stand-ins whose process is gone.
fn cleanup_stale() {
    // Management bridges in this namespace, by their alias.
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for l in links.flatten() {
        let alias = std::fs::read_to_string(l.path().join("ifalias")).unwrap_or_default();
        let Some(pid) = alias.trim().strip_prefix(BRIDGE_ALIAS) else {
            continue;
        };
        if pid
            .trim()
            .parse::<i32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            let name = l.file_name().to_string_lossy().into_owned();
            let _ = Command::new("ip").args(["link", "del", &name]).status();
        }
    }
}

const BRIDGE_ALIAS: &str = "rug-lite stand-in ";

fn once_cleanup_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(cleanup_stale);
}

/// The L2 segments of a stand-in compute host: the management bridge in the test's own
/// namespace (with rug-lite's host address on it), and a "wire" namespace holding one bridge
/// per Neutron network. Drop deletes both (the guests' and test hosts' peers with them).
pub(crate) struct Fabric {
    pub(crate) wire: String,
    _wire_netns: akanda_netns::Netns,
    mgmt_bridge: String,
    /// Neutron network id → bridge name in the wire namespace.
    bridges: Mutex<BTreeMap<String, String>>,
}

impl Fabric {
    /// A fabric whose management bridge carries `host_address` (rug-lite's address).
    pub(crate) fn new(host_address: IpNet) -> Arc<Fabric> {
        once_cleanup_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let wire_netns = netns("wire");
        let mgmt_bridge = format!("rlm{:x}{n}", pid % 0xfffff);
        let fabric = Fabric {
            wire: wire_netns.name().to_string(),
            _wire_netns: wire_netns,
            mgmt_bridge,
            bridges: Mutex::new(BTreeMap::new()),
        };
        let br = &fabric.mgmt_bridge;
        run(&[
            "ip",
            "link",
            "add",
            br,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        run(&[
            "ip",
            "link",
            "set",
            br,
            "alias",
            &format!("{BRIDGE_ALIAS}{pid}"),
        ]);
        // No router advertisement from a guest may give this host a route.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{br}/accept_ra"), "0");
        let addr = host_address.to_string();
        run(&["ip", "addr", "add", &addr, "dev", br, "nodad"]);
        run(&["ip", "link", "set", br, "up"]);
        Arc::new(fabric)
    }

    /// The bridge of this Neutron network in the wire namespace, made on first use.
    pub(crate) fn bridge(&self, network_id: &str) -> String {
        let mut bridges = self.bridges.lock().unwrap();
        if let Some(b) = bridges.get(network_id) {
            return b.clone();
        }
        let name = format!("br{}", bridges.len());
        run(&[
            "ip",
            "-n",
            &self.wire,
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        run(&["ip", "-n", &self.wire, "link", "set", &name, "up"]);
        bridges.insert(network_id.to_string(), name.clone());
        name
    }

    /// Plugs the peer `outside` (in the caller's namespace) into the segment: the management
    /// bridge, or the network's bridge in the wire namespace.
    fn plug(&self, outside: &str, segment: Segment<'_>) {
        match segment {
            Segment::Management => {
                run(&[
                    "ip",
                    "link",
                    "set",
                    outside,
                    "master",
                    &self.mgmt_bridge,
                    "up",
                ]);
            }
            Segment::Network(network_id) => {
                let br = self.bridge(network_id);
                run(&["ip", "link", "set", outside, "netns", &self.wire]);
                run(&[
                    "ip", "-n", &self.wire, "link", "set", outside, "master", &br, "up",
                ]);
            }
        }
    }

    /// A test host (a tenant VM, an upstream router) on this network: namespace `rl-host-…`
    /// with `eth0`, carrying `mac` if given.
    pub(crate) fn host(&self, network_id: &str, mac: Option<&str>) -> TestHost {
        once_cleanup_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = netns("host");
        let ns = netns.name().to_string();
        let host = TestHost {
            ns: ns.clone(),
            _netns: netns,
        };
        let outside = format!("rt{:x}{n}", pid % 0xfffff);
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &outside,
        ]);
        if let Some(mac) = mac {
            run(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac]);
        }
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        self.plug(&outside, Segment::Network(network_id));
        host
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.mgmt_bridge])
            .status();
        // The wire namespace goes when `_wire_netns` drops, after this.
    }
}

/// Which segment a NIC is on.
#[derive(Clone, Copy)]
pub(crate) enum Segment<'a> {
    Management,
    Network(&'a str),
}

/// A namespace with one NIC, `eth0`, on a [`Fabric`] network. Drop deletes it, with any
/// process still in it.
pub(crate) struct TestHost {
    pub(crate) ns: String,
    _netns: akanda_netns::Netns,
}

impl TestHost {
    /// Runs a shell command in the host's namespace; its exit status and output.
    pub(crate) fn sh(&self, script: &str) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script:?} in {}: {e}", self.ns));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Like [`TestHost::sh`], panicking unless it succeeds.
    #[track_caller]
    pub(crate) fn must(&self, script: &str) -> String {
        let (ok, text) = self.sh(script);
        assert!(ok, "{script:?} in {} failed: {text}", self.ns);
        text
    }

    /// One DHCPv4 exchange on `eth0` (dhclient, with a script that only records what it was
    /// given); the lease's `new_*` values, e.g. `new_ip_address`, `new_routers`.
    pub(crate) fn dhcp_lease(&self) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("hook"),
            format!("#!/bin/sh\n[ \"$reason\" = BOUND ] && env > {d}/bound.env\nexit 0\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("dhclient.conf"),
            "timeout 30;\nretry 1;\ninitial-interval 1;\nrequest subnet-mask, routers;\n",
        )
        .unwrap();
        let (_, log) = self.sh(&format!(
            "chmod +x {d}/hook; timeout 40 dhclient -4 -1 -cf {d}/dhclient.conf -sf {d}/hook \
             -lf {d}/leases -pf {d}/pid eth0 2>&1; kill $(cat {d}/pid 2>/dev/null) 2>/dev/null; true"
        ));
        let env = std::fs::read_to_string(dir.path().join("bound.env"))
            .unwrap_or_else(|_| panic!("no DHCP lease in {}: {log}", self.ns));
        env.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("new_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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

/// One guest: its namespace, its NICs on a [`Fabric`], and its running agent. Drop stops the
/// agent and deletes the namespace (and with it every veth).
pub(crate) struct Guest {
    pub(crate) ns: String,
    /// Deleted (with the agent, were it still running) after `Drop::drop` stopped the agent.
    _netns: akanda_netns::Netns,
    fabric: Arc<Fabric>,
    /// Interface name stem and the NICs' MACs, in order.
    tag: String,
    macs: Vec<String>,
    child: Option<Child>,
    log_path: PathBuf,
    pub(crate) config_drive: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Guest {
    /// Boots a "guest" on a fabric of its own: the first NIC is management (its peer's bridge
    /// gets `host_address`), every other NIC a segment of its own.
    pub(crate) fn boot(macs: &[String], host_address: IpNet, fill: impl FnOnce(&Path)) -> Guest {
        let fabric = Fabric::new(host_address);
        let nics: Vec<(String, Option<String>)> = macs
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), (i > 0).then(|| format!("own-{i}"))))
            .collect();
        Guest::boot_on(fabric, &nics, fill)
    }

    /// Boots the "guest": NICs `(mac, Neutron network id)` in order, the first being management
    /// (network `None`), the config drive written by [`write_config_drive`] into a fresh
    /// directory by `fill`, then the agent.
    pub(crate) fn boot_on(
        fabric: Arc<Fabric>,
        nics: &[(String, Option<String>)],
        fill: impl FnOnce(&Path),
    ) -> Guest {
        once_cleanup_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = netns("guest");
        let ns = netns.name().to_string();
        let tmp = tempfile::Builder::new()
            .prefix("rug-lite-guest-")
            .tempdir()
            .unwrap();
        // Short, unique interface names (15 characters at most).
        let tag = format!("{:x}{n}", pid % 0xfffff);
        let mut guest = Guest {
            ns: ns.clone(),
            _netns: netns,
            fabric,
            tag,
            macs: Vec::new(),
            child: None,
            log_path: tmp.path().join("agent.log"),
            config_drive: tmp.path().join("config-drive"),
            _tmp: tmp,
        };
        for (mac, network) in nics {
            guest.plug(mac, network.as_deref());
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

    /// Adds NIC number `macs.len()` with this MAC, its peer on the segment.
    fn plug(&mut self, mac: &str, network: Option<&str>) {
        let i = self.macs.len();
        let (inside, outside) = (format!("rg{}n{i}", self.tag), format!("rh{}n{i}", self.tag));
        run(&[
            "ip", "link", "add", &inside, "address", mac, "netns", &self.ns, "type", "veth",
            "peer", "name", &outside,
        ]);
        let segment = match network {
            None => Segment::Management,
            Some(id) => Segment::Network(id),
        };
        self.fabric.plug(&outside, segment);
        self.macs.push(mac.to_string());
    }

    /// Whether the guest has a NIC with this MAC.
    pub(crate) fn has_nic(&self, mac: &str) -> bool {
        self.macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
    }

    /// Hot-plugs a NIC with this MAC on this Neutron network's segment.
    pub(crate) fn hotplug_on(&mut self, mac: &str, network_id: &str) {
        self.plug(mac, Some(network_id));
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
    }
}
