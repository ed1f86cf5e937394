//! `akanda-image upload IMAGE`: Keystone v3 authentication (clouds.yaml or `OS_*`, by
//! `akanda-openstack-auth`), then
//! Glance v2: create the image record with the properties Nova needs, upload the bytes, wait
//! for `active`.
//!
//! Properties: `disk_format` (from `qemu-img info`), `container_format=bare`,
//! [`DEVICE_PROPERTIES`] (the devices Nova should give the VM), `os_distro=debian`,
//! `os_version`, and `min_disk`/`min_ram`. `hw_firmware_type` and `hw_machine_type` are not
//! set: the image boots under BIOS and UEFI, on pc and q35, and setting them would force one
//! (pass `--uefi-only` for clouds that must boot UEFI).

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use akanda_openstack_auth::{error_chain, Credentials, KeystoneError};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::tools;

/// The devices Nova should present, as image properties: paravirtual disk and NICs, and the
/// config drive's CD-ROM on SATA, which is q35's own controller and which libvirt adds to a pc
/// machine. Measured boot-to-ready under TCG (`akanda-image verify`): SATA 14.8 to 17.7 s,
/// IDE 20.8 to 22.1 s, virtio-scsi 24 to 32 s (the kernel's synchronous scan of virtio-scsi's
/// 256 targets costs about 9 s). The image reads all of them.
pub(crate) const DEVICE_PROPERTIES: [(&str, &str); 3] = [
    ("hw_disk_bus", "virtio"),
    ("hw_vif_model", "virtio"),
    ("hw_cdrom_bus", "sata"),
];

#[derive(Debug, Clone, clap::Args)]
pub struct UploadOptions {
    /// The image file (qcow2 or raw).
    pub(crate) image: PathBuf,
    /// Image name in Glance.
    #[arg(long, default_value = "akanda-router")]
    pub(crate) name: String,
    /// Cloud name in clouds.yaml (default: $OS_CLOUD; without either, OS_* variables).
    #[arg(long)]
    pub(crate) os_cloud: Option<String>,
    /// Glance visibility.
    #[arg(long, default_value = "private")]
    pub(crate) visibility: String,
    /// Set hw_firmware_type=uefi (only for clouds that must boot the image with UEFI).
    #[arg(long)]
    pub(crate) uefi_only: bool,
    /// Extra image property KEY=VALUE (repeatable).
    #[arg(long = "property", value_parser = parse_kv)]
    pub(crate) properties: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Keystone(#[from] KeystoneError),
    #[error("HTTP client for {url}: {message}")]
    Client { url: String, message: String },
    #[error("Glance {step}: {message}")]
    Glance { step: String, message: String },
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The cloud of `--os-cloud`, else `$OS_CLOUD` (clouds.yaml); without either, `OS_*`.
fn credentials(opts: &UploadOptions) -> Result<Credentials, UploadError> {
    let cloud = opts
        .os_cloud
        .clone()
        .or_else(|| std::env::var("OS_CLOUD").ok().filter(|s| !s.is_empty()));
    Ok(akanda_openstack_auth::credentials(cloud.as_deref())?)
}

fn client(c: &Credentials, timeout: Option<Duration>) -> Result<Client, UploadError> {
    let mut b = Client::builder().timeout(timeout);
    if let Some(path) = &c.cacert {
        let pem = std::fs::read(path).map_err(|e| UploadError::Io(path.clone(), e))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| UploadError::Client {
            url: c.auth_url.clone(),
            message: format!("CA certificate {path}: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    if c.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| UploadError::Client {
        url: c.auth_url.clone(),
        message: e.to_string(),
    })
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
    let token = akanda_openstack_auth::authenticate_blocking(&http, &creds)?;
    let glance = token.endpoint("image", &creds)?;
    let token = token.token;
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
        .map_err(|e| g_err("create image", error_chain(&e)))?;
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
            .map_err(|e| g_err("upload data", error_chain(&e)))?;
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
                .map_err(|e| g_err("read image", error_chain(&e)))?;
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
    use std::collections::BTreeMap;

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
}
