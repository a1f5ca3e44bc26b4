//! Model-based property tests: random sequences of operations over random
//! ranges, applied to the library and to a plain reference model (a list of
//! page ranges with what each maps to). After every step:
//! - every block's output address is aligned to the block size;
//! - the library's leaves describe exactly the model's mapping, and random
//!   lookups agree with it;
//! - no table page leaks (pool pages = root + linked tables);
//! - every leaf that was removed or changed (other than software bits) is
//!   covered by a TLB invalidation in a well-formed pkvm.md §5.6 sequence;
//! - in the canonical run, no table is left that could be a single entry;
//! - a refused operation (out-of-memory injected, or unmapped pages) left
//!   every byte of the tables as it was.

use proptest::prelude::*;
use stage2::testing::ArenaPool;
use stage2::tlb::record::{RecordingTlb, TlbOp};
use stage2::*;
use std::collections::HashSet;

const PAGE: u64 = 0x1000;
const MIB2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
/// The window the operations touch: 4 GiB, so 1 GiB blocks appear.
const WINDOW: u64 = 4 * GIB;
const SW_MASK: u64 = 0xf << 55;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Val {
    /// Maps the segment's first page to this PA.
    Mapped(u64, LeafAttrs),
    /// Invalid with this raw descriptor.
    Invalid(u64),
}

/// The reference model: sorted, non-overlapping, gap-free segments
/// `(start, end, value)` in bytes, coalesced.
#[derive(Clone, PartialEq, Debug)]
struct Model(Vec<(u64, u64, Val)>);

fn contiguous(a: &(u64, u64, Val), b: &(u64, u64, Val)) -> bool {
    match (a.2, b.2) {
        (Val::Mapped(pa, x), Val::Mapped(pb, y)) => x == y && pa + (a.1 - a.0) == pb,
        (Val::Invalid(x), Val::Invalid(y)) => x == y,
        _ => false,
    }
}

fn coalesce(segs: impl IntoIterator<Item = (u64, u64, Val)>) -> Vec<(u64, u64, Val)> {
    let mut out: Vec<(u64, u64, Val)> = Vec::new();
    for s in segs {
        if let Some(last) = out.last_mut()
            && last.1 == s.0
            && contiguous(last, &s)
        {
            last.1 = s.1;
            continue;
        }
        out.push(s);
    }
    out
}

impl Model {
    fn new() -> Model {
        Model(vec![(0, WINDOW, Val::Invalid(0))])
    }

    /// Applies `f` to the part `[start, end)`; `f` gets each piece's start
    /// and value.
    fn update(&mut self, start: u64, end: u64, f: impl Fn(u64, Val) -> Val) {
        let mut out = Vec::new();
        for &(s, e, v) in &self.0 {
            let at = |x: u64| match v {
                Val::Mapped(pa, a) => Val::Mapped(pa + (x - s), a),
                inv => inv,
            };
            if e <= start || s >= end {
                out.push((s, e, v));
                continue;
            }
            if s < start {
                out.push((s, start, v));
            }
            let (ms, me) = (s.max(start), e.min(end));
            out.push((ms, me, f(ms, at(ms))));
            if e > end {
                out.push((end, e, at(end)));
            }
        }
        self.0 = coalesce(out);
    }

    fn first_unmapped(&self, start: u64, end: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(s, e, v)| *e > start && *s < end && matches!(v, Val::Invalid(_)))
            .map(|(s, _, _)| (*s).max(start))
    }

    fn at(&self, ipa: u64) -> Val {
        let &(s, _, v) = self
            .0
            .iter()
            .find(|(s, e, _)| *s <= ipa && ipa < *e)
            .unwrap();
        match v {
            Val::Mapped(pa, a) => Val::Mapped(pa + (ipa - s), a),
            inv => inv,
        }
    }
}

