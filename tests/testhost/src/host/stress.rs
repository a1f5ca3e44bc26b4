//! SMP stress mode (`testhost.stress[=<ms>]` on the command line, default
//! [`DEFAULT_MS`]; `testhost.seed=<n>` fixes the seed): every CPU of the
//! device tree hammers el2 with host calls on the same few pages and the
//! same two VMs at once, for a bounded time, and every answer is checked
//! against what the ABI allows.
//!
//! - **Shared state.** A pool of [`POOL_PAGES`] host pages (in `.bss`), two
//!   VM slots, and one program page per slot. Every CPU picks its calls
//!   from a pseudo-random sequence (its own generator, seeded from the
//!   printed seed and its slot): ShareHyp/UnshareHyp, PageState,
//!   DonateGuest/ShareGuest/UnshareGuest/Reclaim at gfns `0..GFNS`,
//!   MemcacheTopup, ConvertComplete/ConvertRefuse (guessing the guest's
//!   pending conversion), GuestPageState, HostStats, plain VcpuRun, loads
//!   and stores to pool pages (which el2 may refuse with an injected
//!   abort), VM creation in an empty slot (pgd, metadata and memcache from
//!   the pool) and VM teardown (TeardownStart, Reclaim of every gfn,
//!   TeardownFinish; other CPUs join a teardown in progress). Calls
//!   collide all the time, so most fail (EPERM, EINVAL, EBUSY, ENOENT):
//!   that is the point. Stale and made-up VM handles are used on purpose.
//! - **The guest.** One CPU at a time (a token) runs a VM's vCPU through
//!   `VcpuRun` and serves its exits while the others keep changing the
//!   same VM's memory: the guest program ([`guest_program`]) spins storing
//!   to its own page, asks for MEM_SHARE then MEM_UNSHARE of its data page
//!   at [`DATA_GFN`] (storing to it in between), and stores a counter to an
//!   MMIO address. The runner completes or refuses conversions, maps a page
//!   (or fails the call) when the data page is missing, completes MMIO
//!   stores and checks the counter carries on by one each loop (the
//!   guest's registers survive), tagged with the VM's identity.
//! - **Checks.** Every call's `x0` must be SMCCC success, its `x1` one of
//!   the results the ABI (and el2's documented errors) allows for that
//!   call with those arguments, and an error must leave `x2..x6` zero;
//!   PageState and GuestPageState must describe a possible state; a vCPU
//!   exit must be one the guest program can cause. Anything else is
//!   printed (`UNEXPECTED`, with the call and its registers) and fails
//!   that CPU's check. The boot CPU also runs `CheckInvariants` every
//!   [`INVARIANT_PERIOD_MS`] during the stress.
//! - **No deadlock.** Every CPU must report back within [`REPORT_SLACK_MS`]
//!   of the deadline; if one does not, the run stops there with its last
//!   call printed.
//! - **Afterwards.** Every VM is torn down and reclaimed (any handle that
//!   still names a VM, known or not), every share with the hypervisor
//!   ended; every pool and program page must be the host's again,
//!   `CheckInvariants` must find nothing, and `HostStats` must give the
//!   host-owned page and host stage-2 leaf counts of before the stress
//!   (split blocks merged back). In between, the focused races
//!   ([`super::focus`]) run on a VM of their own (the collisions the random
//!   stress hits only now and then, set up on purpose); at the end the
//!   CPU_OFF/CPU_ON race ([`super::race`]) runs on the secondaries.
//!
//! The counts are printed per CPU (calls, calls per second, each result
//! kind) and per call.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use host_interface::abi::{
    Exit, GuestState, HostCall, KVM_MEMORY_EXIT_FLAG_PRIVATE, RUN_COMPLETE_ACCESS, RUN_FAIL_ACCESS,
    VM_META_PAGES, page_state,
};
use smccc::psci;

use super::Platform;
use super::arch::{self, ABORTS, hvc7, println, smc};
use super::checks::Summary;
use super::entry::{MAX_CPUS, secondary_entry};
use super::{focus, race};

/// How long the stress runs without `=<ms>`.
pub const DEFAULT_MS: u64 = 3000;
/// Host pages every CPU uses.
pub const POOL_PAGES: usize = 32;
/// VMs at once.
const VM_SLOTS: usize = 2;
/// The gfns the random calls map and unmap: `0..GFNS`.
pub(super) const GFNS: u64 = 8;
/// The guest program's data page (one of the random gfns).
pub(super) const DATA_GFN: u64 = 3;
/// Its IPA.
pub(super) const DATA_IPA: u64 = DATA_GFN * PAGE;
/// Where the guest program lives (only its VM's creator maps it).
pub(super) const PROG_GFN: u64 = 0x10;
/// The IPA the guest program stores its counter to (never memory).
pub(super) const MMIO_IPA: u64 = 0x0900_0000;
/// The guest's IPA size (root: 2 concatenated pages).
const IPA_BITS: u64 = 40;
/// Pages of a 40-bit stage-2 root.
const PGD_PAGES: usize = 2;
/// First VM handle el2 hands out (`ownership::state::HANDLE_OFFSET`).
const HANDLE_BASE: u64 = 0x1000;
/// Handles the cleanup looks at (far more than ever exist at once).
const HANDLE_SCAN: u64 = 16;
pub(super) const PAGE: u64 = 4096;
/// Exits one runner session serves at most before passing the token on.
const SESSION_EXITS: u32 = 48;
/// The same conversion exit this many times in a row, with el2 refusing
/// every completion and refusal: the vCPU waits for something el2 forgot.
const WEDGED_AFTER: u32 = 32;
/// How often the boot CPU runs `CheckInvariants` during the stress.
const INVARIANT_PERIOD_MS: u64 = 500;
/// How long after the deadline every CPU must have reported back.
const REPORT_SLACK_MS: u64 = 10_000;
/// How long a teardown asks other CPUs to join it.
const TEARDOWN_HINT_MS: u64 = 3;
/// A VM lives at least this long before a random teardown picks it...
const MIN_VM_LIFE_MS: u64 = 20;
/// ... and once it is this old, teardowns pick it often (so VMs come and go
/// however slowly the machine runs).
const MAX_VM_LIFE_MS: u64 = 400;
/// UNEXPECTED lines each CPU prints at most (all are counted).
const PRINT_LIMIT: u64 = 12;

/// Context ids of the stress workers: this tag, and the slot in the low
/// byte.
const WORKER_TAG: u64 = 0x57e5_5000_0000_0000;

/// Whether a CPU_ON context id starts a stress worker.
pub fn is_worker(context: u64) -> bool {
    context & !0xff == WORKER_TAG
}

// ---------------------------------------------------------------------
// The pages.

/// `N` page-aligned pages in `.bss` that only the stress mode uses, by
/// address (el2 moves them between owners; nothing of ours is in them).
#[repr(C, align(8192))]
struct Pages<const N: usize>(UnsafeCell<[[u8; 4096]; N]>);

// SAFETY: never read or written through Rust references: the pages are
// only named by address in host calls and touched with the abort-safe
// probes of `arch`.
unsafe impl<const N: usize> Sync for Pages<N> {}

static POOL: Pages<POOL_PAGES> = Pages(UnsafeCell::new([[0; 4096]; POOL_PAGES]));
static PROGRAM_PAGES: Pages<VM_SLOTS> = Pages(UnsafeCell::new([[0; 4096]; VM_SLOTS]));

