//! Root tests of `akanda_agent::services` with real daemons and real clients.
//!
//! Each test builds its own namespaces (the harness's, `akt-sv-<tag>-<pid>-<n>`): a router namespace, where a
//! thread that has entered it runs [`Services`] on a current-thread tokio runtime (so dnsmasq
//! and bird are spawned there), and host namespaces around it (tenant VMs, the external
//! gateway, the orchestrator). The router side (links, addresses, the metadata redirect) is set
//! up by hand with `ip` and `nft`, standing in for the rest of the agent. Namespaces are deleted,
//! with every process in them, when a test ends, even on failure; leftovers of a killed run are
//! removed by the next one. Without root these tests fail, unless AKANDA_SKIP_ROOT_TESTS=1.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use akanda_agent::services::{Services, ServicesOptions};
use akanda_model::RouterConfig;
use serde_json::{json, Value};

/// Tag prefix of these tests' namespaces (`akt-sv-<tag>-<pid>-<n>`).
const PREFIX: &str = "sv-";
const MAC_A: &str = "fa:16:3e:aa:bb:01";
const MAC_B: &str = "fa:16:3e:aa:bb:02";
const MAC_C: &str = "fa:16:3e:aa:bb:03";
const MAC_UNKNOWN: &str = "fa:16:3e:00:00:99";

// ---------------------------------------------------------------------------
// Namespaces: the harness's (akanda-netns: unique names, removal with every process in them on
// drop and after a crash), with what these tests add.

struct Netns {
    harness: akanda_tests::Netns,
    name: String,
}

impl std::ops::Deref for Netns {
    type Target = akanda_tests::Netns;

    fn deref(&self) -> &akanda_tests::Netns {
        &self.harness
    }
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let harness = akanda_tests::Netns::new(&format!("{PREFIX}{tag}"));
        let ns = Netns {
            name: harness.name().to_string(),
            harness,
        };
        // No DAD: link-locals are usable at once (RS, RA, DHCPv6).
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    /// Runs a command in the namespace without blocking the runtime (the services under test
    /// run on it).
    async fn output(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }
}

/// A veth pair with one end in each namespace, both up.
fn veth(a: &Netns, a_if: &str, a_mac: &str, b: &Netns, b_if: &str, b_mac: &str) {
    akanda_tests::veth(a, a_if, a_mac, b, b_if, b_mac);
}

/// A tenant host: namespace `tag` with `eth0` (MAC `mac`) plugged into bridge `ge2` of the
/// router.
fn tenant_host(router: &Netns, tag: &str, port: &str, mac: &str) -> Netns {
    let host = Netns::new(tag);
    let port_mac = format!("02:00:00:00:00:{:02x}", port.len() + tag.len());
    veth(router, port, &port_mac, &host, "eth0", mac);
    router.ip(&format!("link set {port} master ge2"));
    host
}

/// The router's tenant NIC `ge2`: a bridge (so several hosts share the link) with the
/// router's addresses on it.
fn router_ge2(router: &Netns) {
    router.ip("link add ge2 type bridge mcast_snooping 0");
    router.ip("link set ge2 address 02:a0:00:00:00:02 up");
    router.ip("addr add 192.168.0.1/24 dev ge2");
    router.ip("addr add 2001:db8:100::1/64 dev ge2 nodad");
}

fn root_or_skip(_test: &str) -> bool {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
    akanda_tests::require_root()
}

/// Runs `body` on a thread inside namespace `ns` with a current-thread runtime.
fn in_netns<F, Fut, T>(ns: &Netns, body: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    akanda_tests::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body())
    })
}

