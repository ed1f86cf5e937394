//! The agent's only contact with nfnetlink (`NETLINK_NETFILTER`), as `netlink.rs` is for
//! rtnetlink: the socket, sending a batch, reading acknowledgements, the table probe, the
//! conntrack dump and delete, and the read-back of the live table.
//!
//! - Messages are framed and decoded by the rust-netlink crates (`netlink-sys` for the
//!   socket, `netlink-packet-core` for headers and acknowledgements, `netlink-packet-netfilter`
//!   for nf_tables and ctnetlink messages), with checked bounds: nothing the kernel sends is
//!   unwrapped. A framing error is [`NetfilterError::Malformed`].
//! - A kernel refusal is [`NetfilterError::Refused`], carrying its errno.
//! - nftnl (libnftnl) still builds the rule expressions of a batch (`batch.rs`); this module
//!   sends the finished batch.
//! - Every `unsafe` block of the firewall lives in [`ffi`]: the few libnftnl calls nftnl's
//!   safe API lacks (maps), and libnftables for the read-back. The rest of `firewall/` denies
//!   `unsafe_code`.

mod conntrack;
pub(crate) mod ffi;

use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{NfTablesMessage, TableAttribute, TableMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use tracing::debug;

pub use conntrack::delete_sessions_of;
pub(crate) use conntrack::end_sessions_of;

/// What was asked of the kernel, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An nf_tables batch (replace or delete table `inet akanda`).
    Ruleset,
    /// GETTABLE: does our table exist.
    TableProbe,
    /// The IPv4 conntrack dump.
    ConntrackDump,
    /// Deleting one conntrack entry.
    ConntrackDelete,
    /// Deleting the conntrack entries of one mark.
    ConntrackFlush,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Ruleset => "the nf_tables ruleset",
            Operation::TableProbe => "the nf_tables table probe",
            Operation::ConntrackDump => "the conntrack dump",
            Operation::ConntrackDelete => "a conntrack delete",
            Operation::ConntrackFlush => "a conntrack flush by mark",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The kernel answered with an error; `errno` is positive. A refused batch changed
    /// nothing.
    #[error("the kernel refused {op}: {} (errno {errno})", errno_text(*errno))]
    Refused { op: Operation, errno: i32 },
    /// The socket itself failed (open, send, receive).
    #[error("{op}: nfnetlink socket: {source}")]
    Socket {
        op: Operation,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("{op}: malformed answer from the kernel: {detail}")]
    Malformed { op: Operation, detail: String },
    /// The ruleset could not be turned into a batch (before anything was sent).
    #[error("building the nf_tables batch: {0}")]
    Build(String),
    /// libnftables could not list the table.
    #[error("listing the ruleset: {0}")]
    Listing(String),
}

impl NetfilterError {
    /// The positive errno when the kernel refused the request.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NetfilterError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    fn socket(op: Operation) -> impl FnOnce(io::Error) -> NetfilterError {
        move |source| NetfilterError::Socket { op, source }
    }

    fn malformed(op: Operation, detail: impl fmt::Display) -> NetfilterError {
        NetfilterError::Malformed {
            op,
            detail: detail.to_string(),
        }
    }
}

/// "Invalid argument" for 22: the OS text without " (os error 22)".
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(bare) => bare.to_string(),
        None => text,
    }
}

/// How a request ended.
enum Outcome {
    /// An acknowledgement (`NLMSG_ERROR` with code 0) or the end of a dump (`NLMSG_DONE`).
    Complete,
    /// An `NLMSG_ERROR` with this positive errno.
    Refused(i32),
}

/// Receive buffer: the largest message nf_tables sends (64 KiB plus a page, as libnftnl sizes
/// it), which is also more than a conntrack dump datagram.
const RECV_BUFFER: usize = (1 << 16) + 4096;

/// An open `NETLINK_NETFILTER` socket; closed on drop, on another thread. The kernel binds it
/// to a port on the first send, and an unconnected netlink socket sends to the kernel.
pub(crate) struct NfnlSocket {
    /// `None` only once dropped.
    socket: Option<Socket>,
    seq: u32,
    buf: Vec<u8>,
}

