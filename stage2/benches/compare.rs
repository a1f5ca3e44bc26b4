//! `stage2` against `aarch64-paging` (its `Stage2` regime) on identical work.
//!
//! Run with `cargo bench -p stage2 --bench compare`; the results are in
//! `stage2/README.md`. Workloads, all identity maps of normal write-back,
//! inner-shareable, read-write, execute-never memory with AF set (the two
//! libraries write bit-identical leaf descriptors for it):
//!
//! - `map_4GiB_pages`: map `[1 GiB, 5 GiB)` with 4 KiB pages only;
//! - `map_4GiB_blocks`: the same range, blocks allowed;
//! - `unmap_alternate_1GiB`: from a block-mapped `[1 GiB, 2 GiB)`, unmap
//!   every other 4 KiB page, one call per page (131072 calls);
//! - `remap_alternate_1GiB`: from that state, map those pages back, one
//!   call per page (131072 calls);
//! - `map_4GiB_blocks_x64`: `map_4GiB_blocks` on 64 fresh tables per timed
//!   section, reported per map: a single map takes about as long as
//!   reading the clock, which the per-iteration timing of the other
//!   workloads adds to both libraries alike and so pulls their ratio
//!   towards 1;
//! - `memset_8MiB`: one 8 MiB `memset`, the cost of writing 1 Mi
//!   descriptors and nothing else: the floor for `map_4GiB_pages`.
//!
//! Every timed iteration starts from a freshly built table (built outside
//! the timed section with `iter_custom`) and the table is torn down
//! outside it too. Before the benchmarks, each workload runs once per
//! library to check that both produce the same translations and to print
//! the table pages each uses, the work `stage2` did (descriptors read and
//! written, tables visited, TLB invalidations: [`stage2::Work`]) and the
//! heap allocations each library made.
//!
//! `stage2` runs with a no-op [`TlbMaintenance`] (its break-before-make
//! sequence still runs; only the instructions are empty) and a 40-bit IPA
//! (start level 1, two concatenated root pages). `aarch64-paging` uses one
//! root page at level 1 (512 GiB, 39-bit IPA: the same three-level walk)
//! and is never marked active, as required to split live blocks; it then
//! issues no TLB maintenance and no break-before-make, and it does not
//! merge tables back into blocks.

use aarch64_paging::descriptor::Stage2Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2 as Stage2Regime};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use stage2::testing::ArenaPool;
use stage2::tlb::record::NoopTlb;
use stage2::{
    BlockPolicy, Ipa, LeafAttrs, Op, PAGE_SIZE, PaRange, Perms, PhysAddr, Stage2, Stage2Config,
    Work,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// First IPA (and PA) of every workload.
const BASE: u64 = GIB;
/// Size of the two map workloads.
const BIG: u64 = 4 * GIB;
/// Size of the unmap/remap workloads.
const SMALL: u64 = GIB;
/// Pages unmapped, then remapped, in the alternate workloads.
const ALTERNATE_PAGES: u64 = SMALL / PAGE_SIZE / 2;
/// Arena pages for `stage2`: the page-granular 4 GiB map needs 2 root
/// pages + 4 level-2 tables + 2048 level-3 tables.
const ARENA_PAGES: usize = 2200;

// ---------------------------------------------------------------------------
// Counting table pages allocated by aarch64-paging.

/// Live allocations with the layout of an `aarch64_paging` page table
/// (4096 bytes, 4096-aligned). Nothing else in this binary allocates that
/// layout (the arena is one large allocation).
static TABLE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Every heap allocation (and reallocation) so far, for the per-workload
/// counts.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn is_table_layout(layout: Layout) -> bool {
    layout.size() == 4096 && layout.align() == 4096
}

