//! The conformance suite the test guest runs against el2 and its VMM.
//!
//! Every check prints one line, numbered in order:
//! `testguest: ok <n> - <description>`,
//! `testguest: FAIL <n> - <description>: <details>` or
//! `testguest: skip <n> - <description>: <why>` (not counted). Groups:
//!
//! 1. **discovery**: PSCI_VERSION, PSCI_FEATURES (SMCCC_VERSION and an
//!    unknown id), MIGRATE_INFO_TYPE, SMCCC_VERSION over HVC and SMC,
//!    SMCCC_ARCH_FEATURES (known and unknown), unknown function ids, an id
//!    with bits 63:32 set, CALL_UID, KVM_FEATURES, HYP_MEMINFO (and with
//!    x1 ≠ 0), the device tree's PSCI node (`method = "hvc"`).
//! 2. **register preservation**: x4..x30 (x1..x30 for the MMIO load)
//!    hold their values across a discovery call, MEM_SHARE, MEM_UNSHARE,
//!    MEM_RELINQUISH, an error return, an MMIO exit and a trapped SMC.
//! 3. **MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH ranges and errors**: one
//!    page (and x2 = 0 meaning one page), 4 pages, 512 pages and 513
//!    pages (512 done, the 513th stays private), unaligned IPA, outside
//!    RAM, past the end of RAM, x3 ≠ 0, double share, unshare of a page
//!    not shared.
//! 4. **shared page contents**: the host sees what the guest wrote, the
//!    guest sees what the host wrote, unshare takes the host's access away
//!    (CHECK_PATTERN → -EFAULT, PROBE_PHYS → refused) and keeps the
//!    contents.
//! 5. **private memory**: the host cannot read, write, probe, punch or
//!    convert a private page; its contents survive.
//! 6. **relinquish**: a relinquished page comes back zeroed.
//! 7. **MMIO**: the test device's ID; an unbacked IPA reads 0 and drops
//!    stores.
//! 8. **ABORTS()** counts at least the refused PROBE_PHYS.
//! 9. **the vCPU**: EL1 and MPIDR, sanitised ID registers, PMCR_EL0 UNDEF,
//!    `wfi`, FP/SIMD state across exits.
//! 10. **PSCI CPU_ON and the second vCPU**: bad target, already on, then
//!     vCPU 1 started with a context id, its checks, ALREADY_ON while it
//!     runs, AFFINITY_INFO ON then OFF after its CPU_OFF (skipped with one
//!     vCPU).
//! 11. `testguest.fail` in bootargs: one check that fails on purpose.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host_interface::abi::{
    GUEST_FEATURES, GuestCall, KVM_UID, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED, errno,
};
use host_interface::platform::testdev::MAGIC;

use super::arch::{self, Via, checked_call, hvc, mrs, println, smc};
use super::entry::secondary_entry;
use super::{BLOCK, FAILED, PAGE, PASSED, Platform, testdev};

// ---------------------------------------------------------------------
// Function ids and status values.

/// PSCI_VERSION.
pub const PSCI_VERSION: u64 = 0x8400_0000;
/// PSCI CPU_OFF.
pub const PSCI_CPU_OFF: u64 = 0x8400_0002;
/// PSCI MIGRATE_INFO_TYPE.
pub const PSCI_MIGRATE_INFO_TYPE: u64 = 0x8400_0006;
/// PSCI_FEATURES.
pub const PSCI_FEATURES: u64 = 0x8400_000A;
/// PSCI CPU_ON (SMC64).
pub const PSCI_CPU_ON: u64 = 0xC400_0003;
/// PSCI AFFINITY_INFO (SMC64).
pub const PSCI_AFFINITY_INFO: u64 = 0xC400_0004;
/// SMCCC_VERSION.
pub const SMCCC_VERSION: u64 = 0x8000_0000;
/// SMCCC_ARCH_FEATURES.
pub const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;

/// PSCI 1.1.
const PSCI_1_1: u64 = 0x0001_0001;
/// SMCCC 1.1.
const SMCCC_1_1: u64 = 0x0001_0001;
/// Whether `v` is an SMCCC_VERSION result of 1.1 or later (not an error:
/// bit 31 clear).
fn smccc_1_1(v: u64) -> bool {
    (SMCCC_1_1..1 << 31).contains(&v)
}

/// MIGRATE_INFO_TYPE: no Trusted OS that needs migration.
const MIGRATE_NOT_PRESENT: u64 = 2;
/// AFFINITY_INFO states.
const AFF_ON: u64 = 0;
const AFF_OFF: u64 = 1;

const NOT_SUPPORTED: u64 = SMCCC_NOT_SUPPORTED as u64;
const INVALID_PARAMETER: u64 = SMCCC_INVALID_PARAMETER as u64;
/// PSCI INVALID_PARAMETERS.
const PSCI_INVALID_PARAMETERS: u64 = -2i64 as u64;
/// PSCI ALREADY_ON.
const PSCI_ALREADY_ON: u64 = -4i64 as u64;
/// PSCI INVALID_ADDRESS.
const PSCI_INVALID_ADDRESS: u64 = -9i64 as u64;

const EPERM: i64 = -errno::EPERM;
const EFAULT: i64 = -errno::EFAULT;

/// An IPA that is neither RAM nor an emulated device (the platform's
/// "unbacked" space: reads 0, writes dropped).
const UNBACKED: u64 = 0x0c00_0000;

// ---------------------------------------------------------------------
// Output.

/// Number of the next check line.
static NUMBER: AtomicU64 = AtomicU64::new(1);

fn next_number() -> u64 {
    NUMBER.fetch_add(1, Ordering::Relaxed)
}

/// One check: prints its line and counts it.
fn check(desc: &str, ok: bool, detail: fmt::Arguments<'_>) -> bool {
    let n = next_number();
    if ok {
        PASSED.fetch_add(1, Ordering::Relaxed);
        println!("testguest: ok {n} - {desc}");
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
        println!("testguest: FAIL {n} - {desc}: {detail}");
    }
    ok
}

/// A check that cannot run here: printed, not counted.
fn skip(desc: &str, why: &str) {
    let n = next_number();
    println!("testguest: skip {n} - {desc}: {why}");
}

// ---------------------------------------------------------------------
// One-line formatting of results (no pretty-printed Debug: each check is
// one line).

/// Words as `[0x.., 0x..]`.
struct Words<'a>(&'a [u64]);

impl fmt::Display for Words<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{w:#x}")?;
        }
        f.write_str("]")
    }
}

/// A memory call's `(x0, x1)` as `x0 = 0x.., x1 = 0x..`.
struct Ret((u64, u64));

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x0 = {:#x}, x1 = {:#x}", self.0.0, self.0.1)
    }
}

/// A page's first unexpected word (see [`mismatch`]): `none`, or
/// `+offset = value`.
struct Miss(Option<(u64, u64)>);

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some((o, v)) => write!(f, "word at +{o:#x} = {v:#x}"),
        }
    }
}

// ---------------------------------------------------------------------
// Calls and memory helpers.

fn call(id: u64, a1: u64) -> [u64; 4] {
    hvc([id, a1, 0, 0])
}

/// MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH of `pages` pages at `ipa`
/// (x3 = 0): `(x0, x1)`.
fn mem(c: GuestCall, ipa: u64, pages: u64) -> (u64, u64) {
    let r = hvc([c.id(), ipa, pages, 0]);
    (r[0], r[1])
}

