//! A typed builder for the config document, for orchestrators (rug-lite) that produce one.
//!
//! Values with a type of their own (addresses, prefixes, MACs, NIC names, network types,
//! ports) cannot be malformed. What types cannot say is checked by [`ConfigBuilder::build`]:
//! the strings' [grammars](crate::Grammar), the limits, and the relations between values
//! (overlapping subnets, a gateway outside its subnet, a floating IP outside the external
//! network...). It parses the document exactly as the agent will, so what it returns always
//! validates, and what it refuses is named at its JSON path.
//!
//! The document is written in the shape rug-lite has always sent: `""` for "no gateway", both
//! conf services, and the MTU both on the network and on its interface.
//!
//! ```
//! use akanda_model::builder::{ConfigBuilder, NetworkBuilder, SubnetBuilder};
//! use akanda_model::NetworkType;
//!
//! let config = ConfigBuilder::new("tenant-1", "ak-router-1")
//!     .network(
//!         NetworkBuilder::new("mgt", NetworkType::Management, "ge0".parse().unwrap())
//!             .address("fdca:3ba5:a17a:acda::d1/64".parse().unwrap())
//!             .subnet(SubnetBuilder::new("mgt6", "fdca:3ba5:a17a:acda::/64".parse().unwrap(), false)),
//!     )
//!     .build()
//!     .unwrap();
//! assert_eq!(config.networks[0].ifname, "ge0");
//! let _send = config.document.to_canonical_json();
//! ```

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::document::{
    AllocationDoc, Document, FloatingIpDoc, HostRouteDoc, InterfaceDoc, NetworkDoc,
    OrchestratorDoc, StaticRouteDoc, SubnetDoc,
};
use crate::{
    ConfigError, MacAddr, NetworkType, NicName, Problem, RouterConfig, V4ConfService, V6ConfService,
};

/// What [`ConfigBuilder::build`] refuses: every problem, each at its JSON path (as in the
/// agent's 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct BuildError {
    pub problems: Vec<Problem>,
}

/// The whole document. Networks, floating IPs and static routes are written in the order
/// they are added (the order is part of the hash).
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    doc: Document,
}

impl ConfigBuilder {
    /// `tenant_id` is a header value ([`Grammar::HeaderValue`](crate::Grammar::HeaderValue)),
    /// `hostname` the router's host name ([`Grammar::Hostname`](crate::Grammar::Hostname)).
    pub fn new(tenant_id: impl Into<String>, hostname: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            doc: Document {
                tenant_id: Some(tenant_id.into()),
                hostname: Some(hostname.into()),
                default_v4_gateway: Some(String::new()),
                ..Document::default()
            },
        }
    }

    /// Without it, the agent takes Astara's default (64512) for both.
    pub fn asn(mut self, asn: u32, neighbor_asn: u32) -> ConfigBuilder {
        self.doc.asn = Some(asn.into());
        self.doc.neighbor_asn = Some(neighbor_asn.into());
        self
    }

    /// `host` is a DNS name or empty. Without it, the agent takes Astara's defaults.
    pub fn orchestrator(
        mut self,
        address: IpAddr,
        metadata_port: u16,
        host: impl Into<String>,
    ) -> ConfigBuilder {
        self.doc.orchestrator = Some(OrchestratorDoc {
            address: Some(address.to_string()),
            metadata_port: Some(metadata_port.into()),
            host: Some(host.into()),
        });
        self
    }

    /// `None` (the default): the external subnet's IPv4 gateway, if any.
    pub fn default_v4_gateway(mut self, gateway: Option<Ipv4Addr>) -> ConfigBuilder {
        self.doc.default_v4_gateway = Some(gateway.map(|g| g.to_string()).unwrap_or_default());
        self
    }

    pub fn network(mut self, network: NetworkBuilder) -> ConfigBuilder {
        self.doc.networks.push(network.doc);
        self
    }

    pub fn floating_ip(mut self, floating_ip: IpAddr, fixed_ip: IpAddr) -> ConfigBuilder {
        self.doc.floating_ips.push(FloatingIpDoc {
            floating_ip: Some(floating_ip.to_string()),
            fixed_ip: Some(fixed_ip.to_string()),
        });
        self
    }

    /// Written as Astara does, a `[destination, next_hop]` pair.
    pub fn static_route(mut self, destination: IpNet, next_hop: IpAddr) -> ConfigBuilder {
        self.doc.static_routes.push(StaticRouteDoc::Pair(vec![
            destination.to_string(),
            next_hop.to_string(),
        ]));
        self
    }

    /// The config, parsed back from the document's canonical JSON as the agent will parse it:
    /// `config.document` is what to send, and its [`hash`](Document::hash) is the one the agent
    /// will report.
    pub fn build(self) -> Result<RouterConfig, BuildError> {
        match crate::parse(&self.doc.to_canonical_json()) {
            Ok(config) => {
                debug_assert_eq!(config.document, self.doc, "the document round-trips");
                Ok(config)
            }
            Err(ConfigError::Invalid(problems)) => Err(BuildError { problems }),
            // The builder wrote the JSON: it is well-formed.
            Err(ConfigError::Syntax(e)) => Err(BuildError {
                problems: vec![Problem::new("", e)],
            }),
        }
    }
}

