// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * smoke.c - pkvm-rs-smoke: checks /dev/pkvm-rs end to end from inside the
 * Linux host running under el2 (static aarch64 binary; run as root after
 * `insmod pkvm_rs.ko`).
 *
 * One line per check (`SMOKE-OK: ...` / `SMOKE-FAIL: ...`) and a closing
 * `smoke: N passed, M failed`; exit status 0 when nothing failed.
 *
 *  1. the device: API version, run page size, bad arguments;
 *  2. VM 1 (1 vCPU, 16 MiB guest_memfd with MMAP, private by default):
 *     the mmap SIGBUSes on private pages; the VMM writes a guest program
 *     into shared memory, a vmsplice()d page makes the conversion to
 *     private fail with EAGAIN and that page's error_offset, then the
 *     conversion succeeds and the mmap SIGBUSes; KVM_RUN gives the MMIO
 *     exits of the program (a store, a load the VMM answers, the answer
 *     stored back), the guest's MEM_SHARE as a MEMORY_FAULT exit (a
 *     conversion of another guest page is EPERM, the requested one
 *     succeeds, the guest's store is then seen through the mmap), a
 *     MEM_RELINQUISH (the page reads back zero), PSCI SYSTEM_OFF;
 *     punch, fallocate, IRQ_LINE; closing everything tears the VM down
 *     (dmesg line, no driver page left);
 *  3. VM 2 (2 vCPUs, shared memory lent to the guest): vCPU 1 sleeps
 *     powered off in KVM_RUN on one thread (a second KVM_RUN on it is
 *     EBUSY) until vCPU 0's PSCI CPU_ON, approved by the VMM, starts it;
 *  4. a signal ends a KVM_RUN with EINTR, immediate_exit too; a VMM
 *     SIGKILLed while its guest spins in KVM_RUN: the VM is torn down;
 *  5. figures: KVM_SET_MEMORY_ATTRIBUTES2 of 512 pages (2 MiB) and of
 *     1 page timed both ways (`smoke: figure: ...` lines, min and median
 *     in us): host-owned pages (no el2 call) and guest-owned pages at the
 *     guest's MEM_SHARE / MEM_UNSHARE request (el2's ConvertComplete);
 *     the shared page keeps its frame and the guest's bytes (in place);
 *     the guest's private page, its frame read from /proc/self/pagemap
 *     while it was shared, gives no byte through /dev/mem (pread, mmap);
 *  6. a few thousand random ioctls (and mmap/fallocate) with hostile
 *     arguments on every kind of fd, then teardown;
 *  7. free memory back where it was (after drop_caches, counting the
 *     per-CPU free lists, which MemFree leaves out), no oops, BUG or
 *     WARNING in the kernel log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pkvm_rs_uapi.h"

#define MiB (1ULL << 20)
#define PAGE 4096ULL
#define RAM 0x80000000ULL
#define MMIO 0x09000000ULL
#define PRIVATE_ATTR (1ULL << 3)
#define FLAG_MMAP 1ULL
#define FLAG_INIT_SHARED 2ULL
#define MEM_GUEST_MEMFD 4U

static int passed, failed;
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	printf(ok ? "SMOKE-OK: " : "SMOKE-FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (ok)
		passed++;
	else
		failed++;
}

static void note(const char *fmt, ...)
{
	va_list ap;

	printf("smoke: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* ioctl's result, or -errno. */
static long xioctl(int fd, unsigned long cmd, unsigned long arg)
{
	long r = ioctl(fd, cmd, arg);

	return r < 0 ? -errno : r;
}

#define IOP(fd, cmd, p) xioctl(fd, cmd, (unsigned long)(p))

static const char *err(long e)
{
	static char buf[8][64];
	static int n;
	char *b = buf[n++ % 8];

	if (e >= 0)
		snprintf(b, 64, "%ld", e);
	else
		snprintf(b, 64, "-%s", strerrorname_np((int)-e) ? strerrorname_np((int)-e) : "?");
	return b;
}

/* ------------------------------------------------------------------ */
/* Touching memory that may SIGBUS.                                     */

static sigjmp_buf probe_jmp;
static volatile sig_atomic_t probing;

static void on_sigbus(int sig)
{
	(void)sig;
	if (probing)
		siglongjmp(probe_jmp, 1);
	_exit(99);
}

/* 0 and the value, or -1 if the read was a SIGBUS. */
static int probe_read32(volatile uint32_t *p, uint32_t *out)
{
	if (sigsetjmp(probe_jmp, 1)) {
		probing = 0;
		return -1;
	}
	probing = 1;
	*out = *p;
	probing = 0;
	return 0;
}

static int probe_write32(volatile uint32_t *p, uint32_t v)
{
	if (sigsetjmp(probe_jmp, 1)) {
		probing = 0;
		return -1;
	}
	probing = 1;
	*p = v;
	probing = 0;
	return 0;
}

/* ------------------------------------------------------------------ */
/* The kernel's view.                                                   */

static long memfree_raw_kib(void);
static long free_with_pcp_kib(void);

/* Free memory once the kernel dropped its caches (page cache, dentries
 * and inodes), so that what is missing is what was allocated and not
 * freed: free pages plus the per-CPU free lists. */
static long memfree_kib(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);

	if (fd >= 0) {
		(void)!write(fd, "3\n", 2);
		close(fd);
	}
	return free_with_pcp_kib();
}

/* Free pages, in kB, counting those on the per-CPU free lists too
 * (/proc/zoneinfo's "count:" of each pageset): MemFree leaves them out,
 * and freeing a 2 MiB folio page by page parks up to pcp->high pages
 * there for a while. */
static long free_with_pcp_kib(void)
{
	FILE *f = fopen("/proc/zoneinfo", "r");
	char line[256];
	long pages = 0, v;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, " pages free %ld", &v) == 1 ||
		    sscanf(line, " count: %ld", &v) == 1)
			pages += v;
	}
	fclose(f);
	return pages * (long)(PAGE / 1024);
}

