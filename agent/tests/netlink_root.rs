//! Root-only tests of `akanda_agent::netlink` against the real kernel.
//!
//! Each test creates its own network namespace (the harness's, `akt-nl-<pid>-<n>`), runs
//! the netlink code on a thread that has entered it, checks the result with
//! `ip -n NS -j ...`, and deletes the namespace when it ends, even on failure.
//! Without root they fail, unless AKANDA_SKIP_ROOT_TESTS=1 is set.

use akanda_tests::run_host;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use akanda_agent::netlink::{
    format_mac, Address, Link, Netlink, NetlinkError, Route, RTPROT_AKANDA,
};
use ipnet::IpNet;
use serde_json::Value;

const MAIN: u32 = 254;

/// A test network namespace by name, queried with `ip -n NAME`; a copy goes to the thread
/// that runs the check.
#[derive(Clone)]
struct Netns {
    name: String,
}

impl Netns {
    /// Creates the harness's `akt-nl-<pid>-<n>`, which is deleted when the returned owner is
    /// dropped (so a failing test leaves nothing behind), and leftovers of a killed run by the
    /// next one.
    fn create() -> (Netns, akanda_tests::Netns) {
        let owner = akanda_tests::Netns::new("nl");
        let ns = Netns {
            name: owner.name().to_string(),
        };
        (ns, owner)
    }

    /// Runs `ip -n NS ARGS...`; panics if it fails.
    fn ip(&self, args: &str) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend(args.split_whitespace());
        run_host(&argv)
    }

    /// Runs `ip -n NS -j ARGS...` and parses its JSON.
    fn ip_json(&self, args: &str) -> Vec<Value> {
        let out = self.ip(&format!("-j {args}"));
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(items)) => items,
            _ => panic!("ip -j {args}: unexpected output {out:?}"),
        }
    }

    fn ip_link(&self, name: &str) -> Value {
        self.ip_json(&format!("-d link show dev {name}"))
            .pop()
            .unwrap_or_else(|| panic!("ip shows no link {name}"))
    }

    /// `addr_info` entries of `dev` as (local address, prefixlen, entry).
    fn ip_addrs(&self, dev: &str) -> Vec<(IpAddr, u8, Value)> {
        let link = self
            .ip_json(&format!("addr show dev {dev}"))
            .pop()
            .unwrap_or_else(|| panic!("ip shows no link {dev}"));
        let infos = link["addr_info"].as_array().cloned().unwrap_or_default();
        infos
            .into_iter()
            .map(|info| {
                let ip = info["local"].as_str().unwrap().parse().unwrap();
                let prefix = info["prefixlen"].as_u64().unwrap() as u8;
                (ip, prefix, info)
            })
            .collect()
    }

    /// Routes of the main table (`family` is "-4" or "-6") as ip prints them.
    fn ip_routes(&self, family: &str) -> Vec<Value> {
        self.ip_json(&format!("{family} route show table main"))
    }
}

/// False when the test must be skipped (not root and AKANDA_SKIP_ROOT_TESTS=1);
/// panics when not root otherwise.
fn root_or_skip(_test: &str) -> bool {
    akanda_tests::require_root()
}

/// Creates a namespace, lets `setup` prepare it with `ip -n`, then runs
/// `check` on a thread inside that namespace with a current-thread tokio
/// runtime. The namespace is deleted afterwards, whether `check` passed or not.
fn in_netns<F, Fut>(test: &str, setup: &[&str], check: F)
where
    F: FnOnce(Netns) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !root_or_skip(test) {
        return;
    }
    let (ns, owner) = Netns::create();
    for args in setup {
        ns.ip(args);
    }
    akanda_tests::in_netns(&owner, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(ns));
    });
}

fn link<'a>(links: &'a [Link], name: &str) -> &'a Link {
    links
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("links() has no {name}: {links:?}"))
}

