//! The validated config: what the agent applies. Every address is parsed, every reference
//! resolved; building one is only possible through [`crate::parse`] / [`crate::validate`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::document::Document;

/// Astara's default ASN (`DEFAULT_AS`).
pub(crate) const DEFAULT_ASN: u32 = 64512;
/// Astara's default orchestrator address and metadata port.
pub(crate) const DEFAULT_ORCHESTRATOR_ADDRESS: &str = "fdca:3ba5:a17a:acda::1";
pub(crate) const DEFAULT_METADATA_PORT: u16 = 9697;

#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub tenant_id: String,
    pub hostname: String,
    pub asn: u32,
    pub neighbor_asn: u32,
    pub default_v4_gateway: Option<Ipv4Addr>,
    pub orchestrator: Orchestrator,
    pub networks: Vec<Network>,
    pub floating_ips: Vec<FloatingIp>,
    pub static_routes: Vec<Route>,
    pub address_book: BTreeMap<String, Vec<IpNet>>,
    pub labels: BTreeMap<String, Vec<IpNet>>,
    pub anchors: Vec<Anchor>,
    /// The normalised wire document this config came from (persisted and hashed).
    pub document: Document,
}

impl RouterConfig {
    pub fn external_network(&self) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| n.network_type == NetworkType::External)
    }

    pub fn management_network(&self) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| n.network_type == NetworkType::Management)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orchestrator {
    pub address: IpAddr,
    pub metadata_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetworkType {
    External,
    Internal,
    Isolated,
    Management,
    LoadBalancer,
}

impl NetworkType {
    pub(crate) const ALL: [(&'static str, NetworkType); 5] = [
        ("external", NetworkType::External),
        ("internal", NetworkType::Internal),
        ("isolated", NetworkType::Isolated),
        ("management", NetworkType::Management),
        ("loadbalancer", NetworkType::LoadBalancer),
    ];

    pub fn as_str(self) -> &'static str {
        name_in(&Self::ALL, self)
    }

    /// Astara's "tenant network": where tenant VMs live.
    pub fn is_tenant(self) -> bool {
        matches!(self, NetworkType::Internal | NetworkType::Isolated)
    }
}

/// An enumeration's wire name; every variant is in its `ALL` table.
fn name_in<T: PartialEq>(all: &[(&'static str, T)], value: T) -> &'static str {
    all.iter()
        .find(|(_, t)| *t == value)
        .map(|(s, _)| *s)
        .expect("every variant has a name")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4ConfService {
    Dhcp,
    Static,
}

impl V4ConfService {
    pub(crate) const ALL: [(&'static str, V4ConfService); 2] = [
        ("dhcp", V4ConfService::Dhcp),
        ("static", V4ConfService::Static),
    ];

    pub(crate) fn as_str(self) -> &'static str {
        name_in(&Self::ALL, self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6ConfService {
    Dhcp,
    Ra,
    Static,
}

impl V6ConfService {
    pub(crate) const ALL: [(&'static str, V6ConfService); 3] = [
        ("dhcp", V6ConfService::Dhcp),
        ("ra", V6ConfService::Ra),
        ("static", V6ConfService::Static),
    ];

    pub(crate) fn as_str(self) -> &'static str {
        name_in(&Self::ALL, self)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub network_type: NetworkType,
    /// `geN`: the API name of the NIC, also its kernel name.
    pub ifname: String,
    /// `interface.mtu`, else the network-level `mtu`; `None` leaves the kernel's value alone.
    pub mtu: Option<u32>,
    /// Interface addresses with their prefix length (e.g. `192.168.0.1/24`).
    pub addresses: Vec<IpNet>,
    pub v4_conf_service: V4ConfService,
    pub v6_conf_service: V6ConfService,
    pub subnets: Vec<Subnet>,
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub cidr: IpNet,
    pub gateway_ip: Option<IpAddr>,
    pub dhcp_enabled: bool,
    pub dns_nameservers: Vec<IpAddr>,
    pub host_routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac_address: String,
    /// Each address with its "DHCP enabled" flag.
    pub ip_addresses: Vec<(IpAddr, bool)>,
    pub hostname: String,
    pub device_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FloatingIp {
    pub floating_ip: IpAddr,
    pub fixed_ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub destination: IpNet,
    pub next_hop: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    pub name: String,
    pub rules: Vec<FilterRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// A rule's source or destination: a CIDR or a name in `address_book`. `any` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Cidr(IpNet),
    AddressBook(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterRule {
    pub action: Action,
    pub direction: Option<Direction>,
    pub interface: Option<String>,
    pub destination_interface: Option<String>,
    pub family: Option<Family>,
    pub protocol: Option<Protocol>,
    pub source: Option<Endpoint>,
    pub destination: Option<Endpoint>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
}
