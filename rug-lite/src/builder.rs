//! The config builder: a snapshot of Neutron's state for one router, plus what the appliance
//! reports about its NICs → the agent's config document. Pure.
//!
//! It follows Astara's builder (api/config/router.py) for the contract (same document shape,
//! network order management → external → internal, Astara's `dhcp_enabled` rule, allocations
//! from every port on an internal network) but not its bugs. The document is written with the
//! model's typed builder, whose output always validates; whatever would make it invalid is
//! left out and reported as an [`Omission`], so one odd Neutron resource never blocks a
//! router's whole config:
//!
//! - a network the appliance has no NIC on yet (hot-plug pending), and the floating IPs whose
//!   fixed IP sits on it;
//! - an internal network whose subnets overlap one already in the config (e.g. the management
//!   subnet), and unattached subnets that would overlap;
//! - addresses, routes, DNS servers, MTUs or gateways that the agent would refuse.
//!
//! Deviations from Astara, on purpose: the router's extra routes are sent as `static_routes`
//! (Astara dropped them); the host name is per router (`ak-<router id>`), not per tenant.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use akanda_model::builder::{AllocationBuilder, ConfigBuilder, NetworkBuilder, SubnetBuilder};
use akanda_model::{is_header_safe, Document, MacAddr, NetworkType, NicName};
use ipnet::IpNet;

use crate::neutron::{owner, FloatingIp, Network, Port, RouteEntry, Router, Subnet};
use crate::ownership;

/// What Neutron says about one router, read in one pass by the reconciler.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouterSnapshot {
    pub router: Router,
    /// Ports whose `device_id` is the router: its gateway and interface ports.
    pub router_ports: Vec<Port>,
    /// Every network the config may mention: management, external, internal.
    pub networks: BTreeMap<String, Network>,
    /// Every subnet of those networks.
    pub subnets: BTreeMap<String, Subnet>,
    /// Every port on the router's internal networks (for DHCP allocations).
    pub network_ports: Vec<Port>,
    /// Floating IPs whose `router_id` is this router.
    pub floating_ips: Vec<FloatingIp>,
}

/// The appliance as rug-lite knows it: its ports in Neutron and its NICs as the agent reports
/// them (`GET /v1/system/interfaces`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ApplianceView {
    pub management_port: Port,
    /// The appliance's ports on the external and internal networks (rug-lite's own ports).
    pub data_ports: Vec<Port>,
    /// MAC → geN name.
    pub nics: BTreeMap<String, String>,
}

/// Settings the document carries that do not come from Neutron.
#[derive(Debug, Clone)]
pub(crate) struct BuildParams {
    pub management_network_id: String,
    pub orchestrator_address: IpAddr,
    pub metadata_port: u16,
    pub orchestrator_host: String,
    pub asn: u32,
    pub neighbor_asn: u32,
}

/// Something left out of the config, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Omission {
    /// The appliance has no NIC on this network yet.
    NotPlugged { network_id: String },
    /// An internal network whose subnet overlaps one already in the config.
    OverlappingNetwork { network_id: String, cidr: String },
    /// A subnet left out of a network, with the reason.
    Subnet { subnet_id: String, reason: String },
    /// A floating IP left out, with the reason.
    FloatingIp { address: String, reason: String },
    /// Any other value the agent would refuse: where, and why.
    Value { what: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Built {
    pub document: Document,
    pub omissions: Vec<Omission>,
    /// The hash the agent will report once it holds the document (`/v1/status`).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("the appliance reports no NIC with the management port's MAC {mac}")]
    ManagementNicMissing { mac: String },
    #[error("the management port has no address inside a known management subnet")]
    ManagementAddressMissing,
    #[error("the appliance reports {name:?} as the name of its NIC {mac}, not geN")]
    NicName { mac: String, name: String },
    /// The model refuses the document: a rug-lite bug, never pushed.
    #[error(transparent)]
    Invalid(#[from] akanda_model::builder::BuildError),
}

/// The networks the appliance needs a port on for this router: the external network (if the
/// router has a gateway) and each internal network it has an interface on.
pub(crate) fn required_networks(snapshot: &RouterSnapshot) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = snapshot
        .router_ports
        .iter()
        .filter(|p| owner::is_router_interface(&p.device_owner))
        .map(|p| p.network_id.clone())
        .collect();
    if let Some(gw) = &snapshot.router.external_gateway_info {
        out.insert(gw.network_id.clone());
    }
    out
}

/// Neutron resources as listed (filtered to one router, or everything in a resync).
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub ports: Vec<Port>,
    pub subnets: Vec<Subnet>,
    pub networks: Vec<Network>,
    pub floating_ips: Vec<FloatingIp>,
}

