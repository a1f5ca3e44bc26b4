//! System-register helpers the `aarch64-cpu` crate does not provide (or
//! that are clearer as raw values), cache maintenance, and CPU feature
//! checks.

use aarch64_cpu::registers::{
    CNTFRQ_EL0, CNTPCT_EL0, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, ID_AA64PFR0_EL1, Readable,
};
use core::arch::asm;

/// Reads a system register by name (`mrs`).
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading this system register has no side effect and is
        // permitted at EL2, where this code runs.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}

/// Writes a system register by name (`msr`).
///
/// The caller's `unsafe` block states why the write is sound.
macro_rules! msr {
    ($reg:literal, $v:expr) => {
        core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) $v as u64,
            options(nostack, preserves_flags))
    };
}

pub(crate) use {mrs, msr};

/// `ID_AA64MMFR0_EL1.PARange` (bits 3:0).
pub fn pa_range_field() -> u64 {
    ID_AA64MMFR0_EL1.get() & 0xf
}

/// Whether the CPU has the GICv3 system-register interface
/// (`ID_AA64PFR0_EL1.GIC` != 0).
pub fn has_gicv3_sysregs() -> bool {
    (ID_AA64PFR0_EL1.get() >> 24) & 0xf != 0
}

/// Whether the CPU has SVE (`ID_AA64PFR0_EL1.SVE` != 0).
pub fn has_sve() -> bool {
    (ID_AA64PFR0_EL1.get() >> 32) & 0xf != 0
}

/// Whether the CPU has SME (`ID_AA64PFR1_EL1.SME` != 0).
pub fn has_sme() -> bool {
    (mrs!("id_aa64pfr1_el1") >> 24) & 0xf != 0
}

/// Whether the CPU has PSTATE.SSBS (`ID_AA64PFR1_EL1.SSBS` != 0).
pub fn has_ssbs() -> bool {
    (mrs!("id_aa64pfr1_el1") >> 4) & 0xf != 0
}

/// Whether the CPU has FEAT_MTE2 (`ID_AA64PFR1_EL1.MTE` >= 2): taking an
/// exception to AArch64 then sets PSTATE.TCO.
pub fn has_mte2() -> bool {
    (mrs!("id_aa64pfr1_el1") >> 8) & 0xf >= 2
}

/// Whether the CPU has PSTATE.DIT (`ID_AA64PFR0_EL1.DIT` != 0).
pub fn has_dit() -> bool {
    (ID_AA64PFR0_EL1.get() >> 48) & 0xf != 0
}

/// Whether the CPU has PSTATE.PAN (`ID_AA64MMFR1_EL1.PAN` != 0).
pub fn has_pan() -> bool {
    (ID_AA64MMFR1_EL1.get() >> 20) & 0xf != 0
}

/// Whether the CPU has pointer authentication (`ID_AA64ISAR1_EL1` APA,
/// API, GPA, GPI or `ID_AA64ISAR2_EL1` APA3, GPA3 non-zero).
pub fn has_pauth() -> bool {
    let isar1 = mrs!("id_aa64isar1_el1");
    let isar2 = mrs!("id_aa64isar2_el1");
    let f = |v: u64, shift: u32| (v >> shift) & 0xf != 0;
    f(isar1, 4) || f(isar1, 8) || f(isar1, 24) || f(isar1, 28) || f(isar2, 8) || f(isar2, 12)
}

/// `ID_AA64MMFR1_EL1.HCX` (bits 43:40) != 0: `HCRX_EL2` exists.
pub fn has_hcx() -> bool {
    (ID_AA64MMFR1_EL1.get() >> 40) & 0xf != 0
}

