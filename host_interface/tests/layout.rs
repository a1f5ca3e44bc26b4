//! Our KVM uAPI structures and constants ([`host_interface::kvm`]) against
//! `kvm-bindings` (rust-vmm's bindgen output of Linux's `kvm.h`): same size,
//! alignment and field offsets, same constant values, and ioctl numbers
//! equal to the `_IOC` encoding computed here from the structure sizes.
//!
//! `kvm-bindings` has no `kvm_memory_attributes2` (it is from the proposed
//! in-place conversion series): its first four fields are checked against
//! `kvm_memory_attributes`, as the kernel static-asserts, and the rest
//! against the v8 layout (guest_memfd.md §1.2).

use core::mem::{align_of, offset_of, size_of};
use host_interface::kvm::{self, *};
use kvm_bindings as kb;

/// Asserts that `$ours` and `$theirs` have the same size and alignment,
/// and that each listed field sits at the same offset in both.
macro_rules! same_layout {
    ($ours:ty, $theirs:ty, [$($field:ident),+ $(,)?]) => {{
        assert_eq!(
            size_of::<$ours>(),
            size_of::<$theirs>(),
            concat!("size of ", stringify!($ours))
        );
        assert_eq!(
            align_of::<$ours>(),
            align_of::<$theirs>(),
            concat!("align of ", stringify!($ours))
        );
        $(
            assert_eq!(
                offset_of!($ours, $field),
                offset_of!($theirs, $field),
                concat!("offset of ", stringify!($ours), "::", stringify!($field))
            );
        )+
        // The listed fields cover the whole struct: no field was forgotten.
        let covered: usize = 0 $(+ field_size(|s: &$ours| &s.$field))+;
        assert_eq!(covered, size_of::<$ours>(), concat!(stringify!($ours), " fields cover it"));
    }};
}

/// Size of the field a projection returns (to add field sizes up without
/// naming their types).
fn field_size<S, F>(_project: impl Fn(&S) -> &F) -> usize {
    size_of::<F>()
}

#[test]
fn create_guest_memfd_matches_kvm_bindings() {
    same_layout!(
        KvmCreateGuestMemfd,
        kb::kvm_create_guest_memfd,
        [size, flags, reserved]
    );
    assert_eq!(size_of::<KvmCreateGuestMemfd>(), 64);
    assert_eq!(align_of::<KvmCreateGuestMemfd>(), 8);
    assert_eq!(offset_of!(KvmCreateGuestMemfd, size), 0);
    assert_eq!(offset_of!(KvmCreateGuestMemfd, flags), 8);
    assert_eq!(offset_of!(KvmCreateGuestMemfd, reserved), 16);
}

#[test]
fn userspace_memory_region2_matches_kvm_bindings() {
    same_layout!(
        KvmUserspaceMemoryRegion2,
        kb::kvm_userspace_memory_region2,
        [
            slot,
            flags,
            guest_phys_addr,
            memory_size,
            userspace_addr,
            guest_memfd_offset,
            guest_memfd,
            pad1,
            pad2,
        ]
    );
    assert_eq!(size_of::<KvmUserspaceMemoryRegion2>(), 160);
    assert_eq!(
        offset_of!(KvmUserspaceMemoryRegion2, guest_memfd_offset),
        32
    );
    assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, guest_memfd), 40);
    assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, pad2), 48);
}

