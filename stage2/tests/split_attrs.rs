//! Splitting a block keeps every other page's translation bit for bit.
//!
//! A block (1 GiB at level 1, 2 MiB at level 2) that is read-only or
//! read-write, execute-never, device or normal, with software bits set, is
//! split by changing one page inside it (unmap, annotate, new permissions,
//! new software bits, or an explicit split). Every other page of the block
//! must keep its output address and every attribute bit of the block's
//! descriptor: memory type, S2AP, shareability, AF, XN, software bits. The
//! random sequences of `model.rs` would find a split that drops a bit only
//! by chance; these tests pin it down for each kind of block.

use stage2::testing::ArenaPool;
use stage2::tlb::record::RecordingTlb;
use stage2::*;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const PAGE: u64 = 0x1000;

/// Output address bits 47:12 and the valid/type bits 1:0: what may differ
/// between a block and the pages it splits into. Everything else of a leaf
/// is an attribute.
const NOT_ATTRS: u64 = (((1 << 48) - 1) & !(PAGE - 1)) | 0b11;

fn attr_bits(d: Descriptor) -> u64 {
    d.raw() & !NOT_ATTRS
}

struct Env {
    pool: ArenaPool,
    tlb: RecordingTlb,
    s2: Stage2,
}

impl Env {
    fn new() -> Env {
        let mut pool = ArenaPool::new(2048);
        let config = Stage2Config::new(40, PaRange::Bits48).unwrap();
        let s2 = Stage2::new(config, 3, &mut pool).unwrap();
        Env {
            pool,
            tlb: RecordingTlb::new(),
            s2,
        }
    }

    fn apply(&mut self, op: Op) {
        self.s2
            .apply(&mut self.pool, &mut self.tlb, op)
            .unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
    }

    fn leaf(&self, ipa: u64) -> Leaf {
        self.s2.lookup(&self.pool, Ipa(ipa)).unwrap()
    }
}

/// The block kinds: read-only or read-write, execute-never (no X), normal
/// (write-back or non-cacheable) or device, with and without software bits.
fn block_attrs() -> Vec<(&'static str, LeafAttrs)> {
    let sw = |a: LeafAttrs, state, spare| LeafAttrs {
        sw: SwBits { state, spare },
        ..a
    };
    vec![
        ("normal R, XN", LeafAttrs::normal(Perms::R)),
        ("normal RW, XN", LeafAttrs::normal(Perms::RW)),
        ("device RW, XN", LeafAttrs::device(Perms::RW)),
        ("device R, XN", LeafAttrs::device(Perms::R)),
        (
            "normal non-cacheable R, XN, shared-borrowed + spare 3",
            sw(
                LeafAttrs {
                    mem: MemAttr::NormalNonCacheable,
                    ..LeafAttrs::normal(Perms::R)
                },
                PageState::SharedBorrowed,
                3,
            ),
        ),
        (
            "normal RX (executable), shared-owned + spare 1",
            sw(LeafAttrs::normal(Perms::RX), PageState::SharedOwned, 1),
        ),
    ]
}

/// How the one page is changed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    Unmap,
    Annotate,
    Perms,
    Sw,
    ExplicitSplit,
}

const CHANGES: [Change; 5] = [
    Change::Unmap,
    Change::Annotate,
    Change::Perms,
    Change::Sw,
    Change::ExplicitSplit,
];

/// Permissions different from `p` (flips W and X).
fn other_perms(p: Perms) -> Perms {
    match (p.contains(Perms::W), p.contains(Perms::X)) {
        (false, false) => Perms::RWX,
        (true, false) => Perms::RX,
        (false, true) => Perms::RW,
        (true, true) => Perms::R,
    }
}

fn other_sw(sw: SwBits) -> SwBits {
    let state = match sw.state {
        PageState::Owned => PageState::SharedOwned,
        PageState::SharedOwned => PageState::SharedBorrowed,
        PageState::SharedBorrowed => PageState::Owned,
    };
    SwBits {
        state,
        spare: sw.spare ^ 2,
    }
}

fn annotation() -> Annotation {
    Annotation::new(AnnotationType::DONATION, 2, 0x1234).unwrap()
}

