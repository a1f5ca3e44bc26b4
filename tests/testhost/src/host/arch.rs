//! EL1 plumbing: the identity map, the console, the calls into el2, memory
//! probes that may take an injected abort, and the abort log the exception
//! vector fills.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::entry::{CPU_SLOTS, Frame, MAX_CPUS, MMU, MmuConfig, mmu_enable};

/// Reads a system register (`mrs`).
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading this system register has no side effect and is
        // permitted at EL1.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}
pub(crate) use mrs;

/// Writes a system register (`msr`).
macro_rules! msr {
    ($reg:literal, $val:expr) => {{
        let v: u64 = $val;
        // SAFETY: the callers write registers that only affect this CPU's
        // EL1 timer and GIC CPU interface, never memory.
        unsafe {
            core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) v,
                options(nomem, nostack, preserves_flags))
        };
    }};
}
pub(crate) use msr;

// ---------------------------------------------------------------------
// The identity map: 512 × 1 GiB blocks (39-bit VA), Device everywhere but
// the gigabytes of the image and the device tree, which are Normal.

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written by the boot CPU before the MMU is on, read by walkers.
unsafe impl Sync for Table {}

static L1: Table = Table(UnsafeCell::new([0; 512]));

const MAIR: u64 = 0x04 | (0xff << 8); // Attr0 Device-nGnRE, Attr1 Normal WB
const NORMAL: u64 = (1 << 2) | (0b11 << 8) | (1 << 10) | 0b01; // Attr1, SH inner, AF, block
const DEVICE: u64 = (1 << 10) | (1 << 53) | (1 << 54) | 0b01; // Attr0, AF, PXN, UXN, block
/// TCR_EL1: T0SZ 25, inner/outer WBWA, inner shareable, 4K, EPD1, IPS 40-bit.
const TCR: u64 = 25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23) | (0b010 << 32);
/// SCTLR_EL1: RES1 bits, M, C, SA, I.
const SCTLR: u64 = 0x30d0_0800 | 1 | (1 << 2) | (1 << 3) | (1 << 12);

/// Builds the identity map and turns the MMU on; `normal` lists addresses
/// whose gigabyte is Normal memory. Publishes the configuration for the
/// secondary CPU.
pub fn mmu_on(normal: &[u64]) {
    let table = L1.0.get().cast::<u64>();
    for i in 0..512u64 {
        let d = if normal.iter().any(|&a| a >> 30 == i) {
            NORMAL
        } else {
            DEVICE
        };
        // SAFETY: `i < 512`, the table is ours and not live yet.
        unsafe { table.add(i as usize).write_volatile((i << 30) | d) };
    }
    let config = MmuConfig {
        mair: MAIR,
        tcr: TCR,
        ttbr0: table as u64,
        sctlr: SCTLR,
    };
    // SAFETY: boot CPU, before any other CPU starts; the table maps this
    // image (code, stack) Normal at its own address.
    unsafe {
        *MMU.get() = config;
        mmu_enable(MMU.get());
    }
    clean_to_poc(MMU.get() as u64, 64);
}

/// Makes the gigabyte holding `addr` Normal memory (break-before-make on
/// the live table), so that accesses there reach el2's stage-2 as they
/// would for any RAM. Boot CPU only, before the secondary starts.
pub fn map_normal(addr: u64) {
    let i = addr >> 30;
    if i >= 512 {
        return;
    }
    let slot = L1.0.get().cast::<u64>().wrapping_add(i as usize);
    let want = (i << 30) | NORMAL;
    // SAFETY: `slot` is entry `i < 512` of our live table; the sequence is
    // break (invalid), TLB invalidate, make, so no two translations of the
    // gigabyte are ever live at once. Nothing is accessed there meanwhile.
    unsafe {
        if slot.read_volatile() == want {
            return;
        }
        slot.write_volatile(0);
        asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        );
        slot.write_volatile(want);
        asm!("dsb ishst", "isb", options(nostack, preserves_flags));
    }
}

