//! The config parser and validator, as the agent's PUT handler runs them: arbitrary bytes
//! (seeded with the conformance configs) through `akanda_model::parse` and the management-path
//! check. See `akanda_fuzz::check_parse` for the invariants. Half the mutations are
//! libFuzzer's byte mutations (malformed JSON, escapes, numbers), half structural ones.
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    let _ = akanda_fuzz::check_parse(data);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    akanda_fuzz::mutate::mutate(data, size, max_size, seed, 50)
});
