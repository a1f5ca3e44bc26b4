// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * vcpu.c - vCPU fds of the pkvm_rs driver: the run page, SET_ONE_REG and
 * KVM_RUN, which loops on el2's VcpuRun and handles in the kernel what KVM
 * would (stage-2 faults in memslots, memcache top-ups, relinquished pages,
 * WFI, host interrupts, powered-off vCPUs), returning to the VMM only the
 * exits of pkvm_rs_uapi.h.
 */
#define pr_fmt(fmt) "pkvm_rs: " fmt

#include <linux/module.h>
#include <linux/anon_inodes.h>
#include <linux/hrtimer.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "pkvm_rs.h"

#define KVM_EXIT_UNKNOWN 0

/* How long a vCPU in WFI sleeps before el2 runs it again (its timer is
 * el2's business: the host cannot see the deadline of a protected
 * guest), unless the VMM raises an interrupt line first. */
#define WFI_SLEEP_NS (1000 * NSEC_PER_USEC)
/* A powered-off vCPU re-checks at least this often (a CPU_ON approval
 * also wakes it at once). */
#define POWERED_OFF_RECHECK (HZ / 4)

static void exit_system_event(struct pkvm_rs_run *run, int type)
{
	memset(&run->system_event, 0, sizeof(run->system_event));
	run->system_event.type = type;
	run->exit_reason = PKVM_RS_EXIT_SYSTEM_EVENT;
}

/* The VM's first KVM_RUN: the vCPUs whose PC the VMM set start there. */
static int vm_start_locked(struct pkvm_vm *vm)
{
	unsigned int i;
	int ret;

	for (i = 0; i < vm->nr_vcpus; i++) {
		struct pkvm_vcpu *v = vm->vcpus[i];

		if (!v || !v->pc_set || v->inited)
			continue;
		ret = pkvm_hc(HC_VCPU_INIT, vm->handle, i, v->pc, v->x0, 0, NULL);
		if (ret)
			return ret;
		v->inited = true;
	}
	vm->started = true;
	return 0;
}

