//! `rug-lite serve`, the real binary, end to end on the rig (`../shared/openstack/bringup.sh`,
//! MODE=full): the scenarios of issue #11, driven through Neutron's API as the **demo** user,
//! with rug-lite hearing of them only through RabbitMQ (its periodic resync is set to an hour,
//! so only events and its startup resync can make it act).
//!
//! Nova's fake driver runs no guest: [`StandInCompute`] plays the compute host (see
//! `hypervisor_stand_in`), wiring each server's NICs to one bridge per Neutron network, where
//! a tenant VM and an upstream router (network namespaces) are plugged too. Everything else is
//! real: Keystone, Neutron, Nova, RabbitMQ, rug-lite, and the agent reading its config drive
//! and serving mutual TLS.
//!
//! Needs root and the rig: `OS_*` (admin, for rug-lite), `RUG_LITE_TEST_AMQP_URL`,
//! `RUG_LITE_TEST_DEMO_OPENRC` (the demo user's openrc file), `RUG_LITE_BIN` or the built
//! binary beside this test executable. `scripts/rig-test` sets them and runs this test alone:
//! a `serve` reconciles every router of the cloud, so it must not share the rig with tests
//! that drive their own reconciler.

use super::stand_in::StandInCompute;
use super::*;
use crate::appliance::AgentClient;
use crate::cloud::ApplianceTarget;
use crate::hypervisor_stand_in::{self as hv, Fabric, TestHost};
use crate::ownership;
use crate::tls::ClientIdentity;
use ipnet::IpNet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// The rig's variables, or None (skipped) when they are absent and not required.
fn rig_env() -> Option<(Credentials, Credentials, String)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let required = std::env::var_os("RUG_LITE_RIG_REQUIRED").is_some();
    let (Some(admin), Some(demo_rc), Some(amqp)) = (
        keystone::from_env(var),
        var("RUG_LITE_TEST_DEMO_OPENRC"),
        var("RUG_LITE_TEST_AMQP_URL"),
    ) else {
        assert!(
            !required,
            "RUG_LITE_RIG_REQUIRED is set but OS_AUTH_URL, RUG_LITE_TEST_DEMO_OPENRC or RUG_LITE_TEST_AMQP_URL is not"
        );
        eprintln!("skipped: the rig's variables are not set (see scripts/rig-test)");
        return None;
    };
    // `export KEY=value` lines, as the rig writes them.
    let text = std::fs::read_to_string(&demo_rc).expect("RUG_LITE_TEST_DEMO_OPENRC is readable");
    let vars: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect();
    let demo = keystone::from_env(|k| vars.get(k).cloned()).expect("a complete demo openrc");
    Some((admin, demo, amqp))
}

/// `$RUG_LITE_BIN`, else the `rug-lite` built beside this test executable.
fn rug_lite_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RUG_LITE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap();
    }
    let bin = dir.join("rug-lite");
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

