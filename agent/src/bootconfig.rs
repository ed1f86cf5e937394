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
//! [`parse`] is pure and unit-tested with Nova-format samples; [`read_source`] does the I/O
//! and [`configure`] writes the kernel state through [`Netlink`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::netlink::{format_mac, parse_mac, Netlink, NetlinkError, Route, TABLE_MAIN};
use crate::nics;

pub const CONFIG_DRIVE_LABEL: &str = "config-2";
pub const DEFAULT_API_PORT: u16 = 5000;
/// Routes from the config drive are marked `proto static` (RTPROT_STATIC): the agent's own
/// reconciler only ever touches `proto 44` routes, so a pushed config never removes them.
pub const RTPROT_STATIC: u8 = 4;
/// The DHCP client run when there is no config drive (busybox, Debian package `udhcpc`).
pub const UDHCPC: &str = "/usr/sbin/udhcpc";
pub const UDHCPC_SCRIPT: &str = "/etc/udhcpc/default.script";
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

// ---------------------------------------------------------------------------------------------
// Nova's formats (only the fields used here; everything else is ignored)

#[derive(Debug, Deserialize)]
struct NetworkData {
    #[serde(default)]
    links: Vec<NdLink>,
    #[serde(default)]
    networks: Vec<NdNetwork>,
}

#[derive(Debug, Deserialize)]
struct NdLink {
    id: String,
    #[serde(default)]
    ethernet_mac_address: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct NdNetwork {
    #[serde(default)]
    id: String,
    #[serde(rename = "type")]
    kind: String,
    link: String,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    netmask: Option<String>,
    #[serde(default)]
    routes: Vec<NdRoute>,
}

#[derive(Debug, Deserialize)]
struct NdRoute {
    network: String,
    netmask: String,
    gateway: String,
}

#[derive(Debug, Deserialize)]
struct MetaData {
    #[serde(default)]
    meta: BTreeMap<String, serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// What the agent does with them

/// The management NIC's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    /// Lower-case MAC of the management NIC; `None` means the first NIC (`ge0`).
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Static addresses with their prefix length.
    pub addresses: Vec<IpNet>,
    /// Static routes: destination and gateway.
    pub routes: Vec<(IpNet, IpAddr)>,
    /// Run DHCPv4 on the NIC.
    pub dhcp4: bool,
    /// Accept router advertisements (SLAAC) on the NIC although the box forwards.
    pub slaac: bool,
    pub port: u16,
    /// `meta.akanda_insecure_http` is `true`: the operator allows plain HTTP when there is no
    /// TLS material.
    pub insecure_http: bool,
    /// rug-lite's boot document from `user_data`, if there is one.
    pub user_data: Option<UserData>,
}

impl Management {
    /// No config drive: DHCP and SLAAC on the first NIC, default port.
    pub fn fallback() -> Management {
        Management {
            mac: None,
            mtu: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            dhcp4: true,
            slaac: true,
            port: DEFAULT_API_PORT,
            insecure_http: false,
            user_data: None,
        }
    }

    /// Where to listen: each static address, or (no static address) every address of the
    /// NIC, which [`configure`] implements as `[::]` bound to the device.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        self.addresses
            .iter()
            .map(|net| SocketAddr::new(net.addr(), self.port))
            .collect()
    }
}

fn invalid(file: &'static str, message: impl Into<String>) -> BootConfigError {
    BootConfigError::Invalid {
        file,
        message: message.into(),
    }
}

const ND: &str = "network_data.json";
const MD: &str = "meta_data.json";

/// `255.255.255.0`, `ffff:ffff:ffff:ffff::` or `24` → prefix length.
fn prefix_len(mask: &str, v6: bool) -> Option<u8> {
    if let Ok(n) = mask.parse::<u8>() {
        return (n <= if v6 { 128 } else { 32 }).then_some(n);
    }
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) if !v6 => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) if v6 => u128::from(m),
        _ => return None,
    };
    let len = bits.leading_ones();
    // A mask must be contiguous ones.
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// `10.0.0.5` + `255.255.255.0`, or `fd00::5/64` → IpNet.
fn address(ip: &str, mask: Option<&str>) -> Option<IpNet> {
    if let Ok(net) = ip.parse::<IpNet>() {
        return Some(net);
    }
    let addr: IpAddr = ip.parse().ok()?;
    let len = match mask {
        Some(m) => prefix_len(m, addr.is_ipv6())?,
        None => return None,
    };
    IpNet::new(addr, len).ok()
}

