//! The stage-2 translation table and every operation on it.
//!
//! # How an operation runs
//!
//! Every change is an [`Op`] over a page-aligned IPA range. It runs in two
//! phases:
//!
//! 1. **Prepare** ([`Stage2::prepare`], or [`Stage2::check`] then
//!    [`Stage2::reserve`]): validate the arguments, then walk the table
//!    without writing and decide, entry by entry, what the change will do:
//!    skip it (already as asked), overwrite it, descend into its table, or
//!    split it into a new table. The walk counts the new tables exactly
//!    and reserves that many pages from the pool. Any error (bad range, a
//!    permission change on an unmapped page, an empty pool) is returned
//!    here, before anything is written.
//! 2. **Commit** ([`Stage2::commit`]): the same walk again, writing. It
//!    cannot fail: every table page it needs is already reserved.
//!
//! Three shapes cost less, with the same result:
//!
//! - an operation that changes one entry reached through existing tables
//!   (a page, or a whole block-sized entry) is checked by one descent that
//!   records the path; the commit writes that entry directly (the
//!   generation check guarantees the path is current) and climbs back for
//!   the merge checks;
//! - entries fully covered by a map that fits a leaf at their level, an
//!   unmap or an annotation become a value known in advance: the checking
//!   walk skips them (they need no page and cannot fail) and the writing
//!   walk writes them in a tight loop;
//! - whole root entries that are all invalid (a fresh map of 1 GiB blocks)
//!   are written directly.
//!
//! # Block mappings, splits and merges
//!
//! A mapping uses the largest block (1 GiB at level 1, 2 MiB at level 2)
//! that the range, the IPA and the PA alignment allow. Changing part of a
//! block splits it: a new table is filled with the block's translation
//! (so the rest keeps its mapping), the change is applied to it while it is
//! still unlinked, and it replaces the block with break-before-make. After
//! an operation has changed a table, the table is checked: if its 512
//! entries are uniform again (identical invalid entries, or leaves with
//! identical attributes mapping one contiguous, aligned physical range),
//! it is replaced by one entry at the level above and its page is freed.
//! When a single-entry change makes tables uniform at several levels (a
//! page completing a 2 MiB block that completes a 1 GiB one), the merge is
//! judged all the way up first and only the topmost table is replaced:
//! one break-before-make and one flush, however many levels merge. So a
//! table that starts canonical (no mergeable table anywhere) stays
//! canonical under every operation except explicit [`Op::Split`] and
//! [`BlockPolicy::PagesOnly`] maps, which ask for smaller entries on
//! purpose; [`Op::Merge`] merges such ranges back. The uniformity check
//! reads outward from the entries the operation changed (where a table
//! that is not uniform almost always differs), so refilling a table page
//! by page costs a few reads per page, not a scan per page.
//!
//! # Break-before-make and TLB maintenance
//!
//! - invalid → anything: written directly (invalid entries are never
//!   cached in TLBs). A new table over an invalid entry is published after
//!   a `dsb ishst`, so walkers see its contents first.
//! - valid leaf → leaf differing only in software bits: written in place,
//!   no TLBI (as pKVM does; software bits are ignored by hardware).
//! - valid leaf → anything else: the entry is invalidated, then (if the
//!   new entry is valid) the TLB is flushed for that IPA before the new
//!   entry is written. For a plain unmap the TLBI is deferred to the end of
//!   the operation and batched.
//! - table → anything: invalidated, then the whole VMID is flushed (the
//!   subtree may hold any number of leaves and walk-cache entries), and
//!   the table pages are freed only after the flush.
//!
//! Batches of up to [`TLBI_BATCH`] IPAs are invalidated one by one; larger
//! ones switch to one whole-VMID invalidation.

use crate::addr::{Ipa, PAGE_SIZE, PhysAddr};
use crate::config::Stage2Config;
use crate::descriptor::{Annotation, Descriptor, LeafAttrs, OA_MASK, Perms, SW_MASK, SwBits};
use crate::error::{Error, check_output, check_range};
use crate::level::{ENTRIES_PER_TABLE, Level};
use crate::pool::{PageList, TablePool};
use crate::tlb::TlbMaintenance;
use core::sync::atomic::{AtomicU64, Ordering};

/// How many IPAs one operation invalidates individually before it falls
/// back to invalidating the whole VMID.
pub const TLBI_BATCH: usize = 32;

/// Whether a map may use blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockPolicy {
    /// Use the largest block that fits each aligned piece, and merge tables
    /// that become uniform.
    Largest,
    /// Map with 4 KiB pages only and do not merge (pKVM's `force_pte`).
    PagesOnly,
}

/// A change to a stage-2 table. Ranges are `[ipa, ipa + size)`, page
/// aligned and non-empty.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Map the range to `[pa, pa + size)` with `attrs`.
    Map {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
        /// Output address of `ipa`.
        pa: PhysAddr,
        /// Attributes of every page.
        attrs: LeafAttrs,
        /// Whether blocks may be used.
        policy: BlockPolicy,
    },
    /// Map exactly one block at `level` (1 or 2), both addresses aligned to
    /// the block size.
    MapBlock {
        /// First IPA.
        ipa: Ipa,
        /// Output address.
        pa: PhysAddr,
        /// Block level.
        level: Level,
        /// Attributes.
        attrs: LeafAttrs,
    },
    /// Remove every mapping and annotation in the range.
    Unmap {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
    },
    /// Make the range invalid, carrying `annotation`.
    Annotate {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
        /// What to record.
        annotation: Annotation,
    },
    /// Change the permissions of every (mapped) page in the range.
    SetPerms {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
        /// New permissions.
        perms: Perms,
    },
    /// Change the software bits of every (mapped) page in the range.
    SetSw {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
        /// New software bits.
        sw: SwBits,
    },
    /// Split every valid block overlapping the range down to `level` (2 or
    /// 3); translations are unchanged.
    Split {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
        /// Finest level wanted.
        level: Level,
    },
    /// Merge every uniform table overlapping the range into one entry.
    Merge {
        /// First IPA.
        ipa: Ipa,
        /// Bytes.
        size: u64,
    },
}

/// The per-entry change, resolved from an [`Op`].
#[derive(Clone, Copy, Debug)]
enum Update {
    Map {
        ipa0: u64,
        pa0: u64,
        attrs: u64,
        blocks: bool,
    },
    Set(Descriptor),
    Perms(Perms),
    Sw(SwBits),
    Split(Level),
    Merge,
}

/// What one entry needs.
#[derive(Clone, Copy, Debug)]
enum Action {
    Skip,
    Write(Descriptor),
    Descend,
    Split,
}

/// Takes `needed` pages from `pool`, or none at all if it has fewer.
fn reserve_pages<P: TablePool + ?Sized>(pool: &mut P, needed: usize) -> Result<PageList, Error> {
    let mut reserved = PageList::new();
    for _ in 0..needed {
        match pool.alloc_page() {
            Some(page) => reserved.push(&*pool, page),
            None => {
                reserved.free_all(pool);
                return Err(Error::OutOfMemory { needed });
            }
        }
    }
    Ok(reserved)
}

/// Most tables on the way from the root to a leaf (levels 0–3).
const MAX_DEPTH: usize = 4;

/// The descent of a single-entry operation, recorded by the checking walk:
/// the table holding the one entry it changes, that entry and what it
/// becomes. The commit uses it instead of walking again (the generation
/// check guarantees nothing changed in between); the rare merge that
/// follows finds the tables above by descending again.
///
/// Every field is a whole word, and so is [`Walk`]'s tag: a [`Checked`]
/// is built by the checking walk and moved right away (out of a `Result`,
/// into a caller's local), and a move that loads several narrow fields in
/// one wide load cannot be forwarded from the narrow stores that wrote
/// them, a stall of some 15 cycles per call.
#[derive(Clone, Copy, Debug)]
struct Path {
    /// The table holding the entry.
    table: PhysAddr,
    /// The entry's index in `table` (bits 15:0), the tables from the root
    /// to `table`, both included (23:16), and the entry's level (31:24).
    shape: u64,
    /// The entry's first IPA.
    base: u64,
    old: Descriptor,
    /// What the entry becomes (`old` when it is already as asked).
    new: Descriptor,
}

impl Path {
    #[inline(always)]
    fn new(table: PhysAddr, idx: usize, depth: u8, level: Level, base: u64) -> Path {
        Path {
            table,
            shape: idx as u64 | u64::from(depth) << 16 | u64::from(level.get()) << 24,
            base,
            old: Descriptor::EMPTY,
            new: Descriptor::EMPTY,
        }
    }

    /// The entry's index in its table.
    #[inline(always)]
    fn idx(&self) -> usize {
        (self.shape & 0xffff) as usize
    }

    /// Tables from the root to the entry's table, both included.
    #[inline(always)]
    fn depth(&self) -> u8 {
        (self.shape >> 16) as u8
    }

