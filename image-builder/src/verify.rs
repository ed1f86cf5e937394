//! `akanda-image verify IMAGE`: boots the image for real under QEMU (TCG, never KVM: see
//! `../shared/spec/images-and-vms.md` §1) and checks it from the outside, as an orchestrator
//! and a tenant would.
//!
//! By default the VM is booted the way Nova's libvirt driver boots a guest on a current x86
//! compute host: a q35 machine, virtio disk and NICs, and an ISO 9660 config drive on a SATA
//! CD-ROM. `--machine`, `--config-drive-format`, `--cdrom-bus` and `--firmware` select the
//! other ways Nova attaches things (see [`Attachment`]).
//!
//! Topology: three NICs, each a TAP device moved into its own network namespace after QEMU
//! opened it: management (the orchestrator's side, `fdca:3ba5:a17a:acda::1/64`), external
//! and tenant (`192.168.0.2/24`). The config drive (written as Nova writes it: `tap` links,
//! static networks, a default route for every IPv4 subnet with a gateway) gives the
//! management NIC a static IPv6 address, and its `user_data` is rug-lite's boot document
//! with TLS material made for the run (akanda-pki): the agent must then serve mutual TLS only.
//! With `--dhcp` there is no config drive and dnsmasq in the management namespace hands out an
//! IPv4 lease; without TLS material or the plain-HTTP opt-in the agent must refuse the PUT.
//!
//! Checks: the agent's log on the serial console names the device it read the config drive
//! from; `GET /v1/system/interfaces` answers on the config drive's management address and
//! lists the three NICs named `geN` with their MACs, over mutual TLS; plain HTTP and a TLS
//! client without a certificate get no answer; a `PUT /v1/system/config` for them answers
//! 200; the tenant namespace pings the address the config gave the router.
//! Boot-to-ready is the time from QEMU's start to the first answer.

use std::fmt;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use akanda_netns::{HttpClient, HttpError, HttpOptions, HttpResponse, Netns, NetnsError};
use serde_json::{json, Value};

use crate::configdrive::{self, ConfigDriveError};
use crate::tools::{self, cmd, ToolError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (UEFI), from Debian's `ovmf` package.
    Uefi,
}

/// QEMU machine types, as Nova's `hw_machine_type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Machine {
    /// i440fx: IDE (PIIX) built in. Nova's default for x86 until 2023.
    Pc,
    /// ICH9: SATA (AHCI) built in, no IDE. Nova's default on current releases, and what
    /// UEFI guests use.
    Q35,
}

/// The bus of the CD-ROM holding an ISO 9660 config drive (Nova's `hw_cdrom_bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CdromBus {
    Ide,
    Sata,
    /// A SCSI CD-ROM behind a virtio-scsi controller (`hw_cdrom_bus=scsi`,
    /// `hw_scsi_model=virtio-scsi`).
    Scsi,
}

