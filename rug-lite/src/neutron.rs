//! Neutron resources as the Networking API v2 returns them (and as notifications embed them).
//!
//! Lenient on purpose: every field rug-lite does not strictly need has a default, so a newer
//! Neutron with extra or missing extension attributes still parses.

use serde::{Deserialize, Serialize};

/// `device_owner` values rug-lite cares about.
pub(crate) mod owner {
    pub(crate) const ROUTER_GATEWAY: &str = "network:router_gateway";
    /// Ports through which a router sits on an internal network.
    pub(crate) const ROUTER_INTERFACES: &[&str] = &[
        "network:router_interface",
        "network:router_interface_distributed",
        "network:ha_router_replicated_interface",
    ];

    pub(crate) fn is_router_interface(device_owner: &str) -> bool {
        ROUTER_INTERFACES.contains(&device_owner)
    }

    /// Any port that Neutron's router plugin owns on behalf of a router.
    pub(crate) fn is_router_port(device_owner: &str) -> bool {
        device_owner == ROUTER_GATEWAY || is_router_interface(device_owner)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

/// A router's `routes` entry (extraroute) or a subnet's `host_routes` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RouteEntry {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GatewayInfo {
    pub network_id: String,
    #[serde(default)]
    pub external_fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub enable_snat: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Router {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub external_gateway_info: Option<GatewayInfo>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub ha: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
}

impl Router {
    /// The owning project: `project_id`, or the older `tenant_id`.
    pub(crate) fn project(&self) -> &str {
        self.project_id
            .as_deref()
            .or(self.tenant_id.as_deref())
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub network_id: String,
    #[serde(default)]
    pub mac_address: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Subnet {
    pub id: String,
    pub network_id: String,
    #[serde(default)]
    pub ip_version: u8,
    pub cidr: String,
    #[serde(default)]
    pub gateway_ip: Option<String>,
    #[serde(default)]
    pub enable_dhcp: bool,
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns_nameservers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub host_routes: Vec<RouteEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mtu: Option<u64>,
    #[serde(rename = "router:external", default)]
    pub router_external: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FloatingIp {
    pub id: String,
    pub floating_ip_address: String,
    #[serde(default)]
    pub floating_network_id: String,
    #[serde(default)]
    pub router_id: Option<String>,
    #[serde(default)]
    pub port_id: Option<String>,
    #[serde(default)]
    pub fixed_ip_address: Option<String>,
}

/// Neutron sends `null` for some list attributes (e.g. `tags` on older releases).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_from_a_notification_body_parses_with_gateway_and_routes() {
        let body = serde_json::json!({
            "id": "r1", "name": "r", "project_id": "p", "tenant_id": "p",
            "external_gateway_info": {"network_id": "ext", "enable_snat": true,
                "external_fixed_ips": [{"subnet_id": "s", "ip_address": "203.0.113.5"}]},
            "routes": [{"destination": "10.9.0.0/16", "nexthop": "10.0.0.9"}],
            "tags": null, "unknown_extension": 3
        });
        let r: Router = serde_json::from_value(body).unwrap();
        assert_eq!(r.project(), "p");
        assert_eq!(r.routes.len(), 1);
        assert!(r.tags.is_empty());
        let gw = r.external_gateway_info.unwrap();
        assert_eq!(gw.external_fixed_ips[0].ip_address, "203.0.113.5");
    }

    #[test]
    fn router_owner_classification() {
        assert!(owner::is_router_port("network:router_gateway"));
        assert!(owner::is_router_interface("network:router_interface"));
        assert!(!owner::is_router_interface("network:router_gateway"));
        assert!(!owner::is_router_port("compute:nova"));
    }
}
