//! Akanda's config document: the JSON that rug-lite (or an Astara orchestrator) sends in
//! `PUT /v1/system/config` and the agent applies.
//!
//! - [`document`]: the wire types, lenient so that every problem can be reported at once;
//! - [`validate()`]: turns a document into a [`RouterConfig`] or a list of [`Problem`]s;
//! - [`parse`]: bytes → config, telling malformed JSON (HTTP 400) from an invalid config (422);
//! - [`builder`]: typed values → a document that always validates (what rug-lite sends).

pub mod bounds;
pub mod builder;
pub mod config;
pub mod document;
mod domain;
pub(crate) mod grammar;
mod problem;
mod validate;

#[cfg(test)]
mod parse_tests;
#[doc(hidden)]
pub mod testing;

pub use config::*;
pub use document::Document;
pub use domain::{MacAddr, MacAddrError, NicName, NicNameError, MAIN_ROUTE_TABLE};
pub use grammar::{is_allocation_hostname, is_header_safe, is_text, Grammar};
pub use problem::Problem;
pub use validate::{normalise_mac, validate};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not JSON at all.
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// JSON, but not a valid config: every problem found.
    #[error("invalid config: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// Parses and validates a config document.
///
/// The bytes go straight into the typed [`Document`], never through an untyped JSON tree: the
/// [limits](bounds) stop the parse at the first list over its limit, so memory stays
/// proportional to what the limits allow, whatever the body holds.
pub fn parse(bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    match parse_certain(bytes) {
        Some(doc) => validate(&doc).map_err(ConfigError::Invalid),
        None => parse_checked(bytes),
    }
}

/// The document, when one untracked typed pass proves that [`parse_checked`] would reach
/// `validate` with the same document; `None` when not certain (any error among them). It saves
/// the scan, a quarter of [`parse`] for a large valid config. The byte check runs first so
/// that, as behind the scan, no field is ever filled with a string over the limit.
/// Why the answer is the same:
/// - the typed pass and `end()` succeeded: the body is one JSON value and nothing after it,
///   whose syntax serde_json checked byte by byte, ignored values included;
/// - what the typed pass read itself (keys, strings, numbers), it read with the routines the
///   scan's `deserialize_any` uses; what it ignored, `IgnoredAny` read more laxly, and
///   [`bounds::scan_certainly_passes`] refuses each laxity, and every string or key over the
///   scan's limit: so the scan passes, then `end()` as here;
/// - the body opens an object, as [`parse_checked`] requires next;
/// - [`parse_checked`]'s typed pass returns its untracked pass, which is this one.
fn parse_certain(bytes: &[u8]) -> Option<Document> {
    if !starts_as_object(bytes) || !bounds::scan_certainly_passes(bytes) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc: Document = serde::Deserialize::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(doc)
}

/// [`parse`] in two passes (a scan, then the typed pass), for any body: the answer to every
/// body [`parse_certain`] is not certain of, errors included.
fn parse_checked(bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    // A first pass keeps nothing: malformed JSON is told apart (400) from a well-formed but
    // invalid config (422) wherever the two occur, and overlong strings are refused.
    deserialize_tracked::<bounds::Scan>(bytes, false)?;
    if !starts_as_object(bytes) {
        return Err(ConfigError::Invalid(vec![Problem::new(
            "",
            "the config must be a JSON object",
        )]));
    }
    // The scan found the JSON well-formed: whatever stops the typed pass is a value of the
    // wrong shape at a path (422), even what serde_json files as syntax: a list longer than
    // the object it fills (`["10.9.0.0/16", "10.0.0.1", "x"]` as a host route) is its
    // "trailing characters". (Found by the fuzz target `config`: that was a 400.)
    let doc: Document = deserialize_tracked(bytes, true)?;
    validate(&doc).map_err(ConfigError::Invalid)
}