/// The system allocator, counting live page-table allocations.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; the counter has no
// effect on the allocations.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if is_table_layout(layout) {
            TABLE_PAGES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if is_table_layout(layout) {
            TABLE_PAGES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_table_layout(layout) {
            TABLE_PAGES.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let new = Layout::from_size_align(new_size, layout.align()).expect("valid layout");
        if is_table_layout(layout) {
            TABLE_PAGES.fetch_sub(1, Ordering::Relaxed);
        }
        if is_table_layout(new) {
            TABLE_PAGES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn aarch64_paging_pages() -> usize {
    TABLE_PAGES.load(Ordering::Relaxed)
}

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Minor page faults of this process so far (`/proc/self/stat` field 10),
/// to show whether a workload's time includes faulting memory in.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

// ---------------------------------------------------------------------------
// stage2.

const OURS_ATTRS: LeafAttrs = LeafAttrs::normal(Perms::RW);

fn config() -> Stage2Config {
    Stage2Config::new(40, PaRange::Bits40).expect("valid configuration")
}

/// A `stage2` table and the pool it draws from.
struct Ours<'a> {
    pool: &'a mut ArenaPool,
    tlb: NoopTlb,
    s2: Option<Stage2>,
}

impl<'a> Ours<'a> {
    fn new(pool: &'a mut ArenaPool) -> Ours<'a> {
        assert_eq!(pool.in_use(), 0, "the arena starts empty");
        let s2 = Stage2::new(config(), 1, pool).expect("root");
        Ours {
            pool,
            tlb: NoopTlb,
            s2: Some(s2),
        }
    }

    fn s2(&mut self) -> &mut Stage2 {
        self.s2.as_mut().expect("live table")
    }

    fn map(&mut self, ipa: u64, size: u64, policy: BlockPolicy) {
        let op = Op::Map {
            ipa: Ipa(ipa),
            size,
            pa: PhysAddr(ipa),
            attrs: OURS_ATTRS,
            policy,
        };
        let s2 = self.s2.as_mut().expect("live table");
        s2.apply(self.pool, &mut self.tlb, op).expect("map");
    }

    fn unmap(&mut self, ipa: u64, size: u64) {
        let s2 = self.s2.as_mut().expect("live table");
        s2.unmap(self.pool, &mut self.tlb, Ipa(ipa), size)
            .expect("unmap");
    }

    /// Table pages in use, root included.
    fn pages(&mut self) -> usize {
        let root = self.s2().config().root_pages();
        let stats = self.s2.as_ref().expect("live table").stats(self.pool);
        assert_eq!(self.pool.in_use(), root + stats.tables);
        self.pool.in_use()
    }

    /// `(valid, output address, attribute bits)` of every page of
    /// `[ipa, ipa + size)`, the table/page bit cleared.
    fn pages_view(&mut self, ipa: u64, size: u64) -> Vec<(bool, u64, u64)> {
        let mut out = Vec::with_capacity((size / PAGE_SIZE) as usize);
        let s2 = self.s2.as_ref().expect("live table");
        s2.walk(self.pool, Ipa(ipa), size, |leaf| {
            let lo = leaf.base.get().max(ipa);
            let hi = (leaf.base.get() + leaf.size()).min(ipa + size);
            let raw = leaf.descriptor.raw();
            let mut a = lo;
            while a < hi {
                out.push(page_entry(
                    leaf.is_valid(),
                    leaf.descriptor.output_address().get() + (a - leaf.base.get()),
                    raw,
                ));
                a += PAGE_SIZE;
            }
        })
        .expect("walk");
        out
    }
}

impl Drop for Ours<'_> {
    fn drop(&mut self) {
        if let Some(s2) = self.s2.take() {
            s2.destroy(self.pool, &mut self.tlb);
        }
    }
}

// ---------------------------------------------------------------------------
// aarch64-paging.

/// Normal inner/outer write-back, inner shareable, read-write,
/// execute-never, AF: bit-identical to `OURS_ATTRS`.
const THEIR_ATTRS: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
    .union(Stage2Attributes::MEMATTR_NORMAL_OUTER_WB)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::SH_INNER)
    .union(Stage2Attributes::ACCESS_FLAG)
    .union(Stage2Attributes::XN);

/// Root level of the `aarch64-paging` table: one level-1 root page covers
/// 512 GiB, enough for every workload, with the same three-level walk as
/// `stage2`'s 40-bit configuration.
const THEIR_ROOT_LEVEL: usize = 1;

type Theirs = IdMap<Stage2Regime>;

fn theirs_new() -> Theirs {
    IdMap::new(THEIR_ROOT_LEVEL, Stage2Regime)
}

fn region(ipa: u64, size: u64) -> MemoryRegion {
    MemoryRegion::new(ipa as usize, (ipa + size) as usize)
}

fn theirs_map(t: &mut Theirs, ipa: u64, size: u64, constraints: Constraints) {
    t.map_range_with_constraints(&region(ipa, size), THEIR_ATTRS, constraints)
        .expect("map");
}

/// `aarch64-paging`'s documented way to unmap: map with attributes that
/// lack `VALID` (the entries become 0).
fn theirs_unmap(t: &mut Theirs, ipa: u64, size: u64) {
    t.map_range(&region(ipa, size), Stage2Attributes::empty())
        .expect("unmap");
}

fn theirs_view(t: &Theirs, ipa: u64, size: u64) -> Vec<(bool, u64, u64)> {
    let mut out = Vec::with_capacity((size / PAGE_SIZE) as usize);
    t.walk_range(&region(ipa, size), &mut |mr, d, level| {
        let gran = PAGE_SIZE << ((3 - level) * 9);
        let base = mr.start().0 as u64 & !(gran - 1);
        let raw = d.output_address().0 as u64 | d.flags().bits() as u64;
        let mut a = mr.start().0 as u64;
        while a < mr.end().0 as u64 {
            out.push(page_entry(
                d.is_valid(),
                d.output_address().0 as u64 + (a - base),
                raw,
            ));
            a += PAGE_SIZE;
        }
        Ok(())
    })
    .expect("walk");
    out
}

/// One page's translation: invalid entries compare by raw value, valid
/// ones by output address and attributes (bits 63:48 and 11:2).
fn page_entry(valid: bool, pa: u64, raw: u64) -> (bool, u64, u64) {
    let oa_mask = ((1u64 << 48) - 1) & !(PAGE_SIZE - 1);
    if valid {
        (true, pa, raw & !oa_mask & !0b10)
    } else {
        (false, 0, raw)
    }
}

// ---------------------------------------------------------------------------
// Workloads.

fn alternate_pages() -> impl Iterator<Item = u64> {
    (0..ALTERNATE_PAGES).map(|i| BASE + 2 * i * PAGE_SIZE)
}

fn ours_unmap_alternate(o: &mut Ours<'_>) {
    for ipa in alternate_pages() {
        o.unmap(ipa, PAGE_SIZE);
    }
}

fn ours_remap_alternate(o: &mut Ours<'_>) {
    for ipa in alternate_pages() {
        o.map(ipa, PAGE_SIZE, BlockPolicy::Largest);
    }
}

fn theirs_unmap_alternate(t: &mut Theirs) {
    for ipa in alternate_pages() {
        theirs_unmap(t, ipa, PAGE_SIZE);
    }
}

fn theirs_remap_alternate(t: &mut Theirs) {
    for ipa in alternate_pages() {
        theirs_map(t, ipa, PAGE_SIZE, Constraints::empty());
    }
}

/// One run of a workload on each library, outside criterion: checks that
/// both produce the same translation and prints table pages, wall time
/// and minor faults of that single run.
fn report(_c: &mut Criterion) {
    let mut pool = ArenaPool::new(ARENA_PAGES);
    println!("== stage2 vs aarch64-paging: one run of each workload");
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "workload",
        "stage2 pages",
        "a64p pages",
        "stage2 time",
        "a64p time",
        "s2 faults",
        "a64p flts",
        "s2 alloc",
        "a64p allc"
    );
    let mut works: Vec<(&str, Work)> = Vec::new();

    type Setup<'a> = (&'a dyn Fn(&mut Ours<'_>), &'a dyn Fn(&mut Theirs));
    type Step<'a> = (&'a dyn Fn(&mut Ours<'_>), &'a dyn Fn(&mut Theirs));
    let none: Setup<'_> = (&|_| {}, &|_| {});
    let block_1g: Setup<'_> = (&|o| o.map(BASE, SMALL, BlockPolicy::Largest), &|t| {
        theirs_map(t, BASE, SMALL, Constraints::empty())
    });
    let block_1g_holes: Setup<'_> = (
        &|o| {
            o.map(BASE, SMALL, BlockPolicy::Largest);
            ours_unmap_alternate(o);
        },
        &|t| {
            theirs_map(t, BASE, SMALL, Constraints::empty());
            theirs_unmap_alternate(t);
        },
    );
    let cases: [(&str, Setup<'_>, Step<'_>); 4] = [
        (
            "map_4GiB_pages",
            none,
            (&|o| o.map(BASE, BIG, BlockPolicy::PagesOnly), &|t| {
                theirs_map(t, BASE, BIG, Constraints::NO_BLOCK_MAPPINGS)
            }),
        ),
        (
            "map_4GiB_blocks",
            none,
            (&|o| o.map(BASE, BIG, BlockPolicy::Largest), &|t| {
                theirs_map(t, BASE, BIG, Constraints::empty())
            }),
        ),
        (
            "unmap_alternate_1GiB",
            block_1g,
            (&ours_unmap_alternate, &theirs_unmap_alternate),
        ),
        (
            "remap_alternate_1GiB",
            block_1g_holes,
            (&ours_remap_alternate, &theirs_remap_alternate),
        ),
    ];
    // Fault the arena in once, as the timed runs (after warm-up) see it.
    {
        let mut o = Ours::new(&mut pool);
        o.map(BASE, BIG, BlockPolicy::PagesOnly);
    }
    for (name, (ours_setup, theirs_setup), (ours_step, theirs_step)) in cases {
        let mut o = Ours::new(&mut pool);
        ours_setup(&mut o);
        let w0 = o.s2().work();
        let f0 = minor_faults();
        let a0 = allocations();
        let t0 = Instant::now();
        ours_step(&mut o);
        let ours_time = t0.elapsed();
        let ours_allocs = allocations() - a0;
        let ours_faults = minor_faults().zip(f0).map(|(a, b)| a - b);
        works.push((name, o.s2().work().since(w0)));
        let ours_pages = o.pages();

        let before = aarch64_paging_pages();
        let mut t = theirs_new();
        theirs_setup(&mut t);
        let f0 = minor_faults();
        let a0 = allocations();
        let t0 = Instant::now();
        theirs_step(&mut t);
        let theirs_time = t0.elapsed();
        let theirs_allocs = allocations() - a0;
        let theirs_faults = minor_faults().zip(f0).map(|(a, b)| a - b);
        let theirs_pages = aarch64_paging_pages() - before;

        // Both check the whole 5 GiB window from 0, so a stray mapping
        // outside the workload's range would show up too.
        let window = BASE + BIG;
        assert!(
            o.pages_view(0, window) == theirs_view(&t, 0, window),
            "{name}: the two libraries' translations differ"
        );
        drop(t);
        assert_eq!(aarch64_paging_pages(), before, "aarch64-paging freed all");
        drop(o);
        println!(
            "{:<22} {:>12} {:>12} {:>12.3?} {:>12.3?} {:>10} {:>10} {:>9} {:>9}",
            name,
            ours_pages,
            theirs_pages,
            ours_time,
            theirs_time,
            ours_faults.map_or("?".into(), |f| f.to_string()),
            theirs_faults.map_or("?".into(), |f| f.to_string()),
            ours_allocs,
            theirs_allocs,
        );
    }
    println!("(pages include the root: 2 concatenated pages for stage2, 1 for aarch64-paging;");
    println!(
        " alloc: heap allocations during the workload; stage2 takes its pages from the arena)"
    );
    println!("stage2 work per workload (both walks of every call; per call in brackets):");
    println!(
        "{:<22} {:>7} {:>16} {:>16} {:>16} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "workload",
        "calls",
        "desc. read",
        "desc. written",
        "tables visited",
        "+tables",
        "-tables",
        "tlbi ipa",
        "tlbi s1",
        "tlbi vm"
    );
    for (name, w) in works {
        let per = |v: u64| format!("{v} ({:.1})", v as f64 / w.ops as f64);
        println!(
            "{:<22} {:>7} {:>16} {:>16} {:>16} {:>7} {:>7} {:>8} {:>8} {:>8}",
            name,
            w.ops,
            per(w.reads),
            per(w.writes),
            per(w.tables_visited),
            w.tables_added,
            w.tables_freed,
            w.tlbi_ipa,
            w.tlbi_stage1,
            w.tlbi_vmid,
        );
    }
}

