//! The topology index: answers the events' [`Lookup`]s from what each reconcile last read from
//! Neutron. It is only as fresh as the last reconcile; the periodic resync covers the gap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::builder::RouterSnapshot;
use crate::events::{Lookup, RouterIndex};
use crate::neutron::{owner, Port};

#[derive(Debug, Default, Clone, PartialEq)]
struct Footprint {
    interface_networks: BTreeSet<String>,
    networks: BTreeSet<String>,
    subnets: BTreeSet<String>,
    floating_ips: BTreeSet<String>,
    ports: BTreeSet<String>,
}

pub(crate) struct TopologyIndex {
    management_network_id: String,
    routers: Mutex<BTreeMap<String, Footprint>>,
}

impl TopologyIndex {
    pub(crate) fn new(management_network_id: &str) -> Self {
        TopologyIndex {
            management_network_id: management_network_id.to_string(),
            routers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Remembers what a router uses, replacing what was known.
    pub(crate) fn record(&self, snapshot: &RouterSnapshot, own_ports: &[Port]) {
        let interface_networks: BTreeSet<String> = snapshot
            .router_ports
            .iter()
            .filter(|p| owner::is_router_interface(&p.device_owner))
            .map(|p| p.network_id.clone())
            .collect();
        let mut networks = interface_networks.clone();
        if let Some(gw) = &snapshot.router.external_gateway_info {
            networks.insert(gw.network_id.clone());
        }
        let footprint = Footprint {
            subnets: snapshot
                .subnets
                .values()
                .filter(|s| networks.contains(&s.network_id))
                .map(|s| s.id.clone())
                .collect(),
            interface_networks,
            networks,
            floating_ips: snapshot.floating_ips.iter().map(|f| f.id.clone()).collect(),
            ports: own_ports.iter().map(|p| p.id.clone()).collect(),
        };
        self.routers
            .lock()
            .expect("index lock")
            .insert(snapshot.router.id.clone(), footprint);
    }

    /// Makes a router known (from a listing) before its first reconcile.
    pub(crate) fn know(&self, router_id: &str) {
        self.routers
            .lock()
            .expect("index lock")
            .entry(router_id.to_string())
            .or_default();
    }

    pub(crate) fn forget(&self, router_id: &str) {
        self.routers.lock().expect("index lock").remove(router_id);
    }
}

impl RouterIndex for TopologyIndex {
    fn resolve(&self, lookup: &Lookup) -> BTreeSet<String> {
        let routers = self.routers.lock().expect("index lock");
        let pick = |f: &dyn Fn(&Footprint) -> bool| -> BTreeSet<String> {
            routers
                .iter()
                .filter(|(_, fp)| f(fp))
                .map(|(id, _)| id.clone())
                .collect()
        };
        match lookup {
            Lookup::RoutersUsingNetwork { network_id }
                if *network_id == self.management_network_id =>
            {
                routers.keys().cloned().collect()
            }
            Lookup::RoutersWithInterfaceOn { network_id } => {
                pick(&|fp| fp.interface_networks.contains(network_id))
            }
            Lookup::RoutersUsingNetwork { network_id } => {
                pick(&|fp| fp.networks.contains(network_id))
            }
            Lookup::RoutersUsingSubnet { subnet_id } => pick(&|fp| fp.subnets.contains(subnet_id)),
            Lookup::RouterHoldingFloatingIp { floatingip_id } => {
                pick(&|fp| fp.floating_ips.contains(floatingip_id))
            }
            Lookup::RouterOwningPort { port_id } => pick(&|fp| fp.ports.contains(port_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{classify, parse_notification, Classified};
    use crate::neutron::{FloatingIp, GatewayInfo, Router, Subnet};
    use crate::queue::Intent;

    fn snapshot(id: &str, iface_net: &str, gw_net: &str, fip: &str) -> RouterSnapshot {
        RouterSnapshot {
            router: Router {
                id: id.into(),
                external_gateway_info: Some(GatewayInfo {
                    network_id: gw_net.into(),
                    ..GatewayInfo::default()
                }),
                ..Router::default()
            },
            router_ports: vec![Port {
                id: format!("{id}-if"),
                network_id: iface_net.into(),
                device_id: id.into(),
                device_owner: "network:router_interface".into(),
                ..Port::default()
            }],
            subnets: [(
                format!("{iface_net}-s"),
                Subnet {
                    id: format!("{iface_net}-s"),
                    network_id: iface_net.into(),
                    ..Subnet::default()
                },
            )]
            .into(),
            floating_ips: vec![FloatingIp {
                id: fip.into(),
                ..FloatingIp::default()
            }],
            ..RouterSnapshot::default()
        }
    }

    #[test]
    fn lookups_find_the_routers_that_use_the_resource() {
        let index = TopologyIndex::new("mgt");
        index.record(&snapshot("r1", "net-a", "ext", "fip-1"), &[]);
        index.record(
            &snapshot("r2", "net-b", "ext", "fip-2"),
            &[Port {
                id: "own-port".into(),
                ..Port::default()
            }],
        );
        index.know("r3");
        let q = |l: Lookup| index.resolve(&l).into_iter().collect::<Vec<_>>();
        let net = |n: &str| n.to_string();
        assert_eq!(
            q(Lookup::RoutersWithInterfaceOn {
                network_id: net("net-a")
            }),
            ["r1"]
        );
        assert!(q(Lookup::RoutersWithInterfaceOn {
            network_id: net("ext")
        })
        .is_empty());
        assert_eq!(
            q(Lookup::RoutersUsingNetwork {
                network_id: net("ext")
            }),
            ["r1", "r2"]
        );
        assert_eq!(
            q(Lookup::RoutersUsingNetwork {
                network_id: net("mgt")
            }),
            ["r1", "r2", "r3"]
        );
        assert_eq!(
            q(Lookup::RoutersUsingSubnet {
                subnet_id: net("net-b-s")
            }),
            ["r2"]
        );
        assert_eq!(
            q(Lookup::RouterHoldingFloatingIp {
                floatingip_id: net("fip-2")
            }),
            ["r2"]
        );
        assert_eq!(
            q(Lookup::RouterOwningPort {
                port_id: net("own-port")
            }),
            ["r2"]
        );
        index.forget("r2");
        assert!(q(Lookup::RouterOwningPort {
            port_id: net("own-port")
        })
        .is_empty());
    }

    /// The reassociation sample names only the new router; the index supplies the previous one.
    #[test]
    fn a_reassociated_floating_ip_reaches_its_previous_router_too() {
        let index = TopologyIndex::new("mgt");
        let fip = "ffc0be6e-30c5-4864-9046-5b029b3a5be8";
        index.record(&snapshot("previous-router", "net-x", "ext", fip), &[]);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/fixtures/neutron-notifications/floatingip.update.end__fip-reassociate.json",
        );
        let n = parse_notification(&std::fs::read(path).unwrap()).unwrap();
        let Classified::Affects(impact) = classify(&n).unwrap() else {
            panic!("ignored")
        };
        let routers = impact.resolve(&index);
        assert_eq!(
            routers.into_iter().collect::<Vec<_>>(),
            [
                (
                    "81a51c84-25a3-4180-8e1c-4d10e1aaebd3".to_string(),
                    Intent::Update
                ),
                ("previous-router".to_string(), Intent::Update)
            ]
        );
    }
}