fn has_flag(ip_link: &Value, flag: &str) -> bool {
    ip_link["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == flag))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn links_rename_mtu_and_up_down() {
    let setup = [
        "link add ak0 type veth peer name ak1",
        "link set ak0 address fa:16:3e:00:00:01 mtu 1400",
    ];
    in_netns("links_rename_mtu_and_up_down", &setup, |ns| async move {
        let nl = Netlink::connect().unwrap();

        let links = nl.links().await.unwrap();
        let lo = link(&links, "lo");
        assert_eq!(lo.link_type, 772);
        assert_eq!(lo.kind, None);
        let ak0 = link(&links, "ak0").clone();
        assert_eq!(ak0.mac, Some([0xfa, 0x16, 0x3e, 0, 0, 1]));
        assert_eq!(ak0.mtu, 1400);
        assert_eq!(ak0.kind.as_deref(), Some("veth"));
        assert_eq!(ak0.link_type, 1);
        assert!(!ak0.up && !ak0.oper_up);
        let from_ip = ns.ip_link("ak0");
        assert_eq!(from_ip["ifindex"], ak0.index);
        assert_eq!(from_ip["mtu"], 1400);
        assert_eq!(from_ip["address"], format_mac(&ak0.mac.unwrap()));
        assert_eq!(from_ip["linkinfo"]["info_kind"], "veth");
        assert_eq!(nl.writes(), 0, "a dump must not write");

        nl.set_link_up(ak0.index, true).await.unwrap();
        assert!(has_flag(&ns.ip_link("ak0"), "UP"));
        ns.ip("link set ak1 up");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !link(&nl.links().await.unwrap(), "ak0").oper_up {
            assert!(Instant::now() < deadline, "ak0 never got a carrier");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(link(&nl.links().await.unwrap(), "ak0").up);

        nl.set_link_mtu(ak0.index, 9000).await.unwrap();
        assert_eq!(ns.ip_link("ak0")["mtu"], 9000);
        assert_eq!(link(&nl.links().await.unwrap(), "ak0").mtu, 9000);
        assert_eq!(nl.writes(), 2);

        // Renaming an up link: down, rename, up.
        nl.set_link_name(ak0.index, "ge0").await.unwrap();
        assert_eq!(nl.writes(), 5);
        let renamed = ns.ip_link("ge0");
        assert_eq!(renamed["ifindex"], ak0.index);
        assert!(has_flag(&renamed, "UP"), "ge0 must be up again: {renamed}");
        let ge0 = link(&nl.links().await.unwrap(), "ge0").clone();
        assert!(ge0.up);
        assert_eq!((ge0.index, ge0.mac, ge0.mtu), (ak0.index, ak0.mac, 9000));

        nl.set_link_name(ak0.index, "ge0").await.unwrap();
        assert_eq!(nl.writes(), 5, "renaming to the same name sends nothing");

        nl.set_link_up(ak0.index, false).await.unwrap();
        assert!(!has_flag(&ns.ip_link("ge0"), "UP"));
        assert!(!link(&nl.links().await.unwrap(), "ge0").up);
        nl.set_link_name(ak0.index, "ge1").await.unwrap();
        assert_eq!(nl.writes(), 7, "renaming a down link is one write");
        assert!(!has_flag(&ns.ip_link("ge1"), "UP"));

        let err = nl.set_link_mtu(ak0.index, 100_000).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        assert!(
            err.to_string().starts_with("set mtu 100000 on ge1: "),
            "{err}"
        );
        let err = nl.set_link_up(999_999, true).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        assert!(err.to_string().contains("ifindex 999999"), "{err}");
        assert_eq!(nl.writes(), 9);
    });
}

/// Without `nodad` an IPv6 address is optimistic where the link allows it, as the agent lets
/// the external NIC: duplicate address detection runs, and the address can be bound at once
/// (bird binds its BGP connection to it). Elsewhere it cannot be bound until DAD ends.
#[test]
fn dad_addresses_are_usable_at_once_where_optimistic_dad_is_on() {
    let setup = [
        "link set lo up",
        "link add ak0 type veth peer name ak1",
        "link set ak0 up",
        "link set ak1 up",
    ];
    in_netns("optimistic_dad", &setup, |ns| async move {
        let nl = Netlink::connect().unwrap();
        let index = link(&nl.links().await.unwrap(), "ak0").index;
        let plain = net("2001:db8:51::2/64");
        nl.add_address(index, plain, false).await.unwrap();
        assert!(akanda_agent::sysctl::ensure_optimistic_dad("ak0").unwrap());
        assert!(!akanda_agent::sysctl::ensure_optimistic_dad("ak0").unwrap());
        let optimistic = net("2001:db8:52::2/64");
        nl.add_address(index, optimistic, false).await.unwrap();

        let from_ip = ns.ip_addrs("ak0");
        let entry = |n: IpNet| {
            from_ip
                .iter()
                .find(|(a, _, _)| *a == n.addr())
                .map(|(_, _, info)| info.clone())
                .unwrap_or_else(|| panic!("ip does not show {n}: {from_ip:?}"))
        };
        assert_eq!(
            entry(optimistic)["optimistic"],
            true,
            "{}",
            entry(optimistic)
        );
        assert_eq!(entry(optimistic)["tentative"], true, "DAD still runs");
        assert!(entry(plain)["optimistic"].is_null(), "{}", entry(plain));
        assert_eq!(entry(plain)["tentative"], true);

        let bind = |n: IpNet| std::net::TcpListener::bind(std::net::SocketAddr::new(n.addr(), 0));
        bind(optimistic).expect("an optimistic address can be bound");
        let err = bind(plain).expect_err("a tentative address cannot be bound");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{err}");
    });
}

#[test]
fn addresses_v4_and_v6() {
    let setup = [
        "link set lo up",
        "link add ak0 type veth peer name ak1",
        "link set ak0 up",
        "link set ak1 up",
    ];
    in_netns("addresses_v4_and_v6", &setup, |ns| async move {
        let nl = Netlink::connect().unwrap();
        let index = link(&nl.links().await.unwrap(), "ak0").index;

        let v4 = net("192.168.50.1/24");
        let v6 = net("fd00:50::1/64");
        let v6_dad = net("fd00:51::1/64");
        nl.add_address(index, v4, true).await.unwrap();
        nl.add_address(index, v6, true).await.unwrap();
        nl.add_address(index, v6_dad, false).await.unwrap();
        assert_eq!(nl.writes(), 3);

        let from_ip = ns.ip_addrs("ak0");
        let entry = |n: IpNet| {
            from_ip
                .iter()
                .find(|(a, p, _)| *a == n.addr() && *p == n.prefix_len())
                .map(|(_, _, info)| info.clone())
                .unwrap_or_else(|| panic!("ip does not show {n}: {from_ip:?}"))
        };
        assert_eq!(entry(v4)["broadcast"], "192.168.50.255");
        assert_eq!(entry(v6)["nodad"], true);
        assert!(entry(v6)["tentative"].is_null(), "{}", entry(v6));
        assert_eq!(entry(v6_dad)["tentative"], true, "DAD runs without nodad");

        let addresses = nl.addresses().await.unwrap();
        for n in [v4, v6, v6_dad] {
            assert!(addresses.contains(&Address { index, net: n }), "{n}");
        }
        let lo = link(&nl.links().await.unwrap(), "lo").index;
        assert!(addresses.contains(&Address {
            index: lo,
            net: net("127.0.0.1/8")
        }));
        // Every address ip shows on ak0 (incl. the link-local one) is reported.
        for (a, p, _) in &from_ip {
            let n = IpNet::new(*a, *p).unwrap();
            assert!(addresses.contains(&Address { index, net: n }), "{n}");
        }
        assert_eq!(nl.writes(), 3, "dumps must not write");

        for n in [v4, v6, v6_dad] {
            nl.del_address(index, n).await.unwrap();
        }
        assert_eq!(nl.writes(), 6);
        let left: Vec<IpAddr> = ns.ip_addrs("ak0").iter().map(|(a, _, _)| *a).collect();
        for n in [v4, v6, v6_dad] {
            assert!(!left.contains(&n.addr()), "{n} still there: {left:?}");
        }
        let addresses = nl.addresses().await.unwrap();
        assert!(!addresses.iter().any(|a| a.net == v4 || a.net == v6));

        let err = nl.del_address(index, v4).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL), "{err}");
        assert!(
            err.to_string()
                .starts_with("delete address 192.168.50.1/24 from ak0: "),
            "{err}"
        );
        nl.add_address(index, v4, false).await.unwrap();
        let err = nl.add_address(index, v4, false).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert_eq!(nl.writes(), 9);
    });
}