pub(super) fn pool_pfn(i: usize) -> u64 {
    (POOL.0.get() as u64 >> 12) + i as u64
}

pub(super) fn program_pfn(slot: usize) -> u64 {
    (PROGRAM_PAGES.0.get() as u64 >> 12) + slot as u64
}

fn is_ours(pfn: u64) -> bool {
    (pool_pfn(0)..pool_pfn(POOL_PAGES)).contains(&pfn)
        || (program_pfn(0)..program_pfn(VM_SLOTS)).contains(&pfn)
}

// ---------------------------------------------------------------------
// The guest program.

/// Offsets in the program page: the counter's starting value (the VM's
/// identity in bits 63:32), the spin count, the word the guest stores to,
/// and the exception vectors.
const PROG_BASE_OFF: usize = 0x3f0;
const PROG_SPIN_OFF: usize = 0x3f8;
const PROG_VECTORS: u64 = 0x800;

core::arch::global_asm!(
    r#"
    .section .rodata.th_guest, "a"
    .balign 4096
    .global th_guest_program
th_guest_program:
    adr     x1, 20f
    msr     vbar_el1, x1
    isb
    ldr     x22, 10f            /* counter: identity << 32 */
    ldr     x25, 11f            /* spin count */
    mov     x20, #{data}
    mov     x21, #{mmio}
    adr     x23, 12f
1:
    add     x22, x22, #1
    mov     x24, x25
2:
    str     x22, [x23]          /* own memory */
    subs    x24, x24, #1
    b.hi    2b
    movz    x0, #0xc600, lsl #16
    movk    x0, #3              /* MEM_SHARE(data page, 1 page) */
    mov     x1, x20
    mov     x2, #1
    mov     x3, #0
    hvc     #0
    str     x22, [x20]          /* the data page, whatever it is now */
    movz    x0, #0xc600, lsl #16
    movk    x0, #4              /* MEM_UNSHARE(data page, 1 page) */
    mov     x1, x20
    mov     x2, #1
    mov     x3, #0
    hvc     #0
    str     x22, [x21]          /* MMIO: the host sees the counter */
    b       1b
    .org    {base_off}
10: .quad   0
11: .quad   0
    .org    0x400
12: .quad   0
    .org    {vectors}
20:
    .rept   16
    .balign 0x80
    mrs     x1, esr_el1         /* any exception: report ESR at MMIO + 8 */
    mov     x2, #{mmio}
3:
    str     x1, [x2, #8]
    b       3b
    .endr
    .org    0x1000
"#,
    data = const DATA_IPA,
    mmio = const MMIO_IPA,
    base_off = const PROG_BASE_OFF,
    vectors = const PROG_VECTORS,
);

unsafe extern "C" {
    /// The guest program's page (position independent, MMU off).
    static th_guest_program: [u8; 4096];
}

/// The guest program with its counter starting at `ident << 32` and
/// `spin` stores to its own page per loop.
pub(super) fn guest_program(ident: u64, spin: u64) -> [u8; 4096] {
    // SAFETY: a 4096-byte read-only symbol of this image.
    let mut page = unsafe { th_guest_program };
    page[PROG_BASE_OFF..PROG_BASE_OFF + 8].copy_from_slice(&(ident << 32).to_le_bytes());
    page[PROG_SPIN_OFF..PROG_SPIN_OFF + 8].copy_from_slice(&spin.to_le_bytes());
    page
}

// ---------------------------------------------------------------------
// Results.

/// Result kinds counted: 0 and each errno el2 may return, then anything
/// else.
const RESULTS: [(&str, i64); 11] = [
    ("ok", 0),
    ("EPERM", -1),
    ("ENOENT", -2),
    ("E2BIG", -7),
    ("EAGAIN", -11),
    ("ENOMEM", -12),
    ("EFAULT", -14),
    ("EBUSY", -16),
    ("EINVAL", -22),
    ("EHWPOISON", -133),
    ("other", i64::MIN),
];
const NRES: usize = RESULTS.len();
const NCALLS: usize = HostCall::ALL.len();

/// Bits of [`RESULTS`] indexes: what a call may answer.
const OK: u16 = 1 << 0;
const EPERM: u16 = 1 << 1;
const ENOENT: u16 = 1 << 2;
const ENOMEM: u16 = 1 << 5;
const EBUSY: u16 = 1 << 7;
const EINVAL: u16 = 1 << 8;

/// ConvertComplete: no conversion pending, or not this one (EPERM); the
/// VM gone (EINVAL); its pages gone (ENOENT); no table pages (ENOMEM); the
/// vCPU waiting on it running elsewhere (EBUSY: el2 may refuse then).
const CONVERT_ALLOWED: u16 = OK | EPERM | EINVAL | ENOENT | ENOMEM | EBUSY;
/// ConvertRefuse: as ConvertComplete, without the page errors.
const REFUSE_ALLOWED: u16 = OK | EPERM | EINVAL | EBUSY;

const EPERM_RET: u64 = -1i64 as u64;
const EBUSY_RET: u64 = -16i64 as u64;
const EINVAL_RET: u64 = -22i64 as u64;

fn result_index(x1: u64) -> usize {
    RESULTS
        .iter()
        .position(|&(_, v)| v == x1 as i64)
        .unwrap_or(NRES - 1)
}

/// Prints a result mask as `ok|EPERM|...`.
struct Mask(u16);

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, (name, _)) in RESULTS.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------
// Shared state.

/// What one CPU did, and is doing.
struct CpuState {
    /// Started and waiting for the go.
    arrived: AtomicBool,
    /// Finished its loop (everything below is final).
    done: AtomicBool,
    /// The call in progress (`u64::MAX`: none), its first argument and the
    /// counter when it started.
    op: AtomicU64,
    op_arg: AtomicU64,
    op_since: AtomicU64,
    /// Calls by call number and result kind.
    results: [[AtomicU64; NRES]; NCALLS],
    /// Results the ABI does not allow (and impossible states or exits).
    unexpected: AtomicU64,
    /// Loads and stores to pool pages, and how many el2 refused.
    probes: AtomicU64,
    probe_aborts: AtomicU64,
    /// Guest runner sessions and the exits served in them.
    sessions: AtomicU64,
    exits: AtomicU64,
    /// Counter ticks the loop ran.
    ticks: AtomicU64,
}

