//! `testhost`: the built-in test host el2 boots by default.
//!
//! A small EL1 program, built as a raw arm64 `Image` (linked at
//! 0x4400_0000, where the `cargo qemu` runner loads it and el2 enters it).
//! It runs a host-side conformance suite against the real hypervisor
//! through real HVCs, SMCs and memory accesses (see `host/checks.rs` for
//! the list), prints one line per check and a closing
//! `testhost: N passed, M failed, K skipped`, and ends the run through el2
//! with PSCI `SYSTEM_OFF`, passing its exit status in `x1` (0: all passed,
//! 1: a check failed); el2 turns a non-zero status into QEMU's exit status.
//!
//! `testhost.fail` on the kernel command line (`/chosen/bootargs`, QEMU's
//! `-append`) adds one check that always fails, to prove failures are
//! detected.
//!
//! Built for any other target (as `cargo test --workspace` and
//! `cargo clippy --workspace` do on the host), it is a stub `main` that
//! exits with status 1.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod host;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("testhost is an aarch64-unknown-none EL1 image; `cargo qemu run` boots it under el2");
    std::process::exit(1);
}
