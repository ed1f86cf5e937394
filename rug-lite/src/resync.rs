//! Resync: list every router, and every server and port rug-lite owns, then mark each router
//! for a look (level-triggered: lost events are harmless). Routers that only rug-lite's tags
//! still name are orphans: marked for deletion, which the reconciler carries out.
//!
//! Orphan cleanup needs all three listings to have succeeded in the same pass: [`Listed`] can
//! only be made by [`list_all`], so a partial listing can never delete anything.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::cloud::{CloudError, Neutron, Nova, PortFilter, Server};
use crate::index::TopologyIndex;
use crate::neutron::{Port, Router};
use crate::ownership;
use crate::queue::{Intent, QueueHandle};
use crate::status::StatusTable;

/// A complete listing of routers, rug-lite's servers and rug-lite's ports.
pub(crate) struct Listed {
    routers: Vec<Router>,
    servers: Vec<Server>,
    ports: Vec<Port>,
}

pub(crate) async fn list_all<C: Neutron + Nova>(cloud: &C) -> Result<Listed, CloudError> {
    let routers = cloud.list_routers().await?;
    let servers = cloud.list_servers_tagged(ownership::OWNER_TAG).await?;
    let ports = cloud
        .list_ports(&PortFilter {
            tag: Some(ownership::OWNER_TAG.to_string()),
            ..PortFilter::default()
        })
        .await?;
    Ok(Listed {
        routers,
        servers,
        ports,
    })
}

/// What to mark: every router for a poll, every orphan for deletion.
pub(crate) fn plan(listed: &Listed) -> Vec<(String, Intent)> {
    let live: BTreeSet<&str> = listed.routers.iter().map(|r| r.id.as_str()).collect();
    let mut out: Vec<(String, Intent)> = live
        .iter()
        .map(|id| (id.to_string(), Intent::Poll))
        .collect();
    let owned: BTreeSet<String> = listed
        .servers
        .iter()
        .filter_map(|s| ownership::router_of_tags(s.tags.iter()))
        .chain(
            listed
                .ports
                .iter()
                .filter_map(|p| ownership::router_of_tags(p.tags.iter())),
        )
        .collect();
    out.extend(
        owned
            .into_iter()
            .filter(|id| !live.contains(id.as_str()))
            .map(|id| (id, Intent::Delete)),
    );
    out
}

/// One resync pass. At startup (`spread` set), polls are spread over that long so that a
/// restart does not hit every appliance at once; orphans are marked at once either way.
pub(crate) async fn resync<C: Neutron + Nova>(
    cloud: &C,
    queue: &QueueHandle,
    index: &TopologyIndex,
    status: &StatusTable,
    spread: Option<(Duration, &mut fastrand::Rng)>,
) -> Result<usize, CloudError> {
    let listed = list_all(cloud).await?;
    let marks = plan(&listed);
    let now = Instant::now();
    let mut spread = spread;
    for (id, intent) in &marks {
        if *intent == Intent::Poll {
            index.know(id);
            status.update(id, |_| {});
        }
        match (&mut spread, intent) {
            (Some((window, rng)), Intent::Poll) => {
                let offset = rng.u64(0..=window.as_millis() as u64);
                queue.mark_at(id, *intent, now + Duration::from_millis(offset));
            }
            _ => {
                queue.mark(id, *intent);
            }
        }
    }
    Ok(marks.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::tests::InMemoryCloud;
    use crate::events::{Lookup, RouterIndex};

    fn tagged_port(id: &str, router: &str) -> Port {
        Port {
            id: id.into(),
            network_id: "n".into(),
            tags: ownership::tags_for(router).to_vec(),
            ..Port::default()
        }
    }

    #[test]
    fn orphans_are_what_only_our_tags_still_name() {
        let listed = Listed {
            routers: vec![Router {
                id: "alive".into(),
                ..Router::default()
            }],
            servers: vec![
                Server {
                    id: "s1".into(),
                    name: "ak-router-alive".into(),
                    status: "ACTIVE".into(),
                    tags: ownership::tags_for("alive").to_vec(),
                },
                Server {
                    id: "s2".into(),
                    name: "ak-router-gone".into(),
                    status: "ACTIVE".into(),
                    tags: ownership::tags_for("gone").to_vec(),
                },
            ],
            ports: vec![
                tagged_port("p1", "alive"),
                tagged_port("p2", "gone-too"),
                // Carries a router tag without the owner tag: not ours, not an orphan.
                Port {
                    id: "p3".into(),
                    tags: vec![ownership::router_tag("stranger")],
                    ..Port::default()
                },
            ],
        };
        assert_eq!(
            plan(&listed),
            [
                ("alive".to_string(), Intent::Poll),
                ("gone".to_string(), Intent::Delete),
                ("gone-too".to_string(), Intent::Delete),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_listing_marks_nothing() {
        let cloud = InMemoryCloud::default();
        cloud.with(|s| {
            s.routers.insert(
                "r".into(),
                Router {
                    id: "r".into(),
                    ..Router::default()
                },
            );
            s.ports.insert("p".into(), tagged_port("p", "orphan"));
            s.fail.push("list_ports".into());
        });
        let (handle, mut rx) = QueueHandle::channel();
        let index = TopologyIndex::new("mgt");
        let status = StatusTable::default();
        assert!(resync(&cloud, &handle, &index, &status, None)
            .await
            .is_err());
        assert!(rx.try_recv().is_err(), "nothing marked, no orphan deleted");

        cloud.with(|s| s.fail.clear());
        let mut rng = fastrand::Rng::with_seed(5);
        let n = resync(
            &cloud,
            &handle,
            &index,
            &status,
            Some((Duration::from_secs(10), &mut rng)),
        )
        .await
        .unwrap();
        assert_eq!(n, 2);
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.router_id.as_str(), first.intent),
            ("r", Intent::Poll)
        );
        let at = first.at.expect("spread at startup");
        assert!(at <= Instant::now() + Duration::from_secs(10));
        let second = rx.try_recv().unwrap();
        assert_eq!(
            (second.router_id.as_str(), second.intent),
            ("orphan", Intent::Delete)
        );
        assert!(second.at.is_none(), "orphans are not delayed");
        // Known routers answer management-network lookups, and are listed as pending.
        let all = index.resolve(&Lookup::RoutersUsingNetwork {
            network_id: "mgt".into(),
        });
        assert!(all.contains("r"));
        assert!(status.get("r").is_some());
    }
}
