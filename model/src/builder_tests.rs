use super::*;
use crate::parse;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nic(i: u16) -> NicName {
    NicName::new(i).unwrap()
}

fn management() -> NetworkBuilder {
    NetworkBuilder::new("mgt", NetworkType::Management, nic(0))
        .address(net("fdca:3ba5:a17a:acda::d1/64"))
        .subnet(SubnetBuilder::new(
            "mgt6",
            net("fdca:3ba5:a17a:acda::/64"),
            false,
        ))
}

/// Management, external with a gateway, one tenant network with a VM, and its floating IP.
fn router() -> ConfigBuilder {
    ConfigBuilder::new("tenant-1", "ak-r1")
        .asn(64512, 64513)
        .orchestrator(ip("fdca:3ba5:a17a:acda::1"), 9697, "rug-lite-1")
        .default_v4_gateway(Some("203.0.113.1".parse().unwrap()))
        .network(management())
        .network(
            NetworkBuilder::new("ext", NetworkType::External, nic(1))
                .mtu(1500)
                .address(net("203.0.113.10/24"))
                .subnet(
                    SubnetBuilder::new("ext4", net("203.0.113.0/24"), false)
                        .gateway_ip(ip("203.0.113.1")),
                ),
        )
        .network(
            NetworkBuilder::new("tenant", NetworkType::Internal, nic(2))
                .name("tenant net")
                .address(net("10.0.0.1/24"))
                .subnet(
                    SubnetBuilder::new("t4", net("10.0.0.0/24"), true)
                        .gateway_ip(ip("10.0.0.1"))
                        .dns_nameserver(ip("8.8.8.8"))
                        .host_route(net("172.16.0.0/12"), ip("10.0.0.254")),
                )
                .allocation(
                    AllocationBuilder::new(
                        "FA-16-3E-00-00-01".parse().unwrap(),
                        "vm1.local",
                        "dev-1",
                    )
                    .address(ip("10.0.0.43"), true),
                ),
        )
        .floating_ip(ip("203.0.113.121"), ip("10.0.0.43"))
        .static_route(net("192.168.100.0/24"), ip("10.0.0.254"))
}

#[test]
fn a_router_builds_into_the_config_the_agent_parses() {
    let config = router().build().unwrap();
    assert_eq!(parse(&config.document.to_canonical_json()).unwrap(), config);
    assert_eq!(
        config
            .networks
            .iter()
            .map(|n| n.ifname.as_str())
            .collect::<Vec<_>>(),
        ["ge0", "ge1", "ge2"]
    );
    assert_eq!((config.asn, config.neighbor_asn), (64512, 64513));
    assert_eq!(config.orchestrator.metadata_port, 9697);
    assert_eq!(config.floating_ips.len(), 1);
    assert_eq!(
        config.networks[2].allocations[0].mac_address,
        "fa:16:3e:00:00:01"
    );
    assert_eq!(config.networks[1].mtu, Some(1500));
}

#[test]
fn the_document_has_the_shape_rug_lite_sends() {
    let config = ConfigBuilder::new("t", "h")
        .network(management())
        .build()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&config.document.to_canonical_json()).unwrap();
    assert_eq!(json["default_v4_gateway"], "");
    assert_eq!(json["ha_resource"], false);
    let n = &json["networks"][0];
    assert_eq!(n["network_type"], "management");
    assert_eq!(
        (&n["v4_conf_service"], &n["v6_conf_service"]),
        (&"static".into(), &"static".into())
    );
    assert_eq!(n["interface"]["ifname"], "ge0");
    assert_eq!(n["subnets"][0]["gateway_ip"], "");
    assert!(n.get("mtu").is_none() && n.get("name").is_none());

    let doc = router().build().unwrap().document;
    let ext = &doc.networks[1];
    assert_eq!(
        (ext.mtu, ext.interface.as_ref().unwrap().mtu),
        (Some(1500), Some(1500))
    );
    assert_eq!(
        doc.static_routes,
        [StaticRouteDoc::Pair(vec![
            "192.168.100.0/24".into(),
            "10.0.0.254".into()
        ])]
    );
    assert_eq!(doc.default_v4_gateway.as_deref(), Some("203.0.113.1"));
}

#[test]
fn network_types_and_conf_services_are_written_by_their_wire_names() {
    for (name, t) in NetworkType::ALL {
        assert_eq!(t.as_str(), name);
    }
    for (name, s) in V4ConfService::ALL {
        assert_eq!(s.as_str(), name);
    }
    for (name, s) in V6ConfService::ALL {
        assert_eq!(s.as_str(), name);
    }
}

