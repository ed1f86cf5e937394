//! Builder tests: a realistic Neutron state from API-shaped fixtures, edge cases, and many
//! generated states. Every document built is round-tripped through `akanda_model::parse`.

use super::*;
use crate::neutron::{FixedIp, GatewayInfo};
use akanda_model::document::{FloatingIpDoc, NetworkDoc, StaticRouteDoc};
use serde_json::Value;
use std::path::Path;

const R1: &str = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";
const MGT: &str = "27358e69-5e26-4ca3-9f9f-1a9ce49b6ec2";
const EXT: &str = "46275661-5a83-4948-8741-45a8c9edeca4";
const TENANT: &str = "80bdc9f8-dd51-4350-bf5d-e9c0eb227563";
const DB: &str = "5d0e1c7a-3b1f-4c55-9a0e-2f4b6d8c9e01";
const NEW: &str = "9a7b6c5d-4e3f-4a1b-8c2d-3e4f5a6b7c8d";

/// The appliance's ports for `router_id` (found by rug-lite's tags) and its NICs. None without
/// a management port.
fn appliance_view(
    router_id: &str,
    management_network_id: &str,
    ports: &[Port],
    nics: BTreeMap<String, String>,
) -> Option<ApplianceView> {
    let mine: Vec<&Port> = ports
        .iter()
        .filter(|p| ownership::router_of_tags(p.tags.iter()).as_deref() == Some(router_id))
        .collect();
    let management_port = mine
        .iter()
        .find(|p| p.network_id == management_network_id)
        .map(|p| (*p).clone())?;
    let data_ports = mine
        .into_iter()
        .filter(|p| p.network_id != management_network_id)
        .cloned()
        .collect();
    Some(ApplianceView {
        management_port,
        data_ports,
        nics: nics
            .into_iter()
            .map(|(mac, name)| (norm_mac(&mac), name))
            .collect(),
    })
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/neutron-api/r1")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn list<T: serde::de::DeserializeOwned>(file: &str, key: &str) -> Vec<T> {
    serde_json::from_value(fixture(file)[key].clone()).unwrap()
}

fn r1_listing() -> (Router, Listing, BTreeMap<String, String>) {
    let router: Router = serde_json::from_value(fixture("router.json")["router"].clone()).unwrap();
    let listing = Listing {
        ports: list("ports.json", "ports"),
        subnets: list("subnets.json", "subnets"),
        networks: list("networks.json", "networks"),
        floating_ips: list("floatingips.json", "floatingips"),
    };
    let nics = fixture("appliance-interfaces.json")["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["lladdr"].as_str().unwrap().to_string(),
                i["ifname"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (router, listing, nics)
}

fn params() -> BuildParams {
    BuildParams {
        management_network_id: MGT.into(),
        orchestrator_address: "fdca:3ba5:a17a:acda::1".parse().unwrap(),
        metadata_port: 9697,
        orchestrator_host: "rug-lite-1".into(),
        asn: 64512,
        neighbor_asn: 64512,
    }
}

/// Builds and proves the agent accepts the result.
fn build_valid(s: &RouterSnapshot, a: &ApplianceView, p: &BuildParams) -> Built {
    let built = build(s, a, p).expect("builds");
    let json = serde_json::to_vec(&built.document).unwrap();
    if let Err(e) = akanda_model::parse(&json) {
        panic!(
            "the agent would refuse it: {e}\n{}",
            serde_json::to_string_pretty(&built.document).unwrap()
        );
    }
    built
}

fn r1() -> (RouterSnapshot, ApplianceView) {
    let (router, listing, nics) = r1_listing();
    let snapshot = snapshot_from(router, &listing, MGT);
    let appliance = appliance_view(R1, MGT, &listing.ports, nics).expect("has a management port");
    (snapshot, appliance)
}

fn network<'a>(doc: &'a Document, id: &str) -> Option<&'a NetworkDoc> {
    doc.networks
        .iter()
        .find(|n| n.network_id.as_deref() == Some(id))
}