impl CpuState {
    const fn new() -> CpuState {
        CpuState {
            arrived: AtomicBool::new(false),
            done: AtomicBool::new(false),
            op: AtomicU64::new(u64::MAX),
            op_arg: AtomicU64::new(0),
            op_since: AtomicU64::new(0),
            results: [const { [const { AtomicU64::new(0) }; NRES] }; NCALLS],
            unexpected: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            probe_aborts: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    fn calls(&self) -> u64 {
        self.results
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn by_result(&self, r: usize) -> u64 {
        self.results
            .iter()
            .map(|c| c[r].load(Ordering::Relaxed))
            .sum()
    }
}

static CPUS: [CpuState; MAX_CPUS] = [const { CpuState::new() }; MAX_CPUS];
/// Set by the boot CPU once every CPU arrived: start.
static GO: AtomicBool = AtomicBool::new(false);
/// Counter value at which the loops stop.
static DEADLINE: AtomicU64 = AtomicU64::new(0);
/// The run's seed.
static SEED: AtomicU64 = AtomicU64::new(0);
/// The slot of the CPU running the guest, or `NO_RUNNER`.
static RUNNER: AtomicUsize = AtomicUsize::new(NO_RUNNER);
const NO_RUNNER: usize = usize::MAX;

/// VM slots: handle (bits 15:0), state (17:16), generation (63:32; bumped
/// each time the slot empties).
static SLOTS: [AtomicU64; VM_SLOTS] = [const { AtomicU64::new(0) }; VM_SLOTS];
/// Counter when each slot's VM was created.
static SLOT_BORN: [AtomicU64; VM_SLOTS] = [const { AtomicU64::new(0) }; VM_SLOTS];
/// Until when (counter) other CPUs should join a teardown of each slot.
static TEARDOWN_HINT: [AtomicU64; VM_SLOTS] = [const { AtomicU64::new(0) }; VM_SLOTS];

/// Slot states.
const EMPTY: u64 = 0;
const CREATING: u64 = 1;
const LIVE: u64 = 2;
const READY: u64 = 3;

fn pack(handle: u64, state: u64, generation: u64) -> u64 {
    (handle & 0xffff) | (state << 16) | (generation << 32)
}

fn unpack(w: u64) -> (u64, u64, u64) {
    (w & 0xffff, (w >> 16) & 3, w >> 32)
}

/// A VM's identity in the guest's counter: its slot and generation.
fn ident(slot: usize, generation: u64) -> u64 {
    ((slot as u64) << 24) | (generation & 0xff_ffff)
}

/// Figures of the whole run.
static VMS_CREATED: AtomicU64 = AtomicU64::new(0);
static VMS_DESTROYED: AtomicU64 = AtomicU64::new(0);
static GUEST_LOOPS: AtomicU64 = AtomicU64::new(0);
static CONVERSIONS: AtomicU64 = AtomicU64::new(0);
static INVARIANT_RUNS: AtomicU64 = AtomicU64::new(0);
static INVARIANT_BROKEN: AtomicU64 = AtomicU64::new(0);
/// Exits at the program page seen by plain runs of other CPUs (a VM whose
/// handle was reused, run before its creator mapped the program).
static ORPHAN_EXITS: AtomicU64 = AtomicU64::new(0);
/// Runner sessions that ended because the guest's counter named another
/// VM (the slot's VM was replaced during the session).
static STALE_SESSIONS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------
// Time and randomness.

fn ticks_per_ms() -> u64 {
    (arch::now().1 / 1000).max(1)
}

fn now() -> u64 {
    arch::now().0
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next() >> 32) * u128::from(n)) >> 32) as u64
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

// ---------------------------------------------------------------------
// A worker: one CPU's loop.

/// How the runner's next `VcpuRun` completes the last exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Next {
    Plain,
    Complete,
    Fail,
}

struct Worker {
    slot: usize,
    rng: Rng,
    st: &'static CpuState,
    deadline: u64,
}

