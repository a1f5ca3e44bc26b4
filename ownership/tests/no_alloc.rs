//! The transition path never touches the heap: after one warm-up round,
//! a round of guest transitions (share, unshare, donate, guest share and
//! unshare, relinquish, reclaim; pages and 2 MiB blocks) makes no heap
//! allocation at all. At EL2 the heap is a fixed carve-out shared by every
//! CPU, so an allocation on this path would be a way to fail (or to
//! contend) that the check-then-commit design otherwise rules out.
//!
//! A test binary of its own, because it installs a counting global
//! allocator. Only allocations made by the test's own thread while
//! counting is switched on are counted, so the harness's threads do not
//! disturb it. The TLB maintenance is the no-op one (the recording one
//! keeps its log in a `Vec`).

use ownership::testing::{RecordingHyp, SimMem, SimRam};
use ownership::*;
use stage2::testing::ArenaPool;
use stage2::tlb::record::NoopTlb;
use stage2::{PaRange, PhysAddr};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations (including reallocations) counted so far.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are being counted. Const
    /// initialised, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The system allocator, counting this thread's allocations while
/// `COUNTING` is set.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; counting has no
// effect on the allocations.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap allocations `f` makes on this thread.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.load(Ordering::Relaxed) - before, r)
}

const RAM_BASE: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 4096;
const RAM_PFN: u64 = RAM_BASE >> 12;
const CARVE_PAGES: u64 = 512;
/// Guest root (two concatenated pages for a 40-bit IPA) and memcache.
const PGD: u64 = RAM_PFN + 0x100;
const MC: u64 = RAM_PFN + 0x110;
/// Host pages and 2 MiB blocks the round uses.
const PAGE_A: u64 = RAM_PFN + 0x40;
const PAGE_B: u64 = RAM_PFN + 0x41;
const BLOCK_A: u64 = RAM_PFN + 0x400;
const BLOCK_B: u64 = RAM_PFN + 0x600;
/// Guest frames: pages in one level-3 table, blocks 2 MiB aligned.
const GFN_PAGE: u64 = 0x8_0000;
const GFN_BLOCK_A: u64 = 0x8_0200;
const GFN_BLOCK_B: u64 = 0x8_0400;

type Own = Ownership<SimMem, ArenaPool, RecordingHyp>;

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

/// One round of guest transitions on a live guest `h`, ending with the
/// guest torn down up to (not including) `finish_teardown`: every page and
/// block is back with the host.
fn round(o: &Own, h: GuestHandle) {
    let t = &mut NoopTlb;
    let page = |p: u64| Pfn(p);
    // Host → guest shares, a page and a block, and back.
    ok(
        o.host_share_guest(t, h, page(PAGE_A), Gfn(GFN_PAGE), Extent::Page),
        "share page",
    );
    ok(
        o.host_share_guest(t, h, page(BLOCK_A), Gfn(GFN_BLOCK_A), Extent::Block),
        "share block",
    );
    ok(
        o.host_unshare_guest(t, h, Gfn(GFN_PAGE), Extent::Page),
        "unshare page",
    );
    ok(
        o.host_unshare_guest(t, h, Gfn(GFN_BLOCK_A), Extent::Block),
        "unshare block",
    );
    // Donations, a page and a block.
    ok(
        o.host_donate_guest(t, h, page(PAGE_A), Gfn(GFN_PAGE), Extent::Page),
        "donate page",
    );
    ok(
        o.host_donate_guest(t, h, page(PAGE_B), Gfn(GFN_PAGE + 1), Extent::Page),
        "donate second page",
    );
    ok(
        o.host_donate_guest(t, h, page(BLOCK_B), Gfn(GFN_BLOCK_B), Extent::Block),
        "donate block",
    );
    // The guest shares a donated page and a page of the block back, then
    // unshares them; a conversion requested and completed.
    ok(
        o.guest_share_host(t, h, Gfn(GFN_PAGE), 1),
        "guest share page",
    );
    ok(
        o.guest_share_host(t, h, Gfn(GFN_BLOCK_B + 7), 1),
        "guest share page of block",
    );
    ok(
        o.guest_unshare_host(t, h, Gfn(GFN_PAGE), 1),
        "guest unshare page",
    );
    ok(
        o.guest_unshare_host(t, h, Gfn(GFN_BLOCK_B + 7), 1),
        "guest unshare page of block",
    );
    let conversion = Conversion {
        kind: ConversionKind::Share,
        gfn: Gfn(GFN_PAGE),
        pages: 1,
    };
    ok(o.guest_request_conversion(h, conversion), "request");
    ok(o.host_complete_conversion(t, h, conversion), "complete");
    // The guest gives the shared page back; teardown reclaims the rest.
    ok(o.guest_relinquish(t, h, Gfn(GFN_PAGE), 1), "relinquish");
    ok(o.start_teardown(h), "start teardown");
    ok(
        o.host_reclaim(t, h, Gfn(GFN_PAGE + 1), Extent::Page),
        "reclaim page",
    );
    ok(
        o.host_reclaim(t, h, Gfn(GFN_BLOCK_B), Extent::Block),
        "reclaim block",
    );
}

#[test]
fn guest_transitions_do_not_allocate() {
    // The counter counts, and only while switched on.
    let (n, v) = allocations_in(|| vec![1u8; 8]);
    assert_eq!((n, v.len()), (1, 8), "the counting allocator counts");
    drop(v);

    let ram = SimRam::new(RAM_BASE, RAM_PAGES * 4096);
    let layout = Layout {
        pa_range: PaRange::Bits40,
        ram: &[MemRegion {
            base: Pfn(RAM_PFN),
            pages: RAM_PAGES,
        }],
        mmio: &[(PhysAddr(0x0800_0000), 0x0200_0000)],
        hyp: &[MemRegion {
            base: Pfn(RAM_PFN + RAM_PAGES - CARVE_PAGES),
            pages: CARVE_PAGES,
        }],
    };
    let o: Own = ok(
        Ownership::new(
            layout,
            ram.mem(),
            ArenaPool::new(512),
            RecordingHyp::default(),
            &mut NoopTlb,
        ),
        "ownership set-up",
    );
    let start = o.with_host(|h| h.stage2().stats(h.pool()));
    // Warm-up round, then counted rounds on a fresh guest each time
    // (creating, topping up and finishing the teardown of a guest are
    // outside the counted part).
    for round_no in 0..3 {
        let t = &mut NoopTlb;
        let h = ok(o.create_guest(t, 40, Pfn(PGD)), "create guest");
        ok(o.topup_memcache(t, h, Pfn(MC), 16), "topup");
        let (n, ()) = allocations_in(|| round(&o, h));
        if round_no > 0 {
            assert_eq!(
                n, 0,
                "round {round_no}: the transitions allocated {n} times"
            );
        }
        ok(o.finish_teardown(t, h), "finish teardown");
        if let Err(v) = ownership::check::check(&o) {
            panic!("invariant broken after round {round_no}: {v}");
        }
    }
    // Everything went back: the host stage-2 is as it started.
    assert_eq!(o.with_host(|h| h.stage2().stats(h.pool())), start);
}