fn meta_string(meta: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<String> {
    match meta.get(key)? {
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Turns the two documents into the management configuration. Pure.
pub fn parse(network_data: &[u8], meta_data: &[u8]) -> Result<Management, BootConfigError> {
    let nd: NetworkData =
        serde_json::from_slice(network_data).map_err(|e| invalid(ND, e.to_string()))?;
    let md: MetaData = serde_json::from_slice(meta_data).map_err(|e| invalid(MD, e.to_string()))?;
    let port = match meta_string(&md.meta, "akanda_api_port") {
        None => DEFAULT_API_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(invalid(
                    MD,
                    format!("meta.akanda_api_port {p:?} is not a TCP port"),
                ))
            }
        },
    };
    let insecure_http = match meta_string(&md.meta, "akanda_insecure_http") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(invalid(
                MD,
                format!("meta.akanda_insecure_http {v:?} is neither \"true\" nor \"false\""),
            ))
        }
    };
    let link = match meta_string(&md.meta, "akanda_mgmt_mac") {
        Some(mac) => {
            let wanted = parse_mac(&mac).ok_or_else(|| {
                invalid(
                    MD,
                    format!("meta.akanda_mgmt_mac {mac:?} is not a MAC address"),
                )
            })?;
            nd.links
                .iter()
                .find(|l| {
                    l.ethernet_mac_address
                        .as_deref()
                        .and_then(parse_mac)
                        .is_some_and(|m| m == wanted)
                })
                .ok_or_else(|| {
                    invalid(
                        ND,
                        format!("no link has the management MAC {mac} (meta.akanda_mgmt_mac)"),
                    )
                })?
        }
        None => nd
            .links
            .first()
            .ok_or_else(|| invalid(ND, "no links: cannot pick a management NIC"))?,
    };
    let mac = link
        .ethernet_mac_address
        .as_deref()
        .map(|m| {
            parse_mac(m)
                .map(|m| format_mac(&m))
                .ok_or_else(|| invalid(ND, format!("link {}: bad MAC {m:?}", link.id)))
        })
        .transpose()?;
    let mut out = Management {
        mac,
        mtu: link.mtu,
        addresses: Vec::new(),
        routes: Vec::new(),
        dhcp4: false,
        slaac: false,
        port,
        insecure_http,
        user_data: None,
    };
    for net in nd.networks.iter().filter(|n| n.link == link.id) {
        match net.kind.as_str() {
            "ipv4" | "ipv6" => {
                let ip = net.ip_address.as_deref().ok_or_else(|| {
                    invalid(ND, format!("network {}: static but no ip_address", net.id))
                })?;
                let addr = address(ip, net.netmask.as_deref()).ok_or_else(|| {
                    invalid(
                        ND,
                        format!(
                            "network {}: bad address {ip:?} / netmask {:?}",
                            net.id, net.netmask
                        ),
                    )
                })?;
                if addr.addr().is_ipv6() != (net.kind == "ipv6") {
                    return Err(invalid(
                        ND,
                        format!("network {}: {ip} is not {}", net.id, net.kind),
                    ));
                }
                out.addresses.push(addr);
                for r in &net.routes {
                    let dst = address(&r.network, Some(&r.netmask)).ok_or_else(|| {
                        invalid(
                            ND,
                            format!("network {}: bad route {}/{}", net.id, r.network, r.netmask),
                        )
                    })?;
                    let gw: IpAddr = r.gateway.parse().map_err(|_| {
                        invalid(
                            ND,
                            format!("network {}: bad gateway {:?}", net.id, r.gateway),
                        )
                    })?;
                    if gw.is_ipv6() != dst.addr().is_ipv6() {
                        return Err(invalid(
                            ND,
                            format!("network {}: route {dst} via {gw} mixes families", net.id),
                        ));
                    }
                    if dst.prefix_len() == 0 {
                        tracing::info!(network = %net.id, %gw, "ignoring the management network's default route");
                        continue;
                    }
                    out.routes.push((dst.trunc(), gw));
                }
            }
            "ipv4_dhcp" => out.dhcp4 = true,
            "ipv6_slaac" | "ipv6_dhcpv6-stateless" | "ipv6_dhcp" | "ipv6_dhcpv6-stateful" => {
                // The agent runs no DHCPv6 client: router advertisements give the address.
                out.slaac = true;
            }
            other => {
                tracing::warn!(network = %net.id, kind = other, "ignoring network of unknown type");
            }
        }
    }
    if out.addresses.is_empty() && !out.dhcp4 && !out.slaac {
        // A management link without any usable network: better reachable by DHCP than not.
        out.dhcp4 = true;
        out.slaac = true;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// user_data: rug-lite's boot document

const UD: &str = "user_data";

/// The appliance's TLS material: its server certificate and key, and the CA its clients'
/// certificates must chain to. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct BootTls {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
}

impl std::fmt::Debug for BootTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTls")
            .field("ca_cert", &format_args!("{} bytes", self.ca_cert.len()))
            .field(
                "server_cert",
                &format_args!("{} bytes", self.server_cert.len()),
            )
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// rug-lite's boot document (`openstack/latest/user_data`):
/// `{"akanda": {"version": 1, "router_id": "...", "management_address": "...",
/// "tls": {"ca_cert": PEM, "server_cert": PEM, "server_key": PEM} | null}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserData {
    pub router_id: Option<String>,
    pub management_address: Option<IpAddr>,
    /// `None`: `tls` is null or absent (a plain-HTTP lab).
    pub tls: Option<BootTls>,
}

/// The only `akanda.version` this agent reads.
pub const USER_DATA_VERSION: u64 = 1;

