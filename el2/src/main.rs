//! The `el2` binary: the image QEMU boots at EL2.
//!
//! Built for `aarch64-unknown-none` (`cargo qemu build`), it is a bare-metal
//! arm64 image with a Linux-style Image header. Today it only proves the boot
//! path: it parks secondary CPUs, sets up a stack, zeroes `.bss`, prints a
//! line on the PL011 UART saying which exception level it entered at, and
//! exits QEMU through semihosting with code 3 (entered at EL2) or 4 (entered
//! anywhere else). Booting a host kernel lands with issue 6.
//!
//! Built for any other target (as `cargo test --workspace` and
//! `cargo clippy --workspace` do on the host), it is a stub `main` that says
//! how to build the real thing and exits with status 1.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod boot;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("el2 is an aarch64-unknown-none binary; build it with `cargo qemu build`");
    std::process::exit(1);
}
