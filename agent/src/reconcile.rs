//! Diff a desired state against the kernel and apply the difference.
//!
//! Planning is pure (`plan_links`, `plan_routes`): given what the kernel has, it returns the
//! netlink writes to make, and nothing when the kernel already agrees (an identical config
//! performs no write). `execute` is the thin I/O layer.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::IpNet;

use crate::desired::{is_ipv6_link_local, DesiredLink, DesiredRoute, DesiredState};
use crate::netlink::{
    Address, Link, Netlink, NetlinkError, Route, FLOATING_IP_TABLE, RTPROT_AKANDA,
};

/// The main routing table.
const MAIN_TABLE: u32 = akanda_model::MAIN_ROUTE_TABLE;

const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// What the kernel has, as far as the agent cares: every link and address, the routes the
/// agent installed (recognised by their route protocol) and the floating IPs' local routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    /// The local routes of the floating-IP table. [`KernelState::read`] leaves this empty:
    /// the appliance fills it from what it last wrote, or from [`floating_ip_routes`].
    pub floating_ips: BTreeSet<Ipv4Addr>,
}

impl KernelState {
    /// Links, addresses and the agent's main-table routes (not the floating-IP table: with
    /// thousands of floating IPs, dumping it would dominate a no-op apply).
    pub(crate) async fn read(nl: &Netlink) -> Result<KernelState, NetlinkError> {
        Ok(KernelState {
            links: nl.links().await?,
            addresses: nl.addresses().await?,
            routes: agent_routes(nl).await?,
            floating_ips: BTreeSet::new(),
        })
    }

    pub(crate) fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn link_name(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }

    /// Global addresses of a link (IPv6 link-local ones belong to the kernel).
    pub(crate) fn addresses_of(&self, index: u32) -> BTreeSet<IpNet> {
        self.addresses
            .iter()
            .filter(|a| a.index == index && !is_ipv6_link_local(&a.net))
            .map(|a| a.net)
            .collect()
    }

    /// The state to return to if an apply fails: these links as they are now, and the agent's
    /// routes as they are now.
    pub(crate) fn as_desired<'a>(
        &self,
        ifnames: impl IntoIterator<Item = &'a str>,
    ) -> DesiredState {
        let mut state = DesiredState::default();
        for name in ifnames {
            if let Some(link) = self.link(name) {
                state.links.insert(
                    name.to_string(),
                    DesiredLink {
                        mtu: Some(link.mtu),
                        up: link.up,
                        addresses: self.addresses_of(link.index),
                        nodad: true,
                    },
                );
            }
        }
        state.floating_ips = self.floating_ips.clone();
        for r in &self.routes {
            if let Some(gateway) = r.gateway {
                state.routes.insert(DesiredRoute {
                    destination: r.dst,
                    gateway,
                    ifname: r.oif.and_then(|i| self.link_name(i)).map(str::to_string),
                });
            }
        }
        state
    }
}

/// The floating IPs that have a local route in the agent's floating-IP table.
pub(crate) async fn floating_ip_routes(nl: &Netlink) -> Result<BTreeSet<Ipv4Addr>, NetlinkError> {
    Ok(nl
        .local_routes(FLOATING_IP_TABLE)
        .await?
        .into_iter()
        .collect())
}

/// The floating IPs' local routes to add and to remove (sorted, pure set difference: an
/// unchanged floating IP is never touched).
pub fn plan_floating_ips(
    desired: &DesiredState,
    actual: &KernelState,
) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    (
        desired
            .floating_ips
            .difference(&actual.floating_ips)
            .copied()
            .collect(),
        actual
            .floating_ips
            .difference(&desired.floating_ips)
            .copied()
            .collect(),
    )
}

/// Routes in the main table that carry the agent's protocol.
pub(crate) async fn agent_routes(nl: &Netlink) -> Result<Vec<Route>, NetlinkError> {
    Ok(nl
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_AKANDA && r.table == MAIN_TABLE)
        .collect())
}

/// One netlink write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetMtu {
        link: String,
        index: u32,
        mtu: u32,
    },
    SetUp {
        link: String,
        index: u32,
        up: bool,
    },
    AddAddress {
        link: String,
        index: u32,
        net: IpNet,
        nodad: bool,
    },
    DelAddress {
        link: String,
        index: u32,
        net: IpNet,
    },
    ReplaceRoute(Route),
    DelRoute(Route),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetMtu { link, mtu, .. } => write!(f, "set mtu {mtu} on {link}"),
            Op::SetUp { link, up, .. } => {
                write!(f, "set {link} {}", if *up { "up" } else { "down" })
            }
            Op::AddAddress { link, net, .. } => write!(f, "add address {net} to {link}"),
            Op::DelAddress { link, net, .. } => write!(f, "delete address {net} from {link}"),
            Op::ReplaceRoute(r) => write!(f, "replace route {}", describe_route(r)),
            Op::DelRoute(r) => write!(f, "delete route {}", describe_route(r)),
        }
    }
}

