//! Running a vCPU: the guest calls the hypervisor answers itself (DESIGN
//! §4), PSCI, the conversion protocol (DESIGN §5), and the exits handed
//! to the host in KVM's shape.
//!
//! A vCPU run resolves what the last exit left pending, loads the vCPU on
//! this CPU, and handles its traps until one needs the host:
//!
//! - SMCCC over HVC or SMC (both conduits answer the same; an immediate
//!   other than 0 gets NOT_SUPPORTED). Function ids are 32 bits: the upper
//!   half of x0 is ignored, as KVM does; SMC32/HVC32 calls see their
//!   arguments truncated to 32 bits.
//! - CALL_UID, FEATURES, HYP_MEMINFO, SMCCC_VERSION, SMCCC_ARCH_FEATURES:
//!   answered at EL2. The Spectre workaround queries (WORKAROUND_1/2/3)
//!   get NOT_SUPPORTED: el2 implements no firmware mitigation for guests,
//!   so it claims none (the guest then relies on its own).
//! - PSCI 1.1 at EL2 (KVM's answers, guests-at-el2.md §6): VERSION,
//!   FEATURES, MIGRATE_INFO_TYPE (2: no trusted OS), AFFINITY_INFO,
//!   CPU_SUSPEND (a WFI that returns SUCCESS), CPU_OFF (the vCPU turns off:
//!   [`Exit::PoweredOff`]). CPU_ON is checked here (target a vCPU of this VM
//!   that is off, else INVALID_PARAMETERS / ALREADY_ON / ON_PENDING) and
//!   then put to the host as [`Exit::Hypercall`]: if the host answers 0 the
//!   target is reset at the guest's entry point with the guest's context id
//!   (the host chooses neither), else the call fails with the host's
//!   (PSCI error) answer. SYSTEM_OFF, SYSTEM_RESET and SYSTEM_RESET2 become
//!   [`Exit::SystemEvent`]. DESIGN §4 says PSCI goes to the host as exits:
//!   the informational calls are answered here instead (as KVM answers them
//!   in the kernel), and only what the host must decide reaches it.
//! - MEM_SHARE / MEM_UNSHARE: checked and recorded as the guest's pending
//!   conversion; the vCPU exits with [`Exit::MemoryFault`] (flag
//!   `KVM_MEMORY_EXIT_FLAG_PRIVATE` for unshare). The host completes or
//!   refuses it; the guest's call returns 0 (x1 = pages) or -3 on its next
//!   run. A share of a page not yet mapped exits as a stage-2 fault and the
//!   HVC is retried once the host has mapped it (pKVM does the same), or
//!   fails with -3 if the host answers that it cannot (`RUN_FAIL_ACCESS`).
//! - MEM_RELINQUISH: done at EL2 at once (pages wiped, host-owned), then an
//!   [`Exit::Relinquished`] tells the host.
//! - Stage-2 faults on unmapped pages: [`Exit::Stage2Fault`] with the
//!   access syndrome, so the host can map memory or emulate MMIO.
//! - A physical interrupt: [`Exit::Interrupted`]. Anything the arch cannot
//!   handle: [`Exit::Stopped`] with the exception class only.
//! - Unknown calls: NOT_SUPPORTED. Ranges longer than 512 pages are done
//!   512 at a time (x1 tells the guest how many).
//!
//! A run hands at most [`TRAP_BUDGET`] traps to EL2's own handling before
//! it returns to the host ([`Exit::Interrupted`]), so a host call never
//! runs unbounded.

use super::arch::{Abort, Arch, Trap, VcpuContext, VcpuRef};
use super::vgic::{ICH_HCR_UIE, ListRegs};
use super::vm::{Outcome, Power, Waiting};
use super::{Completion, Hypervisor};
use host_interface::abi::{
    Exit, GUEST_FEATURES, GuestCall, KVM_MEMORY_EXIT_FLAG_PRIVATE, KVM_UID,
    SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS,
};
use ownership::transitions::MAX_GUEST_RANGE;
use ownership::{
    Conversion, ConversionKind, Errno, Gfn, GuestHandle, GuestPageState, HypMappings, PhysMem,
};
use stage2::{PAGE_SIZE, TablePool};

/// Traps handled at EL2 in one run before returning to the host.
pub const TRAP_BUDGET: usize = 4096;

