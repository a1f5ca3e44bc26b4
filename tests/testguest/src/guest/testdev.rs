//! The VMM's test device (`host_interface::platform::testdev`): single
//! volatile 8-byte loads and stores, each an MMIO exit the VMM handles
//! synchronously.

use core::sync::atomic::{AtomicU64, Ordering};

use host_interface::platform::{self, testdev};

use super::arch::{dsb_sy, read64, write64};

static BASE: AtomicU64 = AtomicU64::new(platform::TEST_DEVICE);

/// Uses the test device at `base` (from the device tree) from now on.
pub fn set_base(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

/// The test device's IPA.
pub fn base() -> u64 {
    BASE.load(Ordering::Relaxed)
}

fn read(reg: u64) -> u64 {
    // SAFETY: a register of the test device, 8-byte aligned, mapped
    // Device; reading it has no effect on our memory.
    unsafe { read64(base() + reg) }
}

fn write(reg: u64, val: u64) {
    // SAFETY: a register of the test device, 8-byte aligned, mapped
    // Device. A command may change guest memory only as the suite asks
    // (FILL_PATTERN on a page the guest shared; PUNCH/CONVERT of pages
    // the suite owns and expects to be refused), and the asm orders the
    // store with our other accesses.
    unsafe { write64(base() + reg, val) }
}

/// The ID register (reads [`testdev::MAGIC`]).
pub fn id() -> u64 {
    read(testdev::ID)
}

/// Runs `cmd` with `args`; returns RESULT. A full barrier first, so the
/// host sees every byte the guest wrote before it.
pub fn command(cmd: u64, args: [u64; 3]) -> i64 {
    dsb_sy();
    write(testdev::ARG0, args[0]);
    write(testdev::ARG1, args[1]);
    write(testdev::ARG2, args[2]);
    write(testdev::CMD, cmd);
    read(testdev::RESULT) as i64
}

/// `CHECK_PATTERN(gpa, byte)`: 0 match, 1 mismatch, -EFAULT private.
pub fn check_pattern(gpa: u64, byte: u8) -> i64 {
    command(testdev::CHECK_PATTERN, [gpa, u64::from(byte), 0])
}

/// `FILL_PATTERN(gpa, byte)`: 0, or -EFAULT private.
pub fn fill_pattern(gpa: u64, byte: u8) -> i64 {
    command(testdev::FILL_PATTERN, [gpa, u64::from(byte), 0])
}

/// `PROBE_PHYS(gpa)`: 0 the host read it, 1 refused (abort injected into
/// the host), -ENOENT nothing backs it.
pub fn probe_phys(gpa: u64) -> i64 {
    command(testdev::PROBE_PHYS, [gpa, 0, 0])
}

/// `PUNCH(gpa, size)`: 0 or a negative errno.
pub fn punch(gpa: u64, size: u64) -> i64 {
    command(testdev::PUNCH, [gpa, size, 0])
}

/// `CONVERT(gpa, size, private)`: 0 or a negative errno.
pub fn convert(gpa: u64, size: u64, private: bool) -> i64 {
    command(testdev::CONVERT, [gpa, size, u64::from(private)])
}

/// `REPORT(passed, failed)`: the final tally.
pub fn report(passed: u64, failed: u64) -> i64 {
    command(testdev::REPORT, [passed, failed, 0])
}

/// `ABORTS()`: refused host accesses the VMM counted so far.
pub fn aborts() -> i64 {
    command(testdev::ABORTS, [0, 0, 0])
}
