//! Fuzz target `guest_call`: see `fuzz_targets::guest_call`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::guest_call::run(data));
