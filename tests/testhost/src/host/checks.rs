//! The conformance suite the test host runs against el2.
//!
//! Groups, in order (each line of output is one check):
//!
//! 1. **boot**: EL1, PSCI over SMC, the hypervisor's `no-map` regions in
//!    the device tree (el2's image and the top-of-RAM carve-out).
//! 2. **host calls** (HVC, `host_interface::abi`): Version (with and
//!    without the SVE hint bit); share/unshare with the hypervisor and the
//!    pkvm.md §6 states and errors that apply to the host (PageState after
//!    each step; share twice → -EPERM; unshare of a non-shared page →
//!    -EPERM; share/unshare of hypervisor memory → -EPERM); bad arguments
//!    (pfn outside RAM, an MMIO pfn, a byte address passed as a pfn,
//!    u64::MAX) → -EINVAL; unknown ids → NOT_SUPPORTED with x1..x3 left
//!    alone.
//! 3. **hypervisor memory**: loads, stores and an instruction fetch on both
//!    hypervisor regions, and a load from an address that is neither RAM
//!    nor a device: each must be an injected synchronous external abort
//!    (EC = current-EL abort, FSC 0x10, S1PTW marker, FAR = the address,
//!    WnR for stores) that the vector counts and skips; the loaded register
//!    keeps its old value; the host keeps running and its own memory stays
//!    accessible (also a page shared with the hypervisor).
//! 4. **PSCI relay** (SMC): PSCI_VERSION, FEATURES, unknown SMCs and a
//!    non-zero immediate → NOT_SUPPORTED; CPU_ON with a bad MPIDR →
//!    INVALID_PARAMETERS, with an entry outside RAM → INVALID_ADDRESS, on
//!    the boot CPU → ALREADY_ON; then the second CPU: CPU_ON → it runs at
//!    EL1 with its context id in x0, makes a host call and takes an
//!    injected abort on hypervisor memory (so it runs under stage-2);
//!    CPU_ON again → ALREADY_ON; CPU_OFF → AFFINITY_INFO says OFF; a
//!    second CPU_ON with another context works. Skipped with one CPU.
//! 5. **FP/SIMD state**: V0–V31 and FPCR hold a pattern across a host
//!    call, a trapped SMC and an injected abort (el2 runs Rust code that
//!    may use them; it must save and restore the host's).
//! 6. **ITS and LPI tables** ([`super::its`]): el2's mediation of the
//!    GICv3 ITS and the redistributors' LPI registers.
//! 7. `testhost.fail` in bootargs: one check that fails on purpose.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host_interface::abi::{
    ABI_VERSION, HOST_CALL_BASE, HostCall, SMCCC_NOT_SUPPORTED, SMCCC_SVE_HINT, errno, page_state,
};
use smccc::psci;

use super::Platform;
use super::arch::{
    self, ABORTS, SENTINEL, hvc, mrs, println, probe_exec, probe_read, probe_write, smc, smc_imm1,
};
use super::entry::secondary_entry;

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Checks that passed.
    pub passed: u32,
    /// Checks that failed.
    pub failed: u32,
    /// Checks that could not run on this machine.
    pub skipped: u32,
}

impl Summary {
    pub(super) fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
            println!("testhost: ok   {name}");
        } else {
            self.failed += 1;
            println!("testhost: FAIL {name}: {detail}");
        }
    }

    pub(super) fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        println!("testhost: skip {name}: {why}");
    }
}

/// SMCCC/PSCI status values.
const NOT_SUPPORTED: u64 = SMCCC_NOT_SUPPORTED as u64;
const INVALID_PARAMETERS: u64 = -2i64 as u64;
const ALREADY_ON: u64 = -4i64 as u64;
const INVALID_ADDRESS: u64 = -9i64 as u64;
const EPERM: u64 = (-errno::EPERM) as u64;
const EINVAL: u64 = (-errno::EINVAL) as u64;

fn call(c: HostCall, a1: u64) -> [u64; 6] {
    hvc([c.id(), a1, 0, 0, 0, 0])
}

/// A page-aligned page of our own memory to share.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SHARE_PAGE: Page = Page([0; 4096]);