/// SMCCC and PSCI function ids and return values.
pub mod smccc {
    /// SMCCC_VERSION.
    pub const VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    /// SMCCC version 1.1.
    pub const VERSION_1_1: u64 = 0x1_0001;
    /// PSCI_VERSION.
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND (SMC32; SMC64 is | 0x4000_0000).
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON (SMC32).
    pub const CPU_ON: u32 = 0x8400_0003;
    /// AFFINITY_INFO (SMC32).
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    /// SYSTEM_RESET2 (SMC32).
    pub const SYSTEM_RESET2: u32 = 0x8400_0012;
    /// Bit 30: an SMC64/HVC64 call.
    pub const SMC64: u32 = 0x4000_0000;
    /// PSCI 1.1.
    pub const PSCI_1_1: u64 = 0x1_0001;
    /// MIGRATE_INFO_TYPE: no trusted OS / migration not needed.
    pub const TOS_NOT_PRESENT_MP: u64 = 2;
    /// PSCI return: INVALID_PARAMETERS.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// PSCI return: ALREADY_ON.
    pub const ALREADY_ON: i64 = -4;
    /// PSCI return: ON_PENDING.
    pub const ON_PENDING: i64 = -5;
    /// PSCI return: INTERNAL_FAILURE.
    pub const INTERNAL_FAILURE: i64 = -6;
    /// PSCI return: INVALID_ADDRESS (the most negative PSCI error).
    pub const INVALID_ADDRESS: i64 = -9;
}

/// MPIDR affinity bits a PSCI target names (Aff3, Aff2, Aff1, Aff0).
const MPIDR_HWID: u64 = 0xff_00ff_ffff;

/// What handling one trap decided.
enum Next {
    /// Enter the guest again.
    Resume,
    /// Return to the host.
    Exit(Result<Exit, Errno>, Waiting),
}

fn ret(ctx: &mut VcpuContext, vals: [i64; 2]) {
    ctx.x[0] = vals[0] as u64;
    ctx.x[1] = vals[1] as u64;
}

/// The host's answer to a CPU_ON as the guest's return value: a PSCI
/// error code, or INTERNAL_FAILURE for anything that is not one.
fn psci_error(x0: u64) -> u64 {
    let v = x0 as i64;
    if (smccc::INVALID_ADDRESS..0).contains(&v) {
        x0
    } else {
        smccc::INTERNAL_FAILURE as u64
    }
}

/// Runs vCPU `vcpu` of `handle` (the body of the `VcpuRun` host call).
pub(crate) fn run<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    handle: GuestHandle,
    vcpu: usize,
    complete: Option<Completion>,
) -> Result<Exit, Errno> {
    let (vttbr, vtcr) = hyp
        .mem
        .with_guest(handle, |g| (g.stage2().vttbr(), g.stage2().vtcr()))?;
    let loaded = hyp.with_vm(handle, |vm| {
        // Read under the VM lock, as TeardownStart decides under it: a run
        // either marks the vCPU running before a teardown can start (which
        // then answers EBUSY) or sees the VM dying, never neither.
        let dying = hyp.mem.with_guest(handle, |g| g.is_dying())?;
        let v = vm.vcpu_mut(vcpu).ok_or(Errno::Einval)?;
        if dying || v.waiting == Waiting::Stopped {
            return Err(Errno::Einval);
        }
        if v.running {
            return Err(Errno::Ebusy);
        }
        if v.power != Power::On {
            return if complete.is_some() {
                Err(Errno::Einval)
            } else {
                Ok(None)
            };
        }
        let allowed = match complete {
            None => true,
            Some(Completion::Values(_)) => {
                matches!(
                    v.waiting,
                    Waiting::Fault { isv: true, .. } | Waiting::CpuOn { .. }
                )
            }
            Some(Completion::Fail) => matches!(v.waiting, Waiting::Fault { hvc: true, .. }),
        };
        if !allowed {
            return Err(Errno::Einval);
        }
        let mut waiting = v.waiting;
        if let Waiting::CpuOn { target } = waiting {
            // The host's answer to the guest's CPU_ON: start the target at
            // the guest's entry point, or fail the call.
            let answer = match complete {
                Some(Completion::Values([x0, _])) => x0,
                _ => SMCCC_NOT_SUPPORTED as u64,
            };
            let caller_x0 = if answer == 0 {
                let t = &mut vm.vcpus[target];
                let (entry, arg) = t.boot;
                t.power_on(entry, arg);
                0
            } else {
                let t = &mut vm.vcpus[target];
                t.power = Power::Off;
                t.boot = (0, 0);
                psci_error(answer)
            };
            let v = &mut vm.vcpus[vcpu];
            v.ctx.x[0] = caller_x0;
            waiting = Waiting::Nothing;
        }
        vm.started = true;
        let v = &mut vm.vcpus[vcpu];
        v.running = true;
        Ok(Some((v.ctx, waiting)))
    })??;
    let Some((mut ctx, waiting)) = loaded else {
        return Ok(Exit::PoweredOff);
    };
    let vref = VcpuRef {
        handle,
        index: vcpu,
        vttbr,
        vtcr,
    };
    arch.vcpu_load(vref, &mut ctx);
    let (result, waiting) = run_loop(hyp, arch, vref, &mut ctx, waiting, complete);
    arch.vcpu_put(vref, &mut ctx);
    let saved = hyp.with_vm(handle, |vm| {
        let mut waiting = waiting;
        if let Waiting::Conversion {
            outcome: o @ Outcome::Pending,
            ..
        } = &mut waiting
        {
            // The host answered while this vCPU ran (see
            // `VmState::unclaimed`).
            if let Some(answer) = vm.unclaimed.take() {
                *o = answer;
            }
        }
        let v = &mut vm.vcpus[vcpu];
        v.ctx = ctx;
        v.waiting = waiting;
        v.running = false;
        if result == Ok(Exit::PoweredOff) {
            v.power = Power::Off;
        }
    });
    saved.and(result)
}

