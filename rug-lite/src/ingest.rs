//! One AMQP message → marks on the work queue. The AMQP consumer (lapin) calls [`dispatch`]
//! for each delivery and acknowledges it afterwards whatever the result: a message that cannot
//! be understood is logged and dropped, since the resync catches up anyway.

use crate::events::{self, Classified, EventError, RouterIndex};
use crate::queue::QueueHandle;

/// Returns how many routers were marked.
pub(crate) fn dispatch(
    body: &[u8],
    index: &impl RouterIndex,
    queue: &QueueHandle,
) -> Result<usize, EventError> {
    let n = events::parse_notification(body)?;
    match events::classify(&n)? {
        Classified::Ignored(why) => {
            tracing::trace!(event = %n.event_type, why, "ignored");
            Ok(0)
        }
        Classified::Affects(impact) => {
            let routers = impact.resolve(index);
            for (id, intent) in &routers {
                tracing::debug!(event = %n.event_type, router = %id, ?intent, "marked");
                queue.mark(id, *intent);
            }
            Ok(routers.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::RouterSnapshot;
    use crate::index::TopologyIndex;
    use crate::neutron::{Port, Router};
    use crate::queue::Intent;

    #[test]
    fn a_port_event_marks_the_router_with_an_interface_on_its_network() {
        let index = TopologyIndex::new("mgt");
        index.record(
            &RouterSnapshot {
                router: Router {
                    id: "r-with-iface".into(),
                    ..Router::default()
                },
                router_ports: vec![Port {
                    id: "if".into(),
                    network_id: "80bdc9f8-dd51-4350-bf5d-e9c0eb227563".into(),
                    device_owner: "network:router_interface".into(),
                    ..Port::default()
                }],
                ..RouterSnapshot::default()
            },
            &[],
        );
        let (handle, mut rx) = QueueHandle::channel();
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/neutron-notifications/port.delete.end.json"),
        )
        .unwrap();
        assert_eq!(dispatch(&body, &index, &handle), Ok(1));
        let m = rx.try_recv().unwrap();
        assert_eq!(
            (m.router_id.as_str(), m.intent),
            ("r-with-iface", Intent::Update)
        );
        assert!(dispatch(b"garbage", &index, &handle).is_err());
        assert!(rx.try_recv().is_err());
    }
}