impl Drop for NfnlSocket {
    /// Closing an nfnetlink socket makes nf_tables wait for its pending destroy work
    /// (`nft_rcv_nl_event`), which, after a batch that deleted set elements, waits for an RCU
    /// grace period: 10 to 15 ms the apply need not spend. One closer thread takes them. (It
    /// waits with nf_tables' commit mutex held, so a batch sent meanwhile waits too: the agent
    /// keeps one socket instead, [`keep_one_socket`].)
    fn drop(&mut self) {
        use std::sync::{mpsc, Mutex, OnceLock};
        static CLOSER: OnceLock<Mutex<mpsc::Sender<Socket>>> = OnceLock::new();
        let Some(socket) = self.socket.take() else {
            return;
        };
        let closer = CLOSER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Socket>();
            let spawned = std::thread::Builder::new()
                .name("nfnl-closer".into())
                .spawn(move || rx.into_iter().for_each(drop));
            if let Err(e) = spawned {
                debug!(error = %e, "no closer thread: nfnetlink sockets close inline");
            }
            Mutex::new(tx)
        });
        let sent = closer.lock().map(|tx| tx.send(socket));
        // Without the thread, the socket came back in the error and closes here.
        drop(sent);
    }
}

/// Whether [`with_socket`] keeps one socket for the process (see [`keep_one_socket`]).
static KEEP_ONE_SOCKET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The socket kept, once opened; dropped after any error (unread answers may be left in it).
static KEPT_SOCKET: std::sync::Mutex<Option<NfnlSocket>> = std::sync::Mutex::new(None);

/// Makes every nfnetlink exchange of this process (batches, the table probe, conntrack) go
/// through one socket, opened at first use in the calling thread's network namespace and kept.
/// Closing an nfnetlink socket takes nf_tables' commit mutex and waits, with it held, for the
/// destroy work of the last batch (`nft_rcv_nl_event`), which waits for an RCU grace period
/// after a batch that freed objects: a batch sent meanwhile (the next push's) waited 7 to 15
/// ms. For a process that lives in one network namespace: the agent calls it at start. Tests
/// that work in many namespaces from one process leave it off: each exchange then opens and
/// closes its own socket.
pub fn keep_one_socket() {
    KEEP_ONE_SOCKET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with the kept socket (see [`keep_one_socket`]) or a socket of its own.
pub(crate) fn with_socket<T>(
    op: Operation,
    f: impl FnOnce(&mut NfnlSocket) -> Result<T, NetfilterError>,
) -> Result<T, NetfilterError> {
    if !KEEP_ONE_SOCKET.load(std::sync::atomic::Ordering::Relaxed) {
        let mut socket = NfnlSocket::open().map_err(NetfilterError::socket(op))?;
        return f(&mut socket);
    }
    let mut kept = KEPT_SOCKET.lock().unwrap_or_else(|e| e.into_inner());
    let socket = match kept.as_mut() {
        Some(socket) => socket,
        None => kept.insert(NfnlSocket::open().map_err(NetfilterError::socket(op))?),
    };
    let result = f(socket);
    if result.is_err() {
        *kept = None;
    }
    result
}

impl NfnlSocket {
    pub(crate) fn open() -> io::Result<NfnlSocket> {
        Ok(NfnlSocket {
            socket: Some(Socket::new(NETLINK_NETFILTER)?),
            seq: 0,
            // Filled through its spare capacity: never zeroed, only the bytes received are
            // touched.
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    fn sock(&self) -> &Socket {
        self.socket
            .as_ref()
            .expect("the socket is open until dropped")
    }

    /// Raises the send and receive buffers to `bytes`, with the FORCE options (need
    /// CAP_NET_ADMIN, which the agent has) first and the plain ones as the fallback. Best
    /// effort: a batch that still does not fit is refused by the kernel with an errno.
    fn grow_buffers(&self, send: usize, recv: usize) {
        use nix::sys::socket::{setsockopt, sockopt};
        let fd = self.sock().as_fd();
        let clamp = |n: usize| n.min(i32::MAX as usize / 2);
        if setsockopt(&fd, sockopt::SndBufForce, &clamp(send)).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &clamp(send));
        }
        if setsockopt(&fd, sockopt::RcvBufForce, &clamp(recv)).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &clamp(recv));
        }
    }

    /// Sends `message` as one request with `flags` (plus NLM_F_REQUEST); returns its
    /// sequence number.
    fn request(&mut self, flags: u16, message: NetfilterMessage) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = frame(flags, self.seq, message);
        let sent = self.sock().send(&bytes, 0)?;
        if sent != bytes.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(self.seq)
    }

    /// Sends every page of `pages` in a single sendmsg: the kernel processes an nfnetlink
    /// batch only when BEGIN through END arrive in one message.
    fn send_pages(&self, pages: &[&[u8]]) -> io::Result<()> {
        let iov: Vec<IoSlice<'_>> = pages.iter().map(|p| IoSlice::new(p)).collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let sent = nix::sys::socket::sendmsg::<()>(
            self.sock().as_raw_fd(),
            &iov,
            &[],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        if sent != total {
            return Err(io::Error::other(format!("sent {sent} of {total} bytes")));
        }
        Ok(())
    }

    /// Reads datagrams and hands each decoded message to `each`, until it returns
    /// `Some(outcome)`. A datagram that cannot be framed is `Malformed`.
    fn read_until<T>(
        &mut self,
        op: Operation,
        mut each: impl FnMut(&[u8], NetlinkHeader) -> Result<Option<T>, NetfilterError>,
    ) -> Result<T, NetfilterError> {
        loop {
            self.buf.clear();
            let n = self
                .socket
                .as_ref()
                .expect("the socket is open until dropped")
                .recv(&mut self.buf, 0)
                .map_err(NetfilterError::socket(op))?;
            if n == 0 {
                return Err(NetfilterError::malformed(op, "the socket closed"));
            }
            let datagram = self.buf.get(..n).ok_or_else(|| {
                NetfilterError::malformed(op, format!("a message of {n} bytes was truncated"))
            })?;
            for message in split(datagram).map_err(|e| NetfilterError::malformed(op, e))? {
                let header = header_of(message).map_err(|e| NetfilterError::malformed(op, e))?;
                if let Some(done) = each(message, header)? {
                    return Ok(done);
                }
            }
        }
    }
}

