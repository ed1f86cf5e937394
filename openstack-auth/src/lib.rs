//! Keystone v3, once for every OpenStack client of Akanda (rug-lite's Neutron/Nova/Glance
//! clients, `akanda-image upload`): credentials from clouds.yaml or the `OS_*` variables of an
//! openrc file, the token request (a password scoped to a project, or an application
//! credential), and service endpoints from the token's catalog.
//!
//! Everything but the one HTTP exchange is pure: [`from_clouds_yaml`], [`from_env`],
//! [`auth_body`], [`tokens_url`], [`endpoint`], [`Token::from_answer`]. The exchange is
//! [`authenticate`] (async reqwest) or, with the `blocking` feature, [`authenticate_blocking`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    #[error(
        "no cloud credentials: name a cloud of clouds.yaml, or set OS_AUTH_URL, OS_USERNAME, \
         OS_PASSWORD and OS_PROJECT_NAME (source an openrc file)"
    )]
    NoCredentials,
    #[error("{path}: {message}")]
    CloudsYaml { path: String, message: String },
    #[error("cloud {cloud:?} not found in {searched}")]
    NoSuchCloud { cloud: String, searched: String },
    #[error("missing {0} (in clouds.yaml auth: or as an OS_* variable)")]
    Missing(&'static str),
    #[error("Keystone at {url}: {reason}")]
    Auth { url: String, reason: String },
    #[error("no {service} endpoint (interface {interface}{region}) in the Keystone catalog")]
    NoEndpoint {
        service: String,
        interface: String,
        /// `, region R`, or empty.
        region: String,
    },
}

/// Keystone credentials, from either source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub auth_url: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) user_domain: String,
    pub(crate) project_name: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) project_domain: String,
    pub(crate) app_cred_id: Option<String>,
    pub(crate) app_cred_secret: Option<String>,
    pub(crate) region: Option<String>,
    /// The catalog interface: `public` unless said otherwise.
    pub(crate) interface: String,
    /// A CA certificate file for TLS to the cloud (`cacert`, `OS_CACERT`).
    pub cacert: Option<String>,
    /// Do not verify the cloud's certificates (`verify: false`, `OS_INSECURE`).
    pub insecure: bool,
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
    #[serde(default)]
    cacert: Option<String>,
    #[serde(default)]
    verify: Option<bool>,
}

/// Credentials for `cloud` from the first clouds.yaml (in the usual places) that has it, or,
/// without a cloud, from the `OS_*` variables.
pub fn credentials(cloud: Option<&str>) -> Result<Credentials, KeystoneError> {
    let Some(cloud) = cloud else {
        return from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .ok_or(KeystoneError::NoCredentials);
    };
    let paths = clouds_yaml_paths();
    for p in &paths {
        if let Ok(text) = std::fs::read_to_string(p) {
            match from_clouds_yaml(&text, cloud, &p.display().to_string()) {
                Err(KeystoneError::NoSuchCloud { .. }) => continue,
                other => return other,
            }
        }
    }
    let searched: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(KeystoneError::NoSuchCloud {
        cloud: cloud.into(),
        searched: searched.join(", "),
    })
}

/// Where clouds.yaml is looked for, in order (as openstacksdk does).
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

/// The named cloud from a clouds.yaml text read from `path`. Pure.
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
        .ok_or_else(|| KeystoneError::NoSuchCloud {
            cloud: cloud.into(),
            searched: path.into(),
        })?;
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
        cacert: c.cacert.clone(),
        insecure: c.verify == Some(false),
    })
}

/// Credentials from `OS_*` variables (an openrc file). Pure over the lookup.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
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
        cacert: var("OS_CACERT"),
        insecure: var("OS_INSECURE").is_some_and(|v| v == "true" || v == "1"),
    })
}

/// The `POST /v3/auth/tokens` body: an application credential (which carries its own scope),
/// or a password scoped to the project. Pure.
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
        (None, None) => return Err(KeystoneError::Missing("project_name or project_id")),
    };
    Ok(json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": domain(&c.user_domain), "password": password}}},
        "scope": {"project": project}}}))
}

/// Keystone takes a domain by name or id; `default` and 32 hex digits are ids.
fn domain(d: &str) -> Value {
    if d == "default" || d.len() == 32 && d.chars().all(|c| c.is_ascii_hexdigit()) {
        json!({"id": d})
    } else {
        json!({"name": d})
    }
}