/// Cleans and invalidates `[start, start + len)` to the point of coherency.
pub fn clean_to_poc(start: u64, len: u64) {
    let line = 4u64 << ((mrs!("ctr_el0") >> 16) & 0xf);
    let mut a = start & !(line - 1);
    while a < start + len {
        // SAFETY: cache maintenance of mapped memory keeps its contents.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    // SAFETY: barrier only.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

// ---------------------------------------------------------------------
// Console.

static UART: AtomicU64 = AtomicU64::new(0x0900_0000);

/// Uses the PL011 at `base` from now on.
pub fn set_uart(base: u64) {
    UART.store(base, Ordering::Relaxed);
}

/// The console. Lines from several CPUs are kept whole by [`ConsoleLock`]
/// (which [`println!`] takes).
pub struct Console;

/// Serialises console lines across CPUs.
static CONSOLE_LOCK: AtomicBool = AtomicBool::new(false);

/// How long a CPU waits for the console lock before writing anyway (the
/// holder may be this CPU, interrupted by an exception that prints).
const CONSOLE_SPINS: u32 = 1 << 22;

/// The console lock, held for one line; released on drop. If it cannot be
/// had within [`CONSOLE_SPINS`] tries, the line is written without it.
pub struct ConsoleLock(bool);

impl ConsoleLock {
    /// Takes the lock (or gives up, see the type's docs).
    pub fn take() -> ConsoleLock {
        for _ in 0..CONSOLE_SPINS {
            if CONSOLE_LOCK
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return ConsoleLock(true);
            }
            core::hint::spin_loop();
        }
        ConsoleLock(false)
    }
}

impl Drop for ConsoleLock {
    fn drop(&mut self) {
        if self.0 {
            CONSOLE_LOCK.store(false, Ordering::Release);
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let base = UART.load(Ordering::Relaxed);
        for b in s.bytes() {
            for c in if b == b'\n' { [b'\r', b'\n'] } else { [b, 0] } {
                if c == 0 {
                    continue;
                }
                // SAFETY: `base` is the PL011 the device tree names (or QEMU
                // virt's), mapped Device; FR (+0x18) bit 5 is TX full, DR
                // (+0) takes a byte.
                unsafe {
                    while ((base + 0x18) as *const u32).read_volatile() & (1 << 5) != 0 {}
                    (base as *mut u32).write_volatile(u32::from(c));
                }
            }
        }
        Ok(())
    }
}

impl Console {
    /// Writes `bytes` as they are (no `\n` to `\r\n` translation).
    pub fn write_raw(bytes: &[u8]) {
        let base = UART.load(Ordering::Relaxed);
        for &c in bytes {
            // SAFETY: as in `write_str`.
            unsafe {
                while ((base + UART_FR) as *const u32).read_volatile() & FR_TXFF != 0 {}
                (base as *mut u32).write_volatile(u32::from(c));
            }
        }
    }
}

/// PL011 flag register offset.
const UART_FR: u64 = 0x18;
/// PL011 line control register offset.
const UART_LCR_H: u64 = 0x2c;
/// `UARTFR.TXFF`: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// `UARTFR.RXFE`: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// `UARTLCR_H.FEN`: FIFOs enabled.
const LCR_H_FEN: u32 = 1 << 4;

/// Turns the console UART's FIFOs on, so that it holds up to 16 received
/// bytes between polls (QEMU's PL011 takes one at a time from its backend
/// otherwise). Whatever the receiver held may be dropped.
pub fn uart_enable_fifo() {
    let base = UART.load(Ordering::Relaxed);
    // SAFETY: the PL011's LCR_H, mapped Device; FEN only changes how much
    // it buffers.
    unsafe {
        let lcr = ((base + UART_LCR_H) as *const u32).read_volatile();
        ((base + UART_LCR_H) as *mut u32).write_volatile(lcr | LCR_H_FEN);
    }
}

/// A byte typed on the console, if one is waiting (one CPU at a time).
pub fn uart_getc() -> Option<u8> {
    let base = UART.load(Ordering::Relaxed);
    // SAFETY: the PL011's FR and DR, mapped Device; reading DR takes the
    // byte out of the receive FIFO, which nothing else of ours reads.
    unsafe {
        if ((base + UART_FR) as *const u32).read_volatile() & FR_RXFE != 0 {
            return None;
        }
        Some((base as *const u32).read_volatile() as u8)
    }
}

/// Prints a formatted line (whole, whichever CPU prints).
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _lock = $crate::host::arch::ConsoleLock::take();
        let _ = writeln!($crate::host::arch::Console, $($arg)*);
    }};
}
pub(crate) use println;

// ---------------------------------------------------------------------
// Calls into el2.

/// `hvc #0` with x0..x5; returns x0..x5 (x6..x17 may be clobbered).
pub fn hvc(a: [u64; 6]) -> [u64; 6] {
    let mut r = a;
    // SAFETY: a host call: el2 reads and writes only x0..x17, no memory of
    // ours.
    unsafe {
        asm!("hvc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2],
            inout("x3") r[3], inout("x4") r[4], inout("x5") r[5],
            clobber_abi("C"), options(nostack))
    };
    r
}