/// Expected syndrome of an injected abort.
fn abort_ok(esr: u64, far: u64, addr: u64, ec: u64, write: bool) -> bool {
    let ec_ok = esr >> 26 == ec;
    let fsc_ok = esr & 0x3f == 0x10;
    let s1ptw = esr & (1 << 7) != 0;
    let wnr_ok = ec != 0x25 || ((esr >> 6) & 1 != 0) == write;
    ec_ok && fsc_ok && s1ptw && wnr_ok && far == addr
}

/// Runs an access expected to be aborted on this CPU; returns whether
/// exactly one abort with the expected syndrome was taken, and a detail.
fn expect_abort(access: impl FnOnce() -> u64, addr: u64, ec: u64, write: bool) -> (bool, [u64; 4]) {
    let log = &ABORTS[arch::slot()];
    let (before, ..) = log.last();
    let value = access();
    let (after, esr, far, elr) = log.last();
    let ok = after == before + 1
        && abort_ok(esr, far, addr, ec, write)
        && (write || ec != 0x25 || value == SENTINEL);
    (ok, [after - before, esr, far, elr])
}

/// Runs the whole suite.
pub fn run(p: &Platform) -> Summary {
    let mut s = Summary::default();
    boot_checks(&mut s, p);
    host_call_checks(&mut s, p);
    hyp_memory_checks(&mut s, p);
    psci_checks(&mut s, p);
    fp_checks(&mut s, p);
    super::its::run(&mut s, p);
    if p.inject_failure {
        s.check(
            "deliberate failure (testhost.fail on the command line)",
            false,
            format_args!("requested"),
        );
    }
    s
}

fn boot_checks(s: &mut Summary, p: &Platform) {
    let el = (mrs!("CurrentEL") >> 2) & 3;
    s.check(
        "boot CPU runs at EL1",
        el == 1,
        format_args!("CurrentEL = {el}"),
    );
    s.check(
        "device tree: PSCI method is smc",
        p.psci_smc,
        format_args!("method is not smc"),
    );
    let ram_end = p.ram().iter().map(|(b, sz)| b + sz).max().unwrap_or(0);
    let top = p.hyp().iter().any(|(b, sz)| b + sz == ram_end);
    s.check(
        "device tree: hypervisor memory reserved no-map (image + top-of-RAM carve-out)",
        p.hyp().len() >= 2 && top,
        format_args!("no-map regions {:x?}, RAM ends at {ram_end:#x}", p.hyp()),
    );
}

