//! What `rug-lite router list|show` reports: one record per router, written by the reconciler
//! and the queue driver, read by the admin socket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RouterState {
    /// Known, not reconciled yet.
    Pending,
    /// A server is booting; its agent does not answer yet.
    Booting,
    /// The agent answers, but does not hold the config Neutron's state produces (a push or a
    /// hot-plug is under way).
    Up,
    /// The appliance holds the config that Neutron's current state produces.
    Configured,
    /// The last reconcile failed (see `last_error`); it is retried with backoff.
    Error,
    /// The router is gone; its server and ports are being deleted.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RouterStatus {
    pub router_id: String,
    pub state: RouterState,
    pub server_id: Option<String>,
    pub management_address: Option<String>,
    /// As the appliance reports it (`GET /v1/status`).
    pub config_hash: Option<String>,
    /// RFC 3339.
    pub last_push: Option<String>,
    pub last_error: Option<String>,
    /// Consecutive failed reconciles (the work queue's count; 0 after a success).
    pub failures: u32,
    /// `failures` reached `scheduler.error_threshold`: retries wait `scheduler.error_cooldown`.
    pub in_error: bool,
}

impl RouterStatus {
    fn new(router_id: &str) -> Self {
        RouterStatus {
            router_id: router_id.to_string(),
            state: RouterState::Pending,
            server_id: None,
            management_address: None,
            config_hash: None,
            last_push: None,
            last_error: None,
            failures: 0,
            in_error: false,
        }
    }
}

/// Shared, cheap to clone; the lock is never held across an await.
#[derive(Clone, Default)]
pub(crate) struct StatusTable {
    inner: Arc<Mutex<BTreeMap<String, RouterStatus>>>,
}

impl StatusTable {
    pub(crate) fn update(&self, router_id: &str, f: impl FnOnce(&mut RouterStatus)) {
        let mut map = self.inner.lock().expect("status lock");
        f(map
            .entry(router_id.to_string())
            .or_insert_with(|| RouterStatus::new(router_id)));
    }

    pub(crate) fn remove(&self, router_id: &str) {
        self.inner.lock().expect("status lock").remove(router_id);
    }

    pub(crate) fn list(&self) -> Vec<RouterStatus> {
        self.inner
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn get(&self, router_id: &str) -> Option<RouterStatus> {
        self.inner
            .lock()
            .expect("status lock")
            .get(router_id)
            .cloned()
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_serialise_with_the_issue_fields() {
        let table = StatusTable::default();
        table.update("r1", |s| {
            s.state = RouterState::Configured;
            s.last_push = Some(rfc3339(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            ));
        });
        let v = serde_json::to_value(table.get("r1").unwrap()).unwrap();
        assert_eq!(v["state"], "configured");
        assert_eq!(v["last_push"], "2026-11-18T11:06:40Z");
        for key in [
            "router_id",
            "server_id",
            "management_address",
            "config_hash",
            "last_error",
            "failures",
            "in_error",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        table.remove("r1");
        assert!(table.list().is_empty());
    }
}
