//! The agent's L3 basics, proven with real traffic between network namespaces (needs root).
//!
//! Topology (see `RouterLab`): the agent runs in `router`; the orchestrator side is `mgmt`
//! (IPv6 management veth); `ext` is the upstream gateway; `t1` and `t2` are tenant hosts on
//! two internal networks. Configs are derived from `astara-router-basic.json`, with the geN
//! names taken from the agent's own `GET /v1/system/interfaces` by MAC, as an orchestrator
//! does.

use std::collections::BTreeSet;
use std::time::Duration;

use akanda_tests::{assert_no_ping, assert_pings, require_root, Agent, RouterLab};
use serde_json::{json, Value};

/// MACs of the router's NICs in the lab: management, external, internal 1, internal 2.
const MGMT_MAC: &str = "fa:16:3e:00:00:01";
const EXT_MAC: &str = "fa:16:3e:00:00:02";
const INT1_MAC: &str = "fa:16:3e:00:00:03";
const INT2_MAC: &str = "fa:16:3e:00:00:04";

fn ifname_for(lab: &RouterLab, mac: &str) -> String {
    lab.ifname_for(mac)
}

/// The conformance config fitted to the lab, plus a top-level static route.
fn lab_config(lab: &RouterLab) -> Value {
    let mut config = lab.fitted_config();
    config["static_routes"] = json!([["10.99.0.0/16", "172.16.77.1"]]);
    config
}

fn put(lab: &RouterLab, config: &Value) -> akanda_tests::Response {
    lab.http().put_json("/v1/system/config", config)
}

fn put_ok(lab: &RouterLab, config: &Value) {
    let resp = put(lab, config);
    assert_eq!(resp.status, 200, "PUT failed: {}", resp.body);
}

fn status(lab: &RouterLab) -> Value {
    let resp = lab.http().get("/v1/status");
    assert_eq!(resp.status, 200);
    resp.json()
}

/// The router's routes as comparable strings: "dst via gw dev X proto P" for every table,
/// without the kernel's link-local and multicast routes.
fn routes(lab: &RouterLab) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let list = lab
            .router()
            .ip_json(&format!("{family} route show table all"));
        for r in list.as_array().unwrap() {
            // Link-local and multicast routes are the kernel's: the fe80:: anycast route, for
            // one, appears whenever a link-local address finishes DAD.
            let dst = r["dst"].as_str().unwrap_or("");
            if dst.starts_with("fe80") || dst.starts_with("ff00") {
                continue;
            }
            out.insert(format!(
                "{} via {} dev {} proto {} table {}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("-"),
                r["protocol"].as_str().unwrap_or("-"),
                r["table"].as_str().unwrap_or("main"),
            ));
        }
    }
    out
}

/// Global addresses of one router link, as "addr/prefix" strings.
fn addresses(lab: &RouterLab, ifname: &str) -> BTreeSet<String> {
    lab.router().ip_json(&format!("addr show dev {ifname}"))[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn started(tag: &str) -> Option<(RouterLab, Agent)> {
    if !require_root() {
        return None;
    }
    let lab = RouterLab::new(tag);
    let agent = lab.start_agent();
    Some((lab, agent))
}

#[test]
fn nics_are_named_by_mac_and_renamed_in_the_kernel() {
    let Some((lab, _agent)) = started("nics") else {
        return;
    };
    let resp = lab.http().get("/v1/system/interfaces");
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let list = resp.json()["interfaces"].as_array().unwrap().clone();
    let pairs: Vec<(String, String)> = list
        .iter()
        .map(|i| {
            (
                i["ifname"].as_str().unwrap().into(),
                i["lladdr"].as_str().unwrap().into(),
            )
        })
        .collect();
    // The lab creates the NICs in this order, so a fresh agent numbers them so.
    assert_eq!(
        pairs,
        vec![
            ("ge0".into(), MGMT_MAC.into()),
            ("ge1".into(), EXT_MAC.into()),
            ("ge2".into(), INT1_MAC.into()),
            ("ge3".into(), INT2_MAC.into()),
        ]
    );
    // Astara's interface shape, and the kernel links carry the same names.
    let ge0 = &list[0];
    assert_eq!(ge0["state"], "up");
    assert!(ge0["mtu"].as_u64().unwrap() > 0);
    assert!(ge0["addresses"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("{}/64", RouterLab::MGMT_ADDR))));
    let kernel_names: BTreeSet<String> = lab
        .router()
        .ip_json("link show")
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kernel_names,
        ["lo", "ge0", "ge1", "ge2", "ge3"].map(String::from).into()
    );

    let one = lab.http().get("/v1/system/interface/ge2");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["interface"]["lladdr"], INT1_MAC);
    let missing = lab.http().get("/v1/system/interface/ge9");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("ge9"));
}

