//! EL1 plumbing: the identity map, the console, the calls into el2 (plain
//! and register-checking), MMIO accesses, the counter, and the UNDEF log
//! the exception vector fills.

use core::arch::{asm, naked_asm};
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::entry::{Frame, MMU, MmuConfig, mmu_enable};

/// Reads a system register (`mrs`).
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading this system register has no side effect on our
        // state and is permitted at EL1 (ID registers trap to el2, which
        // answers them).
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}
pub(crate) use mrs;

// ---------------------------------------------------------------------
// The identity map: 512 × 1 GiB blocks (39-bit VA), Device-nGnRE + XN
// everywhere but the gigabytes holding RAM, which are Normal write-back.

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written by the boot vCPU only (before the MMU is on, then with
// break-before-make before any other vCPU runs), read by table walks.
unsafe impl Sync for Table {}

static L1: Table = Table(UnsafeCell::new([0; 512]));

/// MAIR_EL1: Attr0 Device-nGnRE, Attr1 Normal inner/outer write-back
/// read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);
/// Level-1 block, Attr1 (Normal), inner shareable, AF.
const NORMAL: u64 = (1 << 2) | (0b11 << 8) | (1 << 10) | 0b01;
/// Level-1 block, Attr0 (Device), AF, PXN, UXN.
const DEVICE: u64 = (1 << 10) | (1 << 53) | (1 << 54) | 0b01;
/// TCR_EL1: T0SZ 25 (39-bit VA, walks start at level 1), inner/outer
/// WBWA, inner shareable, 4 KiB granule, EPD1 (no TTBR1 walks), IPS
/// 40-bit.
const TCR: u64 = 25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23) | (0b010 << 32);
/// SCTLR_EL1: RES1 bits, M, C, SA, I (no alignment checking).
const SCTLR: u64 = 0x30d0_0800 | 1 | (1 << 2) | (1 << 3) | (1 << 12);

/// Number of gigabytes the identity map covers (39-bit VA).
const GIGABYTES: u64 = 512;

/// Builds the identity map and turns the MMU on (boot vCPU, MMU off, first
/// thing in Rust); `normal` lists addresses whose gigabyte is Normal
/// memory. Publishes the configuration, cleaned to the point of coherency,
/// for the secondary vCPU, which loads it with its MMU off.
pub fn mmu_on(normal: &[u64]) {
    let table = L1.0.get().cast::<u64>();
    for i in 0..GIGABYTES {
        let d = if normal.iter().any(|&a| a >> 30 == i) {
            NORMAL
        } else {
            DEVICE
        };
        // SAFETY: `i < 512`, the table is ours and not live yet; a
        // volatile aligned 8-byte store (the MMU is off: Device memory).
        unsafe { table.add(i as usize).write_volatile((i << 30) | d) };
    }
    let config = MmuConfig {
        mair: MAIR,
        tcr: TCR,
        ttbr0: table as u64,
        sctlr: SCTLR,
    };
    // SAFETY: boot vCPU, before any other vCPU starts; the table maps this
    // image (code, data, stack) Normal at its own address, so execution
    // carries on unchanged once the MMU is on.
    unsafe {
        MMU.get().write_volatile(config);
        mmu_enable(MMU.get());
    }
    clean_to_poc(MMU.get() as u64, 64);
}