/// `hvc #0` with x0..x5; returns x0..x6 (a `VcpuRun` exit uses x2..x6).
pub fn hvc7(a: [u64; 6]) -> [u64; 7] {
    let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], 0];
    // SAFETY: a host call: el2 reads and writes only x0..x17, no memory of
    // ours.
    unsafe {
        asm!("hvc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2],
            inout("x3") r[3], inout("x4") r[4], inout("x5") r[5], inout("x6") r[6],
            clobber_abi("C"), options(nostack))
    };
    r
}

/// `smc #0` with x0..x3; returns x0..x3 (trapped by el2: PSCI relay).
pub fn smc(a: [u64; 4]) -> [u64; 4] {
    let mut r = a;
    // SAFETY: an SMCCC call: it reads and writes only registers; a CPU_ON
    // entry address we pass is our own code.
    unsafe {
        asm!("smc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
            clobber_abi("C"), options(nostack))
    };
    r
}

/// Same with a non-zero immediate (el2 must refuse it).
pub fn smc_imm1(id: u64) -> u64 {
    let mut r = id;
    // SAFETY: as `smc`.
    unsafe { asm!("smc #1", inout("x0") r, clobber_abi("C"), options(nostack)) };
    r
}

/// Ends the run through el2: PSCI SYSTEM_OFF with `status` in x1 (el2 turns
/// a non-zero status into QEMU's exit status). Falls back to semihosting.
pub fn power_off(status: u64) -> ! {
    let _ = smc([0x8400_0008, status, 0, 0]);
    let block = [0x2_0026u64, status];
    // SAFETY: semihosting SYS_EXIT with a parameter block on our stack.
    unsafe {
        asm!("hlt #0xf000", inout("x0") 0x18u64 => _, in("x1") block.as_ptr(), options(nostack))
    };
    loop {
        // SAFETY: waits for an event.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

// ---------------------------------------------------------------------
// Injected aborts: the log the vector fills, and the probes.

/// Value a probe's destination register holds if the load did not happen.
pub const SENTINEL: u64 = 0x5e57_1e1d_dead_beef;

/// One CPU slot's record of injected aborts.
pub struct AbortLog {
    count: AtomicU64,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
}

impl AbortLog {
    const fn new() -> AbortLog {
        AbortLog {
            count: AtomicU64::new(0),
            esr: AtomicU64::new(0),
            far: AtomicU64::new(0),
            elr: AtomicU64::new(0),
        }
    }

    /// How many aborts this slot took.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// `(count, esr, far, elr)` of the last abort.
    pub fn last(&self) -> (u64, u64, u64, u64) {
        (
            self.count.load(Ordering::Acquire),
            self.esr.load(Ordering::Relaxed),
            self.far.load(Ordering::Relaxed),
            self.elr.load(Ordering::Relaxed),
        )
    }
}

/// Abort logs, one per CPU slot (0: the boot CPU; see [`CPU_SLOTS`]).
pub static ABORTS: [AbortLog; MAX_CPUS] = [const { AbortLog::new() }; MAX_CPUS];

/// This CPU's slot (`TPIDR_EL1`, set at entry).
pub fn slot() -> usize {
    (mrs!("tpidr_el1") as usize).min(MAX_CPUS - 1)
}

/// Affinity bits of an MPIDR (Aff3, Aff2, Aff1, Aff0), as the device tree
/// names CPUs.
pub const MPIDR_AFF: u64 = 0xff_00ff_ffff;

/// This CPU's MPIDR affinity.
pub fn mpidr() -> u64 {
    mrs!("mpidr_el1") & MPIDR_AFF
}

/// Fills [`CPU_SLOTS`]: slot 0 is the boot CPU (`boot`), then every other
/// CPU of `cpus` in device-tree order (at most [`MAX_CPUS`] in all). Boot
/// CPU only, before it starts any other CPU.
pub fn set_cpu_slots(boot: u64, cpus: &[u64]) {
    let table = CPU_SLOTS.get();
    let mut slots = [u64::MAX; MAX_CPUS];
    let boot = boot & MPIDR_AFF;
    slots[0] = boot;
    let others = cpus.iter().map(|m| m & MPIDR_AFF).filter(|&m| m != boot);
    for (slot, m) in slots.iter_mut().skip(1).zip(others) {
        *slot = m;
    }
    // SAFETY: no other CPU runs yet (the table is read by CPUs started
    // later, with their MMU on).
    unsafe { *table = slots };
    clean_to_poc(table as u64, core::mem::size_of::<[u64; MAX_CPUS]>() as u64);
}

/// The slot of the CPU with MPIDR affinity `mpidr`, if it has one.
pub fn slot_of(mpidr: u64) -> Option<usize> {
    // SAFETY: written once by the boot CPU before any other CPU started.
    let slots = unsafe { *CPU_SLOTS.get() };
    slots.iter().position(|&m| m == mpidr & MPIDR_AFF)
}

/// Synchronous exception at EL1: an abort el2 injected (EC 0x25 data
/// abort, 0x21 instruction abort, current EL) is logged and skipped (a
/// data abort resumes after the access, an instruction abort returns to
/// the caller through x30); anything else ends the run.
pub fn sync_exception(frame: &mut Frame, kind: u64) {
    let esr = mrs!("esr_el1");
    let far = mrs!("far_el1");
    let ec = esr >> 26;
    if kind == 4 && (ec == 0x25 || ec == 0x21) {
        let log = &ABORTS[slot()];
        log.esr.store(esr, Ordering::Relaxed);
        log.far.store(far, Ordering::Relaxed);
        log.elr.store(frame.elr, Ordering::Relaxed);
        log.count.fetch_add(1, Ordering::Release);
        if ec == 0x25 {
            frame.elr += 4;
        } else {
            frame.elr = frame.x[30];
        }
        return;
    }
    println!(
        "testhost: unexpected exception (vector {kind}) ESR_EL1={esr:#x} FAR_EL1={far:#x} \
         ELR_EL1={:#x} SPSR_EL1={:#x}",
        frame.elr, frame.spsr
    );
    power_off(2)
}

/// Loads 8 bytes from `addr`; returns [`SENTINEL`] if the load was aborted
/// (and skipped).
pub fn probe_read(addr: u64) -> u64 {
    let mut v = SENTINEL;
    // SAFETY: the load may target memory we do not own: el2 then injects an
    // abort, which our vector logs and skips, leaving `v` untouched. When it
    // succeeds it only reads.
    unsafe { asm!("ldr {v}, [{a}]", v = inout(reg) v, a = in(reg) addr, options(nostack)) };
    v
}

/// Stores `val` at `addr` (aborted and skipped if el2 refuses it).
///
/// # Safety
///
/// `addr` is memory nothing else of ours uses, or memory the store will
/// fault on.
pub unsafe fn probe_write(addr: u64, val: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("str {v}, [{a}]", v = in(reg) val, a = in(reg) addr, options(nostack)) };
}

/// Branches to `addr`; an instruction abort returns here through x30.
///
/// # Safety
///
/// `addr` must fault on instruction fetch (hypervisor memory).
pub unsafe fn probe_exec(addr: u64) {
    // SAFETY: per the contract the fetch aborts and the vector returns to
    // the instruction after the `blr`; all caller-saved registers are
    // declared clobbered.
    unsafe { asm!("blr {a}", a = in(reg) addr, clobber_abi("C"), options(nostack)) };
}

/// The counter and its frequency.
pub fn now() -> (u64, u64) {
    (mrs!("cntpct_el0"), mrs!("cntfrq_el0").max(1))
}

/// Microseconds since `start` (a counter value).
pub fn us_since(start: u64) -> u64 {
    let (t, hz) = now();
    ((u128::from(t.saturating_sub(start)) * 1_000_000) / u128::from(hz)) as u64
}

/// Waits until `cond` holds or `timeout_us` passes; whether it held.
pub fn wait_for(timeout_us: u64, mut cond: impl FnMut() -> bool) -> bool {
    let (start, _) = now();
    loop {
        if cond() {
            return true;
        }
        if us_since(start) > timeout_us {
            return cond();
        }
        core::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------
// Copies to and from physical memory that may take an injected abort.

const PAGE: u64 = 4096;

/// Loads 8 bytes from `addr`; the value is meaningless if the load was
/// aborted (the caller checks the abort log).
#[inline(always)]
fn load64(addr: u64) -> u64 {
    let mut v = SENTINEL;
    // SAFETY: as `probe_read`: an aborted load is logged and skipped by
    // our vector, leaving `v` as it was. No `nomem`: the vector writes the
    // abort log, which the caller reads next.
    unsafe { asm!("ldr {v}, [{a}]", v = inout(reg) v, a = in(reg) addr, options(nostack)) };
    v
}

/// Loads a byte from `addr` (as [`load64`]).
#[inline(always)]
fn load8(addr: u64) -> u8 {
    let mut v = 0u64;
    // SAFETY: as `load64`.
    unsafe { asm!("ldrb {v:w}, [{a}]", v = inout(reg) v, a = in(reg) addr, options(nostack)) };
    v as u8
}

/// Stores 8 bytes at `addr` (skipped if aborted).
///
/// # Safety
///
/// `addr` is memory nothing of ours uses, or memory the store faults on.
#[inline(always)]
unsafe fn store64(addr: u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("str {v}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)) };
}

/// Stores a byte at `addr` (skipped if aborted).
///
/// # Safety
///
/// As [`store64`].
#[inline(always)]
unsafe fn store8(addr: u64, v: u8) {
    // SAFETY: per the contract.
    unsafe {
        asm!("strb {v:w}, [{a}]", v = in(reg) u64::from(v), a = in(reg) addr, options(nostack))
    };
}

/// Splits `[pa, pa + len)` into chunks that stay inside one page, each
/// cut into a leading run of bytes up to 8-byte alignment, 8-byte words
/// and trailing bytes; calls `byte(addr, index)` or `word(addr, index)`
/// for each (index into the caller's buffer). Stops at the first chunk
/// during which this CPU took an injected abort, and returns its address.
fn walk(
    pa: u64,
    len: usize,
    mut byte: impl FnMut(u64, usize),
    mut word: impl FnMut(u64, usize),
) -> Result<(), u64> {
    let log = &ABORTS[slot()];
    let mut done = 0usize;
    while done < len {
        let at = pa + done as u64;
        let chunk = ((PAGE - at % PAGE) as usize).min(len - done);
        let before = log.count();
        let mut i = 0usize;
        while i < chunk {
            let a = at + i as u64;
            if a.is_multiple_of(8) && chunk - i >= 8 {
                word(a, done + i);
                i += 8;
            } else {
                byte(a, done + i);
                i += 1;
            }
            // One injected abort is enough: el2 logs each one.
            if log.count() != before {
                return Err(a);
            }
        }
        done += chunk;
    }
    Ok(())
}

/// Copies `buf.len()` bytes of physical memory at `pa` (identity-mapped
/// RAM) into `buf`; `Err(address)` if el2 refused an access (an injected
/// abort, which the vector logs and skips).
pub fn read_phys(pa: u64, buf: &mut [u8]) -> Result<(), u64> {
    let out = buf.as_mut_ptr();
    walk(
        pa,
        buf.len(),
        // SAFETY: `i < buf.len()` (`walk` stays inside `len`).
        |a, i| unsafe { out.add(i).write(load8(a)) },
        // SAFETY: `i + 8 <= buf.len()`; the buffer need not be aligned.
        |a, i| unsafe { out.add(i).cast::<u64>().write_unaligned(load64(a)) },
    )
}

/// Copies `data` to physical memory at `pa` (identity-mapped RAM), then
/// cleans it to the point of coherency (a guest may read it with its MMU
/// off); `Err(address)` if el2 refused an access.
///
/// # Safety
///
/// `[pa, pa + data.len())` is memory nothing of ours uses (pages the VMM
/// allocated for guests), or memory the stores fault on.
pub unsafe fn write_phys(pa: u64, data: &[u8]) -> Result<(), u64> {
    let src = data.as_ptr();
    let r = walk(
        pa,
        data.len(),
        // SAFETY: `i < data.len()`; the target is per the contract.
        |a, i| unsafe { store8(a, src.add(i).read()) },
        // SAFETY: `i + 8 <= data.len()`; the target is per the contract.
        |a, i| unsafe { store64(a, src.add(i).cast::<u64>().read_unaligned()) },
    );
    if r.is_ok() && !data.is_empty() {
        clean_to_poc(pa, data.len() as u64);
    }
    r
}

/// The virtual counter and its frequency (an ISB first, so the read is
/// not taken early).
pub fn virtual_now() -> (u64, u64) {
    // SAFETY: a barrier only.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
    (mrs!("cntvct_el0"), mrs!("cntfrq_el0").max(1))
}

/// Arms the EL1 virtual timer `ticks` from now (enabled, not masked). The
/// test host never unmasks interrupts; while a guest runs, el2 carries
/// this deadline and ends the run when it passes.
pub fn arm_virtual_timer(ticks: u64) {
    let (now, _) = virtual_now();
    msr!("cntv_cval_el0", now.wrapping_add(ticks));
    msr!("cntv_ctl_el0", 1);
    // SAFETY: a barrier only.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// Disarms the EL1 virtual timer.
pub fn disarm_virtual_timer() {
    msr!("cntv_ctl_el0", 0);
}
