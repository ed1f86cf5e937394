//! NIC naming: every Ethernet NIC gets a stable `geN` name, keyed by its MAC and persisted, and
//! the kernel link is renamed to it. The API, the kernel and the firewall then share one
//! mapping (Astara kept two that disagreed after a hot-unplug or past ten NICs).
//!
//! Rules: a NIC seen before keeps its N for as long as it is present; a new NIC takes the
//! lowest N no present NIC holds, new NICs being numbered in ifindex (probe) order, so the
//! first NIC of a fresh VM is `ge0`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use crate::netlink::{format_mac, Link, Netlink, NetlinkError, ARPHRD_ETHER};
use crate::store;

/// Software links that carry Ethernet frames but are not NICs of the appliance.
const NOT_NICS: &[&str] = &[
    "bridge",
    "bond",
    "team",
    "vlan",
    "macvlan",
    "macvtap",
    "ipvlan",
    "vxlan",
    "geneve",
    "dummy",
    "gretap",
    "ip6gretap",
    "tun",
    "tap",
    "wireguard",
    "ifb",
];

/// A NIC as the rest of the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nic {
    pub(crate) ifname: String,
    pub(crate) index: u32,
    pub(crate) mac: String,
}

pub(crate) fn is_nic(link: &Link) -> bool {
    link.link_type == ARPHRD_ETHER
        && link.mac.is_some()
        && !link.kind.as_deref().is_some_and(|k| NOT_NICS.contains(&k))
}

/// MAC → N. `present` lists the MACs of the NICs now present, in ifindex order.
pub(crate) fn assign(records: &BTreeMap<String, u32>, present: &[String]) -> BTreeMap<String, u32> {
    let mut out = records.clone();
    let held: BTreeSet<u32> = present
        .iter()
        .filter_map(|mac| records.get(mac).copied())
        .collect();
    let mut taken = held;
    for mac in present {
        if records.contains_key(mac) {
            continue;
        }
        let n = (0..).find(|n| !taken.contains(n)).expect("unbounded");
        taken.insert(n);
        // The N may have belonged to a NIC that is gone: it is now this one's.
        out.retain(|_, v| *v != n);
        out.insert(mac.clone(), n);
    }
    out
}

/// Renames that give each link index its wanted name. When a wanted name is held by another
/// link that is itself being renamed (two NICs swapping names), every rename goes through a
/// temporary name first.
pub(crate) fn plan_renames(
    links: &[Link],
    wanted: &BTreeMap<u32, String>,
) -> Result<Vec<(u32, String)>, String> {
    let moves: Vec<(u32, String)> = wanted
        .iter()
        .filter(|(index, name)| links.iter().any(|l| l.index == **index && &l.name != *name))
        .map(|(i, n)| (*i, n.clone()))
        .collect();
    let moving: BTreeSet<u32> = moves.iter().map(|(i, _)| *i).collect();
    let mut conflict = false;
    for (index, name) in &moves {
        if let Some(holder) = links.iter().find(|l| &l.name == name && l.index != *index) {
            if moving.contains(&holder.index) {
                conflict = true;
            } else {
                return Err(format!(
                    "cannot name a NIC {name}: link {} (index {}) already has that name",
                    holder.name, holder.index
                ));
            }
        }
    }
    if !conflict {
        return Ok(moves);
    }
    let mut plan: Vec<(u32, String)> = moves
        .iter()
        .map(|(i, _)| (*i, format!("aktmp{i}")))
        .collect();
    plan.extend(moves);
    Ok(plan)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NamingError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("NIC names file {path}: {source}")]
    Store { path: String, source: io::Error },
    #[error("{0}")]
    Conflict(String),
}

