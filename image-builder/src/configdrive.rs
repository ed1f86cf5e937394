//! A Nova-style config drive (VFAT, label `config-2`) made with mtools, no mounts: what Nova
//! attaches when `force_config_drive` is set, holding `openstack/latest/network_data.json`
//! and `meta_data.json`.

use std::fs;
use std::path::Path;

use crate::tools::{self, cmd, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("writing the config drive files in {0}: {1}")]
    Io(String, std::io::Error),
}

/// Writes a 2 MiB VFAT image at `image` with the two documents in `openstack/latest/`.
pub fn make_vfat(
    image: &Path,
    network_data: &serde_json::Value,
    meta_data: &serde_json::Value,
) -> Result<(), ConfigDriveError> {
    let dir = image.with_extension("files");
    fs::create_dir_all(&dir).map_err(|e| ConfigDriveError::Io(dir.display().to_string(), e))?;
    let nd = dir.join("network_data.json");
    let md = dir.join("meta_data.json");
    for (path, doc) in [(&nd, network_data), (&md, meta_data)] {
        fs::write(
            path,
            serde_json::to_vec_pretty(doc).expect("JSON serialises"),
        )
        .map_err(|e| ConfigDriveError::Io(dir.display().to_string(), e))?;
    }
    let _ = fs::remove_file(image);
    tools::run(
        cmd("mkfs.vfat", ["-C", "-n", "config-2"])
            .arg(image)
            .arg("2048"),
    )?;
    let mut mmd = cmd("mmd", ["-i"]);
    mmd.arg(image)
        .args(["::/openstack", "::/openstack/latest"])
        .env("MTOOLS_SKIP_CHECK", "1");
    tools::run(&mut mmd)?;
    let mut mcopy = cmd("mcopy", ["-i"]);
    mcopy
        .arg(image)
        .arg(&nd)
        .arg(&md)
        .arg("::/openstack/latest/")
        .env("MTOOLS_SKIP_CHECK", "1");
    tools::run(&mut mcopy)?;
    Ok(())
}
