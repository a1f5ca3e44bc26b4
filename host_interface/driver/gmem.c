// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * gmem.c - guest_memfd files of the pkvm_rs driver: their pages and
 * attributes, mmap with SIGBUS on private pages, in-place conversion
 * (KVM_SET_MEMORY_ATTRIBUTES2), fallocate, and mapping guest memory into
 * the guest (donate private / lend shared pages, 2 MiB at a time when the
 * backing is one 2 MiB folio).
 *
 * Each file has its own inode on a small pseudo file system (as
 * mm/secretmem.c does), so unmap_mapping_range() of a range reaches
 * exactly the user mappings of that file, in every process.
 *
 * Pages are not in the page cache: the driver keeps them per 2 MiB chunk
 * (struct pkvm_chunk), one reference each. A 2 MiB folio is an order-9
 * allocation split into 512 order-0 pages (split_page), so each can be
 * mapped into a process, pinned, punched and freed on its own, while the
 * 512 consecutive frames can still be donated or lent as one block.
 */
#define pr_fmt(fmt) "pkvm_rs: " fmt

#include <linux/module.h>
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/falloc.h>
#include <linux/fs_context.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "pkvm_rs.h"

#define PKVM_GMEM_MAGIC 0x706b7672	/* "pkvr" */
/* Largest guest_memfd: the driver keeps an attribute bit per page. */
#define PKVM_GMEM_MAX_SIZE (64ULL << 30)

static struct vfsmount *gmem_mnt;
static const struct file_operations gmem_fops;

/* ------------------------------------------------------------------ */
/* Pages and attributes (vm->lock held).                                */

static inline bool gm_private(struct pkvm_gmem *g, u64 page)
{
	return test_bit(page, g->priv);
}

/* 1 if every page of [first, end) is private, 0 if every one is shared,
 * -1 if mixed. */
static int gm_uniform(struct pkvm_gmem *g, u64 first, u64 end)
{
	unsigned long n = find_next_bit(g->priv, end, first);

	if (n >= end)
		return 0;
	if (n != first)
		return -1;
	return find_next_zero_bit(g->priv, end, first) >= end ? 1 : -1;
}

static struct pkvm_chunk *chunk_get(struct pkvm_gmem *g, u64 ci)
{
	if (!g->chunks[ci])
		g->chunks[ci] = kvzalloc(sizeof(struct pkvm_chunk),
					 GFP_KERNEL_ACCOUNT);
	return g->chunks[ci];
}

static void chunk_maybe_free(struct pkvm_gmem *g, u64 ci)
{
	struct pkvm_chunk *c = g->chunks[ci];

	if (c && !c->nr_pages && !c->nr_mapped) {
		kvfree(c);
		g->chunks[ci] = NULL;
	}
}

/* The chunk's 512 pages are one 2 MiB-aligned run of frames. */
static bool chunk_is_huge(struct pkvm_chunk *c)
{
	unsigned long pfn0, i;

	if (c->nr_pages != PKVM_HUGE_PAGES)
		return false;
	pfn0 = page_to_pfn(c->pages[0]);
	if (pfn0 & (PKVM_HUGE_PAGES - 1))
		return false;
	for (i = 1; i < PKVM_HUGE_PAGES; i++)
		if (page_to_pfn(c->pages[i]) != pfn0 + i)
			return false;
	return true;
}

/* Backs an empty chunk wholly inside the file with one 2 MiB folio. */
static int gm_alloc_huge(struct pkvm_gmem *g, u64 ci)
{
	struct pkvm_chunk *c;
	struct page *p;
	unsigned long i;

	if ((ci + 1) * PKVM_HUGE_PAGES > g->npages)
		return -EINVAL;
	c = chunk_get(g, ci);
	if (!c)
		return -ENOMEM;
	if (c->nr_pages)
		return -EEXIST;
	p = alloc_pages(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN |
			__GFP_NORETRY, PKVM_HUGE_ORDER);
	if (!p) {
		chunk_maybe_free(g, ci);
		return -ENOMEM;
	}
	split_page(p, PKVM_HUGE_ORDER);
	for (i = 0; i < PKVM_HUGE_PAGES; i++)
		c->pages[i] = p + i;
	c->nr_pages = PKVM_HUGE_PAGES;
	atomic_long_add(PKVM_HUGE_PAGES, &pkvm_pages_in_use);
	return 0;
}

