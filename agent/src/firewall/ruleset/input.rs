//! The input chain: what may reach the router itself.
//!
//! Management isolation comes first, before anything a config opens: from every NIC but the
//! management one (and loopback), nothing reaches a management prefix, and no new connection
//! reaches the API or SSH, on any address. Tenant rules never enter this chain.

use super::{
    established, first_v4, host, CtState, Family, FirewallOptions, Match, Router, Rule, Verdict,
    BGP_PORT, ISOLATION, L4, SSH_PORT,
};
use crate::services::metadata;

fn loopback() -> Rule {
    Rule::new(vec![Match::Iif("lo".into())], Verdict::Accept)
}

/// Replies accepted, invalid packets dropped.
fn conntrack() -> [Rule; 2] {
    [
        Rule::new(vec![established()], Verdict::Accept),
        Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop),
    ]
}

fn icmp() -> [Rule; 2] {
    [
        Rule::new(vec![Match::L4(L4::Icmp)], Verdict::Accept),
        // Neighbour discovery, router solicitations, PMTU: IPv6 does not work without it.
        Rule::new(vec![Match::L4(L4::Icmpv6)], Verdict::Accept),
    ]
}

/// Loopback, replies, ICMP and ICMPv6: accepted on every router, configured or not.
pub(super) fn always_accepted() -> Vec<Rule> {
    let mut rules = vec![loopback()];
    rules.extend(conntrack());
    rules.extend(icmp());
    rules
}

/// Packets to a management prefix that arrive on another NIC: dropped before connection
/// tracking is consulted, so no packet from elsewhere gets in as part of the orchestrator's
/// connections either.
fn isolation_by_address(router: &Router) -> Vec<Rule> {
    let Some(m) = router.management else {
        return Vec::new();
    };
    router
        .management_prefixes()
        .into_iter()
        .map(|p| {
            Rule::new(
                vec![
                    Match::IifNot(m.ifname.clone()),
                    Match::Proto(Family::of(p.addr())),
                    Match::Daddr(p),
                ],
                Verdict::Drop,
            )
            .comment(ISOLATION)
        })
        .collect()
}

/// New connections to the API or SSH that arrive on another NIC than the management one, to
/// whatever address. After connection tracking: a reply to one of the router's own connections
/// may come back to a local port that happens to be the API's.
fn isolation_by_port(router: &Router, opts: FirewallOptions) -> Vec<Rule> {
    let tcp = |port| [Match::L4(L4::Tcp), Match::Dport(L4::Tcp, port)];
    match router.management {
        Some(m) => [opts.api_port, SSH_PORT]
            .into_iter()
            .map(|port| {
                let mut matches = vec![Match::IifNot(m.ifname.clone())];
                matches.extend(tcp(port));
                Rule::new(matches, Verdict::Drop).comment(ISOLATION)
            })
            .collect(),
        // No management network (only an agent without a management path accepts such a
        // config: no boot configuration, a wildcard --listen): the API stays open on the NICs
        // the config does not name, never on its tenant or external ones.
        None => router
            .named
            .iter()
            .map(|ifname| {
                let mut matches = vec![Match::Iif(ifname.to_string())];
                matches.extend(tcp(opts.api_port));
                Rule::new(matches, Verdict::Drop).comment(ISOLATION)
            })
            .collect(),
    }
}