/// How the config drive reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attachment {
    /// No config drive (`--dhcp`).
    None,
    /// ISO 9660 on a CD-ROM (Nova's default `config_drive_format`).
    IsoCdrom(CdromBus),
    /// VFAT on a virtio-blk disk (`config_drive_format=vfat`, `hw_disk_bus=virtio`).
    VfatVirtio,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attachment::None => write!(f, "no config drive"),
            Attachment::IsoCdrom(CdromBus::Ide) => write!(f, "ISO 9660 on an IDE CD-ROM"),
            Attachment::IsoCdrom(CdromBus::Sata) => write!(f, "ISO 9660 on a SATA CD-ROM"),
            Attachment::IsoCdrom(CdromBus::Scsi) => {
                write!(f, "ISO 9660 on a SCSI CD-ROM (virtio-scsi)")
            }
            Attachment::VfatVirtio => write!(f, "VFAT on a virtio-blk disk"),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyOptions {
    /// The image (qcow2 or raw). It is not modified: the VM writes to a throw-away overlay.
    pub(crate) image: PathBuf,
    #[arg(long, value_enum, default_value_t = Firmware::Bios)]
    pub(crate) firmware: Firmware,
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub(crate) machine: Machine,
    /// The config drive's filesystem: iso9660 goes on a CD-ROM (`--cdrom-bus`), vfat on a
    /// virtio-blk disk, as Nova attaches them.
    #[arg(long, value_enum, default_value_t = configdrive::DriveFormat::Iso9660)]
    pub(crate) config_drive_format: configdrive::DriveFormat,
    /// The CD-ROM's bus for an ISO 9660 config drive. Default: Nova's for the machine type
    /// (SATA on q35, IDE on pc).
    #[arg(long, value_enum)]
    pub(crate) cdrom_bus: Option<CdromBus>,
    /// No config drive: check the DHCP fallback (dnsmasq in the management namespace).
    #[arg(long)]
    pub(crate) dhcp: bool,
    /// Seconds to wait for the agent to answer after QEMU starts.
    #[arg(long, default_value_t = 240)]
    pub(crate) timeout: u64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) memory: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    pub(crate) cpus: u32,
    /// Keep the work directory (serial log, overlay, config drive).
    #[arg(long)]
    pub(crate) keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("akanda-image verify must run as root: it creates network namespaces and TAP devices")]
    NotRoot,
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    ConfigDrive(#[from] ConfigDriveError),
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} not found (install Debian's ovmf package)")]
    NoOvmf(String),
    #[error("{0}")]
    Options(String),
    #[error("{message}\n--- last lines of the serial console ({serial}) ---\n{tail}")]
    Check {
        message: String,
        serial: String,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VerifyError {
    let what = what.into();
    move |source| VerifyError::Io { what, source }
}

/// What a successful verify reports.
#[derive(Debug)]
pub struct VerifyReport {
    pub(crate) firmware: Firmware,
    pub(crate) machine: Machine,
    pub(crate) attachment: Attachment,
    /// The device the agent says it read the config drive from (`/dev/sr0`), with its
    /// sysfs path, from the agent's own log line on the serial console.
    pub(crate) config_drive_device: Option<String>,
    pub(crate) boot_to_ready: Duration,
    pub(crate) interfaces: Vec<(String, String)>,
    pub(crate) apply_ms: u128,
    /// The address the tenant pinged after the PUT; `None` when config changes were (rightly)
    /// refused: no config drive, so no TLS material and no plain-HTTP opt-in.
    pub(crate) pinged: Option<String>,
    pub(crate) listen: String,
    /// Mutual TLS: the agent proved the verify CA's certificate for its address, and refused
    /// plain HTTP and a client without a certificate.
    pub(crate) mutual_tls: bool,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verify: OK ({:?})", self.firmware)?;
        writeln!(f, "  machine {:?}, {}", self.machine, self.attachment)?;
        if let Some(device) = &self.config_drive_device {
            writeln!(f, "  the agent read the config drive from {device}")?;
        }
        writeln!(
            f,
            "  boot-to-ready: {:.1} s (QEMU start to the agent's first answer at {})",
            self.boot_to_ready.as_secs_f64(),
            self.listen
        )?;
        for (ifname, mac) in &self.interfaces {
            writeln!(f, "  {ifname} {mac}")?;
        }
        if self.mutual_tls {
            writeln!(
                f,
                "  mutual TLS: server certificate verified; plain HTTP and a client without a certificate refused"
            )?;
        }
        match &self.pinged {
            Some(pinged) => {
                writeln!(f, "  PUT /v1/system/config: 200 in {} ms", self.apply_ms)?;
                write!(f, "  tenant ping to {pinged}: OK")
            }
            None => write!(
                f,
                "  PUT /v1/system/config: 403, as it must be without TLS material or the plain-HTTP opt-in"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces and HTTP (akanda-netns: the verifier runs on the host and uses `ip` like
// any operator; namespaces of killed verifies are removed by the next one)

/// Prefix of the verifier's namespaces: `akimg-<role>-<pid>-<n>`.
const NS_PREFIX: &str = "akimg-";

/// How long one request to the agent may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `http://ADDR/PATH`, or `https://` for a TLS client.
fn url(addr: SocketAddr, path: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}{path}")
}

/// Mutual TLS material for one verify run, made at run time (akanda-pki): the CA, the
/// appliance's server certificate (its management address and router as SANs), and the
/// orchestrator's client certificate.
struct VerifyPki {
    user_data: String,
    /// Trusts the CA, presents the client certificate.
    client: Arc<rustls::ClientConfig>,
    /// Trusts the CA, presents no certificate.
    anonymous: Arc<rustls::ClientConfig>,
}

const VERIFY_ROUTER_ID: &str = "6f0b1c2d-3e4f-4a6b-8c8d-9e0f1a2b3c4d";

impl VerifyPki {
    fn new(mgmt_addr: IpAddr) -> Result<VerifyPki, String> {
        use akanda_pki::{Ca, San, Validity};
        let e = |e: akanda_pki::PkiError| e.to_string();
        // The appliance certificate gets its default lifetime (a shorter one makes the agent
        // warn that it expires soon).
        let days = akanda_pki::DEFAULT_SERVER_DAYS;
        let (ca, _) = Ca::generate("akanda-image verify CA", Validity::days(days)).map_err(e)?;
        let server = ca
            .issue_server(
                &format!("akanda router {VERIFY_ROUTER_ID}"),
                &[
                    San::Ip(mgmt_addr),
                    San::Dns(akanda_pki::router_dns_name(VERIFY_ROUTER_ID)),
                ],
                Validity::days(days),
            )
            .map_err(e)?;
        let client = ca
            .issue_client("akanda-image verify", Validity::days(1))
            .map_err(e)?;
        // Exactly what rug-lite writes (rug-lite/src/bootdata.rs).
        let user_data = serde_json::to_string_pretty(&json!({"akanda": {
            "version": 1, "router_id": VERIFY_ROUTER_ID,
            "management_address": mgmt_addr.to_string(),
            "tls": {"ca_cert": ca.cert_pem(), "server_cert": server.cert_pem,
                    "server_key": server.key_pem}}}))
        .expect("JSON");
        let config = |client: Option<(&str, &str)>| {
            akanda_pki::tls::client_config(ca.cert_pem(), client)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        };
        Ok(VerifyPki {
            user_data,
            client: config(Some((&client.cert_pem, &client.key_pem)))?,
            anonymous: config(None)?,
        })
    }
}

/// The verifier's HTTP clients in the management namespace: plain HTTP, and over TLS with the
/// verify CA with and without the client certificate. One connection per request.
struct Clients {
    plain: HttpClient,
    mutual: Option<HttpClient>,
    anonymous: Option<HttpClient>,
}

impl Clients {
    fn new(mgmt: &Netns, pki: Option<&VerifyPki>) -> Result<Clients, VerifyError> {
        let client = |tls: Option<&Arc<rustls::ClientConfig>>| {
            let options = HttpOptions {
                tls: tls.cloned(),
                connect_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            };
            HttpClient::new(mgmt.name(), &options)
        };
        Ok(Clients {
            plain: client(None)?,
            mutual: pki.map(|p| client(Some(&p.client))).transpose()?,
            anonymous: pki.map(|p| client(Some(&p.anonymous))).transpose()?,
        })
    }
}

/// One request from `client` to the agent at `addr` (`tls`: over `https://`).
fn request(
    client: &HttpClient,
    tls: bool,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    let body = body.map(|b| ("application/json", b.as_bytes()));
    client.request(method, &url(addr, path, tls), body, REQUEST_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------

struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // QEMU never exits on a failed boot (GRUB or the initramfs just wait): kill by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 512 random bytes, base64: what Nova's API puts in every server's `meta_data.json`.
fn nova_random_seed() -> Result<String, VerifyError> {
    use base64::Engine as _;
    let mut seed = [0u8; 512];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io("reading /dev/urandom"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(seed))
}

fn mac(n: u8) -> String {
    // Locally administered, unique per verify run so concurrent runs never share a MAC.
    let pid = std::process::id();
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        (pid >> 16) as u8,
        (pid >> 8) as u8,
        pid as u8,
        n
    )
}

fn serial_tail(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    tools::tail(&text, 40)
}

/// The config the verifier pushes: the three NICs by the names the agent reported.
fn router_config(names: &[String; 3], dhcp_lease: Option<&str>) -> Value {
    let net = |id: &str, kind: &str, ifname: &str, addrs: Vec<&str>, cidr: &str, gw: &str| {
        json!({
            "network_id": id, "network_type": kind, "mtu": 1500,
            "v4_conf_service": "static", "v6_conf_service": "static",
            "interface": {"ifname": ifname, "addresses": addrs},
            "subnets": [{"id": format!("{id}-subnet"), "cidr": cidr, "gateway_ip": gw,
                         "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}],
            "allocations": []
        })
    };
    let mut management = net(
        "43dc2fad-f6f9-4668-9695-fed50f7768aa",
        "management",
        &names[0],
        vec!["fdca:3ba5:a17a:acda::5/64"],
        "fdca:3ba5:a17a:acda::/64",
        "fdca:3ba5:a17a:acda::1",
    );
    if let Some(lease) = dhcp_lease {
        management["interface"]["addresses"]
            .as_array_mut()
            .expect("a list")
            .push(lease.into());
        management["subnets"]
            .as_array_mut()
            .expect("a list")
            .push(json!({
                "id": "mgmt-dhcp-subnet", "cidr": "10.99.0.0/24", "gateway_ip": "10.99.0.1",
                "dhcp_enabled": true, "dns_nameservers": [], "host_routes": []
            }));
    }
    json!({
        "asn": 64512, "neighbor_asn": 64512,
        "tenant_id": "d22b149cee9b4eac8349c517eda00b89",
        "hostname": "ak-verify",
        "default_v4_gateway": "172.16.77.1",
        "ha_resource": false,
        "orchestrator": {"address": "fdca:3ba5:a17a:acda::1", "metadata_port": 9697, "host": "verify"},
        "labels": {},
        "networks": [
            management,
            net("a7c2a9b4-6c0c-4f3f-9d8a-2b9c1a0e0001", "external", &names[1], vec!["172.16.77.2/24"],
                "172.16.77.0/24", "172.16.77.1"),
            net("b7fc9b39-401c-47cc-a07d-9f8cde75ccbf", "internal", &names[2], vec!["192.168.0.1/24"],
                "192.168.0.0/24", "192.168.0.1"),
        ],
        "floating_ips": []
    })
}

fn image_format(image: &Path) -> Result<String, VerifyError> {
    let out = tools::run(cmd("qemu-img", ["info", "--output=json"]).arg(image))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| VerifyError::Io {
        what: format!("qemu-img info {}", image.display()),
        source: std::io::Error::other(e),
    })?;
    Ok(v["format"].as_str().unwrap_or("raw").to_string())
}

impl VerifyOptions {
    /// The config drive attachment these options ask for, refused where the machine has no
    /// such controller (q35 has no IDE).
    pub(crate) fn attachment(&self) -> Result<Attachment, VerifyError> {
        if self.dhcp {
            return Ok(Attachment::None);
        }
        match self.config_drive_format {
            configdrive::DriveFormat::Vfat => {
                if self.cdrom_bus.is_some() {
                    return Err(VerifyError::Options(
                        "--cdrom-bus is for an iso9660 config drive; Nova attaches vfat as a \
                         virtio-blk disk"
                            .into(),
                    ));
                }
                Ok(Attachment::VfatVirtio)
            }
            configdrive::DriveFormat::Iso9660 => {
                let bus = self.cdrom_bus.unwrap_or(match self.machine {
                    Machine::Q35 => CdromBus::Sata,
                    Machine::Pc => CdromBus::Ide,
                });
                if bus == CdromBus::Ide && self.machine == Machine::Q35 {
                    return Err(VerifyError::Options(
                        "a q35 machine has no IDE controller (Nova uses SATA there)".into(),
                    ));
                }
                Ok(Attachment::IsoCdrom(bus))
            }
        }
    }
}

/// QEMU arguments that attach the config drive image `drive`.
fn config_drive_args(attachment: Attachment, machine: Machine, drive: &Path) -> Vec<String> {
    let d = drive.display();
    let args = |v: &[String]| v.to_vec();
    match attachment {
        Attachment::None => Vec::new(),
        Attachment::VfatVirtio => args(&[
            "-drive".into(),
            format!("file={d},if=none,id=cfg,format=raw,readonly=on"),
            "-device".into(),
            "virtio-blk-pci,drive=cfg".into(),
        ]),
        Attachment::IsoCdrom(bus) => {
            let mut v = vec![
                "-drive".to_string(),
                format!("file={d},if=none,id=cfg,format=raw,media=cdrom,readonly=on"),
            ];
            match (bus, machine) {
                // The built-in controller's first port: PIIX IDE on pc, ICH9 AHCI on q35.
                (CdromBus::Ide, _) | (CdromBus::Sata, Machine::Q35) => {
                    v.extend(["-device".into(), "ide-cd,drive=cfg,bus=ide.0".into()]);
                }
                // libvirt adds an AHCI controller to a pc machine for a SATA disk.
                (CdromBus::Sata, Machine::Pc) => v.extend([
                    "-device".into(),
                    "ahci,id=sata0".into(),
                    "-device".into(),
                    "ide-cd,drive=cfg,bus=sata0.0".into(),
                ]),
                (CdromBus::Scsi, _) => v.extend([
                    "-device".into(),
                    "virtio-scsi-pci,id=scsi0".into(),
                    "-device".into(),
                    "scsi-cd,drive=cfg,bus=scsi0.0".into(),
                ]),
            }
            v
        }
    }
}

/// The device named in the agent's `reading the config drive` log line on the serial console.
fn config_drive_read_from(serial: &Path) -> Option<String> {
    let text = String::from_utf8_lossy(&fs::read(serial).ok()?).replace('\r', "");
    let line = text
        .lines()
        .find(|l| l.contains("reading the config drive"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let device = field("device=")?;
    Some(match field("bus=") {
        Some(bus) => format!("{device} ({bus})"),
        None => device,
    })
}

pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let attachment = opts.attachment()?;
    if !akanda_netns::is_root() {
        return Err(VerifyError::NotRoot);
    }
    tools::check(tools::VERIFY_TOOLS, &[])?;
    if attachment != Attachment::None
        && opts.config_drive_format == configdrive::DriveFormat::Iso9660
    {
        tools::check(
            &[tools::Tool {
                program: "genisoimage",
                package: "genisoimage",
            }],
            &[],
        )?;
    }
    if opts.dhcp {
        tools::check(
            &[tools::Tool {
                program: "dnsmasq",
                package: "dnsmasq-base",
            }],
            &[],
        )?;
    }
    if opts.firmware == Firmware::Uefi {
        for f in [tools::OVMF_CODE, tools::OVMF_VARS] {
            if !Path::new(f).exists() {
                return Err(VerifyError::NoOvmf(f.into()));
            }
        }
    }
    let image = opts
        .image
        .canonicalize()
        .map_err(io(format!("image {}", opts.image.display())))?;
    let work = tempfile::Builder::new()
        .prefix("akanda-verify-")
        .tempdir()
        .map_err(io("create a work directory"))?;
    let w = work.path().to_path_buf();
    let result = run(opts, attachment, &image, &w);
    if opts.keep || result.is_err() {
        let kept = work.keep();
        eprintln!("verify: work directory kept: {}", kept.display());
    }
    result
}

fn run(
    opts: &VerifyOptions,
    attachment: Attachment,
    image: &Path,
    w: &Path,
) -> Result<VerifyReport, VerifyError> {
    let serial = w.join("serial.log");
    let fail = |message: String| VerifyError::Check {
        message,
        serial: serial.display().to_string(),
        tail: serial_tail(&serial),
    };
    let overlay = w.join("overlay.qcow2");
    let format = image_format(image)?;
    tools::run(
        cmd(
            "qemu-img",
            ["create", "-q", "-f", "qcow2", "-F", &format, "-b"],
        )
        .arg(image)
        .arg(&overlay),
    )?;
    let macs = [mac(1), mac(2), mac(3)];
    let mgmt_addr = "fdca:3ba5:a17a:acda::5";
    let config_drive = w.join("config-2.img");
    let pki = if attachment != Attachment::None {
        Some(
            VerifyPki::new(mgmt_addr.parse().expect("valid"))
                .map_err(|e| fail(format!("making the verify PKI: {e}")))?,
        )
    } else {
        None
    };
    if let Some(pki) = &pki {
        // As Nova's libvirt driver writes it (tests/fixtures/nova-config-drive/): `tap` links,
        // a static IPv6 management network, static IPv4 networks each with the default route
        // Nova adds for a subnet with a gateway (which the agent must ignore).
        let links: Vec<Value> = macs
            .iter()
            .enumerate()
            .map(|(i, m)| json!({"id": format!("tap{i}"), "vif_id": format!("vif-{i}"), "type": "tap", "ethernet_mac_address": m, "mtu": 1500}))
            .collect();
        let nd = json!({
            "links": links,
            "networks": [
                {"id": "network0", "link": "tap0", "type": "ipv6", "ip_address": mgmt_addr,
                 "netmask": "ffff:ffff:ffff:ffff::", "network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa",
                 "routes": [], "services": []},
                {"id": "network1", "link": "tap1", "type": "ipv4", "ip_address": "172.16.77.2",
                 "netmask": "255.255.255.0", "network_id": "a7c2a9b4-6c0c-4f3f-9d8a-2b9c1a0e0001",
                 "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "172.16.77.1"}],
                 "services": []},
                {"id": "network2", "link": "tap2", "type": "ipv4", "ip_address": "192.168.0.1",
                 "netmask": "255.255.255.0", "network_id": "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
                 "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.0.1"}],
                 "services": []}
            ],
            "services": []
        });
        let md = json!({
            "uuid": "6f0b1c2d-3e4f-4a6b-8c8d-9e0f1a2b3c4d", "name": "ak-verify",
            "hostname": "ak-verify.novalocal", "availability_zone": "nova", "launch_index": 0,
            "project_id": "d22b149cee9b4eac8349c517eda00b89", "devices": [],
            "meta": {"akanda_mgmt_mac": macs[0]},
            "random_seed": nova_random_seed()?
        });
        configdrive::make(
            opts.config_drive_format,
            &config_drive,
            &nd,
            &md,
            Some(&pki.user_data),
        )?;
    }

    let mgmt = Netns::new(NS_PREFIX, "mgmt")?;
    let ext = Netns::new(NS_PREFIX, "ext")?;
    let tenant = Netns::new(NS_PREFIX, "tenant")?;
    let clients = Clients::new(&mgmt, pki.as_ref())?;
    let taps: Vec<String> = ["m", "e", "t"]
        .iter()
        .map(|r| format!("akv{}{r}", std::process::id() % 1_000_000))
        .collect();

    let mut q = Command::new("qemu-system-x86_64");
    q.args([
        "-accel",
        "tcg,tb-size=64",
        "-machine",
        match opts.machine {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        },
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-monitor", "none", "-m", &opts.memory.to_string()])
    .args(["-smp", &opts.cpus.to_string()])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()));
    if opts.firmware == Firmware::Uefi {
        let vars = w.join("OVMF_VARS.fd");
        fs::copy(tools::OVMF_VARS, &vars).map_err(io("copy the OVMF variables"))?;
        q.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                tools::OVMF_CODE
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    // The root disk is the boot device: without a boot index, SeaBIOS may try a VFAT config
    // drive first and stop at its "not a bootable disk" stub.
    q.arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=qcow2",
            overlay.display()
        ))
        .arg("-device")
        .arg("virtio-blk-pci,drive=root,bootindex=0");
    q.args(config_drive_args(attachment, opts.machine, &config_drive));
    for (i, (tap, m)) in taps.iter().zip(&macs).enumerate() {
        q.arg("-netdev")
            .arg(format!("tap,id=n{i},ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n{i},mac={m}"));
    }
    let qemu_log = fs::File::create(w.join("qemu.log")).map_err(io("create qemu.log"))?;
    let started = Instant::now();
    let child = tools::die_with_parent(&mut q)
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone().map_err(io("qemu.log"))?)
        .stderr(qemu_log)
        .spawn()
        .map_err(io("start qemu-system-x86_64"))?;
    let mut vm = Vm { child };

    // QEMU creates the TAP devices in our namespace; once they exist, move each into its
    // namespace (the open file descriptor in QEMU stays attached).
    let deadline = Instant::now() + Duration::from_secs(20);
    for tap in &taps {
        while !Path::new("/sys/class/net").join(tap).exists() {
            if let Some(status) = vm.child.try_wait().map_err(io("wait for qemu"))? {
                let log = fs::read_to_string(w.join("qemu.log")).unwrap_or_default();
                return Err(fail(format!("qemu exited at start ({status}): {log}")));
            }
            if Instant::now() > deadline {
                return Err(fail(format!("QEMU did not create TAP device {tap}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (tap, ns) in taps.iter().zip([&mgmt, &ext, &tenant]) {
        ns.adopt_link(tap)?;
    }
    mgmt.ip(&[
        "addr",
        "add",
        "fdca:3ba5:a17a:acda::1/64",
        "dev",
        &taps[0],
        "nodad",
    ])?;
    ext.ip(&["addr", "add", "172.16.77.1/24", "dev", &taps[1]])?;
    tenant.ip(&["addr", "add", "192.168.0.2/24", "dev", &taps[2]])?;
    tenant.ip(&["route", "add", "default", "via", "192.168.0.1"])?;
    let mut _dnsmasq = None;
    if opts.dhcp {
        mgmt.ip(&["addr", "add", "10.99.0.1/24", "dev", &taps[0]])?;
        let leases = w.join("dnsmasq.leases");
        let mut dnsmasq =
            mgmt.command(&["dnsmasq", "--no-daemon", "--port=0", "--bind-interfaces"]);
        let child = tools::die_with_parent(&mut dnsmasq)
            .arg(format!("--interface={}", taps[0]))
            .arg("--dhcp-range=10.99.0.100,10.99.0.150,1h")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", w.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start dnsmasq"))?;
        _dnsmasq = Some(Vm { child });
    }

    // Wait for the agent.
    let timeout = Duration::from_secs(opts.timeout);
    let mut last_error = String::from("no attempt yet");
    let (listen, interfaces) = loop {
        if let Some(status) = vm.child.try_wait().map_err(io("wait for qemu"))? {
            return Err(fail(format!(
                "the VM stopped ({status}) before the agent answered"
            )));
        }
        if started.elapsed() > timeout {
            return Err(fail(format!(
                "the agent did not answer within {} s (last error: {last_error})",
                opts.timeout
            )));
        }
        let target: Option<SocketAddr> = if opts.dhcp {
            fs::read_to_string(w.join("dnsmasq.leases"))
                .ok()
                .and_then(|l| l.lines().find(|x| x.contains(&macs[0])).map(str::to_string))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|ip| ip.parse().ok()))
                .map(|ip: IpAddr| SocketAddr::new(ip, 5000))
        } else {
            Some(SocketAddr::new(mgmt_addr.parse().expect("valid"), 5000))
        };
        if let Some(addr) = target {
            let client = clients.mutual.as_ref().unwrap_or(&clients.plain);
            let tls = clients.mutual.is_some();
            match request(client, tls, "GET", addr, "/v1/system/interfaces", None) {
                Ok(r) if r.status == 200 => break (addr, r.text()),
                Ok(r) => last_error = format!("HTTP {}: {}", r.status, r.text()),
                Err(e) => last_error = e.to_string(),
            }
        } else {
            last_error = "no DHCP lease yet".into();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let boot_to_ready = started.elapsed();
    // The agent must have read the drive, and listen on the address it gave (the only
    // address the management namespace can reach: it has no DHCP server then).
    let config_drive_device = config_drive_read_from(&serial);
    if attachment != Attachment::None && config_drive_device.is_none() {
        return Err(fail(format!(
            "the agent answered at {listen} but its log does not say it read the config drive ({attachment})"
        )));
    }

    // The agent names each NIC geN and reports its MAC.
    let doc: Value = serde_json::from_str(&interfaces).map_err(|e| {
        fail(format!(
            "GET /v1/system/interfaces is not JSON ({e}): {interfaces}"
        ))
    })?;
    let list = doc["interfaces"]
        .as_array()
        .ok_or_else(|| fail(format!("no \"interfaces\" list: {interfaces}")))?;
    let mut names: Vec<String> = Vec::new();
    for m in &macs {
        let found = list
            .iter()
            .find(|i| i["lladdr"].as_str() == Some(m.as_str()));
        let Some(ifname) = found.and_then(|i| i["ifname"].as_str()) else {
            return Err(fail(format!(
                "the agent does not list a NIC with MAC {m}: {interfaces}"
            )));
        };
        let numbered = ifname
            .strip_prefix("ge")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !numbered {
            return Err(fail(format!(
                "NIC {m} is named {ifname:?}, not geN: {interfaces}"
            )));
        }
        names.push(ifname.to_string());
    }
    let names: [String; 3] = names.try_into().expect("three NICs");

    // With DHCP the lease stays in the config: an apply removes the addresses a config does
    // not name, and the answer to this PUT goes out from the lease address.
    let lease = match listen.ip() {
        IpAddr::V4(ip) if opts.dhcp => Some(format!("{ip}/24")),
        _ => None,
    };
    let config = router_config(&names, lease.as_deref()).to_string();

    // Mutual TLS only: plain HTTP and a client without a certificate get no answer.
    if let Some(anonymous) = &clients.anonymous {
        if let Ok(r) = request(
            &clients.plain,
            false,
            "GET",
            listen,
            "/v1/system/interfaces",
            None,
        ) {
            return Err(fail(format!(
                "the agent answered plain HTTP with {} although the config drive carries TLS material",
                r.status
            )));
        }
        if let Ok(r) = request(
            anonymous,
            true,
            "GET",
            listen,
            "/v1/system/interfaces",
            None,
        ) {
            return Err(fail(format!(
                "the agent answered a client without a certificate with {}",
                r.status
            )));
        }
    }
    let client = clients.mutual.as_ref().unwrap_or(&clients.plain);
    let tls = clients.mutual.is_some();
    let t = Instant::now();
    let put = request(
        client,
        tls,
        "PUT",
        listen,
        "/v1/system/config",
        Some(&config),
    )
    .map_err(|e| fail(format!("PUT /v1/system/config: {e}")))?;
    let apply_ms = t.elapsed().as_millis();
    if pki.is_none() {
        // No config drive: no TLS material and no operator opt-in, so no config change.
        if put.status != 403 {
            return Err(fail(format!(
                "without a config drive the agent must refuse config changes over plain HTTP (403), it answered {}: {}",
                put.status,
                put.text()
            )));
        }
        drop(vm);
        return Ok(VerifyReport {
            firmware: opts.firmware,
            machine: opts.machine,
            attachment,
            config_drive_device,
            boot_to_ready,
            interfaces: names.iter().cloned().zip(macs.iter().cloned()).collect(),
            apply_ms,
            pinged: None,
            listen: listen.to_string(),
            mutual_tls: false,
        });
    }
    if put.status != 200 {
        return Err(fail(format!(
            "PUT /v1/system/config answered {}: {}",
            put.status,
            put.text()
        )));
    }

    // A tenant reaches the address the config gave the router.
    let target = "192.168.0.1";
    let mut pinged = false;
    for _ in 0..15 {
        let ok = tenant
            .command(&["ping", "-c", "1", "-W", "1", target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            pinged = true;
            break;
        }
    }
    if !pinged {
        return Err(fail(format!(
            "the tenant namespace cannot ping {target} on {} after the config was applied",
            names[2]
        )));
    }
    drop(vm);
    Ok(VerifyReport {
        firmware: opts.firmware,
        machine: opts.machine,
        attachment,
        config_drive_device,
        boot_to_ready,
        interfaces: names.iter().cloned().zip(macs.iter().cloned()).collect(),
        apply_ms,
        pinged: Some(target.into()),
        listen: listen.to_string(),
        mutual_tls: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_config_is_valid_for_the_agent() {
        // The verifier's config must pass the same validation as the agent applies.
        let names = ["ge0".to_string(), "ge1".to_string(), "ge2".to_string()];
        for lease in [None, Some("10.99.0.111/24")] {
            let doc = router_config(&names, lease);
            assert_eq!(doc["networks"][2]["interface"]["ifname"], "ge2");
            if let Err(e) = akanda_model::parse(doc.to_string().as_bytes()) {
                panic!("{e:?}\n{doc:#}");
            }
        }
    }

    #[test]
    fn macs_are_locally_administered_and_distinct() {
        let (a, b) = (mac(1), mac(2));
        assert_ne!(a, b);
        assert!(a.starts_with("52:54:"));
    }

    fn options(args: &[&str]) -> VerifyOptions {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            verify: VerifyOptions,
        }
        let argv = std::iter::once("verify")
            .chain(args.iter().copied())
            .chain(["img"]);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().verify
    }

    #[test]
    fn default_attachment_is_novas_on_a_current_host() {
        let o = options(&[]);
        assert_eq!(o.machine, Machine::Q35);
        assert_eq!(
            o.attachment().unwrap(),
            Attachment::IsoCdrom(CdromBus::Sata)
        );
        assert_eq!(
            options(&["--machine", "pc"]).attachment().unwrap(),
            Attachment::IsoCdrom(CdromBus::Ide)
        );
        assert_eq!(
            options(&["--cdrom-bus", "scsi"]).attachment().unwrap(),
            Attachment::IsoCdrom(CdromBus::Scsi)
        );
        assert_eq!(
            options(&["--config-drive-format", "vfat"])
                .attachment()
                .unwrap(),
            Attachment::VfatVirtio
        );
        assert_eq!(options(&["--dhcp"]).attachment().unwrap(), Attachment::None);
        // q35 has no IDE; a vfat drive is a disk, not a CD-ROM.
        assert!(options(&["--cdrom-bus", "ide"]).attachment().is_err());
        assert!(
            options(&["--config-drive-format", "vfat", "--cdrom-bus", "sata"])
                .attachment()
                .is_err()
        );
    }

    #[test]
    fn config_drive_devices_on_the_qemu_command_line() {
        let d = Path::new("/w/cfg.img");
        let joined = |a: Attachment, m: Machine| config_drive_args(a, m, d).join(" ");
        let sata = joined(Attachment::IsoCdrom(CdromBus::Sata), Machine::Q35);
        assert!(
            sata.contains("media=cdrom") && sata.contains("ide-cd,drive=cfg,bus=ide.0"),
            "{sata}"
        );
        let sata_pc = joined(Attachment::IsoCdrom(CdromBus::Sata), Machine::Pc);
        assert!(
            sata_pc.contains("ahci,id=sata0") && sata_pc.contains("bus=sata0.0"),
            "{sata_pc}"
        );
        let scsi = joined(Attachment::IsoCdrom(CdromBus::Scsi), Machine::Q35);
        assert!(
            scsi.contains("virtio-scsi-pci") && scsi.contains("scsi-cd,drive=cfg"),
            "{scsi}"
        );
        let vfat = joined(Attachment::VfatVirtio, Machine::Q35);
        assert!(
            vfat.contains("virtio-blk-pci,drive=cfg") && !vfat.contains("cdrom"),
            "{vfat}"
        );
        assert!(config_drive_args(Attachment::None, Machine::Q35, d).is_empty());
    }

    #[test]
    fn the_agents_config_drive_log_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let serial = dir.path().join("serial.log");
        std::fs::write(
            &serial,
            "[  OK  ] Reached target\r\n2026-11-30T07:00:00Z  INFO akanda_agent::bootconfig: \
             storage probing finished waited_ms=0\r\n2026-11-30T07:00:00Z  INFO \
             akanda_agent::bootconfig: reading the config drive device=/dev/sr0 fs=Iso9660 \
             bus=/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sr0\r\n",
        )
        .unwrap();
        assert_eq!(
            config_drive_read_from(&serial).as_deref(),
            Some("/dev/sr0 (/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sr0)")
        );
        std::fs::write(
            &serial,
            "no config drive (label config-2): DHCP on the first NIC\n",
        )
        .unwrap();
        assert_eq!(config_drive_read_from(&serial), None);
    }
}
