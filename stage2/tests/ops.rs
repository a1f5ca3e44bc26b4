//! Unit tests of every stage-2 operation, its errors, and the exact TLB
//! maintenance it issues.

use stage2::testing::ArenaPool;
use stage2::tlb::record::{RecordingTlb, TlbOp};
use stage2::*;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const RAM: u64 = 0x4000_0000;

fn rw() -> LeafAttrs {
    LeafAttrs::normal(Perms::RWX)
}

struct Env {
    pool: ArenaPool,
    tlb: RecordingTlb,
    s2: Stage2,
}

impl Env {
    fn new(ipa_bits: u8) -> Env {
        let mut pool = ArenaPool::new(4096);
        let config = Stage2Config::new(ipa_bits, PaRange::Bits48).unwrap();
        let s2 = Stage2::new(config, 5, &mut pool).unwrap();
        Env {
            pool,
            tlb: RecordingTlb::new(),
            s2,
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), Error> {
        self.s2.apply(&mut self.pool, &mut self.tlb, op)
    }

    fn map(&mut self, ipa: u64, size: u64, pa: u64) -> Result<(), Error> {
        self.s2.map(
            &mut self.pool,
            &mut self.tlb,
            Ipa(ipa),
            size,
            PhysAddr(pa),
            rw(),
        )
    }

    fn unmap(&mut self, ipa: u64, size: u64) -> Result<(), Error> {
        self.s2.unmap(&mut self.pool, &mut self.tlb, Ipa(ipa), size)
    }

    fn leaf(&self, ipa: u64) -> Leaf {
        self.s2.lookup(&self.pool, Ipa(ipa)).unwrap()
    }

    fn stats(&self) -> Stats {
        self.s2.stats(&self.pool)
    }

    /// Pages in use equal the root plus the tables the tree links.
    fn assert_no_leak(&self) {
        let stats = self.stats();
        assert_eq!(stats.tables, self.s2.table_pages());
        assert_eq!(
            self.pool.in_use(),
            self.s2.config().root_pages() + stats.tables
        );
    }

    /// Asserts `op` fails with `err` and leaves every byte as it was.
    fn assert_refused(&mut self, op: Op, err: Error) {
        let before = self.pool.snapshot();
        let in_use = self.pool.in_use();
        self.tlb.take();
        assert_eq!(self.apply(op), Err(err));
        assert_eq!(
            self.pool.snapshot(),
            before,
            "a refused {op:?} changed the tables"
        );
        assert_eq!(self.pool.in_use(), in_use);
        assert!(self.tlb.ops.is_empty());
    }
}

/// The by-IPA flush sequence of pkvm.md §5.6 for the given IPAs.
fn ipa_flush(vttbr: u64, ipas: &[(u64, u8)]) -> Vec<TlbOp> {
    let mut v = vec![TlbOp::DsbIshst, TlbOp::Switch(vttbr)];
    for &(ipa, level) in ipas {
        v.push(TlbOp::Ipas2e1is(Ipa(ipa), Level::new(level)));
    }
    v.extend([
        TlbOp::DsbIsh,
        TlbOp::Vmalle1is,
        TlbOp::DsbIsh,
        TlbOp::Isb,
        TlbOp::Restore(0),
    ]);
    v
}

/// The whole-VMID flush sequence.
fn vmid_flush(vttbr: u64) -> Vec<TlbOp> {
    vec![
        TlbOp::DsbIshst,
        TlbOp::Switch(vttbr),
        TlbOp::Vmalls12e1is,
        TlbOp::DsbIsh,
        TlbOp::Isb,
        TlbOp::Restore(0),
    ]
}

#[test]
fn new_table_allocates_concatenated_root() {
    let env = Env::new(40);
    assert_eq!(env.s2.config().root_pages(), 2);
    assert_eq!(env.pool.in_use(), 2);
    assert_eq!(env.s2.vttbr(), env.s2.root().get() | (5 << 48));
    assert_eq!(env.s2.vtcr(), env.s2.config().vtcr());
    assert_eq!(env.stats(), Stats::default());
    let leaf = env.leaf(0);
    assert_eq!(leaf.level, Level::L1);
    assert_eq!(leaf.descriptor, Descriptor::EMPTY);
}

#[test]
fn root_allocation_failure_is_reported() {
    let mut pool = ArenaPool::new(16);
    pool.set_alloc_limit(Some(0));
    let config = Stage2Config::new(40, PaRange::Bits40).unwrap();
    assert_eq!(
        Stage2::new(config, 1, &mut pool).unwrap_err(),
        Error::OutOfMemory { needed: 2 }
    );
}

#[test]
fn aligned_gib_maps_to_one_block() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let leaf = env.leaf(RAM + 0x1234_5000);
    assert_eq!(leaf.level, Level::L1);
    assert_eq!(leaf.base, Ipa(RAM));
    assert_eq!(
        leaf.output_for(Ipa(RAM + 0x1234_5000)),
        Some(PhysAddr(RAM + 0x1234_5000))
    );
    assert_eq!(leaf.attrs(), Some(rw()));
    assert_eq!(env.stats().leaves, [0, 1, 0, 0]);
    assert_eq!(env.stats().tables, 0);
    // Mapping into empty entries needs no TLB invalidation.
    assert_eq!(env.tlb.take(), vec![TlbOp::DsbIshst]);
}

