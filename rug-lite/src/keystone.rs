//! Keystone v3: credentials from clouds.yaml (`[openstack] cloud`) or the `OS_*` variables, a
//! token, and the service endpoints from its catalog.
//!
//! The same logic exists, blocking, in image-builder/src/upload.rs; both should move to a
//! shared crate once a third user appears.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeystoneError {
    #[error("no cloud credentials: set [openstack] cloud (clouds.yaml) or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME")]
    NoCredentials,
    #[error("{path}: {message}")]
    CloudsYaml { path: String, message: String },
    #[error("cloud {0:?} is in no clouds.yaml (searched {1})")]
    NoSuchCloud(String, String),
    #[error("missing {0} (in clouds.yaml auth: or as an OS_* variable)")]
    Missing(&'static str),
    #[error("Keystone at {url}: {reason}")]
    Auth { url: String, reason: String },
    #[error("no {service} endpoint (interface {interface}) in the Keystone catalog")]
    NoEndpoint { service: String, interface: String },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Credentials {
    pub auth_url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub user_domain: String,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub project_domain: String,
    pub app_cred_id: Option<String>,
    pub app_cred_secret: Option<String>,
    pub region: Option<String>,
    pub interface: String,
}

#[derive(Debug, Deserialize)]
struct CloudsFile {
    clouds: BTreeMap<String, CloudEntry>,
}

#[derive(Debug, Deserialize)]
struct CloudEntry {
    #[serde(default)]
    auth: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    auth_type: Option<String>,
    #[serde(default)]
    region_name: Option<String>,
    #[serde(default)]
    interface: Option<String>,
}

/// Credentials for `cloud` from the usual clouds.yaml places, or from the environment.
pub(crate) fn credentials(cloud: Option<&str>) -> Result<Credentials, KeystoneError> {
    let Some(cloud) = cloud else {
        return from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .ok_or(KeystoneError::NoCredentials);
    };
    let paths = clouds_yaml_paths();
    for p in &paths {
        if let Ok(text) = std::fs::read_to_string(p) {
            match from_clouds_yaml(&text, cloud, &p.display().to_string()) {
                Err(KeystoneError::NoSuchCloud(..)) => continue,
                other => return other,
            }
        }
    }
    let searched: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(KeystoneError::NoSuchCloud(
        cloud.into(),
        searched.join(", "),
    ))
}

fn clouds_yaml_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from("clouds.yaml"));
    if let Some(home) = std::env::var_os("HOME") {
        out.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    out.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    out
}

pub(crate) fn from_clouds_yaml(
    text: &str,
    cloud: &str,
    path: &str,
) -> Result<Credentials, KeystoneError> {
    let file: CloudsFile = serde_norway::from_str(text).map_err(|e| KeystoneError::CloudsYaml {
        path: path.into(),
        message: e.to_string(),
    })?;
    let c = file
        .clouds
        .get(cloud)
        .ok_or_else(|| KeystoneError::NoSuchCloud(cloud.into(), path.into()))?;
    let get = |k: &str| -> Option<String> {
        match c.auth.get(k)? {
            serde_norway::Value::String(s) => Some(s.clone()),
            serde_norway::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let app = c.auth_type.as_deref() == Some("v3applicationcredential");
    Ok(Credentials {
        auth_url: get("auth_url").ok_or(KeystoneError::Missing("auth_url"))?,
        username: get("username"),
        password: get("password"),
        user_domain: get("user_domain_name")
            .or_else(|| get("user_domain_id"))
            .or_else(|| get("domain_name"))
            .unwrap_or_else(|| "Default".into()),
        project_name: get("project_name").or_else(|| get("tenant_name")),
        project_id: get("project_id").or_else(|| get("tenant_id")),
        project_domain: get("project_domain_name")
            .or_else(|| get("project_domain_id"))
            .or_else(|| get("domain_name"))
            .unwrap_or_else(|| "Default".into()),
        app_cred_id: app.then(|| get("application_credential_id")).flatten(),
        app_cred_secret: app.then(|| get("application_credential_secret")).flatten(),
        region: c.region_name.clone(),
        interface: c.interface.clone().unwrap_or_else(|| "public".into()),
    })
}

/// Credentials from `OS_*` variables (an openrc file). Pure over the lookup.
pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
    Some(Credentials {
        auth_url: var("OS_AUTH_URL")?,
        username: var("OS_USERNAME"),
        password: var("OS_PASSWORD"),
        user_domain: var("OS_USER_DOMAIN_NAME")
            .or_else(|| var("OS_USER_DOMAIN_ID"))
            .unwrap_or_else(|| "Default".into()),
        project_name: var("OS_PROJECT_NAME").or_else(|| var("OS_TENANT_NAME")),
        project_id: var("OS_PROJECT_ID").or_else(|| var("OS_TENANT_ID")),
        project_domain: var("OS_PROJECT_DOMAIN_NAME")
            .or_else(|| var("OS_PROJECT_DOMAIN_ID"))
            .unwrap_or_else(|| "Default".into()),
        app_cred_id: var("OS_APPLICATION_CREDENTIAL_ID"),
        app_cred_secret: var("OS_APPLICATION_CREDENTIAL_SECRET"),
        region: var("OS_REGION_NAME"),
        interface: var("OS_INTERFACE").unwrap_or_else(|| "public".into()),
    })
}

/// The `POST /v3/auth/tokens` body: an application credential, or a password scoped to the
/// project.
pub(crate) fn auth_body(c: &Credentials) -> Result<Value, KeystoneError> {
    if let (Some(id), Some(secret)) = (&c.app_cred_id, &c.app_cred_secret) {
        return Ok(
            json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": id, "secret": secret}}}}),
        );
    }
    let user = c
        .username
        .as_ref()
        .ok_or(KeystoneError::Missing("username"))?;
    let password = c
        .password
        .as_ref()
        .ok_or(KeystoneError::Missing("password"))?;
    let project = match (&c.project_id, &c.project_name) {
        (Some(id), _) => json!({"id": id}),
        (None, Some(name)) => json!({"name": name, "domain": domain(&c.project_domain)}),
        (None, None) => return Err(KeystoneError::Missing("project_name")),
    };
    Ok(json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": domain(&c.user_domain), "password": password}}},
        "scope": {"project": project}}}))
}