/// Parses `user_data`. Pure. `Ok(None)` when it is empty or not ours (not JSON, or JSON
/// without an `akanda` key: the image has no cloud-init, so other user_data is ignored). An
/// `akanda` document with a wrong field is an error naming the field; it never quotes the key.
pub fn parse_user_data(bytes: &[u8]) -> Result<Option<UserData>, BootConfigError> {
    use serde_json::Value;
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let doc: Value = match serde_json::from_str(trimmed) {
        Ok(v) => v,
        // A JSON object that does not parse is a broken document of ours (truncated...).
        Err(e) if trimmed.starts_with('{') => {
            return Err(invalid(UD, format!("not valid JSON: {e}")))
        }
        Err(_) => {
            tracing::warn!("user_data is not JSON: ignored (no TLS material from it)");
            return Ok(None);
        }
    };
    let Some(akanda) = doc.get("akanda") else {
        tracing::warn!("user_data has no \"akanda\" key: ignored (no TLS material from it)");
        return Ok(None);
    };
    let akanda = akanda
        .as_object()
        .ok_or_else(|| invalid(UD, "akanda: must be an object"))?;
    match akanda.get("version").and_then(Value::as_u64) {
        Some(USER_DATA_VERSION) => {}
        Some(v) => {
            return Err(invalid(
                UD,
                format!("akanda.version {v} is not supported (this agent reads version {USER_DATA_VERSION})"),
            ))
        }
        None => {
            return Err(invalid(
                UD,
                format!("akanda.version: must be the number {USER_DATA_VERSION}"),
            ))
        }
    }
    let optional_string = |key: &str| -> Result<Option<String>, BootConfigError> {
        match akanda.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(UD, format!("akanda.{key}: must be a string"))),
        }
    };
    let router_id = optional_string("router_id")?;
    let management_address = optional_string("management_address")?
        .map(|a| {
            a.parse::<IpAddr>().map_err(|_| {
                invalid(
                    UD,
                    format!("akanda.management_address {a:?} is not an IP address"),
                )
            })
        })
        .transpose()?;
    let tls = match akanda.get("tls") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => {
            let field = |key: &str| -> Result<String, BootConfigError> {
                match t.get(key) {
                    Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                    Some(Value::String(_)) => Err(invalid(UD, format!("akanda.tls.{key}: empty"))),
                    None | Some(Value::Null) => {
                        Err(invalid(UD, format!("akanda.tls.{key}: missing")))
                    }
                    Some(_) => Err(invalid(
                        UD,
                        format!("akanda.tls.{key}: must be a PEM string"),
                    )),
                }
            };
            let tls = BootTls {
                ca_cert: field("ca_cert")?,
                server_cert: field("server_cert")?,
                server_key: field("server_key")?,
            };
            crate::tls::check_pem(&tls.server_cert, &tls.server_key, &tls.ca_cert)
                .map_err(|e| invalid(UD, format!("akanda.tls: {e}")))?;
            Some(tls)
        }
        Some(_) => return Err(invalid(UD, "akanda.tls: must be an object or null")),
    };
    Ok(Some(UserData {
        router_id,
        management_address,
        tls,
    }))
}

// ---------------------------------------------------------------------------------------------
// Finding and reading the config drive

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    fn kernel_name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }
}

/// Bytes of a device needed by [`detect_label`]: the ISO 9660 primary volume descriptor ends
/// at 34 KiB.
pub const PROBE_BYTES: usize = 0x8800;

fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The filesystem type and label of a device from its first [`PROBE_BYTES`]. Pure.
pub fn detect_label(head: &[u8]) -> Option<(FsType, String)> {
    // ISO 9660: primary volume descriptor at sector 16 (of 2048 bytes): type 1, "CD001",
    // volume identifier at byte 40, 32 characters padded with spaces.
    if head.len() >= 0x8000 + 72 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return Some((FsType::Iso9660, trimmed(&head[0x8028..0x8048])));
    }
    // FAT: boot sector signature 55 AA; the extended BPB (signature 0x29) holds the label,
    // at 0x2B for FAT12/16 and 0x47 for FAT32.
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        if head[0x42] == 0x29 && &head[0x52..0x57] == b"FAT32" {
            return Some((FsType::Vfat, trimmed(&head[0x47..0x52])));
        }
        if head[0x26] == 0x29 && &head[0x36..0x39] == b"FAT" {
            return Some((FsType::Vfat, trimmed(&head[0x2b..0x36])));
        }
    }
    None
}

/// Block devices whose label is `config-2` (case-insensitive: FAT labels are often upper-cased).
fn find_config_drives() -> Vec<(PathBuf, FsType)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    for name in names {
        let dev = PathBuf::from("/dev").join(&name);
        let Ok(mut f) = File::open(&dev) else {
            continue;
        };
        let mut head = vec![0u8; PROBE_BYTES];
        if f.seek(SeekFrom::Start(0)).is_err() || f.read_exact(&mut head).is_err() {
            continue;
        }
        if let Some((fs, label)) = detect_label(&head) {
            if label.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL) {
                out.push((dev, fs));
            }
        }
    }
    out
}

