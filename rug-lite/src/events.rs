//! Neutron notifications → the routers they affect. Pure: no I/O.
//!
//! Events are only hints (the reconciler is level-triggered), so the question answered here is
//! "which routers might now need a different config?". Where the payload names the router, the
//! answer is direct; otherwise it is a [`Lookup`] answered by a [`RouterIndex`] built from what
//! the reconcilers last read from Neutron. A floating IP moved between routers is the case that
//! needs both: the payload names only the new router, the index remembers the previous one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::neutron::owner;
use crate::ownership;
use crate::queue::Intent;

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum EventError {
    #[error("the message is not JSON: {0}")]
    NotJson(String),
    #[error("the message is not a JSON object")]
    NotObject,
    #[error("unsupported oslo.version {0:?} (only 2.0 is known)")]
    UnsupportedVersion(String),
    #[error("oslo.message is not a string holding a JSON object: {0}")]
    BadInnerMessage(String),
    #[error("the message has no event_type")]
    NoEventType,
    #[error("{event_type}: the payload has no {what}")]
    MissingField {
        event_type: String,
        what: &'static str,
    },
}

/// One oslo notification, unwrapped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notification {
    pub event_type: String,
    pub payload: Value,
    pub message_id: Option<String>,
}

/// Parses an AMQP body in either oslo format: the 2.0 envelope
/// `{"oslo.version": "2.0", "oslo.message": "<JSON string>"}`, or the legacy unwrapped message
/// with `event_type` and `payload` at the top level.
pub(crate) fn parse_notification(body: &[u8]) -> Result<Notification, EventError> {
    let outer: Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let Value::Object(outer) = outer else {
        return Err(EventError::NotObject);
    };
    let message = match outer.get("oslo.message") {
        None => outer,
        Some(inner) => {
            match outer.get("oslo.version").and_then(Value::as_str) {
                Some("2.0") => {}
                other => {
                    return Err(EventError::UnsupportedVersion(
                        other.unwrap_or("(none)").to_string(),
                    ))
                }
            }
            let text = inner.as_str().ok_or_else(|| {
                EventError::BadInnerMessage("oslo.message is not a string".into())
            })?;
            match serde_json::from_str(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(EventError::BadInnerMessage("not an object".into())),
                Err(e) => return Err(EventError::BadInnerMessage(e.to_string())),
            }
        }
    };
    let event_type = message
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or(EventError::NoEventType)?
        .to_string();
    Ok(Notification {
        event_type,
        payload: message.get("payload").cloned().unwrap_or(Value::Null),
        message_id: message
            .get("message_id")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// A question about Neutron's topology that the payload alone cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lookup {
    /// Routers with an interface on this network: a port there is one of their DHCP
    /// allocations, or the fixed port of one of their floating IPs.
    RoutersWithInterfaceOn { network_id: String },
    /// Routers whose config includes this network in any role (interface, gateway; every
    /// router for the management network): its subnets or MTU are in their configs.
    RoutersUsingNetwork { network_id: String },
    /// Routers whose config includes this subnet.
    RoutersUsingSubnet { subnet_id: String },
    /// The router that held this floating IP when it was last reconciled.
    RouterHoldingFloatingIp { floatingip_id: String },
    /// The router whose appliance uses this port (rug-lite's own ports).
    RouterOwningPort { port_id: String },
}

/// Answers [`Lookup`]s from what rug-lite last read from Neutron.
pub(crate) trait RouterIndex {
    fn resolve(&self, lookup: &Lookup) -> BTreeSet<String>;
}

/// What one notification means for the routers.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Impact {
    /// Routers the payload names.
    pub direct: BTreeMap<String, Intent>,
    /// Routers to find through the index.
    pub lookups: Vec<(Lookup, Intent)>,
}

impl Impact {
    fn router(&mut self, id: &str, intent: Intent) {
        if id.is_empty() {
            return;
        }
        let slot = self.direct.entry(id.to_string()).or_insert(intent);
        *slot = (*slot).max(intent);
    }

    fn lookup(&mut self, lookup: Lookup, intent: Intent) {
        if !self.lookups.iter().any(|(l, _)| *l == lookup) {
            self.lookups.push((lookup, intent));
        }
    }

    /// Every affected router with its strongest intent.
    pub(crate) fn resolve(&self, index: &impl RouterIndex) -> BTreeMap<String, Intent> {
        let mut out = self.direct.clone();
        for (lookup, intent) in &self.lookups {
            for id in index.resolve(lookup) {
                let slot = out.entry(id).or_insert(*intent);
                *slot = (*slot).max(*intent);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Classified {
    /// Cannot change any router's config (with the reason, for debug logs).
    Ignored(&'static str),
    Affects(Impact),
}

/// Maps a notification to the routers it affects.
pub(crate) fn classify(n: &Notification) -> Result<Classified, EventError> {
    let et = n.event_type.as_str();
    // `.start` events come before the change is made (and alone when the call fails).
    if et.ends_with(".start") {
        return Ok(Classified::Ignored(
            "a .start event: nothing has changed yet",
        ));
    }
    let missing = |what: &'static str| EventError::MissingField {
        event_type: n.event_type.clone(),
        what,
    };
    let p = &n.payload;
    let mut impact = Impact::default();
    match et {
        "router.create.end" | "router.update.end" | "router.delete.end" => {
            let intent = match et {
                "router.create.end" => Intent::Create,
                "router.delete.end" => Intent::Delete,
                _ => Intent::Update,
            };
            let id = str_at(p, &["router", "id"])
                .or_else(|| str_at(p, &["router_id"]))
                .ok_or_else(|| missing("router.id"))?;
            impact.router(id, intent);
        }
        "router.interface.create" | "router.interface.delete" => {
            // Real Neutron says `router_interface`; Astara expected `router.interface`.
            let body = p
                .get("router_interface")
                .or_else(|| p.get("router.interface"))
                .ok_or_else(|| missing("router_interface"))?;
            let id = str_at(body, &["id"]).ok_or_else(|| missing("router_interface.id"))?;
            impact.router(id, Intent::Update);
        }
        "port.create.end" | "port.update.end" | "port.delete.end" => {
            let port = p.get("port").ok_or_else(|| missing("port"))?;
            let port_id = str_at(port, &["id"])
                .or_else(|| str_at(p, &["port_id"]))
                .ok_or_else(|| missing("port.id"))?;
            let device_owner = str_at(port, &["device_owner"]).unwrap_or("");
            if owner::is_router_port(device_owner) {
                if let Some(router) = str_at(port, &["device_id"]) {
                    impact.router(router, Intent::Update);
                }
            }
            if let Some(tags) = port.get("tags").and_then(Value::as_array) {
                let tags: Vec<String> = tags
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                if let Some(router) = ownership::router_of_tags(tags.iter()) {
                    impact.router(&router, Intent::Update);
                }
            }
            if let Some(network_id) = str_at(port, &["network_id"]) {
                impact.lookup(
                    Lookup::RoutersWithInterfaceOn {
                        network_id: network_id.to_string(),
                    },
                    Intent::Update,
                );
            }
            impact.lookup(
                Lookup::RouterOwningPort {
                    port_id: port_id.to_string(),
                },
                Intent::Update,
            );
        }
        "subnet.create.end" | "subnet.update.end" | "subnet.delete.end" => {
            let subnet = p.get("subnet").ok_or_else(|| missing("subnet"))?;
            let network_id =
                str_at(subnet, &["network_id"]).ok_or_else(|| missing("subnet.network_id"))?;
            impact.lookup(
                Lookup::RoutersUsingNetwork {
                    network_id: network_id.to_string(),
                },
                Intent::Update,
            );
            if let Some(id) = str_at(subnet, &["id"]).or_else(|| str_at(p, &["subnet_id"])) {
                impact.lookup(
                    Lookup::RoutersUsingSubnet {
                        subnet_id: id.to_string(),
                    },
                    Intent::Update,
                );
            }
        }
        "floatingip.create.end" | "floatingip.update.end" | "floatingip.delete.end" => {
            let fip = p.get("floatingip").ok_or_else(|| missing("floatingip"))?;
            let id = str_at(fip, &["id"])
                .or_else(|| str_at(p, &["floatingip_id"]))
                .ok_or_else(|| missing("floatingip.id"))?;
            if let Some(router) = str_at(fip, &["router_id"]) {
                impact.router(router, Intent::Update);
            }
            // Disassociation (router_id null) and reassociation name only the new state.
            impact.lookup(
                Lookup::RouterHoldingFloatingIp {
                    floatingip_id: id.to_string(),
                },
                Intent::Update,
            );
        }
        "network.update.end" | "network.delete.end" => {
            let id = str_at(p, &["network", "id"])
                .or_else(|| str_at(p, &["network_id"]))
                .ok_or_else(|| missing("network.id"))?;
            impact.lookup(
                Lookup::RoutersUsingNetwork {
                    network_id: id.to_string(),
                },
                Intent::Update,
            );
        }
        "network.create.end" => {
            return Ok(Classified::Ignored(
                "a new network has no router interface yet",
            ))
        }
        _ if et.starts_with("routerstatus.") || et.starts_with("loadbalancerstatus.") => {
            return Ok(Classified::Ignored("Astara's own status echo"))
        }
        _ => return Ok(Classified::Ignored("not an event that can change a router")),
    }
    Ok(Classified::Affects(impact))
}

/// A non-empty string at `path`.
fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const ROUTER: &str = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";
    const TENANT_NET: &str = "80bdc9f8-dd51-4350-bf5d-e9c0eb227563";
    const EXT_NET: &str = "46275661-5a83-4948-8741-45a8c9edeca4";
    const FIP: &str = "ffc0be6e-30c5-4864-9046-5b029b3a5be8";
    const VM_PORT: &str = "3f388e54-c7b2-4692-a6ac-78474e19c43d";
    const KS_ROUTER: &str = "be9a04e6-6297-4662-8504-20c28a06baff";
    const KS_NET: &str = "0adad810-5df3-4f67-a79d-06322832f7f0";

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neutron-notifications")
    }

    fn sample(rel: &str) -> Vec<u8> {
        std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Answers every lookup with a distinct fake router named after the question, so tests see
    /// exactly which lookups an event asked for.
    struct LookupEchoIndex;
    impl RouterIndex for LookupEchoIndex {
        fn resolve(&self, lookup: &Lookup) -> BTreeSet<String> {
            let name = match lookup {
                Lookup::RoutersWithInterfaceOn { network_id } => format!("iface-on:{network_id}"),
                Lookup::RoutersUsingNetwork { network_id } => format!("using-net:{network_id}"),
                Lookup::RoutersUsingSubnet { subnet_id } => format!("using-subnet:{subnet_id}"),
                Lookup::RouterHoldingFloatingIp { floatingip_id } => {
                    format!("held-fip:{floatingip_id}")
                }
                Lookup::RouterOwningPort { port_id } => format!("owns-port:{port_id}"),
            };
            BTreeSet::from([name])
        }
    }

    enum Expect {
        Ignored,
        /// (router or echoed lookup, intent), complete.
        Routers(Vec<(String, Intent)>),
    }
    use Expect::*;

    fn r(id: &str, i: Intent) -> (String, Intent) {
        (id.to_string(), i)
    }

    /// The expected outcome for every sample, by file. The test fails if a sample file has no
    /// entry, so a new capture cannot go untested.
    fn expectations() -> Vec<(&'static str, Expect)> {
        use Intent::*;
        let iface_on = |n: &str| format!("iface-on:{n}");
        let using_net = |n: &str| format!("using-net:{n}");
        let using_subnet = |s: &str| format!("using-subnet:{s}");
        let held = |f: &str| format!("held-fip:{f}");
        let owns = |p: &str| format!("owns-port:{p}");
        let ext_subnet = "daea1d81-ac44-4440-8f8d-896f374988ac";
        let tenant_subnet = "5254b646-329c-4558-b3af-aa92d7be9f46";
        let nova_port = "ba0451fd-38ca-445e-8c9b-903a475d89ab";
        let ks_port = "c61cf34d-007b-4d6a-a95e-6269cc8521a4";
        let nova_fip = "edde509a-00a7-4e15-b610-646ab782f59e";
        let ks_fip = "41d3126d-6392-4bdd-8e47-0132323210c4";
        vec![
            ("floatingip.create.start.json", Ignored),
            ("floatingip.update.start.json", Ignored),
            ("floatingip.delete.start.json", Ignored),
            (
                "floatingip.create.end.json",
                Routers(vec![r(ROUTER, Update), r(&held(FIP), Update)]),
            ),
            // Disassociation: router_id is null; only the index knows the previous router.
            (
                "floatingip.update.end.json",
                Routers(vec![r(&held(FIP), Update)]),
            ),
            (
                "floatingip.update.end__fip-reassociate.json",
                Routers(vec![r(ROUTER, Update), r(&held(FIP), Update)]),
            ),
            (
                "floatingip.delete.end.json",
                Routers(vec![r(ROUTER, Update), r(&held(FIP), Update)]),
            ),
            ("network.create.start.json", Ignored),
            ("network.create.end.json", Ignored),
            ("network.delete.start.json", Ignored),
            (
                "network.delete.end.json",
                Routers(vec![r(&using_net(TENANT_NET), Update)]),
            ),
            ("port.create.start.json", Ignored),
            ("port.update.start.json", Ignored),
            ("port.delete.start.json", Ignored),
            (
                "port.create.end.json",
                Routers(vec![
                    r(&iface_on(TENANT_NET), Update),
                    r(&owns(VM_PORT), Update),
                ]),
            ),
            (
                "port.update.end.json",
                Routers(vec![
                    r(&iface_on(TENANT_NET), Update),
                    r(&owns(VM_PORT), Update),
                ]),
            ),
            (
                "port.delete.end.json",
                Routers(vec![
                    r(&iface_on(TENANT_NET), Update),
                    r(&owns(VM_PORT), Update),
                ]),
            ),
            ("router.create.start.json", Ignored),
            ("router.update.start.json", Ignored),
            ("router.delete.start.json", Ignored),
            ("router.create.end.json", Routers(vec![r(ROUTER, Create)])),
            ("router.update.end.json", Routers(vec![r(ROUTER, Update)])),
            (
                "router.update.end__router-clear-routes.json",
                Routers(vec![r(ROUTER, Update)]),
            ),
            (
                "router.update.end__router-gw-set.json",
                Routers(vec![r(ROUTER, Update)]),
            ),
            (
                "router.update.end__router-update-routes.json",
                Routers(vec![r(ROUTER, Update)]),
            ),
            ("router.delete.end.json", Routers(vec![r(ROUTER, Delete)])),
            (
                "router.interface.create.json",
                Routers(vec![r(ROUTER, Update)]),
            ),
            (
                "router.interface.delete.json",
                Routers(vec![r(ROUTER, Update)]),
            ),
            ("subnet.create.start.json", Ignored),
            ("subnet.delete.start.json", Ignored),
            (
                "subnet.create.end.json",
                Routers(vec![
                    r(&using_net(EXT_NET), Update),
                    r(&using_subnet(ext_subnet), Update),
                ]),
            ),
            (
                "subnet.delete.end.json",
                Routers(vec![
                    r(&using_net(TENANT_NET), Update),
                    r(&using_subnet(tenant_subnet), Update),
                ]),
            ),
            ("keystone-auth/floatingip.create.start.json", Ignored),
            (
                "keystone-auth/floatingip.create.end.json",
                Routers(vec![r(KS_ROUTER, Update), r(&held(ks_fip), Update)]),
            ),
            ("keystone-auth/network.create.start.json", Ignored),
            ("keystone-auth/network.create.end.json", Ignored),
            ("keystone-auth/port.create.start.json", Ignored),
            (
                "keystone-auth/port.create.end.json",
                Routers(vec![
                    r(&iface_on(KS_NET), Update),
                    r(&owns(ks_port), Update),
                ]),
            ),
            ("keystone-auth/router.create.start.json", Ignored),
            (
                "keystone-auth/router.create.end.json",
                Routers(vec![r(KS_ROUTER, Create)]),
            ),
            (
                "keystone-auth/router.interface.create.json",
                Routers(vec![r(KS_ROUTER, Update)]),
            ),
            ("keystone-auth/router.update.start.json", Ignored),
            (
                "keystone-auth/router.update.end.json",
                Routers(vec![r(KS_ROUTER, Update)]),
            ),
            ("keystone-auth/subnet.create.start.json", Ignored),
            (
                "keystone-auth/subnet.create.end.json",
                Routers(vec![
                    r(&using_net(KS_NET), Update),
                    r(
                        &using_subnet("b34564bd-3121-4fb8-acf4-2e82510eb448"),
                        Update,
                    ),
                ]),
            ),
            (
                "nova-boot/neutron.floatingip.update.end.json",
                Routers(vec![r(KS_ROUTER, Update), r(&held(nova_fip), Update)]),
            ),
            (
                "nova-boot/neutron.port.create.end.json",
                Routers(vec![
                    r(&iface_on(KS_NET), Update),
                    r(&owns(nova_port), Update),
                ]),
            ),
            (
                "nova-boot/neutron.port.update.end.json",
                Routers(vec![
                    r(&iface_on(KS_NET), Update),
                    r(&owns(nova_port), Update),
                ]),
            ),
            // A deleted VM port releases its floating IP with no floatingip event: the
            // interface lookup is what reaches the router.
            (
                "nova-boot/neutron.port.delete.end.json",
                Routers(vec![
                    r(&iface_on(KS_NET), Update),
                    r(&owns(nova_port), Update),
                ]),
            ),
            (
                "nova-boot/nova.notifications.compute.instance.create.end.json",
                Ignored,
            ),
            (
                "nova-boot/nova.notifications.compute.instance.delete.end.json",
                Ignored,
            ),
            (
                "nova-boot/nova.versioned_notifications.instance.create.end.json",
                Ignored,
            ),
            (
                "nova-boot/nova.versioned_notifications.instance.delete.end.json",
                Ignored,
            ),
        ]
    }

    fn outcome(body: &[u8]) -> Expect {
        let n = parse_notification(body).expect("parses");
        match classify(&n).expect("classifies") {
            Classified::Ignored(_) => Ignored,
            Classified::Affects(impact) => {
                Routers(impact.resolve(&LookupEchoIndex).into_iter().collect())
            }
        }
    }

    fn assert_expected(name: &str, got: Expect, want: &Expect) {
        match (got, want) {
            (Ignored, Ignored) => {}
            (Routers(g), Routers(w)) => {
                let mut w = w.clone();
                w.sort();
                assert_eq!(g, w, "{name}");
            }
            (Ignored, Routers(w)) => panic!("{name}: ignored, expected {w:?}"),
            (Routers(g), Ignored) => panic!("{name}: expected ignored, got {g:?}"),
        }
    }

    fn sample_files() -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["", "keystone-auth", "nova-boot"] {
            for e in std::fs::read_dir(fixtures().join(dir)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".json") {
                    out.push(if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_sample_file_maps_to_its_expected_routers() {
        let table = expectations();
        let files = sample_files();
        assert!(files.len() >= 50, "fixtures missing: {files:?}");
        for f in &files {
            let (_, want) = table
                .iter()
                .find(|(name, _)| name == f)
                .unwrap_or_else(|| panic!("{f} has no expectation"));
            assert_expected(f, outcome(&sample(f)), want);
        }
        assert_eq!(table.len(), files.len(), "expectations for missing files");
    }

    /// The legacy format is the inner message at the top level; each sample, unwrapped, must
    /// mean exactly the same.
    #[test]
    fn legacy_unwrapped_form_of_every_sample_means_the_same() {
        for (f, want) in expectations() {
            let outer: Value = serde_json::from_slice(&sample(f)).unwrap();
            let inner = outer["oslo.message"].as_str().expect("2.0 envelope");
            let legacy = inner.as_bytes();
            assert!(parse_notification(legacy).is_ok());
            assert_expected(f, outcome(legacy), &want);
        }
    }

    /// Every message of the captured sequences (including nova's exchange) parses, the event
    /// type matches the capture's label, and classification never errors.
    #[test]
    fn every_captured_message_in_the_jsonl_sequences_parses_and_classifies() {
        let mut count = 0;
        for f in [
            "all-messages-noauth.jsonl",
            "nova-boot/all-neutron-messages-during-boot-fip-delete.jsonl",
            "nova-boot/all-nova-exchange-messages.jsonl",
        ] {
            let text = String::from_utf8(sample(f)).unwrap();
            for line in text.lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                let body = record["raw_body"].as_str().unwrap();
                let n = parse_notification(body.as_bytes()).unwrap();
                assert_eq!(n.event_type, record["event_type"].as_str().unwrap());
                assert!(n.message_id.is_some());
                classify(&n).unwrap_or_else(|e| panic!("{f}: {e}"));
                count += 1;
            }
        }
        assert_eq!(count, 44 + 10 + 17);
    }

    #[test]
    fn legacy_router_interface_key_is_accepted() {
        let body = serde_json::json!({
            "event_type": "router.interface.delete",
            "payload": {"router.interface": {"id": "r9", "port_id": "p", "subnet_id": "s"}}
        });
        let n = parse_notification(body.to_string().as_bytes()).unwrap();
        let Classified::Affects(impact) = classify(&n).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(
            impact.direct,
            BTreeMap::from([("r9".to_string(), Intent::Update)])
        );
    }

    #[test]
    fn router_ports_and_rug_lite_ports_name_their_router_directly() {
        let gw = serde_json::json!({"event_type": "port.update.end", "payload": {"port": {
            "id": "p1", "network_id": "ext", "device_owner": "network:router_gateway",
            "device_id": "r1", "tags": []}}});
        let ours = serde_json::json!({"event_type": "port.delete.end", "payload": {"port": {
            "id": "p2", "network_id": "n", "device_owner": "compute:nova", "device_id": "vm",
            "tags": ["rug-lite", "rug-lite-router:r2"]}, "port_id": "p2"}});
        for (body, router) in [(gw, "r1"), (ours, "r2")] {
            let n = parse_notification(body.to_string().as_bytes()).unwrap();
            let Classified::Affects(impact) = classify(&n).unwrap() else {
                panic!("ignored")
            };
            assert_eq!(impact.direct.get(router), Some(&Intent::Update));
        }
    }

    #[test]
    fn intents_merge_to_the_strongest_per_router() {
        let mut impact = Impact::default();
        impact.router("r", Intent::Update);
        impact.router("r", Intent::Delete);
        impact.router("r", Intent::Create);
        assert_eq!(impact.direct["r"], Intent::Delete);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let cases: Vec<(&[u8], EventError)> = vec![
            (b"not json", EventError::NotJson(String::new())),
            (b"[1]", EventError::NotObject),
            (
                br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#,
                EventError::UnsupportedVersion("3.0".into()),
            ),
            (
                br#"{"oslo.version": "2.0", "oslo.message": 5}"#,
                EventError::BadInnerMessage(String::new()),
            ),
            (br#"{"payload": {}}"#, EventError::NoEventType),
        ];
        for (body, want) in cases {
            let got = parse_notification(body).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{got}"
            );
        }
        let n =
            parse_notification(br#"{"event_type": "router.update.end", "payload": {}}"#).unwrap();
        assert!(matches!(
            classify(&n),
            Err(EventError::MissingField {
                what: "router.id",
                ..
            })
        ));
    }

    /// The copies under tests/fixtures must be the shared conformance samples, byte for byte.
    #[test]
    fn fixture_copies_equal_the_shared_conformance_samples() {
        // The shared folder sits beside the repository; a lone clone skips this comparison.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared")
            .join("conformance")
            .join("neutron-notifications");
        if !shared.is_dir() {
            eprintln!(
                "skipped: {} is absent, cannot compare the fixture copies",
                shared.display()
            );
            return;
        }
        // Every shared file has an identical copy (so a new capture is noticed here too).
        let mut compared = 0;
        for dir in ["", "keystone-auth", "nova-boot"] {
            for e in std::fs::read_dir(shared.join(dir)).unwrap() {
                let e = e.unwrap();
                if !e.file_type().unwrap().is_file() {
                    continue;
                }
                let name = e.file_name().into_string().unwrap();
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let theirs = std::fs::read(e.path()).unwrap();
                let ours = std::fs::read(fixtures().join(&rel))
                    .unwrap_or_else(|_| panic!("{rel} has no copy under tests/fixtures"));
                assert!(ours == theirs, "{rel} differs from the shared sample");
                compared += 1;
            }
        }
        assert!(compared > 50);
        let basic = "astara-router-basic.json";
        let ours = std::fs::read(fixtures().join("..").join(basic)).unwrap();
        let theirs = std::fs::read(shared.join("..").join(basic)).unwrap();
        assert!(ours == theirs, "{basic} differs from the shared sample");
    }
}