static long memfree_raw_kib(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemFree: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

static char *kernel_log(void)
{
	int size = klogctl(10, NULL, 0);
	char *buf;
	int n;

	if (size <= 0)
		size = 1 << 20;
	buf = calloc(1, (size_t)size + 1);
	if (!buf)
		return NULL;
	n = klogctl(3, buf, size);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	return buf;
}

static int count_substr(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* The last teardown line, and how many there are. */
static int teardown_lines(char *last, size_t size)
{
	char *log = kernel_log(), *p, *line = NULL;
	int n = 0;

	if (!log)
		return -1;
	for (p = log; (p = strstr(p, "pkvm_rs: VM ")); p++) {
		char *eol = strchr(p, '\n');

		if (eol && strstr(p, " torn down: ") && strstr(p, " torn down: ") < eol) {
			n++;
			line = p;
		}
	}
	if (last && size) {
		last[0] = 0;
		if (line) {
			size_t len = strcspn(line, "\n");

			if (len >= size)
				len = size - 1;
			memcpy(last, line, len);
			last[len] = 0;
		}
	}
	free(log);
	return n;
}

static long pages_in_use(const char *line)
{
	const char *p = strstr(line, "driver pages in use: ");

	return p ? strtol(p + strlen("driver pages in use: "), NULL, 10) : -1;
}

/* ------------------------------------------------------------------ */
/* Driver helpers.                                                      */

static long create_gmem(int vm, uint64_t size, uint64_t flags)
{
	struct pkvm_rs_create_guest_memfd g = { .size = size, .flags = flags };

	return IOP(vm, PKVM_RS_CREATE_GUEST_MEMFD, &g);
}

static long set_attrs(int gfd, uint64_t offset, uint64_t size, uint64_t attrs,
		      uint64_t *error_offset)
{
	struct pkvm_rs_memory_attributes2 a = {
		.offset = offset, .size = size, .attributes = attrs,
		.error_offset = ~0ULL,
	};
	long r = IOP(gfd, PKVM_RS_SET_MEMORY_ATTRIBUTES2, &a);

	if (error_offset)
		*error_offset = a.error_offset;
	return r;
}

static long set_region(int vm, uint32_t slot, uint32_t flags, uint64_t gpa,
		       uint64_t size, uint64_t offset, uint32_t gfd)
{
	struct pkvm_rs_userspace_memory_region2 r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .guest_memfd_offset = offset,
		.guest_memfd = gfd,
	};

	return IOP(vm, PKVM_RS_SET_USER_MEMORY_REGION2, &r);
}

static long set_reg(int vcpu, uint64_t id, uint64_t value)
{
	struct pkvm_rs_one_reg r = { .id = id, .addr = (uintptr_t)&value };

	return IOP(vcpu, PKVM_RS_SET_ONE_REG, &r);
}

static long run_vcpu(int vcpu)
{
	return xioctl(vcpu, PKVM_RS_RUN, 0);
}

static long fallocate_err(int fd, int mode, off_t off, off_t len)
{
	return fallocate(fd, mode, off, len) < 0 ? -errno : 0;
}

static uint64_t mmio_data(struct pkvm_rs_run *run)
{
	uint64_t v = 0;

	memcpy(&v, run->mmio.data, sizeof(v));
	return v;
}

/* Runs until an exit; checks it is an MMIO access as expected. */
static void expect_mmio(int vcpu, struct pkvm_rs_run *run, const char *what,
			uint64_t addr, uint32_t len, int write, uint64_t data)
{
	long r = run_vcpu(vcpu);

	if (r || run->exit_reason != PKVM_RS_EXIT_MMIO) {
		check(0, "%s: KVM_RUN = %s, exit %u (want an MMIO exit)", what,
		      err(r), run->exit_reason);
		return;
	}
	check(run->mmio.phys_addr == addr && run->mmio.len == len &&
		      run->mmio.is_write == write &&
		      (!write || mmio_data(run) == data),
	      "%s: MMIO %s at %#llx, %u bytes%s%#" PRIx64 " (want %s at %#" PRIx64
	      ", %u bytes, %#" PRIx64 ")",
	      what, run->mmio.is_write ? "write" : "read",
	      (unsigned long long)run->mmio.phys_addr, run->mmio.len,
	      run->mmio.is_write ? ", data " : ", ", run->mmio.is_write ? mmio_data(run) : 0,
	      write ? "write" : "read", addr, len, data);
}

/* ------------------------------------------------------------------ */
/* Guest programs (assembled with aarch64-linux-gnu-as; MMU off).      */

static const uint32_t guest1[] = {
	0xd2a12001, /* mov  x1, #0x9000000                */
	0x52800822, /* mov  w2, #0x41                     */
	0xb9000022, /* str  w2, [x1]        MMIO write    */
	0xb9400023, /* ldr  w3, [x1]        MMIO read     */
	0xb9000423, /* str  w3, [x1, #4]    write it back */
	0xd2800060, /* mov  x0, #0x3                      */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_SHARE */
	0xd2b00001, /* mov  x1, #0x80000000               */
	0x91400421, /* add  x1, x1, #0x1, lsl #12         */
	0xd2800022, /* mov  x2, #0x1                      */
	0xd2800003, /* mov  x3, #0x0                      */
	0xd4000002, /* hvc  #0                            */
	0xd2a12001, /* mov  x1, #0x9000000                */
	0xf9000420, /* str  x0, [x1, #8]    its result    */
	0xd2b00004, /* mov  x4, #0x80000000               */
	0x91400484, /* add  x4, x4, #0x1, lsl #12         */
	0x5297dde5, /* mov  w5, #0xbeef                   */
	0xb9000085, /* str  w5, [x4]   into the shared page */
	0xd2800120, /* mov  x0, #0x9                      */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_RELINQUISH */
	0xd2b00001, /* mov  x1, #0x80000000               */
	0x91400821, /* add  x1, x1, #0x2, lsl #12         */
	0xd2800022, /* mov  x2, #0x1                      */
	0xd2800003, /* mov  x3, #0x0                      */
	0xd4000002, /* hvc  #0                            */
	0xd2a12001, /* mov  x1, #0x9000000                */
	0xf9000820, /* str  x0, [x1, #16]   its result    */
	0xd2800100, /* mov  x0, #0x8                      */
	0xf2b08000, /* movk x0, #0x8400, lsl #16  SYSTEM_OFF */
	0xd4000002, /* hvc  #0                            */
	0x14000000, /* b    .                             */
};

/* vCPU 0 at RAM: CPU_ON(1, RAM + 0x100, 0x5678), then WFI forever;
 * vCPU 1 at RAM + 0x100: stores its x0 (the context id), SYSTEM_OFF. */
static const uint32_t guest2_cpu0[] = {
	0xd2800060, /* mov  x0, #0x3                      */
	0xf2b88000, /* movk x0, #0xc400, lsl #16  CPU_ON  */
	0xd2800021, /* mov  x1, #0x1                      */
	0xd2b00002, /* mov  x2, #0x80000000               */
	0x91040042, /* add  x2, x2, #0x100                */
	0xd28acf03, /* mov  x3, #0x5678                   */
	0xd4000002, /* hvc  #0                            */
	0xd2a12001, /* mov  x1, #0x9000000                */
	0xf9000c20, /* str  x0, [x1, #24]   its result    */
	0xd503207f, /* wfi                                */
	0x17ffffff, /* b    wfi                           */
};
static const uint32_t guest2_cpu1[] = {
	0xd2a12001, /* mov  x1, #0x9000000                */
	0xf9001020, /* str  x0, [x1, #32]   context id    */
	0xd2800100, /* mov  x0, #0x8                      */
	0xf2b08000, /* movk x0, #0x8400, lsl #16  SYSTEM_OFF */
	0xd4000002, /* hvc  #0                            */
	0x14000000, /* b    .                             */
};

static uint32_t pattern(uint64_t offset)
{
	return 0xa5000000u | (uint32_t)(offset / PAGE);
}

/* ------------------------------------------------------------------ */
/* 1. The device.                                                       */

static int test_device(void)
{
	int dev = open(PKVM_RS_DEVICE, O_RDWR | O_CLOEXEC);
	long r;

	check(dev >= 0, "open %s: %s", PKVM_RS_DEVICE, dev >= 0 ? "ok" : strerror(errno));
	if (dev < 0)
		return -1;
	r = xioctl(dev, PKVM_RS_GET_API_VERSION, 0);
	check(r == PKVM_RS_API_VERSION, "GET_API_VERSION = %s", err(r));
	r = xioctl(dev, PKVM_RS_GET_VCPU_MMAP_SIZE, 0);
	check(r == (long)PAGE, "GET_VCPU_MMAP_SIZE = %s", err(r));
	r = xioctl(dev, PKVM_RS_CREATE_VM, 0);
	check(r == -EINVAL, "CREATE_VM(0 vCPUs) = %s (want -EINVAL)", err(r));
	r = xioctl(dev, PKVM_RS_CREATE_VM, 9);
	check(r == -EINVAL, "CREATE_VM(9 vCPUs) = %s (want -EINVAL)", err(r));
	r = xioctl(dev, _IO(PKVM_RS_IO, 0x03), 0);
	check(r == -ENOTTY, "an ioctl the device does not have = %s (want -ENOTTY)", err(r));
	return dev;
}

/* ------------------------------------------------------------------ */
/* 2. VM 1.                                                             */

static void test_vm1(int dev)
{
	const uint64_t size = 16 * MiB;
	struct pkvm_rs_run *run;
	volatile uint32_t *mem;
	uint64_t eo;
	uint32_t v;
	long r, vm, gfd, vcpu;
	int pipefd[2], ok, before;
	char line[512];
	struct stat st;

	before = teardown_lines(NULL, 0);
	vm = xioctl(dev, PKVM_RS_CREATE_VM, 1);
	check(vm >= 0, "CREATE_VM(1 vCPU) = %s", err(vm));
	if (vm < 0)
		return;

	/* guest_memfd creation rules. */
	r = create_gmem(vm, 0, FLAG_MMAP);
	check(r == -EINVAL, "guest_memfd of size 0 = %s (want -EINVAL)", err(r));
	r = create_gmem(vm, 100, FLAG_MMAP);
	check(r == -EINVAL, "guest_memfd of 100 bytes = %s (want -EINVAL)", err(r));
	r = create_gmem(vm, PAGE, 4);
	check(r == -EINVAL, "guest_memfd with flag 1<<2 = %s (want -EINVAL)", err(r));
	r = create_gmem(vm, 1ULL << 40, FLAG_MMAP);
	check(r == -EINVAL, "guest_memfd of 1 TiB = %s (want -EINVAL)", err(r));
	gfd = create_gmem(vm, size, FLAG_MMAP);
	check(gfd >= 0, "CREATE_GUEST_MEMFD(16 MiB, MMAP) = %s", err(gfd));
	if (gfd < 0)
		goto out_vm;
	check(fstat((int)gfd, &st) == 0 && (uint64_t)st.st_size == size,
	      "fstat of the guest_memfd: size %lld", (long long)st.st_size);
	check(ftruncate((int)gfd, PAGE) < 0, "ftruncate of the guest_memfd fails (%s)", strerror(errno));
	{
		char b[8];
		check(read((int)gfd, b, sizeof(b)) < 0, "read() of the guest_memfd fails (%s)",
		      strerror(errno));
	}

	/* mmap rules. */
	ok = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)gfd, 0) == MAP_FAILED &&
	     errno == EINVAL;
	check(ok, "MAP_PRIVATE mmap of the guest_memfd fails with EINVAL");
	ok = mmap(NULL, size + PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0) == MAP_FAILED &&
	     errno == EINVAL;
	check(ok, "mmap past the end of the guest_memfd fails with EINVAL");
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0);
	check(mem != MAP_FAILED, "MAP_SHARED mmap of 16 MiB");
	if (mem == MAP_FAILED)
		goto out_gmem;
	check(probe_read32(mem, &v) < 0, "a read of a private page (the default) is SIGBUS");

	/* Attribute ioctl: bad arguments. */
	{
		struct pkvm_rs_memory_attributes2 a;
		struct { uint64_t off, size, attrs, flags; int res; const char *what; } bad[] = {
			{ 0, PAGE, 0, 1, 0, "flags 1" },
			{ 0, PAGE, 1, 0, 0, "attribute 1" },
			{ 0, 0, 0, 0, 0, "size 0" },
			{ 1, PAGE, 0, 0, 0, "unaligned offset" },
			{ 0, 100, 0, 0, 0, "unaligned size" },
			{ size, PAGE, 0, 0, 0, "offset at the end" },
			{ size - PAGE, 2 * PAGE, 0, 0, 0, "end past the file" },
			{ PAGE, ~0ULL & ~(PAGE - 1), 0, 0, 0, "wrapping range" },
			{ 0, PAGE, 0, 0, 1, "reserved[0] = 1" },
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			memset(&a, 0, sizeof(a));
			a.offset = bad[i].off;
			a.size = bad[i].size;
			a.attributes = bad[i].attrs;
			a.flags = bad[i].flags;
			a.reserved[0] = bad[i].res;
			r = IOP(gfd, PKVM_RS_SET_MEMORY_ATTRIBUTES2, &a);
			check(r == -EINVAL, "SET_MEMORY_ATTRIBUTES2 with %s = %s (want -EINVAL)",
			      bad[i].what, err(r));
		}
	}

	/* The VMM makes the whole file shared, fills it (2 MiB folios on
	 * first touch), writes the guest program at offset 0. */
	r = set_attrs((int)gfd, 0, size, 0, NULL);
	check(r == 0, "convert all 16 MiB to shared = %s", err(r));
	for (uint64_t off = 0; off < size; off += PAGE)
		mem[off / 4] = pattern(off);
	memcpy((void *)mem, guest1, sizeof(guest1));
	check(probe_read32(mem + 0x3000 / 4, &v) == 0 && v == pattern(0x3000),
	      "the VMM reads back what it wrote through the mmap");

	/* Memslot rules. */
	r = set_region(vm, 0, 0, RAM, size, 0, gfd);
	check(r == -EINVAL, "memslot without KVM_MEM_GUEST_MEMFD = %s (want -EINVAL)", err(r));
	r = set_region(vm, 32764, MEM_GUEST_MEMFD, RAM, size, 0, gfd);
	check(r == -EINVAL, "memslot id 32764 = %s (want -EINVAL)", err(r));
	r = set_region(vm, 1 << 16, MEM_GUEST_MEMFD, RAM, size, 0, gfd);
	check(r == -EINVAL, "memslot in address space 1 = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM + 1, size, 0, gfd);
	check(r == -EINVAL, "memslot at an unaligned gpa = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, PAGE + 1, gfd);
	check(r == -EINVAL, "memslot at an unaligned offset = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, 2 * size, 0, gfd);
	check(r == -EINVAL, "memslot larger than the guest_memfd = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, (1ULL << 40) - PAGE, 2 * PAGE, 0, gfd);
	check(r == -EINVAL, "memslot past the 40-bit IPA space = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, ~0ULL & ~(PAGE - 1), 2 * PAGE, 0, gfd);
	check(r == -EINVAL, "memslot whose end wraps = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, 0, (uint32_t)vm);
	check(r == -EINVAL, "memslot with the VM fd as guest_memfd = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, 0, (uint32_t)dev);
	check(r == -EINVAL, "memslot with /dev/pkvm-rs as guest_memfd = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, 0, 999);
	check(r == -EBADF, "memslot with a closed fd = %s (want -EBADF)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, 0, 0, gfd);
	check(r == -EINVAL, "deleting a memslot that does not exist = %s (want -EINVAL)", err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, 0, gfd);
	check(r == 0, "memslot 0: 16 MiB at %#llx = %s", RAM, err(r));
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM + size, PAGE, 0, gfd);
	check(r == -EINVAL, "changing memslot 0 = %s (want -EINVAL: immutable)", err(r));
	r = set_region(vm, 1, MEM_GUEST_MEMFD, RAM + size - PAGE, 2 * PAGE, 0, gfd);
	check(r == -EEXIST, "memslot 1 overlapping memslot 0's gpa = %s (want -EEXIST)", err(r));
	r = set_region(vm, 1, MEM_GUEST_MEMFD, RAM + size, PAGE, PAGE, gfd);
	check(r == -EINVAL, "memslot 1 on a bound part of the file = %s (want -EINVAL)", err(r));

	/* A page a pipe holds blocks the conversion to private. */
	if (pipe(pipefd) == 0) {
		struct iovec iov = { .iov_base = (void *)(mem + 0x3000 / 4), .iov_len = PAGE };
		ssize_t n = vmsplice(pipefd[1], &iov, 1, 0);

		check(n == (ssize_t)PAGE, "vmsplice of the page at offset 0x3000 into a pipe = %zd", n);
		r = set_attrs((int)gfd, 0, 2 * MiB, PRIVATE_ATTR, &eo);
		check(r == -EAGAIN && eo == 0x3000,
		      "convert [0, 2 MiB) to private while the pipe holds a page = %s, error_offset %#" PRIx64
		      " (want -EAGAIN, 0x3000)", err(r), eo);
		check(probe_read32(mem, &v) == 0 && v == guest1[0],
		      "after the refused conversion the page is still shared and intact");
		{
			uint32_t buf[PAGE / 4];

			n = read(pipefd[0], buf, sizeof(buf));
			check(n == (ssize_t)PAGE && buf[0] == pattern(0x3000),
			      "the pipe gives the page's bytes back (%zd bytes)", n);
		}
		close(pipefd[0]);
		close(pipefd[1]);
	} else {
		check(0, "pipe: %s", strerror(errno));
	}
	r = set_attrs((int)gfd, 0, 2 * MiB, PRIVATE_ATTR, &eo);
	check(r == 0, "convert [0, 2 MiB) to private once the pipe let go = %s", err(r));
	check(probe_read32(mem, &v) < 0, "the mmap SIGBUSes on the now-private program page");
	check(probe_write32(mem + 0x1000 / 4, 1) < 0, "and a write to a private page is SIGBUS too");
	check(probe_read32(mem + 2 * MiB / 4, &v) == 0 && v == pattern(2 * MiB),
	      "the shared page at 2 MiB still reads its pattern");
	r = set_attrs((int)gfd, 0, 2 * MiB, PRIVATE_ATTR, &eo);
	check(r == 0, "converting to what it already is = %s", err(r));

	/* vCPU. */
	r = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 1);
	check(r == -EINVAL, "CREATE_VCPU(1) of a 1-vCPU VM = %s (want -EINVAL)", err(r));
	vcpu = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0);
	check(vcpu >= 0, "CREATE_VCPU(0) = %s", err(vcpu));
	if (vcpu < 0)
		goto out_map;
	r = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0);
	check(r == -EEXIST, "CREATE_VCPU(0) again = %s (want -EEXIST)", err(r));
	ok = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)vcpu, 0) == MAP_FAILED;
	check(ok, "MAP_PRIVATE mmap of the run page fails");
	run = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)vcpu, 0);
	check(run != MAP_FAILED, "mmap of the run page");
	if (run == MAP_FAILED)
		goto out_vcpu;
	{
		struct pkvm_rs_one_reg reg = { .id = 0x6030000000100008ULL, .addr = 0 };

		r = IOP(vcpu, PKVM_RS_SET_ONE_REG, &reg);
		check(r == -ENOENT, "SET_ONE_REG of X1 = %s (want -ENOENT: PC and X0 only)", err(r));
		reg.id = PKVM_RS_REG_PC;
		reg.addr = 16;
		r = IOP(vcpu, PKVM_RS_SET_ONE_REG, &reg);
		check(r == -EFAULT, "SET_ONE_REG with a bad value pointer = %s (want -EFAULT)", err(r));
	}
	r = set_reg((int)vcpu, PKVM_RS_REG_PC, RAM);
	check(r == 0, "SET_ONE_REG PC = %#llx: %s", RAM, err(r));
	r = set_reg((int)vcpu, PKVM_RS_REG_X0, 0);
	check(r == 0, "SET_ONE_REG X0 = 0: %s", err(r));

	run->immediate_exit = 1;
	r = run_vcpu((int)vcpu);
	check(r == -EINTR && run->exit_reason == PKVM_RS_EXIT_INTR,
	      "KVM_RUN with immediate_exit = %s, exit %u (want -EINTR, %u)", err(r),
	      run->exit_reason, PKVM_RS_EXIT_INTR);
	run->immediate_exit = 0;

	expect_mmio((int)vcpu, run, "guest store", MMIO, 4, 1, 0x41);
	expect_mmio((int)vcpu, run, "guest load", MMIO, 4, 0, 0);
	memset(run->mmio.data, 0, 8);
	run->mmio.data[0] = 0x34;
	run->mmio.data[1] = 0x12;
	expect_mmio((int)vcpu, run, "the loaded value (0x1234) stored back", MMIO + 4, 4, 1, 0x1234);

	r = run_vcpu((int)vcpu);
	check(r == 0 && run->exit_reason == PKVM_RS_EXIT_MEMORY_FAULT &&
		      run->memory_fault.gpa == RAM + 0x1000 && run->memory_fault.size == PAGE &&
		      run->memory_fault.flags == 0,
	      "guest MEM_SHARE of %#llx: KVM_RUN = %s, exit %u, gpa %#llx size %#llx flags %#llx",
	      RAM + 0x1000, err(r), run->exit_reason,
	      (unsigned long long)run->memory_fault.gpa, (unsigned long long)run->memory_fault.size,
	      (unsigned long long)run->memory_fault.flags);
	r = set_attrs((int)gfd, 0, PAGE, 0, &eo);
	check(r == -EPERM && eo == 0,
	      "converting a guest page the guest did not ask for = %s, error_offset %#" PRIx64
	      " (want -EPERM, 0)", err(r), eo);
	r = set_attrs((int)gfd, 0x1000, PAGE, 0, &eo);
	check(r == 0, "converting the page the guest asked to share = %s", err(r));
	expect_mmio((int)vcpu, run, "MEM_SHARE's result (0)", MMIO + 8, 8, 1, 0);
	expect_mmio((int)vcpu, run, "MEM_RELINQUISH's result (0)", MMIO + 16, 8, 1, 0);
	r = run_vcpu((int)vcpu);
	check(r == 0 && run->exit_reason == PKVM_RS_EXIT_SYSTEM_EVENT &&
		      run->system_event.type == PKVM_RS_SYSTEM_EVENT_SHUTDOWN,
	      "guest PSCI SYSTEM_OFF: KVM_RUN = %s, exit %u, type %u (want SYSTEM_EVENT shutdown)",
	      err(r), run->exit_reason, run->system_event.type);
	r = run_vcpu((int)vcpu);
	check(r == 0 && run->exit_reason == PKVM_RS_EXIT_SYSTEM_EVENT,
	      "KVM_RUN after the shutdown gives the shutdown again (%s, exit %u)", err(r),
	      run->exit_reason);
	r = set_reg((int)vcpu, PKVM_RS_REG_PC, RAM);
	check(r == -EBUSY, "SET_ONE_REG after the VM ran = %s (want -EBUSY)", err(r));

	check(probe_read32(mem + 0x1000 / 4, &v) == 0 && v == 0xbeef,
	      "the guest's store into the page it shared is seen through the mmap (%#x)", v);
	r = set_attrs((int)gfd, 0x2000, PAGE, 0, &eo);
	check(r == 0, "the relinquished page is the host's again: convert it to shared = %s", err(r));
	check(probe_read32(mem + 0x2000 / 4, &v) == 0 && v == 0,
	      "the relinquished page reads zero (it held %#x)", pattern(0x2000));

	/* fallocate. */
	r = fallocate_err((int)gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * MiB);
	check(r == -EBUSY, "punching guest-owned pages = %s (want -EBUSY)", err(r));
	r = fallocate_err((int)gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB + 1, PAGE);
	check(r == -EINVAL, "punching at an unaligned offset = %s (want -EINVAL)", err(r));
	r = fallocate_err((int)gfd, 0, 0, PAGE);
	check(r == -EOPNOTSUPP, "fallocate without KEEP_SIZE = %s (want -EOPNOTSUPP)", err(r));
	r = fallocate_err((int)gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB + PAGE, PAGE);
	check(r == 0, "punching the shared page at 2 MiB + 4 KiB = %s", err(r));
	check(probe_read32(mem + (2 * MiB + PAGE) / 4, &v) == 0 && v == 0 &&
		      probe_read32(mem + 2 * MiB / 4, &v) == 0 && v == pattern(2 * MiB),
	      "the punched page reads zero, its neighbour keeps its pattern");
	r = fallocate_err((int)gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size, 4 * MiB);
	check(r == 0, "punching past the end = %s (a no-op)", err(r));
	r = fallocate_err((int)gfd, FALLOC_FL_KEEP_SIZE, 8 * MiB, 2 * MiB);
	check(r == 0, "fallocate(KEEP_SIZE) of [8, 10) MiB = %s", err(r));
	r = fallocate_err((int)gfd, FALLOC_FL_KEEP_SIZE, size - PAGE, 2 * PAGE);
	check(r == -EINVAL, "fallocate past the end = %s (want -EINVAL)", err(r));

	/* Interrupt lines. */
	{
		struct pkvm_rs_irq_level l = { .irq = PKVM_RS_IRQ_TYPE_SPI | 33, .level = 1 };

		r = IOP(vm, PKVM_RS_IRQ_LINE, &l);
		check(r == 0, "IRQ_LINE SPI 33 high = %s", err(r));
		l.level = 0;
		r = IOP(vm, PKVM_RS_IRQ_LINE, &l);
		check(r == 0, "IRQ_LINE SPI 33 low = %s", err(r));
		l.irq = 33;
		r = IOP(vm, PKVM_RS_IRQ_LINE, &l);
		check(r == -EINVAL, "IRQ_LINE without the SPI type = %s (want -EINVAL)", err(r));
		l.irq = PKVM_RS_IRQ_TYPE_SPI | 200;
		r = IOP(vm, PKVM_RS_IRQ_LINE, &l);
		check(r == -EINVAL, "IRQ_LINE of INTID 200 = %s (want -EINVAL)", err(r));
	}
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, 0, 0, gfd);
	check(r == -EBUSY, "deleting the memslot of guest-owned pages = %s (want -EBUSY)", err(r));

	munmap(run, PAGE);