/// Checks every entry of `[ipa, ipa + size)` after `change` at `page`:
/// the page itself shows the change; every other page translates to
/// `pa + offset` with exactly the attribute bits of `block`.
fn check_split(env: &Env, case: &Case, block: Descriptor) {
    let Case {
        what,
        attrs,
        ipa,
        size,
        pa,
        change,
        page,
    } = *case;
    let ctx = format!(
        "{what}, {} block, {change:?} of page {page:#x}",
        size_name(size)
    );
    let mut covered = 0u64;
    let mut saw_page = false;
    env.s2
        .walk(&env.pool, Ipa(ipa), size, |leaf| {
            let base = leaf.base.get();
            let end = base + leaf.size();
            covered += leaf.size();
            if (base..end).contains(&page) && change != Change::ExplicitSplit {
                // The changed page was split off on its own.
                assert_eq!(leaf.level, Level::L3, "{ctx}: changed page at {leaf:?}");
                saw_page = true;
                return;
            }
            let d = leaf.descriptor;
            assert!(d.is_leaf(leaf.level), "{ctx}: {leaf:?} is not a leaf");
            assert_eq!(
                d.output_address(),
                PhysAddr(pa + (base - ipa)),
                "{ctx}: address of the entry at {base:#x}"
            );
            assert_eq!(
                attr_bits(d),
                attr_bits(block),
                "{ctx}: attribute bits of the entry at {base:#x} (level {}): {d:?} from block {block:?}",
                leaf.level.get()
            );
            assert_eq!(leaf.attrs(), Some(attrs), "{ctx}: attributes at {base:#x}");
        })
        .unwrap();
    assert_eq!(covered, size, "{ctx}: the entries cover the block");
    assert!(
        saw_page || change == Change::ExplicitSplit,
        "{ctx}: no entry for the changed page"
    );

    // Page by page through `lookup` (another walk): every page of the
    // 2 MiB around the change, and the first and last page of every other
    // 2 MiB of the block.
    let around = page & !(MIB2 - 1);
    let mut pages: Vec<u64> = (0..512).map(|i| around + i * PAGE).collect();
    for b in (ipa..ipa + size).step_by(MIB2 as usize) {
        pages.extend([b, b + MIB2 - PAGE]);
    }
    for p in pages {
        let leaf = env.leaf(p);
        if p == page {
            let d = leaf.descriptor;
            match change {
                Change::Unmap => assert_eq!(d, Descriptor::EMPTY, "{ctx}"),
                Change::Annotate => assert_eq!(leaf.annotation(), Some(annotation()), "{ctx}"),
                Change::Perms => {
                    assert_eq!(leaf.output_for(Ipa(p)), Some(PhysAddr(pa + (p - ipa))));
                    let got = leaf.attrs().unwrap();
                    assert_eq!(got.perms, other_perms(attrs.perms), "{ctx}");
                    assert_eq!(
                        LeafAttrs {
                            perms: attrs.perms,
                            ..got
                        },
                        attrs,
                        "{ctx}: only the permissions changed"
                    );
                }
                Change::Sw => {
                    assert_eq!(leaf.output_for(Ipa(p)), Some(PhysAddr(pa + (p - ipa))));
                    let got = leaf.attrs().unwrap();
                    assert_eq!(got.sw, other_sw(attrs.sw), "{ctx}");
                    assert_eq!(
                        LeafAttrs {
                            sw: attrs.sw,
                            ..got
                        },
                        attrs,
                        "{ctx}: only the software bits changed"
                    );
                }
                Change::ExplicitSplit => {
                    assert_eq!(leaf.level, Level::L3, "{ctx}: split down to pages");
                    assert_eq!(attr_bits(d), attr_bits(block), "{ctx}");
                }
            }
            continue;
        }
        assert_eq!(
            leaf.output_for(Ipa(p)),
            Some(PhysAddr(pa + (p - ipa))),
            "{ctx}: page {p:#x}"
        );
        assert_eq!(
            attr_bits(leaf.descriptor),
            attr_bits(block),
            "{ctx}: page {p:#x}"
        );
    }
}

fn size_name(size: u64) -> &'static str {
    if size == GIB { "1 GiB" } else { "2 MiB" }
}

/// Maps one block, changes `page` inside it, checks the split, then undoes
/// the change (where it can be undone) and checks the block is back as it
/// was, bit for bit.
/// One block kind, one block, one change.
#[derive(Clone, Copy)]
struct Case {
    what: &'static str,
    attrs: LeafAttrs,
    /// The block: IPA, bytes (1 GiB or 2 MiB) and output address.
    ipa: u64,
    size: u64,
    pa: u64,
    change: Change,
    /// The page changed.
    page: u64,
}