    /// The entry's level.
    #[inline(always)]
    fn level(&self) -> Level {
        Level::new((self.shape >> 24) as u8).unwrap_or(Level::L3)
    }
}

/// What the commit of a checked operation walks.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
enum Walk {
    /// One entry, reached by the recorded descent.
    Path(Path),
    /// The general walk of `[start, end)`.
    Range {
        update: Update,
        start: u64,
        end: u64,
    },
}

/// An operation that passed every check, with the exact number of table
/// pages it needs, but nothing reserved yet: [`Stage2::reserve`] turns it
/// into a [`Prepared`] operation. Checking several operations (on several
/// tables) before reserving for any of them keeps "a refused call changes
/// nothing" across tables, without walking each table a third time.
#[must_use = "a checked operation does nothing until it is reserved and committed"]
#[derive(Clone, Copy, Debug)]
pub struct Checked {
    walk: Walk,
    merge: bool,
    pages: usize,
    root: PhysAddr,
    generation: u64,
    /// Work of the checking walk, added to the table's [`Work`] on commit.
    reads: u32,
    tables: u32,
}

impl Checked {
    /// Table pages the operation needs.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The entry the operation changes, as the check read it, when it
    /// changes at most one existing entry (a page below existing tables,
    /// or a whole block-sized entry): callers that must know what is there
    /// (is the page free?) need no lookup of their own.
    pub fn entry(&self) -> Option<Leaf> {
        let Walk::Path(path) = &self.walk else {
            return None;
        };
        Some(Leaf {
            level: path.level(),
            base: Ipa(path.base),
            descriptor: path.old,
        })
    }
}

/// An operation that passed every check and holds the table pages it will
/// need. Commit it with [`Stage2::commit`] or give its pages back with
/// [`Stage2::cancel`]; dropping it leaks the reserved pages.
#[must_use = "a prepared operation holds reserved pages: commit or cancel it"]
#[derive(Debug)]
pub struct Prepared {
    checked: Checked,
    reserved: PageList,
}

impl Prepared {
    /// Table pages reserved for the commit.
    pub fn reserved_pages(&self) -> usize {
        self.reserved.len()
    }
}

/// Running totals of the work the committed operations on one table did,
/// for benchmarks and tuning (see [`Stage2::work`]). Counted per table
/// visit and per loop, not per descriptor, so keeping them is nearly free.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Work {
    /// Operations committed.
    pub ops: u64,
    /// Descriptors read: the checking walk, the writing walk, merge checks
    /// and subtrees detached for freeing.
    pub reads: u64,
    /// Descriptors written, including the fill of a new table split from a
    /// block (a break-before-make replacement counts twice).
    pub writes: u64,
    /// Tables visited by the checking and the writing walks.
    pub tables_visited: u64,
    /// Table pages linked in (splits).
    pub tables_added: u64,
    /// Table pages freed (merges, replaced subtrees).
    pub tables_freed: u64,
    /// `tlbi ipas2e1is` issued.
    pub tlbi_ipa: u64,
    /// `tlbi vmalle1is` issued.
    pub tlbi_stage1: u64,
    /// `tlbi vmalls12e1is` (whole VMID) issued.
    pub tlbi_vmid: u64,
}

impl Work {
    /// The work done since `earlier` (a value read from the same table).
    pub fn since(self, earlier: Work) -> Work {
        Work {
            ops: self.ops - earlier.ops,
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            tables_visited: self.tables_visited - earlier.tables_visited,
            tables_added: self.tables_added - earlier.tables_added,
            tables_freed: self.tables_freed - earlier.tables_freed,
            tlbi_ipa: self.tlbi_ipa - earlier.tlbi_ipa,
            tlbi_stage1: self.tlbi_stage1 - earlier.tlbi_stage1,
            tlbi_vmid: self.tlbi_vmid - earlier.tlbi_vmid,
        }
    }
}

/// One leaf or invalid entry of the table, as found by a lookup or a walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    /// The level the entry sits at.
    pub level: Level,
    /// First IPA the entry covers (aligned to the level's size).
    pub base: Ipa,
    /// The descriptor.
    pub descriptor: Descriptor,
}

impl Leaf {
    /// Bytes the entry covers.
    pub const fn size(&self) -> u64 {
        self.level.size()
    }

    /// Whether the entry maps memory.
    pub const fn is_valid(&self) -> bool {
        self.descriptor.is_valid()
    }

    /// The output address of `ipa` through this entry, if it is a valid
    /// leaf and `ipa` lies inside it.
    pub fn output_for(&self, ipa: Ipa) -> Option<PhysAddr> {
        let off = ipa.get().checked_sub(self.base.get())?;
        if off >= self.size() || !self.descriptor.is_leaf(self.level) {
            return None;
        }
        Some(PhysAddr(self.descriptor.output_address().get() + off))
    }

    /// The leaf's attributes, if it is a valid leaf.
    pub fn attrs(&self) -> Option<LeafAttrs> {
        self.descriptor.leaf_attrs(self.level)
    }

    /// The annotation, if it is an annotated invalid entry.
    #[inline]
    pub const fn annotation(&self) -> Option<Annotation> {
        self.descriptor.annotation()
    }
}

/// Counts of what a table holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Table pages below the root.
    pub tables: usize,
    /// Valid leaves per level (index 1: 1 GiB blocks, 2: 2 MiB blocks,
    /// 3: pages).
    pub leaves: [usize; 4],
    /// Annotated invalid entries.
    pub annotations: usize,
}

impl Stats {
    /// Valid leaves at every level.
    pub fn total_leaves(&self) -> usize {
        self.leaves.iter().sum()
    }
}

/// A table reported by the internal walk after its entries: its address,
/// the level of its entries and the first IPA it covers.
#[derive(Clone, Copy, Debug)]
struct TableRef {
    table: PhysAddr,
    level: Level,
    base: u64,
}

/// One stage-2 translation table: a VMID, a root (possibly concatenated)
/// and the configuration it was built for.
///
/// The table does not own its pool or TLB maintenance: each call takes
/// them, so a guest's tables can come from its donated memcache and the
/// host's from the hypervisor pool. Callers serialise calls on one table
/// (the hypervisor holds the owner's lock).
#[derive(Debug)]
pub struct Stage2 {
    config: Stage2Config,
    vmid: u16,
    root: PhysAddr,
    generation: u64,
    work: Work,
    tlbi: TlbiBatch,
    /// The configuration's start level and root entries, computed once.
    start: Level,
    root_entries: usize,
}

#[inline]
fn read(ptr: *mut u64, idx: usize) -> Descriptor {
    // SAFETY: callers pass a pointer from `TablePool::table_ptr` for a live
    // table and an index below that table's entry count; descriptors are
    // accessed as atomics because hardware walkers read them concurrently.
    Descriptor::from_raw(unsafe { AtomicU64::from_ptr(ptr.add(idx)) }.load(Ordering::Relaxed))
}

#[inline]
fn write(ptr: *mut u64, idx: usize, d: Descriptor) {
    // SAFETY: as for `read`. A release store, as Linux's
    // `stage2_make_pte`, so earlier writes are observed first.
    unsafe { AtomicU64::from_ptr(ptr.add(idx)) }.store(d.raw(), Ordering::Release);
}

/// Entry `idx` of the table a leaf at `level` splits into.
fn replicate(parent: Descriptor, level: Level, idx: usize) -> Descriptor {
    if !parent.is_leaf(level) {
        return parent;
    }
    let child = match level.next() {
        Some(c) => c,
        None => return parent,
    };
    let pa = parent.output_address().get() + idx as u64 * child.size();
    Descriptor::leaf_from_bits(child, pa, parent.attr_bits())
}

/// The index range of `[start, end)` in a table at `level` based at `base`
/// with `entries` entries. The range must intersect the table. (Shifts,
/// not divisions: the level's size is not a constant here, and a 64-bit
/// division costs tens of cycles on every level of every walk.)
#[inline]
fn index_range(level: Level, base: u64, entries: usize, start: u64, end: u64) -> (usize, usize) {
    let shift = level.shift();
    let span_end = base.saturating_add((entries as u64) << shift);
    let s = start.max(base);
    let e = end.min(span_end);
    (
        ((s - base) >> shift) as usize,
        ((e - 1 - base) >> shift) as usize,
    )
}

/// Entry `idx` of the table a leaf at `level` splits into, as a raw value:
/// the first entry and the step between entries (0 for a copy).
#[inline]
fn split_pattern(parent: Descriptor, level: Level) -> (u64, u64) {
    match level.next() {
        Some(child) if parent.is_leaf(level) => (
            Descriptor::leaf_from_bits(child, parent.output_address().get(), parent.attr_bits())
                .raw(),
            child.size(),
        ),
        _ => (parent.raw(), 0),
    }
}