#[test]
fn memory_fault_matches_kvm_bindings_and_sits_at_32_in_kvm_run() {
    same_layout!(
        KvmMemoryFault,
        kb::kvm_run__bindgen_ty_1__bindgen_ty_27,
        [flags, gpa, size]
    );
    assert_eq!(size_of::<KvmMemoryFault>(), 24);
    // The exit union starts at byte 32 of `kvm_run`, and `memory_fault` is
    // a member of it at offset 0: flags @32, gpa @40, size @48.
    assert_eq!(offset_of!(kb::kvm_run, __bindgen_anon_1), 32);
    assert_eq!(offset_of!(kb::kvm_run__bindgen_ty_1, memory_fault), 0);
    assert_eq!(offset_of!(kb::kvm_run, exit_reason), 8);
    assert_eq!(
        32 + offset_of!(KvmMemoryFault, gpa),
        40,
        "memory_fault.gpa at kvm_run+40"
    );
    assert_eq!(32 + offset_of!(KvmMemoryFault, size), 48);
    // The union's `memory_fault` member really is this bindgen type.
    let run: kb::kvm_run = {
        // SAFETY: `kvm_run` is plain old data (integers, arrays and unions
        // of them); all-zero bytes are a valid value.
        unsafe { core::mem::zeroed() }
    };
    // SAFETY: reading a union member of an all-zero `kvm_run`; every bit
    // pattern is valid for these integer fields.
    let member: kb::kvm_run__bindgen_ty_1__bindgen_ty_27 =
        unsafe { run.__bindgen_anon_1.memory_fault };
    assert_eq!((member.flags, member.gpa, member.size), (0, 0, 0));
}

#[test]
fn memory_attributes2_extends_memory_attributes() {
    // The kernel static-asserts that the first four fields of
    // `kvm_memory_attributes2` match `kvm_memory_attributes` (our `offset`
    // is the v8 union's gmem-fd name for `address`).
    assert_eq!(
        offset_of!(KvmMemoryAttributes2, offset),
        offset_of!(kb::kvm_memory_attributes, address)
    );
    assert_eq!(
        offset_of!(KvmMemoryAttributes2, size),
        offset_of!(kb::kvm_memory_attributes, size)
    );
    assert_eq!(
        offset_of!(KvmMemoryAttributes2, attributes),
        offset_of!(kb::kvm_memory_attributes, attributes)
    );
    assert_eq!(
        offset_of!(KvmMemoryAttributes2, flags),
        offset_of!(kb::kvm_memory_attributes, flags)
    );
    assert_eq!(size_of::<kb::kvm_memory_attributes>(), 32);
    assert_eq!(
        align_of::<KvmMemoryAttributes2>(),
        align_of::<kb::kvm_memory_attributes>()
    );
    // v8 shape: 128 bytes, error_offset right after the v1 fields,
    // reserved[11] after it.
    assert_eq!(size_of::<KvmMemoryAttributes2>(), 128);
    assert_eq!(offset_of!(KvmMemoryAttributes2, error_offset), 32);
    assert_eq!(offset_of!(KvmMemoryAttributes2, reserved), 40);
    assert_eq!(
        size_of::<[u64; 11]>() + 40,
        128,
        "reserved[11] runs to the end"
    );
    let covered = field_size(|s: &KvmMemoryAttributes2| &s.offset)
        + field_size(|s: &KvmMemoryAttributes2| &s.size)
        + field_size(|s: &KvmMemoryAttributes2| &s.attributes)
        + field_size(|s: &KvmMemoryAttributes2| &s.flags)
        + field_size(|s: &KvmMemoryAttributes2| &s.error_offset)
        + field_size(|s: &KvmMemoryAttributes2| &s.reserved);
    assert_eq!(covered, 128, "no implicit padding");
}

