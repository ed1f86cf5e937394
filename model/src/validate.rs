//! Turns a wire [`Document`] into a [`RouterConfig`], collecting every problem with its JSON path.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::Value;

use crate::bounds::*;
use crate::config::*;
use crate::document::*;
use crate::grammar::Grammar;
use crate::problem::Problem;

/// Advanced services this appliance accepts in `services` (Astara's `ENABLED_SERVICES`).
const ENABLED_SERVICES: &[&str] = &["router"];

/// Keys a filter rule may have (Astara's `FilterRule` arguments).
const FILTER_RULE_KEYS: &[&str] = &[
    "action",
    "direction",
    "interface",
    "destination_interface",
    "family",
    "protocol",
    "source",
    "destination",
    "source_port",
    "destination_port",
    "redirect",
    "redirect_port",
];

/// Validates a document. On success the config is complete and consistent; otherwise every
/// problem found is returned, in document order.
pub fn validate(doc: &Document) -> Result<RouterConfig, Vec<Problem>> {
    let mut v = Validator::default();
    let config = v.config(doc);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(v.problems)
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

fn field(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

fn key(base: &str, k: &str) -> String {
    format!("{base}[{}]", Value::String(k.to_string()))
}

fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem::new(path, reason));
    }

    /// A string that must follow a [`Grammar`] (see `grammar.rs`).
    fn grammar(&mut self, value: &str, path: &str, grammar: Grammar) {
        if !grammar.matches(value) {
            self.problem(
                path,
                format!("{} is not {}", quoted(value), grammar.describe()),
            );
        }
    }

    /// An optional string: absent, null and `""` are fine, anything else follows `grammar`.
    fn optional(&mut self, value: &Option<String>, path: &str, grammar: Grammar) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            self.grammar(v, path, grammar);
        }
    }

    /// A required, non-empty string.
    fn required(&mut self, value: &Option<String>, path: &str) -> String {
        match value {
            Some(s) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                self.problem(path, "must not be empty");
                String::new()
            }
            None => {
                self.problem(path, "is required");
                String::new()
            }
        }
    }

    fn ip(&mut self, s: &str, path: &str) -> Option<IpAddr> {
        match IpAddr::from_str(s) {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.problem(path, format!("{} is not a valid IP address", quoted(s)));
                None
            }
        }
    }

    /// A network prefix such as `192.168.0.0/24`: host bits must be zero.
    fn cidr(&mut self, s: &str, path: &str) -> Option<IpNet> {
        let Ok(net) = IpNet::from_str(s) else {
            self.problem(path, format!("{} is not a valid CIDR", quoted(s)));
            return None;
        };
        if net.trunc() != net {
            self.problem(
                path,
                format!(
                    "{} has host bits set (the network is {})",
                    quoted(s),
                    net.trunc()
                ),
            );
            return None;
        }
        Some(net)
    }

    /// An interface address with its prefix length, such as `192.168.0.1/24`.
    fn interface_address(&mut self, s: &str, path: &str) -> Option<IpNet> {
        let Ok(net) = IpNet::from_str(s) else {
            let reason = if IpAddr::from_str(s).is_ok() {
                format!(
                    "{} has no prefix length (write it as address/prefix)",
                    quoted(s)
                )
            } else {
                format!("{} is not a valid address/prefix", quoted(s))
            };
            self.problem(path, reason);
            return None;
        };
        if net.prefix_len() == 0 {
            self.problem(
                path,
                format!(
                    "{} has prefix length 0: every address would be on-link on this NIC",
                    quoted(s)
                ),
            );
            return None;
        }
        let ip = net.addr();
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            self.problem(
                path,
                format!("{} cannot be an interface address", quoted(s)),
            );
            return None;
        }
        if let IpNet::V4(v4) = net {
            if v4.prefix_len() < 31 && (v4.addr() == v4.network() || v4.addr() == v4.broadcast()) {
                self.problem(
                    path,
                    format!(
                        "{} is the network or broadcast address of its prefix",
                        quoted(s)
                    ),
                );
                return None;
            }
        }
        Some(net)
    }

    fn enum_value<T: Copy>(
        &mut self,
        value: Option<&str>,
        path: &str,
        allowed: &[(&str, T)],
        default: Option<T>,
    ) -> Option<T> {
        let Some(s) = value else {
            if default.is_none() {
                self.problem(path, "is required");
            }
            return default;
        };
        if let Some((_, t)) = allowed.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
        self.problem(
            path,
            format!("{} is not one of: {}", quoted(s), names.join(", ")),
        );
        default
    }

    fn config(&mut self, doc: &Document) -> RouterConfig {
        let tenant_id = self.required(&doc.tenant_id, "tenant_id");
        if !tenant_id.is_empty() {
            self.grammar(&tenant_id, "tenant_id", Grammar::HeaderValue);
        }
        let hostname = self.required(&doc.hostname, "hostname");
        if !hostname.is_empty() {
            self.grammar(&hostname, "hostname", Grammar::Hostname);
        }
        let asn = self.asn(doc.asn, "asn").unwrap_or(DEFAULT_ASN);
        let neighbor_asn = self.asn(doc.neighbor_asn, "neighbor_asn").unwrap_or(asn);
        if doc.ha_resource {
            self.problem(
                "ha_resource",
                "high availability is not supported by this agent",
            );
        }
        for name in doc.services.keys() {
            if !ENABLED_SERVICES.contains(&name.as_str()) {
                self.problem(
                    key("services", name),
                    format!(
                        "this appliance cannot provide the advanced service {}",
                        quoted(name)
                    ),
                );
            }
        }
        if let Some(vpn) = &doc.vpn {
            self.vpn(vpn);
        }
        let orchestrator = self.orchestrator(doc.orchestrator.as_ref());

        let networks: Vec<Network> = doc
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| self.network(n, &index("networks", i)))
            .collect();
        self.check_networks_together(&networks);

        let default_v4_gateway = self.default_v4_gateway(doc, &networks);
        self.check_upstream_gateway(&networks, default_v4_gateway);
        self.check_default_v4_gateway_on_link(&networks, default_v4_gateway);
        let floating_ips = self.floating_ips(&doc.floating_ips, &networks, default_v4_gateway);
        let static_routes = doc
            .static_routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.static_route(r, &index("static_routes", i)))
            .collect();
        let address_book = self.cidr_lists(&doc.address_book, "address_book");
        let labels = self.cidr_lists(&doc.labels, "labels");
        let ifnames: Vec<&str> = networks.iter().map(|n| n.ifname.as_str()).collect();
        let anchors = doc
            .anchors
            .iter()
            .enumerate()
            .map(|(i, a)| self.anchor(a, &index("anchors", i), &ifnames, &address_book))
            .collect::<Vec<Anchor>>();
        self.check_ruleset_budget(doc, &anchors, &address_book);

        RouterConfig {
            tenant_id,
            hostname,
            asn,
            neighbor_asn,
            default_v4_gateway,
            orchestrator,
            networks,
            floating_ips,
            static_routes,
            address_book,
            labels,
            anchors,
            document: doc.clone(),
        }
    }

    /// VPN is carried, not applied: only what would be wrong whatever an implementation does
    /// is checked here, and every string's grammar (an implementation writes them into an
    /// IPsec daemon's files).
    fn vpn(&mut self, vpn: &VpnDoc) {
        for (i, service) in vpn.ipsec.iter().enumerate() {
            let service_path = index("vpn.ipsec", i);
            let at = |k: &str| field(&service_path, k);
            self.optional(&service.id, &at("id"), Grammar::Id);
            self.optional(&service.name, &at("name"), Grammar::Text);
            self.optional(&service.status, &at("status"), Grammar::Name);
            self.optional(&service.router_id, &at("router_id"), Grammar::Id);
            self.optional(&service.subnet_id, &at("subnet_id"), Grammar::Id);
            for (k, value, v4) in [
                ("external_v4_ip", &service.external_v4_ip, true),
                ("external_v6_ip", &service.external_v6_ip, false),
            ] {
                if let Some(ip) = value.as_deref().filter(|v| !v.is_empty()) {
                    match self.ip(ip, &at(k)) {
                        Some(ip) if ip.is_ipv4() != v4 => self.problem(
                            at(k),
                            format!("{ip} is not an IPv{} address", if v4 { 4 } else { 6 }),
                        ),
                        _ => {}
                    }
                }
            }
            for (j, connection) in service.ipsec_connections.iter().enumerate() {
                self.ipsec_connection(
                    connection,
                    &index(&field(&service_path, "ipsec_connections"), j),
                );
            }
        }
    }

    fn ipsec_connection(&mut self, c: &IpsecConnectionDoc, path: &str) {
        let at = |k: &str| field(path, k);
        self.optional(&c.id, &at("id"), Grammar::Id);
        self.optional(&c.tenant_id, &at("tenant_id"), Grammar::Id);
        self.optional(&c.name, &at("name"), Grammar::Text);
        self.optional(&c.vpnservice_id, &at("vpnservice_id"), Grammar::Id);
        for (k, value) in [
            ("route_mode", &c.route_mode),
            ("initiator", &c.initiator),
            ("auth_mode", &c.auth_mode),
            ("status", &c.status),
        ] {
            self.optional(value, &at(k), Grammar::Name);
        }
        // An address or a DNS name (Neutron takes both).
        if let Some(peer) = c.peer_address.as_deref().filter(|p| !p.is_empty()) {
            if IpAddr::from_str(peer).is_err() {
                self.grammar(peer, &at("peer_address"), Grammar::DnsName);
            }
        }
        self.optional(&c.peer_id, &at("peer_id"), Grammar::Quoted);
        for (k, cidr) in c.peer_cidrs.iter().enumerate() {
            self.vpn_cidr(cidr, &index(&at("peer_cidrs"), k));
        }
        let psk_path = at("psk");
        match c.psk.as_deref() {
            Some(crate::REDACTED) => self.problem(
                psk_path,
                format!(
                    "{} is the redaction placeholder a GET shows, not a key: send the pre-shared key itself",
                    quoted(crate::REDACTED)
                ),
            ),
            Some("") => self.problem(psk_path, "must not be empty"),
            // A secret: the refusal does not repeat it.
            Some(psk) if !Grammar::Quoted.matches(psk) => self.problem(
                psk_path,
                format!("is not {}", Grammar::Quoted.describe()),
            ),
            _ => {}
        }
        if let Some(dpd) = &c.dpd {
            self.optional(&dpd.action, &field(&at("dpd"), "action"), Grammar::Name);
        }
        if let Some(ike) = &c.ikepolicy {
            let p = at("ikepolicy");
            self.policy_common(&p, &ike.id, &ike.tenant_id, &ike.name, &ike.lifetime);
            for (k, value) in [
                ("ike_version", &ike.ike_version),
                ("auth_algorithm", &ike.auth_algorithm),
                ("encryption_algorithm", &ike.encryption_algorithm),
                ("pfs", &ike.pfs),
                ("phase1_negotiation_mode", &ike.phase1_negotiation_mode),
            ] {
                self.optional(value, &field(&p, k), Grammar::Name);
            }
        }
        if let Some(ipsec) = &c.ipsecpolicy {
            let p = at("ipsecpolicy");
            self.policy_common(
                &p,
                &ipsec.id,
                &ipsec.tenant_id,
                &ipsec.name,
                &ipsec.lifetime,
            );
            for (k, value) in [
                ("transform_protocol", &ipsec.transform_protocol),
                ("auth_algorithm", &ipsec.auth_algorithm),
                ("encryption_algorithm", &ipsec.encryption_algorithm),
                ("encapsulation_mode", &ipsec.encapsulation_mode),
                ("pfs", &ipsec.pfs),
            ] {
                self.optional(value, &field(&p, k), Grammar::Name);
            }
        }
        for (k, group) in [
            ("local_ep_group", &c.local_ep_group),
            ("peer_ep_group", &c.peer_ep_group),
        ] {
            let Some(group) = group else { continue };
            let p = at(k);
            self.optional(&group.id, &field(&p, "id"), Grammar::Id);
            self.optional(&group.tenant_id, &field(&p, "tenant_id"), Grammar::Id);
            self.optional(&group.name, &field(&p, "name"), Grammar::Text);
            self.optional(&group.kind, &field(&p, "type"), Grammar::Name);
            for (e, endpoint) in group.endpoints.iter().enumerate() {
                // A CIDR (type cidr) or a subnet id (type subnet).
                if !endpoint.contains('/') {
                    self.grammar(endpoint, &index(&field(&p, "endpoints"), e), Grammar::Id);
                } else {
                    self.vpn_cidr(endpoint, &index(&field(&p, "endpoints"), e));
                }
            }
        }
    }

    fn policy_common(
        &mut self,
        path: &str,
        id: &Option<String>,
        tenant_id: &Option<String>,
        name: &Option<String>,
        lifetime: &Option<LifetimeDoc>,
    ) {
        self.optional(id, &field(path, "id"), Grammar::Id);
        self.optional(tenant_id, &field(path, "tenant_id"), Grammar::Id);
        self.optional(name, &field(path, "name"), Grammar::Text);
        if let Some(l) = lifetime {
            self.optional(
                &l.units,
                &field(&field(path, "lifetime"), "units"),
                Grammar::Name,
            );
        }
    }

    /// A VPN prefix: parsed (host bits are the daemon's business, as in Neutron).
    fn vpn_cidr(&mut self, s: &str, path: &str) {
        if IpNet::from_str(s).is_err() {
            self.problem(path, format!("{} is not a valid CIDR", quoted(s)));
        }
    }

    fn asn(&mut self, value: Option<u64>, path: &str) -> Option<u32> {
        let v = value?;
        match u32::try_from(v) {
            Ok(asn) if asn != 0 => Some(asn),
            _ => {
                self.problem(path, format!("{v} is not an AS number (1 to 4294967295)"));
                None
            }
        }
    }

    /// A Neutron id: it reaches dnsmasq's config file and the metadata proxy's headers, so a
    /// newline or a quote in it would inject a directive or a header.
    fn identifier(&mut self, id: &str, path: &str) {
        if !id.is_empty() {
            self.grammar(id, path, Grammar::Id);
        }
    }

    fn orchestrator(&mut self, doc: Option<&OrchestratorDoc>) -> Orchestrator {
        let default_address = IpAddr::from_str(DEFAULT_ORCHESTRATOR_ADDRESS).expect("constant");
        let Some(doc) = doc else {
            return Orchestrator {
                address: default_address,
                metadata_port: DEFAULT_METADATA_PORT,
            };
        };
        let address = match &doc.address {
            Some(a) => self
                .ip(a, "orchestrator.address")
                .unwrap_or(default_address),
            None => default_address,
        };
        self.optional(&doc.host, "orchestrator.host", Grammar::DnsName);
        let metadata_port = match doc.metadata_port {
            None => DEFAULT_METADATA_PORT,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => p,
                _ => {
                    self.problem(
                        "orchestrator.metadata_port",
                        format!("{p} is not a TCP port (1 to 65535)"),
                    );
                    DEFAULT_METADATA_PORT
                }
            },
        };
        Orchestrator {
            address,
            metadata_port,
        }
    }

    fn network(&mut self, doc: &NetworkDoc, path: &str) -> Network {
        let id = self.required(&doc.network_id, &field(path, "network_id"));
        self.identifier(&id, &field(path, "network_id"));
        self.optional(&doc.name, &field(path, "name"), Grammar::Text);
        let network_type = self
            .enum_value(
                doc.network_type.as_deref(),
                &field(path, "network_type"),
                &NetworkType::ALL,
                Some(NetworkType::Isolated),
            )
            .unwrap_or(NetworkType::Isolated);
        let v4_conf_service = self
            .enum_value(
                doc.v4_conf_service.as_deref(),
                &field(path, "v4_conf_service"),
                &V4ConfService::ALL,
                Some(V4ConfService::Static),
            )
            .unwrap_or(V4ConfService::Static);
        let v6_conf_service = self
            .enum_value(
                doc.v6_conf_service.as_deref(),
                &field(path, "v6_conf_service"),
                &V6ConfService::ALL,
                Some(V6ConfService::Static),
            )
            .unwrap_or(V6ConfService::Static);

        let iface_path = field(path, "interface");
        let (ifname, addresses, iface_mtu) = match &doc.interface {
            None => {
                self.problem(&iface_path, "is required");
                (String::new(), Vec::new(), None)
            }
            Some(iface) => {
                self.optional(
                    &iface.description,
                    &field(&iface_path, "description"),
                    Grammar::Text,
                );
                let ifname_path = field(&iface_path, "ifname");
                let ifname = self.required(&iface.ifname, &ifname_path);
                if !ifname.is_empty() && !is_ge_name(&ifname) {
                    self.problem(
                        &ifname_path,
                        format!(
                            "{} is not an interface name of the form geN",
                            quoted(&ifname)
                        ),
                    );
                }
                let addrs_path = field(&iface_path, "addresses");
                let addresses: Vec<IpNet> = iface
                    .addresses
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| self.interface_address(a, &index(&addrs_path, i)))
                    .collect();
                (
                    ifname,
                    addresses,
                    iface.mtu.map(|m| (m, field(&iface_path, "mtu"))),
                )
            }
        };
        // IPv6 on the NIC: an address, or a subnet (dnsmasq advertises it, with the MTU, and
        // refuses an RA MTU under 1280; Neutron refuses IPv6 subnets on such a network too).
        let has_v6 = addresses.iter().any(|a| matches!(a, IpNet::V6(_)))
            || doc.subnets.iter().any(|s| {
                s.cidr
                    .as_deref()
                    .and_then(|c| IpNet::from_str(c).ok())
                    .is_some_and(|n| matches!(n, IpNet::V6(_)))
            });
        let mtu = match iface_mtu.or_else(|| doc.mtu.map(|m| (m, field(path, "mtu")))) {
            None => None,
            Some((m, mtu_path)) => self.mtu(m, &mtu_path, has_v6),
        };

        let subnets: Vec<Subnet> = doc
            .subnets
            .iter()
            .enumerate()
            .map(|(i, s)| self.subnet(s, &index(&field(path, "subnets"), i)))
            .collect();
        let allocations = doc
            .allocations
            .iter()
            .enumerate()
            .map(|(i, a)| self.allocation(a, &index(&field(path, "allocations"), i), &subnets))
            .collect();
        Network {
            id,
            name: doc.name.clone().unwrap_or_default(),
            network_type,
            ifname,
            mtu,
            addresses,
            v4_conf_service,
            v6_conf_service,
            subnets,
            allocations,
        }
    }

    fn mtu(&mut self, mtu: u64, path: &str, has_v6: bool) -> Option<u32> {
        let min = if has_v6 { 1280 } else { 68 };
        if !(min..=65535).contains(&mtu) {
            let why = if has_v6 && mtu >= 68 {
                " (IPv6 needs at least 1280)"
            } else {
                ""
            };
            self.problem(
                path,
                format!("{mtu} is not a valid MTU ({min} to 65535){why}"),
            );
            return None;
        }
        Some(mtu as u32)
    }

    fn subnet(&mut self, doc: &SubnetDoc, path: &str) -> Subnet {
        let id = self.required(&doc.id, &field(path, "id"));
        self.identifier(&id, &field(path, "id"));
        let cidr_path = field(path, "cidr");
        let cidr = match &doc.cidr {
            None => {
                self.problem(&cidr_path, "is required");
                None
            }
            Some(c) => self.cidr(c, &cidr_path).filter(|net| {
                // A /0 subnet would make the whole Internet on-link: neighbours' traffic would
                // be answered by this router (ARP/ND), and every other prefix overlaps it.
                let whole = net.prefix_len() == 0;
                if whole {
                    self.problem(
                        &cidr_path,
                        format!("{net} covers every address: a subnet cannot be /0"),
                    );
                }
                // fe80::/10 is on every NIC already, and the kernel's: the router's addresses
                // there are never configured, and bird cannot peer with a gateway there
                // without naming an interface.
                let link_local = match net {
                    IpNet::V6(n) => {
                        let fe80: ipnet::Ipv6Net = "fe80::/10".parse().expect("constant");
                        fe80.contains(n) || n.contains(&fe80)
                    }
                    IpNet::V4(_) => false,
                };
                if link_local {
                    self.problem(
                        &cidr_path,
                        format!("{net} is link-local: a subnet cannot overlap fe80::/10"),
                    );
                }
                !whole && !link_local
            }),
        };
        let gw_path = field(path, "gateway_ip");
        let gateway_ip = match doc.gateway_ip.as_deref() {
            None | Some("") => None,
            Some(g) => self.ip(g, &gw_path),
        };
        if let (Some(gw), Some(net)) = (gateway_ip, cidr) {
            if !net.contains(&gw) {
                self.problem(&gw_path, format!("{gw} is not inside the subnet {net}"));
            }
        }
        if doc.dhcp_enabled.is_none() {
            self.problem(field(path, "dhcp_enabled"), "is required");
        }
        let dns_path = field(path, "dns_nameservers");
        let dns_nameservers = doc
            .dns_nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let ip = self.ip(d, &index(&dns_path, i))?;
                // dnsmasq hands a subnet's DNS servers out in that family's DHCP option, which
                // takes no address of the other (Neutron refuses them too).
                match cidr {
                    Some(net) if net.addr().is_ipv4() != ip.is_ipv4() => {
                        self.problem(
                            index(&dns_path, i),
                            format!("{ip} is not of the subnet's IP family ({net})"),
                        );
                        None
                    }
                    _ => Some(ip),
                }
            })
            .collect();
        let routes_path = field(path, "host_routes");
        let host_routes = doc
            .host_routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route_object(r, &index(&routes_path, i)))
            .collect();
        Subnet {
            id,
            // A placeholder only when a problem was recorded: the config is then discarded.
            cidr: cidr.unwrap_or(IpNet::V4(Default::default())),
            gateway_ip,
            dhcp_enabled: doc.dhcp_enabled.unwrap_or(false),
            dns_nameservers,
            host_routes,
        }
    }

    fn route(
        &mut self,
        dest: Option<&str>,
        nh: Option<&str>,
        path: &str,
        nh_name: &str,
    ) -> Option<Route> {
        let dest_path = field(path, "destination");
        let nh_path = field(path, nh_name);
        let destination = match dest {
            None => {
                self.problem(&dest_path, "is required");
                None
            }
            Some(d) => self.cidr(d, &dest_path),
        };
        let next_hop = match nh {
            None => {
                self.problem(&nh_path, "is required");
                None
            }
            Some(n) => self.ip(n, &nh_path),
        };
        self.same_family(destination?, next_hop?, &nh_path)
    }

    /// A route whose next hop is of the destination's family.
    fn same_family(
        &mut self,
        destination: IpNet,
        next_hop: IpAddr,
        nh_path: &str,
    ) -> Option<Route> {
        if destination.addr().is_ipv4() != next_hop.is_ipv4() {
            self.problem(
                nh_path,
                format!("{next_hop} is not of the same IP family as {destination}"),
            );
            return None;
        }
        Some(Route {
            destination,
            next_hop,
        })
    }

    fn route_object(&mut self, doc: &HostRouteDoc, path: &str) -> Option<Route> {
        self.route(
            doc.destination.as_deref(),
            doc.nexthop.as_deref(),
            path,
            "nexthop",
        )
    }

    fn static_route(&mut self, doc: &StaticRouteDoc, path: &str) -> Option<Route> {
        match doc {
            StaticRouteDoc::Object(o) => self.route_object(o, path),
            StaticRouteDoc::Pair(pair) if pair.len() == 2 => {
                let dest = self.cidr(&pair[0], &index(path, 0));
                let nh = self.ip(&pair[1], &index(path, 1));
                self.same_family(dest?, nh?, &index(path, 1))
            }
            StaticRouteDoc::Pair(pair) => {
                self.problem(
                    path,
                    format!(
                        "must be a [destination, next_hop] pair, not {} items",
                        pair.len()
                    ),
                );
                None
            }
        }
    }

    fn allocation(&mut self, doc: &AllocationDoc, path: &str, subnets: &[Subnet]) -> Allocation {
        let mac_path = field(path, "mac_address");
        let mac_address = self.required(&doc.mac_address, &mac_path);
        let mac_address = match normalise_mac(&mac_address) {
            Some(m) => m,
            None => {
                if !mac_address.is_empty() {
                    self.problem(
                        &mac_path,
                        format!("{} is not a MAC address", quoted(&mac_address)),
                    );
                }
                mac_address
            }
        };
        let ips_path = field(path, "ip_addresses");
        let mut ip_addresses = Vec::new();
        for (ip, dhcp) in &doc.ip_addresses {
            let ip_path = key(&ips_path, ip);
            if let Some(addr) = self.ip(ip, &ip_path) {
                if !subnets.is_empty() && !subnets.iter().any(|s| s.cidr.contains(&addr)) {
                    self.problem(
                        &ip_path,
                        format!("{addr} is not inside any subnet of this network"),
                    );
                }
                ip_addresses.push((addr, *dhcp));
            }
        }
        let host_path = field(path, "hostname");
        let hostname = self.required(&doc.hostname, &host_path);
        if !hostname.is_empty() {
            self.grammar(&hostname, &host_path, Grammar::DnsName);
        }
        let device_path = field(path, "device_id");
        let device_id = match &doc.device_id {
            None => {
                self.problem(&device_path, "is required");
                String::new()
            }
            Some(d) => {
                // Empty: a port that no device holds (the header is then sent empty).
                if !d.is_empty() {
                    self.grammar(d, &device_path, Grammar::HeaderValue);
                }
                d.clone()
            }
        };
        Allocation {
            mac_address,
            ip_addresses,
            hostname,
            device_id,
        }
    }

    /// Checks that involve several networks at once.
    fn check_networks_together(&mut self, networks: &[Network]) {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut ifnames: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, String> = HashMap::new();
        let mut prefixes: Vec<(IpNet, String)> = Vec::new();
        let mut singletons: HashMap<NetworkType, usize> = HashMap::new();
        let mut fixed_ips: HashMap<IpAddr, String> = HashMap::new();
        let allocations: usize = networks.iter().map(|n| n.allocations.len()).sum();
        if allocations > MAX_ALLOCATIONS_TOTAL {
            self.problem(
                "networks",
                format!("{allocations} allocations in all: the limit is {MAX_ALLOCATIONS_TOTAL}"),
            );
        }
        for (i, n) in networks.iter().enumerate() {
            let path = index("networks", i);
            // Two ports with one address: DHCP, the metadata proxy and NAT would each pick one.
            // (The router's own port is an allocation too, in Astara: its addresses are the
            // interface's, which is fine.)
            for (j, a) in n.allocations.iter().enumerate() {
                for (k, (ip, _)) in a.ip_addresses.iter().enumerate() {
                    let ip_path = format!("{path}.allocations[{j}].ip_addresses[{k}]");
                    if let Some(first) = fixed_ips.insert(*ip, ip_path.clone()) {
                        if first != ip_path {
                            self.problem(&ip_path, format!("{ip} is also the address of {first}"));
                        }
                    }
                }
            }
            if !n.id.is_empty() {
                if let Some(first) = ids.insert(&n.id, i) {
                    self.problem(
                        field(&path, "network_id"),
                        format!("{} is also the id of networks[{first}]", quoted(&n.id)),
                    );
                }
            }
            if !n.ifname.is_empty() {
                if let Some(first) = ifnames.insert(&n.ifname, i) {
                    self.problem(
                        field(&path, "interface.ifname"),
                        format!(
                            "{} is also the interface of networks[{first}]",
                            quoted(&n.ifname)
                        ),
                    );
                }
            }
            if matches!(
                n.network_type,
                NetworkType::Management | NetworkType::External
            ) {
                if let Some(first) = singletons.insert(n.network_type, i) {
                    self.problem(
                        field(&path, "network_type"),
                        format!(
                            "only one {} network is allowed (networks[{first}] is one already)",
                            n.network_type.as_str()
                        ),
                    );
                }
            }
            for (j, a) in n.addresses.iter().enumerate() {
                let a_path = index(&field(&path, "interface.addresses"), j);
                if a.addr().is_ipv6() && is_link_local(a.addr()) {
                    continue;
                }
                if let Some(first) = addresses.insert(a.addr(), a_path.clone()) {
                    self.problem(&a_path, format!("{} is also at {first}", a.addr()));
                }
                // An IPv6 prefix's first address is the subnet-router anycast address (RFC
                // 4291 2.6.1), which the kernel already gives a forwarding router on that
                // link. Neutron never allocates it to a port; only a subnet whose gateway_ip
                // it is gives it to the router. As another address it would displace the
                // kernel's anycast route, and a rollback could not give it back.
                if let IpNet::V6(v6) = a {
                    if v6.prefix_len() < 127
                        && v6.addr() == v6.network()
                        && !n.subnets.iter().any(|s| s.gateway_ip == Some(a.addr()))
                    {
                        self.problem(
                            &a_path,
                            format!(
                                "{} is the subnet-router anycast address of {}: only a subnet whose gateway_ip it is gives it to the router",
                                a.addr(),
                                v6.trunc()
                            ),
                        );
                    }
                }
            }
            for (j, s) in n.subnets.iter().enumerate() {
                let s_path = field(&index(&field(&path, "subnets"), j), "cidr");
                if s.cidr.prefix_len() == 0 {
                    continue; // placeholder of a subnet whose cidr was already reported
                }
                if let Some((other, other_path)) = prefixes
                    .iter()
                    .find(|(p, _)| p.contains(&s.cidr) || s.cidr.contains(p))
                {
                    self.problem(
                        &s_path,
                        format!("{} overlaps {other} at {other_path}", s.cidr),
                    );
                }
                prefixes.push((s.cidr, s_path));
            }
        }
    }

    fn default_v4_gateway(&mut self, doc: &Document, networks: &[Network]) -> Option<Ipv4Addr> {
        let gw = match doc.default_v4_gateway.as_deref() {
            None | Some("") => return None,
            Some(g) => g,
        };
        let path = "default_v4_gateway";
        let ip = self.ip(gw, path)?;
        let IpAddr::V4(v4) = ip else {
            self.problem(path, format!("{ip} is not an IPv4 address"));
            return None;
        };
        match networks
            .iter()
            .find(|n| n.network_type == NetworkType::External)
        {
            None => self.problem(path, "is set but there is no external network"),
            Some(ext) => {
                if !ext.subnets.iter().any(|s| s.cidr.contains(&ip))
                    && !ext.addresses.iter().any(|a| a.contains(&ip))
                {
                    self.problem(
                        path,
                        format!("{ip} is not inside any subnet of the external network"),
                    );
                }
            }
        }
        Some(v4)
    }

    /// The router's external addresses must not be the upstream gateway's: the router would
    /// answer ARP/ND for it and take the upstream's traffic.
    fn check_upstream_gateway(
        &mut self,
        networks: &[Network],
        default_v4_gateway: Option<Ipv4Addr>,
    ) {
        let gateways = upstream_gateways(networks, default_v4_gateway);
        for (i, n) in networks.iter().enumerate() {
            if n.network_type != NetworkType::External {
                continue;
            }
            for (j, a) in n.addresses.iter().enumerate() {
                if gateways.contains(&a.addr()) {
                    self.problem(
                        format!("networks[{i}].interface.addresses[{j}]"),
                        format!("{} is the upstream gateway's address", a.addr()),
                    );
                }
            }
        }
    }

    /// The IPv4 default route goes via `default_v4_gateway`, else the first IPv4 `gateway_ip` of
    /// the external subnets. The kernel refuses a gateway that is not on the external NIC's
    /// link (an apply would fail with "Network is unreachable"), so the gateway must be inside
    /// the prefix of one of that NIC's IPv4 addresses.
    fn check_default_v4_gateway_on_link(
        &mut self,
        networks: &[Network],
        default_v4_gateway: Option<Ipv4Addr>,
    ) {
        let Some((i, ext)) = networks
            .iter()
            .enumerate()
            .find(|(_, n)| n.network_type == NetworkType::External)
        else {
            return;
        };
        let (path, gateway) = match default_v4_gateway {
            Some(gw) => ("default_v4_gateway".to_string(), IpAddr::V4(gw)),
            None => {
                let Some((j, gw)) = ext
                    .subnets
                    .iter()
                    .enumerate()
                    .find_map(|(j, s)| s.gateway_ip.filter(IpAddr::is_ipv4).map(|gw| (j, gw)))
                else {
                    return;
                };
                (format!("networks[{i}].subnets[{j}].gateway_ip"), gw)
            }
        };
        if !ext.addresses.iter().any(|a| a.contains(&gateway)) {
            self.problem(
                path,
                format!(
                    "{gateway} is not on the external network's link: none of its interface addresses has a prefix that holds it, so the default route could not be added"
                ),
            );
        }
    }

    fn floating_ips(
        &mut self,
        docs: &[FloatingIpDoc],
        networks: &[Network],
        default_v4_gateway: Option<Ipv4Addr>,
    ) -> Vec<FloatingIp> {
        let subnets_of = |t: NetworkType| -> Vec<IpNet> {
            networks
                .iter()
                .filter(|n| n.network_type == t)
                .flat_map(|n| n.subnets.iter().map(|s| s.cidr))
                .collect()
        };
        let external = subnets_of(NetworkType::External);
        let internal = subnets_of(NetworkType::Internal);
        let interface_addresses: Vec<IpAddr> = networks
            .iter()
            .flat_map(|n| n.addresses.iter().map(|a| a.addr()))
            .collect();
        let upstream_gateways = upstream_gateways(networks, default_v4_gateway);
        // Sized once: growing them rehashed 20,000 entries a push at 10,000 floating IPs.
        let mut seen_floating: HashMap<IpAddr, usize> = HashMap::with_capacity(docs.len());
        let mut seen_fixed: HashMap<IpAddr, usize> = HashMap::with_capacity(docs.len());
        let mut out = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            // Paths are spelt out only for a problem: 10,000 floating IPs would otherwise
            // format 30,000 strings per push.
            let f_path = || field(&index("floating_ips", i), "floating_ip");
            let x_path = || field(&index("floating_ips", i), "fixed_ip");
            let floating = match &doc.floating_ip {
                None => {
                    self.problem(f_path(), "is required");
                    None
                }
                Some(s) => match IpAddr::from_str(s) {
                    Ok(ip) => Some(ip),
                    Err(_) => self.ip(s, &f_path()),
                },
            };
            let fixed = match &doc.fixed_ip {
                None => {
                    self.problem(x_path(), "is required");
                    None
                }
                Some(s) => match IpAddr::from_str(s) {
                    Ok(ip) => Some(ip),
                    Err(_) => self.ip(s, &x_path()),
                },
            };
            if let Some(f) = floating {
                if external.is_empty() {
                    self.problem(f_path(), "floating IPs need an external network");
                } else if !external.iter().any(|s| s.contains(&f)) {
                    self.problem(f_path(), format!("{f} is not inside any external subnet"));
                } else if interface_addresses.contains(&f) {
                    self.problem(f_path(), format!("{f} is also an interface address"));
                } else if upstream_gateways.contains(&f) {
                    self.problem(
                        f_path(),
                        format!("{f} is the upstream gateway: answering for it would cut every neighbour off"),
                    );
                }
                if f.is_ipv6() {
                    self.problem(
                        f_path(),
                        format!("{f}: IPv6 floating IPs are not implemented (they would be accepted and never NATed)"),
                    );
                }
                if let Some(first) = seen_floating.insert(f, i) {
                    self.problem(f_path(), format!("{f} is also floating_ips[{first}]"));
                }
            }
            if let Some(x) = fixed {
                if !internal.iter().any(|s| s.contains(&x)) {
                    self.problem(x_path(), format!("{x} is not inside any internal subnet"));
                }
                if let Some(first) = seen_fixed.insert(x, i) {
                    self.problem(
                        x_path(),
                        format!("{x} already has a floating IP (floating_ips[{first}])"),
                    );
                }
            }
            if let (Some(f), Some(x)) = (floating, fixed) {
                if f.is_ipv4() != x.is_ipv4() {
                    self.problem(
                        x_path(),
                        format!("{x} is not of the same IP family as the floating IP {f}"),
                    );
                    continue;
                }
                out.push(FloatingIp {
                    floating_ip: f,
                    fixed_ip: x,
                });
            }
        }
        out
    }

    /// The totals the per-list limits do not bound, and the rendered ruleset's budget: each
    /// filter rule renders one nf_tables rule per (source, destination) CIDR pair, so an
    /// address book crossed with itself multiplies. Counted here, before anything is built.
    fn check_ruleset_budget(
        &mut self,
        doc: &Document,
        anchors: &[Anchor],
        address_book: &BTreeMap<String, Vec<IpNet>>,
    ) {
        let book_entries: usize = doc.address_book.values().map(Vec::len).sum();
        if book_entries > MAX_ADDRESS_BOOK_TOTAL {
            self.problem(
                "address_book",
                format!("{book_entries} CIDRs in all: the limit is {MAX_ADDRESS_BOOK_TOTAL}"),
            );
        }
        let label_cidrs: usize = doc.labels.values().map(Vec::len).sum();
        if label_cidrs > MAX_LABEL_CIDRS_TOTAL {
            self.problem(
                "labels",
                format!(
                    "{label_cidrs} CIDRs in all: the limit is {MAX_LABEL_CIDRS_TOTAL} (each renders two counter rules)"
                ),
            );
        }
        let rules: usize = doc.anchors.iter().map(|a| a.rules.len()).sum();
        if rules > MAX_ANCHOR_RULES_TOTAL {
            self.problem(
                "anchors",
                format!("{rules} rules in all: the limit is {MAX_ANCHOR_RULES_TOTAL}"),
            );
        }
        let expansion = |ep: &Option<Endpoint>| match ep {
            Some(Endpoint::AddressBook(name)) => address_book.get(name).map_or(0, Vec::len),
            _ => 1,
        };
        let mut rendered = 0usize;
        for (i, anchor) in anchors.iter().enumerate() {
            for (j, rule) in anchor.rules.iter().enumerate() {
                let this = expansion(&rule.source).saturating_mul(expansion(&rule.destination));
                if this > MAX_RENDERED_RULES {
                    self.problem(
                        format!("anchors[{i}].rules[{j}]"),
                        format!(
                            "renders {this} firewall rules (source × destination CIDRs): the budget for all rules is {MAX_RENDERED_RULES}"
                        ),
                    );
                }
                rendered = rendered.saturating_add(this);
            }
        }
        if rendered > MAX_RENDERED_RULES {
            self.problem(
                "anchors",
                format!(
                    "the rules render {rendered} firewall rules (source × destination CIDRs): the budget is {MAX_RENDERED_RULES}"
                ),
            );
        }
    }

    fn cidr_lists(
        &mut self,
        lists: &BTreeMap<String, Vec<String>>,
        path: &str,
    ) -> BTreeMap<String, Vec<IpNet>> {
        let mut out = BTreeMap::new();
        for (name, cidrs) in lists {
            let list_path = key(path, name);
            self.grammar(name, &list_path, Grammar::Name);
            if name == "any" {
                self.problem(
                    &list_path,
                    "\"any\" is the keyword for every address: a rule could never name this list",
                );
            }
            let nets = cidrs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.cidr(c, &index(&list_path, i)))
                .collect();
            out.insert(name.clone(), nets);
        }
        out
    }

    fn anchor(
        &mut self,
        doc: &AnchorDoc,
        path: &str,
        ifnames: &[&str],
        address_book: &BTreeMap<String, Vec<IpNet>>,
    ) -> Anchor {
        let name = self.required(&doc.name, &field(path, "name"));
        if !name.is_empty() {
            self.grammar(&name, &field(path, "name"), Grammar::Name);
        }
        let rules = doc
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                self.filter_rule(r, &index(&field(path, "rules"), i), ifnames, address_book)
            })
            .collect();
        Anchor { name, rules }
    }

    fn filter_rule(
        &mut self,
        rule: &serde_json::Map<String, Value>,
        path: &str,
        ifnames: &[&str],
        address_book: &BTreeMap<String, Vec<IpNet>>,
    ) -> Option<FilterRule> {
        let before = self.problems.len();
        for k in rule.keys() {
            if !FILTER_RULE_KEYS.contains(&k.as_str()) {
                self.problem(field(path, k), "is not a filter rule field");
            }
        }
        let text = |v: &mut Validator, k: &str| -> Option<String> {
            match rule.get(k) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    v.problem(field(path, k), format!("{other} is not a string"));
                    None
                }
            }
        };
        let port = |v: &mut Validator, k: &str| -> Option<u16> {
            match rule.get(k) {
                None | Some(Value::Null) => None,
                Some(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(p) if p != 0 => Some(p),
                    _ => {
                        v.problem(field(path, k), format!("{n} is not a port (1 to 65535)"));
                        None
                    }
                },
            }
        };

        let action = text(self, "action");
        let action = self.enum_value(
            action.as_deref(),
            &field(path, "action"),
            &[("pass", Action::Pass), ("block", Action::Block)],
            None,
        );
        let direction = text(self, "direction");
        let direction = direction.and_then(|d| {
            self.enum_value(
                Some(&d),
                &field(path, "direction"),
                &[("in", Direction::In), ("out", Direction::Out)],
                None,
            )
        });
        let family = text(self, "family");
        let family = family.and_then(|f| {
            self.enum_value(
                Some(&f),
                &field(path, "family"),
                &[("inet", Family::Inet), ("inet6", Family::Inet6)],
                None,
            )
        });
        let protocol = text(self, "protocol");
        // "imcp" is Astara's typo, accepted so that an Astara orchestrator keeps working.
        let protocol = protocol.and_then(|p| {
            self.enum_value(
                Some(&p),
                &field(path, "protocol"),
                &[
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("icmp", Protocol::Icmp),
                    ("imcp", Protocol::Icmp),
                ],
                None,
            )
        });
        let interface_of = |v: &mut Validator, k: &str| -> Option<String> {
            let name = text(v, k)?;
            if !ifnames.contains(&name.as_str()) {
                v.problem(
                    field(path, k),
                    format!("{} is not the interface of any network", quoted(&name)),
                );
            }
            Some(name)
        };
        let interface = interface_of(self, "interface");
        let destination_interface = interface_of(self, "destination_interface");
        let endpoint = |v: &mut Validator, k: &str| -> Option<Endpoint> {
            let s = text(v, k)?;
            if s == "any" {
                None
            } else if s.contains('/') {
                v.cidr(&s, &field(path, k)).map(Endpoint::Cidr)
            } else if address_book.contains_key(&s) {
                Some(Endpoint::AddressBook(s))
            } else {
                v.problem(
                    field(path, k),
                    format!(
                        "{} is neither a CIDR nor a name in address_book",
                        quoted(&s)
                    ),
                );
                None
            }
        };
        let source = endpoint(self, "source");
        let destination = endpoint(self, "destination");
        let source_port = port(self, "source_port");
        let destination_port = port(self, "destination_port");
        // Parsed for their problems only: a rule with either is refused just below.
        port(self, "redirect_port");
        if let Some(r) = text(self, "redirect") {
            self.ip(&r, &field(path, "redirect"));
        }

        // pf's rdr-to had no Linux rendering in Astara either; refuse rather than ignore it.
        for k in ["redirect", "redirect_port"] {
            if rule.get(k).is_some_and(|v| !v.is_null()) {
                self.problem(
                    field(path, k),
                    "redirects in filter rules are not supported",
                );
            }
        }
        if (source_port.is_some() || destination_port.is_some())
            && !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp))
        {
            self.problem(
                field(path, "protocol"),
                "ports need protocol \"tcp\" or \"udp\"",
            );
        }
        if let Some(fam) = family {
            for (k, ep) in [("source", &source), ("destination", &destination)] {
                if let Some(Endpoint::Cidr(net)) = ep {
                    if net.addr().is_ipv4() != (fam == Family::Inet) {
                        self.problem(
                            field(path, k),
                            format!("{net} does not match the rule's family"),
                        );
                    }
                }
            }
        }
        if self.problems.len() != before {
            return None;
        }
        Some(FilterRule {
            action: action?,
            direction,
            interface,
            destination_interface,
            family,
            protocol,
            source,
            destination,
            source_port,
            destination_port,
        })
    }
}

/// The upstream gateways: the external subnets' `gateway_ip` and `default_v4_gateway`.
fn upstream_gateways(networks: &[Network], default_v4_gateway: Option<Ipv4Addr>) -> Vec<IpAddr> {
    networks
        .iter()
        .filter(|n| n.network_type == NetworkType::External)
        .flat_map(|n| n.subnets.iter().filter_map(|s| s.gateway_ip))
        .chain(default_v4_gateway.map(IpAddr::V4))
        .collect()
}

fn is_ge_name(s: &str) -> bool {
    s.parse::<crate::NicName>().is_ok()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// `FA-16-3E-00-00-01` or `fa:16:3e:00:00:01` → `fa:16:3e:00:00:01` (see [`crate::MacAddr`]).
pub fn normalise_mac(s: &str) -> Option<String> {
    s.parse::<crate::MacAddr>().ok().map(|m| m.to_string())
}