/// One router's share of a listing.
pub(crate) fn snapshot_from(
    router: Router,
    listing: &Listing,
    management_network_id: &str,
) -> RouterSnapshot {
    let router_ports: Vec<Port> = listing
        .ports
        .iter()
        .filter(|p| p.device_id == router.id && owner::is_router_port(&p.device_owner))
        .cloned()
        .collect();
    let internal: BTreeSet<&str> = router_ports
        .iter()
        .filter(|p| owner::is_router_interface(&p.device_owner))
        .map(|p| p.network_id.as_str())
        .collect();
    let mut used: BTreeSet<&str> = internal.clone();
    used.insert(management_network_id);
    if let Some(gw) = &router.external_gateway_info {
        used.insert(gw.network_id.as_str());
    }
    RouterSnapshot {
        networks: listing
            .networks
            .iter()
            .filter(|n| used.contains(n.id.as_str()))
            .map(|n| (n.id.clone(), n.clone()))
            .collect(),
        subnets: listing
            .subnets
            .iter()
            .filter(|s| used.contains(s.network_id.as_str()))
            .map(|s| (s.id.clone(), s.clone()))
            .collect(),
        network_ports: listing
            .ports
            .iter()
            .filter(|p| internal.contains(p.network_id.as_str()))
            .cloned()
            .collect(),
        floating_ips: listing
            .floating_ips
            .iter()
            .filter(|f| f.router_id.as_deref() == Some(router.id.as_str()))
            .cloned()
            .collect(),
        // Last: the filters above borrow from these.
        router_ports,
        router,
    }
}