impl Update {
    /// Whether `old` already gives the wanted result on `[s, ...)` within
    /// its entry based at `eb`. Errors for permission or software-bit
    /// changes on unmapped pages.
    #[inline(always)]
    fn satisfied(&self, old: Descriptor, level: Level, eb: u64, s: u64) -> Result<bool, Error> {
        Ok(match *self {
            Update::Map {
                ipa0, pa0, attrs, ..
            } => {
                old.is_leaf(level)
                    && old.attr_bits() == attrs
                    && old.output_address().get() + (s - eb) == pa0 + (s - ipa0)
            }
            Update::Set(d) => old == d,
            Update::Perms(p) => {
                if !old.is_leaf(level) {
                    return Err(Error::NotMapped(Ipa(s)));
                }
                old.with_perms(p) == old
            }
            Update::Sw(sw) => {
                if !old.is_leaf(level) {
                    return Err(Error::NotMapped(Ipa(s)));
                }
                old.with_sw(sw) == old
            }
            Update::Split(_) | Update::Merge => true,
        })
    }

    /// The single entry at `level` (based at `eb`, fully covered) that
    /// gives the wanted result, if one can.
    #[inline(always)]
    fn single(&self, old: Descriptor, level: Level, eb: u64) -> Option<Descriptor> {
        match *self {
            Update::Map {
                ipa0,
                pa0,
                attrs,
                blocks,
            } => {
                let pa = pa0 + (eb - ipa0);
                let fits = level == Level::L3
                    || (blocks && level.allows_block() && pa.is_multiple_of(level.size()));
                fits.then(|| Descriptor::leaf_from_bits(level, pa, attrs))
            }
            Update::Set(d) => Some(d),
            Update::Perms(p) => old.is_leaf(level).then(|| old.with_perms(p)),
            Update::Sw(sw) => old.is_leaf(level).then(|| old.with_sw(sw)),
            Update::Split(_) | Update::Merge => None,
        }
    }

    /// Whether every fully covered entry at `level` becomes one entry that
    /// is known without reading the old one ([`whole_entry`]): unmaps,
    /// annotations, and maps whose output fits a leaf at this level. Such
    /// entries need no table page and cannot fail, so the checking walk
    /// skips them and the writing walk writes them without deciding.
    ///
    /// [`whole_entry`]: Self::whole_entry
    #[inline(always)]
    fn whole(&self, level: Level) -> bool {
        match *self {
            Update::Map {
                ipa0, pa0, blocks, ..
            } => {
                level == Level::L3
                    || (blocks
                        && level.allows_block()
                        && pa0.wrapping_sub(ipa0).is_multiple_of(level.size()))
            }
            Update::Set(_) => true,
            _ => false,
        }
    }

    /// The entry a fully covered entry based at `eb` becomes, when
    /// [`whole`](Self::whole) holds at `level`: what `decide` would write
    /// (or find already there).
    #[inline(always)]
    fn whole_entry(&self, level: Level, eb: u64) -> Descriptor {
        match *self {
            Update::Map {
                ipa0, pa0, attrs, ..
            } => Descriptor::leaf_from_bits(level, pa0.wrapping_add(eb - ipa0), attrs),
            Update::Set(d) => d,
            _ => Descriptor::EMPTY,
        }
    }

    /// What the entry `old` at `level`, covering `[eb, eb + size)`, needs
    /// for the part `[s, e)` of the operation's range.
    #[inline(always)]
    fn decide(
        &self,
        old: Descriptor,
        level: Level,
        eb: u64,
        s: u64,
        e: u64,
    ) -> Result<Action, Error> {
        let full = s == eb && e - eb == level.size();
        if old.is_table(level) {
            if full
                && matches!(self, Update::Map { .. } | Update::Set(_))
                && let Some(new) = self.single(old, level, eb)
            {
                return Ok(Action::Write(new));
            }
            return Ok(Action::Descend);
        }
        match *self {
            Update::Merge => return Ok(Action::Skip),
            Update::Split(to) => {
                return Ok(if old.is_leaf(level) && level < to {
                    Action::Split
                } else {
                    Action::Skip
                });
            }
            _ => {}
        }
        if self.satisfied(old, level, eb, s)? {
            return Ok(Action::Skip);
        }
        if full && let Some(new) = self.single(old, level, eb) {
            return Ok(Action::Write(new));
        }
        // Only reachable above level 3: a level-3 entry is always fully
        // covered, and `single` always answers for it once `satisfied`
        // has not failed.
        Ok(if level == Level::L3 {
            Action::Skip
        } else {
            Action::Split
        })
    }
}

/// Room for the IPAs one operation invalidates one by one, kept in the
/// table so that no commit has to clear it first.
#[derive(Clone)]
struct TlbiBatch([u64; TLBI_BATCH]);

impl core::fmt::Debug for TlbiBatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TlbiBatch")
    }
}

/// TLB invalidations owed by the operation in progress. Each IPA is kept
/// with its level in the low bits (IPAs are page aligned); only the first
/// `len` entries of the batch are meaningful.
struct Pending<'a> {
    ipas: &'a mut TlbiBatch,
    len: usize,
    all: bool,
}

impl Pending<'_> {
    #[inline]
    fn add(&mut self, ipa: Ipa, level: Level) {
        if self.len < TLBI_BATCH {
            self.ipas.0[self.len] = ipa.get() | level.get() as u64;
            self.len += 1;
        } else {
            self.all = true;
        }
    }

    fn any(&self) -> bool {
        self.all || self.len > 0
    }

    fn clear(&mut self) {
        self.len = 0;
        self.all = false;
    }
}

/// The by-IPA invalidation sequence (pkvm.md §5.6): `dsb ishst`, switch
/// to the table's VMID, `tlbi ipas2e1is` per IPA (each kept with its level
/// in the low bits), `dsb ish`, `tlbi vmalle1is`, `dsb ish`, `isb`, switch
/// back.
fn flush_ipas<T: TlbMaintenance + ?Sized>(tlb: &mut T, vttbr: u64, ipas: &[u64]) {
    tlb.dsb_ishst();
    let previous = tlb.switch_vttbr(vttbr);
    for &v in ipas {
        let level = Level::new((v & 3) as u8).unwrap_or(Level::L3);
        tlb.tlbi_ipas2e1is(Ipa(v & !(PAGE_SIZE - 1)), Some(level));
    }
    tlb.dsb_ish();
    tlb.tlbi_vmalle1is();
    tlb.dsb_ish();
    tlb.isb();
    tlb.restore_vttbr(previous);
}

/// The whole-VMID invalidation sequence: `dsb ishst`, switch,
/// `tlbi vmalls12e1is`, `dsb ish`, `isb`, switch back.
fn flush_vmid<T: TlbMaintenance + ?Sized>(tlb: &mut T, vttbr: u64) {
    tlb.dsb_ishst();
    let previous = tlb.switch_vttbr(vttbr);
    tlb.tlbi_vmalls12e1is();
    tlb.dsb_ish();
    tlb.isb();
    tlb.restore_vttbr(previous);
}

/// One descriptor slot: a table and an index into it.
#[derive(Clone, Copy)]
struct Slot(*mut u64, usize);

/// Where the checking walk reads a table's entries from: a real table, or
/// (for a split that has not happened) the leaf it would be split from.
#[derive(Clone, Copy)]
enum Src {
    Table(*mut u64),
    Split(Descriptor, Level),
}

/// The checking walk of one operation: counts the table pages it needs
/// and finds the first error it would hit, writing nothing.
struct Count<'a, P: TablePool + ?Sized> {
    pool: &'a P,
    update: Update,
    reads: u64,
    tables: u64,
}

impl<P: TablePool + ?Sized> Count<'_, P> {
    fn table(
        &mut self,
        src: Src,
        level: Level,
        base: u64,
        entries: usize,
        start: u64,
        end: u64,
    ) -> Result<usize, Error> {
        if level.next().is_none() && !matches!(self.update, Update::Perms(_) | Update::Sw(_)) {
            // Nothing below level 3, and only permission and software-bit
            // changes can fail on a page.
            return Ok(0);
        }
        let (first, last) = index_range(level, base, entries, start, end);
        if let Src::Table(_) = src {
            self.tables += 1;
        }
        if self.update.whole(level) {
            // Fully covered entries need nothing: only a partly covered
            // first or last entry is looked at.
            let mut needed = self.entry(src, level, base, first, start, end, true)?;
            if last != first {
                needed += self.entry(src, level, base, last, start, end, true)?;
            }
            return Ok(needed);
        }
        let mut needed = 0;
        for idx in first..=last {
            needed += self.entry(src, level, base, idx, start, end, false)?;
        }
        Ok(needed)
    }

    /// The table pages entry `idx` needs (and the first error it hits);
    /// with `partial_only`, nothing if it is fully covered.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn entry(
        &mut self,
        src: Src,
        level: Level,
        base: u64,
        idx: usize,
        start: u64,
        end: u64,
        partial_only: bool,
    ) -> Result<usize, Error> {
        let shift = level.shift();
        let eb = base + ((idx as u64) << shift);
        let s = start.max(eb);
        let e = end.min(eb + (1 << shift));
        if partial_only && s == eb && e - eb == 1 << shift {
            return Ok(0);
        }
        let old = match src {
            Src::Table(p) => {
                self.reads += 1;
                read(p, idx)
            }
            Src::Split(parent, plevel) => replicate(parent, plevel, idx),
        };
        let Some(next) = level.next() else {
            self.update.decide(old, level, eb, s, e)?;
            return Ok(0);
        };
        Ok(match self.update.decide(old, level, eb, s, e)? {
            Action::Skip | Action::Write(_) => 0,
            Action::Descend => {
                let child = self.pool.table_ptr(old.output_address()).as_ptr();
                self.table(Src::Table(child), next, eb, ENTRIES_PER_TABLE, s, e)?
            }
            Action::Split => {
                1 + self.table(Src::Split(old, level), next, eb, ENTRIES_PER_TABLE, s, e)?
            }
        })
    }
}

