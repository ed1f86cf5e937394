//! Renders a [`Ruleset`] as nft text (`nft -f` syntax): for golden tests, debugging, and so
//! operators can read exactly what the agent installs.

use std::fmt::Write;

use ipnet::IpNet;

use super::ruleset::*;

pub fn render(rs: &Ruleset) -> String {
    let mut out = format!("table inet {TABLE} {{\n");
    for set in &rs.sets {
        let ty = |f: Family| {
            if f == Family::V4 {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            }
        };
        let _ = writeln!(out, "\tmap {} {{", set.name);
        match set.data {
            Some(MapValue::Addr(d)) => {
                let _ = writeln!(out, "\t\ttype {} : {}", ty(set.key), ty(d));
            }
            Some(MapValue::Mark) => {
                let _ = writeln!(out, "\t\ttype {} : mark", ty(set.key));
            }
            None => {
                let _ = writeln!(out, "\t\ttype {}", ty(set.key));
            }
        }
        if !set.elements.is_empty() {
            let elems: Vec<String> = set
                .elements
                .iter()
                .map(|(k, v)| match (v, set.data) {
                    (Some(std::net::IpAddr::V4(v)), Some(MapValue::Mark)) => {
                        format!("{k} : {:#010x}", session_mark(*v))
                    }
                    (Some(v), _) => format!("{k} : {v}"),
                    (None, _) => k.to_string(),
                })
                .collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
        }
        out.push_str("\t}\n");
    }
    for chain in &rs.chains {
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        if let Some(b) = &chain.base {
            let kind = match b.kind {
                ChainKind::Filter => "filter",
                ChainKind::Nat => "nat",
            };
            let hook = match b.hook {
                Hook::Prerouting => "prerouting",
                Hook::Input => "input",
                Hook::Forward => "forward",
                Hook::Postrouting => "postrouting",
            };
            let policy = if b.policy_drop { "drop" } else { "accept" };
            let _ = writeln!(
                out,
                "\t\ttype {kind} hook {hook} priority {}; policy {policy};",
                b.priority
            );
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{}", render_rule(rule));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn addr_kw(net: &IpNet) -> &'static str {
    if net.addr().is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn l4_name(l4: L4) -> &'static str {
    match l4 {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
        L4::Icmp => "icmp",
        L4::Icmpv6 => "ipv6-icmp",
    }
}

pub(crate) fn render_rule(rule: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    for m in &rule.matches {
        parts.push(match m {
            Match::Iif(i) => format!("iifname \"{i}\""),
            Match::IifNot(i) => format!("iifname != \"{i}\""),
            Match::Oif(i) => format!("oifname \"{i}\""),
            Match::OifNot(i) => format!("oifname != \"{i}\""),
            Match::Proto(Family::V4) => "meta nfproto ipv4".into(),
            Match::Proto(Family::V6) => "meta nfproto ipv6".into(),
            Match::L4(l4) => format!("meta l4proto {}", l4_name(*l4)),
            Match::Saddr(n) => format!("{} saddr {}", addr_kw(n), net_text(n)),
            Match::Daddr(n) => format!("{} daddr {}", addr_kw(n), net_text(n)),
            Match::Sport(l4, p) => format!("{} sport {p}", l4_name(*l4)),
            Match::Dport(l4, p) => format!("{} dport {p}", l4_name(*l4)),
            Match::CtState(states) => {
                let names: Vec<&str> = states
                    .iter()
                    .map(|s| match s {
                        CtState::New => "new",
                        CtState::Invalid => "invalid",
                        CtState::Established => "established",
                        CtState::Related => "related",
                    })
                    .collect();
                format!("ct state {}", names.join(","))
            }
            Match::CtDnat => "ct status dnat".into(),
            Match::CtSnat => "ct status snat".into(),
            Match::FibSaddrIifMissing => "fib saddr . iif oif missing".into(),
        });
    }
    if rule.counter {
        parts.push("counter".into());
    }
    match &rule.verdict {
        Verdict::Accept => parts.push("accept".into()),
        Verdict::Drop => parts.push("drop".into()),
        Verdict::Continue => {}
        Verdict::Jump(c) => parts.push(format!("jump {c}")),
        Verdict::SnatTo(a) => parts.push(format!("snat ip to {a}")),
        Verdict::DnatTo(a, p) => parts.push(format!("dnat ip to {a}:{p}")),
        Verdict::DnatMap(m) => parts.push(format!("dnat ip to ip daddr map @{m}")),
        Verdict::SnatMap(m) => parts.push(format!("snat ip to ip saddr map @{m}")),
        Verdict::Masquerade => parts.push("masquerade".into()),
        Verdict::MarkSession { reply, map } => parts.push(format!(
            "ct mark set ct {} ip daddr map @{map}",
            if *reply { "reply" } else { "original" }
        )),
    }
    if let Some(c) = &rule.comment {
        parts.push(format!("comment \"{}\"", c.replace('"', "'")));
    }
    parts.join(" ")
}
