//! A JSON-aware mutator: most of the time an input is parsed as JSON and one node of it is
//! changed the way a config goes wrong (a key removed or added, an entry duplicated, a value
//! of another type, a hostile or boundary string, a boundary number, a subtree moved), then
//! serialised again; the rest of the time libFuzzer's own byte mutations run. Byte mutations
//! alone mostly break the JSON, and so rarely reach the renderers with a config that differs
//! from the seeds in a way that matters.

// xorshift64*: the mutation is a function of libFuzzer's seed.
use akanda_model::testing::Rng;
use serde_json::{json, Map, Value};

/// Strings the config holds or should refuse: enums, names, addresses and prefixes at their
/// edges, and text that would change a daemon's file or a header.
const STRINGS: &[&str] = &[
    "",
    " ",
    "x",
    "any",
    "router",
    "ge0",
    "ge1",
    "ge2",
    "ge3",
    "ge9999",
    "ge10000",
    "ge01",
    "lo",
    "external",
    "internal",
    "isolated",
    "management",
    "loadbalancer",
    "dhcp",
    "ra",
    "static",
    "pass",
    "block",
    "in",
    "out",
    "inet",
    "inet6",
    "tcp",
    "udp",
    "icmp",
    "imcp",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/8",
    "10.0.0.1",
    "10.9.0.0/16",
    "192.168.0.0/24",
    "192.168.0.1/24",
    "192.168.0.255/24",
    "192.168.0.0/31",
    "192.168.0.1/32",
    "192.168.0.10",
    "192.168.1.0/24",
    "172.16.77.1",
    "172.16.77.2/24",
    "172.16.77.50",
    "172.16.77.0/24",
    "2001:db8:100::/64",
    "2001:db8:100::/56",
    "2001:db8:100::1/64",
    "2001:db8:100::1/128",
    "2001:db8:77::1",
    "2001:db8:101::/64",
    "fe80::1/64",
    "fe80::1",
    "fdca:3ba5:a17a:acda::1",
    "::",
    "::1",
    "::ffff:10.0.0.5",
    "255.255.255.255",
    "224.0.0.1",
    "fa:16:3e:00:00:01",
    "FA-16-3E-00-00-02",
    "00:00:00:00:00:00",
    "***",
    "secret",
    "a\nb",
    "x\ndhcp-range=0.0.0.0,255.255.255.255",
    "x\r\nX-Injected: 1",
    "\u{0}",
    "\"q\"",
    "#c",
    "a;b",
    "{ }",
    "a b",
    "a,b",
    "a=b",
    "a/b",
    "\\",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "Ω≈ç",
    "host-1.local",
    "192-168-0-2.local",
    "--5.local",
    "-x",
    "_x",
    "x.",
    "a..b",
    "PENDING_CREATE",
    "bi-directional",
    "aes-128",
    "group5",
    "subnet",
    "cidr",
    "d22b149cee9b4eac8349c517eda00b89",
    "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
];

const NUMBERS: &[i64] = &[
    0,
    1,
    2,
    22,
    53,
    67,
    68,
    80,
    443,
    1279,
    1280,
    1420,
    1450,
    1500,
    9000,
    9697,
    64512,
    65535,
    65536,
    4_294_967_295,
    4_294_967_296,
    -1,
];

const KEYS: &[&str] = &[
    "tenant_id",
    "hostname",
    "asn",
    "neighbor_asn",
    "default_v4_gateway",
    "ha_resource",
    "orchestrator",
    "address",
    "metadata_port",
    "host",
    "networks",
    "network_id",
    "name",
    "network_type",
    "mtu",
    "v4_conf_service",
    "v6_conf_service",
    "interface",
    "ifname",
    "addresses",
    "description",
    "subnets",
    "id",
    "cidr",
    "gateway_ip",
    "dhcp_enabled",
    "dns_nameservers",
    "host_routes",
    "destination",
    "nexthop",
    "next_hop",
    "allocations",
    "mac_address",
    "ip_addresses",
    "device_id",
    "floating_ips",
    "floating_ip",
    "fixed_ip",
    "static_routes",
    "address_book",
    "labels",
    "anchors",
    "rules",
    "action",
    "direction",
    "destination_interface",
    "family",
    "protocol",
    "source",
    "source_port",
    "destination_port",
    "vpn",
    "ipsec",
    "ipsec_connections",
    "psk",
    "peer_id",
    "peer_address",
    "peer_cidrs",
    "services",
];