fn share(ipa: u64, pages: u64) -> (u64, u64) {
    mem(GuestCall::MemShare, ipa, pages)
}

fn unshare(ipa: u64, pages: u64) -> (u64, u64) {
    mem(GuestCall::MemUnshare, ipa, pages)
}

fn relinquish(ipa: u64, pages: u64) -> (u64, u64) {
    mem(GuestCall::MemRelinquish, ipa, pages)
}

/// `byte` repeated in a word.
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Writes `byte` to every byte of the page at `gpa`.
fn fill(gpa: u64, byte: u8) {
    let p = gpa as *mut u64;
    for i in 0..(PAGE / 8) as usize {
        // SAFETY: `gpa` is a page of the suite's free RAM (never part of
        // this image or the device tree), mapped Normal, 8-byte aligned.
        unsafe { p.add(i).write_volatile(splat(byte)) };
    }
}

/// The first word of the page at `gpa` that is not `byte` repeated:
/// `(offset, value)`.
fn mismatch(gpa: u64, byte: u8) -> Option<(u64, u64)> {
    let p = gpa as *const u64;
    (0..(PAGE / 8) as usize).find_map(|i| {
        // SAFETY: as in `fill`: a page of the suite's free RAM.
        let v = unsafe { p.add(i).read_volatile() };
        (v != splat(byte)).then_some((i as u64 * 8, v))
    })
}

/// Hands out pages and 2 MiB blocks of the suite's free RAM, each once.
struct Pages {
    /// Next free page of the single-page area.
    next: u64,
    /// End of the single-page area.
    end: u64,
}

impl Pages {
    /// `n` contiguous fresh pages.
    fn take(&mut self, n: u64) -> u64 {
        let a = self.next;
        assert!(a + n * PAGE <= self.end, "testguest: out of test pages");
        self.next += n * PAGE;
        a
    }
}

/// Where the suite's test memory lies (all inside [`Platform::free`]).
struct Layout {
    /// 2 MiB of single pages.
    small: u64,
    /// A 2 MiB block for the 512-page calls.
    block512: u64,
    /// A 2 MiB block whose 512 pages, plus the first page of the next
    /// block, make the 513-page calls.
    block513: u64,
}

/// Bytes of free RAM the suite needs: four 2 MiB blocks (the last one
/// only for the 513th page).
const SUITE_RAM: u64 = 4 * BLOCK;

impl Layout {
    fn new(p: &Platform) -> Option<Layout> {
        let (start, end) = p.free();
        (end - start >= SUITE_RAM).then_some(Layout {
            small: start,
            block512: start + BLOCK,
            block513: start + 2 * BLOCK,
        })
    }
}

/// What the suite remembers across groups.
struct State {
    pages: Pages,
    /// PROBE_PHYS calls that returned 1 (a refused host access).
    refused: u64,
    /// ABORTS() when the suite started.
    aborts_start: i64,
    /// SMCCC_VERSION over HVC.
    smccc_version: u64,
}

/// Runs the whole suite.
pub fn run(p: &Platform) {
    let layout = Layout::new(p);
    let mut st = State {
        pages: Pages {
            next: layout.as_ref().map_or(0, |l| l.small),
            end: layout.as_ref().map_or(0, |l| l.small + BLOCK),
        },
        refused: 0,
        aborts_start: testdev::aborts(),
        smccc_version: 0,
    };
    discovery(p, &mut st);
    match &layout {
        Some(l) => {
            preservation(&mut st);
            ranges(l, &mut st);
            errors(p, &mut st);
            contents(&mut st);
            private(&mut st);
            relinquished(&mut st);
        }
        None => {
            let (start, end) = p.free();
            check(
                "guest RAM holds the suite's test memory (8 MiB after the image)",
                false,
                format_args!("free RAM {start:#x}..{end:#x}; memory groups not run"),
            );
        }
    }
    mmio();
    aborts(&st);
    vcpu_checks();
    psci_cpu_checks(p);
    gic_checks(p);
    if p.fail {
        check(
            "deliberate failure (testguest.fail in bootargs)",
            false,
            format_args!("requested"),
        );
    }
}

// ---------------------------------------------------------------------
// 1. Discovery.

fn discovery(p: &Platform, st: &mut State) {
    let v = call(PSCI_VERSION, 0)[0];
    check(
        "PSCI_VERSION -> 1.1 (0x10001)",
        v == PSCI_1_1,
        format_args!("x0 = {v:#x}"),
    );
    let f = call(PSCI_FEATURES, SMCCC_VERSION)[0];
    check(
        "PSCI_FEATURES(SMCCC_VERSION) -> 0 (implemented)",
        f == 0,
        format_args!("x0 = {f:#x}"),
    );
    let f = call(PSCI_FEATURES, 0x8400_00ff)[0];
    check(
        "PSCI_FEATURES(unknown id 0x840000ff) -> NOT_SUPPORTED",
        f == NOT_SUPPORTED,
        format_args!("x0 = {f:#x}"),
    );
    let m = call(PSCI_MIGRATE_INFO_TYPE, 0)[0];
    check(
        "MIGRATE_INFO_TYPE -> 2 (no migration needed)",
        m == MIGRATE_NOT_PRESENT,
        format_args!("x0 = {m:#x}"),
    );
    let v = call(SMCCC_VERSION, 0)[0];
    st.smccc_version = v;
    check(
        "SMCCC_VERSION over HVC -> 1.1 or later",
        smccc_1_1(v),
        format_args!("x0 = {v:#x}"),
    );
    let s = smc([SMCCC_VERSION, 0, 0, 0])[0];
    check(
        "SMCCC_VERSION over a trapped SMC -> the same value as over HVC",
        s == v && smccc_1_1(s),
        format_args!("smc x0 = {s:#x}, hvc x0 = {v:#x}"),
    );
    let f = call(SMCCC_ARCH_FEATURES, SMCCC_ARCH_FEATURES)[0];
    check(
        "SMCCC_ARCH_FEATURES(SMCCC_ARCH_FEATURES) -> 0",
        f == 0,
        format_args!("x0 = {f:#x}"),
    );
    let f = call(SMCCC_ARCH_FEATURES, 0x8000_00ff)[0];
    check(
        "SMCCC_ARCH_FEATURES(unknown id 0x800000ff) -> NOT_SUPPORTED",
        f == NOT_SUPPORTED,
        format_args!("x0 = {f:#x}"),
    );
    let a = call(0xC600_00FF, 0)[0];
    let b = call(0x8600_0042, 0)[0];
    check(
        "unknown function ids 0xc60000ff and 0x86000042 -> NOT_SUPPORTED",
        a == NOT_SUPPORTED && b == NOT_SUPPORTED,
        format_args!("x0 = {a:#x}, {b:#x}"),
    );
    let v = call(0xffff_ffff_8400_0000, 0)[0];
    check(
        "function id 0xffffffff84000000 (bits 63:32 ignored) -> PSCI_VERSION",
        v == PSCI_1_1,
        format_args!("x0 = {v:#x}"),
    );
    let u = call(GuestCall::CallUid.id(), 0);
    check(
        "CALL_UID -> KVM's UID in x0..x3",
        u == KVM_UID,
        format_args!("x0..x3 = {}", Words(&u)),
    );
    let f = call(GuestCall::Features.id(), 0)[0];
    check(
        "KVM_FEATURES -> bits 0, 2, 3, 4, 9 set (FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE, MEM_RELINQUISH)",
        f >> 32 == 0 && f & GUEST_FEATURES == GUEST_FEATURES,
        format_args!("x0 = {f:#x}, want at least {GUEST_FEATURES:#x}"),
    );
    let m = hvc([GuestCall::HypMeminfo.id(), 0, 0, 0]);
    check(
        "HYP_MEMINFO -> x0 = 4096 (granule), x1 = 1 (range form)",
        m[0] == PAGE && m[1] == 1,
        format_args!("x0..x3 = {}", Words(&m)),
    );
    let m = hvc([GuestCall::HypMeminfo.id(), 1, 0, 0])[0];
    check(
        "HYP_MEMINFO with x1 != 0 -> INVALID_PARAMETER",
        m == INVALID_PARAMETER,
        format_args!("x0 = {m:#x}"),
    );
    check(
        "device tree: /psci is arm,psci-* with method \"hvc\"",
        p.psci_compatible && p.psci_method == Some("hvc"),
        format_args!(
            "compatible arm,psci-*: {}, method {:?}",
            p.psci_compatible, p.psci_method
        ),
    );
}