fn describe_route(r: &Route) -> String {
    match r.gateway {
        Some(gw) => format!("{} via {gw}", r.dst),
        None => r.dst.to_string(),
    }
}

/// A link the config names is not on this appliance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interface {0} is not present on this appliance")]
pub struct MissingLink(pub(crate) String);

/// MTU, admin state and addresses of the links in `desired`. Links it does not name are never
/// touched. Order: link settings, then addresses that change only their prefix length (removed
/// first, as the kernel keys IPv6 addresses by address alone), then additions, then removals,
/// so that a link is never left without an address it keeps.
pub fn plan_links(desired: &DesiredState, actual: &KernelState) -> Result<Vec<Op>, MissingLink> {
    let mut settings = Vec::new();
    let mut reprefix = Vec::new();
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for (name, want) in &desired.links {
        let link = actual.link(name).ok_or_else(|| MissingLink(name.clone()))?;
        let (index, link_name) = (link.index, name.clone());
        if let Some(mtu) = want.mtu {
            if mtu != link.mtu {
                settings.push(Op::SetMtu {
                    link: link_name.clone(),
                    index,
                    mtu,
                });
            }
        }
        if want.up != link.up {
            settings.push(Op::SetUp {
                link: link_name.clone(),
                index,
                up: want.up,
            });
        }
        let have = actual.addresses_of(index);
        for net in want.addresses.difference(&have) {
            adds.push(Op::AddAddress {
                link: link_name.clone(),
                index,
                net: *net,
                nodad: want.nodad,
            });
        }
        for net in have.difference(&want.addresses) {
            let op = Op::DelAddress {
                link: link_name.clone(),
                index,
                net: *net,
            };
            if want.addresses.iter().any(|w| w.addr() == net.addr()) {
                reprefix.push(op);
            } else {
                dels.push(op);
            }
        }
    }
    Ok(settings
        .into_iter()
        .chain(reprefix)
        .chain(adds)
        .chain(dels)
        .collect())
}

/// Routes: install the desired ones that are missing, remove the agent's routes that are no
/// longer desired. Other routes (kernel prefix routes, DHCP, an operator's) are never touched.
/// A stale route whose destination is about to be replaced is not deleted first: the replace
/// overwrites it, so a changed default gateway never leaves the box without a default route.
pub fn plan_routes(desired: &DesiredState, actual: &KernelState) -> Result<Vec<Op>, MissingLink> {
    let mut wanted = Vec::new();
    for d in &desired.routes {
        let oif = match &d.ifname {
            None => None,
            Some(name) => Some(
                actual
                    .link(name)
                    .ok_or_else(|| MissingLink(name.clone()))?
                    .index,
            ),
        };
        wanted.push(Route {
            dst: d.destination,
            gateway: Some(d.gateway),
            oif,
            protocol: RTPROT_AKANDA,
            table: MAIN_TABLE,
        });
    }
    let matches = |have: &Route, want: &Route| {
        have.dst == want.dst
            && have.gateway == want.gateway
            && (want.oif.is_none() || have.oif == want.oif)
    };
    let replaced: BTreeSet<IpNet> = wanted
        .iter()
        .filter(|w| !actual.routes.iter().any(|h| matches(h, w)))
        .map(|w| w.dst)
        .collect();
    let mut ops: Vec<Op> = actual
        .routes
        .iter()
        .filter(|h| !wanted.iter().any(|w| matches(h, w)) && !replaced.contains(&h.dst))
        .cloned()
        .map(Op::DelRoute)
        .collect();
    ops.extend(
        wanted
            .into_iter()
            .filter(|w| !actual.routes.iter().any(|h| matches(h, w)))
            .map(Op::ReplaceRoute),
    );
    Ok(ops)
}

/// Sends the writes in order, stopping at the first the kernel refuses. Outcomes that already
/// are the desired state (adding what exists, deleting what is gone) count as success.
pub(crate) async fn execute(nl: &Netlink, ops: &[Op]) -> Result<(), NetlinkError> {
    for op in ops {
        tracing::debug!(%op, "netlink write");
        let result = match op {
            Op::SetMtu { index, mtu, .. } => nl.set_link_mtu(*index, *mtu).await,
            Op::SetUp { index, up, .. } => nl.set_link_up(*index, *up).await,
            Op::AddAddress {
                index, net, nodad, ..
            } => nl
                .add_address(*index, *net, *nodad)
                .await
                .or_else(|e| tolerate(e, &[EEXIST])),
            Op::DelAddress { index, net, .. } => nl
                .del_address(*index, *net)
                .await
                .or_else(|e| tolerate(e, &[EADDRNOTAVAIL])),
            Op::ReplaceRoute(r) => nl.replace_route(r).await,
            Op::DelRoute(r) => nl.del_route(r).await.or_else(|e| tolerate(e, &[ESRCH])),
        };
        result?;
    }
    Ok(())
}

