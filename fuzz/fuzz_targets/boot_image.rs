//! Fuzz target `boot_image`: see `fuzz_targets::boot_image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::boot_image::run(data));
