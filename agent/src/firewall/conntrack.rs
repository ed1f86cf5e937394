//! Ends the sessions of floating IPs that were removed or re-pointed (Neutron security note
//! OSSN-0020: a removed NAT rule does not end a connection conntrack already tracks).
//!
//! Speaks ctnetlink directly (no `conntrack` subprocess): dump the IPv4 conntrack table, and
//! delete every entry whose original or reply destination is one of the addresses, by
//! sending back the entry's own original tuple.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;

use super::nfnl::{self, Socket};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, thiserror::Error)]
#[error("conntrack: {0}")]
pub struct ConntrackError(#[from] io::Error);

fn message(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    nfnl::message(
        NFNL_SUBSYS_CTNETLINK,
        msg_type,
        flags,
        seq,
        libc::AF_INET as u8,
        payload,
    )
}

/// Netlink attributes of `data`: (type, whole attribute bytes, payload).
fn attributes(data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            break;
        }
        out.push((ty, &rest[..len], &rest[4..len]));
        let aligned = (len + 3) & !3;
        rest = &rest[aligned.min(rest.len())..];
    }
    out
}

fn tuple_dst(tuple: &[u8]) -> Option<Ipv4Addr> {
    let (_, _, ip) = attributes(tuple)
        .into_iter()
        .find(|(t, _, _)| *t == CTA_TUPLE_IP)?;
    let (_, _, dst) = attributes(ip)
        .into_iter()
        .find(|(t, _, _)| *t == CTA_IP_V4_DST)?;
    let b: [u8; 4] = dst.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Walks the netlink messages in `buf`; calls `f` with each message's type and payload
/// after the nfgenmsg header. Returns Ok(true) when the dump or acknowledgement is complete.
fn for_each_message(buf: &[u8], mut f: impl FnMut(u16, &[u8])) -> io::Result<bool> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            break;
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(rest[16..20].try_into().unwrap());
                // ENOENT: the entry ended on its own meanwhile.
                if errno != 0 && errno != -libc::ENOENT {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                return Ok(true);
            }
            _ => f(ty & 0xff, &rest[20.min(len)..len]),
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    Ok(false)
}

/// Deletes every IPv4 conntrack entry whose original or reply destination is in `addrs`
/// (inbound DNAT sessions, and outbound sessions SNATed to the address). Returns how many.
pub fn delete_sessions_of(addrs: &BTreeSet<Ipv4Addr>) -> Result<usize, ConntrackError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let socket = Socket::open()?;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    socket.send(&message(IPCTNL_MSG_CT_GET, flags, 1, &[]))?;
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut buf)?;
        let done = for_each_message(&buf[..n], |ty, payload| {
            if ty != IPCTNL_MSG_CT_NEW {
                return;
            }
            let attrs = attributes(payload);
            let dst_of = |want| {
                attrs
                    .iter()
                    .find(|(t, _, _)| *t == want)
                    .and_then(|(_, _, p)| tuple_dst(p))
            };
            let hit = [dst_of(CTA_TUPLE_ORIG), dst_of(CTA_TUPLE_REPLY)]
                .iter()
                .flatten()
                .any(|d| addrs.contains(d));
            if hit {
                // Delete by the entry's own original tuple (and zone).
                let key: Vec<u8> = attrs
                    .iter()
                    .filter(|(t, _, _)| *t == CTA_TUPLE_ORIG || *t == CTA_ZONE)
                    .flat_map(|(_, whole, _)| {
                        let mut v = whole.to_vec();
                        v.resize((v.len() + 3) & !3, 0);
                        v
                    })
                    .collect();
                doomed.push(key);
            }
        })?;
        if done || n == 0 {
            break;
        }
    }
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    for (i, key) in doomed.iter().enumerate() {
        socket.send(&message(IPCTNL_MSG_CT_DELETE, flags, 2 + i as u32, key))?;
        loop {
            let n = socket.recv(&mut buf)?;
            if for_each_message(&buf[..n], |_, _| {})? || n == 0 {
                break;
            }
        }
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    #[test]
    fn reads_the_destination_of_a_tuple() {
        let ip = [
            attr(1, &[10, 0, 0, 1]),
            attr(CTA_IP_V4_DST, &[172, 16, 77, 50]),
        ]
        .concat();
        let tuple = [attr(CTA_TUPLE_IP | 0x8000, &ip), attr(2 | 0x8000, &[0; 8])].concat();
        assert_eq!(tuple_dst(&tuple), Some(Ipv4Addr::new(172, 16, 77, 50)));
        assert_eq!(tuple_dst(&[]), None);
    }

    #[test]
    fn message_header_is_well_formed() {
        let m = message(IPCTNL_MSG_CT_DELETE, 5, 9, &attr(1, &[1, 2, 3, 4]));
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (1 << 8) | 2);
        assert_eq!(m[16], libc::AF_INET as u8);
    }
}