// ---------------------------------------------------------------------
// 2. Register preservation.

/// One preservation check: the call's result is right and every register
/// it must keep was kept.
fn preserved(desc: &str, c: arch::Checked, result_ok: bool) {
    let ok = result_ok && c.preserved();
    match c.clobbered {
        Some((n, want, got)) => check(
            desc,
            ok,
            format_args!(
                "x{n} = {got:#x}, was {want:#x} (x0..x3 = {})",
                Words(&c.ret)
            ),
        ),
        None => check(
            desc,
            ok,
            format_args!("registers kept, but x0..x3 = {}", Words(&c.ret)),
        ),
    };
}

fn preservation(st: &mut State) {
    let c = checked_call(Via::Hvc, [SMCCC_VERSION, 0, 0, 0]);
    preserved(
        "x4-x30 preserved across a discovery HVC (SMCCC_VERSION)",
        c,
        c.ret[0] == st.smccc_version && smccc_1_1(c.ret[0]),
    );
    let page = st.pages.take(1);
    fill(page, 0x21);
    let c = checked_call(Via::Hvc, [GuestCall::MemShare.id(), page, 1, 0]);
    preserved(
        "x4-x30 preserved across MEM_SHARE (-> 0, 1 page)",
        c,
        c.ret[..2] == [0, 1],
    );
    let c = checked_call(Via::Hvc, [GuestCall::MemUnshare.id(), page, 1, 0]);
    preserved(
        "x4-x30 preserved across MEM_UNSHARE (-> 0, 1 page)",
        c,
        c.ret[..2] == [0, 1],
    );
    let c = checked_call(Via::Hvc, [GuestCall::MemRelinquish.id(), page, 1, 0]);
    preserved(
        "x4-x30 preserved across MEM_RELINQUISH (-> 0, 1 page)",
        c,
        c.ret[..2] == [0, 1],
    );
    let c = checked_call(Via::Hvc, [GuestCall::MemShare.id(), page + 8, 1, 0]);
    preserved(
        "x4-x30 preserved across an error return (MEM_SHARE of an unaligned IPA -> INVALID_PARAMETER)",
        c,
        c.ret[..2] == [INVALID_PARAMETER, 0],
    );
    let c = checked_call(Via::Load, [testdev::base(), 0, 0, 0]);
    preserved(
        "x1-x30 preserved across an MMIO exit (load of the test device's ID)",
        c,
        c.ret[0] == MAGIC,
    );
    let c = checked_call(Via::Smc, [SMCCC_VERSION, 0, 0, 0]);
    preserved(
        "x4-x30 preserved across a trapped SMC (SMCCC_VERSION)",
        c,
        c.ret[0] == st.smccc_version && smccc_1_1(c.ret[0]),
    );
}

// ---------------------------------------------------------------------
// 3. Ranges.

/// CHECK_PATTERN of each page in `[gpa, gpa + n pages)` with the byte
/// `byte(i)`; the first result that is not `want`: `(page, result)`.
fn check_each(gpa: u64, n: u64, byte: impl Fn(u64) -> u8, want: i64) -> Option<(u64, i64)> {
    (0..n).find_map(|i| {
        let r = testdev::check_pattern(gpa + i * PAGE, byte(i));
        (r != want).then_some((i, r))
    })
}

/// The first page of `[gpa, gpa + n pages)` that does not read all
/// `byte`: `(page, offset, value)`.
fn mismatch_each(gpa: u64, n: u64, byte: u8) -> Option<(u64, u64, u64)> {
    (0..n).find_map(|i| mismatch(gpa + i * PAGE, byte).map(|(o, v)| (i, o, v)))
}

