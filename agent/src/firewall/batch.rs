//! The only user of nftnl: turns a [`Ruleset`] into one nf_tables batch, which
//! [`netfilter`] sends (socket, acknowledgements and libnftnl's raw calls live there).
//!
//! A whole ruleset ([`apply`]) is: add table, delete table, add table (so the table exists and
//! is empty, in the same transaction), then maps with their elements, chains and rules. A
//! change ([`update`]) keeps the table and its base chains when it can, and sends only element
//! changes, or flushes and rewrites the rules. The kernel applies each batch atomically: the
//! old ruleset stays in force until the whole batch commits, and a refused batch changes
//! nothing. No other table is ever named.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;

use ipnet::IpNet;
use nftnl::expr::{
    self, Bitwise, Cmp, CmpOp, Conntrack, ConntrackStatus, Counter, Expression, Immediate,
    InterfaceName, Masquerade, Meta, Nat, NatType, Payload, Register, States,
};
use nftnl::nftnl_sys as sys;
use nftnl::set::Set as NftSet;
use nftnl::{
    Batch, Chain as NftChain, ChainType, Hook as NftHook, MsgType, Policy, ProtoFamily,
    Rule as NftRule, Table,
};

use super::netfilter::{self, ffi, NetfilterError};
use super::ruleset::*;

fn cstring(s: &str) -> Result<CString, NetfilterError> {
    CString::new(s).map_err(|_| NetfilterError::Build(format!("{s:?} contains a NUL byte")))
}

/// Replaces table `inet akanda` with `rs`, atomically. A refused batch is
/// [`NetfilterError::Refused`], with the kernel's errno.
pub fn apply(rs: &Ruleset) -> Result<(), NetfilterError> {
    netfilter::send_batch(&build(rs)?)
}

/// The batch [`apply`] sends: pure (nftnl builds messages in memory, no socket). A ruleset
/// that cannot be expressed (a name with a NUL byte, a comment over nftnl's limit) is
/// [`NetfilterError::Build`]. The fuzz target `render` builds it for every accepted config.
pub fn build(rs: &Ruleset) -> Result<nftnl::FinalizedBatch, NetfilterError> {
    let table = Table::new(cstring(TABLE)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    // Sets must outlive the batch's finalisation: nftnl keeps pointers into them.
    let sets = rs
        .sets
        .iter()
        .enumerate()
        .map(|(i, def)| set_with_elements(def, i as u32 + 1, &table))
        .collect::<Result<Vec<_>, _>>()?;
    for (set, chunks) in &sets {
        batch.add(set, MsgType::Add);
        for chunk in chunks {
            batch.add_iter(chunk.elems_iter(), MsgType::Add);
        }
    }
    add_chains_and_rules(&mut batch, rs, &table)?;
    Ok(batch.finalize())
}

/// A set's own message (id `id` in its batch) and its elements' messages, in chunks.
fn set_with_elements<'a>(
    def: &Set,
    id: u32,
    table: &'a Table,
) -> Result<(NftSet<'a, Ipv4Addr>, Vec<NftSet<'a, Ipv4Addr>>), NetfilterError> {
    let chunks = def
        .elements
        .chunks(ELEMENTS_PER_MESSAGE)
        .map(|chunk| build_set(def, id, table, chunk))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((build_set(def, id, table, &[])?, chunks))
}

/// Adds `rs`'s chains (a base chain already there gets its policy), then their rules. A rule
/// finds its map by name, or by batch id when the map is added in the same batch (ids are
/// positions in `rs.sets`, from 1).
fn add_chains_and_rules(
    batch: &mut Batch,
    rs: &Ruleset,
    table: &Table,
) -> Result<(), NetfilterError> {
    let set_ids: Vec<(&str, u32)> = rs
        .sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i as u32 + 1))
        .collect();
    let chains: Vec<NftChain> = rs
        .chains
        .iter()
        .map(|c| build_chain(c, table))
        .collect::<Result<_, _>>()?;
    for chain in &chains {
        batch.add(chain, MsgType::Add);
    }
    for (def, chain) in rs.chains.iter().zip(&chains) {
        for rule in &def.rules {
            let nft_rule = build_rule(rule, chain, &set_ids)?;
            batch.add(&nft_rule, MsgType::Add);
        }
    }
    Ok(())
}

