//! The config document exactly as it travels over the wire (Astara v1 `PUT /v1/system/config`).
//!
//! Every field that Astara required is an `Option` here and every enum or address is a plain
//! string, so that deserialising never stops at the first problem: `validate` then reports *all*
//! problems with their JSON paths. Unknown keys are ignored, as Astara did, except inside filter
//! rules (Astara crashed on them; we report them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Document {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbor_asn: Option<u64>,
    /// An IPv4 address, `""` or null (both mean "none").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_v4_gateway: Option<String>,
    pub ha_resource: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<OrchestratorDoc>,
    pub networks: Vec<NetworkDoc>,
    pub floating_ips: Vec<FloatingIpDoc>,
    pub static_routes: Vec<StaticRouteDoc>,
    pub address_book: BTreeMap<String, Vec<String>>,
    pub anchors: Vec<AnchorDoc>,
    pub labels: BTreeMap<String, Vec<String>>,
    /// VPN is carried and persisted but not applied yet (a later issue); secrets are redacted
    /// whenever the document is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpn: Option<serde_json::Value>,
    pub services: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestratorDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_port: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_type: Option<String>,
    /// Network-level MTU as the orchestrator sends it; `interface.mtu` wins when both are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4_conf_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v6_conf_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceDoc>,
    pub subnets: Vec<SubnetDoc>,
    pub allocations: Vec<AllocationDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubnetDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// An address, `""` or null (both mean "no gateway").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_enabled: Option<bool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRouteDoc>,
}

/// Neutron spells the next hop `nexthop`; Astara's model called it `next_hop`. Both are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRouteDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(alias = "next_hop", skip_serializing_if = "Option::is_none")]
    pub nexthop: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocationDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// address → "DHCP enabled on that address's subnet".
    pub ip_addresses: BTreeMap<String, bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FloatingIpDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floating_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<String>,
}

/// Astara sends top-level static routes as `[destination, next_hop]` pairs; an object with
/// `destination` and `next_hop` (or `nexthop`) is accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StaticRouteDoc {
    Pair(Vec<String>),
    Object(HostRouteDoc),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnchorDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Each rule is kept as a JSON object so that unknown keys can be reported, all at once.
    pub rules: Vec<serde_json::Map<String, serde_json::Value>>,
}