#[test]
fn unaligned_range_uses_largest_blocks_for_each_piece() {
    let mut env = Env::new(40);
    // From 4 KiB below a 2 MiB boundary, 1 GiB + 2 MiB + 8 KiB later.
    let start = GIB - 2 * MIB2 - 0x1000;
    let size = 0x1000 + 2 * MIB2 + GIB + 2 * MIB2 + 0x1000;
    env.map(start, size, start).unwrap();
    let s = env.stats();
    // One page up to the 2 MiB boundary, two 2 MiB blocks up to 1 GiB, the
    // 1 GiB block, two 2 MiB blocks, one page.
    assert_eq!(s.leaves[1], 1);
    assert_eq!(s.leaves[2], 4);
    assert_eq!(s.leaves[3], 2);
    assert_eq!(env.leaf(GIB).level, Level::L1);
    assert_eq!(env.leaf(GIB - MIB2).level, Level::L2);
    assert_eq!(env.leaf(start).level, Level::L3);
    assert_eq!(env.leaf(start + size - 0x1000).level, Level::L3);
    assert_eq!(env.leaf(start + size).descriptor, Descriptor::EMPTY);
    env.assert_no_leak();
}

#[test]
fn misaligned_output_forces_smaller_leaves() {
    let mut env = Env::new(40);
    // IPA 1 GiB aligned, PA only 4 KiB aligned: pages only.
    env.map(GIB, 4 * MIB2, RAM + 0x1000).unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 0, 2048]);
    // PA 2 MiB aligned: 2 MiB blocks.
    env.map(2 * GIB, GIB, RAM + MIB2).unwrap();
    assert_eq!(env.stats().leaves[2], 512);
    assert_eq!(
        env.leaf(2 * GIB + 0x1000).output_for(Ipa(2 * GIB + 0x1000)),
        Some(PhysAddr(RAM + MIB2 + 0x1000))
    );
    env.assert_no_leak();
}