fn host_call_checks(s: &mut Summary, p: &Platform) {
    let r = call(HostCall::Version, 0);
    s.check(
        "Version: x0 = SUCCESS, x1 = 0, x2 = ABI_VERSION",
        r[0] == 0 && r[1] == 0 && r[2] == ABI_VERSION,
        format_args!("{r:x?}"),
    );
    let r = hvc([HostCall::Version.id() | SMCCC_SVE_HINT, 0, 0, 0, 0, 0]);
    s.check(
        "Version with the SMCCC SVE hint bit set",
        r[0] == 0 && r[2] == ABI_VERSION,
        format_args!("{r:x?}"),
    );
    // The same calls through host_interface's real-HVC conduit, the one the
    // host-side layer (guest_memfd model, VM layer) runs on.
    {
        use host_interface::hypervisor::{CallError, Hypervisor, hvc::Hvc};
        let mut hv = Hvc;
        let v = hv.call(HostCall::Version, &[]);
        let bad = hv.call(HostCall::ShareHyp, &[u64::MAX]);
        s.check(
            "host_interface::hypervisor::hvc::Hvc: Version and an EINVAL",
            v.is_ok_and(|v| v[0] == ABI_VERSION) && bad == Err(CallError::Errno(22)),
            format_args!("{v:x?} {bad:x?}"),
        );
    }

    let page = &raw mut SHARE_PAGE as u64;
    let pfn = page >> 12;
    let state = |pfn: u64| {
        let r = call(HostCall::PageState, pfn);
        (r[0], r[1], r[2], r[3], r[4], r[5])
    };
    let (o, so, sb, n) = (
        page_state::OWNED,
        page_state::SHARED_OWNED,
        page_state::SHARED_BORROWED,
        page_state::NOPAGE,
    );
    let st = state(pfn);
    s.check(
        "PageState of a host page: host O, hyp N, owner host, no shares/pins",
        st == (0, 0, o, n, 0, 0),
        format_args!("{st:x?}"),
    );
    let r = call(HostCall::ShareHyp, pfn);
    s.check(
        "ShareHyp of a host page -> 0",
        r[..2] == [0, 0],
        format_args!("{r:x?}"),
    );
    let st = state(pfn);
    s.check(
        "PageState after ShareHyp: host SO, hyp SB",
        st == (0, 0, so, sb, 0, 0),
        format_args!("{st:x?}"),
    );
    let r = call(HostCall::ShareHyp, pfn);
    s.check(
        "ShareHyp twice -> -EPERM",
        r[..2] == [0, EPERM],
        format_args!("{r:x?}"),
    );
    let st = state(pfn);
    s.check(
        "PageState unchanged by the failed share",
        st == (0, 0, so, sb, 0, 0),
        format_args!("{st:x?}"),
    );
    // The host keeps its access to a page it shares.
    let (before, ..) = ABORTS[0].last();
    // SAFETY: our own page, which nothing else uses.
    unsafe { probe_write(page + 8, 0x1234_5678) };
    let v = probe_read(page + 8);
    let (after, ..) = ABORTS[0].last();
    s.check(
        "host still reads and writes a page it shares with the hypervisor",
        v == 0x1234_5678 && after == before,
        format_args!("read {v:#x}, {} aborts", after - before),
    );
    let r = call(HostCall::UnshareHyp, pfn);
    s.check("UnshareHyp -> 0", r[..2] == [0, 0], format_args!("{r:x?}"));
    let st = state(pfn);
    s.check(
        "PageState after UnshareHyp: host O, hyp N",
        st == (0, 0, o, n, 0, 0),
        format_args!("{st:x?}"),
    );
    let r = call(HostCall::UnshareHyp, pfn);
    s.check(
        "UnshareHyp of a page not shared -> -EPERM",
        r[..2] == [0, EPERM],
        format_args!("{r:x?}"),
    );

    for (i, &(base, size)) in p.hyp().iter().enumerate().take(2) {
        for hpfn in [base >> 12, (base + size - 1) >> 12] {
            let st = state(hpfn);
            s.check(
                "PageState of hypervisor memory: host N, hyp O, owner hypervisor",
                st == (0, 0, n, o, 1, 0),
                format_args!("region {i} pfn {hpfn:#x}: {st:x?}"),
            );
        }
        let r = call(HostCall::ShareHyp, base >> 12);
        s.check(
            "ShareHyp of hypervisor memory -> -EPERM",
            r[..2] == [0, EPERM],
            format_args!("region {i}: {r:x?}"),
        );
        let r = call(HostCall::UnshareHyp, base >> 12);
        s.check(
            "UnshareHyp of hypervisor memory -> -EPERM",
            r[..2] == [0, EPERM],
            format_args!("region {i}: {r:x?}"),
        );
    }

    let ram_end = p.ram().iter().map(|(b, sz)| b + sz).max().unwrap_or(0);
    let bad: [(&str, u64); 5] = [
        ("pfn just past the end of RAM", ram_end >> 12),
        ("pfn of an MMIO page (the UART, pfn 0x9000)", 0x9000),
        ("a byte address (unaligned as a pfn)", page + 0x123),
        ("u64::MAX (overflowing)", u64::MAX),
        ("pfn 0", 0),
    ];
    for (what, arg) in bad {
        let a = call(HostCall::ShareHyp, arg);
        let b = call(HostCall::UnshareHyp, arg);
        let c = call(HostCall::PageState, arg);
        s.check(
            "ShareHyp/UnshareHyp/PageState of a non-RAM pfn -> -EINVAL",
            a[..2] == [0, EINVAL] && b[..2] == [0, EINVAL] && c[..2] == [0, EINVAL],
            format_args!("{what}: {a:x?} {b:x?} {c:x?}"),
        );
    }

    let unknown: [u64; 5] = [
        HOST_CALL_BASE + HostCall::ALL.len() as u64,
        HOST_CALL_BASE + 0xffff,
        0x8600_0000,
        0x8400_0000, // PSCI_VERSION, but over HVC: not el2's conduit
        0,
    ];
    for id in unknown {
        let r = hvc([id, 0x11, 0x22, 0x33, 0, 0]);
        s.check(
            "unknown host call id -> NOT_SUPPORTED, x1..x3 untouched",
            r[0] == NOT_SUPPORTED && r[1..4] == [0x11, 0x22, 0x33],
            format_args!("id {id:#x}: {r:x?}"),
        );
    }
}