/// `<auth_url>/v3/auth/tokens` (once: an auth URL may already end in `/v3`).
pub(crate) fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// A service's endpoint from a token's catalog, without a trailing `/`. Pure.
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

/// A token and its catalog.
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    pub(crate) catalog: Value,
}

impl Token {
    /// The token from Keystone's answer to `POST url`: its status, `X-Subject-Token` header
    /// and body (`Null` if it was not JSON). Pure.
    pub(crate) fn from_answer(
        url: &str,
        status: u16,
        subject_token: Option<&str>,
        mut body: Value,
    ) -> Result<Token, KeystoneError> {
        let err = |reason: String| KeystoneError::Auth {
            url: url.to_string(),
            reason,
        };
        if !(200..300).contains(&status) {
            return Err(err(format!(
                "HTTP {status}: {}",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("authentication failed")
            )));
        }
        let token = subject_token.ok_or_else(|| err("no X-Subject-Token in the answer".into()))?;
        Ok(Token {
            token: token.to_string(),
            catalog: body["token"]["catalog"].take(),
        })
    }

    /// The endpoint of `service_type` for the credentials' interface and region.
    pub fn endpoint(&self, service_type: &str, c: &Credentials) -> Result<String, KeystoneError> {
        endpoint(
            &self.catalog,
            service_type,
            &c.interface,
            c.region.as_deref(),
        )
        .ok_or_else(|| KeystoneError::NoEndpoint {
            service: service_type.into(),
            interface: c.interface.clone(),
            region: c
                .region
                .as_deref()
                .map(|r| format!(", region {r}"))
                .unwrap_or_default(),
        })
    }
}

/// An error and all its causes, `: `-separated: reqwest's own message stops at "error
/// sending request", the reason (refused, a TLS failure, a timeout) is in its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The token request of `c`: its URL and body.
fn token_request(c: &Credentials) -> Result<(String, Value), KeystoneError> {
    Ok((tokens_url(&c.auth_url), auth_body(c)?))
}

/// Keystone gave no answer.
fn unreachable(url: &str, e: &reqwest::Error) -> KeystoneError {
    KeystoneError::Auth {
        url: url.to_string(),
        reason: error_chain(e),
    }
}

/// Asks Keystone for a token (async).
pub async fn authenticate(http: &reqwest::Client, c: &Credentials) -> Result<Token, KeystoneError> {
    let (url, body) = token_request(c)?;
    let send = http.post(&url).json(&body).send().await;
    let answer = send.map_err(|e| unreachable(&url, &e))?;
    let (status, token) = (answer.status().as_u16(), subject_token(answer.headers()));
    let body = answer.json().await.unwrap_or(Value::Null);
    Token::from_answer(&url, status, token.as_deref(), body)
}

/// Asks Keystone for a token (blocking).
#[cfg(feature = "blocking")]
pub fn authenticate_blocking(
    http: &reqwest::blocking::Client,
    c: &Credentials,
) -> Result<Token, KeystoneError> {
    let (url, body) = token_request(c)?;
    let answer = http.post(&url).json(&body).send();
    let answer = answer.map_err(|e| unreachable(&url, &e))?;
    let (status, token) = (answer.status().as_u16(), subject_token(answer.headers()));
    let body = answer.json().unwrap_or(Value::Null);
    Token::from_answer(&url, status, token.as_deref(), body)
}