/// Completes an emulated MMIO read of `size` bytes into `reg`.
fn complete_read(ctx: &mut VcpuContext, value: u64, reg: u8, size: u8, sign: bool, wide: bool) {
    if reg >= 31 {
        return;
    }
    let bits = u32::from(size.clamp(1, 8)) * 8;
    let mut v = if bits == 64 {
        value
    } else {
        value & ((1u64 << bits) - 1)
    };
    if sign && bits < 64 {
        let shift = 64 - bits;
        v = (((v << shift) as i64) >> shift) as u64;
    }
    if !wide {
        v &= 0xffff_ffff;
    }
    ctx.x[reg as usize] = v;
}

fn run_loop<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    vref: VcpuRef,
    ctx: &mut VcpuContext,
    waiting: Waiting,
    complete: Option<Completion>,
) -> (Result<Exit, Errno>, Waiting) {
    match waiting {
        Waiting::Nothing | Waiting::Stopped | Waiting::CpuOn { .. } => {}
        Waiting::Conversion {
            kind,
            gfn,
            pages,
            outcome,
        } => match outcome {
            Outcome::Pending => return (Ok(memory_fault(kind, gfn, pages)), waiting),
            Outcome::Done => ret(ctx, [SMCCC_SUCCESS, pages as i64]),
            Outcome::Refused => ret(ctx, [SMCCC_INVALID_PARAMETER, 0]),
        },
        Waiting::Fault {
            read,
            reg,
            size,
            sign,
            wide,
            ..
        } => {
            // With values, the host emulated the access as MMIO; with Fail,
            // the hypercall that faulted is skipped and fails; without
            // either, the host mapped memory and the access is retried.
            if complete == Some(Completion::Fail) {
                ctx.pc = ctx.pc.wrapping_add(A::INSN_SIZE);
                ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            }
            if let Some(Completion::Values([value, _])) = complete {
                if read {
                    complete_read(ctx, value, reg, size, sign, wide);
                }
                ctx.pc = ctx.pc.wrapping_add(A::INSN_SIZE);
            }
        }
    }
    let nr_lrs = arch.nr_lrs();
    for _ in 0..TRAP_BUDGET {
        // The virtual GIC: what the vCPU should see goes into its list
        // registers, and comes back from them after the exit.
        let timer = arch.timer_line();
        let _ = hyp.with_vm(vref.handle, |vm| {
            let mut vgic = vm.vgic();
            vgic.set_timer_line(vref.index, timer);
            vgic.flush(vref.index, nr_lrs, &mut ctx.gic.lrs);
        });
        let trap = arch.run_vcpu(vref, ctx);
        let exited = ctx.gic.lrs;
        let _ = hyp.with_vm(vref.handle, |vm| vm.vgic().fold(vref.index, &exited));
        let next = match trap {
            Trap::Hvc { imm } | Trap::Smc { imm } => {
                if imm != 0 {
                    ret(ctx, [SMCCC_NOT_SUPPORTED, 0]);
                    Next::Resume
                } else {
                    guest_call(hyp, arch, vref, ctx)
                }
            }
            Trap::DataAbort(abort) => {
                if vgic_mmio::<_, _, _, A>(hyp, vref, ctx, abort) {
                    Next::Resume
                } else {
                    stage2_fault(hyp, vref.handle, ctx, abort, false)
                }
            }
            Trap::InstructionAbort { ipa, permission } => {
                let abort = Abort {
                    ipa,
                    permission,
                    ..Abort::default()
                };
                stage2_fault(hyp, vref.handle, ctx, abort, true)
            }
            Trap::Wfi => {
                // A WFI with an interrupt waiting for the vCPU returns at
                // once, as on hardware.
                let timer = arch.timer_line();
                let pending = hyp.with_vm(vref.handle, |vm| {
                    let mut vgic = vm.vgic();
                    vgic.set_timer_line(vref.index, timer);
                    vgic.has_pending(vref.index)
                });
                if pending == Ok(true) {
                    Next::Resume
                } else {
                    Next::Exit(Ok(Exit::Wfi), Waiting::Nothing)
                }
            }
            Trap::Interrupt => {
                if guest_interrupt(arch.timer_line(), &exited) {
                    Next::Resume
                } else {
                    Next::Exit(Ok(Exit::Interrupted), Waiting::Nothing)
                }
            }
            Trap::Sgi { value } => {
                let _ = hyp.with_vm(vref.handle, |vm| vm.vgic().sgi(vref.index, value));
                Next::Resume
            }
            Trap::Other { esr } => Next::Exit(
                Ok(Exit::Stopped {
                    ec: (esr >> 26) & 0x3f,
                }),
                Waiting::Stopped,
            ),
        };
        if let Next::Exit(result, waiting) = next {
            return (result, waiting);
        }
    }
    // The guest kept EL2 busy: let the host decide when to run it again.
    (Ok(Exit::Interrupted), Waiting::Nothing)
}

