//! The renderers: every accepted config through the pure code of an apply (routes and their
//! plan, the ruleset and its nftnl batch, dnsmasq, bird, host name, metadata headers), with a
//! sample of the daemon files checked by the daemons themselves. See
//! `akanda_fuzz::check_render` for the invariants. Most mutations are structural, so that
//! most inputs are configs the validator accepts.
#![no_main]

use std::sync::OnceLock;

use akanda_fuzz::DaemonCheck;
use libfuzzer_sys::{fuzz_mutator, fuzz_target};

static CHECKS: OnceLock<DaemonCheck> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Some(config) = akanda_fuzz::check_parse(data) {
        akanda_fuzz::check_render(&config, CHECKS.get_or_init(DaemonCheck::from_env));
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    akanda_fuzz::mutate::mutate(data, size, max_size, seed, 85)
});
