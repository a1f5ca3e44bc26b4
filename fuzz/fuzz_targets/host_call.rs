//! Fuzz target `host_call`: see `fuzz_targets::host_call`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::host_call::run(data));
