//! The limits of a config document, enforced while it is deserialised: a list one entry over
//! its limit stops the parse there, so a document under the body cap can never expand into
//! more memory than the limits allow. docs/config.md lists them.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// `networks`: one per NIC; a Nova instance has far fewer PCI slots.
pub const MAX_NETWORKS: usize = 32;
/// `networks[].subnets`.
pub const MAX_SUBNETS: usize = 32;
/// `networks[].interface.addresses`.
pub const MAX_INTERFACE_ADDRESSES: usize = 64;
/// `networks[].allocations`, per network.
pub const MAX_ALLOCATIONS: usize = 4096;
/// All allocations of all networks together.
pub const MAX_ALLOCATIONS_TOTAL: usize = 16_384;
/// `networks[].allocations[].ip_addresses`.
pub const MAX_ALLOCATION_ADDRESSES: usize = 16;
/// `networks[].subnets[].dns_nameservers`.
pub const MAX_DNS_NAMESERVERS: usize = 8;
/// `networks[].subnets[].host_routes`.
pub const MAX_HOST_ROUTES: usize = 128;
/// `floating_ips`.
pub const MAX_FLOATING_IPS: usize = 20_000;
/// `static_routes`.
pub const MAX_STATIC_ROUTES: usize = 1024;
/// `address_book` and `labels`: names.
pub const MAX_NAMED_LISTS: usize = 256;
/// `address_book[name]` and `labels[name]`: CIDRs in one list.
pub const MAX_LIST_ENTRIES: usize = 256;
/// All address-book CIDRs together.
pub const MAX_ADDRESS_BOOK_TOTAL: usize = 4096;
/// `anchors`.
pub const MAX_ANCHORS: usize = 64;
/// `anchors[].rules`, per anchor.
pub const MAX_ANCHOR_RULES: usize = 1024;
/// All anchor rules together.
pub const MAX_ANCHOR_RULES_TOTAL: usize = 4096;
/// Keys of one filter rule (its known keys are 12; unknown ones are reported).
pub const MAX_RULE_KEYS: usize = 32;
/// The ruleset budget: filter-rule expansions (each rule costs one per source × destination
/// address-book CIDR pair, and per family) that all anchors may render together.
pub const MAX_RENDERED_RULES: usize = 20_000;
/// All label CIDRs together: each renders two counter rules (from, to).
pub const MAX_LABEL_CIDRS_TOTAL: usize = 4096;
/// The whole ruleset's budget (every chain of table `inet akanda`): the anchors'
/// [`MAX_RENDERED_RULES`], two counters per label CIDR, and the router's own rules, which grow
/// with networks and subnets (at most 16 per network and 4 per subnet, with room to spare) plus
/// a fixed few. The fuzz target `render` holds every accepted config to it.
pub const MAX_RULESET_RULES: usize =
    MAX_RENDERED_RULES + 2 * MAX_LABEL_CIDRS_TOTAL + MAX_NETWORKS * (16 + 4 * MAX_SUBNETS) + 64;
/// `services`: names.
pub const MAX_SERVICES: usize = 8;
/// `vpn.ipsec`.
pub const MAX_VPN_SERVICES: usize = 16;
/// `vpn.ipsec[].ipsec_connections`.
pub const MAX_VPN_CONNECTIONS: usize = 64;
/// `peer_cidrs` and endpoint-group `endpoints` of a VPN connection.
pub const MAX_VPN_CIDRS: usize = 64;

/// Any string of the document, and any object key: the longest legitimate one (a name, a
/// pre-shared key) is far shorter.
pub const MAX_STRING_BYTES: usize = 4096;

/// A whole JSON document walked and kept nowhere: it checks the syntax and refuses a string
/// longer than [`MAX_STRING_BYTES`] (the error is a data error, with its path under
/// `serde_path_to_error`). Run before the typed parse, so that no field ever holds, copies or
/// quotes back a string of the body's size.
pub(crate) struct Scan;

impl<'de> Deserialize<'de> for Scan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScanVisitor)
    }
}

struct ScanVisitor;

impl ScanVisitor {
    fn string<E: de::Error>(v: &str) -> Result<Scan, E> {
        if v.len() > MAX_STRING_BYTES {
            return Err(E::custom(format!(
                "a string of {} bytes: the limit is {MAX_STRING_BYTES}",
                v.len()
            )));
        }
        Ok(Scan)
    }
}

