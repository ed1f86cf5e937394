//! Reconciler tests against `InMemoryCloud`, on tokio's paused clock.

use super::*;
use crate::cloud::tests::InMemoryCloud;
use crate::neutron::{FixedIp, FloatingIp, GatewayInfo, Network, Subnet};
use crate::queue::{self, Intent, QueueHandle, QueueSettings, WorkQueue};

pub(crate) const R: &str = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";
const MGT: &str = "mgt-net";
const EXT: &str = "ext-net";
const TEN: &str = "tenant-net";
const NEW: &str = "new-net";

pub(crate) fn settings() -> ReconcileSettings {
    ReconcileSettings {
        management_network_id: MGT.into(),
        image_id: "image-1".into(),
        flavor_id: "flavor-1".into(),
        api_port: 5000,
        boot_timeout: Duration::from_secs(600),
        build: BuildParams {
            management_network_id: MGT.into(),
            orchestrator_address: "fdca:3ba5:a17a:acda::1".parse().unwrap(),
            metadata_port: 9697,
            orchestrator_host: "rug-test".into(),
            asn: 64512,
            neighbor_asn: 64512,
        },
        boot_poll: Duration::from_secs(5),
        hotplug_poll: Duration::from_secs(2),
        hotplug_timeout: Duration::from_secs(60),
        cert_renew_before: Duration::from_secs(14 * 86_400),
        max_boots: 2,
        max_pushes: 2,
        max_probes: 2,
    }
}

fn subnet(id: &str, net: &str, cidr: &str, gw: Option<&str>) -> Subnet {
    Subnet {
        id: id.into(),
        network_id: net.into(),
        ip_version: if cidr.contains(':') { 6 } else { 4 },
        cidr: cidr.into(),
        gateway_ip: gw.map(str::to_string),
        enable_dhcp: true,
        ..Subnet::default()
    }
}

fn router_port(id: &str, net: &str, owner: &str, subnet: &str, ip: &str) -> Port {
    Port {
        id: id.into(),
        network_id: net.into(),
        mac_address: format!("fa:16:3e:aa:00:{:02x}", id.len()),
        device_id: R.into(),
        device_owner: owner.into(),
        fixed_ips: vec![FixedIp {
            subnet_id: subnet.into(),
            ip_address: ip.into(),
        }],
        ..Port::default()
    }
}

