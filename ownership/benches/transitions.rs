//! Costs of the ownership transitions, against plain stage-2 updates.
//!
//! Run with `cargo bench -p ownership`; the results are in
//! `ownership/README.md`. Set-up as in the crate's tests: 16 MiB of
//! simulated RAM at 0x4000_0000 with the top 2 MiB carved out for the
//! hypervisor, 32 MiB of MMIO, a 512-page [`ArenaPool`] for the host
//! stage-2, guests with a 40-bit IPA space. Every table update here uses a
//! no-op [`TlbMaintenance`] (the break-before-make sequences still run;
//! only the instructions are empty), so recording does not inflate times.
//!
//! - `share_unshare_page`: `host_share_guest` then `host_unshare_guest` of
//!   one page (`Extent::Page`), per round trip, next to `Stage2::map` then
//!   `Stage2::unmap` of the same page with the same attributes on a
//!   `Stage2` of the guest's configuration. The page is entry 0 of its
//!   level-3 table. Around it, on both sides: `one_neighbour`, entry 1 is
//!   mapped (a sparse table); `full_table`, entries 1–511 are mapped;
//!   `empty_table`, nothing, so each round trip allocates and frees the
//!   level-2 and level-3 tables.
//! - `donate_2MiB`: one `host_donate_guest(.., Extent::Block)` next to 512
//!   `Extent::Page` donations of the same 2 MiB (and one single page, for
//!   scale). Only the donation calls are timed: the guest is created
//!   before and torn down (reclaim + `finish_teardown`) after, untimed.
//! - `random_10k`: 10,000 transitions from a deterministic xorshift
//!   sequence over the 16 MiB with two guests (donate, share, unshare,
//!   guest share/unshare and conversions, relinquish, forced reclaim, 2 MiB
//!   donations and shares, hypervisor and FF-A shares, pins, hypervisor
//!   donations, memcache top-ups, guest teardown with reclaim, and guest
//!   re-creation), every one of which must succeed. A model in this file
//!   generates the sequence once against a live state, only ever issuing
//!   valid calls, then undoes everything (unshare, teardown + reclaim of
//!   every guest, `finish_teardown`, end every hypervisor and FF-A share
//!   and donation); the calls are recorded. Each timed iteration replays
//!   the 10,000 calls (nothing else is timed), then replays the undo calls
//!   untimed and asserts that the host stage-2 statistics (leaves per
//!   level, tables, annotations), every ownership entry and the
//!   hypervisor's mappings equal the start.
//!
//! Before the benchmarks, `report` runs each workload once with the
//! invariant checker (`ownership::check::check`) and prints the leaf and
//! table counts, and for the share round trips and the donations the work
//! each did: per stage-2 table, the operations committed, descriptors read
//! and written, tables visited and TLB invalidations ([`stage2::Work`]),
//! and the heap allocations made (a counting global allocator).

use criterion::{Criterion, SamplingMode, criterion_group};
use ownership::check::check;
use ownership::testing::{RecordingHyp, SimMem, SimRam};
use ownership::{
    BLOCK_PAGES, BYTES_PER_PAGE, Conversion, ConversionKind, Extent, Gfn, GuestHandle, Layout,
    MemRegion, Ownership, PageEntry, Pfn,
};
use stage2::testing::ArenaPool;
use stage2::tlb::record::NoopTlb;
use stage2::{
    Ipa, LeafAttrs, PAGE_SIZE, PaRange, PageState as S2State, Perms, PhysAddr, Stage2,
    Stage2Config, Stats, Work,
};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Counting heap allocations.

/// Every heap allocation (and reallocation) so far.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting allocations.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; the counter has no
// effect on the allocations.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// One line of counts: `Work` of a table (as a difference) and the heap
/// allocations, for `calls` calls.
fn fmt_work(w: &Work, calls: u64) -> String {
    let per = |v: u64| {
        if calls > 1 {
            format!("{v} ({:.1}/call)", v as f64 / calls as f64)
        } else {
            v.to_string()
        }
    };
    format!(
        "ops {}, descriptors read {}, written {}, tables visited {}, +/- tables {}/{}, tlbi ipa/s1/vmid {}/{}/{}",
        w.ops,
        per(w.reads),
        per(w.writes),
        per(w.tables_visited),
        w.tables_added,
        w.tables_freed,
        w.tlbi_ipa,
        w.tlbi_stage1,
        w.tlbi_vmid
    )
}

// ---------------------------------------------------------------------------
// Set-up.

const RAM_BASE: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 4096;
const CARVE_PAGES: u64 = 512;
const RAM_PFN: u64 = RAM_BASE >> 12;
const CARVE_PFN: u64 = RAM_PFN + RAM_PAGES - CARVE_PAGES;
/// Pages of the host stage-2 pool.
const HOST_POOL_PAGES: usize = 512;
/// Guest IPA bits (start level 1, two concatenated root pages).
const IPA_BITS: u8 = 40;

type Own = Ownership<SimMem, ArenaPool, RecordingHyp>;

/// The ownership state over simulated RAM. `o` is declared first so it is
/// dropped before the RAM it points into.
struct Env {
    o: Own,
    tlb: NoopTlb,
    _ram: SimRam,
}

impl Env {
    fn new() -> Env {
        let ram = SimRam::new(RAM_BASE, RAM_PAGES * PAGE_SIZE);
        // Fault every page in now, not inside a timed section.
        for i in 0..RAM_PAGES {
            ram.fill_page(Pfn(RAM_PFN + i), 0);
        }
        let mut tlb = NoopTlb;
        let layout = Layout {
            pa_range: PaRange::Bits40,
            ram: &[MemRegion {
                base: Pfn(RAM_PFN),
                pages: RAM_PAGES,
            }],
            mmio: &[(PhysAddr(0x0800_0000), 0x0200_0000)],
            hyp: &[MemRegion {
                base: Pfn(CARVE_PFN),
                pages: CARVE_PAGES,
            }],
        };
        let pool = ArenaPool::new(HOST_POOL_PAGES);
        let o = Ownership::new(layout, ram.mem(), pool, RecordingHyp::default(), &mut tlb)
            .expect("ownership set-up");
        let env = Env { o, tlb, _ram: ram };
        env.check();
        env
    }

    fn check(&self) {
        if let Err(v) = check(&self.o) {
            panic!("invariant broken: {v}");
        }
    }

    /// A guest with its root at `pgd` and `memcache` pages from `mc`.
    fn guest(&mut self, pgd: u64, mc: u64, memcache: u64) -> GuestHandle {
        let h = self
            .o
            .create_guest(&mut self.tlb, IPA_BITS, Pfn(pgd))
            .expect("create guest");
        self.o
            .topup_memcache(&mut self.tlb, h, Pfn(mc), memcache)
            .expect("topup");
        h
    }