fn tolerate(e: NetlinkError, errnos: &[i32]) -> Result<(), NetlinkError> {
    match e.errno() {
        Some(n) if errnos.contains(&n) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, mtu: u32, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some([0xfa, 0x16, 0x3e, 0, 0, index as u8]),
            mtu,
            up,
            oper_up: up,
            link_type: 1,
            kind: None,
        }
    }

    fn addr(index: u32, net: &str) -> Address {
        Address {
            index,
            net: net.parse().unwrap(),
        }
    }

    fn kroute(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol: RTPROT_AKANDA,
            table: MAIN_TABLE,
        }
    }

    fn want_link(addrs: &[&str], mtu: Option<u32>) -> DesiredLink {
        DesiredLink {
            mtu,
            up: true,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            nodad: true,
        }
    }

    fn droute(dst: &str, gw: &str, ifname: Option<&str>) -> DesiredRoute {
        DesiredRoute {
            destination: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ifname: ifname.map(str::to_string),
        }
    }

    fn kernel() -> KernelState {
        KernelState {
            links: vec![
                link(1, "lo", 65536, true),
                link(2, "ge0", 1500, true),
                link(3, "ge1", 1500, false),
            ],
            addresses: vec![
                addr(2, "192.168.0.1/24"),
                addr(2, "fe80::1/64"),
                addr(2, "10.0.0.1/24"),
                addr(3, "172.16.0.2/24"),
            ],
            routes: vec![kroute("10.9.0.0/16", "192.168.0.254", 2)],
            floating_ips: ["172.16.0.50", "172.16.0.51"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn floating_ips_add_and_remove_only_the_difference() {
        let k = kernel();
        let mut desired = k.as_desired(["ge0", "ge1"]);
        assert_eq!(plan_floating_ips(&desired, &k), (vec![], vec![]));
        desired.floating_ips.remove(&"172.16.0.50".parse().unwrap());
        desired.floating_ips.insert("172.16.0.9".parse().unwrap());
        assert_eq!(
            plan_floating_ips(&desired, &k),
            (
                vec!["172.16.0.9".parse::<Ipv4Addr>().unwrap()],
                vec!["172.16.0.50".parse::<Ipv4Addr>().unwrap()]
            )
        );
    }

    #[test]
    fn identical_state_plans_nothing() {
        let k = kernel();
        let desired = k.as_desired(["ge0", "ge1"]);
        assert_eq!(plan_links(&desired, &k).unwrap(), vec![]);
        assert_eq!(plan_routes(&desired, &k).unwrap(), vec![]);
    }

    #[test]
    fn addresses_added_before_removed_and_link_local_kept() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired.links.insert(
            "ge0".into(),
            want_link(&["192.168.0.1/24", "192.168.5.1/24"], Some(1450)),
        );
        let ops = plan_links(&desired, &k).unwrap();
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "set mtu 1450 on ge0",
                "add address 192.168.5.1/24 to ge0",
                "delete address 10.0.0.1/24 from ge0",
            ]
        );
    }

    #[test]
    fn links_not_in_config_are_untouched() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired.links.insert("ge1".into(), want_link(&[], None));
        let ops = plan_links(&desired, &k).unwrap();
        assert!(
            ops.iter().all(|o| !o.to_string().contains("ge0")),
            "{ops:?}"
        );
        assert!(ops.contains(&Op::SetUp {
            link: "ge1".into(),
            index: 3,
            up: true
        }));
    }

    #[test]
    fn prefix_change_removes_first() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired.links.insert(
            "ge0".into(),
            want_link(&["192.168.0.1/25", "10.0.0.1/24"], None),
        );
        let text: Vec<String> = plan_links(&desired, &k)
            .unwrap()
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "delete address 192.168.0.1/24 from ge0",
                "add address 192.168.0.1/25 to ge0"
            ]
        );
    }

    #[test]
    fn missing_link_is_an_error() {
        let mut desired = DesiredState::default();
        desired.links.insert("ge7".into(), want_link(&[], None));
        assert_eq!(
            plan_links(&desired, &kernel()),
            Err(MissingLink("ge7".into()))
        );
    }

    #[test]
    fn stale_agent_routes_removed_new_ones_replaced() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired
            .routes
            .insert(droute("0.0.0.0/0", "172.16.0.1", Some("ge1")));
        let ops = plan_routes(&desired, &k).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(kroute("10.9.0.0/16", "192.168.0.254", 2)),
                Op::ReplaceRoute(kroute("0.0.0.0/0", "172.16.0.1", 3)),
            ]
        );
    }

    #[test]
    fn changed_gateway_is_replaced_not_deleted() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired
            .routes
            .insert(droute("10.9.0.0/16", "192.168.0.253", Some("ge0")));
        assert_eq!(
            plan_routes(&desired, &k).unwrap(),
            vec![Op::ReplaceRoute(kroute("10.9.0.0/16", "192.168.0.253", 2))]
        );
    }

    #[test]
    fn static_route_without_interface_matches_any_oif() {
        let k = kernel();
        let mut desired = DesiredState::default();
        desired
            .routes
            .insert(droute("10.9.0.0/16", "192.168.0.254", None));
        assert_eq!(plan_routes(&desired, &k).unwrap(), vec![]);
    }
}
