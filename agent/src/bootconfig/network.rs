//! The management NIC from the boot configuration: link, addresses, routes, DHCP/SLAAC, and
//! the API listeners.

use super::*;

// ---------------------------------------------------------------------------------------------
// Writing it to the kernel

/// What [`configure`] set up; keep it alive while serving (it owns the DHCP client).
#[derive(Debug)]
pub struct BootNetwork {
    pub ifname: String,
    pub listeners: Vec<TcpListener>,
    pub listen: Vec<String>,
    /// Held, never read: dropping it kills the client.
    _dhcp_client: Option<tokio::process::Child>,
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

/// Sets a per-NIC sysctl; a failure only costs SLAAC on the management NIC, so it is logged.
fn set_sysctl(key: String, value: &str) {
    if let Err(e) = crate::sysctl::ensure(Path::new("/proc/sys"), &key, value) {
        tracing::warn!(error = %e, "cannot set sysctl");
    }
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
        set_sysctl(format!("net/ipv6/conf/{ifname}/accept_ra"), "2");
        set_sysctl(format!("net/ipv6/conf/{ifname}/autoconf"), "1");
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
        // its default script (busybox ip); it is killed when the agent exits. One an earlier
        // agent left when it was killed (same command line, same network namespace) is
        // stopped first: never two DHCP clients on the NIC.
        let args = ["-f", "-S", "-i", ifname.as_str(), "-s", UDHCPC_SCRIPT];
        let stale = crate::services::supervisor::kill_stale(|pid, argv| {
            argv.first().map(String::as_str) == Some(UDHCPC)
                && argv[1..].iter().map(String::as_str).eq(args)
                && crate::services::supervisor::in_our_network_namespace(pid)
        })
        .await;
        if stale > 0 {
            tracing::warn!(%ifname, "a DHCP client left by an earlier agent was stopped");
        }
        let child = tokio::process::Command::new(UDHCPC)
            .args(args)
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
            crate::server::bind_to_device(&ifname, m.port, 1024).map_err(|source| {
                BootConfigError::Listen {
                    addr: format!("[::]:{} on {ifname}", m.port),
                    source,
                }
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
        listeners,
        listen,
        _dhcp_client: dhcp_client,
    })
}