fn ranges(l: &Layout, st: &mut State) {
    // One page.
    let a = st.pages.take(1);
    fill(a, 0x11);
    let r = share(a, 1);
    check(
        "MEM_SHARE of one page -> x0 = 0, x1 = 1",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );
    let c = testdev::check_pattern(a, 0x11);
    check(
        "the host reads the guest's bytes in a page it shared (CHECK_PATTERN -> 0)",
        c == 0,
        format_args!("CHECK_PATTERN = {c}"),
    );
    let r = unshare(a, 1);
    check(
        "MEM_UNSHARE of one page -> x0 = 0, x1 = 1",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );
    let r = relinquish(a, 1);
    check(
        "MEM_RELINQUISH of one page -> x0 = 0, x1 = 1",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );

    // x2 = 0 means one page.
    let b = st.pages.take(2);
    fill(b, 0x12);
    fill(b + PAGE, 0x13);
    let r1 = share(b, 0);
    let c2 = testdev::check_pattern(b + PAGE, 0x13);
    let r2 = unshare(b, 0);
    check(
        "MEM_SHARE / MEM_UNSHARE with x2 = 0 do one page (x1 = 1; the next page stays private)",
        r1 == (0, 1) && r2 == (0, 1) && c2 == EFAULT,
        format_args!(
            "share {}, unshare {}, next page CHECK_PATTERN = {c2}",
            Ret(r1),
            Ret(r2)
        ),
    );

    // Four pages.
    let c = st.pages.take(4);
    let byte4 = |i: u64| 0x40 + i as u8;
    for i in 0..4 {
        fill(c + i * PAGE, byte4(i));
    }
    let r = share(c, 4);
    check(
        "MEM_SHARE of 4 pages -> x0 = 0, x1 = 4",
        r == (0, 4),
        format_args!("{}", Ret(r)),
    );
    let bad = check_each(c, 4, byte4, 0);
    check(
        "the host reads all 4 shared pages (CHECK_PATTERN -> 0 each)",
        bad.is_none(),
        format_args!("(page, result) = {bad:?}"),
    );
    let r = unshare(c, 4);
    check(
        "MEM_UNSHARE of 4 pages -> x0 = 0, x1 = 4",
        r == (0, 4),
        format_args!("{}", Ret(r)),
    );
    let bad = check_each(c, 4, byte4, EFAULT);
    check(
        "all 4 pages private again (CHECK_PATTERN -> -EFAULT each)",
        bad.is_none(),
        format_args!("(page, result) = {bad:?}"),
    );
    let r = relinquish(c, 4);
    check(
        "MEM_RELINQUISH of 4 pages -> x0 = 0, x1 = 4",
        r == (0, 4),
        format_args!("{}", Ret(r)),
    );
    let bad = mismatch_each(c, 4, 0);
    check(
        "the 4 relinquished pages read zero when touched again",
        bad.is_none(),
        format_args!(
            "{}",
            match bad {
                Some((i, o, v)) => Miss(Some((i * PAGE + o, v))),
                None => Miss(None),
            }
        ),
    );

    // 512 pages: one 2 MiB block.
    let blk = l.block512;
    let last = blk + BLOCK - PAGE;
    fill(blk, 0x51);
    fill(last, 0x52);
    let r = share(blk, 512);
    check(
        "MEM_SHARE of 512 pages (2 MiB aligned) -> x0 = 0, x1 = 512",
        r == (0, 512),
        format_args!("{}", Ret(r)),
    );
    let (c1, c2) = (
        testdev::check_pattern(blk, 0x51),
        testdev::check_pattern(last, 0x52),
    );
    check(
        "the host reads the first and last of the 512 shared pages",
        c1 == 0 && c2 == 0,
        format_args!("CHECK_PATTERN = {c1}, {c2}"),
    );
    let r = unshare(blk, 512);
    check(
        "MEM_UNSHARE of 512 pages -> x0 = 0, x1 = 512",
        r == (0, 512),
        format_args!("{}", Ret(r)),
    );
    let (c1, c2) = (
        testdev::check_pattern(blk, 0x51),
        testdev::check_pattern(last, 0x52),
    );
    check(
        "the 512 pages are private again (CHECK_PATTERN -> -EFAULT)",
        c1 == EFAULT && c2 == EFAULT,
        format_args!("CHECK_PATTERN = {c1}, {c2}"),
    );
    let r = relinquish(blk, 512);
    check(
        "MEM_RELINQUISH of 512 pages -> x0 = 0, x1 = 512",
        r == (0, 512),
        format_args!("{}", Ret(r)),
    );
    let (m1, m2) = (mismatch(blk, 0), mismatch(last, 0));
    check(
        "the first and last relinquished page read zero when touched again",
        m1.is_none() && m2.is_none(),
        format_args!("first page {}, last page {}", Miss(m1), Miss(m2)),
    );

    // 513 pages: one call does 512; the 513th stays private.
    let blk = l.block513;
    let extra = blk + BLOCK;
    fill(blk, 0x61);
    fill(extra, 0x62);
    let r = share(blk, 513);
    check(
        "MEM_SHARE of 513 pages -> x0 = 0, x1 = 512 (one call does at most 512)",
        r == (0, 512),
        format_args!("{}", Ret(r)),
    );
    let (c1, c2) = (
        testdev::check_pattern(blk, 0x61),
        testdev::check_pattern(extra, 0x62),
    );
    check(
        "after the 513-page share the first page is shared and the 513th still private",
        c1 == 0 && c2 == EFAULT,
        format_args!("CHECK_PATTERN = {c1} (first), {c2} (513th)"),
    );
    let r = unshare(blk, 512);
    check(
        "MEM_UNSHARE of the 512 shared pages -> x0 = 0, x1 = 512",
        r == (0, 512),
        format_args!("{}", Ret(r)),
    );
    let r = relinquish(blk, 513);
    let m1 = mismatch(blk, 0);
    let m2 = mismatch(extra, 0x62);
    check(
        "MEM_RELINQUISH of 513 pages -> x1 = 512: the first page reads zero, the 513th keeps its bytes",
        r == (0, 512) && m1.is_none() && m2.is_none(),
        format_args!(
            "{}; first page {}, 513th page {}",
            Ret(r),
            Miss(m1),
            Miss(m2)
        ),
    );
}

// ---------------------------------------------------------------------
// 3 (continued). Errors.

/// The three memory calls on one argument set: each must give
/// INVALID_PARAMETER with x1 = 0.
fn all_refused(ipa: u64, pages: u64, x3: u64) -> (bool, [u64; 6]) {
    let r = [
        GuestCall::MemShare,
        GuestCall::MemUnshare,
        GuestCall::MemRelinquish,
    ]
    .map(|c| {
        let r = hvc([c.id(), ipa, pages, x3]);
        (r[0], r[1])
    });
    let ok = r.iter().all(|&x| x == (INVALID_PARAMETER, 0));
    (ok, [r[0].0, r[0].1, r[1].0, r[1].1, r[2].0, r[2].1])
}

fn errors(p: &Platform, st: &mut State) {
    let page = st.pages.take(1);
    fill(page, 0x71);
    let (ok, r) = all_refused(page + 0x800, 1, 0);
    let c = testdev::check_pattern(page, 0x71);
    check(
        "MEM_SHARE/UNSHARE/RELINQUISH of an unaligned IPA -> INVALID_PARAMETER, x1 = 0, nothing changed",
        ok && c == EFAULT && mismatch(page, 0x71).is_none(),
        format_args!(
            "(x0, x1) of share, unshare, relinquish = {}, CHECK_PATTERN = {c}",
            Words(&r)
        ),
    );

    // Outside RAM: nothing to share or unshare; a relinquish of an IPA
    // where nothing is mapped has nothing to give back and succeeds (as
    // pKVM's does); beyond the guest's IPA space everything is refused.
    let far = (p.ram_end() + (1 << 30)) & !(PAGE - 1);
    let below = p.ram_base.saturating_sub(1 << 30) & !(PAGE - 1);
    let mut r = [(0u64, 0u64); 6];
    for (i, ipa) in [far, below].into_iter().enumerate() {
        r[3 * i] = share(ipa, 1);
        r[3 * i + 1] = unshare(ipa, 1);
        r[3 * i + 2] = relinquish(ipa, 1);
    }
    let refused = (INVALID_PARAMETER, 0);
    let ok = r.iter().enumerate().all(|(i, &x)| {
        if i % 3 == 2 {
            x == (0, 1)
        } else {
            x == refused
        }
    });
    check(
        "outside guest RAM (1 GiB past its end, 1 GiB below it): MEM_SHARE/UNSHARE -> INVALID_PARAMETER, MEM_RELINQUISH of nothing -> (0, 1)",
        ok,
        format_args!(
            "{far:#x}: {} {} {}; {below:#x}: {} {} {}",
            Ret(r[0]),
            Ret(r[1]),
            Ret(r[2]),
            Ret(r[3]),
            Ret(r[4]),
            Ret(r[5])
        ),
    );
    let beyond = 1u64 << 40;
    let (ok, rb) = all_refused(beyond, 1, 0);
    check(
        "MEM_SHARE/UNSHARE/RELINQUISH beyond the 40-bit IPA space -> INVALID_PARAMETER, x1 = 0",
        ok,
        format_args!("{beyond:#x}: {}", Words(&rb)),
    );

    let tail = p.ram_end() - PAGE;
    let r = share(tail, 2);
    check(
        "MEM_SHARE of a range running past the end of RAM -> INVALID_PARAMETER, x1 = 0",
        r == (INVALID_PARAMETER, 0),
        format_args!("ipa {tail:#x}, 2 pages: {}", Ret(r)),
    );

    let (ok, r) = all_refused(page, 1, 1);
    let c = testdev::check_pattern(page, 0x71);
    check(
        "MEM_SHARE/UNSHARE/RELINQUISH with reserved x3 != 0 -> INVALID_PARAMETER, x1 = 0, nothing changed",
        ok && c == EFAULT && mismatch(page, 0x71).is_none(),
        format_args!(
            "(x0, x1) of share, unshare, relinquish = {}, CHECK_PATTERN = {c}",
            Words(&r)
        ),
    );

    let twice = st.pages.take(1);
    fill(twice, 0x72);
    let r1 = share(twice, 1);
    let r2 = share(twice, 1);
    let c = testdev::check_pattern(twice, 0x72);
    let r3 = unshare(twice, 1);
    check(
        "MEM_SHARE of a page already shared -> INVALID_PARAMETER, x1 = 0 (the page stays shared)",
        r1 == (0, 1) && r2 == (INVALID_PARAMETER, 0) && c == 0 && r3 == (0, 1),
        format_args!(
            "first {}, second {}, CHECK_PATTERN after = {c}, unshare {}",
            Ret(r1),
            Ret(r2),
            Ret(r3)
        ),
    );

    let private = st.pages.take(1);
    fill(private, 0x73);
    let r = unshare(private, 1);
    let c = testdev::check_pattern(private, 0x73);
    check(
        "MEM_UNSHARE of a page not shared -> INVALID_PARAMETER, x1 = 0 (the page stays private)",
        r == (INVALID_PARAMETER, 0) && c == EFAULT,
        format_args!("{}, CHECK_PATTERN = {c}", Ret(r)),
    );
}

