//! The config document exactly as it travels over the wire (Astara v1 `PUT /v1/system/config`).
//!
//! Every field that Astara required is an `Option` here and every enum or address is a plain
//! string, so that deserialising never stops at the first problem: `validate` then reports *all*
//! problems with their JSON paths. Unknown keys are ignored, as Astara did, except inside filter
//! rules (Astara crashed on them; we report them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bounds::{self, Ignored, *};

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
    /// High availability is refused (`ha_resource`); its settings are read and dropped.
    pub ha_config: Option<Ignored>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<OrchestratorDoc>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_NETWORKS>")]
    pub networks: Vec<NetworkDoc>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_FLOATING_IPS>")]
    pub floating_ips: Vec<FloatingIpDoc>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_STATIC_ROUTES>")]
    pub static_routes: Vec<StaticRouteDoc>,
    #[serde(deserialize_with = "bounds::named_lists::<_, MAX_NAMED_LISTS, MAX_LIST_ENTRIES>")]
    pub address_book: BTreeMap<String, Vec<String>>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_ANCHORS>")]
    pub anchors: Vec<AnchorDoc>,
    #[serde(deserialize_with = "bounds::named_lists::<_, MAX_NAMED_LISTS, MAX_LIST_ENTRIES>")]
    pub labels: BTreeMap<String, Vec<String>>,
    /// VPN is carried and persisted but not applied yet (a later issue); secrets are redacted
    /// whenever the document is shown, and never hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpn: Option<VpnDoc>,
    /// Advanced services by name; their settings are read and dropped (only `router` exists).
    #[serde(deserialize_with = "bounds::map::<_, _, MAX_SERVICES>")]
    pub services: BTreeMap<String, Ignored>,
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
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_SUBNETS>")]
    pub subnets: Vec<SubnetDoc>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_ALLOCATIONS>")]
    pub allocations: Vec<AllocationDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_INTERFACE_ADDRESSES>")]
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
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_DNS_NAMESERVERS>")]
    pub dns_nameservers: Vec<String>,
    #[serde(deserialize_with = "bounds::seq::<_, _, MAX_HOST_ROUTES>")]
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
    #[serde(deserialize_with = "bounds::map::<_, _, MAX_ALLOCATION_ADDRESSES>")]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StaticRouteDoc {
    Pair(Vec<String>),
    Object(HostRouteDoc),
}

/// By hand rather than `untagged`, which would buffer the whole entry (of any size) before
/// trying each shape: a pair is read up to one entry past its two, then refused.
impl<'de> Deserialize<'de> for StaticRouteDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RouteVisitor;
        impl<'de> serde::de::Visitor<'de> for RouteVisitor {
            type Value = StaticRouteDoc;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [destination, next_hop] pair or an object")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<StaticRouteDoc, A::Error> {
                let pair = bounds::Bounded::<String, 2>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(StaticRouteDoc::Pair(pair.0))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<StaticRouteDoc, A::Error> {
                HostRouteDoc::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(StaticRouteDoc::Object)
            }
        }
        d.deserialize_any(RouteVisitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnchorDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Each rule is kept as a JSON object so that unknown keys can be reported, all at once;
    /// its values are scalars (see [`bounds::filter_rules`]).
    #[serde(deserialize_with = "bounds::filter_rules")]
    pub rules: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Astara's `vpn` section: IPsec site-to-site services as Neutron's VPNaaS describes them. `{}`,
/// null, an absent key and `{"ipsec": []}` all mean "no VPN". Typed (unknown keys dropped, as
/// everywhere else in the document), so it holds no arbitrary JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpnDoc {
    #[serde(deserialize_with = "bounds::seq_or_null::<_, _, MAX_VPN_SERVICES>")]
    pub ipsec: Vec<IpsecServiceDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpsecServiceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_v4_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_v6_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(deserialize_with = "bounds::seq_or_null::<_, _, MAX_VPN_CONNECTIONS>")]
    pub ipsec_connections: Vec<IpsecConnectionDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpsecConnectionDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(deserialize_with = "bounds::seq_or_null::<_, _, MAX_VPN_CIDRS>")]
    pub peer_cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<String>,
    /// The pre-shared key: a secret. Shown as [`crate::REDACTED`], never hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpnservice_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpd: Option<DpdDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ikepolicy: Option<IkePolicyDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipsecpolicy: Option<IpsecPolicyDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ep_group: Option<EndpointGroupDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ep_group: Option<EndpointGroupDoc>,
}

/// Dead peer detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpdDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IkePolicyDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ike_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase1_negotiation_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<LifetimeDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpsecPolicyDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encapsulation_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<LifetimeDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifetimeDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointGroupDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "bounds::seq_or_null::<_, _, MAX_VPN_CIDRS>")]
    pub endpoints: Vec<String>,
}
