//! Fuzz target `device_tree`: see `fuzz_targets::device_tree`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::device_tree::run(data));
