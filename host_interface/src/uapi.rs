//! The ioctl interface of the pkvm-rs Linux host driver (`/dev/pkvm-rs`),
//! as its userspace VMM sees it: the Rust side of
//! `host_interface/driver/pkvm_rs_uapi.h` (the C header is the driver's;
//! `tests/tests/uapi.rs` checks the two agree). The shape is KVM's: KVMIO
//! ioctl numbers, KVM's structure layouts (the ones in [`crate::kvm`]
//! where KVM has them) and a `kvm_run`-shaped page per vCPU. See the
//! header for the table of calls and what each exit means.

use crate::kvm::KvmUserspaceMemoryRegion2;

/// The device node.
pub const DEVICE: &str = "/dev/pkvm-rs";
/// What `GET_API_VERSION` returns.
pub const API_VERSION: u32 = 1;

/// KVM's ioctl type.
pub const IO_TYPE: u32 = 0xAE;

const fn io(nr: u32) -> u32 {
    (IO_TYPE << 8) | nr
}

const fn iow(nr: u32, size: usize) -> u32 {
    (1 << 30) | ((size as u32) << 16) | (IO_TYPE << 8) | nr
}

/// `KVM_GET_API_VERSION` (on `/dev/pkvm-rs`).
pub const GET_API_VERSION: u32 = io(0x00);
/// `KVM_CREATE_VM` (on `/dev/pkvm-rs`; the argument is the number of
/// vCPUs, 1..=8, where KVM's is a machine type).
pub const CREATE_VM: u32 = io(0x01);
/// `KVM_GET_VCPU_MMAP_SIZE` (on `/dev/pkvm-rs`).
pub const GET_VCPU_MMAP_SIZE: u32 = io(0x04);
/// `KVM_CREATE_VCPU` (on a VM fd; the argument is the vCPU index).
pub const CREATE_VCPU: u32 = io(0x41);
/// `KVM_SET_USER_MEMORY_REGION2` (on a VM fd).
pub const SET_USER_MEMORY_REGION2: u32 =
    iow(0x49, core::mem::size_of::<KvmUserspaceMemoryRegion2>());
/// `KVM_IRQ_LINE` (on a VM fd).
pub const IRQ_LINE: u32 = iow(0x61, core::mem::size_of::<IrqLevel>());
/// `KVM_RUN` (on a vCPU fd).
pub const RUN: u32 = io(0x80);
/// `KVM_SET_ONE_REG` (on a vCPU fd; PC and X0 only, before the first run).
pub const SET_ONE_REG: u32 = iow(0xac, core::mem::size_of::<OneReg>());
/// `KVM_SET_MEMORY_ATTRIBUTES2` (on a guest_memfd fd).
pub const SET_MEMORY_ATTRIBUTES2: u32 = crate::kvm::KVM_SET_MEMORY_ATTRIBUTES2;
/// `KVM_CREATE_GUEST_MEMFD` (on a VM fd).
pub const CREATE_GUEST_MEMFD: u32 = crate::kvm::KVM_CREATE_GUEST_MEMFD;

/// `struct kvm_irq_level`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IrqLevel {
    /// [`IRQ_TYPE_SPI`] | INTID (32..96).
    pub irq: u32,
    /// 0 or 1.
    pub level: u32,
}

/// `KVM_ARM_IRQ_TYPE_SPI` << 24.
pub const IRQ_TYPE_SPI: u32 = 1 << 24;

/// `struct kvm_one_reg`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct OneReg {
    /// [`REG_X0`] or [`REG_PC`].
    pub id: u64,
    /// User pointer to the `u64` value.
    pub addr: u64,
}

/// KVM's register id of X0 (`KVM_REG_ARM64 | KVM_REG_SIZE_U64 |
/// KVM_REG_ARM_CORE | regs[0]`).
pub const REG_X0: u64 = 0x6030_0000_0010_0000;
/// KVM's register id of PC.
pub const REG_PC: u64 = 0x6030_0000_0010_0040;

/// Exit reasons (KVM's numbers).
pub mod exit {
    /// `KVM_EXIT_HYPERCALL`: PSCI CPU_ON for the VMM to answer.
    pub const HYPERCALL: u32 = 3;
    /// `KVM_EXIT_MMIO`.
    pub const MMIO: u32 = 6;
    /// `KVM_EXIT_INTR`: `KVM_RUN` returned `-EINTR` (a signal, or
    /// `immediate_exit`).
    pub const INTR: u32 = 10;
    /// `KVM_EXIT_INTERNAL_ERROR`: el2 stopped the vCPU.
    pub const INTERNAL_ERROR: u32 = 17;
    /// `KVM_EXIT_SYSTEM_EVENT`.
    pub const SYSTEM_EVENT: u32 = 24;
    /// `KVM_EXIT_MEMORY_FAULT`: the guest asked for a conversion.
    pub const MEMORY_FAULT: u32 = 39;
    /// System event: shutdown.
    pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
    /// System event: reset.
    pub const SYSTEM_EVENT_RESET: u32 = 2;
    /// `internal.suberror` of a vCPU el2 stopped.
    pub const INTERNAL_STOPPED: u32 = 0x100;
}

/// Bytes of the run page's exit union.
pub const EXIT_BYTES: usize = 256;