out_vcpu:
	close((int)vcpu);
out_map:
	munmap((void *)mem, size);
out_gmem:
	close((int)gfd);
out_vm:
	close((int)vm);
	r = teardown_lines(line, sizeof(line));
	check(r == before + 1, "closing the last fd tears VM 1 down: %s", line);
	check(pages_in_use(line) == 0, "no driver page is left in use (%ld)", pages_in_use(line));
}

/* ------------------------------------------------------------------ */
/* 3. Two vCPUs, CPU_ON.                                                */

struct runner {
	int vcpu;
	struct pkvm_rs_run *run;
	long r[3];
	uint32_t exit[3];
	uint64_t data;
	volatile int started, done;
};

static void *second_vcpu(void *arg)
{
	struct runner *t = arg;

	t->started = 1;
	/* Powered off: sleeps in KVM_RUN until vCPU 0's CPU_ON. */
	t->r[0] = run_vcpu(t->vcpu);
	t->exit[0] = t->run->exit_reason;
	t->data = mmio_data(t->run);
	if (t->r[0] == 0 && t->exit[0] == PKVM_RS_EXIT_MMIO) {
		t->r[1] = run_vcpu(t->vcpu);
		t->exit[1] = t->run->exit_reason;
	}
	t->done = 1;
	return NULL;
}