#[derive(Clone, Debug)]
enum MOp {
    Map {
        start: u64,
        end: u64,
        delta: u64,
        attrs: LeafAttrs,
        pages_only: bool,
    },
    Unmap {
        start: u64,
        end: u64,
    },
    Annotate {
        start: u64,
        end: u64,
        annotation: Annotation,
    },
    Perms {
        start: u64,
        end: u64,
        perms: Perms,
    },
    Sw {
        start: u64,
        end: u64,
        state: PageState,
    },
    Split {
        start: u64,
        end: u64,
        level: Level,
    },
    Merge {
        start: u64,
        end: u64,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    let pages = (
        prop::sample::select(vec![0, GIB - 4 * MIB2, 2 * GIB - MIB2, 3 * GIB]),
        0..4096u64,
        1..1100u64,
    )
        .prop_map(|(anchor, off, len)| (anchor + off * PAGE, len * PAGE));
    let blocks = (0..(WINDOW / MIB2), 1..40u64, 0..2u64)
        .prop_map(|(s, len, jitter)| (s * MIB2 + jitter * PAGE, len * MIB2));
    let gibs = (0..4u64, 1..4u64).prop_map(|(s, len)| (s * GIB, len * GIB));
    prop_oneof![4 => pages, 3 => blocks, 1 => gibs].prop_map(|(s, len)| (s, (s + len).min(WINDOW)))
}

fn attrs() -> impl Strategy<Value = LeafAttrs> {
    prop::sample::select(vec![
        LeafAttrs::normal(Perms::RWX),
        LeafAttrs::normal(Perms::RW).with_state(PageState::SharedOwned),
        LeafAttrs::device(Perms::RW),
    ])
}

fn annotation() -> impl Strategy<Value = Annotation> {
    prop::sample::select(vec![
        Annotation::new(AnnotationType::DONATION, 1, 0).unwrap(),
        Annotation::new(AnnotationType::DONATION, 2, (0x42 << 16) | 0x1000).unwrap(),
        Annotation::new(AnnotationType::POISONED, 0, 0).unwrap(),
    ])
}

fn op(canonical: bool) -> impl Strategy<Value = MOp> {
    let delta = prop::sample::select(vec![0, PAGE, MIB2, GIB, 1 << 36]);
    let map = (range(), delta, attrs(), any::<bool>()).prop_map(
        move |((start, end), delta, attrs, po)| MOp::Map {
            start,
            end,
            delta,
            attrs,
            pages_only: po && !canonical,
        },
    );
    let unmap = range().prop_map(|(start, end)| MOp::Unmap { start, end });
    let annotate = (range(), annotation()).prop_map(|((start, end), annotation)| MOp::Annotate {
        start,
        end,
        annotation,
    });
    let perms = (
        range(),
        prop::sample::select(vec![Perms::R, Perms::RW, Perms::RWX, Perms::RX]),
    )
        .prop_map(|((start, end), perms)| MOp::Perms { start, end, perms });
    let sw = (
        range(),
        prop::sample::select(vec![
            PageState::Owned,
            PageState::SharedOwned,
            PageState::SharedBorrowed,
        ]),
    )
        .prop_map(|((start, end), state)| MOp::Sw { start, end, state });
    let split = (range(), prop::sample::select(vec![Level::L2, Level::L3])).prop_map(
        |((start, end), level)| MOp::Split {
            start,
            end: end.min(start + 8 * MIB2),
            level,
        },
    );
    let merge = range().prop_map(|(start, end)| MOp::Merge { start, end });
    let split_weight = if canonical { 0 } else { 1 };
    prop_oneof![
        6 => map,
        3 => unmap,
        2 => annotate,
        2 => perms,
        2 => sw,
        split_weight => split,
        1 => merge,
    ]
}

struct Harness {
    pool: ArenaPool,
    tlb: RecordingTlb,
    s2: Stage2,
    model: Model,
}

impl Harness {
    fn new() -> Harness {
        let mut pool = ArenaPool::new(8192);
        let config = Stage2Config::new(36, PaRange::Bits48).unwrap();
        let s2 = Stage2::new(config, 3, &mut pool).unwrap();
        Harness {
            pool,
            tlb: RecordingTlb::new(),
            s2,
            model: Model::new(),
        }
    }

    fn leaves(&self) -> Vec<Leaf> {
        let mut v = Vec::new();
        self.s2
            .walk(&self.pool, Ipa(0), WINDOW, |l| v.push(*l))
            .unwrap();
        v
    }

    fn segments(&self) -> Vec<(u64, u64, Val)> {
        coalesce(self.leaves().into_iter().map(|l| {
            let v = match l.attrs() {
                Some(a) => Val::Mapped(l.descriptor.output_address().get(), a),
                None => Val::Invalid(l.descriptor.raw()),
            };
            (l.base.get(), l.base.get() + l.size(), v)
        }))
    }

