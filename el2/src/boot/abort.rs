//! Host stage-2 faults: an access the host's stage-2 does not allow becomes
//! a synchronous external abort injected into the host (pkvm.md §7), and
//! the host keeps running.
//!
//! 1. The faulting IPA comes from `HPFAR_EL2` (translation, access-flag and
//!    address-size faults, and faults on a stage-1 table walk), or from
//!    `AT S1E1R` on `FAR_EL2` for permission faults (where `HPFAR_EL2` may
//!    be invalid); if that translation fails the host's stage-1 changed
//!    under it, and the access is simply retried.
//! 2. A translation or access-flag fault on an IPA the host stage-2 maps
//!    (a race with a transition on another CPU) is retried. Anything else —
//!    an annotated page (hypervisor or guest memory), an address that is
//!    neither RAM nor host MMIO, a permission fault — is injected.
//! 3. Injection (as pKVM's `host_inject_mem_abort`): `ESR_EL1` = the
//!    syndrome with EC repainted to the current-EL abort (`DABT_CUR` /
//!    `IABT_CUR`) when the access came from EL1, the fault status code
//!    replaced by *synchronous external abort* (0x10), `FnV` clear (FAR is
//!    valid) and `S1PTW` (bit 7) set as pKVM's marker of a hypervisor
//!    abort (hardware never sets it in `ESR_EL1`); `FAR_EL1` = `FAR_EL2`;
//!    `ELR_EL1`/`SPSR_EL1` = the interrupted state; the host resumes at
//!    `VBAR_EL1` plus 0x200 (from EL1h), 0x0 (EL1t), 0x400 (EL0, AArch64)
//!    or 0x600 (AArch32), in EL1h with D, A, I, F masked, NZCV and DIT
//!    kept (DIT is bit 21 of an AArch32 SPSR), PAN set when
//!    `SCTLR_EL1.SPAN` is 0, SSBS from `SCTLR_EL1.DSSBS`, TCO set with
//!    FEAT_MTE2.
//! 4. An abort that is not a stage-2 fault (external abort on a walk, TLB
//!    conflict...) is injected the same way, with a warning; other
//!    unexpected synchronous traps from the host become an UNDEFINED
//!    instruction exception ([`inject_undef`], same vector and state).
//!    Neither stops the machine.

use aarch64_cpu::registers::{
    ELR_EL1, ESR_EL1, FAR_EL1, FAR_EL2, HPFAR_EL2, PAR_EL1, Readable, SCTLR_EL1, SPSR_EL1,
    VBAR_EL1, Writeable,
};
use core::arch::asm;

use stage2::Ipa;

use super::entry::TrapFrame;
use super::host::Hypervisor;
use super::sysreg;

const EC_IABT_LOW: u64 = 0x20;
const EC_IABT_CUR: u64 = 0x21;
const EC_DABT_LOW: u64 = 0x24;
const EC_DABT_CUR: u64 = 0x25;
const ESR_S1PTW: u64 = 1 << 7;
/// ESR IL: 32-bit instruction.
const ESR_IL: u64 = 1 << 25;
const ESR_FNV: u64 = 1 << 10;
const FSC_MASK: u64 = 0x3f;
/// Fault status: synchronous external abort, not on a table walk.
pub const FSC_SEA: u64 = 0x10;

/// Fault status classes (xFSC bits 5:2).
fn fsc_class(esr: u64) -> u64 {
    (esr & FSC_MASK) >> 2
}

/// The faulting IPA, if it can be found; `None` means "retry".
fn fault_ipa(esr: u64, far: u64) -> Option<u64> {
    let class = fsc_class(esr);
    let s1ptw = esr & ESR_S1PTW != 0;
    // Permission fault (0b0011xx) not on a stage-1 walk: HPFAR may be
    // invalid, translate FAR with the host's stage-1 instead.
    if class == 0b0011 && !s1ptw {
        // PAR_EL1 is the host's register: keep its value.
        let host_par = PAR_EL1.get();
        // SAFETY: AT S1E1R only translates (using the host's live EL1
        // stage-1 registers, as the host is interrupted on this CPU) and
        // writes PAR_EL1, which is restored right after.
        unsafe { asm!("at s1e1r, {}", "isb", in(reg) far, options(nostack, preserves_flags)) };
        let par = PAR_EL1.get();
        PAR_EL1.set(host_par);
        if par & 1 != 0 {
            return None;
        }
        return Some((par & 0x000f_ffff_ffff_f000) | (far & 0xfff));
    }
    let hpfar = HPFAR_EL2.get();
    Some((((hpfar >> 4) & ((1 << 44) - 1)) << 12) | (far & 0xfff))
}