/// A private directory, readable by dnsmasq after it drops privileges.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("aksv-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn options(dir: &Path) -> ServicesOptions {
    ServicesOptions {
        run_dir: dir.join("run"),
        state_dir: dir.join("state"),
        set_hostname: false,
        ..ServicesOptions::default()
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Config

struct Lab {
    v6_service: &'static str,
    v6_dhcp: bool,
    allocations: Vec<Value>,
    internal: bool,
    orchestrator: (&'static str, u16),
    extra_internal_subnet: Option<Value>,
}

impl Default for Lab {
    fn default() -> Self {
        Lab {
            v6_service: "static",
            v6_dhcp: true,
            allocations: vec![alloc(
                MAC_A,
                "192.168.0.10",
                Some("2001:db8:100::10"),
                "vm-a.local",
                "dev-a",
            )],
            internal: true,
            orchestrator: ("fdca:3ba5:a17a:acda::1", 9697),
            extra_internal_subnet: None,
        }
    }
}

fn alloc(mac: &str, v4: &str, v6: Option<&str>, hostname: &str, device: &str) -> Value {
    let mut ips = serde_json::Map::new();
    ips.insert(v4.into(), json!(true));
    if let Some(v6) = v6 {
        ips.insert(v6.into(), json!(true));
    }
    json!({"mac_address": mac, "ip_addresses": ips, "hostname": hostname, "device_id": device})
}

impl Lab {
    fn config(&self) -> RouterConfig {
        let mut networks = vec![
            json!({
                "network_id": "net-mgmt", "network_type": "management",
                "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::5/64"]},
                "subnets": [{"id": "s-mgmt", "cidr": "fdca:3ba5:a17a:acda::/64",
                             "gateway_ip": "fdca:3ba5:a17a:acda::1", "dhcp_enabled": false,
                             "dns_nameservers": [], "host_routes": []}],
                "allocations": []
            }),
            json!({
                "network_id": "net-ext", "network_type": "external",
                "interface": {"ifname": "ge1", "addresses": ["172.16.77.2/24", "2001:db8:77::2/64"]},
                "subnets": [
                    {"id": "s-ext4", "cidr": "172.16.77.0/24", "gateway_ip": "172.16.77.1",
                     "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []},
                    {"id": "s-ext6", "cidr": "2001:db8:77::/64", "gateway_ip": "2001:db8:77::1",
                     "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
                "allocations": []
            }),
        ];
        if self.internal {
            let mut subnets = vec![
                json!({"id": "s-int4", "cidr": "192.168.0.0/24", "gateway_ip": "192.168.0.1",
                       "dhcp_enabled": true, "dns_nameservers": ["192.0.2.53"],
                       "host_routes": [{"destination": "10.50.0.0/16", "nexthop": "192.168.0.254"}]}),
                json!({"id": "s-int6", "cidr": "2001:db8:100::/64", "gateway_ip": "2001:db8:100::1",
                       "dhcp_enabled": self.v6_dhcp, "dns_nameservers": ["2001:db8:53::53"],
                       "host_routes": []}),
            ];
            let mut addresses = vec![json!("192.168.0.1/24"), json!("2001:db8:100::1/64")];
            if let Some(extra) = &self.extra_internal_subnet {
                addresses.push(extra["router"].clone());
                subnets.push(extra["subnet"].clone());
            }
            networks.push(json!({
                "network_id": "net-int", "network_type": "internal", "mtu": 1450,
                "v6_conf_service": self.v6_service,
                "interface": {"ifname": "ge2", "addresses": addresses},
                "subnets": subnets,
                "allocations": self.allocations,
            }));
        }
        let doc = json!({
            "tenant_id": "tenant-e5f6", "hostname": "ak-test-router",
            "asn": 64512, "neighbor_asn": 64512,
            "orchestrator": {"address": self.orchestrator.0, "metadata_port": self.orchestrator.1},
            "networks": networks,
        });
        akanda_model::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }
}

// ---------------------------------------------------------------------------
// DHCP client

/// An ISC dhclient run in a host namespace; its hook script records every event's variables.
struct Dhclient {
    dir: PathBuf,
}

impl Dhclient {
    fn new(base: &Path, name: &str) -> Dhclient {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv | sort > '{}'/\"$reason\".env\nexit 0\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.join("dhclient.conf"),
            "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
             timeout 6;\nretry 1;\ninitial-interval 1;\n\
             request subnet-mask, broadcast-address, routers, domain-name-servers, host-name,\n\
             rfc3442-classless-static-routes, interface-mtu, dhcp6.name-servers;\n",
        )
        .unwrap();
        Dhclient { dir }
    }

    /// `dhclient [-6] -1`: one attempt. Returns whether it got a lease.
    async fn run(&self, host: &Netns, v6: bool) -> bool {
        let dir = self.dir.display().to_string();
        let fam = if v6 { "6" } else { "4" };
        let args = [
            "dhclient".to_owned(),
            format!("-{fam}"),
            "-1".into(),
            "-v".into(),
            "-cf".into(),
            format!("{dir}/dhclient.conf"),
            "-lf".into(),
            format!("{dir}/leases{fam}"),
            "-pf".into(),
            format!("{dir}/pid{fam}"),
            "-sf".into(),
            format!("{dir}/script"),
            "eth0".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = host.output(&argv).await;
        std::fs::write(
            self.dir.join(format!("dhclient{fam}.log")),
            [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
        )
        .unwrap();
        out.status.success()
    }

    /// Stops the backgrounded dhclient (no release), so a later run starts from its lease file.
    async fn stop(&self, v6: bool) {
        let fam = if v6 { "6" } else { "4" };
        let pid = self.dir.join(format!("pid{fam}"));
        if let Ok(pid) = std::fs::read_to_string(&pid) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain kill(2) of the dhclient we started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The variables of the last `reason` event (BOUND, REBOOT, BOUND6...).
    fn event(&self, reason: &str) -> Option<HashMap<String, String>> {
        let text = std::fs::read_to_string(self.dir.join(format!("{reason}.env"))).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn forget(&self, reason: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{reason}.env")));
    }

    fn log(&self, fam: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("dhclient{fam}.log"))).unwrap_or_default()
    }
}

fn status_of(services: &Services, path: &[&str]) -> Value {
    let mut v = services.status();
    for p in path {
        v = v[*p].clone();
    }
    v
}

// ---------------------------------------------------------------------------
// DHCPv4

#[test]
fn dhcpv4_static_leases_sighup_and_restart() {
    if !root_or_skip("dhcpv4_static_leases_sighup_and_restart") {
        return;
    }
    let t0 = Instant::now();
    let router = Netns::new("dhcp4-r");
    router_ge2(&router);
    let host_a = tenant_host(&router, "dhcp4-a", "pa", MAC_A);
    let host_u = tenant_host(&router, "dhcp4-u", "pu", MAC_UNKNOWN);
    let host_c = tenant_host(&router, "dhcp4-c", "pc", MAC_C);
    let dir = workdir();
    let opts = options(dir.path());
    let base = dir.path().to_path_buf();
    let (router, host_a, host_u, host_c) = (
        Arc::new(router),
        Arc::new(host_a),
        Arc::new(host_u),
        Arc::new(host_c),
    );
    let r = router.clone();
    in_netns(&router.clone(), move || async move {
        let _keep = r;
        let mut lab = Lab {
            allocations: vec![
                alloc(MAC_A, "192.168.0.10", None, "vm-a.local", "dev-a"),
                alloc(MAC_B, "192.168.0.11", None, "vm-b", "dev-b"),
            ],
            ..Lab::default()
        };
        let mut services = Services::new(opts.clone());
        services.apply(&lab.config()).await.expect("apply");
        let pid = services.dnsmasq_pid("ge2").expect("dnsmasq runs for ge2");
        // A second push right after the start: dnsmasq is reloaded, never killed by the SIGHUP.
        lab.allocations[1] = alloc(MAC_B, "192.168.0.11", None, "vm-b2", "dev-b");
        services.apply(&lab.config()).await.expect("apply at once");
        assert!(services.dnsmasq_pid("ge0").is_none() && services.dnsmasq_pid("ge1").is_none());

        // A known MAC gets its lease with every option; an unknown MAC gets nothing.
        let a = Dhclient::new(&base, "a");
        let u = Dhclient::new(&base, "u");
        let (got_a, got_u) = tokio::join!(a.run(&host_a, false), u.run(&host_u, false));
        assert!(got_a, "host A got no lease: {}", a.log("4"));
        assert!(!got_u, "the unknown MAC got a lease: {}", u.log("4"));
        assert!(u.event("BOUND").is_none());
        let bound = a.event("BOUND").expect("BOUND event");
        assert_eq!(bound["new_ip_address"], "192.168.0.10");
        assert_eq!(bound["new_subnet_mask"], "255.255.255.0");
        assert_eq!(bound["new_host_name"], "vm-a");
        assert_eq!(bound["new_domain_name_servers"], "192.0.2.53");
        assert_eq!(bound["new_routers"], "192.168.0.1");
        assert_eq!(bound["new_interface_mtu"], "1450");
        // 10.50.0.0/16 via 192.168.0.254, then the default via the gateway (RFC 3442).
        assert_eq!(
            bound["new_rfc3442_classless_static_routes"],
            "16 10 50 192 168 0 254 0 192 168 0 1"
        );
        println!(
            "[{:?}] DHCPv4 lease and no lease for the unknown MAC",
            t0.elapsed()
        );

        // Change one allocation (B moves) and add C: SIGHUP, same pid.
        lab.allocations = vec![
            alloc(MAC_A, "192.168.0.10", None, "vm-a.local", "dev-a"),
            alloc(MAC_B, "192.168.0.12", None, "vm-b", "dev-b"),
            alloc(MAC_C, "192.168.0.13", None, "vm-c", "dev-c"),
        ];
        services.apply(&lab.config()).await.expect("apply 2");
        assert_eq!(
            services.dnsmasq_pid("ge2"),
            Some(pid),
            "dnsmasq was restarted"
        );
        let st = status_of(&services, &["dnsmasq", "ge2"]);
        assert!(st["last_reload"].is_string(), "{st}");
        assert_eq!(st["restarts"], 0);
        assert_eq!(st["starts"], 1);
        // Give dnsmasq a moment to process the signal before C asks.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = Dhclient::new(&base, "c");
        assert!(
            c.run(&host_c, false).await,
            "C got no lease: {}",
            c.log("4")
        );
        assert_eq!(c.event("BOUND").unwrap()["new_ip_address"], "192.168.0.13");

        // A's existing lease stays valid: restarting its client from the lease file confirms
        // it with a REQUEST (INIT-REBOOT) that dnsmasq ACKs.
        a.stop(false).await;
        assert!(
            a.run(&host_a, false).await,
            "A's renewal failed: {}",
            a.log("4")
        );
        let reboot = a
            .event("REBOOT")
            .unwrap_or_else(|| panic!("no REBOOT: {}", a.log("4")));
        assert_eq!(reboot["new_ip_address"], "192.168.0.10");
        let leases =
            std::fs::read_to_string(opts.state_dir.join("dnsmasq/ge2.leases")).unwrap_or_default();
        assert!(
            leases.contains(MAC_A) && leases.contains("192.168.0.10"),
            "{leases}"
        );
        assert!(!leases.contains(MAC_UNKNOWN), "{leases}");
        assert_eq!(services.dnsmasq_pid("ge2"), Some(pid));
        println!(
            "[{:?}] allocation change by SIGHUP, lease confirmed",
            t0.elapsed()
        );

        // An identical push touches nothing.
        let reload = status_of(&services, &["dnsmasq", "ge2", "last_reload"]);
        services.apply(&lab.config()).await.unwrap();
        assert_eq!(
            status_of(&services, &["dnsmasq", "ge2", "last_reload"]),
            reload
        );

        // Kill dnsmasq: back within 5 s, and a new request is answered.
        let killed = Instant::now();
        // SAFETY: kill(2) of the dnsmasq we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for("dnsmasq to come back", Duration::from_secs(5), || {
            let back = services.dnsmasq_pid("ge2").is_some_and(|p| p != pid);
            async move { back }
        })
        .await;
        println!("dnsmasq back after {:?}", killed.elapsed());
        let st = status_of(&services, &["dnsmasq", "ge2"]);
        assert_eq!(st["restarts"], 1, "{st}");
        assert_eq!(st["running"], true, "{st}");
        assert!(
            st["last_exit"].as_str().unwrap().contains("SIGKILL"),
            "{st}"
        );
        c.stop(false).await;
        let _ = std::fs::remove_file(base.join("c/leases4"));
        c.forget("BOUND");
        assert!(
            c.run(&host_c, false).await,
            "no lease after the restart: {}",
            c.log("4")
        );
        assert_eq!(c.event("BOUND").unwrap()["new_ip_address"], "192.168.0.13");
        println!("[{:?}] dnsmasq restarted and serving", t0.elapsed());

        // Removing the network stops its dnsmasq.
        lab.internal = false;
        services.apply(&lab.config()).await.unwrap();
        assert!(services.dnsmasq_pid("ge2").is_none());
        assert_eq!(services.status()["dnsmasq"], json!({}));
        // SAFETY: signal 0 only checks the pid.
        let new_pid = st["pid"].as_u64().unwrap() as i32;
        assert_ne!(unsafe { libc::kill(new_pid, 0) }, 0, "dnsmasq still runs");
        services.shutdown().await;
    });
}

#[test]
fn a_dnsmasq_left_by_a_crashed_agent_is_replaced() {
    if !root_or_skip("a_dnsmasq_left_by_a_crashed_agent_is_replaced") {
        return;
    }
    let router = Arc::new(Netns::new("stale-r"));
    router_ge2(&router);
    let host = Arc::new(tenant_host(&router, "stale-a", "pa", MAC_A));
    let dir = workdir();
    let opts = options(dir.path());
    let base = dir.path().to_path_buf();
    let r = router.clone();
    in_netns(&router.clone(), move || async move {
        let lab = Lab::default();
        // A first agent writes the files, then goes away; its dnsmasq is started again by
        // hand, as if the agent had crashed and left it running.
        let mut first = Services::new(opts.clone());
        first.apply(&lab.config()).await.expect("apply");
        first.shutdown().await;
        let conf = opts.run_dir.join("dnsmasq/ge2/dnsmasq.conf");
        let mut stale = tokio::process::Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the leftover dnsmasq");
        let pid_file = opts.run_dir.join("dnsmasq/ge2/dnsmasq.pid");
        wait_for("the leftover's pid file", Duration::from_secs(5), || {
            let ok = std::fs::read_to_string(&pid_file)
                .is_ok_and(|p| p.trim() == stale.id().unwrap().to_string());
            async move { ok }
        })
        .await;

        // The next agent stops it when it starts, and serves with its own.
        let mut services = Services::new(opts);
        assert_eq!(services.reap_stale().await, 1);
        services.apply(&lab.config()).await.expect("apply");
        tokio::time::timeout(Duration::from_secs(5), stale.wait())
            .await
            .expect("the leftover dnsmasq was not stopped")
            .unwrap();
        let a = Dhclient::new(&base, "a");
        assert!(a.run(&host, false).await, "no lease: {}", a.log("4"));
        assert_eq!(a.event("BOUND").unwrap()["new_ip_address"], "192.168.0.10");
        assert_eq!(status_of(&services, &["dnsmasq", "ge2", "running"]), true);
        services.shutdown().await;
        drop(r);
    });
}

// ---------------------------------------------------------------------------
// IPv6: RA flags, SLAAC, DHCPv6

/// `rdisc6 -1 eth0` in `host`: (M flag, O flag, prefix autonomous).
async fn ra_flags(host: &Netns) -> (bool, bool, bool) {
    ra(host).await.0
}

/// `rdisc6 -1 eth0` in `host`: the flags as above, and the whole output.
async fn ra(host: &Netns) -> ((bool, bool, bool), String) {
    let out = host.output(&["rdisc6", "-1", "-w", "2000", "eth0"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rdisc6: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flag = |label: &str| {
        text.lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("rdisc6 output lacks {label:?}: {text}"))
            .trim_end()
            .ends_with("Yes")
    };
    let flags = (
        flag("Stateful address conf."),
        flag("Stateful other conf."),
        flag("Autonomous address conf."),
    );
    (flags, text)
}

async fn global_v6(host: &Netns) -> Vec<String> {
    let out = host
        .output(&[
            "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global",
        ])
        .await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["local"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ipv6_slaac_and_dhcpv6_by_mode() {
    if !root_or_skip("ipv6_slaac_and_dhcpv6_by_mode") {
        return;
    }
    let t0 = Instant::now();
    let router = Arc::new(Netns::new("v6-r"));
    router_ge2(&router);
    router.sysctl("net.ipv6.conf.all.forwarding", "1");
    let host_a = Arc::new(tenant_host(&router, "v6-a", "pa", MAC_A));
    let host_b = Arc::new(tenant_host(&router, "v6-b", "pb", MAC_B));
    for h in [&host_a, &host_b] {
        h.sysctl("net.ipv6.conf.eth0.accept_ra", "1");
        h.sysctl("net.ipv6.conf.eth0.autoconf", "1");
        h.ip("link set eth0 down");
    }
    let dir = workdir();
    let opts = options(dir.path());
    let base = dir.path().to_path_buf();
    let r = router.clone();
    in_netns(&router.clone(), move || async move {
        let _keep = r;
        let mut services = Services::new(opts);

        // ra (+ dhcp_enabled): SLAAC, O flag, no M flag; B forms its EUI-64 address.
        let mut lab = Lab {
            v6_service: "ra",
            v6_dhcp: true,
            allocations: vec![
                alloc(
                    MAC_A,
                    "192.168.0.10",
                    Some("2001:db8:100::10"),
                    "vm-a",
                    "dev-a",
                ),
                alloc(
                    MAC_B,
                    "192.168.0.11",
                    Some("2001:db8:100::11"),
                    "vm-b",
                    "dev-b",
                ),
            ],
            ..Lab::default()
        };
        services.apply(&lab.config()).await.expect("apply ra");
        host_b.ip("link set eth0 up");
        let (flags, text) = ra(&host_b).await;
        assert_eq!(flags, (false, true, true), "ra mode flags: {text}");
        assert!(
            text.contains("Recursive DNS server     : 2001:db8:53::53"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("MTU") && l.contains("1450")),
            "{text}"
        );
        let slaac = "2001:db8:100:0:f816:3eff:feaa:bb02";
        let hb = host_b.clone();
        wait_for("B's SLAAC address", Duration::from_secs(10), || {
            let hb = hb.clone();
            async move { global_v6(&hb).await.iter().any(|a| a == slaac) }
        })
        .await;
        println!("[{:?}] SLAAC address {slaac}", t0.elapsed());

        // dhcp: M flag, prefix not autonomous; A gets its allocation by DHCPv6.
        lab.v6_service = "dhcp";
        services.apply(&lab.config()).await.expect("apply dhcp");
        host_a.ip("link set eth0 up");
        assert_eq!(
            ra_flags(&host_a).await,
            (true, true, false),
            "dhcp mode flags"
        );
        let a = Dhclient::new(&base, "a6");
        assert!(
            a.run(&host_a, true).await,
            "no DHCPv6 lease: {}",
            a.log("6")
        );
        let bound = a
            .event("BOUND6")
            .unwrap_or_else(|| panic!("no BOUND6: {}", a.log("6")));
        assert_eq!(bound["new_ip6_address"], "2001:db8:100::10");
        assert_eq!(bound["new_dhcp6_name_servers"], "2001:db8:53::53");
        // No SLAAC address formed from a non-autonomous prefix.
        assert!(
            !global_v6(&host_a)
                .await
                .iter()
                .any(|a| a.contains("f816:3eff")),
            "A formed a SLAAC address in dhcp mode"
        );
        println!("[{:?}] DHCPv6 lease 2001:db8:100::10", t0.elapsed());

        // static + dhcp_enabled=false (Astara's slaac subnets): RA only, SLAAC.
        lab.v6_service = "static";
        lab.v6_dhcp = false;
        services.apply(&lab.config()).await.expect("apply static");
        assert_eq!(
            ra_flags(&host_b).await,
            (false, false, true),
            "static/slaac flags"
        );
        services.shutdown().await;
    });
}

// ---------------------------------------------------------------------------
// BGP

const PEER_CONF: &str = r#"
log stderr all;
router id 172.16.77.1;
protocol device { scan time 2; }
protocol direct { ipv6; }
protocol bgp upstream {
  local 2001:db8:77::1 as 64512;
  neighbor 2001:db8:77::2 as 64512;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  ipv6 { import all; export none; };
}
"#;

async fn peer_routes(ext: &Netns, socket: &Path) -> String {
    let out = ext
        .output(&[
            "birdc",
            "-s",
            &socket.display().to_string(),
            "show",
            "route",
            "protocol",
            "upstream",
        ])
        .await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bgp_announces_withdraws_and_survives_a_kill() {
    if !root_or_skip("bgp_announces_withdraws_and_survives_a_kill") {
        return;
    }
    let t0 = Instant::now();
    let router = Arc::new(Netns::new("bgp-r"));
    let ext = Arc::new(Netns::new("bgp-x"));
    let tenant = Arc::new(Netns::new("bgp-t"));
    veth(
        &router,
        "ge1",
        "02:a0:00:00:00:01",
        &ext,
        "eth0",
        "02:e0:00:00:00:01",
    );
    veth(&router, "ge2", "02:a0:00:00:00:02", &tenant, "eth0", MAC_A);
    router.ip("addr add 172.16.77.2/24 dev ge1");
    router.ip("addr add 2001:db8:77::2/64 dev ge1 nodad");
    router.ip("addr add 192.168.0.1/24 dev ge2");
    router.ip("addr add 2001:db8:100::1/64 dev ge2 nodad");
    router.ip("addr add fd00:1::1/64 dev ge2 nodad");
    ext.ip("addr add 172.16.77.1/24 dev eth0");
    ext.ip("addr add 2001:db8:77::1/64 dev eth0 nodad");

    let dir = workdir();
    let peer_conf = dir.path().join("peer.conf");
    let peer_sock = dir.path().join("peer.ctl");
    std::fs::write(&peer_conf, PEER_CONF).unwrap();
    let mut peer = Command::new("ip")
        .args(["netns", "exec", &ext.name, "bird", "-f", "-c"])
        .arg(&peer_conf)
        .arg("-s")
        .arg(&peer_sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the peer's bird");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !peer_sock.exists() {
        assert!(peer.try_wait().unwrap().is_none(), "the peer's bird exited");
        assert!(Instant::now() < deadline, "the peer's bird has no socket");
        std::thread::sleep(Duration::from_millis(50));
    }

    let opts = options(dir.path());
    let r = router.clone();
    let x = ext.clone();
    let sock = peer_sock.clone();
    in_netns(&router.clone(), move || async move {
        let _keep = r;
        let mut lab = Lab {
            extra_internal_subnet: Some(json!({
                "router": "fd00:1::1/64",
                "subnet": {"id": "s-ula", "cidr": "fd00:1::/64", "gateway_ip": "fd00:1::1",
                           "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}
            })),
            ..Lab::default()
        };
        let mut services = Services::new(opts);
        services.apply(&lab.config()).await.expect("apply");
        let pid = services.bird_pid().expect("bird runs");

        let (x2, s2) = (x.clone(), sock.clone());
        wait_for(
            "the peer to learn 2001:db8:100::/64",
            Duration::from_secs(20),
            || {
                let (x2, s2) = (x2.clone(), s2.clone());
                async move { peer_routes(&x2, &s2).await.contains("2001:db8:100::/64") }
            },
        )
        .await;
        let routes = peer_routes(&x, &sock).await;
        assert!(
            !routes.contains("fd00:1::/64"),
            "a ULA prefix was announced: {routes}"
        );
        assert!(
            !routes.contains("2001:db8:77::/64"),
            "the external prefix was announced: {routes}"
        );
        println!("[{:?}] peer learned 2001:db8:100::/64", t0.elapsed());

        // Kill bird: back within 5 s and the prefix is announced again, by a new session (the
        // route's timestamp on the peer changes).
        let route_line = |routes: &str| {
            routes
                .lines()
                .find(|l| l.contains("2001:db8:100::/64"))
                .map(str::to_owned)
        };
        let before = route_line(&peer_routes(&x, &sock).await).expect("route");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let killed = Instant::now();
        // SAFETY: kill(2) of the bird we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for("bird to come back", Duration::from_secs(5), || {
            let back = services.bird_pid().is_some_and(|p| p != pid);
            async move { back }
        })
        .await;
        println!("bird back after {:?}", killed.elapsed());
        let st = status_of(&services, &["bird"]);
        assert_eq!(st["restarts"], 1, "{st}");
        let pid = services.bird_pid().unwrap();
        let (x2, s2) = (x.clone(), sock.clone());
        wait_for(
            "the peer to learn the prefix again",
            Duration::from_secs(20),
            || {
                let (x2, s2) = (x2.clone(), s2.clone());
                let before = before.clone();
                async move { route_line(&peer_routes(&x2, &s2).await).is_some_and(|l| l != before) }
            },
        )
        .await;
        println!("[{:?}] re-announced after the restart", t0.elapsed());

        // Remove the internal network: withdrawn by reconfiguration, same bird.
        lab.internal = false;
        services
            .apply(&lab.config())
            .await
            .expect("apply without ge2");
        let (x2, s2) = (x.clone(), sock.clone());
        wait_for(
            "the peer to lose 2001:db8:100::/64",
            Duration::from_secs(20),
            || {
                let (x2, s2) = (x2.clone(), s2.clone());
                async move { !peer_routes(&x2, &s2).await.contains("2001:db8:100::/64") }
            },
        )
        .await;
        assert_eq!(
            services.bird_pid(),
            Some(pid),
            "bird was restarted, not reconfigured"
        );
        let st = status_of(&services, &["bird"]);
        assert!(st["last_reload"].is_string(), "{st}");
        // Our side's session is still up.
        let ours = x
            .output(&[
                "birdc",
                "-s",
                &sock.display().to_string(),
                "show",
                "protocols",
                "upstream",
            ])
            .await;
        assert!(String::from_utf8_lossy(&ours.stdout).contains("Established"));
        println!("[{:?}] withdrawn by reconfiguration", t0.elapsed());

        services.shutdown().await;
        assert!(services.bird_pid().is_none());
    });
    let _ = peer.kill();
    let _ = peer.wait();
    drop((ext, tenant));
}

// ---------------------------------------------------------------------------
// Metadata

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// The orchestrator's metadata endpoint: a real HTTP server on `[::]:port` in namespace `ns`,
/// recording every request. `/latest/meta-data/instance-id` answers the X-Instance-ID it got,
/// `/slow` answers after 10 s, anything else echoes the body as JSON.
struct Orchestrator {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Orchestrator {
    fn start(ns: &Netns, port: u16) -> Orchestrator {
        use http_body_util::{BodyExt, Full};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Bound inside the namespace: the socket, and every connection it accepts, stay there
        // whichever thread serves them.
        let listener = akanda_tests::in_netns(ns, || {
            std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
                .expect("bind the orchestrator")
        });
        listener.set_nonblocking(true).unwrap();
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let seen = seen2.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(
                                move |req: hyper::Request<hyper::body::Incoming>| {
                                    let seen = seen.clone();
                                    async move {
                                        let (parts, body) = req.into_parts();
                                        let body = body
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes().to_vec())
                                            .unwrap_or_default();
                                        let headers: HashMap<String, String> = parts
                                            .headers
                                            .iter()
                                            .map(|(k, v)| {
                                                (
                                                    k.as_str().to_owned(),
                                                    v.to_str().unwrap_or("").to_owned(),
                                                )
                                            })
                                            .collect();
                                        let instance = headers
                                            .get("x-instance-id")
                                            .cloned()
                                            .unwrap_or_default();
                                        seen.lock().unwrap().push(Seen {
                                            method: parts.method.to_string(),
                                            uri: parts.uri.to_string(),
                                            headers,
                                            body: body.clone(),
                                        });
                                        let path = parts.uri.path().to_owned();
                                        let resp = if path == "/latest/meta-data/instance-id" {
                                            hyper::Response::builder()
                                                .header("content-type", "text/plain")
                                                .body(Full::new(bytes::Bytes::from(instance)))
                                        } else if path == "/slow" {
                                            tokio::time::sleep(Duration::from_secs(10)).await;
                                            hyper::Response::builder()
                                                .body(Full::new(bytes::Bytes::new()))
                                        } else {
                                            hyper::Response::builder()
                                                .status(201)
                                                .header("content-type", "application/json")
                                                .body(Full::new(bytes::Bytes::from(
                                                    json!({"echo": String::from_utf8_lossy(&body)})
                                                        .to_string(),
                                                )))
                                        };
                                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                                    }
                                },
                            );
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Orchestrator {
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `curl` in `host`: (status, content type, body).
async fn curl(host: &Netns, args: &[&str]) -> (u16, String, String) {
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "15",
        "-w",
        "\n%{http_code} %{content_type}",
    ];
    argv.extend_from_slice(args);
    let out = host.output(&argv).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap_or(0), ctype.to_owned(), body.to_owned())
}

#[test]
fn metadata_proxy_headers_methods_and_errors() {
    if !root_or_skip("metadata_proxy_headers_methods_and_errors") {
        return;
    }
    let t0 = Instant::now();
    let router = Arc::new(Netns::new("md-r"));
    let orch = Arc::new(Netns::new("md-o"));
    router_ge2(&router);
    let host = Arc::new(tenant_host(&router, "md-a", "pa", MAC_A));
    veth(
        &router,
        "ge0",
        "02:a0:00:00:00:00",
        &orch,
        "eth0",
        "02:0c:00:00:00:01",
    );
    router.ip("addr add fdca:3ba5:a17a:acda::5/64 dev ge0 nodad");
    router.ip("addr add 10.99.0.5/24 dev ge0");
    orch.ip("addr add fdca:3ba5:a17a:acda::1/64 dev eth0 nodad");
    orch.ip("addr add 10.99.0.1/24 dev eth0");
    host.ip("addr add 192.168.0.10/24 dev eth0");
    host.ip("addr add 192.168.0.99/24 dev eth0");
    host.ip("route add default via 192.168.0.1");
    // The firewall's job, done by hand here: 169.254.169.254:80 arriving on ge2 → 9602.
    router.exec(&[
        "nft",
        "add table ip aksv; \
         add chain ip aksv pre { type nat hook prerouting priority dstnat; }; \
         add rule ip aksv pre iifname ge2 ip daddr 169.254.169.254 tcp dport 80 redirect to :9602",
    ]);
    let mut server = Orchestrator::start(&orch, 9697);

    let dir = workdir();
    let opts = ServicesOptions {
        metadata_timeout: Duration::from_secs(2),
        ..options(dir.path())
    };
    let r = router.clone();
    let h = host.clone();
    let seen = server.seen.clone();
    let mut server_stop = Some(move || server.stop());
    in_netns(&router.clone(), move || async move {
        let _keep = r;
        let take = || std::mem::take(&mut *seen.lock().unwrap());
        let mut lab = Lab {
            allocations: vec![
                alloc(
                    MAC_A,
                    "192.168.0.10",
                    Some("2001:db8:100::10"),
                    "vm-a",
                    "dev-a",
                ),
                alloc(MAC_B, "192.168.0.11", None, "vm-b", "dev-b"),
            ],
            ..Lab::default()
        };
        let mut services = Services::new(opts);
        services.apply(&lab.config()).await.expect("apply");
        let md = status_of(&services, &["metadata", "ge2"]);
        assert_eq!(md["port"], 9602, "{md}");
        assert!(services.status()["metadata"]["ge0"].is_null());

        // GET instance-id, through the redirect, with a spoofed identity header.
        let (code, ctype, body) = curl(
            &h,
            &[
                "-H",
                "X-Instance-ID: evil",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .await;
        assert_eq!(
            (code, ctype.as_str(), body.as_str()),
            (200, "text/plain", "dev-a")
        );
        let got = take();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = &got[0];
        assert_eq!(req.method, "GET");
        assert_eq!(req.uri, "/latest/meta-data/instance-id");
        assert_eq!(req.headers["x-forwarded-for"], "192.168.0.10");
        assert_eq!(req.headers["x-instance-id"], "dev-a");
        assert_eq!(req.headers["x-tenant-id"], "tenant-e5f6");
        assert_eq!(req.headers["x-neutron-network-id"], "net-int");
        assert_eq!(req.headers["x-quantum-network-id"], "net-int");
        assert_eq!(req.headers["host"], "[fdca:3ba5:a17a:acda::1]:9697");
        println!("[{:?}] GET instance-id via the redirect", t0.elapsed());

        // POST with a query and a body: method, query, body, status and type preserved.
        let (code, ctype, body) = curl(
            &h,
            &[
                "-X",
                "POST",
                "--data-binary",
                "secret-password",
                "-H",
                "Content-Type: text/plain",
                "http://169.254.169.254/openstack/2013-04-04/password?x=1&y=2",
            ],
        )
        .await;
        assert_eq!((code, ctype.as_str()), (201, "application/json"));
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["echo"],
            "secret-password"
        );
        let got = take();
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].uri, "/openstack/2013-04-04/password?x=1&y=2");
        assert_eq!(got[0].body, b"secret-password");
        assert_eq!(got[0].headers["content-type"], "text/plain");

        // An address with no allocation: 404, nothing forwarded.
        let (code, _, _) = curl(
            &h,
            &[
                "--interface",
                "192.168.0.99",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .await;
        assert_eq!(code, 404);
        assert!(take().is_empty());

        // The allocation moves to .99: the map follows without rebinding.
        lab.allocations[0] = alloc(MAC_A, "192.168.0.99", None, "vm-a", "dev-a");
        services.apply(&lab.config()).await.unwrap();
        let (code, _, body) = curl(
            &h,
            &[
                "--interface",
                "192.168.0.99",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .await;
        assert_eq!((code, body.as_str()), (200, "dev-a"));
        assert_eq!(take()[0].headers["x-forwarded-for"], "192.168.0.99");
        let (code, _, _) = curl(&h, &["http://169.254.169.254/latest/meta-data/instance-id"]).await;
        assert_eq!(code, 404, ".10 no longer belongs to an instance");

        // An IPv4 orchestrator address: not bracketed.
        lab.orchestrator = ("10.99.0.1", 9697);
        services.apply(&lab.config()).await.unwrap();
        let (code, _, body) = curl(
            &h,
            &[
                "--interface",
                "192.168.0.99",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .await;
        assert_eq!((code, body.as_str()), (200, "dev-a"));
        assert_eq!(take()[0].headers["host"], "10.99.0.1:9697");

        // An upstream that does not answer in time: 504 after the 2 s timeout.
        let started = Instant::now();
        let (code, _, _) = curl(
            &h,
            &["--interface", "192.168.0.99", "http://169.254.169.254/slow"],
        )
        .await;
        assert_eq!(code, 504);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // The orchestrator down: 502.
        (server_stop.take().unwrap())();
        let (code, _, _) = curl(
            &h,
            &[
                "--interface",
                "192.168.0.99",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .await;
        assert_eq!(code, 502);
        let md = status_of(&services, &["metadata", "ge2"]);
        assert!(md["requests"].as_u64().unwrap() >= 7, "{md}");
        assert_eq!(md["unknown_source"], 2, "{md}");
        println!("[{:?}] 404, 502, 504 and the v4 upstream", t0.elapsed());

        // Only ge2's traffic reaches ge2's listener: a connection to port 9602 arriving on
        // ge0 (from the orchestrator's namespace) is refused.
        lab.internal = false;
        services.apply(&lab.config()).await.unwrap();
        assert_eq!(services.status()["metadata"], json!({}));
        let (code, _, _) = curl(&h, &["http://169.254.169.254/latest/meta-data/instance-id"]).await;
        assert_eq!(code, 0, "the listener of a removed network still answers");
        services.shutdown().await;
    });
    drop((host, orch));
}

#[test]
fn metadata_listener_only_accepts_its_own_nic() {
    if !root_or_skip("metadata_listener_only_accepts_its_own_nic") {
        return;
    }
    let router = Arc::new(Netns::new("mdb-r"));
    let other = Arc::new(Netns::new("mdb-o"));
    router_ge2(&router);
    let host = Arc::new(tenant_host(&router, "mdb-a", "pa", MAC_A));
    host.ip("addr add 192.168.0.10/24 dev eth0");
    veth(
        &router,
        "ge0",
        "02:a0:00:00:00:00",
        &other,
        "eth0",
        "02:0c:00:00:00:01",
    );
    router.ip("addr add 10.99.0.5/24 dev ge0");
    other.ip("addr add 10.99.0.10/24 dev eth0");
    let dir = workdir();
    let opts = options(dir.path());
    let (r, h, o) = (router.clone(), host.clone(), other.clone());
    in_netns(&router.clone(), move || async move {
        let _keep = r;
        let mut services = Services::new(opts);
        services
            .apply(&Lab::default().config())
            .await
            .expect("apply");
        // From the tenant, straight to the port (no redirect needed): answered (502 here:
        // no orchestrator), so the listener is up.
        let (code, _, _) = curl(&h, &["http://192.168.0.1:9602/"]).await;
        assert_eq!(code, 502);
        // From another NIC, to an address of the router: refused (SO_BINDTODEVICE).
        let (code, _, _) = curl(&o, &["http://10.99.0.5:9602/"]).await;
        assert_eq!(code, 0, "the listener accepted a connection from ge0");
        services.shutdown().await;
    });
    drop((host, other));
}

// ---------------------------------------------------------------------------
// Gratuitous ARP / unsolicited NA

fn neighbour(ns: &Netns, addr: &str) -> Option<String> {
    let out = ns.ip("-j neigh show dev eth0");
    let v: Value = serde_json::from_str(&out).unwrap_or(json!([]));
    v.as_array()?
        .iter()
        .find(|n| n["dst"] == addr)
        .and_then(|n| n["lladdr"].as_str().map(str::to_owned))
}

#[test]
fn announce_teaches_the_external_neighbour() {
    if !root_or_skip("announce_teaches_the_external_neighbour") {
        return;
    }
    let router = Netns::new("garp-r");
    let ext = Netns::new("garp-x");
    let ge1_mac = "02:a0:00:00:00:01";
    veth(&router, "ge1", ge1_mac, &ext, "eth0", "02:e0:00:00:00:01");
    router.ip("addr add 172.16.77.2/24 dev ge1");
    router.ip("addr add 2001:db8:77::2/64 dev ge1 nodad");
    ext.ip("addr add 172.16.77.1/24 dev eth0");
    ext.ip("addr add 2001:db8:77::1/64 dev eth0 nodad");
    // Learn unknown addresses from announcements; update existing entries at once.
    ext.sysctl("net.ipv4.conf.eth0.arp_accept", "1");
    // (Linux learns untracked NAs only as a router: the gateway forwards anyway.)
    ext.sysctl("net.ipv6.conf.all.forwarding", "1");
    ext.sysctl("net.ipv6.conf.eth0.accept_untracked_na", "1");
    ext.sysctl("net.ipv4.neigh.eth0.locktime", "0");
    // Stale entries with a wrong MAC, as after a floating IP moved.
    ext.ip("neigh add 172.16.77.51 lladdr 02:00:00:00:00:99 dev eth0 nud stale");
    ext.ip("neigh add 2001:db8:77::51 lladdr 02:00:00:00:00:99 dev eth0 nud stale");
    // The new addresses (a floating IP arrives).
    for a in [
        "172.16.77.50/32",
        "172.16.77.51/32",
        "2001:db8:77::50/128",
        "2001:db8:77::51/128",
    ] {
        router.ip(&format!("addr add {a} dev ge1 nodad"));
    }
    for a in ["172.16.77.50", "2001:db8:77::50"] {
        assert_eq!(
            neighbour(&ext, a),
            None,
            "{a} known before the announcement"
        );
    }
    let addrs: Vec<IpAddr> = [
        "172.16.77.50",
        "172.16.77.51",
        "2001:db8:77::50",
        "2001:db8:77::51",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    in_netns(&router, move || async move {
        // Nothing is started: announcing needs no daemon, only the packet socket.
        let mut services = Services::new(ServicesOptions::default());
        assert!(services.announce("nope0", &addrs).is_err());
        // The socket is kept between announcements: a second one goes out through it.
        services.announce("ge1", &addrs[..2]).expect("announce");
        services.announce("ge1", &addrs[2..]).expect("announce");
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    for a in [
        "172.16.77.50",
        "172.16.77.51",
        "2001:db8:77::50",
        "2001:db8:77::51",
    ] {
        loop {
            let got = neighbour(&ext, a);
            if got.as_deref() == Some(ge1_mac) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{a}: {got:?}\n{}",
                ext.ip("neigh show dev eth0")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// Hostname

#[test]
fn hostname_in_a_private_uts_namespace() {
    if !root_or_skip("hostname_in_a_private_uts_namespace") {
        return;
    }
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let dir = workdir();
    let base = dir.path().to_path_buf();
    let router = Netns::new("host-r");
    akanda_tests::in_netns(&router, move || {
        // This thread's own UTS namespace: the host's name stays as it is.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).expect("unshare UTS");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let opts = ServicesOptions {
                set_hostname: true,
                hostname_file: Some(base.join("hostname")),
                hosts_file: Some(base.join("hosts")),
                ..options(&base)
            };
            let mut services = Services::new(opts);
            let lab = Lab {
                internal: false,
                ..Lab::default()
            };
            services.apply(&lab.config()).await.expect("apply");
            assert_eq!(
                nix::unistd::gethostname().unwrap().to_str(),
                Some("ak-test-router")
            );
            assert_eq!(
                std::fs::read_to_string(base.join("hostname")).unwrap(),
                "ak-test-router\n"
            );
            let hosts = std::fs::read_to_string(base.join("hosts")).unwrap();
            assert!(
                hosts.contains("fdca:3ba5:a17a:acda::5\tak-test-router"),
                "{hosts}"
            );
            assert_eq!(services.status()["hostname"], "ak-test-router");
            services.shutdown().await;
        });
    });
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "the test changed the host's name"
    );
}
