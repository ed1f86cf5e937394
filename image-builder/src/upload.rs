//! `akanda-image upload IMAGE`: Keystone v3 authentication (clouds.yaml or `OS_*`), then
//! Glance v2: create the image record with the properties Nova needs, upload the bytes, wait
//! for `active`.
//!
//! Properties: `disk_format` (from `qemu-img info`), `container_format=bare`,
//! [`DEVICE_PROPERTIES`] (the devices Nova should give the VM), `os_distro=debian`,
//! `os_version`, and `min_disk`/`min_ram`. `hw_firmware_type` and `hw_machine_type` are not
//! set: the image boots under BIOS and UEFI, on pc and q35, and setting them would force one
//! (pass `--uefi-only` for clouds that must boot UEFI).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::tools;

/// The devices Nova should present, as image properties: paravirtual disk and NICs, and the
/// config drive's CD-ROM on SATA, which is q35's own controller and which libvirt adds to a pc
/// machine. Measured boot-to-ready under TCG (`akanda-image verify`): SATA 14.8 to 17.7 s,
/// IDE 20.8 to 22.1 s, virtio-scsi 24 to 32 s (the kernel's synchronous scan of virtio-scsi's
/// 256 targets costs about 9 s). The image reads all of them.
pub const DEVICE_PROPERTIES: [(&str, &str); 3] = [
    ("hw_disk_bus", "virtio"),
    ("hw_vif_model", "virtio"),
    ("hw_cdrom_bus", "sata"),
];

#[derive(Debug, Clone, clap::Args)]
pub struct UploadOptions {
    /// The image file (qcow2 or raw).
    pub image: PathBuf,
    /// Image name in Glance.
    #[arg(long, default_value = "akanda-router")]
    pub name: String,
    /// Cloud name in clouds.yaml (default: $OS_CLOUD; without either, OS_* variables).
    #[arg(long)]
    pub os_cloud: Option<String>,
    /// Glance visibility.
    #[arg(long, default_value = "private")]
    pub visibility: String,
    /// Set hw_firmware_type=uefi (only for clouds that must boot the image with UEFI).
    #[arg(long)]
    pub uefi_only: bool,
    /// Extra image property KEY=VALUE (repeatable).
    #[arg(long = "property", value_parser = parse_kv)]
    pub properties: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "no cloud credentials: set OS_CLOUD (clouds.yaml) or OS_AUTH_URL, OS_USERNAME, \
         OS_PASSWORD and OS_PROJECT_NAME (source an openrc file)"
    )]
    NoCredentials,
    #[error("cloud {0:?} not found in {1}")]
    NoSuchCloud(String, String),
    #[error("{path}: {message}")]
    CloudsYaml { path: String, message: String },
    #[error("missing {0} (in clouds.yaml auth: or as OS_* variable)")]
    Missing(&'static str),
    #[error("Keystone at {url}: {message}")]
    Keystone { url: String, message: String },
    #[error("no image service (Glance) in the Keystone catalog{0}")]
    NoGlance(String),
    #[error("Glance {step}: {message}")]
    Glance { step: String, message: String },
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Keystone credentials, from either source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
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
    pub cacert: Option<String>,
    pub insecure: bool,
}

#[derive(Debug, Deserialize)]
struct CloudsFile {
    clouds: BTreeMap<String, Cloud>,
}