/// The writing walk of one committed operation.
struct Commit<'a, P: TablePool + ?Sized, T: TlbMaintenance + ?Sized> {
    pool: &'a mut P,
    tlb: &'a mut T,
    vttbr: u64,
    update: Update,
    start: u64,
    end: u64,
    merge: bool,
    reserved: PageList,
    detached: PageList,
    pending: Pending<'a>,
    /// Descriptors written since the last `dsb ishst`.
    dirty: bool,
    /// The table's running totals, counted in place (`work.writes` also
    /// tells whether a walk below an entry changed anything).
    work: &'a mut Work,
}

impl<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized> Commit<'_, P, T> {
    fn ptr(&self, table: PhysAddr) -> *mut u64 {
        self.pool.table_ptr(table).as_ptr()
    }

    #[inline]
    fn store(&mut self, table: *mut u64, idx: usize, d: Descriptor) {
        write(table, idx, d);
        self.dirty = true;
        self.work.writes += 1;
    }

    /// Issues the owed TLB invalidations (pkvm.md §5.6 order).
    fn flush(&mut self) {
        if !self.pending.any() {
            return;
        }
        self.dirty = false;
        if self.pending.all {
            flush_vmid(self.tlb, self.vttbr);
            self.work.tlbi_vmid += 1;
        } else {
            flush_ipas(
                self.tlb,
                self.vttbr,
                &self.pending.ipas.0[..self.pending.len],
            );
            self.work.tlbi_ipa += self.pending.len as u64;
            self.work.tlbi_stage1 += 1;
        }
        self.pending.clear();
    }

    /// Replaces a non-table entry `old` with `new`, following the
    /// break-before-make rules in the module docs.
    #[inline]
    fn replace(
        &mut self,
        Slot(table, idx): Slot,
        old: Descriptor,
        new: Descriptor,
        ipa: u64,
        level: Level,
        live: bool,
    ) {
        if !live || !old.is_valid() {
            if live && new.is_table(level) {
                // Publish the new table's contents before linking it.
                self.tlb.dsb_ishst();
            }
            self.store(table, idx, new);
            return;
        }
        if new.is_leaf(level) && (old.raw() ^ new.raw()) & !SW_MASK == 0 {
            self.store(table, idx, new);
            return;
        }
        self.pending.add(Ipa(ipa), level);
        if new.is_valid() {
            self.store(table, idx, Descriptor::EMPTY);
            self.flush();
            self.store(table, idx, new);
        } else {
            // An invalid `new` is the break itself; its TLBI can wait for
            // the end of the operation.
            self.store(table, idx, new);
        }
    }

    /// Replaces the table entry `old` with `new` and frees the subtree once
    /// the TLB no longer references it.
    fn replace_table(
        &mut self,
        Slot(table, idx): Slot,
        old: Descriptor,
        new: Descriptor,
        level: Level,
    ) {
        self.pending.all = true;
        if new.is_valid() {
            self.store(table, idx, Descriptor::EMPTY);
            self.flush();
        }
        self.store(table, idx, new);
        if let Some(child_level) = level.next() {
            self.detach(old.output_address(), child_level);
        }
    }

    /// [`replace_table`](Self::replace_table) of a table just found
    /// uniform (`merged` replaces it): it holds no tables, so it is the
    /// only page to free and its entries need not be read again.
    fn merge_table(&mut self, slot: Slot, old: Descriptor, merged: Descriptor) {
        self.pending.all = true;
        let Slot(table, idx) = slot;
        if merged.is_valid() {
            self.store(table, idx, Descriptor::EMPTY);
            self.flush();
        }
        self.store(table, idx, merged);
        self.detached.push(&*self.pool, old.output_address());
        self.work.tables_freed += 1;
    }

    /// Queues every page of the subtree at `table` for freeing after the
    /// final flush (children first: a page's entries are read before its
    /// word 0 becomes a list link). Level-3 tables hold no tables, so
    /// their entries are not read.
    fn detach(&mut self, table: PhysAddr, level: Level) {
        let ptr = self.ptr(table);
        if let Some(next) = level.next() {
            self.work.reads += ENTRIES_PER_TABLE as u64;
            for i in 0..ENTRIES_PER_TABLE {
                let d = read(ptr, i);
                if d.is_table(level) {
                    self.detach(d.output_address(), next);
                }
            }
        }
        self.detached.push(&*self.pool, table);
        self.work.tables_freed += 1;
    }

    /// Continues a single-entry commit whose entry's table (`tables[k]`,
    /// the path from the root being `tables`) became uniform, `merged`
    /// being the entry that replaces it. The merge climbs while the parent
    /// would be uniform with the merged entry in place (judged before
    /// anything is written), and then the highest table that merges is
    /// replaced once, with one break-before-make: the tables below it are
    /// unreachable once it is invalid and flushed, so they are freed
    /// without being written. (The general walk merges level by level.)
    fn climb(
        &mut self,
        tables: &[(PhysAddr, usize); MAX_DEPTH],
        start_level: Level,
        k: usize,
        merged: Descriptor,
    ) {
        let level_of = |k: usize| Level::new(start_level.get() + k as u8).unwrap_or(Level::L3);
        // `top`: the table replaced; `merged`: what replaces it.
        let (mut top, mut merged) = (k, merged);
        while top >= 2 {
            let (parent_table, pidx) = tables[top - 1];
            let parent = self.ptr(parent_table);
            self.work.tables_visited += 1;
            let with = |i: usize| if i == pidx { merged } else { read(parent, i) };
            match collapse_by(
                with,
                level_of(top - 1),
                level_of(top - 2),
                pidx,
                pidx,
                &mut self.work.reads,
            ) {
                Some(m) => {
                    merged = m;
                    top -= 1;
                }
                None => break,
            }
        }
        let (parent_table, pidx) = tables[top - 1];
        let parent = self.ptr(parent_table);
        self.work.tables_visited += 1;
        self.merge_table(Slot(parent, pidx), Descriptor::table(tables[top].0), merged);
        // The chain below the replaced table: each holds no table but
        // the next (the rest of a table found uniform is leaves).
        for &(table, _) in &tables[top + 1..=k] {
            self.detached.push(&*self.pool, table);
            self.work.tables_freed += 1;
        }
    }

    fn table(&mut self, table: PhysAddr, level: Level, base: u64, entries: usize, live: bool) {
        let ptr = self.ptr(table);
        let shift = level.shift();
        let (first, last) = index_range(level, base, entries, self.start, self.end);
        self.work.tables_visited += 1;
        if !self.update.whole(level) {
            self.work.reads += (last - first + 1) as u64;
            for idx in first..=last {
                self.entry(ptr, level, base, idx, live);
            }
            return;
        }
        // Fully covered entries become a value known in advance (`whole`):
        // a tight loop, with a partly covered first or last entry decided
        // on its own.
        let (start, end) = (self.start, self.end);
        let full = |idx: usize| {
            let eb = base + ((idx as u64) << shift);
            start <= eb && eb + (1 << shift) <= end
        };
        let (mut lo, mut hi) = (first, last);
        if !full(first) {
            self.work.reads += 1;
            self.entry(ptr, level, base, first, live);
            if first == last {
                return;
            }
            lo += 1;
        }
        let last_partial = !full(last);
        if last_partial {
            hi -= 1;
        }
        if lo <= hi {
            let base_lo = base + ((lo as u64) << shift);
            let mut new = self.update.whole_entry(level, base_lo);
            // Consecutive entries of a map step by the entry size; unmaps
            // and annotations repeat one value.
            let step = if new.is_valid() { 1 << shift } else { 0 };
            if !live {
                // A new table nobody walks yet: write every entry, no
                // break-before-make and no need to compare.
                for idx in lo..hi + 1 {
                    write(ptr, idx, new);
                    new = Descriptor::from_raw(new.raw().wrapping_add(step));
                }
                self.work.writes += (hi - lo + 1) as u64;
                self.dirty = true;
            } else {
                self.work.reads += (hi - lo + 1) as u64;
                for idx in lo..hi + 1 {
                    let old = read(ptr, idx);
                    if new != old {
                        if !old.is_valid() {
                            // `Commit::replace` of an invalid entry (`new`
                            // is never a table here).
                            self.store(ptr, idx, new);
                        } else if old.is_table(level) {
                            self.replace_table(Slot(ptr, idx), old, new, level);
                        } else {
                            let eb = base + ((idx as u64) << shift);
                            self.replace(Slot(ptr, idx), old, new, eb, level, live);
                        }
                    }
                    new = Descriptor::from_raw(new.raw().wrapping_add(step));
                }
            }
        }
        if last_partial {
            self.work.reads += 1;
            self.entry(ptr, level, base, last, live);
        }
    }

    /// The general writing step for entry `idx`: what the checking walk
    /// decided for it, carried out.
    #[inline]
    fn entry(&mut self, ptr: *mut u64, level: Level, base: u64, idx: usize, live: bool) {
        let shift = level.shift();
        let eb = base + ((idx as u64) << shift);
        let s = self.start.max(eb);
        let e = self.end.min(eb + (1 << shift));
        let old = read(ptr, idx);
        {
            // The checking walk made the same decisions and saw no error.
            let action = self
                .update
                .decide(old, level, eb, s, e)
                .unwrap_or(Action::Skip);
            match action {
                Action::Skip => {}
                Action::Write(new) if new == old => {}
                Action::Write(new) => {
                    if old.is_table(level) {
                        self.replace_table(Slot(ptr, idx), old, new, level);
                    } else {
                        self.replace(Slot(ptr, idx), old, new, eb, level, live);
                    }
                }
                Action::Descend => {
                    let Some(next) = level.next() else { return };
                    let child = old.output_address();
                    let before = self.work.writes;
                    self.table(child, next, eb, ENTRIES_PER_TABLE, live);
                    // An unchanged table cannot have become uniform (only an
                    // explicit merge looks at untouched tables).
                    let changed =
                        self.work.writes != before || matches!(self.update, Update::Merge);
                    if self.merge && changed {
                        let (lo, hi) = index_range(next, eb, ENTRIES_PER_TABLE, s, e);
                        let cptr = self.ptr(child);
                        if let Some(merged) =
                            collapse(cptr, next, level, lo, hi, &mut self.work.reads)
                        {
                            self.merge_table(Slot(ptr, idx), old, merged);
                        }
                    }
                }
                Action::Split => {
                    let Some(next) = level.next() else { return };
                    // The checking walk counted one page per split.
                    let Some(child) = self.reserved.pop(&*self.pool) else {
                        return;
                    };
                    let cptr = self.ptr(child);
                    let (raw0, step) = split_pattern(old, level);
                    if raw0 != 0 {
                        for i in 0..ENTRIES_PER_TABLE {
                            write(
                                cptr,
                                i,
                                Descriptor::from_raw(raw0.wrapping_add(i as u64 * step)),
                            );
                        }
                        self.work.writes += ENTRIES_PER_TABLE as u64;
                    }
                    self.table(child, next, eb, ENTRIES_PER_TABLE, false);
                    let merged = if self.merge {
                        let (lo, hi) = index_range(next, eb, ENTRIES_PER_TABLE, s, e);
                        collapse(cptr, next, level, lo, hi, &mut self.work.reads)
                    } else {
                        None
                    };
                    let new = match merged {
                        Some(m) => {
                            // The change left the range uniform: keep one
                            // entry and return the page to the reservation.
                            for i in 0..ENTRIES_PER_TABLE {
                                write(cptr, i, Descriptor::EMPTY);
                            }
                            self.work.writes += ENTRIES_PER_TABLE as u64;
                            self.reserved.push(&*self.pool, child);
                            m
                        }
                        None => {
                            self.work.tables_added += 1;
                            Descriptor::table(child)
                        }
                    };
                    if new != old {
                        self.replace(Slot(ptr, idx), old, new, eb, level, live);
                    }
                }
            }
        }
    }
}

