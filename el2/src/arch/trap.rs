//! Exception dispatch: every EL2 vector lands in [`el2_trap`].
//!
//! - From the host (lower EL, AArch64, synchronous): HVC → [`host_hvc`],
//!   SMC → the PSCI relay, instruction/data abort → stage-2 fault handling.
//! - From EL2 itself: an UNDEFINED forwarded `smc` or semihosting `hlt`
//!   (firmware or semihosting absent) resumes after the instruction with
//!   `x0` = -1; anything else is a bug.
//! - From the host's AArch32 EL0 (synchronous): instruction/data abort →
//!   stage-2 fault handling, as for AArch64.
//! - Any other synchronous trap from the host (a syndrome el2 does not
//!   expect) is logged at warn level and answered with an UNDEFINED
//!   instruction exception injected into the host
//!   ([`abort::inject_undef`]): the host cannot stop the machine.
//! - Anything unexpected at EL2 itself (other syndromes, IRQ/FIQ/SError
//!   taken to EL2) is logged with ESR/FAR/HPFAR/ELR/SPSR and stops the
//!   machine with [`status::UNEXPECTED_TRAP`] (semihosting exit, PSCI
//!   SYSTEM_OFF fallback).

use aarch64_cpu::registers::{ESR_EL2, FAR_EL2, HPFAR_EL2, Readable};

use super::entry::{TrapFrame, el2_semihost_insn, el2_smc_forward_insn, kind};
use super::exit::{self, status};
use super::host::HYP;
use super::hvc::host_hvc;
use super::residency::{self, Kind};
use super::{abort, console, psci, sysreg};
use host_interface::abi::{HostCall, SMCCC_SVE_HINT};

const EC_UNKNOWN: u64 = 0x00;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_IABT_LOW: u64 = 0x20;
const EC_DABT_LOW: u64 = 0x24;

/// Rust side of every EL2 vector (`kind` = the vector's index).
pub extern "C" fn el2_trap(frame: &mut TrapFrame, kind: u64) {
    let esr = ESR_EL2.get();
    let ec = (esr >> 26) & 0x3f;
    match kind {
        kind::LOWER_SYNC => {
            let Some(hyp) = HYP.get() else {
                fatal_trap(frame, "host trap before the hypervisor state exists");
            };
            let t0 = sysreg::counter();
            let what = match ec {
                EC_HVC64 => {
                    let run = frame.x[0] & !SMCCC_SVE_HINT == HostCall::VcpuRun.id();
                    host_hvc(hyp, frame);
                    if run { Kind::GuestRun } else { Kind::HostCall }
                }
                EC_SMC64 => {
                    // ELR_EL2 points at the trapped `smc` itself.
                    frame.elr = frame.elr.wrapping_add(4);
                    psci::host_smc(hyp, frame, esr);
                    Kind::Psci
                }
                EC_IABT_LOW | EC_DABT_LOW => abort::host_mem_abort(hyp, frame, esr),
                _ => {
                    unexpected_host_trap(frame, esr);
                    Kind::Other
                }
            };
            residency::record(what, t0);
        }
        kind::LOWER_SYNC_32 => {
            let Some(hyp) = HYP.get() else {
                fatal_trap(frame, "host trap before the hypervisor state exists");
            };
            let t0 = sysreg::counter();
            let what = match ec {
                EC_IABT_LOW | EC_DABT_LOW => abort::host_mem_abort(hyp, frame, esr),
                _ => {
                    unexpected_host_trap(frame, esr);
                    Kind::Other
                }
            };
            residency::record(what, t0);
        }
        kind::CURRENT_SYNC => {
            let skippable = [
                el2_smc_forward_insn as *const () as u64,
                el2_semihost_insn as *const () as u64,
            ];
            if ec == EC_UNKNOWN && skippable.contains(&frame.elr) {
                frame.x[0] = u64::MAX; // -1: NOT_SUPPORTED / semihosting absent
                frame.elr += 4;
                return;
            }
            fatal_trap(frame, "unexpected exception at EL2");
        }
        _ => fatal_trap(frame, kind::name(kind)),
    }
}

/// A synchronous trap from the host el2 does not handle: logged, and an
/// UNDEFINED instruction exception injected into the host.
fn unexpected_host_trap(frame: &mut TrapFrame, esr: u64) {
    log::warn!(
        "unexpected trap from the host (ESR_EL2 {esr:#x}, EC {:#x}, ELR {:#x}, SPSR {:#x}): \
         injecting an UNDEFINED instruction exception",
        (esr >> 26) & 0x3f,
        frame.elr,
        frame.spsr
    );
    abort::inject_undef(frame);
}

/// Logs the exception `frame` describes and stops the machine.
pub fn fatal_trap(frame: &TrapFrame, what: &str) -> ! {
    let esr = ESR_EL2.get();
    console::emergency(format_args!(
        "{what}: ESR_EL2={esr:#x} (EC={:#x}) FAR_EL2={:#x} HPFAR_EL2={:#x} ELR_EL2={:#x} \
         SPSR_EL2={:#x} x0={:#x} x1={:#x} x2={:#x} x3={:#x}",
        (esr >> 26) & 0x3f,
        FAR_EL2.get(),
        HPFAR_EL2.get(),
        frame.elr,
        frame.spsr,
        frame.x[0],
        frame.x[1],
        frame.x[2],
        frame.x[3],
    ));
    exit::exit(status::UNEXPECTED_TRAP)
}
