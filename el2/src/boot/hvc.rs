//! Host calls (HVC from the host): handed to the arch-neutral core's
//! dispatcher ([`el2::hyp::Hypervisor::handle_host_call`]), the same code
//! the host tests run on the simulated machine, with el2's [`El2Arch`] as
//! its architecture edge.
//!
//! The ABI is `host_interface::abi`: `x0` = function id (`0xC600_0000 + n`,
//! SVE hint bit ignored), arguments in `x1`..`x5`; on return `x0` = SMCCC
//! status, `x1` = 0 or a negative errno, `x2`..`x6` = values.

use el2::hyp::arch::{Arch, Trap, VcpuContext, VcpuRef};
use stage2::PhysAddr;
use stage2::tlb::arm::ArmTlb;

use super::entry::TrapFrame;
use super::host::Hypervisor;

/// The syndrome [`El2Arch::run_vcpu`] reports: EC 0 ("unknown"), so a
/// `VcpuRun` ends with an `Unhandled` exit naming it.
pub const ESR_NO_WORLD_SWITCH: u64 = 0;

/// el2's architecture edge for the core, on the calling CPU.
///
/// Entering a guest needs the vCPU world switch, which lands with the
/// protected-guest issue: until then [`Arch::run_vcpu`] does not enter the
/// guest and reports an unhandled trap, so `VcpuRun` returns an
/// `Unhandled` exit (and the vCPU is stopped) instead of pretending to run.
/// Everything else the core does at EL2 (VM creation, donations, shares,
/// conversions, teardown) is real.
#[derive(Debug, Default)]
pub struct El2Arch {
    tlb: ArmTlb,
}

impl Arch for El2Arch {
    type Tlb = ArmTlb;
    const INSN_SIZE: u64 = 4;

    fn tlb(&mut self) -> &mut ArmTlb {
        &mut self.tlb
    }

    fn vcpu_load(&mut self, _vcpu: VcpuRef, _ctx: &mut VcpuContext) {}

    fn vcpu_put(&mut self, _vcpu: VcpuRef, _ctx: &mut VcpuContext) {}

    fn run_vcpu(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext) -> Trap {
        log::warn!(
            "VcpuRun: guest {:#x} vCPU {} at {:#x}: the vCPU world switch is not implemented at EL2 yet",
            vcpu.handle.0,
            vcpu.index,
            ctx.pc
        );
        Trap::Other {
            esr: ESR_NO_WORLD_SWITCH,
        }
    }

    fn add_to_allocator(&mut self, pa: PhysAddr, pages: u64) {
        // SAFETY: the core calls this only after `host_donate_hyp` made the
        // pages the hypervisor's (absent from the host stage-2, identity
        // mapped at EL2, used by nothing else), for good.
        unsafe { super::mem::add_to_heap(pa.get(), pages * stage2::PAGE_SIZE) };
    }
}

/// Handles one host call in `frame` through the core dispatcher.
pub fn host_hvc(hyp: &Hypervisor, frame: &mut TrapFrame) {
    hyp.core
        .handle_host_call(&mut El2Arch::default(), &mut frame.x);
}
