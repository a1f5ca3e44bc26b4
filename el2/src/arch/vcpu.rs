//! The vCPU world switch: el2's [`Arch`] for the core.
//!
//! A `VcpuRun` host call runs inside el2's handler of the host's HVC: the
//! host's general-purpose registers are in the trap frame on this CPU's
//! EL2 stack and its FP/SIMD registers in this CPU's save area (the host
//! vector saved both, and restores them when the host call returns). The
//! core then calls, on this CPU:
//!
//! 1. [`Arch::vcpu_load`] (guests-at-el2.md §1.1 order): the host's EL1
//!    and EL0 system registers and `SP_EL0` are saved here, hardware
//!    debug is switched off (`MDSCR_EL1` = 0: the host's breakpoints and
//!    single-step never apply to a guest); the guest's EL1 system
//!    registers, virtual timer ([`super::timer`], which moves the host's
//!    deadline to the EL2 timer) and virtual CPU interface
//!    ([`super::gic`]) are loaded; then its stage-2 (`VTCR_EL2`,
//!    `VTTBR_EL2` with the VM's VMID), `VMPIDR_EL2` = the vCPU's MPIDR,
//!    and the guest's trap controls (below); the EL1 TLB and instruction
//!    cache are invalidated on this CPU when another vCPU of the same VM
//!    ran here last (guests-at-el2.md §8); `VBAR_EL2` becomes the guest
//!    vectors.
//! 2. [`Arch::run_vcpu`], as often as the core handles traps itself:
//!    `el2_guest_enter` (assembly, [`super::entry`]) loads the guest's
//!    FP/SIMD registers, `SP_EL0`, x0–x30, PC and PSTATE and enters it;
//!    the guest vectors save them all back and return here with the
//!    vector's kind. Traps el2 handles without the core are handled in a
//!    loop here: trapped system registers ([`super::guest_sysreg`]) and
//!    UNDEFINED exceptions injected into the guest ([`super::inject`]).
//!    The rest is decoded for the core: HVC, SMC (PC + 4), stage-2 data and
//!    instruction aborts (IPA from `HPFAR_EL2`, or `AT S1E1R` for
//!    permission faults; ISV, SAS, SSE, SRT, SF, WnR), WFI/WFE (PC + 4),
//!    physical IRQ/FIQ (the host takes it once back at EL1), and an SError
//!    (the vCPU stops).
//! 3. [`Arch::vcpu_put`]: the reverse — guest system registers, timer and
//!    GIC state saved, the host's trap controls, stage-2 and vectors back,
//!    the host's EL1 registers and timer restored.
//!
//! # Guest controls (a protected guest, guests-at-el2.md §2)
//!
//! - `HCR_EL2` = VM | SWIO | PTW | FMO | IMO | AMO | FB | BSU=IS | TWI |
//!   TWE | TID1 | TID3 | TSC | TIDCP | TACR | RW, + TLOR with FEAT_LOR,
//!   TERR with RAS, TID5 with MTE2. API/APK clear: pointer authentication
//!   is hidden and its instructions and key registers trap (UNDEF), so the
//!   host's keys never reach a guest and need no switching. Physical
//!   IRQ/FIQ/SError go to el2 while the guest runs.
//! - `MDCR_EL2` = TPM | TPMCR | TDA | TDOSA | TDRA (+ TPMS with SPE, TTRF
//!   with the trace filter), HPMN and HPMD as for the host: PMU, debug,
//!   profiling and trace registers trap.
//! - `CPTR_EL2` = RES1 | TZ | TSM | TTA | TAM: SVE, SME, trace and AMU
//!   trap; FP/SIMD does not (switched eagerly on every entry and exit, so
//!   the host's and a guest's FP/SIMD state never meet: the host's is in
//!   its save area while any guest runs, and a guest's in its context).
//! - `HCRX_EL2` = 0 with FEAT_HCX: none of the host's extra EL1 features.
//! - `CNTHCTL_EL2`: physical counter readable, physical timer trapped.

use core::sync::atomic::{AtomicU8, Ordering};

