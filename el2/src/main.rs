//! The `el2` binary: the hypervisor image QEMU boots at EL2.
//!
//! Built for `aarch64-unknown-none` (`cargo qemu build`), it is a bare-metal
//! arm64 image with a Linux-style Image header, so it boots both as an ELF
//! (QEMU loads it at its link address, 0x4020_0000, and puts the device tree
//! at the start of RAM) and as a raw `Image` (QEMU puts it at RAM + 2 MiB and
//! passes the device tree in `x0`). It then:
//!
//! 1. turns its own stage-1 MMU and caches on (identity map) before any lock
//!    or atomic is used;
//! 2. reads the device tree (RAM, CPUs, GIC, UART, PSCI method);
//! 3. carves its memory from the top of RAM (heap, page tables) and, with
//!    its own image, makes it hypervisor-owned in the ownership table;
//! 4. builds the host's stage-2 (identity map of RAM and MMIO, largest
//!    blocks, hypervisor memory absent) and a rewritten device tree for the
//!    host that marks the hypervisor memory `no-map`;
//! 5. loads the host the runner describes (the built-in test host, a raw
//!    arm64 Image with an optional initrd, or a Linux kernel from an
//!    Android boot image v0–v4 with an optional vendor boot image: see
//!    `boot/hostimg.rs`), enters it at EL1 under stage-2, and from then on
//!    handles its traps: host calls (HVC), PSCI (trapped SMC, CPU_ON
//!    intercepted) and stage-2 faults (an abort injected into the host).
//!
//! See `boot/mod.rs` for the boot sequence and the protocol with the
//! runner.
//!
//! Built for any other target (as `cargo test --workspace` and
//! `cargo clippy --workspace` do on the host), it is a stub `main` that says
//! how to build the real thing and exits with status 1.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("el2 is an aarch64-unknown-none binary; build it with `cargo qemu build`");
    std::process::exit(1);
}