/// A router with a gateway on ext-net and an interface on tenant-net, one VM with a floating
/// IP, and a third network (new-net) with a VM but no router interface yet.
pub(crate) fn world() -> Arc<InMemoryCloud> {
    let cloud = Arc::new(InMemoryCloud::default());
    cloud.with(|s| {
        for (id, mtu) in [(MGT, 1450), (EXT, 1500), (TEN, 1450), (NEW, 1450)] {
            s.networks.insert(
                id.into(),
                Network {
                    id: id.into(),
                    mtu: Some(mtu),
                    router_external: id == EXT,
                    ..Network::default()
                },
            );
        }
        for sn in [
            subnet("mgt-v6", MGT, "fdca:3ba5:a17a:acda::/64", None),
            subnet("ext-v4", EXT, "203.0.113.0/24", Some("203.0.113.1")),
            subnet("ten-v4", TEN, "10.0.0.0/24", Some("10.0.0.1")),
            subnet("new-v4", NEW, "10.2.0.0/24", Some("10.2.0.1")),
        ] {
            s.subnets.insert(sn.id.clone(), sn);
        }
        s.routers.insert(
            R.into(),
            Router {
                id: R.into(),
                project_id: Some("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into()),
                external_gateway_info: Some(GatewayInfo {
                    network_id: EXT.into(),
                    external_fixed_ips: vec![FixedIp {
                        subnet_id: "ext-v4".into(),
                        ip_address: "203.0.113.5".into(),
                    }],
                    enable_snat: Some(true),
                }),
                ..Router::default()
            },
        );
        for p in [
            router_port("gw", EXT, owner::ROUTER_GATEWAY, "ext-v4", "203.0.113.5"),
            router_port(
                "if-ten",
                TEN,
                "network:router_interface",
                "ten-v4",
                "10.0.0.1",
            ),
            Port {
                id: "vm1".into(),
                network_id: TEN.into(),
                mac_address: "fa:16:3e:8f:9e:e2".into(),
                device_id: "instance-1".into(),
                device_owner: "compute:nova".into(),
                fixed_ips: vec![FixedIp {
                    subnet_id: "ten-v4".into(),
                    ip_address: "10.0.0.43".into(),
                }],
                ..Port::default()
            },
            Port {
                id: "vm2".into(),
                network_id: NEW.into(),
                mac_address: "fa:16:3e:8f:9e:e3".into(),
                device_id: "instance-2".into(),
                device_owner: "compute:nova".into(),
                fixed_ips: vec![FixedIp {
                    subnet_id: "new-v4".into(),
                    ip_address: "10.2.0.9".into(),
                }],
                ..Port::default()
            },
        ] {
            s.ports.insert(p.id.clone(), p);
        }
        s.floating_ips.insert(
            "fip1".into(),
            FloatingIp {
                id: "fip1".into(),
                floating_ip_address: "203.0.113.121".into(),
                router_id: Some(R.into()),
                port_id: Some("vm1".into()),
                fixed_ip_address: Some("10.0.0.43".into()),
                ..FloatingIp::default()
            },
        );
    });
    cloud
}

fn reconciler(cloud: &Arc<InMemoryCloud>) -> Reconciler<InMemoryCloud> {
    Reconciler::new(
        Arc::clone(cloud),
        settings(),
        StatusTable::default(),
        Arc::new(TopologyIndex::new(MGT)),
    )
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix}: {calls:#?}"))
}

fn own_ports(cloud: &InMemoryCloud) -> Vec<Port> {
    cloud.with(|s| {
        s.ports
            .values()
            .filter(|p| ownership::router_of_tags(p.tags.iter()).as_deref() == Some(R))
            .cloned()
            .collect()
    })
}

fn reported_hash(r: &Reconciler<InMemoryCloud>) -> Option<String> {
    r.status.get(R).and_then(|s| s.config_hash)
}

#[tokio::test(start_paused = true)]
async fn a_new_router_gets_tagged_ports_then_a_server_then_its_config() {
    let cloud = world();
    let r = reconciler(&cloud);

    // Pass 1: ports (created and tagged first, management first), TLS, boot.
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    let calls = cloud.with(|s| s.calls.clone());
    let boot = position(&calls, "boot_server");
    assert!(position(&calls, &format!("create_port AKANDA:MGT:{R} on {MGT}")) < boot);
    for (i, c) in calls.iter().enumerate() {
        if c.starts_with("create_port") {
            assert!(
                calls[i + 1].starts_with("add_port_tags"),
                "tag right after create: {calls:#?}"
            );
        }
    }
    let ports = own_ports(&cloud);
    assert_eq!(ports.len(), 3, "management, external, tenant");
    assert!(ports.iter().all(|p| p.port_security_enabled == Some(false)));
    let status = r.status.get(R).unwrap();
    assert_eq!(status.state, RouterState::Booting);
    let mgmt = ports.iter().find(|p| p.network_id == MGT).unwrap();
    let address = mgmt.fixed_ips[0].ip_address.clone();
    assert_eq!(status.management_address.as_deref(), Some(address.as_str()));
    // The certificate names the router and the management address, known before the boot.
    assert!(position(&calls, &format!("issue {R} {address}")) < boot);
    let server = cloud.with(|s| s.servers.values().next().unwrap().clone());
    assert_eq!(
        server.1[0], mgmt.id,
        "management port first: it becomes ge0"
    );
    assert_eq!(server.0.tags, ownership::tags_for(R).to_vec());

    // Pass 2: still BUILD: wait, boot nothing more.
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    assert_eq!(cloud.calls_matching("boot_server").len(), 1);

    // Pass 3: ACTIVE and answering: the config is pushed and the router is configured.
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    let status = r.status.get(R).unwrap();
    assert_eq!(status.state, RouterState::Configured);
    assert!(status.last_push.is_some());
    let held = cloud.with(|s| s.agents.values().next().unwrap().config_hash.clone());
    assert_eq!(status.config_hash, held);

    // Pass 4: nothing changed: no push.
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(cloud.calls_matching("put_config").len(), 1);

    // A Neutron change (the floating IP disassociated) is pushed on the next pass.
    cloud.with(|s| s.floating_ips.get_mut("fip1").unwrap().fixed_ip_address = None);
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(cloud.calls_matching("put_config").len(), 2);
    assert_ne!(reported_hash(&r), held);
}

#[tokio::test(start_paused = true)]
async fn a_new_interface_is_hot_plugged_and_its_floating_ip_waits_for_the_nic() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);

    // The router gets an interface on new-net, whose VM has a floating IP.
    cloud.with(|s| {
        let p = router_port(
            "if-new",
            NEW,
            "network:router_interface",
            "new-v4",
            "10.2.0.1",
        );
        s.ports.insert(p.id.clone(), p);
        s.floating_ips.insert(
            "fip2".into(),
            FloatingIp {
                id: "fip2".into(),
                floating_ip_address: "203.0.113.122".into(),
                router_id: Some(R.into()),
                port_id: Some("vm2".into()),
                fixed_ip_address: Some("10.2.0.9".into()),
                ..FloatingIp::default()
            },
        );
    });
    // This pass creates, tags and attaches a port; the NIC is not seen yet, so the config
    // leaves new-net and its floating IP out (unchanged, so nothing is pushed) and the router
    // is only "up".
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(2))
    );
    assert_eq!(cloud.calls_matching("attach_port").len(), 1);
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Up);
    assert_eq!(cloud.calls_matching("put_config").len(), 1);

    // Next pass: the NIC is there; everything goes in.
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Configured);
    assert_eq!(
        cloud.calls_matching("attach_port").len(),
        1,
        "attached once"
    );
    assert_eq!(cloud.calls_matching("put_config").len(), 2);

    // The interface is removed: the port rug-lite made for it is deleted.
    cloud.with(|s| s.ports.remove("if-new"));
    r.reconcile_router(R).await.unwrap();
    assert!(own_ports(&cloud).iter().all(|p| p.network_id != NEW));
}

