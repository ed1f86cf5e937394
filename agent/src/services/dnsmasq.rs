//! dnsmasq: DHCPv4, DHCPv6, router advertisements and a DNS forwarder on tenant networks.
//!
//! One dnsmasq per tenant NIC (internal or isolated network), never on management, external or
//! load-balancer NICs. Each instance has four files in `RUN_DIR/dnsmasq/geN/`:
//!
//! | file | holds | a change is applied by |
//! |---|---|---|
//! | `dnsmasq.conf` | interface, DHCP ranges, RA, file paths | restarting that network's dnsmasq |
//! | `hosts` (`dhcp-hostsfile`) | one static lease per allocation: MAC, IPv4, [IPv6], name | SIGHUP |
//! | `opts` (`dhcp-optsfile`) | router, DNS servers, classless routes, MTU per subnet | SIGHUP |
//! | `servers` (`servers-file`) | upstream DNS servers (the subnets' `dns_nameservers`) | SIGHUP |
//!
//! So allocation, host-route and DNS changes never restart dnsmasq; only adding or removing a
//! subnet (or changing its mode) does, and only for that network. Leases are kept in
//! `STATE_DIR/dnsmasq/geN.leases`, which dnsmasq reads back when it restarts.
//!
//! Every function here but [`DnsmasqSet`]'s methods is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use akanda_model::config::{Network, RouterConfig, Subnet, V6ConfService};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::supervisor::{DaemonSpec, Supervisor};
use super::{write_file, ServicesError};

/// Lease time handed to clients (Astara's and Neutron's default).
pub(crate) const LEASE_TIME: &str = "86400s";
/// Per-instance lease cap: far above what one network holds (Astara capped the whole router
/// at 256).
pub(crate) const LEASE_MAX: u32 = 65536;

/// How a v6 subnet is served. See [`v6_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V6Mode {
    /// RA with the prefix autonomous (SLAAC); no DHCPv6.
    RaOnly,
    /// RA with the prefix autonomous and the O flag; DHCPv6 answers information requests (DNS).
    SlaacStateless,
    /// RA with the M and O flags and the prefix not autonomous; DHCPv6 hands out the
    /// allocations' addresses (static leases only).
    Stateful,
}

/// The v6 mode of a subnet:
///
/// | `v6_conf_service` | `dhcp_enabled` | mode |
/// |---|---|---|
/// | `ra` | false | [`V6Mode::RaOnly`] |
/// | `ra` | true | [`V6Mode::SlaacStateless`] |
/// | `dhcp` | true | [`V6Mode::Stateful`] |
/// | `dhcp` | false | [`V6Mode::RaOnly`] |
/// | `static` | true | [`V6Mode::Stateful`] |
/// | `static` | false | [`V6Mode::RaOnly`] |
///
/// `static` is what Astara's orchestrator always sends; it sets `dhcp_enabled` to
/// `enable_dhcp && ipv6_ra_mode != slaac`, so `static` keeps Astara's behaviour (SLAAC for
/// Neutron's slaac subnets, stateful DHCPv6 for the others) with its bug fixed (the M flag is
/// now set, so clients do ask for DHCPv6).
pub(crate) fn v6_mode(service: V6ConfService, dhcp_enabled: bool) -> V6Mode {
    match (service, dhcp_enabled) {
        (V6ConfService::Ra, true) => V6Mode::SlaacStateless,
        (V6ConfService::Ra, false) => V6Mode::RaOnly,
        (V6ConfService::Dhcp | V6ConfService::Static, true) => V6Mode::Stateful,
        (V6ConfService::Dhcp | V6ConfService::Static, false) => V6Mode::RaOnly,
    }
}

/// Where one instance's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqPaths {
    pub dir: PathBuf,
    pub(crate) lease_file: PathBuf,
}