pub(super) fn rules(router: &Router, opts: FirewallOptions) -> Vec<Rule> {
    let mut rules = vec![loopback()];
    rules.extend(isolation_by_address(router));
    rules.extend(conntrack());
    rules.extend(isolation_by_port(router, opts));
    rules.extend(icmp());
    match router.management {
        Some(m) => {
            for port in [opts.api_port, SSH_PORT] {
                rules.push(
                    Rule::new(
                        vec![
                            Match::Iif(m.ifname.clone()),
                            Match::L4(L4::Tcp),
                            Match::Dport(L4::Tcp, port),
                        ],
                        Verdict::Accept,
                    )
                    .comment("management"),
                );
            }
        }
        // Where the API listens, on a NIC the config does not name (see `isolation_by_port`).
        None => rules.push(
            Rule::new(
                vec![Match::L4(L4::Tcp), Match::Dport(L4::Tcp, opts.api_port)],
                Verdict::Accept,
            )
            .comment("agent API"),
        ),
    }
    for net in &router.tenants {
        let services = [
            (L4::Udp, 67, "DHCP"),
            (L4::Udp, 547, "DHCPv6"),
            (L4::Udp, 53, "DNS"),
            (L4::Tcp, 53, "DNS"),
        ];
        for (l4, port, what) in services {
            rules.push(
                Rule::new(
                    vec![
                        Match::Iif(net.ifname.clone()),
                        Match::L4(l4),
                        Match::Dport(l4, port),
                    ],
                    Verdict::Accept,
                )
                .comment(what),
            );
        }
        // The metadata proxy, only as `nat::prerouting` redirects 169.254.169.254:80 to it:
        // on its own NIC, to the redirect's address and port, destination-NATed.
        if let (Some(gw), Some(port)) = (first_v4(&net.addresses), metadata::nic_port(&net.ifname))
        {
            rules.push(
                Rule::new(
                    vec![
                        Match::Iif(net.ifname.clone()),
                        Match::Proto(Family::V4),
                        Match::Daddr(host(gw)),
                        Match::L4(L4::Tcp),
                        Match::Dport(L4::Tcp, port),
                        Match::CtDnat,
                    ],
                    Verdict::Accept,
                )
                .comment("metadata proxy"),
            );
        }
    }
    if let Some(e) = router.external {
        rules.push(
            Rule::new(
                vec![
                    Match::Iif(e.ifname.clone()),
                    Match::L4(L4::Tcp),
                    Match::Dport(L4::Tcp, BGP_PORT),
                ],
                Verdict::Accept,
            )
            .comment("BGP"),
        );
    }
    rules.push(Rule::new(vec![], Verdict::Drop).comment("everything else"));
    rules
}

#[cfg(test)]
mod tests {
    use super::super::test_config;
    use super::*;

    const OPTS: FirewallOptions = FirewallOptions { api_port: 5000 };

    /// (input NIC, TCP/UDP destination port) of every accepting rule that names a port.
    fn opened(rules: &[Rule]) -> Vec<(Option<String>, u16)> {
        rules
            .iter()
            .filter(|r| r.verdict == Verdict::Accept)
            .filter_map(|r| {
                let iif = r.matches.iter().find_map(|m| match m {
                    Match::Iif(i) => Some(i.clone()),
                    _ => None,
                });
                r.matches.iter().find_map(|m| match m {
                    Match::Dport(_, p) => Some((iif.clone(), *p)),
                    _ => None,
                })
            })
            .collect()
    }

    fn position(rules: &[Rule], rule: &Rule) -> usize {
        rules
            .iter()
            .position(|r| r == rule)
            .unwrap_or_else(|| panic!("{rule:?} missing"))
    }

    #[test]
    fn api_and_ssh_on_management_services_on_tenants_bgp_outside() {
        let config = test_config::basic();
        let rules = rules(&Router::of(&config), OPTS);
        let on = |i: &str, p: u16| (Some(i.to_string()), p);
        assert_eq!(
            opened(&rules),
            [
                on("ge0", 5000),
                on("ge0", 22),
                on("ge2", 67),
                on("ge2", 547),
                on("ge2", 53),
                on("ge2", 53),
                on("ge2", 9602),
                on("ge1", 179)
            ]
        );
        let last = rules.last().unwrap();
        assert!(last.matches.is_empty() && last.verdict == Verdict::Drop);
    }

