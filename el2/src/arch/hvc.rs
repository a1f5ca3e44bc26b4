//! Host calls (HVC from the host): handed to the arch-neutral core's
//! dispatcher ([`el2::hyp::Hypervisor::handle_host_call`]), the same code
//! the host tests run on the simulated machine, with el2's [`El2Arch`] as
//! its architecture edge.
//!
//! The ABI is `host_interface::abi`: `x0` = function id (`0xC600_0000 + n`,
//! SVE hint bit ignored), arguments in `x1`..`x5`; on return `x0` = SMCCC
//! status, `x1` = 0 or a negative errno, `x2`..`x6` = values.

use super::entry::TrapFrame;
use super::host::Hypervisor;
use super::vcpu::El2Arch;

/// Handles one host call in `frame` through the core dispatcher.
pub fn host_hvc(hyp: &Hypervisor, frame: &mut TrapFrame) {
    hyp.core
        .handle_host_call(&mut El2Arch::default(), &mut frame.x);
}