impl DnsmasqPaths {
    pub fn new(run_dir: &Path, state_dir: &Path, ifname: &str) -> DnsmasqPaths {
        DnsmasqPaths {
            dir: run_dir.join("dnsmasq").join(ifname),
            lease_file: state_dir.join("dnsmasq").join(format!("{ifname}.leases")),
        }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn opts(&self) -> PathBuf {
        self.dir.join("opts")
    }
    pub fn servers(&self) -> PathBuf {
        self.dir.join("servers")
    }
    pub(crate) fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
}

/// The rendered files of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqFiles {
    pub conf: String,
    pub hosts: String,
    pub opts: String,
    pub servers: String,
}

/// The tenant networks that get a dnsmasq: internal or isolated, with at least one DHCP-enabled
/// IPv4 subnet or one IPv6 subnet (which always gets router advertisements).
pub fn served_networks(config: &RouterConfig) -> impl Iterator<Item = &Network> {
    config.networks.iter().filter(|n| {
        n.network_type.is_tenant()
            && n.subnets.iter().any(|s| match s.cidr {
                ipnet::IpNet::V4(_) => s.dhcp_enabled,
                ipnet::IpNet::V6(_) => true,
            })
    })
}

fn tag(ifname: &str, index: usize) -> String {
    format!("{ifname}_{index}")
}

/// `[v6]` for dnsmasq options, plain for v4.
fn opt_addr(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Renders the four files of `network`'s dnsmasq.
pub fn render(network: &Network, paths: &DnsmasqPaths) -> DnsmasqFiles {
    let ifname = &network.ifname;
    let mut conf = String::new();
    let mut opts = String::new();
    let _ = writeln!(
        conf,
        "# Generated by akanda-agent for {ifname} (network {}). Do not edit.",
        network.id
    );
    for line in [
        format!("interface={ifname}"),
        "except-interface=lo".into(),
        // Binds only this NIC's addresses (and DHCP with SO_BINDTODEVICE), following
        // address changes, so one dnsmasq per NIC can run side by side.
        "bind-dynamic".into(),
        "no-hosts".into(),
        "no-resolv".into(),
        "no-poll".into(),
        "domain-needed".into(),
        "bogus-priv".into(),
        "dhcp-authoritative".into(),
        format!("dhcp-lease-max={LEASE_MAX}"),
        format!("dhcp-hostsfile={}", paths.hosts().display()),
        format!("dhcp-optsfile={}", paths.opts().display()),
        format!("servers-file={}", paths.servers().display()),
        format!("dhcp-leasefile={}", paths.lease_file.display()),
        format!("pid-file={}", paths.pid().display()),
        "log-facility=-".into(),
    ] {
        let _ = writeln!(conf, "{line}");
    }

    let mut any_v6 = false;
    let mut upstream: Vec<IpAddr> = Vec::new();
    // v4 subnets that hand out leases, v6 subnets in Stateful mode (for dhcp-host addresses).
    let mut v4_served: Vec<&Subnet> = Vec::new();
    let mut v6_stateful: Vec<&Subnet> = Vec::new();
    for (i, subnet) in network.subnets.iter().enumerate() {
        let tag = tag(ifname, i);
        for ns in &subnet.dns_nameservers {
            if !upstream.contains(ns) {
                upstream.push(*ns);
            }
        }
        match subnet.cidr {
            ipnet::IpNet::V4(net) => {
                if !subnet.dhcp_enabled {
                    continue;
                }
                v4_served.push(subnet);
                let _ = writeln!(
                    conf,
                    "dhcp-range=set:{tag},{},static,{},{LEASE_TIME}",
                    net.network(),
                    net.netmask()
                );
                match subnet.gateway_ip {
                    Some(gw) => {
                        let _ = writeln!(opts, "tag:{tag},option:router,{gw}");
                    }
                    // An empty option suppresses dnsmasq's default (its own address).
                    None => {
                        let _ = writeln!(opts, "tag:{tag},option:router");
                    }
                }
                if !subnet.dns_nameservers.is_empty() {
                    let list: Vec<String> = subnet.dns_nameservers.iter().map(opt_addr).collect();
                    let _ = writeln!(opts, "tag:{tag},option:dns-server,{}", list.join(","));
                }
                let routes = classless_routes(subnet);
                if !routes.is_empty() {
                    // 121 (RFC 3442) and 249 (the Microsoft variant), as Neutron sends them.
                    let _ = writeln!(opts, "tag:{tag},option:classless-static-route,{routes}");
                    let _ = writeln!(opts, "tag:{tag},249,{routes}");
                }
                if let Some(mtu) = network.mtu {
                    let _ = writeln!(opts, "tag:{tag},option:mtu,{mtu}");
                }
            }
            ipnet::IpNet::V6(net) => {
                if net.prefix_len() != 64 {
                    // dnsmasq advertises and leases /64 subnets only (SLAAC needs /64 anyway).
                    let _ = writeln!(conf, "# {net}: not served (RA and DHCPv6 need a /64)");
                    continue;
                }
                any_v6 = true;
                let mode = v6_mode(network.v6_conf_service, subnet.dhcp_enabled);
                let keyword = match mode {
                    V6Mode::RaOnly => "ra-only",
                    V6Mode::SlaacStateless => "ra-stateless",
                    V6Mode::Stateful => {
                        v6_stateful.push(subnet);
                        "static"
                    }
                };
                let _ = writeln!(
                    conf,
                    "dhcp-range=set:{tag},{},{keyword},{},{LEASE_TIME}",
                    net.network(),
                    net.prefix_len()
                );
                if !subnet.dns_nameservers.is_empty() {
                    let list: Vec<String> = subnet.dns_nameservers.iter().map(opt_addr).collect();
                    let _ = writeln!(opts, "tag:{tag},option6:dns-server,{}", list.join(","));
                }
            }
        }
    }
    if any_v6 {
        let _ = writeln!(conf, "enable-ra");
        if let Some(mtu) = network.mtu {
            let _ = writeln!(conf, "ra-param={ifname},mtu:{mtu},600");
        }
    }

    let mut servers = String::new();
    for ns in &upstream {
        let _ = writeln!(servers, "server={ns}");
    }

    let hosts = render_hosts(network, &v4_served, &v6_stateful);
    DnsmasqFiles {
        conf,
        hosts,
        opts,
        servers,
    }
}

/// `dest,nexthop,...` for option 121: the subnet's v4 host routes and, as RFC 3442 requires
/// (a client that gets option 121 ignores option 3), the default route via the gateway.
/// Empty when there are no host routes (option 3 alone is enough then).
pub(crate) fn classless_routes(subnet: &Subnet) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut has_default = false;
    for route in &subnet.host_routes {
        if let (ipnet::IpNet::V4(dest), IpAddr::V4(nh)) = (route.destination, route.next_hop) {
            has_default |= dest.prefix_len() == 0;
            parts.push(format!("{dest},{nh}"));
        }
    }
    if parts.is_empty() {
        return String::new();
    }
    if let (false, Some(IpAddr::V4(gw))) = (has_default, subnet.gateway_ip) {
        parts.push(format!("0.0.0.0/0,{gw}"));
    }
    parts.join(",")
}

