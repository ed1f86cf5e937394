//! Test support shared by the workspace's tests, benches and fuzz targets: deterministic
//! generators, no I/O. Not part of the config model; nothing in the agent or rug-lite uses it.

use serde_json::{json, Value};

use crate::{ConfigError, RouterConfig};

/// [`crate::parse`] always through its two passes (the scan, then the typed pass), never the
/// one-pass fast path: for differential tests and the fuzz target, which hold the two to the
/// same answer for every body.
pub fn parse_two_pass(bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    crate::parse_checked(bytes)
}

/// xorshift64*: the same sequence from the same seed on every run, no dependency.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Floating IP `i` of the scale configs: 172.16.A.B ↦ fixed IP 10.0.A.B, where A = 1 + i / 250
/// and B = 1 + i % 250 (unique up to 62,500).
pub fn floating_ip(i: u32) -> Value {
    let (hi, lo) = (1 + i / 250, 1 + i % 250);
    json!({"floating_ip": format!("172.16.{hi}.{lo}"), "fixed_ip": format!("10.0.{hi}.{lo}")})
}

/// `basic`, the basic conformance config (`astara-router-basic.json`), grown to `n` floating
/// IPs ([`floating_ip`]): its external subnet becomes 172.16.0.0/16 and its internal one
/// 10.0.0.0/16 (without allocations). NIC names stay ge0 (management), ge1 (external), ge2
/// (internal).
pub fn with_floating_ips(mut basic: Value, n: u32) -> Value {
    basic["networks"][1]["interface"]["addresses"] = json!(["172.16.0.2/16"]);
    basic["networks"][1]["subnets"] = json!([{"id": "ext", "cidr": "172.16.0.0/16",
        "gateway_ip": "172.16.0.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]);
    basic["default_v4_gateway"] = json!("172.16.0.1");
    basic["networks"][2]["interface"]["addresses"] = json!(["10.0.0.1/16"]);
    basic["networks"][2]["subnets"] = json!([{"id": "int", "cidr": "10.0.0.0/16",
        "gateway_ip": "10.0.0.1", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": []}]);
    basic["networks"][2]["allocations"] = json!([]);
    basic["floating_ips"] = Value::Array((0..n).map(floating_ip).collect());
    basic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_the_seeds() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        let first: Vec<u64> = (0..4).map(|_| a.next()).collect();
        assert_eq!(first, (0..4).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        assert_eq!(Rng(1).below(0), 0);
        assert!((0..100).all(|_| a.below(3) < 3));
    }

    #[test]
    fn floating_ips_are_unique_and_inside_their_subnets() {
        assert_eq!(floating_ip(0)["floating_ip"], "172.16.1.1");
        assert_eq!(floating_ip(249)["fixed_ip"], "10.0.1.250");
        assert_eq!(floating_ip(250)["floating_ip"], "172.16.2.1");
    }
}
