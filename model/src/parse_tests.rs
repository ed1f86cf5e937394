//! [`parse`] answers from one typed pass ([`parse_certain`]) only where the two-pass
//! [`parse_checked`] would answer the same: each test compares the two, on valid configs and on
//! bodies made from them (hazards in known and ignored values, odd tops and tails, and
//! thousands of random mutations).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use super::*;
use crate::bounds::MAX_STRING_BYTES;
use crate::testing::Rng;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// The basic conformance config grown to `n` floating IPs, as the request-path bench grows it.
fn with_floating_ips(n: u32) -> Value {
    crate::testing::with_floating_ips(fixture_json("astara-router-basic.json"), n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Fast,
    Checked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Malformed,
    Invalid,
}

/// Asserts that [`parse`] answers `bytes` exactly as [`parse_checked`]; says which way it went
/// and what the answer was.
#[track_caller]
fn same_as_checked(bytes: &[u8]) -> (Way, Outcome) {
    let answer = parse(bytes);
    let checked = parse_checked(bytes);
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(600)]).into_owned();
    let outcome = match (&answer, &checked) {
        (Ok(a), Ok(c)) => {
            assert!(
                a == c,
                "another config than the checked parse's for {}",
                shown()
            );
            Outcome::Accepted
        }
        (Err(a), Err(c)) => {
            assert_eq!(format!("{a:?}"), format!("{c:?}"), "for {}", shown());
            assert_eq!(a.to_string(), c.to_string());
            match c {
                ConfigError::Syntax(_) => Outcome::Malformed,
                ConfigError::Invalid(_) => Outcome::Invalid,
            }
        }
        _ => panic!(
            "parse answered {answer:?}, the checked parse {checked:?}, for {}",
            shown()
        ),
    };
    let way = if parse_certain(bytes).is_some() {
        Way::Fast
    } else {
        Way::Checked
    };
    (way, outcome)
}

