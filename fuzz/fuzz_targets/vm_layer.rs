//! Fuzz target `vm_layer`: see `fuzz_targets::vm_layer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::vm_layer::run(data));
