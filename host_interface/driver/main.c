// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * main.c - pkvm_rs.ko: /dev/pkvm-rs, VMs, memslots, teardown.
 *
 * See pkvm_rs.h for the objects and the locking, README.md for the ioctl
 * table and the behaviour choices.
 */
#define pr_fmt(fmt) "pkvm_rs: " fmt

#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/arm-smccc.h>
#include <asm/sysreg.h>
#include <asm/virt.h>

#include "pkvm_rs.h"

atomic_long_t pkvm_pages_in_use = ATOMIC_LONG_INIT(0);

/* ------------------------------------------------------------------ */
/* Host calls.                                                          */

int pkvm_hc(unsigned int call, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5,
	    u64 *out)
{
	struct arm_smccc_1_2_regs args = {
		.a0 = PKVM_HOST_CALL_BASE + call,
		.a1 = a1, .a2 = a2, .a3 = a3, .a4 = a4, .a5 = a5,
	};
	struct arm_smccc_1_2_regs res;
	long err;

	arm_smccc_1_2_hvc(&args, &res);
	if (res.a0 != 0)
		return -EINVAL;	/* SMCCC NOT_SUPPORTED (as KvmVm maps it) */
	err = (long)res.a1;
	if (err) {
		if (err < 0 && err >= -4095)
			return (int)err;
		return -EIO;
	}
	if (out) {
		out[0] = res.a2;
		out[1] = res.a3;
		out[2] = res.a4;
		out[3] = res.a5;
		out[4] = res.a6;
	}
	return 0;
}

/* Gives el2 `pages` more pages for the VM's stage-2 tables (vm->lock). */
int pkvm_topup(struct pkvm_vm *vm, unsigned long pages)
{
	unsigned long i;
	int ret;

	for (i = 0; i < pages; i++) {
		struct page *p = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);

		if (!p)
			return -ENOMEM;
		ret = pkvm_hc(HC_MEMCACHE_TOPUP, vm->handle, page_to_pfn(p), 1,
			      0, 0, NULL);
		if (ret) {
			__free_page(p);
			return ret;
		}
		list_add(&p->lru, &vm->memcache);
		vm->nr_memcache++;
		atomic_long_inc(&pkvm_pages_in_use);
	}
	return 0;
}

int pkvm_hc_memcache(struct pkvm_vm *vm, unsigned int call, u64 a1, u64 a2,
		     u64 a3, u64 a4)
{
	int tries, ret;

	lockdep_assert_held(&vm->lock);
	for (tries = 0; tries < 8; tries++) {
		ret = pkvm_hc(call, a1, a2, a3, a4, 0, NULL);
		if (ret != -ENOMEM)
			return ret;
		ret = pkvm_topup(vm, PKVM_MEMCACHE_BATCH);
		if (ret)
			return ret;
	}
	return -ENOMEM;
}

/* ------------------------------------------------------------------ */
/* VM lifetime and teardown.                                            */

void pkvm_vm_get(struct pkvm_vm *vm)
{
	kref_get(&vm->ref);
}

