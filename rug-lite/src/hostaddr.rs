//! rug-lite's own address on the management network (the `orchestrator.address` it pushes, which
//! the appliances' metadata proxies target): one of the host's addresses inside a management
//! subnet, unless `[appliance] orchestrator_address` sets it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The host's addresses (every interface), through getifaddrs.
pub(crate) fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AddressError {
    #[error("none of this host's addresses is inside the management subnets ({0}); set [appliance] orchestrator_address")]
    NoneInside(String),
    #[error("several of this host's addresses are inside the management subnets ({0}); set [appliance] orchestrator_address")]
    Ambiguous(String),
}

/// The one host address inside the management subnets. Link-local addresses are never picked:
/// URLs to them need a zone id.
pub(crate) fn pick(
    configured: Option<IpAddr>,
    host: &[IpAddr],
    management_subnets: &[IpNet],
) -> Result<IpAddr, AddressError> {
    if let Some(a) = configured {
        return Ok(a);
    }
    let mut inside: Vec<IpAddr> = host
        .iter()
        .copied()
        .filter(|a| !is_link_local(a))
        .filter(|a| management_subnets.iter().any(|s| s.contains(a)))
        .collect();
    inside.sort();
    inside.dedup();
    let shown = || {
        management_subnets
            .iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match inside.as_slice() {
        [one] => Ok(*one),
        [] => Err(AddressError::NoneInside(shown())),
        many => Err(AddressError::Ambiguous(
            many.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn picks_the_one_address_in_the_management_subnet() {
        let subnets: Vec<IpNet> = vec!["fdca:3ba5:a17a:acda::/64".parse().unwrap()];
        let host = ips(&[
            "127.0.0.1",
            "10.0.2.15",
            "fe80::1",
            "fdca:3ba5:a17a:acda::1",
            "::1",
        ]);
        assert_eq!(
            pick(None, &host, &subnets),
            Ok("fdca:3ba5:a17a:acda::1".parse().unwrap())
        );
        let configured = "fdca:3ba5:a17a:acda::99".parse().unwrap();
        assert_eq!(pick(Some(configured), &host, &subnets), Ok(configured));
        assert!(matches!(
            pick(None, &ips(&["10.0.2.15"]), &subnets),
            Err(AddressError::NoneInside(_))
        ));
        let two = ips(&["fdca:3ba5:a17a:acda::1", "fdca:3ba5:a17a:acda::2"]);
        assert!(matches!(
            pick(None, &two, &subnets),
            Err(AddressError::Ambiguous(_))
        ));
    }

    #[test]
    fn the_host_has_addresses() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
    }
}