/// Builds the config document.
pub(crate) fn build(
    snapshot: &RouterSnapshot,
    appliance: &ApplianceView,
    params: &BuildParams,
) -> Result<Built, BuildError> {
    let mut b = Builder {
        snapshot,
        omissions: Vec::new(),
        prefixes: Vec::new(),
        addresses: BTreeSet::new(),
    };
    let mut networks = Vec::new();

    // Management: the appliance's own management port.
    let mgmt_mac = norm_mac(&appliance.management_port.mac_address);
    let Some(mgmt_ifname) = appliance.nics.get(&mgmt_mac) else {
        return Err(BuildError::ManagementNicMissing { mac: mgmt_mac });
    };
    let mgmt_ifname = nic_name(&mgmt_mac, mgmt_ifname)?;
    let mgmt_subnets = b.subnets_of(&params.management_network_id);
    let mgmt_addresses = b.port_addresses(&appliance.management_port.fixed_ips, &mgmt_subnets);
    if mgmt_addresses.is_empty() {
        return Err(BuildError::ManagementAddressMissing);
    }
    let (mgmt, _) = b.network(
        &params.management_network_id,
        NetworkType::Management,
        mgmt_ifname,
        mgmt_addresses,
        mgmt_subnets,
        &BTreeSet::new(),
        Vec::new(),
    );
    networks.push(mgmt);

    let ifname_on = |network_id: &str| -> Result<Option<NicName>, BuildError> {
        let Some(port) = appliance
            .data_ports
            .iter()
            .find(|p| p.network_id == network_id)
        else {
            return Ok(None);
        };
        let mac = norm_mac(&port.mac_address);
        appliance
            .nics
            .get(&mac)
            .map(|name| nic_name(&mac, name))
            .transpose()
    };

    // External: the router's gateway addresses.
    let mut external: Option<(String, Vec<IpNet>, Vec<Subnet>)> = None;
    if let Some(gw) = &snapshot.router.external_gateway_info {
        match ifname_on(&gw.network_id)? {
            None => b.omit(Omission::NotPlugged {
                network_id: gw.network_id.clone(),
            }),
            Some(ifname) => {
                let subnets = b.subnets_of(&gw.network_id);
                let addresses = b.port_addresses(&gw.external_fixed_ips, &subnets);
                let attached = attached_subnets(&gw.external_fixed_ips);
                let (network, _) = b.network(
                    &gw.network_id,
                    NetworkType::External,
                    ifname,
                    addresses.clone(),
                    subnets.clone(),
                    &attached,
                    Vec::new(),
                );
                networks.push(network);
                external = Some((gw.network_id.clone(), addresses, subnets));
            }
        }
    }

    // Internal: one entry per network the router has interfaces on, sorted for a stable hash.
    let mut by_network: BTreeMap<&str, Vec<&Port>> = BTreeMap::new();
    for p in &snapshot.router_ports {
        if owner::is_router_interface(&p.device_owner) {
            by_network.entry(p.network_id.as_str()).or_default().push(p);
        }
    }
    let own_port_ids: BTreeSet<&str> = appliance
        .data_ports
        .iter()
        .chain([&appliance.management_port])
        .map(|p| p.id.as_str())
        .collect();
    let mut internal_subnets: Vec<(IpNet, String)> = Vec::new();
    for (network_id, ports) in by_network {
        let Some(ifname) = ifname_on(network_id)? else {
            b.omit(Omission::NotPlugged {
                network_id: network_id.to_string(),
            });
            continue;
        };
        let fixed_ips: Vec<_> = ports.iter().flat_map(|p| p.fixed_ips.clone()).collect();
        let attached = attached_subnets(&fixed_ips);
        let subnets = b.subnets_of(network_id);
        // The attached subnets must not overlap anything already in the config; if one does,
        // the whole network is left out (the agent cannot route one prefix on two NICs).
        if let Some((cidr, _)) = subnets
            .iter()
            .filter(|s| attached.contains(&s.id))
            .filter_map(|s| parse_cidr(&s.cidr).map(|c| (c, s)))
            .find(|(c, _)| b.overlaps(c))
        {
            b.omit(Omission::OverlappingNetwork {
                network_id: network_id.to_string(),
                cidr: cidr.to_string(),
            });
            continue;
        }
        let addresses = b.port_addresses(&fixed_ips, &subnets);
        let router_id = snapshot.router.id.as_str();
        let allocation_ports: Vec<&Port> = snapshot
            .network_ports
            .iter()
            .filter(|p| p.network_id == network_id)
            .filter(|p| p.device_id != router_id && !own_port_ids.contains(p.id.as_str()))
            .filter(|p| ownership::router_of_tags(p.tags.iter()).is_none())
            .collect();
        let (network, cidrs) = b.network(
            network_id,
            NetworkType::Internal,
            ifname,
            addresses,
            subnets,
            &attached,
            allocation_ports,
        );
        internal_subnets.extend(cidrs.into_iter().map(|c| (c, network_id.to_string())));
        networks.push(network);
    }

    // Floating IPs: only onto a plugged external network, and only to a fixed IP the config
    // routes (an internal subnet that is in it); the agent would refuse anything else.
    let mut floating_ips = Vec::new();
    let external_cidrs: Vec<IpNet> = external
        .as_ref()
        .map(|(_, _, subnets)| subnets.iter().filter_map(|s| parse_cidr(&s.cidr)).collect())
        .unwrap_or_default();
    let mut fips: Vec<&FloatingIp> = snapshot
        .floating_ips
        .iter()
        .filter(|f| f.router_id.as_deref() == Some(snapshot.router.id.as_str()))
        .collect();
    fips.sort_by(|a, b| a.floating_ip_address.cmp(&b.floating_ip_address));
    let mut used_floating = BTreeSet::new();
    let mut used_fixed = BTreeSet::new();
    for f in fips {
        let Some(fixed_s) = f.fixed_ip_address.as_deref() else {
            continue; // not associated
        };
        let reason = |r: &str| Omission::FloatingIp {
            address: f.floating_ip_address.clone(),
            reason: r.to_string(),
        };
        let (Ok(floating), Ok(fixed)) = (
            f.floating_ip_address.parse::<IpAddr>(),
            fixed_s.parse::<IpAddr>(),
        ) else {
            b.omit(reason("not an IP address pair"));
            continue;
        };
        if external.is_none() {
            b.omit(reason("the external network is not in the config"));
            continue;
        }
        if !external_cidrs.iter().any(|c| c.contains(&floating)) {
            b.omit(reason("not inside an external subnet"));
            continue;
        }
        if b.addresses.contains(&floating) {
            b.omit(reason("it is also an interface address"));
            continue;
        }
        if !internal_subnets.iter().any(|(c, _)| c.contains(&fixed)) {
            let on = fixed_network(snapshot, f, &fixed);
            b.omit(match on {
                Some(network_id) => Omission::FloatingIp {
                    address: f.floating_ip_address.clone(),
                    reason: format!(
                        "its fixed IP {fixed} is on network {network_id}, which is not in the config"
                    ),
                },
                None => reason("its fixed IP is not inside an internal subnet of the config"),
            });
            continue;
        }
        if floating.is_ipv4() != fixed.is_ipv4() {
            b.omit(reason(
                "the floating and fixed IPs are of different families",
            ));
            continue;
        }
        if !used_floating.insert(floating) || !used_fixed.insert(fixed) {
            b.omit(reason("duplicate floating or fixed IP"));
            continue;
        }
        floating_ips.push((floating, fixed));
    }

    // The default IPv4 gateway: the gateway of the first external IPv4 subnet that holds one
    // of the router's external addresses.
    let default_v4_gateway = external.as_ref().and_then(|(_, addrs, subnets)| {
        subnets.iter().find_map(|s| {
            let cidr = parse_cidr(&s.cidr)?;
            let gw: Ipv4Addr = s.gateway_ip.as_deref()?.parse().ok()?;
            let on = |ip: IpAddr| cidr.contains(&ip);
            (on(gw.into()) && addrs.iter().any(|a| on(a.addr()))).then_some(gw)
        })
    });

    let static_routes = b.static_routes(&snapshot.router.routes);

    let mut config = ConfigBuilder::new(
        header_safe_or(snapshot.router.project(), "unknown"),
        format!("ak-{}", hostname_label(&snapshot.router.id)),
    )
    .asn(params.asn, params.neighbor_asn)
    .orchestrator(
        params.orchestrator_address,
        params.metadata_port,
        params.orchestrator_host.clone(),
    )
    .default_v4_gateway(default_v4_gateway);
    for network in networks {
        config = config.network(network);
    }
    for (floating, fixed) in floating_ips {
        config = config.floating_ip(floating, fixed);
    }
    for (destination, next_hop) in static_routes {
        config = config.static_route(destination, next_hop);
    }
    let config = config.build()?;
    let mut omissions = b.omissions;
    omissions.sort();
    omissions.dedup();
    Ok(Built {
        hash: config.document.hash(),
        document: config.document,
        omissions,
    })
}