fn paths(e: &BuildError) -> Vec<&str> {
    e.problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn a_refusal_names_each_field_at_its_path() {
    let e = ConfigBuilder::new("a tenant", "-h")
        .asn(0, 1)
        .network(management())
        .network(
            NetworkBuilder::new("t\n", NetworkType::Internal, nic(0))
                .address(net("10.0.0.0/24"))
                .subnet(
                    SubnetBuilder::new("t4", net("10.0.0.0/24"), true).gateway_ip(ip("10.9.0.1")),
                )
                .allocation(AllocationBuilder::new(
                    MacAddr([2, 0, 0, 0, 0, 1]),
                    "a b",
                    "dev",
                ))
                .mtu(60),
        )
        .floating_ip(ip("203.0.113.5"), ip("10.0.0.5"))
        .build()
        .unwrap_err();
    assert_eq!(
        paths(&e),
        [
            "tenant_id",
            "hostname",
            "asn",
            "networks[1].network_id",
            "networks[1].interface.addresses[0]",
            "networks[1].interface.mtu",
            "networks[1].subnets[0].gateway_ip",
            "networks[1].allocations[0].hostname",
            "networks[1].interface.ifname",
            "floating_ips[0].floating_ip",
        ],
        "{e}"
    );
    assert!(
        e.to_string().starts_with("invalid config: tenant_id: "),
        "{e}"
    );
}

#[test]
fn a_list_over_its_limit_is_refused_at_its_path() {
    let mut b = ConfigBuilder::new("t", "h");
    for i in 0..=crate::bounds::MAX_STATIC_ROUTES {
        b = b.static_route(
            net(&format!("10.{}.{}.0/24", i / 256, i % 256)),
            ip("10.255.0.1"),
        );
    }
    let e = b.build().unwrap_err();
    assert_eq!(paths(&e), ["static_routes"], "{e}");
}

/// A small deterministic generator (splitmix64): the model has no random-number dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Mostly plausible routers, with an odd value now and then (`rng.one_in(ODD)`): strings off
/// their grammar, overlapping or foreign prefixes, gateways and addresses outside their
/// subnets, shared NIC names, MTUs too small, routes of the wrong family, floating IPs that do
/// not fit.
fn generate(rng: &mut Rng) -> ConfigBuilder {
    const ODD: u64 = 40;
    const IDS: &[&str] = &["x y", "", "a\nb", "mgt-subnet-id"];
    const NAMES: &[&str] = &["web", "réseau « privé »", "bad\nname"];
    const HOSTS: &[&str] = &["10-0-0-5.local", "2001-db8-4b--.local", "bad host", ""];
    let id = |rng: &mut Rng| -> String {
        if rng.one_in(ODD) {
            rng.pick(IDS).to_string()
        } else {
            format!("id-{}", rng.below(1 << 20))
        }
    };
    let tenant = if rng.one_in(ODD) {
        "bad tenant"
    } else {
        "d22b149cee9b4eac"
    };
    let host = if rng.one_in(ODD) { "-bad" } else { "ak-r1" };
    let mut b = ConfigBuilder::new(tenant, host);
    if rng.one_in(2) {
        let asn = if rng.one_in(ODD) {
            0
        } else {
            64512 + rng.below(1000) as u32
        };
        b = b.asn(asn, 64512);
    }
    if rng.one_in(2) {
        let port = if rng.one_in(ODD) { 0 } else { 9697 };
        let host = if rng.one_in(ODD) { "a b" } else { "rug-lite-1" };
        b = b.orchestrator(ip("fdca:3ba5:a17a:acda::1"), port, host);
    }
    let host_of = |p: IpNet, h: u64| match p {
        IpNet::V4(p) => IpAddr::V4((u32::from(p.network()) + h as u32).into()),
        IpNet::V6(p) => IpAddr::V6((u128::from(p.network()) + h as u128).into()),
    };
    let mut internal_hosts = Vec::new();
    let mut external_gateway = None;
    for n in 0..rng.below(7) as u16 {
        let network_type = match n {
            0 => NetworkType::Management,
            1 if !rng.one_in(4) => NetworkType::External,
            _ if rng.one_in(ODD) => rng.pick(&NetworkType::ALL).1,
            _ if rng.one_in(6) => NetworkType::Isolated,
            _ => NetworkType::Internal,
        };
        let ifname = nic(if rng.one_in(ODD) { 0 } else { n });
        // Network n's prefixes, or now and then another network's.
        let k = if rng.one_in(ODD) {
            rng.below(6) as u16
        } else {
            n
        };
        let (v4, v6) = if network_type == NetworkType::External {
            (net("203.0.113.0/24"), net("2001:db8:e::/64"))
        } else {
            (
                net(&format!("10.{k}.0.0/24")),
                net(&format!("fd00:{k}::/64")),
            )
        };
        let mut nb = NetworkBuilder::new(id(rng), network_type, ifname);
        if rng.one_in(3) {
            let name = if rng.one_in(ODD) {
                rng.pick(NAMES)
            } else {
                &"tenant net"
            };
            nb = nb.name(*name);
        }
        if rng.one_in(3) {
            let mtu = if rng.one_in(ODD) {
                *rng.pick(&[600, 60])
            } else {
                *rng.pick(&[1280, 1450, 1500, 9000])
            };
            nb = nb.mtu(mtu);
        }
        let mut with_v4 = false;
        for prefix in [v4, v6] {
            if rng.one_in(4) {
                continue;
            }
            with_v4 |= prefix.addr().is_ipv4();
            let h = if rng.one_in(ODD) { 0 } else { 10 + n as u64 };
            nb = nb.address(IpNet::new(host_of(prefix, h), prefix.prefix_len()).unwrap());
            let mut sb = SubnetBuilder::new(id(rng), prefix, rng.one_in(2));
            if !rng.one_in(4) {
                let gw = if rng.one_in(ODD) {
                    ip("192.0.2.1")
                } else {
                    host_of(prefix, 1)
                };
                sb = sb.gateway_ip(gw);
                if network_type == NetworkType::External && prefix.addr().is_ipv4() {
                    external_gateway = Some(gw);
                }
            }
            if rng.one_in(3) {
                let dns = if rng.one_in(ODD) {
                    ip("2001:4860::8888")
                } else {
                    host_of(prefix, 2)
                };
                sb = sb.dns_nameserver(dns);
            }
            if rng.one_in(3) {
                let to = if prefix.addr().is_ipv4() {
                    net("172.16.0.0/12")
                } else {
                    net("2001:db8:99::/48")
                };
                let via = if rng.one_in(ODD) {
                    ip("10.99.0.1")
                } else {
                    host_of(prefix, 254)
                };
                sb = sb.host_route(to, via);
            }
            nb = nb.subnet(sb);
        }
        if network_type == NetworkType::Internal || rng.one_in(ODD) {
            for h in 0..rng.below(4) {
                let mac = MacAddr([0xfa, 0x16, 0x3e, n as u8, h as u8, rng.below(2) as u8]);
                let hostname = if rng.one_in(ODD) {
                    rng.pick(HOSTS).to_string()
                } else {
                    format!("vm{h}.local")
                };
                let device = if rng.one_in(ODD) { "a b" } else { "dev" };
                let addr = host_of(if with_v4 { v4 } else { v6 }, 20 + h);
                if with_v4 && network_type == NetworkType::Internal || rng.one_in(ODD) {
                    internal_hosts.push(addr);
                }
                nb = nb
                    .allocation(AllocationBuilder::new(mac, hostname, device).address(addr, true));
            }
        }
        b = b.network(nb);
    }
    if external_gateway.is_some() && rng.one_in(3) || rng.one_in(ODD) {
        let gw = external_gateway
            .filter(|_| !rng.one_in(ODD))
            .unwrap_or(ip("198.51.100.1"));
        if let IpAddr::V4(gw) = gw {
            b = b.default_v4_gateway(Some(gw));
        }
    }
    if external_gateway.is_some() || rng.one_in(ODD) {
        for (i, fixed) in internal_hosts.iter().enumerate() {
            if rng.one_in(2) {
                let floating = if rng.one_in(ODD) {
                    ip("198.51.100.7")
                } else {
                    ip(&format!("203.0.113.{}", 100 + i))
                };
                b = b.floating_ip(floating, *fixed);
            }
        }
    }
    for r in 0..rng.below(3) {
        let (to, via) = if rng.one_in(ODD) {
            (net("10.60.0.0/16"), ip("fd00::1"))
        } else {
            (net(&format!("192.168.{r}.0/24")), ip("10.1.0.254"))
        };
        b = b.static_route(to, via);
    }
    b
}

/// Whatever the builder accepts, `parse` accepts, as the same config, and its document is
/// the one the builder wrote: so the hash the orchestrator computes is the agent's. What it
/// refuses, `parse` refuses with the same problems. (True by construction today, since `build`
/// parses; this holds any faster `build` to it.)
#[test]
fn whatever_the_builder_accepts_parse_accepts() {
    let mut rng = Rng(9);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..3000 {
        let b = generate(&mut rng);
        let written = b.doc.clone();
        let bytes = written.to_canonical_json();
        match b.build() {
            Ok(config) => {
                accepted += 1;
                assert_eq!(config.document, written, "case {i}");
                assert_eq!(parse(&bytes).unwrap(), config, "case {i}");
            }
            Err(e) => {
                refused += 1;
                assert!(!e.problems.is_empty(), "case {i}");
                match parse(&bytes) {
                    Err(ConfigError::Invalid(problems)) => {
                        assert_eq!(problems, e.problems, "case {i}")
                    }
                    other => panic!("case {i}: the builder refused what parse gives as {other:?}"),
                }
            }
        }
    }
    // Both sides were exercised.
    assert!(
        accepted > 1000 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}
