//! The PSCI relay: what el2 does with the host's SMCs (trapped by
//! `HCR_EL2.TSC`; `ELR_EL2` points at the `smc`, so the trap handler has
//! already stepped past it).
//!
//! Only an allowlist reaches the firmware: PSCI function ids
//! (`0x8400_0000..=0x8400_001f`, `0xc400_0000..=0xc400_001f`) and SMCCC
//! architecture calls (`0x8000_0000..=0x8000_ffff`; `SMCCC_ARCH_FEATURES`
//! only about an allowed function). Every other SMC (FF-A, SiP, OEM,
//! trusted OS...) and any SMC with a non-zero immediate or a function id
//! with bits 63:32 set gets NOT_SUPPORTED (-1 in `x0`) without reaching the
//! firmware.
//!
//! - `CPU_ON` (32/64) is intercepted: el2 checks the target (a CPU of the
//!   device tree, else INVALID_PARAMETERS), the entry point (4-byte aligned
//!   RAM the host may access, else INVALID_ADDRESS) and the CPU's state (ALREADY_ON,
//!   ON_PENDING), records the host's entry and context id, and asks the
//!   firmware to start the CPU at [`el2_secondary_entry`] with its index as
//!   the context. The CPU then sets up its EL2 state (vectors, MMU, stack,
//!   stage-2) and enters the host at EL1 at the requested entry with the
//!   context id in `x0`.
//! - `CPU_SUSPEND` (32/64; entry `x2`, context `x3`), `CPU_DEFAULT_SUSPEND`
//!   and `SYSTEM_SUSPEND` (32/64; entry `x1`, context `x2`) carry a host
//!   entry point too, which the firmware would resume *at EL2*, outside
//!   stage-2. They are intercepted the same way: the entry is checked
//!   (INVALID_ADDRESS), the host's entry and context recorded in this CPU's
//!   state and marked as a pending resume, and the firmware is given
//!   [`el2_secondary_entry`] and the CPU's index instead. A wake-up from a
//!   power-down state thus goes through el2's secondary path, which enters
//!   the host at EL1 at its entry with the context in `x0`; if the call
//!   returns (a standby state, or an error) the mark is cleared and the
//!   result goes back to the host.
//! - `CPU_OFF` is forwarded after marking the CPU off-pending. A CPU_ON
//!   racing with it (another CPU starting this one again before it has
//!   reached the firmware's off state) asks the firmware's AFFINITY_INFO:
//!   until it says OFF the target is still on (ALREADY_ON, as PSCI says);
//!   once it does, the CPU_ON goes ahead. So el2's view never claims a CPU
//!   off that the firmware still runs, and never refuses one that is off.
//! - `SYSTEM_OFF` is forwarded, except that a non-zero `x1` (a register
//!   PSCI ignores; Linux passes 0) is taken as an exit status for test
//!   hosts: el2 then exits QEMU through semihosting with that status
//!   (1..=255, larger values become 255), falling back to PSCI SYSTEM_OFF.
//! - `SYSTEM_RESET`/`SYSTEM_RESET2`: under QEMU with semihosting el2
//!   exits with status 12 ([`exit::status::HOST_RESET`]): QEMU runs with
//!   `-no-reboot`, where a reset would look like a clean power-off.
//!   Without semihosting the call is forwarded.
//! - The other allowed calls (PSCI_VERSION, FEATURES, AFFINITY_INFO,
//!   SMCCC_VERSION...) are forwarded unchanged with
//!   `x0`..`x17`; what the firmware returns in `x0`..`x3` goes back to the
//!   host. A function the firmware does not implement (QEMU makes the
//!   `smc` UNDEFINED) returns NOT_SUPPORTED.

use smccc::psci;

use super::entry::{SmcRegs, TrapFrame, el2_secondary_entry, el2_smc_forward};
use super::exit;
use super::host::Hypervisor;
use super::percpu::{self, Power};
use super::residency;
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
/// SMCCC_ARCH_FEATURES.
const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;

/// Whether the function id `id` may reach the firmware: PSCI (SMC32 and
/// SMC64) or an SMCCC architecture call.
fn allowed(id: u32) -> bool {
    matches!(
        id,
        0x8400_0000..=0x8400_001f | 0xc400_0000..=0xc400_001f | 0x8000_0000..=0x8000_ffff
    )
}