fn subject_token(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = r#"
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
  devstack:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
    cacert: /etc/ssl/cloud-ca.pem
    verify: false
  app:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://ks.example/v3
      application_credential_id: abc
      application_credential_secret: xyz
    interface: internal
"#;

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
        assert!(!c.insecure);
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
    fn env_with_a_project_id_and_domain_ids() {
        let vars: BTreeMap<&str, &str> = [
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_ID", "0123456789abcdef0123456789abcdef"),
            ("OS_USER_DOMAIN_ID", "default"),
            ("OS_INSECURE", "true"),
        ]
        .into();
        let c = from_env(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert!(c.insecure);
        let body = auth_body(&c).unwrap();
        assert_eq!(
            body["auth"]["scope"]["project"]["id"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["id"],
            "default"
        );
        let no_project = Credentials {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        assert!(auth_body(&no_project)
            .unwrap_err()
            .to_string()
            .contains("project_name"));
    }

    #[test]
    fn clouds_yaml_password_and_application_credential() {
        let lab = from_clouds_yaml(CLOUDS, "lab", "clouds.yaml").unwrap();
        let body = auth_body(&lab).unwrap();
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["id"], "default");
        let devstack = from_clouds_yaml(CLOUDS, "devstack", "clouds.yaml").unwrap();
        assert_eq!(devstack.auth_url, "http://127.0.0.1:5000/v3");
        assert_eq!(devstack.interface, "internal");
        assert_eq!(devstack.cacert.as_deref(), Some("/etc/ssl/cloud-ca.pem"));
        assert!(devstack.insecure);
        let body = auth_body(&devstack).unwrap();
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(body["auth"]["scope"]["project"]["name"], "admin");
        let app = from_clouds_yaml(CLOUDS, "app", "clouds.yaml").unwrap();
        assert_eq!(app.interface, "internal");
        let body = auth_body(&app).unwrap();
        assert_eq!(
            body["auth"]["identity"]["methods"][0],
            "application_credential"
        );
        assert_eq!(
            body["auth"]["identity"]["application_credential"]["id"],
            "abc"
        );
        let e = from_clouds_yaml(CLOUDS, "nope", "clouds.yaml").unwrap_err();
        assert!(matches!(e, KeystoneError::NoSuchCloud { .. }));
        assert_eq!(e.to_string(), "cloud \"nope\" not found in clouds.yaml");
    }

    #[test]
    fn endpoints_by_type_interface_and_region() {
        let catalog = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region": "R1", "url": "http://k"}]},
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9696/"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.1:9696"}]},
            {"type": "compute", "endpoints": [
                {"interface": "public", "region_id": "RegionTwo", "url": "http://two:8774/v2.1"},
                {"interface": "public", "region_id": "RegionOne", "url": "http://one:8774/v2.1"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region": "R1", "url": "http://g-int:9292"},
                {"interface": "public", "region": "R2", "url": "http://g2:9292/"},
                {"interface": "public", "region": "R1", "url": "http://g1:9292/"}]}
        ]);
        assert_eq!(
            endpoint(&catalog, "network", "public", None).as_deref(),
            Some("http://127.0.0.1:9696")
        );
        assert_eq!(
            endpoint(&catalog, "compute", "public", Some("RegionOne")).as_deref(),
            Some("http://one:8774/v2.1")
        );
        assert_eq!(
            endpoint(&catalog, "image", "public", Some("R1")).as_deref(),
            Some("http://g1:9292")
        );
        assert_eq!(
            endpoint(&catalog, "image", "internal", None).as_deref(),
            Some("http://g-int:9292")
        );
        assert_eq!(endpoint(&catalog, "image", "admin", None), None);
        assert_eq!(endpoint(&catalog, "volume", "public", None), None);
    }

    #[test]
    fn the_answer_gives_the_token_or_keystones_reason() {
        let url = "http://ks/v3/auth/tokens";
        let ok = json!({"token": {"catalog": [{"type": "image", "endpoints": [
            {"interface": "public", "region_id": "R1", "url": "http://g:9292/"}]}]}});
        let token = Token::from_answer(url, 201, Some("gAAA"), ok.clone()).unwrap();
        assert_eq!(token.token, "gAAA");
        let c = Credentials {
            interface: "public".into(),
            region: Some("R1".into()),
            ..Default::default()
        };
        assert_eq!(token.endpoint("image", &c).unwrap(), "http://g:9292");
        assert_eq!(
            token.endpoint("network", &c).unwrap_err().to_string(),
            "no network endpoint (interface public, region R1) in the Keystone catalog"
        );
        let refused =
            json!({"error": {"message": "The request you have made requires authentication."}});
        assert_eq!(
            Token::from_answer(url, 401, None, refused).unwrap_err().to_string(),
            "Keystone at http://ks/v3/auth/tokens: HTTP 401: The request you have made requires authentication."
        );
        assert!(Token::from_answer(url, 201, None, ok)
            .unwrap_err()
            .to_string()
            .contains("no X-Subject-Token"));
    }
}
