//! Ends the sessions of floating IPs that were removed or re-pointed (Neutron security note
//! OSSN-0020: a removed NAT rule does not end a connection conntrack already tracks).
//!
//! ctnetlink through `netlink-packet-netfilter` (no `conntrack` subprocess), two ways:
//! - [`end_sessions_marked`]: the ruleset marks every floating-IP session with its floating
//!   IP's mark (`ruleset::session_mark`), and one flush by mark per address ends them. The
//!   kernel skips the table's empty buckets (and the whole walk when the namespace tracks
//!   nothing): about 0.1 ms on a host with 262,144 buckets.
//! - [`delete_sessions_of`]: dump the IPv4 conntrack table and delete every entry whose
//!   original or reply destination is one of the addresses, by sending back the entry's own
//!   original tuple (and zone). A dump locks every bucket, empty or not: about 10 ms on the
//!   same host, whatever the number of addresses, so it serves many addresses at once.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use tracing::{debug, warn};

use super::{exchange, with_socket, NetfilterError, NfnlSocket, Operation, Outcome};

/// `CTA_ZONE`: an entry is identified by its original tuple within its zone.
const CTA_ZONE: u16 = 18;
/// `CTA_MARK` and `CTA_MARK_MASK`: a flush with both deletes only the entries whose mark,
/// masked, equals the mark (Linux 4.x and later; a kernel without `CONFIG_NF_CONNTRACK_MARK`
/// refuses the message rather than flushing everything).
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;

fn ipv4(inner: ConntrackMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        inner,
    )
}

/// A flush of the IPv4 entries marked `mark`: a delete without a tuple, with a mark and a
/// full mask. Version 1 of the header makes the kernel filter on the family too.
fn flush_marked(mark: u32) -> NetfilterMessage {
    use netlink_packet_core::DefaultNla;
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 1, 0),
        ConntrackMessage::Delete(vec![
            ConntrackAttribute::Other(DefaultNla::new(CTA_MARK, mark.to_be_bytes().to_vec())),
            ConntrackAttribute::Other(DefaultNla::new(CTA_MARK_MASK, vec![0xff; 4])),
        ]),
    )
}

/// Up to this many floating IPs, their sessions end by one flush by mark each (about 0.1 ms
/// each here); beyond, by one dump of the whole table (about 10 ms, whatever the number).
const FLUSHES_BEFORE_A_DUMP: usize = 32;

/// Ends the sessions of the floating IPs `addrs` (removed or re-pointed), by mark or, for
/// many at once, by one dump (see the module's documentation).
pub(crate) fn end_sessions_of(addrs: &BTreeSet<Ipv4Addr>) -> Result<(), NetfilterError> {
    if addrs.len() > FLUSHES_BEFORE_A_DUMP {
        return delete_sessions_of(addrs).map(|_| ());
    }
    let marks: Vec<u32> = addrs
        .iter()
        .map(|a| crate::firewall::ruleset::session_mark(*a))
        .collect();
    end_sessions_marked(&marks)
}

/// Ends every IPv4 session carrying one of `marks`: one kernel-side flush per mark, each
/// acknowledged before the next. Mark 0 (every unmarked session) is never flushed.
fn end_sessions_marked(marks: &[u32]) -> Result<(), NetfilterError> {
    if marks.is_empty() {
        return Ok(());
    }
    let op = Operation::ConntrackFlush;
    with_socket(op, |socket| {
        for &mark in marks.iter().filter(|&&m| m != 0) {
            match exchange(socket, op, NLM_F_ACK, flush_marked(mark), |_| {})? {
                Outcome::Complete => {}
                Outcome::Refused(errno) => return Err(NetfilterError::Refused { op, errno }),
            }
        }
        Ok(())
    })?;
    debug!(marks = marks.len(), "floating-IP sessions flushed by mark");
    Ok(())
}

