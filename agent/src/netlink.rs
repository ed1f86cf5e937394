//! The agent's only contact with rtnetlink: links, addresses and routes.
//!
//! Everything else in the agent works with the plain types defined here
//! ([`Link`], [`Address`], [`Route`], [`NetlinkError`]), so upgrading
//! `rtnetlink` / `netlink-packet-route` only ever touches this file.
//! The agent never runs `ip`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{Stream, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    ErrorMessage, NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};
use tracing::debug;

/// Route protocol number that marks routes installed by the agent
/// (`ip route ... proto 44`).
///
/// 44 is not assigned in the kernel's `rtnetlink.h` (which has 0-4 for the
/// kernel itself, then 8-18, 42 babel, 99 openr, 186-189 and 192 for routing
/// daemons) nor in iproute2's `/etc/iproute2/rt_protos`, and values at or
/// above `RTPROT_STATIC` (4) are never interpreted by the kernel. It lets the
/// agent tell its own routes apart from kernel (connected), DHCP, RA and
/// administrator (`static`/`boot`) routes, so it only ever removes its own.
pub const RTPROT_AKANDA: u8 = 44;

/// The main routing table (`RT_TABLE_MAIN`).
pub(crate) const TABLE_MAIN: u32 = akanda_model::MAIN_ROUTE_TABLE;

/// The agent's own FIB table: one `local` route per IPv4 floating IP (`ip route show table
/// 44`). The kernel inserts routes in logarithmic time, where interface addresses cost time
/// that grows with the addresses already on the link; a `local` route is enough for the
/// router to answer ARP for the address (with the default `arp_ignore=0`) and to accept
/// packets to it. Numbered like [`RTPROT_AKANDA`]; 44 is unassigned in `rt_tables`.
pub(crate) const FLOATING_IP_TABLE: u32 = 44;

/// The policy rule that consults [`FLOATING_IP_TABLE`]: after the local table's rule (0) and
/// before main's (32766), so a floating IP inside a connected subnet is still local.
pub(crate) const FLOATING_IP_RULE_PRIORITY: u32 = 44;

/// `lo` has ifindex 1 in every network namespace (`LOOPBACK_IFINDEX`): the floating IPs'
/// local routes point at it, so they survive the external NIC going down and up (IPv4 flushes
/// routes through a link that goes down).
const LOOPBACK_IFINDEX: u32 = 1;
// The model's constant is the kernel's RT_TABLE_MAIN.
const _: () = assert!(TABLE_MAIN == RouteHeader::RT_TABLE_MAIN as u32);