static void msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void test_vm2(int dev)
{
	const uint64_t size = 4 * MiB;
	struct pkvm_rs_run *run0 = MAP_FAILED, *run1 = MAP_FAILED;
	struct runner t = { 0 };
	pthread_t th;
	volatile uint32_t *mem;
	long vm, gfd, v0, v1, r;
	char line[512];
	int before = teardown_lines(NULL, 0), i;

	vm = xioctl(dev, PKVM_RS_CREATE_VM, 2);
	check(vm >= 0, "CREATE_VM(2 vCPUs) = %s", err(vm));
	if (vm < 0)
		return;
	gfd = create_gmem(vm, size, FLAG_MMAP | FLAG_INIT_SHARED);
	check(gfd >= 0, "CREATE_GUEST_MEMFD(4 MiB, MMAP | INIT_SHARED) = %s", err(gfd));
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0);
	if (gfd < 0 || mem == MAP_FAILED) {
		check(0, "mmap of the shared guest_memfd");
		close((int)vm);
		return;
	}
	memcpy((void *)mem, guest2_cpu0, sizeof(guest2_cpu0));
	memcpy((void *)(mem + 0x100 / 4), guest2_cpu1, sizeof(guest2_cpu1));
	r = set_region(vm, 3, MEM_GUEST_MEMFD, RAM, size, 0, gfd);
	check(r == 0, "memslot 3: 4 MiB of shared memory (lent to the guest) = %s", err(r));
	v0 = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0);
	v1 = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 1);
	check(v0 >= 0 && v1 >= 0, "CREATE_VCPU 0 and 1 = %s, %s", err(v0), err(v1));
	if (v0 >= 0)
		run0 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)v0, 0);
	if (v1 >= 0)
		run1 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)v1, 0);
	if (run0 == MAP_FAILED || run1 == MAP_FAILED)
		goto out;
	r = set_reg((int)v0, PKVM_RS_REG_PC, RAM);
	check(r == 0, "vCPU 0's PC = %#llx: %s", RAM, err(r));

	t.vcpu = (int)v1;
	t.run = run1;
	pthread_create(&th, NULL, second_vcpu, &t);
	while (!t.started)
		msleep(1);
	msleep(200);
	check(!t.done, "vCPU 1 (powered off) sleeps in KVM_RUN");
	r = run_vcpu((int)v1);
	check(r == -EBUSY, "a second KVM_RUN on vCPU 1 meanwhile = %s (want -EBUSY)", err(r));
	r = set_reg((int)v1, PKVM_RS_REG_X0, 1);
	check(r == -EBUSY, "SET_ONE_REG on the running vCPU 1 = %s (want -EBUSY)", err(r));

	r = run_vcpu((int)v0);
	check(r == 0 && run0->exit_reason == PKVM_RS_EXIT_HYPERCALL &&
		      run0->hypercall.nr == 0xc4000003 && run0->hypercall.args[0] == 1 &&
		      run0->hypercall.args[1] == RAM + 0x100 && run0->hypercall.args[2] == 0x5678,
	      "vCPU 0's CPU_ON: KVM_RUN = %s, exit %u, nr %#llx args %#llx %#llx %#llx", err(r),
	      run0->exit_reason, (unsigned long long)run0->hypercall.nr,
	      (unsigned long long)run0->hypercall.args[0],
	      (unsigned long long)run0->hypercall.args[1],
	      (unsigned long long)run0->hypercall.args[2]);
	run0->hypercall.ret = 0;	/* approved */
	expect_mmio((int)v0, run0, "vCPU 0: CPU_ON's result (0)", MMIO + 24, 8, 1, 0);
	for (i = 0; i < 500 && !t.done; i++)
		msleep(10);
	check(t.done && t.r[0] == 0 && t.exit[0] == PKVM_RS_EXIT_MMIO && t.data == 0x5678,
	      "vCPU 1 woke up and ran at the guest's entry with its context id: KVM_RUN = %s, exit %u, data %#" PRIx64,
	      err(t.r[0]), t.exit[0], t.data);
	check(t.done && t.r[1] == 0 && t.exit[1] == PKVM_RS_EXIT_SYSTEM_EVENT,
	      "vCPU 1's SYSTEM_OFF: KVM_RUN = %s, exit %u", err(t.r[1]), t.exit[1]);
	/* vCPU 0 waits for interrupts (WFI) until it sees the shutdown. */
	r = run_vcpu((int)v0);
	check(r == 0 && run0->exit_reason == PKVM_RS_EXIT_SYSTEM_EVENT &&
		      run0->system_event.type == PKVM_RS_SYSTEM_EVENT_SHUTDOWN,
	      "vCPU 0 (in WFI) returns the shutdown: KVM_RUN = %s, exit %u", err(r),
	      run0->exit_reason);
	pthread_join(th, NULL);

	/* Lent memory: the host converts and punches its own pages. */
	r = set_attrs((int)gfd, 0, PAGE, PRIVATE_ATTR, NULL);
	check(r == 0, "converting a page lent to the guest to private (unlend) = %s", err(r));
	r = fallocate_err((int)gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size);
	check(r == 0, "punching all the lent memory = %s", err(r));