/// Makes the gigabyte holding `addr` Normal memory (break-before-make on
/// the live table). Boot vCPU only, before the secondary starts, and never
/// for a gigabyte in use (the image's and the device tree's are Normal
/// from the start, so they are left alone).
pub fn map_normal(addr: u64) {
    let i = addr >> 30;
    if i >= GIGABYTES {
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
// MMIO.

/// One 8-byte load from `addr` (a single `ldr` without writeback, so el2
/// sees a valid syndrome and can hand the access to the VMM).
///
/// # Safety
///
/// `addr` is 8-byte aligned and a device register, an unbacked IPA the
/// VMM emulates, or memory of ours that may be read.
pub unsafe fn read64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: per the contract; the asm has no `nomem`, so it is ordered
    // with our other memory accesses.
    unsafe { asm!("ldr {v}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack)) };
    v
}

/// One 8-byte store of `val` to `addr` (a single `str`, see [`read64`]).
///
/// # Safety
///
/// `addr` is 8-byte aligned and a device register or an unbacked IPA the
/// VMM emulates (or memory of ours nothing else uses).
pub unsafe fn write64(addr: u64, val: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("str {v}, [{a}]", v = in(reg) val, a = in(reg) addr, options(nostack)) };
}

/// Instruction synchronization barrier (a system register write takes
/// effect).
pub fn isb() {
    // SAFETY: a barrier only.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Full-system data barrier: our earlier stores (e.g. to a page the host
/// is about to read) complete before the next access (an MMIO command).
pub fn dsb_sy() {
    // SAFETY: barrier only.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

// ---------------------------------------------------------------------
// Console: one line at a time, built in a stack buffer, then written to
// the PL011's UARTDR one byte per store (each store is an exit to the
// VMM, whose emulated UART never reports busy, so UARTFR is not polled).

static UART: AtomicU64 = AtomicU64::new(host_interface::platform::UART);
static CONSOLE_LOCK: AtomicBool = AtomicBool::new(false);

/// Uses the PL011 at `base` from now on.
pub fn set_uart(base: u64) {
    UART.store(base, Ordering::Relaxed);
}

/// Bytes one output line may hold (longer lines are cut).
const LINE_MAX: usize = 400;

/// A line being formatted (no allocation).
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Line {
        Line {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Writes the line and a newline to the console. A vCPU waits for
    /// another's line to finish, for a bounded time (so a vCPU that
    /// faulted while printing cannot silence the other).
    pub fn emit(&mut self) {
        if self.len == LINE_MAX {
            self.buf[LINE_MAX - 1] = b'\n';
        } else {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        let mut spins = 0u32;
        while CONSOLE_LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
            && spins < 10_000_000
        {
            spins += 1;
            core::hint::spin_loop();
        }
        let base = UART.load(Ordering::Relaxed);
        for &b in &self.buf[..self.len] {
            // SAFETY: `base` is the PL011 the device tree names (or the
            // platform's), mapped Device; UARTDR (+0) takes a byte per
            // 32-bit store.
            unsafe {
                asm!("str {b:w}, [{a}]", b = in(reg) u32::from(b), a = in(reg) base,
                    options(nostack))
            };
        }
        CONSOLE_LOCK.store(false, Ordering::Release);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < LINE_MAX {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Prints a formatted line (one console write per line).
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut line = $crate::guest::arch::Line::new();
        let _ = write!(line, $($arg)*);
        line.emit();
    }};
}
pub(crate) use println;

// ---------------------------------------------------------------------
// Calls into el2.

/// PSCI SYSTEM_OFF.
pub const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// `hvc #0` with x0..x3; returns x0..x3. Every register the C ABI lets a
/// callee change is declared clobbered, so a hypervisor that broke SMCCC's
/// preservation rule cannot corrupt this program (the suite checks the
/// rule separately with [`checked_call`]).
pub fn hvc(a: [u64; 4]) -> [u64; 4] {
    let mut r = a;
    // SAFETY: a guest call: el2 (or the VMM behind it) reads and writes
    // only registers, never our memory without our request; a CPU_ON entry
    // we pass is our own code.
    unsafe {
        asm!("hvc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
            clobber_abi("C"), options(nostack))
    };
    r
}

/// `smc #0` with x0..x3; returns x0..x3 (el2 traps SMCs and answers the
/// same SMCCC services).
pub fn smc(a: [u64; 4]) -> [u64; 4] {
    let mut r = a;
    // SAFETY: as `hvc`.
    unsafe {
        asm!("smc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
            clobber_abi("C"), options(nostack))
    };
    r
}

/// Ends the run: PSCI SYSTEM_OFF over HVC; if that returns, waits forever
/// (`wfi` exits to the VMM as a yield).
pub fn system_off() -> ! {
    let _ = hvc([PSCI_SYSTEM_OFF, 0, 0, 0]);
    loop {
        wfi();
    }
}

/// `wfi` (el2 traps it; the VMM treats it as a yield and resumes us).
pub fn wfi() {
    // SAFETY: waits for an event or is trapped; touches no state of ours.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// Loads x0..x30 from `*regs`, runs `$insn`, stores x0..x30 back into
/// `*regs`. SP, and x18..x30 for the caller, are preserved by the
/// function itself (saved on the stack), so the instruction may be handed
/// any value in every general-purpose register.
macro_rules! register_probe {
    ($(#[$doc:meta])* $name:ident, $insn:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// `regs` points to 31 writable `u64`s; the instruction, given
        /// those register values, must be a call or access that returns
        /// here and changes no memory of ours.
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name(regs: *mut [u64; 31]) {
            naked_asm!(
                "sub sp, sp, #128",
                "stp x18, x19, [sp, #0]",
                "stp x20, x21, [sp, #16]",
                "stp x22, x23, [sp, #32]",
                "stp x24, x25, [sp, #48]",
                "stp x26, x27, [sp, #64]",
                "stp x28, x29, [sp, #80]",
                "stp x30, x0, [sp, #96]",
                "mov x30, x0",
                "ldp x0, x1, [x30, #0]",
                "ldp x2, x3, [x30, #16]",
                "ldp x4, x5, [x30, #32]",
                "ldp x6, x7, [x30, #48]",
                "ldp x8, x9, [x30, #64]",
                "ldp x10, x11, [x30, #80]",
                "ldp x12, x13, [x30, #96]",
                "ldp x14, x15, [x30, #112]",
                "ldp x16, x17, [x30, #128]",
                "ldp x18, x19, [x30, #144]",
                "ldp x20, x21, [x30, #160]",
                "ldp x22, x23, [x30, #176]",
                "ldp x24, x25, [x30, #192]",
                "ldp x26, x27, [x30, #208]",
                "ldp x28, x29, [x30, #224]",
                "ldr x30, [x30, #240]",
                $insn,
                "str x30, [sp, #112]",
                "ldr x30, [sp, #104]",
                "stp x0, x1, [x30, #0]",
                "stp x2, x3, [x30, #16]",
                "stp x4, x5, [x30, #32]",
                "stp x6, x7, [x30, #48]",
                "stp x8, x9, [x30, #64]",
                "stp x10, x11, [x30, #80]",
                "stp x12, x13, [x30, #96]",
                "stp x14, x15, [x30, #112]",
                "stp x16, x17, [x30, #128]",
                "stp x18, x19, [x30, #144]",
                "stp x20, x21, [x30, #160]",
                "stp x22, x23, [x30, #176]",
                "stp x24, x25, [x30, #192]",
                "stp x26, x27, [x30, #208]",
                "stp x28, x29, [x30, #224]",
                "ldr x0, [sp, #112]",
                "str x0, [x30, #240]",
                "ldp x18, x19, [sp, #0]",
                "ldp x20, x21, [sp, #16]",
                "ldp x22, x23, [sp, #32]",
                "ldp x24, x25, [sp, #48]",
                "ldp x26, x27, [sp, #64]",
                "ldp x28, x29, [sp, #80]",
                "ldr x30, [sp, #96]",
                "add sp, sp, #128",
                "ret",
            )
        }
    };
}

register_probe!(
    /// `hvc #0` with every general-purpose register given.
    probe_hvc,
    "hvc #0"
);
register_probe!(
    /// `smc #0` with every general-purpose register given.
    probe_smc,
    "smc #0"
);
register_probe!(
    /// `ldr x0, [x0]` (an MMIO load when x0 is a device register) with
    /// every general-purpose register given.
    probe_load,
    "ldr x0, [x0]"
);

/// How [`checked_call`] enters el2.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// `hvc #0`: x0..x3 are results, x4..x30 must be preserved.
    Hvc,
    /// `smc #0`: as `Hvc`.
    Smc,
    /// `ldr x0, [x0]` with x0 = the address: x0 is the loaded value,
    /// x1..x30 must be preserved.
    Load,
}

/// What [`checked_call`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Checked {
    /// x0..x3 after the call.
    pub ret: [u64; 4],
    /// The first register that should have been preserved and was not:
    /// `(n, expected, got)`.
    pub clobbered: Option<(usize, u64, u64)>,
}

impl Checked {
    /// Whether every register that must be preserved was.
    pub fn preserved(&self) -> bool {
        self.clobbered.is_none()
    }
}

/// The distinct value register `n` holds going into a checked call.
pub const fn pattern(n: usize) -> u64 {
    0xa5a5_0000_0000_0000 | ((n as u64) << 40) | (0x00c0_de00 + n as u64)
}

/// Makes a call (or MMIO load) with x0..x3 = `args` and x4..x30 (x1..x30
/// for a load) holding [`pattern`]s; returns x0..x3 and the first
/// register that came back changed though SMCCC 1.1 (x4..x17) and the
/// procedure-call standard (x18..x30) say it is preserved.
pub fn checked_call(via: Via, args: [u64; 4]) -> Checked {
    let mut regs = [0u64; 31];
    for (n, r) in regs.iter_mut().enumerate() {
        *r = pattern(n);
    }
    let first_kept = match via {
        Via::Hvc | Via::Smc => {
            regs[..4].copy_from_slice(&args);
            4
        }
        Via::Load => {
            regs[0] = args[0];
            1
        }
    };
    let want = regs;
    // SAFETY: `regs` is ours; the instruction is a guest call (registers
    // only) or a load from the address the caller chose (a device
    // register), and the probe restores SP and our callee-saved registers.
    unsafe {
        match via {
            Via::Hvc => probe_hvc(&raw mut regs),
            Via::Smc => probe_smc(&raw mut regs),
            Via::Load => probe_load(&raw mut regs),
        }
    }
    let clobbered = (first_kept..31)
        .find(|&n| regs[n] != want[n])
        .map(|n| (n, want[n], regs[n]));
    Checked {
        ret: [regs[0], regs[1], regs[2], regs[3]],
        clobbered,
    }
}

// ---------------------------------------------------------------------
// The counter.

/// The virtual counter (`CNTVCT_EL0`, after an ISB so it is not read
/// early).
pub fn ticks() -> u64 {
    let v: u64;
    // SAFETY: reads the virtual counter, accessible at EL1.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// The counter's frequency (`CNTFRQ_EL0`, at least 1).
pub fn hz() -> u64 {
    mrs!("cntfrq_el0").max(1)
}

/// Waits until `cond` holds or `seconds` pass; whether it held. Executes
/// `wfi` between polls: el2 traps it and the VMM treats it as a yield, so
/// another vCPU sharing the physical CPU gets to run.
pub fn wait_for(seconds: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = ticks();
    let limit = hz().saturating_mul(seconds);
    loop {
        if cond() {
            return true;
        }
        if ticks().wrapping_sub(start) > limit {
            return cond();
        }
        wfi();
    }
}

// ---------------------------------------------------------------------
// Expected UNDEFINED exceptions.

/// One vCPU slot's record of expected UNDEF exceptions.
pub struct UndefLog {
    armed: AtomicBool,
    count: AtomicU64,
    esr: AtomicU64,
    elr: AtomicU64,
}

impl UndefLog {
    const fn new() -> UndefLog {
        UndefLog {
            armed: AtomicBool::new(false),
            count: AtomicU64::new(0),
            esr: AtomicU64::new(0),
            elr: AtomicU64::new(0),
        }
    }

    /// `(count, esr, elr)` of the last recorded UNDEF.
    pub fn last(&self) -> (u64, u64, u64) {
        (
            self.count.load(Ordering::Acquire),
            self.esr.load(Ordering::Relaxed),
            self.elr.load(Ordering::Relaxed),
        )
    }
}

/// UNDEF logs of slot 0 (boot vCPU) and slot 1 (secondary).
pub static UNDEFS: [UndefLog; 2] = [UndefLog::new(), UndefLog::new()];

/// This vCPU's slot (`TPIDR_EL1`, set at entry).
pub fn slot() -> usize {
    (mrs!("tpidr_el1") as usize).min(1)
}

/// Value [`read_pmcr_expecting_undef`]'s destination register holds if
/// the `mrs` did not execute.
pub const SENTINEL: u64 = 0x5e57_1e1d_dead_beef;

/// Reads `PMCR_EL0` with an UNDEF expected: returns the destination
/// register afterwards ([`SENTINEL`] if the read was skipped) and the
/// address of the `mrs`.
pub fn read_pmcr_expecting_undef() -> (u64, u64) {
    let log = &UNDEFS[slot()];
    log.armed.store(true, Ordering::SeqCst);
    let mut v = SENTINEL;
    let pc: u64;
    // SAFETY: reads PMCR_EL0; if el2 injects an UNDEF instead, our vector
    // records it and resumes at the next instruction, leaving `v` as it
    // was. No memory is touched.
    unsafe {
        asm!(
            "adr {pc}, 2f",
            "2:",
            "mrs {v}, pmcr_el0",
            pc = out(reg) pc,
            v = inout(reg) v,
            options(nostack),
        )
    };
    log.armed.store(false, Ordering::SeqCst);
    (v, pc)
}

/// Synchronous exception at EL1 (vector `kind`): an UNDEFINED instruction
/// (EC 0) from EL1 while this vCPU expects one is recorded and skipped;
/// anything else is reported as a failure and ends the run.
pub fn sync_exception(frame: &mut Frame, kind: u64) {
    let esr = mrs!("esr_el1");
    let far = mrs!("far_el1");
    let ec = esr >> 26;
    let log = &UNDEFS[slot()];
    if kind == 4 && ec == 0 && log.armed.load(Ordering::SeqCst) {
        log.esr.store(esr, Ordering::Relaxed);
        log.elr.store(frame.elr, Ordering::Relaxed);
        log.count.fetch_add(1, Ordering::Release);
        frame.elr += 4;
        return;
    }
    println!(
        "testguest: unexpected exception on vCPU slot {} (vector {kind}) ESR_EL1={esr:#x} \
         FAR_EL1={far:#x} ELR_EL1={:#x} SPSR_EL1={:#x}",
        slot(),
        frame.elr,
        frame.spsr
    );
    super::fatal()
}