/* The page backing file page `page`, allocated (zeroed) if needed: a
 * whole 2 MiB folio when `huge` and its chunk is empty, else 4 KiB. */
static struct page *gm_back(struct pkvm_gmem *g, u64 page, bool huge)
{
	u64 ci = page / PKVM_HUGE_PAGES;
	unsigned int i = page % PKVM_HUGE_PAGES;
	struct pkvm_chunk *c = chunk_get(g, ci);
	struct page *p;

	if (!c)
		return ERR_PTR(-ENOMEM);
	if (c->pages[i])
		return c->pages[i];
	if (huge && !c->nr_pages && !gm_alloc_huge(g, ci))
		return c->pages[i];
	p = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	if (!p) {
		chunk_maybe_free(g, ci);
		return ERR_PTR(-ENOMEM);
	}
	c->pages[i] = p;
	c->nr_pages++;
	atomic_long_inc(&pkvm_pages_in_use);
	return p;
}

/* Drops the file's page `page` (user mappings already gone); a pin or a
 * pipe that still holds it keeps it alive until it lets go. */
static void gm_drop_page(struct pkvm_gmem *g, u64 page)
{
	struct pkvm_chunk *c = g->chunks[page / PKVM_HUGE_PAGES];
	unsigned int i = page % PKVM_HUGE_PAGES;

	if (!c || !c->pages[i])
		return;
	put_page(c->pages[i]);
	c->pages[i] = NULL;
	c->nr_pages--;
	atomic_long_dec(&pkvm_pages_in_use);
}

static void gm_unmap(struct pkvm_gmem *g, u64 first, u64 end)
{
	unmap_mapping_range(g->inode->i_mapping, (loff_t)first << PAGE_SHIFT,
			    (loff_t)(end - first) << PAGE_SHIFT, 1);
}

/* Nothing but the file holds the pages [first, first + n) (no process
 * maps them, no pin, no pipe): they may become the guest's. */
static int gm_ensure_unused(struct pkvm_gmem *g, u64 first, u64 n)
{
	int pass;
	u64 p;

	for (pass = 0; pass < 2; pass++) {
		bool busy = false;

		for (p = first; p < first + n; p++) {
			struct pkvm_chunk *c = g->chunks[p / PKVM_HUGE_PAGES];
			struct page *pg = c ? c->pages[p % PKVM_HUGE_PAGES] : NULL;

			if (pg && page_count(pg) > 1) {
				busy = true;
				break;
			}
		}
		if (!busy)
			return 0;
		gm_unmap(g, first, first + n);
	}
	return -EBUSY;
}

bool pkvm_gmem_has_donated(struct pkvm_gmem *g, u64 first, u64 end)
{
	u64 p;

	for (p = first; p < end; p++) {
		struct pkvm_chunk *c = g->chunks[p / PKVM_HUGE_PAGES];

		if (!c || !c->nr_mapped) {
			p |= PKVM_HUGE_PAGES - 1;	/* the next chunk */
			continue;
		}
		if ((c->state[p % PKVM_HUGE_PAGES] & GS_KIND) == GS_DONATED)
			return true;
	}
	return false;
}

/* Ends every host->guest lend touching [first, end) (a 2 MiB lend is
 * ended whole; its other pages fault in again later). */
