//! The hypervisor's global state and entering the host at EL1 under
//! stage-2, on the boot CPU and on secondaries.
//!
//! Per-CPU EL2 configuration for running the host (feasibility.md §7, what
//! a Linux host needs):
//!
//! - `HCR_EL2` = RW | TSC | VM (+ API | APK with pointer authentication):
//!   EL1 is AArch64, SMCs trap to el2 (PSCI relay), stage-2 on; IMO/FMO/AMO
//!   clear, so physical interrupts and SErrors go straight to EL1 (no vGIC).
//! - `VTCR_EL2`/`VTTBR_EL2` = the host stage-2 (VMID 0, IPA = the CPU's PA
//!   range), then `tlbi vmalls12e1; dsb nsh; isb` (pkvm.md §5.1).
//! - `CNTHCTL_EL2` = EL1PCTEN | EL1PCEN, `CNTVOFF_EL2` = 0; `VPIDR_EL2` /
//!   `VMPIDR_EL2` = the real MIDR/MPIDR; `HSTR_EL2` = 0; `MDCR_EL2.HPMN` =
//!   `PMCR_EL0.N`, with HPMD (PMUv3p1) and HCCD (PMUv3p5) so the host's
//!   counters do not count el2; `CPTR_EL2` = 0x22ff (no FP/SVE/SME traps; SVE and SME
//!   vector lengths at their maximum when present); `ICC_SRE_EL2` = SRE |
//!   Enable with a GICv3 system-register interface; with FEAT_HCX,
//!   `HCRX_EL2` enables the advertised EL1 features (MOPS, TCR2, SCTLR2,
//!   GCS, FPMR) and traps nothing.
//! - EL1 enters with `SCTLR_EL1` = its RES1 value (MMU and caches off) and
//!   `SPSR_EL2` = EL1h with D, A, I, F masked.

use aarch64_cpu::registers::{
    CNTHCTL_EL2, CNTVOFF_EL2, HCR_EL2, MIDR_EL1, MPIDR_EL1, Readable, SCTLR_EL1, VMPIDR_EL2,
    VTCR_EL2, VTTBR_EL2, Writeable,
};
use core::arch::asm;

use super::entry::{STACKS, TrapFrame, el2_enter_lower};
use super::mem::{HeapPool, HypBitmap, IdentityMem};
use super::sysreg::{self, mrs, msr};

/// The arch-neutral core (host call dispatch, VMs, vCPUs) el2 runs.
pub type Core = el2::hyp::Hypervisor<IdentityMem, HeapPool, HypBitmap>;

/// Everything the trap handlers need, set once at boot.
pub struct Hypervisor {
    /// The core: page ownership, the host stage-2, VMs and host calls.
    pub core: Core,
    /// `VTCR_EL2` of the host stage-2.
    pub vtcr: u64,
    /// `VTTBR_EL2` of the host stage-2 (VMID 0).
    pub vttbr: u64,
    /// `HCR_EL2` while the host runs.
    pub hcr: u64,
    /// A GICv3 with its system-register interface: el2 enables it for
    /// EL1 and switches a guest's virtual CPU interface state.
    pub gicv3: bool,
}

/// The hypervisor state.
pub static HYP: spin::Once<Hypervisor> = spin::Once::new();

const HCR_VM: u64 = 1 << 0;
const HCR_TSC: u64 = 1 << 19;
const HCR_RW: u64 = 1 << 31;
const HCR_APK: u64 = 1 << 40;
const HCR_API: u64 = 1 << 41;

/// `HCR_EL2` for the host on this CPU model.
pub fn host_hcr() -> u64 {
    let mut hcr = HCR_RW | HCR_TSC | HCR_VM;
    if sysreg::has_pauth() {
        hcr |= HCR_API | HCR_APK;
    }
    hcr
}

/// `SCTLR_EL1` RES1 bits (11, 20, 22, 23, 28, 29), MMU and caches off.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// `SPSR_EL2` for entering EL1h with D, A, I, F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// `MDCR_EL2.HPMD`: event counters do not count at EL2.
const MDCR_HPMD: u64 = 1 << 17;
/// `MDCR_EL2.HCCD`: the cycle counter does not count at EL2.
const MDCR_HCCD: u64 = 1 << 23;
/// `CPTR_EL2`: RES1 bits, no FP (TFP), SVE (TZ) or SME (TSM) trap.
const CPTR_EL2_HOST: u64 = 0x22ff;

/// `MDCR_EL2` for the host: `HPMN` = `PMCR_EL0.N` (every counter is
/// EL1's), with the host's counters not counting at EL2.
pub fn host_mdcr() -> u64 {
    // PMCR_EL0 exists only with a PMU (ID_AA64DFR0_EL1.PMUVer not 0 or 0xf).
    let pmuver = (mrs!("id_aa64dfr0_el1") >> 8) & 0xf;
    let has_pmu = pmuver != 0 && pmuver != 0xf;
    let pmcr_n = if has_pmu {
        (mrs!("pmcr_el0") >> 11) & 0x1f
    } else {
        0
    };
    // The host's event counters do not count at EL2 (HPMD, FEAT_PMUv3p1:
    // PMUVer >= 4), nor its cycle counter (HCCD, FEAT_PMUv3p5: PMUVer >= 6);
    // RES0 without them.
    let mut mdcr = pmcr_n;
    if has_pmu && pmuver >= 4 {
        mdcr |= MDCR_HPMD;
    }
    if has_pmu && pmuver >= 6 {
        mdcr |= MDCR_HCCD;
    }
    mdcr
}