#[test]
fn unmapping_a_page_splits_the_block_and_keeps_the_rest() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    env.tlb.take();
    let page = RAM + 3 * MIB2 + 0x5000;
    env.unmap(page, 0x1000).unwrap();
    // Block broken with break-before-make: one TLBI for the 1 GiB block,
    // then the new table is published.
    let vttbr = env.s2.vttbr();
    let mut expect = ipa_flush(vttbr, &[(RAM, 1)]);
    expect.push(TlbOp::DsbIshst);
    assert_eq!(env.tlb.take(), expect);
    assert_eq!(env.leaf(page).descriptor, Descriptor::EMPTY);
    assert_eq!(env.leaf(page).level, Level::L3);
    // Neighbours still translate as before, with the largest leaves left.
    assert_eq!(
        env.leaf(page - 0x1000).output_for(Ipa(page - 0x1000)),
        Some(PhysAddr(page - 0x1000))
    );
    assert_eq!(
        env.leaf(page + 0x1000).output_for(Ipa(page + 0x1000)),
        Some(PhysAddr(page + 0x1000))
    );
    assert_eq!(env.leaf(RAM).level, Level::L2);
    assert_eq!(env.leaf(RAM + GIB - 0x1000).level, Level::L2);
    let s = env.stats();
    assert_eq!(s.tables, 2);
    assert_eq!(s.leaves, [0, 0, 511, 511]);
    env.assert_no_leak();
}

#[test]
fn remapping_the_page_merges_back_to_the_block() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let page = RAM + 3 * MIB2 + 0x5000;
    env.unmap(page, 0x1000).unwrap();
    env.tlb.take();
    env.map(page, 0x1000, page).unwrap();
    assert_eq!(env.stats().leaves, [0, 1, 0, 0]);
    assert_eq!(env.stats().tables, 0);
    assert_eq!(env.leaf(page).level, Level::L1);
    // The level-3 table became uniform, and with the 2 MiB block in its
    // place so would the level-2 one: the merge is judged first and done
    // once, at level 1: one whole-VMID invalidation between the invalid
    // entry and the 1 GiB block, then both table pages are freed.
    let mut expect = vmid_flush(env.s2.vttbr());
    expect.push(TlbOp::DsbIshst);
    assert_eq!(env.tlb.take(), expect);
    env.assert_no_leak();
}

#[test]
fn unmapping_pages_defers_and_batches_tlbi() {
    let mut env = Env::new(40);
    env.apply(Op::Map {
        ipa: Ipa(RAM),
        size: MIB2,
        pa: PhysAddr(RAM),
        attrs: rw(),
        policy: BlockPolicy::PagesOnly,
    })
    .unwrap();
    env.tlb.take();
    env.unmap(RAM, 3 * 0x1000).unwrap();
    let vttbr = env.s2.vttbr();
    assert_eq!(
        env.tlb.take(),
        ipa_flush(vttbr, &[(RAM, 3), (RAM + 0x1000, 3), (RAM + 0x2000, 3)])
    );
    // More than TLBI_BATCH pages: one whole-VMID invalidation.
    env.unmap(RAM + 0x10_0000, 64 * 0x1000).unwrap();
    assert_eq!(env.tlb.take(), vmid_flush(vttbr));
    env.assert_no_leak();
}

#[test]
fn software_bit_changes_need_no_tlbi() {
    let mut env = Env::new(40);
    env.map(RAM, MIB2, RAM).unwrap();
    env.tlb.take();
    let sw = SwBits::state(PageState::SharedBorrowed);
    env.apply(Op::SetSw {
        ipa: Ipa(RAM),
        size: MIB2,
        sw,
    })
    .unwrap();
    assert_eq!(env.tlb.take(), vec![TlbOp::DsbIshst]);
    assert_eq!(
        env.leaf(RAM).descriptor.page_state(),
        Some(PageState::SharedBorrowed)
    );
    assert_eq!(env.leaf(RAM).level, Level::L2);
    // Setting the same bits again writes nothing at all.
    env.apply(Op::SetSw {
        ipa: Ipa(RAM),
        size: MIB2,
        sw,
    })
    .unwrap();
    assert!(env.tlb.take().is_empty());
}

#[test]
fn state_change_on_one_page_splits_and_merges_back() {
    let mut env = Env::new(40);
    env.map(RAM, MIB2, RAM).unwrap();
    let sw = SwBits::state(PageState::SharedOwned);
    env.apply(Op::SetSw {
        ipa: Ipa(RAM + 0x1000),
        size: 0x1000,
        sw,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 0, 512]);
    assert_eq!(
        env.leaf(RAM + 0x1000).attrs().unwrap().sw.state,
        PageState::SharedOwned
    );
    assert_eq!(env.leaf(RAM).attrs().unwrap().sw.state, PageState::Owned);
    env.apply(Op::SetSw {
        ipa: Ipa(RAM + 0x1000),
        size: 0x1000,
        sw: SwBits::state(PageState::Owned),
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 1, 0]);
    env.assert_no_leak();
}

