//! The stage-2 translation table and every operation on it.
//!
//! # How an operation runs
//!
//! Every change is an [`Op`] over a page-aligned IPA range. It runs in two
//! phases:
//!
//! 1. **Prepare** ([`Stage2::prepare`]): validate the arguments, then walk
//!    the table without writing and decide, entry by entry, what the change
//!    will do: skip it (already as asked), overwrite it, descend into its
//!    table, or split it into a new table. The walk counts the new tables
//!    exactly and reserves that many pages from the pool. Any error (bad
//!    range, a permission change on an unmapped page, an empty pool) is
//!    returned here, before anything is written.
//! 2. **Commit** ([`Stage2::commit`]): the same walk again, writing. It
//!    cannot fail: every table page it needs is already reserved.
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
//! So a table that starts canonical (no mergeable table anywhere) stays
//! canonical under every operation except explicit [`Op::Split`] and
//! [`BlockPolicy::PagesOnly`] maps, which ask for smaller entries on
//! purpose; [`Op::Merge`] merges such ranges back.
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

use crate::addr::{Ipa, PhysAddr};
use crate::config::Stage2Config;
use crate::descriptor::{Annotation, Descriptor, LeafAttrs, Perms, SW_MASK, SwBits};
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

/// An operation that passed every check and holds the table pages it will
/// need. Commit it with [`Stage2::commit`] or give its pages back with
/// [`Stage2::cancel`]; dropping it leaks the reserved pages.
#[must_use = "a prepared operation holds reserved pages: commit or cancel it"]
#[derive(Debug)]
pub struct Prepared {
    update: Update,
    start: u64,
    end: u64,
    merge: bool,
    reserved: PageList,
    root: PhysAddr,
    generation: u64,
}

