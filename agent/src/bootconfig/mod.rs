//! Boot configuration from the OpenStack config drive: how the agent gets its management
//! address without cloud-init.
//!
//! Contract (rug-lite and operators rely on it; documented in `docs/image.md`):
//! - The config drive is the block device whose filesystem label is `config-2` (ISO 9660 or
//!   VFAT, as Nova writes it, on an IDE, SATA or SCSI CD-ROM or a virtio disk). The agent
//!   first waits until the kernel has finished probing the storage controllers (see
//!   [`storage_pending`]), then reads each block device's superblock once (no udev or blkid
//!   needed), mounts the drive read-only for the moment it reads two files, and unmounts it.
//! - `openstack/latest/network_data.json` (Nova's format: `links` with MACs, `networks` with
//!   static IPv4/IPv6 addresses and routes) and `openstack/latest/meta_data.json`.
//! - The management NIC is the link whose MAC equals `meta.akanda_mgmt_mac`, or the first link
//!   when that key is absent. Its static addresses and routes are configured, and the agent
//!   listens on those addresses, on port 5000 unless `meta.akanda_api_port` says otherwise.
//!   Default routes on the management network are ignored: Nova writes one for every IPv4
//!   subnet with a gateway, and a router whose default route pointed into the management
//!   network would send tenant traffic there. Routes to specific prefixes (Neutron host
//!   routes) are kept.
//! - Without a config drive (or when the management network is `ipv4_dhcp`/`ipv6_slaac`
//!   only), the first NIC (the one that becomes `ge0`) runs DHCP (busybox `udhcpc`, shipped
//!   in the image) and SLAAC, and the agent listens on every address of that NIC only.
//!
//! Layout: [`nova`] parses the documents (pure, unit-tested with Nova's real files); [`drive`]
//! finds and reads the drive (sysfs, superblocks, a read-only mount); [`network`] configures
//! the management NIC and opens the listeners (netlink, sysctls, the DHCP client); this module
//! ties them together in [`read_source`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::netlink::{format_mac, parse_mac, Netlink, NetlinkError, Route, TABLE_MAIN};
use crate::nics;

pub(crate) const CONFIG_DRIVE_LABEL: &str = "config-2";
pub(crate) const DEFAULT_API_PORT: u16 = 5000;
/// Routes from the config drive are marked `proto static` (RTPROT_STATIC): the agent's own
/// reconciler only ever touches `proto 44` routes, so a pushed config never removes them.
pub(crate) const RTPROT_STATIC: u8 = 4;
/// The DHCP client run when there is no config drive (busybox, Debian package `udhcpc`).
pub(crate) const UDHCPC: &str = "/usr/sbin/udhcpc";
pub(crate) const UDHCPC_SCRIPT: &str = "/etc/udhcpc/default.script";
/// Where the config drive is mounted while it is read.
const MOUNT_POINT: &str = "/run/akanda-agent/config-drive";

#[derive(Debug, thiserror::Error)]
pub enum BootConfigError {
    #[error("{file}: {message}")]
    Invalid { file: &'static str, message: String },
    #[error("config drive {device}: {message}")]
    Drive { device: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no NIC with MAC {0} appeared within {1} s")]
    NoSuchNic(String, u64),
    #[error("no NIC appeared within {0} s")]
    NoNic(u64),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot start the DHCP client {UDHCPC}: {0}")]
    Dhcp(std::io::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

mod drive;
mod entropy;
mod network;
mod nova;

pub(crate) use drive::storage_pending;
use drive::{device_path, find_config_drives, read_device, read_dir_docs};
pub use network::{configure, BootNetwork};
pub use nova::*;

/// Where the boot configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Look for a block device labelled `config-2`.
    Auto,
    /// A directory holding `openstack/latest/...` (an extracted or mounted config drive).
    Dir(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Source, Self::Err> {
        Ok(if s == "auto" {
            Source::Auto
        } else {
            Source::Dir(PathBuf::from(s))
        })
    }
}

/// Reads the management configuration. `Auto` without a config drive gives the DHCP
/// fallback; a config drive that is present but unreadable or invalid is an error (falling
/// back would hide a broken deployment behind an unreachable VM). `wait` bounds the wait for
/// the kernel's storage probing ([`storage_pending`]); it is a safety net, not a guess: on a
/// normal boot probing has finished before the agent starts.
pub fn read_source(source: &Source, wait: Duration) -> Result<Management, BootConfigError> {
    let (nd, md, ud) = match source {
        Source::Dir(dir) => read_dir_docs(dir)?,
        Source::Auto => {
            // Look once, after the kernel has finished probing the storage controllers: a
            // drive that is not there then is not coming (see `storage_pending`).
            let started = Instant::now();
            let deadline = started + wait;
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let modules = Path::new("/lib/modules").join(release.trim());
            let pending = loop {
                let pending = storage_pending(Path::new("/sys"), &modules);
                if pending.is_empty() || Instant::now() >= deadline {
                    break pending;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if pending.is_empty() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "storage probing finished"
                );
            } else {
                tracing::warn!(
                    ?pending,
                    "storage probing still unfinished after {} s: looking for the config drive anyway",
                    wait.as_secs()
                );
            }
            match find_config_drives().first() {
                None => {
                    tracing::info!("no config drive (label config-2): DHCP on the first NIC");
                    return Ok(Management::fallback());
                }
                Some((dev, fs)) => {
                    tracing::info!(
                        device = %dev.display(),
                        ?fs,
                        bus = %device_path(dev),
                        "reading the config drive"
                    );
                    read_device(dev, *fs)?
                }
            }
        }
    };
    let mut management = parse(&nd, &md)?;
    // Before anything asks for random numbers (the TLS set-up does): see `entropy`.
    match &management.random_seed {
        Some(seed) => match entropy::credit(seed) {
            Ok(bits) => tracing::info!(
                bytes = seed.bytes().len(),
                credited_bits = bits,
                "the config drive's random seed is in the kernel's pool"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not add the config drive's random seed to the kernel's pool")
            }
        },
        None => tracing::info!("the config drive has no random seed (meta_data.json random_seed)"),
    }
    management.user_data = parse_user_data(&ud)?;
    if let Some(ud) = &management.user_data {
        tracing::info!(
            router_id = ?ud.router_id,
            management_address = ?ud.management_address,
            tls = ud.tls.is_some(),
            "user_data: akanda boot document"
        );
        if let Some(addr) = ud.management_address {
            if !management.addresses.iter().any(|a| a.addr() == addr) {
                tracing::warn!(%addr, "user_data's management_address is not a static address of the management NIC");
            }
        }
    }
    Ok(management)
}

#[cfg(test)]
mod tests {
    use super::nova::tests::{MD_AKANDA, ND_STATIC};
    use super::*;
    #[test]
    fn source_dir_reads_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let latest = dir.path().join("openstack/latest");
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(latest.join("network_data.json"), ND_STATIC).unwrap();
        std::fs::write(latest.join("meta_data.json"), MD_AKANDA).unwrap();
        let m = read_source(&Source::Dir(dir.path().into()), Duration::ZERO).unwrap();
        assert_eq!(m.port, 5001);
        std::fs::remove_file(latest.join("meta_data.json")).unwrap();
        let m = read_source(&Source::Dir(dir.path().into()), Duration::ZERO).unwrap();
        assert_eq!(m.port, 5000);
        std::fs::remove_file(latest.join("network_data.json")).unwrap();
        let e = read_source(&Source::Dir(dir.path().into()), Duration::ZERO).unwrap_err();
        assert!(
            e.to_string().contains("openstack/latest/network_data.json"),
            "{e}"
        );
    }
}
