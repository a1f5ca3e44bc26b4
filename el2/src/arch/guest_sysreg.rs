//! A protected guest's trapped system-register accesses (ESR_EL2.EC 0x18)
//! and the ID registers it reads (`HCR_EL2.TID3`/`TID1`), sanitised so the
//! guest is never told about a feature whose state el2 does not switch or
//! that it traps (guests-at-el2.md §2.3, pKVM's fixed configuration).
//!
//! What a guest sees:
//!
//! - `ID_AA64PFR0_EL1`: EL0 and EL1 AArch64 only, no EL2/EL3, FP and
//!   AdvSIMD as the CPU has them, GIC system registers, DIT, CSV2, CSV3;
//!   no SVE, RAS, MPAM, AMU, SEL2 (0). `ID_AA64PFR1_EL1`: BT and SSBS only
//!   (no MTE, SME, ...). `ID_AA64PFR2_EL1`, `ID_AA64ZFR0_EL1`,
//!   `ID_AA64SMFR0_EL1`: 0.
//! - `ID_AA64DFR0_EL1`: the Armv8.0 debug architecture (DebugVer 6) and
//!   nothing else: no PMU, SPE, trace, one breakpoint and watchpoint
//!   register slot (which read as zero and ignore writes). Other debug ID
//!   registers and `ID_AA64AFR*`: 0.
//! - `ID_AA64ISAR0_EL1` as the CPU has it; `ID_AA64ISAR1_EL1` without
//!   pointer authentication (APA, API, GPA, GPI) and LS64;
//!   `ID_AA64ISAR2_EL1` only CLRBHB (no MOPS, PAuth QARMA3, WFxT).
//! - `ID_AA64MMFR0_EL1` with PARange capped at 40 bits (the guest's IPA
//!   size), no FGT or ECV; `ID_AA64MMFR1_EL1` without VH, LOR, XNX, TWED,
//!   HCX, AFP, TIDCP1, CMOW, VMIDBits; `ID_AA64MMFR2_EL1` without NV, FWB,
//!   EVT, IDS, LSM; `ID_AA64MMFR3_EL1`/`MMFR4`: 0.
//! - AArch32 ID registers and unallocated ID space: 0. `REVIDR_EL1` and
//!   `AIDR_EL1`: 0.
//!
//! Other trapped registers: `ACTLR_EL1` reads 0, writes are ignored;
//! debug registers (`MDCR_EL2.TDA`/`TDOSA`/`TDRA`): `MDSCR_EL1` is a
//! virtual register kept in the vCPU (hardware debug stays off while a
//! guest runs), `OSLSR_EL1` reads "OS lock implemented, unlocked", the
//! rest read as zero and ignore writes (the guest sees no debug features
//! to program). `ICC_SGI1R_EL1` writes (trapped with `HCR_EL2.IMO`) go to
//! the virtual GIC; `ICC_SGI0R_EL1`/`ICC_ASGI1R_EL1` (group 0 and
//! other-security SGIs, which it does not have) are dropped. The EL1
//! physical timer (`CNTP_*`, trapped by `CNTHCTL_EL2.EL1PCEN`) reads as
//! zero and ignores writes: it is the host's, and guests use the virtual
//! timer. Everything else — PMU
//! registers, LOR, AMU, trace, unknown and
//! IMPLEMENTATION DEFINED registers, and any write to an ID register —
//! makes the guest take an UNDEFINED exception.

use el2::hyp::arch::VcpuContext;

use super::sysreg::mrs;

/// What to do with a trapped access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Emulated: step past the instruction.
    Done,
    /// The guest takes an UNDEFINED exception.
    Undef,
    /// A write of `ICC_SGI1R_EL1` for the virtual GIC (the caller steps
    /// the PC).
    Sgi(u64),
}

/// A system register by its encoding (op0, op1, CRn, CRm, op2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Encoding {
    /// op0.
    pub op0: u8,
    /// op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// op2.
    pub op2: u8,
}

const fn enc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Encoding {
    Encoding {
        op0,
        op1,
        crn,
        crm,
        op2,
    }
}

const MDSCR_EL1: Encoding = enc(2, 0, 0, 2, 2);
const OSLSR_EL1: Encoding = enc(2, 0, 1, 1, 4);
const ACTLR_EL1: Encoding = enc(3, 0, 1, 0, 1);
const AIDR_EL1: Encoding = enc(3, 1, 0, 0, 7);
const ICC_SGI1R_EL1: Encoding = enc(3, 0, 12, 11, 5);
const ICC_ASGI1R_EL1: Encoding = enc(3, 1, 12, 11, 6);
const ICC_SGI0R_EL1: Encoding = enc(3, 2, 12, 11, 7);
const CNTP_TVAL_EL0: Encoding = enc(3, 3, 14, 2, 0);
const CNTP_CTL_EL0: Encoding = enc(3, 3, 14, 2, 1);
const CNTP_CVAL_EL0: Encoding = enc(3, 3, 14, 2, 2);

/// A trapped access decoded from the syndrome's ISS.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access {
    /// The register.
    pub reg: Encoding,
    /// Transfer register (31 = XZR).
    pub rt: u8,
    /// MRS (a read).
    pub read: bool,
}

impl Access {
    /// Decodes ESR_EL2's ISS for EC 0x18.
    pub fn decode(esr: u64) -> Access {
        let iss = esr & 0x1ff_ffff;
        Access {
            reg: enc(
                ((iss >> 20) & 3) as u8,
                ((iss >> 14) & 7) as u8,
                ((iss >> 10) & 0xf) as u8,
                ((iss >> 1) & 0xf) as u8,
                ((iss >> 17) & 7) as u8,
            ),
            rt: ((iss >> 5) & 0x1f) as u8,
            read: iss & 1 != 0,
        }
    }
}

