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
//! **SMP stress mode**: `testhost.stress` (or `testhost.stress=<ms>`; with
//! `testhost.seed=<n>` to repeat a run's pseudo-random sequences) runs,
//! instead of the suite, every CPU of the device tree against el2 at once
//! on a shared pool of pages and two VMs (see `host/stress.rs`), then
//! focused two-CPU races (`host/focus.rs`) and the CPU_OFF/CPU_ON race
//! (`host/race.rs`), with the same closing summary line.
//!
//! **VMM mode**: when the runner hands it a guest (`cargo qemu run
//! --guest`: a guest descriptor at `host_interface::guestdesc::DESC_ADDR`),
//! it runs that guest as a protected VM with the VMM library
//! (`host_interface::vmm`) over real HVCs instead of its suite, prints the
//! guest's console as `guest: <line>` and the VMM's `vmm: ...` lines, and
//! powers off with the VMM's status: 0 the guest powered off (no failing
//! check reported, teardown verified), 8 the guest reported failing
//! checks, 9 it reset, 10 it crashed or turned every vCPU off, 11 a VMM
//! error or a failed teardown check (see `host/vmm.rs`).
//!
//! Built for any other target (as `cargo test --workspace` and
//! `cargo clippy --workspace` do on the host), it is a stub `main` that
//! exits with status 1.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod host;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("testhost is an aarch64-unknown-none EL1 image; `cargo qemu run` boots it under el2");
    std::process::exit(1);
}