/// nlmsghdr (with NLM_F_REQUEST | `flags`) + nfgenmsg + attributes.
fn frame(flags: u16, seq: u32, message: NetfilterMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// The netlink messages of one datagram, each checked to lie within it.
fn split(datagram: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest)
            .map_err(|e| e.to_string())?
            .length() as usize;
        // new_checked guarantees NETLINK_HEADER_LEN <= len <= rest.len().
        let (message, tail) = rest.split_at(len);
        out.push(message);
        // Messages are 4-byte aligned; the last one may end the datagram unpadded.
        let pad = (len.next_multiple_of(4) - len).min(tail.len());
        rest = &tail[pad..];
    }
    Ok(out)
}

fn header_of(message: &[u8]) -> Result<NetlinkHeader, String> {
    let buffer = NetlinkBuffer::new_checked(message).map_err(|e| e.to_string())?;
    let mut header = NetlinkHeader::default();
    header.length = buffer.length();
    header.message_type = buffer.message_type();
    header.flags = buffer.flags();
    header.sequence_number = buffer.sequence_number();
    header.port_number = buffer.port_number();
    Ok(header)
}

/// `Some` when `message` ends a request: an acknowledgement, an error or the end of a
/// dump. `None` for any other message (data).
fn outcome(op: Operation, message: &[u8]) -> Result<Option<Outcome>, NetfilterError> {
    use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR};
    let header = header_of(message).map_err(|e| NetfilterError::malformed(op, e))?;
    if header.message_type != NLMSG_ERROR && header.message_type != NLMSG_DONE {
        return Ok(None);
    }
    let decoded = NetlinkMessage::<NetfilterMessage>::deserialize(message)
        .map_err(|e| NetfilterError::malformed(op, e))?;
    Ok(match decoded.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Some(Outcome::Complete),
            Some(code) => Some(Outcome::Refused(code.get().saturating_abs())),
        },
        _ => Some(Outcome::Complete),
    })
}

/// Sends a finished nf_tables batch and reads one acknowledgement per message of it. The
/// first error the kernel reports is the result: the kernel then applied none of it.
pub(crate) fn send_batch(batch: &nftnl::FinalizedBatch) -> Result<(), NetfilterError> {
    with_socket(Operation::Ruleset, |socket| send_batch_on(socket, batch))
}

fn send_batch_on(
    socket: &mut NfnlSocket,
    batch: &nftnl::FinalizedBatch,
) -> Result<(), NetfilterError> {
    let op = Operation::Ruleset;
    let pages: Vec<&[u8]> = batch.iter().collect();
    let bytes: usize = pages.iter().map(|p| p.len()).sum();
    // The kernel queues one acknowledgement per message before we read any: size the
    // receive buffer to the batch (as nft does), or 10,000 floating IPs overflow it (ENOBUFS).
    socket.grow_buffers(bytes.max(1 << 20), (bytes * 2).max(1 << 20));
    socket
        .send_pages(&pages)
        .map_err(NetfilterError::socket(op))?;
    let mut expected = batch.sequence_numbers();
    debug!(bytes, messages = expected.len(), "nf_tables batch sent");
    if expected.is_empty() {
        return Ok(());
    }
    socket.read_until(op, |message, header| {
        let Some(result) = outcome(op, message)? else {
            // Not an acknowledgement (nothing else is asked for): skip it.
            return Ok(None);
        };
        if let Outcome::Refused(errno) = result {
            return Err(NetfilterError::Refused { op, errno });
        }
        // Acknowledgements come in the order of the batch's messages.
        if expected.next() != Some(header.sequence_number) {
            return Err(NetfilterError::malformed(
                op,
                format!(
                    "acknowledgement for sequence number {} out of order",
                    header.sequence_number
                ),
            ));
        }
        Ok(expected.is_empty().then_some(()))
    })
}