static int vcpu_run_loop(struct pkvm_vcpu *vcpu)
{
	struct pkvm_vm *vm = vcpu->vm;
	struct pkvm_rs_run *run = vcpu->run;
	u64 out[5];
	int ret;

	for (;;) {
		u64 flags = 0, v0 = 0, gen;
		bool cpu_on = false;
		int event;

		event = READ_ONCE(vm->system_event);
		if (event) {
			/* Another vCPU powered the guest off (or reset it): a
			 * protected VM does not come back; every vCPU sees it. */
			exit_system_event(run, event);
			return 0;
		}
		if (signal_pending(current)) {
			run->exit_reason = PKVM_RS_EXIT_INTR;
			return -EINTR;
		}
		cond_resched();

		switch (vcpu->pending) {
		case PEND_MMIO_READ:
			memcpy(&v0, run->mmio.data, sizeof(v0));
			if (vcpu->mmio_len < 8)
				v0 &= (1ULL << (vcpu->mmio_len * 8)) - 1;
			flags = RUN_COMPLETE_ACCESS;
			break;
		case PEND_MMIO_WRITE:
			flags = RUN_COMPLETE_ACCESS;
			break;
		case PEND_HYPERCALL:
			v0 = READ_ONCE(run->hypercall.ret);
			cpu_on = v0 == 0;
			flags = RUN_COMPLETE_ACCESS;
			break;
		case PEND_FAIL:
			flags = RUN_FAIL_ACCESS;
			break;
		case PEND_NONE:
			break;
		}
		gen = atomic_read(&vm->power_gen);
		ret = pkvm_hc(HC_VCPU_RUN, vm->handle, vcpu->index, flags, v0, 0,
			      out);
		/* el2 took the completion (or refused it: not again). */
		vcpu->pending = PEND_NONE;
		if (cpu_on && !ret) {
			/* el2 powered the target on while taking the answer. */
			atomic_inc(&vm->power_gen);
			wake_up_all(&vm->power_wq);
		}
		if (ret)
			return ret;

		switch (out[0]) {
		case EXIT_STAGE2_FAULT: {
			u64 gpa = out[1], bits = out[2];
			unsigned int size = (bits >> 8) & 0xff;
			struct pkvm_memslot *s;

			mutex_lock(&vm->lock);
			s = pkvm_slot_lookup(vm, gpa);
			ret = s ? pkvm_gmem_fault_in(vm, s, gpa) : 0;
			mutex_unlock(&vm->lock);
			if (s) {
				if (ret)
					return ret;
				continue;	/* el2 retries the access */
			}
			if (bits & S2F_HVC) {
				/* A guest call (MEM_SHARE) on memory no slot
				 * backs: the call fails (DESIGN §4). */
				vcpu->pending = PEND_FAIL;
				continue;
			}
			if (!(bits & S2F_ISV) || !size || size > 8) {
				/* No syndrome to emulate the access with. */
				run->exit_reason = KVM_EXIT_UNKNOWN;
				return -EFAULT;
			}
			memset(&run->mmio, 0, sizeof(run->mmio));
			run->mmio.phys_addr = gpa;
			run->mmio.len = size;
			run->mmio.is_write = !!(bits & S2F_WRITE);
			if (bits & S2F_WRITE)
				memcpy(run->mmio.data, &out[3], size);
			vcpu->mmio_len = size;
			vcpu->pending = (bits & S2F_WRITE) ? PEND_MMIO_WRITE :
							     PEND_MMIO_READ;
			run->exit_reason = PKVM_RS_EXIT_MMIO;
			return 0;
		}
		case EXIT_MEMORY_FAULT:
			mutex_lock(&vm->lock);
			vm->req.valid = true;
			vm->req.vcpu = vcpu->index;
			vm->req.gfn = out[1] >> PAGE_SHIFT;
			vm->req.pages = out[2] >> PAGE_SHIFT;
			vm->req.to_private =
				!!(out[3] & PKVM_RS_MEMORY_EXIT_FLAG_PRIVATE);
			mutex_unlock(&vm->lock);
			memset(&run->memory_fault, 0, sizeof(run->memory_fault));
			run->memory_fault.flags = out[3];
			run->memory_fault.gpa = out[1];
			run->memory_fault.size = out[2];
			run->exit_reason = PKVM_RS_EXIT_MEMORY_FAULT;
			return 0;
		case EXIT_HYPERCALL:
			memset(&run->hypercall, 0, sizeof(run->hypercall));
			run->hypercall.nr = out[1];
			run->hypercall.args[0] = out[2];
			run->hypercall.args[1] = out[3];
			run->hypercall.args[2] = out[4];
			/* ret starts at 0 (approve); the VMM writes its answer. */
			vcpu->pending = PEND_HYPERCALL;
			run->exit_reason = PKVM_RS_EXIT_HYPERCALL;
			return 0;
		case EXIT_SYSTEM_EVENT:
			event = out[1] == 0 ? PKVM_RS_SYSTEM_EVENT_SHUTDOWN :
					      PKVM_RS_SYSTEM_EVENT_RESET;
			cmpxchg(&vm->system_event, 0, event);
			wake_up_all(&vm->power_wq);
			pkvm_kick_all(vm);
			exit_system_event(run, event);
			return 0;
		case EXIT_RELINQUISHED:
			mutex_lock(&vm->lock);
			pkvm_gmem_relinquished(vm, out[1], out[2]);
			mutex_unlock(&vm->lock);
			continue;
		case EXIT_MEMCACHE_EMPTY:
			mutex_lock(&vm->lock);
			ret = pkvm_topup(vm, clamp_t(u64, out[1], 1,
						     PKVM_MEMCACHE_MAX_TOPUP));
			mutex_unlock(&vm->lock);
			if (ret)
				return ret;
			continue;
		case EXIT_WFI:
			ret = wait_event_interruptible_hrtimeout(vcpu->wq,
				READ_ONCE(vcpu->kick) || READ_ONCE(vm->system_event),
				ns_to_ktime(WFI_SLEEP_NS));
			WRITE_ONCE(vcpu->kick, false);
			continue;	/* a signal is seen at the top */
		case EXIT_STOPPED:
			memset(&run->internal, 0, sizeof(run->internal));
			run->internal.suberror = PKVM_RS_INTERNAL_STOPPED;
			run->internal.ndata = 1;
			run->internal.data[0] = out[1];
			run->exit_reason = PKVM_RS_EXIT_INTERNAL_ERROR;
			return 0;
		case EXIT_INTERRUPTED:
			continue;	/* the host took its interrupt at EL1 */
		case EXIT_POWERED_OFF:
			wait_event_interruptible_timeout(vm->power_wq,
				atomic_read(&vm->power_gen) != gen ||
				READ_ONCE(vm->system_event),
				POWERED_OFF_RECHECK);
			continue;
		default:
			pr_warn_ratelimited("VM %llu vCPU %u: unknown exit %llu from el2\n",
					    vm->handle, vcpu->index, out[0]);
			return -EIO;
		}
	}
}

static long vcpu_run(struct pkvm_vcpu *vcpu)
{
	struct pkvm_vm *vm = vcpu->vm;
	struct pkvm_rs_run *run = vcpu->run;
	int ret = 0;

	if (READ_ONCE(run->immediate_exit)) {
		run->exit_reason = PKVM_RS_EXIT_INTR;
		return -EINTR;
	}
	mutex_lock(&vm->lock);
	if (!vm->started)
		ret = vm_start_locked(vm);
	/* The vCPU that asked for a conversion runs again without the VMM
	 * doing it: the request is refused (the guest's call gets -3).
	 * Other vCPUs leave it pending. */
	if (!ret && vm->req.valid && vm->req.vcpu == vcpu->index) {
		vm->req.valid = false;
		ret = pkvm_hc(HC_CONVERT_REFUSE, vm->handle, 0, 0, 0, 0, NULL);
	}
	mutex_unlock(&vm->lock);
	if (ret)
		return ret;
	return vcpu_run_loop(vcpu);
}