// ---------------------------------------------------------------------
// 4. Shared page contents.

fn contents(st: &mut State) {
    let page = st.pages.take(1);
    fill(page, 0xA5);
    let r = share(page, 1);
    check(
        "MEM_SHARE of a page the guest filled with 0xa5 -> 0",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );
    let c = testdev::check_pattern(page, 0xA5);
    check(
        "the host reads 0xa5 in the shared page (CHECK_PATTERN -> 0)",
        c == 0,
        format_args!("CHECK_PATTERN = {c}"),
    );
    let c = testdev::check_pattern(page, 0x00);
    check(
        "CHECK_PATTERN with the wrong byte -> 1 (mismatch)",
        c == 1,
        format_args!("CHECK_PATTERN = {c}"),
    );
    let f = testdev::fill_pattern(page, 0x5A);
    check(
        "the host writes 0x5a into the shared page (FILL_PATTERN -> 0)",
        f == 0,
        format_args!("FILL_PATTERN = {f}"),
    );
    let m = mismatch(page, 0x5A);
    check(
        "the guest reads the host's 0x5a everywhere in the shared page",
        m.is_none(),
        format_args!("{}", Miss(m)),
    );
    let r = unshare(page, 1);
    check(
        "MEM_UNSHARE of the page -> 0",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );
    let c = testdev::check_pattern(page, 0x5A);
    check(
        "after MEM_UNSHARE the host cannot read the page (CHECK_PATTERN -> -EFAULT)",
        c == EFAULT,
        format_args!("CHECK_PATTERN = {c}"),
    );
    let pp = testdev::probe_phys(page);
    if pp == 1 {
        st.refused += 1;
    }
    check(
        "after MEM_UNSHARE the host's direct access is refused (PROBE_PHYS -> 1)",
        pp == 1,
        format_args!("PROBE_PHYS = {pp}"),
    );
    let m = mismatch(page, 0x5A);
    check(
        "the unshared page keeps its contents for the guest (converted in place)",
        m.is_none(),
        format_args!("{}", Miss(m)),
    );
}

// ---------------------------------------------------------------------
// 5. Private memory.

fn private(st: &mut State) {
    let page = st.pages.take(1);
    fill(page, 0xC3);
    let c = testdev::check_pattern(page, 0xC3);
    check(
        "the host cannot read a private page (CHECK_PATTERN -> -EFAULT)",
        c == EFAULT,
        format_args!("CHECK_PATTERN = {c}"),
    );
    let f = testdev::fill_pattern(page, 0x3C);
    check(
        "the host cannot write a private page (FILL_PATTERN -> -EFAULT)",
        f == EFAULT,
        format_args!("FILL_PATTERN = {f}"),
    );
    let pp = testdev::probe_phys(page);
    if pp == 1 {
        st.refused += 1;
    }
    check(
        "the host's direct access to a private page is refused (PROBE_PHYS -> 1)",
        pp == 1,
        format_args!("PROBE_PHYS = {pp}"),
    );
    let u = testdev::punch(page, PAGE);
    check(
        "the host cannot punch a private page out (PUNCH -> negative errno, -EBUSY expected)",
        u < 0,
        format_args!("PUNCH = {u}"),
    );
    let v = testdev::convert(page, PAGE, false);
    check(
        "the host cannot convert a private page to shared on its own (CONVERT -> -EPERM)",
        v == EPERM,
        format_args!("CONVERT = {v}"),
    );
    let m = mismatch(page, 0xC3);
    check(
        "the private page keeps the guest's bytes after all that",
        m.is_none(),
        format_args!("{}", Miss(m)),
    );
}

// ---------------------------------------------------------------------
// 6. Relinquish.

fn relinquished(st: &mut State) {
    let page = st.pages.take(1);
    fill(page, 0x3C);
    let r = relinquish(page, 1);
    check(
        "MEM_RELINQUISH of a private page -> 0",
        r == (0, 1),
        format_args!("{}", Ret(r)),
    );
    let m = mismatch(page, 0);
    check(
        "a relinquished page reads all zero when touched again (a fresh page)",
        m.is_none(),
        format_args!("{}", Miss(m)),
    );
    fill(page, 0x3D);
    let m = mismatch(page, 0x3D);
    check(
        "the fresh page is usable (the guest writes and reads it back)",
        m.is_none(),
        format_args!("{}", Miss(m)),
    );
}

// ---------------------------------------------------------------------
// 7. MMIO.

fn mmio() {
    let id = testdev::id();
    check(
        "the test device's ID register reads MAGIC (PKVMTDEV)",
        id == MAGIC,
        format_args!("ID = {id:#x}"),
    );
    // SAFETY: UNBACKED is an IPA neither RAM nor a device: the access is
    // an MMIO exit the VMM answers (zeros, stores dropped); it is mapped
    // Device in our identity map.
    let (before, after) = unsafe {
        let before = arch::read64(UNBACKED);
        arch::write64(UNBACKED, 0x0bad_c0de_0bad_c0de);
        (before, arch::read64(UNBACKED))
    };
    check(
        "an unbacked IPA (0x0c000000) reads 0 and drops a store, without a fault",
        before == 0 && after == 0,
        format_args!("read {before:#x}, after the store {after:#x}"),
    );
}

// ---------------------------------------------------------------------
// 8. ABORTS().

fn aborts(st: &State) {
    let now = testdev::aborts();
    let counted = now - st.aborts_start;
    check(
        "ABORTS() counted at least every refused PROBE_PHYS",
        st.aborts_start >= 0 && now >= 0 && counted >= st.refused as i64,
        format_args!(
            "ABORTS() {} at start, {now} now; {} PROBE_PHYS refused",
            st.aborts_start, st.refused
        ),
    );
}

// ---------------------------------------------------------------------
// 9. The vCPU.

/// Bits `lo..lo + 4` of `v`.
const fn field(v: u64, lo: u32) -> u64 {
    (v >> lo) & 0xf
}

