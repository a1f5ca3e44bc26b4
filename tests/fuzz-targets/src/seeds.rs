//! The hand-made seeds of every target, written to
//! `fuzz/corpus/<target>/seed-<name>` (`FUZZ_WRITE_SEEDS=1 cargo test -p
//! fuzz_targets --test replay seeds_are_committed`); the replay test checks
//! the committed files are these.

use std::string::String;
use std::vec::Vec;

/// The seeds of `target`: `(name, input)`.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let owned = |v: Vec<(&'static str, Vec<u8>)>| {
        v.into_iter()
            .map(|(n, b)| (String::from(n), b))
            .collect::<Vec<_>>()
    };
    match target {
        "host_call" => owned(crate::host_call::seeds()),
        "guest_call" => owned(crate::guest_call::seeds()),
        "boot_image" => owned(crate::boot_image::seeds()),
        "device_tree" => crate::device_tree::seeds(),
        "vm_layer" => owned(crate::vm_layer::seeds()),
        _ => Vec::new(),
    }
}