impl<'de> Visitor<'de> for ScanVisitor {
    type Value = Scan;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scan, E> {
        Self::string(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scan, E> {
        Ok(Scan)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scan, D::Error> {
        Scan::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scan, A::Error> {
        while seq.next_element::<Scan>()?.is_some() {}
        Ok(Scan)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan, A::Error> {
        while map.next_entry::<Scan, Scan>()?.is_some() {}
        Ok(Scan)
    }
}

/// Nesting that [`scan_certainly_passes`] lets through: half serde_json's recursion limit,
/// which refuses a 128th nested array or object in the [`Scan`] but not in an ignored value.
const CERTAIN_MAX_DEPTH: usize = 64;

/// Digits in a row that [`scan_certainly_passes`] lets through: a number without an exponent
/// is then below 10^64, far from `f64::MAX`, so the [`Scan`] cannot find it out of range.
const CERTAIN_MAX_DIGITS: usize = 64;

/// Whether the [`Scan`] certainly accepts `bytes`, given that serde_json's typed pass found
/// them one well-formed JSON value (with `Deserializer::end`). False means "not certain", not
/// "refused". One pass over the bytes, no allocation.
///
/// The typed pass reads what it ignores (unknown keys, [`Ignored`]) with serde_json's
/// `IgnoredAny`, which is laxer than the [`Scan`]'s `deserialize_any` in four ways, each
/// refused here:
/// - strings are not checked as UTF-8 → the whole body must be UTF-8 (so is then the text of
///   every string between its escapes, which start and end at ASCII bytes);
/// - `\u` escapes may be lone surrogates → no surrogate escape (`\uD800` to `\uDFFF`) at all;
/// - numbers are not converted, so never out of range → no exponent, at most
///   [`CERTAIN_MAX_DIGITS`] digits in a row;
/// - nesting is unlimited → at most [`CERTAIN_MAX_DEPTH`].
///
/// And the [`Scan`]'s own limit: no string or key over [`MAX_STRING_BYTES`] between its quotes
/// (an escape decodes to fewer bytes than it takes).
pub(crate) fn scan_certainly_passes(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut depth = 0usize;
    let mut digits = 0usize;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' => match string_end(bytes, i + 1) {
                Some(end) if end - (i + 1) <= MAX_STRING_BYTES => {
                    i = end + 1;
                    digits = 0;
                    continue;
                }
                _ => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > CERTAIN_MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'0'..=b'9' => {
                digits += 1;
                if digits > CERTAIN_MAX_DIGITS {
                    return false;
                }
                i += 1;
                continue;
            }
            // Outside strings, an `e` after a digit starts an exponent (else it is in `true`
            // or `false`).
            b'e' | b'E' if digits > 0 => return false,
            _ => {}
        }
        digits = 0;
        i += 1;
    }
    true
}

/// The index of the quote that ends the string whose content starts at `start`; `None` when
/// the string is unterminated or holds a surrogate escape.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        i += bytes
            .get(i..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\')?;
        if bytes[i] == b'"' {
            return Some(i);
        }
        // `\` and the byte it escapes; `\uD8..` to `\uDF..` is half of a surrogate pair.
        if let Some([b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F']) =
            bytes.get(i + 1..i + 4)
        {
            return None;
        }
        i += 2;
    }
}

/// Deserialises a list of at most `MAX` entries.
pub(crate) fn seq<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor::<T, MAX>(PhantomData))
}

/// [`seq`], with null meaning an empty list (Astara sends `"ipsec": null`).
pub(crate) fn seq_or_null<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(d.deserialize_option(OptionVisitor::<T, MAX>(PhantomData))?
        .unwrap_or_default())
}

/// Deserialises a map of at most `MAX` keys.
pub(crate) fn map<'de, D, V, const MAX: usize>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    d.deserialize_map(MapVisitor::<V, MAX>(PhantomData))
}

/// A map of at most `MAX` names to lists of at most `ENTRIES` strings (address book, labels).
pub(crate) fn named_lists<'de, D, const MAX: usize, const ENTRIES: usize>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    let lists: BTreeMap<String, Bounded<String, ENTRIES>> = map::<_, _, MAX>(d)?;
    Ok(lists.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A list of at most `MAX` entries, as a type (for lists inside maps).
pub(crate) struct Bounded<T, const MAX: usize>(pub Vec<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        seq::<_, _, MAX>(d).map(Bounded)
    }
}

fn too_many<E: de::Error>(max: usize, what: &str) -> E {
    E::custom(format!("more than {max} {what}: the limit is {max}"))
}

struct SeqVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for SeqVisitor<T, MAX> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {MAX} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The size hint comes from the input: trusted only up to a small capacity.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(256));
        while let Some(item) = seq.next_element()? {
            if out.len() == MAX {
                return Err(too_many(MAX, "entries"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

struct OptionVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for OptionVisitor<T, MAX> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "null or a list of at most {MAX} entries")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        seq::<_, _, MAX>(d).map(Some)
    }
}

struct MapVisitor<V, const MAX: usize>(PhantomData<V>);

impl<'de, V: Deserialize<'de>, const MAX: usize> Visitor<'de> for MapVisitor<V, MAX> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object of at most {MAX} keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.len() == MAX && !out.contains_key(&k) {
                return Err(too_many(MAX, "keys"));
            }
            let v = map.next_value()?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// A filter rule: at most [`MAX_RULE_KEYS`] keys, each a JSON scalar (string, number, boolean
/// or null). An array or an object is refused where it starts, before it is read.
pub(crate) fn filter_rules<'de, D>(
    d: D,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, D::Error>
where
    D: Deserializer<'de>,
{
    let rules: Vec<ScalarMap> = seq::<_, _, MAX_ANCHOR_RULES>(d)?;
    Ok(rules.into_iter().map(|r| r.0).collect())
}

struct ScalarMap(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for ScalarMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map: BTreeMap<String, Scalar> = map::<_, _, MAX_RULE_KEYS>(d)?;
        Ok(ScalarMap(map.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

struct Scalar(serde_json::Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a number, a boolean or null")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(
            serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar(v.into()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar(serde_json::Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar(serde_json::Value::Null))
    }
}

/// A JSON value whose content is not used (`ha_config`, the value of a `services` entry): read
/// without being kept, and shown as `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ignored {}

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d).map(|_| Ignored {})
    }
}