/// Whether a physical interrupt that ended a run was the guest's own:
/// its virtual timer fired while el2 had not yet taken its line over (the
/// next flush injects it and quiets the physical PPI), or the virtual CPU
/// interface asked for more list registers (underflow maintenance). Either
/// way the core resumes the guest; anything else is the host's.
fn guest_interrupt(timer: bool, exited: &ListRegs) -> bool {
    let valid = exited
        .lr
        .iter()
        .take(exited.used as usize)
        .filter(|lr| *lr >> 62 != 0)
        .count();
    (timer && exited.timer_hw_active == 0) || (exited.hcr & ICH_HCR_UIE != 0 && valid <= 1)
}

/// A data abort on the virtual GIC's registers: emulated here (the PC
/// steps past it). `false` if the IPA is not the GIC's or the access
/// cannot be emulated (no valid syndrome).
fn vgic_mmio<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    vref: VcpuRef,
    ctx: &mut VcpuContext,
    abort: Abort,
) -> bool {
    if !abort.isv {
        return false;
    }
    let write = abort.write.then(|| {
        if abort.reg < 31 {
            ctx.x[abort.reg as usize]
        } else {
            0
        }
    });
    let done = hyp.with_vm(vref.handle, |vm| {
        vm.vgic().mmio(abort.ipa, abort.size, write)
    });
    let Ok(Some(value)) = done else {
        return false;
    };
    if !abort.write {
        complete_read(ctx, value, abort.reg, abort.size, abort.sign, abort.wide);
    }
    ctx.pc = ctx.pc.wrapping_add(A::INSN_SIZE);
    true
}

fn memory_fault(kind: ConversionKind, gfn: u64, pages: u64) -> Exit {
    let flags = if kind == ConversionKind::Unshare {
        KVM_MEMORY_EXIT_FLAG_PRIVATE
    } else {
        0
    };
    Exit::MemoryFault {
        gpa: gfn * PAGE_SIZE,
        size: pages * PAGE_SIZE,
        flags,
    }
}