/// `HCRX_EL2.MSCEn`: EL1/EL0 may run the FEAT_MOPS memcpy/memset
/// instructions (they UNDEF otherwise).
const HCRX_MSCEN: u64 = 1 << 11;
/// `HCRX_EL2.TCR2En`: `TCR2_EL1` takes effect and EL1 may access it.
const HCRX_TCR2EN: u64 = 1 << 14;
/// `HCRX_EL2.SCTLR2En`: `SCTLR2_EL1` takes effect and EL1 may access it.
const HCRX_SCTLR2EN: u64 = 1 << 15;
/// `HCRX_EL2.GCSEn`: EL1/EL0 may use the guarded control stack.
const HCRX_GCSEN: u64 = 1 << 22;
/// `HCRX_EL2.EnFPM`: `FPMR` is accessible and takes effect.
const HCRX_ENFPM: u64 = 1 << 23;

/// `HCRX_EL2` for the host, from the features the CPU reports (only
/// meaningful when [`has_hcx`]).
///
/// The host owns its EL1 state, so every EL1 feature the ID registers
/// advertise is enabled, the bits Linux's own EL2 setup sets: a Linux host
/// that sees a feature in its ID registers uses it, and with the enable
/// clear its accesses would trap here and be answered with UNDEF. Every
/// trap and NMI-virtualisation bit stays clear; bits for absent features
/// are RES0 and stay clear too.
pub fn host_hcrx() -> u64 {
    let field = |v: u64, shift: u32| (v >> shift) & 0xf != 0;
    // ID_AA64MMFR3_EL1 and ID_AA64PFR2_EL1 by encoding: older assemblers
    // lack the names; reserved ID registers read as zero.
    let mmfr3 = mrs!("s3_0_c0_c7_3");
    let pfr2 = mrs!("s3_0_c0_c4_2");
    let mut hcrx = 0;
    if field(mrs!("id_aa64isar2_el1"), 16) {
        hcrx |= HCRX_MSCEN;
    }
    if field(mmfr3, 0) {
        hcrx |= HCRX_TCR2EN;
    }
    if field(mmfr3, 4) {
        hcrx |= HCRX_SCTLR2EN;
    }
    if field(mrs!("id_aa64pfr1_el1"), 44) {
        hcrx |= HCRX_GCSEN;
    }
    if field(pfr2, 32) {
        hcrx |= HCRX_ENFPM;
    }
    hcrx
}

/// The physical counter.
pub fn counter() -> u64 {
    CNTPCT_EL0.get()
}

/// The counter frequency in Hz (at least 1).
pub fn counter_hz() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// `ticks` of the counter in microseconds.
pub fn ticks_to_us(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(counter_hz())) as u64
}

/// The data-cache line size in bytes (`CTR_EL0.DminLine`).
fn dcache_line() -> u64 {
    4 << ((mrs!("ctr_el0") >> 16) & 0xf)
}

/// Cleans and invalidates `[start, start + len)` to the point of
/// coherency (`dc civac`), then `dsb sy`.
pub fn clean_inval_to_poc(start: u64, len: u64) {
    let line = dcache_line();
    let end = start.saturating_add(len);
    let mut a = start & !(line - 1);
    while a < end {
        // SAFETY: `dc civac` writes dirty lines back and drops them; the
        // memory keeps its contents, so no Rust-visible state changes. The
        // address is mapped (callers pass memory they can access).
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates every instruction cache of the inner shareable domain to
/// the point of unification (after el2 wrote code a CPU will run).
pub fn invalidate_icache() {
    // SAFETY: invalidating instruction caches and barriers change no
    // memory; stale instructions are only dropped.
    unsafe {
        asm!(
            "dsb ish",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// The index of the CPU running this code (`TPIDR_EL2`, set at entry).
pub fn cpu_index() -> usize {
    mrs!("tpidr_el2") as usize
}

/// Records `index` as this CPU's index in `TPIDR_EL2`.
pub fn set_cpu_index(index: usize) {
    // SAFETY: TPIDR_EL2 is a scratch register only this code uses.
    unsafe { msr!("tpidr_el2", index) };
}