    fn host_stats(&self) -> Stats {
        self.o.with_host(|h| h.stage2().stats(h.pool()))
    }

    /// The work so far of the host stage-2 and of guest `h`'s.
    fn work(&self, h: GuestHandle) -> (Work, Work) {
        let host = self.o.with_host(|m| m.stage2().work());
        let guest = ok(self.o.with_guest(h, |g| g.stage2().work()), "guest");
        (host, guest)
    }

    /// Runs `f`, printing the work of both stage-2 tables and the heap
    /// allocations made, as `what`, for `calls` calls.
    fn counted(&mut self, h: GuestHandle, what: &str, calls: u64, f: impl FnOnce(&mut Env)) {
        let (host0, guest0) = self.work(h);
        let a0 = allocations();
        f(self);
        let allocs = allocations() - a0;
        let (host1, guest1) = self.work(h);
        println!("  {what}: heap allocations {allocs}");
        println!(
            "    guest stage-2: {}",
            fmt_work(&guest1.since(guest0), calls)
        );
        println!(
            "    host stage-2:  {}",
            fmt_work(&host1.since(host0), calls)
        );
    }

    /// Every page's entry and the hypervisor's mappings.
    fn snapshot(&self) -> (Vec<PageEntry>, Vec<u64>) {
        let table = self
            .o
            .with_host(|h| h.table().iter().map(|(_, e)| e).collect());
        let hyp = self.o.with_hyp(|m| m.mapped.iter().copied().collect());
        (table, hyp)
    }
}

/// Unwraps an ownership call, naming it on failure.
fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
    g
}

// ---------------------------------------------------------------------------
// 1. Share + unshare of one page, against stage-2 map + unmap.

/// Guest root, memcache and shared page (host frames).
const PGD: u64 = RAM_PFN + 0x100;
const MC: u64 = RAM_PFN + 0x110;
const SHARED: u64 = RAM_PFN + 0x40;
/// Host frame of the neighbour at `GFN + i` is `NEIGHBOURS + i`.
const NEIGHBOURS: u64 = RAM_PFN + 0x200;
/// Guest frame of the shared page: entry 0 of its level-3 table.
const GFN: u64 = 0x8_0000;

/// A guest's stage-2 leaf attributes for a page the host lends it, as the
/// ownership crate writes them (normal, RWX, software state SB).
const SB_ATTRS: LeafAttrs = LeafAttrs::normal(Perms::RWX).with_state(S2State::SharedBorrowed);
const OWNED_ATTRS: LeafAttrs = LeafAttrs::normal(Perms::RWX).with_state(S2State::Owned);

/// What else the level-3 table of the shared page maps, on both sides.
#[derive(Clone, Copy)]
enum Neighbours {
    /// Entry 1 only: the table exists but is sparse.
    One,
    /// Entries 1–511: a full table.
    Full,
    /// Nothing: no table below the root.
    None,
}

impl Neighbours {
    const ALL: [Neighbours; 3] = [Neighbours::One, Neighbours::Full, Neighbours::None];

    fn name(self) -> &'static str {
        match self {
            Neighbours::One => "one_neighbour",
            Neighbours::Full => "full_table",
            Neighbours::None => "empty_table",
        }
    }

    /// The neighbours' offsets from `GFN` (and from `NEIGHBOURS`).
    fn offsets(self) -> std::ops::Range<u64> {
        match self {
            Neighbours::One => 1..2,
            Neighbours::Full => 1..BLOCK_PAGES,
            Neighbours::None => 1..1,
        }
    }
}

/// The ownership side: a guest, with the neighbours donated to it.
fn share_env(n: Neighbours) -> (Env, GuestHandle) {
    let mut env = Env::new();
    let h = env.guest(PGD, MC, 16);
    for i in n.offsets() {
        let r = env.o.host_donate_guest(
            &mut env.tlb,
            h,
            Pfn(NEIGHBOURS + i),
            Gfn(GFN + i),
            Extent::Page,
        );
        ok(r, "donate neighbour");
    }
    (env, h)
}

#[inline(never)]
fn share_round_trip(env: &mut Env, h: GuestHandle) {
    let r = env.o.host_share_guest(
        &mut env.tlb,
        black_box(h),
        black_box(Pfn(SHARED)),
        black_box(Gfn(GFN)),
        Extent::Page,
    );
    ok(r, "share");
    let r = env
        .o
        .host_unshare_guest(&mut env.tlb, h, black_box(Gfn(GFN)), Extent::Page);
    ok(r, "unshare");
}

/// The baseline: a bare stage-2 of the guest's configuration.
struct Bare {
    pool: ArenaPool,
    tlb: NoopTlb,
    s2: Option<Stage2>,
}

impl Bare {
    fn new(n: Neighbours) -> Bare {
        let mut pool = ArenaPool::new(16);
        let config = Stage2Config::new(IPA_BITS, PaRange::Bits48).expect("config");
        let mut s2 = Stage2::new(config, 1, &mut pool).expect("root");
        let mut tlb = NoopTlb;
        for i in n.offsets() {
            let r = s2.map(
                &mut pool,
                &mut tlb,
                Ipa((GFN + i) * PAGE_SIZE),
                PAGE_SIZE,
                PhysAddr((NEIGHBOURS + i) * PAGE_SIZE),
                OWNED_ATTRS,
            );
            ok(r, "map neighbour");
        }
        Bare {
            pool,
            tlb,
            s2: Some(s2),
        }
    }

    #[inline(never)]
    fn round_trip(&mut self) {
        self.map_shared();
        self.unmap_shared();
    }

    #[inline(always)]
    fn map_shared(&mut self) {
        let s2 = self.s2.as_mut().expect("live table");
        let r = s2.map(
            &mut self.pool,
            &mut self.tlb,
            black_box(Ipa(GFN * PAGE_SIZE)),
            PAGE_SIZE,
            black_box(PhysAddr(SHARED * PAGE_SIZE)),
            SB_ATTRS,
        );
        ok(r, "map");
    }

    #[inline(always)]
    fn unmap_shared(&mut self) {
        let s2 = self.s2.as_mut().expect("live table");
        let r = s2.unmap(
            &mut self.pool,
            &mut self.tlb,
            black_box(Ipa(GFN * PAGE_SIZE)),
            PAGE_SIZE,
        );
        ok(r, "unmap");
    }

    fn stats(&self) -> Stats {
        self.s2.as_ref().expect("live table").stats(&self.pool)
    }

    fn work(&self) -> Work {
        self.s2.as_ref().expect("live table").work()
    }
}