/// How [`update`] brought the table to the new ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Only map elements were deleted and added (floating IPs).
    Elements,
    /// The rules were flushed and rewritten, and the maps and chains that changed replaced,
    /// in the table and base chains already there.
    Rules,
    /// The table was replaced whole.
    Table,
}

/// Brings table `inet akanda` from `old` (what the kernel has) to `new` in one atomic batch,
/// without re-creating the table or its base chains whenever it can: unregistering a base
/// chain makes the kernel wait for an RCU grace period (10 to 15 ms) before the batch is
/// answered.
/// - Only map elements differ (floating IPs): the batch deletes and adds just those elements.
/// - The rules differ but every base chain stays (same hook, priority and type): every chain
///   is flushed and its rules rewritten, chains and maps that went are deleted, new ones
///   added, kept maps get their element delta, and base chains their policy.
/// - Otherwise, or when the table is gone: the table is replaced with [`apply`].
pub fn update(old: Option<&Ruleset>, new: &Ruleset) -> Result<Update, NetfilterError> {
    let attempt = match old {
        None => None,
        Some(old) => match element_delta(old, new) {
            Some(deltas) => Some(apply_elements(&deltas).map(|()| Update::Elements)),
            None if base_chains_stay(old, new) => {
                Some(rewrite_rules(old, new).map(|()| Update::Rules))
            }
            None => None,
        },
    };
    match attempt {
        Some(Ok(update)) => Ok(update),
        // The table (or a chain or map) vanished behind the agent's back: replace it whole.
        Some(Err(e)) if e.errno() == Some(libc::ENOENT) => apply(new).map(|()| Update::Table),
        Some(Err(e)) => Err(e),
        None => apply(new).map(|()| Update::Table),
    }
}

