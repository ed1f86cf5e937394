//! Tenant rules: the config's anchors, in document order; the first match decides (`pass`
//! accepts, `block` drops); traffic no rule matches falls through to the router's own policy.

use std::collections::BTreeMap;

use akanda_model::{
    Action, Direction, Endpoint, Family as RuleFamily, FilterRule, Protocol, RouterConfig,
};
use ipnet::IpNet;

use super::{Family, Match, Rule, Verdict, L4};

pub(super) fn rules(config: &RouterConfig) -> Vec<Rule> {
    let mut rules = Vec::new();
    for anchor in &config.anchors {
        for (i, rule) in anchor.rules.iter().enumerate() {
            let comment = format!("anchor {} rule {i}", anchor.name);
            for r in expand_filter_rule(rule, &config.address_book) {
                rules.push(r.comment(comment.clone()));
            }
        }
    }
    rules
}

/// The CIDRs an endpoint stands for: `None` for "any".
fn endpoint_cidrs(
    ep: &Option<Endpoint>,
    book: &BTreeMap<String, Vec<IpNet>>,
) -> Vec<Option<IpNet>> {
    match ep {
        None => vec![None],
        Some(Endpoint::Cidr(c)) => vec![Some(*c)],
        Some(Endpoint::AddressBook(name)) => book
            .get(name)
            .map(|v| v.iter().copied().map(Some).collect())
            .unwrap_or_default(),
    }
}

/// One nft rule per (source CIDR, destination CIDR) pair of the same family.
fn expand_filter_rule(rule: &FilterRule, book: &BTreeMap<String, Vec<IpNet>>) -> Vec<Rule> {
    let verdict = match rule.action {
        Action::Pass => Verdict::Accept,
        Action::Block => Verdict::Drop,
    };
    let wanted_family = rule.family.map(|f| match f {
        RuleFamily::Inet => Family::V4,
        RuleFamily::Inet6 => Family::V6,
    });
    let mut out = Vec::new();
    for src in endpoint_cidrs(&rule.source, book) {
        for dst in endpoint_cidrs(&rule.destination, book) {
            let fams: Vec<Family> = [src, dst]
                .iter()
                .flatten()
                .map(|c| Family::of(c.addr()))
                .collect();
            if fams.windows(2).any(|w| w[0] != w[1]) {
                continue;
            }
            let family = fams.first().copied().or(wanted_family);
            if let (Some(w), Some(f)) = (wanted_family, family) {
                if w != f {
                    continue;
                }
            }
            let mut m = Vec::new();
            if let Some(ifname) = &rule.interface {
                m.push(match rule.direction {
                    Some(Direction::Out) => Match::Oif(ifname.clone()),
                    _ => Match::Iif(ifname.clone()),
                });
            }
            if let Some(ifname) = &rule.destination_interface {
                m.push(Match::Oif(ifname.clone()));
            }
            if let Some(f) = family {
                m.push(Match::Proto(f));
            }
            if let Some(s) = src {
                m.push(Match::Saddr(s));
            }
            if let Some(d) = dst {
                m.push(Match::Daddr(d));
            }
            let l4 = rule.protocol.map(|p| match (p, family) {
                (Protocol::Tcp, _) => L4::Tcp,
                (Protocol::Udp, _) => L4::Udp,
                (Protocol::Icmp, Some(Family::V6)) => L4::Icmpv6,
                (Protocol::Icmp, _) => L4::Icmp,
            });
            if let Some(l4) = l4 {
                m.push(Match::L4(l4));
                if let Some(p) = rule.source_port {
                    m.push(Match::Sport(l4, p));
                }
                if let Some(p) = rule.destination_port {
                    m.push(Match::Dport(l4, p));
                }
            }
            out.push(Rule::new(m, verdict.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_config;
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn config_with(book: serde_json::Value, rules: serde_json::Value) -> RouterConfig {
        let mut doc = test_config::basic_json();
        doc["address_book"] = book;
        doc["anchors"] = json!([{"name": "a", "rules": rules}]);
        test_config::parse(&doc)
    }

    #[test]
    fn address_book_expands_to_pairs_of_one_family() {
        let config = config_with(
            json!({"admins": ["203.0.113.0/24", "2001:db8:998::/48"], "web": ["192.168.0.10/32"]}),
            json!([{"action": "block", "protocol": "tcp", "source": "admins",
                    "destination": "web", "destination_port": 443, "interface": "ge1"}]),
        );
        let rules = rules(&config);
        assert_eq!(
            rules.len(),
            1,
            "the IPv6 source has no IPv4 destination to pair with"
        );
        assert_eq!(
            rules[0].matches,
            [
                Match::Iif("ge1".into()),
                Match::Proto(Family::V4),
                Match::Saddr(net("203.0.113.0/24")),
                Match::Daddr(net("192.168.0.10/32")),
                Match::L4(L4::Tcp),
                Match::Dport(L4::Tcp, 443)
            ]
        );
        assert_eq!(rules[0].verdict, Verdict::Drop);
        assert_eq!(rules[0].comment.as_deref(), Some("anchor a rule 0"));
    }

    #[test]
    fn ipv6_family_picks_icmpv6_and_the_v6_book_entries() {
        let config = config_with(
            json!({"mixed": ["203.0.113.0/24", "2001:db8:998::/48"]}),
            json!([{"action": "pass", "protocol": "icmp", "family": "inet6", "source": "mixed"}]),
        );
        let rules = rules(&config);
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].matches,
            [
                Match::Proto(Family::V6),
                Match::Saddr(net("2001:db8:998::/48")),
                Match::L4(L4::Icmpv6)
            ]
        );
        assert_eq!(rules[0].verdict, Verdict::Accept);
    }

    #[test]
    fn outbound_direction_matches_the_output_nic() {
        let config = config_with(
            json!({}),
            json!([{"action": "block", "direction": "out", "interface": "ge2",
                    "protocol": "udp", "source_port": 123}]),
        );
        assert_eq!(
            rules(&config)[0].matches,
            [
                Match::Oif("ge2".into()),
                Match::L4(L4::Udp),
                Match::Sport(L4::Udp, 123)
            ]
        );
    }

    #[test]
    fn no_anchors_no_rules() {
        assert!(rules(&test_config::basic()).is_empty());
    }
}
