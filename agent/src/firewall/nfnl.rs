//! A raw NETLINK_NETFILTER socket and message framing, for the two small requests nftnl does
//! not cover (conntrack, "does our table exist").

use std::io;

const NETLINK_NETFILTER: i32 = 12;

/// An open NETLINK_NETFILTER socket, closed on drop.
pub struct Socket(i32);

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sends `msg` to the kernel (a zeroed sockaddr_nl addresses it).
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into `buf` within its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closes the fd this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// nlmsghdr + nfgenmsg + payload.
pub fn message(
    subsys: u16,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    payload: &[u8],
) -> Vec<u8> {
    let len = 16 + 4 + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((subsys << 8) | msg_type).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id.
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

/// The errno of the first NLMSG_ERROR in `buf` (0 for an acknowledgement), if any.
pub fn first_error(buf: &[u8]) -> Option<i32> {
    let mut rest = buf;
    while rest.len() >= 20 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if ty == 2 {
            return Some(-i32::from_ne_bytes(rest[16..20].try_into().ok()?));
        }
        if len < 16 || len > rest.len() {
            return None;
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    None
}

/// Whether nf_tables has table `name` in the inet family (one GETTABLE request, no dump).
pub fn inet_table_exists(name: &str) -> io::Result<bool> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    let mut attr = Vec::new();
    let value = [name.as_bytes(), &[0]].concat();
    attr.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    attr.extend_from_slice(&value);
    attr.resize((attr.len() + 3) & !3, 0);
    let socket = Socket::open()?;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    socket.send(&message(
        NFNL_SUBSYS_NFTABLES,
        NFT_MSG_GETTABLE,
        flags,
        1,
        libc::NFPROTO_INET as u8,
        &attr,
    ))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.recv(&mut buf)?;
        match first_error(&buf[..n]) {
            Some(0) => return Ok(true),
            Some(e) if e == libc::ENOENT => return Ok(false),
            Some(e) => return Err(io::Error::from_raw_os_error(e)),
            // The table itself; its acknowledgement follows.
            None if n > 0 => continue,
            None => return Ok(false),
        }
    }
}
