//! rug-lite ↔ the real akanda-agent over mutual TLS (root: network namespaces).
//!
//! The reconciler runs as in production against the real agent client (`AgentClient` over
//! mutual TLS) and the real CA (`[tls]`); Neutron and Nova are `InMemoryCloud` (no cloud
//! here). When the reconciler has booted a server, [`crate::hypervisor_stand_in`] stands in
//! for the hypervisor: it builds the config drive from the server's ports, metadata and
//! `user_data` (rug-lite's own boot data, as Nova would write it) and runs the real
//! `akanda-agent serve --boot-config DIR` in a namespace with the ports' MACs. The agent
//! takes its TLS material from that `user_data` only.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use akanda_model::Document;
use ipnet::IpNet;

use crate::appliance::AgentClient;
use crate::cloud::tests::InMemoryCloud;
use crate::cloud::*;
use crate::hypervisor_stand_in::{self as hv, Guest};
use crate::index::TopologyIndex;
use crate::neutron::{FloatingIp, Network, Port, Router, Subnet};
use crate::reconcile::tests::{settings, world, R};
use crate::reconcile::{Reconciler, Step};
use crate::status::{RouterState, StatusTable};
use crate::tls::{tests::test_ca, Ca, ClientIdentity};

const MGT: &str = "mgt-net";

/// Neutron and Nova in memory (recording each boot's spec, which the hypervisor stand-in
/// reads as Nova's API would give it), the real agent client and the real CA.
struct StandInCloud {
    mem: Arc<InMemoryCloud>,
    agent: AgentClient,
    ca: Arc<Ca>,
    booted: Mutex<Vec<(Server, ServerSpec)>>,
}

impl Neutron for StandInCloud {
    async fn get_router(&self, id: &str) -> CloudResult<Option<Router>> {
        self.mem.get_router(id).await
    }
    async fn list_routers(&self) -> CloudResult<Vec<Router>> {
        self.mem.list_routers().await
    }
    async fn list_ports(&self, filter: &PortFilter) -> CloudResult<Vec<Port>> {
        self.mem.list_ports(filter).await
    }
    async fn list_subnets(&self, network_ids: &[String]) -> CloudResult<Vec<Subnet>> {
        self.mem.list_subnets(network_ids).await
    }
    async fn list_networks(&self, ids: &[String]) -> CloudResult<Vec<Network>> {
        self.mem.list_networks(ids).await
    }
    async fn list_floating_ips(&self, router_id: &str) -> CloudResult<Vec<FloatingIp>> {
        self.mem.list_floating_ips(router_id).await
    }
    async fn create_port(&self, spec: &PortSpec) -> CloudResult<Port> {
        self.mem.create_port(spec).await
    }
    async fn add_port_tags(&self, port_id: &str, tags: &[String]) -> CloudResult<()> {
        self.mem.add_port_tags(port_id, tags).await
    }
    async fn delete_port(&self, port_id: &str) -> CloudResult<()> {
        self.mem.delete_port(port_id).await
    }
}

impl Nova for StandInCloud {
    async fn boot_server(&self, spec: &ServerSpec) -> CloudResult<Server> {
        let server = self.mem.boot_server(spec).await?;
        self.booted
            .lock()
            .unwrap()
            .push((server.clone(), spec.clone()));
        Ok(server)
    }
    async fn list_servers_tagged(&self, tag: &str) -> CloudResult<Vec<Server>> {
        self.mem.list_servers_tagged(tag).await
    }
    async fn delete_server(&self, id: &str) -> CloudResult<()> {
        self.mem.delete_server(id).await
    }
    async fn attach_port(&self, server_id: &str, port_id: &str) -> CloudResult<()> {
        self.mem.attach_port(server_id, port_id).await
    }
}

impl Appliance for StandInCloud {
    async fn interfaces(
        &self,
        target: &ApplianceTarget,
    ) -> Result<std::collections::BTreeMap<String, String>, ApplianceError> {
        self.agent.interfaces(target).await
    }
    async fn config_hash(
        &self,
        target: &ApplianceTarget,
    ) -> Result<Option<String>, ApplianceError> {
        self.agent.config_hash(target).await
    }
    async fn put_config(
        &self,
        target: &ApplianceTarget,
        document: &Document,
    ) -> Result<(), ApplianceError> {
        self.agent.put_config(target, document).await
    }
    fn certificate_expiry(&self, target: &ApplianceTarget) -> Option<std::time::SystemTime> {
        self.agent.certificate_expiry(target)
    }
    async fn put_tls(
        &self,
        target: &ApplianceTarget,
        material: &TlsMaterial,
    ) -> Result<(), ApplianceError> {
        self.agent.put_tls(target, material).await
    }
}