fn split_one(case: Case) {
    let Case {
        what,
        attrs,
        ipa,
        size,
        pa,
        change,
        page,
    } = case;
    let mut env = Env::new();
    let level = if size == GIB { Level::L1 } else { Level::L2 };
    env.apply(Op::Map {
        ipa: Ipa(ipa),
        size,
        pa: PhysAddr(pa),
        attrs,
        policy: BlockPolicy::Largest,
    });
    let block = env.leaf(ipa).descriptor;
    let tables = env.s2.stats(&env.pool).tables;
    assert_eq!(env.leaf(ipa).level, level, "{what}: mapped as one block");
    assert_eq!(env.leaf(ipa).attrs(), Some(attrs), "{what}");
    let op = match change {
        Change::Unmap => Op::Unmap {
            ipa: Ipa(page),
            size: PAGE,
        },
        Change::Annotate => Op::Annotate {
            ipa: Ipa(page),
            size: PAGE,
            annotation: annotation(),
        },
        Change::Perms => Op::SetPerms {
            ipa: Ipa(page),
            size: PAGE,
            perms: other_perms(attrs.perms),
        },
        Change::Sw => Op::SetSw {
            ipa: Ipa(page),
            size: PAGE,
            sw: other_sw(attrs.sw),
        },
        Change::ExplicitSplit => Op::Split {
            ipa: Ipa(page),
            size: PAGE,
            level: Level::L3,
        },
    };
    env.apply(op);
    assert_eq!(
        env.leaf(page).level,
        Level::L3,
        "{what}: {change:?} split the block down to the page"
    );
    check_split(&env, &case, block);

    // Undo: the range is uniform again and merges back into the very same
    // block descriptor.
    let undo = match change {
        Change::Unmap | Change::Annotate => Some(Op::Map {
            ipa: Ipa(page),
            size: PAGE,
            pa: PhysAddr(pa + (page - ipa)),
            attrs,
            policy: BlockPolicy::Largest,
        }),
        Change::Perms => Some(Op::SetPerms {
            ipa: Ipa(page),
            size: PAGE,
            perms: attrs.perms,
        }),
        Change::Sw => Some(Op::SetSw {
            ipa: Ipa(page),
            size: PAGE,
            sw: attrs.sw,
        }),
        Change::ExplicitSplit => Some(Op::Merge {
            ipa: Ipa(ipa),
            size,
        }),
    };
    if let Some(op) = undo {
        env.apply(op);
        let leaf = env.leaf(page);
        assert_eq!(leaf.level, level, "{what}: {change:?} undone: merged back");
        assert_eq!(
            leaf.descriptor, block,
            "{what}: {change:?} undone: the same block descriptor"
        );
        assert_eq!(
            env.s2.stats(&env.pool).tables,
            tables,
            "{what}: the split's tables freed"
        );
    }
}

#[test]
fn splitting_a_2mib_block_keeps_every_other_page() {
    // IPA and output address differ, so an address mix-up shows.
    let ipa = 3 * GIB + 5 * MIB2;
    let pa = 0x4000_0000 + 3 * MIB2;
    for (what, attrs) in block_attrs() {
        for change in CHANGES {
            for page in [ipa, ipa + 0x7_5000, ipa + MIB2 - PAGE] {
                split_one(Case {
                    what,
                    attrs,
                    ipa,
                    size: MIB2,
                    pa,
                    change,
                    page,
                });
            }
        }
    }
}

#[test]
fn splitting_a_1gib_block_keeps_every_other_page() {
    let ipa = 4 * GIB;
    let pa = 0x4000_0000;
    for (what, attrs) in block_attrs() {
        for change in CHANGES {
            for page in [ipa + 7 * MIB2 + 0x3000, ipa + GIB - PAGE] {
                split_one(Case {
                    what,
                    attrs,
                    ipa,
                    size: GIB,
                    pa,
                    change,
                    page,
                });
            }
        }
    }
}

#[test]
fn execute_never_survives_a_split_on_every_page() {
    // The plainest form of the property: a read-only, execute-never 2 MiB
    // block, one page unmapped; every other page is still not executable.
    let mut env = Env::new();
    let ipa = 0x8000_0000;
    env.apply(Op::Map {
        ipa: Ipa(ipa),
        size: MIB2,
        pa: PhysAddr(0x4020_0000),
        attrs: LeafAttrs::normal(Perms::R),
        policy: BlockPolicy::Largest,
    });
    env.apply(Op::Unmap {
        ipa: Ipa(ipa + 0x1000),
        size: PAGE,
    });
    for i in (0..512).filter(|i| *i != 1) {
        let leaf = env.leaf(ipa + i * PAGE);
        assert_eq!(leaf.level, Level::L3);
        let perms = leaf.attrs().unwrap().perms;
        assert_eq!(perms, Perms::R, "page {i}: {:?}", leaf.descriptor);
        assert!(!perms.contains(Perms::X) && !perms.contains(Perms::W));
    }
}