/// network_data.json, meta_data.json and user_data (empty when absent), read from a
/// directory (a mounted or extracted config drive).
fn read_dir_docs(dir: &Path) -> Result<Docs, BootConfigError> {
    let read = |name: &str| {
        let path = dir.join("openstack/latest").join(name);
        std::fs::read(&path).map_err(|source| BootConfigError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let nd = read(ND)?;
    // meta_data.json is optional for our purposes: without it, defaults apply.
    let md = match read(MD) {
        Ok(md) => md,
        Err(BootConfigError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            b"{}".to_vec()
        }
        Err(e) => return Err(e),
    };
    let ud = match read(UD) {
        Ok(ud) => ud,
        Err(BootConfigError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok((nd, md, ud))
}

type Docs = (Vec<u8>, Vec<u8>, Vec<u8>);

fn read_device(dev: &Path, fs: FsType) -> Result<Docs, BootConfigError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let drive_err = |message: String| BootConfigError::Drive {
        device: dev.display().to_string(),
        message,
    };
    std::fs::create_dir_all(MOUNT_POINT).map_err(|source| BootConfigError::Io {
        path: MOUNT_POINT.into(),
        source,
    })?;
    mount(
        Some(dev),
        MOUNT_POINT,
        Some(fs.kernel_name()),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| drive_err(format!("mount ({}) read-only: {e}", fs.kernel_name())))?;
    let docs = read_dir_docs(Path::new(MOUNT_POINT));
    if let Err(e) = umount2(MOUNT_POINT, MntFlags::MNT_DETACH) {
        tracing::warn!(error = %e, "unmounting the config drive");
    }
    docs
}

/// What the kernel is still probing that could hide a config drive, read from sysfs (`sys`
/// is `/sys`, or a copy in tests). Empty means every block device that the present storage
/// controllers will ever show exists now.
///
/// - every PCI mass-storage controller (class 0x01: IDE, SATA/AHCI, SCSI, NVMe, and the
///   virtio-blk and virtio-scsi functions) has a driver bound;
/// - every virtio block or SCSI device has a driver bound;
/// - no kernel module is still running its init (`initstate` = `coming`).
///
/// A driver is bound only when its probe has returned, and the image's initramfs loads the
/// storage drivers with modprobe, which returns after the module's asynchronous probing
/// (libata's port probe, sd and sr) is done, with SCSI scans made synchronous by
/// `scsi_mod.scan=sync`. So this is the kernel's own end of probing, not a timed guess.
pub fn storage_pending(sys: &Path) -> Vec<String> {
    let mut pending = Vec::new();
    let bound = |dev: &Path| dev.join("driver").exists();
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let entries = |dir: PathBuf| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for dev in entries(sys.join("bus/pci/devices")) {
        let class =
            u32::from_str_radix(read(dev.join("class")).trim().trim_start_matches("0x"), 16);
        if class.is_ok_and(|c| c >> 16 == 0x01) && !bound(&dev) {
            pending.push(format!(
                "PCI storage controller {} has no driver yet",
                file_name(&dev)
            ));
        }
    }
    for dev in entries(sys.join("bus/virtio/devices")) {
        // Virtio device ids: 2 block, 8 SCSI host.
        let id = u32::from_str_radix(read(dev.join("device")).trim().trim_start_matches("0x"), 16);
        if matches!(id, Ok(2 | 8)) && !bound(&dev) {
            pending.push(format!(
                "virtio storage device {} has no driver yet",
                file_name(&dev)
            ));
        }
    }
    for module in entries(sys.join("module")) {
        if read(module.join("initstate")).trim() == "coming" {
            pending.push(format!("module {} is loading", file_name(&module)));
        }
    }
    pending
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The sysfs path of a block device (`/devices/pci0000:00/0000:00:1f.2/ata1/...`), which
/// names the bus it hangs on: logged so an operator sees how the drive was attached.
fn device_path(dev: &Path) -> String {
    let link = Path::new("/sys/class/block").join(file_name(dev));
    std::fs::read_link(&link)
        .map(|p| p.to_string_lossy().trim_start_matches("../..").to_string())
        .unwrap_or_else(|_| "unknown".into())
}

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
            let pending = loop {
                let pending = storage_pending(Path::new("/sys"));
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

// ---------------------------------------------------------------------------------------------
// Writing it to the kernel

/// What [`configure`] set up; keep it alive while serving (it owns the DHCP client).
#[derive(Debug)]
pub struct BootNetwork {
    pub ifname: String,
    /// The API port (`meta.akanda_api_port`, else 5000).
    pub port: u16,
    pub listeners: Vec<TcpListener>,
    pub listen: Vec<String>,
    pub dhcp_client: Option<tokio::process::Child>,
}

async fn find_nic(
    nl: &Netlink,
    mac: Option<&str>,
    wait: Duration,
) -> Result<(u32, String), BootConfigError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut links = nl.links().await?;
        links.sort_by_key(|l| l.index);
        let found = links
            .iter()
            .filter(|l| nics::is_nic(l))
            .find(|l| match mac {
                Some(m) => l.mac.map(|x| format_mac(&x)).as_deref() == Some(m),
                None => true,
            });
        if let Some(l) = found {
            return Ok((l.index, l.name.clone()));
        }
        if Instant::now() >= deadline {
            return Err(match mac {
                Some(m) => BootConfigError::NoSuchNic(m.to_string(), wait.as_secs()),
                None => BootConfigError::NoNic(wait.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_proc(path: String, value: &str) {
    if let Err(e) = std::fs::write(&path, value) {
        tracing::warn!(%path, error = %e, "cannot set sysctl");
    }
}

/// `[::]:port` (IPv4 too) bound to one device: every address of that NIC and no other.
fn bind_device(port: u16, ifname: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(ifname.as_bytes()))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Brings the management NIC up with its static addresses and routes (or starts DHCP and
/// SLAAC on it) and, when `open_listeners` is set, opens the API listeners (`--listen` given on the
/// command line takes their place). Run after the NICs are named, so the NIC keeps its name
/// and the link is not set down again by a rename.
pub async fn configure(
    nl: &Netlink,
    m: &Management,
    open_listeners: bool,
) -> Result<BootNetwork, BootConfigError> {
    let (index, ifname) = find_nic(nl, m.mac.as_deref(), Duration::from_secs(30)).await?;
    tracing::info!(%ifname, mac = ?m.mac, addresses = ?m.addresses, "management NIC");
    if let Some(mtu) = m.mtu {
        let link = nl.link(index).await?;
        if link.mtu != mtu {
            nl.set_link_mtu(index, mtu).await?;
        }
    }
    if m.slaac {
        // Forwarding turns router advertisements off; 2 accepts them anyway on this NIC.
        write_proc(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"), "2");
        write_proc(format!("/proc/sys/net/ipv6/conf/{ifname}/autoconf"), "1");
    }
    if !nl.link(index).await?.up {
        nl.set_link_up(index, true).await?;
    }
    let existing = nl.addresses().await?;
    for net in &m.addresses {
        if existing.iter().any(|a| a.index == index && a.net == *net) {
            continue;
        }
        // No DAD: the API must be reachable at once, and Neutron owns this address.
        nl.add_address(index, *net, true).await?;
    }
    for (dst, gw) in &m.routes {
        nl.replace_route(&Route {
            dst: *dst,
            gateway: Some(*gw),
            oif: Some(index),
            protocol: RTPROT_STATIC,
            table: TABLE_MAIN,
        })
        .await?;
    }
    let dhcp_client = if m.dhcp4 {
        // udhcpc stays in the foreground as our child, renews the lease, and applies it with
        // its default script (busybox ip); it is killed when the agent exits.
        let child = tokio::process::Command::new(UDHCPC)
            .args(["-f", "-S", "-i", &ifname, "-s", UDHCPC_SCRIPT])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(BootConfigError::Dhcp)?;
        tracing::info!(%ifname, "DHCP client started");
        Some(child)
    } else {
        None
    };
    let mut listeners = Vec::new();
    let mut listen = Vec::new();
    let addresses = m.listen_addresses();
    if !open_listeners {
        // The caller listens where --listen says.
    } else if addresses.is_empty() {
        listeners.push(
            bind_device(m.port, &ifname).map_err(|source| BootConfigError::Listen {
                addr: format!("[::]:{} on {ifname}", m.port),
                source,
            })?,
        );
        listen.push(format!("[::]:{} (every address of {ifname})", m.port));
    } else {
        for addr in addresses {
            listeners.push(crate::server::bind(addr).map_err(|source| {
                BootConfigError::Listen {
                    addr: addr.to_string(),
                    source,
                }
            })?);
            listen.push(addr.to_string());
        }
    }
    Ok(BootNetwork {
        ifname,
        port: m.port,
        listeners,
        listen,
        dhcp_client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// network_data.json as Nova writes it for a port with static IPv4 and IPv6 subnets
    /// (nova/virt/netutils.py `get_network_metadata`), plus a second (tenant) port.
    const ND_STATIC: &str = r#"{
      "links": [
        {"ethernet_mac_address": "fa:16:3e:11:22:01", "id": "tap1a2b3c4d-5e", "mtu": 1450,
         "type": "ovs", "vif_id": "1a2b3c4d-5e6f-4a5b-8c9d-0e1f2a3b4c5d"},
        {"ethernet_mac_address": "FA:16:3E:E0:E1:B0", "id": "tap9f8e7d6c-5b", "mtu": 1500,
         "type": "ovs", "vif_id": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"}
      ],
      "networks": [
        {"id": "network0", "link": "tap1a2b3c4d-5e", "network_id": "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
         "type": "ipv4", "ip_address": "192.168.0.5", "netmask": "255.255.255.0",
         "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.0.1"}],
         "services": [{"type": "dns", "address": "8.8.8.8"}]},
        {"id": "network1", "link": "tap9f8e7d6c-5b", "network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa",
         "type": "ipv6", "ip_address": "fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0",
         "netmask": "ffff:ffff:ffff:ffff::",
         "routes": [{"network": "fdca:3ba5:a17a::", "netmask": "ffff:ffff:ffff::",
                     "gateway": "fdca:3ba5:a17a:acda::1"}],
         "services": []},
        {"id": "network2", "link": "tap9f8e7d6c-5b", "network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa",
         "type": "ipv4", "ip_address": "10.11.12.5", "netmask": "255.255.255.0", "routes": [],
         "services": []}
      ],
      "services": [{"type": "dns", "address": "8.8.8.8"}]
    }"#;

    /// meta_data.json as Nova writes it; `meta` holds the server's metadata key/values
    /// (always strings in Nova).
    const MD_AKANDA: &str = r#"{
      "uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "admin_pass": "x",
      "availability_zone": "nova", "hostname": "ak-d22b149c.novalocal", "launch_index": 0,
      "meta": {"akanda_mgmt_mac": "fa:16:3e:e0:e1:b0", "akanda_api_port": "5001"},
      "name": "ak-d22b149c", "project_id": "d22b149cee9b4eac8349c517eda00b89",
      "devices": [], "random_seed": "cmFuZG9t"
    }"#;

    /// network_data.json for a DHCP port (Nova's documented example).
    const ND_DHCP: &str = r#"{
      "links": [{"ethernet_mac_address": "fa:16:3e:9c:bf:3d", "id": "tapcd9f6d46-4a",
                 "mtu": null, "type": "bridge", "vif_id": "cd9f6d46-4a3a-43ab-a466-994af9db96fc"}],
      "networks": [{"id": "network0", "link": "tapcd9f6d46-4a",
                    "network_id": "99e88329-f20d-4741-9593-25bf07847b16", "type": "ipv4_dhcp"}],
      "services": [{"address": "8.8.8.8", "type": "dns"}]
    }"#;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn management_nic_is_picked_by_mac_from_meta() {
        let m = parse(ND_STATIC.as_bytes(), MD_AKANDA.as_bytes()).unwrap();
        assert_eq!(m.mac.as_deref(), Some("fa:16:3e:e0:e1:b0"));
        assert_eq!(m.mtu, Some(1500));
        assert_eq!(
            m.addresses,
            [
                net("fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/64"),
                net("10.11.12.5/24")
            ]
        );
        assert_eq!(
            m.routes,
            [(
                net("fdca:3ba5:a17a::/48"),
                "fdca:3ba5:a17a:acda::1".parse().unwrap()
            )]
        );
        assert!(!m.dhcp4 && !m.slaac);
        assert_eq!(m.port, 5001);
        assert_eq!(
            m.listen_addresses(),
            [
                "[fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0]:5001"
                    .parse()
                    .unwrap(),
                "10.11.12.5:5001".parse().unwrap()
            ]
        );
    }

    #[test]
    fn without_meta_the_first_link_is_management_on_port_5000() {
        let m = parse(ND_STATIC.as_bytes(), b"{\"meta\": {}}").unwrap();
        assert_eq!(m.mac.as_deref(), Some("fa:16:3e:11:22:01"));
        assert_eq!(m.addresses, [net("192.168.0.5/24")]);
        // Nova's default route on the management network is not installed: the router's
        // default route belongs to its external network.
        assert!(m.routes.is_empty(), "{:?}", m.routes);
        assert_eq!(m.port, DEFAULT_API_PORT);
        // meta_data.json without "meta" at all behaves the same.
        assert_eq!(parse(ND_STATIC.as_bytes(), b"{}").unwrap(), m);
    }

    #[test]
    fn dhcp_network_means_dhcp_on_that_nic() {
        let m = parse(ND_DHCP.as_bytes(), b"{}").unwrap();
        assert_eq!(m.mac.as_deref(), Some("fa:16:3e:9c:bf:3d"));
        assert!(m.dhcp4);
        assert!(m.addresses.is_empty());
        assert!(m.listen_addresses().is_empty());
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let md = br#"{"meta": {"akanda_mgmt_mac": "fa:16:3e:00:00:99"}}"#;
        let e = parse(ND_STATIC.as_bytes(), md).unwrap_err().to_string();
        assert_eq!(
            e,
            "network_data.json: no link has the management MAC fa:16:3e:00:00:99 (meta.akanda_mgmt_mac)"
        );
        let md = br#"{"meta": {"akanda_api_port": "http"}}"#;
        let e = parse(ND_STATIC.as_bytes(), md).unwrap_err().to_string();
        assert!(
            e.contains("meta.akanda_api_port \"http\" is not a TCP port"),
            "{e}"
        );
        let e = parse(b"{\"links\": []}", b"{}").unwrap_err().to_string();
        assert!(e.contains("no links"), "{e}");
        let bad = ND_STATIC.replacen("255.255.255.0", "255.0.255.0", 1);
        let e = parse(bad.as_bytes(), b"{}").unwrap_err().to_string();
        assert!(e.contains("network network0: bad address"), "{e}");
        assert!(parse(b"not json", b"{}")
            .unwrap_err()
            .to_string()
            .starts_with("network_data.json: "));
    }

    #[test]
    fn masks_and_prefixes() {
        assert_eq!(prefix_len("255.255.255.0", false), Some(24));
        assert_eq!(prefix_len("0.0.0.0", false), Some(0));
        assert_eq!(prefix_len("255.255.255.255", false), Some(32));
        assert_eq!(prefix_len("ffff:ffff:ffff:ffff::", true), Some(64));
        assert_eq!(prefix_len("::", true), Some(0));
        assert_eq!(prefix_len("64", true), Some(64));
        assert_eq!(prefix_len("255.0.255.0", false), None);
        assert_eq!(prefix_len("255.255.255.0", true), None);
        assert_eq!(address("fd00::5/64", None), Some(net("fd00::5/64")));
    }

    fn iso_head(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x8000] = 1;
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        b[0x8028..0x8048].copy_from_slice(&id);
        b
    }

    fn fat16_head(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x26] = 0x29;
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        b[0x2b..0x36].copy_from_slice(&l);
        b[0x36..0x3e].copy_from_slice(b"FAT16   ");
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn labels_of_iso9660_and_vfat() {
        assert_eq!(
            detect_label(&iso_head("config-2")),
            Some((FsType::Iso9660, "config-2".into()))
        );
        assert_eq!(
            detect_label(&fat16_head("CONFIG-2")),
            Some((FsType::Vfat, "CONFIG-2".into()))
        );
        let mut fat32 = vec![0u8; PROBE_BYTES];
        fat32[0x42] = 0x29;
        fat32[0x47..0x52].copy_from_slice(b"config-2   ");
        fat32[0x52..0x5a].copy_from_slice(b"FAT32   ");
        fat32[510] = 0x55;
        fat32[511] = 0xaa;
        assert_eq!(
            detect_label(&fat32),
            Some((FsType::Vfat, "config-2".into()))
        );
        assert_eq!(detect_label(&vec![0u8; PROBE_BYTES]), None);
        // An MBR (55 AA but no FAT BPB) is not a filesystem.
        let mut mbr = vec![0u8; PROBE_BYTES];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect_label(&mbr), None);
    }

    #[test]
    fn a_real_vfat_config_drive_is_recognised() {
        // mkfs.vfat is how Nova makes VFAT config drives; skip quietly where it is missing
        // (the VM test covers the whole path).
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cfg.img");
        let ok = std::process::Command::new("mkfs.vfat")
            .args(["-C", "-n", "config-2"])
            .arg(&img)
            .arg("1024")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("mkfs.vfat not available: covered by the image test");
            return;
        }
        let mut head = vec![0u8; PROBE_BYTES];
        File::open(&img).unwrap().read_exact(&mut head).unwrap();
        let (fs, label) = detect_label(&head).unwrap();
        assert_eq!(fs, FsType::Vfat);
        assert!(label.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL), "{label}");
    }

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

    /// The config drive Nova's libvirt driver really wrote for a Service Instance
    /// (`tests/fixtures/nova-config-drive/`, a copy of `shared/conformance/`): `tap` links, a
    /// static IPv6 management network without routes, and IPv4 networks whose default route
    /// Nova adds for every subnet with a gateway.
    const ND_NOVA: &str = include_str!("../../tests/fixtures/nova-config-drive/network_data.json");
    const MD_NOVA: &str = include_str!("../../tests/fixtures/nova-config-drive/meta_data.json");

    #[test]
    fn novas_real_config_drive_gives_the_management_address() {
        let m = parse(ND_NOVA.as_bytes(), MD_NOVA.as_bytes()).unwrap();
        assert_eq!(m.mac.as_deref(), Some("fa:16:3e:de:ee:03"));
        assert_eq!(m.mtu, Some(1450));
        assert_eq!(m.addresses, [net("fdca:3ba5:a17a:acda::d1/64")]);
        assert!(m.routes.is_empty());
        assert!(!m.dhcp4 && !m.slaac);
        assert_eq!(m.port, DEFAULT_API_PORT);
    }

    #[test]
    fn management_default_routes_are_ignored_specific_routes_kept() {
        // Variant: the management network is the IPv4 one with a gateway (Nova adds a default
        // route) plus a Neutron host route to the orchestrators' prefix.
        let mut nd: serde_json::Value = serde_json::from_str(ND_NOVA).unwrap();
        nd["networks"][1]["routes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"network": "10.20.0.0", "netmask": "255.255.0.0", "gateway": "198.51.100.1"}));
        let md = r#"{"meta": {"akanda_mgmt_mac": "fa:16:3e:de:21:ce"}}"#;
        let m = parse(nd.to_string().as_bytes(), md.as_bytes()).unwrap();
        assert_eq!(m.addresses, [net("198.51.100.60/24")]);
        assert_eq!(
            m.routes,
            [(net("10.20.0.0/16"), "198.51.100.1".parse().unwrap())]
        );
    }

    #[test]
    fn dhcp_and_slaac_management_networks_from_nova() {
        // Nova writes a DHCP-enabled IPv4 subnet as `ipv4_dhcp` and an IPv6 subnet with an
        // address mode as `ipv6_slaac` / `ipv6_dhcpv6-stateless` / `ipv6_dhcpv6-stateful`, all
        // without an address.
        for (kind, dhcp4, slaac) in [
            ("ipv4_dhcp", true, false),
            ("ipv6_slaac", false, true),
            ("ipv6_dhcpv6-stateless", false, true),
            ("ipv6_dhcpv6-stateful", false, true),
        ] {
            let mut nd: serde_json::Value = serde_json::from_str(ND_NOVA).unwrap();
            let mgmt = &mut nd["networks"][0];
            mgmt["type"] = kind.into();
            mgmt.as_object_mut().unwrap().remove("ip_address");
            mgmt.as_object_mut().unwrap().remove("netmask");
            let m = parse(nd.to_string().as_bytes(), MD_NOVA.as_bytes()).unwrap();
            assert_eq!((m.dhcp4, m.slaac), (dhcp4, slaac), "{kind}");
            assert!(m.addresses.is_empty(), "{kind}");
            assert_eq!(m.mac.as_deref(), Some("fa:16:3e:de:ee:03"), "{kind}");
        }
    }

    /// A fake `/sys` with the entries [`storage_pending`] reads.
    struct FakeSys(tempfile::TempDir);

    impl FakeSys {
        fn new() -> FakeSys {
            FakeSys(tempfile::tempdir().unwrap())
        }
        fn device(&self, bus: &str, name: &str, file: &str, value: &str, driver: bool) {
            let dir = self
                .0
                .path()
                .join("bus")
                .join(bus)
                .join("devices")
                .join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
            if driver {
                std::fs::create_dir_all(dir.join("driver")).unwrap();
            }
        }
        fn module(&self, name: &str, state: &str) {
            let dir = self.0.path().join("module").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("initstate"), format!("{state}\n")).unwrap();
        }
    }

    #[test]
    fn storage_probing_is_finished_only_when_every_controller_is_bound() {
        let sys = FakeSys::new();
        // q35: AHCI controller, a virtio-blk function, a NIC (class 0x02) and a bridge.
        sys.device("pci", "0000:00:1f.2", "class", "0x010601", false);
        sys.device("pci", "0000:04:00.0", "class", "0x010000", true);
        sys.device("pci", "0000:01:00.0", "class", "0x020000", false);
        sys.device("pci", "0000:00:00.0", "class", "0x060000", false);
        sys.device("virtio", "virtio3", "device", "0x0008", false);
        sys.device("virtio", "virtio1", "device", "0x0001", false); // a NIC: not storage
        sys.module("ahci", "coming");
        sys.module("ext4", "live");
        assert_eq!(
            storage_pending(sys.0.path()),
            [
                "PCI storage controller 0000:00:1f.2 has no driver yet",
                "virtio storage device virtio3 has no driver yet",
                "module ahci is loading",
            ]
        );
        sys.device("pci", "0000:00:1f.2", "class", "0x010601", true);
        sys.device("virtio", "virtio3", "device", "0x0008", true);
        sys.module("ahci", "live");
        assert!(storage_pending(sys.0.path()).is_empty());
        // A machine without any of it (or no sysfs at all) has nothing to wait for.
        assert!(storage_pending(Path::new("/nonexistent")).is_empty());
    }

    /// rug-lite's user_data (rug-lite/src/bootdata.rs), with real PEMs.
    fn user_data(tls: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"akanda": {"version": 1, "router_id": "81a51c84-25a3-4180-8e1c-4d10e1aaebd3",
            "management_address": "fdca:3ba5:a17a:acda::5", "tls": tls}})
        .to_string()
        .into_bytes()
    }

    fn material() -> (String, akanda_pki::Issued) {
        use akanda_pki::{Ca, San, Validity};
        let (ca, _) = Ca::generate("t", Validity::days(1)).unwrap();
        let server = ca
            .issue_server(
                "r",
                &[San::Ip("fdca:3ba5:a17a:acda::5".parse().unwrap())],
                Validity::days(1),
            )
            .unwrap();
        (ca.cert_pem().to_string(), server)
    }

    #[test]
    fn user_data_carries_the_tls_material() {
        let (ca, server) = material();
        let ud = parse_user_data(&user_data(serde_json::json!({
            "ca_cert": ca, "server_cert": server.cert_pem, "server_key": server.key_pem})))
        .unwrap()
        .unwrap();
        assert_eq!(
            ud.router_id.as_deref(),
            Some("81a51c84-25a3-4180-8e1c-4d10e1aaebd3")
        );
        assert_eq!(
            ud.management_address,
            Some("fdca:3ba5:a17a:acda::5".parse().unwrap())
        );
        let tls = ud.tls.as_ref().unwrap();
        assert_eq!(tls.server_key, server.key_pem);
        // Debug (and so any log of it) never shows the key.
        assert!(!format!("{ud:?}").contains("PRIVATE KEY"), "{ud:?}");
        // tls null: a plain-HTTP lab; no user_data or someone else's: nothing.
        let plain = parse_user_data(&user_data(serde_json::Value::Null))
            .unwrap()
            .unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(parse_user_data(b"").unwrap(), None);
        assert_eq!(parse_user_data(b"#!/bin/sh\necho hi\n").unwrap(), None);
        assert_eq!(parse_user_data(br#"{"other": 1}"#).unwrap(), None);
    }

    #[test]
    fn a_wrong_user_data_field_is_named_and_the_key_never_quoted() {
        let (ca, server) = material();
        let err = |ud: &[u8]| parse_user_data(ud).unwrap_err().to_string();
        let e = err(&user_data(
            serde_json::json!({"ca_cert": ca, "server_cert": server.cert_pem}),
        ));
        assert_eq!(e, "user_data: akanda.tls.server_key: missing");
        let e = err(&user_data(serde_json::json!({
            "ca_cert": ca, "server_cert": server.cert_pem, "server_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"})));
        assert!(e.contains("server_key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = err(&user_data(serde_json::json!({
            "ca_cert": "nope", "server_cert": server.cert_pem, "server_key": server.key_pem})));
        assert!(e.contains("ca_cert"), "{e}");
        let e = err(br#"{"akanda": {"version": 2}}"#);
        assert!(e.contains("akanda.version 2 is not supported"), "{e}");
        let e = err(br#"{"akanda": {"version": 1, "management_address": "x"}}"#);
        assert!(e.contains("akanda.management_address"), "{e}");
        let e = err(br#"{"akanda": {"version": 1, "tls": 5}}"#);
        assert!(e.contains("akanda.tls"), "{e}");
        assert!(err(br#"{"akanda": {"#).contains("not valid JSON"));
    }

    #[test]
    fn the_plain_http_opt_in_is_explicit() {
        let nd = br#"{"links": [{"id": "l", "ethernet_mac_address": "52:54:00:0b:57:01"}], "networks": []}"#;
        let md = |v: &str| format!(r#"{{"meta": {{"akanda_insecure_http": "{v}"}}}}"#);
        assert!(parse(nd, md("true").as_bytes()).unwrap().insecure_http);
        assert!(parse(nd, md("True").as_bytes()).unwrap().insecure_http);
        assert!(!parse(nd, md("false").as_bytes()).unwrap().insecure_http);
        assert!(!parse(nd, b"{}").unwrap().insecure_http);
        let e = parse(nd, md("yes").as_bytes()).unwrap_err().to_string();
        assert!(e.contains("meta.akanda_insecure_http"), "{e}");
    }
}