/// Reads the links, names every NIC `geN` (renaming kernel links where needed, persisting new
/// assignments) and returns the NICs in N order. Performs no write when nothing changed.
pub(crate) async fn name_nics(nl: &Netlink, records_path: &Path) -> Result<Vec<Nic>, NamingError> {
    let store_err = |source| NamingError::Store {
        path: records_path.display().to_string(),
        source,
    };
    let records: BTreeMap<String, u32> =
        match store::read_optional(records_path).map_err(store_err)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "NIC names file unreadable; numbering NICs afresh");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
    let mut links = nl.links().await?;
    links.sort_by_key(|l| l.index);
    let nics: Vec<&Link> = links.iter().filter(|l| is_nic(l)).collect();
    let macs: Vec<String> = nics
        .iter()
        .map(|l| format_mac(&l.mac.expect("a NIC has a MAC")))
        .collect();
    let assigned = assign(&records, &macs);
    if assigned != records {
        let json = serde_json::to_vec_pretty(&assigned).expect("a map serialises");
        store::write_atomic(records_path, &json).map_err(store_err)?;
    }
    let wanted: BTreeMap<u32, String> = nics
        .iter()
        .zip(&macs)
        .map(|(l, mac)| (l.index, format!("ge{}", assigned[mac])))
        .collect();
    for (index, name) in plan_renames(&links, &wanted).map_err(NamingError::Conflict)? {
        tracing::info!(index, name, "renaming NIC");
        nl.set_link_name(index, &name).await?;
    }
    let mut out: Vec<Nic> = nics
        .iter()
        .zip(macs)
        .map(|(l, mac)| Nic {
            ifname: wanted[&l.index].clone(),
            index: l.index,
            mac,
        })
        .collect();
    out.sort_by_key(|n| ge_number(&n.ifname));
    Ok(out)
}

/// `ge12` → 12 (for numeric ordering: ge2 before ge10); names that are not `geN` last.
pub(crate) fn ge_number(ifname: &str) -> u32 {
    ifname
        .parse::<akanda_model::NicName>()
        .map(|n| u32::from(n.index()))
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn macs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            up: true,
            oper_up: true,
            link_type: ARPHRD_ETHER,
            kind: None,
        }
    }

    #[test]
    fn first_boot_numbers_in_probe_order() {
        let got = assign(&BTreeMap::new(), &macs(&["a", "b", "c"]));
        assert_eq!(
            got,
            BTreeMap::from([("a".into(), 0), ("b".into(), 1), ("c".into(), 2)])
        );
    }

    #[test]
    fn known_nics_keep_their_number_and_new_ones_fill_gaps() {
        let records = BTreeMap::from([("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]);
        // b was unplugged, d plugged in: d takes 1; a and c keep theirs.
        let got = assign(&records, &macs(&["a", "c", "d"]));
        assert_eq!(got["a"], 0);
        assert_eq!(got["c"], 2);
        assert_eq!(got["d"], 1);
        assert!(!got.contains_key("b"));
        // Probe order changed after a reboot: numbers stay with the MACs.
        assert_eq!(assign(&got, &macs(&["d", "c", "a"])), got);
    }

    #[test]
    fn eleven_nics_sort_numerically() {
        let list: Vec<String> = (0..11).map(|i| format!("m{i:02}")).collect();
        let got = assign(&BTreeMap::new(), &list);
        assert_eq!(got["m10"], 10);
        let mut names: Vec<String> = got.values().map(|n| format!("ge{n}")).collect();
        names.sort_by_key(|n| ge_number(n));
        assert_eq!(names[2], "ge2");
        assert_eq!(names[10], "ge10");
    }

    #[test]
    fn renames_direct_when_no_conflict() {
        let links = vec![link(2, "eth0"), link(3, "ge1")];
        let wanted = BTreeMap::from([(2, "ge0".to_string()), (3, "ge1".to_string())]);
        assert_eq!(
            plan_renames(&links, &wanted).unwrap(),
            vec![(2, "ge0".into())]
        );
    }

    #[test]
    fn swapped_names_go_through_temporary_names() {
        let links = vec![link(2, "ge1"), link(3, "ge0")];
        let wanted = BTreeMap::from([(2, "ge0".to_string()), (3, "ge1".to_string())]);
        assert_eq!(
            plan_renames(&links, &wanted).unwrap(),
            vec![
                (2, "aktmp2".into()),
                (3, "aktmp3".into()),
                (2, "ge0".into()),
                (3, "ge1".into())
            ]
        );
    }

    #[test]
    fn a_non_nic_holding_the_name_is_an_error() {
        let mut bridge = link(9, "ge0");
        bridge.kind = Some("bridge".into());
        let links = vec![link(2, "eth0"), bridge];
        let wanted = BTreeMap::from([(2, "ge0".to_string())]);
        assert!(plan_renames(&links, &wanted).is_err());
    }

    #[test]
    fn what_counts_as_a_nic() {
        let mut l = link(2, "eth0");
        assert!(is_nic(&l));
        l.kind = Some("veth".into());
        assert!(is_nic(&l));
        l.kind = Some("bridge".into());
        assert!(!is_nic(&l));
        let mut lo = link(1, "lo");
        lo.link_type = 772;
        assert!(!is_nic(&lo));
    }
}