#[test]
fn permission_changes_break_before_make() {
    let mut env = Env::new(40);
    env.map(RAM, 2 * 0x1000, RAM).unwrap();
    env.tlb.take();
    env.apply(Op::SetPerms {
        ipa: Ipa(RAM),
        size: 0x1000,
        perms: Perms::R,
    })
    .unwrap();
    let mut expect = ipa_flush(env.s2.vttbr(), &[(RAM, 3)]);
    expect.push(TlbOp::DsbIshst);
    assert_eq!(env.tlb.take(), expect);
    assert_eq!(env.leaf(RAM).descriptor.perms(), Perms::R);
    assert_eq!(env.leaf(RAM + 0x1000).descriptor.perms(), Perms::RWX);
}

#[test]
fn permission_change_on_unmapped_page_is_refused() {
    let mut env = Env::new(40);
    env.map(RAM, 0x1000, RAM).unwrap();
    env.assert_refused(
        Op::SetPerms {
            ipa: Ipa(RAM),
            size: 0x2000,
            perms: Perms::R,
        },
        Error::NotMapped(Ipa(RAM + 0x1000)),
    );
    env.assert_refused(
        Op::SetSw {
            ipa: Ipa(RAM + GIB),
            size: MIB2,
            sw: SwBits::state(PageState::Owned),
        },
        Error::NotMapped(Ipa(RAM + GIB)),
    );
}

#[test]
fn annotations_record_owner_and_merge_when_identical() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let hyp = Annotation::new(AnnotationType::DONATION, 1, 0).unwrap();
    // Annotate the top 2 MiB: one invalid level-2 entry, no level-3 table.
    env.apply(Op::Annotate {
        ipa: Ipa(RAM + GIB - MIB2),
        size: MIB2,
        annotation: hyp,
    })
    .unwrap();
    let leaf = env.leaf(RAM + GIB - 0x1000);
    assert_eq!(leaf.level, Level::L2);
    assert_eq!(leaf.annotation(), Some(hyp));
    assert_eq!(env.stats().annotations, 1);
    // Per-page metadata differs: page-level entries.
    for (i, gfn) in [(0u64, 7u64), (1, 8)] {
        let a = Annotation::new(AnnotationType::DONATION, 2, gfn << 16 | 0x1000).unwrap();
        env.apply(Op::Annotate {
            ipa: Ipa(RAM + i * 0x1000),
            size: 0x1000,
            annotation: a,
        })
        .unwrap();
    }
    assert_eq!(
        env.leaf(RAM + 0x1000).annotation().unwrap().meta(),
        8 << 16 | 0x1000
    );
    assert_eq!(env.leaf(RAM + 0x1000).level, Level::L3);
    env.assert_no_leak();
    // Unmapping everything collapses back to an empty root.
    env.unmap(0, 1 << 40).unwrap();
    assert_eq!(env.stats(), Stats::default());
    env.assert_no_leak();
}