/// A stage-2 fault: unmapped pages go to the host; a poisoned page is an
/// error for the host; a fault on a mapped page cannot be fixed.
fn stage2_fault<M: PhysMem, P: TablePool, H: HypMappings>(
    hyp: &Hypervisor<M, P, H>,
    handle: GuestHandle,
    ctx: &mut VcpuContext,
    abort: Abort,
    exec: bool,
) -> Next {
    let state = hyp
        .mem
        .guest_state(handle, Gfn(abort.ipa / PAGE_SIZE))
        .map(|s| s.0);
    match state {
        Ok(GuestPageState::Poisoned) => Next::Exit(Err(Errno::Ehwpoison), Waiting::Nothing),
        Ok(GuestPageState::NoPage | GuestPageState::Relinquished) | Err(_) => {
            // With the MMIO guard on, only guarded granules reach the host
            // as emulatable accesses; elsewhere the host learns just the
            // address, to map memory there if it is the guest's RAM.
            let guarded = hyp
                .with_vm(handle, |vm| {
                    !vm.mmio_guard.active() || vm.mmio_guard.contains(abort.ipa / PAGE_SIZE)
                })
                .unwrap_or(false);
            let abort = if guarded {
                abort
            } else {
                Abort {
                    ipa: abort.ipa,
                    write: abort.write,
                    ..Abort::default()
                }
            };
            let data = if abort.write && abort.isv && abort.reg < 31 {
                let v = ctx.x[abort.reg as usize];
                match abort.size {
                    1 => v & 0xff,
                    2 => v & 0xffff,
                    4 => v & 0xffff_ffff,
                    _ => v,
                }
            } else {
                0
            };
            let exit = Exit::Stage2Fault {
                gpa: abort.ipa,
                write: abort.write,
                exec,
                isv: abort.isv,
                size: abort.size,
                reg: abort.reg,
                data,
                hvc: false,
            };
            let waiting = Waiting::Fault {
                read: !abort.write,
                reg: abort.reg,
                size: abort.size,
                isv: abort.isv,
                hvc: false,
                sign: abort.sign,
                wide: abort.wide,
            };
            Next::Exit(Ok(exit), waiting)
        }
        Ok(_) if !abort.permission => {
            // Mapped now, yet the access missed it: the host mapped the page
            // (on another CPU) between the fault and this look. Retry the
            // access; a run's trap budget bounds any repeat.
            Next::Resume
        }
        Ok(_) => {
            // A permission fault on a page mapped read/write/execute:
            // nothing here can make progress. Stop the vCPU rather than
            // spin.
            let ec = if exec { 0x20 } else { 0x24 };
            Next::Exit(Ok(Exit::Stopped { ec }), Waiting::Stopped)
        }
    }
}

