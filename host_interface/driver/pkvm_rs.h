/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * pkvm_rs.h - internal definitions of the pkvm-rs host driver (pkvm_rs.ko).
 *
 * The driver is the Linux host's side of el2's host calls
 * (host_interface/src/abi.rs): it owns the host pages a protected VM uses
 * (guest_memfd folios, the stage-2 root, the metadata, the memcache) and
 * translates the KVM-shaped ioctls of pkvm_rs_uapi.h into host calls, the
 * way host_interface/src/vm.rs (KvmVm) does in Rust. Every memory-safety
 * rule is el2's; the driver keeps its own books so that it never hands el2
 * a page that is still in use on the host side (mapped by a process,
 * referenced by a pipe or a pin) and never frees a page el2 has not given
 * back.
 *
 * Locking:
 *   vm->lock (mutex): memslots, guest_memfds (attributes, pages, guest
 *     mappings), the guest's pending conversion request, the memcache,
 *     VM start. Taken by ioctls and by the guest_memfd fault handler
 *     (under mmap_lock), never held across a user copy nor across el2's
 *     VcpuRun, so vCPUs of one VM run concurrently.
 *   vcpu->run_lock (mutex, trylock): one ioctl at a time per vCPU; a
 *     concurrent one gets EBUSY.
 */
#ifndef PKVM_RS_INTERNAL_H
#define PKVM_RS_INTERNAL_H

#include <linux/types.h>
#include <linux/atomic.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/wait.h>
#include <linux/fs.h>
#include <linux/mm.h>

#include "pkvm_rs_uapi.h"

/* ------------------------------------------------------------------ */
/* el2's host calls (host_interface/src/abi.rs).                        */

#define PKVM_HOST_CALL_BASE 0xC6000000UL
#define PKVM_ABI_MAJOR 2

enum pkvm_host_call {
	HC_VERSION = 0,
	HC_VM_CREATE = 3,
	HC_VCPU_INIT = 4,
	HC_MEMCACHE_TOPUP = 5,
	HC_SHARE_GUEST = 6,
	HC_UNSHARE_GUEST = 7,
	HC_DONATE_GUEST = 8,
	HC_VCPU_RUN = 9,
	HC_CONVERT_COMPLETE = 10,
	HC_CONVERT_REFUSE = 11,
	HC_RECLAIM = 12,
	HC_TEARDOWN_START = 14,
	HC_TEARDOWN_FINISH = 15,
	HC_IRQ_LINE = 21,
};

/* VcpuRun's exit reasons (x2) and flags (x3). */
enum pkvm_exit {
	EXIT_MEMORY_FAULT = 1,
	EXIT_STAGE2_FAULT = 2,
	EXIT_HYPERCALL = 4,
	EXIT_SYSTEM_EVENT = 5,
	EXIT_RELINQUISHED = 6,
	EXIT_MEMCACHE_EMPTY = 7,
	EXIT_WFI = 8,
	EXIT_STOPPED = 9,
	EXIT_INTERRUPTED = 10,
	EXIT_POWERED_OFF = 11,
};
#define RUN_COMPLETE_ACCESS 1UL
#define RUN_FAIL_ACCESS 2UL

/* Stage2Fault's x4 bits. */
#define S2F_WRITE (1UL << 0)
#define S2F_EXEC (1UL << 1)
#define S2F_ISV (1UL << 2)
#define S2F_HVC (1UL << 3)

#define PKVM_IPA_BITS 40
#define PKVM_PGD_ORDER 1	/* 2 pages: the concatenated root of a 40-bit stage-2 */
#define PKVM_META_ORDER 2	/* VM_META_PAGES = 4 */
#define PKVM_MAX_VCPUS 8
#define PKVM_MEMCACHE_BATCH 4
#define PKVM_MEMCACHE_MAX_TOPUP 64	/* pages per MemcacheEmpty exit, at most */

/* ------------------------------------------------------------------ */
/* KVM's constants the driver uses.                                     */

#define KVM_MEM_GUEST_MEMFD (1U << 2)
#define KVM_USER_MEM_SLOTS 32764
#define GUEST_MEMFD_FLAG_MMAP (1ULL << 0)
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ULL << 1)
#define KVM_MEMORY_ATTRIBUTE_PRIVATE (1ULL << 3)

/* ------------------------------------------------------------------ */
/* Objects.                                                             */

#define PKVM_HUGE_PAGES 512UL	/* 4 KiB pages per 2 MiB folio */
#define PKVM_HUGE_ORDER 9
#define PKVM_MAX_GMEMS 256	/* guest_memfds per VM (they live as long as it) */

/* How a page of a guest_memfd is mapped into the guest (chunk->state). */
#define GS_NONE 0
#define GS_DONATED 1	/* the guest owns it (private, or shared back by it) */
#define GS_LENT 2	/* the host owns it and lends it to the guest */
#define GS_KIND 3
#define GS_BLOCK 4	/* mapped as part of a 2 MiB block */