/// Times `step` on a table prepared by `setup`, excluding setup and
/// teardown.
fn time_ours(
    pool: &mut ArenaPool,
    iters: u64,
    setup: impl Fn(&mut Ours<'_>),
    step: impl Fn(&mut Ours<'_>),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut o = Ours::new(pool);
        setup(&mut o);
        let t0 = Instant::now();
        step(&mut o);
        total += t0.elapsed();
        black_box(&mut o);
    }
    total
}

fn time_theirs(iters: u64, setup: impl Fn(&mut Theirs), step: impl Fn(&mut Theirs)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut t = theirs_new();
        setup(&mut t);
        let t0 = Instant::now();
        step(&mut t);
        total += t0.elapsed();
        black_box(&mut t);
    }
    total
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    g
}

fn bench_map(c: &mut Criterion) {
    let mut pool = ArenaPool::new(ARENA_PAGES);
    for (name, policy, constraints) in [
        (
            "map_4GiB_pages",
            BlockPolicy::PagesOnly,
            Constraints::NO_BLOCK_MAPPINGS,
        ),
        (
            "map_4GiB_blocks",
            BlockPolicy::Largest,
            Constraints::empty(),
        ),
    ] {
        let mut g = group(c, name);
        g.bench_function("stage2", |b| {
            b.iter_custom(|iters| time_ours(&mut pool, iters, |_| {}, |o| o.map(BASE, BIG, policy)))
        });
        g.bench_function("aarch64-paging", |b| {
            b.iter_custom(|iters| {
                time_theirs(iters, |_| {}, |t| theirs_map(t, BASE, BIG, constraints))
            })
        });
        g.finish();
    }
}