out:
	if (run0 != MAP_FAILED)
		munmap(run0, PAGE);
	if (run1 != MAP_FAILED)
		munmap(run1, PAGE);
	munmap((void *)mem, size);
	close((int)v0);
	close((int)v1);
	close((int)gfd);
	close((int)vm);
	r = teardown_lines(line, sizeof(line));
	check(r == before + 1, "closing VM 2 tears it down: %s", line);
	check(pages_in_use(line) == 0, "no driver page is left in use (%ld)", pages_in_use(line));
}

/* ------------------------------------------------------------------ */
/* 4. Signals.                                                          */

static void on_usr1(int sig)
{
	(void)sig;
}

static void *blocked_run(void *arg)
{
	struct runner *t = arg;

	t->started = 1;
	t->r[0] = run_vcpu(t->vcpu);
	t->exit[0] = t->run->exit_reason;
	t->done = 1;
	return NULL;
}

static void test_signals(int dev)
{
	struct sigaction sa = { .sa_handler = on_usr1 };	/* no SA_RESTART */
	struct runner t = { 0 };
	struct pkvm_rs_run *run;
	pthread_t th;
	long vm, vcpu;
	int i;

	sigaction(SIGUSR1, &sa, NULL);
	vm = xioctl(dev, PKVM_RS_CREATE_VM, 1);
	vcpu = vm >= 0 ? xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0) : -1;
	run = vcpu >= 0 ? mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)vcpu, 0)
			: MAP_FAILED;
	if (run == MAP_FAILED) {
		check(0, "a VM for the signal test: %s %s", err(vm), err(vcpu));
		goto out;
	}
	t.vcpu = (int)vcpu;
	t.run = run;
	pthread_create(&th, NULL, blocked_run, &t);
	while (!t.started)
		msleep(1);
	msleep(100);
	pthread_kill(th, SIGUSR1);
	for (i = 0; i < 300 && !t.done; i++)
		msleep(10);
	check(t.done && t.r[0] == -EINTR && t.exit[0] == PKVM_RS_EXIT_INTR,
	      "a signal ends the KVM_RUN of a powered-off vCPU: %s, exit %u (want -EINTR, %u)",
	      err(t.r[0]), t.exit[0], PKVM_RS_EXIT_INTR);
	pthread_join(th, NULL);
	munmap(run, PAGE);
out:
	if (vcpu >= 0)
		close((int)vcpu);
	if (vm >= 0)
		close((int)vm);
}

/* A VMM killed while its vCPU runs a guest that spins (`b .`): the
 * kernel closes its fds and the driver tears the VM down. */
static void test_sigkill(int dev)
{
	char line[512];
	int before = teardown_lines(NULL, 0), status = 0, i, n = before;
	pid_t pid = fork();

	if (pid == 0) {
		static const uint32_t spin[] = { 0x14000000 };	/* b . */
		long vm = xioctl(dev, PKVM_RS_CREATE_VM, 1);
		long gfd = create_gmem(vm, 4 * MiB, FLAG_MMAP | FLAG_INIT_SHARED);
		long vcpu = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0);
		void *mem = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0);

		if (vm < 0 || gfd < 0 || vcpu < 0 || mem == MAP_FAILED)
			_exit(2);
		memcpy(mem, spin, sizeof(spin));
		if (set_region(vm, 0, MEM_GUEST_MEMFD, RAM, 4 * MiB, 0, gfd) ||
		    set_attrs((int)gfd, 0, 2 * MiB, PRIVATE_ATTR, NULL) ||
		    set_reg((int)vcpu, PKVM_RS_REG_PC, RAM))
			_exit(3);
		for (;;)
			run_vcpu((int)vcpu);
	}
	if (pid < 0) {
		check(0, "fork: %s", strerror(errno));
		return;
	}
	msleep(500);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	for (i = 0; i < 100 && n == before; i++) {
		n = teardown_lines(line, sizeof(line));
		if (n == before)
			msleep(10);
	}
	check(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && n == before + 1 &&
		      pages_in_use(line) == 0,
	      "a VMM SIGKILLed while its guest spins in KVM_RUN: the VM is torn down: %s", line);
}

/* ------------------------------------------------------------------ */
/* 5. Conversion figures; a private guest page through /dev/mem.        */

/* Timed runs of each conversion (the guest's loop does one more, a
 * warm-up left out of the figures). */
#define FIG_RUNS 15
#define FIG_ROUNDS (FIG_RUNS + 1)

/* The guest of the figures (MMU off, at RAM): touches RAM + 2 MiB and
 * RAM + 4 MiB (the driver donates each 2 MiB as a block), then
 * FIG_ROUNDS times: MEM_SHARE and MEM_UNSHARE of the 512 pages at
 * RAM + 2 MiB, then of the one page at RAM + 4 MiB, storing each call's
 * result at MMIO + 0, 8, 16, 24; then SYSTEM_OFF. */
