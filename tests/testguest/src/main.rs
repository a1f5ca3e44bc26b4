//! `testguest`: the guest conformance suite.
//!
//! A small EL1 program, built as a raw arm64 `Image` for
//! `aarch64-unknown-none` (linked at guest IPA 0x8000_0000,
//! `host_interface::platform::RAM_BASE`, with `text_offset` 0), that a VMM
//! runs as a protected guest under el2, following the Linux arm64 boot
//! protocol (`x0` = the device tree's IPA, MMU off, EL1h). It checks the
//! guest ABI of DESIGN §4 through real HVCs, SMCs, MMIO accesses and
//! memory accesses, and what the host can and cannot do with the guest's
//! memory through the VMM's test device
//! (`host_interface::platform::testdev`); see `guest/checks.rs` for the
//! list. Output, on the PL011:
//!
//! ```text
//! testguest: started on vCPU 0 at EL1, RAM 0x80000000..0x88000000, 2 vCPU(s), device tree at 0x87e00000
//! testguest: ok 1 - PSCI_VERSION -> 1.1 (0x10001)
//! testguest: FAIL <n> - <description>: <details>
//! testguest: skip <n> - <description>: <why>
//! testguest: <P> passed, <F> failed
//! ```
//!
//! then `REPORT(P, F)` to the test device and PSCI `SYSTEM_OFF` over HVC.
//!
//! `/chosen/bootargs` words: `testguest.fail` adds one check that always
//! fails (to prove failures are detected); `testguest.bench` runs the
//! benchmark (`guest/bench.rs`) instead of the checks.
//!
//! Built for any other target (as `cargo test --workspace` and
//! `cargo clippy --workspace` do on the host), it is a stub `main` that
//! exits with status 1.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "testguest is an aarch64-unknown-none guest Image; run it with `cargo qemu run --guest testguest`"
    );
    std::process::exit(1);
}