/// Fresh tables timed together in `map_4GiB_blocks_x64`.
const BATCH: usize = 64;

/// `map_4GiB_blocks` on `BATCH` fresh tables per timed section (built and
/// torn down outside it), per map: the clock is read twice per section
/// instead of twice per map.
fn bench_map_batched(c: &mut Criterion) {
    let mut pool = ArenaPool::new(ARENA_PAGES);
    let mut g = group(c, "map_4GiB_blocks_x64");
    g.bench_function("stage2", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut tlb = NoopTlb;
            for _ in 0..iters {
                let mut tables: Vec<Stage2> = (0..BATCH)
                    .map(|_| Stage2::new(config(), 1, &mut pool).expect("root"))
                    .collect();
                let t0 = Instant::now();
                for s2 in &mut tables {
                    let op = Op::Map {
                        ipa: Ipa(BASE),
                        size: BIG,
                        pa: PhysAddr(BASE),
                        attrs: OURS_ATTRS,
                        policy: BlockPolicy::Largest,
                    };
                    s2.apply(&mut pool, &mut tlb, black_box(op)).expect("map");
                }
                total += t0.elapsed();
                black_box(&mut tables);
                for s2 in tables {
                    s2.destroy(&mut pool, &mut tlb);
                }
            }
            total / BATCH as u32
        })
    });
    g.bench_function("aarch64-paging", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut tables: Vec<Theirs> = (0..BATCH).map(|_| theirs_new()).collect();
                let t0 = Instant::now();
                for t in &mut tables {
                    theirs_map(t, black_box(BASE), BIG, Constraints::empty());
                }
                total += t0.elapsed();
                black_box(&mut tables);
            }
            total / BATCH as u32
        })
    });
    g.finish();
}

