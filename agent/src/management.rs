//! The orchestrator's path to this appliance, as the boot configuration gave it: the
//! management NIC, its static addresses (the API listens on them), its MTU and its routes. A
//! pushed config may not cut it: the agent persists a config and re-applies it at every boot,
//! so a config that cut the path would lose the VM for good. [`ManagementPath::check`] is pure
//! and runs before anything is touched (a 422 naming the field), at each PUT and on the saved
//! config at start.

use std::net::IpAddr;

use akanda_model::{NetworkType, Problem, RouterConfig};
use ipnet::IpNet;

/// The management path from the boot configuration (`--boot-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementPath {
    /// The management NIC (`geN`).
    pub ifname: String,
    /// Its static addresses with their prefixes (none when it runs DHCP/SLAAC).
    pub addresses: Vec<IpNet>,
    /// Its MTU, when the boot configuration sets one.
    pub mtu: Option<u32>,
    /// Destinations the boot configuration routes through it (Neutron host routes).
    pub routes: Vec<IpNet>,
}

/// The smallest MTU IPv6 works with (RFC 8200); the management network is IPv6 in Astara.
const MIN_MANAGEMENT_MTU: u32 = 1280;

impl ManagementPath {
    /// The prefixes only the management NIC may reach: its addresses' networks and its boot
    /// routes.
    fn protected(&self) -> Vec<IpNet> {
        self.addresses
            .iter()
            .map(IpNet::trunc)
            .chain(self.routes.iter().copied())
            .filter(|p| p.prefix_len() > 0)
            .collect()
    }