/// One `dhcp-hostsfile` line per allocation that has an address to hand out: its MAC, its
/// lowest DHCP-enabled IPv4 in a served v4 subnet, its lowest DHCP-enabled IPv6 in a stateful
/// v6 subnet, and its host name. MACs not listed get nothing (the ranges are `static`).
pub(crate) fn render_hosts(
    network: &Network,
    v4_served: &[&Subnet],
    v6_stateful: &[&Subnet],
) -> String {
    let mut out = String::new();
    let mut seen_macs = BTreeSet::new();
    for alloc in &network.allocations {
        if !seen_macs.insert(alloc.mac_address.as_str()) {
            continue; // validation keeps MACs unique per network; be safe anyway
        }
        let dhcp_ips = || {
            alloc
                .ip_addresses
                .iter()
                .filter(|(_, on)| *on)
                .map(|(ip, _)| *ip)
        };
        let v4 = dhcp_ips()
            .filter(|ip| ip.is_ipv4() && v4_served.iter().any(|s| s.cidr.contains(ip)))
            .min();
        let v6 = dhcp_ips()
            .filter(|ip| ip.is_ipv6() && v6_stateful.iter().any(|s| s.cidr.contains(ip)))
            .min();
        if v4.is_none() && v6.is_none() {
            continue;
        }
        let mut line = alloc.mac_address.clone();
        if let Some(ip) = v4 {
            let _ = write!(line, ",{ip}");
        }
        if let Some(ip) = v6 {
            let _ = write!(line, ",[{ip}]");
        }
        match dhcp_hostname(&alloc.hostname) {
            Some(name) => {
                let _ = write!(line, ",{name}");
            }
            None => tracing::debug!(
                hostname = %alloc.hostname,
                mac = %alloc.mac_address,
                "dnsmasq refuses this host name: the lease is handed out without a name"
            ),
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The name dnsmasq hands out: the first label of the allocation's host name (Astara sends
/// names like `192-168-0-2.local`; dnsmasq refuses a domain part that is not its `domain`).
///
/// `None` when dnsmasq would refuse that label (it must start with a letter or a digit, then
/// letters, digits, `-` and `_`), which would cost the whole line: Astara names the allocation
/// of `::5` `--5.local`. Validation lets through nothing else, trailing and doubled hyphens
/// included (`2001-db8-4b--` for the gateway `2001:db8:4b::`), so this is a last guard.
pub(crate) fn dhcp_hostname(hostname: &str) -> Option<&str> {
    let label = hostname.split('.').next().unwrap_or("");
    let mut bytes = label.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (first_ok && rest_ok && label.len() <= 63).then_some(label)
}

/// A running instance and the files it was last given.
struct Instance {
    files: DnsmasqFiles,
    supervisor: Supervisor,
}

/// A network whose files are written and checked, ready to (re)start or reload.
struct Prepared {
    ifname: String,
    files: DnsmasqFiles,
    conf_changed: bool,
}

/// All dnsmasq instances, keyed by NIC name.
pub(crate) struct DnsmasqSet {
    binary: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
    instances: BTreeMap<String, Instance>,
    /// NICs whose lease file did not exist until an instance of the transaction in progress
    /// started: its rollback removes them with the instance (see [`DnsmasqSet::settle`]).
    created_leases: BTreeSet<String>,
    /// How long `dnsmasq --test` may take.
    check_timeout: std::time::Duration,
}

impl DnsmasqSet {
    pub(crate) fn new(
        binary: PathBuf,
        run_dir: PathBuf,
        state_dir: PathBuf,
        check_timeout: std::time::Duration,
    ) -> DnsmasqSet {
        DnsmasqSet {
            binary,
            run_dir,
            state_dir,
            instances: BTreeMap::new(),
            created_leases: BTreeSet::new(),
            check_timeout,
        }
    }

    /// The transaction is over: lease files it created stay.
    pub(crate) fn settle(&mut self) {
        self.created_leases.clear();
    }

    fn spec(&self, paths: &DnsmasqPaths) -> DaemonSpec {
        DaemonSpec {
            program: self.binary.clone(),
            args: vec![
                "--keep-in-foreground".into(),
                format!("--conf-file={}", paths.conf().display()).into(),
            ],
        }
    }

    /// Brings the instances to `config`: stops those of networks that are gone, starts new ones,
    /// restarts one whose `dnsmasq.conf` changed, and SIGHUPs one whose hosts, options or
    /// servers changed. Carries on past a failing network and reports every failure.
    ///
    /// `verify`: an earlier apply did not complete, so the files on disk may not be those the
    /// instances were given. Every network's files are then compared with the disk too (and
    /// rewritten, with a SIGHUP or a restart, where they differ), and directories of networks
    /// not served are removed.
    pub(crate) async fn apply(
        &mut self,
        config: &RouterConfig,
        verify: bool,
    ) -> Vec<ServicesError> {
        let mut errors = Vec::new();
        let wanted: BTreeMap<String, &Network> = served_networks(config)
            .map(|n| (n.ifname.clone(), n))
            .collect();

        let gone: Vec<String> = self
            .instances
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        let mut gone = gone;
        if verify {
            // Directories a failed apply wrote before any instance started there.
            if let Ok(entries) = std::fs::read_dir(self.run_dir.join("dnsmasq")) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !wanted.contains_key(&name) && !gone.contains(&name) {
                        gone.push(name);
                    }
                }
            }
        }
        for ifname in gone {
            if let Some(instance) = self.instances.remove(&ifname) {
                instance.supervisor.stop().await;
            }
            let paths = DnsmasqPaths::new(&self.run_dir, &self.state_dir, &ifname);
            let _ = std::fs::remove_dir_all(&paths.dir);
            if self.created_leases.remove(&ifname) {
                let _ = std::fs::remove_file(&paths.lease_file);
            }
        }

        // Rendering, writing and `dnsmasq --test` of every network run concurrently, then the
        // starts, and the waits for readiness run concurrently too: a router's first apply with
        // many networks costs about one dnsmasq start, not one per network.
        let prepared = futures::future::join_all(
            wanted
                .iter()
                .map(|(ifname, network)| self.prepare(ifname, network, verify)),
        )
        .await;
        let mut started = Vec::new();
        for result in prepared {
            match result {
                Err(e) => errors.push(e),
                Ok(None) => {}
                Ok(Some(p)) => {
                    if self.commit(p.ifname.clone(), p.files, p.conf_changed).await {
                        started.push(p.ifname);
                    }
                }
            }
        }
        futures::future::join_all(started.iter().map(|ifname| {
            let paths = DnsmasqPaths::new(&self.run_dir, &self.state_dir, ifname);
            let instance = &self.instances[ifname];
            async move { wait_ready(&paths, &instance.supervisor).await }
        }))
        .await;
        errors
    }

    /// Writes a network's files and checks a changed main file. `None`: nothing changed.
    /// `verify`: compare with the files on disk too, not only with what the instance was
    /// given.
    async fn prepare(
        &self,
        ifname: &str,
        network: &Network,
        verify: bool,
    ) -> Result<Option<Prepared>, ServicesError> {
        let paths = DnsmasqPaths::new(&self.run_dir, &self.state_dir, ifname);
        let files = render(network, &paths);
        let disk_conf_differs = verify
            && std::fs::read_to_string(paths.conf()).ok().as_deref() != Some(files.conf.as_str());
        let disk_differs = verify
            && (disk_conf_differs
                || [
                    (paths.hosts(), &files.hosts),
                    (paths.opts(), &files.opts),
                    (paths.servers(), &files.servers),
                ]
                .iter()
                .any(|(path, want)| {
                    std::fs::read_to_string(path).ok().as_deref() != Some(want.as_str())
                })
                || paths.dir.join("dnsmasq.conf.next").exists());
        if let Some(instance) = self.instances.get(ifname) {
            if instance.files == files && !disk_differs {
                return Ok(None);
            }
        }
        super::create_dir(&paths.dir, 0o755)?;
        if let Some(parent) = paths.lease_file.parent() {
            super::create_dir(parent, 0o755)?;
        }
        // dnsmasq re-reads these after dropping privileges: world-readable.
        write_file(&paths.hosts(), files.hosts.as_bytes(), 0o644)?;
        write_file(&paths.opts(), files.opts.as_bytes(), 0o644)?;
        write_file(&paths.servers(), files.servers.as_bytes(), 0o644)?;

        let conf_changed = disk_conf_differs
            || self
                .instances
                .get(ifname)
                .is_none_or(|i| i.files.conf != files.conf);
        let next = paths.dir.join("dnsmasq.conf.next");
        if conf_changed {
            // Check the new main file before it replaces the one a restart would read.
            write_file(&next, files.conf.as_bytes(), 0o644)?;
            if let Err(e) = check_conf(&self.binary, &next, self.check_timeout).await {
                // A refused config leaves no file behind.
                let _ = std::fs::remove_file(&next);
                return Err(e);
            }
            std::fs::rename(&next, paths.conf()).map_err(|source| ServicesError::Write {
                path: paths.conf(),
                source,
            })?;
        } else {
            let _ = std::fs::remove_file(&next);
        }
        Ok(Some(Prepared {
            ifname: ifname.to_owned(),
            files,
            conf_changed,
        }))
    }

    /// Starts, restarts or SIGHUPs a prepared network's dnsmasq. Returns whether a process
    /// was (re)started, whose readiness the caller then waits for.
    async fn commit(&mut self, ifname: String, files: DnsmasqFiles, conf_changed: bool) -> bool {
        let paths = DnsmasqPaths::new(&self.run_dir, &self.state_dir, &ifname);
        let spec = self.spec(&paths);
        match self.instances.get_mut(&ifname) {
            None => {
                // Leftovers of an earlier agent were stopped when this one started
                // (`Services::reap_stale`).
                if !paths.lease_file.exists() {
                    self.created_leases.insert(ifname.clone());
                }
                let supervisor = Supervisor::start(format!("dnsmasq-{ifname}"), spec);
                self.instances
                    .insert(ifname, Instance { files, supervisor });
                true
            }
            Some(instance) => {
                let restarted = if conf_changed {
                    tracing::info!(ifname, "dnsmasq ranges changed: restarting it");
                    instance.supervisor.restart(spec).await;
                    true
                } else {
                    tracing::info!(ifname, "dnsmasq hosts or options changed: SIGHUP");
                    if let Err(e) = instance.supervisor.signal(Signal::SIGHUP).await {
                        // Not running (between restarts): the restart reads the new files.
                        tracing::warn!(ifname, "cannot reload dnsmasq: {e}");
                    }
                    false
                };
                instance.files = files;
                restarted
            }
        }
    }

    pub(crate) fn status(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (ifname, instance) in &self.instances {
            out.insert(ifname.clone(), instance.supervisor.state().to_json());
        }
        Value::Object(out)
    }

    pub(crate) fn pid(&self, ifname: &str) -> Option<u32> {
        self.instances.get(ifname)?.supervisor.state().pid
    }

    pub(crate) async fn shutdown(&mut self) {
        for (_, instance) in std::mem::take(&mut self.instances) {
            instance.supervisor.stop().await;
        }
    }

    /// Stops every instance and removes the lease files this transaction created (the
    /// caller removes the generated files).
    pub(crate) async fn reset(&mut self) {
        self.shutdown().await;
        for ifname in std::mem::take(&mut self.created_leases) {
            let paths = DnsmasqPaths::new(&self.run_dir, &self.state_dir, &ifname);
            let _ = std::fs::remove_file(&paths.lease_file);
        }
    }
}

/// Waits (up to 2 s) until a freshly started dnsmasq has written its pid file: it has then
/// installed its signal handlers, so an immediate SIGHUP reloads it instead of killing it.
/// dnsmasq writes it a few milliseconds after its start, and the apply answers only then:
/// the file is looked at every millisecond for the first 50 ms (a 10 ms step cost a push
/// 5 ms on average), then every 10 ms.
async fn wait_ready(paths: &DnsmasqPaths, supervisor: &Supervisor) {
    let started = tokio::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let Some(pid) = supervisor.state().pid else {
            return; // failed to start: the supervisor retries and reports it
        };
        let written = std::fs::read_to_string(paths.pid()).ok();
        if written.is_some_and(|w| w.trim() == pid.to_string()) {
            return;
        }
        let step = if started.elapsed() < std::time::Duration::from_millis(50) {
            1
        } else {
            10
        };
        tokio::time::sleep(std::time::Duration::from_millis(step)).await;
    }
    tracing::warn!(dir = %paths.dir.display(), "dnsmasq has not written its pid file after 2 s");
}

/// `dnsmasq --test --conf-file=PATH`: a syntax check that never binds anything, killed
/// after `timeout`.
async fn check_conf(
    binary: &Path,
    conf: &Path,
    timeout: std::time::Duration,
) -> Result<(), ServicesError> {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--test")
        .arg(format!("--conf-file={}", conf.display()));
    super::check::run("dnsmasq", command, timeout).await
}