int pkvm_gmem_unlend(struct pkvm_gmem *g, u64 first, u64 end)
{
	struct pkvm_vm *vm = g->vm;
	u64 p;
	int ret;

	lockdep_assert_held(&vm->lock);
	for (p = first; p < end; p++) {
		struct pkvm_chunk *c = g->chunks[p / PKVM_HUGE_PAGES];
		unsigned int i = p % PKVM_HUGE_PAGES, j;
		u8 st;

		if (!c || !c->nr_mapped) {
			p |= PKVM_HUGE_PAGES - 1;
			continue;
		}
		st = c->state[i];
		if ((st & GS_KIND) != GS_LENT)
			continue;
		if (st & GS_BLOCK) {
			ret = pkvm_hc_memcache(vm, HC_UNSHARE_GUEST, vm->handle,
					       c->gfn[i] & ~(u64)(PKVM_HUGE_PAGES - 1),
					       PKVM_HUGE_PAGES, 0);
			if (ret)
				return ret;
			for (j = 0; j < PKVM_HUGE_PAGES; j++) {
				if (c->state[j] == (GS_LENT | GS_BLOCK)) {
					c->state[j] = GS_NONE;
					c->nr_mapped--;
				}
			}
		} else {
			ret = pkvm_hc_memcache(vm, HC_UNSHARE_GUEST, vm->handle,
					       c->gfn[i], 1, 0);
			if (ret)
				return ret;
			c->state[i] = GS_NONE;
			c->nr_mapped--;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Guest faults (KvmVm::fault_in).                                      */

int pkvm_gmem_fault_in(struct pkvm_vm *vm, struct pkvm_memslot *slot, u64 gpa)
{
	struct pkvm_gmem *g = slot->gmem;
	u64 page = (slot->offset + (gpa - slot->gpa)) >> PAGE_SHIFT;
	u64 gfn = gpa >> PAGE_SHIFT;
	u64 mask = PKVM_HUGE_PAGES - 1;
	u64 head = page & ~mask, ghead = gfn & ~mask;
	u64 slot_first = slot->offset >> PAGE_SHIFT;
	u64 slot_end = slot_first + (slot->size >> PAGE_SHIFT);
	u64 ci = page / PKVM_HUGE_PAGES;
	unsigned int i = page % PKVM_HUGE_PAGES, j;
	struct pkvm_chunk *c = g->chunks[ci];
	bool private = gm_private(g, page);
	unsigned int call = private ? HC_DONATE_GUEST : HC_SHARE_GUEST;
	u8 kind = private ? GS_DONATED : GS_LENT;
	struct page *pg;
	int ret;

	lockdep_assert_held(&vm->lock);
	if (c && c->state[i] != GS_NONE)
		return 0;	/* another vCPU mapped it meanwhile */
	/*
	 * A whole 2 MiB at once when both spaces line up, the slot covers
	 * it, it has one attribute, nothing in it is mapped yet, and the
	 * backing is (or can be) one 2 MiB folio.
	 */
	if ((gfn & mask) == (page & mask) && head >= slot_first &&
	    head + PKVM_HUGE_PAGES <= slot_end &&
	    gm_uniform(g, head, head + PKVM_HUGE_PAGES) >= 0 &&
	    (!c || (!c->nr_mapped && (!c->nr_pages || chunk_is_huge(c))))) {
		if (!c || !c->nr_pages)
			gm_alloc_huge(g, ci);	/* or 4 KiB below */
		c = g->chunks[ci];
		if (c && chunk_is_huge(c)) {
			if (private) {
				ret = gm_ensure_unused(g, head, PKVM_HUGE_PAGES);
				if (ret)
					return ret;
			}
			ret = pkvm_hc_memcache(vm, call, vm->handle,
					       page_to_pfn(c->pages[0]), ghead,
					       PKVM_HUGE_PAGES);
			if (ret)
				return ret;
			for (j = 0; j < PKVM_HUGE_PAGES; j++) {
				c->state[j] = kind | GS_BLOCK;
				c->gfn[j] = ghead + j;
			}
			c->nr_mapped = PKVM_HUGE_PAGES;
			return 0;
		}
	}
	pg = gm_back(g, page, false);
	if (IS_ERR(pg))
		return PTR_ERR(pg);
	if (private) {
		ret = gm_ensure_unused(g, page, 1);
		if (ret)
			return ret;
	}
	ret = pkvm_hc_memcache(vm, call, vm->handle, page_to_pfn(pg), gfn, 1);
	if (ret)
		return ret;
	c = g->chunks[ci];
	c->state[i] = kind;
	c->gfn[i] = gfn;
	c->nr_mapped++;
	return 0;
}

/* The guest gave [gpa, gpa + size) back: el2 zeroed those pages and made
 * them the host's; they leave the guest and the file (punched). */
void pkvm_gmem_relinquished(struct pkvm_vm *vm, u64 gpa, u64 size)
{
	u64 end, gfn;

	lockdep_assert_held(&vm->lock);
	if (check_add_overflow(gpa, size, &end))
		return;
	for (gfn = gpa >> PAGE_SHIFT; gfn < end >> PAGE_SHIFT; gfn++) {
		struct pkvm_memslot *s = pkvm_slot_lookup(vm, gfn << PAGE_SHIFT);
		struct pkvm_gmem *g;
		struct pkvm_chunk *c;
		u64 page;
		unsigned int i;

		if (!s)
			continue;
		g = s->gmem;
		page = (s->offset + ((gfn << PAGE_SHIFT) - s->gpa)) >> PAGE_SHIFT;
		c = g->chunks[page / PKVM_HUGE_PAGES];
		i = page % PKVM_HUGE_PAGES;
		if (!c)
			continue;
		if (c->state[i] != GS_NONE) {
			c->state[i] = GS_NONE;
			c->nr_mapped--;
		}
		if (c->pages[i]) {
			gm_unmap(g, page, page + 1);
			gm_drop_page(g, page);
		}
		chunk_maybe_free(g, page / PKVM_HUGE_PAGES);
	}
}

/* ------------------------------------------------------------------ */
/* Teardown (KvmVm::destroy): reclaim every guest mapping, then free.   */

void pkvm_gmem_reclaim_all(struct pkvm_gmem *g, struct pkvm_teardown_counts *n)
{
	u64 handle = g->vm->handle, ci;
	unsigned int j;
	int ret;

	for (ci = 0; ci < g->nchunks; ci++) {
		struct pkvm_chunk *c = g->chunks[ci];
		u64 block = U64_MAX;

		if (!c || !c->nr_mapped)
			continue;
		for (j = 0; j < PKVM_HUGE_PAGES; j++) {
			if (c->state[j] & GS_BLOCK) {
				block = c->gfn[j] & ~(u64)(PKVM_HUGE_PAGES - 1);
				break;
			}
		}
		/* A block some pages of which the guest relinquished is still
		 * reclaimed whole: el2 skips the empty pages. */
		if (block != U64_MAX) {
			ret = pkvm_hc(HC_RECLAIM, handle, block, PKVM_HUGE_PAGES,
				      0, 0, NULL);
			if (!ret)
				n->blocks++;
			else if (ret != -ENOENT)
				n->failed++;
		}
		for (j = 0; j < PKVM_HUGE_PAGES; j++) {
			if (c->state[j] == GS_NONE || (c->state[j] & GS_BLOCK))
				continue;
			ret = pkvm_hc(HC_RECLAIM, handle, c->gfn[j], 1, 0, 0, NULL);
			if (!ret)
				n->pages++;
			else if (ret != -ENOENT)
				n->failed++;
		}
	}
}

void pkvm_gmem_free(struct pkvm_gmem *g, bool leak_pages,
		    struct pkvm_teardown_counts *n)
{
	u64 ci;
	unsigned int j;

	for (ci = 0; ci < g->nchunks; ci++) {
		struct pkvm_chunk *c = g->chunks[ci];

		if (!c)
			continue;
		for (j = 0; j < PKVM_HUGE_PAGES && !leak_pages; j++) {
			if (c->pages[j]) {
				put_page(c->pages[j]);
				n->freed++;
				atomic_long_dec(&pkvm_pages_in_use);
			}
		}
		kvfree(c);
	}
	kvfree(g->chunks);
	kvfree(g->priv);
	iput(g->inode);
	kfree(g);
}

/* ------------------------------------------------------------------ */
/* In-place conversion (KvmVm::set_memory_attributes).                  */

static int gm_convert_locked(struct pkvm_gmem *g,
			     struct pkvm_rs_memory_attributes2 *a,
			     bool *set_offset)
{
	struct pkvm_vm *vm = g->vm;
	u64 first = a->offset >> PAGE_SHIFT;
	u64 end = (a->offset + a->size) >> PAGE_SHIFT;
	bool to_private = a->attributes == KVM_MEMORY_ATTRIBUTE_PRIVATE;
	bool match = vm->req.valid && vm->req.to_private == to_private;
	u64 owned = 0, first_owned = U64_MAX, p;
	int ret;

	if (gm_uniform(g, first, end) == (int)to_private)
		return 0;	/* nothing changes: no side effects */

	/* Check everything first: the owner decides. Only the guest's own
	 * request converts the guest's pages: the whole request, and
	 * nothing else of the guest's. */
	for (p = first; p < end; p++) {
		struct pkvm_chunk *c = g->chunks[p / PKVM_HUGE_PAGES];
		unsigned int i = p % PKVM_HUGE_PAGES;

		if (!c || !c->nr_mapped) {
			p |= PKVM_HUGE_PAGES - 1;
			continue;
		}
		if (gm_private(g, p) == to_private ||
		    (c->state[i] & GS_KIND) != GS_DONATED)
			continue;
		if (first_owned == U64_MAX)
			first_owned = p;
		if (match && c->gfn[i] != vm->req.gfn + owned)
			match = false;
		owned++;
	}
	if (owned && (!match || owned != vm->req.pages)) {
		a->error_offset = first_owned << PAGE_SHIFT;
		*set_offset = true;
		return -EPERM;
	}
	if (to_private) {
		/* The host's access ends: every process's mapping goes, and a
		 * page something else still holds (a pin, a pipe) blocks. */
		gm_unmap(g, first, end);
		for (p = first; p < end; p++) {
			struct pkvm_chunk *c = g->chunks[p / PKVM_HUGE_PAGES];
			struct page *pg;

			if (!c || !c->nr_pages) {
				p |= PKVM_HUGE_PAGES - 1;
				continue;
			}
			pg = c->pages[p % PKVM_HUGE_PAGES];
			if (!pg || gm_private(g, p))
				continue;
			if (page_count(pg) > 1) {
				a->error_offset = p << PAGE_SHIFT;
				*set_offset = true;
				return -EAGAIN;
			}
		}
	}
	/* Commit: the guest's conversion at el2, then the host's pages. */
	if (owned) {
		ret = pkvm_hc_memcache(vm, HC_CONVERT_COMPLETE, vm->handle,
				       vm->req.gfn, vm->req.pages, !to_private);
		if (ret) {
			a->error_offset = a->offset;
			*set_offset = true;
			return ret;
		}
		vm->req.valid = false;
	}
	if (to_private) {
		ret = pkvm_gmem_unlend(g, first, end);
		if (ret) {
			a->error_offset = a->offset;
			*set_offset = true;
			return ret;
		}
		bitmap_set(g->priv, first, end - first);
	} else {
		bitmap_clear(g->priv, first, end - first);
	}
	return 0;
}

static long gmem_set_attributes(struct pkvm_gmem *g, void __user *argp)
{
	struct pkvm_rs_memory_attributes2 __user *ua = argp;
	struct pkvm_rs_memory_attributes2 a;
	bool set_offset = false;
	u64 end;
	int i;
	long ret;

	if (copy_from_user(&a, argp, sizeof(a)))
		return -EFAULT;
	if (a.flags || (a.attributes && a.attributes != KVM_MEMORY_ATTRIBUTE_PRIVATE) ||
	    !a.size || !PAGE_ALIGNED(a.offset) || !PAGE_ALIGNED(a.size) ||
	    check_add_overflow(a.offset, a.size, &end) || end > g->size)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(a.reserved); i++)
		if (a.reserved[i])
			return -EINVAL;
	mutex_lock(&g->vm->lock);
	ret = gm_convert_locked(g, &a, &set_offset);
	mutex_unlock(&g->vm->lock);
	/* Written back only on failure, after the lock (a user copy may
	 * fault on this very file's mapping). */
	if (ret && set_offset &&
	    put_user(a.error_offset, &ua->error_offset))
		return -EFAULT;
	return ret;
}

/* ------------------------------------------------------------------ */
/* fallocate: PUNCH_HOLE | KEEP_SIZE frees, KEEP_SIZE allocates.         */

static long gmem_punch(struct pkvm_gmem *g, u64 offset, u64 len)
{
	struct pkvm_vm *vm = g->vm;
	u64 first = offset >> PAGE_SHIFT, end, p;
	long ret;

	if (check_add_overflow(offset, len, &end))
		end = U64_MAX;
	end = min(end >> PAGE_SHIFT, g->npages);
	if (first >= end)
		return 0;	/* at or beyond the end: nothing to do */
	mutex_lock(&vm->lock);
	/* A page the guest owns cannot be taken from a protected guest. */
	ret = -EBUSY;
	if (pkvm_gmem_has_donated(g, first, end))
		goto out;
	ret = pkvm_gmem_unlend(g, first, end);
	if (ret)
		goto out;
	gm_unmap(g, first, end);
	for (p = first; p < end; p++) {
		u64 ci = p / PKVM_HUGE_PAGES;

		if (!g->chunks[ci]) {
			p |= PKVM_HUGE_PAGES - 1;
			continue;
		}
		gm_drop_page(g, p);
		if (p % PKVM_HUGE_PAGES == PKVM_HUGE_PAGES - 1 || p + 1 == end)
			chunk_maybe_free(g, ci);
	}
	ret = 0;
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static long gmem_allocate(struct pkvm_gmem *g, u64 offset, u64 len)
{
	struct pkvm_vm *vm = g->vm;
	u64 first = offset >> PAGE_SHIFT, end, p;
	long ret = 0;

	if (check_add_overflow(offset, len, &end) || end > g->size)
		return -EINVAL;
	end >>= PAGE_SHIFT;
	mutex_lock(&vm->lock);
	for (p = first; p < end;) {
		u64 ci = p / PKVM_HUGE_PAGES;
		struct page *pg;

		if (signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (!(p % PKVM_HUGE_PAGES) && p + PKVM_HUGE_PAGES <= end &&
		    (!g->chunks[ci] || !g->chunks[ci]->nr_pages) &&
		    !gm_alloc_huge(g, ci)) {
			p += PKVM_HUGE_PAGES;
			continue;
		}
		pg = gm_back(g, p, false);
		if (IS_ERR(pg)) {
			ret = PTR_ERR(pg);
			break;
		}
		p++;
	}
	mutex_unlock(&vm->lock);
	return ret;
}

static long gmem_fallocate(struct file *file, int mode, loff_t offset,
			   loff_t len)
{
	struct pkvm_gmem *g = file->private_data;

	if (!(mode & FALLOC_FL_KEEP_SIZE))
		return -EOPNOTSUPP;
	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE))
		return -EOPNOTSUPP;
	if (offset < 0 || len <= 0 || !PAGE_ALIGNED(offset) ||
	    !PAGE_ALIGNED(len))
		return -EINVAL;
	if (mode & FALLOC_FL_PUNCH_HOLE)
		return gmem_punch(g, offset, len);
	return gmem_allocate(g, offset, len);
}

/* ------------------------------------------------------------------ */
/* mmap: shared pages only.                                             */

static vm_fault_t gmem_fault(struct vm_fault *vmf)
{
	struct pkvm_gmem *g = vmf->vma->vm_file->private_data;
	struct pkvm_vm *vm = g->vm;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	struct page *page;

	if (vmf->pgoff >= g->npages)
		return VM_FAULT_SIGBUS;
	mutex_lock(&vm->lock);
	if (gm_private(g, vmf->pgoff))
		goto out;	/* the guest's, or to be: SIGBUS */
	/* First touch of an empty 2 MiB: a 2 MiB folio, so the guest can
	 * later get it as a block (zeroed once, here). */
	page = gm_back(g, vmf->pgoff, true);
	if (IS_ERR(page)) {
		ret = PTR_ERR(page) == -ENOMEM ? VM_FAULT_OOM : VM_FAULT_SIGBUS;
		goto out;
	}
	get_page(page);
	vmf->page = page;
	ret = 0;
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static const struct vm_operations_struct gmem_vm_ops = {
	.fault = gmem_fault,
};

static int gmem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct pkvm_gmem *g = file->private_data;
	u64 end;

	if (!(g->flags & GUEST_MEMFD_FLAG_MMAP))
		return -ENODEV;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;	/* no copy-on-write of guest memory */
	if (check_add_overflow((u64)vma->vm_pgoff, (u64)vma_pages(vma), &end) ||
	    end > g->npages)
		return -EINVAL;
	/* VM_DONTEXPAND also keeps mlock and mremap growth away. */
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_ops = &gmem_vm_ops;
	return 0;
}

/* ------------------------------------------------------------------ */
/* The file.                                                            */

static long gmem_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	if (cmd != PKVM_RS_SET_MEMORY_ATTRIBUTES2)
		return -ENOTTY;
	return gmem_set_attributes(f->private_data, (void __user *)arg);
}

static int gmem_release(struct inode *inode, struct file *f)
{
	/* The pages stay with the VM (the guest may own some) until it
	 * dies; its memslots keep working. */
	pkvm_vm_put(((struct pkvm_gmem *)f->private_data)->vm);
	return 0;
}

static const struct file_operations gmem_fops = {
	.owner = THIS_MODULE,
	.release = gmem_release,
	.mmap = gmem_mmap,
	.unlocked_ioctl = gmem_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.fallocate = gmem_fallocate,
	.llseek = noop_llseek,
};

static int gmem_setattr(struct user_namespace *ns, struct dentry *dentry,
			struct iattr *attr)
{
	return -EINVAL;	/* fixed size: no truncate, no chmod */
}

static const struct inode_operations gmem_iops = {
	.setattr = gmem_setattr,
};

struct pkvm_gmem *pkvm_gmem_from_fd(struct pkvm_vm *vm, int fd, int *err)
{
	struct fd f = fdget(fd);
	struct pkvm_gmem *g = NULL;

	if (!f.file) {
		*err = -EBADF;
		return NULL;
	}
	*err = -EINVAL;	/* not a guest_memfd, or another VM's */
	if (f.file->f_op == &gmem_fops &&
	    ((struct pkvm_gmem *)f.file->private_data)->vm == vm)
		g = f.file->private_data;
	fdput(f);
	/* g lives as long as the VM, which the caller holds. */
	return g;
}

long pkvm_gmem_create(struct pkvm_vm *vm, void __user *argp)
{
	struct pkvm_rs_create_guest_memfd a;
	struct pkvm_gmem *g;
	struct inode *inode;
	struct file *file;
	int fd, ret;

	if (copy_from_user(&a, argp, sizeof(a)))
		return -EFAULT;
	if (a.flags & ~(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) ||
	    !a.size || !PAGE_ALIGNED(a.size) || a.size > PKVM_GMEM_MAX_SIZE)
		return -EINVAL;
	g = kzalloc(sizeof(*g), GFP_KERNEL_ACCOUNT);
	if (!g)
		return -ENOMEM;
	g->size = a.size;
	g->npages = a.size >> PAGE_SHIFT;
	g->flags = a.flags;
	g->nchunks = DIV_ROUND_UP(g->npages, PKVM_HUGE_PAGES);
	ret = -ENOMEM;
	g->priv = kvzalloc(BITS_TO_LONGS(g->npages) * sizeof(long),
			   GFP_KERNEL_ACCOUNT);
	g->chunks = kvcalloc(g->nchunks, sizeof(*g->chunks), GFP_KERNEL_ACCOUNT);
	if (!g->priv || !g->chunks)
		goto free;
	if (!(a.flags & GUEST_MEMFD_FLAG_INIT_SHARED))
		bitmap_set(g->priv, 0, g->npages);

	mutex_lock(&vm->lock);
	ret = -ENOSPC;
	if (vm->nr_gmems >= PKVM_MAX_GMEMS) {
		mutex_unlock(&vm->lock);
		goto free;
	}
	vm->nr_gmems++;	/* reserved */
	mutex_unlock(&vm->lock);

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto unreserve;
	}
	inode = alloc_anon_inode(gmem_mnt->mnt_sb);
	if (IS_ERR(inode)) {
		ret = PTR_ERR(inode);
		goto put_fd;
	}
	inode->i_mode |= S_IFREG;
	inode->i_size = a.size;
	inode->i_op = &gmem_iops;
	inode->i_private = g;
	mapping_set_unevictable(inode->i_mapping);
	ihold(inode);	/* the VM's: the inode outlives the file */
	/* alloc_file_pseudo() takes no reference on fops->owner, __fput()
	 * drops one: take it here (the VM fd's ioctl holds the module). */
	__module_get(THIS_MODULE);
	file = alloc_file_pseudo(inode, gmem_mnt, "pkvm-rs-guest-memfd",
				 O_RDWR, &gmem_fops);
	if (IS_ERR(file)) {
		ret = PTR_ERR(file);
		module_put(THIS_MODULE);
		iput(inode);
		iput(inode);
		goto put_fd;
	}
	file->f_flags |= O_LARGEFILE;
	file->private_data = g;
	g->inode = inode;
	g->vm = vm;
	pkvm_vm_get(vm);	/* dropped by gmem_release */
	mutex_lock(&vm->lock);
	g->id = vm->nr_gmems - 1;
	list_add_tail(&g->node, &vm->gmems);
	mutex_unlock(&vm->lock);
	fd_install(fd, file);
	return fd;

put_fd:
	put_unused_fd(fd);
unreserve:
	mutex_lock(&vm->lock);
	vm->nr_gmems--;
	mutex_unlock(&vm->lock);
free:
	kvfree(g->chunks);
	kvfree(g->priv);
	kfree(g);
	return ret;
}

/* ------------------------------------------------------------------ */
/* The pseudo file system of guest_memfd inodes.                        */

static int gmem_init_fs_context(struct fs_context *fc)
{
	if (!init_pseudo(fc, PKVM_GMEM_MAGIC))
		return -ENOMEM;
	fc->s_iflags |= SB_I_NOEXEC;
	fc->s_iflags |= SB_I_NODEV;
	return 0;
}

static struct file_system_type gmem_fs = {
	.name = "pkvm_rs_gmem",
	.init_fs_context = gmem_init_fs_context,
	.kill_sb = kill_anon_super,
};

int pkvm_gmem_init(void)
{
	gmem_mnt = kern_mount(&gmem_fs);
	if (IS_ERR(gmem_mnt))
		return PTR_ERR(gmem_mnt);
	/* Guest memory is never executable in the host. */
	gmem_mnt->mnt_flags |= MNT_NOEXEC;
	return 0;
}

void pkvm_gmem_exit(void)
{
	kern_unmount(gmem_mnt);
}