    /// Every way `config` would cut the orchestrator's path, each with its field.
    pub fn check(&self, config: &RouterConfig) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mine = config.networks.iter().position(|n| n.ifname == self.ifname);
        match mine {
            None => problems.push(Problem::new(
                "networks",
                format!(
                    "no network is on {}, the management NIC of the boot configuration: the orchestrator would lose this appliance",
                    self.ifname
                ),
            )),
            Some(i) => {
                let n = &config.networks[i];
                let path = format!("networks[{i}]");
                if n.network_type != NetworkType::Management {
                    problems.push(Problem::new(
                        format!("{path}.network_type"),
                        format!(
                            "{} is the management NIC of the boot configuration: its network must stay of type management, not {}",
                            self.ifname,
                            n.network_type.as_str()
                        ),
                    ));
                }
                for a in &self.addresses {
                    if !n.addresses.contains(a) {
                        problems.push(Problem::new(
                            format!("{path}.interface.addresses"),
                            format!(
                                "{a}, the management address of the boot configuration (the API listens on it), is missing"
                            ),
                        ));
                    }
                }
                if let Some(mtu) = n.mtu {
                    match self.mtu {
                        Some(boot) if mtu != boot => problems.push(Problem::new(
                            format!("{path}.interface.mtu"),
                            format!(
                                "{mtu} is not the management network's MTU of the boot configuration ({boot})"
                            ),
                        )),
                        _ if mtu < MIN_MANAGEMENT_MTU => problems.push(Problem::new(
                            format!("{path}.interface.mtu"),
                            format!(
                                "{mtu} is below {MIN_MANAGEMENT_MTU}: the management network would stop carrying IPv6"
                            ),
                        )),
                        _ => {}
                    }
                }
            }
        }
        for (i, n) in config.networks.iter().enumerate() {
            if n.ifname != self.ifname && n.network_type == NetworkType::Management {
                problems.push(Problem::new(
                    format!("networks[{i}].network_type"),
                    format!(
                        "the management network is on {} (boot configuration), not {}",
                        self.ifname, n.ifname
                    ),
                ));
            }
        }
        self.check_capture(config, mine, &mut problems);
        problems
    }

    /// Routes, subnets, addresses and DNS servers elsewhere that would take traffic meant for
    /// the management network away from it.
    fn check_capture(
        &self,
        config: &RouterConfig,
        mine: Option<usize>,
        problems: &mut Vec<Problem>,
    ) {
        let protected = self.protected();
        let inside = |net: &IpNet| protected.iter().find(|p| p.contains(net)).copied();
        let overlaps = |net: &IpNet| {
            protected
                .iter()
                .find(|p| p.contains(net) || net.contains(*p))
                .copied()
        };
        let host = |ip: IpAddr| IpNet::from(ip);
        for (k, r) in config.static_routes.iter().enumerate() {
            // A route at least as specific as a management prefix wins over it; a wider one
            // (a default route) does not.
            if let Some(p) = inside(&r.destination) {
                problems.push(Problem::new(
                    format!("static_routes[{k}]"),
                    format!(
                        "{} would capture traffic for the management network ({p})",
                        r.destination
                    ),
                ));
            }
        }
        for (i, n) in config.networks.iter().enumerate() {
            if Some(i) == mine {
                continue;
            }
            for (j, s) in n.subnets.iter().enumerate() {
                let path = format!("networks[{i}].subnets[{j}]");
                if let Some(p) = overlaps(&s.cidr) {
                    problems.push(Problem::new(
                        format!("{path}.cidr"),
                        format!("{} overlaps the management network ({p})", s.cidr),
                    ));
                }
                for (l, r) in s.host_routes.iter().enumerate() {
                    if let Some(p) = inside(&r.destination) {
                        problems.push(Problem::new(
                            format!("{path}.host_routes[{l}]"),
                            format!(
                                "{} would capture traffic for the management network ({p})",
                                r.destination
                            ),
                        ));
                    }
                }
                for (l, d) in s.dns_nameservers.iter().enumerate() {
                    if let Some(p) = inside(&host(*d)) {
                        problems.push(Problem::new(
                            format!("{path}.dns_nameservers[{l}]"),
                            format!(
                                "{d} is on the management network ({p}): tenants' DNS traffic would be sent there"
                            ),
                        ));
                    }
                }
            }
            for (j, a) in n.addresses.iter().enumerate() {
                if let Some(p) = inside(&host(a.addr())) {
                    problems.push(Problem::new(
                        format!("networks[{i}].interface.addresses[{j}]"),
                        format!("{a} is inside the management network ({p})"),
                    ));
                }
            }
        }
        for (k, f) in config.floating_ips.iter().enumerate() {
            if let Some(p) = inside(&host(f.floating_ip)) {
                problems.push(Problem::new(
                    format!("floating_ips[{k}].floating_ip"),
                    format!("{} is inside the management network ({p})", f.floating_ip),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn basic() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/astara-router-basic.json"
        ))
        .unwrap()
    }

    fn parse(doc: &Value) -> RouterConfig {
        akanda_model::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The basic fixture's management network as a boot configuration would give it.
    fn path() -> ManagementPath {
        ManagementPath {
            ifname: "ge0".into(),
            addresses: vec!["fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/64"
                .parse()
                .unwrap()],
            mtu: Some(1500),
            routes: vec!["fdca:3ba5:a17a:cafe::/64".parse().unwrap()],
        }
    }

    #[track_caller]
    fn refused(doc: &Value, at: &str, says: &str) {
        let problems = path().check(&parse(doc));
        assert!(
            problems
                .iter()
                .any(|p| p.path == at && p.reason.contains(says)),
            "no problem at {at} saying {says:?}: {problems:#?}"
        );
    }

    #[test]
    fn the_fixture_keeps_the_path() {
        assert_eq!(path().check(&parse(&basic())), vec![]);
        // More addresses on the management NIC, or the boot MTU itself, are fine.
        let mut doc = basic();
        doc["networks"][0]["interface"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(json!("fdca:3ba5:a17a:acda::99/64"));
        doc["networks"][0]["interface"]["mtu"] = json!(1500);
        assert_eq!(path().check(&parse(&doc)), vec![]);
    }

    #[test]
    fn dropping_the_management_network_is_refused() {
        let mut doc = basic();
        doc["networks"].as_array_mut().unwrap().remove(0);
        refused(&doc, "networks", "no network is on ge0");
        refused(
            &json!({"tenant_id": "t", "hostname": "h"}),
            "networks",
            "no network is on ge0",
        );
    }

    #[test]
    fn re_typing_or_moving_the_management_network_is_refused() {
        let mut doc = basic();
        doc["networks"][0]["network_type"] = json!("isolated");
        refused(
            &doc,
            "networks[0].network_type",
            "must stay of type management",
        );
        let mut doc = basic();
        doc["networks"][0]["interface"]["ifname"] = json!("ge5");
        refused(&doc, "networks", "no network is on ge0");
        refused(&doc, "networks[0].network_type", "not ge5");
    }

    #[test]
    fn re_addressing_the_management_nic_is_refused() {
        let mut doc = basic();
        doc["networks"][0]["interface"]["addresses"] = json!(["fdca:3ba5:a17a:acda::7/64"]);
        refused(&doc, "networks[0].interface.addresses", "is missing");
        // Same address, another prefix: the on-link network changes.
        let mut doc = basic();
        doc["networks"][0]["interface"]["addresses"] =
            json!(["fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/120"]);
        refused(&doc, "networks[0].interface.addresses", "is missing");
    }

    #[test]
    fn an_mtu_that_breaks_the_management_network_is_refused() {
        let mut doc = basic();
        doc["networks"][0]["interface"]["mtu"] = json!(9000);
        refused(&doc, "networks[0].interface.mtu", "(1500)");
        let mut doc = basic();
        doc["networks"][0]["mtu"] = json!(1400);
        refused(&doc, "networks[0].interface.mtu", "(1500)");
        // Without a boot MTU: at least 1280. (The model already refuses less than 1280 on a
        // NIC with IPv6; an IPv4-only management network is held to it here.)
        let mut doc = basic();
        doc["networks"][0]["interface"]["addresses"] = json!(["10.250.0.5/24"]);
        doc["networks"][0]["subnets"] = json!([{"id": "m4", "cidr": "10.250.0.0/24",
            "gateway_ip": "10.250.0.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]);
        doc["networks"][0]["interface"]["mtu"] = json!(600);
        let boot = ManagementPath {
            addresses: vec!["10.250.0.5/24".parse().unwrap()],
            mtu: None,
            routes: vec![],
            ..path()
        };
        let problems = boot.check(&parse(&doc));
        assert!(
            problems
                .iter()
                .any(|p| p.path == "networks[0].interface.mtu" && p.reason.contains("below 1280")),
            "{problems:#?}"
        );
    }

    #[test]
    fn routes_subnets_addresses_and_dns_that_capture_management_traffic_are_refused() {
        let mut doc = basic();
        doc["static_routes"] = json!([["fdca:3ba5:a17a:acda::/80", "2001:db8:77::1"]]);
        refused(&doc, "static_routes[0]", "would capture traffic");
        let mut doc = basic();
        doc["static_routes"] = json!([["fdca:3ba5:a17a:cafe::/64", "2001:db8:77::1"]]);
        refused(&doc, "static_routes[0]", "fdca:3ba5:a17a:cafe::/64");
        // A default route is wider than the management prefixes: it captures nothing.
        let mut doc = basic();
        doc["static_routes"] = json!([["::/0", "2001:db8:77::1"]]);
        assert_eq!(path().check(&parse(&doc)), vec![]);
        let mut doc = basic();
        doc["networks"][2]["subnets"][1]["host_routes"] =
            json!([{"destination": "fdca:3ba5:a17a:acda::1/128", "nexthop": "2001:db8:100::9"}]);
        refused(
            &doc,
            "networks[2].subnets[1].host_routes[0]",
            "would capture traffic",
        );
        let mut doc = basic();
        doc["networks"][2]["subnets"][1]["dns_nameservers"] = json!(["fdca:3ba5:a17a:acda::1"]);
        refused(
            &doc,
            "networks[2].subnets[1].dns_nameservers[0]",
            "DNS traffic",
        );
        let mut doc = basic();
        doc["networks"][2]["subnets"][1]["cidr"] = json!("fdca:3ba5:a17a:cafe::/64");
        doc["networks"][2]["subnets"][1]["gateway_ip"] = json!("fdca:3ba5:a17a:cafe::1");
        doc["networks"][2]["interface"]["addresses"] =
            json!(["192.168.0.1/24", "fdca:3ba5:a17a:cafe::1/64"]);
        doc["networks"][2]["allocations"] = json!([]);
        doc["floating_ips"] = json!([]);
        refused(
            &doc,
            "networks[2].subnets[1].cidr",
            "overlaps the management network",
        );
        refused(
            &doc,
            "networks[2].interface.addresses[1]",
            "inside the management network",
        );
    }
}