fn vcpu_checks() {
    let el = (mrs!("CurrentEL") >> 2) & 3;
    let mpidr = mrs!("mpidr_el1");
    check(
        "the boot vCPU runs at EL1 with MPIDR_EL1.Aff0 = 0",
        el == 1 && mpidr & 0xff == 0,
        format_args!("CurrentEL = {el}, MPIDR_EL1 = {mpidr:#x}"),
    );
    let pfr0 = mrs!("id_aa64pfr0_el1");
    check(
        "ID_AA64PFR0_EL1 sanitised: EL2, EL3, RAS, SVE, AMU = 0",
        [8, 12, 28, 32, 44].iter().all(|&lo| field(pfr0, lo) == 0),
        format_args!("{pfr0:#x}"),
    );
    let pfr1 = mrs!("id_aa64pfr1_el1");
    check(
        "ID_AA64PFR1_EL1 sanitised: MTE, SME = 0",
        field(pfr1, 8) == 0 && field(pfr1, 24) == 0,
        format_args!("{pfr1:#x}"),
    );
    // ID_AA64ZFR0_EL1, by encoding (the assembler wants +sve for its name).
    let zfr0 = mrs!("s3_0_c0_c4_4");
    check(
        "ID_AA64ZFR0_EL1 sanitised: 0",
        zfr0 == 0,
        format_args!("{zfr0:#x}"),
    );
    let dfr0 = mrs!("id_aa64dfr0_el1");
    check(
        "ID_AA64DFR0_EL1 sanitised: PMUVer, PMSVer, TraceVer = 0",
        field(dfr0, 8) == 0 && field(dfr0, 32) == 0 && field(dfr0, 4) == 0,
        format_args!("{dfr0:#x}"),
    );
    let isar1 = mrs!("id_aa64isar1_el1");
    check(
        "ID_AA64ISAR1_EL1 sanitised: APA, API, GPA, GPI = 0",
        [4, 8, 24, 28].iter().all(|&lo| field(isar1, lo) == 0),
        format_args!("{isar1:#x}"),
    );

    let log = &arch::UNDEFS[arch::slot()];
    let (before, ..) = log.last();
    let (value, pc) = arch::read_pmcr_expecting_undef();
    let (after, esr, elr) = log.last();
    check(
        "reading PMCR_EL0 -> UNDEFINED exception injected at the mrs (EC 0), the guest carries on",
        after == before + 1 && esr >> 26 == 0 && elr == pc && value == arch::SENTINEL,
        format_args!(
            "{} UNDEFs, ESR_EL1 {esr:#x}, ELR {elr:#x} (mrs at {pc:#x}), register {value:#x}",
            after - before
        ),
    );

    let t0 = arch::ticks();
    arch::wfi();
    let dt = arch::ticks().wrapping_sub(t0);
    check(
        "wfi returns (el2 traps it, the VMM yields)",
        true,
        format_args!("{dt} ticks"),
    );

    let (ok, fpcr, mmio, version) = fp_across_exits(testdev::base());
    check(
        "V0-V31 and FPCR preserved across three HVCs and an MMIO exit",
        ok && mmio == MAGIC && smccc_1_1(version),
        format_args!("FPCR after {fpcr:#x}, MMIO read {mmio:#x}, last HVC x0 {version:#x}"),
    );
}

/// FPCR for the probe: round towards zero (RMode = 0b11) and flush to
/// zero, so a lost FPCR shows.
const FPCR_PROBE: u64 = (0b11 << 22) | (1 << 24);

/// Loads V0–V31 with distinct patterns and FPCR with [`FPCR_PROBE`], makes
/// two HVCs (SMCCC_VERSION), an MMIO load from `mmio` and a third HVC,
/// stores V0–V31 and FPCR back; returns whether all came back intact,
/// FPCR, the MMIO value and the last HVC's x0.
fn fp_across_exits(mmio: u64) -> (bool, u64, u64, u64) {
    let mut pattern = [0u64; 64];
    for (i, w) in pattern.iter_mut().enumerate() {
        *w = 0x0123_4567_89ab_cdef_u64.rotate_left(i as u32 * 7) ^ (i as u64 * 0x0101);
    }
    let mut out = [0u64; 64];
    let fpcr: u64;
    let loaded: u64;
    let version: u64;
    // SAFETY: loads and stores only the two local arrays; the HVCs are
    // discovery calls (registers only) and the load reads a device
    // register. Every register they or el2 may change is declared.
    unsafe {
        core::arch::asm!(
            "mrs x22, fpcr",
            "msr fpcr, x23",
            "ld1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [x20], #64",
            "ld1 {{v4.2d, v5.2d, v6.2d, v7.2d}}, [x20], #64",
            "ld1 {{v8.2d, v9.2d, v10.2d, v11.2d}}, [x20], #64",
            "ld1 {{v12.2d, v13.2d, v14.2d, v15.2d}}, [x20], #64",
            "ld1 {{v16.2d, v17.2d, v18.2d, v19.2d}}, [x20], #64",
            "ld1 {{v20.2d, v21.2d, v22.2d, v23.2d}}, [x20], #64",
            "ld1 {{v24.2d, v25.2d, v26.2d, v27.2d}}, [x20], #64",
            "ld1 {{v28.2d, v29.2d, v30.2d, v31.2d}}, [x20], #64",
            "mov x0, x25",
            "hvc #0",
            "mov x0, x25",
            "hvc #0",
            "ldr x26, [x24]",
            "mov x0, x25",
            "hvc #0",
            "mov x27, x0",
            "mrs x24, fpcr",
            "msr fpcr, x22",
            "st1 {{v0.2d, v1.2d, v2.2d, v3.2d}}, [x21], #64",
            "st1 {{v4.2d, v5.2d, v6.2d, v7.2d}}, [x21], #64",
            "st1 {{v8.2d, v9.2d, v10.2d, v11.2d}}, [x21], #64",
            "st1 {{v12.2d, v13.2d, v14.2d, v15.2d}}, [x21], #64",
            "st1 {{v16.2d, v17.2d, v18.2d, v19.2d}}, [x21], #64",
            "st1 {{v20.2d, v21.2d, v22.2d, v23.2d}}, [x21], #64",
            "st1 {{v24.2d, v25.2d, v26.2d, v27.2d}}, [x21], #64",
            "st1 {{v28.2d, v29.2d, v30.2d, v31.2d}}, [x21], #64",
            out("x22") _,
            in("x23") FPCR_PROBE,
            inout("x24") mmio => fpcr,
            in("x25") SMCCC_VERSION,
            out("x26") loaded,
            out("x27") version,
            inout("x20") pattern.as_ptr() => _,
            inout("x21") out.as_mut_ptr() => _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            clobber_abi("C"),
            options(nostack),
        );
    }
    (out == pattern && fpcr == FPCR_PROBE, fpcr, loaded, version)
}

// ---------------------------------------------------------------------
// 10. PSCI CPU_ON and the second vCPU.

/// What the secondary reports, and the boot vCPU's go-ahead.
struct Mailbox {
    /// Progress: 1 = checks done, 2 = about to CPU_OFF, 3 = CPU_OFF
    /// returned (a failure).
    stage: AtomicU64,
    context: AtomicU64,
    mpidr: AtomicU64,
    el: AtomicU64,
    /// The secondary's HVCs returned the right values with x4..x30 kept.
    calls_ok: AtomicBool,
    /// First problem seen: see [`call_problem`].
    calls_detail: AtomicU64,
    /// Set by the boot vCPU: the secondary may turn itself off.
    go_off: AtomicBool,
}

static MAILBOX: Mailbox = Mailbox {
    stage: AtomicU64::new(0),
    context: AtomicU64::new(0),
    mpidr: AtomicU64::new(0),
    el: AtomicU64::new(0),
    calls_ok: AtomicBool::new(false),
    calls_detail: AtomicU64::new(0),
    go_off: AtomicBool::new(false),
};