impl Prepared {
    /// Table pages reserved for the commit.
    pub fn reserved_pages(&self) -> usize {
        self.reserved.len()
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

/// Callback of the internal walk: every leaf or invalid entry, and every
/// table (after its entries) with `Some`.
type WalkFn<'a> = dyn FnMut(&Leaf, Option<TableRef>) + 'a;

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
    tables: usize,
    generation: u64,
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
/// with `entries` entries. The range must intersect the table.
fn index_range(level: Level, base: u64, entries: usize, start: u64, end: u64) -> (usize, usize) {
    let size = level.size();
    let span_end = base.saturating_add(entries as u64 * size);
    let s = start.max(base);
    let e = end.min(span_end);
    (
        ((s - base) / size) as usize,
        ((e - 1 - base) / size) as usize,
    )
}

impl Update {
    /// Whether `old` already gives the wanted result on `[s, ...)` within
    /// its entry based at `eb`. Errors for permission or software-bit
    /// changes on unmapped pages.
    #[inline]
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
    #[inline]
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

    /// What the entry `old` at `level`, covering `[eb, eb + size)`, needs
    /// for the part `[s, e)` of the operation's range.
    #[inline]
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

/// TLB invalidations owed by the operation in progress.
struct Pending {
    ipas: [(Ipa, Level); TLBI_BATCH],
    len: usize,
    all: bool,
}

impl Pending {
    const fn new() -> Pending {
        Pending {
            ipas: [(Ipa(0), Level::L3); TLBI_BATCH],
            len: 0,
            all: false,
        }
    }

    fn add(&mut self, ipa: Ipa, level: Level) {
        if self.len < TLBI_BATCH {
            self.ipas[self.len] = (ipa, level);
            self.len += 1;
        } else {
            self.all = true;
        }
    }

    fn any(&self) -> bool {
        self.all || self.len > 0
    }
}

/// One descriptor slot: a table and an index into it.
#[derive(Clone, Copy)]
struct Slot(*mut u64, usize);

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
    pending: Pending,
    /// Descriptors written since the last `dsb ishst`.
    dirty: bool,
    /// Descriptors written by this operation, so far.
    writes: usize,
    tables_added: usize,
    tables_freed: usize,
}

impl<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized> Commit<'_, P, T> {
    fn ptr(&self, table: PhysAddr) -> *mut u64 {
        self.pool.table_ptr(table).as_ptr()
    }

    fn store(&mut self, table: *mut u64, idx: usize, d: Descriptor) {
        write(table, idx, d);
        self.dirty = true;
        self.writes += 1;
    }

    /// Issues the owed TLB invalidations (pkvm.md §5.6 order).
    fn flush(&mut self) {
        if !self.pending.any() {
            return;
        }
        self.tlb.dsb_ishst();
        self.dirty = false;
        let previous = self.tlb.switch_vttbr(self.vttbr);
        if self.pending.all {
            self.tlb.tlbi_vmalls12e1is();
            self.tlb.dsb_ish();
        } else {
            for &(ipa, level) in &self.pending.ipas[..self.pending.len] {
                self.tlb.tlbi_ipas2e1is(ipa, Some(level));
            }
            self.tlb.dsb_ish();
            self.tlb.tlbi_vmalle1is();
            self.tlb.dsb_ish();
        }
        self.tlb.isb();
        self.tlb.restore_vttbr(previous);
        self.pending = Pending::new();
    }

    /// Replaces a non-table entry `old` with `new`, following the
    /// break-before-make rules in the module docs.
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

    /// Queues every page of the subtree at `table` for freeing after the
    /// final flush (children first: a page's entries are read before its
    /// word 0 becomes a list link).
    fn detach(&mut self, table: PhysAddr, level: Level) {
        let ptr = self.ptr(table);
        if let Some(next) = level.next() {
            for i in 0..ENTRIES_PER_TABLE {
                let d = read(ptr, i);
                if d.is_table(level) {
                    self.detach(d.output_address(), next);
                }
            }
        }
        self.detached.push(&*self.pool, table);
        self.tables_freed += 1;
    }

    fn table(&mut self, table: PhysAddr, level: Level, base: u64, entries: usize, live: bool) {
        let ptr = self.ptr(table);
        let size = level.size();
        let (first, last) = index_range(level, base, entries, self.start, self.end);
        if let (
            Level::L3,
            Update::Map {
                ipa0, pa0, attrs, ..
            },
        ) = (level, self.update)
        {
            for idx in first..=last {
                let eb = base + idx as u64 * size;
                let new = Descriptor::leaf_from_bits(Level::L3, pa0 + (eb - ipa0), attrs);
                let old = read(ptr, idx);
                if old != new {
                    self.replace(Slot(ptr, idx), old, new, eb, level, live);
                }
            }
            return;
        }
        for idx in first..=last {
            let eb = base + idx as u64 * size;
            let s = self.start.max(eb);
            let e = self.end.min(eb + size);
            let old = read(ptr, idx);
            // The prepare walk made the same decisions and saw no error.
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
                    let Some(next) = level.next() else { continue };
                    let child = old.output_address();
                    let before = self.writes;
                    self.table(child, next, eb, ENTRIES_PER_TABLE, live);
                    // An unchanged table cannot have become uniform (only an
                    // explicit merge looks at untouched tables).
                    let changed = self.writes != before || matches!(self.update, Update::Merge);
                    if self.merge
                        && changed
                        && let Some(merged) = collapse(&*self.pool, child, next, level)
                    {
                        self.replace_table(Slot(ptr, idx), old, merged, level);
                    }
                }
                Action::Split => {
                    let Some(next) = level.next() else { continue };
                    // The prepare walk reserved one page per split.
                    let Some(child) = self.reserved.pop(&*self.pool) else {
                        continue;
                    };
                    let cptr = self.ptr(child);
                    for i in 0..ENTRIES_PER_TABLE {
                        let d = replicate(old, level, i);
                        if d != Descriptor::EMPTY {
                            write(cptr, i, d);
                        }
                    }
                    self.table(child, next, eb, ENTRIES_PER_TABLE, false);
                    let merged = if self.merge {
                        collapse(&*self.pool, child, next, level)
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
                            self.reserved.push(&*self.pool, child);
                            m
                        }
                        None => {
                            self.tables_added += 1;
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

/// If the table at `table` (at `level`, linked from an entry at `parent`)
/// is uniform, the single entry that can replace it.
fn collapse<P: TablePool + ?Sized>(
    pool: &P,
    table: PhysAddr,
    level: Level,
    parent: Level,
) -> Option<Descriptor> {
    let ptr = pool.table_ptr(table).as_ptr();
    let first = read(ptr, 0);
    // Probe both ends and the middle first: a table that just stopped
    // being uniform (or never was) usually differs next to where it was
    // changed, and changes cluster at either end in ascending or
    // descending fills. Then scan everything.
    let order = [1, ENTRIES_PER_TABLE - 1, ENTRIES_PER_TABLE / 2]
        .into_iter()
        .chain(1..ENTRIES_PER_TABLE);
    if !first.is_valid() {
        let mut order = order;
        return order.all(|i| read(ptr, i) == first).then_some(first);
    }
    if !first.is_leaf(level) || !parent.allows_block() {
        return None;
    }
    let pa0 = first.output_address().get();
    if !pa0.is_multiple_of(parent.size()) {
        return None;
    }
    let attrs = first.attr_bits();
    let step = level.size();
    let mut order = order;
    let uniform = order.all(|i| {
        let d = read(ptr, i);
        d.is_leaf(level)
            && d.attr_bits() == attrs
            && d.output_address().get() == pa0 + i as u64 * step
    });
    uniform.then(|| Descriptor::leaf_from_bits(parent, pa0, attrs))
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
            tables: 0,
            generation: 0,
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
        self.tables
    }

    fn check_ipa_range(&self, ipa: Ipa, size: u64) -> Result<u64, Error> {
        let end = check_range(ipa.get(), size)?;
        let limit = self.config.ipa_limit();
        if end > limit {
            return Err(Error::IpaOutOfRange { end, limit });
        }
        Ok(end)
    }

    /// Resolves and validates `op`.
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
                if !level.allows_block() || level < self.config.start_level() {
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

    /// Counts the table pages `update` needs below `src` and reports the
    /// first error it would hit. `src` is a real table or, for a split that
    /// has not happened, the leaf it would be split from.
    #[allow(clippy::too_many_arguments)]
    fn count<P: TablePool + ?Sized>(
        &self,
        pool: &P,
        src: Result<PhysAddr, (Descriptor, Level)>,
        level: Level,
        base: u64,
        entries: usize,
        update: &Update,
        start: u64,
        end: u64,
    ) -> Result<usize, Error> {
        if level.next().is_none() && !matches!(update, Update::Perms(_) | Update::Sw(_)) {
            // Nothing below level 3, and only permission and software-bit
            // changes can fail on a page.
            return Ok(0);
        }
        let ptr = src.ok().map(|t| pool.table_ptr(t).as_ptr());
        let size = level.size();
        let (first, last) = index_range(level, base, entries, start, end);
        let mut needed = 0;
        for idx in first..=last {
            let eb = base + idx as u64 * size;
            let s = start.max(eb);
            let e = end.min(eb + size);
            let old = match (ptr, src) {
                (Some(p), _) => read(p, idx),
                (None, Err((parent, plevel))) => replicate(parent, plevel, idx),
                (None, Ok(_)) => Descriptor::EMPTY,
            };
            let Some(next) = level.next() else {
                update.decide(old, level, eb, s, e)?;
                continue;
            };
            needed += match update.decide(old, level, eb, s, e)? {
                Action::Skip | Action::Write(_) => 0,
                Action::Descend => self.count(
                    pool,
                    Ok(old.output_address()),
                    next,
                    eb,
                    ENTRIES_PER_TABLE,
                    update,
                    s,
                    e,
                )?,
                Action::Split => {
                    1 + self.count(
                        pool,
                        Err((old, level)),
                        next,
                        eb,
                        ENTRIES_PER_TABLE,
                        update,
                        s,
                        e,
                    )?
                }
            };
        }
        Ok(needed)
    }

    /// Validates `op` and returns how many table pages it needs now,
    /// without reserving or changing anything.
    pub fn pages_needed<P: TablePool + ?Sized>(&self, pool: &P, op: Op) -> Result<usize, Error> {
        let (update, start, end, _) = self.resolve(op)?;
        self.count(
            pool,
            Ok(self.root),
            self.config.start_level(),
            0,
            self.config.root_entries(),
            &update,
            start,
            end,
        )
    }

    /// Validates `op`, works out every table page it needs and reserves
    /// them from `pool`. Nothing in the table changes; on error nothing in
    /// the pool changes either.
    pub fn prepare<P: TablePool + ?Sized>(&self, pool: &mut P, op: Op) -> Result<Prepared, Error> {
        let (update, start, end, merge) = self.resolve(op)?;
        let needed = self.count(
            &*pool,
            Ok(self.root),
            self.config.start_level(),
            0,
            self.config.root_entries(),
            &update,
            start,
            end,
        )?;
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
        Ok(Prepared {
            update,
            start,
            end,
            merge,
            reserved,
            root: self.root,
            generation: self.generation,
        })
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
        if prepared.root != self.root || prepared.generation != self.generation {
            Self::cancel(pool, prepared);
            return Err(Error::StalePreparation);
        }
        self.generation += 1;
        let mut c = Commit {
            vttbr: self.vttbr(),
            pool,
            tlb,
            update: prepared.update,
            start: prepared.start,
            end: prepared.end,
            merge: prepared.merge,
            reserved: prepared.reserved,
            detached: PageList::new(),
            pending: Pending::new(),
            dirty: false,
            writes: 0,
            tables_added: 0,
            tables_freed: 0,
        };
        c.table(
            self.root,
            self.config.start_level(),
            0,
            self.config.root_entries(),
            true,
        );
        c.flush();
        if c.dirty {
            c.tlb.dsb_ishst();
        }
        c.detached.free_all(c.pool);
        c.reserved.free_all(c.pool);
        self.tables = self.tables + c.tables_added - c.tables_freed;
        Ok(())
    }

    /// Prepares and commits `op`.
    pub fn apply<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &mut self,
        pool: &mut P,
        tlb: &mut T,
        op: Op,
    ) -> Result<(), Error> {
        let prepared = self.prepare(pool, op)?;
        self.commit(pool, tlb, prepared)
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
        let mut level = self.config.start_level();
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
            self.config.start_level(),
            0,
            self.config.root_entries(),
            ipa.get(),
            end,
            &mut |leaf, table| {
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
    fn walk_table<P: TablePool + ?Sized>(
        &self,
        pool: &P,
        table: PhysAddr,
        level: Level,
        base: u64,
        entries: usize,
        start: u64,
        end: u64,
        f: &mut WalkFn<'_>,
    ) {
        let ptr = pool.table_ptr(table).as_ptr();
        let (first, last) = index_range(level, base, entries, start, end);
        for idx in first..=last {
            let d = read(ptr, idx);
            let eb = base + idx as u64 * level.size();
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

    fn walk_all<P: TablePool + ?Sized>(&self, pool: &P, f: &mut WalkFn<'_>) {
        let end = self.config.ipa_limit();
        self.walk_table(
            pool,
            self.root,
            self.config.start_level(),
            0,
            self.config.root_entries(),
            0,
            end,
            f,
        );
    }

    /// Counts tables, leaves per level and annotations.
    pub fn stats<P: TablePool + ?Sized>(&self, pool: &P) -> Stats {
        let mut stats = Stats::default();
        self.walk_all(pool, &mut |leaf, table| {
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
        self.walk_all(pool, &mut |leaf, table| {
            if let (
                None,
                Some(TableRef {
                    table: child,
                    level,
                    base,
                }),
            ) = (found, table)
                && collapse(pool, child, level, leaf.level).is_some()
            {
                found = Some((Ipa(base), level));
            }
        });
        found
    }

    /// Calls `f` with the address of every table page below the root.
    pub fn for_each_table_page<P: TablePool + ?Sized, F: FnMut(PhysAddr)>(
        &self,
        pool: &P,
        mut f: F,
    ) {
        self.walk_all(pool, &mut |_, table| {
            if let Some(t) = table {
                f(t.table);
            }
        });
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