/// The baseline with the ownership side's locking: map and unmap each
/// under two uncontended spin locks taken in the same order (the host's,
/// then the guest's, as every host-guest transition takes them), so that
/// what `ownership` costs beyond it is the ownership logic alone.
struct LockedBare {
    host: spin::Mutex<()>,
    guest: spin::Mutex<Bare>,
}

impl LockedBare {
    fn new(n: Neighbours) -> LockedBare {
        LockedBare {
            host: spin::Mutex::new(()),
            guest: spin::Mutex::new(Bare::new(n)),
        }
    }

    #[inline(never)]
    fn round_trip(&self) {
        {
            let _host = black_box(&self.host).lock();
            black_box(&self.guest).lock().map_shared();
        }
        let _host = black_box(&self.host).lock();
        black_box(&self.guest).lock().unmap_shared();
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(s2) = self.s2.take() {
            s2.destroy(&mut self.pool, &mut self.tlb);
        }
    }
}

fn bench_share(c: &mut Criterion) {
    for n in Neighbours::ALL {
        let mut g = group(c, &format!("share_unshare_page/{}", n.name()));
        let (mut env, h) = share_env(n);
        g.bench_function("ownership", |b| b.iter(|| share_round_trip(&mut env, h)));
        let mut bare = Bare::new(n);
        g.bench_function("stage2", |b| b.iter(|| bare.round_trip()));
        let locked = LockedBare::new(n);
        g.bench_function("stage2_two_locks", |b| b.iter(|| locked.round_trip()));
        g.finish();
        env.check();
    }
}

// ---------------------------------------------------------------------------
// 2. One 2 MiB donation against 512 page donations.

/// A 2 MiB-aligned host block.
const BLOCK: u64 = RAM_PFN + 0x400;

#[derive(Clone, Copy)]
enum Donation {
    Block,
    Pages,
    OnePage,
}

impl Donation {
    fn run(self, env: &mut Env, h: GuestHandle) {
        let t = &mut env.tlb;
        match self {
            Donation::Block => ok(
                env.o
                    .host_donate_guest(t, h, Pfn(BLOCK), Gfn(GFN), Extent::Block),
                "donate block",
            ),
            Donation::Pages => {
                for i in 0..BLOCK_PAGES {
                    let r =
                        env.o
                            .host_donate_guest(t, h, Pfn(BLOCK + i), Gfn(GFN + i), Extent::Page);
                    ok(r, "donate page");
                }
            }
            Donation::OnePage => ok(
                env.o
                    .host_donate_guest(t, h, Pfn(BLOCK), Gfn(GFN), Extent::Page),
                "donate page",
            ),
        }
    }

    /// Takes the donated memory back and destroys the guest.
    fn undo(self, env: &mut Env, h: GuestHandle) {
        ok(env.o.start_teardown(h), "start teardown");
        let ext = match self {
            Donation::OnePage => Extent::Page,
            _ => Extent::Block,
        };
        ok(
            env.o.host_reclaim(&mut env.tlb, h, Gfn(GFN), ext),
            "reclaim",
        );
        ok(env.o.finish_teardown(&mut env.tlb, h), "finish teardown");
    }
}

/// Times `iters` donations, each into a freshly created guest, torn down
/// after (untimed).
fn time_donation(env: &mut Env, d: Donation, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let h = env.guest(PGD, MC, 16);
        let t0 = Instant::now();
        d.run(env, h);
        total += t0.elapsed();
        d.undo(env, h);
    }
    total
}

fn bench_donate(c: &mut Criterion) {
    let mut env = Env::new();
    let start = env.host_stats();
    let mut g = group(c, "donate_2MiB");
    for (name, d) in [
        ("block_1_call", Donation::Block),
        ("pages_512_calls", Donation::Pages),
        ("one_page", Donation::OnePage),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| time_donation(&mut env, d, iters))
        });
    }
    g.finish();
    assert_eq!(
        env.host_stats(),
        start,
        "donate/teardown left the host changed"
    );
    env.check();
}

// ---------------------------------------------------------------------------
// 3. 10,000 random transitions that return to the start.

/// Transitions in the timed sequence.
const TRANSITIONS: usize = 10_000;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Host frames (offsets from `RAM_PFN`): guest roots at 0 and 2, single
/// pages in `[SINGLES_START, SINGLES_END)`, two 2 MiB blocks for block
/// operations, then the carve-out.
const SINGLES_START: u32 = 4;
const SINGLES_END: u32 = 0xa00;
const HBLOCKS: [u32; 2] = [0xa00, 0xc00];
/// Guest frames: single pages from `GSINGLE` (`NG` of them), two block
/// slots from `GBLOCK`.
const GSINGLE: u64 = 0x1000;
const NG: u32 = 1024;
const GBLOCK: u64 = 0x4000;
/// A guest op tops up the memcache first when it has fewer pages than this.
const MEMCACHE_LOW: usize = 4;
const MAX_PINS: u16 = 3;

/// xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }
}

/// A set of small integers with O(1) insert, remove and random pick.
struct Set {
    items: Vec<u32>,
    /// Index + 1 in `items`, 0 if absent.
    pos: Vec<u32>,
}

impl Set {
    fn new(universe: u32) -> Set {
        Set {
            items: Vec::new(),
            pos: vec![0; universe as usize],
        }
    }

    fn full(range: std::ops::Range<u32>, universe: u32) -> Set {
        let mut s = Set::new(universe);
        for v in range {
            s.insert(v);
        }
        s
    }

    fn contains(&self, v: u32) -> bool {
        self.pos[v as usize] != 0
    }

    fn insert(&mut self, v: u32) {
        assert!(!self.contains(v), "{v:#x} inserted twice");
        self.items.push(v);
        self.pos[v as usize] = self.items.len() as u32;
    }

    fn remove(&mut self, v: u32) {
        let i = self.pos[v as usize] as usize;
        assert!(i != 0, "{v:#x} removed but absent");
        let last = self.items.pop().expect("non-empty");
        if last != v {
            self.items[i - 1] = last;
            self.pos[last as usize] = i as u32;
        }
        self.pos[v as usize] = 0;
    }

    fn pick(&self, rng: &mut Rng) -> Option<u32> {
        (!self.items.is_empty()).then(|| self.items[rng.below(self.items.len())])
    }