/// Seconds the boot vCPU waits for the secondary's steps.
const TIMEOUT_S: u64 = 5;

/// The secondary vCPU's program: record who it is, make three checked
/// HVCs, report, wait for the go-ahead (bounded), CPU_OFF.
pub fn secondary(context: u64) -> ! {
    let m = &MAILBOX;
    m.context.store(context, Ordering::Relaxed);
    m.mpidr.store(mrs!("mpidr_el1"), Ordering::Relaxed);
    m.el.store((mrs!("CurrentEL") >> 2) & 3, Ordering::Relaxed);
    let calls: [(_, Expect); 3] = [
        ([SMCCC_VERSION, 0, 0, 0], |r| smccc_1_1(r[0])),
        ([PSCI_VERSION, 0, 0, 0], |r| r[0] == PSCI_1_1),
        ([GuestCall::HypMeminfo.id(), 0, 0, 0], |r| {
            r[0] == PAGE && r[1] == 1
        }),
    ];
    let mut ok = true;
    let mut detail = 0;
    for (i, (args, good)) in calls.iter().enumerate() {
        let c = checked_call(Via::Hvc, *args);
        let this = good(&c.ret) && c.preserved();
        if !this && ok {
            detail = (i as u64) << 32 | c.clobbered.map_or(0, |(n, ..)| n as u64 + 1);
        }
        ok &= this;
    }
    m.calls_ok.store(ok, Ordering::Relaxed);
    m.calls_detail.store(detail, Ordering::Relaxed);
    m.stage.store(1, Ordering::Release);
    // Bounded: if the boot vCPU never answers, turn off anyway.
    let _ = arch::wait_for(4 * TIMEOUT_S, || m.go_off.load(Ordering::Acquire));
    m.stage.store(2, Ordering::Release);
    let _ = hvc([PSCI_CPU_OFF, 0, 0, 0]);
    m.stage.store(3, Ordering::Release);
    loop {
        arch::wfi();
    }
}

/// Whether a call's x0..x3 are right.
type Expect = fn(&[u64; 4]) -> bool;

/// Decodes the secondary's first problem: `call index << 32 | (register
/// + 1)`, register part 0 for a wrong result (registers kept).
fn call_problem(detail: u64) -> (usize, Option<u64>) {
    let reg = detail & 0xffff_ffff;
    ((detail >> 32) as usize, reg.checked_sub(1))
}

fn cpu_on(mpidr: u64, entry: u64, context: u64) -> u64 {
    hvc([PSCI_CPU_ON, mpidr, entry, context])[0]
}

fn affinity_info(mpidr: u64) -> u64 {
    hvc([PSCI_AFFINITY_INFO, mpidr, 0, 0])[0]
}

fn psci_cpu_checks(p: &Platform) {
    let entry = secondary_entry as *const () as u64;
    let me = mrs!("mpidr_el1") & 0xff;
    let bad = if p.cpus().contains(&7) { 0xff } else { 7 };
    let r = cpu_on(bad, entry, 0);
    check(
        "CPU_ON of an MPIDR that is not a vCPU of this VM -> INVALID_PARAMETERS",
        r == PSCI_INVALID_PARAMETERS,
        format_args!("MPIDR {bad:#x}: x0 = {r:#x}"),
    );
    let r = cpu_on(me, entry, 0);
    check(
        "CPU_ON of the running boot vCPU -> ALREADY_ON",
        r == PSCI_ALREADY_ON,
        format_args!("x0 = {r:#x}"),
    );
    if let Some(&other) = p.cpus().iter().find(|&&c| c != me) {
        let outside = p.ram_end() + (1 << 30);
        let r = cpu_on(other, outside, 0);
        check(
            "CPU_ON with an entry point outside guest RAM -> INVALID_ADDRESS (the VMM's answer), the target stays off",
            r == PSCI_INVALID_ADDRESS && affinity_info(other) == AFF_OFF,
            format_args!("entry {outside:#x}: x0 = {r:#x}"),
        );
    } else {
        skip(
            "CPU_ON with an entry point outside guest RAM -> INVALID_ADDRESS",
            "one vCPU",
        );
    }
    let a = affinity_info(me);
    check(
        "AFFINITY_INFO of the boot vCPU -> 0 (ON)",
        a == AFF_ON,
        format_args!("x0 = {a:#x}"),
    );

    let names = [
        "CPU_ON of vCPU 1 with a context id -> 0, and it reaches its entry",
        "vCPU 1 runs at EL1 with MPIDR_EL1.Aff0 = 1 and the context id in x0",
        "vCPU 1's HVCs are answered with x4-x30 preserved",
        "AFFINITY_INFO of the running vCPU 1 -> 0 (ON)",
        "CPU_ON of the running vCPU 1 -> ALREADY_ON",
        "after vCPU 1's CPU_OFF, AFFINITY_INFO -> 1 (OFF)",
    ];
    let Some(&target) = p.cpus().iter().find(|&&c| c != me) else {
        for name in names {
            skip(name, "one vCPU");
        }
        return;
    };
    let m = &MAILBOX;
    let context = 0x5ec0_0000_c0ff_ee01;
    m.go_off.store(false, Ordering::Relaxed);
    m.stage.store(0, Ordering::Relaxed);
    // The secondary loads the MMU configuration with its MMU off.
    arch::clean_to_poc(super::entry::MMU.get() as u64, 64);
    let r = cpu_on(target, entry, context);
    let up = r == 0 && arch::wait_for(TIMEOUT_S, || m.stage.load(Ordering::Acquire) >= 1);
    let stage = m.stage.load(Ordering::Acquire);
    let started = check(
        names[0],
        up,
        format_args!("MPIDR {target:#x}: CPU_ON x0 = {r:#x}, stage {stage} after {TIMEOUT_S} s"),
    );
    if !started {
        for name in &names[1..] {
            skip(name, "vCPU 1 did not start");
        }
        return;
    }
    let (ctx, mpidr, el) = (
        m.context.load(Ordering::Relaxed),
        m.mpidr.load(Ordering::Relaxed),
        m.el.load(Ordering::Relaxed),
    );
    check(
        names[1],
        el == 1 && mpidr & 0xff == target & 0xff && ctx == context,
        format_args!(
            "EL{el}, MPIDR_EL1 {mpidr:#x} (want Aff0 {target}), x0 {ctx:#x} (want {context:#x})"
        ),
    );
    let (call, reg) = call_problem(m.calls_detail.load(Ordering::Relaxed));
    let what = ["SMCCC_VERSION", "PSCI_VERSION", "HYP_MEMINFO"];
    let name = what.get(call).copied().unwrap_or("?");
    match reg {
        Some(n) => check(
            names[2],
            m.calls_ok.load(Ordering::Relaxed),
            format_args!("{name}: x{n} not preserved"),
        ),
        None => check(
            names[2],
            m.calls_ok.load(Ordering::Relaxed),
            format_args!("{name}: wrong result"),
        ),
    };
    let a = affinity_info(target);
    check(names[3], a == AFF_ON, format_args!("x0 = {a:#x}"));
    let r = cpu_on(target, entry, context);
    check(names[4], r == PSCI_ALREADY_ON, format_args!("x0 = {r:#x}"));
    m.go_off.store(true, Ordering::Release);
    let off = arch::wait_for(TIMEOUT_S, || affinity_info(target) == AFF_OFF);
    let stage = m.stage.load(Ordering::Acquire);
    check(
        names[5],
        off && stage == 2,
        format_args!(
            "AFFINITY_INFO = {:#x} after {TIMEOUT_S} s, secondary stage {stage} (2 = called CPU_OFF, 3 = it returned)",
            affinity_info(target)
        ),
    );
}