/// An address that is neither RAM nor inside any `reg` of the tree: the
/// first gigabyte boundary at or after the end of RAM (below 512 GiB).
fn hole(p: &Platform) -> Option<u64> {
    let ram_end = p.ram().iter().map(|(b, sz)| b + sz).max()?;
    let a = ram_end.next_multiple_of(1 << 30);
    let used = p
        .regs()
        .iter()
        .any(|&(b, sz)| b <= a && a < b.saturating_add(sz.max(1)));
    (a < (1 << 39) && !used).then_some(a)
}

fn hyp_memory_checks(s: &mut Summary, p: &Platform) {
    let regions = p.hyp();
    for (i, &(base, size)) in regions.iter().enumerate().take(2) {
        let last = base + size - 8;
        for (what, addr) in [("first word", base), ("last word", last)] {
            let (ok, d) = expect_abort(|| probe_read(addr), addr, 0x25, false);
            s.check(
                "load from hypervisor memory -> injected abort, value not leaked",
                ok,
                format_args!("region {i} {what} {addr:#x}: [n, esr, far, elr] = {d:x?}"),
            );
        }
        let addr = base + 0x40;
        let (ok, d) = expect_abort(
            || {
                // SAFETY: hypervisor memory: the store faults (that is the
                // test) and changes nothing.
                unsafe { probe_write(addr, 0xbad) };
                0
            },
            addr,
            0x25,
            true,
        );
        s.check(
            "store to hypervisor memory -> injected abort (WnR)",
            ok,
            format_args!("region {i} {addr:#x}: {d:x?}"),
        );
        let (ok, d) = expect_abort(
            || {
                // SAFETY: hypervisor memory: the fetch faults (that is the
                // test) and the vector returns here.
                unsafe { probe_exec(base) };
                0
            },
            base,
            0x21,
            false,
        );
        s.check(
            "instruction fetch from hypervisor memory -> injected instruction abort",
            ok,
            format_args!("region {i} {base:#x}: {d:x?}"),
        );
    }
    match hole(p) {
        Some(addr) => {
            let (ok, d) = expect_abort(|| probe_read(addr), addr, 0x25, false);
            s.check(
                "load from an address that is neither RAM nor MMIO -> injected abort",
                ok,
                format_args!("{addr:#x}: {d:x?}"),
            );
        }
        None => s.skip(
            "load from an address that is neither RAM nor MMIO",
            "no such address below 512 GiB",
        ),
    }
    let (before, ..) = ABORTS[0].last();
    let r = call(HostCall::Version, 0);
    let dt = probe_read(p.dtb.0);
    let (after, ..) = ABORTS[0].last();
    s.check(
        "after the aborts the host keeps running: host call and own memory OK",
        r[0] == 0 && r[2] == ABI_VERSION && dt != SENTINEL && after == before,
        format_args!("{r:x?}, dtb word {dt:#x}, {} new aborts", after - before),
    );
}

// ---------------------------------------------------------------------
// The secondary CPU.

/// What the secondary reports.
struct Mailbox {
    /// Bumped once per start, after the other fields.
    starts: AtomicU64,
    context: AtomicU64,
    el: AtomicU64,
    version_ok: AtomicBool,
    abort_ok: AtomicBool,
    /// Set by the boot CPU: the secondary may power off now.
    go_off: AtomicBool,
    /// The hypervisor address the secondary probes.
    probe: AtomicU64,
}

static MAILBOX: Mailbox = Mailbox {
    starts: AtomicU64::new(0),
    context: AtomicU64::new(0),
    el: AtomicU64::new(0),
    version_ok: AtomicBool::new(false),
    abort_ok: AtomicBool::new(false),
    go_off: AtomicBool::new(false),
    probe: AtomicU64::new(0),
};