    /// Removes and returns a random element.
    fn take(&mut self, rng: &mut Rng) -> Option<u32> {
        let v = self.pick(rng)?;
        self.remove(v);
        Some(v)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One call to the ownership code. The sequence is generated once (by
/// [`Model`], against a live [`Env`]) and recorded; the timed runs replay
/// the record, so nothing but the calls and a `match` is timed.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// Root at the frame; the handle the call must return.
    CreateGuest(Pfn, GuestHandle),
    TopupMemcache(GuestHandle, Pfn),
    HostDonateGuest(GuestHandle, Pfn, Gfn, Extent),
    HostShareGuest(GuestHandle, Pfn, Gfn, Extent),
    HostUnshareGuest(GuestHandle, Gfn, Extent),
    GuestShareHost(GuestHandle, Gfn, u64),
    GuestUnshareHost(GuestHandle, Gfn, u64),
    RequestConversion(GuestHandle, Conversion),
    CompleteConversion(GuestHandle, Conversion),
    RefuseConversion(GuestHandle),
    GuestRelinquish(GuestHandle, Gfn, u64),
    HostForceReclaim(PhysAddr),
    StartTeardown(GuestHandle),
    HostReclaim(GuestHandle, Gfn, Extent),
    FinishTeardown(GuestHandle),
    HostShareHyp(Pfn),
    HostUnshareHyp(Pfn),
    HypPinShared(Pfn),
    HypUnpinShared(Pfn),
    HostDonateHyp(Pfn),
    HypDonateHost(Pfn),
    HostShareFfa(Pfn),
    HostUnshareFfa(Pfn),
}

impl Call {
    /// Makes the call; panics if it fails.
    #[inline]
    fn run(self, o: &Own, t: &mut NoopTlb) {
        let r = match self {
            Call::CreateGuest(pgd, want) => o
                .create_guest(t, IPA_BITS, pgd)
                .map(|h| assert_eq!(h, want, "guest handle")),
            Call::TopupMemcache(h, p) => o.topup_memcache(t, h, p, 1),
            Call::HostDonateGuest(h, p, g, e) => o.host_donate_guest(t, h, p, g, e),
            Call::HostShareGuest(h, p, g, e) => o.host_share_guest(t, h, p, g, e),
            Call::HostUnshareGuest(h, g, e) => o.host_unshare_guest(t, h, g, e),
            Call::GuestShareHost(h, g, n) => o.guest_share_host(t, h, g, n),
            Call::GuestUnshareHost(h, g, n) => o.guest_unshare_host(t, h, g, n),
            Call::RequestConversion(h, c) => o.guest_request_conversion(h, c),
            Call::CompleteConversion(h, c) => o.host_complete_conversion(t, h, c),
            Call::RefuseConversion(h) => o.host_refuse_conversion(h).map(drop),
            Call::GuestRelinquish(h, g, n) => o.guest_relinquish(t, h, g, n),
            Call::HostForceReclaim(a) => o.host_force_reclaim(t, a),
            Call::StartTeardown(h) => o.start_teardown(h),
            Call::HostReclaim(h, g, e) => o.host_reclaim(t, h, g, e),
            Call::FinishTeardown(h) => o.finish_teardown(t, h),
            Call::HostShareHyp(p) => o.host_share_hyp(p),
            Call::HostUnshareHyp(p) => o.host_unshare_hyp(p),
            Call::HypPinShared(p) => o.hyp_pin_shared(p, 1),
            Call::HypUnpinShared(p) => o.hyp_unpin_shared(p, 1),
            Call::HostDonateHyp(p) => o.host_donate_hyp(t, p, 1),
            Call::HypDonateHost(p) => o.hyp_donate_host(t, p, 1),
            Call::HostShareFfa(p) => o.host_share_ffa(p, 1),
            Call::HostUnshareFfa(p) => o.host_unshare_ffa(p, 1),
        };
        if let Err(e) = r {
            panic!("{self:?} failed: {e:?}");
        }
    }

    /// The method, with the extent or page count, for the histogram.
    fn name(self) -> String {
        let ext = |e: Extent| match e {
            Extent::Page => "page",
            Extent::Block => "2 MiB",
        };
        let pages = |n: u64| if n == 1 { "page" } else { "512 pages" };
        match self {
            Call::CreateGuest(..) => "create_guest".into(),
            Call::TopupMemcache(..) => "topup_memcache".into(),
            Call::HostDonateGuest(.., e) => format!("host_donate_guest({})", ext(e)),
            Call::HostShareGuest(.., e) => format!("host_share_guest({})", ext(e)),
            Call::HostUnshareGuest(.., e) => format!("host_unshare_guest({})", ext(e)),
            Call::GuestShareHost(_, g, _) | Call::GuestUnshareHost(_, g, _) => {
                let what = if matches!(self, Call::GuestShareHost(..)) {
                    "guest_share_host"
                } else {
                    "guest_unshare_host"
                };
                let of = if g.0 >= GBLOCK {
                    "page of a block"
                } else {
                    "page"
                };
                format!("{what}({of})")
            }
            Call::RequestConversion(..) => "guest_request_conversion".into(),
            Call::CompleteConversion(..) => "host_complete_conversion".into(),
            Call::RefuseConversion(..) => "host_refuse_conversion".into(),
            Call::GuestRelinquish(.., n) => format!("guest_relinquish({})", pages(n)),
            Call::HostForceReclaim(..) => "host_force_reclaim".into(),
            Call::StartTeardown(..) => "start_teardown".into(),
            Call::HostReclaim(.., e) => format!("host_reclaim({})", ext(e)),
            Call::FinishTeardown(..) => "finish_teardown".into(),
            Call::HostShareHyp(..) => "host_share_hyp".into(),
            Call::HostUnshareHyp(..) => "host_unshare_hyp".into(),
            Call::HypPinShared(..) => "hyp_pin_shared".into(),
            Call::HypUnpinShared(..) => "hyp_unpin_shared".into(),
            Call::HostDonateHyp(..) => "host_donate_hyp".into(),
            Call::HypDonateHost(..) => "hyp_donate_host".into(),
            Call::HostShareFfa(..) => "host_share_ffa".into(),
            Call::HostUnshareFfa(..) => "host_unshare_ffa".into(),
        }
    }
}

/// A call on one page, such as `Call::HostShareHyp`.
type PfnCall = fn(Pfn) -> Call;

/// Runs `calls` in order.
fn replay(env: &mut Env, calls: &[Call]) {
    for &c in calls {
        c.run(&env.o, &mut env.tlb);
    }
}

/// The random choices and their weights.
#[derive(Clone, Copy)]
enum Choice {
    ShareHyp,
    UnshareHyp,
    Pin,
    Unpin,
    DonateHyp,
    HypDonateHost,
    ShareFfa,
    UnshareFfa,
    DonatePage,
    SharePage,
    UnsharePage,
    GuestShare,
    GuestUnshare,
    Relinquish,
    ForceReclaim,
    DonateBlock,
    ShareBlock,
    UnshareBlock,
    BlockGuestShare,
    BlockGuestUnshare,
    RelinquishBlock,
    Teardown,
}

const CHOICES: &[(Choice, usize)] = &[
    (Choice::ShareHyp, 12),
    (Choice::UnshareHyp, 12),
    (Choice::Pin, 8),
    (Choice::Unpin, 8),
    (Choice::DonateHyp, 12),
    (Choice::HypDonateHost, 12),
    (Choice::ShareFfa, 8),
    (Choice::UnshareFfa, 8),
    (Choice::DonatePage, 48),
    (Choice::SharePage, 32),
    (Choice::UnsharePage, 28),
    (Choice::GuestShare, 24),
    (Choice::GuestUnshare, 22),
    (Choice::Relinquish, 36),
    (Choice::ForceReclaim, 4),
    (Choice::DonateBlock, 4),
    (Choice::ShareBlock, 4),
    (Choice::UnshareBlock, 4),
    (Choice::BlockGuestShare, 8),
    (Choice::BlockGuestUnshare, 8),
    (Choice::RelinquishBlock, 4),
    (Choice::Teardown, 1),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Dead,
    Alive,
    Dying,
}

/// What a guest block slot holds.
enum Slot {
    Empty,
    /// Host block `.0` donated; `.1`: pages the guest shares back.
    Donated(usize, Set),
    /// Host block `.0` lent.
    Shared(usize),
}

struct GuestModel {
    life: Life,
    handle: GuestHandle,
    pgd: Pfn,
    /// Host pages given to the memcache (back to the host at teardown).
    memcache: Vec<u32>,
    /// Free single gfns (indices from `GSINGLE`).
    gfree: Set,
    /// Guest-private pages, guest pages shared with the host, host pages
    /// lent to the guest.
    private: Set,
    shared: Set,
    borrowed: Set,
    /// Host page (offset) at each single gfn.
    frame: Vec<u32>,
    slots: [Slot; 2],
    pending: Option<Conversion>,
}

impl GuestModel {
    fn new(pgd: Pfn) -> GuestModel {
        GuestModel {
            life: Life::Dead,
            handle: GuestHandle(0),
            pgd,
            memcache: Vec::new(),
            gfree: Set::full(0..NG, NG),
            private: Set::new(NG),
            shared: Set::new(NG),
            borrowed: Set::new(NG),
            frame: vec![0; NG as usize],
            slots: [Slot::Empty, Slot::Empty],
            pending: None,
        }
    }
}

#[derive(Default)]
struct HostBlock {
    donated: bool,
    shares: u32,
}

/// What the sequence has done, so that it issues only valid calls and can
/// undo everything.
struct Model {
    rng: Rng,
    /// Single host pages host-owned and not shared.
    free: Set,
    /// Single host pages lent to guests, and their share counts.
    lent: Set,
    shares: Vec<u32>,
    hyp_shared: Set,
    pinned: Set,
    pins: Vec<u16>,
    ffa: Set,
    hyp_donated: Set,
    hblocks: [HostBlock; 2],
    guests: [GuestModel; 2],
    /// Every call made, in order.
    log: Vec<Call>,
    min_free: usize,
}

fn pfn(off: u32) -> Pfn {
    Pfn(RAM_PFN + off as u64)
}

fn sgfn(idx: u32) -> Gfn {
    Gfn(GSINGLE + idx as u64)
}

fn bgfn(slot: usize) -> Gfn {
    Gfn(GBLOCK + slot as u64 * BLOCK_PAGES)
}

/// Records and makes `call`.
fn exec(log: &mut Vec<Call>, env: &mut Env, call: Call) {
    log.push(call);
    call.run(&env.o, &mut env.tlb);
}

impl Model {
    fn new() -> Model {
        let universe = RAM_PAGES as u32;
        Model {
            rng: Rng(SEED),
            free: Set::full(SINGLES_START..SINGLES_END, universe),
            lent: Set::new(universe),
            shares: vec![0; universe as usize],
            hyp_shared: Set::new(universe),
            pinned: Set::new(universe),
            pins: vec![0; universe as usize],
            ffa: Set::new(universe),
            hyp_donated: Set::new(universe),
            hblocks: Default::default(),
            guests: [GuestModel::new(pfn(0)), GuestModel::new(pfn(2))],
            log: Vec::new(),
            min_free: usize::MAX,
        }
    }

    fn release_share(&mut self, off: u32) {
        self.shares[off as usize] -= 1;
        if self.shares[off as usize] == 0 {
            self.lent.remove(off);
            self.free.insert(off);
        }
    }

    /// One step: at most one call (none if the chosen operation has
    /// nothing to act on).
    fn step(&mut self, env: &mut Env) {
        self.min_free = self.min_free.min(self.free.len());
        let total: usize = CHOICES.iter().map(|c| c.1).sum();
        let mut r = self.rng.below(total);
        let mut choice = Choice::Teardown;
        for &(c, w) in CHOICES {
            if r < w {
                choice = c;
                break;
            }
            r -= w;
        }
        let log = &mut self.log;
        let rng = &mut self.rng;
        let (from, to, call): (&mut Set, &mut Set, PfnCall) = match choice {
            Choice::ShareHyp => (&mut self.free, &mut self.hyp_shared, Call::HostShareHyp),
            Choice::DonateHyp => (&mut self.free, &mut self.hyp_donated, Call::HostDonateHyp),
            Choice::HypDonateHost => (&mut self.hyp_donated, &mut self.free, Call::HypDonateHost),
            Choice::ShareFfa => (&mut self.free, &mut self.ffa, Call::HostShareFfa),
            Choice::UnshareFfa => (&mut self.ffa, &mut self.free, Call::HostUnshareFfa),
            Choice::UnshareHyp => {
                let Some(p) = self.hyp_shared.pick(rng) else {
                    return;
                };
                if self.pins[p as usize] != 0 {
                    return;
                }
                self.hyp_shared.remove(p);
                self.free.insert(p);
                return exec(log, env, Call::HostUnshareHyp(pfn(p)));
            }
            Choice::Pin => {
                let Some(p) = self.hyp_shared.pick(rng) else {
                    return;
                };
                let pins = &mut self.pins[p as usize];
                if *pins == MAX_PINS {
                    return;
                }
                if *pins == 0 {
                    self.pinned.insert(p);
                }
                *pins += 1;
                return exec(log, env, Call::HypPinShared(pfn(p)));
            }
            Choice::Unpin => {
                let Some(p) = self.pinned.pick(rng) else {
                    return;
                };
                self.pins[p as usize] -= 1;
                if self.pins[p as usize] == 0 {
                    self.pinned.remove(p);
                }
                return exec(log, env, Call::HypUnpinShared(pfn(p)));
            }
            _ => {
                let g = rng.below(2);
                if !self.chores(env, g) {
                    self.guest_op(env, g, choice);
                }
                return;
            }
        };
        if let Some(p) = from.take(rng) {
            to.insert(p);
            exec(log, env, call(pfn(p)));
        }
    }

    /// Guest `g`'s lifecycle work, which takes priority over a random op
    /// on it: create it if dead, reclaim one item (or finish) if dying,
    /// complete its pending conversion, top up its memcache. Returns
    /// whether it made a call.
    fn chores(&mut self, env: &mut Env, g: usize) -> bool {
        let gm = &mut self.guests[g];
        match gm.life {
            Life::Dead => {
                // Made here, not by `exec`: the handle is only known after.
                let r = env.o.create_guest(&mut env.tlb, IPA_BITS, gm.pgd);
                let h = ok(r, "create guest");
                self.log.push(Call::CreateGuest(gm.pgd, h));
                gm.handle = h;
                gm.life = Life::Alive;
                gm.gfree = Set::full(0..NG, NG);
                return true;
            }
            Life::Dying => {
                self.reclaim_one(env, g);
                return true;
            }
            Life::Alive => {}
        }
        let h = gm.handle;
        if let Some(conv) = gm.pending.take() {
            let idx = (conv.gfn.0 - GSINGLE) as u32;
            let (from, to) = match conv.kind {
                ConversionKind::Share => (&mut gm.private, &mut gm.shared),
                ConversionKind::Unshare => (&mut gm.shared, &mut gm.private),
            };
            from.remove(idx);
            to.insert(idx);
            exec(&mut self.log, env, Call::CompleteConversion(h, conv));
            return true;
        }
        let pages = ok(env.o.with_guest(h, |g| g.memcache_pages()), "memcache");
        if pages < MEMCACHE_LOW
            && let Some(p) = self.free.take(&mut self.rng)
        {
            gm.memcache.push(p);
            exec(&mut self.log, env, Call::TopupMemcache(h, pfn(p)));
            return true;
        }
        false
    }

    /// Reclaims one page or block of dying guest `g`, or finishes its
    /// teardown when nothing is left.
    fn reclaim_one(&mut self, env: &mut Env, g: usize) {
        let h = self.guests[g].handle;
        for s in 0..2 {
            match std::mem::replace(&mut self.guests[g].slots[s], Slot::Empty) {
                Slot::Empty => continue,
                Slot::Donated(b, _) => self.hblocks[b].donated = false,
                Slot::Shared(b) => self.hblocks[b].shares -= 1,
            }
            return exec(
                &mut self.log,
                env,
                Call::HostReclaim(h, bgfn(s), Extent::Block),
            );
        }
        let gm = &mut self.guests[g];
        let rng = &mut self.rng;
        if let Some(i) = gm.borrowed.take(rng) {
            let p = gm.frame[i as usize];
            exec(
                &mut self.log,
                env,
                Call::HostReclaim(h, sgfn(i), Extent::Page),
            );
            return self.release_share(p);
        }
        if let Some(i) = gm.private.take(rng).or_else(|| gm.shared.take(rng)) {
            self.free.insert(gm.frame[i as usize]);
            return exec(
                &mut self.log,
                env,
                Call::HostReclaim(h, sgfn(i), Extent::Page),
            );
        }
        gm.life = Life::Dead;
        for p in std::mem::take(&mut gm.memcache) {
            self.free.insert(p);
        }
        exec(&mut self.log, env, Call::FinishTeardown(h));
    }

    /// A random operation on live guest `g`, if `choice` has something to
    /// act on.
    fn guest_op(&mut self, env: &mut Env, g: usize, choice: Choice) {
        let rng = &mut self.rng;
        let log = &mut self.log;
        let gm = &mut self.guests[g];
        let h = gm.handle;
        match choice {
            Choice::DonatePage => {
                if gm.gfree.is_empty() || self.free.is_empty() {
                    return;
                }
                let i = gm.gfree.take(rng).expect("non-empty");
                let p = self.free.take(rng).expect("non-empty");
                gm.frame[i as usize] = p;
                gm.private.insert(i);
                let call = Call::HostDonateGuest(h, pfn(p), sgfn(i), Extent::Page);
                exec(log, env, call);
            }
            Choice::SharePage => {
                let from_lent = rng.coin() && !self.lent.is_empty();
                if gm.gfree.is_empty() || (!from_lent && self.free.is_empty()) {
                    return;
                }
                let i = gm.gfree.take(rng).expect("non-empty");
                let p = if from_lent {
                    self.lent.pick(rng).expect("non-empty")
                } else {
                    let p = self.free.take(rng).expect("non-empty");
                    self.lent.insert(p);
                    p
                };
                self.shares[p as usize] += 1;
                gm.frame[i as usize] = p;
                gm.borrowed.insert(i);
                let call = Call::HostShareGuest(h, pfn(p), sgfn(i), Extent::Page);
                exec(log, env, call);
            }
            Choice::UnsharePage => {
                let Some(i) = gm.borrowed.take(rng) else {
                    return;
                };
                gm.gfree.insert(i);
                let p = gm.frame[i as usize];
                exec(log, env, Call::HostUnshareGuest(h, sgfn(i), Extent::Page));
                self.release_share(p);
            }
            Choice::GuestShare | Choice::GuestUnshare => {
                let share = matches!(choice, Choice::GuestShare);
                let (from, to) = if share {
                    (&mut gm.private, &mut gm.shared)
                } else {
                    (&mut gm.shared, &mut gm.private)
                };
                let Some(i) = from.pick(rng) else {
                    return;
                };
                if rng.coin() {
                    // Guest-requested: the host completes it on a later step.
                    let kind = if share {
                        ConversionKind::Share
                    } else {
                        ConversionKind::Unshare
                    };
                    let conv = Conversion {
                        kind,
                        gfn: sgfn(i),
                        pages: 1,
                    };
                    gm.pending = Some(conv);
                    return exec(log, env, Call::RequestConversion(h, conv));
                }
                from.remove(i);
                to.insert(i);
                let call = if share {
                    Call::GuestShareHost(h, sgfn(i), 1)
                } else {
                    Call::GuestUnshareHost(h, sgfn(i), 1)
                };
                exec(log, env, call);
            }
            Choice::Relinquish => {
                let from = if rng.coin() && !gm.shared.is_empty() {
                    &mut gm.shared
                } else {
                    &mut gm.private
                };
                let Some(i) = from.take(rng) else {
                    return;
                };
                gm.gfree.insert(i);
                self.free.insert(gm.frame[i as usize]);
                exec(log, env, Call::GuestRelinquish(h, sgfn(i), 1));
            }
            Choice::ForceReclaim => {
                // The gfn stays poisoned until teardown: not back in gfree.
                let Some(i) = gm.private.take(rng) else {
                    return;
                };
                let p = gm.frame[i as usize];
                self.free.insert(p);
                let addr = PhysAddr(pfn(p).0 * PAGE_SIZE);
                exec(log, env, Call::HostForceReclaim(addr));
            }
            Choice::DonateBlock | Choice::ShareBlock => {
                let s = rng.below(2);
                let b = rng.below(2);
                let hb = &mut self.hblocks[b];
                let donate = matches!(choice, Choice::DonateBlock);
                if !matches!(gm.slots[s], Slot::Empty) || hb.donated || (donate && hb.shares != 0) {
                    return;
                }
                let hp = pfn(HBLOCKS[b]);
                let call = if donate {
                    hb.donated = true;
                    gm.slots[s] = Slot::Donated(b, Set::new(BLOCK_PAGES as u32));
                    Call::HostDonateGuest(h, hp, bgfn(s), Extent::Block)
                } else {
                    hb.shares += 1;
                    gm.slots[s] = Slot::Shared(b);
                    Call::HostShareGuest(h, hp, bgfn(s), Extent::Block)
                };
                exec(log, env, call);
            }
            Choice::UnshareBlock => {
                let s = rng.below(2);
                let Slot::Shared(b) = gm.slots[s] else {
                    return;
                };
                gm.slots[s] = Slot::Empty;
                self.hblocks[b].shares -= 1;
                exec(log, env, Call::HostUnshareGuest(h, bgfn(s), Extent::Block));
            }
            Choice::BlockGuestShare | Choice::BlockGuestUnshare => {
                let s = rng.below(2);
                let Slot::Donated(_, shared) = &mut gm.slots[s] else {
                    return;
                };
                let gfn0 = bgfn(s).0;
                let call = if matches!(choice, Choice::BlockGuestShare) {
                    let i = rng.below(BLOCK_PAGES as usize) as u32;
                    if shared.contains(i) {
                        return;
                    }
                    shared.insert(i);
                    Call::GuestShareHost(h, Gfn(gfn0 + i as u64), 1)
                } else {
                    let Some(i) = shared.take(rng) else {
                        return;
                    };
                    Call::GuestUnshareHost(h, Gfn(gfn0 + i as u64), 1)
                };
                exec(log, env, call);
            }
            Choice::RelinquishBlock => {
                let s = rng.below(2);
                let Slot::Donated(b, _) = gm.slots[s] else {
                    return;
                };
                gm.slots[s] = Slot::Empty;
                self.hblocks[b].donated = false;
                exec(log, env, Call::GuestRelinquish(h, bgfn(s), BLOCK_PAGES));
            }
            Choice::Teardown => {
                gm.life = Life::Dying;
                exec(log, env, Call::StartTeardown(h));
            }
            _ => unreachable!("host-only choice"),
        }
    }

    /// Undoes everything: tears every guest down (reclaiming every page),
    /// then ends every hypervisor and secure-world share and donation.
    fn undo(&mut self, env: &mut Env) {
        for g in 0..2 {
            let h = self.guests[g].handle;
            if self.guests[g].pending.take().is_some() {
                exec(&mut self.log, env, Call::RefuseConversion(h));
            }
            if self.guests[g].life == Life::Alive {
                self.guests[g].life = Life::Dying;
                exec(&mut self.log, env, Call::StartTeardown(h));
            }
            while self.guests[g].life == Life::Dying {
                self.reclaim_one(env, g);
            }
        }
        let log = &mut self.log;
        while let Some(p) = self.pinned.take(&mut self.rng) {
            for _ in 0..std::mem::take(&mut self.pins[p as usize]) {
                exec(log, env, Call::HypUnpinShared(pfn(p)));
            }
        }
        let undo: [(&mut Set, PfnCall); 3] = [
            (&mut self.hyp_shared, Call::HostUnshareHyp),
            (&mut self.ffa, Call::HostUnshareFfa),
            (&mut self.hyp_donated, Call::HypDonateHost),
        ];
        for (set, call) in undo {
            while let Some(p) = set.take(&mut self.rng) {
                self.free.insert(p);
                exec(log, env, call(pfn(p)));
            }
        }
        assert!(self.lent.is_empty(), "shares left after teardown");
        assert_eq!(
            self.free.len(),
            (SINGLES_END - SINGLES_START) as usize,
            "every single page is free again"
        );
    }
}

/// The state the comparison covers: host stage-2 statistics, every
/// ownership entry and the hypervisor's mappings.
type Snapshot = (Stats, (Vec<PageEntry>, Vec<u64>));

fn snapshot(env: &Env) -> Snapshot {
    (env.host_stats(), env.snapshot())
}

/// The recorded sequence: `TRANSITIONS` random calls, then the calls that
/// undo them.
struct Sequence {
    calls: Vec<Call>,
    /// Host stage-2 statistics after the random calls.
    middle: Stats,
    /// Fewest free single pages seen.
    min_free: usize,
}

/// Generates the sequence by running the model against `env` (which ends
/// where it started, checked).
fn generate(env: &mut Env) -> Sequence {
    let start = snapshot(env);
    let mut m = Model::new();
    while m.log.len() < TRANSITIONS {
        m.step(env);
    }
    env.check();
    let middle = env.host_stats();
    m.undo(env);
    env.check();
    assert!(snapshot(env) == start, "generation run back to the start");
    Sequence {
        calls: m.log,
        middle,
        min_free: m.min_free,
    }
}

fn bench_random(c: &mut Criterion) {
    let mut env = Env::new();
    let start = snapshot(&env);
    let seq = generate(&mut env);
    let (random, undo) = seq.calls.split_at(TRANSITIONS);
    let mut g = group(c, "random_10k");
    g.bench_function("transitions", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                replay(&mut env, random);
                total += t0.elapsed();
                replay(&mut env, undo);
                assert!(snapshot(&env) == start, "replay back to the start");
            }
            total
        })
    });
    g.finish();
    env.check();
}

