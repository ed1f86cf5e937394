//! Pure: a config → the nf_tables ruleset of table `inet akanda`, as a plain value.
//!
//! Two renderers consume it: `text` (nft syntax, for golden tests and debugging) and `batch`
//! (an nftnl batch sent over netlink). Floating IPs live in two maps, so the number of rules
//! grows with networks and tenant rules, never with floating IPs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use akanda_model::{
    Action, Direction, Endpoint, Family as RuleFamily, FilterRule, NetworkType, Protocol,
    RouterConfig,
};
use ipnet::IpNet;

pub const TABLE: &str = "akanda";
/// Maps floating → fixed (inbound DNAT) and fixed → floating (outbound SNAT).
pub const FIP_DNAT_MAP: &str = "fip_dnat";
pub const FIP_SNAT_MAP: &str = "fip_snat";
/// The metadata address tenants ask, redirected to the agent's proxy for that network.
pub const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
/// The metadata proxy for NIC `geN` listens on `METADATA_BASE_PORT + N`.
pub const METADATA_BASE_PORT: u16 = 9600;
pub const SSH_PORT: u16 = 22;
pub const BGP_PORT: u16 = 179;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Family,
    /// `Some`: a map whose values are addresses of this family.
    pub data: Option<Family>,
    pub elements: Vec<(IpAddr, Option<IpAddr>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
    pub policy_drop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Icmp => 1,
            L4::Icmpv6 => 58,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    Invalid,
    Established,
    Related,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Iif(String),
    IifNot(String),
    Oif(String),
    OifNot(String),
    /// `meta nfproto`: needed before any address match in an `inet` table.
    Proto(Family),
    L4(L4),
    Saddr(IpNet),
    Daddr(IpNet),
    /// Needs a preceding `L4(Tcp|Udp)`.
    Sport(L4, u16),
    Dport(L4, u16),
    CtState(Vec<CtState>),
    /// The connection was destination-NATed (a floating IP).
    CtDnat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    /// Count and go on (label counters).
    Continue,
    Jump(String),
    SnatTo(IpAddr),
    DnatTo(IpAddr, u16),
    /// `dnat ip to ip daddr map @SET`.
    DnatMap(String),
    /// `snat ip to ip saddr map @SET`.
    SnatMap(String),
    Masquerade,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

impl Rule {
    fn new(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            matches,
            counter: true,
            verdict,
            comment: None,
        }
    }

    fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

/// What the ruleset needs to know about the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallOptions {
    /// The API's port, opened on the management NIC.
    pub api_port: u16,
}