struct Builder<'a> {
    snapshot: &'a RouterSnapshot,
    omissions: Vec<Omission>,
    /// Every subnet prefix in the config so far (the agent refuses overlaps).
    prefixes: Vec<IpNet>,
    /// Every interface address in the config so far.
    addresses: BTreeSet<IpAddr>,
}

impl Builder<'_> {
    fn omit(&mut self, o: Omission) {
        self.omissions.push(o);
    }

    fn overlaps(&self, c: &IpNet) -> bool {
        self.prefixes.iter().any(|p| p.contains(c) || c.contains(p))
    }

    /// The network's subnets, IPv4 first, then by prefix, for a stable document.
    fn subnets_of(&self, network_id: &str) -> Vec<Subnet> {
        let mut out: Vec<Subnet> = self
            .snapshot
            .subnets
            .values()
            .filter(|s| s.network_id == network_id)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.ip_version, &a.cidr, &a.id).cmp(&(b.ip_version, &b.cidr, &b.id)));
        out
    }

    /// `ip/prefixlen` for each fixed IP whose subnet is known.
    fn port_addresses(
        &mut self,
        fixed_ips: &[crate::neutron::FixedIp],
        subnets: &[Subnet],
    ) -> Vec<IpNet> {
        let mut out = Vec::new();
        for f in fixed_ips {
            let Some(subnet) = subnets.iter().find(|s| s.id == f.subnet_id) else {
                self.omit(Omission::Value {
                    what: format!("address {}", f.ip_address),
                    reason: format!("its subnet {} is not on the network", f.subnet_id),
                });
                continue;
            };
            let (Ok(ip), Some(cidr)) = (f.ip_address.parse::<IpAddr>(), parse_cidr(&subnet.cidr))
            else {
                self.omit(Omission::Value {
                    what: format!("address {}", f.ip_address),
                    reason: "not an address in a valid subnet".into(),
                });
                continue;
            };
            let Ok(net) = IpNet::new(ip, cidr.prefix_len()) else {
                continue;
            };
            if !cidr.contains(&ip) || !usable_interface_address(&net) {
                self.omit(Omission::Value {
                    what: format!("address {}", f.ip_address),
                    reason: format!("not a usable interface address in {cidr}"),
                });
                continue;
            }
            if !self.addresses.insert(ip) {
                self.omit(Omission::Value {
                    what: format!("address {}", f.ip_address),
                    reason: "already used on another interface".into(),
                });
                continue;
            }
            out.push(net);
        }
        out
    }

    /// The network, and the prefixes of the subnets kept in it.
    #[allow(clippy::too_many_arguments)]
    fn network(
        &mut self,
        network_id: &str,
        network_type: NetworkType,
        ifname: NicName,
        addresses: Vec<IpNet>,
        subnets: Vec<Subnet>,
        attached: &BTreeSet<String>,
        allocation_ports: Vec<&Port>,
    ) -> (NetworkBuilder, Vec<IpNet>) {
        let mut network = NetworkBuilder::new(network_id, network_type, ifname);
        for a in &addresses {
            network = network.address(*a);
        }
        // Attached subnets first, so an unattached one is the one dropped on an overlap.
        let (first, rest): (Vec<Subnet>, Vec<Subnet>) =
            subnets.into_iter().partition(|s| attached.contains(&s.id));
        let mut kept: Vec<(IpNet, Subnet)> = Vec::new();
        for s in first.into_iter().chain(rest) {
            let Some(cidr) = parse_cidr(&s.cidr) else {
                self.omit(Omission::Subnet {
                    subnet_id: s.id.clone(),
                    reason: format!("{:?} is not a network prefix", s.cidr),
                });
                continue;
            };
            if self.overlaps(&cidr) {
                self.omit(Omission::Subnet {
                    subnet_id: s.id.clone(),
                    reason: format!("{cidr} overlaps a subnet already in the config"),
                });
                continue;
            }
            self.prefixes.push(cidr);
            network = network.subnet(self.subnet(&s, cidr));
            kept.push((cidr, s));
        }

        let mtu = self.snapshot.networks.get(network_id).and_then(|n| n.mtu);
        let has_v6 = addresses.iter().any(|a| a.addr().is_ipv6());
        let mtu = mtu.and_then(|m| {
            let min = if has_v6 { 1280 } else { 68 };
            let mtu = u16::try_from(m).ok().filter(|m| *m >= min);
            if mtu.is_none() {
                self.omit(Omission::Value {
                    what: format!("network {network_id} MTU"),
                    reason: format!("{m} is outside {min} to 65535"),
                });
            }
            mtu
        });
        if let Some(mtu) = mtu {
            network = network.mtu(mtu);
        }

        let mut allocations: Vec<(MacAddr, AllocationBuilder)> = allocation_ports
            .into_iter()
            .filter_map(|p| self.allocation(p, &kept))
            .collect();
        // By MAC, which orders as its text does.
        allocations.sort_by_key(|(mac, _)| *mac);
        for (_, allocation) in allocations {
            network = network.allocation(allocation);
        }

        let name = self
            .snapshot
            .networks
            .get(network_id)
            .map(|n| n.name.clone())
            // The agent takes free text without control characters, at most 255 characters
            // (Grammar::Text); a Neutron name it would refuse is left out.
            .filter(|n| !n.is_empty() && akanda_model::is_text(n));
        if let Some(name) = name {
            network = network.name(name);
        }
        (network, kept.into_iter().map(|(cidr, _)| cidr).collect())
    }

    fn subnet(&mut self, s: &Subnet, cidr: IpNet) -> SubnetBuilder {
        // Astara's rule: SLAAC subnets get router advertisements, not DHCP.
        let dhcp_enabled = s.enable_dhcp && s.ipv6_ra_mode.as_deref() != Some("slaac");
        let mut subnet = SubnetBuilder::new(&s.id, cidr, dhcp_enabled);
        match s.gateway_ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(gw)) if cidr.contains(&gw) => subnet = subnet.gateway_ip(gw),
            Some(_) => self.omit(Omission::Value {
                what: format!("subnet {} gateway", s.id),
                reason: "not an address inside the subnet".into(),
            }),
            None => {}
        }
        for d in &s.dns_nameservers {
            match d.parse::<IpAddr>() {
                Ok(ip) => subnet = subnet.dns_nameserver(ip),
                Err(_) => self.omit(Omission::Value {
                    what: format!("subnet {} DNS server {d:?}", s.id),
                    reason: "not an IP address".into(),
                }),
            }
        }
        for r in &s.host_routes {
            if let Some((destination, next_hop)) =
                self.route(r, &format!("subnet {} host route", s.id))
            {
                subnet = subnet.host_route(destination, next_hop);
            }
        }
        subnet
    }

    /// A port on an internal network as a DHCP allocation: its addresses in the kept subnets.
    fn allocation(
        &mut self,
        p: &Port,
        subnets: &[(IpNet, Subnet)],
    ) -> Option<(MacAddr, AllocationBuilder)> {
        let mac: MacAddr = p.mac_address.parse().ok()?;
        let mut ips: BTreeMap<IpAddr, bool> = BTreeMap::new();
        for f in &p.fixed_ips {
            let Ok(ip) = f.ip_address.parse::<IpAddr>() else {
                continue;
            };
            if let Some((_, s)) = subnets.iter().find(|(c, _)| c.contains(&ip)) {
                ips.insert(ip, s.enable_dhcp);
            }
        }
        // Astara's host name: the lowest address as text, with '.' and ':' as '-'.
        let lowest = ips.keys().map(IpAddr::to_string).min()?;
        let mut hostname = format!("{}.local", lowest.replace(['.', ':'], "-"));
        if !is_hostname(&hostname) {
            hostname = format!("host-{}.local", mac.to_string().replace(':', "-"));
        }
        let device_id = if is_header_safe(&p.device_id) {
            p.device_id.clone()
        } else {
            self.omit(Omission::Value {
                what: format!("port {} device_id", p.id),
                reason: "not printable ASCII; sent empty".into(),
            });
            String::new()
        };
        let allocation = ips.into_iter().fold(
            AllocationBuilder::new(mac, hostname, device_id),
            |a, (ip, dhcp)| a.address(ip, dhcp),
        );
        Some((mac, allocation))
    }

    /// A route the agent accepts: a network prefix and a next hop of the same family.
    fn route(&mut self, r: &RouteEntry, what: &str) -> Option<(IpNet, IpAddr)> {
        let dest = parse_cidr(&r.destination);
        let nexthop = r.nexthop.parse::<IpAddr>().ok();
        match (dest, nexthop) {
            (Some(d), Some(n)) if d.addr().is_ipv4() == n.is_ipv4() => Some((d, n)),
            _ => {
                self.omit(Omission::Value {
                    what: format!("{what} {} via {}", r.destination, r.nexthop),
                    reason: "not a prefix and next hop of one family".into(),
                });
                None
            }
        }
    }

    /// Sorted as text, as they have always been sent.
    fn static_routes(&mut self, routes: &[RouteEntry]) -> Vec<(IpNet, IpAddr)> {
        let mut out: Vec<(IpNet, IpAddr)> = routes
            .iter()
            .filter_map(|r| self.route(r, "extra route"))
            .collect();
        out.sort_by_cached_key(|(d, n)| (d.to_string(), n.to_string()));
        out.dedup();
        out
    }
}