/// One guest SMCCC call (HVC or SMC).
fn guest_call<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    vref: VcpuRef,
    ctx: &mut VcpuContext,
) -> Next {
    // SMCCC function ids are 32 bits; bit 16 is the SVE hint.
    let id = (ctx.x[0] as u32) & !(host_interface::abi::SMCCC_SVE_HINT as u32);
    let mut args = [ctx.x[1], ctx.x[2], ctx.x[3]];
    if id & smccc::SMC64 == 0 {
        for a in &mut args {
            *a &= 0xffff_ffff;
        }
    }
    let handle = vref.handle;
    match GuestCall::from_id(u64::from(id)) {
        Some(GuestCall::CallUid) => {
            ctx.x[..4].copy_from_slice(&KVM_UID);
            return Next::Resume;
        }
        Some(GuestCall::Features) => {
            ctx.x[..4].copy_from_slice(&[GUEST_FEATURES, 0, 0, 0]);
            return Next::Resume;
        }
        Some(GuestCall::HypMeminfo) => {
            if args != [0; 3] {
                ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            } else {
                ctx.x[..4].copy_from_slice(&[PAGE_SIZE, 1, 0, 0]);
            }
            return Next::Resume;
        }
        Some(GuestCall::MemShare) => {
            return conversion(hyp, arch, handle, ctx, ConversionKind::Share, args);
        }
        Some(GuestCall::MemUnshare) => {
            return conversion(hyp, arch, handle, ctx, ConversionKind::Unshare, args);
        }
        Some(GuestCall::MemRelinquish) => return relinquish(hyp, arch, handle, ctx, args),
        Some(GuestCall::MmioGuard) => {
            let ok = mmio_guard(hyp, handle, args);
            ret(
                ctx,
                [
                    if ok {
                        SMCCC_SUCCESS
                    } else {
                        SMCCC_INVALID_PARAMETER
                    },
                    0,
                ],
            );
            return Next::Resume;
        }
        None => {}
    }
    let fid32 = id & !smccc::SMC64;
    match id {
        smccc::VERSION => ctx.x[0] = smccc::VERSION_1_1,
        smccc::ARCH_FEATURES => {
            let supported = args[0] as u32 == smccc::ARCH_FEATURES;
            ctx.x[0] = if supported {
                SMCCC_SUCCESS as u64
            } else {
                SMCCC_NOT_SUPPORTED as u64
            };
        }
        smccc::PSCI_VERSION => ctx.x[0] = smccc::PSCI_1_1,
        smccc::MIGRATE_INFO_TYPE => ctx.x[0] = smccc::TOS_NOT_PRESENT_MP,
        smccc::PSCI_FEATURES => {
            ctx.x[0] = if psci_implemented(args[0] as u32) {
                SMCCC_SUCCESS as u64
            } else {
                SMCCC_NOT_SUPPORTED as u64
            };
        }
        _ if fid32 == smccc::CPU_SUSPEND => {
            // A standby state: the vCPU waits like WFI, then the call
            // returns SUCCESS.
            ctx.x[0] = SMCCC_SUCCESS as u64;
            return Next::Exit(Ok(Exit::Wfi), Waiting::Nothing);
        }
        smccc::CPU_OFF => return Next::Exit(Ok(Exit::PoweredOff), Waiting::Nothing),
        _ if fid32 == smccc::CPU_ON => return cpu_on(hyp, vref, ctx, u64::from(id), args),
        _ if fid32 == smccc::AFFINITY_INFO => {
            ctx.x[0] = affinity_info(hyp, handle, args) as u64;
        }
        smccc::SYSTEM_OFF | smccc::SYSTEM_RESET => {
            // Should the host run the vCPU again, the call failed.
            ctx.x[0] = smccc::INTERNAL_FAILURE as u64;
            let kind = u64::from(id == smccc::SYSTEM_RESET);
            return Next::Exit(Ok(Exit::SystemEvent { kind }), Waiting::Nothing);
        }
        _ if fid32 == smccc::SYSTEM_RESET2 => {
            // Warm reset (type 0) or a vendor reset (bit 31); other
            // architectural types are not defined.
            let kind = args[0] as u32;
            if kind != 0 && kind & 0x8000_0000 == 0 {
                ctx.x[0] = smccc::INVALID_PARAMETERS as u64;
                return Next::Resume;
            }
            ctx.x[0] = smccc::INTERNAL_FAILURE as u64;
            return Next::Exit(Ok(Exit::SystemEvent { kind: 1 }), Waiting::Nothing);
        }
        _ => ctx.x[0] = SMCCC_NOT_SUPPORTED as u64,
    }
    Next::Resume
}

/// Whether PSCI_FEATURES reports `fid` as implemented.
fn psci_implemented(fid: u32) -> bool {
    let f32 = fid & !smccc::SMC64;
    let both = [
        smccc::CPU_SUSPEND,
        smccc::CPU_ON,
        smccc::AFFINITY_INFO,
        smccc::SYSTEM_RESET2,
    ];
    matches!(
        fid,
        smccc::PSCI_VERSION
            | smccc::CPU_OFF
            | smccc::MIGRATE_INFO_TYPE
            | smccc::SYSTEM_OFF
            | smccc::SYSTEM_RESET
            | smccc::PSCI_FEATURES
            | smccc::VERSION
    ) || both.contains(&f32)
}

/// The vCPU index a PSCI target MPIDR names in a VM of `count` vCPUs.
fn target_index(mpidr: u64, count: usize) -> Option<usize> {
    let m = mpidr & MPIDR_HWID;
    let index = usize::try_from(m).ok()?;
    (index < count).then_some(index)
}

