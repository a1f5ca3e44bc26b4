//! The test device at [`crate::platform::TEST_DEVICE`]: the contract is
//! [`crate::platform::testdev`] (registers, commands, results).
//!
//! Registers are 64 bits wide; any access that is not a single 8-byte
//! load or store of a register reads as zero and is otherwise ignored. A
//! store to `CMD` runs the command while the VMM handles that MMIO exit,
//! so `RESULT` holds its outcome when the guest's store completes. Errors
//! are KVM's positive errno values ([`crate::kvm::errno`]), negated.
//!
//! `PROBE_PHYS` is the backend's most direct read of the page
//! ([`super::backend::VmBackend::probe`]): over [`crate::vm::KvmVm`] the
//! backing frame itself, through the host's own mapping (a refusal is
//! el2's injected abort); over the Linux driver, from userspace, the
//! guest_memfd mapping read by the kernel (a refusal is the driver's
//! SIGBUS or el2's abort, seen as `EFAULT`).

use super::backend::{Probe, VmBackend};
use super::memory::GuestMemory;
use crate::gmem::{MmapError, PAGE};
use crate::kvm::errno;
use crate::platform::testdev::{
    ABORTS, ARG0, ARG1, ARG2, CHECK_PATTERN, CMD, CONVERT, FILL_PATTERN, ID, MAGIC, PROBE_PHYS,
    PUNCH, REPORT, RESULT,
};

/// What the guest reported with `REPORT`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GuestReport {
    /// Checks that passed.
    pub passed: u64,
    /// Checks that failed.
    pub failed: u64,
}

/// The test device's state.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestDevice {
    args: [u64; 3],
    result: i64,
    /// The last `REPORT`.
    pub report: Option<GuestReport>,
    /// Host accesses to guest memory the hypervisor refused (`PROBE_PHYS`
    /// that took an injected abort).
    pub refused: u64,
}

fn neg(e: i32) -> i64 {
    -i64::from(e)
}

impl TestDevice {
    /// A read of `size` bytes at `offset` (from the device's base).
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if size != 8 {
            return 0;
        }
        match offset {
            ID => MAGIC,
            ARG0 => self.args[0],
            ARG1 => self.args[1],
            ARG2 => self.args[2],
            RESULT => self.result as u64,
            _ => 0,
        }
    }

    /// A write of `size` bytes of `value` at `offset`; a store to `CMD`
    /// runs the command against `mem`.
    pub fn write<B: VmBackend>(
        &mut self,
        mem: &mut GuestMemory<B>,
        offset: u64,
        size: u8,
        value: u64,
    ) {
        if size != 8 {
            return;
        }
        match offset {
            ARG0 => self.args[0] = value,
            ARG1 => self.args[1] = value,
            ARG2 => self.args[2] = value,
            CMD => self.result = self.command(mem, value),
            _ => {}
        }
    }

    /// Runs command `cmd` with the current arguments; returns RESULT.
    fn command<B: VmBackend>(&mut self, mem: &mut GuestMemory<B>, cmd: u64) -> i64 {
        let [a0, a1, a2] = self.args;
        match cmd {
            CHECK_PATTERN | FILL_PATTERN | PROBE_PHYS => {
                let Some(offset) = page_offset(mem, a0, PAGE) else {
                    return neg(errno::EINVAL);
                };
                match cmd {
                    PROBE_PHYS => self.probe(mem, offset),
                    _ => {
                        let Ok(byte) = u8::try_from(a1) else {
                            return neg(errno::EINVAL);
                        };
                        if cmd == CHECK_PATTERN {
                            check_pattern(mem, offset, byte)
                        } else {
                            fill_pattern(mem, offset, byte)
                        }
                    }
                }
            }
            PUNCH => match page_offset(mem, a0, a1) {
                Some(offset) => mem.punch(offset, a1).map_or_else(neg, |()| 0),
                None => neg(errno::EINVAL),
            },
            CONVERT => match (page_offset(mem, a0, a1), a2) {
                (Some(offset), 0 | 1) => mem.convert(offset, a1, a2 == 1).map_or_else(neg, |()| 0),
                _ => neg(errno::EINVAL),
            },
            REPORT => {
                self.report = Some(GuestReport {
                    passed: a0,
                    failed: a1,
                });
                0
            }
            ABORTS => i64::try_from(self.refused).unwrap_or(i64::MAX),
            _ => neg(errno::EINVAL),
        }
    }

    /// `PROBE_PHYS`: reads the page at RAM offset `offset` the most
    /// direct way the backend has ([`GuestMemory::probe`]).
    fn probe<B: VmBackend>(&mut self, mem: &mut GuestMemory<B>, offset: u64) -> i64 {
        match mem.probe(offset) {
            Probe::Read => 0,
            Probe::Refused => {
                self.refused += 1;
                1
            }
            Probe::Unbacked => neg(errno::ENOENT),
        }
    }
}

/// The RAM offset of `[gpa, gpa + size)` when `gpa` is page aligned,
/// `size` a non-zero multiple of 4 KiB and the range inside RAM.
fn page_offset<B: VmBackend>(mem: &GuestMemory<B>, gpa: u64, size: u64) -> Option<u64> {
    if !gpa.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) || size == 0 {
        return None;
    }
    mem.offset_of(gpa, size).ok()
}

fn check_pattern<B: VmBackend>(mem: &mut GuestMemory<B>, offset: u64, byte: u8) -> i64 {
    let mut page = alloc::vec![0u8; PAGE as usize];
    match mem.read(offset, &mut page) {
        Ok(()) => i64::from(page.iter().any(|b| *b != byte)),
        Err(MmapError::Sigbus { .. } | MmapError::NoMmap) => neg(errno::EFAULT),
    }
}

fn fill_pattern<B: VmBackend>(mem: &mut GuestMemory<B>, offset: u64, byte: u8) -> i64 {
    match mem.write(offset, &alloc::vec![byte; PAGE as usize]) {
        Ok(()) => 0,
        Err(MmapError::Sigbus { .. } | MmapError::NoMmap) => neg(errno::EFAULT),
    }
}