#[test]
fn constants_match_kvm_bindings() {
    assert_eq!(KVM_MEM_GUEST_MEMFD, kb::KVM_MEM_GUEST_MEMFD);
    assert_eq!(KVM_MEM_LOG_DIRTY_PAGES, kb::KVM_MEM_LOG_DIRTY_PAGES);
    assert_eq!(KVM_MEM_READONLY, kb::KVM_MEM_READONLY);
    assert_eq!(
        KVM_MEMORY_ATTRIBUTE_PRIVATE,
        u64::from(kb::KVM_MEMORY_ATTRIBUTE_PRIVATE)
    );
    assert_eq!(
        KVM_MEMORY_EXIT_FLAG_PRIVATE,
        u64::from(kb::KVM_MEMORY_EXIT_FLAG_PRIVATE)
    );
    assert_eq!(KVM_EXIT_MEMORY_FAULT, kb::KVM_EXIT_MEMORY_FAULT);
    assert_eq!(KVM_EXIT_MMIO, kb::KVM_EXIT_MMIO);
    assert_eq!(KVM_EXIT_HYPERCALL, kb::KVM_EXIT_HYPERCALL);
    assert_eq!(KVM_EXIT_SYSTEM_EVENT, kb::KVM_EXIT_SYSTEM_EVENT);
    // The exit flag the hypervisor ABI uses is the same bit.
    assert_eq!(
        host_interface::abi::KVM_MEMORY_EXIT_FLAG_PRIVATE,
        KVM_MEMORY_EXIT_FLAG_PRIVATE
    );
    // guest_memfd creation flags are newer than kvm-bindings (6.18): check
    // them against guest_memfd.md §1.4.
    assert_eq!(kvm::GUEST_MEMFD_FLAG_MMAP, 1 << 0);
    assert_eq!(kvm::GUEST_MEMFD_FLAG_INIT_SHARED, 1 << 1);
    assert_eq!(kvm::GUEST_MEMFD_SUPPORTED_FLAGS, 0b11);
}

/// `_IOC(dir, type, nr, size)` as Linux defines it on arm64 and x86.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    const IOC_NRBITS: u32 = 8;
    const IOC_TYPEBITS: u32 = 8;
    const IOC_SIZEBITS: u32 = 14;
    const NRSHIFT: u32 = 0;
    const TYPESHIFT: u32 = NRSHIFT + IOC_NRBITS;
    const SIZESHIFT: u32 = TYPESHIFT + IOC_TYPEBITS;
    const DIRSHIFT: u32 = SIZESHIFT + IOC_SIZEBITS;
    assert!(size < 1 << IOC_SIZEBITS);
    (dir << DIRSHIFT) | ((size as u32) << SIZESHIFT) | (0xAE << TYPESHIFT) | (nr << NRSHIFT)
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

#[test]
fn ioctl_numbers_follow_the_ioc_encoding() {
    assert_eq!(kb::KVMIO, 0xAE);
    assert_eq!(
        KVM_CREATE_GUEST_MEMFD,
        ioc(
            IOC_READ | IOC_WRITE,
            0xd4,
            size_of::<kb::kvm_create_guest_memfd>()
        )
    );
    assert_eq!(KVM_CREATE_GUEST_MEMFD, 0xC040_AED4);
    assert_eq!(
        KVM_SET_USER_MEMORY_REGION2,
        ioc(
            IOC_WRITE,
            0x49,
            size_of::<kb::kvm_userspace_memory_region2>()
        )
    );
    assert_eq!(KVM_SET_USER_MEMORY_REGION2, 0x40A0_AE49);
    assert_eq!(
        KVM_SET_MEMORY_ATTRIBUTES2,
        ioc(
            IOC_READ | IOC_WRITE,
            0xd2,
            size_of::<KvmMemoryAttributes2>()
        )
    );
    assert_eq!(KVM_SET_MEMORY_ATTRIBUTES2, 0xC080_AED2);
    // The v1 VM ioctl shares nr 0xd2 but is _IOW with the 32-byte struct:
    // the two numbers differ, so a kernel tells them apart.
    let v1 = ioc(IOC_WRITE, 0xd2, size_of::<kb::kvm_memory_attributes>());
    assert_eq!(v1, 0x4020_AED2);
    assert_ne!(v1, KVM_SET_MEMORY_ATTRIBUTES2);
    // Sanity of the encoder against a number from kvm.h itself:
    // KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, 32 bytes).
    assert_eq!(
        ioc(
            IOC_WRITE,
            0x46,
            size_of::<kb::kvm_userspace_memory_region>()
        ),
        0x4020_AE46
    );
}
