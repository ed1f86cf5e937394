//! Gratuitous ARP and unsolicited neighbour advertisements, sent from an `AF_PACKET` socket.
//!
//! For each IPv4 address two broadcast frames are sent: an ARP request announcement (RFC 5227
//! §2.3: sender and target IP both the address, target MAC zero) and an ARP reply with sender
//! and target both the NIC's MAC and the address (what Astara sent; some switches and routers
//! only act on replies). For each IPv6 address one unsolicited neighbour advertisement goes to
//! all-nodes (`ff02::1`) with the Override flag and the target link-layer address option
//! (RFC 4861 §7.2.6). Frames are built here ([`arp_frame`], [`na_frame`]: pure), so the address
//! does not need to have finished duplicate address detection.
//!
//! Receivers update an entry they already have; Linux creates a new entry from them only with
//! `arp_accept` / `accept_untracked_na` set.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
/// `33:33:00:00:00:01`, the Ethernet address of ff02::1.
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

pub(crate) const ARP_REQUEST: u16 = 1;
pub(crate) const ARP_REPLY: u16 = 2;

/// An Ethernet broadcast ARP announcement of `ip` at `mac`. `op` is [`ARP_REQUEST`] (target
/// MAC zero) or [`ARP_REPLY`] (target MAC = `mac`).
pub(crate) fn arp_frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    if op == ARP_REPLY {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the pseudo-header and `icmp`.
pub(crate) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_be_bytes([chunk[0], 0])
            };
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying an unsolicited neighbour advertisement of `ip` at `mac` to
/// all-nodes, from `ip`, hop limit 255, flags Router (if `router`) and Override.
pub(crate) fn na_frame(mac: [u8; 6], ip: Ipv6Addr, router: bool) -> Vec<u8> {
    // ICMPv6: type 136, code 0, checksum, flags+reserved, target, option 2 (TLLA, 8 bytes).
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]);
    let flags: u8 = if router { 0x80 | 0x20 } else { 0x20 };
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.push(58); // next header: ICMPv6
    f.push(255); // hop limit (RFC 4861 requires 255)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The frames that announce `addrs` from `mac`.
pub(crate) fn frames(mac: [u8; 6], addrs: &[IpAddr]) -> Vec<(Vec<u8>, [u8; 6])> {
    let mut out = Vec::new();
    for addr in addrs {
        match addr {
            IpAddr::V4(v4) => {
                out.push((arp_frame(mac, *v4, ARP_REQUEST).to_vec(), BROADCAST));
                out.push((arp_frame(mac, *v4, ARP_REPLY).to_vec(), BROADCAST));
            }
            IpAddr::V6(v6) => out.push((na_frame(mac, *v6, true), ALL_NODES_MAC)),
        }
    }
    out
}

fn ifindex_and_mac(fd: &OwnedFd, ifname: &str) -> io::Result<(i32, [u8; 6])> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: valid fd and a properly initialised ifreq; the kernel fills ifru_ifindex.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    // SAFETY: as above; the kernel fills ifru_hwaddr.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "not an Ethernet interface",
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok((index, mac))
}

/// An `AF_PACKET` socket that sends announcements, kept for the agent's life. Closing a
/// packet socket waits for an RCU grace period (`synchronize_net` in `packet_release`): 10 to
/// 15 ms, which a socket opened per announcement added to every push that adds a floating IP.
/// Protocol 0: it sends only, and receives nothing.
pub(crate) struct Announcer {
    fd: OwnedFd,
}

impl Announcer {
    /// A socket in the calling thread's network namespace. Needs CAP_NET_RAW.
    pub(crate) fn open() -> io::Result<Announcer> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor that we own from here on.
        Ok(Announcer {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Sends the announcements for `addrs` out of `ifname` (looked up now: a NIC may have
    /// been renamed or replaced since the last call).
    pub(crate) fn send(&self, ifname: &str, addrs: &[IpAddr]) -> io::Result<()> {
        let fd = &self.fd;
        let (ifindex, mac) = ifindex_and_mac(fd, ifname)?;
        for (frame, dst) in frames(mac, addrs) {
            let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            // SAFETY: sockaddr_ll is plain old data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ethertype.to_be();
            sll.sll_ifindex = ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&dst);
            // SAFETY: buffer and address are valid for the given lengths.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