/// One network and the appliance's NIC on it.
#[derive(Debug, Clone)]
pub struct NetworkBuilder {
    doc: NetworkDoc,
}

impl NetworkBuilder {
    /// `network_id` is an id ([`Grammar::Id`](crate::Grammar::Id)). Both conf services are
    /// static.
    pub fn new(
        network_id: impl Into<String>,
        network_type: NetworkType,
        ifname: NicName,
    ) -> NetworkBuilder {
        NetworkBuilder {
            doc: NetworkDoc {
                network_id: Some(network_id.into()),
                network_type: Some(network_type.as_str().to_string()),
                v4_conf_service: Some(V4ConfService::Static.as_str().to_string()),
                v6_conf_service: Some(V6ConfService::Static.as_str().to_string()),
                interface: Some(InterfaceDoc {
                    ifname: Some(ifname.to_string()),
                    ..InterfaceDoc::default()
                }),
                ..NetworkDoc::default()
            },
        }
    }

    /// Free text ([`Grammar::Text`](crate::Grammar::Text)), shown only.
    pub fn name(mut self, name: impl Into<String>) -> NetworkBuilder {
        self.doc.name = Some(name.into());
        self
    }

    /// Set on the network and on its interface alike.
    pub fn mtu(mut self, mtu: u16) -> NetworkBuilder {
        self.doc.mtu = Some(mtu.into());
        self.interface().mtu = Some(mtu.into());
        self
    }

    /// An interface address with its prefix length, e.g. `192.168.0.1/24`.
    pub fn address(mut self, address: IpNet) -> NetworkBuilder {
        self.interface().addresses.push(address.to_string());
        self
    }

    pub fn subnet(mut self, subnet: SubnetBuilder) -> NetworkBuilder {
        self.doc.subnets.push(subnet.doc);
        self
    }

    pub fn allocation(mut self, allocation: AllocationBuilder) -> NetworkBuilder {
        self.doc.allocations.push(allocation.doc);
        self
    }

    fn interface(&mut self) -> &mut InterfaceDoc {
        self.doc.interface.get_or_insert_with(InterfaceDoc::default)
    }
}

#[derive(Debug, Clone)]
pub struct SubnetBuilder {
    doc: SubnetDoc,
}

impl SubnetBuilder {
    /// `id` is an id ([`Grammar::Id`](crate::Grammar::Id)); `cidr` a network prefix (no host
    /// bits). No gateway until one is set.
    pub fn new(id: impl Into<String>, cidr: IpNet, dhcp_enabled: bool) -> SubnetBuilder {
        SubnetBuilder {
            doc: SubnetDoc {
                id: Some(id.into()),
                cidr: Some(cidr.to_string()),
                gateway_ip: Some(String::new()),
                dhcp_enabled: Some(dhcp_enabled),
                ..SubnetDoc::default()
            },
        }
    }

    pub fn gateway_ip(mut self, gateway_ip: IpAddr) -> SubnetBuilder {
        self.doc.gateway_ip = Some(gateway_ip.to_string());
        self
    }

    pub fn dns_nameserver(mut self, server: IpAddr) -> SubnetBuilder {
        self.doc.dns_nameservers.push(server.to_string());
        self
    }

    pub fn host_route(mut self, destination: IpNet, next_hop: IpAddr) -> SubnetBuilder {
        self.doc.host_routes.push(HostRouteDoc {
            destination: Some(destination.to_string()),
            nexthop: Some(next_hop.to_string()),
        });
        self
    }
}

/// A port on the network that DHCP serves.
#[derive(Debug, Clone)]
pub struct AllocationBuilder {
    doc: AllocationDoc,
}

impl AllocationBuilder {
    /// `hostname` is a DNS name ([`Grammar::DnsName`](crate::Grammar::DnsName)); `device_id` a
    /// header value, or empty for a port no device holds.
    pub fn new(
        mac_address: MacAddr,
        hostname: impl Into<String>,
        device_id: impl Into<String>,
    ) -> AllocationBuilder {
        AllocationBuilder {
            doc: AllocationDoc {
                mac_address: Some(mac_address.to_string()),
                hostname: Some(hostname.into()),
                device_id: Some(device_id.into()),
                ..AllocationDoc::default()
            },
        }
    }

    /// An address of the port, and whether DHCP is enabled on its subnet. The same address
    /// twice: the last one counts.
    pub fn address(mut self, ip: IpAddr, dhcp_enabled: bool) -> AllocationBuilder {
        self.doc.ip_addresses.insert(ip.to_string(), dhcp_enabled);
        self
    }
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