/// If the table at `ptr` (entries at `level`, linked from an entry at
/// `parent`) is uniform, the single entry that can replace it: identical
/// invalid entries, or leaves with identical attributes mapping one
/// contiguous physical range aligned to the parent's block size.
///
/// `lo..=hi` are the entries the operation just covered. The scan takes
/// its reference from entry `lo` and reads outward from the covered
/// entries, then the covered entries themselves: a table that is not
/// uniform almost always differs right next to where it was changed (the
/// next hole of an ascending or descending refill, the neighbour of a
/// single page), so a refill costs a few reads per call instead of a scan
/// that grows with the part already refilled. Every entry is still read
/// before a table is declared uniform.
#[inline(always)]
fn collapse(
    ptr: *mut u64,
    level: Level,
    parent: Level,
    lo: usize,
    hi: usize,
    reads: &mut u64,
) -> Option<Descriptor> {
    collapse_by(|i| read(ptr, i), level, parent, lo, hi, reads)
}

/// [`collapse`] of the table whose entry `i` reads as `read(i)` (so that a
/// table can be judged with one entry as it would be after a write).
#[inline(always)]
fn collapse_by(
    read: impl Fn(usize) -> Descriptor,
    level: Level,
    parent: Level,
    lo: usize,
    hi: usize,
    reads: &mut u64,
) -> Option<Descriptor> {
    let r = read(lo);
    let (raw0, step) = if !r.is_valid() {
        (r.raw(), 0)
    } else {
        if !r.is_leaf(level) || !parent.allows_block() {
            *reads += 1;
            return None;
        }
        let step = level.size();
        // Wraps only when `r` maps below its own position, and then the
        // result is not aligned.
        let pa0 = r.output_address().get().wrapping_sub(lo as u64 * step);
        if !pa0.is_multiple_of(parent.size()) {
            *reads += 1;
            return None;
        }
        (
            Descriptor::leaf_from_bits(level, pa0, r.attr_bits()).raw(),
            step,
        )
    };
    // The entry that replaces a uniform table: the invalid entry itself,
    // or a block at the parent's level (computed only when needed).
    let merged = || {
        if r.is_valid() {
            Descriptor::leaf_from_bits(parent, raw0 & OA_MASK, r.attr_bits())
        } else {
            r
        }
    };
    let uniform = |i: usize| read(i).raw() == raw0.wrapping_add(i as u64 * step);
    // Outward from the covered entries, alternating sides, with the values
    // expected below and above kept as running sums; `n` counts the reads
    // (kept local so the loop stays in registers).
    let (mut below, mut above, mut n) = (lo, hi + 1, 1);
    let mut want_below = raw0.wrapping_add(lo as u64 * step);
    let mut want_above = raw0.wrapping_add(above as u64 * step);
    let result = loop {
        if below > 0 {
            below -= 1;
            want_below = want_below.wrapping_sub(step);
            n += 1;
            if read(below).raw() != want_below {
                break None;
            }
        } else if above == ENTRIES_PER_TABLE {
            n += hi - lo + 1;
            break (lo..=hi).all(uniform).then(merged);
        }
        if above < ENTRIES_PER_TABLE {
            n += 1;
            if read(above).raw() != want_above {
                break None;
            }
            above += 1;
            want_above = want_above.wrapping_add(step);
        }
    };
    *reads += n as u64;
    result
}

impl Stage2 {
    /// A new, empty table for `config` and `vmid`, with its root from
    /// `pool`.
    pub fn new<P: TablePool + ?Sized>(
        config: Stage2Config,
        vmid: u16,
        pool: &mut P,
    ) -> Result<Stage2, Error> {
        let pages = config.root_pages();
        let root = pool
            .alloc_root(pages)
            .ok_or(Error::OutOfMemory { needed: pages })?;
        Ok(Stage2 {
            config,
            vmid,
            root,
            generation: 0,
            work: Work::default(),
            tlbi: TlbiBatch([0; TLBI_BATCH]),
            start: config.start_level(),
            root_entries: config.root_entries(),
        })
    }

    /// The configuration.
    pub const fn config(&self) -> Stage2Config {
        self.config
    }

    /// The VMID.
    pub const fn vmid(&self) -> u16 {
        self.vmid
    }

    /// Physical address of the root table.
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// The `VTTBR_EL2` value: root address and VMID (bits 63:48).
    pub const fn vttbr(&self) -> u64 {
        self.root.get() | ((self.vmid as u64) << 48)
    }

    /// The `VTCR_EL2` value for this table.
    pub const fn vtcr(&self) -> u64 {
        self.config.vtcr()
    }

    /// Table pages below the root currently in use.
    pub const fn table_pages(&self) -> usize {
        // Every table page below the root was linked by a commit and is
        // freed by one.
        (self.work.tables_added - self.work.tables_freed) as usize
    }

    fn check_ipa_range(&self, ipa: Ipa, size: u64) -> Result<u64, Error> {
        let end = check_range(ipa.get(), size)?;
        let limit = self.config.ipa_limit();
        if end > limit {
            return Err(Error::IpaOutOfRange { end, limit });
        }
        Ok(end)
    }

