//! The PSCI relay: what el2 does with the host's SMCs (trapped by
//! `HCR_EL2.TSC`; `ELR_EL2` points at the `smc`, so the trap handler has
//! already stepped past it).
//!
//! - `CPU_ON` (32/64) is intercepted: el2 checks the target (a CPU of the
//!   device tree, else INVALID_PARAMETERS), the entry point (4-byte aligned
//!   RAM the host may access, else INVALID_ADDRESS) and the CPU's state (ALREADY_ON,
//!   ON_PENDING), records the host's entry and context id, and asks the
//!   firmware to start the CPU at [`el2_secondary_entry`] with its index as
//!   the context. The CPU then sets up its EL2 state (vectors, MMU, stack,
//!   stage-2) and enters the host at EL1 at the requested entry with the
//!   context id in `x0`.
//! - `CPU_OFF` is forwarded after marking the CPU off (so it can be turned
//!   on again).
//! - `SYSTEM_OFF` is forwarded, except that a non-zero `x1` (a register
//!   PSCI ignores; Linux passes 0) is taken as an exit status for test
//!   hosts: el2 then exits QEMU through semihosting with that status
//!   (1..=255, larger values become 255), falling back to PSCI SYSTEM_OFF.
//! - Everything else (PSCI_VERSION, FEATURES, AFFINITY_INFO, SYSTEM_RESET,
//!   CPU_SUSPEND...) is forwarded unchanged with `x0`..`x17`; what the
//!   firmware returns in `x0`..`x3` goes back to the host. A function the
//!   firmware does not implement (QEMU makes the `smc` UNDEFINED) returns
//!   NOT_SUPPORTED, as does any SMC with a non-zero immediate or a function
//!   id with bits 63:32 set.

use smccc::psci;

use super::entry::{SmcRegs, TrapFrame, el2_secondary_entry, el2_smc_forward};
use super::exit;
use super::host::Hypervisor;
use super::percpu::{self, Power};
use super::sysreg;

/// SMCCC NOT_SUPPORTED.
const NOT_SUPPORTED: u64 = -1i64 as u64;
/// PSCI INVALID_PARAMETERS.
const INVALID_PARAMETERS: u64 = -2i64 as u64;
/// PSCI ALREADY_ON.
const ALREADY_ON: u64 = -4i64 as u64;
/// PSCI ON_PENDING.
const ON_PENDING: u64 = -5i64 as u64;
/// PSCI INVALID_ADDRESS.
const INVALID_ADDRESS: u64 = -9i64 as u64;

/// Calls the firmware with `regs` in x0..x17 and returns x0..x17.
pub fn forward(regs: [u64; 18]) -> [u64; 18] {
    let mut block = SmcRegs { x: regs };
    // SAFETY: `block` is a live register block; the firmware call clobbers
    // only x0..x17 (caller-saved in the C ABI the routine follows) and an
    // UNDEFINED `smc` is resumed by the EL2 fault handler with x0 = -1.
    unsafe { el2_smc_forward(&mut block) };
    block.x
}

/// PSCI SYSTEM_OFF from el2 itself.
pub fn system_off() {
    let mut regs = [0u64; 18];
    regs[0] = u64::from(psci::PSCI_SYSTEM_OFF);
    forward(regs);
}

/// Handles a host SMC whose syndrome is `esr` (`frame.elr` is already past
/// the `smc`).
pub fn host_smc(hyp: &Hypervisor, frame: &mut TrapFrame, esr: u64) {
    let id = frame.x[0];
    let imm = esr & 0xffff;
    if imm != 0 || id >> 32 != 0 {
        frame.x[0] = NOT_SUPPORTED;
        return;
    }
    let id = id as u32;
    match id {
        psci::PSCI_CPU_ON_32 | psci::PSCI_CPU_ON_64 => {
            let (target, entry, context) = if id == psci::PSCI_CPU_ON_32 {
                (
                    frame.x[1] & 0xffff_ffff,
                    frame.x[2] & 0xffff_ffff,
                    frame.x[3] & 0xffff_ffff,
                )
            } else {
                (frame.x[1], frame.x[2], frame.x[3])
            };
            frame.x[0] = cpu_on(hyp, target, entry, context);
        }
        psci::PSCI_CPU_OFF => {
            let me = sysreg::cpu_index();
            if let Some(cpu) = percpu::get(me) {
                cpu.set_power(Power::Off);
            }
            log::info!("PSCI CPU_OFF");
            let out = forward(regs_of(frame));
            // CPU_OFF returns only on failure.
            if let Some(cpu) = percpu::get(me) {
                cpu.set_power(Power::On);
            }
            frame.x[0] = out[0];
        }
        psci::PSCI_SYSTEM_OFF => {
            let status = frame.x[1];
            if status != 0 {
                let code = u32::try_from(status.min(255)).unwrap_or(255);
                log::info!("host requested SYSTEM_OFF with exit status {code}");
                exit::exit(code);
            }
            log::info!("host requested SYSTEM_OFF");
            let out = forward(regs_of(frame));
            frame.x[0] = out[0];
        }
        _ => {
            if id == psci::PSCI_SYSTEM_RESET {
                log::info!("host requested SYSTEM_RESET");
            }
            let out = forward(regs_of(frame));
            frame.x[..4].copy_from_slice(&out[..4]);
        }
    }
}

fn regs_of(frame: &TrapFrame) -> [u64; 18] {
    let mut regs = [0u64; 18];
    regs.copy_from_slice(&frame.x[..18]);
    regs
}

/// The intercepted CPU_ON (module docs); returns the PSCI status.
fn cpu_on(hyp: &Hypervisor, target: u64, entry: u64, context: u64) -> u64 {
    let Some(index) = percpu::index_of(target) else {
        return INVALID_PARAMETERS;
    };
    let Some(cpu) = percpu::get(index) else {
        return INVALID_PARAMETERS;
    };
    // The entry must be host memory the host can execute: RAM the host
    // owns or shares (not hypervisor or guest memory), 4-byte aligned.
    let host_can_run = entry.is_multiple_of(4)
        && hyp
            .core
            .mem
            .page(ownership::Pfn(entry >> 12))
            .is_some_and(|e| e.host() != ownership::PageState::NoPage);
    if !host_can_run {
        return INVALID_ADDRESS;
    }
    match cpu.transition(Power::Off, Power::OnPending) {
        Ok(()) => {}
        Err(Power::On) => return ALREADY_ON,
        Err(_) => return ON_PENDING,
    }
    cpu.set_boot(entry, context);
    let mut regs = [0u64; 18];
    regs[0] = u64::from(psci::PSCI_CPU_ON_64);
    regs[1] = cpu.mpidr();
    regs[2] = el2_secondary_entry as *const () as u64;
    regs[3] = index as u64;
    let out = forward(regs);
    if out[0] != 0 {
        cpu.set_power(Power::Off);
        log::warn!("firmware refused CPU_ON for CPU {index}: {:#x}", out[0]);
    } else {
        log::info!("PSCI CPU_ON: CPU {index} (MPIDR {target:#x}) -> host entry {entry:#x}");
    }
    out[0]
}