/// Puts this CPU's host trap controls and stage-2 back after a vCPU ran:
/// `HCR_EL2`, `MDCR_EL2`, `CPTR_EL2`, `HCRX_EL2`, `VMPIDR_EL2`, `VTCR_EL2`
/// and `VTTBR_EL2` (VMID 0: no TLB invalidation is needed, guests have
/// their own VMIDs).
pub fn activate_host_traps(hyp: &Hypervisor) {
    // SAFETY: the host's own controls and stage-2, as `configure_cpu`
    // first set them; el2's EL2 regime does not depend on them.
    unsafe {
        msr!("mdcr_el2", host_mdcr());
        msr!("cptr_el2", CPTR_EL2_HOST);
    }
    if sysreg::has_hcx() {
        // SAFETY: as above; HCRX_EL2 exists (FEAT_HCX).
        unsafe { msr!("s3_4_c1_c2_2", sysreg::host_hcrx()) };
    }
    VMPIDR_EL2.set(MPIDR_EL1.get());
    VTCR_EL2.set(hyp.vtcr);
    VTTBR_EL2.set(hyp.vttbr);
    HCR_EL2.set(hyp.hcr);
}

/// Programs this CPU's EL2 controls for the host and turns its stage-2 on.
fn configure_cpu(hyp: &Hypervisor) {
    CNTHCTL_EL2.set(0b11);
    CNTVOFF_EL2.set(0);
    VMPIDR_EL2.set(MPIDR_EL1.get());
    // SAFETY: these EL2 controls only affect how EL1/EL0 run (identity
    // CPU ids, no coprocessor or debug traps, the PMU counters EL1 may
    // use, the EL2 timer off); nothing at EL2 depends on them.
    unsafe {
        msr!("vpidr_el2", MIDR_EL1.get());
        msr!("hstr_el2", 0u64);
        msr!("mdcr_el2", host_mdcr());
        msr!("cnthp_ctl_el2", 0u64);
        msr!("cptr_el2", CPTR_EL2_HOST);
    }
    if sysreg::has_sve() {
        // SAFETY: ZCR_EL2 exists (SVE); LEN = max only caps EL1's vector
        // length at the hardware's.
        unsafe { msr!("s3_4_c1_c2_0", 0x1ffu64) };
    }
    if sysreg::has_sme() {
        // SAFETY: SMCR_EL2 exists (SME); as above for streaming mode.
        unsafe { msr!("s3_4_c1_c2_6", 0x1ffu64) };
    }
    if hyp.gicv3 {
        // SAFETY: ICC_SRE_EL2 exists (GICv3 system registers, checked at
        // boot); SRE | Enable lets EL1 use the system-register interface.
        // ICH_HCR_EL2 = 0: the virtual CPU interface is off for the host.
        unsafe {
            msr!("icc_sre_el2", 0b1001u64);
            msr!("ich_hcr_el2", 0u64);
        }
    }
    if sysreg::has_hcx() {
        // SAFETY: HCRX_EL2 exists (FEAT_HCX); its reset value is UNKNOWN,
        // so set it: the EL1 features the CPU advertises enabled, no traps.
        unsafe { msr!("s3_4_c1_c2_2", sysreg::host_hcrx()) };
    }
    SCTLR_EL1.set(SCTLR_EL1_RESET);

    // Stage-2 (pkvm.md §5.1): tables visible, VTCR/VTTBR, HCR.VM, flush.
    // SAFETY: barriers only.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    VTCR_EL2.set(hyp.vtcr);
    VTTBR_EL2.set(hyp.vttbr);
    HCR_EL2.set(hyp.hcr);
    // SAFETY: with HCR_EL2.VM now set for the host's VMID, drop any stale
    // stage-1/2 translation of this VMID on this CPU; barriers only
    // otherwise.
    unsafe {
        asm!(
            "isb",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Enters the host at EL1h at `entry` with `x0` = `arg` (other registers
/// zero) on CPU `cpu`, after configuring this CPU for it.
pub fn enter(hyp: &Hypervisor, cpu: usize, entry: u64, arg: u64) -> ! {
    configure_cpu(hyp);
    let mut frame = TrapFrame::default();
    frame.elr = entry;
    frame.spsr = SPSR_EL1H_MASKED;
    frame.x[0] = arg;
    // SAFETY: `frame` is a valid TrapFrame for the host's first instruction;
    // the stack top is this CPU's own EL2 stack, which the host's traps
    // reuse from its top (nothing below is needed any more: this function
    // does not return).
    unsafe { el2_enter_lower(&frame, STACKS.top(cpu)) }
}
