//! KVM's uAPI structures and constants for guest_memfd, kept in KVM's
//! layout so a VMM's code carries over (`#[repr(C)]`, little-endian,
//! natural alignment, no implicit padding; sizes asserted at compile
//! time and checked against `kvm-bindings` in the tests).
//!
//! `kvm_memory_attributes2` follows the in-place conversion series' v8
//! shape (128 bytes, issued on the guest_memfd, `error_offset` written
//! back on failure); upstream has not released it yet, so its ioctl number
//! is kept as a constant here and not relied on elsewhere.

/// Linux errno values, as a VMM sees them (positive).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such entry.
    pub const ENOENT: i32 = 2;
    /// Bad file descriptor.
    pub const EBADF: i32 = 9;
    /// Try again.
    pub const EAGAIN: i32 = 11;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Bad address.
    pub const EFAULT: i32 = 14;
    /// Busy.
    pub const EBUSY: i32 = 16;
    /// Exists.
    pub const EEXIST: i32 = 17;
    /// No such device (mmap of a guest_memfd without `MMAP`).
    pub const ENODEV: i32 = 19;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Not supported (fallocate modes).
    pub const EOPNOTSUPP: i32 = 95;
    /// Hardware memory error (poisoned page).
    pub const EHWPOISON: i32 = 133;
}

/// `GUEST_MEMFD_FLAG_MMAP`: the file may be mmapped by the host.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: every page starts shared.
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// The flags this implementation supports (`KVM_CAP_GUEST_MEMFD_FLAGS`).
pub const GUEST_MEMFD_SUPPORTED_FLAGS: u64 = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;

/// `KVM_MEM_LOG_DIRTY_PAGES`.
pub const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// `KVM_MEM_READONLY`.
pub const KVM_MEM_READONLY: u32 = 1 << 1;
/// `KVM_MEM_GUEST_MEMFD`: the slot is backed by a guest_memfd.
pub const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// `KVM_EXIT_MEMORY_FAULT`.
pub const KVM_EXIT_MEMORY_FAULT: u32 = 39;
/// `KVM_EXIT_MMIO`.
pub const KVM_EXIT_MMIO: u32 = 6;
/// `KVM_EXIT_HYPERCALL`.
pub const KVM_EXIT_HYPERCALL: u32 = 3;
/// `KVM_EXIT_SYSTEM_EVENT`.
pub const KVM_EXIT_SYSTEM_EVENT: u32 = 24;

/// `KVM_CREATE_GUEST_MEMFD` = `_IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)`.
pub const KVM_CREATE_GUEST_MEMFD: u32 = 0xC040_AED4;
/// `KVM_SET_USER_MEMORY_REGION2` = `_IOW(KVMIO, 0x49, ...)`.
pub const KVM_SET_USER_MEMORY_REGION2: u32 = 0x40A0_AE49;
/// `KVM_SET_MEMORY_ATTRIBUTES2` (v8 proposal) = `_IOWR(KVMIO, 0xd2, ...)`.
pub const KVM_SET_MEMORY_ATTRIBUTES2: u32 = 0xC080_AED2;

/// `struct kvm_create_guest_memfd` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KvmCreateGuestMemfd {
    /// Bytes; non-zero, page aligned, fixed for the file's life.
    pub size: u64,
    /// `GUEST_MEMFD_FLAG_*`.
    pub flags: u64,
    /// Reserved (KVM does not check them; neither do we).
    pub reserved: [u64; 6],
}

/// `struct kvm_userspace_memory_region2` (160 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KvmUserspaceMemoryRegion2 {
    /// Slot id (bits 15:0) and address space (31:16).
    pub slot: u32,
    /// `KVM_MEM_*`.
    pub flags: u32,
    /// First guest physical address.
    pub guest_phys_addr: u64,
    /// Bytes; 0 deletes the slot.
    pub memory_size: u64,
    /// Host user address (unused for guest_memfd-only slots).
    pub userspace_addr: u64,
    /// Offset into the guest_memfd.
    pub guest_memfd_offset: u64,
    /// The guest_memfd.
    pub guest_memfd: u32,
    /// Padding.
    pub pad1: u32,
    /// Padding.
    pub pad2: [u64; 14],
}

/// `struct kvm_memory_attributes2` (v8 proposal, 128 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KvmMemoryAttributes2 {
    /// Byte offset into the guest_memfd.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// 0 (shared) or `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
    pub attributes: u64,
    /// Must be 0.
    pub flags: u64,
    /// Written on failure: the offset of the page that blocked it.
    pub error_offset: u64,
    /// Must be 0.
    pub reserved: [u64; 11],
}

/// The `memory_fault` member of `kvm_run`'s exit union (24 bytes at
/// offset 32 of `kvm_run`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KvmMemoryFault {
    /// `KVM_MEMORY_EXIT_FLAG_*`.
    pub flags: u64,
    /// Guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
}

const _: () = {
    assert!(core::mem::size_of::<KvmCreateGuestMemfd>() == 64);
    assert!(core::mem::size_of::<KvmUserspaceMemoryRegion2>() == 160);
    assert!(core::mem::size_of::<KvmMemoryAttributes2>() == 128);
    assert!(core::mem::size_of::<KvmMemoryFault>() == 24);
    assert!(core::mem::offset_of!(KvmUserspaceMemoryRegion2, guest_memfd) == 40);
    assert!(core::mem::offset_of!(KvmMemoryAttributes2, error_offset) == 32);
};
