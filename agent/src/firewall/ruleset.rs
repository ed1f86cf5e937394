//! Pure: a config → the nf_tables ruleset of table `inet akanda`, as a plain value.
//!
//! Two renderers consume it: `text` (nft syntax, for golden tests and debugging) and `batch`
//! (an nftnl batch sent over netlink). Floating IPs live in two maps, so the number of rules
//! grows with networks and tenant rules, never with floating IPs.
//!
//! [`build`] assembles the chains from named parts, each in its own module with its tests:
//! `nat` (floating-IP maps, prerouting, postrouting), `input` (what reaches the router),
//! `forward` (what the router routes, and label counters) and `tenant` (the config's anchors).

mod forward;
mod input;
mod nat;
mod tenant;

use std::net::IpAddr;

use akanda_model::{FloatingIp, Network, NetworkType, RouterConfig};
use ipnet::IpNet;

pub const TABLE: &str = "akanda";
/// Maps floating → fixed (inbound DNAT) and fixed → floating (outbound SNAT).
pub(crate) const FIP_DNAT_MAP: &str = "fip_dnat";
pub(crate) const FIP_SNAT_MAP: &str = "fip_snat";
/// Maps a floating IP to the connection mark its sessions carry: the address's own 32-bit
/// number ([`session_mark`]), so that removing a floating IP ends its sessions with one
/// kernel-side flush by mark instead of a walk of the whole conntrack table.
pub(crate) const FIP_MARK_MAP: &str = "fip_mark";
/// The chain that marks floating-IP sessions: a filter chain on postrouting just after
/// source NAT (priority srcnat + 1), where both translations of a new session are known.
pub(crate) const SESSION_MARKS_CHAIN: &str = "fip_sessions";
/// The metadata address tenants ask, redirected to the agent's proxy for that network (on
/// the port [`crate::services::metadata::nic_port`] gives).
pub(crate) const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
pub(crate) const SSH_PORT: u16 = 22;
pub(crate) const BGP_PORT: u16 = 179;
/// The comment of every rule that keeps the management network and the API apart from the
/// other NICs (`input`, `forward`).
pub(crate) const ISOLATION: &str = "management isolation";
/// The comment of the anti-spoofing rule (`forward`).
pub(crate) const SPOOFED: &str = "spoofed source";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// The connection mark of the sessions of floating IP `ip`: its 32-bit number
/// (172.16.77.50 is 0xac104d32).
pub(crate) fn session_mark(ip: std::net::Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// What a map's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapValue {
    /// Addresses of this family.
    Addr(Family),
    /// Connection marks: each value (an IPv4 address) stands for its [`session_mark`].
    Mark,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub(crate) name: String,
    pub(crate) key: Family,
    /// `Some`: a map with these values.
    pub(crate) data: Option<MapValue>,
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
pub(crate) enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub(crate) kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
    pub(crate) policy_drop: bool,
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
    pub(crate) fn number(self) -> u8 {
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
    New,
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
    /// The connection was source-NATed.
    CtSnat,
    /// `fib saddr . iif oif missing`: the router has no route back to the packet's source out
    /// of the NIC the packet came in on (a strict reverse-path check against the live FIB, as
    /// `rp_filter=1` does, for both families). In the forward hook only.
    FibSaddrIifMissing,
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
    /// `ct mark set ct DIRECTION ip daddr map @SET`, and go on: the session's mark from the
    /// destination of its original tuple (`reply: false`: where a DNAT session was sent) or
    /// of its reply tuple (`reply: true`: the address a SNAT session left from).
    MarkSession {
        reply: bool,
        map: String,
    },
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

    /// Jump to a regular chain: no counter (the chain's own rules count).
    fn jump(chain: &str) -> Rule {
        Rule {
            matches: vec![],
            counter: false,
            verdict: Verdict::Jump(chain.into()),
            comment: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

/// The elements one set gains and loses between two rulesets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDelta {
    pub(crate) name: String,
    pub(crate) key: Family,
    pub(crate) data: Option<MapValue>,
    /// Removed before `added` go in: a map key whose value changed is in both.
    pub(crate) removed: Vec<(IpAddr, Option<IpAddr>)>,
    pub(crate) added: Vec<(IpAddr, Option<IpAddr>)>,
}

/// The element changes that turn `old` into `new` when nothing else differs (same chains and
/// rules, same sets of the same types): floating IPs added, removed or re-pointed. `None`
/// when the structure changed (see `batch::update`). Sets that did not change are left out.
pub fn element_delta(old: &Ruleset, new: &Ruleset) -> Option<Vec<SetDelta>> {
    if old.chains != new.chains || old.sets.len() != new.sets.len() {
        return None;
    }
    let mut deltas = Vec::new();
    for (o, n) in old.sets.iter().zip(&new.sets) {
        if o.name != n.name || o.key != n.key || o.data != n.data {
            return None;
        }
        if o.elements == n.elements {
            continue;
        }
        let sorted = |v: &[(IpAddr, Option<IpAddr>)]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        let (before, after) = (sorted(&o.elements), sorted(&n.elements));
        // One pass over both sorted lists (10,000 floating IPs: a binary search per element
        // cost a millisecond a push).
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
        loop {
            match (b.peek(), a.peek()) {
                (Some(x), Some(y)) if x == y => {
                    b.next();
                    a.next();
                }
                (Some(x), Some(y)) if x < y => removed.extend(b.next().copied()),
                (Some(_), Some(_)) | (None, Some(_)) => added.extend(a.next().copied()),
                (Some(_), None) => removed.extend(b.next().copied()),
                (None, None) => break,
            }
        }
        deltas.push(SetDelta {
            name: n.name.clone(),
            key: n.key,
            data: n.data,
            removed,
            added,
        });
    }
    Some(deltas)
}

/// What the ruleset needs to know about the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallOptions {
    /// The API's port, opened on the management NIC.
    pub api_port: u16,
}

/// The networks of a config, sorted by the role they play in the ruleset.
struct Router<'a> {
    external: Option<&'a Network>,
    management: Option<&'a Network>,
    /// Routed to the outside (SNAT) and reachable through floating IPs.
    internals: Vec<&'a Network>,
    /// Internal and isolated networks: the router serves them DHCP, DNS and metadata.
    tenants: Vec<&'a Network>,
    /// IPv4 only: Neutron has no IPv6 floating IPs (the model accepts v6 pairs but there is
    /// no IPv6 NAT).
    floating_ips: Vec<&'a FloatingIp>,
    /// The NIC of every network, in document order.
    named: Vec<&'a str>,
}

impl<'a> Router<'a> {
    fn of(config: &'a RouterConfig) -> Router<'a> {
        Router {
            external: config.external_network(),
            management: config.management_network(),
            internals: config
                .networks
                .iter()
                .filter(|n| n.network_type == NetworkType::Internal)
                .collect(),
            tenants: config
                .networks
                .iter()
                .filter(|n| n.network_type.is_tenant())
                .collect(),
            floating_ips: config
                .floating_ips
                .iter()
                .filter(|f| f.floating_ip.is_ipv4())
                .collect(),
            named: config.networks.iter().map(|n| n.ifname.as_str()).collect(),
        }
    }
}

impl Router<'_> {
    /// The management network's prefixes: its addresses' networks and its subnets, without
    /// link-local ones (every NIC has those: neighbour discovery needs them) and `/0`.
    fn management_prefixes(&self) -> Vec<IpNet> {
        let Some(m) = self.management else {
            return Vec::new();
        };
        let link_local: [IpNet; 2] = [
            "fe80::/10".parse().expect("constant"),
            "169.254.0.0/16".parse().expect("constant"),
        ];
        let mut out: Vec<IpNet> = Vec::new();
        let candidates = m
            .addresses
            .iter()
            .map(IpNet::trunc)
            .chain(m.subnets.iter().map(|s| s.cidr.trunc()));
        for p in candidates {
            let local = link_local.iter().any(|l| l.contains(&p) || p.contains(l));
            if p.prefix_len() > 0 && !local && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

fn first_v4(addrs: &[IpNet]) -> Option<IpAddr> {
    addrs.iter().map(|a| a.addr()).find(|a| a.is_ipv4())
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Connection tracking's "part of a connection already let through".
fn established() -> Match {
    Match::CtState(vec![CtState::Established, CtState::Related])
}

fn base_chain(
    name: &str,
    kind: ChainKind,
    hook: Hook,
    policy_drop: bool,
    rules: Vec<Rule>,
) -> Chain {
    // NAT at the usual nft priorities (dstnat -100, srcnat 100); filters at 0.
    let priority = match (kind, hook) {
        (ChainKind::Nat, Hook::Prerouting) => -100,
        (ChainKind::Nat, _) => 100,
        (ChainKind::Filter, _) => 0,
    };
    Chain {
        name: name.into(),
        base: Some(BaseChain {
            kind,
            hook,
            priority,
            policy_drop,
        }),
        rules,
    }
}

/// Builds the whole ruleset of a config.
pub fn build(config: &RouterConfig, opts: FirewallOptions) -> Ruleset {
    let router = Router::of(config);
    let has_labels = !config.labels.is_empty();
    let tenant_rules = tenant::rules(config);
    let mut chains = vec![
        base_chain(
            "prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            false,
            nat::prerouting(&router),
        ),
        base_chain(
            "postrouting",
            ChainKind::Nat,
            Hook::Postrouting,
            false,
            nat::postrouting(&router),
        ),
        base_chain(
            "input",
            ChainKind::Filter,
            Hook::Input,
            true,
            input::rules(&router, opts),
        ),
        base_chain(
            "forward",
            ChainKind::Filter,
            Hook::Forward,
            true,
            forward::rules(&router, has_labels, !tenant_rules.is_empty()),
        ),
    ];
    if has_labels {
        chains.push(Chain {
            name: forward::LABELS_CHAIN.into(),
            base: None,
            rules: forward::label_rules(&config.labels),
        });
    }
    if !tenant_rules.is_empty() {
        chains.push(Chain {
            name: forward::TENANT_RULES_CHAIN.into(),
            base: None,
            rules: tenant_rules,
        });
    }
    // Always there, empty without floating IPs: the first floating IP added or the last one
    // removed then rewrites rules in place, where a base chain coming or going would replace
    // the table (and wait for an RCU grace period, see `batch::update`).
    chains.push(Chain {
        name: SESSION_MARKS_CHAIN.into(),
        base: Some(BaseChain {
            kind: ChainKind::Filter,
            hook: Hook::Postrouting,
            priority: 101,
            policy_drop: false,
        }),
        rules: nat::session_marks(&router),
    });
    Ruleset {
        sets: nat::floating_ip_maps(&router),
        chains,
    }
}

/// The ruleset of a router that has no config yet (first boot, or a saved config that could
/// not be restored): nothing is forwarded, and only the agent's API, DHCP/DHCPv6 client replies
/// (the management NIC may be configured by DHCP) and ICMP reach the router. Astara's image
/// accepted everything until the first push. Once the management NIC is known (from the boot
/// configuration, or the NIC of `--listen`), the API and the DHCP clients are opened on that NIC
/// only: before the first push, a tenant NIC must not reach the API either.
pub(crate) fn bootstrap(opts: FirewallOptions, management_nic: Option<&str>) -> Ruleset {
    let on_management = |mut matches: Vec<Match>| {
        if let Some(nic) = management_nic {
            matches.insert(0, Match::Iif(nic.to_string()));
        }
        matches
    };
    let mut input = input::always_accepted();
    input.extend([
        Rule::new(
            on_management(vec![
                Match::L4(L4::Tcp),
                Match::Dport(L4::Tcp, opts.api_port),
            ]),
            Verdict::Accept,
        )
        .comment("agent API"),
        Rule::new(
            on_management(vec![Match::L4(L4::Udp), Match::Dport(L4::Udp, 68)]),
            Verdict::Accept,
        )
        .comment("DHCP client"),
        Rule::new(
            on_management(vec![Match::L4(L4::Udp), Match::Dport(L4::Udp, 546)]),
            Verdict::Accept,
        )
        .comment("DHCPv6 client"),
        Rule::new(vec![], Verdict::Drop).comment("no config yet"),
    ]);
    Ruleset {
        sets: Vec::new(),
        chains: vec![
            base_chain("input", ChainKind::Filter, Hook::Input, true, input),
            base_chain(
                "forward",
                ChainKind::Filter,
                Hook::Forward,
                true,
                vec![Rule::new(vec![], Verdict::Drop).comment("no config yet")],
            ),
        ],
    }
}

/// Configs for the unit tests of each part: the golden `basic` router (management, external,
/// one internal network, a floating IP, a label), edited as JSON before validation.
#[cfg(test)]
mod test_config {
    use akanda_model::RouterConfig;
    use serde_json::Value;

    pub(super) fn basic_json() -> Value {
        serde_json::from_str(include_str!("../../tests/golden/astara-router-basic.json"))
            .expect("valid JSON")
    }

    pub(super) fn parse(doc: &Value) -> RouterConfig {
        akanda_model::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn basic() -> RouterConfig {
        parse(&basic_json())
    }

    /// The basic router with one network (by type) removed.
    pub(super) fn without(network_type: &str) -> Value {
        let mut doc = basic_json();
        doc["networks"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["network_type"] != network_type);
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_in_order_with_their_hooks() {
        let rs = build(&test_config::basic(), FirewallOptions { api_port: 5000 });
        let names: Vec<_> = rs.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prerouting",
                "postrouting",
                "input",
                "forward",
                "labels",
                SESSION_MARKS_CHAIN
            ]
        );
        let prio: Vec<_> = rs
            .chains
            .iter()
            .map(|c| c.base.map(|b| b.priority))
            .collect();
        assert_eq!(
            prio,
            [Some(-100), Some(100), Some(0), Some(0), None, Some(101)],
            "the session marks come after source NAT"
        );
        let drop: Vec<_> = rs
            .chains
            .iter()
            .filter_map(|c| c.base.map(|b| b.policy_drop))
            .collect();
        assert_eq!(drop, [false, false, true, true, false]);
    }

    fn with_floating_ips(pairs: &[(&str, &str)]) -> Ruleset {
        let mut doc = test_config::basic_json();
        doc["floating_ips"] = serde_json::Value::Array(
            pairs
                .iter()
                .map(|(f, x)| serde_json::json!({"floating_ip": f, "fixed_ip": x}))
                .collect(),
        );
        build(
            &test_config::parse(&doc),
            FirewallOptions { api_port: 5000 },
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn floating_ip_changes_are_element_deltas() {
        let old = with_floating_ips(&[
            ("172.16.77.50", "192.168.0.10"),
            ("172.16.77.51", "192.168.0.11"),
        ]);
        let new = with_floating_ips(&[
            ("172.16.77.51", "192.168.0.12"),
            ("172.16.77.52", "192.168.0.13"),
        ]);
        let delta = element_delta(&old, &new).expect("only elements differ");
        let dnat = delta.iter().find(|d| d.name == FIP_DNAT_MAP).unwrap();
        assert_eq!(
            dnat.removed,
            [
                (ip("172.16.77.50"), Some(ip("192.168.0.10"))),
                (ip("172.16.77.51"), Some(ip("192.168.0.11")))
            ]
        );
        assert_eq!(
            dnat.added,
            [
                (ip("172.16.77.51"), Some(ip("192.168.0.12"))),
                (ip("172.16.77.52"), Some(ip("192.168.0.13")))
            ]
        );
        let snat = delta.iter().find(|d| d.name == FIP_SNAT_MAP).unwrap();
        assert_eq!(snat.removed.len(), 2);
        assert_eq!(snat.added.len(), 2);
        assert_eq!(element_delta(&new, &new), Some(vec![]));
    }

    #[test]
    fn structural_changes_are_no_element_delta() {
        let one = with_floating_ips(&[("172.16.77.50", "192.168.0.10")]);
        // The maps and the NAT rules appear with the first floating IP.
        assert_eq!(element_delta(&with_floating_ips(&[]), &one), None);
        assert_eq!(element_delta(&one, &with_floating_ips(&[])), None);
        let mut doc = test_config::basic_json();
        doc["networks"][2]["interface"]["addresses"] = serde_json::json!(["192.168.0.1/25"]);
        doc["networks"][2]["subnets"][0]["cidr"] = serde_json::json!("192.168.0.0/25");
        let renumbered = build(
            &test_config::parse(&doc),
            FirewallOptions { api_port: 5000 },
        );
        let basic = build(&test_config::basic(), FirewallOptions { api_port: 5000 });
        assert_eq!(element_delta(&basic, &renumbered), None);
    }

    #[test]
    fn pass_rules_from_anywhere_come_after_isolation_and_anti_spoofing() {
        let mut doc = test_config::basic_json();
        doc["anchors"] = serde_json::json!([{"name": "open", "rules": [
            {"action": "pass"},
            {"action": "pass", "source": "0.0.0.0/0"},
            {"action": "pass", "family": "inet6", "source": "::/0"},
            {"action": "pass", "protocol": "tcp", "destination_port": 5000}
        ]}]);
        let rs = build(
            &test_config::parse(&doc),
            FirewallOptions { api_port: 5000 },
        );
        let chain = |name: &str| &rs.chains.iter().find(|c| c.name == name).unwrap().rules;
        let forward = chain("forward");
        let jump = forward
            .iter()
            .position(|r| r.verdict == Verdict::Jump(forward::TENANT_RULES_CHAIN.into()))
            .unwrap();
        let guards: Vec<usize> = forward
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.comment.as_deref(), Some(ISOLATION | SPOOFED)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(guards, [0, 1, 2], "{forward:#?}");
        assert!(guards.iter().all(|g| *g < jump));
        assert_eq!(chain(forward::TENANT_RULES_CHAIN).len(), 4);
        // Tenant rules are jumped to from `forward` only.
        for c in &rs.chains {
            let jumps = c
                .rules
                .iter()
                .any(|r| r.verdict == Verdict::Jump(forward::TENANT_RULES_CHAIN.into()));
            assert_eq!(jumps, c.name == "forward", "{}", c.name);
        }
    }

    #[test]
    fn text_renders_the_reverse_path_check_as_nft_does() {
        let rule = Rule::new(vec![Match::FibSaddrIifMissing], Verdict::Drop).comment(SPOOFED);
        assert_eq!(
            super::super::text::render_rule(&rule),
            "fib saddr . iif oif missing counter drop comment \"spoofed source\""
        );
    }

    #[test]
    fn bootstrap_opens_the_api_on_the_management_nic_only_once_it_is_known() {
        let api = |rs: &Ruleset| {
            rs.chains[0]
                .rules
                .iter()
                .find(|r| r.matches.contains(&Match::Dport(L4::Tcp, 5001)))
                .expect("an API rule")
                .matches
                .clone()
        };
        let before = bootstrap(FirewallOptions { api_port: 5001 }, None);
        assert!(!api(&before).iter().any(|m| matches!(m, Match::Iif(_))));
        let after = bootstrap(FirewallOptions { api_port: 5001 }, Some("ge0"));
        assert_eq!(api(&after)[0], Match::Iif("ge0".into()));
        let dhcp = after.chains[0]
            .rules
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with("DHCP")));
        for rule in dhcp {
            assert_eq!(rule.matches[0], Match::Iif("ge0".into()), "{rule:?}");
        }
    }

    #[test]
    fn bootstrap_forwards_nothing_and_opens_the_api() {
        let rs = bootstrap(FirewallOptions { api_port: 5001 }, None);
        assert!(rs.sets.is_empty());
        assert_eq!(rs.chains.len(), 2);
        let input = &rs.chains[0].rules;
        assert!(input
            .iter()
            .any(|r| r.matches.contains(&Match::Dport(L4::Tcp, 5001))));
        assert_eq!(input.last().unwrap().verdict, Verdict::Drop);
        assert_eq!(rs.chains[1].rules.len(), 1);
        assert_eq!(rs.chains[1].rules[0].verdict, Verdict::Drop);
    }
}
