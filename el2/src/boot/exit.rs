//! Leaving QEMU: semihosting `SYS_EXIT`, then PSCI `SYSTEM_OFF`.
//!
//! Semihosting is the only way to hand an exit code back to QEMU, so it is
//! tried first. Without `-semihosting` on QEMU's command line, `hlt #0xf000`
//! is an undefined instruction and, as this image installs no exception
//! vectors yet, the CPU then takes an exception to an unset vector instead of
//! reaching the PSCI fallback. `cargo qemu run`/`test` always pass
//! `-semihosting`; the PSCI call is there for when semihosting returns
//! (e.g. a QEMU that ignores the exit request).

use core::arch::asm;

/// Semihosting operation number of `SYS_EXIT`.
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: a normal exit carrying an exit code.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;
/// PSCI 0.2 `SYSTEM_OFF` function ID (SMC32 calling convention).
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// Exits QEMU with `code` as its exit status.
///
/// Falls back to powering the system off through PSCI (QEMU then exits with
/// status 0), and parks the CPU if that returns too.
pub fn exit(code: u32) -> ! {
    semihosting_exit(code);
    psci_system_off();
    super::entry::park()
}

/// Semihosting `SYS_EXIT` with `ADP_Stopped_ApplicationExit` and `code`.
/// Returns only if the debugger (QEMU) did not stop the program.
fn semihosting_exit(code: u32) {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
    // SAFETY: this is the AArch64 semihosting call sequence: w0 holds the
    // operation and x1 points to a parameter block that stays alive (on the
    // stack) for the duration of the call. The call may clobber x0 with a
    // result and reads the block; asm! without `nomem` lets it read memory.
    // `-semihosting` is required (see the module docs).
    unsafe {
        asm!(
            "hlt #0xf000",
            inout("x0") SYS_EXIT => _,
            in("x1") block.as_ptr(),
            options(nostack, preserves_flags),
        );
    }
}

/// PSCI `SYSTEM_OFF` through the SMC conduit, which QEMU's `virt` machine
/// uses when it boots at EL2 without firmware.
fn psci_system_off() {
    // SAFETY: SYSTEM_OFF takes no arguments and does not return on success;
    // if it does return, PSCI may have clobbered x0-x3 (declared here), and
    // no memory this program owns is touched.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") PSCI_SYSTEM_OFF => _,
            out("x1") _,
            out("x2") _,
            out("x3") _,
            options(nostack),
        );
    }
}