/// The route ip shows for `dst` in the main table, if any.
fn ip_route(ns: &Netns, dst: &str) -> Option<Value> {
    let family = if dst.contains(':') { "-6" } else { "-4" };
    let key = match dst {
        "0.0.0.0/0" | "::/0" => "default",
        other => other,
    };
    let matching: Vec<Value> = ns
        .ip_routes(family)
        .into_iter()
        .filter(|r| r["dst"] == key)
        .collect();
    assert!(
        matching.len() <= 1,
        "several routes for {dst}: {matching:?}"
    );
    matching.into_iter().next()
}

fn route(dst: &str, gateway: Option<&str>, oif: Option<u32>) -> Route {
    Route {
        dst: net(dst),
        gateway: gateway.map(ip),
        oif,
        protocol: RTPROT_AKANDA,
        table: MAIN,
    }
}

#[test]
fn routes_v4_and_v6() {
    let setup = [
        "link add ak0 type veth peer name ak1",
        "link set ak0 up",
        "link set ak1 up",
        "addr add 10.99.0.2/24 dev ak0",
        "addr add fd00:99::2/64 dev ak0 nodad",
        // Not in the main table: routes() must not report it.
        "route add 10.77.0.0/16 via 10.99.0.1 table 100",
    ];
    in_netns("routes_v4_and_v6", &setup, |ns| async move {
        let nl = Netlink::connect().unwrap();
        let oif = link(&nl.links().await.unwrap(), "ak0").index;

        let initial = nl.routes().await.unwrap();
        assert!(initial.iter().all(|r| r.table == MAIN));
        assert!(!initial.iter().any(|r| r.dst == net("10.77.0.0/16")));
        let connected = initial
            .iter()
            .find(|r| r.dst == net("10.99.0.0/24"))
            .expect("connected route");
        assert_eq!((connected.protocol, connected.oif), (2, Some(oif)));
        assert!(initial.iter().any(|r| r.dst == net("fd00:99::/64")));
        assert_eq!(nl.writes(), 0);

        let wanted = [
            route("10.9.0.0/16", Some("10.99.0.1"), Some(oif)),
            route("2001:db8:9::/48", Some("fd00:99::1"), Some(oif)),
            route("0.0.0.0/0", Some("10.99.0.1"), None),
            route("::/0", Some("fd00:99::1"), Some(oif)),
            route("10.10.0.0/24", None, Some(oif)),
        ];
        for r in &wanted {
            nl.replace_route(r).await.unwrap();
        }
        assert_eq!(nl.writes(), 5);

        let routes = nl.routes().await.unwrap();
        for r in &wanted {
            let shown = ip_route(&ns, &r.dst.to_string())
                .unwrap_or_else(|| panic!("ip does not show {}", r.dst));
            assert_eq!(shown["protocol"], RTPROT_AKANDA.to_string(), "{shown}");
            assert_eq!(shown["dev"], "ak0", "{shown}");
            match r.gateway {
                Some(gw) => assert_eq!(shown["gateway"], gw.to_string(), "{shown}"),
                None => {
                    assert!(shown["gateway"].is_null(), "{shown}");
                    assert_eq!(shown["scope"], "link", "{shown}");
                }
            }
            // The kernel fills in the output link when we leave it out.
            let reported = Route {
                oif: Some(oif),
                ..r.clone()
            };
            assert!(routes.contains(&reported), "{reported:?} not in {routes:?}");
        }
        assert_eq!(ip_route(&ns, "2001:db8:9::/48").unwrap()["metric"], 1024);
        assert_eq!(nl.writes(), 5, "dumps must not write");

        // Replacing with another gateway replaces instead of failing or adding.
        let moved_v4 = route("10.9.0.0/16", Some("10.99.0.3"), Some(oif));
        let moved_v6 = route("2001:db8:9::/48", Some("fd00:99::3"), Some(oif));
        nl.replace_route(&moved_v4).await.unwrap();
        nl.replace_route(&moved_v6).await.unwrap();
        assert_eq!(
            ip_route(&ns, "10.9.0.0/16").unwrap()["gateway"],
            "10.99.0.3"
        );
        assert_eq!(
            ip_route(&ns, "2001:db8:9::/48").unwrap()["gateway"],
            "fd00:99::3"
        );
        let routes = nl.routes().await.unwrap();
        assert_eq!(routes.iter().filter(|r| r.dst == moved_v4.dst).count(), 1);
        assert_eq!(routes.iter().filter(|r| r.dst == moved_v6.dst).count(), 1);
        // Replacing an identical route is accepted too.
        nl.replace_route(&moved_v6).await.unwrap();
        assert_eq!(nl.writes(), 8);

        // Deleting a route that does not match exactly fails and keeps it.
        let wrong_gateway = route("10.9.0.0/16", Some("10.99.0.1"), Some(oif));
        let err = nl.del_route(&wrong_gateway).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::ESRCH), "{err}");
        let wrong_proto = Route {
            protocol: 4,
            ..moved_v6.clone()
        };
        let err = nl.del_route(&wrong_proto).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::ESRCH), "{err}");
        assert!(ip_route(&ns, "10.9.0.0/16").is_some());
        assert!(ip_route(&ns, "2001:db8:9::/48").is_some());

        // Delete what routes() reports, as the agent does.
        let ours: Vec<Route> = nl
            .routes()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.protocol == RTPROT_AKANDA)
            .collect();
        assert_eq!(ours.len(), 5, "{ours:?}");
        for r in &ours {
            nl.del_route(r).await.unwrap();
        }
        for r in &ours {
            assert!(ip_route(&ns, &r.dst.to_string()).is_none(), "{r:?}");
        }
        // As given to replace_route (oif left out), a delete also matches.
        nl.replace_route(&wanted[2]).await.unwrap();
        nl.del_route(&wanted[2]).await.unwrap();
        assert!(ip_route(&ns, "0.0.0.0/0").is_none());
        let left = nl.routes().await.unwrap();
        assert!(
            !left.iter().any(|r| r.protocol == RTPROT_AKANDA),
            "{left:?}"
        );
        assert!(left.contains(connected), "connected route must stay");
        assert_eq!(nl.writes(), 10 + 5 + 2);
    });
}

