//! The input chain: what may reach the router itself.

use super::{
    established, CtState, FirewallOptions, Match, Router, Rule, Verdict, BGP_PORT, L4, SSH_PORT,
};
use crate::services::metadata;

/// Loopback, replies, ICMP and ICMPv6: accepted on every router, configured or not.
pub(super) fn always_accepted() -> Vec<Rule> {
    vec![
        Rule::new(vec![Match::Iif("lo".into())], Verdict::Accept),
        Rule::new(vec![established()], Verdict::Accept),
        Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop),
        Rule::new(vec![Match::L4(L4::Icmp)], Verdict::Accept),
        // Neighbour discovery, router solicitations, PMTU: IPv6 does not work without it.
        Rule::new(vec![Match::L4(L4::Icmpv6)], Verdict::Accept),
    ]
}

pub(super) fn rules(router: &Router, opts: FirewallOptions) -> Vec<Rule> {
    let mut rules = always_accepted();
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
        // Without a management network, the API must stay reachable wherever it listens.
        None => rules.push(
            Rule::new(
                vec![Match::L4(L4::Tcp), Match::Dport(L4::Tcp, opts.api_port)],
                Verdict::Accept,
            )
            .comment("agent API"),
        ),
    }
    for net in &router.tenants {
        let mut services = vec![
            (L4::Udp, 67, "DHCP"),
            (L4::Udp, 547, "DHCPv6"),
            (L4::Udp, 53, "DNS"),
            (L4::Tcp, 53, "DNS"),
        ];
        if let Some(port) = metadata::nic_port(&net.ifname) {
            services.push((L4::Tcp, port, "metadata proxy"));
        }
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
        assert_eq!(rules[..5], always_accepted()[..]);
        let last = rules.last().unwrap();
        assert!(last.matches.is_empty() && last.verdict == Verdict::Drop);
    }

    #[test]
    fn without_management_the_api_is_open_on_every_nic() {
        let config = test_config::parse(&test_config::without("management"));
        let rules = rules(&Router::of(&config), OPTS);
        let opened = opened(&rules);
        assert_eq!(opened[0], (None, 5000));
        assert!(!opened.iter().any(|(_, p)| *p == 22), "{opened:?}");
    }
}