/// Calls the firmware with `regs` in x0..x17 and returns x0..x17.
pub fn forward(regs: [u64; 18]) -> [u64; 18] {
    let mut block = SmcRegs { x: regs };
    let t0 = sysreg::counter();
    // SAFETY: `block` is a live register block; the firmware call clobbers
    // only x0..x17 (caller-saved in the C ABI the routine follows) and an
    // UNDEFINED `smc` is resumed by the EL2 fault handler with x0 = -1.
    unsafe { el2_smc_forward(&mut block) };
    residency::firmware(t0);
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
    if !allowed(id) {
        frame.x[0] = NOT_SUPPORTED;
        return;
    }
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
        psci::PSCI_CPU_SUSPEND_32 | psci::PSCI_CPU_SUSPEND_64 => {
            let mask = if id == psci::PSCI_CPU_SUSPEND_32 {
                0xffff_ffff
            } else {
                u64::MAX
            };
            let (power_state, entry, context) =
                (frame.x[1] & mask, frame.x[2] & mask, frame.x[3] & mask);
            frame.x[0] = suspend(
                hyp,
                psci::PSCI_CPU_SUSPEND_64,
                &[power_state],
                entry,
                context,
            );
        }
        psci::PSCI_SYSTEM_SUSPEND_32
        | psci::PSCI_SYSTEM_SUSPEND_64
        | psci::PSCI_CPU_DEFAULT_SUSPEND_32
        | psci::PSCI_CPU_DEFAULT_SUSPEND_64 => {
            let is32 =
                id == psci::PSCI_SYSTEM_SUSPEND_32 || id == psci::PSCI_CPU_DEFAULT_SUSPEND_32;
            let mask = if is32 { 0xffff_ffff } else { u64::MAX };
            let id64 = if id == psci::PSCI_SYSTEM_SUSPEND_32 || id == psci::PSCI_SYSTEM_SUSPEND_64 {
                psci::PSCI_SYSTEM_SUSPEND_64
            } else {
                psci::PSCI_CPU_DEFAULT_SUSPEND_64
            };
            frame.x[0] = suspend(hyp, id64, &[], frame.x[1] & mask, frame.x[2] & mask);
        }
        SMCCC_ARCH_FEATURES if !allowed(frame.x[1] as u32) => {
            // An SMC32 call: only w1 counts.
            // Do not advertise what the host may not call.
            frame.x[0] = NOT_SUPPORTED;
        }
        psci::PSCI_CPU_OFF => {
            let me = sysreg::cpu_index();
            if let Some(cpu) = percpu::get(me) {
                cpu.set_power(Power::OffPending);
            }
            log::info!("PSCI CPU_OFF");
            let out = forward(regs_of(frame));
            // CPU_OFF returns only on failure: still on, unless a CPU_ON
            // meanwhile (seeing the firmware say off, which it cannot
            // have) moved the state on.
            if let Some(cpu) = percpu::get(me) {
                let _ = cpu.transition(Power::OffPending, Power::On);
            }
            frame.x[0] = out[0];
        }
        psci::PSCI_SYSTEM_OFF => {
            residency::report("SYSTEM_OFF");
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
        psci::PSCI_SYSTEM_RESET | psci::PSCI_SYSTEM_RESET2_64 | psci::PSCI_SYSTEM_RESET2_32 => {
            log::info!("host requested a system reset ({id:#x})");
            residency::report("SYSTEM_RESET");
            // Under QEMU (-no-reboot) a reset would end the run with
            // status 0, indistinguishable from a power-off: say what
            // happened instead. Without semihosting, reset for real.
            exit::semihost_exit(exit::status::HOST_RESET);
            let out = forward(regs_of(frame));
            frame.x[0] = out[0];
        }
        _ => {
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
    if !host_can_run(hyp, entry) {
        return INVALID_ADDRESS;
    }
    match cpu.transition(Power::Off, Power::OnPending) {
        Ok(()) => {}
        Err(Power::On) => return ALREADY_ON,
        Err(Power::OffPending) => {
            // The target called CPU_OFF but may not be off yet: only the
            // firmware knows. Until it says OFF the CPU is still on, as
            // PSCI has it (ALREADY_ON); once it does, it can be started.
            if firmware_affinity(cpu.mpidr()) != AFFINITY_OFF
                || cpu.transition(Power::OffPending, Power::OnPending).is_err()
            {
                return ALREADY_ON;
            }
        }
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
        let _ = cpu.transition(Power::OnPending, Power::Off);
        log::warn!("firmware refused CPU_ON for CPU {index}: {:#x}", out[0]);
    } else {
        log::info!("PSCI CPU_ON: CPU {index} (MPIDR {target:#x}) -> host entry {entry:#x}");
    }
    out[0]
}

/// PSCI AFFINITY_INFO: the affinity is OFF.
const AFFINITY_OFF: u64 = 1;

/// What the firmware says of the CPU with `mpidr` (PSCI AFFINITY_INFO,
/// level 0).
fn firmware_affinity(mpidr: u64) -> u64 {
    let mut regs = [0u64; 18];
    regs[0] = u64::from(psci::PSCI_AFFINITY_INFO_64);
    regs[1] = mpidr;
    forward(regs)[0]
}

/// Whether `entry` is memory the host can execute: RAM the host owns or
/// shares (not hypervisor or guest memory), 4-byte aligned.
fn host_can_run(hyp: &Hypervisor, entry: u64) -> bool {
    entry.is_multiple_of(4)
        && hyp
            .core
            .mem
            .page(ownership::Pfn(entry >> 12))
            .is_some_and(|e| e.host() != ownership::PageState::NoPage)
}

/// The intercepted CPU_SUSPEND / CPU_DEFAULT_SUSPEND / SYSTEM_SUSPEND
/// (module docs): calls the SMC64 function `id` with `args` (before the
/// entry point) and el2's own entry point and this CPU's index, after
/// recording the host's `entry` and `context`. Returns the PSCI status if
/// the call returns.
fn suspend(hyp: &Hypervisor, id: u32, args: &[u64], entry: u64, context: u64) -> u64 {
    if !host_can_run(hyp, entry) {
        return INVALID_ADDRESS;
    }
    let me = sysreg::cpu_index();
    let Some(cpu) = percpu::get(me) else {
        return INVALID_PARAMETERS;
    };
    cpu.set_boot(entry, context);
    cpu.set_resuming(true);
    let mut regs = [0u64; 18];
    regs[0] = u64::from(id);
    let n = args.len().min(2);
    regs[1..=n].copy_from_slice(&args[..n]);
    regs[n + 1] = el2_secondary_entry as *const () as u64;
    regs[n + 2] = me as u64;
    let out = forward(regs);
    // Back here: a standby state, or the call failed.
    cpu.set_resuming(false);
    out[0]
}
