//! The orchestrator's path cannot be cut by a config (issue 12): with a boot configuration
//! (an extracted config drive naming the management NIC and address), each attempt to drop,
//! re-type, re-address or re-MTU the management network (at the interface or the network
//! level), to add a second one, or to capture its traffic with a route, a host route, a DNS
//! server, an overlapping tenant subnet or a tenant address, is refused with a 422 naming the
//! field, and the box is left exactly as it was (kernel dump, saved config). A saved config that would cut the path (written by
//! an older agent) is not re-applied at start.

use std::time::Duration;

use akanda_tests::{dump_state, require_root, Agent, RouterLab};
use serde_json::{json, Value};

fn boot_agent(lab: &RouterLab, drive: &std::path::Path) -> Agent {
    let drive = drive.display().to_string();
    let mut agent = Agent::spawn_with_args(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &["--boot-config", &drive],
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(20));
    agent
}

/// The index of the network on NIC `ifname` in `config`.
fn network_on(config: &Value, ifname: &str) -> usize {
    config["networks"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["interface"]["ifname"] == ifname)
        .unwrap_or_else(|| panic!("no network on {ifname}"))
}

#[test]
fn no_config_can_cut_the_orchestrators_path() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("mgmtcut");
    let drive = lab.boot_config_drive();
    let mut agent = boot_agent(&lab, drive.path());
    let http = lab.http();
    let config = lab.fitted_config();
    let r = http.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    let ge0 = lab.ifname_for(RouterLab::ROUTER_MACS[0]);
    let m = network_on(&config, &ge0);
    let t1 = network_on(&config, &lab.ifname_for(RouterLab::ROUTER_MACS[2]));

    let kernel_before = dump_state(lab.router());
    let saved_before = akanda_tests::saved_config(lab.state_dir()).unwrap();
    let shown_before = http.get("/v1/system/config").body;

    type Cut = Box<dyn Fn(&mut Value)>;
    let attempts: Vec<(&str, Cut, String)> = vec![
        (
            "drop the management network",
            Box::new(move |c| {
                c["networks"].as_array_mut().unwrap().remove(m);
            }),
            "networks".into(),
        ),
        (
            "re-type it",
            Box::new(move |c| c["networks"][m]["network_type"] = json!("isolated")),
            format!("networks[{m}].network_type"),
        ),
        (
            "re-address it",
            Box::new(move |c| {
                c["networks"][m]["interface"]["addresses"] = json!(["fdca:3ba5:a17a:acda::77/64"])
            }),
            format!("networks[{m}].interface.addresses"),
        ),
        (
            "give it another MTU",
            Box::new(move |c| c["networks"][m]["interface"]["mtu"] = json!(1400)),
            format!("networks[{m}].interface.mtu"),
        ),
        (
            "give it another MTU at the network level",
            Box::new(move |c| c["networks"][m]["mtu"] = json!(1400)),
            format!("networks[{m}].interface.mtu"),
        ),
        (
            "make a tenant network a second management network",
            Box::new(move |c| c["networks"][t1]["network_type"] = json!("management")),
            format!("networks[{t1}].network_type"),
        ),
        (
            "put a tenant subnet over its prefix",
            Box::new(move |c| {
                let net = &mut c["networks"][t1];
                let v6 = net["subnets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .position(|s| s["cidr"].as_str().unwrap().contains(':'))
                    .unwrap();
                net["subnets"][v6]["cidr"] = json!("fdca:3ba5:a17a:acda::/64");
                net["subnets"][v6]["gateway_ip"] = json!("fdca:3ba5:a17a:acda::99");
                // Otherwise valid: no allocation left outside the subnets.
                net["allocations"] = json!([]);
            }),
            format!("networks[{t1}].subnets[1].cidr"),
        ),
        (
            "give a tenant NIC an address inside it",
            Box::new(move |c| {
                c["networks"][t1]["interface"]["addresses"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("fdca:3ba5:a17a:acda::99/128"))
            }),
            format!("networks[{t1}].interface.addresses[2]"),
        ),
        (
            "route its prefix elsewhere",
            Box::new(|c| {
                c["static_routes"] = json!([["fdca:3ba5:a17a:acda::/96", RouterLab::EXT_GW_V6]])
            }),
            "static_routes[0]".into(),
        ),
        (
            "route the orchestrator through a tenant",
            Box::new(move |c| {
                let subnets = c["networks"][t1]["subnets"].as_array_mut().unwrap();
                let v6 = subnets
                    .iter_mut()
                    .find(|s| s["cidr"].as_str().unwrap().contains(':'))
                    .unwrap();
                v6["host_routes"] = json!([{"destination": format!("{}/128", RouterLab::MGMT_PEER_ADDR),
                    "nexthop": RouterLab::T1_V6}]);
            }),
            format!("networks[{t1}].subnets[1].host_routes[0]"),
        ),
        (
            "give tenants a DNS server on the management network",
            Box::new(move |c| {
                c["networks"][t1]["subnets"][0]["dns_nameservers"] =
                    json!([RouterLab::MGMT_PEER_ADDR])
            }),
            format!("networks[{t1}].subnets[0].dns_nameservers[0]"),
        ),
    ];
    for (what, cut, path) in &attempts {
        let mut bad = config.clone();
        cut(&mut bad);
        let r = http.put_json("/v1/system/config", &bad);
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        let details = r.json()["details"].clone();
        assert!(
            details
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["path"] == path.as_str() && !d["reason"].as_str().unwrap().is_empty()),
            "{what}: no detail at {path}: {details}"
        );
        assert_eq!(
            dump_state(lab.router()),
            kernel_before,
            "{what}: the kernel changed"
        );
        assert_eq!(
            akanda_tests::saved_config(lab.state_dir()).unwrap(),
            saved_before,
            "{what}: the saved config changed"
        );
        assert_eq!(http.get("/v1/system/config").body, shown_before, "{what}");
    }
    agent.stop();

    // A saved config that cuts the path (as an older agent could have saved it, in the
    // config.json that came before the slots) is not re-applied at start: the management
    // address stays, and the API answers.
    let mut cut = config.clone();
    cut["networks"].as_array_mut().unwrap().remove(m);
    for name in ["config.0", "config.1"] {
        let _ = std::fs::remove_file(lab.state_dir().join(name));
    }
    std::fs::write(lab.state_dir().join("config.json"), cut.to_string()).unwrap();
    let agent = boot_agent(&lab, drive.path());
    assert!(
        agent.log().contains("would cut the orchestrator's path"),
        "{}",
        agent.log()
    );
    assert_eq!(http.get("/v1/status").status, 200);
    let r = http.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
}