/// The IPv4 destination of a tuple (`CTA_TUPLE_IP` / `CTA_IP_V4_DST`).
fn tuple_dst(tuple: &[Tuple]) -> Option<Ipv4Addr> {
    tuple.iter().find_map(|t| match t {
        Tuple::Ip(ip) => ip.iter().find_map(|a| match a {
            IPTuple::DestinationAddress(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        }),
        _ => None,
    })
}

/// What identifies `entry` for a delete when its original or reply destination is in
/// `addrs`: its original tuple and zone. `None` for entries to keep.
fn doomed_key(
    entry: &[ConntrackAttribute],
    addrs: &BTreeSet<Ipv4Addr>,
) -> Option<Vec<ConntrackAttribute>> {
    let hit = entry.iter().any(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) | ConntrackAttribute::CtaTupleReply(t) => {
            tuple_dst(t).is_some_and(|d| addrs.contains(&d))
        }
        _ => false,
    });
    if !hit {
        return None;
    }
    Some(
        entry
            .iter()
            .filter(|a| match a {
                ConntrackAttribute::CtaTupleOrig(_) => true,
                ConntrackAttribute::Other(nla) => {
                    use netlink_packet_core::Nla;
                    nla.kind() & netlink_packet_core::NLA_TYPE_MASK == CTA_ZONE
                }
                _ => false,
            })
            .cloned()
            .collect(),
    )
}

/// One entry of the dump, decoded; `None` (with a warning) for an entry that does not decode:
/// it is kept, and the others are still looked at.
fn entry(message: &[u8]) -> Option<Vec<ConntrackAttribute>> {
    match NetlinkMessage::<NetfilterMessage>::deserialize(message) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(m),
            ..
        }) => match m.inner {
            NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) => Some(attrs),
            _ => None,
        },
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "conntrack dump: an entry did not decode; it is kept");
            None
        }
    }
}

/// Deletes every IPv4 conntrack entry whose original or reply destination is in `addrs`
/// (inbound DNAT sessions, and outbound sessions SNATed to the address). Returns how many.
pub fn delete_sessions_of(addrs: &BTreeSet<Ipv4Addr>) -> Result<usize, NetfilterError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    with_socket(Operation::ConntrackDump, |socket| {
        delete_sessions_on(socket, addrs)
    })
}

