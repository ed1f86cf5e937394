//! Mutated configs against a live agent (issue 12): at least 5,000 configs derived from the
//! applied conformance config by random structural and value mutations (keys removed, values
//! of the wrong type, hostile strings, wrong prefixes, duplicated list entries, subtrees moved
//! elsewhere) are PUT to an agent in a namespace. Each must get a 200 or a 4xx with a JSON
//! body, within 60 s: never a 5xx, never a hang. After each refusal the box must be exactly as
//! before: the kernel state (links, addresses, routes, rules, the nf_tables ruleset), the
//! saved config and every daemon file under the state directory. After each 200 the base
//! config is pushed again and must apply.
//!
//! `AKANDA_MUTATIONS=N` changes the count (default 5,000); `AKANDA_MUTATION_SEED=S` replays a
//! run (the seed is printed).
//!
//! A second test tries injections through every free string field (docs/config.md,
//! "Grammars") against the same kind of live agent: each is a 422 naming the field, and the
//! box is byte-identical afterwards.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use akanda_model::testing::Rng;
use akanda_tests::{conformance_json, dump_state, in_netns, require_root, RouterLab};
use serde_json::{json, Value};

/// One HTTP/1.1 keep-alive connection from the mgmt namespace (the socket is made there).
struct Client {
    ns: String,
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Client {
    fn connect(&mut self, lab: &RouterLab) -> std::io::Result<()> {
        let addr = self.addr;
        let stream = in_netns(lab.mgmt(), move || TcpStream::connect(addr))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        self.stream = Some(BufReader::new(stream));
        Ok(())
    }

    /// PUT /v1/system/config; (status, body). Reconnects once if the connection was closed
    /// before an answer began (PUT is idempotent).
    fn put(&mut self, lab: &RouterLab, body: &[u8]) -> Result<(u16, String), String> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                self.connect(lab)
                    .map_err(|e| format!("connect from {}: {e}", self.ns))?;
            }
            match self.exchange(body) {
                Ok(r) => return Ok(r),
                Err((began, e)) => {
                    self.stream = None;
                    if began || attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    /// One request; on error, whether the answer had begun.
    fn exchange(&mut self, body: &[u8]) -> Result<(u16, String), (bool, String)> {
        let reader = self.stream.as_mut().unwrap();
        let head = format!(
            "PUT /v1/system/config HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let w = reader.get_mut();
        w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(body))
            .map_err(|e| (false, format!("write: {e}")))?;
        let mut status_line = String::new();
        match reader.read_line(&mut status_line) {
            Ok(0) => return Err((false, "closed before answering".into())),
            Ok(_) => {}
            Err(e) => return Err((false, format!("no answer within 60 s (hang?): {e}"))),
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (true, format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| (true, format!("headers: {e}")))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let length = length.ok_or_else(|| (true, "no Content-Length".to_string()))?;
        let mut buf = vec![0; length];
        reader
            .read_exact(&mut buf)
            .map_err(|e| (true, format!("body: {e}")))?;
        if close {
            self.stream = None;
        }
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// A step of a path into a JSON document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(Step::Key(k.clone()));
                out.push(here.clone());
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(Step::Index(i));
                out.push(here.clone());
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Strings that reach daemon files, headers, kernel names and address parsers.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "a\nb",
    "x\ndhcp-range=0.0.0.0,255.255.255.255",
    "x\r\nX-Injected: 1",
    "protocol static { }",
    "$(reboot)",
    "`id`",
    "../../../../etc/passwd",
    "\u{0}",
    "ge0",
    "lo",
    "eth0.4095",
    "0.0.0.0",
    "0.0.0.0/0",
    "::/0",
    "255.255.255.255",
    "10.0.0.1/33",
    "192.168.0.1/0",
    "fe80::1%ge1",
    "2001:db8::/129",
    "::ffff:192.168.0.1",
    "1.2.3",
    "-1",
    "NaN",
    "true",
    "null",
    "***",
    "Ω≈ç√∫",
    "external",
    "internal",
    "management",
    "dhcp",
    "slaac",
    "fa:16:3e:00:00:01",
    "00:00:00:00:00:00",
    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p",
    "-leading-hyphen",
];

fn mutate(rng: &mut Rng, doc: &mut Value, base: &Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let path = rng.pick(&all).clone();
    let (last, parent_path) = path.split_last().unwrap();
    match rng.below(8) {
        // Remove the key or the list entry.
        0 => {
            if let Some(parent) = at(doc, parent_path) {
                match (parent, last) {
                    (Value::Object(m), Step::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Step::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        // Duplicate a list entry.
        1 => {
            if let (Some(Value::Array(a)), Step::Index(i)) = (at(doc, parent_path), last) {
                if *i < a.len() {
                    let copy = a[*i].clone();
                    a.push(copy);
                }
            }
        }
        // A hostile string.
        2 | 3 => {
            let s = if rng.below(20) == 0 {
                "x".repeat(5_000)
            } else {
                rng.pick(HOSTILE).to_string()
            };
            if let Some(v) = at(doc, &path) {
                *v = json!(s);
            }
        }
        // A value of another type or an extreme number.
        4 => {
            let values = [
                json!(null),
                json!(true),
                json!(0),
                json!(-1),
                json!(65536),
                json!(9_007_199_254_740_993_u64),
                json!(1e308),
                json!(0.5),
                json!([]),
                json!({}),
                json!([1, 2, 3]),
                json!({"unexpected": {"deep": [null]}}),
            ];
            if let Some(v) = at(doc, &path) {
                *v = rng.pick(&values).clone();
            }
        }
        // A prefix length or an address changed in place.
        5 => {
            if let Some(v) = at(doc, &path) {
                if let Some(s) = v.as_str() {
                    let changed = if let Some((addr, _)) = s.split_once('/') {
                        format!("{addr}/{}", rng.pick(&[0, 1, 8, 31, 32, 33, 64, 127, 128]))
                    } else if s.contains(':') && s.len() > 3 {
                        s.replacen(':', "::", 1)
                    } else if s.contains('.') {
                        s.replacen('.', ".2", 1)
                    } else {
                        format!("{s}{s}")
                    };
                    *v = json!(changed);
                }
            }
        }
        // A subtree from elsewhere in the base config.
        6 => {
            let mut base_paths = Vec::new();
            paths(base, &mut Vec::new(), &mut base_paths);
            let from = rng.pick(&base_paths).clone();
            let mut b = base.clone();
            let subtree = at(&mut b, &from).map(|v| v.clone());
            if let (Some(v), Some(subtree)) = (at(doc, &path), subtree) {
                *v = subtree;
            }
        }
        // An unknown key next to a real one.
        _ => {
            if let Some(Value::Object(m)) = at(doc, parent_path) {
                m.insert(format!("unknown_{}", rng.below(1000)), json!("x"));
            }
        }
    }
}

/// Every file under the state directory (daemon configs, the saved config), by path; the
/// saved config as `akanda-agent saved-config` reads it, not its slot files.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(saved) = akanda_tests::saved_config(dir) {
        out.insert("saved config".into(), saved);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() && !akanda_tests::is_saved_config_file(&p) {
                out.insert(
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                );
            }
        }
    }
    out
}

/// The box as a refusal must leave it: the kernel (as `dump_state` shows it, plus policy
/// rules and the nf_tables ruleset without its counters) and the files.
fn snapshot(lab: &RouterLab) -> (String, BTreeMap<String, Vec<u8>>) {
    let mut kernel = dump_state(lab.router());
    kernel.push_str(
        &lab.router()
            .sh("ip rule show; ip -6 rule show; nft -s list ruleset"),
    );
    (kernel, files(lab.state_dir()))
}

fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("before: {x}\nafter:  {y}"))
        .unwrap_or_else(|| format!("lengths {} vs {}", a.len(), b.len()))
}

#[test]
fn mutated_configs_get_200_or_4xx_and_a_refusal_changes_nothing_root() {
    if !require_root() {
        return;
    }
    let count: usize = std::env::var("AKANDA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let seed: u64 = std::env::var("AKANDA_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("AKANDA_MUTATION_SEED={seed}");
    let mut rng = Rng(seed);
    let lab = RouterLab::new("mutate");
    let _agent = lab.start_agent();
    let base = lab.fitted_config();
    let base_bytes = serde_json::to_vec(&base).unwrap();
    let mut client = Client {
        ns: lab.mgmt().name().to_string(),
        addr: lab.listen_addr(),
        stream: None,
    };
    let (status, body) = client.put(&lab, &base_bytes).unwrap();
    assert_eq!(status, 200, "{body}");
    let mut before = snapshot(&lab);

    let started = Instant::now();
    let (mut applied, mut refused) = (0usize, BTreeMap::<u16, usize>::new());
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        let mut doc = base.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut doc, &base);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        let t = Instant::now();
        let (status, body) = client
            .put(&lab, &bytes)
            .unwrap_or_else(|e| panic!("mutation {i} (seed {seed}): {e}\n{doc}"));
        slowest = slowest.max(t.elapsed());
        match status {
            200 => {
                applied += 1;
                let (status, body) = client.put(&lab, &base_bytes).unwrap();
                assert_eq!(
                    status, 200,
                    "the base config again after mutation {i}: {body}"
                );
                // A config that applied and was replaced may leave other daemon files than
                // the base did before (a restarted dnsmasq's pid): take the box as it is now.
                before = snapshot(&lab);
            }
            400..=499 => {
                *refused.entry(status).or_default() += 1;
                let parsed: Result<Value, _> = serde_json::from_str(&body);
                assert!(
                    parsed.is_ok_and(|v| v.get("error").is_some()
                        || v.get("problems").is_some()
                        || v.is_object()),
                    "mutation {i}: a {status} without a JSON body: {body}"
                );
                let after = snapshot(&lab);
                assert!(
                    after.0 == before.0,
                    "mutation {i} (seed {seed}) was refused ({status}) but the kernel changed:\n{}\n{doc}",
                    first_difference(&before.0, &after.0)
                );
                assert!(
                    after.1 == before.1,
                    "mutation {i} (seed {seed}) was refused ({status}) but files changed: {:?}",
                    after
                        .1
                        .iter()
                        .filter(|(k, v)| before.1.get(*k) != Some(v))
                        .map(|(k, _)| k)
                        .chain(before.1.keys().filter(|k| !after.1.contains_key(*k)))
                        .collect::<Vec<_>>()
                );
            }
            _ => panic!("mutation {i} (seed {seed}): {status}: {body}\n{doc}"),
        }
    }
    eprintln!(
        "{count} mutated configs in {:.1?}: {applied} applied (each followed by the base config), refused {refused:?}; 0 5xx, 0 hangs, 0 partial applies; slowest answer {slowest:.1?}",
        started.elapsed()
    );
}

/// The strings an attacker puts in a field to add a directive to a daemon's file, a header to
/// the metadata proxy's request, or to end a C string, and a value past every grammar's length.
const INJECTIONS: &[&str] = &[
    "x\ndhcp-range=0.0.0.0,255.255.255.255",
    "x\r\nX-Injected: 1",
    "x\u{0}y",
    "x\"\n}\nprotocol static injected { }\n#",
];

/// Also refused where the grammar is strict (names, ids, host names): quotes, a comment, a
/// statement end, braces, a space.
const STRICT_ONLY: &str = "\"x\" #; {y}";

#[test]
fn an_injection_through_any_string_field_is_refused_and_changes_nothing_root() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("inject");
    let _agent = lab.start_agent();
    // The applied conformance config with a firewall and a VPN section, so that every free
    // string field has a value to replace.
    let mut base = lab.fitted_config();
    base["address_book"] = json!({"admins": ["203.0.113.0/24"]});
    base["labels"] = json!({"ext": ["192.168.57.0/24"]});
    base["anchors"] = json!([{"name": "ssh", "rules": [
        {"action": "pass", "protocol": "tcp", "source": "admins", "destination_port": 22}]}]);
    base["vpn"] = conformance_json("astara-router-full.json")["vpn"].clone();
    base["networks"][2]["name"] = json!("tenant net");
    let mut client = Client {
        ns: lab.mgmt().name().to_string(),
        addr: lab.listen_addr(),
        stream: None,
    };
    let (status, body) = client
        .put(&lab, &serde_json::to_vec(&base).unwrap())
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let table = lab.router().sh("nft list table inet akanda");
    assert!(
        table.contains("anchor ssh rule 0") && table.contains("label ext from"),
        "the names reach the rule comments:\n{table}"
    );
    let before = snapshot(&lab);

    // (JSON pointer, the path a 422 names, whether the grammar is strict)
    let c = "/vpn/ipsec/0/ipsec_connections/0";
    let cp = "vpn.ipsec[0].ipsec_connections[0]";
    let fields: Vec<(String, String, bool)> = [
        ("/tenant_id", "tenant_id".to_string(), false),
        ("/hostname", "hostname".into(), true),
        ("/orchestrator/host", "orchestrator.host".into(), true),
        (
            "/networks/2/network_id",
            "networks[2].network_id".into(),
            true,
        ),
        ("/networks/2/name", "networks[2].name".into(), false),
        (
            "/networks/2/subnets/0/id",
            "networks[2].subnets[0].id".into(),
            true,
        ),
        (
            "/networks/2/allocations/0/hostname",
            "networks[2].allocations[0].hostname".into(),
            true,
        ),
        (
            "/networks/2/allocations/0/device_id",
            "networks[2].allocations[0].device_id".into(),
            false,
        ),
        ("/anchors/0/name", "anchors[0].name".into(), true),
        ("/vpn/ipsec/0/id", "vpn.ipsec[0].id".into(), true),
        ("/vpn/ipsec/0/status", "vpn.ipsec[0].status".into(), true),
    ]
    .into_iter()
    .map(|(p, f, strict)| (p.to_string(), f, strict))
    .chain(
        [
            ("peer_id", false),
            ("psk", false),
            ("initiator", true),
            ("ikepolicy/encryption_algorithm", true),
            ("local_ep_group/endpoints/0", true),
        ]
        .into_iter()
        .map(|(k, strict)| {
            let path =
                format!("{cp}.{}", k.replace('/', ".")).replace(".endpoints.0", ".endpoints[0]");
            (format!("{c}/{k}"), path, strict)
        }),
    )
    .collect();

    let mut tried = 0;
    let mut check = |doc: &Value, path: &str, what: &str| {
        let (status, body) = client
            .put(&lab, &serde_json::to_vec(doc).unwrap())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, 422, "{what}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let named = answer["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p["path"] == path));
        assert!(named, "{what}: the 422 does not name {path}: {body}");
        let after = snapshot(&lab);
        assert!(
            after.0 == before.0,
            "{what} was refused but the kernel changed:\n{}",
            first_difference(&before.0, &after.0)
        );
        assert!(after.1 == before.1, "{what} was refused but files changed");
        tried += 1;
    };
    for (pointer, path, strict) in &fields {
        let strict_only = [STRICT_ONLY];
        let extra: &[&str] = if *strict { &strict_only } else { &[] };
        for bad in INJECTIONS.iter().chain(extra) {
            let mut doc = base.clone();
            *doc.pointer_mut(pointer)
                .unwrap_or_else(|| panic!("no {pointer}")) = json!(bad);
            check(&doc, path, &format!("{pointer} = {bad:?}"));
        }
        let mut doc = base.clone();
        *doc.pointer_mut(pointer).unwrap() = json!("x".repeat(300));
        check(&doc, path, &format!("{pointer} = 300 characters"));
    }
    // Names that are keys: the address book's and the labels'.
    for list in ["address_book", "labels"] {
        for bad in INJECTIONS.iter().chain([&STRICT_ONLY]) {
            let mut doc = base.clone();
            doc[list] = json!({ *bad: ["10.0.0.0/8"] });
            doc["anchors"] = json!([]);
            let path = format!("{list}[{}]", Value::String(bad.to_string()));
            check(&doc, &path, &format!("{list} name {bad:?}"));
        }
    }
    eprintln!(
        "{tried} injections through {} fields: each a 422 naming its field, the box unchanged",
        fields.len() + 2
    );
}