/// The secondary CPU's program: report, take one injected abort, wait for
/// permission, power off.
pub fn secondary(context: u64) -> ! {
    let m = &MAILBOX;
    m.el.store((mrs!("CurrentEL") >> 2) & 3, Ordering::Relaxed);
    m.context.store(context, Ordering::Relaxed);
    let r = call(HostCall::Version, 0);
    m.version_ok
        .store(r[0] == 0 && r[2] == ABI_VERSION, Ordering::Relaxed);
    let addr = m.probe.load(Ordering::Relaxed);
    let (ok, _) = expect_abort(|| probe_read(addr), addr, 0x25, false);
    m.abort_ok.store(ok, Ordering::Relaxed);
    m.starts.fetch_add(1, Ordering::Release);
    while !m.go_off.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let _ = smc([u64::from(psci::PSCI_CPU_OFF), 0, 0, 0]);
    // CPU_OFF does not return on success.
    loop {
        core::hint::spin_loop();
    }
}

fn psci_checks(s: &mut Summary, p: &Platform) {
    let v = smc([u64::from(psci::PSCI_VERSION), 0, 0, 0])[0];
    s.check(
        "PSCI_VERSION over a trapped SMC -> 1.0 or later",
        (0x1_0000..0x10_0000).contains(&v),
        format_args!("{v:#x}"),
    );
    let f = smc([
        u64::from(psci::PSCI_FEATURES),
        u64::from(psci::PSCI_CPU_ON_64),
        0,
        0,
    ])[0];
    s.check(
        "PSCI_FEATURES(CPU_ON) -> supported",
        f == 0,
        format_args!("{f:#x}"),
    );
    let r = smc([0xC200_0001, 0, 0, 0])[0];
    s.check(
        "unknown SMC (SiP service) -> NOT_SUPPORTED",
        r == NOT_SUPPORTED,
        format_args!("{r:#x}"),
    );
    let r = smc([0x1_8400_0000, 0, 0, 0])[0];
    s.check(
        "SMC id with bits 63:32 set -> NOT_SUPPORTED",
        r == NOT_SUPPORTED,
        format_args!("{r:#x}"),
    );
    let r = smc_imm1(u64::from(psci::PSCI_VERSION));
    s.check(
        "SMC with a non-zero immediate -> NOT_SUPPORTED",
        r == NOT_SUPPORTED,
        format_args!("{r:#x}"),
    );

    let entry = secondary_entry as *const () as u64;
    let cpu_on = |mpidr: u64, entry: u64, ctx: u64| {
        smc([u64::from(psci::PSCI_CPU_ON_64), mpidr, entry, ctx])[0]
    };
    let me = mrs!("mpidr_el1") & 0xff_00ff_ffff;
    let r = cpu_on(0xff_00ff_fff0, entry, 0);
    s.check(
        "CPU_ON of an MPIDR not in the device tree -> INVALID_PARAMETERS",
        r == INVALID_PARAMETERS,
        format_args!("{r:#x}"),
    );
    let r = cpu_on(me, entry, 0);
    s.check(
        "CPU_ON of the running boot CPU -> ALREADY_ON",
        r == ALREADY_ON,
        format_args!("{r:#x}"),
    );

    let Some(&other) = p.cpus().iter().find(|&&m| m != me) else {
        for what in [
            "CPU_ON with an entry outside RAM",
            "secondary CPU at EL1 under stage-2",
            "CPU_OFF and a second CPU_ON",
        ] {
            s.skip(what, "only one CPU");
        }
        return;
    };
    let r = cpu_on(other, 0x1000, 0);
    s.check(
        "CPU_ON with an entry outside RAM -> INVALID_ADDRESS",
        r == INVALID_ADDRESS,
        format_args!("{r:#x}"),
    );

    let probe = p.hyp().first().map_or(0, |&(b, _)| b + 0x80);
    MAILBOX.probe.store(probe, Ordering::Relaxed);
    for (round, ctx) in [(1u64, 0x5ec0_0001u64), (2, 0x5ec0_0002)] {
        MAILBOX.go_off.store(false, Ordering::Relaxed);
        let r = cpu_on(other, entry, ctx);
        s.check(
            "CPU_ON of the second CPU -> SUCCESS",
            r == 0,
            format_args!("round {round}: {r:#x}"),
        );
        let up = arch::wait_for(2_000_000, || {
            MAILBOX.starts.load(Ordering::Acquire) >= round
        });
        s.check(
            "second CPU reaches the test host",
            up,
            format_args!("round {round}: no report within 2 s"),
        );
        if !up {
            return;
        }
        let m = &MAILBOX;
        let (el, got) = (
            m.el.load(Ordering::Relaxed),
            m.context.load(Ordering::Relaxed),
        );
        s.check(
            "second CPU runs at EL1 with its context id in x0",
            el == 1 && got == ctx,
            format_args!("round {round}: EL{el}, x0 = {got:#x}, want {ctx:#x}"),
        );
        s.check(
            "second CPU makes a host call",
            m.version_ok.load(Ordering::Relaxed),
            format_args!("round {round}"),
        );
        s.check(
            "second CPU is under stage-2: its load from hypervisor memory is aborted",
            m.abort_ok.load(Ordering::Relaxed),
            format_args!("round {round}: probe {probe:#x}"),
        );
        let r = cpu_on(other, entry, ctx);
        s.check(
            "CPU_ON of the running second CPU -> ALREADY_ON",
            r == ALREADY_ON,
            format_args!("round {round}: {r:#x}"),
        );
        MAILBOX.go_off.store(true, Ordering::Release);
        let aff = |m: u64| smc([u64::from(psci::PSCI_AFFINITY_INFO_64), m, 0, 0])[0];
        let off = arch::wait_for(2_000_000, || aff(other) == 1);
        s.check(
            "CPU_OFF (forwarded): AFFINITY_INFO reports the second CPU OFF",
            off,
            format_args!("round {round}: AFFINITY_INFO = {:#x}", aff(other)),
        );
        if !off {
            return;
        }
    }
}

