//! What the core needs from the architecture to run a vCPU: a world switch
//! that runs the guest until it traps, and a description of the trap.
//!
//! At EL2 this is the real world switch (`el2/src/arch/vcpu.rs`); in host
//! tests it is [`crate::sim::SimArch`], which executes a scripted guest and
//! translates its accesses through the guest's stage-2 as hardware would.
//!
//! A vCPU run is `vcpu_load`, then `run_vcpu` as many times as the core
//! handles traps itself, then `vcpu_put`: between load and put the
//! guest's EL1 system registers, timer and GIC CPU-interface state live in
//! the CPU (the core only reads and writes [`VcpuContext::x`], `pc` and
//! `pstate`); after `vcpu_put` the whole context is back in memory.

use ownership::GuestHandle;
use stage2::{PhysAddr, TlbMaintenance};

/// A vCPU's EL1/EL0 system registers (the arm64 world switch's list:
/// guests-at-el2.md §1.2). Field order is the layout the world switch
/// saves and restores; `mdscr` is virtual (debug is trapped, see
/// `el2/src/arch/sysreg.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct SysRegs {
    /// `SCTLR_EL1`.
    pub sctlr: u64,
    /// `CPACR_EL1`.
    pub cpacr: u64,
    /// `TTBR0_EL1`.
    pub ttbr0: u64,
    /// `TTBR1_EL1`.
    pub ttbr1: u64,
    /// `TCR_EL1`.
    pub tcr: u64,
    /// `ESR_EL1`.
    pub esr: u64,
    /// `AFSR0_EL1`.
    pub afsr0: u64,
    /// `AFSR1_EL1`.
    pub afsr1: u64,
    /// `FAR_EL1`.
    pub far: u64,
    /// `MAIR_EL1`.
    pub mair: u64,
    /// `VBAR_EL1`.
    pub vbar: u64,
    /// `CONTEXTIDR_EL1`.
    pub contextidr: u64,
    /// `AMAIR_EL1`.
    pub amair: u64,
    /// `CNTKCTL_EL1`.
    pub cntkctl: u64,
    /// `PAR_EL1`.
    pub par: u64,
    /// `TPIDR_EL1`.
    pub tpidr_el1: u64,
    /// `SP_EL1`.
    pub sp_el1: u64,
    /// `ELR_EL1`.
    pub elr_el1: u64,
    /// `SPSR_EL1`.
    pub spsr_el1: u64,
    /// `CSSELR_EL1`.
    pub csselr: u64,
    /// `TPIDR_EL0`.
    pub tpidr_el0: u64,
    /// `TPIDRRO_EL0`.
    pub tpidrro_el0: u64,
    /// `MDSCR_EL1` as the guest last wrote it (trapped, not loaded).
    pub mdscr: u64,
}

/// A vCPU's FP/SIMD registers (the guest sees neither SVE nor SME).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C, align(16))]
pub struct FpRegs {
    /// `V0`..`V31`.
    pub q: [u128; 32],
    /// `FPSR`.
    pub fpsr: u64,
    /// `FPCR`.
    pub fpcr: u64,
}

/// A vCPU's virtual timer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct TimerRegs {
    /// `CNTV_CTL_EL0`.
    pub ctl: u64,
    /// `CNTV_CVAL_EL0`.
    pub cval: u64,
    /// `CNTVOFF_EL2` while this vCPU runs.
    pub offset: u64,
}

/// A vCPU's GICv3 virtual CPU interface state kept across runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct GicCpuRegs {
    /// `ICH_VMCR_EL2` (the guest's ICV_PMR, BPRs, group enables).
    pub vmcr: u64,
    /// `ICH_AP0R0_EL2`.
    pub ap0r0: u64,
    /// `ICH_AP1R0_EL2`.
    pub ap1r0: u64,
    /// The list registers and `ICH_HCR_EL2` the core's virtual GIC fills
    /// before each entry ([`crate::hyp::vgic::Vgic::flush`]) and the world
    /// switch saves after each exit.
    pub lrs: crate::hyp::vgic::ListRegs,
}

/// A vCPU's registers: general purpose, PC and PSTATE (which the core
/// reads and writes), and the rest of the architectural state the world
/// switch keeps for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    /// Program counter.
    pub pc: u64,
    /// Saved PSTATE (SPSR_EL2 on entry).
    pub pstate: u64,
    /// `SP_EL0`.
    pub sp_el0: u64,
    /// FP/SIMD registers.
    pub fp: FpRegs,
    /// EL1/EL0 system registers.
    pub sys: SysRegs,
    /// Virtual timer.
    pub timer: TimerRegs,
    /// GIC CPU interface.
    pub gic: GicCpuRegs,
}