    /// Runs one operation on both sides and checks every property.
    fn step(
        &mut self,
        op: &MOp,
        budget: Option<usize>,
        canonical: bool,
    ) -> Result<(), TestCaseError> {
        let before_leaves = self.leaves();
        let snapshot = self.pool.snapshot();
        let in_use = self.pool.in_use();
        let (s2op, expected_err) = self.translate(op);
        self.pool.set_alloc_limit(budget);
        self.tlb.take();
        let result = self.s2.apply(&mut self.pool, &mut self.tlb, s2op);
        self.pool.set_alloc_limit(None);
        let log = self.tlb.take();
        match (result, expected_err) {
            (Err(e), _)
                if matches!(e, Error::OutOfMemory { .. }) && budget.is_some()
                    || Some(e) == expected_err =>
            {
                prop_assert_eq!(
                    self.pool.snapshot(),
                    snapshot,
                    "refused {:?} changed the tables",
                    op
                );
                prop_assert_eq!(self.pool.in_use(), in_use);
                prop_assert!(log.is_empty());
                return Ok(());
            }
            (Ok(()), None) => self.apply_model(op),
            (r, e) => prop_assert!(false, "{:?}: got {:?}, expected {:?}", op, r, e),
        }
        // Every leaf's output address is aligned to its size (the hardware
        // ignores the low bits of a block's address).
        for l in self.leaves().iter().filter(|l| l.is_valid()) {
            prop_assert!(
                l.descriptor.output_address().is_aligned(l.size()),
                "misaligned {:?}",
                l
            );
        }
        // The mapping agrees with the model.
        prop_assert_eq!(&self.segments(), &self.model.0, "after {:?}", op);
        for k in 0..8u64 {
            let ipa = (k * 0x1234_5000 + 0x7000 * (self.model.0.len() as u64)) % WINDOW;
            let leaf = self.s2.lookup(&self.pool, Ipa(ipa)).unwrap();
            let got = match leaf.attrs() {
                Some(a) => Val::Mapped(leaf.output_for(Ipa(ipa)).unwrap().get(), a),
                None => Val::Invalid(leaf.descriptor.raw()),
            };
            prop_assert_eq!(got, self.model.at(ipa), "lookup {:#x}", ipa);
        }
        // No leaked table pages.
        let stats = self.s2.stats(&self.pool);
        prop_assert_eq!(stats.tables, self.s2.table_pages());
        prop_assert_eq!(
            self.pool.in_use(),
            self.s2.config().root_pages() + stats.tables
        );
        // Every removed or changed leaf was invalidated.
        check_tlb(&log, &before_leaves, &self.leaves(), self.s2.vttbr())?;
        if canonical {
            prop_assert_eq!(self.s2.find_mergeable(&self.pool), None, "after {:?}", op);
        }
        Ok(())
    }

    fn translate(&self, op: &MOp) -> (Op, Option<Error>) {
        match *op {
            MOp::Map {
                start,
                end,
                delta,
                attrs,
                pages_only,
            } => {
                let policy = if pages_only {
                    BlockPolicy::PagesOnly
                } else {
                    BlockPolicy::Largest
                };
                (
                    Op::Map {
                        ipa: Ipa(start),
                        size: end - start,
                        pa: PhysAddr(start + delta),
                        attrs,
                        policy,
                    },
                    None,
                )
            }
            MOp::Unmap { start, end } => (
                Op::Unmap {
                    ipa: Ipa(start),
                    size: end - start,
                },
                None,
            ),
            MOp::Annotate {
                start,
                end,
                annotation,
            } => (
                Op::Annotate {
                    ipa: Ipa(start),
                    size: end - start,
                    annotation,
                },
                None,
            ),
            MOp::Perms { start, end, perms } => (
                Op::SetPerms {
                    ipa: Ipa(start),
                    size: end - start,
                    perms,
                },
                self.model
                    .first_unmapped(start, end)
                    .map(|p| Error::NotMapped(Ipa(p))),
            ),
            MOp::Sw { start, end, state } => (
                Op::SetSw {
                    ipa: Ipa(start),
                    size: end - start,
                    sw: SwBits::state(state),
                },
                self.model
                    .first_unmapped(start, end)
                    .map(|p| Error::NotMapped(Ipa(p))),
            ),
            MOp::Split { start, end, level } => (
                Op::Split {
                    ipa: Ipa(start),
                    size: end - start,
                    level,
                },
                None,
            ),
            MOp::Merge { start, end } => (
                Op::Merge {
                    ipa: Ipa(start),
                    size: end - start,
                },
                None,
            ),
        }
    }

