//! NAT: the floating-IP maps, then prerouting (metadata redirect, floating IPs in) and
//! postrouting (hairpin, floating IPs out, SNAT of internal IPv4 subnets).

use std::net::IpAddr;

use super::{
    first_v4, host, CtState, Family, MapValue, Match, Router, Rule, Set, Verdict, FIP_DNAT_MAP,
    FIP_MARK_MAP, FIP_SNAT_MAP, L4, METADATA_ADDR,
};
use crate::services::metadata;

/// Floating → fixed (inbound DNAT), fixed → floating (outbound SNAT) and floating → its
/// sessions' mark; none without floating IPs.
pub(super) fn floating_ip_maps(router: &Router) -> Vec<Set> {
    if router.floating_ips.is_empty() {
        return Vec::new();
    }
    let map = |name: &str, data: MapValue, pair: &dyn Fn(IpAddr, IpAddr) -> (IpAddr, IpAddr)| Set {
        name: name.into(),
        key: Family::V4,
        data: Some(data),
        elements: router
            .floating_ips
            .iter()
            .map(|f| {
                let (k, v) = pair(f.floating_ip, f.fixed_ip);
                (k, Some(v))
            })
            .collect(),
    };
    let addr = MapValue::Addr(Family::V4);
    vec![
        map(FIP_DNAT_MAP, addr, &|floating, fixed| (floating, fixed)),
        map(FIP_SNAT_MAP, addr, &|floating, fixed| (fixed, floating)),
        map(FIP_MARK_MAP, MapValue::Mark, &|floating, _| {
            (floating, floating)
        }),
    ]
}

/// Marks each new floating-IP session with its floating IP's mark, once both translations
/// are known: inbound (DNAT, hairpin included) by where it was sent, outbound (SNAT) by the
/// address it left from. A session of no floating IP misses the map and stays unmarked.
/// Removing a floating IP then ends exactly its sessions with one flush by mark
/// (`netfilter::conntrack`). None without floating IPs.
pub(super) fn session_marks(router: &Router) -> Vec<Rule> {
    if router.floating_ips.is_empty() {
        return Vec::new();
    }
    let new = Match::CtState(vec![CtState::New]);
    let v4 = Match::Proto(Family::V4);
    vec![
        Rule::new(
            vec![new.clone(), v4.clone(), Match::CtDnat],
            Verdict::MarkSession {
                reply: false,
                map: FIP_MARK_MAP.into(),
            },
        )
        .comment("floating IP sessions in"),
        Rule::new(
            vec![new, v4, Match::CtSnat],
            Verdict::MarkSession {
                reply: true,
                map: FIP_MARK_MAP.into(),
            },
        )
        .comment("floating IP sessions out"),
    ]
}

pub(super) fn prerouting(router: &Router) -> Vec<Rule> {
    let v4 = Match::Proto(Family::V4);
    let mut rules = Vec::new();
    for net in &router.tenants {
        // Metadata: tenant → 169.254.169.254:80 goes to this network's proxy on the router.
        let (Some(gw), Some(port)) = (first_v4(&net.addresses), metadata::nic_port(&net.ifname))
        else {
            continue;
        };
        rules.push(
            Rule::new(
                vec![
                    Match::Iif(net.ifname.clone()),
                    v4.clone(),
                    Match::Daddr(host(IpAddr::from(METADATA_ADDR))),
                    Match::L4(L4::Tcp),
                    Match::Dport(L4::Tcp, 80),
                ],
                Verdict::DnatTo(gw, port),
            )
            .comment(format!("metadata for {}", net.ifname)),
        );
    }
    if !router.floating_ips.is_empty() {
        // Inbound to a floating IP, from outside or from a tenant (hairpin).
        let from = router
            .external
            .iter()
            .chain(&router.internals)
            .map(|n| n.ifname.as_str());
        for ifname in from {
            rules.push(
                Rule::new(
                    vec![Match::Iif(ifname.into()), v4.clone()],
                    Verdict::DnatMap(FIP_DNAT_MAP.into()),
                )
                .comment("floating IPs"),
            );
        }
    }
    rules
}