/// What serde_json's typed pass alone makes of `bytes` (with nothing after the value): the
/// fast path without its byte check.
fn typed_pass_alone(bytes: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Document::deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// `json` (compact) with its string `"@"` replaced by `value`, raw bytes.
fn with_value(json: &Value, value: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(json).unwrap();
    let at = text
        .windows(3)
        .position(|w| w == b"\"@\"")
        .expect("a placeholder");
    [&text[..at], value, &text[at + 3..]].concat()
}

/// Where a value of the document can sit: ignored (an unknown key, at several depths, and
/// the two [`bounds::Ignored`] fields) and read (a string field, a filter rule's scalar).
fn placements() -> Vec<(&'static str, Value)> {
    let base = fixture_json("astara-router-basic.json");
    let mut placed = Vec::new();
    let mut put = |name, edit: &dyn Fn(&mut Value)| {
        let mut doc = base.clone();
        edit(&mut doc);
        placed.push((name, doc));
    };
    put("unknown key", &|d| d["zz_unknown"] = json!("@"));
    put("unknown key deep", &|d| {
        d["networks"][0]["subnets"][0]["zz_unknown"] = json!({"a": ["@"]})
    });
    put("ha_config", &|d| d["ha_config"] = json!({"x": ["@"]}));
    put("services.router", &|d| {
        d["services"] = json!({"router": "@"})
    });
    put(
        "floating_ips[0] unknown",
        &|d| {
            d["floating_ips"] =
                json!([{"floating_ip": "172.16.77.20", "fixed_ip": "192.168.0.5", "extra": "@"}])
        },
    );
    put("hostname", &|d| d["hostname"] = json!("@"));
    put(
        "filter rule",
        &|d| d["anchors"] = json!([{"name": "a", "rules": [{"action": "pass", "zz": "@"}]}]),
    );
    placed
}

fn nested(depth: usize, open: &str, close: &str) -> Vec<u8> {
    [open.repeat(depth), close.repeat(depth)]
        .concat()
        .into_bytes()
}

fn string_of(content: &[u8]) -> Vec<u8> {
    [b"\"", content, b"\""].concat()
}

/// Values that an ignored value lets through and the scan refuses: the typed pass alone would
/// have accepted them there.
fn refused_by_the_scan_only() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("lone leading surrogate", br#""\ud800""#.to_vec()),
        ("lone trailing surrogate", br#""\uDC00""#.to_vec()),
        ("surrogate then a letter", br#""\uD83D\u0041""#.to_vec()),
        ("invalid UTF-8", string_of(b"\xff")),
        ("truncated UTF-8", string_of(b"a\xc3")),
        ("overlong UTF-8", string_of(b"\xc0\x80")),
        ("UTF-8 of a surrogate", string_of(b"\xed\xa0\x80")),
        (
            "invalid UTF-8 in a key",
            [b"{\"\xfe\":1}".as_slice()].concat(),
        ),
        ("1e400", b"1e400".to_vec()),
        ("-1E400", b"-1E400".to_vec()),
        ("1.5e309", b"1.5e309".to_vec()),
        ("400 digits", format!("1{}", "0".repeat(399)).into_bytes()),
        (
            "400 digits and a fraction",
            format!("9{}.5", "9".repeat(399)).into_bytes(),
        ),
        ("128 nested arrays", nested(128, "[", "]")),
        ("200 nested objects", {
            let mut v = "{\"a\":".repeat(200);
            v.push('1');
            v.push_str(&"}".repeat(200));
            v.into_bytes()
        }),
        (
            "a string over the limit",
            string_of(&[b'x'; MAX_STRING_BYTES + 1]),
        ),
        ("a key over the limit", {
            let key = string_of(&[b'k'; MAX_STRING_BYTES + 1]);
            [b"{", key.as_slice(), b":1}"].concat()
        }),
        ("escapes decoding over the limit", {
            string_of("\\u00e9".repeat(MAX_STRING_BYTES / 2 + 1).as_bytes())
        }),
    ]
}

/// Values that the scan accepts but the byte check is not certain of: they take the checked
/// path, to the same answer.
fn not_certain_but_accepted() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("surrogate pair", br#""\ud83d\ude00""#.to_vec()),
        ("exponent", b"1e5".to_vec()),
        ("tiny exponent", b"1e-400".to_vec()),
        ("65 digits", "1".repeat(65).into_bytes()),
        ("65 nested arrays", nested(65, "[", "]")),
        // The document's own object makes 127: serde_json's limit refuses a 128th.
        ("126 nested arrays", nested(126, "[", "]")),
        ("over the limit raw, under it decoded", {
            string_of("\\n".repeat(MAX_STRING_BYTES / 2 + 1).as_bytes())
        }),
    ]
}

/// Values the byte check is certain of.
fn certain() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "a string at the limit",
            string_of(&[b'x'; MAX_STRING_BYTES]),
        ),
        ("escapes at the limit raw", {
            string_of("\\\"".repeat(MAX_STRING_BYTES / 2).as_bytes())
        }),
        ("an escaped backslash last", br#""a\\""#.to_vec()),
        ("BMP escapes", br#""\u00e9\uFFFF\u0000""#.to_vec()),
        ("non-ASCII UTF-8", "\"é漢🙂\"".as_bytes().to_vec()),
        ("64 digits", "9".repeat(64).into_bytes()),
        ("decimals", b"[-0, 1.5, -12.25, 0.0000001]".to_vec()),
        ("literals", b"[true, false, null]".to_vec()),
        ("duplicate keys", br#"{"a":1,"a":2}"#.to_vec()),
        ("20 nested arrays", nested(20, "[", "]")),
    ]
}

#[test]
fn valid_configs_take_the_fast_path() {
    let bodies = [
        fixture("astara-router-basic.json"),
        fixture("astara-router-full.json"),
        fixture("astara-router-v6-prefix-gateway.json"),
        serde_json::to_vec(&fixture_json("astara-router-full.json")).unwrap(),
        serde_json::to_vec(&with_floating_ips(2000)).unwrap(),
        serde_json::to_vec_pretty(&with_floating_ips(300)).unwrap(),
    ];
    for body in bodies {
        assert_eq!(same_as_checked(&body), (Way::Fast, Outcome::Accepted));
    }
}

#[test]
fn what_only_the_scan_refuses_takes_the_checked_path() {
    for (place, doc) in placements() {
        for (what, value) in refused_by_the_scan_only() {
            let body = with_value(&doc, &value);
            let (way, outcome) = same_as_checked(&body);
            assert_eq!(way, Way::Checked, "{what} in {place}");
            assert_ne!(outcome, Outcome::Accepted, "{what} in {place}");
            let ignored = !matches!(place, "hostname" | "filter rule");
            if ignored {
                assert!(typed_pass_alone(&body), "{what} in {place}");
            }
        }
    }
}

#[test]
fn what_the_byte_check_is_unsure_of_takes_the_checked_path() {
    for (place, doc) in placements() {
        for (what, value) in not_certain_but_accepted() {
            let body = with_value(&doc, &value);
            assert_eq!(same_as_checked(&body).0, Way::Checked, "{what} in {place}");
        }
    }
    // Where the scan accepts them and the value is ignored, the config is accepted.
    let doc = &placements()[0].1;
    for (what, value) in not_certain_but_accepted() {
        let body = with_value(doc, &value);
        assert_eq!(same_as_checked(&body).1, Outcome::Accepted, "{what}");
    }
}

#[test]
fn what_the_byte_check_is_certain_of_takes_the_fast_path() {
    for (place, doc) in placements() {
        for (what, value) in certain() {
            let body = with_value(&doc, &value);
            let (way, _) = same_as_checked(&body);
            // A value of the wrong shape stops the typed pass itself (a list as a hostname).
            if typed_pass_alone(&body) {
                assert_eq!(way, Way::Fast, "{what} in {place}");
            }
        }
    }
    let doc = &placements()[0].1;
    for (what, value) in certain() {
        let body = with_value(doc, &value);
        assert_eq!(
            same_as_checked(&body),
            (Way::Fast, Outcome::Accepted),
            "{what}"
        );
    }
}

#[test]
fn tops_and_tails_answer_as_the_checked_parse() {
    let doc = serde_json::to_vec(&fixture_json("astara-router-basic.json")).unwrap();
    let with = |before: &[u8], after: &[u8]| [before, doc.as_slice(), after].concat();
    let cases: Vec<Vec<u8>> = vec![
        with(b"\xef\xbb\xbf", b""),
        with(b" \t\r\n", b" \t\r\n"),
        with(b"\x0c", b""),
        with(b"", b"\x0c"),
        with(b"", b"x"),
        with(b"", b"{}"),
        with(b"", b","),
        with(b"", b"\0"),
        with(b"", b"\"unterminated"),
        with(b"[", b"]"),
        b"".to_vec(),
        b"   ".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"[{}]".to_vec(),
        b"null".to_vec(),
        b"\"{\"".to_vec(),
        b"1".to_vec(),
        b"{\"hostname\":\"a\",\"hostname\":\"b\"}".to_vec(),
        b"{\"services\":{\"router\":{},\"router\":[]}}".to_vec(),
    ];
    for body in &cases {
        same_as_checked(body);
    }
    // A list fills a struct for serde: the typed pass alone would take `[]` as the empty
    // document, which the checked parse refuses as not an object.
    assert!(typed_pass_alone(b"[]"));
    assert_eq!(same_as_checked(b"[]"), (Way::Checked, Outcome::Invalid));
    assert_eq!(same_as_checked(&with(b"", b"x")).1, Outcome::Malformed);
}

#[test]
fn every_truncation_answers_as_the_checked_parse() {
    let doc = serde_json::to_vec(&fixture_json("astara-router-full.json")).unwrap();
    for end in 0..doc.len() {
        same_as_checked(&doc[..end]);
    }
}

/// Byte strings to splice in anywhere.
const FRAGMENTS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\x0c",
    b"\n",
    b"0",
    b"7",
    b"-",
    b".",
    b"e",
    b"E",
    b"+",
    b"1e400",
    b"null",
    b"true",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\n",
    b"\\\"",
    b"\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"\xef\xbb\xbf",
    b"\0",
    b"\x01",
    b"\"x\":1,",
    b"\"hostname\":\"h\",",
    b"[[[[[[[[",
    b"]]]]]]]]",
    b"{\"a\":{\"a\":",
];