#[tokio::test(start_paused = true)]
async fn a_router_without_interfaces_boots_with_what_it_has() {
    let cloud = world();
    cloud.with(|s| {
        s.ports.remove("if-ten");
        s.routers.get_mut(R).unwrap().external_gateway_info = None;
        s.ports.remove("gw");
    });
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    assert_eq!(own_ports(&cloud).len(), 1, "management port only");
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Configured);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_router_loses_its_server_first_and_then_its_ports() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    r.reconcile_router(R).await.unwrap();
    // Someone else's port that merely carries our router tag is never touched.
    cloud.with(|s| {
        s.ports.insert(
            "foreign".into(),
            Port {
                id: "foreign".into(),
                network_id: TEN.into(),
                tags: vec![ownership::router_tag(R)],
                ..Port::default()
            },
        );
        s.routers.remove(R);
    });

    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    assert_eq!(cloud.calls_matching("delete_server").len(), 1);
    assert!(
        cloud.calls_matching("delete_port").is_empty(),
        "ports wait for the server"
    );
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Deleting);
    // Nova is still deleting: wait again, no second delete.
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    assert_eq!(cloud.calls_matching("delete_server").len(), 1);

    cloud.finish_deletes();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Deleted);
    assert_eq!(cloud.calls_matching("delete_port").len(), 3);
    assert!(own_ports(&cloud).is_empty());
    assert!(cloud.with(|s| s.ports.contains_key("foreign")));
    assert!(r.status.get(R).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_is_replaced_after_the_boot_timeout() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    let first = r.status.get(R).unwrap().server_id.unwrap();
    // ACTIVE in Nova, but the agent never answers.
    cloud.with(|s| s.servers.get_mut(&first).unwrap().0.status = "ACTIVE".into());
    tokio::time::advance(Duration::from_secs(599)).await;
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = r.reconcile_router(R).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Unanswered { .. }), "{err}");
    assert_eq!(cloud.calls_matching("delete_server").len(), 1);

    // While Nova deletes it, nothing is booted; then a new server reuses the same ports.
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    cloud.finish_deletes();
    r.reconcile_router(R).await.unwrap();
    let second = r.status.get(R).unwrap().server_id.unwrap();
    assert_ne!(first, second);
    assert_eq!(cloud.calls_matching("create_port").len(), 3, "ports reused");
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
}