use aarch64_cpu::registers::{ESR_EL2, FAR_EL2, Readable};
use el2::hyp::arch::{Abort, Arch, SysRegs, Trap, VcpuContext, VcpuRef};
use stage2::PhysAddr;
use stage2::tlb::arm::ArmTlb;

use super::entry::{self, el2_guest_enter, kind};
use super::gic;
use super::guest_sysreg::{self, Action};
use super::host::{self, HYP};
use super::inject::{self, fault_ipa, fsc_class};
use super::percpu::MAX_CPUS;
use super::sysreg::{self, mrs, msr};
use super::timer::{self, HostTimer};

const EC_WFX: u64 = 0x01;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_SYS64: u64 = 0x18;
const EC_IABT_LOW: u64 = 0x20;
const EC_DABT_LOW: u64 = 0x24;
/// The exception class reported for an SError (ESR_EL2.EC of an SError).
const EC_SERROR: u64 = 0x2f;

/// Traps the world switch handles itself (system registers, injected
/// UNDEFs) before it hands the CPU back to the core anyway.
const INNER_BUDGET: usize = 4096;

const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_PTW: u64 = 1 << 2;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_IS: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
const HCR_TWE: u64 = 1 << 14;
const HCR_TID1: u64 = 1 << 16;
const HCR_TID3: u64 = 1 << 18;
const HCR_TSC: u64 = 1 << 19;
const HCR_TIDCP: u64 = 1 << 20;
const HCR_TACR: u64 = 1 << 21;
const HCR_RW: u64 = 1 << 31;
const HCR_TLOR: u64 = 1 << 35;
const HCR_TERR: u64 = 1 << 36;
const HCR_TID5: u64 = 1 << 58;

const MDCR_TPMCR: u64 = 1 << 5;
const MDCR_TPM: u64 = 1 << 6;
const MDCR_TDA: u64 = 1 << 9;
const MDCR_TDOSA: u64 = 1 << 10;
const MDCR_TDRA: u64 = 1 << 11;
const MDCR_TPMS: u64 = 1 << 14;
const MDCR_TTRF: u64 = 1 << 19;

/// `CPTR_EL2` (E2H = 0) RES1 bits (0x32ff, bit 12 is TSM with SME), TZ,
/// TTA, TAM.
const CPTR_GUEST: u64 = 0x32ff | (1 << 8) | (1 << 20) | (1 << 30);

/// `HCR_EL2` for guests on this CPU model.
fn guest_hcr() -> u64 {
    let mut hcr = HCR_VM
        | HCR_SWIO
        | HCR_PTW
        | HCR_FMO
        | HCR_IMO
        | HCR_AMO
        | HCR_FB
        | HCR_BSU_IS
        | HCR_TWI
        | HCR_TWE
        | HCR_TID1
        | HCR_TID3
        | HCR_TSC
        | HCR_TIDCP
        | HCR_TACR
        | HCR_RW;
    let field = |v: u64, shift: u32| (v >> shift) & 0xf;
    if field(mrs!("id_aa64mmfr1_el1"), 16) != 0 {
        hcr |= HCR_TLOR;
    }
    if field(mrs!("id_aa64pfr0_el1"), 28) != 0 {
        hcr |= HCR_TERR;
    }
    if sysreg::has_mte2() {
        hcr |= HCR_TID5;
    }
    hcr
}

/// `MDCR_EL2` for guests: the host's counter partitioning, plus traps.
fn guest_mdcr() -> u64 {
    let dfr0 = mrs!("id_aa64dfr0_el1");
    let mut mdcr = host::host_mdcr() | MDCR_TPMCR | MDCR_TPM | MDCR_TDA | MDCR_TDOSA | MDCR_TDRA;
    if (dfr0 >> 32) & 0xf != 0 {
        mdcr |= MDCR_TPMS;
    }
    if (dfr0 >> 40) & 0xf != 0 {
        mdcr |= MDCR_TTRF;
    }
    mdcr
}