/// Keystone accepts a domain by name or id; "default" style values are ids.
fn domain(d: &str) -> Value {
    if d == "default" || d.chars().all(|c| c.is_ascii_hexdigit()) && d.len() == 32 {
        json!({"id": d})
    } else {
        json!({"name": d})
    }
}

/// A service's endpoint from a token's catalog. Pure.
pub(crate) fn endpoint(
    catalog: &Value,
    service_type: &str,
    interface: &str,
    region: Option<&str>,
) -> Option<String> {
    catalog
        .as_array()?
        .iter()
        .filter(|s| s["type"] == service_type)
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["interface"] == interface)
        .find(|e| region.is_none_or(|r| e["region_id"] == r || e["region"] == r))
        .and_then(|e| e["url"].as_str())
        .map(|u| u.trim_end_matches('/').to_string())
}

/// A token and the endpoints rug-lite uses.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub token: String,
    pub network: String,
    pub compute: String,
    pub image: String,
}

fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

pub(crate) async fn authenticate(
    http: &reqwest::Client,
    c: &Credentials,
) -> Result<Session, KeystoneError> {
    let url = tokens_url(&c.auth_url);
    let err = |reason: String| KeystoneError::Auth {
        url: url.clone(),
        reason,
    };
    let response = http
        .post(&url)
        .json(&auth_body(c)?)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = response.status();
    let token = response
        .headers()
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!("{status}: {}", body["error"]["message"])));
    }
    let token = token.ok_or_else(|| err("no X-Subject-Token in the answer".into()))?;
    let catalog = &body["token"]["catalog"];
    let find = |service: &str| {
        endpoint(catalog, service, &c.interface, c.region.as_deref()).ok_or_else(|| {
            KeystoneError::NoEndpoint {
                service: service.into(),
                interface: c.interface.clone(),
            }
        })
    };
    let mut network = find("network")?;
    // Neutron's catalog entry is usually the bare service root.
    if !network.ends_with("/v2.0") {
        network.push_str("/v2.0");
    }
    Ok(Session {
        token,
        network,
        compute: find("compute")?,
        image: find("image")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_like_an_openrc() {
        let env: BTreeMap<&str, &str> = [
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "secret"),
            ("OS_PROJECT_NAME", "admin"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "RegionOne"),
        ]
        .into();
        let c = from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, "public");
        let body = auth_body(&c).unwrap();
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["name"],
            "admin"
        );
        assert_eq!(
            body["auth"]["scope"]["project"]["domain"]["name"],
            "Default"
        );
        assert_eq!(
            tokens_url(&c.auth_url),
            "http://127.0.0.1:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("https://ks.example/"),
            "https://ks.example/v3/auth/tokens"
        );
        assert!(from_env(|_| None).is_none());
    }

    #[test]
    fn clouds_yaml_password_and_application_credential() {
        let text = r#"
clouds:
  lab:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_id: default
    region_name: RegionOne
  app:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://ks.example/v3
      application_credential_id: abc
      application_credential_secret: xyz
    interface: internal
"#;
        let lab = from_clouds_yaml(text, "lab", "clouds.yaml").unwrap();
        let body = auth_body(&lab).unwrap();
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["id"], "default");
        let app = from_clouds_yaml(text, "app", "clouds.yaml").unwrap();
        assert_eq!(app.interface, "internal");
        let body = auth_body(&app).unwrap();
        assert_eq!(
            body["auth"]["identity"]["application_credential"]["id"],
            "abc"
        );
        assert!(matches!(
            from_clouds_yaml(text, "nope", "clouds.yaml"),
            Err(KeystoneError::NoSuchCloud(..))
        ));
    }

    #[test]
    fn endpoints_by_type_interface_and_region() {
        let catalog = json!([
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9696/"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.1:9696"}]},
            {"type": "compute", "endpoints": [
                {"interface": "public", "region_id": "RegionTwo", "url": "http://two:8774/v2.1"},
                {"interface": "public", "region_id": "RegionOne", "url": "http://one:8774/v2.1"}]}
        ]);
        assert_eq!(
            endpoint(&catalog, "network", "public", None).as_deref(),
            Some("http://127.0.0.1:9696")
        );
        assert_eq!(
            endpoint(&catalog, "compute", "public", Some("RegionOne")).as_deref(),
            Some("http://one:8774/v2.1")
        );
        assert_eq!(endpoint(&catalog, "image", "public", None), None);
    }
}
