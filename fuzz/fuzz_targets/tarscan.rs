//! Fuzz target `tarscan`: see `check_tar` in core/tests/hostile/harness.rs.
#![no_main]

#[path = "../../core/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check_tar(data));
