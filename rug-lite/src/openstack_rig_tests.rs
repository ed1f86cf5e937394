//! `HttpCloud` against a real OpenStack (`../shared/openstack/bringup.sh`, MODE=full): run with
//! the rig's admin credentials in the environment (`source ../shared/openstack/admin-openrc`).
//! Without `OS_AUTH_URL` the test says so and passes without checking anything, unless
//! `RUG_LITE_RIG_REQUIRED=1` (set by `scripts/rig-test`): then a missing rig is a failure.

use super::*;
use crate::ownership;
use std::time::Instant;

fn rig() -> Option<HttpCloud> {
    let Some(creds) = keystone::from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    else {
        assert!(
            std::env::var_os("RUG_LITE_RIG_REQUIRED").is_none(),
            "RUG_LITE_RIG_REQUIRED is set but OS_AUTH_URL is not"
        );
        eprintln!("skipped: OS_AUTH_URL is not set (source ../shared/openstack/admin-openrc against a running bringup.sh rig)");
        return None;
    };
    let agent = AgentClient::plain_http(Duration::from_secs(5)).unwrap();
    Some(HttpCloud::new(creds, Duration::from_secs(30), agent, None).unwrap())
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
            metadata: crate::bootdata::metadata(&port.mac_address, 5000),
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

    raw(
        &cloud,
        Service::Network,
        Method::PUT,
        &format!("/routers/{router_id}/remove_router_interface"),
        json!({"subnet_id": subnet_id}),
    )
    .await;
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