/// Where a floating IP's fixed IP lives, for the omission message.
fn fixed_network(snapshot: &RouterSnapshot, f: &FloatingIp, fixed: &IpAddr) -> Option<String> {
    snapshot
        .subnets
        .values()
        .find(|s| parse_cidr(&s.cidr).is_some_and(|c| c.contains(fixed)))
        .map(|s| s.network_id.clone())
        .or_else(|| {
            let port = f.port_id.as_deref()?;
            snapshot
                .network_ports
                .iter()
                .find(|p| p.id == port)
                .map(|p| p.network_id.clone())
        })
}

fn attached_subnets(fixed_ips: &[crate::neutron::FixedIp]) -> BTreeSet<String> {
    fixed_ips.iter().map(|f| f.subnet_id.clone()).collect()
}

/// A network prefix with no host bits (what the agent accepts as a `cidr`).
fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.parse().ok()?;
    (net.trunc() == net).then_some(net)
}

/// What the agent accepts on a NIC: not unspecified, loopback, multicast, or the network or
/// broadcast address of an IPv4 prefix shorter than /31.
fn usable_interface_address(net: &IpNet) -> bool {
    let ip = net.addr();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    match net {
        IpNet::V4(v4) => {
            v4.prefix_len() >= 31 || (v4.addr() != v4.network() && v4.addr() != v4.broadcast())
        }
        IpNet::V6(_) => true,
    }
}

