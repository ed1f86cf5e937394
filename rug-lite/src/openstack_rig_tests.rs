//! `HttpCloud` against a real OpenStack (`../shared/openstack/bringup.sh`, MODE=full): run with
//! the rig's admin credentials in the environment (`source ../shared/openstack/admin-openrc`).
//! Without `OS_AUTH_URL` the test says so and passes without checking anything, unless
//! `RUG_LITE_RIG_REQUIRED=1` (set by `scripts/rig-test`): then a missing rig is a failure.

use super::stand_in::stand_in_boot;
use super::*;
use crate::appliance::AgentClient;
use crate::builder::BuildParams;
use crate::hypervisor_stand_in::{self as hv, Fabric, Guest};
use crate::index::TopologyIndex;
use crate::ownership;
use crate::reconcile::{ReconcileSettings, Reconciler, Step};
use crate::status::{RouterState, StatusTable};
use crate::tls::ClientIdentity;
use ipnet::IpNet;
use std::sync::Arc;
use std::time::Instant;

fn rig() -> Option<HttpCloud> {
    let creds = credentials()?;
    let agent = AgentClient::plain_http(Duration::from_secs(5)).unwrap();
    Some(HttpCloud::new(creds, Duration::from_secs(30), agent, None).unwrap())
}

fn credentials() -> Option<Credentials> {
    let Some(creds) = keystone::from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    else {
        assert!(
            std::env::var_os("RUG_LITE_RIG_REQUIRED").is_none(),
            "RUG_LITE_RIG_REQUIRED is set but OS_AUTH_URL is not"
        );
        eprintln!("skipped: OS_AUTH_URL is not set (source ../shared/openstack/admin-openrc against a running bringup.sh rig)");
        return None;
    };
    Some(creds)
}

async fn raw(
    cloud: &HttpCloud,
    service: Service,
    method: Method,
    path: &str,
    body: Value,
) -> Value {
    cloud
        .call(service, method, path, &[], Some(&body))
        .await
        .unwrap()
        .unwrap_or(Value::Null)
}

/// Deletes a router as Neutron wants it: its extra routes cleared (an interface a route uses
/// cannot be removed), these subnets' interfaces removed, then the router.
async fn delete_router(cloud: &HttpCloud, router_id: &str, subnets: &[&String]) {
    raw(
        cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}"),
        json!({"router": {"routes": []}}),
    )
    .await;
    for subnet in subnets {
        raw(
            cloud,
            Service::Network,
            Method::PUT,
            &format!("/routers/{router_id}/remove_router_interface"),
            json!({"subnet_id": subnet}),
        )
        .await;
    }
    cloud
        .call(
            Service::Network,
            Method::DELETE,
            &format!("/routers/{router_id}"),
            &[],
            None,
        )
        .await
        .unwrap();
}

async fn servers_named(cloud: &HttpCloud, tag: &str) -> Vec<Server> {
    cloud.list_servers_tagged(tag).await.unwrap()
}