#[test]
fn unreachable_gateway_is_a_kernel_error() {
    let setup = [
        "link add ak0 type veth peer name ak1",
        "link set ak0 up",
        "addr add 10.99.0.2/24 dev ak0",
    ];
    in_netns(
        "unreachable_gateway_is_a_kernel_error",
        &setup,
        |ns| async move {
            let nl = Netlink::connect().unwrap();

            let r = route("10.9.0.0/16", Some("10.123.0.1"), None);
            let err = nl.replace_route(&r).await.unwrap_err();
            match &err {
                NetlinkError::Kernel { op, errno, message } => {
                    assert_eq!(*errno, 101);
                    assert_eq!(op, "replace route 10.9.0.0/16 via 10.123.0.1");
                    assert_eq!(message, "Network is unreachable");
                }
                other => panic!("expected a kernel error, got {other:?}"),
            }
            assert_eq!(err.errno(), Some(libc::ENETUNREACH));
            assert_eq!(
                err.to_string(),
                "replace route 10.9.0.0/16 via 10.123.0.1: Network is unreachable (errno 101)"
            );

            let oif = link(&nl.links().await.unwrap(), "ak0").index;
            let r = route("10.9.0.0/16", Some("10.123.0.1"), Some(oif));
            let err = nl.replace_route(&r).await.unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
            assert!(
                err.to_string()
                    .starts_with("replace route 10.9.0.0/16 via 10.123.0.1 dev ak0: "),
                "{err}"
            );
            assert!(ip_route(&ns, "10.9.0.0/16").is_none());
            assert_eq!(nl.writes(), 2, "failed writes count too");
        },
    );
}