static const uint32_t guest_fig[] = {
	0xd2a12014, /* mov  x20, #0x9000000                */
	0xd2b00015, /* mov  x21, #0x80000000               */
	0x914802b6, /* add  x22, x21, #0x200, lsl #12  RAM + 2 MiB */
	0x915002b7, /* add  x23, x21, #0x400, lsl #12  RAM + 4 MiB */
	0x529fdda5, /* mov  w5, #0xfeed                    */
	0x72ab4b45, /* movk w5, #0x5a5a, lsl #16           */
	0xb90002c5, /* str  w5, [x22]                      */
	0xb90002e5, /* str  w5, [x23]                      */
	0xd2800013 | (FIG_ROUNDS << 5), /* mov x19, #FIG_ROUNDS */
	0xd2800060, /* 1: mov x0, #0x3                     */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_SHARE */
	0xaa1603e1, /* mov  x1, x22                        */
	0xd2804002, /* mov  x2, #512                       */
	0xd2800003, /* mov  x3, #0                         */
	0xd4000002, /* hvc  #0                             */
	0xf9000280, /* str  x0, [x20]                      */
	0xd2800080, /* mov  x0, #0x4                       */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_UNSHARE */
	0xaa1603e1, /* mov  x1, x22                        */
	0xd2804002, /* mov  x2, #512                       */
	0xd2800003, /* mov  x3, #0                         */
	0xd4000002, /* hvc  #0                             */
	0xf9000680, /* str  x0, [x20, #8]                  */
	0xd2800060, /* mov  x0, #0x3                       */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_SHARE */
	0xaa1703e1, /* mov  x1, x23                        */
	0xd2800022, /* mov  x2, #1                         */
	0xd2800003, /* mov  x3, #0                         */
	0xd4000002, /* hvc  #0                             */
	0xf9000a80, /* str  x0, [x20, #16]                 */
	0xd2800080, /* mov  x0, #0x4                       */
	0xf2b8c000, /* movk x0, #0xc600, lsl #16  MEM_UNSHARE */
	0xaa1703e1, /* mov  x1, x23                        */
	0xd2800022, /* mov  x2, #1                         */
	0xd2800003, /* mov  x3, #0                         */
	0xd4000002, /* hvc  #0                             */
	0xf9000e80, /* str  x0, [x20, #24]                 */
	0xf1000673, /* subs x19, x19, #1                   */
	0x54fffc61, /* b.ne 1b                             */
	0xd2800100, /* mov  x0, #0x8                       */
	0xf2b08000, /* movk x0, #0x8400, lsl #16  SYSTEM_OFF */
	0xd4000002, /* hvc  #0                             */
	0x14000000, /* b    .                              */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* "min X us, median Y us" of n timings in ns (sorts them). */
static const char *min_median(uint64_t *ns, int n)
{
	static char buf[4][64];
	static int k;
	char *b = buf[k++ % 4];
	uint64_t med;

	if (n <= 0)
		return "no runs";
	qsort(ns, (size_t)n, sizeof(ns[0]), cmp_u64);
	med = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
	snprintf(b, 64, "min %.1f us, median %.1f us", ns[0] / 1000.0, med / 1000.0);
	return b;
}

/* Times one KVM_SET_MEMORY_ATTRIBUTES2; -errno or 0 in *r. */
static uint64_t timed_attrs(int gfd, uint64_t off, uint64_t size, uint64_t attrs, long *r)
{
	uint64_t t0 = now_ns();

	*r = set_attrs(gfd, off, size, attrs, NULL);
	return now_ns() - t0;
}

/* The physical frame behind a mapped address (/proc/self/pagemap: only
 * root sees frame numbers), or 0. */
static uint64_t frame_of(const volatile void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (pread(fd, &e, sizeof(e), (off_t)((uintptr_t)addr / PAGE * sizeof(e))) != sizeof(e))
		e = 0;
	close(fd);
	return e >> 63 ? e & ((1ULL << 55) - 1) : 0;
}

/* Reads frame `pfn` through /dev/mem with pread and with mmap: 1 if no
 * byte came back (the kernel refused, or the load died with SIGBUS),
 * with what happened in `how`. */
static int devmem_refuses(uint64_t pfn, char *how, size_t size)
{
	off_t pa = (off_t)(pfn * PAGE);
	uint32_t buf[4], v;
	ssize_t n;
	void *m;
	int fd = open("/dev/mem", O_RDONLY | O_SYNC | O_CLOEXEC), e, refused;
	size_t used;

	if (fd < 0) {
		e = errno;
		snprintf(how, size, "open(/dev/mem) refused: %s", strerrorname_np(e));
		return e == EPERM || e == EACCES;
	}
	n = pread(fd, buf, sizeof(buf), pa);
	e = errno;
	refused = n < 0 && (e == EPERM || e == EFAULT);
	used = (size_t)snprintf(how, size, "pread: %s",
				n < 0 ? strerrorname_np(e) : "returned bytes");
	m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, pa);
	if (m == MAP_FAILED) {
		e = errno;
		refused &= e == EPERM || e == EFAULT;
		snprintf(how + used, size - used, "; mmap: %s", strerrorname_np(e));
	} else if (probe_read32(m, &v) < 0) {
		snprintf(how + used, size - used, "; mmap succeeded, the load died with SIGBUS");
		munmap(m, PAGE);
	} else {
		refused = 0;
		snprintf(how + used, size - used, "; mmap succeeded, the load read %#x", v);
		munmap(m, PAGE);
	}
	close(fd);
	return refused;
}

/*
 * KVM_SET_MEMORY_ATTRIBUTES2 timed (CLOCK_MONOTONIC around the ioctl
 * alone), FIG_RUNS times each, for 512 pages (2 MiB) and for 1 page:
 *
 *  - the guest's conversions: a guest asks (MEM_SHARE / MEM_UNSHARE of
 *    pages it owns), the vCPU exits with MEMORY_FAULT, and the ioctl
 *    completes the request: el2's ConvertComplete (and, to private, the
 *    unmapping from every process first). No page is mapped in this
 *    process then, except in the warm-up round, whose shared page the
 *    VMM reads through its mapping.
 *  - host-owned pages (the VMM's load path: shared pages it wrote,
 *    converted to private in place before the guest runs): no el2 call;
 *    to private unmaps the pages this process has mapped and touched
 *    (512 pages: also once with none mapped, for the unmapping's share).
 *
 * Then a guest-owned private page, whose frame was read from
 * /proc/self/pagemap while it was shared and mapped, is read through
 * /dev/mem: no byte may come back.
 */
static void test_figures(int dev)
{
	const uint64_t size = 8 * MiB, host_size = 4 * MiB;
	uint64_t share[2][FIG_ROUNDS], unshare[2][FIG_ROUNDS];
	uint64_t h_priv[2][FIG_RUNS], h_shared[2][FIG_RUNS], h_unmapped[FIG_RUNS];
	int nshare[2] = { 0 }, nunshare[2] = { 0 }, bad = 0, mmio = 0, done = 0, i, k;
	volatile uint32_t *mem = MAP_FAILED, *hmem = MAP_FAILED;
	struct pkvm_rs_run *run = MAP_FAILED;
	uint64_t pfn = 0, warm_pfn = 0, ctl_pfn;
	uint32_t v, warm_value = 0;
	long vm, gfd = -1, hfd = -1, vcpu = -1, r;
	char line[512], how[160];
	int before = teardown_lines(NULL, 0);

	vm = xioctl(dev, PKVM_RS_CREATE_VM, 1);
	if (vm >= 0) {
		gfd = create_gmem(vm, size, FLAG_MMAP | FLAG_INIT_SHARED);
		hfd = create_gmem(vm, host_size, FLAG_MMAP | FLAG_INIT_SHARED);
		vcpu = xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0);
	}
	if (gfd >= 0)
		mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0);
	if (hfd >= 0)
		hmem = mmap(NULL, host_size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)hfd, 0);
	if (vcpu >= 0)
		run = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)vcpu, 0);
	if (vm < 0 || mem == MAP_FAILED || hmem == MAP_FAILED || run == MAP_FAILED) {
		check(0, "a VM for the figures: %s %s %s %s", err(vm), err(gfd), err(hfd), err(vcpu));
		goto out;
	}

	/* Host-owned pages. */
	for (i = 0; i < FIG_RUNS; i++) {
		for (k = 0; k < 2; k++) {
			uint64_t off = k ? 2 * MiB : 0, n = k ? PAGE : 2 * MiB;

			for (uint64_t o = 0; o < n; o += PAGE)
				hmem[(off + o) / 4] = (uint32_t)i;
			h_priv[k][i] = timed_attrs((int)hfd, off, n, PRIVATE_ATTR, &r);
			bad += r != 0;
			h_shared[k][i] = timed_attrs((int)hfd, off, n, 0, &r);
			bad += r != 0;
		}
		/* Again with nothing mapped (the conversion to private
		 * unmapped them): what the unmapping costs. */
		h_unmapped[i] = timed_attrs((int)hfd, 0, 2 * MiB, PRIVATE_ATTR, &r);
		bad += r != 0;
		r = set_attrs((int)hfd, 0, 2 * MiB, 0, NULL);
		bad += r != 0;
	}
	check(bad == 0, "%d conversions of host-owned pages each way (512 pages mapped, 512 not, 1 "
	      "page): %d failed", 3 * FIG_RUNS, bad);
	note("figure: KVM_SET_MEMORY_ATTRIBUTES2, 512 host-owned pages (2 MiB; no el2 call): "
	     "shared->private with all 512 mapped and touched by the VMM %s, with none mapped %s; "
	     "private->shared %s (%d runs)",
	     min_median(h_priv[0], FIG_RUNS), min_median(h_unmapped, FIG_RUNS),
	     min_median(h_shared[0], FIG_RUNS), FIG_RUNS);
	note("figure: KVM_SET_MEMORY_ATTRIBUTES2, 1 host-owned page: shared->private %s; "
	     "private->shared %s (%d runs)",
	     min_median(h_priv[1], FIG_RUNS), min_median(h_shared[1], FIG_RUNS), FIG_RUNS);

	/* The guest's conversions. The page at 2 MiB is touched while
	 * shared (a 2 MiB folio backs that 2 MiB) and its frame noted. */
	memcpy((void *)mem, guest_fig, sizeof(guest_fig));
	mem[2 * MiB / 4] = 1;
	pfn = frame_of(mem + 2 * MiB / 4);
	check(pfn != 0, "the frame of the shared page at 2 MiB, from /proc/self/pagemap: %#" PRIx64,
	      pfn);
	bad = 0;
	r = set_attrs((int)gfd, 0, size, PRIVATE_ATTR, NULL);
	bad += r != 0;
	r = set_region(vm, 0, MEM_GUEST_MEMFD, RAM, size, 0, gfd);
	bad += r != 0;
	r = set_reg((int)vcpu, PKVM_RS_REG_PC, RAM);
	bad += r != 0;
	check(bad == 0, "the figures' guest: its memory private in place, memslot, PC (%d failed)", bad);
	bad = 0;
	while (!done) {
		r = run_vcpu((int)vcpu);
		if (r) {
			check(0, "the figures' guest: KVM_RUN = %s", err(r));
			break;
		}
		switch (run->exit_reason) {
		case PKVM_RS_EXIT_MEMORY_FAULT: {
			int to_private = !!(run->memory_fault.flags & PKVM_RS_MEMORY_EXIT_FLAG_PRIVATE);
			int one = run->memory_fault.size == PAGE;
			uint64_t off = run->memory_fault.gpa - RAM;
			uint64_t t = timed_attrs((int)gfd, off, run->memory_fault.size,
						 to_private ? PRIVATE_ATTR : 0, &r);

			bad += r != 0;
			if (to_private && nunshare[one] < FIG_ROUNDS)
				unshare[one][nunshare[one]++] = t;
			else if (!to_private && nshare[one] < FIG_ROUNDS)
				share[one][nshare[one]++] = t;
			/* The warm-up round: the page the guest wrote, now
			 * shared, through the VMM's mapping: its bytes, in the
			 * frame it had before the guest owned it. */
			if (!to_private && !one && nshare[0] == 1 &&
			    probe_read32(mem + 2 * MiB / 4, &warm_value) == 0)
				warm_pfn = frame_of(mem + 2 * MiB / 4);
			break;
		}
		case PKVM_RS_EXIT_MMIO:
			mmio++;
			bad += !run->mmio.is_write || mmio_data(run) != 0;
			break;
		case PKVM_RS_EXIT_SYSTEM_EVENT:
			done = 1;
			break;
		default:
			check(0, "the figures' guest: unexpected exit %u", run->exit_reason);
			done = -1;
			break;
		}
	}
	check(done == 1 && bad == 0 && mmio == 4 * FIG_ROUNDS && nshare[0] == FIG_ROUNDS &&
		      nshare[1] == FIG_ROUNDS && nunshare[0] == FIG_ROUNDS && nunshare[1] == FIG_ROUNDS,
	      "the figures' guest: %d rounds of MEM_SHARE/MEM_UNSHARE of 512 pages and of 1 page, each "
	      "completed by the ioctl (%d+%d to shared, %d+%d to private, %d results stored, %d "
	      "failures), SYSTEM_OFF", FIG_ROUNDS, nshare[0], nshare[1], nunshare[0], nunshare[1],
	      mmio, bad);
	check(warm_value == 0x5a5afeed && warm_pfn == pfn,
	      "in place: the shared page at 2 MiB shows the guest's private store (%#x) in frame "
	      "%#" PRIx64 " (before: %#" PRIx64 ")", warm_value, warm_pfn, pfn);
	if (nshare[0] == FIG_ROUNDS && nunshare[0] == FIG_ROUNDS && nshare[1] == FIG_ROUNDS &&
	    nunshare[1] == FIG_ROUNDS) {
		/* Index 0 is the warm-up. */
		note("figure: KVM_SET_MEMORY_ATTRIBUTES2, 512 guest-owned pages (2 MiB) at the guest's "
		     "request (its MEM_SHARE/MEM_UNSHARE exit; el2 ConvertComplete): private->shared %s; "
		     "shared->private %s (%d runs)",
		     min_median(share[0] + 1, FIG_RUNS), min_median(unshare[0] + 1, FIG_RUNS), FIG_RUNS);
		note("figure: KVM_SET_MEMORY_ATTRIBUTES2, 1 guest-owned page at the guest's request: "
		     "private->shared %s; shared->private %s (%d runs)",
		     min_median(share[1] + 1, FIG_RUNS), min_median(unshare[1] + 1, FIG_RUNS), FIG_RUNS);
	}

	/* The page is private and the guest's now: through the mapping,
	 * SIGBUS; through /dev/mem, no byte. */
	check(probe_read32(mem + 2 * MiB / 4, &v) < 0,
	      "the guest's private page at 2 MiB: a read through the guest_memfd mapping is SIGBUS");
	if (pfn) {
		int refused = devmem_refuses(pfn, how, sizeof(how));

		check(refused, "the guest's private page (frame %#" PRIx64 ") read through /dev/mem: %s",
		      pfn, how);
		/* The same for an ordinary page of this process: whether the
		 * kernel refuses all RAM (STRICT_DEVMEM) before el2 is reached. */
		ctl_pfn = frame_of(&passed);
		if (ctl_pfn) {
			devmem_refuses(ctl_pfn, how, sizeof(how));
			note("for comparison, an ordinary page of this process (frame %#" PRIx64
			     ") through /dev/mem: %s", ctl_pfn, how);
		}
	}