/// A NIC name as the appliance reports it (`GET /v1/system/interfaces`).
fn nic_name(mac: &str, name: &str) -> Result<NicName, BuildError> {
    name.parse().map_err(|_| BuildError::NicName {
        mac: mac.to_string(),
        name: name.to_string(),
    })
}

fn norm_mac(mac: &str) -> String {
    akanda_model::normalise_mac(mac).unwrap_or_else(|| mac.to_ascii_lowercase())
}

/// The agent's host name rule: dot-separated labels of letters, digits and '-'.
fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn hostname_label(id: &str) -> String {
    let label: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect();
    label.trim_matches('-').to_string()
}

fn header_safe_or(s: &str, fallback: &str) -> String {
    if !s.is_empty() && is_header_safe(s) {
        s.to_string()
    } else {
        fallback.to_string()
    }
}

/// The hash the agent will report once it holds this document (`/v1/status` `config_hash`):
/// the hash of the document as the agent parses it back, secrets redacted
/// ([`Document::hash`]; the agent computes it the same way). What [`Built::hash`] is held to.
#[cfg(test)]
pub(crate) fn agent_hash(document: &Document) -> Result<String, akanda_model::ConfigError> {
    let config = akanda_model::parse(&serde_json::to_vec(document).expect("serialises"))?;
    Ok(config.document.hash())
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
