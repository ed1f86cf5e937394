//! Unit tests of the pure parts: rendered files, frames, mappings. No root needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use akanda_model::config::V6ConfService;
use akanda_model::RouterConfig;
use serde_json::{json, Value};

use super::dnsmasq::{self, DnsmasqPaths, V6Mode};
use super::{bird, garp, hostname, metadata};

fn doc() -> Value {
    json!({
        "tenant_id": "tenant-1", "hostname": "ak-router",
        "asn": 64512, "neighbor_asn": 64513,
        "orchestrator": {"address": "fdca:3ba5:a17a:acda::1", "metadata_port": 9697},
        "networks": [
            {"network_id": "mgmt", "network_type": "management",
             "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::5/64"]},
             "subnets": [{"id": "m", "cidr": "fdca:3ba5:a17a:acda::/64",
                          "gateway_ip": "fdca:3ba5:a17a:acda::1", "dhcp_enabled": false,
                          "dns_nameservers": [], "host_routes": []}]},
            {"network_id": "ext", "network_type": "external",
             "interface": {"ifname": "ge1", "addresses": ["172.16.77.2/24", "2001:db8:77::2/64"]},
             "subnets": [
                {"id": "e4", "cidr": "172.16.77.0/24", "gateway_ip": "172.16.77.1",
                 "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []},
                {"id": "e6", "cidr": "2001:db8:77::/64", "gateway_ip": "2001:db8:77::1",
                 "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]},
            {"network_id": "int", "network_type": "internal", "mtu": 1450,
             "interface": {"ifname": "ge2", "addresses": ["192.168.0.1/24", "2001:db8:100::1/64", "fd00:9::1/64"]},
             "subnets": [
                {"id": "i4", "cidr": "192.168.0.0/24", "gateway_ip": "192.168.0.1",
                 "dhcp_enabled": true, "dns_nameservers": ["8.8.8.8", "8.8.4.4"],
                 "host_routes": [{"destination": "10.50.0.0/16", "nexthop": "192.168.0.254"}]},
                {"id": "i6", "cidr": "2001:db8:100::/64", "gateway_ip": "2001:db8:100::1",
                 "dhcp_enabled": true, "dns_nameservers": ["2001:4860:4860::8888"],
                 "host_routes": []},
                {"id": "ula", "cidr": "fd00:9::/64", "gateway_ip": null,
                 "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
             "allocations": [
                {"mac_address": "fa:16:3e:aa:bb:01",
                 "ip_addresses": {"192.168.0.2": true, "2001:db8:100::2": true},
                 "hostname": "192-168-0-2.local", "device_id": "dev-1"},
                {"mac_address": "fa:16:3e:aa:bb:02",
                 "ip_addresses": {"192.168.0.3": true, "2001:db8:100::3": false},
                 "hostname": "vm-two", "device_id": "dev-2"},
                {"mac_address": "fa:16:3e:aa:bb:03",
                 "ip_addresses": {"192.168.0.4": false},
                 "hostname": "vm-three", "device_id": "dev-3"}]},
            {"network_id": "iso", "network_type": "isolated",
             "interface": {"ifname": "ge3", "addresses": ["10.9.0.1/24", "2001:db8:300::1/64"]},
             "subnets": [
                {"id": "s4", "cidr": "10.9.0.0/24", "gateway_ip": null,
                 "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []},
                {"id": "s6", "cidr": "2001:db8:300::/64", "gateway_ip": "2001:db8:300::1",
                 "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
             "allocations": [
                {"mac_address": "fa:16:3e:cc:00:01", "ip_addresses": {"10.9.0.5": true},
                 "hostname": "iso-vm", "device_id": "dev-iso"}]}
        ]
    })
}

fn config(doc: &Value) -> RouterConfig {
    akanda_model::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn paths() -> DnsmasqPaths {
    DnsmasqPaths::new(Path::new("/run/ak"), Path::new("/var/lib/ak"), "ge2")
}

fn network<'a>(c: &'a RouterConfig, ifname: &str) -> &'a akanda_model::Network {
    c.networks.iter().find(|n| n.ifname == ifname).unwrap()
}

#[test]
fn dnsmasq_only_on_tenant_networks() {
    let c = config(&doc());
    let served: Vec<&str> = dnsmasq::served_networks(&c)
        .map(|n| n.ifname.as_str())
        .collect();
    assert_eq!(served, ["ge2", "ge3"]);
}

#[test]
fn dnsmasq_conf_of_an_internal_network() {
    let c = config(&doc());
    let files = dnsmasq::render(network(&c, "ge2"), &paths());
    let conf: Vec<&str> = files.conf.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        conf,
        [
            "interface=ge2",
            "except-interface=lo",
            "bind-dynamic",
            "no-hosts",
            "no-resolv",
            "no-poll",
            "domain-needed",
            "bogus-priv",
            "dhcp-authoritative",
            "dhcp-lease-max=65536",
            "dhcp-hostsfile=/run/ak/dnsmasq/ge2/hosts",
            "dhcp-optsfile=/run/ak/dnsmasq/ge2/opts",
            "servers-file=/run/ak/dnsmasq/ge2/servers",
            "dhcp-leasefile=/var/lib/ak/dnsmasq/ge2.leases",
            "pid-file=/run/ak/dnsmasq/ge2/dnsmasq.pid",
            "log-facility=-",
            "dhcp-range=set:ge2_0,192.168.0.0,static,255.255.255.0,86400s",
            // v6_conf_service defaults to static: dhcp_enabled picks the mode.
            "dhcp-range=set:ge2_1,2001:db8:100::,static,64,86400s",
            "dhcp-range=set:ge2_2,fd00:9::,ra-only,64,86400s",
            "enable-ra",
            "ra-param=ge2,mtu:1450,600",
        ]
    );
    assert_eq!(
        files.opts,
        "tag:ge2_0,option:router,192.168.0.1\n\
         tag:ge2_0,option:dns-server,8.8.8.8,8.8.4.4\n\
         tag:ge2_0,option:classless-static-route,10.50.0.0/16,192.168.0.254,0.0.0.0/0,192.168.0.1\n\
         tag:ge2_0,249,10.50.0.0/16,192.168.0.254,0.0.0.0/0,192.168.0.1\n\
         tag:ge2_0,option:mtu,1450\n\
         tag:ge2_1,option6:dns-server,[2001:4860:4860::8888]\n"
    );
    assert_eq!(
        files.servers,
        "server=8.8.8.8\nserver=8.8.4.4\nserver=2001:4860:4860::8888\n"
    );
    // One line per allocation with a DHCP address; the per-address flag is honoured; the
    // host name loses its domain part.
    assert_eq!(
        files.hosts,
        "fa:16:3e:aa:bb:01,192.168.0.2,[2001:db8:100::2],192-168-0-2\n\
         fa:16:3e:aa:bb:02,192.168.0.3,vm-two\n"
    );
}

#[test]
fn dnsmasq_isolated_network_without_gateway() {
    let c = config(&doc());
    let files = dnsmasq::render(network(&c, "ge3"), &paths());
    assert!(files
        .conf
        .contains("dhcp-range=set:ge3_0,10.9.0.0,static,255.255.255.0,86400s"));
    assert!(files
        .conf
        .contains("dhcp-range=set:ge3_1,2001:db8:300::,ra-only,64,86400s"));
    assert!(!files.conf.contains("ra-param"), "no MTU, no ra-param");
    // No gateway: option 3 suppressed; no DNS servers: dnsmasq offers itself.
    assert_eq!(files.opts, "tag:ge3_0,option:router\n");
    assert_eq!(files.servers, "");
    assert_eq!(files.hosts, "fa:16:3e:cc:00:01,10.9.0.5,iso-vm\n");
}

/// Astara's orchestrator names an allocation after its lowest address (string order), with
/// `:` and `.` replaced by `-`, plus `.local` (astara/api/config/common.py).
fn astara_hostname(ips: &[&str]) -> String {
    let lowest = ips.iter().min().expect("an allocation has an address");
    format!("{}.local", lowest.replace([':', '.'], "-"))
}

/// `dnsmasq --test` with one `dhcp-host` line given as an option: dnsmasq parses it exactly as
/// a hosts-file line. Ok(()) or dnsmasq's complaint.
fn dnsmasq_accepts(line: &str) -> Result<(), String> {
    let out = std::process::Command::new("dnsmasq")
        .args(["--test", "--conf-file=/dev/null"])
        .arg(format!("--dhcp-host={line}"))
        .output()
        .expect("dnsmasq is installed (scripts/install-deps)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn every_astara_host_name_gives_a_hosts_line_dnsmasq_accepts() {
    // Addresses Neutron assigns, as it writes them. The first two are gateways Neutron gives an
    // IPv6 subnet (`prefix::` when none is given, or `prefix::1`); the router's own port is
    // among the allocations Astara sends. The name is the one Astara derives from the address.
    let cases: &[(&str, &str)] = &[
        ("2001:db8:100::", "2001-db8-100--"),
        ("2001:db8:100::1", "2001-db8-100--1"),
        ("2001:db8:100::5", "2001-db8-100--5"),
        (
            "2001:db8:100:0:f816:3eff:fe2b:ced0",
            "2001-db8-100-0-f816-3eff-fe2b-ced0",
        ),
        ("2001:db8:100:0:a::7", "2001-db8-100-0-a--7"),
        ("192.168.0.2", "192-168-0-2"),
        ("192.168.0.254", "192-168-0-254"),
    ];
    let mut d = doc();
    let mut allocations = Vec::new();
    for (i, (ip, _)) in cases.iter().enumerate() {
        allocations.push(json!({
            "mac_address": format!("fa:16:3e:00:01:{i:02x}"),
            "ip_addresses": {*ip: true},
            "hostname": astara_hostname(&[ip]),
            "device_id": format!("dev-{i}"),
        }));
    }
    d["networks"][2]["allocations"] = json!(allocations);
    let c = config(&d);
    let files = dnsmasq::render(network(&c, "ge2"), &paths());
    let lines: Vec<&str> = files.hosts.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{}", files.hosts);
    for (line, (ip, name)) in lines.iter().zip(cases) {
        let addr = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        assert!(line.ends_with(&format!(",{addr},{name}")), "{line}");
        dnsmasq_accepts(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn a_name_dnsmasq_would_refuse_costs_the_name_not_the_lease() {
    // `::5` and `::ffff:192.168.0.7` are named `--5.local` and `--ffff-192-168-0-7.local`: valid
    // for the agent, but dnsmasq refuses a name that starts with '-' and would drop the line.
    for ip in ["::5", "::ffff:192.168.0.7"] {
        let name = astara_hostname(&[ip]);
        assert!(akanda_model::is_allocation_hostname(&name), "{name}");
        let label = name.split('.').next().unwrap();
        assert!(
            dnsmasq_accepts(&format!("fa:16:3e:00:02:01,192.168.0.7,{label}")).is_err(),
            "dnsmasq now takes {label}: hand it out"
        );
        assert_eq!(dnsmasq::dhcp_hostname(&name), None);

        let mut d = doc();
        d["networks"][2]["allocations"] = json!([{
            "mac_address": "fa:16:3e:00:02:01",
            "ip_addresses": {"192.168.0.7": true},
            "hostname": name,
            "device_id": "dev-x",
        }]);
        let files = dnsmasq::render(network(&config(&d), "ge2"), &paths());
        assert_eq!(files.hosts, "fa:16:3e:00:02:01,192.168.0.7\n");
        dnsmasq_accepts(files.hosts.trim_end()).unwrap();
    }
}

#[test]
fn an_allocation_change_touches_only_the_hosts_file() {
    let c1 = config(&doc());
    let mut d = doc();
    d["networks"][2]["allocations"][1]["ip_addresses"] = json!({"192.168.0.9": true});
    let c2 = config(&d);
    let f1 = dnsmasq::render(network(&c1, "ge2"), &paths());
    let f2 = dnsmasq::render(network(&c2, "ge2"), &paths());
    assert_eq!(f1.conf, f2.conf, "the main file (restart) must not change");
    assert_eq!(f1.opts, f2.opts);
    assert_ne!(f1.hosts, f2.hosts);
    assert!(f2.hosts.contains("fa:16:3e:aa:bb:02,192.168.0.9,vm-two"));
}

#[test]
fn dns_and_route_changes_are_sighup_changes_too() {
    let c1 = config(&doc());
    let mut d = doc();
    d["networks"][2]["subnets"][0]["dns_nameservers"] = json!(["1.1.1.1"]);
    d["networks"][2]["subnets"][0]["host_routes"] = json!([]);
    let c2 = config(&d);
    let f1 = dnsmasq::render(network(&c1, "ge2"), &paths());
    let f2 = dnsmasq::render(network(&c2, "ge2"), &paths());
    assert_eq!(f1.conf, f2.conf);
    assert!(f2.servers.starts_with("server=1.1.1.1\n"));
    assert!(!f2.opts.contains("classless"), "{}", f2.opts);
}

#[test]
fn v6_subnets_other_than_64_are_not_served() {
    let mut d = doc();
    d["networks"][2]["subnets"][1]["cidr"] = json!("2001:db8:100::/56");
    d["networks"][2]["subnets"][1]["gateway_ip"] = json!("2001:db8:100::1");
    d["networks"][2]["interface"]["addresses"][1] = json!("2001:db8:100::1/56");
    d["networks"][2]["allocations"][0]["ip_addresses"] = json!({"192.168.0.2": true});
    d["networks"][2]["allocations"][1]["ip_addresses"] = json!({"192.168.0.3": true});
    let files = dnsmasq::render(network(&config(&d), "ge2"), &paths());
    assert!(
        files.conf.contains("# 2001:db8:100::/56: not served"),
        "{}",
        files.conf
    );
    assert!(!files.conf.contains("set:ge2_1"), "{}", files.conf);
    // The /64 ULA subnet is still advertised.
    assert!(files.conf.contains("set:ge2_2,fd00:9::,ra-only,64"));
}

#[test]
fn v6_mode_table() {
    use V6ConfService::*;
    assert_eq!(dnsmasq::v6_mode(Ra, false), V6Mode::RaOnly);
    assert_eq!(dnsmasq::v6_mode(Ra, true), V6Mode::SlaacStateless);
    assert_eq!(dnsmasq::v6_mode(Dhcp, true), V6Mode::Stateful);
    assert_eq!(dnsmasq::v6_mode(Dhcp, false), V6Mode::RaOnly);
    assert_eq!(dnsmasq::v6_mode(Static, true), V6Mode::Stateful);
    assert_eq!(dnsmasq::v6_mode(Static, false), V6Mode::RaOnly);

    let mut d = doc();
    d["networks"][2]["v6_conf_service"] = json!("ra");
    let files = dnsmasq::render(network(&config(&d), "ge2"), &paths());
    assert!(files
        .conf
        .contains("set:ge2_1,2001:db8:100::,ra-stateless,64,"));
    // SLAAC: no DHCPv6 address in the hosts file.
    assert!(files
        .hosts
        .starts_with("fa:16:3e:aa:bb:01,192.168.0.2,192-168-0-2\n"));
}

#[test]
fn classless_routes_follow_rfc_3442() {
    let c = config(&doc());
    let net = network(&c, "ge2");
    assert_eq!(
        dnsmasq::classless_routes(&net.subnets[0]),
        "10.50.0.0/16,192.168.0.254,0.0.0.0/0,192.168.0.1"
    );
    // A default among the host routes is not doubled; no host routes, no option.
    let mut d = doc();
    d["networks"][2]["subnets"][0]["host_routes"] =
        json!([{"destination": "0.0.0.0/0", "nexthop": "192.168.0.254"}]);
    let c = config(&d);
    assert_eq!(
        dnsmasq::classless_routes(&network(&c, "ge2").subnets[0]),
        "0.0.0.0/0,192.168.0.254"
    );
    let c = config(&doc());
    assert_eq!(
        dnsmasq::classless_routes(&network(&c, "ge3").subnets[0]),
        ""
    );
}

#[test]
fn bird_conf_peers_with_the_external_v6_gateway() {
    let c = config(&doc());
    let conf = bird::render(&c).expect("an external v6 gateway");
    assert!(conf.contains("router id 172.16.77.2;"), "{conf}");
    assert!(
        conf.contains("  local 2001:db8:77::2 as 64512;\n"),
        "{conf}"
    );
    assert!(
        conf.contains("  neighbor 2001:db8:77::1 as 64513;\n"),
        "{conf}"
    );
    // Only the internal, global prefixes; isolated and ULA are not announced.
    assert!(
        conf.contains("if net ~ [ 2001:db8:100::/64 ] then accept;"),
        "{conf}"
    );
    assert!(conf.contains("interface \"ge2\";"), "{conf}");
    assert!(!conf.contains("fd00:9"), "{conf}");
    assert!(!conf.contains("2001:db8:300"), "{conf}");
    assert!(conf.contains("import none;"), "{conf}");
    // Rendering is deterministic (a re-push is a no-op).
    assert_eq!(bird::render(&c).unwrap(), conf);
}

#[test]
fn bird_without_internal_prefixes_exports_nothing() {
    let mut d = doc();
    d["networks"].as_array_mut().unwrap().truncate(2);
    let conf = bird::render(&config(&d)).unwrap();
    assert!(!conf.contains("protocol direct"), "{conf}");
    assert!(conf.contains("filter bgp_out {\n  reject;\n}"), "{conf}");
}

#[test]
fn bird_not_run_without_an_external_v6_gateway() {
    let mut d = doc();
    d["networks"][1]["subnets"][1]["gateway_ip"] = json!(null);
    assert_eq!(bird::render(&config(&d)), None);
    let mut d = doc();
    d["networks"].as_array_mut().unwrap().remove(1);
    assert_eq!(bird::render(&config(&d)), None);
}

#[test]
fn bird_router_id_is_stable_without_external_v4() {
    let mut d = doc();
    d["networks"][1]["interface"]["addresses"] = json!(["2001:db8:77::2/64"]);
    d["networks"][1]["subnets"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let c = config(&d);
    let id = bird::router_id(&c);
    assert_ne!(id, Ipv4Addr::UNSPECIFIED);
    assert_eq!(bird::router_id(&config(&d)), id);
    assert!(bird::render(&c)
        .unwrap()
        .contains(&format!("router id {id};")));
}

#[test]
fn bird_reply_lines() {
    use bird::parse_reply_line as p;
    let (l, last) = p("0001 BIRD 2.0.12 ready.", 0);
    assert_eq!(
        (l.code, l.text.as_str(), last),
        (1, "BIRD 2.0.12 ready.", true)
    );
    let (l, last) = p("0002-Reading configuration from /x", 0);
    assert_eq!((l.code, last), (2, false));
    let (l, last) = p(" continued", 1002);
    assert_eq!((l.code, l.text.as_str(), last), (1002, "continued", false));
    let (l, last) = p("8002 /x:3:5 syntax error", 2);
    assert_eq!((l.code, last), (8002, true));
    let (l, last) = p("0000", 7);
    assert_eq!((l.code, last), (0, true));
}

#[test]
fn metadata_ports_and_upstream_urls() {
    assert_eq!(metadata::listen_port(9600, "ge2"), Some(9602));
    assert_eq!(metadata::listen_port(9600, "ge17"), Some(9617));
    assert_eq!(metadata::listen_port(9600, "eth0"), None);
    assert_eq!(metadata::listen_port(65535, "ge1"), None);
    let v6: SocketAddr = "[fdca:3ba5:a17a:acda::1]:9697".parse().unwrap();
    assert_eq!(
        metadata::upstream_base(v6),
        "http://[fdca:3ba5:a17a:acda::1]:9697"
    );
    let v4: SocketAddr = "192.168.25.30:9697".parse().unwrap();
    assert_eq!(metadata::upstream_base(v4), "http://192.168.25.30:9697");
}

#[test]
fn metadata_listeners_for_tenant_networks_only() {
    let c = config(&doc());
    let wanted = metadata::desired(&c, 9600);
    assert_eq!(wanted.keys().collect::<Vec<_>>(), ["ge2", "ge3"]);
    let (port, meta) = &wanted["ge2"];
    assert_eq!(*port, 9602);
    assert_eq!(meta.network_id, "int");
    assert_eq!(meta.tenant_id, "tenant-1");
    // Every address maps, DHCP or not.
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(meta.instances[&ip("192.168.0.2")], "dev-1");
    assert_eq!(meta.instances[&ip("2001:db8:100::2")], "dev-1");
    assert_eq!(meta.instances[&ip("2001:db8:100::3")], "dev-2");
    assert_eq!(meta.instances[&ip("192.168.0.4")], "dev-3");
    assert!(
        !meta.instances.contains_key(&ip("10.9.0.5")),
        "another network's address"
    );
}

#[test]
fn metadata_upstream_request_replaces_identity_headers() {
    let c = config(&doc());
    let (_, meta) = &metadata::desired(&c, 9600)["ge2"];
    let req = hyper::Request::builder()
        .method("PUT")
        .uri("/openstack/latest/password?a=1")
        .header("host", "169.254.169.254")
        .header("x-instance-id", "someone-else")
        .header("X-Tenant-ID", "other-tenant")
        .header("x-forwarded-for", "1.2.3.4")
        .header("connection", "keep-alive")
        .header("content-type", "text/plain")
        .body("body")
        .unwrap();
    let out =
        metadata::upstream_request(req, "192.168.0.2".parse().unwrap(), "dev-1", meta).unwrap();
    assert_eq!(out.method(), "PUT");
    assert_eq!(
        out.uri().to_string(),
        "http://[fdca:3ba5:a17a:acda::1]:9697/openstack/latest/password?a=1"
    );
    let h = out.headers();
    let get = |n: &str| {
        h.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("x-instance-id"), ["dev-1"]);
    assert_eq!(get("x-tenant-id"), ["tenant-1"]);
    assert_eq!(get("x-forwarded-for"), ["192.168.0.2"]);
    assert_eq!(get("x-neutron-network-id"), ["int"]);
    assert_eq!(get("x-quantum-network-id"), ["int"]);
    assert_eq!(get("host"), ["[fdca:3ba5:a17a:acda::1]:9697"]);
    assert_eq!(get("content-type"), ["text/plain"]);
    assert!(get("connection").is_empty());
    assert_eq!(*out.body(), "body");
}

#[test]
fn arp_frames() {
    let mac = [0x02, 0xa0, 0, 0, 0, 1];
    let ip = Ipv4Addr::new(172, 16, 77, 50);
    let req = garp::arp_frame(mac, ip, garp::ARP_REQUEST);
    assert_eq!(&req[0..6], &[0xff; 6]);
    assert_eq!(&req[6..12], &mac);
    assert_eq!(&req[12..14], &[0x08, 0x06]);
    assert_eq!(&req[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
    assert_eq!(&req[22..28], &mac);
    assert_eq!(&req[28..32], &ip.octets());
    assert_eq!(
        &req[32..38],
        &[0; 6],
        "a request announcement has a zero target MAC"
    );
    assert_eq!(&req[38..42], &ip.octets());
    let rep = garp::arp_frame(mac, ip, garp::ARP_REPLY);
    assert_eq!(&rep[20..22], &[0, 2]);
    assert_eq!(&rep[32..38], &mac);
}

#[test]
fn neighbour_advertisement_frame() {
    let mac = [0x02, 0xa0, 0, 0, 0, 1];
    let ip: Ipv6Addr = "2001:db8:77::50".parse().unwrap();
    let f = garp::na_frame(mac, ip, true);
    assert_eq!(f.len(), 14 + 40 + 32);
    assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    assert_eq!(f[14] >> 4, 6);
    assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32, "payload length");
    assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
    assert_eq!(&f[22..38], &ip.octets());
    let icmp = &f[54..];
    assert_eq!(icmp[0], 136);
    assert_eq!(icmp[4], 0xa0, "Router and Override, not Solicited");
    assert_eq!(&icmp[8..24], &ip.octets());
    assert_eq!(&icmp[24..26], &[2, 1]);
    assert_eq!(&icmp[26..32], &mac);
    // A correct checksum makes the sum over the packet (with pseudo-header) zero.
    let dst: Ipv6Addr = "ff02::1".parse().unwrap();
    assert_eq!(garp::icmpv6_checksum(ip, dst, icmp), 0);
}

#[test]
fn hostname_files() {
    assert_eq!(hostname::render_hostname_file("ak-x"), "ak-x\n");
    let hosts = hostname::render_hosts_file("ak-x", Some("fdca::5".parse().unwrap()));
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
    assert!(hosts.ends_with("fdca::5\tak-x\n"));
    assert!(!hostname::render_hosts_file("ak-x", None).contains("ak-x"));
    let c = config(&doc());
    assert_eq!(
        hostname::management_address(&c),
        Some("fdca:3ba5:a17a:acda::5".parse().unwrap())
    );
}

#[test]
fn services_can_live_in_shared_state() {
    fn send<T: Send + 'static>() {}
    send::<super::Services>();
}
