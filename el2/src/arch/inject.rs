//! Exceptions el2 makes a lower exception level take, and the abort
//! syndrome helpers both the host's and the guests' fault paths use.
//!
//! Injection works on whatever EL1 system registers are live on this CPU:
//! the host's while el2 handles a host trap, a guest's between
//! `vcpu_load` and `vcpu_put`. The interrupted PC and PSTATE are passed in
//! (a trap frame's `ELR_EL2`/`SPSR_EL2`, or a vCPU context's `pc` and
//! `pstate`) and redirected to the right `VBAR_EL1` vector, as an exception
//! taken to EL1 would (pKVM's `inject_undef64` / `host_inject_abort`,
//! guests-at-el2.md §3.4):
//!
//! - `ESR_EL1` = the syndrome, `ELR_EL1` = the interrupted PC, `SPSR_EL1` =
//!   the interrupted PSTATE;
//! - the PC becomes `VBAR_EL1` + 0x200 (from EL1h), 0x000 (EL1t), 0x400
//!   (EL0, AArch64) or 0x600 (AArch32), the PSTATE EL1h with D, A, I, F
//!   masked, NZCV and DIT kept (DIT is bit 21 of an AArch32 SPSR), PAN set
//!   when `SCTLR_EL1.SPAN` is 0, SSBS from `SCTLR_EL1.DSSBS`, TCO set with
//!   FEAT_MTE2.

use aarch64_cpu::registers::{
    ELR_EL1, ESR_EL1, FAR_EL1, HPFAR_EL2, PAR_EL1, Readable, SCTLR_EL1, SPSR_EL1, VBAR_EL1,
    Writeable,
};
use core::arch::asm;

use super::sysreg;

/// Instruction abort from a lower EL.
pub const EC_IABT_LOW: u64 = 0x20;
/// Instruction abort from the current EL.
pub const EC_IABT_CUR: u64 = 0x21;
/// Data abort from a lower EL.
pub const EC_DABT_LOW: u64 = 0x24;
/// Data abort from the current EL.
pub const EC_DABT_CUR: u64 = 0x25;
/// ESR S1PTW: the fault was on a stage-1 table walk (in an injected
/// `ESR_EL1`, pKVM's marker of a hypervisor abort).
pub const ESR_S1PTW: u64 = 1 << 7;
/// ESR IL: a 32-bit instruction.
pub const ESR_IL: u64 = 1 << 25;
/// ESR FnV: FAR not valid.
pub const ESR_FNV: u64 = 1 << 10;
/// xFSC bits.
pub const FSC_MASK: u64 = 0x3f;
/// Fault status: synchronous external abort, not on a table walk.
pub const FSC_SEA: u64 = 0x10;

/// Fault status class (xFSC bits 5:2): 0 address size, 1 translation, 2
/// access flag, 3 permission; above that, not a stage-2 fault.
pub fn fsc_class(esr: u64) -> u64 {
    (esr & FSC_MASK) >> 2
}

/// The faulting IPA of a stage-2 abort taken from the EL1&0 regime live
/// on this CPU, if it can be found; `None` means "retry the access".
///
/// `HPFAR_EL2` holds it for translation, access-flag and address-size
/// faults and for faults on a stage-1 walk; for a permission fault it may
/// be invalid, so `FAR_EL2` is translated with the live stage-1 (`AT
/// S1E1R`), keeping `PAR_EL1` as it was. If that fails the stage-1 changed
/// under the access (another CPU), and retrying is right.
pub fn fault_ipa(esr: u64, far: u64) -> Option<u64> {
    let class = fsc_class(esr);
    let s1ptw = esr & ESR_S1PTW != 0;
    if class == 0b0011 && !s1ptw {
        let saved_par = PAR_EL1.get();
        // SAFETY: AT S1E1R only translates (with the EL1 stage-1 registers
        // live on this CPU, those of the interrupted host or guest) and
        // writes PAR_EL1, which is restored right after.
        unsafe { asm!("at s1e1r, {}", "isb", in(reg) far, options(nostack, preserves_flags)) };
        let par = PAR_EL1.get();
        PAR_EL1.set(saved_par);
        if par & 1 != 0 {
            return None;
        }
        return Some((par & 0x000f_ffff_ffff_f000) | (far & 0xfff));
    }
    let hpfar = HPFAR_EL2.get();
    Some((((hpfar >> 4) & ((1 << 44) - 1)) << 12) | (far & 0xfff))
}

/// Makes the interrupted context (`elr`, `spsr`) take an UNDEFINED
/// instruction exception at the instruction it was at. `esr` is the trap's
/// syndrome (only its IL bit is kept).
pub fn undef(elr: &mut u64, spsr: &mut u64, esr: u64) {
    enter_el1_vector(elr, spsr, esr & ESR_IL);
}

/// Makes the interrupted context take a synchronous external abort on
/// `far`: `ESR_EL1` is built from the trap's syndrome `esr` (an
/// instruction or data abort) with the EC repainted to the current-EL
/// abort when the access came from EL1, the fault status replaced by
/// *synchronous external abort*, FnV clear and S1PTW set (pKVM's marker of
/// an abort the hypervisor made).
pub fn external_abort(elr: &mut u64, spsr: &mut u64, esr: u64, far: u64) {
    let mode = *spsr & 0x1f;
    let from_el1 = mode & 0b1100 == 0b0100 && mode & 0x10 == 0;
    let ec = (esr >> 26) & 0x3f;
    let ec = match (ec, from_el1) {
        (EC_DABT_LOW, true) => EC_DABT_CUR,
        (EC_IABT_LOW, true) => EC_IABT_CUR,
        (ec, _) => ec,
    };
    let new_esr = (esr & !(0x3f << 26) & !FSC_MASK & !ESR_FNV) | (ec << 26) | FSC_SEA | ESR_S1PTW;
    FAR_EL1.set(far);
    enter_el1_vector(elr, spsr, new_esr);
}

/// Makes the interrupted context take a synchronous exception with
/// syndrome `esr` to EL1 (module docs). `FAR_EL1` is the caller's business.
pub fn enter_el1_vector(elr: &mut u64, spsr: &mut u64, esr: u64) {
    let old = *spsr;
    let mode = old & 0x1f;
    let aarch32 = mode & 0x10 != 0;
    let offset = if aarch32 {
        0x600 // AArch32 lower EL
    } else {
        match mode {
            0b0101 => 0x200, // EL1h
            0b0100 => 0x000, // EL1t
            _ => 0x400,      // EL0t (AArch64)
        }
    };
    let sctlr = SCTLR_EL1.get();
    let mut new_spsr = (old & 0xf000_0000) | 0x3c0 | 0b0101;
    if sysreg::has_dit() {
        // PSTATE.DIT is unchanged; an AArch32 SPSR keeps it in bit 21.
        let dit = if aarch32 { old >> 21 } else { old >> 24 } & 1;
        new_spsr |= dit << 24;
    }
    if sysreg::has_mte2() {
        // PSTATE.TCO is set on any exception to AArch64 (FEAT_MTE2).
        new_spsr |= 1 << 25;
    }
    if sysreg::has_pan() {
        let span = sctlr & (1 << 23) != 0;
        if !span {
            new_spsr |= 1 << 22;
        } else {
            new_spsr |= old & (1 << 22);
        }
    }
    if sysreg::has_ssbs() && sctlr & (1 << 44) != 0 {
        new_spsr |= 1 << 12;
    }
    ESR_EL1.set(esr);
    ELR_EL1.set(*elr);
    SPSR_EL1.set(old);
    *elr = VBAR_EL1.get().wrapping_add(offset);
    *spsr = new_spsr;
}
