//! akanda-netns: the network namespaces of Akanda's root tests, benchmarks and
//! `akanda-image verify`, and the one HTTP client they talk to the agent with.
//!
//! - [`Netns`] owns one named namespace (`ip netns`): a unique name
//!   (`<prefix><tag>-<pid>-<n>`), removed with every process in it on drop, and removed by
//!   the next process after a crash ([`cleanup_stale`], run once per prefix before the first
//!   namespace of that prefix). It runs commands ([`Netns::command`], [`Netns::exec`],
//!   [`Netns::ip`]) and closures ([`Netns::enter`]) inside.
//! - [`veth`] links two namespaces; [`Netns::adopt_link`] moves a host link (a TAP) in.
//! - [`HttpClient`] is a blocking HTTP client (reqwest, rustls) whose sockets live in a
//!   namespace, with mutual TLS when given a rustls client config.
//!
//! Errors are [`NetnsError`] and [`HttpError`]; the test harness (`akanda-tests`) turns them
//! into panics, `akanda-image verify` into its own errors.

mod http;
mod namespace;

pub use http::{HttpClient, HttpError, HttpOptions, HttpResponse};
pub use namespace::{cleanup_stale, is_root, list, run_in_host, veth, Netns, NetnsError};
