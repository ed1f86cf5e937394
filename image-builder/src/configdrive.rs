//! A Nova-style config drive, made without mounts: `openstack/latest/network_data.json`,
//! `meta_data.json` and (if given) `user_data` in a filesystem labelled `config-2`, in either of Nova's two formats:
//! ISO 9660 (`config_drive_format=iso9660`, Nova's default, made with genisoimage and the
//! flags Nova passes it) or VFAT (`config_drive_format=vfat`, made with mtools).

use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::{self, cmd, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("writing the config drive files in {0}: {1}")]
    Io(String, std::io::Error),
}

/// Nova's two config drive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DriveFormat {
    Iso9660,
    Vfat,
}

/// Writes the config drive image at `image` with the documents in `openstack/latest/`:
/// `user_data` is written as is, as Nova writes the server's user data.
pub(crate) fn make(
    format: DriveFormat,
    image: &Path,
    network_data: &serde_json::Value,
    meta_data: &serde_json::Value,
    user_data: Option<&str>,
) -> Result<(), ConfigDriveError> {
    let tree = image.with_extension("files");
    let latest = tree.join("openstack/latest");
    let io = |e| ConfigDriveError::Io(tree.display().to_string(), e);
    fs::create_dir_all(&latest).map_err(io)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, doc) in [
        ("network_data.json", network_data),
        ("meta_data.json", meta_data),
    ] {
        let path = latest.join(name);
        fs::write(
            &path,
            serde_json::to_vec_pretty(doc).expect("JSON serialises"),
        )
        .map_err(io)?;
        files.push(path);
    }
    if let Some(ud) = user_data {
        let path = latest.join("user_data");
        fs::write(&path, ud).map_err(io)?;
        files.push(path);
    }
    let _ = fs::remove_file(image);
    match format {
        DriveFormat::Iso9660 => {
            // nova/virt/configdrive.py `_make_iso9660`: the same flags, so the guest sees the
            // same Rock Ridge/Joliet volume.
            tools::run(
                cmd("genisoimage", ["-o"])
                    .arg(image)
                    .args([
                        "-ldots",
                        "-allow-lowercase",
                        "-allow-multidot",
                        "-l",
                        "-publisher",
                        "akanda-image verify",
                        "-quiet",
                        "-J",
                        "-r",
                        "-V",
                        "config-2",
                    ])
                    .arg(&tree),
            )?;
        }
        DriveFormat::Vfat => {
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
                .args(&files)
                .arg("::/openstack/latest/")
                .env("MTOOLS_SKIP_CHECK", "1");
            tools::run(&mut mcopy)?;
        }
    }
    Ok(())
}