/// Subtrees a config may gain: networks, rules, lists of the firewall's names.
fn subtrees(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => {
            json!({"network_id": "n-x", "network_type": *rng.pick(&["internal", "isolated", "external", "loadbalancer"]),
                   "mtu": *rng.pick(NUMBERS), "v6_conf_service": *rng.pick(&["ra", "dhcp", "static"]),
                   "interface": {"ifname": "ge3", "addresses": ["10.3.0.1/24"]},
                   "subnets": [{"id": "s-x", "cidr": "10.3.0.0/24", "gateway_ip": "10.3.0.1", "dhcp_enabled": true,
                                "dns_nameservers": ["10.3.0.53"], "host_routes": [{"destination": "10.4.0.0/16", "nexthop": "10.3.0.254"}]},
                               {"id": "s-y", "cidr": "2001:db8:3::/64", "gateway_ip": "2001:db8:3::1", "dhcp_enabled": rng.below(2) == 0}],
                   "allocations": [{"mac_address": "fa:16:3e:33:00:01", "ip_addresses": {"10.3.0.5": true, "2001:db8:3::5": true},
                                    "hostname": "10-3-0-5.local", "device_id": "dev-1"}]})
        }
        1 => json!([{"name": "a", "rules": [{"action": "pass", "protocol": "tcp", "source": "book",
                     "destination": "0.0.0.0/0", "destination_port": 22, "interface": "ge2", "direction": "in"}]}]),
        2 => json!({"book": ["203.0.113.0/24", "2001:db8:998::/48"], "web": ["192.168.0.10/32"]}),
        3 => {
            json!({"action": *rng.pick(&["pass", "block"]), "family": *rng.pick(&["inet", "inet6"]),
                    "protocol": *rng.pick(&["tcp", "udp", "icmp"]), "source": *rng.pick(STRINGS),
                    "destination": *rng.pick(STRINGS), "source_port": *rng.pick(NUMBERS)})
        }
        4 => json!({"floating_ip": "172.16.77.60", "fixed_ip": "192.168.0.20"}),
        5 => json!(["10.9.0.0/16", "172.16.77.1"]),
        6 => json!({"ipsec": [{"id": "v", "ipsec_connections": [{"psk": *rng.pick(STRINGS),
                    "peer_id": *rng.pick(STRINGS), "peer_address": *rng.pick(STRINGS)}]}]}),
        _ => json!({"destination": *rng.pick(STRINGS), "nexthop": *rng.pick(STRINGS)}),
    }
}

fn leaf(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0..=4 => json!(*rng.pick(STRINGS)),
        5 => json!("x".repeat(1 + rng.below(300))),
        6..=7 => json!(*rng.pick(NUMBERS)),
        8 => json!(rng.below(2) == 0),
        _ => Value::Null,
    }
}

/// Every node's path (indices into arrays, keys of objects).
fn paths(v: &Value, here: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(PathStep::Key(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(PathStep::Index(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        PathStep::Key(k) => v.get_mut(k),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

/// One structural mutation of `doc`.
fn mutate_value(rng: &mut Rng, doc: &mut Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    let snapshot = doc.clone();
    let Some(node) = at(doc, &path) else { return };
    match rng.below(10) {
        // A leaf of any kind in place of the node.
        0 | 1 => *node = leaf(rng),
        // A string edited: a hostile character or a number appended, or a part cut.
        2 => {
            if let Value::String(s) = node {
                match rng.below(4) {
                    0 => s.push(
                        *rng.pick(&['\n', '\0', '"', '#', ';', '{', '}', ' ', ',', '/', '\u{7f}']),
                    ),
                    1 => s.push_str(&rng.below(300).to_string()),
                    2 => {
                        let cut = rng.below(s.len() + 1);
                        if s.is_char_boundary(cut) {
                            s.truncate(cut);
                        }
                    }
                    _ => *s = s.repeat(1 + rng.below(4)),
                }
            } else {
                *node = leaf(rng);
            }
        }
        // A number at an edge.
        3 => {
            if node.is_number() || rng.below(4) == 0 {
                *node = json!(*rng.pick(NUMBERS));
            }
        }
        // Remove an entry or a key of this container.
        4 => match node {
            Value::Object(m) if !m.is_empty() => {
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                m.shift_remove(&k);
            }
            Value::Array(a) if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => *node = Value::Null,
        },
        // Duplicate an entry, or add a key.
        5 | 6 => match node {
            Value::Array(a) if !a.is_empty() => {
                let copy = a[rng.below(a.len())].clone();
                a.push(copy);
            }
            Value::Array(a) => a.push(subtrees(rng)),
            Value::Object(m) => {
                let value = if rng.below(2) == 0 {
                    leaf(rng)
                } else {
                    subtrees(rng)
                };
                m.insert(rng.pick(KEYS).to_string(), value);
            }
            _ => *node = subtrees(rng),
        },
        // A subtree from elsewhere in the document.
        7 => {
            let mut others = Vec::new();
            paths(&snapshot, &mut Vec::new(), &mut others);
            let from = rng.pick(&others).clone();
            let mut source = snapshot.clone();
            if let Some(v) = at(&mut source, &from) {
                *node = v.clone();
            }
        }
        // A new subtree.
        8 => *node = subtrees(rng),
        // An empty container of the same kind.
        _ => match node {
            Value::Object(m) => *m = Map::new(),
            Value::Array(a) => a.clear(),
            _ => *node = Value::Null,
        },
    }
}

/// The custom mutator: a structural mutation (1 to 3 of them) of `data` when it is JSON and
/// `seed` falls in the `json_percent` share, else libFuzzer's byte mutations.
pub fn mutate(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    json_percent: u32,
) -> usize {
    let mut rng = Rng(u64::from(seed) << 1 | 1);
    if rng.below(100) < json_percent as usize {
        if let Ok(mut doc) = serde_json::from_slice::<Value>(&data[..size]) {
            for _ in 0..1 + rng.below(3) {
                mutate_value(&mut rng, &mut doc);
            }
            // Compact: smaller inputs run faster and keep the corpus small; libFuzzer's byte
            // mutations take care of whitespace.
            let bytes = serde_json::to_vec(&doc).unwrap_or_default();
            if !bytes.is_empty() && bytes.len() <= max_size {
                data[..bytes.len()].copy_from_slice(&bytes);
                return bytes.len();
            }
        }
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
}