/// PSCI CPU_ON from vCPU `vref.index`: checked here, decided by the host.
fn cpu_on<M: PhysMem, P: TablePool, H: HypMappings>(
    hyp: &Hypervisor<M, P, H>,
    vref: VcpuRef,
    ctx: &mut VcpuContext,
    id: u64,
    args: [u64; 3],
) -> Next {
    let [mpidr, entry, context] = args;
    let checked = hyp.with_vm(vref.handle, |vm| {
        let Some(target) = target_index(mpidr, vm.vcpu_count) else {
            return Err(smccc::INVALID_PARAMETERS);
        };
        let t = &mut vm.vcpus[target];
        match t.power {
            Power::On => Err(smccc::ALREADY_ON),
            Power::OnPending => Err(smccc::ON_PENDING),
            Power::Off => {
                t.power = Power::OnPending;
                t.boot = (entry, context);
                Ok(target)
            }
        }
    });
    match checked {
        Ok(Ok(target)) => Next::Exit(Ok(Exit::Hypercall { id, args }), Waiting::CpuOn { target }),
        Ok(Err(psci)) => {
            ctx.x[0] = psci as u64;
            Next::Resume
        }
        Err(_) => {
            ctx.x[0] = smccc::INTERNAL_FAILURE as u64;
            Next::Resume
        }
    }
}

/// PSCI AFFINITY_INFO: 0 on, 1 off, 2 on pending; only level 0.
fn affinity_info<M: PhysMem, P: TablePool, H: HypMappings>(
    hyp: &Hypervisor<M, P, H>,
    handle: GuestHandle,
    args: [u64; 3],
) -> i64 {
    let [mpidr, level, _] = args;
    if level != 0 {
        return smccc::INVALID_PARAMETERS;
    }
    hyp.with_vm(handle, |vm| match target_index(mpidr, vm.vcpu_count) {
        None => smccc::INVALID_PARAMETERS,
        Some(t) => match vm.vcpus[t].power {
            Power::On => 0,
            Power::Off => 1,
            Power::OnPending => 2,
        },
    })
    .unwrap_or(smccc::INTERNAL_FAILURE)
}

/// MMIO_GUARD(IPA): guards the granule at a page-aligned IPA where the
/// guest has no memory (x2, x3 zero).
fn mmio_guard<M: PhysMem, P: TablePool, H: HypMappings>(
    hyp: &Hypervisor<M, P, H>,
    handle: GuestHandle,
    args: [u64; 3],
) -> bool {
    let [ipa, a2, a3] = args;
    if a2 != 0 || a3 != 0 || !ipa.is_multiple_of(PAGE_SIZE) {
        return false;
    }
    let gfn = Gfn(ipa / PAGE_SIZE);
    if !matches!(
        hyp.mem.guest_state(handle, gfn),
        Ok((GuestPageState::NoPage, _))
    ) {
        return false;
    }
    hyp.with_vm(handle, |vm| {
        let first = !vm.mmio_guard.active();
        let ok = vm.mmio_guard.insert(gfn.0);
        if ok && first {
            log::info!(
                "VM {:#x}: MMIO guard on (first granule {ipa:#x}): only guarded MMIO reaches the host",
                handle.0
            );
        }
        ok
    })
    .unwrap_or(false)
}

/// Decodes `(IPA, pages, reserved)`: the first gfn and the page count for
/// this call (0 means 1; at most [`MAX_GUEST_RANGE`]).
fn range_args(args: [u64; 3]) -> Option<(Gfn, u64)> {
    let [ipa, pages, reserved] = args;
    if reserved != 0 || !ipa.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    Some((Gfn(ipa / PAGE_SIZE), pages.clamp(1, MAX_GUEST_RANGE)))
}
fn conversion<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    _arch: &mut A,
    handle: GuestHandle,
    ctx: &mut VcpuContext,
    kind: ConversionKind,
    args: [u64; 3],
) -> Next {
    let Some((gfn, pages)) = range_args(args) else {
        ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
        return Next::Resume;
    };
    match hyp
        .mem
        .guest_request_conversion(handle, Conversion { kind, gfn, pages })
    {
        Ok(()) => Next::Exit(
            Ok(memory_fault(kind, gfn.0, pages)),
            Waiting::Conversion {
                kind,
                gfn: gfn.0,
                pages,
                outcome: Outcome::Pending,
            },
        ),
        Err(Errno::Enoent) if kind == ConversionKind::Share => {
            // Not mapped yet: have the host map it, then retry the HVC.
            let missing = (0..pages)
                .map(|i| Gfn(gfn.0 + i))
                .find(|g| hyp.mem.guest_state(handle, *g).is_ok_and(|s| s.1.is_none()))
                .unwrap_or(gfn);
            ctx.pc = ctx.pc.wrapping_sub(A::INSN_SIZE);
            let exit = Exit::Stage2Fault {
                gpa: missing.0 * PAGE_SIZE,
                write: true,
                exec: false,
                isv: false,
                size: 0,
                reg: 0,
                data: 0,
                hvc: true,
            };
            Next::Exit(
                Ok(exit),
                Waiting::Fault {
                    read: false,
                    reg: 0,
                    size: 0,
                    isv: false,
                    hvc: true,
                    sign: false,
                    wide: false,
                },
            )
        }
        Err(_) => {
            ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            Next::Resume
        }
    }
}