// ---------------------------------------------------------------------
// FP/SIMD preservation.

/// FPCR for the probes: round towards zero (RMode = 0b11) and flush to
/// zero, so a lost FPCR shows.
const FPCR_PROBE: u64 = (0b11 << 22) | (1 << 24);

/// Loads V0–V31 with a pattern and FPCR with [`FPCR_PROBE`], runs one
/// instruction that traps to el2 (`$insn`, with x0 = `id` and x1 = `addr`),
/// stores V0–V31 and FPCR back, and returns whether all came back intact.
macro_rules! fp_probe {
    ($name:ident, $insn:literal) => {
        fn $name(id: u64, addr: u64) -> (bool, u64) {
            let mut pattern = [0u64; 64];
            for (i, w) in pattern.iter_mut().enumerate() {
                *w = 0x0123_4567_89ab_cdef_u64.rotate_left(i as u32 * 7) ^ (i as u64);
            }
            let mut out = [0u64; 64];
            let fpcr: u64;
            // SAFETY: loads and stores only the two local arrays; the
            // trapping instruction is a host call, a PSCI query or a load
            // el2 turns into an abort our vector skips. Every register it
            // or the callee may change is declared.
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
                    $insn,
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
                    out("x24") fpcr,
                    inout("x20") pattern.as_ptr() => _,
                    inout("x21") out.as_mut_ptr() => _,
                    inout("x0") id => _,
                    inout("x1") addr => _,
                    out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                    out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
            (out == pattern && fpcr == FPCR_PROBE, fpcr)
        }
    };
}

fp_probe!(fp_across_hvc, "hvc #0");
fp_probe!(fp_across_smc, "smc #0");
fp_probe!(fp_across_abort, "ldr x2, [x1]");

fn fp_checks(s: &mut Summary, p: &Platform) {
    let (ok, fpcr) = fp_across_hvc(HostCall::Version.id(), 0);
    s.check(
        "V0-V31 and FPCR preserved across a host call",
        ok,
        format_args!("FPCR after: {fpcr:#x}"),
    );
    let (ok, fpcr) = fp_across_smc(u64::from(psci::PSCI_VERSION), 0);
    s.check(
        "V0-V31 and FPCR preserved across a trapped SMC (PSCI relay)",
        ok,
        format_args!("FPCR after: {fpcr:#x}"),
    );
    let addr = p.hyp().first().map_or(0, |&(b, _)| b + 0x100);
    let (before, ..) = ABORTS[0].last();
    let (ok, fpcr) = fp_across_abort(0, addr);
    let (after, ..) = ABORTS[0].last();
    s.check(
        "V0-V31 and FPCR preserved across an injected abort",
        ok && after == before + 1,
        format_args!("FPCR after: {fpcr:#x}, {} aborts", after - before),
    );
}