impl CertificateAuthority for StandInCloud {
    fn issue(&self, router_id: &str, address: IpAddr) -> Result<Option<TlsMaterial>, String> {
        CertificateAuthority::issue(&*self.ca, router_id, address)
    }
}

fn client_of(ca: &Ca, trusted_ca_pem: &str) -> AgentClient {
    let (cert, key) = ca.issue_client().unwrap();
    let identity = ClientIdentity::new(trusted_ca_pem, &cert, &key).unwrap();
    AgentClient::mutual_tls(identity, Duration::from_secs(5))
}

/// The stand-in hypervisor boots the server rug-lite asked Nova for: ports in the spec's
/// order, metadata and user_data as given.
fn boot_guest(mem: &InMemoryCloud, server: &Server, spec: &ServerSpec, host: IpNet) -> Guest {
    let (ports, subnets, mtus) = mem.with(|s| {
        let ports: Vec<Port> = spec.port_ids.iter().map(|p| s.ports[p].clone()).collect();
        let subnets: Vec<Subnet> = s.subnets.values().cloned().collect();
        let mtus: Vec<Option<u64>> = ports
            .iter()
            .map(|p| s.networks[&p.network_id].mtu)
            .collect();
        (ports, subnets, mtus)
    });
    let macs: Vec<String> = ports.iter().map(|p| p.mac_address.clone()).collect();
    let network_data = hv::network_data(&ports, &subnets, &mtus);
    Guest::boot(&macs, host, |dir| {
        hv::write_config_drive(
            dir,
            &server.id,
            &spec.name,
            &spec.metadata,
            &network_data,
            &spec.user_data,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rug_lite_configures_the_real_agent_over_mutual_tls_root() {
    if !hv::require_root() {
        return;
    }
    // A management prefix of this run's own: its host side lives in the test's namespace.
    let prefix = format!(
        "fdca:3ba5:{:x}:{:x}",
        fastrand::u16(1..),
        fastrand::u16(1..)
    );
    let host: IpNet = format!("{prefix}::1/64").parse().unwrap();
    let mem = world();
    mem.with(|s| s.subnets.get_mut("mgt-v6").unwrap().cidr = format!("{prefix}::/64"));
    let (pki, ca_key) =
        akanda_pki::Ca::generate("akanda test CA", akanda_pki::Validity::days(1)).unwrap();
    let ca = Arc::new(Ca::from_pem(pki.cert_pem(), &ca_key).unwrap());
    let cloud = Arc::new(StandInCloud {
        mem: Arc::clone(&mem),
        agent: client_of(&ca, ca.ca_cert_pem()),
        ca: Arc::clone(&ca),
        booted: Mutex::new(Vec::new()),
    });
    let mut settings = settings();
    settings.build.orchestrator_address = host.addr();
    let status = StatusTable::default();
    let r = Reconciler::new(
        Arc::clone(&cloud),
        settings.clone(),
        status.clone(),
        Arc::new(TopologyIndex::new(MGT)),
    );

    // Pass 1: ports, certificate, boot.
    assert!(matches!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(_)
    ));
    let (server, spec) = cloud.booted.lock().unwrap()[0].clone();
    let ud: serde_json::Value = serde_json::from_str(&spec.user_data).unwrap();
    assert!(ud["akanda"]["tls"]["server_cert"].is_string(), "{ud}");
    assert_eq!(spec.metadata.get("akanda_insecure_http"), None);

    // The hypervisor stand-in: the server becomes ACTIVE and its guest boots.
    mem.activate_all();
    let mut guest = boot_guest(&mem, &server, &spec, host);
    let address: IpAddr = status
        .get(R)
        .unwrap()
        .management_address
        .unwrap()
        .parse()
        .unwrap();

    // rug-lite converges over mutual TLS: interfaces, then the config.
    let started = Instant::now();
    loop {
        assert!(guest.running(), "the agent exited:\n{}", guest.log());
        match r.reconcile_router(R).await {
            Ok(Step::Converged) => break,
            Ok(_) | Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => panic!("not configured in 60 s: {other:?}\n{}", guest.log()),
        }
    }
    let s = status.get(R).unwrap();
    assert_eq!(s.state, RouterState::Configured, "{s:?}");
    assert_eq!(s.last_error, None);
    eprintln!("configured over mutual TLS in {:?}", started.elapsed());

    // The agent itself says it holds that config, over a fresh mutual-TLS connection.
    let target = ApplianceTarget {
        router_id: R.into(),
        address,
        port: 5000,
    };
    let fresh = client_of(&ca, ca.ca_cert_pem());
    let held = fresh.config_hash(&target).await.unwrap();
    assert_eq!(held, s.config_hash);
    assert!(held.is_some());
    // The certificate the agent presents is the one from its user_data: 30 days by default,
    // noted by the client so that the reconciler can renew it.
    let left = fresh
        .certificate_expiry(&target)
        .expect("noted from the handshake")
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    let day = Duration::from_secs(86_400);
    assert!(left > 29 * day && left <= 30 * day, "{left:?}");
    // And the kernel of the guest has the router's addresses from that config.
    let addrs = guest.addresses();
    for a in ["203.0.113.5", "10.0.0.1"] {
        assert!(addrs.contains(&a.parse().unwrap()), "{a} not in {addrs:?}");
    }
    let log = guest.log();
    assert!(
        log.contains("scheme=\"https\"") || log.contains("scheme=https"),
        "the agent serves mutual TLS, from the config drive's user_data:\n{log}"
    );
    assert!(
        log.contains("config changed") && log.contains("CN=rug-lite"),
        "the agent logs the change with rug-lite's identity:\n{log}"
    );

    // Wrong identities are refused, in the handshake:
    // - the right appliance, but rug-lite expects another router there;
    let other_router = ApplianceTarget {
        router_id: "9447788d-03bb-4a83-820e-cb12245107a2".into(),
        ..target.clone()
    };
    let err = fresh.config_hash(&other_router).await.unwrap_err();
    assert!(
        matches!(err, ApplianceError::Unreachable(ref m) if m.contains("certificate")),
        "{err}"
    );
    // - a client whose certificate another CA signed (it trusts the right CA for the server);
    let stranger = test_ca();
    let err = client_of(&stranger, ca.ca_cert_pem())
        .config_hash(&target)
        .await
        .unwrap_err();
    assert!(matches!(err, ApplianceError::Unreachable(_)), "{err}");
    // - a client that trusts only another CA: the appliance's certificate is refused;
    let err = client_of(&stranger, stranger.ca_cert_pem())
        .config_hash(&target)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplianceError::Unreachable(ref m) if m.contains("certificate")),
        "{err}"
    );
    // - plain HTTP.
    let plain = AgentClient::plain_http(Duration::from_secs(5)).unwrap();
    assert!(plain.config_hash(&target).await.is_err());
    let log = guest.log();
    assert!(
        log.contains("TLS handshake refused"),
        "the agent logs the refused client:\n{log}"
    );
    // Nothing of that changed the config.
    assert_eq!(fresh.config_hash(&target).await.unwrap(), held);

    // A Neutron change (floating IP disassociated) is pushed to the real agent.
    mem.with(|s| s.floating_ips.get_mut("fip1").unwrap().fixed_ip_address = None);
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    let after = fresh.config_hash(&target).await.unwrap();
    assert_ne!(after, held);
    assert_eq!(after, status.get(R).unwrap().config_hash);

    // Renewal in place: a reconciler whose CA issues 2-day certificates, renewing when fewer
    // than 31 days are left (the agent's has 30), pushes a new certificate with
    // PUT /v1/system/tls; the agent presents it on the next connection, with no restart.
    let renewing = Arc::new(StandInCloud {
        mem: Arc::clone(&mem),
        agent: client_of(&ca, ca.ca_cert_pem()),
        ca: Arc::new(
            Ca::from_pem(pki.cert_pem(), &ca_key)
                .unwrap()
                .with_server_lifetime(2 * day),
        ),
        booted: Mutex::new(Vec::new()),
    });
    settings.cert_renew_before = 31 * day;
    let r2 = Reconciler::new(
        renewing,
        settings,
        StatusTable::default(),
        Arc::new(TopologyIndex::new(MGT)),
    );
    assert!(matches!(
        r2.reconcile_router(R).await.unwrap(),
        Step::Wait(_)
    ));
    let again = client_of(&ca, ca.ca_cert_pem());
    assert_eq!(again.config_hash(&target).await.unwrap(), after);
    let left = again
        .certificate_expiry(&target)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > day && left <= 2 * day,
        "the new certificate: {left:?}"
    );
    assert!(guest.running());
    assert!(
        guest.log().contains("TLS material replaced"),
        "{}",
        guest.log()
    );
}