/// Keys under which a value is spliced into an object: unknown ones, and known ones (a
/// duplicate, or a value of another shape).
const KEYS: &[&str] = &[
    "zz",
    "hostname",
    "ha_config",
    "services",
    "tenant_id",
    "floating_ip",
    "fixed_ip",
    "name",
    "mtu",
    "asn",
    "vpn",
    "rules",
    "subnets",
    "ip_addresses",
];

fn mutate(rng: &mut Rng, body: &mut Vec<u8>, values: &[Vec<u8>]) {
    let at = rng.below(body.len() + 1);
    // Half byte edits (mostly malformed JSON), half splices of whole values (mostly not).
    match rng.below(10) {
        0 => body.truncate(at),
        1 => {
            let end = (at + 1 + rng.below(16)).min(body.len());
            body.drain(at.min(end)..end);
        }
        2 => {
            let fragment = rng.pick(FRAGMENTS);
            body.splice(at..at, fragment.iter().copied());
        }
        3 => {
            if at < body.len() {
                let fragment = rng.pick(FRAGMENTS);
                body[at] = fragment[0];
            }
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(body.len());
            let copied = body[at.min(end)..end].to_vec();
            let to = rng.below(body.len() + 1);
            body.splice(to..to, copied);
        }
        // A key and a value after an opening brace.
        5..=7 => {
            let braces: Vec<usize> = (0..body.len()).filter(|&i| body[i] == b'{').collect();
            if braces.is_empty() {
                return;
            }
            let at = rng.pick(&braces) + 1;
            let closes = body.get(at) == Some(&b'}');
            let mut member = format!("\"{}\":", rng.pick(KEYS)).into_bytes();
            member.extend_from_slice(rng.pick(values).as_slice());
            if !closes {
                member.push(b',');
            }
            body.splice(at..at, member);
        }
        // Long content into a string (or a key), plain or escaped.
        8 => {
            let quotes: Vec<usize> = (0..body.len()).filter(|&i| body[i] == b'"').collect();
            if quotes.is_empty() {
                return;
            }
            let at = rng.pick(&quotes) + 1;
            let (unit, around): (&[u8], usize) = *rng.pick(&[
                (b"x".as_slice(), MAX_STRING_BYTES),
                (b"\\n".as_slice(), MAX_STRING_BYTES / 2),
                (b"\\u00e9".as_slice(), MAX_STRING_BYTES / 6),
                (b"\\u00e9".as_slice(), MAX_STRING_BYTES / 2),
            ]);
            let count = around - 2 + rng.below(5);
            body.splice(at..at, unit.repeat(count));
        }
        _ => {
            let value = rng.pick(values);
            body.splice(at..at, value.iter().copied());
        }
    }
}