fn relinquish<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    handle: GuestHandle,
    ctx: &mut VcpuContext,
    args: [u64; 3],
) -> Next {
    let Some((gfn, pages)) = range_args(args) else {
        ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
        return Next::Resume;
    };
    match hyp.mem.guest_relinquish(arch.tlb(), handle, gfn, pages) {
        Ok(()) => {
            ret(ctx, [SMCCC_SUCCESS, pages as i64]);
            Next::Exit(
                Ok(Exit::Relinquished {
                    gpa: gfn.0 * PAGE_SIZE,
                    size: pages * PAGE_SIZE,
                }),
                Waiting::Nothing,
            )
        }
        Err(Errno::Enomem) => {
            ctx.pc = ctx.pc.wrapping_sub(A::INSN_SIZE);
            Next::Exit(Ok(Exit::MemcacheEmpty { pages: 2 }), Waiting::Nothing)
        }
        Err(_) => {
            ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            Next::Resume
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_reads_follow_the_syndrome() {
        let mut ctx = VcpuContext::default();
        let read = |ctx: &mut VcpuContext, v, size, sign, wide| {
            ctx.x[3] = 0xdead;
            complete_read(ctx, v, 3, size, sign, wide);
            ctx.x[3]
        };
        // LDRB w3 / LDRH w3 / LDR w3 / LDR x3: masked to the size.
        assert_eq!(read(&mut ctx, 0x1234_5678_9abc_def0, 1, false, false), 0xf0);
        assert_eq!(
            read(&mut ctx, 0x1234_5678_9abc_def0, 2, false, false),
            0xdef0
        );
        assert_eq!(
            read(&mut ctx, 0x1234_5678_9abc_def0, 4, false, false),
            0x9abc_def0
        );
        assert_eq!(
            read(&mut ctx, 0x1234_5678_9abc_def0, 8, false, true),
            0x1234_5678_9abc_def0
        );
        // LDRSB x3 / LDRSH w3 / LDRSW x3: sign-extended to the register.
        assert_eq!(read(&mut ctx, 0x80, 1, true, true), 0xffff_ffff_ffff_ff80);
        assert_eq!(read(&mut ctx, 0x8000, 2, true, false), 0xffff_8000);
        assert_eq!(
            read(&mut ctx, 0x8000_0000, 4, true, true),
            0xffff_ffff_8000_0000
        );
        assert_eq!(read(&mut ctx, 0x7f, 1, true, true), 0x7f);
        // XZR: nothing written.
        ctx.x[30] = 7;
        complete_read(&mut ctx, 5, 31, 8, false, true);
        assert_eq!(ctx.x, {
            let mut x = [0; 31];
            x[3] = 0x7f;
            x[30] = 7;
            x
        });
    }

    #[test]
    fn psci_targets_name_vcpus_by_aff0() {
        assert_eq!(target_index(1, 2), Some(1));
        assert_eq!(target_index(2, 2), None);
        assert_eq!(target_index(1 << 8, 4), None);
        assert_eq!(target_index(0x8000_0001, 4), Some(1), "bit 31 ignored");
        assert_eq!(psci_error(NEG9), NEG9);
        assert_eq!(psci_error(0), smccc::INTERNAL_FAILURE as u64);
        assert_eq!(psci_error(7), smccc::INTERNAL_FAILURE as u64);
    }

    const NEG9: u64 = -9i64 as u64;
}