#[test]
fn bad_arguments_are_refused_without_change() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let limit = 1u64 << 40;
    let cases = [
        (
            Op::Unmap {
                ipa: Ipa(RAM + 1),
                size: 0x1000,
            },
            Error::Unaligned(RAM + 1),
        ),
        (
            Op::Unmap {
                ipa: Ipa(RAM),
                size: 0x800,
            },
            Error::Unaligned(0x800),
        ),
        (
            Op::Unmap {
                ipa: Ipa(RAM),
                size: 0,
            },
            Error::EmptyRange,
        ),
        (
            Op::Unmap {
                ipa: Ipa(!0xfff),
                size: 0x2000,
            },
            Error::RangeOverflow,
        ),
        (
            Op::Unmap {
                ipa: Ipa(limit - 0x1000),
                size: 0x2000,
            },
            Error::IpaOutOfRange {
                end: limit + 0x1000,
                limit,
            },
        ),
        (
            Op::Map {
                ipa: Ipa(0),
                size: 0x2000,
                pa: PhysAddr((1 << 48) - 0x1000),
                attrs: rw(),
                policy: BlockPolicy::Largest,
            },
            Error::OutputOutOfRange {
                end: (1 << 48) + 0x1000,
                limit: 1 << 48,
            },
        ),
        (
            Op::Map {
                ipa: Ipa(0),
                size: 0x1000,
                pa: PhysAddr(0x10),
                attrs: rw(),
                policy: BlockPolicy::Largest,
            },
            Error::Unaligned(0x10),
        ),
        (
            Op::MapBlock {
                ipa: Ipa(0),
                pa: PhysAddr(0),
                level: Level::L3,
                attrs: rw(),
            },
            Error::BlockNotAllowed(Level::L3),
        ),
        (
            Op::MapBlock {
                ipa: Ipa(0),
                pa: PhysAddr(0),
                level: Level::L0,
                attrs: rw(),
            },
            Error::BlockNotAllowed(Level::L0),
        ),
        (
            Op::MapBlock {
                ipa: Ipa(MIB2),
                pa: PhysAddr(0),
                level: Level::L1,
                attrs: rw(),
            },
            Error::Unaligned(MIB2),
        ),
        (
            Op::MapBlock {
                ipa: Ipa(0),
                pa: PhysAddr(0x1000),
                level: Level::L2,
                attrs: rw(),
            },
            Error::Unaligned(0x1000),
        ),
        (
            Op::SetSw {
                ipa: Ipa(RAM),
                size: 0x1000,
                sw: SwBits {
                    state: PageState::Owned,
                    spare: 4,
                },
            },
            Error::InvalidSoftwareBits,
        ),
        (
            Op::Split {
                ipa: Ipa(RAM),
                size: GIB,
                level: Level::L1,
            },
            Error::BlockNotAllowed(Level::L1),
        ),
    ];
    for (op, err) in cases {
        env.assert_refused(op, err);
    }
    assert!(env.s2.lookup(&env.pool, Ipa(limit)).is_err());
    assert_eq!(
        env.s2.walk(&env.pool, Ipa(limit), 0x1000, |_| {}),
        Err(Error::IpaOutOfRange {
            end: limit + 0x1000,
            limit
        })
    );
}

#[test]
fn errors_map_to_errno() {
    assert_eq!(Error::OutOfMemory { needed: 1 }.errno(), 12);
    assert_eq!(Error::NotMapped(Ipa(0)).errno(), 2);
    assert_eq!(Error::Unaligned(1).errno(), 22);
    assert_eq!(Error::EmptyRange.to_string(), "empty range");
}

#[test]
fn out_of_memory_changes_nothing() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    // Unmapping one page needs two tables (level 2 and level 3).
    for budget in 0..2 {
        env.pool.set_alloc_limit(Some(budget));
        env.assert_refused(
            Op::Unmap {
                ipa: Ipa(RAM + 0x5000),
                size: 0x1000,
            },
            Error::OutOfMemory { needed: 2 },
        );
    }
    env.pool.set_alloc_limit(Some(2));
    env.unmap(RAM + 0x5000, 0x1000).unwrap();
    env.assert_no_leak();
}