#[test]
fn realistic_router_builds_the_astara_shaped_document() {
    let (snapshot, appliance) = r1();
    assert_eq!(appliance.data_ports.len(), 3);
    let built = build_valid(&snapshot, &appliance, &params());
    let doc = &built.document;

    // Order: management, external, internal (by network id).
    let order: Vec<(&str, &str)> = doc
        .networks
        .iter()
        .map(|n| {
            (
                n.network_type.as_deref().unwrap(),
                n.interface.as_ref().unwrap().ifname.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("management", "ge0"),
            ("external", "ge1"),
            ("internal", "ge3"), // db-net sorts before tenant-net
            ("internal", "ge2"),
        ]
    );

    let mgmt = network(doc, MGT).unwrap();
    assert_eq!(
        mgmt.interface.as_ref().unwrap().addresses,
        ["fdca:3ba5:a17a:acda:f816:3eff:fede:ee03/64"]
    );
    assert!(mgmt.allocations.is_empty());
    assert_eq!(mgmt.subnets[0].gateway_ip.as_deref(), Some(""));

    // External: the router's gateway addresses (not the appliance port's own 203.0.113.60).
    let ext = network(doc, EXT).unwrap();
    assert_eq!(
        ext.interface.as_ref().unwrap().addresses,
        ["203.0.113.10/24", "2001:db8:113::10/64"]
    );
    assert_eq!(ext.mtu, Some(1500));
    assert_eq!(doc.default_v4_gateway.as_deref(), Some("203.0.113.1"));

    // Tenant network: router's addresses; Astara's dhcp rule; allocations.
    let ten = network(doc, TENANT).unwrap();
    assert_eq!(
        ten.interface.as_ref().unwrap().addresses,
        ["10.0.0.1/24", "fd00:10::1/64"]
    );
    assert_eq!(ten.interface.as_ref().unwrap().mtu, Some(1450));
    let dhcp: Vec<(Option<&str>, Option<bool>)> = ten
        .subnets
        .iter()
        .map(|s| (s.cidr.as_deref(), s.dhcp_enabled))
        .collect();
    assert_eq!(
        dhcp,
        [
            (Some("10.0.0.0/24"), Some(true)),
            (Some("fd00:10::/64"), Some(false))
        ],
        "SLAAC subnets get RA, not DHCP"
    );
    assert_eq!(
        ten.subnets[0].host_routes[0].nexthop.as_deref(),
        Some("10.0.0.254")
    );
    let macs: Vec<&str> = ten
        .allocations
        .iter()
        .map(|a| a.mac_address.as_deref().unwrap())
        .collect();
    // The VM and the DHCP port; not the router's port, not the appliance's own port, not the
    // port without addresses.
    assert_eq!(macs, ["fa:16:3e:8f:9e:e2", "fa:16:3e:d4:c9:00"]);
    let vm = &ten.allocations[0];
    assert_eq!(vm.hostname.as_deref(), Some("10-0-0-43.local"));
    assert_eq!(
        vm.ip_addresses,
        BTreeMap::from([
            ("10.0.0.43".to_string(), true),
            ("fd00:10::f816:3eff:fe8f:9ee2".to_string(), true)
        ])
    );
    assert_eq!(
        vm.device_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );

    // new-net is not plugged: it is left out, and so is its floating IP; the unassociated
    // floating IP is simply not there.
    assert!(network(doc, NEW).is_none());
    assert_eq!(
        doc.floating_ips,
        [FloatingIpDoc {
            floating_ip: Some("203.0.113.121".into()),
            fixed_ip: Some("10.0.0.43".into())
        }]
    );
    assert!(built.omissions.contains(&Omission::NotPlugged {
        network_id: NEW.into()
    }));
    assert!(built.omissions.iter().any(|o| matches!(o,
        Omission::FloatingIp { address, reason } if address == "203.0.113.122" && reason.contains(NEW))));

    // Extra routes become static routes, sorted.
    assert_eq!(
        doc.static_routes,
        [
            StaticRouteDoc::Pair(vec!["10.50.0.0/16".into(), "10.0.0.254".into()]),
            StaticRouteDoc::Pair(vec!["192.168.100.0/24".into(), "10.1.0.20".into()]),
        ]
    );
    assert_eq!(
        doc.tenant_id.as_deref(),
        Some("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    );
    assert_eq!(doc.hostname.as_deref(), Some(format!("ak-{R1}").as_str()));
    assert_eq!((doc.asn, doc.neighbor_asn), (Some(64512), Some(64512)));
    let o = doc.orchestrator.as_ref().unwrap();
    assert_eq!(o.address.as_deref(), Some("fdca:3ba5:a17a:acda::1"));
    assert_eq!(o.metadata_port, Some(9697));
}

#[test]
fn plugging_the_missing_network_brings_its_network_and_floating_ip_in() {
    let (snapshot, mut appliance) = r1();
    appliance.data_ports.push(Port {
        id: "new-appliance-port".into(),
        network_id: NEW.into(),
        mac_address: "fa:16:3e:02:00:16".into(),
        ..Port::default()
    });
    appliance
        .nics
        .insert("fa:16:3e:02:00:16".into(), "ge4".into());
    let built = build_valid(&snapshot, &appliance, &params());
    assert!(network(&built.document, NEW).is_some());
    assert_eq!(built.document.floating_ips.len(), 2);
    assert!(built.omissions.is_empty(), "{:?}", built.omissions);
}

#[test]
fn a_router_without_gateway_or_interfaces_is_management_only() {
    let (mut snapshot, appliance) = r1();
    snapshot.router.external_gateway_info = None;
    snapshot.router_ports.clear();
    snapshot.router.routes.clear();
    let built = build_valid(&snapshot, &appliance, &params());
    assert_eq!(built.document.networks.len(), 1);
    assert_eq!(built.document.default_v4_gateway.as_deref(), Some(""));
    // Its floating IPs cannot be applied without an external network.
    assert!(built.document.floating_ips.is_empty());
    assert!(required_networks(&snapshot).is_empty());
}

#[test]
fn without_a_gateway_floating_ips_and_default_route_are_left_out() {
    let (mut snapshot, appliance) = r1();
    snapshot.router.external_gateway_info = None;
    snapshot
        .router_ports
        .retain(|p| p.device_owner != owner::ROUTER_GATEWAY);
    let built = build_valid(&snapshot, &appliance, &params());
    assert!(network(&built.document, EXT).is_none());
    assert!(built.document.floating_ips.is_empty());
    assert!(built.omissions.iter().any(|o| matches!(o,
        Omission::FloatingIp { reason, .. } if reason.contains("external network"))));
}

#[test]
fn the_management_nic_must_be_reported_by_the_appliance() {
    let (snapshot, mut appliance) = r1();
    appliance.nics.remove("fa:16:3e:de:ee:03");
    assert_eq!(
        build(&snapshot, &appliance, &params()),
        Err(BuildError::ManagementNicMissing {
            mac: "fa:16:3e:de:ee:03".into()
        })
    );
}

/// The agent names its NICs geN; any other name it reports is an error, not a config.
#[test]
fn a_nic_name_other_than_gen_is_an_error() {
    let (snapshot, mut appliance) = r1();
    appliance
        .nics
        .insert("fa:16:3e:de:ee:03".into(), "eth0".into());
    assert_eq!(
        build(&snapshot, &appliance, &params()),
        Err(BuildError::NicName {
            mac: "fa:16:3e:de:ee:03".into(),
            name: "eth0".into()
        })
    );
}

#[test]
fn the_built_hash_is_the_one_the_agent_reports() {
    let (snapshot, appliance) = r1();
    let built = build_valid(&snapshot, &appliance, &params());
    assert_eq!(built.hash, agent_hash(&built.document).unwrap());
}

#[test]
fn a_tenant_network_overlapping_the_management_subnet_is_left_out() {
    let (mut snapshot, mut appliance) = r1();
    // An IPv4 management subnet 10.1.0.0/16 contains db-net's 10.1.0.0/24.
    snapshot.subnets.insert(
        "mgt4".into(),
        Subnet {
            id: "mgt4".into(),
            network_id: MGT.into(),
            ip_version: 4,
            cidr: "10.1.0.0/16".into(),
            ..Subnet::default()
        },
    );
    appliance.management_port.fixed_ips.push(FixedIp {
        subnet_id: "mgt4".into(),
        ip_address: "10.1.200.5".into(),
    });
    let built = build_valid(&snapshot, &appliance, &params());
    assert!(network(&built.document, DB).is_none());
    assert!(built.omissions.contains(&Omission::OverlappingNetwork {
        network_id: DB.into(),
        cidr: "10.1.0.0/24".into()
    }));
}

#[test]
fn values_the_agent_would_refuse_are_dropped_not_sent() {
    let (mut snapshot, appliance) = r1();
    snapshot.router.routes.push(RouteEntry {
        destination: "10.60.0.0/16".into(),
        nexthop: "fd00::1".into(),
    });
    snapshot.router.routes.push(RouteEntry {
        destination: "10.70.0.1/16".into(),
        nexthop: "10.0.0.9".into(),
    });
    let s = snapshot
        .subnets
        .get_mut("5254b646-329c-4558-b3af-aa92d7be9f46")
        .unwrap();
    s.dns_nameservers.push("dns.example".into());
    s.gateway_ip = Some("192.0.2.1".into());
    snapshot.networks.get_mut(TENANT).unwrap().mtu = Some(1000); // < 1280 with IPv6
    let built = build_valid(&snapshot, &appliance, &params());
    assert_eq!(built.document.static_routes.len(), 2);
    let ten = network(&built.document, TENANT).unwrap();
    assert_eq!(ten.mtu, None);
    assert_eq!(ten.subnets[0].dns_nameservers, ["8.8.8.8"]);
    assert_eq!(ten.subnets[0].gateway_ip.as_deref(), Some(""));
    assert_eq!(
        built
            .omissions
            .iter()
            .filter(|o| matches!(o, Omission::Value { .. }))
            .count(),
        5,
        "{:#?}",
        built.omissions
    );
}

#[test]
fn the_hash_ignores_the_order_neutron_lists_things_in() {
    let (router, listing, nics) = r1_listing();
    let mut reversed = listing.clone();
    reversed.ports.reverse();
    reversed.subnets.reverse();
    reversed.networks.reverse();
    reversed.floating_ips.reverse();
    let mut router_rev = router.clone();
    router_rev.routes.reverse();
    let a = {
        let s = snapshot_from(router, &listing, MGT);
        let ap = appliance_view(R1, MGT, &listing.ports, nics.clone()).unwrap();
        build_valid(&s, &ap, &params()).document
    };
    let b = {
        let s = snapshot_from(router_rev, &reversed, MGT);
        let ap = appliance_view(R1, MGT, &reversed.ports, nics).unwrap();
        build_valid(&s, &ap, &params()).document
    };
    assert_eq!(a.hash(), b.hash());
    assert_eq!(
        agent_hash(&a).unwrap(),
        a.hash(),
        "the agent reports this hash"
    );
}

#[test]
fn required_networks_are_gateway_and_interface_networks() {
    let (snapshot, _) = r1();
    assert_eq!(
        required_networks(&snapshot),
        BTreeSet::from([EXT.into(), TENANT.into(), DB.into(), NEW.into()])
    );
}

#[test]
fn notification_payload_bodies_are_valid_builder_input() {
    // The router body in router.update.end__router-gw-set.json is a full Neutron router.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/neutron-notifications/router.update.end__router-gw-set.json");
    let outer: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
    let router: Router = serde_json::from_value(inner["payload"]["router"].clone()).unwrap();
    assert_eq!(router.id, R1);
    let gw = router.external_gateway_info.clone().unwrap();
    assert_eq!(gw.network_id, EXT);
    // Combined with the r1 listing, it builds.
    let (_, listing, nics) = r1_listing();
    let snapshot = snapshot_from(router, &listing, MGT);
    let appliance = appliance_view(R1, MGT, &listing.ports, nics).unwrap();
    let built = build_valid(&snapshot, &appliance, &params());
    assert!(network(&built.document, EXT).is_some());
}

// --- generated states ----------------------------------------------------------------------

/// Generates a random but Neutron-plausible router state, with deliberate oddities: unplugged
/// networks, floating IPs to unplugged or unknown addresses, overlapping unattached subnets,
/// bad routes, odd MTUs, ports without addresses.
struct StateGenerator {
    rng: fastrand::Rng,
    next_mac: u32,
}

impl StateGenerator {
    fn mac(&mut self) -> String {
        self.next_mac += 1;
        let n = self.next_mac;
        format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        )
    }

    fn port(
        &mut self,
        id: String,
        network: &str,
        owner: &str,
        device: &str,
        ips: Vec<(String, String)>,
    ) -> Port {
        Port {
            id,
            network_id: network.into(),
            mac_address: self.mac(),
            device_id: device.into(),
            device_owner: owner.into(),
            fixed_ips: ips
                .into_iter()
                .map(|(subnet_id, ip_address)| FixedIp {
                    subnet_id,
                    ip_address,
                })
                .collect(),
            ..Port::default()
        }
    }

    fn state(&mut self) -> (RouterSnapshot, ApplianceView) {
        let mut rng = self.rng.clone();
        let router_id = format!("r-{}", rng.u32(..));
        let mut s = RouterSnapshot {
            router: Router {
                id: router_id.clone(),
                project_id: Some(format!("{:032x}", rng.u128(..))),
                ..Router::default()
            },
            ..RouterSnapshot::default()
        };
        let mut appliance = ApplianceView::default();
        let mut nic = 0;
        let mut plug = |g: &mut Self, appliance: &mut ApplianceView, network: &str| {
            let mac = g.mac();
            nic += 1;
            appliance.nics.insert(mac.clone(), format!("ge{nic}"));
            appliance.data_ports.push(Port {
                id: format!("ap-{network}"),
                network_id: network.into(),
                mac_address: mac,
                ..Port::default()
            });
        };

        // Management: IPv6 SLAAC, sometimes IPv4 too (which may overlap tenant subnets).
        let mgmt_mac = self.mac();
        appliance.nics.insert(mgmt_mac.clone(), "ge0".into());
        let mut mgmt_ips = vec![("mgt6".to_string(), "fdca:3ba5:a17a:acda::d1".to_string())];
        s.subnets.insert(
            "mgt6".into(),
            subnet("mgt6", MGT, "fdca:3ba5:a17a:acda::/64", None),
        );
        if rng.u8(..4) == 0 {
            s.subnets.insert(
                "mgt4".into(),
                subnet("mgt4", MGT, "10.0.0.0/16", Some("10.0.0.1")),
            );
            mgmt_ips.push(("mgt4".into(), "10.0.255.5".into()));
        }
        appliance.management_port = Port {
            id: "mgmt-port".into(),
            network_id: MGT.into(),
            mac_address: mgmt_mac,
            fixed_ips: mgmt_ips
                .into_iter()
                .map(|(subnet_id, ip_address)| FixedIp {
                    subnet_id,
                    ip_address,
                })
                .collect(),
            ..Port::default()
        };
        s.networks.insert(
            MGT.into(),
            Network {
                id: MGT.into(),
                mtu: Some(1450),
                ..Network::default()
            },
        );

        // External network, maybe.
        let has_gateway = rng.u8(..5) != 0;
        if has_gateway {
            s.networks.insert(
                "ext".into(),
                Network {
                    id: "ext".into(),
                    mtu: Some([1500, 9000, 1280, 600][rng.usize(..4)]),
                    router_external: true,
                    ..Network::default()
                },
            );
            s.subnets.insert(
                "ext4".into(),
                subnet("ext4", "ext", "203.0.113.0/24", Some("203.0.113.1")),
            );
            let mut ips = vec![FixedIp {
                subnet_id: "ext4".into(),
                ip_address: "203.0.113.10".into(),
            }];
            if rng.bool() {
                s.subnets.insert(
                    "ext6".into(),
                    subnet("ext6", "ext", "2001:db8:e::/64", Some("2001:db8:e::1")),
                );
                ips.push(FixedIp {
                    subnet_id: "ext6".into(),
                    ip_address: "2001:db8:e::10".into(),
                });
            }
            s.router.external_gateway_info = Some(GatewayInfo {
                network_id: "ext".into(),
                external_fixed_ips: ips.clone(),
                enable_snat: Some(true),
            });
            let gw = self.port(
                "gwport".into(),
                "ext",
                owner::ROUTER_GATEWAY,
                &router_id,
                ips.into_iter()
                    .map(|f| (f.subnet_id, f.ip_address))
                    .collect(),
            );
            s.router_ports.push(gw);
            if rng.u8(..6) != 0 {
                plug(self, &mut appliance, "ext");
            }
        }

        // Internal networks: 0..6, v4 and/or v6, some unplugged, some with extra subnets.
        let mut vm_ips: Vec<String> = Vec::new();
        for n in 0..rng.usize(..7) {
            let net = format!("net{n}");
            s.networks.insert(
                net.clone(),
                Network {
                    id: net.clone(),
                    name: format!("tenant-{n}"),
                    mtu: if rng.bool() { Some(1450) } else { None },
                    ..Network::default()
                },
            );
            let mut router_ips = Vec::new();
            let v4 = format!("{net}-v4");
            let v6 = format!("{net}-v6");
            let with_v4 = rng.u8(..4) != 0;
            let with_v6 = !with_v4 || rng.bool();
            if with_v4 {
                // Sometimes inside the IPv4 management prefix 10.0.0.0/16.
                let base = if rng.u8(..6) == 0 {
                    format!("10.0.{n}")
                } else {
                    format!("10.{}.{n}", 10 + n)
                };
                s.subnets.insert(
                    v4.clone(),
                    Subnet {
                        dns_nameservers: vec!["8.8.8.8".into()],
                        host_routes: if rng.bool() {
                            vec![RouteEntry {
                                destination: "172.16.0.0/12".into(),
                                nexthop: format!("{base}.254"),
                            }]
                        } else {
                            vec![]
                        },
                        ..subnet(
                            &v4,
                            &net,
                            &format!("{base}.0/24"),
                            Some(&format!("{base}.1")),
                        )
                    },
                );
                router_ips.push((v4.clone(), format!("{base}.1")));
                for h in 0..rng.usize(..4) {
                    let ip = format!("{base}.{}", 20 + h);
                    let mut ips = vec![(v4.clone(), ip.clone())];
                    if with_v6 {
                        ips.push((v6.clone(), format!("fd00:{n}::{:x}", 0x20 + h)));
                    }
                    let p = self.port(
                        format!("vm-{net}-{h}"),
                        &net,
                        "compute:nova",
                        &format!("dev-{h}"),
                        ips,
                    );
                    s.network_ports.push(p);
                    vm_ips.push(ip);
                }
                // An unattached subnet, sometimes overlapping another network's.
                if rng.u8(..4) == 0 {
                    let extra = format!("{net}-extra");
                    s.subnets
                        .insert(extra.clone(), subnet(&extra, &net, "10.10.0.0/16", None));
                }
            }
            if with_v6 {
                s.subnets.insert(
                    v6.clone(),
                    Subnet {
                        ipv6_ra_mode: if rng.bool() {
                            Some("slaac".into())
                        } else {
                            None
                        },
                        ..subnet(
                            &v6,
                            &net,
                            &format!("fd00:{n}::/64"),
                            Some(&format!("fd00:{n}::1")),
                        )
                    },
                );
                router_ips.push((v6.clone(), format!("fd00:{n}::1")));
            }
            let rp = self.port(
                format!("rif-{n}"),
                &net,
                "network:router_interface",
                &router_id,
                router_ips,
            );
            s.router_ports.push(rp.clone());
            s.network_ports.push(rp);
            // A port without addresses and one with an odd device id.
            s.network_ports
                .push(self.port(format!("noip-{n}"), &net, "compute:nova", "x", vec![]));
            if rng.u8(..3) != 0 {
                plug(self, &mut appliance, &net);
            }
        }

        // Floating IPs: to VMs (plugged or not), unassociated, to unknown addresses, twice.
        for (i, fixed) in vm_ips.iter().enumerate() {
            if rng.bool() {
                s.floating_ips.push(FloatingIp {
                    id: format!("fip{i}"),
                    floating_ip_address: format!("203.0.113.{}", 100 + i),
                    router_id: Some(router_id.clone()),
                    fixed_ip_address: Some(fixed.clone()),
                    ..FloatingIp::default()
                });
            }
        }
        s.floating_ips.push(FloatingIp {
            id: "unassociated".into(),
            floating_ip_address: "203.0.113.99".into(),
            router_id: Some(router_id.clone()),
            ..FloatingIp::default()
        });
        if rng.bool() {
            s.floating_ips.push(FloatingIp {
                id: "nowhere".into(),
                floating_ip_address: "203.0.113.98".into(),
                router_id: Some(router_id.clone()),
                fixed_ip_address: Some("192.168.77.7".into()),
                ..FloatingIp::default()
            });
        }
        if rng.bool() {
            // The gateway's own address as a floating IP: the agent refuses that.
            s.floating_ips.push(FloatingIp {
                id: "clash".into(),
                floating_ip_address: "203.0.113.10".into(),
                router_id: Some(router_id.clone()),
                fixed_ip_address: vm_ips.first().cloned(),
                ..FloatingIp::default()
            });
        }
        // Extra routes, good and bad.
        for r in 0..rng.usize(..4) {
            s.router.routes.push(match rng.u8(..3) {
                0 => RouteEntry {
                    destination: format!("192.168.{r}.0/24"),
                    nexthop: "10.10.0.5".into(),
                },
                1 => RouteEntry {
                    destination: "2001:db8:99::/48".into(),
                    nexthop: "fd00:0::99".into(),
                },
                _ => RouteEntry {
                    destination: "garbage".into(),
                    nexthop: "10.0.0.1".into(),
                },
            });
        }
        self.rng = rng;
        (s, appliance)
    }
}

fn subnet(id: &str, network: &str, cidr: &str, gateway: Option<&str>) -> Subnet {
    Subnet {
        id: id.into(),
        network_id: network.into(),
        ip_version: if cidr.contains(':') { 6 } else { 4 },
        cidr: cidr.into(),
        gateway_ip: gateway.map(str::to_string),
        enable_dhcp: true,
        ..Subnet::default()
    }
}

#[test]
fn every_generated_state_builds_a_document_the_agent_accepts() {
    let mut g = StateGenerator {
        rng: fastrand::Rng::with_seed(11),
        next_mac: 0,
    };
    let mut stats = (0usize, 0usize, 0usize); // (networks, floating IPs, omissions)
    for i in 0..600 {
        let (s, a) = g.state();
        let built = build_valid(&s, &a, &params());
        let doc = &built.document;
        // Invariants beyond validity.
        for n in &doc.networks {
            let id = n.network_id.as_deref().unwrap();
            if id != MGT {
                assert!(
                    a.data_ports.iter().any(|p| p.network_id == id),
                    "state {i}: network {id} is in the config but not plugged"
                );
            }
        }
        for f in &doc.floating_ips {
            let fixed: IpAddr = f.fixed_ip.as_deref().unwrap().parse().unwrap();
            assert!(doc
                .networks
                .iter()
                .any(|n| n.network_type.as_deref() == Some("internal")
                    && n.subnets.iter().any(|sub| sub
                        .cidr
                        .as_deref()
                        .unwrap()
                        .parse::<IpNet>()
                        .unwrap()
                        .contains(&fixed))));
        }
        assert_eq!(agent_hash(doc).unwrap(), doc.hash());
        stats.0 += doc.networks.len();
        stats.1 += doc.floating_ips.len();
        stats.2 += built.omissions.len();
    }
    // The generator really exercised the interesting paths.
    assert!(
        stats.0 > 1500 && stats.1 > 200 && stats.2 > 300,
        "{stats:?}"
    );
}