/// Keeps the 4-bit fields of `v` at the listed shifts, clears the rest.
fn keep(v: u64, shifts: &[u32]) -> u64 {
    shifts.iter().fold(0, |acc, s| acc | (v & (0xf << s)))
}

/// Caps the 4-bit field of `v` at `shift` to `max`.
fn cap(v: u64, shift: u32, max: u64) -> u64 {
    let f = (v >> shift) & 0xf;
    (v & !(0xf << shift)) | (f.min(max) << shift)
}

/// The value a guest reads from ID register `reg` (op0 3, op1 0, CRn 0),
/// or `None` when `reg` is not in the ID space.
pub fn id_register(reg: Encoding) -> Option<u64> {
    if reg.op0 != 3 || reg.op1 != 0 || reg.crn != 0 || reg.crm > 7 {
        return None;
    }
    Some(match (reg.crm, reg.op2) {
        (0, 6) => 0, // REVIDR_EL1
        // ID_AA64PFR0_EL1: EL0/EL1 AArch64 only; FP, AdvSIMD, GIC, DIT,
        // CSV2, CSV3 as the CPU has them.
        (4, 0) => {
            let pfr0 = mrs!("id_aa64pfr0_el1");
            keep(pfr0, &[16, 20, 24, 48, 56, 60]) | 0x11
        }
        // ID_AA64PFR1_EL1: BT, SSBS.
        (4, 1) => keep(mrs!("id_aa64pfr1_el1"), &[0, 4]),
        // ID_AA64DFR0_EL1: Armv8.0 debug, nothing else.
        (5, 0) => 0x6,
        // ID_AA64ISAR0_EL1: as is.
        (6, 0) => mrs!("id_aa64isar0_el1"),
        // ID_AA64ISAR1_EL1: no PAuth (APA 7:4, API 11:8, GPA 27:24, GPI
        // 31:28), no LS64 (63:60).
        (6, 1) => {
            mrs!("id_aa64isar1_el1")
                & !((0xf << 4) | (0xf << 8) | (0xf << 24) | (0xf << 28) | (0xf << 60))
        }
        // ID_AA64ISAR2_EL1: CLRBHB (31:28) only.
        (6, 2) => keep(mrs!("id_aa64isar2_el1"), &[28]),
        // ID_AA64MMFR0_EL1: PARange (3:0) at most 40 bits (2), ASIDBits,
        // BigEnd, SNSMem, BigEndEL0, TGran16/64/4 and their stage-2
        // fields, ExS; no FGT (59:56), ECV (63:60).
        (7, 0) => cap(
            keep(
                mrs!("id_aa64mmfr0_el1"),
                &[0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44],
            ),
            0,
            2,
        ),
        // ID_AA64MMFR1_EL1: HAFDBS, HPDS, PAN, SpecSEI, ETS, nTLBPA,
        // ECBHB.
        (7, 1) => keep(mrs!("id_aa64mmfr1_el1"), &[0, 12, 20, 24, 36, 48, 60]),
        // ID_AA64MMFR2_EL1: CnP, UAO, IESB, VARange, CCIDX, ST, AT, TTL,
        // BBM, E0PD.
        (7, 2) => keep(
            mrs!("id_aa64mmfr2_el1"),
            &[0, 4, 12, 16, 20, 28, 32, 48, 52, 60],
        ),
        // AArch32 registers (CRm 1..3), PFR2, ZFR0, SMFR0, DFR1, AFR0/1,
        // ISAR3, MMFR3/4 and unallocated encodings.
        _ => 0,
    })
}

/// Handles a trapped system-register access of the loaded vCPU (syndrome
/// `esr`, registers in `ctx`). On [`Action::Done`] the caller steps the PC.
pub fn handle(ctx: &mut VcpuContext, esr: u64) -> Action {
    let a = Access::decode(esr);
    let rt = usize::from(a.rt);
    let value = if rt < 31 { ctx.x[rt] } else { 0 };
    let set = |ctx: &mut VcpuContext, v: u64| {
        if rt < 31 {
            ctx.x[rt] = v;
        }
    };
    if let Some(v) = id_register(a.reg) {
        if !a.read {
            return Action::Undef;
        }
        set(ctx, v);
        return Action::Done;
    }
    match a.reg {
        AIDR_EL1 | ACTLR_EL1 if a.read => set(ctx, 0),
        ACTLR_EL1 => {}
        AIDR_EL1 => return Action::Undef,
        MDSCR_EL1 => {
            if a.read {
                set(ctx, ctx.sys.mdscr);
            } else {
                ctx.sys.mdscr = value;
            }
        }
        // OSLM = 0b10 (bit 3): an OS lock is implemented; OSLK clear.
        OSLSR_EL1 if a.read => set(ctx, 0b1000),
        ICC_SGI1R_EL1 if !a.read => return Action::Sgi(value),
        // Group 0 and other-security SGIs: this GIC has neither.
        ICC_ASGI1R_EL1 | ICC_SGI0R_EL1 if !a.read => {}
        // The EL1 physical timer stays the host's: a guest (which uses the
        // virtual timer) reads it as disabled and cannot program it.
        CNTP_TVAL_EL0 | CNTP_CTL_EL0 | CNTP_CVAL_EL0 => {
            if a.read {
                set(ctx, 0);
            }
        }
        // The rest of the debug space: read as zero, writes ignored.
        Encoding { op0: 2, .. } => {
            if a.read {
                set(ctx, 0);
            }
        }
        _ => return Action::Undef,
    }
    Action::Done
}