/// `ARPHRD_ETHER`, the `link_type` of Ethernet-like links (veth, virtio, ...).
pub(crate) const ARPHRD_ETHER: u16 = 1;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_ADDRESS` when it is 6 bytes long.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// `IFF_RUNNING`: operationally up (carrier), for display.
    pub oper_up: bool,
    /// `ARPHRD_*` from the link header (1 = Ethernet, 772 = loopback).
    pub link_type: u16,
    /// `IFLA_INFO_KIND` ("veth", "bridge", "dummy"); `None` for physical NICs.
    pub kind: Option<String>,
}

/// An address on a link, with its prefix length (`192.168.0.1/24`, not truncated).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
}

/// A unicast route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    /// 254 = main.
    pub table: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request. `op` says what was asked, in words an
    /// operator understands ("replace route 10.9.0.0/16 via 10.99.0.1 dev ge1");
    /// `errno` is positive.
    #[error("{op}: {message} (errno {errno})")]
    Kernel {
        op: String,
        errno: i32,
        message: String,
    },
    #[error("netlink connection: {0}")]
    Connection(String),
    #[error("netlink: {0}")]
    Other(String),
}

impl NetlinkError {
    /// The positive errno when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    fn kernel(op: String, errno: i32) -> Self {
        NetlinkError::Kernel {
            op,
            errno,
            message: errno_text(errno),
        }
    }

    fn from_rtnetlink(op: String, err: rtnetlink::Error) -> Self {
        match err {
            rtnetlink::Error::NetlinkError(msg) => Self::from_error_message(op, &msg),
            rtnetlink::Error::RequestFailed => {
                NetlinkError::Connection(format!("{op}: connection to the kernel is closed"))
            }
            other => NetlinkError::Other(format!("{op}: {other}")),
        }
    }

    fn from_error_message(op: String, msg: &ErrorMessage) -> Self {
        match msg.code {
            Some(code) => Self::kernel(op, code.get().saturating_abs()),
            None => NetlinkError::Other(format!("{op}: unexpected acknowledgement")),
        }
    }
}

/// "Network is unreachable" for 101: the OS text without " (os error 101)".
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(bare) => bare.to_string(),
        None => text,
    }
}

/// One rtnetlink connection, in the network namespace the calling thread was
/// in when [`Netlink::connect`] ran. Counts every write request it sends.
pub struct Netlink {
    handle: Handle,
    /// A second connection with `NETLINK_GET_STRICT_CHK`: route dumps filtered by the kernel
    /// to one table (without it the kernel dumps every table, floating IPs included).
    strict: Handle,
    writes: AtomicU64,
    connections: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Netlink {
    fn drop(&mut self) {
        for c in &self.connections {
            c.abort();
        }
    }
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens the socket (in the calling thread's network namespace) and spawns
    /// the connection task on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            NetlinkError::Connection("Netlink::connect must run inside a tokio runtime".into())
        })?;
        let (connection, handle, _unsolicited) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::Connection(format!("open rtnetlink socket: {e}")))?;
        let (strict_connection, strict, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(|e| {
                NetlinkError::Connection(format!("open strict rtnetlink socket: {e}"))
            })?;
        Ok(Netlink {
            handle,
            strict,
            writes: AtomicU64::new(0),
            connections: [runtime.spawn(connection), runtime.spawn(strict_connection)],
        })
    }

    /// Write requests sent so far, successful or not. Dumps are not counted.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages = dump("dump links", self.handle.link().get().execute()).await?;
        Ok(messages.iter().map(link_from_message).collect())
    }

    /// All addresses of all families on all links.
    pub async fn addresses(&self) -> Result<Vec<Address>, NetlinkError> {
        let messages = dump("dump addresses", self.handle.address().get().execute()).await?;
        Ok(messages.iter().filter_map(address_from_message).collect())
    }

    /// Unicast routes of the main table, IPv4 then IPv6.
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        // Sequential on purpose: a second dump on the same socket while one is
        // running fails with EBUSY.
        let mut routes = Vec::new();
        for (op, family) in [
            ("dump IPv4 routes", AddressFamily::Inet),
            ("dump IPv6 routes", AddressFamily::Inet6),
        ] {
            let messages = self.dump_table(op, family, TABLE_MAIN).await?;
            routes.extend(
                messages
                    .iter()
                    .filter_map(route_from_message)
                    .filter(|r| r.table == TABLE_MAIN),
            );
        }
        Ok(routes)
    }

    /// The IPv4 host addresses that have a `local` route in `table`.
    pub(crate) async fn local_routes(&self, table: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let messages = self
            .dump_table("dump local routes", AddressFamily::Inet, table)
            .await?;
        Ok(messages
            .iter()
            .filter(|m| {
                m.header.kind == RouteType::Local && m.header.destination_prefix_length == 32
            })
            .filter_map(|m| {
                let route = route_from_any_message(m)?;
                match (route.table == table, route.dst.addr()) {
                    (true, IpAddr::V4(ip)) => Some(ip),
                    _ => None,
                }
            })
            .collect())
    }

    /// Every route of one table and family, filtered by the kernel (strict checking). A
    /// table that does not exist yet is empty.
    async fn dump_table(
        &self,
        op: &str,
        family: AddressFamily,
        table: u32,
    ) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        // Protocol, scope and type stay 0: with strict checking they would filter too.
        match u8::try_from(table) {
            Ok(t) => request.header.table = t,
            Err(_) => request.attributes.push(RouteAttribute::Table(table)),
        }
        match dump(op, self.strict.route().get(request).execute()).await {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Adds (`ip route replace local IP/32 dev lo table T proto 44`) and removes `local`
    /// host routes in `table`, all in a few `sendmsg` calls: thousands of floating IPs cost
    /// milliseconds, where one request and one acknowledgement each would cost a round trip
    /// apiece. Removals go first. Adding a route that exists and removing one that is gone
    /// are no errors. The kernel processes every request even after one fails: the first
    /// failure is returned, and the caller restores what it wants from a fresh read.
    pub(crate) fn write_local_routes(
        &self,
        table: u32,
        add: &[Ipv4Addr],
        remove: &[Ipv4Addr],
    ) -> Result<(), NetlinkError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let requests: Vec<(RouteIntent, Ipv4Addr)> = remove
            .iter()
            .map(|ip| (RouteIntent::Delete, *ip))
            .chain(add.iter().map(|ip| (RouteIntent::Replace, *ip)))
            .collect();
        self.writes
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        debug!(
            table,
            add = add.len(),
            remove = remove.len(),
            "netlink local routes batch"
        );
        let describe = |intent: RouteIntent, ip: Ipv4Addr| {
            let verb = match intent {
                RouteIntent::Replace => "replace",
                RouteIntent::Delete => "delete",
            };
            format!("{verb} route local {ip}/32 dev lo table {table}")
        };
        let mut socket = BatchSocket::open()
            .map_err(|e| NetlinkError::Connection(format!("open rtnetlink socket: {e}")))?;
        for chunk in requests.chunks(BATCH_REQUESTS) {
            let failed = socket
                .send(chunk.iter().map(|(intent, ip)| {
                    let tolerated = match intent {
                        RouteIntent::Replace => 0,
                        RouteIntent::Delete => libc::ESRCH,
                    };
                    (local_route_request(*ip, table, *intent), tolerated)
                }))
                .map_err(|e| NetlinkError::Connection(format!("rtnetlink batch: {e}")))?;
            if let Some((i, errno)) = failed {
                let (intent, ip) = chunk[i];
                return Err(NetlinkError::kernel(describe(intent, ip), errno));
            }
        }
        Ok(())
    }

    /// The IPv4 policy rule `PRIORITY: from all lookup TABLE`, if there is one.
    async fn find_rule(
        &self,
        table: u32,
        priority: u32,
    ) -> Result<Option<RuleMessage>, NetlinkError> {
        let rules = dump(
            "dump IPv4 rules",
            self.handle.rule().get(rtnetlink::IpVersion::V4).execute(),
        )
        .await?;
        Ok(rules.into_iter().find(|r| {
            rule_table(r) == table
                && r.attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Priority(p) if *p == priority))
        }))
    }

    /// Adds the IPv4 rule `from all lookup TABLE pref PRIORITY` unless it is there.
    /// Returns whether it was added.
    pub(crate) async fn ensure_rule(
        &self,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        if self.find_rule(table, priority).await?.is_some() {
            return Ok(false);
        }
        let request = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        self.write(Op::AddRule { table, priority }, request.execute())
            .await?;
        Ok(true)
    }

    /// Deletes the IPv4 policy rule `priority: from all lookup table` if there is one.
    /// Returns whether it deleted one.
    pub(crate) async fn delete_rule(
        &self,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        let Some(rule) = self.find_rule(table, priority).await? else {
            return Ok(false);
        };
        self.write(
            Op::DelRule { table, priority },
            self.handle.rule().del(rule).execute(),
        )
        .await?;
        Ok(true)
    }

    /// Renames a link. The kernel refuses (EBUSY) to rename a link that is
    /// up, so an up link is set down, renamed and set up again (three writes).
    /// Renaming a link to the name it already has sends nothing.
    pub async fn set_link_name(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let link = self.link(index).await?;
        if link.name == name {
            return Ok(());
        }
        let rename = || {
            let message = LinkUnspec::new_with_index(index).name(name).build();
            self.write(
                Op::Rename { index, name },
                self.handle.link().change(message).execute(),
            )
        };
        if !link.up {
            return rename().await;
        }
        self.set_link_up(index, false).await?;
        let renamed = rename().await;
        // Bring the link back up even when the rename failed.
        let restored = self.set_link_up(index, true).await;
        renamed.and(restored)
    }

    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.write(
            Op::SetMtu { index, mtu },
            self.handle.link().change(message).execute(),
        )
        .await
    }

    pub async fn set_link_up(&self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let builder = LinkUnspec::new_with_index(index);
        let message = if up { builder.up() } else { builder.down() }.build();
        self.write(
            Op::SetUp { index, up },
            self.handle.link().change(message).execute(),
        )
        .await
    }

    /// Adds `net` (address and prefix length) to a link. IPv4 addresses get
    /// their broadcast address like `ip addr add ... brd +`. `nodad` adds an
    /// IPv6 address with `IFA_F_NODAD` so it is usable at once (never
    /// "tentative"). Without `nodad` an IPv6 address is added with
    /// `IFA_F_OPTIMISTIC`: duplicate address detection runs, and the address
    /// can be bound and used meanwhile (RFC 4429). The kernel honours that flag
    /// only where the link's `optimistic_dad` sysctl is on, and drops it
    /// elsewhere (the address is then plainly "tentative" until DAD ends).
    /// Both flags are ignored for IPv4.
    pub async fn add_address(
        &self,
        index: u32,
        net: IpNet,
        nodad: bool,
    ) -> Result<(), NetlinkError> {
        // rtnetlink's add request already sets IFA_LOCAL and, for IPv4
        // prefixes shorter than /31, IFA_BROADCAST.
        let mut request = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            let flag = if nodad {
                AddressFlags::Nodad
            } else {
                AddressFlags::Optimistic
            };
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(flag));
        }
        self.write(Op::AddAddress { index, net }, request.execute())
            .await
    }

    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let message = address_message(index, net);
        self.write(
            Op::DelAddress { index, net },
            self.handle.address().del(message).execute(),
        )
        .await
    }

    /// Like `ip route replace DST [via GW] [dev OIF] proto P table T`
    /// (`NLM_F_CREATE | NLM_F_REPLACE`), with `route.protocol` and
    /// `route.table` as given. The metric is left to the kernel (0 for IPv4,
    /// 1024 for IPv6), as `ip` does.
    pub async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let op = Op::ReplaceRoute(route);
        let message = route_message(route, RouteIntent::Replace)
            .map_err(|e| NetlinkError::Other(format!("{}: {e}", op.describe(None))))?;
        self.write(op, self.handle.route().add(message).replace().execute())
            .await
    }

    /// Deletes exactly this route: destination, gateway, output link,
    /// protocol and table must all match, or the kernel answers ESRCH. Like
    /// `ip route del`, no metric is sent, so any metric matches (IPv6 routes
    /// made by `replace_route` have the kernel's default 1024), and a `None`
    /// gateway or oif is left out and matches any: pass routes as
    /// [`Netlink::routes`] reports them to be exact.
    pub async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let op = Op::DelRoute(route);
        let message = route_message(route, RouteIntent::Delete)
            .map_err(|e| NetlinkError::Other(format!("{}: {e}", op.describe(None))))?;
        self.write(op, self.handle.route().del(message).execute())
            .await
    }

    /// Sends one write request: counts it, logs it and, when the kernel
    /// refuses it, names it in the error (with link names, looked up then).
    async fn write(
        &self,
        op: Op<'_>,
        request: impl Future<Output = Result<(), rtnetlink::Error>>,
    ) -> Result<(), NetlinkError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        debug!(op = %op.describe(None), "netlink write");
        match request.await {
            Ok(()) => Ok(()),
            Err(err) => {
                let link_name = match op.link() {
                    Some(index) => self.link(index).await.ok().map(|l| l.name),
                    None => None,
                };
                Err(NetlinkError::from_rtnetlink(
                    op.describe(link_name.as_deref()),
                    err,
                ))
            }
        }
    }

    /// One link by index (a read, not counted as a write). A missing link is
    /// `NetlinkError::Kernel` with errno ENODEV.
    pub(crate) async fn link(&self, index: u32) -> Result<Link, NetlinkError> {
        let op = || format!("get link ifindex {index}");
        let message = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink(op(), e))?;
        match message {
            Some(message) => Ok(link_from_message(&message)),
            None => Err(NetlinkError::kernel(op(), libc::ENODEV)),
        }
    }
}

async fn dump<T>(
    op: &str,
    stream: impl Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, NetlinkError> {
    stream
        .try_collect()
        .await
        .map_err(|e| NetlinkError::from_rtnetlink(op.to_string(), e))
}

/// A write request, described for logs and errors.
enum Op<'a> {
    Rename { index: u32, name: &'a str },
    SetMtu { index: u32, mtu: u32 },
    SetUp { index: u32, up: bool },
    AddAddress { index: u32, net: IpNet },
    DelAddress { index: u32, net: IpNet },
    ReplaceRoute(&'a Route),
    DelRoute(&'a Route),
    AddRule { table: u32, priority: u32 },
    DelRule { table: u32, priority: u32 },
}

impl Op<'_> {
    /// The link the request is about, to be named in an error.
    fn link(&self) -> Option<u32> {
        match self {
            Op::Rename { index, .. }
            | Op::SetMtu { index, .. }
            | Op::SetUp { index, .. }
            | Op::AddAddress { index, .. }
            | Op::DelAddress { index, .. } => Some(*index),
            Op::ReplaceRoute(route) | Op::DelRoute(route) => route.oif,
            Op::AddRule { .. } | Op::DelRule { .. } => None,
        }
    }

    /// "set mtu 9000 on ge2"; without the link's name, "ifindex 5" stands in.
    fn describe(&self, link_name: Option<&str>) -> String {
        let link = match (link_name, self.link()) {
            (Some(name), _) => name.to_string(),
            (None, Some(index)) => format!("ifindex {index}"),
            (None, None) => String::new(),
        };
        match self {
            Op::Rename { name, .. } => format!("rename {link} to {name}"),
            Op::SetMtu { mtu, .. } => format!("set mtu {mtu} on {link}"),
            Op::SetUp { up: true, .. } => format!("set {link} up"),
            Op::SetUp { up: false, .. } => format!("set {link} down"),
            Op::AddAddress { net, .. } => format!("add address {net} on {link}"),
            Op::DelAddress { net, .. } => format!("delete address {net} from {link}"),
            Op::ReplaceRoute(route) => format!("replace route {}", route_text(route, &link)),
            Op::DelRoute(route) => format!("delete route {}", route_text(route, &link)),
            Op::AddRule { table, priority } => {
                format!("add rule lookup {table} pref {priority}")
            }
            Op::DelRule { table, priority } => {
                format!("delete rule lookup {table} pref {priority}")
            }
        }
    }
}

/// `10.9.0.0/16 via 10.99.0.1 dev ge1`, plus proto and table when they are
/// not the agent's usual ones.
fn route_text(route: &Route, link: &str) -> String {
    let mut text = route.dst.to_string();
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if route.oif.is_some() {
        text.push_str(&format!(" dev {link}"));
    }
    if route.protocol != RTPROT_AKANDA {
        text.push_str(&format!(" proto {}", route.protocol));
    }
    if route.table != TABLE_MAIN {
        text.push_str(&format!(" table {}", route.table));
    }
    text
}

fn link_from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        oper_up: message.header.flags.contains(LinkFlags::Running),
        link_type: message.header.link_layer_type.into(),
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => link.kind = link_kind(infos),
            _ => {}
        }
    }
    link
}

fn link_kind(infos: &[LinkInfo]) -> Option<String> {
    infos.iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    })
}

fn address_from_message(message: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on
    // point-to-point links, and the only one IPv6 usually sends.
    let find = |local: bool| {
        message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Local(ip) if local => Some(*ip),
                AddressAttribute::Address(ip) if !local => Some(*ip),
                _ => None,
            })
    };
    let ip = find(true).or_else(|| find(false))?;
    let net = IpNet::new(ip, message.header.prefix_len).ok()?;
    Some(Address {
        index: message.header.index,
        net,
    })
}

/// The `Route` in a dump message; `None` for anything but unicast IPv4/IPv6.
fn route_from_message(message: &RouteMessage) -> Option<Route> {
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    route_from_any_message(message)
}

/// The `Route` in a dump message of any type (unicast, local...).
fn route_from_any_message(message: &RouteMessage) -> Option<Route> {
    let header = &message.header;
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => dst = route_ip(address),
            RouteAttribute::Gateway(address) => gateway = route_ip(address),
            RouteAttribute::Via(RouteVia::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Table(id) => table = *id,
            _ => {}
        }
    }
    let dst = match (dst, header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    Some(Route {
        dst: IpNet::new(dst, header.destination_prefix_length).ok()?,
        gateway,
        oif,
        protocol: header.protocol.into(),
        table,
    })
}

/// A rule's table: the header's byte, or `FRA_TABLE` for tables above 255.
fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// `local IP/32 dev lo table TABLE proto 44 scope host`: a request to replace it, or to
/// delete it (any scope, as `ip route del`).
fn local_route_request(
    ip: Ipv4Addr,
    table: u32,
    intent: RouteIntent,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = AddressFamily::Inet;
    header.destination_prefix_length = 32;
    header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    header.protocol = RouteProtocol::from(RTPROT_AKANDA);
    header.kind = RouteType::Local;
    header.scope = match intent {
        RouteIntent::Replace => RouteScope::Host,
        RouteIntent::Delete => RouteScope::NoWhere,
    };
    message.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(RouteAddress::Inet(ip)),
        RouteAttribute::Oif(LOOPBACK_IFINDEX),
    ];
    let (payload, flags) = match intent {
        RouteIntent::Replace => (
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        RouteIntent::Delete => (RouteNetlinkMessage::DelRoute(message), NLM_F_REQUEST),
    };
    let mut request = NetlinkMessage::from(payload);
    request.header.flags = flags;
    request
}

/// Requests per `sendmsg` of [`BatchSocket`]: about 52 KB, under the default send buffer.
const BATCH_REQUESTS: usize = 1000;

/// A plain `NETLINK_ROUTE` socket that sends many requests in one `sendmsg`. Only the last
/// request of a send asks for an acknowledgement; the kernel answers any other request only
/// when it fails, so the receive side carries one message per send plus the failures.
struct BatchSocket {
    socket: rtnetlink::sys::Socket,
    seq: u32,
}

impl BatchSocket {
    fn open() -> io::Result<BatchSocket> {
        use nix::sys::socket::{setsockopt, sockopt};
        use std::os::fd::AsFd;
        let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Room for a whole send's worth of failures (each is its own datagram) before the
        // final acknowledgement; FORCE needs CAP_NET_ADMIN, which the agent has.
        let bytes = 4 << 20;
        if setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &bytes).is_err() {
            let _ = setsockopt(&socket.as_fd(), sockopt::RcvBuf, &bytes);
        }
        Ok(BatchSocket { socket, seq: 0 })
    }

    /// Sends `requests` (each with the errno that counts as success, or 0) in one datagram
    /// and waits for the kernel to have processed all of them. Returns the first refused
    /// request, as its position in `requests` and its positive errno.
    fn send(
        &mut self,
        requests: impl Iterator<Item = (NetlinkMessage<RouteNetlinkMessage>, i32)>,
    ) -> io::Result<Option<(usize, i32)>> {
        let first_seq = self.seq.wrapping_add(1);
        let mut tolerated = Vec::new();
        let mut messages: Vec<NetlinkMessage<RouteNetlinkMessage>> = requests
            .map(|(mut message, ok_errno)| {
                self.seq = self.seq.wrapping_add(1);
                tolerated.push(ok_errno);
                message.header.sequence_number = self.seq;
                message
            })
            .collect();
        let Some(last) = messages.last_mut() else {
            return Ok(None);
        };
        last.header.flags |= NLM_F_ACK;
        let last_seq = self.seq;
        let mut buf = Vec::new();
        for m in &mut messages {
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.buffer_len(), 0);
            m.serialize(&mut buf[start..]);
        }
        let sent = self.socket.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                buf.len()
            )));
        }
        let mut first_failure: Option<(usize, i32)> = None;
        let mut rx = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            self.socket.recv(&mut rx, 0)?;
            for (seq, errno) in acknowledgements(&rx)? {
                let i = seq.wrapping_sub(first_seq) as usize;
                if errno != 0 && tolerated.get(i) != Some(&errno) {
                    match first_failure {
                        Some((j, _)) if j <= i => {}
                        _ => first_failure = Some((i, errno)),
                    }
                }
                if seq == last_seq {
                    return Ok(first_failure);
                }
            }
        }
    }
}

/// The `NLMSG_ERROR` messages of a datagram, as (sequence number, positive errno; 0 for an
/// acknowledgement). Anything else (there should be nothing else) is skipped.
fn acknowledgements(datagram: &[u8]) -> io::Result<Vec<(u32, i32)>> {
    let malformed = |what: &str| io::Error::other(format!("malformed rtnetlink answer: {what}"));
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            return Err(malformed("message length"));
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if kind == netlink_packet_core::NLMSG_ERROR {
            if len < 20 {
                return Err(malformed("short error message"));
            }
            let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
            out.push((seq, code.saturating_abs()));
        }
        // Messages are 4-byte aligned.
        let advance = (len + 3) & !3;
        rest = rest.get(advance..).unwrap_or_default();
    }
    Ok(out)
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    match net.addr() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, net.prefix_len())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(ip, net.prefix_len())
            .build(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteIntent {
    Replace,
    Delete,
}

/// The request message for `route`. The builder's error type is not exported
/// by rtnetlink 0.24, hence the `String`.
fn route_message(route: &Route, intent: RouteIntent) -> Result<RouteMessage, String> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.addr(), route.dst.prefix_len())
        .map_err(|e| e.to_string())?
        .protocol(RouteProtocol::from(route.protocol))
        .table_id(route.table)
        .scope(route_scope(route, intent));
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(|e| e.to_string())?;
    }
    if let Some(oif) = route.oif {
        builder = builder.output_interface(oif);
    }
    Ok(builder.build())
}

/// The scope `ip route` would pick: IPv4 routes without a gateway are
/// on-link ("scope link"); a delete matches any scope ("nowhere").
fn route_scope(route: &Route, intent: RouteIntent) -> RouteScope {
    match (route.dst, intent, route.gateway) {
        (IpNet::V6(_), _, _) => RouteScope::Universe,
        (IpNet::V4(_), RouteIntent::Delete, _) => RouteScope::NoWhere,
        (IpNet::V4(_), RouteIntent::Replace, None) => RouteScope::Link,
        (IpNet::V4(_), RouteIntent::Replace, Some(_)) => RouteScope::Universe,
    }
}

/// `fa:16:3e:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    akanda_model::MacAddr(*mac).to_string()
}