    #[test]
    fn management_isolation_comes_before_anything_that_accepts() {
        let config = test_config::basic();
        let rules = rules(&Router::of(&config), OPTS);
        let isolation: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.comment.as_deref() == Some(ISOLATION))
            .map(|(i, _)| i)
            .collect();
        // The management prefix, right after loopback (before replies are accepted); the API
        // and SSH after connection tracking, before ICMP and every opening.
        assert_eq!(isolation, [1, 4, 5]);
        assert_eq!(
            rules[1].matches,
            [
                Match::IifNot("ge0".into()),
                Match::Proto(Family::V6),
                Match::Daddr("fdca:3ba5:a17a:acda::/64".parse().unwrap())
            ]
        );
        assert_eq!(rules[1].verdict, Verdict::Drop);
        for (i, port) in [(4, 5000), (5, SSH_PORT)] {
            assert_eq!(
                rules[i].matches,
                [
                    Match::IifNot("ge0".into()),
                    Match::L4(L4::Tcp),
                    Match::Dport(L4::Tcp, port)
                ]
            );
            assert_eq!(rules[i].verdict, Verdict::Drop);
        }
        // Before isolation is done, only loopback and replies are accepted.
        assert_eq!(rules[0], loopback());
        assert_eq!(rules[2], Rule::new(vec![established()], Verdict::Accept));
        for (i, r) in rules[..6].iter().enumerate() {
            assert!(
                r.verdict != Verdict::Accept || i == 0 || i == 2,
                "rule {i} accepts: {r:?}"
            );
        }
    }

    #[test]
    fn every_management_prefix_is_isolated_but_link_local_and_slash_zero() {
        let mut doc = test_config::basic_json();
        doc["networks"][0]["interface"]["addresses"] = serde_json::json!([
            "fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/64",
            "fdca:3ba5:a17a:acda::7/64",
            "10.250.0.5/24",
            "fe80::1/64"
        ]);
        doc["networks"][0]["subnets"].as_array_mut().unwrap().push(
            serde_json::json!({"id": "m4", "cidr": "10.250.0.0/24", "gateway_ip": null,
                "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}),
        );
        let config = test_config::parse(&doc);
        let dropped: Vec<String> = isolation_by_address(&Router::of(&config))
            .iter()
            .map(|r| {
                r.matches
                    .iter()
                    .find_map(|m| match m {
                        Match::Daddr(p) => Some(p.to_string()),
                        _ => None,
                    })
                    .unwrap()
            })
            .collect();
        assert_eq!(dropped, ["fdca:3ba5:a17a:acda::/64", "10.250.0.0/24"]);
    }

    #[test]
    fn the_metadata_proxy_only_through_its_redirect() {
        let config = test_config::basic();
        let rules = rules(&Router::of(&config), OPTS);
        let proxy: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some("metadata proxy"))
            .collect();
        assert_eq!(proxy.len(), 1);
        assert_eq!(
            proxy[0].matches,
            [
                Match::Iif("ge2".into()),
                Match::Proto(Family::V4),
                Match::Daddr("192.168.0.1/32".parse().unwrap()),
                Match::L4(L4::Tcp),
                Match::Dport(L4::Tcp, 9602),
                Match::CtDnat
            ]
        );
        // No IPv4 address on the NIC: no redirect (`nat::prerouting`), so nothing to open.
        let mut doc = test_config::basic_json();
        doc["networks"][2]["interface"]["addresses"] = serde_json::json!(["2001:db8:100::1/64"]);
        doc["networks"][2]["subnets"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        doc["networks"][2]["allocations"] = serde_json::json!([]);
        doc["floating_ips"] = serde_json::json!([]);
        let config = test_config::parse(&doc);
        assert!(!super::rules(&Router::of(&config), OPTS)
            .iter()
            .any(|r| r.comment.as_deref() == Some("metadata proxy")));
    }

    #[test]
    fn without_management_the_api_is_closed_on_every_named_nic() {
        let config = test_config::parse(&test_config::without("management"));
        let rules = rules(&Router::of(&config), OPTS);
        assert!(isolation_by_address(&Router::of(&config)).is_empty());
        let closed: Vec<&Match> = rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some(ISOLATION))
            .map(|r| &r.matches[0])
            .collect();
        assert_eq!(
            closed,
            [&Match::Iif("ge1".into()), &Match::Iif("ge2".into())]
        );
        let open = position(
            &rules,
            &Rule::new(
                vec![Match::L4(L4::Tcp), Match::Dport(L4::Tcp, 5000)],
                Verdict::Accept,
            )
            .comment("agent API"),
        );
        let last_closed = rules
            .iter()
            .rposition(|r| r.comment.as_deref() == Some(ISOLATION))
            .unwrap();
        assert!(last_closed < open);
        assert!(!opened(&rules).iter().any(|(_, p)| *p == 22), "no SSH");
    }
}
