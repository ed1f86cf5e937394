//! Pure: a validated config → the kernel state it asks for (links, addresses, routes).
//! No I/O here; `reconcile` diffs this against what the kernel has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use akanda_model::{NetworkType, RouterConfig};
use ipnet::IpNet;

/// What one NIC should look like. Only NICs the config mentions appear here: the agent never
/// touches the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    /// `None` leaves the kernel's MTU alone.
    pub(crate) mtu: Option<u32>,
    pub(crate) up: bool,
    /// Addresses with prefix length. IPv6 link-local addresses are the kernel's and never listed.
    pub(crate) addresses: BTreeSet<IpNet>,
    /// Add IPv6 addresses without duplicate address detection, so a gateway address works at
    /// once. Astara turned DAD off on every network but the external one; so do we. The
    /// external addresses are added as optimistic ones (see `Netlink::add_address`).
    pub(crate) nodad: bool,
}

/// A route the agent owns (installed with the agent's route protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DesiredRoute {
    pub destination: IpNet,
    pub(crate) gateway: IpAddr,
    /// `None`: let the kernel find the interface from the gateway (top-level static routes).
    pub(crate) ifname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub links: BTreeMap<String, DesiredLink>,
    pub routes: BTreeSet<DesiredRoute>,
    /// IPv4 floating IPs: one `local` route each in the agent's floating-IP table
    /// ([`crate::netlink::FLOATING_IP_TABLE`]), not interface addresses.
    pub(crate) floating_ips: BTreeSet<Ipv4Addr>,
}