/// Parses a MAC as the model does ([`akanda_model::MacAddr`]); `None` for anything else.
pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<akanda_model::MacAddr>().ok().map(|m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{InfoKind, LinkLayerType};

    #[test]
    fn mac_round_trip() {
        let mac = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01];
        assert_eq!(format_mac(&mac), "fa:16:3e:00:00:01");
        assert_eq!(parse_mac("fa:16:3e:00:00:01"), Some(mac));
        assert_eq!(parse_mac("FA:16:3E:00:00:01"), Some(mac));
        // One spelling rule for the whole project (the model's): dashes too.
        assert_eq!(parse_mac("fa-16-3e-00-00-01"), Some(mac));
        for bad in [
            "",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:01:02",
            "fa:16:3e:00:00:1",
            "fa:16:3e:00:00:0g",
            "+a:16:3e:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kernel_error_text() {
        let err = NetlinkError::kernel("add route 10.9.0.0/16 via 10.99.0.1".into(), 101);
        assert_eq!(err.errno(), Some(101));
        assert_eq!(
            err.to_string(),
            "add route 10.9.0.0/16 via 10.99.0.1: Network is unreachable (errno 101)"
        );
        assert_eq!(NetlinkError::Other("x".into()).errno(), None);
    }

    #[test]
    fn rtnetlink_errors_map_to_positive_errno() {
        let mut msg = ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::EBUSY);
        let err = NetlinkError::from_rtnetlink("op".into(), rtnetlink::Error::NetlinkError(msg));
        assert_eq!(err.errno(), Some(libc::EBUSY));
        let closed = NetlinkError::from_rtnetlink("op".into(), rtnetlink::Error::RequestFailed);
        assert!(matches!(closed, NetlinkError::Connection(_)));
    }

    #[test]
    fn op_descriptions() {
        let route = Route {
            dst: "10.9.0.0/16".parse().unwrap(),
            gateway: Some("10.99.0.1".parse().unwrap()),
            oif: Some(5),
            protocol: RTPROT_AKANDA,
            table: TABLE_MAIN,
        };
        assert_eq!(
            Op::ReplaceRoute(&route).describe(Some("ge1")),
            "replace route 10.9.0.0/16 via 10.99.0.1 dev ge1"
        );
        let other = Route {
            oif: None,
            protocol: 4,
            table: 100,
            ..route.clone()
        };
        assert_eq!(
            Op::DelRoute(&other).describe(None),
            "delete route 10.9.0.0/16 via 10.99.0.1 proto 4 table 100"
        );
        let mtu = Op::SetMtu {
            index: 5,
            mtu: 9000,
        };
        assert_eq!(mtu.describe(Some("ge2")), "set mtu 9000 on ge2");
        assert_eq!(mtu.describe(None), "set mtu 9000 on ifindex 5");
    }

    #[test]
    fn link_from_dump_message() {
        let mut message = LinkMessage::default();
        message.header.index = 3;
        message.header.link_layer_type = LinkLayerType::Ether;
        message.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        message.attributes = vec![
            LinkAttribute::IfName("ge0".into()),
            LinkAttribute::Address(vec![0xfa, 0x16, 0x3e, 0, 0, 1]),
            LinkAttribute::Mtu(1500),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        assert_eq!(
            link_from_message(&message),
            Link {
                index: 3,
                name: "ge0".into(),
                mac: Some([0xfa, 0x16, 0x3e, 0, 0, 1]),
                mtu: 1500,
                up: true,
                oper_up: false,
                link_type: ARPHRD_ETHER,
                kind: Some("veth".into()),
            }
        );
    }

    #[test]
    fn address_prefers_local_and_keeps_host_bits() {
        let mut message = address_message(7, "192.168.0.1/24".parse().unwrap());
        message.attributes.insert(
            0,
            AddressAttribute::Address("192.168.0.99".parse().unwrap()),
        );
        assert_eq!(
            address_from_message(&message),
            Some(Address {
                index: 7,
                net: "192.168.0.1/24".parse().unwrap()
            })
        );
        let v6 = address_message(7, "fd00::1/64".parse().unwrap());
        assert_eq!(
            address_from_message(&v6).map(|a| a.net),
            Some("fd00::1/64".parse().unwrap())
        );
    }

    #[test]
    fn route_message_round_trip() {
        for route in [
            Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.99.0.1".parse().unwrap()),
                oif: Some(2),
                protocol: RTPROT_AKANDA,
                table: TABLE_MAIN,
            },
            Route {
                dst: "2001:db8::/48".parse().unwrap(),
                gateway: Some("fd00::1".parse().unwrap()),
                oif: None,
                protocol: RTPROT_AKANDA,
                table: 1000,
            },
            Route {
                dst: "10.10.0.0/24".parse().unwrap(),
                gateway: None,
                oif: Some(2),
                protocol: 4,
                table: TABLE_MAIN,
            },
        ] {
            let message = route_message(&route, RouteIntent::Replace).unwrap();
            assert_eq!(route_from_message(&message), Some(route));
        }
    }

    #[test]
    fn scope_like_ip_route() {
        let mut route = Route {
            dst: "10.10.0.0/24".parse().unwrap(),
            gateway: None,
            oif: Some(2),
            protocol: RTPROT_AKANDA,
            table: TABLE_MAIN,
        };
        assert_eq!(route_scope(&route, RouteIntent::Replace), RouteScope::Link);
        assert_eq!(
            route_scope(&route, RouteIntent::Delete),
            RouteScope::NoWhere
        );
        route.gateway = Some("10.10.0.1".parse().unwrap());
        assert_eq!(
            route_scope(&route, RouteIntent::Replace),
            RouteScope::Universe
        );
        route.dst = "fd00::/64".parse().unwrap();
        assert_eq!(
            route_scope(&route, RouteIntent::Delete),
            RouteScope::Universe
        );
    }

    #[test]
    fn non_unicast_routes_are_skipped() {
        let mut message = RouteMessageBuilder::<Ipv4Addr>::new().build();
        message.header.kind = RouteType::Local;
        assert_eq!(route_from_message(&message), None);
    }

    #[test]
    fn netlink_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Netlink>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let nl = Netlink::connect().unwrap();
            let route = Route {
                dst: "10.0.0.0/8".parse().unwrap(),
                gateway: None,
                oif: None,
                protocol: RTPROT_AKANDA,
                table: TABLE_MAIN,
            };
            assert_send(&nl.links());
            assert_send(&nl.addresses());
            assert_send(&nl.routes());
            assert_send(&nl.set_link_name(1, "x"));
            assert_send(&nl.set_link_mtu(1, 1500));
            assert_send(&nl.set_link_up(1, true));
            assert_send(&nl.add_address(1, route.dst, true));
            assert_send(&nl.del_address(1, route.dst));
            assert_send(&nl.replace_route(&route));
            assert_send(&nl.del_route(&route));
            assert_eq!(nl.writes(), 0);
        });
    }

    #[test]
    fn connect_outside_runtime_is_an_error() {
        assert!(matches!(
            Netlink::connect(),
            Err(NetlinkError::Connection(_))
        ));
    }
}