// ---------------------------------------------------------------------
// 11. The virtual GIC (emulated by el2).

/// Reads a 32-bit GIC register.
fn gic_read(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: a register of the virtual GIC (platform layout), which el2
    // emulates: the load has no effect on our memory. One plain `ldr`
    // (no writeback), so the abort carries a syndrome el2 can emulate.
    unsafe {
        core::arch::asm!("ldr {v:w}, [{a}]", v = out(reg) v, a = in(reg) addr,
            options(nostack, preserves_flags))
    };
    v
}

/// Writes a 32-bit GIC register.
fn gic_write(addr: u64, v: u32) {
    // SAFETY: as `gic_read`; one plain `str` to an emulated register.
    unsafe {
        core::arch::asm!("str {v:w}, [{a}]", v = in(reg) v, a = in(reg) addr,
            options(nostack, preserves_flags))
    };
}

/// Writes a system register by name (the GIC CPU interface, the virtual
/// timer).
macro_rules! sysreg_write {
    ($reg:literal, $v:expr) => {
        // SAFETY: a virtual CPU interface register (ICV, with el2's
        // HCR_EL2.IMO), a trapped SGI register or this vCPU's virtual
        // timer: it changes only this guest's own interrupt state.
        unsafe {
            core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) $v as u64,
                options(nostack, preserves_flags))
        }
    };
}

const GICD: u64 = host_interface::platform::GIC_DIST;
const GICR: u64 = host_interface::platform::GIC_REDIST;
const SGI_BASE: u64 = GICR + 0x1_0000;
const SPURIOUS: u64 = 1023;

/// Acknowledges the highest-priority pending interrupt (ICC_IAR1_EL1)
/// and ends it (ICC_EOIR1_EL1); returns its INTID or 1023.
fn ack_eoi() -> u64 {
    let intid = mrs!("icc_iar1_el1") & 0xff_ffff;
    if intid != SPURIOUS {
        sysreg_write!("icc_eoir1_el1", intid);
    }
    intid
}

/// Waits (bounded) for the virtual CPU interface to show `intid` as the
/// highest-priority pending interrupt.
fn wait_pending(intid: u64) -> u64 {
    let mut seen = SPURIOUS;
    arch::wait_for(TIMEOUT_S, || {
        seen = mrs!("icc_hppir1_el1") & 0xff_ffff;
        seen == intid
    });
    seen
}

fn gic_checks(p: &Platform) {
    let pidr2 = gic_read(GICD + 0xffe8);
    let typer = gic_read(GICD + 0x4);
    let rtyper = gic_read(GICR + 0x8);
    let last = gic_read(GICR + 0x20000 * (p.cpus().len() as u64 - 1) + 0x8);
    check(
        "virtual GICv3: distributor and redistributors (one per vCPU, the last marked Last) at the platform's addresses",
        pidr2 & 0xf0 == 0x30
            && typer & 0x1f >= 2
            && rtyper & 0x10 == u32::from(p.cpus().len() == 1) << 4
            && last & 0x10 != 0,
        format_args!(
            "GICD_PIDR2 {pidr2:#x}, GICD_TYPER {typer:#x}, GICR_TYPER {rtyper:#x}, last {last:#x}"
        ),
    );

    // The distributor on, this vCPU's redistributor awake, SGI 1 and the
    // timer's PPI 27 enabled, every priority unmasked.
    gic_write(GICD, 2);
    gic_write(GICR + 0x14, 0);
    gic_write(SGI_BASE + 0x400, 0);
    gic_write(SGI_BASE + 0x418, 0x8080_8080);
    gic_write(SGI_BASE + 0x100, (1 << 1) | (1 << 27));
    sysreg_write!("icc_pmr_el1", 0xffu64);
    sysreg_write!("icc_igrpen1_el1", 1u64);
    arch::isb();

    // SGI 1 to this vCPU (target list bit 0 = Aff0 0).
    let me = mrs!("mpidr_el1") & 0xff;
    sysreg_write!("icc_sgi1r_el1", (1u64 << 24) | (1 << me));
    arch::isb();
    let seen = wait_pending(1);
    let took = ack_eoi();
    let after = mrs!("icc_hppir1_el1") & 0xff_ffff;
    check(
        "an SGI to itself (ICC_SGI1R_EL1, trapped to el2) is pending, acknowledged and ended through the virtual CPU interface",
        seen == 1 && took == 1 && after == SPURIOUS,
        format_args!("HPPIR {seen}, IAR {took}, then HPPIR {after}"),
    );

    // The virtual timer: PPI 27 reaches the guest as a hardware interrupt.
    let hz = arch::hz();
    let cval = arch::ticks() + hz / 1000;
    sysreg_write!("cntv_cval_el0", cval);
    sysreg_write!("cntv_ctl_el0", 1u64);
    arch::isb();
    let seen = wait_pending(27);
    let intid = mrs!("icc_iar1_el1") & 0xff_ffff;
    sysreg_write!("cntv_ctl_el0", 0u64);
    arch::isb();
    if intid != SPURIOUS {
        sysreg_write!("icc_eoir1_el1", intid);
    }
    let after = mrs!("icc_hppir1_el1") & 0xff_ffff;
    check(
        "the virtual timer's expiry reaches the guest as PPI 27 (hardware-mapped), and stops once acknowledged and the timer disabled",
        seen == 27 && intid == 27 && after == SPURIOUS,
        format_args!("HPPIR {seen}, IAR {intid}, then HPPIR {after}"),
    );

    // Nonsense in every register: el2 keeps running and the GIC still
    // answers; then everything is switched off again.
    for off in (0..0x1_0000u64).step_by(4) {
        gic_write(GICD + off, 0xffff_ffff);
    }
    for off in (0..0x2_0000u64).step_by(4) {
        gic_write(GICR + off, 0xffff_ffff);
    }
    for _ in 0..10_000 {
        sysreg_write!("icc_sgi1r_el1", (1u64 << 40) | (5 << 24));
        sysreg_write!("icc_sgi1r_el1", (6u64 << 24) | (1 << me));
    }
    let typer2 = gic_read(GICD + 0x4);
    let pidr2b = gic_read(GICR + 0xffe8);
    for n in 0..32u64 {
        gic_write(GICD + 0x180 + 4 * n, 0xffff_ffff);
        gic_write(GICD + 0x280 + 4 * n, 0xffff_ffff);
        gic_write(GICD + 0x380 + 4 * n, 0xffff_ffff);
    }
    gic_write(SGI_BASE + 0x180, 0xffff_ffff);
    gic_write(SGI_BASE + 0x280, 0xffff_ffff);
    gic_write(SGI_BASE + 0x380, 0xffff_ffff);
    gic_write(GICD, 0);
    arch::isb();
    let left = mrs!("icc_hppir1_el1") & 0xff_ffff;
    check(
        "all-ones written to every distributor and redistributor register and 20000 SGIs: the GIC still answers, and is quiet once disabled",
        typer2 == typer && pidr2b & 0xf0 == 0x30 && left == SPURIOUS,
        format_args!("GICD_TYPER {typer2:#x}, GICR_PIDR2 {pidr2b:#x}, HPPIR after {left}"),
    );
    sysreg_write!("icc_igrpen1_el1", 0u64);
}