/// The guest's `VTCR_EL2` with its output size (PS, bits 18:16) no wider
/// than this CPU's physical address range.
fn guest_vtcr(vtcr: u64) -> u64 {
    let ps = (vtcr >> 16) & 7;
    let cpu = sysreg::pa_range_field().min(6);
    (vtcr & !(7 << 16)) | (ps.min(cpu) << 16)
}

/// Per CPU, per VMID: 1 + the index of the vCPU that last ran (0: none).
static LAST_RAN: [[AtomicU8; 256]; MAX_CPUS] =
    [const { [const { AtomicU8::new(0) }; 256] }; MAX_CPUS];

/// What the host had live on this CPU while a vCPU is loaded.
#[derive(Clone, Copy, Debug, Default)]
struct HostState {
    sys: SysRegs,
    sp_el0: u64,
    timer: HostTimer,
    /// The host had PPI 27 enabled in its redistributor.
    vtimer_ppi: bool,
}

/// el2's architecture edge for the core, on the calling CPU.
#[derive(Debug, Default)]
pub struct El2Arch {
    tlb: ArmTlb,
    host: Option<HostState>,
    /// List registers of this CPU's virtual CPU interface (0 without a
    /// GICv3), known once a vCPU is loaded.
    lrs: usize,
    /// Whether the physical timer PPI is active now (el2 set it).
    timer_active: bool,
}

/// Saves or loads every [`SysRegs`] field with its register (`mdscr`
/// aside: a guest's is virtual).
macro_rules! el1_registers {
    ($op:ident) => {
        $op!(sctlr, "sctlr_el1");
        $op!(cpacr, "cpacr_el1");
        $op!(ttbr0, "ttbr0_el1");
        $op!(ttbr1, "ttbr1_el1");
        $op!(tcr, "tcr_el1");
        $op!(esr, "esr_el1");
        $op!(afsr0, "afsr0_el1");
        $op!(afsr1, "afsr1_el1");
        $op!(far, "far_el1");
        $op!(mair, "mair_el1");
        $op!(vbar, "vbar_el1");
        $op!(contextidr, "contextidr_el1");
        $op!(amair, "amair_el1");
        $op!(cntkctl, "cntkctl_el1");
        $op!(par, "par_el1");
        $op!(tpidr_el1, "tpidr_el1");
        $op!(sp_el1, "sp_el1");
        $op!(elr_el1, "elr_el1");
        $op!(spsr_el1, "spsr_el1");
        $op!(csselr, "csselr_el1");
        $op!(tpidr_el0, "tpidr_el0");
        $op!(tpidrro_el0, "tpidrro_el0");
    };
}

fn save_el1(r: &mut SysRegs) {
    macro_rules! save {
        ($field:ident, $reg:literal) => {
            r.$field = mrs!($reg);
        };
    }
    el1_registers!(save);
}

fn load_el1(r: &SysRegs) {
    macro_rules! load {
        ($field:ident, $reg:literal) => {
            // SAFETY: an EL1/EL0 register of the context about to run at
            // EL1 (or back from it); el2 does not depend on it.
            unsafe { msr!($reg, r.$field) };
        };
    }
    el1_registers!(load);
}

