//! Running a vCPU: the guest calls the hypervisor answers itself (DESIGN
//! §4), the conversion protocol (DESIGN §5), and the exits handed to the
//! host in KVM's shape.
//!
//! A vCPU run resolves what the last exit left pending, then enters the
//! guest and handles its traps until one needs the host:
//!
//! - CALL_UID, FEATURES, HYP_MEMINFO, SMCCC_VERSION: answered at EL2.
//! - MEM_SHARE / MEM_UNSHARE: checked and recorded as the guest's pending
//!   conversion; the vCPU exits with [`Exit::MemoryFault`] (flag
//!   `KVM_MEMORY_EXIT_FLAG_PRIVATE` for unshare). The host completes or
//!   refuses it; the guest's call returns 0 (x1 = pages) or -3 on its next
//!   run. A share of a page not yet mapped exits as a stage-2 fault and the
//!   HVC is retried once the host has mapped it (pKVM does the same), or
//!   fails with -3 if the host answers that it cannot (`RUN_FAIL_ACCESS`).
//! - MEM_RELINQUISH: done at EL2 at once (pages wiped, host-owned), then an
//!   [`Exit::Relinquished`] tells the host.
//! - PSCI: SYSTEM_OFF and SYSTEM_RESET become [`Exit::SystemEvent`], the
//!   rest [`Exit::Hypercall`].
//! - Stage-2 faults on unmapped pages: [`Exit::Stage2Fault`] with the
//!   access syndrome, so the host can map memory or emulate MMIO.
//! - Unknown calls: NOT_SUPPORTED. Ranges longer than 512 pages are done
//!   512 at a time (x1 tells the guest how many).
//!
//! A run hands at most [`TRAP_BUDGET`] traps to EL2's own handling before
//! it returns to the host, so a host call never runs unbounded.

use super::arch::{Abort, Arch, VcpuContext, VcpuRef};
use super::vm::{Outcome, Waiting};
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

/// SMCCC_VERSION.
const SMCCC_VERSION: u64 = 0x8000_0000;
/// SMCCC_ARCH_FEATURES.
const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;
/// SMCCC version 1.1.
const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// PSCI SYSTEM_OFF.
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
/// PSCI SYSTEM_RESET.
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;

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

fn is_psci(id: u64) -> bool {
    let fid = id & !host_interface::abi::SMCCC_SVE_HINT;
    (0x8400_0000..=0x8400_001f).contains(&fid) || (0xc400_0000..=0xc400_001f).contains(&fid)
}

/// Runs vCPU `vcpu` of `handle` (the body of the `VcpuRun` host call).
pub(crate) fn run<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    handle: GuestHandle,
    vcpu: usize,
    complete: Option<Completion>,
) -> Result<Exit, Errno> {
    let dying = hyp.mem.with_guest(handle, |g| g.is_dying())?;
    let (vttbr, vtcr) = hyp
        .mem
        .with_guest(handle, |g| (g.stage2().vttbr(), g.stage2().vtcr()))?;
    let (mut ctx, waiting) = hyp.with_vm(handle, |vm| {
        let v = vm.vcpu_mut(vcpu).ok_or(Errno::Einval)?;
        if !v.initialized || dying || v.waiting == Waiting::Stopped {
            return Err(Errno::Einval);
        }
        if v.running {
            return Err(Errno::Ebusy);
        }
        let allowed = match complete {
            None => true,
            Some(Completion::Values(_)) => {
                matches!(
                    v.waiting,
                    Waiting::Fault { isv: true, .. } | Waiting::Hypercall
                )
            }
            Some(Completion::Fail) => matches!(v.waiting, Waiting::Fault { hvc: true, .. }),
        };
        if !allowed {
            return Err(Errno::Einval);
        }
        v.running = true;
        Ok((v.ctx, v.waiting))
    })??;
    let vref = VcpuRef {
        handle,
        index: vcpu,
        vttbr,
        vtcr,
    };
    let (result, waiting) = run_loop(hyp, arch, vref, &mut ctx, waiting, complete);
    let saved = hyp.with_vm(handle, |vm| {
        let v = &mut vm.vcpus[vcpu];
        v.ctx = ctx;
        v.waiting = waiting;
        v.running = false;
    });
    saved.and(result)
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
        Waiting::Nothing | Waiting::Stopped => {}
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
            read, reg, size, ..
        } => {
            // With values, the host emulated the access as MMIO; with Fail,
            // the hypercall that faulted is skipped and fails; without
            // either, the host mapped memory and the access is retried.
            if complete == Some(Completion::Fail) {
                ctx.pc = ctx.pc.wrapping_add(A::INSN_SIZE);
                ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            }
            if let Some(Completion::Values([value, _])) = complete {
                if read && reg < 31 {
                    let mask = if size >= 8 {
                        u64::MAX
                    } else {
                        (1u64 << (size as u32 * 8)) - 1
                    };
                    ctx.x[reg as usize] = value & mask;
                }
                ctx.pc = ctx.pc.wrapping_add(A::INSN_SIZE);
            }
        }
        Waiting::Hypercall => match complete {
            Some(Completion::Values([x0, x1])) => {
                ctx.x[0] = x0;
                ctx.x[1] = x1;
            }
            _ => ret(ctx, [SMCCC_NOT_SUPPORTED, 0]),
        },
    }
    for _ in 0..TRAP_BUDGET {
        let next = match arch.run_vcpu(vref, ctx) {
            super::arch::Trap::Hvc => guest_call(hyp, arch, vref.handle, ctx),
            super::arch::Trap::DataAbort(abort) => {
                stage2_fault(hyp, vref.handle, ctx, abort, false)
            }
            super::arch::Trap::InstructionAbort { ipa } => {
                let abort = Abort {
                    ipa,
                    write: false,
                    isv: false,
                    size: 0,
                    reg: 0,
                };
                stage2_fault(hyp, vref.handle, ctx, abort, true)
            }
            super::arch::Trap::Wfi => Next::Exit(Ok(Exit::Wfi), Waiting::Nothing),
            super::arch::Trap::Other { esr } => {
                Next::Exit(Ok(Exit::Unhandled { esr, pc: ctx.pc }), Waiting::Stopped)
            }
        };
        if let Next::Exit(result, waiting) = next {
            return (result, waiting);
        }
    }
    // The guest kept EL2 busy: let the host decide when to run it again.
    (Ok(Exit::Wfi), Waiting::Nothing)
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
            let data = if abort.write && abort.isv && abort.reg < 31 {
                ctx.x[abort.reg as usize]
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
            };
            Next::Exit(Ok(exit), waiting)
        }
        Ok(_) => {
            // Mapped read/write/execute, yet it faulted: nothing here can
            // make progress. Stop the vCPU rather than spin.
            let esr = if exec { 0x20 << 26 } else { 0x24 << 26 };
            Next::Exit(Ok(Exit::Unhandled { esr, pc: ctx.pc }), Waiting::Stopped)
        }
    }
}