pub(super) fn postrouting(router: &Router) -> Vec<Rule> {
    let v4 = Match::Proto(Family::V4);
    let ext = router.external;
    let internal_v4_subnets = || {
        router.internals.iter().flat_map(|net| {
            net.subnets
                .iter()
                .filter(|s| s.cidr.addr().is_ipv4())
                .map(move |s| (*net, s.cidr))
        })
    };
    let mut rules = Vec::new();
    if !router.floating_ips.is_empty() {
        // Hairpin: a tenant reaching another tenant through its floating IP. Its source
        // becomes the router's, so the reply comes back through the router even within one
        // subnet.
        for (_, cidr) in internal_v4_subnets() {
            rules.push(
                Rule::new(
                    vec![
                        Match::OifNot(ext.map(|e| e.ifname.clone()).unwrap_or_default()),
                        v4.clone(),
                        Match::Saddr(cidr),
                        Match::CtDnat,
                    ],
                    Verdict::Masquerade,
                )
                .comment("floating IP hairpin"),
            );
        }
    }
    let Some(e) = ext else {
        return rules;
    };
    if !router.floating_ips.is_empty() {
        rules.push(
            Rule::new(
                vec![Match::Oif(e.ifname.clone()), v4.clone()],
                Verdict::SnatMap(FIP_SNAT_MAP.into()),
            )
            .comment("floating IPs"),
        );
    }
    // Everything else from internal IPv4 subnets leaves with the router's address. No NAT
    // between internal networks, none for IPv6.
    if let Some(addr) = first_v4(&e.addresses) {
        for (net, cidr) in internal_v4_subnets() {
            rules.push(
                Rule::new(
                    vec![Match::Oif(e.ifname.clone()), v4.clone(), Match::Saddr(cidr)],
                    Verdict::SnatTo(addr),
                )
                .comment(format!("SNAT {}", net.ifname)),
            );
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_config;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn floating_ips_are_two_maps_not_rules() {
        let mut doc = test_config::basic_json();
        doc["floating_ips"] = json!([
            {"floating_ip": "172.16.77.50", "fixed_ip": "192.168.0.2"},
            {"floating_ip": "172.16.77.51", "fixed_ip": "192.168.0.3"}
        ]);
        let config = test_config::parse(&doc);
        let router = Router::of(&config);
        let maps = floating_ip_maps(&router);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].name, FIP_DNAT_MAP);
        assert_eq!(
            maps[0].elements,
            [
                (ip("172.16.77.50"), Some(ip("192.168.0.2"))),
                (ip("172.16.77.51"), Some(ip("192.168.0.3")))
            ],
            "one element per floating IP (IPv6 ones are refused by the model, issue 12)"
        );
        assert_eq!(maps[1].name, FIP_SNAT_MAP);
        assert_eq!(
            maps[1].elements[0],
            (ip("192.168.0.2"), Some(ip("172.16.77.50")))
        );
        assert_eq!(maps[2].name, FIP_MARK_MAP);
        assert_eq!(maps[2].data, Some(MapValue::Mark));
        assert_eq!(
            maps[2].elements[1],
            (ip("172.16.77.51"), Some(ip("172.16.77.51")))
        );
        // Two marking rules, whatever the number of IPs.
        let marks = session_marks(&router);
        assert_eq!(marks.len(), 2);
        assert!(marks[0].matches.contains(&Match::CtDnat));
        assert!(marks[1].matches.contains(&Match::CtSnat));
        // One DNAT-map rule per inbound NIC (external first), whatever the number of IPs.
        let dnat: Vec<_> = prerouting(&router)
            .into_iter()
            .filter(|r| r.verdict == Verdict::DnatMap(FIP_DNAT_MAP.into()))
            .map(|r| r.matches[0].clone())
            .collect();
        assert_eq!(dnat, [Match::Iif("ge1".into()), Match::Iif("ge2".into())]);
    }

    #[test]
    fn metadata_goes_to_the_proxy_port_of_the_nic() {
        let config = test_config::basic();
        let rules = prerouting(&Router::of(&config));
        assert_eq!(
            rules[0].verdict,
            Verdict::DnatTo(ip("192.168.0.1"), metadata::nic_port("ge2").unwrap())
        );
        assert_eq!(rules[0].verdict, Verdict::DnatTo(ip("192.168.0.1"), 9602));
        assert!(rules[0].matches.contains(&Match::Iif("ge2".into())));
    }

    #[test]
    fn postrouting_hairpins_maps_then_snats() {
        let config = test_config::basic();
        let verdicts: Vec<_> = postrouting(&Router::of(&config))
            .into_iter()
            .map(|r| r.verdict)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Masquerade,
                Verdict::SnatMap(FIP_SNAT_MAP.into()),
                Verdict::SnatTo(ip("172.16.77.2"))
            ]
        );
    }

    #[test]
    fn without_floating_ips_only_snat() {
        let mut doc = test_config::basic_json();
        doc["floating_ips"] = json!([]);
        let config = test_config::parse(&doc);
        let router = Router::of(&config);
        assert!(floating_ip_maps(&router).is_empty());
        assert!(session_marks(&router).is_empty());
        assert_eq!(prerouting(&router).len(), 1, "metadata only");
        let post = postrouting(&router);
        assert_eq!(post.len(), 1);
        assert_eq!(post[0].verdict, Verdict::SnatTo(ip("172.16.77.2")));
    }

    #[test]
    fn without_external_network_no_source_nat() {
        let mut doc = test_config::without("external");
        doc["floating_ips"] = json!([]);
        doc.as_object_mut().unwrap().remove("default_v4_gateway");
        let config = test_config::parse(&doc);
        assert!(postrouting(&Router::of(&config)).is_empty());
    }
}
