//! What the core needs from the architecture to run a vCPU: a world switch
//! that runs the guest until it traps, and a description of the trap.
//!
//! At EL2 this is the real world switch (with the guest issue); in host
//! tests it is [`crate::sim::SimArch`], which executes a scripted guest and
//! translates its accesses through the guest's stage-2 as hardware would.

use ownership::GuestHandle;
use stage2::{PhysAddr, TlbMaintenance};

/// A vCPU's general-purpose registers, PC and PSTATE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    /// Program counter.
    pub pc: u64,
    /// Saved PSTATE (SPSR_EL2 on entry).
    pub pstate: u64,
}

/// PSTATE a vCPU starts with: EL1h, D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// A stage-2 abort as the syndrome (ESR_EL2, HPFAR_EL2, FAR_EL2) tells it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Abort {
    /// The faulting IPA.
    pub ipa: u64,
    /// A write.
    pub write: bool,
    /// The syndrome describes the access (ESR.ISV): `size` and `reg` valid.
    pub isv: bool,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// Transfer register (ESR.SRT).
    pub reg: u8,
}

/// Why the guest stopped running.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trap {
    /// HVC: the call is in x0..x17; the PC is past the HVC.
    Hvc,
    /// Stage-2 data abort; the PC is at the faulting instruction.
    DataAbort(Abort),
    /// Stage-2 instruction abort at `ipa`; the PC is at the instruction.
    InstructionAbort {
        /// The faulting IPA.
        ipa: u64,
    },
    /// WFI/WFE; the PC is past it.
    Wfi,
    /// Anything else, with its syndrome.
    Other {
        /// ESR_EL2 (or the simulator's code).
        esr: u64,
    },
}

/// Which vCPU to run and the stage-2 it runs under.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuRef {
    /// The guest.
    pub handle: GuestHandle,
    /// vCPU index.
    pub index: usize,
    /// `VTTBR_EL2` of the guest's stage-2.
    pub vttbr: u64,
    /// `VTCR_EL2` of the guest's stage-2.
    pub vtcr: u64,
}

/// The architecture edge of the core, one per CPU.
pub trait Arch {
    /// TLB maintenance on this CPU.
    type Tlb: TlbMaintenance;

    /// Bytes of one instruction: the PC step to skip or retry an HVC or an
    /// emulated access (4 on arm64).
    const INSN_SIZE: u64;

    /// This CPU's TLB maintenance.
    fn tlb(&mut self) -> &mut Self::Tlb;

    /// Runs `vcpu` with `ctx` until it traps; `ctx` holds its registers on
    /// return.
    fn run_vcpu(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext) -> Trap;

    /// Gives `pages` pages at `pa`, now the hypervisor's, to its allocator.
    fn add_to_allocator(&mut self, pa: PhysAddr, pages: u64);
}