#[test]
fn basic_config_routes_real_traffic() {
    let Some((lab, _agent)) = started("basic") else {
        return;
    };
    // Before the first push, tenants cannot reach anything.
    assert_no_ping(lab.t1(), "192.168.0.1");
    let config = lab_config(&lab);
    let resp = put(&lab, &config);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        resp.json()["configuration"]["tenant_id"],
        config["tenant_id"]
    );

    // Tenants reach their gateway and each other; the external host reaches the router.
    assert_pings(lab.t1(), "192.168.0.1");
    assert_pings(lab.t1(), RouterLab::T2_V4);
    assert_pings(lab.t2(), RouterLab::T1_V4);
    assert_pings(lab.ext(), RouterLab::EXT_ROUTER_V4);
    assert_pings(lab.ext(), RouterLab::EXT_ROUTER_V6);
    // Forwarding both ways through the default routes.
    assert_pings(lab.t1(), RouterLab::EXT_GW_V4);
    assert_pings(lab.t1(), "2001:db8:100::1");
    assert_pings(lab.t1(), RouterLab::EXT_GW_V6);

    // Default, host and static routes are in the kernel, marked as the agent's (proto 44).
    let table = routes(&lab);
    for want in [
        "default via 172.16.77.1 dev ge1 proto 44 table main",
        "default via 2001:db8:77::1 dev ge1 proto 44 table main",
        "10.50.0.0/16 via 192.168.0.254 dev ge2 proto 44 table main",
        "10.99.0.0/16 via 172.16.77.1 dev ge1 proto 44 table main",
    ] {
        assert!(table.contains(want), "missing {want:?} in {table:#?}");
    }
    // MTU from the config; forwarding on.
    assert_eq!(lab.router().ip_json("link show dev ge2")[0]["mtu"], 1450);
    assert_eq!(
        lab.router()
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );

    let s = status(&lab);
    assert_eq!(s["last_apply"]["result"], "ok");
    assert!(s["last_apply"]["netlink_writes"].as_u64().unwrap() > 0);
    let hash = s["config_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);

    // The same config again: no netlink write at all, and nothing changes.
    let before = lab.dump_router_state();
    put_ok(&lab, &config);
    let s = status(&lab);
    assert_eq!(s["last_apply"]["netlink_writes"], 0, "{s}");
    assert_eq!(s["config_hash"], hash.as_str());
    assert_eq!(s["applies"]["ok"], 2);
    assert_eq!(before, lab.dump_router_state());

    // GET config shows it back; the firewall endpoint answers as the liveness probe.
    let got = lab.http().get("/v1/system/config");
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["configuration"]["hostname"], config["hostname"]);
    assert_eq!(lab.http().get("/v1/firewall/rules").status, 200);
    assert_eq!(lab.http().get("/v1/base/").status, 200);
}