impl Worker {
    fn new(slot: usize) -> Worker {
        let seed = SEED.load(Ordering::Relaxed);
        let mut rng = Rng(seed ^ (slot as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next();
        Worker {
            slot,
            rng,
            st: &CPUS[slot],
            deadline: DEADLINE.load(Ordering::Acquire),
        }
    }

    fn unexpected(&self, what: fmt::Arguments<'_>) {
        let n = self.st.unexpected.fetch_add(1, Ordering::Relaxed);
        if n < PRINT_LIMIT {
            println!("testhost: stress cpu {}: UNEXPECTED {what}", self.slot);
        } else if n == PRINT_LIMIT {
            println!(
                "testhost: stress cpu {}: UNEXPECTED ... (more not printed)",
                self.slot
            );
        }
    }

    /// Makes host call `c` with `a` and checks the answer is in `allowed`
    /// (and well formed); the values `x2..x6`, or the error `x1`.
    fn call(&self, c: HostCall, a: [u64; 5], allowed: u16) -> Result<[u64; 5], u64> {
        self.st.op_arg.store(a[0], Ordering::Relaxed);
        self.st.op_since.store(now(), Ordering::Relaxed);
        self.st.op.store(c as u64, Ordering::Release);
        let r = hvc7([c.id(), a[0], a[1], a[2], a[3], a[4]]);
        self.st.op.store(u64::MAX, Ordering::Release);
        let idx = result_index(r[1]);
        self.st.results[c as usize][idx].fetch_add(1, Ordering::Relaxed);
        let vals = [r[2], r[3], r[4], r[5], r[6]];
        let well_formed = r[0] == 0 && (r[1] == 0 || vals == [0; 5]);
        if !well_formed || allowed & (1 << idx) == 0 {
            self.unexpected(format_args!(
                "{c:?}({:#x?}) -> x0 {:#x}, x1 {} ({}), x2..x6 {:#x?}; allowed: {}",
                a,
                r[0],
                r[1] as i64,
                RESULTS[idx].0,
                vals,
                Mask(allowed)
            ));
        }
        if r[1] == 0 { Ok(vals) } else { Err(r[1]) }
    }

    fn pool_page(&mut self) -> u64 {
        pool_pfn(self.rng.below(POOL_PAGES as u64) as usize)
    }

    fn gfn(&mut self) -> u64 {
        self.rng.below(GFNS)
    }

    /// A VM handle: mostly a slot's, sometimes one made up (which may name
    /// a VM or not).
    fn handle(&mut self) -> u64 {
        let s = self.rng.below(VM_SLOTS as u64) as usize;
        let (h, state, _) = unpack(SLOTS[s].load(Ordering::Acquire));
        if state != EMPTY && h != 0 && !self.rng.chance(1, 16) {
            h
        } else {
            HANDLE_BASE + self.rng.below(4)
        }
    }

    /// The loop, until the deadline.
    fn run(&mut self) {
        let start = now();
        let period = INVARIANT_PERIOD_MS * ticks_per_ms();
        let mut next_check = start + period;
        loop {
            let t = now();
            if t >= self.deadline {
                break;
            }
            if self.slot == 0 && t >= next_check {
                self.check_invariants();
                next_check = now() + period;
            }
            self.step();
        }
        self.st.ticks.store(now() - start, Ordering::Relaxed);
    }

    fn check_invariants(&self) {
        INVARIANT_RUNS.fetch_add(1, Ordering::Relaxed);
        if let Ok(v) = self.call(HostCall::CheckInvariants, [0; 5], OK)
            && v[0] != 0
        {
            INVARIANT_BROKEN.fetch_add(1, Ordering::Relaxed);
            self.unexpected(format_args!(
                "CheckInvariants during the stress -> {} (a violation; el2 logged it)",
                v[0]
            ));
        }
    }

    /// One random operation.
    fn step(&mut self) {
        // A teardown in progress: join it now and then.
        let t = now();
        for (s, hint) in TEARDOWN_HINT.iter().enumerate() {
            if hint.load(Ordering::Relaxed) > t && self.rng.chance(1, 6) {
                self.teardown(s);
                return;
            }
        }
        let old = t.saturating_sub(MAX_VM_LIFE_MS * ticks_per_ms());
        for s in 0..VM_SLOTS {
            let live = matches!(unpack(SLOTS[s].load(Ordering::Relaxed)).1, LIVE | READY);
            if live && SLOT_BORN[s].load(Ordering::Relaxed) < old && self.rng.chance(1, 8) {
                self.teardown(s);
                return;
            }
        }
        match self.rng.below(1000) {
            0..90 => {
                let pfn = self.pool_page();
                let _ = self.call(HostCall::ShareHyp, [pfn, 0, 0, 0, 0], OK | EPERM);
            }
            90..180 => {
                let pfn = self.pool_page();
                let _ = self.call(HostCall::UnshareHyp, [pfn, 0, 0, 0, 0], OK | EPERM);
            }
            180..280 => self.page_state(),
            280..390 => {
                let (h, pfn, gfn) = (self.handle(), self.pool_page(), self.gfn());
                let _ = self.call(
                    HostCall::DonateGuest,
                    [h, pfn, gfn, 1, 0],
                    OK | EPERM | EINVAL | ENOMEM,
                );
            }
            390..470 => {
                let (h, pfn, gfn) = (self.handle(), self.pool_page(), self.gfn());
                let _ = self.call(
                    HostCall::ShareGuest,
                    [h, pfn, gfn, 1, 0],
                    OK | EPERM | EINVAL | ENOMEM,
                );
            }
            470..560 => {
                let (h, gfn) = (self.handle(), self.gfn());
                let _ = self.call(
                    HostCall::UnshareGuest,
                    [h, gfn, 1, 0, 0],
                    OK | EPERM | ENOENT | EINVAL,
                );
            }
            560..610 => {
                let h = self.handle();
                let gfn = if self.rng.chance(1, 8) {
                    PROG_GFN
                } else {
                    self.gfn()
                };
                let _ = self.call(
                    HostCall::Reclaim,
                    [h, gfn, 1, 0, 0],
                    OK | ENOENT | EINVAL | ENOMEM,
                );
            }
            610..650 => {
                let h = self.handle();
                let n = 1 + self.rng.below(2);
                let i = self.rng.below(POOL_PAGES as u64 - 1) as usize;
                let _ = self.call(
                    HostCall::MemcacheTopup,
                    [h, pool_pfn(i), n, 0, 0],
                    OK | EPERM | EINVAL | ENOMEM,
                );
            }
            650..720 => {
                let h = self.handle();
                let gfn = if self.rng.chance(3, 4) {
                    DATA_GFN
                } else {
                    self.gfn()
                };
                let share = self.rng.below(2);
                let _ = self.call(
                    HostCall::ConvertComplete,
                    [h, gfn, 1, share, 0],
                    CONVERT_ALLOWED,
                );
            }
            720..745 => {
                let h = self.handle();
                let _ = self.call(HostCall::ConvertRefuse, [h, 0, 0, 0, 0], REFUSE_ALLOWED);
            }
            745..790 => self.guest_page_state(),
            790..805 => self.plain_run(),
            805..810 => self.probe(),
            810..813 => {
                let _ = self.call(HostCall::HostStats, [0; 5], OK);
            }
            813..860 => {
                let s = self.rng.below(VM_SLOTS as u64) as usize;
                self.create(s);
            }
            860..866 => {
                let s = self.rng.below(VM_SLOTS as u64) as usize;
                let born = SLOT_BORN[s].load(Ordering::Relaxed);
                if now().saturating_sub(born) > MIN_VM_LIFE_MS * ticks_per_ms() {
                    self.teardown(s);
                }
            }
            _ => self.session(),
        }
    }

    /// PageState of a pool or program page: a state the host can be in.
    fn page_state(&mut self) {
        let pfn = if self.rng.chance(1, 8) {
            program_pfn(self.rng.below(VM_SLOTS as u64) as usize)
        } else {
            self.pool_page()
        };
        if let Ok(v) = self.call(HostCall::PageState, [pfn, 0, 0, 0, 0], OK)
            && let Err(why) = possible_page_state(v)
        {
            self.unexpected(format_args!("PageState({pfn:#x}) -> {v:#x?}: {why}"));
        }
    }

    fn guest_page_state(&mut self) {
        let h = self.handle();
        let gfn = if self.rng.chance(1, 8) {
            PROG_GFN
        } else {
            self.gfn()
        };
        if let Ok(v) = self.call(HostCall::GuestPageState, [h, gfn, 0, 0, 0], OK | EINVAL) {
            let ok = match GuestState::from_raw(v[0]) {
                Some(GuestState::Owned | GuestState::SharedOwned | GuestState::SharedBorrowed) => {
                    is_ours(v[1])
                }
                Some(GuestState::NoPage) => v[1] == u64::MAX,
                // Nothing here force-reclaims or relinquishes.
                _ => false,
            };
            if !ok || v[2..] != [0; 3] {
                self.unexpected(format_args!(
                    "GuestPageState({h:#x}, {gfn:#x}) -> {v:#x?}: not a state our calls make"
                ));
            }
        }
    }

    /// A load (or store) at a pool page: el2 lets it through or injects an
    /// abort, with the right syndrome.
    fn probe(&mut self) {
        let addr = (self.pool_page() << 12) + 8 * self.rng.below(512);
        let log = &ABORTS[self.slot];
        let before = log.count();
        let write = self.rng.chance(1, 4);
        if write {
            // SAFETY: a pool page: nothing of ours lives there, and what a
            // guest keeps there is its own business.
            unsafe { arch::probe_write(addr, self.rng.next()) };
        } else {
            let _ = arch::probe_read(addr);
        }
        self.st.probes.fetch_add(1, Ordering::Relaxed);
        let (after, esr, far, _) = log.last();
        if after != before {
            self.st.probe_aborts.fetch_add(1, Ordering::Relaxed);
            let wnr = (esr >> 6) & 1 != 0;
            let ok = after == before + 1
                && esr >> 26 == 0x25
                && esr & 0x3f == 0x10
                && far == addr
                && wnr == write;
            if !ok {
                self.unexpected(format_args!(
                    "{} at {addr:#x}: {} aborts, ESR {esr:#x}, FAR {far:#x}",
                    if write { "store" } else { "load" },
                    after - before
                ));
            }
        }
    }

    /// A plain `VcpuRun` of some VM's vCPU: busy, refused, or one exit the
    /// guest program can cause (nothing is completed: the next run gives
    /// the same exit or the one after it).
    fn plain_run(&mut self) {
        let h = self.handle();
        if let Ok(v) = self.call(HostCall::VcpuRun, [h, 0, 0, 0, 0], OK | EBUSY | EINVAL) {
            let exit = Exit::from_regs(v);
            let fine = match exit {
                Some(Exit::MemoryFault { gpa, size, flags }) => {
                    gpa == DATA_IPA && size == PAGE && flags & !KVM_MEMORY_EXIT_FLAG_PRIVATE == 0
                }
                Some(Exit::Stage2Fault { gpa, .. }) if gpa >> 12 == PROG_GFN => {
                    ORPHAN_EXITS.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Some(Exit::Stage2Fault { gpa, .. }) => gpa == DATA_IPA || gpa == MMIO_IPA,
                Some(Exit::Interrupted | Exit::PoweredOff) => true,
                _ => false,
            };
            if !fine {
                self.unexpected(format_args!(
                    "VcpuRun({h:#x}) -> {exit:x?} ({v:#x?}): not an exit the guest program causes"
                ));
            }
        }
    }

    /// Creates a VM in slot `s` if it is empty: pgd, metadata and memcache
    /// from the pool, the guest program at [`PROG_GFN`], vCPU 0 there.
    fn create(&mut self, s: usize) {
        let w = SLOTS[s].load(Ordering::Acquire);
        let (_, state, generation) = unpack(w);
        if state != EMPTY
            || SLOTS[s]
                .compare_exchange(
                    w,
                    pack(0, CREATING, generation),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let mut handle = None;
        for _ in 0..4 {
            let pgd = 2 * self.rng.below(POOL_PAGES as u64 / 2) as usize;
            let meta = self.rng.below(POOL_PAGES as u64 - VM_META_PAGES + 1) as usize;
            let odd = self.rng.chance(1, 32);
            let overlap = meta < pgd + PGD_PAGES && pgd < meta + VM_META_PAGES as usize;
            let (pgd_pfn, allowed) = if odd {
                // A root that is not aligned to its size.
                (pool_pfn(pgd) + 1, EINVAL)
            } else if overlap {
                (pool_pfn(pgd), EPERM | EINVAL)
            } else {
                (pool_pfn(pgd), OK | EPERM | ENOMEM)
            };
            if let Ok(v) = self.call(
                HostCall::VmCreate,
                [IPA_BITS, pgd_pfn, pool_pfn(meta), 1, 0],
                allowed,
            ) {
                handle = Some(v[0]);
                break;
            }
        }
        let Some(h) = handle else {
            SLOTS[s].store(pack(0, EMPTY, generation), Ordering::Release);
            return;
        };
        if !(HANDLE_BASE..HANDLE_BASE + HANDLE_SCAN).contains(&h) {
            self.unexpected(format_args!("VmCreate -> handle {h:#x}"));
        }
        VMS_CREATED.fetch_add(1, Ordering::Relaxed);
        SLOT_BORN[s].store(now(), Ordering::Relaxed);
        // Published at once: other CPUs may hit it while it is set up.
        SLOTS[s].store(pack(h, LIVE, generation), Ordering::Release);
        let mut topped = 0;
        for _ in 0..8 {
            if topped >= 2 {
                break;
            }
            let pfn = self.pool_page();
            match self.call(
                HostCall::MemcacheTopup,
                [h, pfn, 1, 0, 0],
                OK | EPERM | EINVAL | ENOMEM,
            ) {
                Ok(_) => topped += 1,
                Err(EINVAL_RET) => return,
                Err(_) => {}
            }
        }
        if topped < 2 {
            return;
        }
        let spin = self.rng.below(2048);
        let program = guest_program(ident(s, generation), spin);
        // SAFETY: the slot's program page, which only this slot's creator
        // writes (a store el2 refuses is skipped and reported here).
        if unsafe { arch::write_phys(program_pfn(s) << 12, &program) }.is_err() {
            return;
        }
        if self
            .call(
                HostCall::DonateGuest,
                [h, program_pfn(s), PROG_GFN, 1, 0],
                OK | EPERM | EINVAL | ENOMEM,
            )
            .is_err()
        {
            return;
        }
        if self
            .call(
                HostCall::VcpuInit,
                [h, 0, PROG_GFN * PAGE, 0, 0],
                OK | EINVAL | EPERM,
            )
            .is_err()
        {
            return;
        }
        let _ = SLOTS[s].compare_exchange(
            pack(h, LIVE, generation),
            pack(h, READY, generation),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Tears slot `s`'s VM down (or helps whoever is): TeardownStart,
    /// Reclaim of every gfn, TeardownFinish, a few passes; empties the
    /// slot once its VM is gone.
    fn teardown(&mut self, s: usize) {
        let (h, state, generation) = unpack(SLOTS[s].load(Ordering::Acquire));
        if state != LIVE && state != READY {
            return;
        }
        if self.call(
            HostCall::TeardownStart,
            [h, 0, 0, 0, 0],
            OK | EINVAL | EBUSY,
        ) == Err(EBUSY_RET)
        {
            return;
        }
        TEARDOWN_HINT[s].store(now() + TEARDOWN_HINT_MS * ticks_per_ms(), Ordering::Relaxed);
        for _ in 0..3 {
            let first = self.rng.below(GFNS + 1);
            for i in 0..=GFNS {
                let k = (first + i) % (GFNS + 1);
                let gfn = if k == GFNS { PROG_GFN } else { k };
                let _ = self.call(
                    HostCall::Reclaim,
                    [h, gfn, 1, 0, 0],
                    OK | ENOENT | EINVAL | ENOMEM,
                );
            }
            match self.call(
                HostCall::TeardownFinish,
                [h, 0, 0, 0, 0],
                OK | EBUSY | EINVAL | ENOMEM,
            ) {
                Ok(_) => {
                    VMS_DESTROYED.fetch_add(1, Ordering::Relaxed);
                    release(s, generation);
                    return;
                }
                // Gone: someone else finished it.
                Err(EINVAL_RET) => {
                    release(s, generation);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// Runs a VM's guest for a while, if no other CPU is (one at a time).
    fn session(&mut self) {
        if RUNNER
            .compare_exchange(NO_RUNNER, self.slot, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let first = self.rng.below(VM_SLOTS as u64) as usize;
        let ready = (0..VM_SLOTS)
            .map(|i| (first + i) % VM_SLOTS)
            .find(|&s| unpack(SLOTS[s].load(Ordering::Acquire)).1 == READY);
        if let Some(s) = ready {
            self.st.sessions.fetch_add(1, Ordering::Relaxed);
            self.serve(s);
        }
        RUNNER.store(NO_RUNNER, Ordering::Release);
    }

    /// The runner's loop on slot `s`'s VM.
    fn serve(&mut self, s: usize) {
        let (h, _, generation) = unpack(SLOTS[s].load(Ordering::Acquire));
        let me = ident(s, generation);
        let mut next = Next::Plain;
        let mut last_count: Option<u64> = None;
        let mut last_conversion: Option<Exit> = None;
        let mut refused_in_a_row = 0u32;
        let mut history = [(Next::Plain, None::<Exit>); 6];
        for _ in 0..SESSION_EXITS {
            if now() >= self.deadline {
                return;
            }
            // Still this slot's VM, with its program: else stop here (it is
            // being torn down, or the handle names another VM now).
            match self.call(
                HostCall::GuestPageState,
                [h, PROG_GFN, 0, 0, 0],
                OK | EINVAL,
            ) {
                Ok(v) if v[0] == GuestState::Owned as u64 && v[1] == program_pfn(s) => {}
                _ => return,
            }
            let churn_before = (
                VMS_CREATED.load(Ordering::Relaxed),
                VMS_DESTROYED.load(Ordering::Relaxed),
                SLOTS[s].load(Ordering::Relaxed),
            );
            let (flags, value) = match next {
                Next::Plain => (0, 0),
                Next::Complete => (RUN_COMPLETE_ACCESS, 0),
                Next::Fail => (RUN_FAIL_ACCESS, 0),
            };
            let regs = match self.call(
                HostCall::VcpuRun,
                [h, 0, flags, value, 0],
                OK | EBUSY | EINVAL,
            ) {
                Ok(v) => v,
                // Another CPU's plain run: try again.
                Err(EBUSY_RET) => continue,
                // The completion no longer fits (another CPU's run moved
                // the vCPU on): run it plainly; else the VM is gone.
                Err(EINVAL_RET) if next != Next::Plain => {
                    next = Next::Plain;
                    continue;
                }
                Err(_) => return,
            };
            self.st.exits.fetch_add(1, Ordering::Relaxed);
            let exit = Exit::from_regs(regs);
            history.rotate_left(1);
            history[history.len() - 1] = (next, exit);
            next = Next::Plain;
            match exit {
                Some(
                    e @ Exit::MemoryFault {
                        gpa: DATA_IPA,
                        size: PAGE,
                        flags,
                    },
                ) if flags & !KVM_MEMORY_EXIT_FLAG_PRIVATE == 0 => {
                    let share = u64::from(flags == 0);
                    let answered = if self.rng.chance(1, 8) {
                        self.call(HostCall::ConvertRefuse, [h, 0, 0, 0, 0], REFUSE_ALLOWED)
                    } else {
                        self.call(
                            HostCall::ConvertComplete,
                            [h, DATA_GFN, 1, share, 0],
                            CONVERT_ALLOWED,
                        )
                    };
                    match answered {
                        Ok(_) => {
                            CONVERSIONS.fetch_add(1, Ordering::Relaxed);
                            refused_in_a_row = 0;
                        }
                        Err(EPERM_RET) if last_conversion == Some(e) => refused_in_a_row += 1,
                        Err(_) => refused_in_a_row = 0,
                    }
                    last_conversion = Some(e);
                    if refused_in_a_row >= WEDGED_AFTER {
                        self.unexpected(format_args!(
                            "VM {h:#x}: vCPU 0 returned {e:x?} {} times in a row while el2 \
                             refused every ConvertComplete/ConvertRefuse with EPERM: it waits \
                             for a conversion el2 has no record of",
                            refused_in_a_row + 1
                        ));
                        return;
                    }
                    continue;
                }
                Some(Exit::Stage2Fault {
                    gpa: MMIO_IPA,
                    write: true,
                    exec: false,
                    isv: true,
                    size: 8,
                    reg: 22,
                    data,
                    hvc: false,
                }) => {
                    if data >> 32 != me {
                        // The handle names another VM now.
                        STALE_SESSIONS.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let count = data & 0xffff_ffff;
                    if let Some(last) = last_count
                        && count != last
                        && count != last + 1
                    {
                        self.unexpected(format_args!(
                            "VM {h:#x}: the guest's counter went from {last} to {count} \
                             (one loop per completed MMIO store): its registers were not kept"
                        ));
                        return;
                    }
                    if last_count != Some(count) {
                        GUEST_LOOPS.fetch_add(1, Ordering::Relaxed);
                    }
                    last_count = Some(count);
                    next = Next::Complete;
                }
                Some(Exit::Stage2Fault {
                    gpa: DATA_IPA,
                    write: true,
                    hvc: true,
                    ..
                }) => {
                    // MEM_SHARE of the data page while nothing is mapped
                    // there: map a page (donate, or lend) or fail the call.
                    let pfn = self.pool_page();
                    let mapped = match self.rng.below(10) {
                        0..7 => self.call(
                            HostCall::DonateGuest,
                            [h, pfn, DATA_GFN, 1, 0],
                            OK | EPERM | EINVAL | ENOMEM,
                        ),
                        7 => self.call(
                            HostCall::ShareGuest,
                            [h, pfn, DATA_GFN, 1, 0],
                            OK | EPERM | EINVAL | ENOMEM,
                        ),
                        _ => Err(0),
                    };
                    if mapped.is_err() {
                        next = Next::Fail;
                    }
                }
                Some(Exit::Stage2Fault {
                    gpa: DATA_IPA,
                    write: true,
                    exec: false,
                    isv: true,
                    size: 8,
                    reg: 22,
                    hvc: false,
                    ..
                }) => {
                    // Its store to the data page while nothing is mapped
                    // there: map a page (retried) or take it as MMIO.
                    let mapped = self.rng.chance(1, 2) && {
                        let pfn = self.pool_page();
                        self.call(
                            HostCall::DonateGuest,
                            [h, pfn, DATA_GFN, 1, 0],
                            OK | EPERM | EINVAL | ENOMEM,
                        )
                        .is_ok()
                    };
                    if !mapped {
                        next = Next::Complete;
                        // Another CPU's plain run may move the vCPU on to
                        // its MMIO store before this completion lands
                        // (completions do not say which exit they answer):
                        // it may then skip a count.
                        last_count = None;
                    }
                }
                Some(Exit::Interrupted) => {}
                Some(Exit::PoweredOff) => return,
                Some(Exit::Stage2Fault {
                    gpa, write, data, ..
                }) if gpa == MMIO_IPA + 8 && write => {
                    self.unexpected(format_args!(
                        "VM {h:#x}: the guest program took an exception (ESR_EL1 {data:#x})"
                    ));
                    return;
                }
                Some(Exit::Stage2Fault { gpa, exec, .. }) if gpa >> 12 == PROG_GFN => {
                    self.unexpected(format_args!(
                        "VM {h:#x}: the guest ran while its program page was gone ({} at \
                         {gpa:#x}): only a teardown takes it, and a VM being torn down must \
                         not run (VcpuRun -> EINVAL, TeardownStart -> EBUSY)",
                        if exec { "fetch" } else { "access" }
                    ));
                    return;
                }
                Some(Exit::Stopped { ec }) => {
                    let prog = self.call(
                        HostCall::GuestPageState,
                        [h, PROG_GFN, 0, 0, 0],
                        OK | EINVAL,
                    );
                    let data = self.call(
                        HostCall::GuestPageState,
                        [h, DATA_GFN, 0, 0, 0],
                        OK | EINVAL,
                    );
                    self.unexpected(format_args!(
                        "VM {h:#x}: el2 stopped the vCPU (EC {ec:#x}); the guest program only \
                         touches its own pages, its data page (mapped or not) and MMIO; now: \
                         program page {:x?}, data page {:x?}; last runs (completion, exit): \
                         {history:x?}; VMs created/destroyed/slot word before the run {:x?}, \
                         after {:x?}",
                        prog.map(|v| (v[0], v[1])),
                        data.map(|v| (v[0], v[1])),
                        churn_before,
                        (
                            VMS_CREATED.load(Ordering::Relaxed),
                            VMS_DESTROYED.load(Ordering::Relaxed),
                            SLOTS[s].load(Ordering::Relaxed),
                        ),
                    ));
                    return;
                }
                other => {
                    self.unexpected(format_args!(
                        "VM {h:#x}: VcpuRun -> {other:x?} ({regs:#x?}): not an exit the guest \
                         program causes"
                    ));
                    return;
                }
            }
            last_conversion = None;
            refused_in_a_row = 0;
        }
    }
}

/// Empties slot `s` if it still holds generation `generation`'s VM.
fn release(s: usize, generation: u64) {
    let w = SLOTS[s].load(Ordering::Acquire);
    let (_, state, g) = unpack(w);
    if g == generation && state != EMPTY && state != CREATING {
        let _ = SLOTS[s].compare_exchange(
            w,
            pack(0, EMPTY, generation + 1),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// Whether PageState's `x2..x6` for a pool or program page describe a
/// state our calls can put it in; why not.
fn possible_page_state(v: [u64; 5]) -> Result<(), &'static str> {
    use page_state::{NOPAGE as N, OWNED as O, SHARED_BORROWED as SB, SHARED_OWNED as SO};
    let [host, hyp, owner, counts, rest] = v;
    let shares = counts >> 16;
    let pins = counts & 0xffff;
    if rest != 0 {
        return Err("x6 set");
    }
    if pins != 0 {
        return Err("pinned: nothing pins these pages");
    }
    match owner & 0xffff {
        0 if owner != 0 => Err("host-owned, with a handle or gfn"),
        0 => match (host, hyp) {
            (O, N) if shares == 0 => Ok(()),
            (SO, SB) if shares == 0 => Ok(()),
            (SO, N) if shares > 0 => Ok(()),
            _ => Err("host-owned, in no state a host page can be in"),
        },
        1 if owner == 1 && (host, hyp, shares) == (N, O, 0) => Ok(()),
        1 => Err("hypervisor-owned, but host/hyp states disagree"),
        2 => {
            let handle = (owner >> 16) & 0xffff;
            let gfn = owner >> 32;
            if !(HANDLE_BASE..HANDLE_BASE + HANDLE_SCAN).contains(&handle) {
                Err("guest-owned by a handle el2 never gave out")
            } else if gfn >= GFNS && gfn != PROG_GFN {
                Err("guest-owned at a gfn nobody maps")
            } else if hyp != N || shares != 0 || !(host == N || host == SB) {
                Err("guest-owned, but host/hyp states disagree")
            } else {
                Ok(())
            }
        }
        _ => Err("unknown owner"),
    }
}

// ---------------------------------------------------------------------
// Secondary CPUs.

/// A stress worker's CPU (started with [`WORKER_TAG`] | its slot): waits
/// for the go, runs the loop, reports, turns itself off.
pub fn worker(context: u64) -> ! {
    let slot = arch::slot();
    let st = &CPUS[slot];
    let ok = (context & 0xff) as usize == slot;
    st.arrived.store(true, Ordering::Release);
    if ok && arch::wait_for(10_000_000, || GO.load(Ordering::Acquire)) {
        Worker::new(slot).run();
    }
    st.done.store(true, Ordering::Release);
    let _ = smc([u64::from(psci::PSCI_CPU_OFF), 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------
// The boot CPU.

fn host_stats(w: &Worker) -> Option<(u64, u64)> {
    w.call(HostCall::HostStats, [0; 5], OK)
        .ok()
        .map(|v| (v[0], v[1]))
}

fn invariants(w: &Worker) -> Option<u64> {
    w.call(HostCall::CheckInvariants, [0; 5], OK)
        .ok()
        .map(|v| v[0])
}

/// Runs the stress for `ms` milliseconds on every CPU, then the checks
/// and the CPU_OFF/CPU_ON race.
pub fn run(p: &Platform, ms: u64) -> Summary {
    let mut s = Summary::default();
    let seed = p.seed.unwrap_or_else(|| now() ^ 0x5eed_0000_0000);
    SEED.store(seed, Ordering::Relaxed);
    let cpus: alloc::vec::Vec<(usize, u64)> = p
        .cpus()
        .iter()
        .filter_map(|&m| arch::slot_of(m).map(|slot| (slot, m)))
        .collect();
    println!(
        "testhost: stress: seed {seed:#x} (testhost.seed={seed:#x} repeats the sequences), {} \
         CPU(s), {ms} ms, pool of {POOL_PAGES} pages at {:#x}, {VM_SLOTS} VM slots",
        cpus.len(),
        pool_pfn(0) << 12
    );
    // The boot CPU's worker state, for the calls made from here.
    DEADLINE.store(u64::MAX, Ordering::Relaxed);
    let boot = Worker::new(0);
    let before = host_stats(&boot);
    let inv_before = invariants(&boot);
    s.check(
        "stress: CheckInvariants before the stress -> 0 violations",
        inv_before == Some(0),
        format_args!("{inv_before:?}"),
    );

    // Start every other CPU and wait for it.
    let entry = secondary_entry as *const () as u64;
    let mut started = true;
    for &(slot, mpidr) in cpus.iter().filter(|&&(slot, _)| slot != 0) {
        let r = smc([
            u64::from(psci::PSCI_CPU_ON_64),
            mpidr,
            entry,
            WORKER_TAG | slot as u64,
        ])[0];
        let up = r == 0 && arch::wait_for(2_000_000, || CPUS[slot].arrived.load(Ordering::Acquire));
        if !up {
            println!(
                "testhost: stress: CPU {mpidr:#x} (slot {slot}): CPU_ON -> {r:#x}, arrived {up}"
            );
            started = false;
        }
    }
    s.check(
        "stress: every CPU started (CPU_ON) and reached the test host",
        started,
        format_args!("see above"),
    );

    // Go.
    let t0 = now();
    DEADLINE.store(t0 + ms * ticks_per_ms(), Ordering::Release);
    GO.store(true, Ordering::Release);
    let mut me = Worker::new(0);
    me.run();
    CPUS[0].done.store(true, Ordering::Release);
    // Done, and off (so that el2's CPU_OFF lines are over).
    let all_done = arch::wait_for(REPORT_SLACK_MS * 1000, || {
        cpus.iter().all(|&(slot, mpidr)| {
            CPUS[slot].done.load(Ordering::Acquire)
                && (slot == 0 || race::affinity(mpidr) == race::AFF_OFF)
        })
    });
    let wall_ms = (now() - t0) / ticks_per_ms();
    if !all_done {
        for &(slot, mpidr) in &cpus {
            let st = &CPUS[slot];
            if st.done.load(Ordering::Acquire) {
                continue;
            }
            let op = st.op.load(Ordering::Acquire);
            let call = HostCall::ALL.get(op as usize);
            let since = (now() - st.op_since.load(Ordering::Relaxed)) / ticks_per_ms();
            println!(
                "testhost: stress cpu {slot} (MPIDR {mpidr:#x}): no report {REPORT_SLACK_MS} ms \
                 after the deadline; {}",
                match call {
                    Some(c) => alloc::format!(
                        "in {c:?}(x1 {:#x}) for {since} ms",
                        st.op_arg.load(Ordering::Relaxed)
                    ),
                    None => "between calls".into(),
                }
            );
        }
    }
    s.check(
        "stress: every CPU reported back within the timeout",
        all_done,
        format_args!("a CPU is stuck (seed {seed:#x}): see above"),
    );
    if !all_done {
        // el2 may hold a lock forever: no more calls.
        return s;
    }
    report(&mut s, &cpus, ms, wall_ms);
    teardown_all(&mut s, &me);
    focus::run(&mut s, cpus.iter().copied().find(|&(slot, _)| slot != 0));
    final_checks(&mut s, &me, before);
    race::run(&mut s, &cpus);
    s
}

/// Prints the counts and checks the run did what it should.
fn report(s: &mut Summary, cpus: &[(usize, u64)], ms: u64, wall_ms: u64) {
    let mut total = 0;
    let mut totals = [0u64; NRES];
    for &(slot, _) in cpus {
        let st = &CPUS[slot];
        let calls = st.calls();
        total += calls;
        let ticks = st.ticks.load(Ordering::Relaxed).max(1);
        let per_s = u128::from(calls) * u128::from(ticks_per_ms()) * 1000 / u128::from(ticks);
        let mut mix = alloc::string::String::new();
        for (r, (name, _)) in RESULTS.iter().enumerate() {
            let n = st.by_result(r);
            totals[r] += n;
            if n != 0 {
                mix.push_str(&alloc::format!(", {name} {n}"));
            }
        }
        println!(
            "testhost: stress cpu {slot}: {calls} calls ({per_s}/s){mix}; {} unexpected; {} \
             guest sessions, {} exits; {} probes, {} aborted",
            st.unexpected.load(Ordering::Relaxed),
            st.sessions.load(Ordering::Relaxed),
            st.exits.load(Ordering::Relaxed),
            st.probes.load(Ordering::Relaxed),
            st.probe_aborts.load(Ordering::Relaxed),
        );
    }
    for c in HostCall::ALL {
        let n: [u64; NRES] = core::array::from_fn(|r| {
            cpus.iter()
                .map(|&(slot, _)| CPUS[slot].results[c as usize][r].load(Ordering::Relaxed))
                .sum()
        });
        let calls: u64 = n.iter().sum();
        if calls == 0 {
            continue;
        }
        let mut mix = alloc::string::String::new();
        for (r, (name, _)) in RESULTS.iter().enumerate() {
            if n[r] != 0 {
                mix.push_str(&alloc::format!(" {name} {}", n[r]));
            }
        }
        println!("testhost: stress calls: {c:?} {calls}:{mix}");
    }
    let pct = |n: u64| n * 100 / total.max(1);
    println!(
        "testhost: stress: {total} calls on {} CPU(s) in {wall_ms} ms ({} calls/s per CPU): ok \
         {}%, EPERM {}%, EINVAL {}%, EBUSY {}%, ENOENT {}%, ENOMEM {}%",
        cpus.len(),
        total * 1000 / ms.max(1) / cpus.len().max(1) as u64,
        pct(totals[0]),
        pct(totals[1]),
        pct(totals[8]),
        pct(totals[7]),
        pct(totals[2]),
        pct(totals[5]),
    );
    println!(
        "testhost: stress guest: {} VMs created, {} torn down; {} guest loops, {} conversions \
         completed or refused; {} plain runs met a VM without its program yet; {} sessions \
         met a replaced VM",
        VMS_CREATED.load(Ordering::Relaxed),
        VMS_DESTROYED.load(Ordering::Relaxed),
        GUEST_LOOPS.load(Ordering::Relaxed),
        CONVERSIONS.load(Ordering::Relaxed),
        ORPHAN_EXITS.load(Ordering::Relaxed),
        STALE_SESSIONS.load(Ordering::Relaxed),
    );
    for &(slot, _) in cpus {
        let st = &CPUS[slot];
        let calls = st.calls();
        let bad = st.unexpected.load(Ordering::Relaxed);
        s.check(
            &alloc::format!("stress: cpu {slot}: every result one the ABI allows"),
            bad == 0 && calls > 0,
            format_args!(
                "{bad} unexpected in {calls} calls (seed {:#x})",
                SEED.load(Ordering::Relaxed)
            ),
        );
    }
    s.check(
        "stress: the calls collided (EPERM, EINVAL and EBUSY answers seen)",
        totals[1] > 0 && totals[8] > 0 && totals[7] > 0,
        format_args!(
            "EPERM {}, EINVAL {}, EBUSY {}",
            totals[1], totals[8], totals[7]
        ),
    );
    let (created, destroyed) = (
        VMS_CREATED.load(Ordering::Relaxed),
        VMS_DESTROYED.load(Ordering::Relaxed),
    );
    s.check(
        "stress: VMs were created and torn down during the stress",
        created > 0 && destroyed > 0,
        format_args!("{created} created, {destroyed} torn down"),
    );
    let loops = GUEST_LOOPS.load(Ordering::Relaxed);
    s.check(
        "stress: a guest ran while the other CPUs hammered its VM",
        loops > 0 && CONVERSIONS.load(Ordering::Relaxed) > 0,
        format_args!(
            "{loops} guest loops, {} conversions",
            CONVERSIONS.load(Ordering::Relaxed)
        ),
    );
    let checks = INVARIANT_RUNS.load(Ordering::Relaxed);
    s.check(
        "stress: CheckInvariants during the stress -> 0 violations",
        checks > 0 && INVARIANT_BROKEN.load(Ordering::Relaxed) == 0,
        format_args!(
            "{} of {checks} runs found a violation",
            INVARIANT_BROKEN.load(Ordering::Relaxed)
        ),
    );
}

/// Tears every VM down (any handle that names one) and ends every share
/// with the hypervisor.
fn teardown_all(s: &mut Summary, w: &Worker) {
    let bad_before = w.st.unexpected.load(Ordering::Relaxed);
    let mut found = 0;
    for h in HANDLE_BASE..HANDLE_BASE + HANDLE_SCAN {
        let started = w.call(HostCall::TeardownStart, [h, 0, 0, 0, 0], OK | EINVAL);
        for gfn in (0..GFNS).chain([PROG_GFN]) {
            let _ = w.call(HostCall::Reclaim, [h, gfn, 1, 0, 0], OK | ENOENT | EINVAL);
        }
        match w.call(HostCall::TeardownFinish, [h, 0, 0, 0, 0], OK | EINVAL) {
            Ok(_) => found += 1,
            Err(_) if started.is_ok() => w.unexpected(format_args!(
                "VM {h:#x}: teardown started, every gfn reclaimed, yet TeardownFinish failed"
            )),
            Err(_) => {}
        }
    }
    let known = SLOTS
        .iter()
        .filter(|w| unpack(w.load(Ordering::Relaxed)).1 != EMPTY)
        .count();
    let left = (HANDLE_BASE..HANDLE_BASE + HANDLE_SCAN)
        .filter(|&h| {
            w.call(HostCall::GuestPageState, [h, 0, 0, 0, 0], OK | EINVAL)
                .is_ok()
        })
        .count();
    s.check(
        "stress: every VM torn down and its pages reclaimed",
        left == 0 && w.st.unexpected.load(Ordering::Relaxed) == bad_before,
        format_args!("{left} VM(s) left"),
    );
    println!(
        "testhost: stress: cleanup tore down {found} VM(s) ({known} in the slots), {left} left"
    );
    for i in 0..POOL_PAGES {
        let _ = w.call(HostCall::UnshareHyp, [pool_pfn(i), 0, 0, 0, 0], OK | EPERM);
    }
}

/// Checks the host got everything back.
fn final_checks(s: &mut Summary, w: &Worker, before: Option<(u64, u64)>) {
    let not_host: alloc::vec::Vec<(u64, [u64; 5])> = (0..POOL_PAGES)
        .map(pool_pfn)
        .chain((0..VM_SLOTS).map(program_pfn))
        .filter_map(|pfn| {
            let v = w.call(HostCall::PageState, [pfn, 0, 0, 0, 0], OK).ok()?;
            (v != [page_state::OWNED, page_state::NOPAGE, 0, 0, 0]).then_some((pfn, v))
        })
        .collect();
    s.check(
        "stress: every pool and program page host-owned again (O/N, no shares)",
        not_host.is_empty(),
        format_args!(
            "{} pages not: first {:#x?}",
            not_host.len(),
            not_host.first()
        ),
    );
    let inv = invariants(w);
    s.check(
        "stress: CheckInvariants after the stress -> 0 violations",
        inv == Some(0),
        format_args!("{inv:?}"),
    );
    let after = host_stats(w);
    s.check(
        "stress: HostStats host-owned pages and host stage-2 leaves as before the stress",
        before.is_some() && after == before,
        format_args!("before {before:?}, after {after:?}"),
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "testhost: stress: host-owned pages {} -> {}, host stage-2 leaves {} -> {}",
            b.0, a.0, b.1, a.1
        );
    }
}
