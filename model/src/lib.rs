//! Akanda's config document: the JSON that rug-lite (or an Astara orchestrator) sends in
//! `PUT /v1/system/config` and the agent applies.
//!
//! - [`document`]: the wire types, lenient so that every problem can be reported at once;
//! - [`validate()`]: turns a document into a [`RouterConfig`] or a list of [`Problem`]s;
//! - [`parse`]: bytes → config, telling malformed JSON (HTTP 400) from an invalid config (422).

pub mod config;
pub mod document;
mod domain;
mod problem;
mod validate;

pub use config::*;
pub use document::Document;
pub use domain::{MacAddr, MacAddrError, NicName, NicNameError, MAIN_ROUTE_TABLE};
pub use problem::Problem;
pub use validate::{is_allocation_hostname, normalise_mac, validate};

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
pub fn parse(bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    // Straight from the bytes when the document is well-formed: going through a
    // `serde_json::Value` first costs a second tree of allocations (10,000 floating IPs:
    // milliseconds). Any error takes the path below, which words it exactly as before.
    // (Only for an object: a derived struct would also accept a JSON array, by position.)
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object {
        if let Ok(doc) = serde_json::from_slice::<Document>(bytes) {
            return validate(&doc).map_err(ConfigError::Invalid);
        }
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    if !value.is_object() {
        return Err(ConfigError::Invalid(vec![Problem::new(
            "",
            "the config must be a JSON object",
        )]));
    }
    let doc: Document = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::Invalid(vec![Problem::new(path, e.into_inner().to_string())])
    })?;
    validate(&doc).map_err(ConfigError::Invalid)
}

impl Document {
    /// Canonical JSON of the document: what is persisted and hashed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Document always serialises")
    }

    /// SHA-256 of the canonical JSON, hex: identifies a config in `/v1/status`.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.to_canonical_json()))
    }

    /// Whether `vpn` asks for any VPN service. Astara's orchestrator always sends `"vpn": {}`,
    /// and `{"ipsec": []}` when no VPN service exists: both mean "no VPN", as do null and an
    /// absent key. Any member that is not null, an empty list or an empty object asks for one.
    pub fn requests_vpn(&self) -> bool {
        let empty = |v: &serde_json::Value| match v {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        match &self.vpn {
            Some(serde_json::Value::Object(services)) => !services.values().all(empty),
            Some(other) => !empty(other),
            None => false,
        }
    }

    /// The document with secrets (VPN pre-shared keys) replaced, for showing it back.
    pub fn redacted(&self) -> Document {
        let mut doc = self.clone();
        if let Some(vpn) = doc.vpn.as_mut() {
            redact_secrets(vpn);
        }
        doc
    }
}

fn redact_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "psk" {
                    *v = serde_json::Value::String("***".into());
                } else {
                    redact_secrets(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}