#[test]
fn second_put_changes_exactly_what_changed() {
    let Some((lab, _agent)) = started("delta") else {
        return;
    };
    let config = lab_config(&lab);
    put_ok(&lab, &config);
    let ge3 = ifname_for(&lab, INT2_MAC);
    let others: Vec<String> = ["ge0", "ge1", "ge2"].map(String::from).to_vec();
    let others_before: Vec<_> = others.iter().map(|i| addresses(&lab, i)).collect();
    let links_before = lab.router().ip_json("link show");
    let routes_before = routes(&lab);

    // Move network 2 to 192.168.2.0/24 and drop the static route.
    let mut changed = config.clone();
    changed["networks"][3]["interface"]["addresses"] = json!(["192.168.2.1/24"]);
    changed["networks"][3]["subnets"][0]["cidr"] = json!("192.168.2.0/24");
    changed["networks"][3]["subnets"][0]["gateway_ip"] = json!("192.168.2.1");
    changed["static_routes"] = json!([]);
    put_ok(&lab, &changed);

    assert_eq!(addresses(&lab, &ge3), ["192.168.2.1/24".to_string()].into());
    let others_after: Vec<_> = others.iter().map(|i| addresses(&lab, i)).collect();
    assert_eq!(others_before, others_after, "other NICs' addresses changed");
    assert_eq!(
        links_before,
        lab.router().ip_json("link show"),
        "link settings changed"
    );
    let routes_after = routes(&lab);
    let removed: BTreeSet<_> = routes_before.difference(&routes_after).cloned().collect();
    let added: BTreeSet<_> = routes_after.difference(&routes_before).cloned().collect();
    assert!(removed.contains("10.99.0.0/16 via 172.16.77.1 dev ge1 proto 44 table main"));
    for r in removed.iter().chain(&added) {
        assert!(
            r.starts_with("10.99.0.0/16") || r.contains("192.168.1.") || r.contains("192.168.2."),
            "unexpected route change {r:?}\nremoved {removed:#?}\nadded {added:#?}"
        );
    }
    assert!(
        added.iter().any(|r| r.starts_with("192.168.2.0/24")),
        "{added:#?}"
    );

    // Traffic follows: a host renumbered into the new subnet reaches t1.
    lab.t2().ip("addr flush dev eth0");
    lab.t2().ip("addr add 192.168.2.2/24 dev eth0");
    lab.t2().ip("route add default via 192.168.2.1");
    assert_pings(lab.t2(), RouterLab::T1_V4);
    assert_pings(lab.t1(), "192.168.2.2");
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field_and_changes_nothing() {
    let Some((lab, _agent)) = started("bad") else {
        return;
    };
    let good = lab_config(&lab);
    put_ok(&lab, &good);
    let before = lab.dump_router_state();
    let hash = status(&lab)["config_hash"].clone();

    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "missing tenant_id",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("tenant_id");
            }),
            "tenant_id",
        ),
        (
            "bad hostname",
            Box::new(|c| c["hostname"] = json!("a b")),
            "hostname",
        ),
        (
            "bad CIDR",
            Box::new(|c| c["networks"][2]["subnets"][0]["cidr"] = json!("192.168.0.0/33")),
            "networks[2].subnets[0].cidr",
        ),
        (
            "bad address",
            Box::new(|c| c["networks"][2]["interface"]["addresses"][0] = json!("192.168.0.999/24")),
            "networks[2].interface.addresses[0]",
        ),
        (
            "gateway outside",
            Box::new(|c| c["networks"][2]["subnets"][0]["gateway_ip"] = json!("10.1.1.1")),
            "networks[2].subnets[0].gateway_ip",
        ),
        (
            "network type",
            Box::new(|c| c["networks"][1]["network_type"] = json!("public")),
            "networks[1].network_type",
        ),
        (
            "ifname syntax",
            Box::new(|c| c["networks"][2]["interface"]["ifname"] = json!("eth2")),
            "networks[2].interface.ifname",
        ),
        (
            "ifname not on box",
            Box::new(|c| c["networks"][3]["interface"]["ifname"] = json!("ge9")),
            "networks[3].interface.ifname",
        ),
        (
            "duplicate ifname",
            Box::new(|c| {
                c["networks"][3]["interface"]["ifname"] =
                    c["networks"][2]["interface"]["ifname"].clone()
            }),
            "networks[3].interface.ifname",
        ),
        (
            "two externals",
            Box::new(|c| c["networks"][3]["network_type"] = json!("external")),
            "networks[3].network_type",
        ),
        (
            "FIP outside external",
            Box::new(|c| c["floating_ips"][0]["floating_ip"] = json!("10.0.0.5")),
            "floating_ips[0].floating_ip",
        ),
        (
            "fixed IP outside internal",
            Box::new(|c| c["floating_ips"][0]["fixed_ip"] = json!("172.16.77.40")),
            "floating_ips[0].fixed_ip",
        ),
        (
            "static route pair",
            Box::new(|c| c["static_routes"] = json!([["10.0.0.0/8"]])),
            "static_routes[0]",
        ),
        (
            "host route nexthop",
            Box::new(|c| {
                c["networks"][2]["subnets"][0]["host_routes"][0]["nexthop"] = json!("not-an-ip")
            }),
            "networks[2].subnets[0].host_routes[0].nexthop",
        ),
        (
            "MTU range",
            Box::new(|c| c["networks"][2]["interface"]["mtu"] = json!(70000)),
            "networks[2].interface.mtu",
        ),
        (
            "anchor interface",
            Box::new(|c| {
                c["anchors"] =
                    json!([{"name": "x", "rules": [{"action": "block", "interface": "ge42"}]}])
            }),
            "anchors[0].rules[0].interface",
        ),
        (
            "address book name",
            Box::new(|c| {
                c["anchors"] =
                    json!([{"name": "x", "rules": [{"action": "block", "source": "nobody"}]}])
            }),
            "anchors[0].rules[0].source",
        ),
        (
            "wrong type",
            Box::new(|c| c["networks"] = json!("everything")),
            "networks",
        ),
        (
            "unknown service",
            Box::new(|c| c["services"] = json!({"vpnaas": {}})),
            "services[\"vpnaas\"]",
        ),
    ];
    let mut kinds = 0;
    for (name, mutate, path) in &cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let resp = put(&lab, &bad);
        assert_eq!(resp.status, 422, "{name}: {}", resp.body);
        assert!(
            resp.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{name}"
        );
        let body = resp.json();
        let details = body["details"].as_array().unwrap();
        assert!(
            details
                .iter()
                .any(|d| d["path"] == *path && !d["reason"].as_str().unwrap().is_empty()),
            "{name}: no problem at {path} in {body:#}"
        );
        kinds += 1;
    }
    assert!(kinds >= 15);

    // Not JSON, malformed JSON, charset accepted, wrong method, unknown path.
    let body = serde_json::to_vec(&good).unwrap();
    let r = lab.http().put_raw("/v1/system/config", "text/plain", &body);
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(r.json()["error"].is_string());
    let r = lab
        .http()
        .put_raw("/v1/system/config", "application/json", b"{\"networks\": [");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let r = lab.http().post_json("/v1/system/config", &good);
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(lab.http().get("/v1/nothing").status, 404);

    assert_eq!(
        before,
        lab.dump_router_state(),
        "a rejected config changed the router"
    );
    assert_eq!(status(&lab)["config_hash"], hash);

    // And a charset parameter is fine (Astara rejected it).
    let r = lab.http().put_raw(
        "/v1/system/config",
        "application/json; charset=utf-8",
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn kernel_refusal_rolls_everything_back() {
    let Some((lab, agent)) = started("rollback") else {
        return;
    };
    let good = lab_config(&lab);
    put_ok(&lab, &good);
    let before = lab.dump_router_state();
    let hash = status(&lab)["config_hash"].clone();
    let saved = || -> Value {
        let bytes = akanda_tests::saved_config(agent.state_dir()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let saved_before = saved();

    // Valid on paper, but the kernel refuses the last step: 10.200.0.1 is on no link. The
    // new floating IP's local route, the address change on network 2 and the removed static
    // route come before it and must be undone; the config saved meanwhile too.
    let mut bad = good.clone();
    bad["floating_ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"floating_ip": "172.16.77.60", "fixed_ip": "192.168.0.9"}));
    bad["networks"][3]["interface"]["addresses"] = json!(["192.168.2.1/24"]);
    bad["networks"][3]["subnets"][0]["cidr"] = json!("192.168.2.0/24");
    bad["networks"][3]["subnets"][0]["gateway_ip"] = json!("192.168.2.1");
    bad["static_routes"] = json!([["10.77.0.0/16", "10.200.0.1"]]);
    let resp = put(&lab, &bad);
    assert_eq!(resp.status, 409, "{}", resp.body);
    let body = resp.json();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("10.77.0.0/16 via 10.200.0.1"), "{message}");
    assert!(message.contains("previous state was restored"), "{message}");

    assert_eq!(
        before,
        lab.dump_router_state(),
        "rollback left the router changed"
    );
    assert_eq!(saved(), saved_before, "the failed config stayed saved");
    let s = status(&lab);
    assert_eq!(s["config_hash"], hash, "the failed config became current");
    assert_eq!(s["last_apply"]["result"], "error");
    assert_eq!(s["applies"]["failed"], 1);
    let current = lab.http().get("/v1/system/config").json();
    assert_eq!(
        current["configuration"]["static_routes"],
        good["static_routes"]
    );
    assert_pings(lab.t2(), RouterLab::T1_V4);
}

#[test]
fn restart_reapplies_the_last_good_config_before_serving() {
    let Some((lab, mut agent)) = started("restart") else {
        return;
    };
    let config = lab_config(&lab);
    put_ok(&lab, &config);
    let applied = lab.dump_router_state();
    let hash = status(&lab)["config_hash"].clone();
    agent.kill();

    // While the agent is down the box loses its tenant address and its default route (as
    // after a reboot). The restarted agent must put them back before it answers.
    lab.router().ip("addr flush dev ge2 scope global");
    lab.router().ip("route del default via 172.16.77.1");
    assert_ne!(applied, lab.dump_router_state());

    let mut agent = lab.spawn_agent();
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let table = routes(&lab);
    assert!(
        table.contains("default via 172.16.77.1 dev ge1 proto 44 table main"),
        "{table:#?}"
    );
    assert!(addresses(&lab, "ge2").contains("192.168.0.1/24"));
    assert_eq!(status(&lab)["config_hash"], hash);
    assert_eq!(applied, lab.dump_router_state());
    assert_pings(lab.t1(), RouterLab::T2_V4);

    // A clean stop (SIGTERM) exits 0 and keeps the state for the next start too.
    assert!(agent.stop().success());
    for (name, mode) in akanda_tests::saved_config_modes(lab.state_dir()) {
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[test]
fn concurrent_puts_are_serialised() {
    let Some((lab, _agent)) = started("concurrent") else {
        return;
    };
    let a = lab_config(&lab);
    let mut b = a.clone();
    b["static_routes"] = json!([["10.98.0.0/16", "172.16.77.1"]]);
    let http = lab.http();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let config = if i % 2 == 0 { &a } else { &b };
                let http = &http;
                scope.spawn(move || http.put_json("/v1/system/config", config).status)
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    // Whichever came last is what the kernel and the status agree on: exactly one of the two
    // static routes, never both or a mix.
    let table = routes(&lab);
    let has_a = table.contains("10.99.0.0/16 via 172.16.77.1 dev ge1 proto 44 table main");
    let has_b = table.contains("10.98.0.0/16 via 172.16.77.1 dev ge1 proto 44 table main");
    assert!(has_a ^ has_b, "{table:#?}");
    let current = lab.http().get("/v1/system/config").json();
    let expected = if has_a { &a } else { &b };
    assert_eq!(
        current["configuration"]["static_routes"],
        expected["static_routes"]
    );
    assert_eq!(status(&lab)["applies"]["ok"], 6);
}

#[test]
fn a_removed_network_stops_routing_and_management_stays() {
    let Some((lab, _agent)) = started("remove") else {
        return;
    };
    let config = lab_config(&lab);
    put_ok(&lab, &config);
    assert_pings(lab.t1(), RouterLab::T2_V4);
    let ge3 = ifname_for(&lab, INT2_MAC);

    // Neutron removed the second router interface: the config no longer names network 3.
    let mut removed = config.clone();
    removed["networks"].as_array_mut().unwrap().truncate(3);
    put_ok(&lab, &removed);
    assert!(addresses(&lab, &ge3).is_empty());
    assert_no_ping(lab.t1(), RouterLab::T2_V4);
    assert_pings(lab.t1(), "192.168.0.1");

    // A config without the management network is refused, naming `networks` (the agent
    // serves on ge0's address: the orchestrator must never be locked out by a push), and the
    // management address stays.
    let mut no_mgmt = removed.clone();
    no_mgmt["networks"].as_array_mut().unwrap().remove(0);
    let resp = put(&lab, &no_mgmt);
    assert_eq!(resp.status, 422, "{}", resp.body);
    assert!(
        resp.json()["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p["path"] == "networks")),
        "{}",
        resp.body
    );
    assert!(addresses(&lab, "ge0").contains(&format!("{}/64", RouterLab::MGMT_ADDR)));
    assert_eq!(lab.http().get("/v1/status").status, 200);
}
