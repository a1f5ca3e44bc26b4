//! Leaving QEMU: semihosting `SYS_EXIT` with a status, then PSCI
//! `SYSTEM_OFF` as the fallback.
//!
//! Semihosting is the only way to hand an exit status back to QEMU, so it
//! is tried first. Without `-semihosting` on QEMU's command line the `hlt`
//! is UNDEFINED; the EL2 fault handler then resumes after it
//! ([`super::entry::el2_semihost_call`]) and el2 powers the machine off
//! through PSCI (QEMU then exits with status 0), and parks the CPU if even
//! that returns.

use super::entry::{self, el2_semihost_call};
use super::psci;

/// Semihosting operation number of `SYS_EXIT`.
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: a normal exit carrying an exit code.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Exit statuses of el2 itself (a host's own status, passed with PSCI
/// SYSTEM_OFF, is reported as it is: see [`super::psci`]).
pub mod status {
    /// el2 was not entered at EL2 (QEMU lacks `virtualization=on`).
    pub const WRONG_EL: u32 = 4;
    /// Boot failed: bad device tree, no usable host image, no memory...
    pub const BOOT_FAILED: u32 = 5;
    /// An unexpected exception (from the host or from EL2 itself).
    pub const UNEXPECTED_TRAP: u32 = 6;
    /// el2 panicked (a bug).
    pub const PANIC: u32 = 7;

    /// The host reset the machine (PSCI `SYSTEM_RESET`/`SYSTEM_RESET2`);
    /// QEMU runs with `-no-reboot`, which would otherwise exit with 0.
    pub const HOST_RESET: u32 = 12;
}

/// Exits QEMU with `code` through semihosting; returns only when
/// semihosting is off (see the module docs).
pub fn semihost_exit(code: u32) {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
    // SAFETY: the AArch64 semihosting call: w0 = SYS_EXIT, x1 points to a
    // parameter block that lives on this stack for the whole call. If
    // semihosting is off the EL2 fault handler skips the `hlt`.
    unsafe { el2_semihost_call(SYS_EXIT, block.as_ptr() as u64) };
}

/// Exits QEMU with `code` as its exit status (see the module docs).
pub fn exit(code: u32) -> ! {
    semihost_exit(code);
    psci::system_off();
    entry::park()
}
