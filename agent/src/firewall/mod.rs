//! NAT and firewall: one nf_tables table, `inet akanda`, replaced whole in one atomic batch
//! per config. `ruleset` is pure; `text` renders nft syntax; `batch` is the only user of
//! nftnl/mnl; `conntrack` ends sessions of removed floating IPs; `readback` lists the live
//! table for `GET /v1/firewall/rules`.

pub mod batch;
pub mod conntrack;
pub mod nfnl;
pub mod readback;
pub mod ruleset;
pub mod text;

pub use ruleset::{build, FirewallOptions, Ruleset};