fn delete_sessions_on(
    socket: &mut NfnlSocket,
    addrs: &BTreeSet<Ipv4Addr>,
) -> Result<usize, NetfilterError> {
    let op = Operation::ConntrackDump;
    let mut doomed: Vec<Vec<ConntrackAttribute>> = Vec::new();
    let dump = ipv4(ConntrackMessage::Get(vec![]));
    let outcome = exchange(socket, op, NLM_F_DUMP, dump, |message| {
        if let Some(key) = entry(message).and_then(|attrs| doomed_key(&attrs, addrs)) {
            doomed.push(key);
        }
    })?;
    match outcome {
        // ENOENT ends the dump as well: nothing (more) to look at.
        Outcome::Complete => {}
        Outcome::Refused(errno) if errno == libc::ENOENT => {}
        Outcome::Refused(errno) => return Err(NetfilterError::Refused { op, errno }),
    }
    let op = Operation::ConntrackDelete;
    for key in &doomed {
        let delete = ipv4(ConntrackMessage::Delete(key.clone()));
        match exchange(socket, op, NLM_F_ACK, delete, |_| {})? {
            Outcome::Complete => {}
            // The entry ended on its own meanwhile.
            Outcome::Refused(errno) if errno == libc::ENOENT => {}
            Outcome::Refused(errno) => return Err(NetfilterError::Refused { op, errno }),
        }
    }
    debug!(
        deleted = doomed.len(),
        "conntrack entries of moved floating IPs deleted"
    );
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DefaultNla, NetlinkHeader};
    use netlink_packet_netfilter::conntrack::{ProtoTuple, Protocol};

    fn tuple(src: [u8; 4], dst: [u8; 4]) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(IpAddr::from(src)),
                IPTuple::DestinationAddress(IpAddr::from(dst)),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(40000),
                ProtoTuple::DestinationPort(9999),
            ]),
        ]
    }

    /// An entry as the kernel dumps it, framed as a netlink message.
    fn dumped(attrs: Vec<ConntrackAttribute>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = 1;
        let mut m = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(ipv4(ConntrackMessage::New(attrs))),
        );
        m.finalize();
        let mut bytes = vec![0; m.buffer_len()];
        m.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn message_header_is_well_formed() {
        let delete = ipv4(ConntrackMessage::Delete(vec![
            ConntrackAttribute::CtaTupleOrig(tuple([10, 0, 0, 1], [10, 0, 0, 2])),
        ]));
        let m = super::super::frame(NLM_F_ACK, 9, delete);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (1 << 8) | 2);
        assert_eq!(m[16], libc::AF_INET as u8);
    }

    #[test]
    fn a_flush_by_mark_carries_the_mark_and_a_full_mask_and_no_tuple() {
        let m = super::super::frame(NLM_F_ACK, 3, flush_marked(0xac10_4d32));
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (1 << 8) | 2, "a delete");
        assert_eq!((m[16], m[17]), (libc::AF_INET as u8, 1), "IPv4, version 1");
        // Two attributes of 8 bytes each after the 20-byte header: the mark, big-endian,
        // then the mask.
        assert_eq!(m.len(), 36);
        assert_eq!(u16::from_ne_bytes([m[22], m[23]]), CTA_MARK);
        assert_eq!(m[24..28], [0xac, 0x10, 0x4d, 0x32]);
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), CTA_MARK_MASK);
        assert_eq!(m[32..36], [0xff; 4]);
    }

    #[test]
    fn reads_the_destination_of_a_tuple() {
        assert_eq!(
            tuple_dst(&tuple([10, 0, 0, 1], [172, 16, 77, 50])),
            Some(Ipv4Addr::new(172, 16, 77, 50))
        );
        assert_eq!(tuple_dst(&[]), None);
    }

    #[test]
    fn an_entry_to_a_moved_address_is_deleted_by_its_original_tuple_and_zone() {
        let zone = ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, vec![0, 7]));
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple([203, 0, 113, 9], [172, 16, 77, 50])),
            ConntrackAttribute::CtaTupleReply(tuple([192, 168, 0, 2], [203, 0, 113, 9])),
            ConntrackAttribute::CtaTimeout(30),
            zone.clone(),
        ];
        let decoded = entry(&dumped(attrs.clone())).expect("entry decodes");
        let moved = BTreeSet::from([Ipv4Addr::new(172, 16, 77, 50)]);
        let key = doomed_key(&decoded, &moved).expect("doomed");
        assert_eq!(key, vec![attrs[0].clone(), zone]);
        // Outbound sessions SNATed to the address match on the reply side.
        let snat = BTreeSet::from([Ipv4Addr::new(203, 0, 113, 9)]);
        assert!(doomed_key(&decoded, &snat).is_some());
        assert!(doomed_key(&decoded, &BTreeSet::from([Ipv4Addr::new(10, 9, 9, 9)])).is_none());
    }

    #[test]
    fn a_malformed_entry_is_kept_not_a_panic() {
        let whole = dumped(vec![ConntrackAttribute::CtaTupleOrig(tuple(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        ))]);
        for cut in 0..whole.len() {
            let mut bytes = whole[..cut].to_vec();
            if bytes.len() >= 4 {
                // Keep the header's length consistent with the cut so the attributes are
                // what is truncated.
                bytes[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let _ = entry(&bytes);
        }
        // An attribute whose length overruns its message.
        let mut bad = whole.clone();
        bad[20..22].copy_from_slice(&0xfff0u16.to_ne_bytes());
        assert_eq!(entry(&bad), None);
    }
}