fn bench_alternate(c: &mut Criterion) {
    let mut pool = ArenaPool::new(ARENA_PAGES);
    let mut g = group(c, "unmap_alternate_1GiB");
    g.bench_function("stage2", |b| {
        b.iter_custom(|iters| {
            time_ours(
                &mut pool,
                iters,
                |o| o.map(BASE, SMALL, BlockPolicy::Largest),
                ours_unmap_alternate,
            )
        })
    });
    g.bench_function("aarch64-paging", |b| {
        b.iter_custom(|iters| {
            time_theirs(
                iters,
                |t| theirs_map(t, BASE, SMALL, Constraints::empty()),
                theirs_unmap_alternate,
            )
        })
    });
    g.finish();

    let mut g = group(c, "remap_alternate_1GiB");
    g.bench_function("stage2", |b| {
        b.iter_custom(|iters| {
            time_ours(
                &mut pool,
                iters,
                |o| {
                    o.map(BASE, SMALL, BlockPolicy::Largest);
                    ours_unmap_alternate(o);
                },
                ours_remap_alternate,
            )
        })
    });
    g.bench_function("aarch64-paging", |b| {
        b.iter_custom(|iters| {
            time_theirs(
                iters,
                |t| {
                    theirs_map(t, BASE, SMALL, Constraints::empty());
                    theirs_unmap_alternate(t);
                },
                theirs_remap_alternate,
            )
        })
    });
    g.finish();
}

/// One 8 MiB `memset` into a buffer that stays mapped: writing 1 Mi
/// descriptors and nothing else.
fn bench_memset(c: &mut Criterion) {
    let mut buf = vec![0u64; 1 << 20];
    let mut g = group(c, "memset_8MiB");
    g.bench_function("write_bytes", |b| {
        b.iter(|| {
            let p = black_box(buf.as_mut_ptr());
            // SAFETY: `p` points to `buf`'s 1 Mi initialised words, which
            // nothing else accesses during the write.
            unsafe { std::ptr::write_bytes(p, black_box(0), 1 << 20) };
            black_box(p);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    report,
    bench_map,
    bench_map_batched,
    bench_alternate,
    bench_memset
);
criterion_main!(benches);