/// Whether every base chain of `old` is in `new` with the same hook, priority and type (its
/// policy may change), and `new` has no base chain `old` lacks: then no hook is unregistered
/// or registered.
fn base_chains_stay(old: &Ruleset, new: &Ruleset) -> bool {
    let bases = |rs: &Ruleset| -> Vec<(String, ChainKind, Hook, i32)> {
        let mut v: Vec<_> = rs
            .chains
            .iter()
            .filter_map(|c| c.base.map(|b| (c.name.clone(), b.kind, b.hook, b.priority)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    bases(old) == bases(new)
}

/// The batch of [`update`]'s `Rules` case: flush every chain, delete the maps and regular
/// chains that went (or whose types changed), add the new ones, apply the element deltas of
/// the kept maps, re-declare every chain (a base chain's policy may change), then add every
/// rule. The kernel applies it atomically, as one generation.
fn rewrite_rules(old: &Ruleset, new: &Ruleset) -> Result<(), NetfilterError> {
    let table = Table::new(cstring(TABLE)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let old_chains: Vec<NftChain> = old
        .chains
        .iter()
        .map(|c| build_chain(c, &table))
        .collect::<Result<_, _>>()?;
    // A rule message with a chain and no handle deletes every rule of the chain.
    let flushes: Vec<NftRule> = old_chains.iter().map(NftRule::new).collect();
    for flush in &flushes {
        batch.add(flush, MsgType::Del);
    }

    let same_type = |o: &Set, n: &Set| o.key == n.key && o.data == n.data;
    let find = |rs: &'_ Ruleset, name: &str| rs.sets.iter().position(|s| s.name == name);
    // Sets must outlive the batch's finalisation: nftnl keeps pointers into them.
    let mut gone = Vec::new();
    for (i, o) in old.sets.iter().enumerate() {
        let kept = find(new, &o.name).is_some_and(|j| same_type(o, &new.sets[j]));
        if !kept {
            gone.push(build_set(o, i as u32 + 1, &table, &[])?);
        }
    }
    for set in &gone {
        batch.add(set, MsgType::Del);
    }
    for (def, chain) in old.chains.iter().zip(&old_chains) {
        if def.base.is_none() && !new.chains.iter().any(|c| c.name == def.name) {
            batch.add(chain, MsgType::Del);
        }
    }

    let mut added = Vec::new();
    let mut deltas = Vec::new();
    for (i, n) in new.sets.iter().enumerate() {
        let id = i as u32 + 1;
        match find(old, &n.name).filter(|&j| same_type(&old.sets[j], n)) {
            Some(j) => {
                let old_set = Ruleset {
                    sets: vec![old.sets[j].clone()],
                    chains: Vec::new(),
                };
                let new_set = Ruleset {
                    sets: vec![n.clone()],
                    chains: Vec::new(),
                };
                deltas.extend(element_delta(&old_set, &new_set).unwrap_or_default());
            }
            None => added.push(set_with_elements(n, id, &table)?),
        }
    }
    for (set, chunks) in &added {
        batch.add(set, MsgType::Add);
        for chunk in chunks {
            batch.add_iter(chunk.elems_iter(), MsgType::Add);
        }
    }
    let delta_sets = delta_messages(&deltas, &table)?;
    for (removed, _) in &delta_sets {
        for chunk in removed {
            batch.add_iter(chunk.elems_iter(), MsgType::Del);
        }
    }
    for (_, added) in &delta_sets {
        for chunk in added {
            batch.add_iter(chunk.elems_iter(), MsgType::Add);
        }
    }

    add_chains_and_rules(&mut batch, new, &table)?;
    netfilter::send_batch(&batch.finalize())
}

/// Deletes then adds the elements of `deltas` in one batch.
fn apply_elements(deltas: &[SetDelta]) -> Result<(), NetfilterError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let table = Table::new(cstring(TABLE)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let sets = delta_messages(deltas, &table)?;
    for (removed, _) in &sets {
        for chunk in removed {
            batch.add_iter(chunk.elems_iter(), MsgType::Del);
        }
    }
    for (_, added) in &sets {
        for chunk in added {
            batch.add_iter(chunk.elems_iter(), MsgType::Add);
        }
    }
    netfilter::send_batch(&batch.finalize())
}

/// The element messages of `deltas`, per set: (removed, added), in chunks. Removed elements go
/// first in a batch: a map key whose value changed is in both.
#[allow(clippy::type_complexity)]
fn delta_messages<'a>(
    deltas: &[SetDelta],
    table: &'a Table,
) -> Result<Vec<(Vec<NftSet<'a, Ipv4Addr>>, Vec<NftSet<'a, Ipv4Addr>>)>, NetfilterError> {
    let mut sets = Vec::new();
    for (i, d) in deltas.iter().enumerate() {
        let def = Set {
            name: d.name.clone(),
            key: d.key,
            data: d.data,
            elements: Vec::new(),
        };
        // Deleting needs only the key.
        let keys: Vec<(IpAddr, Option<IpAddr>)> =
            d.removed.iter().map(|(k, _)| (*k, None)).collect();
        let id = i as u32 + 1;
        let removed = keys
            .chunks(ELEMENTS_PER_MESSAGE)
            .map(|chunk| build_set(&def, id, table, chunk))
            .collect::<Result<Vec<_>, _>>()?;
        let added = d
            .added
            .chunks(ELEMENTS_PER_MESSAGE)
            .map(|chunk| build_set(&def, id, table, chunk))
            .collect::<Result<Vec<_>, _>>()?;
        sets.push((removed, added));
    }
    Ok(sets)
}

/// Removes table `inet akanda` (when no config is in force). A missing table is fine.
pub fn delete_table() -> Result<(), NetfilterError> {
    let table = Table::new(cstring(TABLE)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    // Add then delete: succeeds whether or not the table existed.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    netfilter::send_batch(&batch.finalize())
}

/// Elements per NEWSETELEM message. libnftnl packs a set's elements into one nested
/// attribute, whose length field overflows past 64 KiB (about 1,800 map entries): the kernel
/// then refuses the batch. Sending each chunk as its own message keeps every one small.
const ELEMENTS_PER_MESSAGE: usize = 512;

fn family_consts(f: Family) -> (u32, u32) {
    // nftables data types: ipv4_addr = 7, ipv6_addr = 8; lengths in bytes.
    match f {
        Family::V4 => (7, 4),
        Family::V6 => (8, 16),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A named set, or a map when `def.data` is set (nftnl's `Set` has no map support, so the
/// map flag, data type and element data are set through libnftnl directly), holding
/// `elements` (a chunk of the set's elements, or none for the set's own message).
fn build_set<'a>(
    def: &Set,
    id: u32,
    table: &'a Table,
    elements: &[(IpAddr, Option<IpAddr>)],
) -> Result<NftSet<'a, Ipv4Addr>, NetfilterError> {
    let name = cstring(&def.name)?;
    // The key type parameter only chooses KEY_TYPE/KEY_LEN; IPv6 keys are fixed up below.
    let set: NftSet<'a, Ipv4Addr> = NftSet::new_named(&name, id, table, ProtoFamily::Inet);
    let data = def.data.map(|d| match d {
        MapValue::Addr(f) => family_consts(f),
        // nftables data type mark = 19, 4 bytes.
        MapValue::Mark => (19, 4),
    });
    ffi::set_types(&set, family_consts(def.key), data);
    if def.data == Some(MapValue::Mark) {
        ffi::set_host_endian_values(&set);
    }
    for (key, value) in elements {
        let value = value.map(|v| match (def.data, v) {
            // A mark is a host-order integer in the register `ct mark set` reads.
            (Some(MapValue::Mark), IpAddr::V4(v4)) => session_mark(v4).to_ne_bytes().to_vec(),
            _ => ip_bytes(v),
        });
        ffi::add_element(&set, &ip_bytes(*key), value.as_deref())
            .map_err(|e| NetfilterError::Build(e.to_string()))?;
    }
    Ok(set)
}

fn build_chain<'a>(def: &Chain, table: &'a Table) -> Result<NftChain<'a>, NetfilterError> {
    let mut chain = NftChain::new(cstring(&def.name)?, table);
    if let Some(b) = &def.base {
        let hook = match b.hook {
            Hook::Prerouting => NftHook::PreRouting,
            Hook::Input => NftHook::In,
            Hook::Forward => NftHook::Forward,
            Hook::Postrouting => NftHook::PostRouting,
        };
        chain.set_hook(hook, b.priority);
        chain.set_type(match b.kind {
            ChainKind::Filter => ChainType::Filter,
            ChainKind::Nat => ChainType::Nat,
        });
        chain.set_policy(if b.policy_drop {
            Policy::Drop
        } else {
            Policy::Accept
        });
    }
    Ok(chain)
}

/// `lookup` of register 1 in a map, writing the mapped value to register 1.
struct MapLookup {
    set: CString,
    set_id: u32,
}

impl Expression for MapLookup {
    fn to_expr(&self, _rule: &NftRule) -> NonNull<sys::nftnl_expr> {
        ffi::map_lookup(&self.set, self.set_id)
    }
}

/// `ct original|reply ip daddr` into register 1 (nftnl's `Conntrack` has no tuple keys).
struct CtIpv4Daddr {
    reply: bool,
}

impl Expression for CtIpv4Daddr {
    fn to_expr(&self, _rule: &NftRule) -> NonNull<sys::nftnl_expr> {
        ffi::ct_ipv4_daddr(self.reply)
    }
}

/// `fib saddr . iif oif present` into register 1 (nftnl has no `fib` expression).
struct FibSaddrIifOifPresent;

impl Expression for FibSaddrIifOifPresent {
    fn to_expr(&self, _rule: &NftRule) -> NonNull<sys::nftnl_expr> {
        ffi::fib_saddr_iif_oif_present()
    }
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

fn add_addr_match(rule: &mut NftRule, net: &IpNet, source: bool) {
    use nftnl::expr::{Ipv4HeaderField as F4, Ipv6HeaderField as F6, NetworkHeaderField as N};
    let field = match (net, source) {
        (IpNet::V4(_), true) => N::Ipv4(F4::Saddr),
        (IpNet::V4(_), false) => N::Ipv4(F4::Daddr),
        (IpNet::V6(_), true) => N::Ipv6(F6::Saddr),
        (IpNet::V6(_), false) => N::Ipv6(F6::Daddr),
    };
    rule.add_expr(&Payload::Network(field));
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() < 32 {
                rule.add_expr(&Bitwise::new(n.netmask(), Ipv4Addr::UNSPECIFIED));
            }
            rule.add_expr(&Cmp::new(CmpOp::Eq, n.network()));
        }
        IpNet::V6(n) => {
            if n.prefix_len() < 128 {
                rule.add_expr(&Bitwise::new(n.netmask(), Ipv6Addr::UNSPECIFIED));
            }
            rule.add_expr(&Cmp::new(CmpOp::Eq, n.network()));
        }
    }
}

fn add_port_match(rule: &mut NftRule, l4: L4, port: u16, source: bool) {
    use nftnl::expr::{TcpHeaderField as T, TransportHeaderField as X, UdpHeaderField as U};
    let field = match (l4, source) {
        (L4::Tcp, true) => X::Tcp(T::Sport),
        (L4::Tcp, false) => X::Tcp(T::Dport),
        (L4::Udp, true) => X::Udp(U::Sport),
        (L4::Udp, false) => X::Udp(U::Dport),
        // Validation only gives ports with tcp or udp.
        _ => return,
    };
    rule.add_expr(&Payload::Transport(field));
    rule.add_expr(&Cmp::new(CmpOp::Eq, port.to_be()));
}

fn build_rule<'a>(
    def: &Rule,
    chain: &'a NftChain<'a>,
    set_ids: &[(&str, u32)],
) -> Result<NftRule<'a>, NetfilterError> {
    let mut rule = NftRule::new(chain);
    for m in &def.matches {
        match m {
            Match::Iif(name) | Match::IifNot(name) => {
                rule.add_expr(&Meta::IifName);
                let op = if matches!(m, Match::Iif(_)) {
                    CmpOp::Eq
                } else {
                    CmpOp::Neq
                };
                rule.add_expr(&Cmp::new(op, InterfaceName::Exact(cstring(name)?)));
            }
            Match::Oif(name) | Match::OifNot(name) => {
                rule.add_expr(&Meta::OifName);
                let op = if matches!(m, Match::Oif(_)) {
                    CmpOp::Eq
                } else {
                    CmpOp::Neq
                };
                rule.add_expr(&Cmp::new(op, InterfaceName::Exact(cstring(name)?)));
            }
            Match::Proto(f) => {
                rule.add_expr(&Meta::NfProto);
                rule.add_expr(&Cmp::new(CmpOp::Eq, nfproto(*f)));
            }
            Match::L4(l4) => {
                rule.add_expr(&Meta::L4Proto);
                rule.add_expr(&Cmp::new(CmpOp::Eq, l4.number()));
            }
            Match::Saddr(net) => add_addr_match(&mut rule, net, true),
            Match::Daddr(net) => add_addr_match(&mut rule, net, false),
            Match::Sport(l4, p) => add_port_match(&mut rule, *l4, *p, true),
            Match::Dport(l4, p) => add_port_match(&mut rule, *l4, *p, false),
            Match::CtState(states) => {
                let mut bits = States::empty();
                for s in states {
                    bits |= match s {
                        CtState::New => States::NEW,
                        CtState::Invalid => States::INVALID,
                        CtState::Established => States::ESTABLISHED,
                        CtState::Related => States::RELATED,
                    };
                }
                rule.add_expr(&Conntrack::State);
                rule.add_expr(&Bitwise::new(bits.bits(), 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::CtDnat | Match::CtSnat => {
                let bit = if *m == Match::CtDnat {
                    ConntrackStatus::DST_NAT
                } else {
                    ConntrackStatus::SRC_NAT
                };
                rule.add_expr(&Conntrack::Status);
                rule.add_expr(&Bitwise::new(bit.bits(), 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::FibSaddrIifMissing => {
                // As nft compiles it: "present" into register 1, compared with 0.
                rule.add_expr(&FibSaddrIifOifPresent);
                rule.add_expr(&Cmp::new(CmpOp::Eq, 0u32));
            }
        }
    }
    if def.counter {
        rule.add_expr(&Counter);
    }
    let set_id = |name: &str| -> Result<(CString, u32), NetfilterError> {
        let id = set_ids
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| NetfilterError::Build(format!("rule refers to unknown map {name}")))?;
        Ok((cstring(name)?, id))
    };
    let nat = |t: NatType, port: Option<Register>| Nat {
        nat_type: t,
        family: ProtoFamily::Ipv4,
        ip_register: Register::Reg1,
        port_register: port,
    };
    use nftnl::expr::{Ipv4HeaderField as F4, NetworkHeaderField as N};
    match &def.verdict {
        Verdict::Accept => rule.add_expr(&expr::Verdict::Accept),
        Verdict::Drop => rule.add_expr(&expr::Verdict::Drop),
        Verdict::Continue => {}
        Verdict::Jump(c) => rule.add_expr(&expr::Verdict::Jump { chain: cstring(c)? }),
        Verdict::SnatTo(ip) => {
            let IpAddr::V4(v4) = ip else {
                return Err(NetfilterError::Build(format!("SNAT to non-IPv4 {ip}")));
            };
            rule.add_expr(&Immediate::new(*v4, Register::Reg1));
            rule.add_expr(&nat(NatType::SNat, None));
        }
        Verdict::DnatTo(ip, port) => {
            let IpAddr::V4(v4) = ip else {
                return Err(NetfilterError::Build(format!("DNAT to non-IPv4 {ip}")));
            };
            rule.add_expr(&Immediate::new(*v4, Register::Reg1));
            rule.add_expr(&Immediate::new(port.to_be(), Register::Reg2));
            rule.add_expr(&nat(NatType::DNat, Some(Register::Reg2)));
        }
        Verdict::DnatMap(name) => {
            let (set, set_id) = set_id(name)?;
            rule.add_expr(&Payload::Network(N::Ipv4(F4::Daddr)));
            rule.add_expr(&MapLookup { set, set_id });
            rule.add_expr(&nat(NatType::DNat, None));
        }
        Verdict::SnatMap(name) => {
            let (set, set_id) = set_id(name)?;
            rule.add_expr(&Payload::Network(N::Ipv4(F4::Saddr)));
            rule.add_expr(&MapLookup { set, set_id });
            rule.add_expr(&nat(NatType::SNat, None));
        }
        Verdict::Masquerade => rule.add_expr(&Masquerade),
        Verdict::MarkSession { reply, map } => {
            let (set, set_id) = set_id(map)?;
            rule.add_expr(&CtIpv4Daddr { reply: *reply });
            rule.add_expr(&MapLookup { set, set_id });
            rule.add_expr(&Conntrack::Mark { set: true });
        }
    }
    if let Some(c) = &def.comment {
        rule.set_comment(cstring(c)?)
            .map_err(|e| NetfilterError::Build(format!("comment {c:?}: {e}")))?;
    }
    Ok(rule)
}