out:
	if (run != MAP_FAILED)
		munmap(run, PAGE);
	if (mem != MAP_FAILED)
		munmap((void *)mem, size);
	if (hmem != MAP_FAILED)
		munmap((void *)hmem, host_size);
	if (vcpu >= 0)
		close((int)vcpu);
	if (hfd >= 0)
		close((int)hfd);
	if (gfd >= 0)
		close((int)gfd);
	if (vm >= 0)
		close((int)vm);
	r = teardown_lines(line, sizeof(line));
	check(r == before + 1 && pages_in_use(line) == 0,
	      "closing the figures' VM tears it down, no driver page left: %s", line);
}

/* ------------------------------------------------------------------ */
/* 6. Hostile arguments.                                                */


static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void on_alarm(int sig)
{
	(void)sig;
}

static uint64_t plausible(void)
{
	static const uint64_t v[] = {
		0, 1, 2, 3, 4, 7, 8, 9, 4095, 4096, 4097, 8192, 2 * MiB, 2 * MiB - 4096,
		4 * MiB, 16 * MiB, RAM, RAM + 4096, RAM + 2 * MiB, MMIO, 1ULL << 40,
		(1ULL << 40) - 4096, 1ULL << 63, ~0ULL, ~0ULL - 4095, 0x7fffffff, 0xffffffff,
		PRIVATE_ATTR, 32764, 32763, 65536, PKVM_RS_REG_PC, PKVM_RS_REG_X0,
		PKVM_RS_IRQ_TYPE_SPI | 32, PKVM_RS_IRQ_TYPE_SPI | 95, PKVM_RS_IRQ_TYPE_SPI | 96,
		0xffff000000000000ULL,
	};
	return rnd() % 3 ? v[rnd() % (sizeof(v) / sizeof(v[0]))] : rnd();
}

/* Fills buf with the argument of cmd: mostly well-formed (so the calls
 * get past the first checks), with some fields hostile. */
static void fuzz_arg(unsigned long cmd, uint64_t *buf, int gfd, int other_fd)
{
	int hostile = rnd() % 4 == 0;

	switch (cmd) {
	case PKVM_RS_SET_USER_MEMORY_REGION2: {
		struct pkvm_rs_userspace_memory_region2 *r = (void *)buf;

		r->slot = hostile ? (uint32_t)plausible() : (uint32_t)(rnd() % 4);
		r->flags = hostile ? (uint32_t)plausible() : MEM_GUEST_MEMFD;
		r->guest_phys_addr = hostile ? plausible() : RAM + (rnd() % 8) * 2 * MiB;
		r->memory_size = hostile ? plausible() : (rnd() % 5) * 2 * MiB;
		r->userspace_addr = 0;
		r->guest_memfd_offset = hostile ? plausible() : (rnd() % 4) * 2 * MiB;
		r->guest_memfd = (uint32_t)(rnd() % 4 ? gfd : other_fd);
		break;
	}
	case PKVM_RS_SET_MEMORY_ATTRIBUTES2: {
		struct pkvm_rs_memory_attributes2 *a = (void *)buf;

		memset(a, 0, sizeof(*a));
		a->offset = hostile ? plausible() : (rnd() % 2048) * PAGE;
		a->size = hostile ? plausible() : (rnd() % 4 ? rnd() % 64 + 1 : 512) * PAGE;
		a->attributes = rnd() % 2 ? PRIVATE_ATTR : 0;
		if (hostile && rnd() % 2)
			a->reserved[rnd() % 11] = rnd();
		break;
	}
	case PKVM_RS_CREATE_GUEST_MEMFD:
		buf[0] = hostile ? plausible() : (rnd() % 64 + 1) * PAGE;
		buf[1] = rnd() % 5;
		break;
	case PKVM_RS_SET_ONE_REG:
		buf[0] = hostile ? plausible() : (rnd() % 2 ? PKVM_RS_REG_PC : PKVM_RS_REG_X0);
		buf[1] = hostile ? plausible() : (uintptr_t)&buf[8];
		buf[8] = rnd() % 2 ? RAM + (rnd() % 1024) * 4 : plausible();
		break;
	case PKVM_RS_IRQ_LINE:
		buf[0] = hostile ? plausible() : ((PKVM_RS_IRQ_TYPE_SPI | (32 + rnd() % 64)) |
						  ((rnd() % 2) << 32));
		break;
	default:
		break;
	}
}