/// A running `rug-lite serve`; its log is appended to one file across restarts. Drop kills it.
struct Serve {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn start(config: &Path, log: &Path) -> Serve {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // Only what rug-lite needs: the admin's OS_* (its cloud credentials) and no stray
        // RUG_LITE_* variable of the test's (rug-lite refuses unknown ones).
        let mut cmd = Command::new(rug_lite_bin());
        cmd.env_clear()
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k == "PATH"))
            .env("RUST_LOG", "info,lapin=warn")
            .env("NO_COLOR", "1")
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        Serve {
            child: Some(cmd.spawn().expect("spawn rug-lite serve")),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM, then its exit status and how long it took (bounded: 60 s).
    fn stop(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "rug-lite did not stop 60 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `rug-lite router <args> --json --config FILE`: its JSON, or None when it exits 1.
    fn cli(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new(rug_lite_bin())
            .arg("router")
            .args(args)
            .args(["--json", "--config"])
            .arg(&self.config)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH"))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("router … --json prints JSON"))
    }

    fn show(&self, router_id: &str) -> Option<Value> {
        self.cli(&["show", router_id])
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(150).collect();
            eprintln!("--- rug-lite log (last 150 lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The scenario's world: the clouds, rug-lite, the stand-in compute host and its fabric.
struct World {
    admin: Arc<HttpCloud>,
    demo: HttpCloud,
    /// The agents' API over mutual TLS, with a client certificate of the run's CA.
    agent: AgentClient,
    serve: Serve,
    compute: StandInCompute,
    fabric: Arc<Fabric>,
    mgmt: String,
    /// The project of the admin (rug-lite's servers and ports live there).
    admin_project: String,
    config: PathBuf,
    log: PathBuf,
    queue: String,
    _dir: tempfile::TempDir,
}

impl World {
    /// The operator's part (admin), then rug-lite started: a CA for rug-lite and the
    /// appliances; the management network (IPv6, static, no gateway, its low addresses left
    /// to hosts: rug-lite's is ::1, on the stand-in's management bridge, where rug-lite finds
    /// it); the stand-in compute host; `rug-lite serve` with its periodic resync set to an
    /// hour, heard from once its queue has a consumer. `settings` is appended to its TOML.
    /// None (skipped) without the rig or root.
    async fn set_up(name: &str, settings: &str) -> Option<World> {
        let (admin_creds, demo_creds, amqp_url) = rig_env()?;
        if !hv::require_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let tag = format!("{}-{}", std::process::id(), fastrand::u16(..));
        let (ca, ca_key) =
            akanda_pki::Ca::generate("rig serve CA", akanda_pki::Validity::days(1)).unwrap();
        let (ca_cert_path, ca_key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        akanda_pki::write_public(&ca_cert_path, ca.cert_pem().as_bytes()).unwrap();
        akanda_pki::write_private(&ca_key_path, ca_key.as_bytes()).unwrap();
        let test_ca = crate::tls::Ca::from_pem(ca.cert_pem(), &ca_key).unwrap();
        let (cert, key) = test_ca.issue_client().unwrap();
        let agent = AgentClient::mutual_tls(
            ClientIdentity::new(test_ca.ca_cert_pem(), &cert, &key).unwrap(),
            Duration::from_secs(5),
        );
        let plain = || AgentClient::plain_http(Duration::from_secs(5)).unwrap();
        let admin =
            Arc::new(HttpCloud::new(admin_creds, Duration::from_secs(30), plain(), None).unwrap());
        sweep_leftovers(&admin).await;
        let demo = HttpCloud::new(demo_creds, Duration::from_secs(30), plain(), None).unwrap();
        let network = admin
            .call(
                Service::Network,
                Method::POST,
                "/networks",
                &[],
                Some(&json!({"network": {"name": format!("rug-lite-serve-{name}-mgt-{tag}")}})),
            )
            .await
            .unwrap()
            .unwrap()["network"]
            .clone();
        let mgmt = network["id"].as_str().unwrap().to_string();
        let admin_project = network["project_id"].as_str().unwrap().to_string();
        let prefix = format!(
            "fdca:3ba6:{:x}:{:x}",
            fastrand::u16(1..),
            fastrand::u16(1..)
        );
        admin
            .call(
                Service::Network,
                Method::POST,
                "/subnets",
                &[],
                Some(&json!({"subnet": {"network_id": mgmt, "ip_version": 6,
                    "cidr": format!("{prefix}::/64"), "gateway_ip": null, "enable_dhcp": false,
                    "allocation_pools": [{"start": format!("{prefix}::100"),
                                          "end": format!("{prefix}::fff")}]}})),
            )
            .await
            .unwrap();
        let fabric = Fabric::new(format!("{prefix}::1/64").parse().unwrap());
        let compute = StandInCompute::start(Arc::clone(&admin), Arc::clone(&fabric), &mgmt);
        let queue = format!("rug-lite-{name}-{tag}");
        let config = dir.path().join("rug-lite.toml");
        std::fs::write(
            &config,
            format!(
                r#"[amqp]
url = "{amqp_url}"
queue = "{queue}"
[appliance]
image = "fake-image"
flavor = "m1.tiny"
management_network = "{mgmt}"
boot_timeout = "300s"
[tls]
ca_cert = "{}"
ca_key = "{}"
[admin]
socket = "{}"
{settings}
"#,
                ca_cert_path.display(),
                ca_key_path.display(),
                dir.path().join("admin.sock").display()
            ),
        )
        .unwrap();
        // rig-test keeps the log with the rig's ($BASE/log).
        let log = std::env::var_os("RUG_LITE_TEST_SERVE_LOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("rug-lite.log"));
        let serve = Serve::start(&config, &log);
        let w = World {
            admin,
            demo,
            agent,
            serve,
            compute,
            fabric,
            mgmt,
            admin_project,
            config,
            log,
            queue,
            _dir: dir,
        };
        w.wait_consuming(Duration::from_secs(60)).await;
        Some(w)
    }

    /// Waits until rug-lite's queue has a consumer: events are heard from then on.
    async fn wait_consuming(&self, bound: Duration) -> Duration {
        let started = Instant::now();
        while queue_consumers(&self.queue) != Some(1) {
            assert!(
                started.elapsed() < bound,
                "rug-lite's queue {} has no consumer after {bound:?}:\n{}",
                self.queue,
                self.serve.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        started.elapsed()
    }

    /// Restarts `rug-lite serve` (after [`Serve::stop`]) with the same settings and log.
    fn restart(&mut self) {
        self.serve = Serve::start(&self.config, &self.log);
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Value {
        let v = self
            .demo
            .call(Service::Network, Method::POST, path, &[], Some(&body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .unwrap();
        v[key].clone()
    }

    async fn put(&self, path: &str, body: Value) {
        self.demo
            .call(Service::Network, Method::PUT, path, &[], Some(&body))
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    }

    async fn delete(&self, path: &str) {
        self.demo
            .call(Service::Network, Method::DELETE, path, &[], None)
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    }

    /// A router (demo user), with a gateway on `external` if given: its id.
    async fn router(&self, name: &str, external: Option<&str>) -> String {
        let mut body = json!({"router": {"name": name}});
        if let Some(ext) = external {
            body["router"]["external_gateway_info"] = json!({"network_id": ext});
        }
        let router = self.post("/routers", "router", body).await;
        router["id"].as_str().unwrap().to_string()
    }

    /// Waits until these deleted routers have no server, no port and no record left.
    async fn wait_gone(&self, routers: &[&String], bound: Duration) {
        let t = Instant::now();
        loop {
            let listed = self.serve.cli(&["list"]).expect("router list");
            let mut left = 0;
            for router in routers {
                let tag = ownership::router_tag(router);
                let servers = self.admin.list_servers_tagged(&tag).await.unwrap();
                let ports = self
                    .admin
                    .list_ports(&PortFilter {
                        tag: Some(tag),
                        ..PortFilter::default()
                    })
                    .await
                    .unwrap();
                let in_list = listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["router_id"] == router.as_str());
                left += servers.len() + ports.len() + usize::from(in_list);
            }
            if left == 0 {
                return;
            }
            assert!(
                t.elapsed() < bound,
                "servers, ports or records of the deleted routers left after {bound:?}: {left}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops rug-lite (it must exit 0), deletes these tenant networks, then the management
    /// network.
    async fn tear_down(mut self, networks: &[&String]) {
        let (status, _) = self.serve.stop();
        assert!(status.success(), "rug-lite exit after SIGTERM: {status}");
        for net in networks {
            self.delete(&format!("/networks/{net}")).await;
        }
        self.admin
            .call(
                Service::Network,
                Method::DELETE,
                &format!("/networks/{}", self.mgmt),
                &[],
                None,
            )
            .await
            .unwrap();
    }

    /// Sets the router's extra routes, `(destination, nexthop)` (demo user).
    async fn routes(&self, router: &str, routes: &[(&str, &str)]) {
        let routes: Vec<Value> = routes
            .iter()
            .map(|(d, n)| json!({"destination": d, "nexthop": n}))
            .collect();
        self.put(
            &format!("/routers/{router}"),
            json!({"router": {"routes": routes}}),
        )
        .await;
    }

    /// `add_router_interface` or `remove_router_interface` of a subnet.
    async fn interface(&self, router: &str, action: &str, subnet: &str) {
        self.put(
            &format!("/routers/{router}/{action}_router_interface"),
            json!({"subnet_id": subnet}),
        )
        .await;
    }

    /// Waits until `router show` says `configured` with a hash other than `previous`, and the
    /// agent, asked over mutual TLS, reports that very hash. The record, and how long it took.
    async fn converged(
        &self,
        router_id: &str,
        previous: Option<&str>,
        bound: Duration,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let record = self.serve.show(router_id);
            if let Some(r) = &record {
                let hash = r["config_hash"].as_str();
                if r["state"] == "configured" && hash.is_some() && hash != previous {
                    let target = ApplianceTarget {
                        router_id: router_id.to_string(),
                        address: r["management_address"].as_str().unwrap().parse().unwrap(),
                        port: 5000,
                    };
                    let reported = self.agent.config_hash(&target).await;
                    if reported.ok().flatten().as_deref() == hash {
                        return (r.clone(), started.elapsed());
                    }
                }
            }
            assert!(
                started.elapsed() < bound,
                "router {router_id} not configured (hash other than {previous:?}) within {bound:?}: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `f` on the guest that serves this record's router.
    fn guest<R>(&self, record: &Value, f: impl FnOnce(&mut hv::Guest) -> R) -> R {
        let server = record["server_id"].as_str().expect("a server");
        self.compute
            .with_guest(server, f)
            .unwrap_or_else(|| panic!("no stand-in guest for server {server}"))
    }
}

/// `rabbitmqctl list_queues name consumers`: this queue's consumer count, None if absent.
fn queue_consumers(queue: &str) -> Option<u32> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "consumers"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(queue)).then(|| f.next().and_then(|c| c.parse().ok()).unwrap_or(0))
    })
}

#[track_caller]
fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().unwrap();
    assert!(status.success(), "rabbitmqctl {args:?}: {status}");
}

fn ip_route(guest: &hv::Guest, prefix: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &guest.ns, "route", "show", prefix])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network with one IPv4 subnet (DHCP on), as the demo user: (network id, subnet id).
async fn tenant_network(w: &World, name: &str, cidr: &str, gateway: &str) -> (String, String) {
    let net = w
        .post("/networks", "network", json!({"network": {"name": name}}))
        .await;
    let net = net["id"].as_str().unwrap().to_string();
    let subnet = w
        .post(
            "/subnets",
            "subnet",
            json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": cidr,
                              "gateway_ip": gateway}}),
        )
        .await;
    (net, subnet["id"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_converges_routers_from_neutron_events_as_the_demo_user_on_the_rig() {
    let settings = r#"[resync]
period = "1h"
startup_spread = "1s"
[scheduler]
debounce = "200ms"
max_debounce = "2s"
backoff_base = "1s"
backoff_max = "10s""#;
    let Some(mut w) = World::set_up("it", settings).await else {
        return;
    };
    let tag = format!("{}-{}", std::process::id(), fastrand::u16(..));
    let (a, b) = (fastrand::u16(1..), fastrand::u8(1..250));
    let queue = w.queue.clone();

    // The upstream: a host on ext-net holding the subnet's gateway address, with no route to
    // any tenant network (so a reply to a tenant proves SNAT).
    let ext = w.admin.find_network("ext-net").await.unwrap().id;
    let ext_subnet = w
        .admin
        .list_subnets(std::slice::from_ref(&ext))
        .await
        .unwrap();
    let ext_subnet = ext_subnet.iter().find(|s| s.gateway_ip.is_some()).unwrap();
    let upstream_ip = ext_subnet.gateway_ip.clone().unwrap();
    let ext_len = ext_subnet.cidr.parse::<IpNet>().unwrap().prefix_len();
    let upstream: TestHost = w.fabric.host(&ext, None);
    upstream.must(&format!("ip addr add {upstream_ip}/{ext_len} dev eth0"));

    // 1. A router with a gateway, an internal interface and a floating IP (demo user).
    let t = Instant::now();
    let net_a = format!("10.{b}.{}", a % 250);
    let (tenant, tenant_subnet) = tenant_network(
        &w,
        &format!("rug-lite-serve-a-{tag}"),
        &format!("{net_a}.0/24"),
        &format!("{net_a}.1"),
    )
    .await;
    let r1 = w
        .router(&format!("rug-lite-serve-1-{tag}"), Some(&ext))
        .await;
    let gateway_ip: IpAddr = r1_gateway(&w, &r1).await;
    w.interface(&r1, "add", &tenant_subnet).await;
    let vm_port = w
        .post(
            "/ports",
            "port",
            json!({"port": {"network_id": tenant, "name": format!("rug-lite-serve-vm-{tag}")}}),
        )
        .await;
    let (vm_port_id, vm_mac, vm_ip) = (
        vm_port["id"].as_str().unwrap().to_string(),
        vm_port["mac_address"].as_str().unwrap().to_string(),
        vm_port["fixed_ips"][0]["ip_address"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let fip = w
        .post(
            "/floatingips",
            "floatingip",
            json!({"floatingip": {"floating_network_id": ext, "port_id": vm_port_id}}),
        )
        .await;
    let (fip_id, fip_addr) = (
        fip["id"].as_str().unwrap().to_string(),
        fip["floating_ip_address"].as_str().unwrap().to_string(),
    );
    // Bound: 180 s from the router's creation (a fake-driver boot takes a few seconds; the
    // rest is rug-lite's polling and the hot-plug of what came after the boot).
    let (rec1, _) = loop {
        let (rec, _) = w.converged(&r1, None, Duration::from_secs(180)).await;
        // Configured with everything made above: the interface and the floating IP.
        let has_fip = w.guest(&rec, |g| g.ruleset().contains(&fip_addr));
        if has_fip {
            break (rec, ());
        }
        let hash = rec["config_hash"].as_str().unwrap().to_string();
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "{fip_addr} not pushed: {rec}"
        );
        w.converged(&r1, Some(&hash), Duration::from_secs(180))
            .await;
    };
    let first = t.elapsed();
    eprintln!("router 1 configured over mutual TLS {first:?} after the first Neutron call");
    let addrs = w.guest(&rec1, |g| g.addresses());
    let interface_ip: IpAddr = format!("{net_a}.1").parse().unwrap();
    assert!(addrs.contains(&gateway_ip), "{gateway_ip} in {addrs:?}");
    assert!(addrs.contains(&interface_ip), "{interface_ip} in {addrs:?}");
    let default = w.guest(&rec1, |g| ip_route(g, "default"));
    assert!(default.contains(&format!("via {upstream_ip}")), "{default}");
    assert!(w.guest(&rec1, |g| g.log()).contains("CN=rug-lite"));

    // The tenant VM gets its lease from the appliance's DHCP server, and reaches the upstream
    // (which has no route back to the tenant network) through SNAT; the upstream reaches the
    // VM through its floating IP.
    let vm = w.fabric.host(&tenant, Some(&vm_mac));
    let lease = vm.dhcp_lease();
    assert_eq!(lease.get("new_ip_address"), Some(&vm_ip), "{lease:?}");
    assert_eq!(
        lease.get("new_routers").map(String::as_str),
        Some(format!("{net_a}.1").as_str()),
        "{lease:?}"
    );
    vm.must(&format!(
        "ip addr add {vm_ip}/24 dev eth0 && ip route add default via {net_a}.1"
    ));
    vm.must(&format!("ping -c 3 -i 0.3 -W 2 {upstream_ip}"));
    upstream.must(&format!("ping -c 3 -i 0.3 -W 2 {fip_addr}"));
    eprintln!("tenant VM: DHCP lease {vm_ip}, SNAT to {upstream_ip} and DNAT from {fip_addr} work");

    // A second router, with an interface only: the stop/start step changes it.
    let net_b = format!("10.{}.{}", b.wrapping_add(2), a % 250);
    let (net2, net2_subnet) = tenant_network(
        &w,
        &format!("rug-lite-serve-b-{tag}"),
        &format!("{net_b}.0/24"),
        &format!("{net_b}.1"),
    )
    .await;
    let r2 = w.router(&format!("rug-lite-serve-2-{tag}"), None).await;
    w.interface(&r2, "add", &net2_subnet).await;

    // 2. A second interface on router 1 → hot-plugged and pushed.
    let net_c = format!("10.{}.{}", b.wrapping_add(1), a % 250);
    let (net3, net3_subnet) = tenant_network(
        &w,
        &format!("rug-lite-serve-c-{tag}"),
        &format!("{net_c}.0/24"),
        &format!("{net_c}.1"),
    )
    .await;
    let hash1 = rec1["config_hash"].as_str().unwrap().to_string();
    w.interface(&r1, "add", &net3_subnet).await;
    let (rec, took) = w
        .converged(&r1, Some(&hash1), Duration::from_secs(90))
        .await;
    let second_ip: IpAddr = format!("{net_c}.1").parse().unwrap();
    assert!(w.guest(&rec, |g| g.addresses()).contains(&second_ip));
    eprintln!("second interface hot-plugged and pushed {took:?} after the Neutron call");

    // 3. The router's routes change → pushed.
    let hash = rec["config_hash"].as_str().unwrap().to_string();
    w.routes(&r1, &[("192.0.2.0/24", &format!("{net_a}.50"))])
        .await;
    let (rec, took) = w.converged(&r1, Some(&hash), Duration::from_secs(60)).await;
    let route = w.guest(&rec, |g| ip_route(g, "192.0.2.0/24"));
    assert!(route.contains(&format!("via {net_a}.50")), "{route}");
    eprintln!("routes pushed {took:?} after the Neutron call");

    // 4. The floating IP is removed → pushed, gone from the ruleset.
    let hash = rec["config_hash"].as_str().unwrap().to_string();
    w.put(
        &format!("/floatingips/{fip_id}"),
        json!({"floatingip": {"port_id": null}}),
    )
    .await;
    let (rec, took) = w.converged(&r1, Some(&hash), Duration::from_secs(60)).await;
    assert!(!w.guest(&rec, |g| g.ruleset()).contains(&fip_addr));
    eprintln!("floating IP removal pushed {took:?} after the Neutron call");

    // 5. RabbitMQ restarts (every connection dropped, every non-durable queue gone): rug-lite
    // reconnects and declares its queue again; a later event still converges.
    let restart = Instant::now();
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    w.wait_consuming(Duration::from_secs(120)).await;
    eprintln!(
        "RabbitMQ restarted; rug-lite consuming again {:?} after the restart began",
        restart.elapsed()
    );
    let hash = rec["config_hash"].as_str().unwrap().to_string();
    w.routes(&r1, &[("198.51.100.0/24", &format!("{net_a}.51"))])
        .await;
    let (rec, took) = w.converged(&r1, Some(&hash), Duration::from_secs(90)).await;
    let route = w.guest(&rec, |g| ip_route(g, "198.51.100.0/24"));
    assert!(route.contains(&format!("via {net_a}.51")), "{route}");
    eprintln!("after the broker restart, routes pushed {took:?} after the Neutron call");

    // 6. rug-lite stops; two routers change; it starts again and both converge, with no event
    // (its queue goes with its consumer, so nothing published meanwhile reaches it).
    let (rec2, _) = w.converged(&r2, None, Duration::from_secs(120)).await;
    let (r1_hash, r2_hash) = (
        rec["config_hash"].as_str().unwrap().to_string(),
        rec2["config_hash"].as_str().unwrap().to_string(),
    );
    let (status, took) = w.serve.stop();
    assert!(status.success(), "rug-lite exit after SIGTERM: {status}");
    eprintln!("rug-lite stopped {took:?} after SIGTERM");
    assert_eq!(
        queue_consumers(&queue),
        None,
        "the queue goes with rug-lite"
    );
    w.routes(&r1, &[]).await;
    w.routes(&r2, &[("203.0.113.128/25", &format!("{net_b}.9"))])
        .await;
    let t = Instant::now();
    w.restart();
    let (rec, _) = w
        .converged(&r1, Some(&r1_hash), Duration::from_secs(90))
        .await;
    let (rec2, _) = w
        .converged(&r2, Some(&r2_hash), Duration::from_secs(90))
        .await;
    eprintln!(
        "after a restart, both routers changed while rug-lite was down converged in {:?}",
        t.elapsed()
    );
    assert!(w.guest(&rec, |g| ip_route(g, "198.51.100.0/24")).is_empty());
    let route = w.guest(&rec2, |g| ip_route(g, "203.0.113.128/25"));
    assert!(route.contains(&format!("via {net_b}.9")), "{route}");
    drop(vm);

    // 7. Both routers are deleted → their servers, then their ports, are gone.
    w.delete(&format!("/floatingips/{fip_id}")).await;
    w.delete(&format!("/ports/{vm_port_id}")).await;
    for (router, subnets) in [
        (&r1, vec![&tenant_subnet, &net3_subnet]),
        (&r2, vec![&net2_subnet]),
    ] {
        // Neutron keeps an interface that a route needs.
        w.routes(router, &[]).await;
        for subnet in subnets {
            w.interface(router, "remove", subnet).await;
        }
        w.delete(&format!("/routers/{router}")).await;
    }
    let t = Instant::now();
    w.wait_gone(&[&r1, &r2], Duration::from_secs(120)).await;
    eprintln!(
        "both routers' servers and ports deleted {:?} after the Neutron calls",
        t.elapsed()
    );
    drop(upstream);
    w.tear_down(&[&tenant, &net2, &net3]).await;
}

/// Removes what a crashed earlier run of this test left in the rig (routers, tenant VM ports
/// and networks named `rug-lite-serve-*`), so that this run's rug-lite, which reconciles every
/// router of the cloud, only meets this run's. Their servers and ports are rug-lite's own
/// orphans then: its startup resync deletes them.
async fn sweep_leftovers(admin: &HttpCloud) {
    let list = |path: &'static str, key: &'static str| async move {
        let v = admin
            .call(Service::Network, Method::GET, path, &[], None)
            .await
            .unwrap()
            .unwrap_or(Value::Null);
        let items: Vec<Value> = v[key].as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .filter(|i| {
                i["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("rug-lite-serve-"))
            })
            .collect::<Vec<Value>>()
    };
    let call = |method: Method, path: String, body: Option<Value>| async move {
        if let Err(e) = admin
            .call(Service::Network, method.clone(), &path, &[], body.as_ref())
            .await
        {
            eprintln!("sweeping leftovers: {method} {path}: {e}");
        }
    };
    for router in list("/routers", "routers").await {
        let id = router["id"].as_str().unwrap();
        eprintln!("sweeping leftover router {id}");
        call(
            Method::PUT,
            format!("/routers/{id}"),
            Some(json!({"router": {"routes": []}})),
        )
        .await;
        let ports = admin
            .list_ports(&PortFilter {
                device_id: Some(id.to_string()),
                ..PortFilter::default()
            })
            .await
            .unwrap();
        for p in ports
            .iter()
            .filter(|p| p.device_owner == "network:router_interface")
        {
            call(
                Method::PUT,
                format!("/routers/{id}/remove_router_interface"),
                Some(json!({"port_id": p.id})),
            )
            .await;
        }
        call(Method::DELETE, format!("/routers/{id}"), None).await;
    }
    for port in list("/ports", "ports").await {
        call(
            Method::DELETE,
            format!("/ports/{}", port["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
    for net in list("/networks", "networks").await {
        // A management network still holding rug-lite's orphan ports stays until rug-lite's
        // cleanup: a later run sweeps it.
        call(
            Method::DELETE,
            format!("/networks/{}", net["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
}

/// The router's external address, as Neutron gave it.
async fn r1_gateway(w: &World, router_id: &str) -> IpAddr {
    let router = w.admin.get_router(router_id).await.unwrap().unwrap();
    router.external_gateway_info.unwrap().external_fixed_ips[0]
        .ip_address
        .parse()
        .unwrap()
}

/// The value at quantile `q` (0..=1) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The issue #11 benchmark, on the rig (run by `RIG_BENCH=1 scripts/rig-test`; ignored
/// otherwise). With N routers (`RUG_LITE_BENCH_ROUTERS`, default 50), each with a gateway and
/// an interface, served by `rug-lite serve` and the stand-in compute host, it prints:
/// - N routers created → all configured (events only);
/// - Neutron API call (a router's routes) → the route in the appliance's kernel, p50/p95;
/// - a full resync of the N routers (rug-lite restarted: every router read from Neutron and
///   its appliance asked for its hash over mutual TLS), start → all `configured`;
/// - rug-lite's RSS.
///
/// No figure is asserted: these are measurements, printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: RIG_BENCH=1 scripts/rig-test"]
async fn benchmark_serve_on_the_rig() {
    let n: usize = std::env::var("RUG_LITE_BENCH_ROUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let samples = 20;
    // rug-lite's default debounce (1 s) unless RUG_LITE_BENCH_DEBOUNCE says otherwise.
    let debounce = std::env::var("RUG_LITE_BENCH_DEBOUNCE").unwrap_or_else(|_| "1s".into());
    let settings = format!(
        "[resync]\nperiod = \"1h\"\nstartup_spread = \"1ms\"\n[scheduler]\ndebounce = \"{debounce}\""
    );
    let Some(mut w) = World::set_up("bench", &settings).await else {
        return;
    };
    let tag = format!("{}-{}", std::process::id(), fastrand::u16(..));
    let (admin, admin_project) = (Arc::clone(&w.admin), w.admin_project.clone());
    let admin_call = |method: Method, service: Service, path: String, body: Value| {
        let admin = Arc::clone(&admin);
        async move {
            admin
                .call(service, method.clone(), &path, &[], Some(&body))
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
                .unwrap_or(Value::Null)
        }
    };

    // Quotas: N servers in rug-lite's project, N routers and networks in demo's.
    admin_call(
        Method::PUT,
        Service::Compute,
        format!("/os-quota-sets/{admin_project}"),
        json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1}}),
    )
    .await;
    let ext = w.admin.find_network("ext-net").await.unwrap().id;
    let probe = w
        .post(
            "/networks",
            "network",
            json!({"network": {"name": format!("rug-lite-serve-bench-probe-{tag}")}}),
        )
        .await;
    let demo_project = probe["project_id"].as_str().unwrap().to_string();
    w.delete(&format!("/networks/{}", probe["id"].as_str().unwrap()))
        .await;
    for project in [&demo_project, &admin_project] {
        admin_call(
            Method::PUT,
            Service::Network,
            format!("/quotas/{project}"),
            json!({"quota": {"router": -1, "network": -1, "subnet": -1, "port": -1,
                             "floatingip": -1}}),
        )
        .await;
    }

    // N routers, each with a gateway and an interface, created while rug-lite runs.
    let t = Instant::now();
    let mut routers = Vec::new();
    for i in 0..n {
        let net = format!("10.{}.{}", 100 + i / 250, i % 250);
        let (network, subnet) = tenant_network(
            &w,
            &format!("rug-lite-serve-bench-{tag}-{i}"),
            &format!("{net}.0/24"),
            &format!("{net}.1"),
        )
        .await;
        let router = w
            .router(&format!("rug-lite-serve-bench-{tag}-{i}"), Some(&ext))
            .await;
        w.interface(&router, "add", &subnet).await;
        routers.push((router, network, subnet, net));
    }
    let created = t.elapsed();
    let mut hashes = Vec::new();
    for (router, ..) in &routers {
        let (rec, _) = w.converged(router, None, Duration::from_secs(600)).await;
        // Configured with its interface (not only the gateway it was booted with).
        let net = &routers.iter().find(|r| &r.0 == router).unwrap().3;
        let mut rec = rec;
        while !w
            .guest(&rec, |g| g.addresses())
            .contains(&format!("{net}.1").parse().unwrap())
        {
            let hash = rec["config_hash"].as_str().unwrap().to_string();
            rec = w
                .converged(router, Some(&hash), Duration::from_secs(600))
                .await
                .0;
        }
        hashes.push(rec["config_hash"].as_str().unwrap().to_string());
    }
    let all_configured = t.elapsed();

    // Neutron API call → applied in the appliance's kernel.
    let mut latencies = Vec::new();
    for k in 0..samples {
        let (router, _, _, net) = &routers[k % n];
        let rec = w.serve.show(router).unwrap();
        let nexthop = format!("{net}.{}", 10 + k);
        let t = Instant::now();
        w.routes(router, &[("198.51.100.0/24", &nexthop)]).await;
        loop {
            let route = w.guest(&rec, |g| ip_route(g, "198.51.100.0/24"));
            if route.contains(&format!("via {nexthop} ")) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not applied: {route}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // A full resync: rug-lite restarted with every appliance up to date.
    let (rss_running, hwm_running) = rss_mib(w.serve.pid());
    let (status, _) = w.serve.stop();
    assert!(status.success());
    let log = w.log.clone();
    let pushes = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("config pushed"))
            .count()
    };
    let pushes_before = pushes();
    let t = Instant::now();
    w.restart();
    loop {
        let list = w.serve.cli(&["list"]);
        let configured = list
            .as_ref()
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|r| r["state"] == "configured")
            .count();
        if configured >= n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "{configured}/{n} after resync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resync = t.elapsed();
    let (rss_after, hwm_after) = rss_mib(w.serve.pid());
    let resync_pushes = pushes() - pushes_before;

    println!("rug-lite benchmark on the rig (MODE=full, stand-in compute host), {n} routers:");
    println!("  {n} routers created through Neutron (demo user)    {created:>10.2?}");
    println!("  … all configured over mutual TLS (from the first call) {all_configured:>10.2?}");
    println!(
        "  Neutron call → route applied in the appliance ({samples} samples, debounce {debounce}): p50 {} ms, p95 {} ms, min {} ms, max {} ms",
        quantile(&latencies, 0.5).as_millis(),
        quantile(&latencies, 0.95).as_millis(),
        latencies[0].as_millis(),
        latencies[latencies.len() - 1].as_millis()
    );
    println!("  full resync of {n} routers (restart → all configured) {resync:>10.2?}");
    println!(
        "  rug-lite RSS: {rss_running:.1} MiB while serving {n} routers (peak {hwm_running:.1}); {rss_after:.1} MiB after the resync (peak {hwm_after:.1})"
    );
    println!("  config pushes during that resync (nothing had changed): {resync_pushes}");

    // Clean up: every router deleted, rug-lite deletes their servers and ports.
    for (router, _, subnet, _) in &routers {
        w.routes(router, &[]).await;
        w.interface(router, "remove", subnet).await;
        w.delete(&format!("/routers/{router}")).await;
    }
    let t = Instant::now();
    let ids: Vec<&String> = routers.iter().map(|r| &r.0).collect();
    w.wait_gone(&ids, Duration::from_secs(600)).await;
    println!(
        "  {n} routers deleted → their servers and ports gone   {:>10.2?}",
        t.elapsed()
    );
    let networks: Vec<&String> = routers.iter().map(|r| &r.1).collect();
    w.tear_down(&networks).await;
}
