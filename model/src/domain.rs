//! Domain values that more than one part of Akanda parses: parsed once, here, and passed
//! around typed. Each has `FromStr` and `Display` that round-trip, and serialises as its text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kernel's main routing table (`RT_TABLE_MAIN`), where the router's routes live.
pub const MAIN_ROUTE_TABLE: u32 = 254;

/// A NIC's name in the API, in the kernel and in the daemons' files: `geN`, where N (0 to
/// 9999, no leading zeros) is kept per MAC for the appliance's life. Orders by N, so `ge2`
/// comes before `ge10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NicName(u16);

impl NicName {
    pub(crate) const MAX_INDEX: u16 = 9999;

    pub(crate) fn new(index: u16) -> Option<NicName> {
        (index <= Self::MAX_INDEX).then_some(NicName(index))
    }

    /// N of `geN`.
    pub fn index(self) -> u16 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a NIC name (ge0 to ge9999)")]
pub struct NicNameError(String);

impl FromStr for NicName {
    type Err = NicNameError;
    fn from_str(s: &str) -> Result<NicName, NicNameError> {
        let err = || NicNameError(s.to_string());
        let digits = s.strip_prefix("ge").ok_or_else(err)?;
        let canonical = !digits.is_empty()
            && digits.len() <= 4
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(err());
        }
        digits.parse().ok().and_then(NicName::new).ok_or_else(err)
    }
}

impl fmt::Display for NicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ge{}", self.0)
    }
}

/// An Ethernet MAC address. Parsed from six pairs of hex digits separated by `:` or `-`, in
/// either case (Neutron and Nova write `fa:16:3e:…`, some tools `FA-16-3E-…`); shown in
/// lower case with colons, the kernel's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address")]
pub struct MacAddrError(String);

impl FromStr for MacAddr {
    type Err = MacAddrError;
    fn from_str(s: &str) -> Result<MacAddr, MacAddrError> {
        let err = || MacAddrError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        match parts.next() {
            Some(_) => Err(err()),
            None => Ok(MacAddr(mac)),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(NicName);
serde_as_text!(MacAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_names_round_trip_and_order_by_number() {
        for s in ["ge0", "ge2", "ge10", "ge9999"] {
            assert_eq!(s.parse::<NicName>().unwrap().to_string(), s);
        }
        for bad in [
            "ge", "ge01", "ge10000", "eth0", "ge-1", "ge1x", "GE1", " ge1",
        ] {
            assert!(bad.parse::<NicName>().is_err(), "{bad}");
        }
        let mut names: Vec<NicName> = ["ge10", "ge2", "ge0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names.iter().map(|n| n.index()).collect::<Vec<_>>(),
            [0, 2, 10]
        );
        assert_eq!(NicName::new(10_000), None);
        assert_eq!(
            serde_json::to_string(&NicName::new(3).unwrap()).unwrap(),
            "\"ge3\""
        );
        assert!(serde_json::from_str::<NicName>("\"ge03\"").is_err());
    }

    #[test]
    fn macs_in_either_spelling_show_as_the_kernel_does() {
        let want = MacAddr([0xfa, 0x16, 0x3e, 0x00, 0x0a, 0xff]);
        for s in [
            "fa:16:3e:00:0a:ff",
            "FA:16:3E:00:0A:FF",
            "fa-16-3e-00-0a-ff",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "fa:16:3e:00:0a:ff");
        for bad in [
            "fa:16:3e:00:0a",
            "fa:16:3e:00:0a:ff:00",
            "fa:16:3e:0:0a:ff",
            "fa16.3e00.0aff",
            "",
            "zz:16:3e:00:0a:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&want).unwrap(),
            "\"fa:16:3e:00:0a:ff\""
        );
    }
}
