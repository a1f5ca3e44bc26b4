//! The arch-neutral core of the EL2 hypervisor.
//!
//! This library holds the parts of the hypervisor that do not depend on how
//! it was booted: hypercall dispatch, memory ownership checks and the state
//! it keeps for the host and its guests. It is `no_std` and builds for both
//! `aarch64-unknown-none` (linked into the `el2` binary) and the host (so its
//! logic can be unit-tested with `cargo test`).
//!
//! For now it is deliberately tiny: hypercall handling lands with the
//! hypervisor-core issue. The `el2` binary in this package is the boot stub
//! that QEMU starts at EL2.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

/// Version of the hypervisor, as `(major, minor)`.
///
/// Printed by the `el2` binary when it starts; the hypercall ABI will report
/// it to the host once call handling exists.
pub const HYP_VERSION: (u16, u16) = (0, 1);

#[cfg(test)]
mod tests {
    use super::HYP_VERSION;

    #[test]
    fn version_is_pre_release() {
        assert_eq!(HYP_VERSION.0, 0, "no stable ABI yet");
    }
}
