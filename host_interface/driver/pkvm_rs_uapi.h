/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pkvm_rs_uapi.h - the ioctl interface of the pkvm-rs host driver
 * (/dev/pkvm-rs), as a Linux VMM sees it. host_interface/src/uapi.rs is
 * the same contract in Rust; a test checks that the two agree.
 *
 * The shape is KVM's (a crosvm backend carries over): KVMIO (0xAE) ioctl
 * numbers and KVM's structure layouts where KVM has the call, a
 * kvm_run-shaped page shared with each vCPU fd, guest_memfd files with
 * KVM's flags and the in-place conversion series' attribute ioctl.
 *
 * Objects and their fds:
 *   /dev/pkvm-rs  -> KVM_CREATE_VM        -> VM fd
 *   VM fd         -> KVM_CREATE_VCPU      -> vCPU fd (mmap: struct pkvm_rs_run)
 *   VM fd         -> KVM_CREATE_GUEST_MEMFD -> guest_memfd fd
 * A VM lives while any of its fds is open; when the last one closes (also
 * when the VMM is killed) the driver tears it down at el2, reclaims every
 * page and frees it.
 *
 * | ioctl                        | on         | argument                              | returns |
 * |------------------------------|------------|---------------------------------------|---------|
 * | KVM_GET_API_VERSION          | /dev       | -                                     | PKVM_RS_API_VERSION |
 * | KVM_CREATE_VM                | /dev       | number of vCPUs (1..8) (KVM: type)    | VM fd |
 * | KVM_GET_VCPU_MMAP_SIZE       | /dev       | -                                     | bytes of struct pkvm_rs_run's page |
 * | KVM_CREATE_VCPU              | VM         | vCPU index                            | vCPU fd |
 * | KVM_SET_USER_MEMORY_REGION2  | VM         | struct kvm_userspace_memory_region2*  | 0 |
 * | KVM_CREATE_GUEST_MEMFD       | VM         | struct kvm_create_guest_memfd*        | guest_memfd fd |
 * | KVM_IRQ_LINE                 | VM         | struct kvm_irq_level* (SPI lines)     | 0 |
 * | KVM_SET_ONE_REG              | vCPU       | struct kvm_one_reg* (PC and X0 only)  | 0 |
 * | KVM_RUN                      | vCPU       | -                                     | 0 (exit in the run page) |
 * | KVM_SET_MEMORY_ATTRIBUTES2   | guest_memfd| struct kvm_memory_attributes2*        | 0, or -1 with error_offset |
 *
 * guest_memfd files also take mmap() (MAP_SHARED, shared pages only: a
 * private page is SIGBUS) and fallocate(FALLOC_FL_PUNCH_HOLE |
 * FALLOC_FL_KEEP_SIZE).
 */
#ifndef PKVM_RS_UAPI_H
#define PKVM_RS_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define PKVM_RS_DEVICE "/dev/pkvm-rs"
#define PKVM_RS_API_VERSION 1

#define PKVM_RS_IO 0xAE /* KVMIO */

/* ------------------------------------------------------------------ */
/* Structures (KVM's layouts).                                         */

/* KVM_CREATE_GUEST_MEMFD: struct kvm_create_guest_memfd (64 bytes). */
struct pkvm_rs_create_guest_memfd {
	__u64 size;
	__u64 flags; /* GUEST_MEMFD_FLAG_MMAP (1) | GUEST_MEMFD_FLAG_INIT_SHARED (2) */
	__u64 reserved[6];
};

/* KVM_SET_USER_MEMORY_REGION2: struct kvm_userspace_memory_region2 (160 bytes). */
struct pkvm_rs_userspace_memory_region2 {
	__u32 slot;
	__u32 flags; /* KVM_MEM_GUEST_MEMFD (4) is required */
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr; /* ignored: guest memory is the guest_memfd's */
	__u64 guest_memfd_offset;
	__u32 guest_memfd;
	__u32 pad1;
	__u64 pad2[14];
};

/* KVM_SET_MEMORY_ATTRIBUTES2 (in-place conversion series v8, 128 bytes). */
struct pkvm_rs_memory_attributes2 {
	__u64 offset; /* in the guest_memfd */
	__u64 size;
	__u64 attributes; /* KVM_MEMORY_ATTRIBUTE_PRIVATE (1 << 3) or 0 */
	__u64 flags;      /* 0 */
	__u64 error_offset; /* out: the first offset that failed */
	__u64 reserved[11];
};

/* KVM_IRQ_LINE: struct kvm_irq_level. irq = (1 << 24) | INTID for an
 * SPI (KVM_ARM_IRQ_TYPE_SPI), INTID 32..95; level 0 or 1. */
struct pkvm_rs_irq_level {
	__u32 irq;
	__u32 level;
};
#define PKVM_RS_IRQ_TYPE_SPI (1U << 24)

/* KVM_SET_ONE_REG: struct kvm_one_reg. Only the boot vCPU's PC and X0,
 * and only before the VM's first KVM_RUN (el2 refuses later). */