#[test]
fn mutated_configs_answer_as_the_checked_parse() {
    let mut bases: Vec<Vec<u8>> = [
        "astara-router-basic.json",
        "astara-router-full.json",
        "astara-router-v6-prefix-gateway.json",
    ]
    .iter()
    .flat_map(|name| {
        [
            fixture(name),
            serde_json::to_vec(&fixture_json(name)).unwrap(),
        ]
    })
    .collect();
    bases.push(serde_json::to_vec(&with_floating_ips(40)).unwrap());
    let values: Vec<Vec<u8>> = refused_by_the_scan_only()
        .into_iter()
        .chain(not_certain_but_accepted())
        .chain(certain())
        .map(|(_, v)| v)
        .collect();

    let mut rng = Rng(0x5eed_a4a4_da00_0001);
    let mut seen = std::collections::BTreeMap::<(&str, &str), usize>::new();
    for case in 0..20_000 {
        let mut body = bases[case % bases.len()].clone();
        for _ in 0..1 + rng.below(2) {
            mutate(&mut rng, &mut body, &values);
        }
        let (way, outcome) = same_as_checked(&body);
        let way = if way == Way::Fast { "fast" } else { "checked" };
        let outcome = match outcome {
            Outcome::Accepted => "accepted",
            Outcome::Malformed => "malformed",
            Outcome::Invalid => "invalid",
        };
        *seen.entry((way, outcome)).or_default() += 1;
    }
    // Every way and answer was exercised, not only refusals (the fast path never refuses
    // malformed JSON: it falls back).
    for key in [
        ("fast", "accepted"),
        ("fast", "invalid"),
        ("checked", "accepted"),
        ("checked", "malformed"),
        ("checked", "invalid"),
    ] {
        assert!(
            seen.get(&key).copied().unwrap_or(0) >= 100,
            "{key:?} seen too seldom: {seen:?}"
        );
    }
}
