//! Kernel settings a router needs, written through `/proc/sys` (no `sysctl` subprocess).
//! `/proc/sys/net` belongs to the network namespace of the process, so this works unchanged
//! under `ip netns exec`.

use std::fs;
use std::io;
use std::path::Path;

/// (key under /proc/sys, value) that every router needs.
pub(crate) const ROUTER_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    // Deleting a primary IPv4 address must not take the secondaries (other addresses of the
    // same subnet, floating IPs) with it.
    ("net/ipv4/conf/all/promote_secondaries", "1"),
    ("net/ipv4/conf/default/promote_secondaries", "1"),
    // Renaming a NIC needs it down on older kernels; keep its IPv6 addresses meanwhile.
    ("net/ipv6/conf/all/keep_addr_on_down", "1"),
    ("net/ipv6/conf/default/keep_addr_on_down", "1"),
];

#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: {source}")]
pub struct SysctlError {
    pub(crate) key: String,
    #[source]
    pub(crate) source: io::Error,
}

/// Sets `key` to `value` unless it already has it. Returns whether it wrote.
pub(crate) fn ensure(root: &Path, key: &str, value: &str) -> Result<bool, SysctlError> {
    let path = root.join(key);
    let err = |source| SysctlError {
        key: key.replace('/', "."),
        source,
    };
    let current = fs::read_to_string(&path).map_err(err)?;
    if current.trim() == value {
        return Ok(false);
    }
    fs::write(&path, value).map_err(err)?;
    Ok(true)
}

/// Whether `key` turns forwarding on: those wait for the bootstrap ruleset.
pub(crate) fn is_forwarding(key: &str) -> bool {
    key.ends_with("/forwarding") || key == "net/ipv4/ip_forward"
}

pub(crate) fn ensure_router_sysctls() -> Result<usize, SysctlError> {
    ensure_sysctls(|_| true)
}

/// The router's sysctls but forwarding (kept addresses, promoted secondaries): set before the
/// NICs are renamed (a rename sets a link down), while forwarding waits for the bootstrap
/// ruleset.
pub(crate) fn ensure_address_sysctls() -> Result<usize, SysctlError> {
    ensure_sysctls(|key| !is_forwarding(key))
}

fn ensure_sysctls(which: impl Fn(&str) -> bool) -> Result<usize, SysctlError> {
    let root = Path::new("/proc/sys");
    let mut written = 0;
    for (key, value) in ROUTER_SYSCTLS.iter().filter(|(k, _)| which(k)) {
        if ensure(root, key, value)? {
            tracing::info!(key, value, "sysctl set");
            written += 1;
        }
    }
    Ok(written)
}

/// Turns on optimistic DAD on `ifname` (a `geN` name): IPv6 addresses added there with
/// `IFA_F_OPTIMISTIC` can be used while duplicate address detection runs (RFC 4429). Fails with
/// `NotFound` on a kernel built without `CONFIG_IPV6_OPTIMISTIC_DAD`. Returns whether it wrote.
pub fn ensure_optimistic_dad(ifname: &str) -> Result<bool, SysctlError> {
    let key = format!("net/ipv6/conf/{ifname}/optimistic_dad");
    let written = ensure(Path::new("/proc/sys"), &key, "1")?;
    if written {
        tracing::info!(key, value = "1", "sysctl set");
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_when_different() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        assert!(ensure(dir.path(), "net/ipv4/ip_forward", "1").unwrap());
        assert!(!ensure(dir.path(), "net/ipv4/ip_forward", "1").unwrap());
        let err = ensure(dir.path(), "net/nope", "1").unwrap_err();
        assert_eq!(err.key, "net.nope");
    }
}