/// PSTATE a vCPU starts with: EL1h, D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// `SCTLR_EL1` a vCPU starts with: its RES1 bits, MMU and caches off
/// (the arm64 boot protocol).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl VcpuContext {
    /// The state of a vCPU coming out of reset at `entry` with `x0` = `arg`
    /// (everything else zero, EL1h with interrupts masked, MMU off).
    pub fn reset(entry: u64, arg: u64) -> VcpuContext {
        let mut ctx = VcpuContext {
            pc: entry,
            pstate: PSTATE_EL1H_MASKED,
            ..VcpuContext::default()
        };
        ctx.x[0] = arg;
        ctx.sys.sctlr = SCTLR_EL1_RESET;
        ctx
    }
}

/// A stage-2 abort as the syndrome (ESR_EL2, HPFAR_EL2, FAR_EL2) tells it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Abort {
    /// The faulting IPA.
    pub ipa: u64,
    /// A write.
    pub write: bool,
    /// The syndrome describes the access (ESR.ISV): `size`, `reg`, `sign`
    /// and `wide` valid.
    pub isv: bool,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// Transfer register (ESR.SRT; 31 is XZR).
    pub reg: u8,
    /// A load sign-extends the value (ESR.SSE).
    pub sign: bool,
    /// The register is 64 bits wide (ESR.SF); else a load writes `W`
    /// (zeroing bits 63:32).
    pub wide: bool,
    /// A permission fault (DFSC 0b0011xx): the page was mapped with
    /// rights the access lacks. Otherwise a translation, access-flag or
    /// address-size fault, which a concurrent mapping may already have
    /// resolved.
    pub permission: bool,
}

/// Why the guest stopped running.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trap {
    /// HVC: the call is in x0..x17; the PC is past the HVC. `imm` is its
    /// immediate (SMCCC calls use 0).
    Hvc {
        /// The HVC immediate.
        imm: u16,
    },
    /// SMC: as [`Trap::Hvc`] (the arch has already stepped the PC past
    /// the trapped SMC).
    Smc {
        /// The SMC immediate.
        imm: u16,
    },
    /// Stage-2 data abort; the PC is at the faulting instruction.
    DataAbort(Abort),
    /// Stage-2 instruction abort at `ipa`; the PC is at the instruction.
    InstructionAbort {
        /// The faulting IPA.
        ipa: u64,
        /// A permission fault (IFSC 0b0011xx), as [`Abort::permission`].
        permission: bool,
    },
    /// WFI or WFE (or a PSCI CPU_SUSPEND); the PC is past it.
    Wfi,
    /// A physical interrupt (or the end of the arch's own trap budget)
    /// took the CPU back: the host should run, and take the interrupt —
    /// unless it was the guest's own (its timer, a GIC maintenance
    /// interrupt), which the core handles.
    Interrupt,
    /// The guest wrote `ICC_SGI1R_EL1` (`value`); the PC is past it.
    Sgi {
        /// The value written.
        value: u64,
    },
    /// A trap nobody handles (an SError, a syndrome the arch cannot
    /// decode): the vCPU cannot go on. `esr` is its syndrome (the
    /// simulator's code in tests).
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

    /// Makes `vcpu` this CPU's current vCPU: saves what the host needs
    /// back and loads `ctx`'s system registers, timer and GIC state.
    fn vcpu_load(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext);

    /// Runs the loaded vCPU with `ctx`'s registers until it traps; `ctx`
    /// holds its registers on return.
    fn run_vcpu(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext) -> Trap;

    /// Undoes [`Arch::vcpu_load`]: saves the vCPU's state into `ctx` and
    /// gives the CPU back to the host.
    fn vcpu_put(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext);

    /// List registers the virtual CPU interface has (0: no virtual GIC).
    fn nr_lrs(&self) -> usize;

    /// The loaded vCPU's virtual timer output: enabled, not masked, and
    /// its compare value reached.
    fn timer_line(&mut self) -> bool;

    /// Gives `pages` pages at `pa`, now the hypervisor's, to its allocator.
    fn add_to_allocator(&mut self, pa: PhysAddr, pages: u64);
}