    /// Resolves and validates `op`. Always inlined, so that the caller's
    /// `Op` value is taken apart in registers, not copied through memory.
    #[inline(always)]
    fn resolve(&self, op: Op) -> Result<(Update, u64, u64, bool), Error> {
        let (update, ipa, size, merge) = match op {
            Op::Map {
                ipa,
                size,
                pa,
                attrs,
                policy,
            } => {
                check_output(pa, size, self.config.pa_limit())?;
                let blocks = policy == BlockPolicy::Largest;
                (
                    Update::Map {
                        ipa0: ipa.get(),
                        pa0: pa.get(),
                        attrs: attrs.bits(),
                        blocks,
                    },
                    ipa,
                    size,
                    blocks,
                )
            }
            Op::MapBlock {
                ipa,
                pa,
                level,
                attrs,
            } => {
                if !level.allows_block() || level < self.start {
                    return Err(Error::BlockNotAllowed(level));
                }
                let size = level.size();
                for v in [ipa.get(), pa.get()] {
                    if v % size != 0 {
                        return Err(Error::Unaligned(v));
                    }
                }
                check_output(pa, size, self.config.pa_limit())?;
                (
                    Update::Map {
                        ipa0: ipa.get(),
                        pa0: pa.get(),
                        attrs: attrs.bits(),
                        blocks: true,
                    },
                    ipa,
                    size,
                    true,
                )
            }
            Op::Unmap { ipa, size } => (Update::Set(Descriptor::EMPTY), ipa, size, true),
            Op::Annotate {
                ipa,
                size,
                annotation,
            } => (
                Update::Set(Descriptor::annotated(annotation)),
                ipa,
                size,
                true,
            ),
            Op::SetPerms { ipa, size, perms } => (Update::Perms(perms), ipa, size, true),
            Op::SetSw { ipa, size, sw } => {
                if !sw.is_valid() {
                    return Err(Error::InvalidSoftwareBits);
                }
                (Update::Sw(sw), ipa, size, true)
            }
            Op::Split { ipa, size, level } => {
                if level < Level::L2 {
                    return Err(Error::BlockNotAllowed(level));
                }
                (Update::Split(level), ipa, size, false)
            }
            Op::Merge { ipa, size } => (Update::Merge, ipa, size, true),
        };
        if let Op::Map { attrs, .. } | Op::MapBlock { attrs, .. } = op
            && !attrs.sw.is_valid()
        {
            return Err(Error::InvalidSoftwareBits);
        }
        let end = self.check_ipa_range(ipa, size)?;
        Ok((update, ipa.get(), end, merge))
    }

    /// Validates `op` and runs the checking walk: the table pages it needs
    /// now and the first error it would hit. Nothing is reserved or
    /// changed.
    #[inline(always)]
    pub fn check<P: TablePool + ?Sized>(&self, pool: &P, op: Op) -> Result<Checked, Error> {
        let (update, start, end, merge) = self.resolve(op)?;
        if let Some(path) = self.descend(pool, &update, start, end)? {
            return Ok(Checked {
                walk: Walk::Path(path),
                merge,
                pages: 0,
                root: self.root,
                generation: self.generation,
                reads: path.depth() as u32,
                tables: path.depth() as u32,
            });
        }
        self.check_walk(pool, update, start, end, merge)
    }

