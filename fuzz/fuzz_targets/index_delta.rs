//! Fuzz target `index_delta`: see `check_index_delta` in core/tests/hostile/harness.rs.
#![no_main]

#[path = "../../core/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check_index_delta(data));