#[tokio::test(start_paused = true)]
async fn an_expiring_certificate_is_renewed_in_place() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    let day = Duration::from_secs(86_400);
    cloud.with(|s| s.certificate_expiry = Some(SystemTime::now() + 13 * day));
    // A new certificate for the same router and address, pushed; nothing deleted.
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(2))
    );
    let address = r.status.get(R).unwrap().management_address.unwrap();
    assert_eq!(
        cloud.calls_matching(&format!("issue {R} {address}")).len(),
        2
    );
    assert_eq!(cloud.calls_matching("put_tls").len(), 1);
    assert!(cloud.calls_matching("delete_server").is_empty());
    // The agent now presents the new one (30 days): nothing more to do.
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(cloud.calls_matching("put_tls").len(), 1);
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Configured);
}

#[tokio::test(start_paused = true)]
async fn an_expiring_certificate_gets_the_server_replaced_when_the_agent_cannot_take_one() {
    let cloud = world();
    cloud.with(|s| s.no_tls_api = true);
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    let day = Duration::from_secs(86_400);
    // 15 days left, renew_before is 14: nothing happens.
    cloud.with(|s| s.certificate_expiry = Some(SystemTime::now() + 15 * day));
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert!(cloud.calls_matching("delete_server").is_empty());
    let first = r.status.get(R).unwrap().server_id.unwrap();

    // 13 days left: the server is deleted, to be booted again with a new certificate.
    cloud.with(|s| s.certificate_expiry = Some(SystemTime::now() + 13 * day));
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(5))
    );
    assert_eq!(
        cloud.calls_matching("delete_server"),
        [format!("delete_server {first}")]
    );
    let status = r.status.get(R).unwrap();
    assert_eq!(status.state, RouterState::Booting);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("certificate"),
        "{status:?}"
    );
    cloud.finish_deletes();
    cloud.with(|s| s.certificate_expiry = Some(SystemTime::now() + 30 * day));
    r.reconcile_router(R).await.unwrap();
    let second = r.status.get(R).unwrap().server_id.unwrap();
    assert_ne!(first, second);
    let address = r.status.get(R).unwrap().management_address.unwrap();
    assert_eq!(
        cloud.calls_matching(&format!("issue {R} {address}")).len(),
        3,
        "one refused by the agent, then the new server's, for the same router and address"
    );
    assert_eq!(cloud.calls_matching("create_port").len(), 3, "ports reused");
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(r.status.get(R).unwrap().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_server_in_error_is_deleted_and_reported() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.with(|s| s.servers.values_mut().next().unwrap().0.status = "ERROR".into());
    let err = r.reconcile_router(R).await.unwrap_err();
    assert!(matches!(err, ReconcileError::ServerFailed { ref status, .. } if status == "ERROR"));
    assert_eq!(cloud.calls_matching("delete_server").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_port_that_cannot_be_tagged_is_deleted_and_nothing_boots() {
    let cloud = world();
    cloud.with(|s| s.fail.push("add_port_tags".into()));
    let r = reconciler(&cloud);
    let err = r.reconcile_router(R).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Cloud(_)), "{err}");
    assert_eq!(cloud.calls_matching("create_port").len(), 1);
    assert_eq!(cloud.calls_matching("delete_port").len(), 1);
    assert!(cloud.calls_matching("boot_server").is_empty());
    assert!(own_ports(&cloud).is_empty());
    assert_eq!(
        cloud.with(|s| s.ports.len()),
        4,
        "no untagged port left behind"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_config_is_an_error_and_the_hash_stays_the_appliances() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    cloud.with(|s| s.agents.values_mut().next().unwrap().refuse_with = Some("422".into()));
    let err = r.reconcile_router(R).await.unwrap_err();
    assert!(
        matches!(err, ReconcileError::Appliance(ApplianceError::Refused(_))),
        "{err}"
    );
    let status = r.status.get(R).unwrap();
    assert_ne!(status.state, RouterState::Configured);
    assert!(status.last_push.is_none());
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_a_configured_appliance_is_not_pushed_again() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    r.reconcile_router(R).await.unwrap();
    // A new rug-lite process: no memory, same cloud.
    let restarted = reconciler(&cloud);
    assert_eq!(
        restarted.reconcile_router(R).await.unwrap(),
        Step::Converged
    );
    assert_eq!(cloud.calls_matching("put_config").len(), 1);
    assert_eq!(cloud.calls_matching("boot_server").len(), 1);
    assert_eq!(
        restarted.status.get(R).unwrap().state,
        RouterState::Configured
    );
}

/// The queue driver and the reconciler together: a create event leads to a configured router
/// without any further event (requeues carry it through the boot).
#[tokio::test(start_paused = true)]
async fn driven_by_the_queue_a_create_event_converges() {
    let cloud = world();
    let r = Arc::new(reconciler(&cloud));
    let status = r.status.clone();
    let (handle, rx) = QueueHandle::channel();
    let queue = WorkQueue::new(
        QueueSettings {
            debounce: Duration::from_secs(1),
            max_debounce: Duration::from_secs(10),
            concurrency: 4,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            error_threshold: 5,
            error_cooldown: Duration::from_secs(60),
        },
        fastrand::Rng::with_seed(3),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(queue::run(
        queue,
        Arc::clone(&r),
        rx,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(30),
        |_, _, _| {},
    ));
    handle.mark(R, Intent::Create);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(status.get(R).unwrap().state, RouterState::Booting);
    cloud.activate_all();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(status.get(R).unwrap().state, RouterState::Configured);
    assert_eq!(cloud.calls_matching("boot_server").len(), 1);
    stop_tx.send(()).unwrap();
    driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn duplicate_ports_of_ours_on_one_network_are_reduced_to_the_attached_one() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    r.reconcile_router(R).await.unwrap();
    // A second tagged port on the tenant network, not attached (a leftover).
    cloud.with(|s| {
        s.ports.insert(
            "port-0000-extra".into(),
            Port {
                id: "port-0000-extra".into(),
                network_id: TEN.into(),
                mac_address: "fa:16:3e:99:99:99".into(),
                tags: ownership::tags_for(R).to_vec(),
                fixed_ips: vec![FixedIp {
                    subnet_id: "ten-v4".into(),
                    ip_address: "10.0.0.99".into(),
                }],
                ..Port::default()
            },
        );
    });
    // Its id sorts first, but the attached one is kept.
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(cloud.calls_matching("delete_port port-0000-extra").len(), 1);
    assert!(cloud.calls_matching("attach_port").is_empty());
    assert_eq!(own_ports(&cloud).len(), 3);
}

#[test]
fn one_port_per_network_prefers_the_attached_then_the_lowest_id() {
    let port = |id: &str, net: &str, dev: &str| Port {
        id: id.into(),
        network_id: net.into(),
        device_id: dev.into(),
        ..Port::default()
    };
    let (kept, extras) = one_port_per_network(
        vec![
            port("b", "n1", "srv"),
            port("a", "n1", ""),
            port("d", "n2", ""),
            port("c", "n2", ""),
        ],
        Some("srv"),
    );
    let ids = |v: &[Port]| v.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&kept), ["b", "c"]);
    assert_eq!(ids(&extras), ["a", "d"]);
}