/// Handles an instruction or data abort from the host (`esr` = its
/// syndrome).
pub fn host_mem_abort(hyp: &Hypervisor, frame: &mut TrapFrame, esr: u64) {
    let far = FAR_EL2.get();
    let class = fsc_class(esr);
    // Translation (0b0001), access flag (0b0010), permission (0b0011) and
    // address size (0b0000) faults are stage-2 faults el2 answers; anything
    // else (external aborts on a table walk, TLB conflicts...) is not
    // expected.
    if class > 0b0011 {
        // Not the host's fault to stop the machine for: reflect it as an
        // external abort, like a denied access.
        log::warn!(
            "unexpected host abort (not a stage-2 fault; ESR_EL2 {esr:#x}, FAR {far:#x}, \
             ELR {:#x}): injecting an abort",
            frame.elr
        );
        inject(frame, esr, far);
        return;
    }
    let Some(ipa) = fault_ipa(esr, far) else {
        return;
    };
    if class == 0b0001 || class == 0b0010 {
        let mapped = hyp.core.mem.with_host(|h| {
            h.stage2()
                .lookup(h.pool(), Ipa(ipa))
                .map(|leaf| leaf.is_valid())
                .unwrap_or(false)
        });
        if mapped {
            return;
        }
    }
    let owner = hyp
        .core
        .mem
        .page(ownership::Pfn(ipa >> 12))
        .map(|e| e.owner());
    log::info!(
        "host stage-2 fault at IPA {ipa:#x} (ESR_EL2 {esr:#x}, FAR {far:#x}, ELR {:#x}, {}): \
         injecting an abort",
        frame.elr,
        match owner {
            Some(ownership::Owner::Hyp) => "hypervisor memory",
            Some(ownership::Owner::Guest { .. }) => "guest memory",
            Some(ownership::Owner::Host) => "host memory",
            None => "not RAM",
        }
    );
    inject(frame, esr, far);
}

/// Injects a synchronous external abort built from `esr` into the host
/// (module docs, step 3).
fn inject(frame: &mut TrapFrame, esr: u64, far: u64) {
    let mode = frame.spsr & 0x1f;
    let from_el1 = mode & 0b1100 == 0b0100 && mode & 0x10 == 0;
    let ec = (esr >> 26) & 0x3f;
    let ec = match (ec, from_el1) {
        (EC_DABT_LOW, true) => EC_DABT_CUR,
        (EC_IABT_LOW, true) => EC_IABT_CUR,
        (ec, _) => ec,
    };
    let new_esr = (esr & !(0x3f << 26) & !FSC_MASK & !ESR_FNV) | (ec << 26) | FSC_SEA | ESR_S1PTW;
    FAR_EL1.set(far);
    enter_host_vector(frame, new_esr);
}

/// Injects an UNDEFINED instruction exception (`ESR_EL1` EC = 0, IL = 1)
/// into the host at the instruction `frame` was interrupted at.
pub fn inject_undef(frame: &mut TrapFrame) {
    enter_host_vector(frame, ESR_IL);
}

/// Makes the host take a synchronous exception with syndrome `esr` to
/// EL1 (module docs, step 3): `ESR_EL1`, `ELR_EL1` and `SPSR_EL1` set,
/// `frame` redirected to the right `VBAR_EL1` vector in the exception's
/// PSTATE. `FAR_EL1` is the caller's business.
fn enter_host_vector(frame: &mut TrapFrame, esr: u64) {
    let spsr = frame.spsr;
    let mode = spsr & 0x1f;
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
    let mut new_spsr = (spsr & 0xf000_0000) | 0x3c0 | 0b0101;
    if sysreg::has_dit() {
        // PSTATE.DIT is unchanged; an AArch32 SPSR keeps it in bit 21.
        let dit = if aarch32 { spsr >> 21 } else { spsr >> 24 } & 1;
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
            new_spsr |= spsr & (1 << 22);
        }
    }
    if sysreg::has_ssbs() && sctlr & (1 << 44) != 0 {
        new_spsr |= 1 << 12;
    }
    ESR_EL1.set(esr);
    ELR_EL1.set(frame.elr);
    SPSR_EL1.set(spsr);
    frame.elr = VBAR_EL1.get().wrapping_add(offset);
    frame.spsr = new_spsr;
}
