//! akanda-agent: runs inside the Service Instance, speaks Astara's v1 appliance API and
//! programs the kernel directly.
//!
//! Layout: `desired` (pure: config → wanted kernel state) and `reconcile` (diff + apply) are
//! the core; `netlink` is the only module that talks rtnetlink; `nics` names NICs `geN`;
//! `appliance` owns the state and runs each apply as a transaction; `management` keeps
//! the orchestrator's path (from the boot configuration) out of any config's reach; `api` and `server` are
//! the HTTP edge; `store` and `sysctl` are the file-system edges.

pub mod api;
pub mod appliance;
pub mod bootconfig;
pub mod desired;
pub mod failpoint;
pub mod firewall;
pub mod management;
pub mod netlink;
pub(crate) mod nics;
pub mod reconcile;
pub mod server;
pub mod services;
pub mod store;
pub mod sysctl;
pub mod tls;
