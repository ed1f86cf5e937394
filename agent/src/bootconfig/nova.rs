//! Nova's config drive documents: `network_data.json`, `meta_data.json` and rug-lite's
//! `user_data`, turned into the management configuration. Pure.

use super::*;

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
    /// 512 random bytes, base64, that Nova's API generates for each server.
    #[serde(default)]
    random_seed: Option<String>,
}

/// Nova's per-server `random_seed`: bytes for the kernel's random pool. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RandomSeed(Vec<u8>);

impl RandomSeed {
    /// More than Nova's 512 bytes is refused: the seed only has to initialise the CRNG.
    pub(crate) const MAX_BYTES: usize = 4096;

    /// The base64 text of `meta_data.json`, or `None` when it is not base64 or is empty or
    /// larger than [`Self::MAX_BYTES`] (a seed is an optimisation, never a reason to fail a
    /// boot).
    pub(crate) fn from_base64(text: &str) -> Option<RandomSeed> {
        use base64::Engine as _;
        if text.len() > Self::MAX_BYTES.div_ceil(3) * 4 {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        (!bytes.is_empty()).then_some(RandomSeed(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for RandomSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RandomSeed({} bytes)", self.0.len())
    }
}

// ---------------------------------------------------------------------------------------------
// What the agent does with them

/// The management NIC's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    /// Lower-case MAC of the management NIC; `None` means the first NIC (`ge0`).
    pub(crate) mac: Option<String>,
    pub mtu: Option<u32>,
    /// Static addresses with their prefix length.
    pub addresses: Vec<IpNet>,
    /// Static routes: destination and gateway.
    pub routes: Vec<(IpNet, IpAddr)>,
    /// Run DHCPv4 on the NIC.
    pub(crate) dhcp4: bool,
    /// Accept router advertisements (SLAAC) on the NIC although the box forwards.
    pub(crate) slaac: bool,
    pub port: u16,
    /// `meta.akanda_insecure_http` is `true`: the operator allows plain HTTP when there is no
    /// TLS material.
    pub insecure_http: bool,
    /// rug-lite's boot document from `user_data`, if there is one.
    pub user_data: Option<UserData>,
    /// `meta_data.json`'s `random_seed`, when it is valid.
    pub(crate) random_seed: Option<RandomSeed>,
}

impl Management {
    /// No config drive: DHCP and SLAAC on the first NIC, default port.
    pub(crate) fn fallback() -> Management {
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
            random_seed: None,
        }
    }

    /// Where to listen: each static address, or (no static address) every address of the
    /// NIC, which [`configure`] implements as `[::]` bound to the device.
    pub(crate) fn listen_addresses(&self) -> Vec<SocketAddr> {
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

pub(super) const ND: &str = "network_data.json";
pub(super) const MD: &str = "meta_data.json";

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
pub(crate) fn parse(network_data: &[u8], meta_data: &[u8]) -> Result<Management, BootConfigError> {
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
        random_seed: md.random_seed.as_deref().and_then(RandomSeed::from_base64),
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

pub(super) const UD: &str = "user_data";

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
    pub(crate) router_id: Option<String>,
    pub(crate) management_address: Option<IpAddr>,
    /// `None`: `tls` is null or absent (a plain-HTTP lab).
    pub tls: Option<BootTls>,
}

/// The only `akanda.version` this agent reads.
pub(crate) const USER_DATA_VERSION: u64 = 1;

/// Parses `user_data`. Pure. `Ok(None)` when it is empty or not ours (not JSON, or JSON
/// without an `akanda` key: the image has no cloud-init, so other user_data is ignored). An
/// `akanda` document with a wrong field is an error naming the field; it never quotes the key.
pub(crate) fn parse_user_data(bytes: &[u8]) -> Result<Option<UserData>, BootConfigError> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    /// network_data.json as Nova writes it for a port with static IPv4 and IPv6 subnets
    /// (nova/virt/netutils.py `get_network_metadata`), plus a second (tenant) port.
    pub(in crate::bootconfig) const ND_STATIC: &str = r#"{
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
    pub(in crate::bootconfig) const MD_AKANDA: &str = r#"{
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

    /// The config drive Nova's libvirt driver really wrote for a Service Instance
    /// (`tests/fixtures/nova-config-drive/`, a copy of the shared conformance sample): `tap` links, a
    /// static IPv6 management network without routes, and IPv4 networks whose default route
    /// Nova adds for every subnet with a gateway.
    const ND_NOVA: &str =
        include_str!("../../../tests/fixtures/nova-config-drive/network_data.json");
    const MD_NOVA: &str = include_str!("../../../tests/fixtures/nova-config-drive/meta_data.json");

    #[test]
    fn novas_real_config_drive_gives_the_management_address() {
        let m = parse(ND_NOVA.as_bytes(), MD_NOVA.as_bytes()).unwrap();
        assert_eq!(m.mac.as_deref(), Some("fa:16:3e:de:ee:03"));
        assert_eq!(m.mtu, Some(1450));
        assert_eq!(m.addresses, [net("fdca:3ba5:a17a:acda::d1/64")]);
        assert!(m.routes.is_empty());
        assert!(!m.dhcp4 && !m.slaac);
        assert_eq!(m.port, DEFAULT_API_PORT);
        let seed = m.random_seed.expect("Nova's random_seed");
        assert_eq!(seed.bytes().len(), 512, "Nova writes 512 random bytes");
        assert_eq!(
            format!("{seed:?}"),
            "RandomSeed(512 bytes)",
            "never printed"
        );
    }

    #[test]
    fn a_random_seed_that_is_not_usable_is_ignored_not_fatal() {
        let md = |seed: &str| format!(r#"{{"random_seed": {seed}}}"#);
        for bad in [
            "\"not base64!\"".to_string(),
            "\"\"".to_string(),
            format!("\"{}\"", "QUJD".repeat(RandomSeed::MAX_BYTES / 3 + 2)),
        ] {
            let m = parse(ND_NOVA.as_bytes(), md(&bad).as_bytes()).unwrap();
            assert_eq!(m.random_seed, None, "{bad:.40}");
        }
        let m = parse(ND_NOVA.as_bytes(), md("\"QUJD\"").as_bytes()).unwrap();
        assert_eq!(m.random_seed.unwrap().bytes(), b"ABC");
        // A seed that is not a string is a malformed meta_data.json, named as such.
        let e = parse(ND_NOVA.as_bytes(), md("5").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("meta_data.json"), "{e}");
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