    fn apply_model(&mut self, op: &MOp) {
        match *op {
            MOp::Map {
                start,
                end,
                delta,
                attrs,
                ..
            } => self
                .model
                .update(start, end, |s, _| Val::Mapped(s + delta, attrs)),
            MOp::Unmap { start, end } => self.model.update(start, end, |_, _| Val::Invalid(0)),
            MOp::Annotate {
                start,
                end,
                annotation,
            } => {
                let raw = Descriptor::annotated(annotation).raw();
                self.model.update(start, end, |_, _| Val::Invalid(raw))
            }
            MOp::Perms { start, end, perms } => self.model.update(start, end, |_, v| match v {
                Val::Mapped(pa, a) => Val::Mapped(pa, LeafAttrs { perms, ..a }),
                inv => inv,
            }),
            MOp::Sw { start, end, state } => self.model.update(start, end, |_, v| match v {
                Val::Mapped(pa, a) => Val::Mapped(pa, a.with_state(state)),
                inv => inv,
            }),
            MOp::Split { .. } | MOp::Merge { .. } => {}
        }
    }
}

/// Checks that `log` is a sequence of well-formed flushes (and lone
/// `dsb ishst`s), and that every valid leaf of `before` that is not in
/// `after` (ignoring software bits) is covered by one of them.
fn check_tlb(
    log: &[TlbOp],
    before: &[Leaf],
    after: &[Leaf],
    vttbr: u64,
) -> Result<(), TestCaseError> {
    let mut covered = Vec::new();
    let mut all = false;
    let mut i = 0;
    while i < log.len() {
        prop_assert_eq!(log[i], TlbOp::DsbIshst, "log {:?}", log);
        i += 1;
        if i == log.len() || log[i] != TlbOp::Switch(vttbr) {
            continue;
        }
        i += 1;
        if log.get(i) == Some(&TlbOp::Vmalls12e1is) {
            prop_assert_eq!(
                &log[i + 1..i + 4],
                &[TlbOp::DsbIsh, TlbOp::Isb, TlbOp::Restore(0)][..]
            );
            all = true;
            i += 4;
            continue;
        }
        let first = i;
        while let Some(TlbOp::Ipas2e1is(ipa, _)) = log.get(i) {
            covered.push(ipa.get());
            i += 1;
        }
        prop_assert!(i > first, "flush without invalidation: {:?}", log);
        prop_assert_eq!(
            &log[i..i + 5],
            &[
                TlbOp::DsbIsh,
                TlbOp::Vmalle1is,
                TlbOp::DsbIsh,
                TlbOp::Isb,
                TlbOp::Restore(0)
            ][..]
        );
        i += 5;
    }
    let key = |l: &Leaf| (l.base.get(), l.level, l.descriptor.raw() & !SW_MASK);
    let kept: HashSet<_> = after.iter().filter(|l| l.is_valid()).map(key).collect();
    for old in before.iter().filter(|l| l.is_valid()) {
        if kept.contains(&key(old)) || all {
            continue;
        }
        let (b, e) = (old.base.get(), old.base.get() + old.size());
        prop_assert!(
            covered.iter().any(|&ipa| b <= ipa && ipa < e),
            "leaf {:?} changed without TLBI; log {:?}",
            old,
            log
        );
    }
    Ok(())
}

fn budget() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![6 => Just(None), 1 => (0..3usize).prop_map(Some)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Operations that keep the table canonical: after each, every uniform
    /// aligned range is a single block.
    #[test]
    fn canonical_sequences_match_the_model(ops in prop::collection::vec((op(true), budget()), 1..24)) {
        let mut h = Harness::new();
        for (op, budget) in &ops {
            h.step(op, *budget, true)?;
        }
    }

    /// Every operation, including explicit splits and page-only maps.
    #[test]
    fn all_sequences_match_the_model(ops in prop::collection::vec((op(false), budget()), 1..24)) {
        let mut h = Harness::new();
        for (op, budget) in &ops {
            h.step(op, *budget, false)?;
        }
    }

    /// Mapping a range and unmapping it again returns the table to empty,
    /// whatever the range and the output offset.
    #[test]
    fn map_then_unmap_returns_to_empty((start, end) in range(), delta in 0..4u64) {
        let mut h = Harness::new();
        let pa = start + delta * MIB2 + PAGE;
        h.s2.map(&mut h.pool, &mut h.tlb, Ipa(start), end - start, PhysAddr(pa), LeafAttrs::normal(Perms::RW)).unwrap();
        h.s2.unmap(&mut h.pool, &mut h.tlb, Ipa(start), end - start).unwrap();
        prop_assert_eq!(h.s2.stats(&h.pool), Stats::default());
        prop_assert_eq!(h.pool.in_use(), 1);
    }
}