/// Sends one request and reads its answer to the end: data messages go to `each`, then the
/// acknowledgement or end of dump.
fn exchange(
    socket: &mut NfnlSocket,
    op: Operation,
    flags: u16,
    message: NetfilterMessage,
    mut each: impl FnMut(&[u8]),
) -> Result<Outcome, NetfilterError> {
    let seq = socket
        .request(flags, message)
        .map_err(NetfilterError::socket(op))?;
    socket.read_until(op, |message, header| {
        if header.sequence_number != seq {
            // A late answer to an earlier request on this socket.
            return Ok(None);
        }
        let result = outcome(op, message)?;
        if result.is_none() {
            each(message);
        }
        Ok(result)
    })
}

/// Whether nf_tables has table `name` in the inet family (one GETTABLE request, no dump).
pub fn inet_table_exists(name: &str) -> Result<bool, NetfilterError> {
    let op = Operation::TableProbe;
    let get = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(name.to_string())],
        }),
    );
    // The table itself comes back first, then the acknowledgement.
    match with_socket(op, |socket| exchange(socket, op, NLM_F_ACK, get, |_| {}))? {
        Outcome::Complete => Ok(true),
        Outcome::Refused(errno) if errno == libc::ENOENT => Ok(false),
        Outcome::Refused(errno) => Err(NetfilterError::Refused { op, errno }),
    }
}

/// `GET /v1/firewall/rules`: the live table `inet TABLE` as `nft list` prints it, with
/// counters and handles, read back from the kernel by libnftables (linked, not run). `Ok(None)`
/// when the table does not exist (no config applied yet).
pub fn list_table(table: &str) -> Result<Option<String>, NetfilterError> {
    let listing = ffi::nft_list(&format!("list table inet {table}"))
        .map_err(|e| NetfilterError::Listing(e.to_string()))?;
    if listing.ok {
        Ok(Some(listing.output))
    } else if listing.error.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NetfilterError::Listing(listing.error.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        // nlmsgerr: the code, then the request's header.
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&nlmsg(0x0a00, seq, &[])[..16]);
        nlmsg(2, seq, &payload)
    }

    #[test]
    fn splits_a_datagram_into_messages() {
        let datagram = [ack(1, 0), ack(2, -libc::ENOENT), nlmsg(3, 3, &[0; 4])].concat();
        let messages = split(&datagram).unwrap();
        assert_eq!(messages.len(), 3);
        assert!(matches!(
            outcome(Operation::Ruleset, messages[0]),
            Ok(Some(Outcome::Complete))
        ));
        assert!(matches!(
            outcome(Operation::Ruleset, messages[1]),
            Ok(Some(Outcome::Refused(e))) if e == libc::ENOENT
        ));
        assert!(matches!(
            outcome(Operation::Ruleset, messages[2]),
            Ok(Some(Outcome::Complete))
        ));
        assert!(matches!(
            outcome(Operation::Ruleset, &nlmsg(0x0100, 4, &[2, 0, 0, 0])),
            Ok(None)
        ));
    }

    #[test]
    fn truncated_answers_are_errors_not_panics() {
        let whole = ack(1, 0);
        for cut in 1..whole.len() {
            // Lengths that overrun the datagram, or headers cut short.
            assert!(split(&whole[..cut]).is_err(), "cut at {cut}");
        }
        // A header that claims less than a header.
        let mut short = ack(1, 0);
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(split(&short).is_err());
        // An error message without its code.
        let bare = nlmsg(2, 1, &[]);
        assert!(matches!(
            outcome(Operation::Ruleset, &bare),
            Err(NetfilterError::Malformed { .. })
        ));
    }

    #[test]
    fn a_refusal_names_the_operation_and_carries_the_errno() {
        let e = NetfilterError::Refused {
            op: Operation::Ruleset,
            errno: libc::EINVAL,
        };
        assert_eq!(e.errno(), Some(libc::EINVAL));
        let text = e.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(text.contains("Invalid argument (errno 22)"), "{text}");
    }
}