static void test_fuzz(int dev, int iterations)
{
	struct sigaction sa = { .sa_handler = on_alarm };	/* no SA_RESTART */
	struct itimerval tick = { { 0, 5000 }, { 0, 5000 } };
	struct itimerval off = { 0 };
	static uint64_t buf[64];
	void *unmapped, *gmap = MAP_FAILED;
	struct pkvm_rs_run *runs[2] = { MAP_FAILED, MAP_FAILED };
	long vm, gfd, vcpus[2], r;
	int fds[8], nfds = 0, pipefd[2] = { -1, -1 }, created = 0, succeeded = 0, i;
	char line[512];
	int before = teardown_lines(NULL, 0);

	vm = xioctl(dev, PKVM_RS_CREATE_VM, 2);
	gfd = vm >= 0 ? create_gmem(vm, 8 * MiB, FLAG_MMAP) : -1;
	vcpus[0] = vm >= 0 ? xioctl((int)vm, PKVM_RS_CREATE_VCPU, 0) : -1;
	vcpus[1] = vm >= 0 ? xioctl((int)vm, PKVM_RS_CREATE_VCPU, 1) : -1;
	if (vm < 0 || gfd < 0 || vcpus[0] < 0 || vcpus[1] < 0) {
		check(0, "a VM for the fuzzer: %s %s %s %s", err(vm), err(gfd), err(vcpus[0]),
		      err(vcpus[1]));
		return;
	}
	gmap = mmap(NULL, 8 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, (int)gfd, 0);
	for (i = 0; i < 2; i++)
		runs[i] = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)vcpus[i], 0);
	unmapped = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pipe(pipefd))
		pipefd[0] = pipefd[1] = -1;
	fds[nfds++] = dev;
	fds[nfds++] = (int)vm;
	fds[nfds++] = (int)gfd;
	fds[nfds++] = (int)vcpus[0];
	fds[nfds++] = (int)vcpus[1];
	fds[nfds++] = pipefd[0];
	fds[nfds++] = 999;

	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &tick, NULL);
	for (i = 0; i < iterations; i++) {
		static const struct { int which; unsigned long cmd; } pairs[] = {
			{ 0, PKVM_RS_GET_API_VERSION }, { 0, PKVM_RS_CREATE_VM },
			{ 0, PKVM_RS_GET_VCPU_MMAP_SIZE }, { 1, PKVM_RS_CREATE_VCPU },
			{ 1, PKVM_RS_SET_USER_MEMORY_REGION2 }, { 1, PKVM_RS_SET_USER_MEMORY_REGION2 },
			{ 1, PKVM_RS_IRQ_LINE }, { 1, PKVM_RS_CREATE_GUEST_MEMFD },
			{ 2, PKVM_RS_SET_MEMORY_ATTRIBUTES2 }, { 2, PKVM_RS_SET_MEMORY_ATTRIBUTES2 },
			{ 3, PKVM_RS_RUN }, { 4, PKVM_RS_RUN }, { 3, PKVM_RS_SET_ONE_REG },
			{ 4, PKVM_RS_SET_ONE_REG },
		};
		const size_t npairs = sizeof(pairs) / sizeof(pairs[0]);
		unsigned long cmd, arg;
		unsigned int k, p = (unsigned int)(rnd() % npairs);
		int fd, dice = (int)(rnd() % 20);

		if (dice < 14) {	/* the right fd for the call */
			fd = fds[pairs[p].which];
			cmd = pairs[p].cmd;
		} else if (dice < 17) {	/* a known call on any fd */
			fd = fds[rnd() % nfds];
			cmd = pairs[p].cmd;
		} else {		/* anything at all */
			fd = fds[rnd() % nfds];
			cmd = rnd() % 2 ? _IOC(rnd() % 4, PKVM_RS_IO, rnd() % 256, rnd() % 512)
					: (unsigned long)rnd();
		}
		for (k = 0; k < sizeof(buf) / sizeof(buf[0]); k++)
			buf[k] = plausible();
		fuzz_arg(cmd, buf, (int)gfd, fds[rnd() % nfds]);
		switch (rnd() % 10) {
		case 0:
			arg = 0;
			break;
		case 1:
			arg = plausible();
			break;
		case 2:
			arg = (uintptr_t)unmapped;
			break;
		case 3:	/* the guest_memfd's own mapping: mostly private pages */
			arg = gmap != MAP_FAILED ? (uintptr_t)gmap + (rnd() % (8 * MiB / PAGE)) * PAGE
						 : 0;
			break;
		case 4:
			arg = 0xffff800008000000ULL;	/* a kernel address */
			break;
		default:
			arg = (cmd == PKVM_RS_CREATE_VM || cmd == PKVM_RS_CREATE_VCPU) ? rnd() % 10
										: (uintptr_t)buf;
			break;
		}
		if (cmd == PKVM_RS_RUN && runs[0] != MAP_FAILED && runs[1] != MAP_FAILED)
			runs[rnd() % 2]->immediate_exit = rnd() % 4 == 0;
		r = ioctl(fd, cmd, arg);
		if (r >= 0)
			succeeded++;
		if (r > 2 && (cmd == PKVM_RS_CREATE_VM || cmd == PKVM_RS_CREATE_VCPU ||
			      cmd == PKVM_RS_CREATE_GUEST_MEMFD)) {
			created++;
			close((int)r);
		}
		switch (rnd() % 12) {
		case 0:
			fallocate((int)gfd, (int)(rnd() % 4),
				  rnd() % 2 ? (off_t)((rnd() % 2048) * PAGE) : (off_t)plausible(),
				  rnd() % 2 ? (off_t)((rnd() % 512 + 1) * PAGE) : (off_t)plausible());
			break;
		case 1: {
			size_t len = (size_t)(rnd() % 4 + 1) * PAGE;
			void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
				       rnd() % 2 ? MAP_SHARED : MAP_PRIVATE, fds[rnd() % nfds],
				       (off_t)((rnd() % 4096) * PAGE));
			if (m != MAP_FAILED)
				munmap(m, len);
			break;
		}
		case 2:
			if (gmap != MAP_FAILED && pipefd[1] >= 0) {
				struct iovec iov = {
					(char *)gmap + (rnd() % (8 * MiB / PAGE)) * PAGE, PAGE
				};
				char drain[PAGE];

				if (vmsplice(pipefd[1], &iov, 1, SPLICE_F_NONBLOCK) > 0)
					(void)!read(pipefd[0], drain, sizeof(drain));
			}
			break;
		case 3:
			if (gmap != MAP_FAILED) {
				uint32_t v;

				probe_read32((volatile uint32_t *)gmap + (rnd() % (8 * MiB / 4)), &v);
			}
			break;
		default:
			break;
		}
	}
	setitimer(ITIMER_REAL, &off, NULL);
	check(1, "%d random ioctls survived (%d succeeded, %d fds created and closed)",
	      iterations, succeeded, created);
	for (i = 0; i < 2; i++)
		if (runs[i] != MAP_FAILED)
			munmap(runs[i], PAGE);
	if (gmap != MAP_FAILED)
		munmap(gmap, 8 * MiB);
	munmap(unmapped, PAGE);
	close(pipefd[0]);
	close(pipefd[1]);
	close((int)vcpus[0]);
	close((int)vcpus[1]);
	close((int)gfd);
	r = close((int)gfd);
	check(r < 0 && errno == EBADF, "closing the guest_memfd twice: the second is EBADF");
	close((int)vm);
	r = teardown_lines(line, sizeof(line));
	check(r >= before + 1 && pages_in_use(line) == 0,
	      "the fuzzed VMs are torn down (%ld teardowns), no driver page left: %s",
	      r - before, line);
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_sigbus };
	int iterations = argc > 1 ? atoi(argv[1]) : 3000;

	if (argc > 2)
		rng_state = strtoull(argv[2], NULL, 0) | 1;
	long mem_before, mem_after;
	char *log;
	int dev;

	setvbuf(stdout, NULL, _IOLBF, 0);
	sigaction(SIGBUS, &sa, NULL);
	note("pkvm-rs driver smoke test (API %d); usage: %s [fuzz iterations (3000)] [seed]",
	     PKVM_RS_API_VERSION, argv[0]);
	note("fuzzer: %d iterations, seed %#" PRIx64, iterations, rng_state);
	mem_before = memfree_kib();
	note("free memory at the start: %ld kB (MemFree %ld kB)", mem_before, memfree_raw_kib());
	dev = test_device();
	if (dev >= 0) {
		test_vm1(dev);
		note("free memory after VM 1: %ld kB (MemFree %ld kB)", memfree_kib(), memfree_raw_kib());
		test_vm2(dev);
		note("free memory after VM 2: %ld kB (MemFree %ld kB)", memfree_kib(), memfree_raw_kib());
		test_signals(dev);
		test_sigkill(dev);
		note("free memory after the signal test: %ld kB (MemFree %ld kB)", memfree_kib(), memfree_raw_kib());
		test_figures(dev);
		note("free memory after the figures: %ld kB (MemFree %ld kB)", memfree_kib(), memfree_raw_kib());
		test_fuzz(dev, iterations);
		note("free memory after the fuzzer: %ld kB (MemFree %ld kB)", memfree_kib(), memfree_raw_kib());
		close(dev);
	}
	msleep(200);
	mem_after = memfree_kib();
	check(mem_after >= mem_before - 1024,
	      "free memory back where it was (free pages + per-CPU lists, after drop_caches): "
	      "%ld kB before, %ld kB after (%+ld kB; MemFree now %ld kB)", mem_before,
	      mem_after, mem_after - mem_before, memfree_raw_kib());
	log = kernel_log();
	if (log) {
		int bad = count_substr(log, "Oops") + count_substr(log, "BUG:") +
			  count_substr(log, "WARNING:") + count_substr(log, "Unable to handle") +
			  count_substr(log, "SError") + count_substr(log, "Internal error");
		check(bad == 0, "no oops, BUG or WARNING in the kernel log (%d found)", bad);
		free(log);
	}
	printf("smoke: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
