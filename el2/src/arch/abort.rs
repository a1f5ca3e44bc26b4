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

use aarch64_cpu::registers::{FAR_EL2, Readable};

use stage2::Ipa;

use super::entry::TrapFrame;
use super::host::Hypervisor;
use super::inject;
use super::residency::Kind;

use inject::{fault_ipa, fsc_class};

/// Handles an instruction or data abort from the host (`esr` = its
/// syndrome).
pub fn host_mem_abort(hyp: &Hypervisor, frame: &mut TrapFrame, esr: u64) -> Kind {
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
        return Kind::Other;
    }
    let Some(ipa) = fault_ipa(esr, far) else {
        return Kind::Other;
    };
    if class == 0b0001 || class == 0b0010 {
        let mapped = hyp.core.mem.with_host(|h| {
            h.stage2()
                .lookup(h.pool(), Ipa(ipa))
                .map(|leaf| leaf.is_valid())
                .unwrap_or(false)
        });
        if mapped {
            return Kind::Other;
        }
        if emulate_device(hyp, frame, esr, ipa) {
            return Kind::DeviceEmulation;
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
    Kind::Other
}

/// A host access to a device register el2 mediates (the ITS control frame,
/// a redistributor's `RD_base` frame): emulated with the access the
/// syndrome describes, and the host steps past it. `false` when `ipa` is
/// not such a register, or the access has no valid syndrome (it is then
/// refused like any other).
fn emulate_device(hyp: &Hypervisor, frame: &mut TrapFrame, esr: u64, ipa: u64) -> bool {
    let isv = esr & (1 << 24) != 0;
    let size = 1u8 << ((esr >> 22) & 3);
    let reg = ((esr >> 16) & 0x1f) as usize;
    let write = esr & (1 << 6) != 0;
    let value = |frame: &TrapFrame| if reg < 31 { frame.x[reg] } else { 0 };
    let access = |frame: &TrapFrame| write.then(|| value(frame));
    let result = if let Some(off) = super::its::offset_of(ipa) {
        isv.then(|| super::its::host_access(hyp, off, size, access(frame)))
    } else if let Some((i, off)) = super::gicr_lpi::offset_of(ipa) {
        isv.then(|| super::gicr_lpi::host_access(hyp, i, off, size, access(frame)))
    } else {
        return false;
    };
    let Some(v) = result else {
        return false;
    };
    if !write && reg < 31 {
        let sse = esr & (1 << 21) != 0;
        let sf = esr & (1 << 15) != 0;
        let bits = u32::from(size) * 8;
        let mut v = if bits == 64 { v } else { v & ((1 << bits) - 1) };
        if sse && bits < 64 {
            // A sign-extending load (LDRSB/LDRSH/LDRSW).
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !sf {
            v &= 0xffff_ffff;
        }
        frame.x[reg] = v;
    }
    // ESR.IL: a 32-bit instruction (always, for an AArch64 host).
    let len = if esr & (1 << 25) != 0 { 4 } else { 2 };
    frame.elr = frame.elr.wrapping_add(len);
    true
}

/// Injects a synchronous external abort built from `esr` into the host
/// (module docs, step 3).
fn inject(frame: &mut TrapFrame, esr: u64, far: u64) {
    inject::external_abort(&mut frame.elr, &mut frame.spsr, esr, far);
}

/// Injects an UNDEFINED instruction exception (`ESR_EL1` EC = 0, IL = 1)
/// into the host at the instruction `frame` was interrupted at.
pub fn inject_undef(frame: &mut TrapFrame) {
    inject::undef(&mut frame.elr, &mut frame.spsr, inject::ESR_IL);
}