#[tokio::test(start_paused = true)]
async fn a_nic_that_never_appears_gets_the_server_replaced() {
    let cloud = world();
    let r = reconciler(&cloud);
    r.reconcile_router(R).await.unwrap();
    cloud.activate_all();
    r.reconcile_router(R).await.unwrap();
    // New interface; the hypervisor attaches the port but the guest never sees the NIC.
    cloud.with(|s| {
        s.attach_without_nic = true;
        let p = router_port(
            "if-new",
            NEW,
            "network:router_interface",
            "new-v4",
            "10.2.0.1",
        );
        s.ports.insert(p.id.clone(), p);
    });
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(2))
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        r.reconcile_router(R).await.unwrap(),
        Step::Wait(Duration::from_secs(2))
    );
    assert_eq!(
        cloud.calls_matching("attach_port").len(),
        1,
        "attached once"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = r.reconcile_router(R).await.unwrap_err();
    assert!(
        matches!(err, ReconcileError::HotplugTimeout { .. }),
        "{err}"
    );
    assert_eq!(cloud.calls_matching("delete_server").len(), 1);
    // The replacement boots with all four ports, the new one included.
    cloud.finish_deletes();
    cloud.with(|s| s.attach_without_nic = false);
    r.reconcile_router(R).await.unwrap();
    let booted_with = cloud.with(|s| s.servers.values().next().unwrap().1.len());
    assert_eq!(booted_with, 4);
    cloud.activate_all();
    assert_eq!(r.reconcile_router(R).await.unwrap(), Step::Converged);
    assert_eq!(r.status.get(R).unwrap().state, RouterState::Configured);
}