#[derive(Debug, Deserialize)]
struct Cloud {
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

/// The named cloud from a clouds.yaml text. Pure.
pub fn credentials_from_clouds_yaml(
    text: &str,
    cloud: &str,
    path: &str,
) -> Result<Credentials, UploadError> {
    let file: CloudsFile = serde_norway::from_str(text).map_err(|e| UploadError::CloudsYaml {
        path: path.into(),
        message: e.to_string(),
    })?;
    let c = file
        .clouds
        .get(cloud)
        .ok_or_else(|| UploadError::NoSuchCloud(cloud.into(), path.into()))?;
    let get = |k: &str| -> Option<String> {
        match c.auth.get(k)? {
            serde_norway::Value::String(s) => Some(s.clone()),
            serde_norway::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let app = c.auth_type.as_deref() == Some("v3applicationcredential");
    Ok(Credentials {
        auth_url: get("auth_url").ok_or(UploadError::Missing("auth_url"))?,
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
        app_cred_id: if app {
            get("application_credential_id")
        } else {
            None
        },
        app_cred_secret: if app {
            get("application_credential_secret")
        } else {
            None
        },
        region: c.region_name.clone(),
        interface: c.interface.clone().unwrap_or_else(|| "public".into()),
        cacert: c.cacert.clone(),
        insecure: c.verify == Some(false),
    })
}

/// Credentials from `OS_*` variables (an openrc file). Pure over the lookup function.
pub fn credentials_from_env(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
    let auth_url = var("OS_AUTH_URL")?;
    Some(Credentials {
        auth_url,
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

fn credentials(opts: &UploadOptions) -> Result<Credentials, UploadError> {
    let cloud = opts
        .os_cloud
        .clone()
        .or_else(|| std::env::var("OS_CLOUD").ok().filter(|s| !s.is_empty()));
    if let Some(cloud) = cloud {
        let paths = clouds_yaml_paths();
        for p in &paths {
            if let Ok(text) = std::fs::read_to_string(p) {
                return credentials_from_clouds_yaml(&text, &cloud, &p.display().to_string());
            }
        }
        return Err(UploadError::NoSuchCloud(
            cloud,
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    credentials_from_env(|k| std::env::var(k).ok().filter(|s| !s.is_empty()))
        .ok_or(UploadError::NoCredentials)
}

/// The Keystone v3 token request body. Pure.
pub fn auth_body(c: &Credentials) -> Result<Value, UploadError> {
    if let (Some(id), Some(secret)) = (&c.app_cred_id, &c.app_cred_secret) {
        // An application credential carries its own scope.
        return Ok(
            json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": id, "secret": secret}}}}),
        );
    }
    let user = c
        .username
        .as_ref()
        .ok_or(UploadError::Missing("username"))?;
    let password = c
        .password
        .as_ref()
        .ok_or(UploadError::Missing("password"))?;
    let domain = |d: &str| {
        // Domain IDs are hex or "default"; anything else is a name.
        if d == "default" || (d.len() == 32 && d.chars().all(|c| c.is_ascii_hexdigit())) {
            json!({"id": d})
        } else {
            json!({"name": d})
        }
    };
    let project = match (&c.project_id, &c.project_name) {
        (Some(id), _) => json!({"id": id}),
        (None, Some(name)) => json!({"name": name, "domain": domain(&c.project_domain)}),
        (None, None) => return Err(UploadError::Missing("project_name or project_id")),
    };
    Ok(json!({"auth": {
        "identity": {"methods": ["password"],
            "password": {"user": {"name": user, "password": password, "domain": domain(&c.user_domain)}}},
        "scope": {"project": project}
    }}))
}

/// The Glance endpoint from a token's catalog. Pure.
pub fn glance_endpoint(catalog: &Value, interface: &str, region: Option<&str>) -> Option<String> {
    let services = catalog.as_array()?;
    let image = services.iter().find(|s| s["type"] == "image")?;
    image["endpoints"]
        .as_array()?
        .iter()
        .filter(|e| e["interface"] == interface)
        .find(|e| match region {
            Some(r) => e["region"] == r || e["region_id"] == r,
            None => true,
        })
        .and_then(|e| e["url"].as_str())
        .map(|u| u.trim_end_matches('/').to_string())
}

fn client(c: &Credentials, timeout: Option<Duration>) -> Result<Client, UploadError> {
    let mut b = Client::builder().timeout(timeout);
    if let Some(path) = &c.cacert {
        let pem = std::fs::read(path).map_err(|e| UploadError::Io(path.clone(), e))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| UploadError::Keystone {
            url: c.auth_url.clone(),
            message: format!("CA certificate {path}: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    if c.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| UploadError::Keystone {
        url: c.auth_url.clone(),
        message: e.to_string(),
    })
}

fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Uploads and returns a one-line summary with the image id.
pub fn upload(opts: &UploadOptions) -> Result<String, UploadError> {
    let creds = credentials(opts)?;
    let info = tools::run(tools::cmd("qemu-img", ["info", "--output=json"]).arg(&opts.image))?;
    let info: Value = serde_json::from_str(&info)
        .map_err(|e| UploadError::Io(opts.image.display().to_string(), std::io::Error::other(e)))?;
    let disk_format = match info["format"].as_str() {
        Some("qcow2") => "qcow2",
        Some("raw") => "raw",
        other => {
            return Err(UploadError::Io(
                opts.image.display().to_string(),
                std::io::Error::other(format!("unsupported image format {other:?}")),
            ))
        }
    };
    let virtual_gib = info["virtual-size"].as_u64().unwrap_or(0).div_ceil(1 << 30);

    let http = client(&creds, Some(Duration::from_secs(60)))?;
    let base = creds.auth_url.trim_end_matches('/');
    let token_url = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    let ks_err = |message: String| UploadError::Keystone {
        url: token_url.clone(),
        message,
    };
    let resp = http
        .post(&token_url)
        .json(&auth_body(&creds)?)
        .send()
        .map_err(|e| ks_err(error_text(&e)))?;
    let status = resp.status();
    let token = resp
        .headers()
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = resp.json().unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(ks_err(format!(
            "HTTP {status}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("authentication failed")
        )));
    }
    let token = token.ok_or_else(|| ks_err("no X-Subject-Token in the answer".into()))?;
    let glance = glance_endpoint(
        &body["token"]["catalog"],
        &creds.interface,
        creds.region.as_deref(),
    )
    .ok_or_else(|| {
        UploadError::NoGlance(format!(
            " (interface {}{})",
            creds.interface,
            creds
                .region
                .as_deref()
                .map(|r| format!(", region {r}"))
                .unwrap_or_default()
        ))
    })?;
    let g_err = |step: &str, message: String| UploadError::Glance {
        step: step.into(),
        message,
    };

    let mut record = json!({
        "name": opts.name,
        "disk_format": disk_format,
        "container_format": "bare",
        "visibility": opts.visibility,
        "min_disk": virtual_gib.max(1),
        "min_ram": 256,
        "os_distro": "debian",
        "os_version": "12",
    });
    for (k, v) in DEVICE_PROPERTIES {
        record[k] = v.into();
    }
    if opts.uefi_only {
        record["hw_firmware_type"] = "uefi".into();
    }
    for (k, v) in &opts.properties {
        record[k] = v.clone().into();
    }
    let resp = http
        .post(format!("{glance}/v2/images"))
        .header("X-Auth-Token", &token)
        .json(&record)
        .send()
        .map_err(|e| g_err("create image", error_text(&e)))?;
    let status = resp.status();
    let created: Value = resp.json().unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(g_err("create image", format!("HTTP {status}: {created}")));
    }
    let id = created["id"]
        .as_str()
        .ok_or_else(|| g_err("create image", format!("no id in {created}")))?
        .to_string();

    let result = (|| {
        let file = File::open(&opts.image)
            .map_err(|e| UploadError::Io(opts.image.display().to_string(), e))?;
        let len = file
            .metadata()
            .map_err(|e| UploadError::Io(opts.image.display().to_string(), e))?
            .len();
        // No overall timeout for the upload itself: images take as long as the link needs.
        let upload_http = client(&creds, None)?;
        let resp = upload_http
            .put(format!("{glance}/v2/images/{id}/file"))
            .header("X-Auth-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(reqwest::blocking::Body::sized(file, len))
            .send()
            .map_err(|e| g_err("upload data", error_text(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(g_err(
                "upload data",
                format!("HTTP {status}: {}", resp.text().unwrap_or_default()),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let image: Value = http
                .get(format!("{glance}/v2/images/{id}"))
                .header("X-Auth-Token", &token)
                .send()
                .and_then(|r| r.json())
                .map_err(|e| g_err("read image", error_text(&e)))?;
            match image["status"].as_str() {
                Some("active") => return Ok(image),
                Some("killed") | Some("deleted") => {
                    return Err(g_err("upload", format!("image became {}", image["status"])))
                }
                _ if Instant::now() > deadline => {
                    return Err(g_err(
                        "upload",
                        format!("image still {} after 120 s", image["status"]),
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    })();
    match result {
        Ok(image) => Ok(format!(
            "uploaded {} as image {id} ({}, {} bytes, checksum {}) to {glance}",
            opts.image.display(),
            opts.name,
            image["size"],
            image["os_hash_value"].as_str().unwrap_or("-"),
        )),
        Err(e) => {
            // Do not leave a half-made "queued" image behind.
            let _ = http
                .delete(format!("{glance}/v2/images/{id}"))
                .header("X-Auth-Token", &token)
                .send();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = r#"
clouds:
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
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://keystone.example/
      application_credential_id: abc
      application_credential_secret: xyz
"#;

    #[test]
    fn clouds_yaml_password_and_app_credential() {
        let c = credentials_from_clouds_yaml(CLOUDS, "devstack", "clouds.yaml").unwrap();
        assert_eq!(c.auth_url, "http://127.0.0.1:5000/v3");
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, "internal");
        let body = auth_body(&c).unwrap();
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["name"],
            "admin"
        );
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(body["auth"]["scope"]["project"]["name"], "admin");
        let a = credentials_from_clouds_yaml(CLOUDS, "appcred", "clouds.yaml").unwrap();
        let body = auth_body(&a).unwrap();
        assert_eq!(
            body["auth"]["identity"]["methods"][0],
            "application_credential"
        );
        let e = credentials_from_clouds_yaml(CLOUDS, "nope", "clouds.yaml").unwrap_err();
        assert_eq!(e.to_string(), "cloud \"nope\" not found in clouds.yaml");
    }

    #[test]
    fn env_variables_like_an_openrc() {
        let vars: BTreeMap<&str, &str> = [
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_ID", "0123456789abcdef0123456789abcdef"),
            ("OS_USER_DOMAIN_ID", "default"),
        ]
        .into();
        let c = credentials_from_env(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        let body = auth_body(&c).unwrap();
        assert_eq!(
            body["auth"]["scope"]["project"]["id"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["id"],
            "default"
        );
        assert!(credentials_from_env(|_| None).is_none());
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
    fn device_properties_name_a_scsi_controller_the_image_drives() {
        let props: BTreeMap<_, _> = DEVICE_PROPERTIES.into_iter().collect();
        // A SCSI CD-ROM without hw_scsi_model would get libvirt's LSI controller.
        if props.get("hw_cdrom_bus") == Some(&"scsi") {
            assert_eq!(props.get("hw_scsi_model"), Some(&"virtio-scsi"));
        }
        assert_eq!(props.get("hw_cdrom_bus"), Some(&"sata"));
        assert_eq!(props.get("hw_disk_bus"), Some(&"virtio"));
        assert_eq!(props.get("hw_vif_model"), Some(&"virtio"));
        assert!(!props.contains_key("hw_machine_type") && !props.contains_key("hw_firmware_type"));
    }

    #[test]
    fn glance_endpoint_by_interface_and_region() {
        let catalog = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region": "R1", "url": "http://k"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region": "R1", "url": "http://g-int:9292"},
                {"interface": "public", "region": "R2", "url": "http://g2:9292/"},
                {"interface": "public", "region": "R1", "url": "http://g1:9292/"}
            ]}
        ]);
        assert_eq!(
            glance_endpoint(&catalog, "public", Some("R1")).as_deref(),
            Some("http://g1:9292")
        );
        assert_eq!(
            glance_endpoint(&catalog, "internal", None).as_deref(),
            Some("http://g-int:9292")
        );
        assert_eq!(glance_endpoint(&catalog, "admin", None), None);
    }
}