/// A vCPU's run page: `struct kvm_run`'s first 288 bytes, same offsets.
/// The exit union is kept as bytes; the accessors decode the variant the
/// `exit_reason` names (little-endian, as on arm64).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Run {
    /// Unused (KVM: `request_interrupt_window`).
    pub request_interrupt_window: u8,
    /// Non-zero: `KVM_RUN` returns `-EINTR` at once.
    pub immediate_exit: u8,
    /// Padding.
    pub padding1: [u8; 6],
    /// Why `KVM_RUN` returned ([`exit`]).
    pub exit_reason: u32,
    /// Unused (x86).
    pub ready_for_interrupt_injection: u8,
    /// Unused (x86).
    pub if_flag: u8,
    /// Unused.
    pub flags: u16,
    /// Unused (x86).
    pub cr8: u64,
    /// Unused (x86).
    pub apic_base: u64,
    /// The exit's data.
    pub exit: [u8; EXIT_BYTES],
}

const _: () = assert!(core::mem::size_of::<Run>() == 288);
const _: () = assert!(core::mem::size_of::<IrqLevel>() == 8);
const _: () = assert!(core::mem::size_of::<OneReg>() == 16);

impl Default for Run {
    fn default() -> Run {
        Run {
            request_interrupt_window: 0,
            immediate_exit: 0,
            padding1: [0; 6],
            exit_reason: 0,
            ready_for_interrupt_injection: 0,
            if_flag: 0,
            flags: 0,
            cr8: 0,
            apic_base: 0,
            exit: [0; EXIT_BYTES],
        }
    }
}

/// `run.mmio`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Mmio {
    /// Guest physical address.
    pub phys_addr: u64,
    /// Data (a write's bytes; a read's answer goes here).
    pub data: [u8; 8],
    /// Bytes.
    pub len: u32,
    /// A write.
    pub is_write: bool,
}

/// `run.hypercall`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Hypercall {
    /// Function id.
    pub nr: u64,
    /// x1.. of the guest.
    pub args: [u64; 6],
    /// The VMM's answer (x0).
    pub ret: u64,
}

/// `run.memory_fault`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MemoryFault {
    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE` when the guest wants private.
    pub flags: u64,
    /// Guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
}

impl Run {
    fn word(&self, i: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.exit[8 * i..8 * i + 8]);
        u64::from_le_bytes(b)
    }

    fn set_word(&mut self, i: usize, v: u64) {
        self.exit[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The MMIO exit (offsets 0, 8, 16, 20 of the union).
    pub fn mmio(&self) -> Mmio {
        let mut data = [0u8; 8];
        data.copy_from_slice(&self.exit[8..16]);
        Mmio {
            phys_addr: self.word(0),
            data,
            len: u32::from_le_bytes([self.exit[16], self.exit[17], self.exit[18], self.exit[19]]),
            is_write: self.exit[20] != 0,
        }
    }

    /// Writes an MMIO read's answer.
    pub fn set_mmio_data(&mut self, data: [u8; 8]) {
        self.exit[8..16].copy_from_slice(&data);
    }

    /// The hypercall exit (nr, args[6], ret).
    pub fn hypercall(&self) -> Hypercall {
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self.word(1 + i);
        }
        Hypercall {
            nr: self.word(0),
            args,
            ret: self.word(7),
        }
    }

    /// Writes a hypercall's answer.
    pub fn set_hypercall_ret(&mut self, ret: u64) {
        self.set_word(7, ret);
    }

    /// The system event's type.
    pub fn system_event(&self) -> u32 {
        self.word(0) as u32
    }

    /// The memory fault exit.
    pub fn memory_fault(&self) -> MemoryFault {
        MemoryFault {
            flags: self.word(0),
            gpa: self.word(1),
            size: self.word(2),
        }
    }

    /// The internal error: `(suberror, data[0])`.
    pub fn internal(&self) -> (u32, u64) {
        (self.word(0) as u32, self.word(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_kvms() {
        assert_eq!(GET_API_VERSION, 0xae00);
        assert_eq!(CREATE_VM, 0xae01);
        assert_eq!(GET_VCPU_MMAP_SIZE, 0xae04);
        assert_eq!(CREATE_VCPU, 0xae41);
        assert_eq!(SET_USER_MEMORY_REGION2, 0x40a0_ae49);
        assert_eq!(IRQ_LINE, 0x4008_ae61);
        assert_eq!(RUN, 0xae80);
        assert_eq!(SET_ONE_REG, 0x4010_aeac);
        assert_eq!(SET_MEMORY_ATTRIBUTES2, 0xc080_aed2);
        assert_eq!(CREATE_GUEST_MEMFD, 0xc040_aed4);
    }

    #[test]
    fn run_page_decodes_kvms_offsets() {
        let mut r = Run::default();
        r.exit[..8].copy_from_slice(&0x0900_0000u64.to_le_bytes());
        r.exit[8] = 0x41;
        r.exit[16] = 4;
        r.exit[20] = 1;
        let m = r.mmio();
        assert_eq!(
            (m.phys_addr, m.data[0], m.len, m.is_write),
            (0x0900_0000, 0x41, 4, true)
        );
        r.set_hypercall_ret(5);
        assert_eq!(r.hypercall().ret, 5);
        assert_eq!(core::mem::offset_of!(Run, exit_reason), 8);
        assert_eq!(core::mem::offset_of!(Run, exit), 32);
    }
}
