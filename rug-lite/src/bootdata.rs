//! What a Service Instance is booted with, besides the network_data.json Nova writes: Nova
//! metadata (`meta_data.json` `meta`, values ≤ 255 characters) and `user_data` carrying the TLS
//! material, which is too long for metadata.
//!
//! The user_data document is the boot contract with the agent (docs/tls.md): JSON, so the
//! agent reads it without cloud-init.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::cloud::TlsMaterial;

/// Metadata keys the image's boot code reads (docs/image.md, docs/tls.md). Without TLS
/// material (`[tls] insecure_http`, the operator's choice) the agent must be told that plain
/// HTTP is allowed (`akanda_insecure_http`), or it serves its config read-only.
pub(crate) fn metadata(
    management_mac: &str,
    api_port: u16,
    insecure_http: bool,
) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::from([
        ("akanda_mgmt_mac".to_string(), management_mac.to_string()),
        ("akanda_api_port".to_string(), api_port.to_string()),
    ]);
    if insecure_http {
        meta.insert("akanda_insecure_http".to_string(), "true".to_string());
    }
    meta
}

#[derive(Serialize)]
struct UserData<'a> {
    akanda: AkandaBoot<'a>,
}

#[derive(Serialize)]
struct AkandaBoot<'a> {
    version: u32,
    router_id: &'a str,
    management_address: String,
    /// null: plain HTTP (labs only).
    tls: Option<TlsDoc<'a>>,
}

#[derive(Serialize)]
struct TlsDoc<'a> {
    /// Signs the appliance's server certificate and rug-lite's client certificate: the agent
    /// accepts only clients it signed.
    ca_cert: &'a str,
    server_cert: &'a str,
    server_key: &'a str,
}

pub(crate) fn user_data(
    router_id: &str,
    management_address: IpAddr,
    tls: Option<&TlsMaterial>,
) -> String {
    serde_json::to_string_pretty(&UserData {
        akanda: AkandaBoot {
            version: 1,
            router_id,
            management_address: management_address.to_string(),
            tls: tls.map(|tls| TlsDoc {
                ca_cert: &tls.ca_cert_pem,
                server_cert: &tls.server_cert_pem,
                server_key: &tls.server_key_pem,
            }),
        },
    })
    .expect("serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_tls_material_and_identity() {
        let tls = TlsMaterial {
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            server_cert_pem: "CERT".into(),
            server_key_pem: "KEY".into(),
        };
        let address = "fdca:3ba5:a17a:acda::d1".parse().unwrap();
        let plain: serde_json::Value =
            serde_json::from_str(&user_data("r1", address, None)).unwrap();
        assert!(plain["akanda"]["tls"].is_null());
        let text = user_data("r1", address, Some(&tls));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["akanda"]["router_id"], "r1");
        assert_eq!(v["akanda"]["management_address"], "fdca:3ba5:a17a:acda::d1");
        assert_eq!(v["akanda"]["tls"]["ca_cert"], tls.ca_cert_pem.as_str());
        assert_eq!(v["akanda"]["tls"]["server_key"], "KEY");
        let meta = metadata("fa:16:3e:de:ee:03", 5000, false);
        assert!(meta.values().all(|v| v.len() <= 255));
        assert_eq!(meta["akanda_mgmt_mac"], "fa:16:3e:de:ee:03");
        assert_eq!(meta.get("akanda_insecure_http"), None);
        let plain = metadata("fa:16:3e:de:ee:03", 5000, true);
        assert_eq!(plain["akanda_insecure_http"], "true");
    }
}