fn isb() {
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

impl El2Arch {
    /// Handles a synchronous exit without the core where it can: `None`
    /// means "enter the guest again".
    fn sync_exit(&mut self, ctx: &mut VcpuContext, esr: u64) -> Option<Trap> {
        let ec = (esr >> 26) & 0x3f;
        match ec {
            EC_HVC64 => Some(Trap::Hvc {
                imm: (esr & 0xffff) as u16,
            }),
            EC_SMC64 => {
                // A trapped SMC leaves ELR_EL2 at the SMC itself.
                ctx.pc = ctx.pc.wrapping_add(4);
                Some(Trap::Smc {
                    imm: (esr & 0xffff) as u16,
                })
            }
            EC_WFX => {
                ctx.pc = ctx.pc.wrapping_add(4);
                Some(Trap::Wfi)
            }
            EC_SYS64 => match guest_sysreg::handle(ctx, esr) {
                Action::Done => {
                    ctx.pc = ctx.pc.wrapping_add(4);
                    None
                }
                Action::Sgi(value) => {
                    ctx.pc = ctx.pc.wrapping_add(4);
                    Some(Trap::Sgi { value })
                }
                Action::Undef => {
                    inject::undef(&mut ctx.pc, &mut ctx.pstate, esr);
                    None
                }
            },
            EC_IABT_LOW | EC_DABT_LOW => {
                let far = FAR_EL2.get();
                if fsc_class(esr) > 0b0011 {
                    // Not a stage-2 fault (an external abort, a TLB
                    // conflict): the guest takes it as an external abort.
                    inject::external_abort(&mut ctx.pc, &mut ctx.pstate, esr, far);
                    return None;
                }
                let ipa = fault_ipa(esr, far)?;
                let permission = fsc_class(esr) == 0b0011;
                if ec == EC_IABT_LOW {
                    return Some(Trap::InstructionAbort { ipa, permission });
                }
                let s1ptw = esr & inject::ESR_S1PTW != 0;
                Some(Trap::DataAbort(Abort {
                    ipa,
                    write: esr & (1 << 6) != 0,
                    isv: esr & (1 << 24) != 0 && !s1ptw,
                    size: 1 << ((esr >> 22) & 3),
                    reg: ((esr >> 16) & 0x1f) as u8,
                    sign: esr & (1 << 21) != 0,
                    wide: esr & (1 << 15) != 0,
                    permission,
                }))
            }
            _ => {
                // FP/SVE/SME/PAuth traps, HVC32/SMC32 and anything else el2
                // does not expect: an UNDEFINED instruction for the guest.
                inject::undef(&mut ctx.pc, &mut ctx.pstate, esr);
                None
            }
        }
    }
}

impl Arch for El2Arch {
    type Tlb = ArmTlb;
    const INSN_SIZE: u64 = 4;

    fn tlb(&mut self) -> &mut ArmTlb {
        &mut self.tlb
    }

    fn vcpu_load(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext) {
        let mut host = HostState {
            sp_el0: mrs!("sp_el0"),
            ..HostState::default()
        };
        save_el1(&mut host.sys);
        host.sys.mdscr = mrs!("mdscr_el1");
        let gicv3 = HYP.get().is_some_and(|h| h.gicv3);
        // SAFETY: the host's debug state is saved above and restored by
        // `vcpu_put`; with MDSCR_EL1 = 0 no breakpoint, watchpoint or
        // single step of the host's applies while the guest runs.
        unsafe { msr!("mdscr_el1", 0u64) };
        load_el1(&ctx.sys);
        let ppis = if gicv3 { gic::enable_el2_ppis() } else { None };
        host.vtimer_ppi = ppis.unwrap_or(true);
        host.timer = timer::load(&ctx.timer, ppis.is_some());
        if gicv3 {
            gic::load(&ctx.gic);
            self.lrs = gic::nr_lrs();
        }
        self.timer_active = false;
        let vmid = (vcpu.vttbr >> 48) as usize & 0xff;
        // SAFETY: the guest's stage-2 and trap controls, for the EL1&0
        // regime about to run the guest; el2's own EL2 regime does not
        // depend on them. VBAR_EL2 becomes the guest vectors, whose
        // current-EL entries are the same as the host vectors'.
        unsafe {
            msr!("vtcr_el2", guest_vtcr(vcpu.vtcr));
            msr!("vttbr_el2", vcpu.vttbr);
            msr!("vmpidr_el2", (1u64 << 31) | vcpu.index as u64);
            msr!("hcr_el2", guest_hcr());
            msr!("mdcr_el2", guest_mdcr());
            msr!("cptr_el2", CPTR_GUEST);
            if sysreg::has_hcx() {
                msr!("s3_4_c1_c2_2", 0u64);
            }
            msr!("vbar_el2", entry::guest_vectors());
        }
        isb();
        let cpu = sysreg::cpu_index().min(MAX_CPUS - 1);
        let last = &LAST_RAN[cpu][vmid];
        let me = (vcpu.index as u8).wrapping_add(1);
        if last.swap(me, Ordering::Relaxed) != me {
            // Another vCPU of this VM (or none) ran here last: its EL1
            // TLB entries and instructions are not this vCPU's.
            // SAFETY: invalidations under the guest's VMID, just loaded.
            unsafe {
                core::arch::asm!(
                    "tlbi vmalle1",
                    "ic iallu",
                    "dsb nsh",
                    "isb",
                    options(nostack, preserves_flags)
                )
            };
        }
        self.host = Some(host);
    }

    fn run_vcpu(&mut self, _vcpu: VcpuRef, ctx: &mut VcpuContext) -> Trap {
        if self.lrs > 0 {
            gic::write_lrs(&ctx.gic.lrs, self.lrs);
            let want = ctx.gic.lrs.timer_hw_active != 0;
            if want != self.timer_active && gic::set_timer_active(want) {
                self.timer_active = want;
            }
        }
        let trap = self.run_loaded(ctx);
        if self.lrs > 0 {
            gic::read_lrs(&mut ctx.gic.lrs);
        }
        trap
    }

    fn vcpu_put(&mut self, _vcpu: VcpuRef, ctx: &mut VcpuContext) {
        let Some(host) = self.host.take() else {
            return;
        };
        let hyp = HYP.get();
        save_el1(&mut ctx.sys);
        timer::put(&mut ctx.timer, host.timer);
        if hyp.is_some_and(|h| h.gicv3) {
            gic::save(&mut ctx.gic);
            if self.timer_active {
                // The host's timer uses the same PPI: leave it inactive.
                gic::set_timer_active(false);
                self.timer_active = false;
            }
            gic::restore_vtimer_ppi(host.vtimer_ppi);
        }
        if let Some(hyp) = hyp {
            host::activate_host_traps(hyp);
        }
        // SAFETY: the host's vectors back (the host runs next, once this
        // host call returns).
        unsafe { msr!("vbar_el2", entry::host_vectors()) };
        load_el1(&host.sys);
        // SAFETY: the host's own SP_EL0 and debug state, saved at load.
        unsafe {
            msr!("sp_el0", host.sp_el0);
            msr!("mdscr_el1", host.sys.mdscr);
        }
        isb();
    }

    fn nr_lrs(&self) -> usize {
        self.lrs
    }

    fn timer_line(&mut self) -> bool {
        timer::guest_line()
    }

    fn add_to_allocator(&mut self, pa: PhysAddr, pages: u64) {
        // SAFETY: the core calls this only after `host_donate_hyp` made the
        // pages the hypervisor's (absent from the host stage-2, identity
        // mapped at EL2, used by nothing else), for good.
        unsafe { super::mem::add_to_heap(pa.get(), pages * stage2::PAGE_SIZE) };
    }
}

impl El2Arch {
    /// Enters the loaded vCPU until a trap the core must see.
    fn run_loaded(&mut self, ctx: &mut VcpuContext) -> Trap {
        for _ in 0..INNER_BUDGET {
            // SAFETY: the vCPU is loaded on this CPU (`vcpu_load`): its
            // stage-2, traps and guest vectors are live, so every exception
            // it takes returns here through the guest vectors with `ctx`
            // updated. `ctx` is a valid, exclusively borrowed context.
            let exit = unsafe { el2_guest_enter(ctx) };
            let trap = match exit {
                kind::LOWER_SYNC | kind::LOWER_SYNC_32 => {
                    let esr = ESR_EL2.get();
                    self.sync_exit(ctx, esr)
                }
                kind::LOWER_IRQ | kind::LOWER_FIQ | kind::LOWER_IRQ_32 | kind::LOWER_FIQ_32 => {
                    Some(Trap::Interrupt)
                }
                _ => {
                    log::warn!("guest vCPU: SError: stopping it");
                    Some(Trap::Other {
                        esr: EC_SERROR << 26,
                    })
                }
            };
            if let Some(t) = trap {
                return t;
            }
        }
        Trap::Interrupt
    }
}