/// Whether the first byte after any leading whitespace opens an object.
fn starts_as_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Deserialises `bytes` as a `T`; unless `well_formed` (the scan already checked the whole
/// document), nothing may follow it. Tracking the path costs as much again as the parse (2 ms
/// of a 10,000-floating-IP document) and only an error needs it: the parse runs untracked, and
/// only a failed one runs again, tracked, for the error's path. Both runs see the same bytes
/// through the same stateless deserialisers, so they fail alike.
fn deserialize_tracked<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    well_formed: bool,
) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let untracked = T::deserialize(&mut de);
    if let Ok(value) = untracked {
        if well_formed || de.end().is_ok() {
            return Ok(value);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de)
        .map_err(|e| problem_at_path(e, well_formed))?;
    if !well_formed {
        de.end().map_err(|e| ConfigError::Syntax(e.to_string()))?;
    }
    Ok(value)
}

/// A deserialisation error: malformed JSON, or a problem at a path. `well_formed`: the JSON
/// is known to be well-formed, so every error is a problem at a path.
fn problem_at_path(
    e: serde_path_to_error::Error<serde_json::Error>,
    well_formed: bool,
) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let e = e.into_inner();
    if e.classify() != serde_json::error::Category::Data && !well_formed {
        return ConfigError::Syntax(e.to_string());
    }
    // The position says nothing the path does not, and the message reads as in a 422.
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = message
        .strip_suffix(&position)
        .unwrap_or(&message)
        .to_string();
    let reason = if e.classify() == serde_json::error::Category::Data {
        reason
    } else {
        format!("a value of the wrong shape ({reason})")
    };
    ConfigError::Invalid(vec![Problem::new(path, reason)])
}

impl Document {
    /// Canonical JSON of the document: what is persisted and hashed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Document always serialises")
    }

    /// SHA-256 of the canonical JSON of the [redacted](Document::redacted) document, hex:
    /// identifies a config in `/v1/status` and in the orchestrator (rug-lite computes the
    /// same). Secrets are not in it, so a leaked hash cannot be used to test guesses of a
    /// pre-shared key offline; a change of a secret alone does not change it.
    pub fn hash(&self) -> String {
        self.shown().hash
    }

    /// The redacted document's canonical JSON (what is shown back) and its [hash](Document::hash),
    /// serialised once; and, when the document holds no secret, the same bytes as what is saved
    /// (a 10,000-floating-IP document costs a millisecond per copy or serialisation).
    pub fn shown(&self) -> Shown {
        let secret = self
            .vpn
            .iter()
            .flat_map(|v| v.ipsec.iter())
            .flat_map(|s| s.ipsec_connections.iter())
            .any(|c| c.psk.is_some());
        let json: std::sync::Arc<[u8]> = if secret {
            self.redacted().to_canonical_json().into()
        } else {
            self.to_canonical_json().into()
        };
        Shown {
            hash: hex::encode(Sha256::digest(&json)),
            saved: (!secret).then(|| json.clone()),
            json,
        }
    }

    /// Whether `vpn` asks for any VPN service. Astara's orchestrator always sends `"vpn": {}`,
    /// and `{"ipsec": []}` when no VPN service exists: both mean "no VPN", as do null and an
    /// absent key.
    pub fn requests_vpn(&self) -> bool {
        self.vpn.as_ref().is_some_and(|v| !v.ipsec.is_empty())
    }

    /// The document with secrets (VPN pre-shared keys) replaced by [`REDACTED`], for showing
    /// it back and for hashing.
    pub fn redacted(&self) -> Document {
        let mut doc = self.clone();
        for service in doc.vpn.iter_mut().flat_map(|v| v.ipsec.iter_mut()) {
            for connection in &mut service.ipsec_connections {
                if connection.psk.is_some() {
                    connection.psk = Some(REDACTED.to_string());
                }
            }
        }
        doc
    }
}

/// A document serialised for showing, hashing and (without secrets) saving: see
/// [`Document::shown`].
#[derive(Debug, Clone)]
pub struct Shown {
    /// Canonical JSON of the redacted document.
    pub json: std::sync::Arc<[u8]>,
    /// SHA-256 of `json`, hex.
    pub hash: String,
    /// Canonical JSON of the document itself when it equals `json` (no secret in it).
    pub saved: Option<std::sync::Arc<[u8]>>,
}

/// What a secret reads as when a document is shown. A config that holds it as a secret's
/// value is refused: it is a GET sent back as a PUT, not a key.
pub(crate) const REDACTED: &str = "***";