static void pkvm_vm_release(struct kref *ref)
{
	struct pkvm_vm *vm = container_of(ref, struct pkvm_vm, ref);
	struct pkvm_teardown_counts c = { 0 };
	struct pkvm_gmem *g, *gn;
	struct pkvm_memslot *s, *sn;
	struct page *p, *pn;
	unsigned long memcache = vm->nr_memcache;
	bool leak = false;
	unsigned int i;
	int ret;

	/* No fd is left: no ioctl, fault or run can reach the VM. */
	ret = pkvm_hc(HC_TEARDOWN_START, vm->handle, 0, 0, 0, 0, NULL);
	if (ret) {
		pr_err("VM %llu: TeardownStart failed (%d): its memory is leaked\n",
		       vm->handle, ret);
		leak = true;
	}
	if (!leak) {
		list_for_each_entry(g, &vm->gmems, node)
			pkvm_gmem_reclaim_all(g, &c);
		ret = pkvm_hc(HC_TEARDOWN_FINISH, vm->handle, 0, 0, 0, 0, NULL);
		if (ret) {
			pr_err("VM %llu: TeardownFinish failed (%d): its memory is leaked\n",
			       vm->handle, ret);
			leak = true;
		}
	}
	list_for_each_entry_safe(s, sn, &vm->slots, node) {
		list_del(&s->node);
		kfree(s);
	}
	list_for_each_entry_safe(g, gn, &vm->gmems, node) {
		list_del(&g->node);
		pkvm_gmem_free(g, leak || c.failed, &c);
	}
	for (i = 0; i < vm->nr_vcpus; i++)
		if (vm->vcpus[i])
			pkvm_vcpu_free(vm->vcpus[i]);
	if (!leak) {
		list_for_each_entry_safe(p, pn, &vm->memcache, lru) {
			list_del(&p->lru);
			__free_page(p);
			atomic_long_dec(&pkvm_pages_in_use);
		}
		__free_pages(vm->pgd, PKVM_PGD_ORDER);
		__free_pages(vm->meta, PKVM_META_ORDER);
		atomic_long_sub((1 << PKVM_PGD_ORDER) + (1 << PKVM_META_ORDER),
				&pkvm_pages_in_use);
	}
	pr_info("VM %llu torn down: %lu guest pages reclaimed (%lu in 2 MiB blocks, %lu single), %lu reclaim failures; freed %lu guest_memfd pages, %lu memcache pages, %d root+metadata pages; driver pages in use: %ld\n",
		vm->handle, c.blocks * PKVM_HUGE_PAGES + c.pages,
		c.blocks, c.pages, c.failed, leak ? 0 : c.freed,
		leak ? 0 : memcache,
		leak ? 0 : (1 << PKVM_PGD_ORDER) + (1 << PKVM_META_ORDER),
		atomic_long_read(&pkvm_pages_in_use));
	kfree(vm);
}

void pkvm_vm_put(struct pkvm_vm *vm)
{
	kref_put(&vm->ref, pkvm_vm_release);
}

