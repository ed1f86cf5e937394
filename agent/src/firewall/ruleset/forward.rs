//! The forward chain: what the router routes, and the label counters it jumps to first.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{established, CtState, Family, Match, Router, Rule, Verdict, ISOLATION, SPOOFED};

/// The regular chain of label counters.
pub(super) const LABELS_CHAIN: &str = "labels";
/// The regular chain of the config's anchors ([`super::tenant`]).
pub(super) const TENANT_RULES_CHAIN: &str = "tenant_rules";

/// First what no config can open: nothing is forwarded from or to the management network,
/// and a packet whose source the router would not route back out of the NIC it came in on is
/// dropped (anti-spoofing). Then labels are counted, before anything else decides; tenant
/// rules decide before the router's own policy (internal networks out and between each other,
/// floating IPs in).
pub(super) fn rules(router: &Router, has_labels: bool, has_tenant_rules: bool) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(m) = router.management {
        for m in [Match::Iif(m.ifname.clone()), Match::Oif(m.ifname.clone())] {
            rules.push(Rule::new(vec![m], Verdict::Drop).comment(ISOLATION));
        }
    }
    // A strict reverse-path check against the FIB the config installed: a tenant's own
    // subnets, and prefixes its static or host routes send through its NIC, pass from it; from
    // the external NIC, whatever the router routes out there (its default route included), so
    // not a tenant's subnets or the management network. The router's own addresses (floating
    // IPs included: local routes) match no NIC.
    rules.push(Rule::new(vec![Match::FibSaddrIifMissing], Verdict::Drop).comment(SPOOFED));
    if has_labels {
        rules.push(Rule::jump(LABELS_CHAIN));
    }
    rules.push(Rule::new(vec![established()], Verdict::Accept));
    rules.push(Rule::new(
        vec![Match::CtState(vec![CtState::Invalid])],
        Verdict::Drop,
    ));
    if has_tenant_rules {
        rules.push(Rule::jump(TENANT_RULES_CHAIN));
    }
    for net in &router.internals {
        // Internal → external and internal ↔ internal; never into the management network.
        let mut m = vec![Match::Iif(net.ifname.clone())];
        if let Some(mg) = router.management {
            m.push(Match::OifNot(mg.ifname.clone()));
        }
        rules.push(Rule::new(m, Verdict::Accept).comment(format!("from {}", net.ifname)));
    }
    if let Some(e) = router.external {
        rules.push(
            Rule::new(
                vec![Match::Iif(e.ifname.clone()), Match::CtDnat],
                Verdict::Accept,
            )
            .comment("to floating IPs"),
        );
    }
    rules.push(Rule::new(vec![], Verdict::Drop).comment("everything else"));
    rules
}

/// Label counters (Astara's pf-era metering): traffic from and to each CIDR, counted and
/// passed on.
pub(super) fn label_rules(labels: &BTreeMap<String, Vec<IpNet>>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (name, cidrs) in labels {
        for cidr in cidrs {
            let proto = Match::Proto(Family::of(cidr.addr()));
            for (m, dir) in [(Match::Saddr(*cidr), "from"), (Match::Daddr(*cidr), "to")] {
                rules.push(
                    Rule::new(vec![proto.clone(), m], Verdict::Continue)
                        .comment(format!("label {name} {dir} {cidr}")),
                );
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::super::test_config;
    use super::*;

    #[test]
    fn isolation_and_anti_spoofing_first_then_jumps_then_policy() {
        let config = test_config::basic();
        let rules = rules(&Router::of(&config), true, true);
        let verdicts: Vec<_> = rules.iter().map(|r| r.verdict.clone()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Jump(LABELS_CHAIN.into()),
                Verdict::Accept,
                Verdict::Drop,
                Verdict::Jump(TENANT_RULES_CHAIN.into()),
                Verdict::Accept,
                Verdict::Accept,
                Verdict::Drop
            ]
        );
        // Nothing from or to the management network, whatever comes after.
        assert_eq!(rules[0].matches, [Match::Iif("ge0".into())]);
        assert_eq!(rules[1].matches, [Match::Oif("ge0".into())]);
        assert!(rules[..2]
            .iter()
            .all(|r| r.comment.as_deref() == Some(ISOLATION)));
        // Then the reverse-path check, before replies are accepted: a spoofed packet that
        // matches someone else's connection is dropped too.
        assert_eq!(rules[2].matches, [Match::FibSaddrIifMissing]);
        assert_eq!(rules[2].comment.as_deref(), Some(SPOOFED));
        assert!(!rules[3].counter, "jumps are not counted");
        assert_eq!(
            rules[7].matches,
            [Match::Iif("ge2".into()), Match::OifNot("ge0".into())],
            "never into the management network"
        );
        assert_eq!(
            rules[8].matches,
            [Match::Iif("ge1".into()), Match::CtDnat],
            "from outside only to floating IPs"
        );
    }

    #[test]
    fn no_jumps_without_labels_or_tenant_rules() {
        let config = test_config::basic();
        let rules = rules(&Router::of(&config), false, false);
        assert!(!rules.iter().any(|r| matches!(r.verdict, Verdict::Jump(_))));
        assert_eq!(rules.len(), 8);
    }

    #[test]
    fn without_management_only_anti_spoofing_comes_first() {
        let config = test_config::parse(&test_config::without("management"));
        let rules = rules(&Router::of(&config), false, true);
        assert_eq!(rules[0].matches, [Match::FibSaddrIifMissing]);
        assert!(!rules
            .iter()
            .any(|r| r.comment.as_deref() == Some(ISOLATION)));
        assert_eq!(rules[3].verdict, Verdict::Jump(TENANT_RULES_CHAIN.into()));
    }

    #[test]
    fn labels_count_both_directions_per_family() {
        let labels = BTreeMap::from([(
            "ext".to_string(),
            vec![
                "192.168.57.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        )]);
        let rules = label_rules(&labels);
        let comments: Vec<_> = rules.iter().map(|r| r.comment.clone().unwrap()).collect();
        assert_eq!(
            comments,
            [
                "label ext from 192.168.57.0/24",
                "label ext to 192.168.57.0/24",
                "label ext from 2001:db8::/32",
                "label ext to 2001:db8::/32"
            ]
        );
        assert!(rules.iter().all(|r| r.verdict == Verdict::Continue));
        assert_eq!(rules[2].matches[0], Match::Proto(Family::V6));
    }
}