#[test]
fn prepared_operations_commit_or_cancel() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let p = env
        .s2
        .prepare(
            &mut env.pool,
            Op::Unmap {
                ipa: Ipa(RAM),
                size: 0x1000,
            },
        )
        .unwrap();
    assert_eq!(p.reserved_pages(), 2);
    assert_eq!(env.pool.in_use(), 2 + 2);
    Stage2::cancel(&mut env.pool, p);
    assert_eq!(env.pool.in_use(), 2);
    // A preparation made before another change is refused at commit.
    let p = env
        .s2
        .prepare(
            &mut env.pool,
            Op::Unmap {
                ipa: Ipa(RAM),
                size: 0x1000,
            },
        )
        .unwrap();
    env.map(2 * GIB, GIB, 2 * GIB).unwrap();
    let before = env.pool.snapshot();
    assert_eq!(
        env.s2.commit(&mut env.pool, &mut env.tlb, p),
        Err(Error::StalePreparation)
    );
    assert_eq!(env.pool.in_use(), 2);
    // The reserved pages went back to the pool; the tables are unchanged.
    let after = env.pool.snapshot();
    let root = (env.s2.root().get() - stage2::testing::ARENA_BASE) as usize / 8;
    assert_eq!(before[root..root + 1024], after[root..root + 1024]);
}

#[test]
fn explicit_split_and_merge() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    env.apply(Op::Split {
        ipa: Ipa(RAM),
        size: 0x1000,
        level: Level::L2,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 512, 0]);
    env.apply(Op::Split {
        ipa: Ipa(RAM),
        size: GIB,
        level: Level::L3,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 0, 512 * 512]);
    assert_eq!(env.stats().tables, 513);
    assert_eq!(
        env.s2.find_mergeable(&env.pool),
        Some((Ipa(RAM), Level::L3))
    );
    for ipa in [RAM, RAM + 0x1234_5000, RAM + GIB - 0x1000] {
        assert_eq!(env.leaf(ipa).output_for(Ipa(ipa)), Some(PhysAddr(ipa)));
    }
    env.assert_no_leak();
    env.apply(Op::Merge {
        ipa: Ipa(RAM),
        size: GIB,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 1, 0, 0]);
    assert_eq!(env.s2.find_mergeable(&env.pool), None);
    env.assert_no_leak();
}

#[test]
fn pages_only_policy_does_not_merge() {
    let mut env = Env::new(40);
    env.apply(Op::Map {
        ipa: Ipa(RAM),
        size: MIB2,
        pa: PhysAddr(RAM),
        attrs: rw(),
        policy: BlockPolicy::PagesOnly,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 0, 512]);
    env.apply(Op::Merge {
        ipa: Ipa(RAM),
        size: 0x1000,
    })
    .unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 1, 0]);
}

#[test]
fn map_block_and_replace_table_with_block() {
    let mut env = Env::new(40);
    env.apply(Op::Map {
        ipa: Ipa(RAM),
        size: MIB2,
        pa: PhysAddr(RAM),
        attrs: rw(),
        policy: BlockPolicy::PagesOnly,
    })
    .unwrap();
    env.tlb.take();
    // Overwriting a whole table with a block frees the table after a
    // whole-VMID invalidation.
    env.apply(Op::MapBlock {
        ipa: Ipa(RAM),
        pa: PhysAddr(0x8000_0000_0000 >> 8),
        level: Level::L2,
        attrs: rw(),
    })
    .unwrap();
    let mut expect = vmid_flush(env.s2.vttbr());
    expect.push(TlbOp::DsbIshst);
    assert_eq!(env.tlb.take(), expect);
    assert_eq!(env.leaf(RAM).level, Level::L2);
    env.assert_no_leak();
}

#[test]
fn concatenated_root_covers_the_whole_ipa_space() {
    let mut env = Env::new(40);
    let top = (1u64 << 40) - GIB;
    env.map(top, GIB, RAM).unwrap();
    assert_eq!(env.leaf(top).level, Level::L1);
    assert_eq!(
        env.leaf(top + 0x1000).output_for(Ipa(top + 0x1000)),
        Some(PhysAddr(RAM + 0x1000))
    );
    let mut env = Env::new(32);
    assert_eq!(env.s2.config().root_pages(), 4);
    env.map(0, 1 << 32, 0).unwrap();
    assert_eq!(env.stats().leaves, [0, 0, 2048, 0]);
    env.map(0xffff_f000, 0x1000, 0x1000).unwrap();
    assert_eq!(
        env.leaf(0xffff_f000).output_for(Ipa(0xffff_f000)),
        Some(PhysAddr(0x1000))
    );
    env.assert_no_leak();
}

