//! NAT and firewall: one nf_tables table, `inet akanda`, replaced whole in one atomic batch
//! per config. `ruleset` is pure; `text` renders nft syntax; `batch` is the only user of
//! nftnl (rule expressions); `netfilter` is the only nfnetlink user: it sends batches, probes
//! the table, ends conntrack sessions of removed floating IPs and lists the live table for
//! `GET /v1/firewall/rules`. Its `ffi` submodule holds the firewall's only `unsafe` code.
#![deny(unsafe_code)]

pub mod batch;
pub mod netfilter;
pub mod ruleset;
pub mod text;

pub use ruleset::{build, FirewallOptions, Ruleset};

/// The read-back's former path, kept for `api.rs`: see [`netfilter::list_table`].
pub(crate) mod readback {
    pub(crate) use super::netfilter::list_table;
}