static long vcpu_set_one_reg(struct pkvm_vcpu *vcpu, void __user *argp)
{
	struct pkvm_vm *vm = vcpu->vm;
	struct pkvm_rs_one_reg r;
	u64 value;
	long ret = 0;

	if (copy_from_user(&r, argp, sizeof(r)))
		return -EFAULT;
	if (r.id != PKVM_RS_REG_PC && r.id != PKVM_RS_REG_X0)
		return -ENOENT;	/* KVM: no such register */
	if (get_user(value, (u64 __user *)(uintptr_t)r.addr))
		return -EFAULT;
	mutex_lock(&vm->lock);
	if (vm->started) {
		ret = -EBUSY;	/* el2 starts only what the guest asks for now */
	} else if (r.id == PKVM_RS_REG_PC) {
		vcpu->pc = value;
		vcpu->pc_set = true;
	} else {
		vcpu->x0 = value;
	}
	mutex_unlock(&vm->lock);
	return ret;
}

static long vcpu_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct pkvm_vcpu *vcpu = f->private_data;
	long ret;

	if (cmd != PKVM_RS_RUN && cmd != PKVM_RS_SET_ONE_REG)
		return -ENOTTY;
	/* One call at a time per vCPU. */
	if (!mutex_trylock(&vcpu->run_lock))
		return -EBUSY;
	if (cmd == PKVM_RS_RUN)
		ret = arg ? -EINVAL : vcpu_run(vcpu);
	else
		ret = vcpu_set_one_reg(vcpu, (void __user *)arg);
	mutex_unlock(&vcpu->run_lock);
	return ret;
}

static vm_fault_t vcpu_fault(struct vm_fault *vmf)
{
	struct pkvm_vcpu *vcpu = vmf->vma->vm_file->private_data;

	if (vmf->pgoff != 0)
		return VM_FAULT_SIGBUS;
	get_page(vcpu->run_page);
	vmf->page = vcpu->run_page;
	return 0;
}

static const struct vm_operations_struct vcpu_vm_ops = {
	.fault = vcpu_fault,
};

static int vcpu_mmap(struct file *f, struct vm_area_struct *vma)
{
	if (vma->vm_pgoff != 0 || vma_pages(vma) != 1)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_ops = &vcpu_vm_ops;
	return 0;
}

static int vcpu_release(struct inode *inode, struct file *f)
{
	struct pkvm_vcpu *vcpu = f->private_data;

	pkvm_vm_put(vcpu->vm);
	return 0;
}

static const struct file_operations vcpu_fops = {
	.owner = THIS_MODULE,
	.release = vcpu_release,
	.unlocked_ioctl = vcpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = vcpu_mmap,
	.llseek = noop_llseek,
};

long pkvm_vcpu_create(struct pkvm_vm *vm, unsigned long index)
{
	struct pkvm_vcpu *vcpu;
	int fd;

	if (index >= vm->nr_vcpus)
		return -EINVAL;
	vcpu = kzalloc(sizeof(*vcpu), GFP_KERNEL_ACCOUNT);
	if (!vcpu)
		return -ENOMEM;
	vcpu->run_page = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	if (!vcpu->run_page) {
		kfree(vcpu);
		return -ENOMEM;
	}
	vcpu->run = page_address(vcpu->run_page);
	vcpu->vm = vm;
	vcpu->index = index;
	mutex_init(&vcpu->run_lock);
	init_waitqueue_head(&vcpu->wq);

	mutex_lock(&vm->lock);
	if (vm->vcpus[index]) {
		mutex_unlock(&vm->lock);
		__free_page(vcpu->run_page);
		kfree(vcpu);
		return -EEXIST;
	}
	pkvm_vm_get(vm);	/* dropped by vcpu_release */
	fd = anon_inode_getfd("pkvm-rs-vcpu", &vcpu_fops, vcpu,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		mutex_unlock(&vm->lock);
		__free_page(vcpu->run_page);
		kfree(vcpu);
		pkvm_vm_put(vm);
		return fd;
	}
	atomic_long_inc(&pkvm_pages_in_use);
	smp_store_release(&vm->vcpus[index], vcpu);
	mutex_unlock(&vm->lock);
	return fd;
}

void pkvm_vcpu_free(struct pkvm_vcpu *vcpu)
{
	put_page(vcpu->run_page);
	atomic_long_dec(&pkvm_pages_in_use);
	kfree(vcpu);
}