    /// [`check`](Self::check), leaving the result in `out` (for the
    /// caller's frame) instead of returning it. A `Checked` is written
    /// word by word by the walk; moving it right after (out of a `Result`,
    /// into a local) reads it back with wide loads that cannot be
    /// forwarded from those stores, a stall of some 15 cycles on every
    /// single-page transition.
    #[inline(always)]
    pub fn check_into<'a, P: TablePool + ?Sized>(
        &self,
        pool: &P,
        op: Op,
        out: &'a mut Option<Checked>,
    ) -> Result<&'a Checked, Error> {
        let (update, start, end, merge) = self.resolve(op)?;
        if let Some(path) = self.descend(pool, &update, start, end)? {
            return Ok(out.insert(Checked {
                walk: Walk::Path(path),
                merge,
                pages: 0,
                root: self.root,
                generation: self.generation,
                reads: path.depth() as u32,
                tables: path.depth() as u32,
            }));
        }
        let checked = self.check_walk(pool, update, start, end, merge)?;
        Ok(out.insert(checked))
    }

    /// Whether `[start, end)` covers whole root entries that the update
    /// turns into values known in advance ([`Update::whole`]): then the
    /// checking walk would read nothing, need no page and find no error.
    #[inline]
    fn whole_root_entries(&self, update: &Update, start: u64, end: u64) -> bool {
        let size = self.start.size();
        // The alignment first: it rules out most operations at once.
        start.is_multiple_of(size) && end.is_multiple_of(size) && update.whole(self.start)
    }

    /// Commits an operation over whole root entries ([`whole_root_entries`])
    /// that are all invalid now, such as a fresh map with the largest
    /// blocks: each becomes its new value directly, with no
    /// break-before-make and no TLB maintenance (invalid entries are never
    /// cached), which is what the general walk would do, without setting
    /// it up. `false` (nothing done) if any entry is valid.
    ///
    /// [`whole_root_entries`]: Self::whole_root_entries
    fn commit_fresh_root_entries<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        update: &Update,
        start: u64,
        end: u64,
    ) -> bool {
        let ptr = pool.table_ptr(self.root).as_ptr();
        let shift = self.start.shift();
        let (first, last) = ((start >> shift) as usize, ((end - 1) >> shift) as usize);
        if (first..=last).any(|i| read(ptr, i).is_valid()) {
            return false;
        }
        let mut new = update.whole_entry(self.start, (first as u64) << shift);
        let step = if new.is_valid() { 1 << shift } else { 0 };
        let mut writes = 0;
        for i in first..last + 1 {
            if read(ptr, i) != new {
                write(ptr, i, new);
                writes += 1;
            }
            new = Descriptor::from_raw(new.raw().wrapping_add(step));
        }
        self.generation += 1;
        let w = &mut self.work;
        w.ops += 1;
        w.reads += 2 * (last - first + 1) as u64;
        w.writes += writes;
        w.tables_visited += 1;
        if writes > 0 {
            // As the general walk ends: the new entries are visible to
            // table walkers.
            tlb.dsb_ishst();
        }
        true
    }

    /// The general checking walk of a resolved operation.
    fn check_walk<P: TablePool + ?Sized>(
        &self,
        pool: &P,
        update: Update,
        start: u64,
        end: u64,
        merge: bool,
    ) -> Result<Checked, Error> {
        let (pages, reads, tables) = if self.whole_root_entries(&update, start, end) {
            (0, 0, 0)
        } else {
            let mut count = Count {
                pool,
                update,
                reads: 0,
                tables: 0,
            };
            let root = pool.table_ptr(self.root).as_ptr();
            let pages = count.table(
                Src::Table(root),
                self.start,
                0,
                self.root_entries,
                start,
                end,
            )?;
            (pages, count.reads, count.tables)
        };
        Ok(Checked {
            walk: Walk::Range { update, start, end },
            merge,
            pages,
            root: self.root,
            generation: self.generation,
            reads: reads as u32,
            tables: tables as u32,
        })
    }

    /// The checking walk of an operation that changes at most one entry
    /// reached through tables (a page, or a whole block or table entry):
    /// the recorded descent, `None` when the general walk is needed (the
    /// range spans several entries, or a split or a table replacement is
    /// needed), or the error the general walk would report.
    #[inline(always)]
    fn descend<P: TablePool + ?Sized>(
        &self,
        pool: &P,
        update: &Update,
        start: u64,
        end: u64,
    ) -> Result<Option<Path>, Error> {
        if !matches!(
            update,
            Update::Map { .. } | Update::Set(_) | Update::Perms(_) | Update::Sw(_)
        ) {
            return Ok(None);
        }
        let mut level = self.start;
        let mut table = self.root;
        let mut base = 0;
        for depth in 1..=MAX_DEPTH as u8 {
            // `[start, end)` lies inside this table (the root covers the
            // whole IPA space, and a table is entered only when the range
            // lies inside its entry): no clamping needed.
            let shift = level.shift();
            let idx = ((start - base) >> shift) as usize;
            if ((end - 1 - base) >> shift) as usize != idx {
                return Ok(None);
            }
            let old = read(pool.table_ptr(table).as_ptr(), idx);
            let eb = base + ((idx as u64) << shift);
            match level.next() {
                Some(next) if old.is_table(level) => {
                    if start == eb && end - eb == 1 << shift {
                        // Replaced or walked as a whole: the general walk.
                        return Ok(None);
                    }
                    table = old.output_address();
                    base = eb;
                    level = next;
                }
                _ => {
                    let new = match update.decide(old, level, eb, start, end)? {
                        Action::Skip => old,
                        Action::Write(new) => new,
                        Action::Descend | Action::Split => return Ok(None),
                    };
                    return Ok(Some(Path {
                        old,
                        new,
                        ..Path::new(table, idx, depth, level, eb)
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The tables from the root down to (and including) the table holding
    /// the entry of `path`, with the index taken in each: the descent
    /// again, for the rare merge after a single-entry commit (only that
    /// entry changed since the check).
    fn path_tables<P: TablePool + ?Sized>(
        &self,
        pool: &P,
        path: &Path,
    ) -> [(PhysAddr, usize); MAX_DEPTH] {
        let mut out = [(self.root, 0); MAX_DEPTH];
        let (mut table, mut level, mut base) = (self.root, self.start, 0);
        for (k, slot) in out.iter_mut().enumerate().take(path.depth() as usize) {
            let shift = level.shift();
            let idx = ((path.base - base) >> shift) as usize;
            *slot = (table, idx);
            if k + 1 < path.depth() as usize {
                table = read(pool.table_ptr(table).as_ptr(), idx).output_address();
                base += (idx as u64) << shift;
                level = level.next().unwrap_or(Level::L3);
            }
        }
        out
    }

    /// Validates `op` and returns how many table pages it needs now,
    /// without reserving or changing anything.
    pub fn pages_needed<P: TablePool + ?Sized>(&self, pool: &P, op: Op) -> Result<usize, Error> {
        self.check(pool, op).map(|c| c.pages)
    }

    /// Reserves from `pool` the table pages a checked operation needs.
    /// Nothing in the table changes; on error nothing in the pool changes
    /// either ([`Error::StalePreparation`] if `checked` was made for
    /// another table or before another change to this one).
    pub fn reserve<P: TablePool + ?Sized>(
        &self,
        pool: &mut P,
        checked: Checked,
    ) -> Result<Prepared, Error> {
        if checked.root != self.root || checked.generation != self.generation {
            return Err(Error::StalePreparation);
        }
        let reserved = reserve_pages(pool, checked.pages)?;
        Ok(Prepared { checked, reserved })
    }

    /// Validates `op`, works out every table page it needs and reserves
    /// them from `pool`. Nothing in the table changes; on error nothing in
    /// the pool changes either.
    pub fn prepare<P: TablePool + ?Sized>(&self, pool: &mut P, op: Op) -> Result<Prepared, Error> {
        let checked = self.check(&*pool, op)?;
        self.reserve(pool, checked)
    }

    /// Reserves the pages a checked operation needs from `pool` and
    /// commits it: [`reserve`](Self::reserve) then [`commit`](Self::commit)
    /// without handing the reservation around. On error
    /// ([`Error::StalePreparation`], [`Error::OutOfMemory`]) nothing
    /// changes.
    pub fn apply_checked<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        checked: &Checked,
    ) -> Result<(), Error> {
        if checked.root != self.root || checked.generation != self.generation {
            return Err(Error::StalePreparation);
        }
        let reserved = reserve_pages(pool, checked.pages)?;
        self.commit_checked(pool, tlb, checked, reserved)
    }

    /// Returns the pages a prepared operation reserved, without applying it.
    pub fn cancel<P: TablePool + ?Sized>(pool: &mut P, prepared: Prepared) {
        let mut reserved = prepared.reserved;
        reserved.free_all(pool);
    }

    /// Applies a prepared operation. It cannot fail, except when `prepared`
    /// was made for another table or before another change to this one
    /// ([`Error::StalePreparation`]; its pages are returned to the pool and
    /// nothing changes).
    pub fn commit<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        prepared: Prepared,
    ) -> Result<(), Error> {
        let Prepared { checked, reserved } = prepared;
        self.commit_checked(pool, tlb, &checked, reserved)
    }

    /// [`commit`](Self::commit) of `checked` with its pages in `reserved`.
    #[inline]
    fn commit_checked<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        checked: &Checked,
        mut reserved: PageList,
    ) -> Result<(), Error> {
        if checked.root != self.root || checked.generation != self.generation {
            reserved.free_all(pool);
            return Err(Error::StalePreparation);
        }
        let work = (checked.reads as u64, checked.tables as u64);
        match checked.walk {
            Walk::Path(path) => {
                // A single-entry operation reserves nothing.
                reserved.free_all(pool);
                self.commit_path(pool, tlb, &path, checked.merge);
            }
            Walk::Range { update, start, end } => {
                self.commit_walk(
                    pool,
                    tlb,
                    (update, start, end, checked.merge),
                    reserved,
                    work,
                );
            }
        }
        Ok(())
    }

    /// The general writing walk of a checked operation (`(update, start,
    /// end, merge)`), with its table pages in `reserved` and the work of
    /// its checking walk.
    #[inline]
    fn commit_walk<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        (update, start, end, merge): (Update, u64, u64, bool),
        reserved: PageList,
        (check_reads, check_tables): (u64, u64),
    ) {
        self.generation += 1;
        self.work.ops += 1;
        self.work.reads += check_reads;
        self.work.tables_visited += check_tables;
        let mut c = Commit {
            vttbr: self.root.get() | ((self.vmid as u64) << 48),
            pool,
            tlb,
            update,
            start,
            end,
            merge,
            reserved,
            detached: PageList::new(),
            pending: Pending {
                ipas: &mut self.tlbi,
                len: 0,
                all: false,
            },
            dirty: false,
            work: &mut self.work,
        };
        c.table(self.root, self.start, 0, self.root_entries, true);
        c.flush();
        if c.dirty {
            c.tlb.dsb_ishst();
        }
        c.detached.free_all(c.pool);
        c.reserved.free_all(c.pool);
    }

    /// Commits a single-entry operation along the path its checking walk
    /// recorded, with the same writes and TLB maintenance as the general
    /// walk ([`Commit::replace`], then the merges): the entry is never a
    /// table and its new value never one either, so the common case needs
    /// none of the general walk's state; a merge hands over to it.
    #[inline(always)]
    fn commit_path<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        path: &Path,
        merge: bool,
    ) {
        self.generation += 1;
        let work = &mut self.work;
        work.ops += 1;
        work.reads += path.depth() as u64;
        work.tables_visited += path.depth() as u64 + 1;
        let (old, new, level) = (path.old, path.new, path.level());
        if new == old {
            return;
        }
        let vttbr = self.root.get() | ((self.vmid as u64) << 48);
        let ptr = pool.table_ptr(path.table).as_ptr();
        let idx = path.idx();
        // Break-before-make, as `Commit::replace` with a live table.
        let mut owed = false;
        if !old.is_valid() || (new.is_leaf(level) && (old.raw() ^ new.raw()) & !SW_MASK == 0) {
            write(ptr, idx, new);
            work.writes += 1;
        } else if new.is_valid() {
            write(ptr, idx, Descriptor::EMPTY);
            flush_ipas(tlb, vttbr, &[path.base | level.get() as u64]);
            work.tlbi_ipa += 1;
            work.tlbi_stage1 += 1;
            write(ptr, idx, new);
            work.writes += 2;
        } else {
            // An invalid `new` is the break itself; its TLBI waits for the
            // end of the operation (and a merge may widen it).
            write(ptr, idx, new);
            work.writes += 1;
            owed = true;
        }
        let merged = match (
            merge && path.depth() > 1,
            Level::new(level.get().wrapping_sub(1)),
        ) {
            (true, Some(parent)) => collapse(ptr, level, parent, idx, idx, &mut work.reads),
            _ => None,
        };
        let Some(merged) = merged else {
            if owed {
                flush_ipas(tlb, vttbr, &[path.base | level.get() as u64]);
                work.tlbi_ipa += 1;
                work.tlbi_stage1 += 1;
            } else {
                tlb.dsb_ishst();
            }
            return;
        };
        self.commit_path_merge(pool, tlb, path, owed, merged);
    }

    /// The rest of [`commit_path`](Self::commit_path) when the entry's
    /// table became uniform (`merged` replaces it): the general walk's
    /// state takes over for the merges. Out of line: it is rare, and the
    /// common path stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn commit_path_merge<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        path: &Path,
        owed: bool,
        merged: Descriptor,
    ) {
        let level = path.level();
        let vttbr = self.root.get() | ((self.vmid as u64) << 48);
        let tables = self.path_tables(&*pool, path);
        let mut c = Commit {
            vttbr,
            pool,
            tlb,
            update: Update::Merge,
            start: path.base,
            end: path.base + level.size(),
            merge: true,
            reserved: PageList::new(),
            detached: PageList::new(),
            pending: Pending {
                ipas: &mut self.tlbi,
                len: 0,
                all: false,
            },
            dirty: true,
            work: &mut self.work,
        };
        if owed {
            c.pending.add(Ipa(path.base), level);
        }
        c.climb(&tables, self.start, path.depth() as usize - 1, merged);
        c.flush();
        if c.dirty {
            c.tlb.dsb_ishst();
        }
        c.detached.free_all(c.pool);
    }

    /// The work the operations committed on this table have done so far.
    pub const fn work(&self) -> Work {
        self.work
    }

    /// Prepares and commits `op`.
    pub fn apply<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        op: Op,
    ) -> Result<(), Error> {
        let (update, start, end, merge) = self.resolve(op)?;
        if self.whole_root_entries(&update, start, end) {
            // Nothing to check or reserve (see `whole_root_entries`).
            if !self.commit_fresh_root_entries(pool, tlb, &update, start, end) {
                self.commit_walk(
                    pool,
                    tlb,
                    (update, start, end, merge),
                    PageList::new(),
                    (0, 0),
                );
            }
            return Ok(());
        }
        if let Some(path) = self.descend(&*pool, &update, start, end)? {
            self.commit_path(pool, tlb, &path, merge);
            return Ok(());
        }
        let mut count = Count {
            pool: &*pool,
            update,
            reads: 0,
            tables: 0,
        };
        let root = pool.table_ptr(self.root).as_ptr();
        let pages = count.table(
            Src::Table(root),
            self.start,
            0,
            self.root_entries,
            start,
            end,
        )?;
        let work = (count.reads, count.tables);
        let reserved = reserve_pages(pool, pages)?;
        self.commit_walk(pool, tlb, (update, start, end, merge), reserved, work);
        Ok(())
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)` with the largest
    /// blocks that fit.
    pub fn map<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
        pa: PhysAddr,
        attrs: LeafAttrs,
    ) -> Result<(), Error> {
        self.apply(
            pool,
            tlb,
            Op::Map {
                ipa,
                size,
                pa,
                attrs,
                policy: BlockPolicy::Largest,
            },
        )
    }

    /// Removes every mapping and annotation in `[ipa, ipa + size)`.
    pub fn unmap<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
    ) -> Result<(), Error> {
        self.apply(pool, tlb, Op::Unmap { ipa, size })
    }

    /// Makes `[ipa, ipa + size)` invalid, carrying `annotation`.
    pub fn annotate<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
        annotation: Annotation,
    ) -> Result<(), Error> {
        self.apply(
            pool,
            tlb,
            Op::Annotate {
                ipa,
                size,
                annotation,
            },
        )
    }

    /// Sets the permissions of every page in `[ipa, ipa + size)`, which
    /// must all be mapped.
    pub fn set_perms<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
        perms: Perms,
    ) -> Result<(), Error> {
        self.apply(pool, tlb, Op::SetPerms { ipa, size, perms })
    }

    /// Sets the software bits of every page in `[ipa, ipa + size)`, which
    /// must all be mapped.
    pub fn set_sw<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
        sw: SwBits,
    ) -> Result<(), Error> {
        self.apply(pool, tlb, Op::SetSw { ipa, size, sw })
    }

    /// The leaf or invalid entry translating `ipa`, with its level.
    pub fn lookup<P: TablePool + ?Sized>(&self, pool: &P, ipa: Ipa) -> Result<Leaf, Error> {
        let limit = self.config.ipa_limit();
        if ipa.get() >= limit {
            return Err(Error::IpaOutOfRange {
                end: ipa.get().saturating_add(1),
                limit,
            });
        }
        let mut level = self.start;
        let mut table = self.root;
        let mut base = 0;
        loop {
            let idx = ((ipa.get() - base) >> level.shift()) as usize;
            let d = read(pool.table_ptr(table).as_ptr(), idx);
            let eb = base + idx as u64 * level.size();
            match level.next() {
                Some(next) if d.is_table(level) => {
                    table = d.output_address();
                    base = eb;
                    level = next;
                }
                _ => {
                    return Ok(Leaf {
                        level,
                        base: Ipa(eb),
                        descriptor: d,
                    });
                }
            }
        }
    }

    /// Calls `f` for every leaf and invalid entry overlapping
    /// `[ipa, ipa + size)`, in IPA order.
    pub fn walk<P: TablePool + ?Sized, F: FnMut(&Leaf)>(
        &self,
        pool: &P,
        ipa: Ipa,
        size: u64,
        mut f: F,
    ) -> Result<(), Error> {
        let end = self.check_ipa_range(ipa, size)?;
        self.walk_table(
            pool,
            self.root,
            self.start,
            0,
            self.root_entries,
            ipa.get(),
            end,
            &mut |leaf: &Leaf, table: Option<TableRef>| {
                if table.is_none() {
                    f(leaf)
                }
            },
        );
        Ok(())
    }

    /// Walks leaves and, after each table's entries, reports the table
    /// itself (`Some(table, level, base)`) to `f`.
    #[allow(clippy::too_many_arguments)]
    fn walk_table<P: TablePool + ?Sized, F: FnMut(&Leaf, Option<TableRef>)>(
        &self,
        pool: &P,
        table: PhysAddr,
        level: Level,
        base: u64,
        entries: usize,
        start: u64,
        end: u64,
        f: &mut F,
    ) {
        let ptr = pool.table_ptr(table).as_ptr();
        let (first, last) = index_range(level, base, entries, start, end);
        for idx in first..=last {
            let d = read(ptr, idx);
            let eb = base + ((idx as u64) << level.shift());
            match level.next() {
                Some(next) if d.is_table(level) => {
                    let child = d.output_address();
                    self.walk_table(pool, child, next, eb, ENTRIES_PER_TABLE, start, end, f);
                    let leaf = Leaf {
                        level,
                        base: Ipa(eb),
                        descriptor: d,
                    };
                    f(
                        &leaf,
                        Some(TableRef {
                            table: child,
                            level: next,
                            base: eb,
                        }),
                    );
                }
                _ => f(
                    &Leaf {
                        level,
                        base: Ipa(eb),
                        descriptor: d,
                    },
                    None,
                ),
            }
        }
    }

    fn walk_all<P: TablePool + ?Sized, F: FnMut(&Leaf, Option<TableRef>)>(
        &self,
        pool: &P,
        f: &mut F,
    ) {
        let end = self.config.ipa_limit();
        self.walk_table(pool, self.root, self.start, 0, self.root_entries, 0, end, f);
    }

    /// Counts tables, leaves per level and annotations.
    pub fn stats<P: TablePool + ?Sized>(&self, pool: &P) -> Stats {
        let mut stats = Stats::default();
        self.walk_all(pool, &mut |leaf: &Leaf, table: Option<TableRef>| {
            if table.is_some() {
                stats.tables += 1;
            } else if leaf.descriptor.is_leaf(leaf.level) {
                stats.leaves[leaf.level.get() as usize] += 1;
            } else if leaf.descriptor.annotation().is_some() {
                stats.annotations += 1;
            }
        });
        stats
    }

    /// The first table (by IPA) that is uniform and so should have been
    /// merged into one entry, as `(base, level of the table's entries)`.
    /// `None` means every range that can be a block is one.
    pub fn find_mergeable<P: TablePool + ?Sized>(&self, pool: &P) -> Option<(Ipa, Level)> {
        let mut found = None;
        let mut reads = 0;
        self.walk_all(pool, &mut |leaf: &Leaf, table: Option<TableRef>| {
            if let (
                None,
                Some(TableRef {
                    table: child,
                    level,
                    base,
                }),
            ) = (found, table)
            {
                let ptr = pool.table_ptr(child).as_ptr();
                if collapse(ptr, level, leaf.level, 0, 0, &mut reads).is_some() {
                    found = Some((Ipa(base), level));
                }
            }
        });
        found
    }

    /// Calls `f` with the address of every table page below `table` (its
    /// entries at `level`), each after the tables below it. Only tables
    /// that can hold tables are read: level-3 tables are reported, never
    /// scanned.
    fn tables_below<P: TablePool + ?Sized, F: FnMut(PhysAddr)>(
        pool: &P,
        table: PhysAddr,
        level: Level,
        entries: usize,
        f: &mut F,
    ) {
        let Some(next) = level.next() else { return };
        let ptr = pool.table_ptr(table).as_ptr();
        for idx in 0..entries {
            let d = read(ptr, idx);
            if d.is_table(level) {
                let child = d.output_address();
                Self::tables_below(pool, child, next, ENTRIES_PER_TABLE, f);
                f(child);
            }
        }
    }

    /// Calls `f` with the address of every table page below the root,
    /// each after the tables below it.
    pub fn for_each_table_page<P: TablePool + ?Sized, F: FnMut(PhysAddr)>(
        &self,
        pool: &P,
        mut f: F,
    ) {
        Self::tables_below(pool, self.root, self.start, self.root_entries, &mut f);
    }

    /// Frees every table page and the root, after invalidating the whole
    /// VMID. The table must not be in use by any CPU.
    pub fn destroy<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        self,
        pool: &mut P,
        tlb: &mut T,
    ) {
        tlb.dsb_ishst();
        let previous = tlb.switch_vttbr(self.vttbr());
        tlb.tlbi_vmalls12e1is();
        tlb.dsb_ish();
        tlb.isb();
        tlb.restore_vttbr(previous);
        let mut pages = PageList::new();
        // Tables are reported after their own entries, so each page is read
        // before its word 0 is reused as a list link.
        self.for_each_table_page(&*pool, |t| pages.push(&*pool, t));
        pages.free_all(pool);
        pool.free_root(self.root, self.config.root_pages());
    }
}