/// `geN` → N.
pub fn ge_number(ifname: &str) -> u16 {
    ifname
        .strip_prefix("ge")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn metadata_port(ifname: &str) -> u16 {
    METADATA_BASE_PORT + ge_number(ifname)
}

fn first_v4(addrs: &[IpNet]) -> Option<IpAddr> {
    addrs.iter().map(|a| a.addr()).find(|a| a.is_ipv4())
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Builds the whole ruleset of a config.
pub fn build(config: &RouterConfig, opts: FirewallOptions) -> Ruleset {
    let ext = config.external_network();
    let mgmt = config.management_network();
    let internals: Vec<_> = config
        .networks
        .iter()
        .filter(|n| n.network_type == NetworkType::Internal)
        .collect();
    let tenants: Vec<_> = config
        .networks
        .iter()
        .filter(|n| n.network_type.is_tenant())
        .collect();
    let ext_v4 = ext.and_then(|e| first_v4(&e.addresses));

    // Floating IPs: IPv4 only (Neutron has no IPv6 floating IPs; the model accepts v6 pairs
    // but there is no IPv6 NAT).
    let fips: Vec<_> = config
        .floating_ips
        .iter()
        .filter(|f| f.floating_ip.is_ipv4())
        .collect();
    let mut sets = Vec::new();
    if !fips.is_empty() {
        sets.push(Set {
            name: FIP_DNAT_MAP.into(),
            key: Family::V4,
            data: Some(Family::V4),
            elements: fips
                .iter()
                .map(|f| (f.floating_ip, Some(f.fixed_ip)))
                .collect(),
        });
        sets.push(Set {
            name: FIP_SNAT_MAP.into(),
            key: Family::V4,
            data: Some(Family::V4),
            elements: fips
                .iter()
                .map(|f| (f.fixed_ip, Some(f.floating_ip)))
                .collect(),
        });
    }

    // --- NAT ---------------------------------------------------------------------------
    let v4 = Match::Proto(Family::V4);
    let mut prerouting = Vec::new();
    for net in &tenants {
        // Metadata: tenant → 169.254.169.254:80 goes to this network's proxy on the router.
        if let Some(gw) = first_v4(&net.addresses) {
            prerouting.push(
                Rule::new(
                    vec![
                        Match::Iif(net.ifname.clone()),
                        v4.clone(),
                        Match::Daddr(host(IpAddr::from(METADATA_ADDR))),
                        Match::L4(L4::Tcp),
                        Match::Dport(L4::Tcp, 80),
                    ],
                    Verdict::DnatTo(gw, metadata_port(&net.ifname)),
                )
                .comment(format!("metadata for {}", net.ifname)),
            );
        }
    }
    if !fips.is_empty() {
        // Inbound to a floating IP, from outside or from a tenant (hairpin).
        let mut from: Vec<&str> = internals.iter().map(|n| n.ifname.as_str()).collect();
        if let Some(e) = ext {
            from.insert(0, &e.ifname);
        }
        for ifname in from {
            prerouting.push(
                Rule::new(
                    vec![Match::Iif(ifname.into()), v4.clone()],
                    Verdict::DnatMap(FIP_DNAT_MAP.into()),
                )
                .comment("floating IPs"),
            );
        }
    }

    let mut postrouting = Vec::new();
    // Hairpin: a tenant reaching another tenant through its floating IP. Its source becomes
    // the router's, so the reply comes back through the router even within one subnet.
    let hairpin_nets = if fips.is_empty() {
        &[][..]
    } else {
        &internals[..]
    };
    for net in hairpin_nets {
        for subnet in net.subnets.iter().filter(|s| s.cidr.addr().is_ipv4()) {
            postrouting.push(
                Rule::new(
                    vec![
                        Match::OifNot(ext.map(|e| e.ifname.clone()).unwrap_or_default()),
                        v4.clone(),
                        Match::Saddr(subnet.cidr),
                        Match::CtDnat,
                    ],
                    Verdict::Masquerade,
                )
                .comment("floating IP hairpin"),
            );
        }
    }
    if let Some(e) = ext {
        if !fips.is_empty() {
            postrouting.push(
                Rule::new(
                    vec![Match::Oif(e.ifname.clone()), v4.clone()],
                    Verdict::SnatMap(FIP_SNAT_MAP.into()),
                )
                .comment("floating IPs"),
            );
        }
        // Everything else from internal IPv4 subnets leaves with the router's address. No
        // NAT between internal networks, none for IPv6.
        if let Some(addr) = ext_v4 {
            for net in &internals {
                for subnet in net.subnets.iter().filter(|s| s.cidr.addr().is_ipv4()) {
                    postrouting.push(
                        Rule::new(
                            vec![
                                Match::Oif(e.ifname.clone()),
                                v4.clone(),
                                Match::Saddr(subnet.cidr),
                            ],
                            Verdict::SnatTo(addr),
                        )
                        .comment(format!("SNAT {}", net.ifname)),
                    );
                }
            }
        }
    }

    // --- filter: input -------------------------------------------------------------------
    let established = Match::CtState(vec![CtState::Established, CtState::Related]);
    let mut input = vec![
        Rule::new(vec![Match::Iif("lo".into())], Verdict::Accept),
        Rule::new(vec![established.clone()], Verdict::Accept),
        Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop),
        Rule::new(vec![Match::L4(L4::Icmp)], Verdict::Accept),
        // Neighbour discovery, router solicitations, PMTU: IPv6 does not work without it.
        Rule::new(vec![Match::L4(L4::Icmpv6)], Verdict::Accept),
    ];
    match mgmt {
        Some(m) => {
            for port in [opts.api_port, SSH_PORT] {
                input.push(
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
        None => input.push(
            Rule::new(
                vec![Match::L4(L4::Tcp), Match::Dport(L4::Tcp, opts.api_port)],
                Verdict::Accept,
            )
            .comment("agent API"),
        ),
    }
    for net in &tenants {
        let iif = || Match::Iif(net.ifname.clone());
        let services: [(L4, u16, &str); 5] = [
            (L4::Udp, 67, "DHCP"),
            (L4::Udp, 547, "DHCPv6"),
            (L4::Udp, 53, "DNS"),
            (L4::Tcp, 53, "DNS"),
            (L4::Tcp, metadata_port(&net.ifname), "metadata proxy"),
        ];
        for (l4, port, what) in services {
            input.push(
                Rule::new(
                    vec![iif(), Match::L4(l4), Match::Dport(l4, port)],
                    Verdict::Accept,
                )
                .comment(what),
            );
        }
    }
    if let Some(e) = ext {
        input.push(
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
    input.push(Rule::new(vec![], Verdict::Drop).comment("everything else"));

    // --- filter: forward -----------------------------------------------------------------
    let mut forward = Vec::new();
    let has_labels = !config.labels.is_empty();
    if has_labels {
        forward.push(Rule {
            matches: vec![],
            counter: false,
            verdict: Verdict::Jump("labels".into()),
            comment: None,
        });
    }
    forward.push(Rule::new(vec![established], Verdict::Accept));
    forward.push(Rule::new(
        vec![Match::CtState(vec![CtState::Invalid])],
        Verdict::Drop,
    ));
    let tenant_rules = tenant_rules(config);
    if !tenant_rules.is_empty() {
        forward.push(Rule {
            matches: vec![],
            counter: false,
            verdict: Verdict::Jump("tenant_rules".into()),
            comment: None,
        });
    }
    for net in &internals {
        // Internal → external and internal ↔ internal; never into the management network.
        let mut m = vec![Match::Iif(net.ifname.clone())];
        if let Some(mg) = mgmt {
            m.push(Match::OifNot(mg.ifname.clone()));
        }
        forward.push(Rule::new(m, Verdict::Accept).comment(format!("from {}", net.ifname)));
    }
    if let Some(e) = ext {
        forward.push(
            Rule::new(
                vec![Match::Iif(e.ifname.clone()), Match::CtDnat],
                Verdict::Accept,
            )
            .comment("to floating IPs"),
        );
    }
    forward.push(Rule::new(vec![], Verdict::Drop).comment("everything else"));

    let base = |kind, hook, priority, policy_drop| {
        Some(BaseChain {
            kind,
            hook,
            priority,
            policy_drop,
        })
    };
    let mut chains = vec![
        Chain {
            name: "prerouting".into(),
            base: base(ChainKind::Nat, Hook::Prerouting, -100, false),
            rules: prerouting,
        },
        Chain {
            name: "postrouting".into(),
            base: base(ChainKind::Nat, Hook::Postrouting, 100, false),
            rules: postrouting,
        },
        Chain {
            name: "input".into(),
            base: base(ChainKind::Filter, Hook::Input, 0, true),
            rules: input,
        },
        Chain {
            name: "forward".into(),
            base: base(ChainKind::Filter, Hook::Forward, 0, true),
            rules: forward,
        },
    ];
    if has_labels {
        chains.push(Chain {
            name: "labels".into(),
            base: None,
            rules: label_rules(&config.labels),
        });
    }
    if !tenant_rules.is_empty() {
        chains.push(Chain {
            name: "tenant_rules".into(),
            base: None,
            rules: tenant_rules,
        });
    }
    Ruleset { sets, chains }
}

/// The ruleset of a router that has no config yet (first boot, or a saved config that could
/// not be restored): nothing is forwarded, and only the agent's API, DHCP/DHCPv6 client replies
/// (the management NIC may be configured by DHCP) and ICMP reach the router. Astara's image
/// accepted everything until the first push.
pub fn bootstrap(opts: FirewallOptions) -> Ruleset {
    let input = vec![
        Rule::new(vec![Match::Iif("lo".into())], Verdict::Accept),
        Rule::new(
            vec![Match::CtState(vec![CtState::Established, CtState::Related])],
            Verdict::Accept,
        ),
        Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop),
        Rule::new(vec![Match::L4(L4::Icmp)], Verdict::Accept),
        Rule::new(vec![Match::L4(L4::Icmpv6)], Verdict::Accept),
        Rule::new(
            vec![Match::L4(L4::Tcp), Match::Dport(L4::Tcp, opts.api_port)],
            Verdict::Accept,
        )
        .comment("agent API"),
        Rule::new(
            vec![Match::L4(L4::Udp), Match::Dport(L4::Udp, 68)],
            Verdict::Accept,
        )
        .comment("DHCP client"),
        Rule::new(
            vec![Match::L4(L4::Udp), Match::Dport(L4::Udp, 546)],
            Verdict::Accept,
        )
        .comment("DHCPv6 client"),
        Rule::new(vec![], Verdict::Drop).comment("no config yet"),
    ];
    let base = |hook| {
        Some(BaseChain {
            kind: ChainKind::Filter,
            hook,
            priority: 0,
            policy_drop: true,
        })
    };
    Ruleset {
        sets: Vec::new(),
        chains: vec![
            Chain {
                name: "input".into(),
                base: base(Hook::Input),
                rules: input,
            },
            Chain {
                name: "forward".into(),
                base: base(Hook::Forward),
                rules: vec![Rule::new(vec![], Verdict::Drop).comment("no config yet")],
            },
        ],
    }
}

/// Label counters (Astara's pf-era metering): traffic from and to each CIDR, counted and
/// passed on.
fn label_rules(labels: &BTreeMap<String, Vec<IpNet>>) -> Vec<Rule> {
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

/// Anchors → rules in document order; the first match decides (`pass` accepts, `block`
/// drops); traffic no rule matches falls through to the router's own policy.
fn tenant_rules(config: &RouterConfig) -> Vec<Rule> {
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
