//! Fuzz target `index`: see `check_index` in core/tests/hostile/harness.rs.
#![no_main]

#[path = "../../core/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check_index(data));