pub(crate) fn is_ipv6_link_local(net: &IpNet) -> bool {
    matches!(net.addr(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Computes the desired kernel state of a config.
///
/// `previous` is the config in force before this one. A NIC it configured that this config no
/// longer names (a router interface removed in Neutron) is cleared: its addresses removed and
/// the link set down, so the router stops routing that subnet. The previous management NIC is
/// the exception: clearing it would cut the orchestrator off. NICs the agent never configured
/// are never touched.
///
/// Routes, in precedence order when two name the same destination (the kernel keeps one route
/// per destination in the main table): default routes, then top-level `static_routes`, then
/// subnet `host_routes` in document order.
pub fn desired_state(config: &RouterConfig, previous: Option<&RouterConfig>) -> DesiredState {
    let mut state = DesiredState::default();
    for old in previous.map(|p| p.networks.as_slice()).unwrap_or_default() {
        if old.network_type != NetworkType::Management {
            state.links.insert(
                old.ifname.clone(),
                DesiredLink {
                    mtu: None,
                    up: false,
                    addresses: BTreeSet::new(),
                    nodad: true,
                },
            );
        }
    }
    for net in &config.networks {
        let addresses = net
            .addresses
            .iter()
            .filter(|a| !is_ipv6_link_local(a))
            .copied()
            .collect();
        state.links.insert(
            net.ifname.clone(),
            DesiredLink {
                mtu: net.mtu,
                up: true,
                addresses,
                nodad: net.network_type != NetworkType::External,
            },
        );
    }

    // The router must answer ARP for floating IPs and take their packets (NAT maps them to
    // their fixed IPs). IPv4 ones are local routes in the agent's table: the kernel inserts
    // those in logarithmic time, where each interface address costs more the more the link
    // has (10,000 took seconds). IPv6 ones stay host addresses on the external NIC: neighbour
    // discovery answers only for addresses (or proxy entries), not for local routes; Neutron
    // has no IPv6 floating IPs yet. Diffing either means a push never touches (flaps) a
    // floating IP it does not change.
    if let Some(ext) = config.external_network() {
        for fip in &config.floating_ips {
            match fip.floating_ip {
                IpAddr::V4(v4) => {
                    state.floating_ips.insert(v4);
                }
                IpAddr::V6(_) => {
                    if let Some(link) = state.links.get_mut(&ext.ifname) {
                        link.addresses.insert(IpNet::from(fip.floating_ip));
                    }
                }
            }
        }
    }

    let mut routes: Vec<DesiredRoute> = Vec::new();
    if let Some(ext) = config.external_network() {
        let v4 = config.default_v4_gateway.map(IpAddr::V4).or_else(|| {
            ext.subnets
                .iter()
                .filter_map(|s| s.gateway_ip)
                .find(|g| g.is_ipv4())
        });
        let v6 = ext
            .subnets
            .iter()
            .filter_map(|s| s.gateway_ip)
            .find(|g| g.is_ipv6());
        for gateway in [v4, v6].into_iter().flatten() {
            let destination = if gateway.is_ipv4() {
                "0.0.0.0/0".parse().expect("constant")
            } else {
                "::/0".parse().expect("constant")
            };
            routes.push(DesiredRoute {
                destination,
                gateway,
                ifname: Some(ext.ifname.clone()),
            });
        }
    }
    for r in &config.static_routes {
        routes.push(DesiredRoute {
            destination: r.destination,
            gateway: r.next_hop,
            ifname: None,
        });
    }
    for net in &config.networks {
        for subnet in &net.subnets {
            for r in &subnet.host_routes {
                routes.push(DesiredRoute {
                    destination: r.destination,
                    gateway: r.next_hop,
                    ifname: Some(net.ifname.clone()),
                });
            }
        }
    }
    let mut destinations = BTreeSet::new();
    for route in routes {
        if destinations.insert(route.destination) {
            state.routes.insert(route);
        } else {
            tracing::warn!(
                destination = %route.destination,
                gateway = %route.gateway,
                "route ignored: an earlier route has the same destination"
            );
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic() -> RouterConfig {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/astara-router-basic.json"
        );
        akanda_model::parse(&std::fs::read(path).unwrap()).unwrap()
    }

    fn route(dst: &str, gw: &str, ifname: Option<&str>) -> DesiredRoute {
        DesiredRoute {
            destination: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ifname: ifname.map(str::to_string),
        }
    }

    #[test]
    fn basic_config_links() {
        let state = desired_state(&basic(), None);
        assert_eq!(
            state.links.keys().collect::<Vec<_>>(),
            vec!["ge0", "ge1", "ge2"]
        );
        let ge2 = &state.links["ge2"];
        assert_eq!(ge2.mtu, Some(1450));
        assert!(ge2.nodad);
        assert!(!state.links["ge1"].nodad, "external keeps DAD");
        let addrs: Vec<String> = ge2.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, vec!["192.168.0.1/24", "2001:db8:100::1/64"]);
    }

    #[test]
    fn basic_config_routes() {
        let state = desired_state(&basic(), None);
        let want: BTreeSet<DesiredRoute> = [
            route("0.0.0.0/0", "172.16.77.1", Some("ge1")),
            route("::/0", "2001:db8:77::1", Some("ge1")),
            route("10.50.0.0/16", "192.168.0.254", Some("ge2")),
        ]
        .into_iter()
        .collect();
        assert_eq!(state.routes, want);
    }

    #[test]
    fn link_local_addresses_are_left_to_the_kernel() {
        let mut config = basic();
        config.networks[2]
            .addresses
            .push("fe80::1/64".parse().unwrap());
        let state = desired_state(&config, None);
        assert!(!state.links["ge2"].addresses.iter().any(is_ipv6_link_local));
    }

    #[test]
    fn default_gateway_falls_back_to_the_external_subnet() {
        let mut config = basic();
        config.default_v4_gateway = None;
        config.networks[1].subnets[0].gateway_ip = Some("172.16.77.254".parse().unwrap());
        let state = desired_state(&config, None);
        assert!(state
            .routes
            .contains(&route("0.0.0.0/0", "172.16.77.254", Some("ge1"))));
    }

    #[test]
    fn static_routes_win_over_host_routes_for_one_destination() {
        let mut config = basic();
        config.static_routes.push(akanda_model::Route {
            destination: "10.50.0.0/16".parse().unwrap(),
            next_hop: "172.16.77.9".parse().unwrap(),
        });
        let state = desired_state(&config, None);
        assert!(state
            .routes
            .contains(&route("10.50.0.0/16", "172.16.77.9", None)));
        assert!(!state
            .routes
            .contains(&route("10.50.0.0/16", "192.168.0.254", Some("ge2"))));
    }

    #[test]
    fn ipv4_floating_ips_are_local_routes_not_addresses() {
        let state = desired_state(&basic(), None);
        let fip: Ipv4Addr = "172.16.77.50".parse().unwrap();
        assert_eq!(state.floating_ips, BTreeSet::from([fip]));
        assert!(state
            .links
            .values()
            .all(|l| !l.addresses.contains(&IpNet::from(IpAddr::V4(fip)))));
    }

    #[test]
    fn ipv6_floating_ips_stay_host_addresses_on_the_external_nic() {
        let mut config = basic();
        config.floating_ips.push(akanda_model::FloatingIp {
            floating_ip: "2001:db8:77::50".parse().unwrap(),
            fixed_ip: "2001:db8:100::10".parse().unwrap(),
        });
        let state = desired_state(&config, None);
        assert!(state.links["ge1"]
            .addresses
            .contains(&"2001:db8:77::50/128".parse().unwrap()));
        assert_eq!(state.floating_ips.len(), 1);
    }

    #[test]
    fn no_external_network_no_floating_ips() {
        let mut config = basic();
        config
            .networks
            .retain(|n| n.network_type != NetworkType::External);
        config.default_v4_gateway = None;
        assert!(desired_state(&config, None).floating_ips.is_empty());
    }

    #[test]
    fn dropped_networks_are_cleared_but_not_management() {
        let previous = basic();
        let mut config = basic();
        config
            .networks
            .retain(|n| n.network_type == NetworkType::External);
        config.networks[0].ifname = "ge1".into();
        let state = desired_state(&config, Some(&previous));
        assert_eq!(
            state.links.keys().collect::<Vec<_>>(),
            vec!["ge1", "ge2"],
            "ge0 (management) must not be touched"
        );
        let ge2 = &state.links["ge2"];
        assert!(!ge2.up);
        assert!(ge2.addresses.is_empty());
        assert_eq!(ge2.mtu, None);
        assert!(state.links["ge1"].up);
    }

    #[test]
    fn no_external_network_no_default_routes() {
        let mut config = basic();
        config
            .networks
            .retain(|n| n.network_type != NetworkType::External);
        config.default_v4_gateway = None;
        let state = desired_state(&config, None);
        assert!(state.routes.iter().all(|r| r.destination.prefix_len() > 0));
    }
}