struct pkvm_rs_one_reg {
	__u64 id;
	__u64 addr; /* user pointer to the __u64 value */
};
#define PKVM_RS_REG_X0 0x6030000000100000ULL /* KVM_REG_ARM64 | U64 | CORE | regs[0] */
#define PKVM_RS_REG_PC 0x6030000000100040ULL /* ... | pc */

/* The vCPU's run page: struct kvm_run's first 288 bytes, same offsets. */
struct pkvm_rs_run {
	__u8 request_interrupt_window;
	__u8 immediate_exit; /* non-zero: KVM_RUN returns -EINTR at once */
	__u8 padding1[6];
	__u32 exit_reason; /* PKVM_RS_EXIT_* (KVM's numbers) */
	__u8 ready_for_interrupt_injection;
	__u8 if_flag;
	__u16 flags;
	__u64 cr8;
	__u64 apic_base;
	union {
		/* KVM_EXIT_MMIO: an access outside guest memory. For a read,
		 * the VMM writes data[0..len] before the next KVM_RUN. */
		struct {
			__u64 phys_addr;
			__u8 data[8];
			__u32 len;
			__u8 is_write;
		} mmio;
		/* KVM_EXIT_HYPERCALL: PSCI CPU_ON (nr = function id, args[0..2]
		 * = target MPIDR, entry, context id), already checked by el2;
		 * the VMM writes ret (0 to start the target, else a PSCI error)
		 * before the next KVM_RUN. */
		struct {
			__u64 nr;
			__u64 args[6];
			__u64 ret;
			__u64 flags;
		} hypercall;
		/* KVM_EXIT_SYSTEM_EVENT: type SHUTDOWN (1) or RESET (2). */
		struct {
			__u32 type;
			__u32 ndata;
			__u64 data[16];
		} system_event;
		/* KVM_EXIT_MEMORY_FAULT: the guest asked to convert [gpa, gpa +
		 * size) (flags KVM_MEMORY_EXIT_FLAG_PRIVATE: to private). The VMM
		 * converts that range of the guest_memfd with
		 * KVM_SET_MEMORY_ATTRIBUTES2 and runs again; running without
		 * converting refuses the guest's request. */
		struct {
			__u64 flags;
			__u64 gpa;
			__u64 size;
		} memory_fault;
		/* KVM_EXIT_INTERNAL_ERROR: el2 stopped the vCPU
		 * (suberror PKVM_RS_INTERNAL_STOPPED, data[0] = the exception
		 * class of the trap; nothing else of a protected guest). */
		struct {
			__u32 suberror;
			__u32 ndata;
			__u64 data[16];
		} internal;
		char padding[256];
	};
};

#define PKVM_RS_EXIT_HYPERCALL 3
#define PKVM_RS_EXIT_MMIO 6
#define PKVM_RS_EXIT_INTR 10 /* KVM_RUN returned -EINTR: a signal, or immediate_exit */
#define PKVM_RS_EXIT_INTERNAL_ERROR 17
#define PKVM_RS_EXIT_SYSTEM_EVENT 24
#define PKVM_RS_EXIT_MEMORY_FAULT 39
#define PKVM_RS_SYSTEM_EVENT_SHUTDOWN 1
#define PKVM_RS_SYSTEM_EVENT_RESET 2
#define PKVM_RS_INTERNAL_STOPPED 0x100
#define PKVM_RS_MEMORY_EXIT_FLAG_PRIVATE (1ULL << 3)

/* ------------------------------------------------------------------ */
/* ioctls (KVM's numbers).                                             */

#define PKVM_RS_GET_API_VERSION _IO(PKVM_RS_IO, 0x00)
#define PKVM_RS_CREATE_VM _IO(PKVM_RS_IO, 0x01)
#define PKVM_RS_GET_VCPU_MMAP_SIZE _IO(PKVM_RS_IO, 0x04)
#define PKVM_RS_CREATE_VCPU _IO(PKVM_RS_IO, 0x41)
#define PKVM_RS_SET_USER_MEMORY_REGION2 _IOW(PKVM_RS_IO, 0x49, struct pkvm_rs_userspace_memory_region2)
#define PKVM_RS_IRQ_LINE _IOW(PKVM_RS_IO, 0x61, struct pkvm_rs_irq_level)
#define PKVM_RS_RUN _IO(PKVM_RS_IO, 0x80)
#define PKVM_RS_SET_ONE_REG _IOW(PKVM_RS_IO, 0xac, struct pkvm_rs_one_reg)
#define PKVM_RS_SET_MEMORY_ATTRIBUTES2 _IOWR(PKVM_RS_IO, 0xd2, struct pkvm_rs_memory_attributes2)
#define PKVM_RS_CREATE_GUEST_MEMFD _IOWR(PKVM_RS_IO, 0xd4, struct pkvm_rs_create_guest_memfd)

#endif /* PKVM_RS_UAPI_H */