// ---------------------------------------------------------------------------
// One checked run of each workload, with counts.

fn fmt_stats(s: &Stats) -> String {
    format!(
        "leaves L1/L2/L3 = {}/{}/{}, tables = {}, annotations = {}",
        s.leaves[1], s.leaves[2], s.leaves[3], s.tables, s.annotations
    )
}

fn report(_c: &mut Criterion) {
    println!("== ownership: one checked run of each workload");
    println!("ownership table: {BYTES_PER_PAGE} bytes per 4 KiB page");

    for n in Neighbours::ALL {
        let (mut env, h) = share_env(n);
        let mut bare = Bare::new(n);
        let before = (env.o.guest_leaf(h, Gfn(GFN)), bare.stats());
        share_round_trip(&mut env, h);
        bare.round_trip();
        assert_eq!((env.o.guest_leaf(h, Gfn(GFN)), bare.stats()), before);
        env.check();
        let level = |env: &Env| {
            ok(
                env.o
                    .host_share_guest(&mut NoopTlb, h, Pfn(SHARED), Gfn(GFN), Extent::Page),
                "share",
            );
            let l = ok(env.o.guest_leaf(h, Gfn(GFN)), "leaf").level;
            env.check();
            ok(
                env.o
                    .host_unshare_guest(&mut NoopTlb, h, Gfn(GFN), Extent::Page),
                "unshare",
            );
            l
        };
        println!(
            "share_unshare_page ({}): shared page is a level-{} guest leaf; bare stage-2 after round trip: {}",
            n.name(),
            level(&env).get(),
            fmt_stats(&bare.stats()),
        );
        // Work of one round trip on each side (the state is warm: the same
        // round trip just ran).
        env.counted(h, "ownership share + unshare", 2, |env| {
            share_round_trip(env, h)
        });
        let (w0, a0) = (bare.work(), allocations());
        bare.round_trip();
        let allocs = allocations() - a0;
        println!("  bare stage-2 map + unmap: heap allocations {allocs}");
        println!("    stage-2: {}", fmt_work(&bare.work().since(w0), 2));
    }

    let mut env = Env::new();
    let start = env.host_stats();
    for (name, d) in [
        ("block_1_call", Donation::Block),
        ("pages_512_calls", Donation::Pages),
        ("one_page", Donation::OnePage),
    ] {
        let h = env.guest(PGD, MC, 16);
        let calls = match d {
            Donation::Pages => BLOCK_PAGES,
            _ => 1,
        };
        env.counted(h, &format!("donate_2MiB/{name}"), calls, |env| {
            d.run(env, h)
        });
        env.check();
        let guest = ok(env.o.guest_leaf(h, Gfn(GFN)), "leaf").level.get();
        let host = env.o.with_host(|m| {
            let leaf = m.stage2().lookup(m.pool(), Ipa(BLOCK * PAGE_SIZE));
            ok(leaf, "host lookup").level.get()
        });
        println!(
            "donate_2MiB/{name}: guest leaf level {guest}, host annotation level {host}; host stage-2: {}",
            fmt_stats(&env.host_stats())
        );
        d.undo(&mut env, h);
        env.check();
        assert_eq!(env.host_stats(), start);
    }

    let mut env = Env::new();
    let start = snapshot(&env);
    let seq = generate(&mut env);
    let (random, undo) = seq.calls.split_at(TRANSITIONS);
    replay(&mut env, random);
    env.check();
    assert_eq!(env.host_stats(), seq.middle, "replay matches generation");
    replay(&mut env, undo);
    env.check();
    let end = snapshot(&env);
    println!(
        "random_10k: {TRANSITIONS} calls, then {} calls to undo them (generated, then replayed once)",
        undo.len(),
    );
    println!("  host stage-2 at start: {}", fmt_stats(&start.0));
    println!("  after 10k transitions: {}", fmt_stats(&seq.middle));
    println!("  after undo:            {}", fmt_stats(&end.0));
    println!(
        "  fewest free single pages during the run: {}",
        seq.min_free
    );
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for c in random {
        *counts.entry(c.name()).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let line: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
    println!("  calls: {}", line.join(", "));
    assert_eq!(
        end.0, start.0,
        "host stage-2 statistics differ from the start"
    );
    assert!(end.1 == start.1, "ownership table or hyp mappings differ");
    println!(
        "  host stage-2 statistics, ownership table and hyp mappings equal the start; check passes"
    );
}

criterion_group!(benches, report, bench_share, bench_donate, bench_random);

/// Instruction counting, for a noisy machine: with `TRANSITIONS_ROUNDS=N`
/// set, the binary runs `N` share+unshare round trips of each side (for
/// the neighbourhood named by `TRANSITIONS_NEIGHBOURS`, else each) and
/// exits without timing anything; run it under callgrind collecting only
/// the two round-trip functions (see the README) to read instructions per
/// round trip, which load on the machine does not change.
#[inline(never)]
fn count_rounds(rounds: u64, only: Option<&str>) {
    for n in Neighbours::ALL {
        if only.is_some_and(|o| o != n.name()) {
            continue;
        }
        let (mut env, h) = share_env(n);
        let mut bare = Bare::new(n);
        let locked = LockedBare::new(n);
        for _ in 0..rounds {
            share_round_trip(&mut env, h);
            bare.round_trip();
            locked.round_trip();
        }
        env.check();
        println!("{}: {rounds} round trips each side", n.name());
    }
}

/// Timing for a noisy machine: with `TRANSITIONS_MIN=1` set, the binary
/// times batches of 1,000 round trips of each side in turn (ownership,
/// bare stage-2, stage-2 under two locks), 300 batches each, interleaved,
/// and prints each side's fastest batch per round trip and the ratios.
/// The minimum is what the code costs when nothing else interferes;
/// criterion's estimates move with the load on a shared machine.
fn interleaved_minimums() {
    const BATCH: u32 = 1000;
    const BATCHES: usize = 300;
    for n in Neighbours::ALL {
        let (mut env, h) = share_env(n);
        let mut bare = Bare::new(n);
        let locked = LockedBare::new(n);
        let mut best = [f64::INFINITY; 3];
        for _ in 0..BATCHES {
            let t = Instant::now();
            for _ in 0..BATCH {
                share_round_trip(&mut env, h);
            }
            best[0] = best[0].min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
            let t = Instant::now();
            for _ in 0..BATCH {
                bare.round_trip();
            }
            best[1] = best[1].min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
            let t = Instant::now();
            for _ in 0..BATCH {
                locked.round_trip();
            }
            best[2] = best[2].min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
        }
        env.check();
        println!(
            "{}: fastest batch per round trip: ownership {:.1} ns, stage2 {:.1} ns, \
             stage2_two_locks {:.1} ns; ownership / stage2 {:.2}, / stage2_two_locks {:.2}",
            n.name(),
            best[0],
            best[1],
            best[2],
            best[0] / best[1],
            best[0] / best[2]
        );
    }
}

fn main() {
    if std::env::var_os("TRANSITIONS_MIN").is_some() {
        interleaved_minimums();
        return;
    }
    if let Ok(v) = std::env::var("TRANSITIONS_ROUNDS") {
        let rounds = v
            .parse()
            .expect("TRANSITIONS_ROUNDS: a number of round trips");
        count_rounds(
            rounds,
            std::env::var("TRANSITIONS_NEIGHBOURS").ok().as_deref(),
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
