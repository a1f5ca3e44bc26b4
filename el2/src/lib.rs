//! The arch-neutral core of the EL2 hypervisor.
//!
//! - [`hyp`]: host call dispatch, guest call handling, VM and vCPU
//!   lifecycle and exits, over the [`ownership`] state, with the
//!   architecture behind [`hyp::arch::Arch`].
//! - [`fdt`]: reading, validating and rewriting the device tree el2 is
//!   booted with (the machine's RAM, CPUs, GIC, console; the host's copy).
//! - [`options`]: el2's own boot options, the `el2.` words of its command
//!   line (taken out before the host sees it).
//! - [`bootimg`]: Android boot images (v0–v4, vendor boot v3/v4): the
//!   parser and load planner the hypervisor uses for a Linux host, and the
//!   packer (feature `pack`).
//! - `sim` (feature `sim`): a simulated machine for host tests — simulated
//!   RAM, a scripted guest whose loads and stores are translated through
//!   its stage-2 as hardware would, and an in-process host call conduit.
//!
//! It is `no_std` and builds for both `aarch64-unknown-none` (linked into
//! the `el2` binary) and the host, where `cargo test` runs it.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(feature = "sim")]
extern crate std;

pub mod bootimg;
pub mod fdt;
pub mod hyp;
pub mod options;
#[cfg(feature = "sim")]
pub mod sim;

/// Version of the hypervisor, as `(major, minor)`.
///
/// Printed by the `el2` binary when it starts.
pub const HYP_VERSION: (u16, u16) = (0, 1);

#[cfg(test)]
mod tests {
    use super::HYP_VERSION;

    #[test]
    fn version_is_pre_release() {
        assert_eq!(HYP_VERSION.0, 0, "no stable ABI yet");
    }
}