#[tokio::test]
async fn neutron_and_nova_through_the_traits_on_the_rig() {
    let Some(cloud) = rig() else { return };
    let tag_router = format!("it-{}-{}", std::process::id(), fastrand::u32(..));

    // Topology made with raw calls (not part of the traits).
    let net = raw(
        &cloud,
        Service::Network,
        Method::POST,
        "/networks",
        json!({"network": {"name": format!("rug-lite-it-{tag_router}")}}),
    )
    .await;
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let subnet = raw(
        &cloud,
        Service::Network,
        Method::POST,
        "/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.251.0.0/24",
                          "gateway_ip": "10.251.0.1"}}),
    )
    .await;
    let subnet_id = subnet["subnet"]["id"].as_str().unwrap().to_string();
    let router = raw(
        &cloud,
        Service::Network,
        Method::POST,
        "/routers",
        json!({"router": {"name": format!("rug-lite-it-{tag_router}")}}),
    )
    .await;
    let router_id = router["router"]["id"].as_str().unwrap().to_string();
    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": subnet_id}),
    )
    .await;

    // Routers.
    let got = cloud
        .get_router(&router_id)
        .await
        .unwrap()
        .expect("router exists");
    assert_eq!(got.id, router_id);
    assert!(cloud
        .list_routers()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == router_id));
    assert_eq!(
        cloud
            .get_router("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap(),
        None
    );

    // Ports: created untagged with an address and port security off; tagged by a second call;
    // found again by tag and by device.
    let port = cloud
        .create_port(&PortSpec {
            name: ownership::data_port_name(&router_id),
            network_id: net_id.clone(),
        })
        .await
        .unwrap();
    assert!(port.tags.is_empty());
    assert_eq!(port.port_security_enabled, Some(false));
    assert!(!port.fixed_ips.is_empty(), "Neutron allocated an address");
    let tags = ownership::tags_for(&router_id).to_vec();
    cloud.add_port_tags(&port.id, &tags).await.unwrap();
    let found = cloud
        .list_ports(&PortFilter {
            tag: Some(ownership::router_tag(&router_id)),
            ..PortFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        ownership::router_of_tags(found[0].tags.iter()).as_deref(),
        Some(router_id.as_str())
    );
    let router_ports = cloud
        .list_ports(&PortFilter {
            device_id: Some(router_id.clone()),
            ..PortFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(router_ports.len(), 1);
    assert_eq!(router_ports[0].device_owner, "network:router_interface");
    let on_net = cloud
        .list_ports(&PortFilter {
            network_ids: vec![net_id.clone()],
            ..PortFilter::default()
        })
        .await
        .unwrap();
    assert!(on_net.len() >= 2);
    assert_eq!(
        cloud
            .list_networks(std::slice::from_ref(&net_id))
            .await
            .unwrap()
            .len(),
        1
    );
    let subnets = cloud
        .list_subnets(std::slice::from_ref(&net_id))
        .await
        .unwrap();
    assert_eq!(subnets[0].cidr, "10.251.0.0/24");
    assert!(cloud
        .list_floating_ips(&router_id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        cloud
            .find_network(&format!("rug-lite-it-{tag_router}"))
            .await
            .unwrap()
            .id,
        net_id
    );

    // Nova (FakeDriver): boot with the tagged port, tags, metadata and user_data; list by tag;
    // hot-plug a second port; delete.
    let image = cloud.find_image("fake-image").await.unwrap();
    let flavor = cloud.find_flavor("m1.tiny").await.unwrap();
    let server = cloud
        .boot_server(&ServerSpec {
            name: ownership::server_name(&router_id),
            image_id: image,
            flavor_id: flavor,
            port_ids: vec![port.id.clone()],
            metadata: crate::bootdata::metadata(&port.mac_address, 5000, false),
            user_data: "{\"akanda\": {}}".into(),
            tags: tags.clone(),
        })
        .await
        .unwrap();
    let router_tag = ownership::router_tag(&router_id);
    let start = Instant::now();
    loop {
        let listed = servers_named(&cloud, &router_tag).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id, server.id);
        assert_eq!(
            ownership::router_of_tags(listed[0].tags.iter()).as_deref(),
            Some(router_id.as_str())
        );
        if listed[0].status == "ACTIVE" {
            break;
        }
        assert_ne!(listed[0].status, "ERROR");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not ACTIVE: {}",
            listed[0].status
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let second = cloud
        .create_port(&PortSpec {
            name: "rug-lite-it-second".into(),
            network_id: net_id.clone(),
        })
        .await
        .unwrap();
    cloud.add_port_tags(&second.id, &tags).await.unwrap();
    cloud.attach_port(&server.id, &second.id).await.unwrap();
    let attached = cloud
        .list_ports(&PortFilter {
            device_id: Some(server.id.clone()),
            ..PortFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(attached.len(), 2, "{attached:?}");

    cloud.delete_server(&server.id).await.unwrap();
    let start = Instant::now();
    while !servers_named(&cloud, &router_tag).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server not gone"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(cloud
        .delete_server(&server.id)
        .await
        .unwrap_err()
        .is_not_found());
    for p in [&port.id, &second.id] {
        cloud.delete_port(p).await.unwrap();
    }
    assert!(cloud
        .delete_port(&port.id)
        .await
        .unwrap_err()
        .is_not_found());

    delete_router(&cloud, &router_id, &[&subnet_id]).await;
    cloud
        .call(
            Service::Network,
            Method::DELETE,
            &format!("/networks/{net_id}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(cloud.get_router(&router_id).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// The first scenario of issue #11 on the rig (MODE=full): Neutron and Nova are real; Nova's fake
// driver runs no guest, so the hypervisor stand-in (`hypervisor_stand_in.rs`) supplies one.

async fn id_of(cloud: &HttpCloud, path: &str, key: &str, body: Value) -> String {
    raw(cloud, Service::Network, Method::POST, path, body).await[key]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_gets_an_appliance_configured_over_mutual_tls_on_the_rig() {
    let Some(creds) = credentials() else { return };
    if !hv::require_root() {
        return;
    }
    let (ca_pki, ca_key) =
        akanda_pki::Ca::generate("rig test CA", akanda_pki::Validity::days(1)).unwrap();
    let ca = Ca::from_pem(ca_pki.cert_pem(), &ca_key).unwrap();
    let (cert, key) = ca.issue_client().unwrap();
    let identity = ClientIdentity::new(ca.ca_cert_pem(), &cert, &key).unwrap();
    let agent = AgentClient::mutual_tls(identity, Duration::from_secs(5));
    let cloud = Arc::new(HttpCloud::new(creds, Duration::from_secs(30), agent, Some(ca)).unwrap());
    let tag = format!("{}-{}", std::process::id(), fastrand::u16(..));
    let (a, b) = (fastrand::u16(1..), fastrand::u8(1..250));

    // The topology, through Neutron's API: a management network (IPv6, static, no gateway;
    // its low addresses are left to rug-lite's host side), a tenant network and a router with
    // a gateway on the rig's ext-net and an interface on the tenant network.
    let mgmt = id_of(
        &cloud,
        "/networks",
        "network",
        json!({"network": {"name": format!("rug-lite-it-mgt-{tag}")}}),
    )
    .await;
    let prefix = format!("fdca:3ba5:{a:x}:{b:x}");
    id_of(
        &cloud,
        "/subnets",
        "subnet",
        json!({"subnet": {"network_id": mgmt, "ip_version": 6, "cidr": format!("{prefix}::/64"),
                          "gateway_ip": null, "enable_dhcp": false,
                          "allocation_pools": [{"start": format!("{prefix}::100"),
                                                "end": format!("{prefix}::1ff")}]}}),
    )
    .await;
    let tenant = id_of(
        &cloud,
        "/networks",
        "network",
        json!({"network": {"name": format!("rug-lite-it-ten-{tag}")}}),
    )
    .await;
    let tenant_subnet = id_of(
        &cloud,
        "/subnets",
        "subnet",
        json!({"subnet": {"network_id": tenant, "ip_version": 4,
                          "cidr": format!("10.{b}.{}.0/24", a % 250),
                          "gateway_ip": format!("10.{b}.{}.1", a % 250)}}),
    )
    .await;
    let ext = cloud.find_network("ext-net").await.unwrap().id;
    let router_id = id_of(
        &cloud,
        "/routers",
        "router",
        json!({"router": {"name": format!("rug-lite-it-{tag}"),
                          "external_gateway_info": {"network_id": ext}}}),
    )
    .await;
    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": tenant_subnet}),
    )
    .await;
    let router = cloud.get_router(&router_id).await.unwrap().unwrap();
    let gateway_ip: IpAddr = router
        .external_gateway_info
        .as_ref()
        .unwrap()
        .external_fixed_ips[0]
        .ip_address
        .parse()
        .unwrap();
    let interface_ip: IpAddr = format!("10.{b}.{}.1", a % 250).parse().unwrap();

    let host: IpNet = format!("{prefix}::1/64").parse().unwrap();
    let fabric = Fabric::new(host);
    let settings = ReconcileSettings {
        management_network_id: mgmt.clone(),
        image_id: cloud.find_image("fake-image").await.unwrap(),
        flavor_id: cloud.find_flavor("m1.tiny").await.unwrap(),
        api_port: 5000,
        boot_timeout: Duration::from_secs(300),
        build: BuildParams {
            management_network_id: mgmt.clone(),
            orchestrator_address: host.addr(),
            metadata_port: 9697,
            orchestrator_host: "rug-lite-rig-test".into(),
            asn: 64512,
            neighbor_asn: 64512,
        },
        boot_poll: Duration::from_secs(2),
        hotplug_poll: Duration::from_secs(2),
        hotplug_timeout: Duration::from_secs(120),
        cert_renew_before: Duration::from_secs(3600),
        max_boots: 2,
        max_pushes: 2,
        max_probes: 2,
    };
    let status = StatusTable::default();
    let r = Reconciler::new(
        Arc::clone(&cloud),
        settings,
        status.clone(),
        Arc::new(TopologyIndex::new(&mgmt)),
    );

    // Reconcile as the queue would (every 1 s here); the stand-in boots the guest once Nova
    // says ACTIVE. Bound: 180 s from the router's creation to configured.
    let started = Instant::now();
    let mut guest: Option<Guest> = None;
    loop {
        let step = r.reconcile_router(&router_id).await;
        if matches!(step, Ok(Step::Converged)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not configured in 180 s: {step:?} {:?}\n{}",
            status.get(&router_id),
            guest.as_ref().map(|g| g.log()).unwrap_or_default()
        );
        if guest.is_none() {
            if let Some(sid) = status.get(&router_id).and_then(|s| s.server_id) {
                let listed = cloud
                    .list_servers_tagged(&ownership::router_tag(&router_id))
                    .await
                    .unwrap();
                if listed.iter().any(|s| s.id == sid && s.status == "ACTIVE") {
                    guest = Some(stand_in_boot(&cloud, &sid, Arc::clone(&fabric)).await);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut guest = guest.expect("the stand-in booted a guest");
    let record = status.get(&router_id).unwrap();
    eprintln!(
        "router configured over mutual TLS {:?} after its creation",
        started.elapsed()
    );
    assert_eq!(record.state, RouterState::Configured, "{record:?}");
    let log = guest.log();
    assert!(log.contains("scheme=\"https\""), "mutual TLS:\n{log}");
    assert!(
        log.contains("config changed") && log.contains("CN=rug-lite"),
        "{log}"
    );
    let target = ApplianceTarget {
        router_id: router_id.clone(),
        address: record.management_address.unwrap().parse().unwrap(),
        port: 5000,
    };
    assert_eq!(
        cloud.config_hash(&target).await.unwrap(),
        record.config_hash
    );
    let addrs = guest.addresses();
    assert!(addrs.contains(&gateway_ip), "{gateway_ip} in {addrs:?}");
    assert!(addrs.contains(&interface_ip), "{interface_ip} in {addrs:?}");

    // Reconciles until converged, the stand-in hot-plugging what Nova attached meanwhile.
    async fn converge(
        r: &Reconciler<HttpCloud>,
        status: &StatusTable,
        cloud: &HttpCloud,
        router_id: &str,
        guest: &mut Guest,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let step = r.reconcile_router(router_id).await;
            if matches!(step, Ok(Step::Converged)) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not converged in 60 s: {step:?}
{}",
                guest.log()
            );
            let sid = status.get(router_id).and_then(|s| s.server_id).unwrap();
            let attached = cloud
                .list_ports(&PortFilter {
                    device_id: Some(sid),
                    ..PortFilter::default()
                })
                .await
                .unwrap();
            for p in attached {
                if !guest.has_nic(&p.mac_address) {
                    guest.hotplug_on(&p.mac_address, &p.network_id);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    // A floating IP on a tenant port: pushed (the agent's ruleset NATs it).
    let vm_port = id_of(
        &cloud,
        "/ports",
        "port",
        json!({"port": {"network_id": tenant, "name": format!("rug-lite-it-vm-{tag}")}}),
    )
    .await;
    let fip = raw(
        &cloud,
        Service::Network,
        Method::POST,
        "/floatingips",
        json!({"floatingip": {"floating_network_id": ext, "port_id": vm_port}}),
    )
    .await;
    let (fip_id, fip_addr) = (
        fip["floatingip"]["id"].as_str().unwrap().to_string(),
        fip["floatingip"]["floating_ip_address"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let took = converge(&r, &status, &cloud, &router_id, &mut guest).await;
    eprintln!("floating IP pushed in {took:?}");
    assert!(
        guest.ruleset().contains(&fip_addr),
        "{fip_addr} in the ruleset"
    );
    assert_eq!(
        cloud.config_hash(&target).await.unwrap(),
        status.get(&router_id).unwrap().config_hash
    );

    // A second interface: a port is created and attached, the stand-in hot-plugs it, and the
    // config with the new network is pushed.
    let second = id_of(
        &cloud,
        "/networks",
        "network",
        json!({"network": {"name": format!("rug-lite-it-two-{tag}")}}),
    )
    .await;
    let second_subnet = id_of(
        &cloud,
        "/subnets",
        "subnet",
        json!({"subnet": {"network_id": second, "ip_version": 4,
                          "cidr": format!("10.{}.{}.0/24", b.wrapping_add(1), a % 250),
                          "gateway_ip": format!("10.{}.{}.1", b.wrapping_add(1), a % 250)}}),
    )
    .await;
    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": second_subnet}),
    )
    .await;
    let took = converge(&r, &status, &cloud, &router_id, &mut guest).await;
    eprintln!("second interface hot-plugged and pushed in {took:?}");
    let second_ip: IpAddr = format!("10.{}.{}.1", b.wrapping_add(1), a % 250)
        .parse()
        .unwrap();
    assert!(guest.addresses().contains(&second_ip), "{second_ip}");
    let record = status.get(&router_id).unwrap();
    assert_eq!(record.state, RouterState::Configured);

    // The router's routes change in Neutron: pushed on the next pass.
    let nexthop = format!("10.{b}.{}.50", a % 250);
    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}"),
        json!({"router": {"routes": [{"destination": "192.0.2.0/24", "nexthop": nexthop}]}}),
    )
    .await;
    assert_eq!(
        r.reconcile_router(&router_id).await.unwrap(),
        Step::Converged
    );
    let after = status.get(&router_id).unwrap();
    assert_ne!(after.config_hash, record.config_hash);
    assert_eq!(cloud.config_hash(&target).await.unwrap(), after.config_hash);
    let route = std::process::Command::new("ip")
        .args(["-n", &guest.ns, "route", "show", "192.0.2.0/24"])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains(&format!("via {nexthop}")), "{route}");

    // The floating IP is removed: pushed, and gone from the ruleset.
    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/floatingips/{fip_id}"),
        json!({"floatingip": {"port_id": null}}),
    )
    .await;
    assert_eq!(
        r.reconcile_router(&router_id).await.unwrap(),
        Step::Converged
    );
    assert!(!guest.ruleset().contains(&fip_addr), "{fip_addr} gone");
    assert_eq!(
        cloud.config_hash(&target).await.unwrap(),
        status.get(&router_id).unwrap().config_hash
    );
    cloud
        .call(
            Service::Network,
            Method::DELETE,
            &format!("/floatingips/{fip_id}"),
            &[],
            None,
        )
        .await
        .unwrap();
    cloud
        .call(
            Service::Network,
            Method::DELETE,
            &format!("/ports/{vm_port}"),
            &[],
            None,
        )
        .await
        .unwrap();

    // The router is deleted: its server, then its ports, are deleted.
    delete_router(&cloud, &router_id, &[&tenant_subnet, &second_subnet]).await;
    drop(guest);
    let started = Instant::now();
    loop {
        match r.reconcile_router(&router_id).await {
            Ok(Step::Deleted) => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(120),
                "not deleted in 120 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let router_tag = ownership::router_tag(&router_id);
    assert!(servers_named(&cloud, &router_tag).await.is_empty());
    assert!(cloud
        .list_ports(&PortFilter {
            tag: Some(router_tag),
            ..PortFilter::default()
        })
        .await
        .unwrap()
        .is_empty());
    for net in [&mgmt, &tenant, &second] {
        cloud
            .call(
                Service::Network,
                Method::DELETE,
                &format!("/networks/{net}"),
                &[],
                None,
            )
            .await
            .unwrap();
    }
}