/*
 * 2 MiB of a guest_memfd: its pages (each an order-0 page the driver holds
 * one reference on; 512 consecutive frames when they came from one order-9
 * allocation), how each is mapped into the guest, and at which gfn.
 */
struct pkvm_chunk {
	struct page *pages[PKVM_HUGE_PAGES];
	u32 gfn[PKVM_HUGE_PAGES];	/* 40-bit IPA: gfns fit in 28 bits */
	u8 state[PKVM_HUGE_PAGES];
	u16 nr_pages;
	u16 nr_mapped;
};

struct pkvm_vm;

struct pkvm_gmem {
	struct pkvm_vm *vm;
	struct list_head node;		/* in vm->gmems, until the VM dies */
	struct inode *inode;		/* its own inode: unmap_mapping_range */
	u64 size;
	u64 npages;
	u64 flags;
	unsigned long *priv;		/* one bit per page: 1 = private */
	struct pkvm_chunk **chunks;
	u64 nchunks;
	unsigned int id;
};

struct pkvm_memslot {
	struct list_head node;
	u32 id;
	u64 gpa;
	u64 size;
	u64 offset;
	struct pkvm_gmem *gmem;
};

enum pkvm_pending {
	PEND_NONE,
	PEND_MMIO_READ,
	PEND_MMIO_WRITE,
	PEND_HYPERCALL,
	PEND_FAIL,
};

struct pkvm_vcpu {
	struct pkvm_vm *vm;
	unsigned int index;
	struct mutex run_lock;
	struct page *run_page;
	struct pkvm_rs_run *run;
	u64 pc;
	u64 x0;
	bool pc_set;
	bool inited;			/* VcpuInit done */
	enum pkvm_pending pending;	/* how the next VcpuRun completes the last exit */
	u32 mmio_len;
	wait_queue_head_t wq;		/* WFI sleeps */
	bool kick;
};

struct pkvm_vm {
	struct kref ref;		/* VM, vCPU and guest_memfd fds */
	struct mutex lock;
	u64 handle;
	struct page *pgd;
	struct page *meta;
	unsigned int nr_vcpus;
	struct pkvm_vcpu *vcpus[PKVM_MAX_VCPUS];
	bool started;
	struct list_head gmems;
	unsigned int nr_gmems;
	struct list_head slots;
	unsigned int nr_slots;
	struct {
		bool valid;
		unsigned int vcpu;
		u64 gfn;
		u64 pages;
		bool to_private;
	} req;				/* the guest's pending conversion */
	struct list_head memcache;	/* pages given to el2 (page->lru) */
	unsigned long nr_memcache;
	wait_queue_head_t power_wq;	/* PoweredOff sleeps */
	atomic_t power_gen;		/* bumped when a CPU_ON was approved */
	int system_event;		/* 0, or the SYSTEM_EVENT type: terminal */
};

/* ------------------------------------------------------------------ */
/* Shared between the files.                                            */

extern atomic_long_t pkvm_pages_in_use;

/* A host call: 0 or -errno; out (may be NULL) gets x2..x6. */
int pkvm_hc(unsigned int call, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5,
	    u64 *out);
/* A host call that tops the memcache up and retries on ENOMEM (vm->lock). */
int pkvm_hc_memcache(struct pkvm_vm *vm, unsigned int call, u64 a1, u64 a2,
		     u64 a3, u64 a4);
int pkvm_topup(struct pkvm_vm *vm, unsigned long pages);

void pkvm_vm_put(struct pkvm_vm *vm);
void pkvm_vm_get(struct pkvm_vm *vm);
struct pkvm_memslot *pkvm_slot_lookup(struct pkvm_vm *vm, u64 gpa);
void pkvm_kick_all(struct pkvm_vm *vm);

/* gmem.c */
int pkvm_gmem_init(void);
void pkvm_gmem_exit(void);
long pkvm_gmem_create(struct pkvm_vm *vm, void __user *argp);
struct pkvm_gmem *pkvm_gmem_from_fd(struct pkvm_vm *vm, int fd, int *err);
bool pkvm_gmem_has_donated(struct pkvm_gmem *g, u64 first, u64 end);
int pkvm_gmem_unlend(struct pkvm_gmem *g, u64 first, u64 end);
int pkvm_gmem_fault_in(struct pkvm_vm *vm, struct pkvm_memslot *slot, u64 gpa);
void pkvm_gmem_relinquished(struct pkvm_vm *vm, u64 gpa, u64 size);
struct pkvm_teardown_counts {
	unsigned long blocks;
	unsigned long pages;
	unsigned long freed;
	unsigned long failed;
};
void pkvm_gmem_reclaim_all(struct pkvm_gmem *g,
			   struct pkvm_teardown_counts *c);
void pkvm_gmem_free(struct pkvm_gmem *g, bool leak_pages,
		    struct pkvm_teardown_counts *c);

/* vcpu.c */
long pkvm_vcpu_create(struct pkvm_vm *vm, unsigned long index);
void pkvm_vcpu_free(struct pkvm_vcpu *vcpu);

#endif /* PKVM_RS_INTERNAL_H */