/// One guest HVC.
fn guest_call<M: PhysMem, P: TablePool, H: HypMappings, A: Arch>(
    hyp: &Hypervisor<M, P, H>,
    arch: &mut A,
    handle: GuestHandle,
    ctx: &mut VcpuContext,
) -> Next {
    let id = ctx.x[0];
    let args = [ctx.x[1], ctx.x[2], ctx.x[3]];
    match GuestCall::from_id(id) {
        Some(GuestCall::CallUid) => {
            ctx.x[..4].copy_from_slice(&KVM_UID);
            Next::Resume
        }
        Some(GuestCall::Features) => {
            ctx.x[..4].copy_from_slice(&[GUEST_FEATURES, 0, 0, 0]);
            Next::Resume
        }
        Some(GuestCall::HypMeminfo) => {
            if args != [0; 3] {
                ret(ctx, [SMCCC_INVALID_PARAMETER, 0]);
            } else {
                ctx.x[..4].copy_from_slice(&[PAGE_SIZE, 1, 0, 0]);
            }
            Next::Resume
        }
        Some(GuestCall::MemShare) => {
            conversion(hyp, arch, handle, ctx, ConversionKind::Share, args)
        }
        Some(GuestCall::MemUnshare) => {
            conversion(hyp, arch, handle, ctx, ConversionKind::Unshare, args)
        }
        Some(GuestCall::MemRelinquish) => relinquish(hyp, arch, handle, ctx, args),
        // Not advertised in FEATURES until MMIO guarding lands.
        Some(GuestCall::MmioGuard) => {
            ret(ctx, [SMCCC_NOT_SUPPORTED, 0]);
            Next::Resume
        }
        None if id == SMCCC_VERSION => {
            ctx.x[0] = SMCCC_VERSION_1_1;
            Next::Resume
        }
        None if id == SMCCC_ARCH_FEATURES => {
            let supported = args[0] == SMCCC_ARCH_FEATURES;
            ret(
                ctx,
                [
                    if supported {
                        SMCCC_SUCCESS
                    } else {
                        SMCCC_NOT_SUPPORTED
                    },
                    0,
                ],
            );
            Next::Resume
        }
        None if id & !host_interface::abi::SMCCC_SVE_HINT == PSCI_SYSTEM_OFF => {
            Next::Exit(Ok(Exit::SystemEvent { kind: 0 }), Waiting::Nothing)
        }
        None if id & !host_interface::abi::SMCCC_SVE_HINT == PSCI_SYSTEM_RESET => {
            Next::Exit(Ok(Exit::SystemEvent { kind: 1 }), Waiting::Nothing)
        }
        None if is_psci(id) => Next::Exit(Ok(Exit::Hypercall { id, args }), Waiting::Hypercall),
        None => {
            ret(ctx, [SMCCC_NOT_SUPPORTED, 0]);
            Next::Resume
        }
    }
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