#[test]
fn walk_reports_leaves_in_order() {
    let mut env = Env::new(40);
    env.map(RAM, MIB2 + 0x2000, RAM).unwrap();
    let mut seen = Vec::new();
    env.s2
        .walk(&env.pool, Ipa(RAM), MIB2 + 0x2000, |leaf| {
            seen.push((leaf.base.get(), leaf.level.get(), leaf.is_valid()))
        })
        .unwrap();
    assert_eq!(seen[0], (RAM, 2, true));
    assert_eq!(seen[1], (RAM + MIB2, 3, true));
    assert_eq!(seen[2], (RAM + MIB2 + 0x1000, 3, true));
    assert_eq!(seen.len(), 3);
}

#[test]
fn destroy_frees_every_page() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    env.unmap(RAM + 0x1000, 0x1000).unwrap();
    env.map(4 * GIB + 0x1000, 0x3000, RAM).unwrap();
    let Env {
        mut pool,
        mut tlb,
        s2,
    } = env;
    let vttbr = s2.vttbr();
    tlb.take();
    s2.destroy(&mut pool, &mut tlb);
    assert_eq!(pool.in_use(), 0);
    assert_eq!(tlb.take(), vmid_flush(vttbr));
}

#[test]
fn host_identity_map_of_qemu_virt() {
    // MMIO below RAM as device memory, 1 GiB RAM, a 16 MiB carve-out at
    // the top left unmapped: the shape the hypervisor gives its host.
    let mut env = Env::new(44);
    let carve = 16 << 20;
    env.apply(Op::Map {
        ipa: Ipa(0),
        size: RAM,
        pa: PhysAddr(0),
        attrs: LeafAttrs::device(Perms::RW),
        policy: BlockPolicy::Largest,
    })
    .unwrap();
    env.map(RAM, GIB - carve, RAM).unwrap();
    let s = env.stats();
    assert_eq!(s.leaves, [0, 1, 504, 0]);
    assert_eq!(
        env.leaf(0x0900_0000).attrs().unwrap().mem,
        MemAttr::DeviceNgnre
    );
    assert_eq!(env.leaf(RAM + GIB - carve).descriptor, Descriptor::EMPTY);
    env.assert_no_leak();
}

#[test]
fn pages_needed_and_reservations() {
    let mut env = Env::new(40);
    env.map(RAM, GIB, RAM).unwrap();
    let op = Op::Unmap {
        ipa: Ipa(RAM + 0x5000),
        size: 0x1000,
    };
    assert_eq!(env.s2.pages_needed(&env.pool, op), Ok(2));
    assert_eq!(
        env.s2.pages_needed(
            &env.pool,
            Op::Unmap {
                ipa: Ipa(1),
                size: 1
            }
        ),
        Err(Error::Unaligned(1))
    );
    // A reservation of 2 pages is enough for the unmap and nothing more.
    {
        let mut r = Reserved::new(&mut env.pool, 2).unwrap();
        assert_eq!(r.remaining(), 2);
        env.s2.apply(&mut r, &mut env.tlb, op).unwrap();
        assert_eq!(r.remaining(), 0);
        let op2 = Op::Unmap {
            ipa: Ipa(RAM + GIB - MIB2),
            size: 0x1000,
        };
        assert_eq!(
            env.s2.apply(&mut r, &mut env.tlb, op2),
            Err(Error::OutOfMemory { needed: 1 })
        );
    }
    env.assert_no_leak();
    env.pool.set_alloc_limit(Some(1));
    assert!(Reserved::new(&mut env.pool, 2).is_err());
    env.pool.set_alloc_limit(None);
    assert_eq!(env.pool.in_use(), 4);
    // Leftover reserved pages go back on drop.
    drop(Reserved::new(&mut env.pool, 5).unwrap());
    env.assert_no_leak();
}