void pkvm_kick_all(struct pkvm_vm *vm)
{
	unsigned int i;

	for (i = 0; i < vm->nr_vcpus; i++) {
		struct pkvm_vcpu *v = smp_load_acquire(&vm->vcpus[i]);

		if (v) {
			WRITE_ONCE(v->kick, true);
			wake_up(&v->wq);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Memslots (KvmVm::set_memory_region's rules).                         */

struct pkvm_memslot *pkvm_slot_lookup(struct pkvm_vm *vm, u64 gpa)
{
	struct pkvm_memslot *s;

	lockdep_assert_held(&vm->lock);
	list_for_each_entry(s, &vm->slots, node)
		if (gpa >= s->gpa && gpa - s->gpa < s->size)
			return s;
	return NULL;
}

static struct pkvm_memslot *slot_by_id(struct pkvm_vm *vm, u32 id)
{
	struct pkvm_memslot *s;

	list_for_each_entry(s, &vm->slots, node)
		if (s->id == id)
			return s;
	return NULL;
}

static long vm_set_memory_region(struct pkvm_vm *vm, void __user *argp)
{
	struct pkvm_rs_userspace_memory_region2 r;
	struct pkvm_memslot *s, *slot;
	struct pkvm_gmem *g = NULL;
	u64 gpa_end, off_end, first, end;
	int ret;

	if (copy_from_user(&r, argp, sizeof(r)))
		return -EFAULT;
	/* Bits 31:16 are the address space (arm64 has one), 15:0 the slot. */
	if ((r.slot >> 16) != 0 || (r.slot & 0xffff) >= KVM_USER_MEM_SLOTS)
		return -EINVAL;

	if (r.memory_size == 0) {
		mutex_lock(&vm->lock);
		s = slot_by_id(vm, r.slot);
		ret = -EINVAL;
		if (!s)
			goto out;
		first = s->offset >> PAGE_SHIFT;
		end = first + (s->size >> PAGE_SHIFT);
		/* Guest pages cannot be taken from a protected guest. */
		ret = -EBUSY;
		if (pkvm_gmem_has_donated(s->gmem, first, end))
			goto out;
		ret = pkvm_gmem_unlend(s->gmem, first, end);
		if (ret)
			goto out;
		list_del(&s->node);
		vm->nr_slots--;
		kfree(s);
		ret = 0;
		goto out;
	}
	if (r.flags != KVM_MEM_GUEST_MEMFD)
		return -EINVAL;
	if (!PAGE_ALIGNED(r.guest_phys_addr) || !PAGE_ALIGNED(r.memory_size) ||
	    !PAGE_ALIGNED(r.guest_memfd_offset) ||
	    !PAGE_ALIGNED(r.userspace_addr))
		return -EINVAL;
	if (check_add_overflow(r.guest_phys_addr, r.memory_size, &gpa_end) ||
	    check_add_overflow(r.guest_memfd_offset, r.memory_size, &off_end))
		return -EINVAL;
	if (gpa_end > (1ULL << PKVM_IPA_BITS))
		return -EINVAL;

	slot = kzalloc(sizeof(*slot), GFP_KERNEL_ACCOUNT);
	if (!slot)
		return -ENOMEM;
	mutex_lock(&vm->lock);
	ret = -EINVAL;
	if (slot_by_id(vm, r.slot))
		goto out_free;	/* guest_memfd slots are immutable */
	ret = -EEXIST;	/* KVM checks the GPA overlap before the binding */
	list_for_each_entry(s, &vm->slots, node)
		if (r.guest_phys_addr < s->gpa + s->size && s->gpa < gpa_end)
			goto out_free;
	g = pkvm_gmem_from_fd(vm, (int)r.guest_memfd, &ret);
	if (!g)
		goto out_free;
	ret = -EINVAL;
	if (off_end > g->size)
		goto out_free;
	first = r.guest_memfd_offset >> PAGE_SHIFT;
	end = off_end >> PAGE_SHIFT;
	list_for_each_entry(s, &vm->slots, node) {
		u64 sf = s->offset >> PAGE_SHIFT, se = sf + (s->size >> PAGE_SHIFT);

		if (s->gmem == g && first < se && sf < end)
			goto out_free;	/* that part of the file is bound already */
	}
	slot->id = r.slot;
	slot->gpa = r.guest_phys_addr;
	slot->size = r.memory_size;
	slot->offset = r.guest_memfd_offset;
	slot->gmem = g;
	list_add_tail(&slot->node, &vm->slots);
	vm->nr_slots++;
	mutex_unlock(&vm->lock);
	return 0;
out_free:
	kfree(slot);
out:
	mutex_unlock(&vm->lock);
	return ret;
}

/* ------------------------------------------------------------------ */
/* The VM fd.                                                           */

static long vm_irq_line(struct pkvm_vm *vm, void __user *argp)
{
	struct pkvm_rs_irq_level l;
	u32 intid;
	int ret;

	if (copy_from_user(&l, argp, sizeof(l)))
		return -EFAULT;
	/* KVM's encoding: type in 31:24 (SPI), vCPU in 23:16 (0), INTID. */
	if ((l.irq >> 24) != (PKVM_RS_IRQ_TYPE_SPI >> 24) ||
	    ((l.irq >> 16) & 0xff) != 0 || l.level > 1)
		return -EINVAL;
	intid = l.irq & 0xffff;
	if (intid < 32 || intid >= 96)
		return -EINVAL;
	ret = pkvm_hc(HC_IRQ_LINE, vm->handle, intid, l.level, 0, 0, NULL);
	if (!ret && l.level)
		pkvm_kick_all(vm);
	return ret;
}

static long vm_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct pkvm_vm *vm = f->private_data;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case PKVM_RS_CREATE_VCPU:
		return pkvm_vcpu_create(vm, arg);
	case PKVM_RS_SET_USER_MEMORY_REGION2:
		return vm_set_memory_region(vm, argp);
	case PKVM_RS_CREATE_GUEST_MEMFD:
		return pkvm_gmem_create(vm, argp);
	case PKVM_RS_IRQ_LINE:
		return vm_irq_line(vm, argp);
	default:
		return -ENOTTY;
	}
}

static int vm_release(struct inode *inode, struct file *f)
{
	pkvm_vm_put(f->private_data);
	return 0;
}

static const struct file_operations vm_fops = {
	.owner = THIS_MODULE,
	.release = vm_release,
	.unlocked_ioctl = vm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static long create_vm(unsigned long nr_vcpus)
{
	struct pkvm_vm *vm;
	u64 out[5];
	int ret, fd;

	if (nr_vcpus < 1 || nr_vcpus > PKVM_MAX_VCPUS)
		return -EINVAL;
	vm = kzalloc(sizeof(*vm), GFP_KERNEL_ACCOUNT);
	if (!vm)
		return -ENOMEM;
	kref_init(&vm->ref);
	mutex_init(&vm->lock);
	INIT_LIST_HEAD(&vm->gmems);
	INIT_LIST_HEAD(&vm->slots);
	INIT_LIST_HEAD(&vm->memcache);
	init_waitqueue_head(&vm->power_wq);
	atomic_set(&vm->power_gen, 0);
	vm->nr_vcpus = nr_vcpus;
	ret = -ENOMEM;
	vm->pgd = alloc_pages(GFP_KERNEL_ACCOUNT | __GFP_ZERO, PKVM_PGD_ORDER);
	if (!vm->pgd)
		goto free_vm;
	vm->meta = alloc_pages(GFP_KERNEL_ACCOUNT | __GFP_ZERO, PKVM_META_ORDER);
	if (!vm->meta)
		goto free_pgd;
	ret = pkvm_hc(HC_VM_CREATE, PKVM_IPA_BITS, page_to_pfn(vm->pgd),
		      page_to_pfn(vm->meta), nr_vcpus, 0, out);
	if (ret)
		goto free_meta;
	vm->handle = out[0];
	atomic_long_add((1 << PKVM_PGD_ORDER) + (1 << PKVM_META_ORDER),
			&pkvm_pages_in_use);
	fd = anon_inode_getfd("pkvm-rs-vm", &vm_fops, vm, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		pkvm_vm_put(vm);	/* tears it down at el2 and frees it */
	return fd;

free_meta:
	__free_pages(vm->meta, PKVM_META_ORDER);
free_pgd:
	__free_pages(vm->pgd, PKVM_PGD_ORDER);
free_vm:
	kfree(vm);
	return ret;
}

/* ------------------------------------------------------------------ */
/* /dev/pkvm-rs.                                                        */

static long dev_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case PKVM_RS_GET_API_VERSION:
		return arg ? -EINVAL : PKVM_RS_API_VERSION;
	case PKVM_RS_CREATE_VM:
		return create_vm(arg);
	case PKVM_RS_GET_VCPU_MMAP_SIZE:
		return arg ? -EINVAL : PAGE_SIZE;
	default:
		return -ENOTTY;
	}
}

static const struct file_operations dev_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice pkvm_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pkvm-rs",
	.fops = &dev_fops,
};

/*
 * Whether el2 is below this kernel: an EL2 exists (ID_AA64PFR0_EL1.EL2),
 * the kernel does not run at EL2 itself, and the Version host call answers
 * with el2's ABI. Without an EL2, HVC is UNDEFINED, hence the first check.
 */
static int probe_el2(u64 *version)
{
	u64 pfr0 = read_sysreg_s(SYS_ID_AA64PFR0_EL1);
	u64 out[5];
	int ret;

	if (!((pfr0 >> ID_AA64PFR0_EL1_EL2_SHIFT) & 0xf)) {
		pr_err("not loading: this CPU has no EL2, so no el2 hypervisor below the kernel\n");
		return -ENODEV;
	}
	if (is_kernel_in_hyp_mode()) {
		pr_err("not loading: the kernel runs at EL2 itself (VHE), el2 is not below it\n");
		return -ENODEV;
	}
	ret = pkvm_hc(HC_VERSION, 0, 0, 0, 0, 0, out);
	if (ret || (out[0] >> 16) != PKVM_ABI_MAJOR) {
		pr_err("not loading: no pkvm-rs el2 hypervisor answers host calls (Version: %d, %#llx; want ABI %d.x)\n",
		       ret, ret ? 0 : out[0], PKVM_ABI_MAJOR);
		return -ENODEV;
	}
	*version = out[0];
	return 0;
}

static int __init pkvm_rs_init(void)
{
	u64 version;
	int ret;

	ret = probe_el2(&version);
	if (ret)
		return ret;
	ret = pkvm_gmem_init();
	if (ret)
		return ret;
	ret = misc_register(&pkvm_dev);
	if (ret) {
		pkvm_gmem_exit();
		return ret;
	}
	pr_info("el2 host ABI %llu.%llu; /dev/%s ready (API %d)\n",
		version >> 16, version & 0xffff, pkvm_dev.name,
		PKVM_RS_API_VERSION);
	return 0;
}

static void __exit pkvm_rs_exit(void)
{
	misc_deregister(&pkvm_dev);
	pkvm_gmem_exit();
	pr_info("unloaded; driver pages in use: %ld\n",
		atomic_long_read(&pkvm_pages_in_use));
}

module_init(pkvm_rs_init);
module_exit(pkvm_rs_exit);

MODULE_DESCRIPTION("pkvm-rs host driver: protected VMs on the el2 hypervisor");
MODULE_LICENSE("Dual MIT/GPL");
