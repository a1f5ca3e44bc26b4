//! Every memory transition of DESIGN §2, plus guest-requested conversions
//! (DESIGN §5).
//!
//! Each one follows the same shape: take the locks in order, check every
//! page and every precondition, count and reserve the page-table pages the
//! host and guest stage-2 changes need (host pool and guest memcache), and
//! only then change anything. A call that returns an error changed nothing.
//!
//! None of them allocates: guest ranges are read into room set aside when
//! the table was built ([`HostMmu`]'s runs), stage-2 plans regenerate their
//! operations instead of storing them, and ranges of ownership entries are
//! checked and changed as slices.

use crate::errno::Errno;
use crate::mem::{HypMappings, PhysMem, wipe};
use crate::memcache::MemcachePool;
use crate::state::{
    Conversion, ConversionKind, Guest, GuestRun, HostMmu, MemView, NoOps, Ownership, Plan,
    SPARE_BLOCK_SHARE, check_entries, check_host_owned, check_one, check_one_into, collect_runs,
    for_each_guest_run, guest_annotation, guest_attrs, guest_page, host_annotate, host_map,
    hyp_annotation, leaf_state, poison_annotation, relinquished_annotation,
};
use crate::table::{MAX_GFN, OwnershipTable, PageEntry};
use crate::types::{BLOCK_PAGES, Extent, Gfn, GuestHandle, GuestPageState, Owner, PageState, Pfn};
use stage2::{
    BlockPolicy, Checked, Ipa, Op, PAGE_SIZE, PageState as S2State, PhysAddr, Reserved, Stage2,
    SwBits, TablePool, TlbMaintenance,
};

/// Most pages one guest-side call (share, unshare, relinquish) may cover.
pub const MAX_GUEST_RANGE: u64 = BLOCK_PAGES;

use PageState::{NoPage as N, Owned as O, SharedBorrowed as SB, SharedOwned as SO};

/// `EINVAL` unless `[pfn, pfn + n)` is RAM within one region.
fn check_ram(table: &OwnershipTable, pfn: Pfn, n: u64) -> Result<(), Errno> {
    if table.is_ram(pfn, n) {
        Ok(())
    } else {
        Err(Errno::Einval)
    }
}

/// The entry of a page already known to be RAM.
fn entry(table: &OwnershipTable, pfn: Pfn) -> PageEntry {
    table.get(pfn).unwrap_or(PageEntry::HYP_OWNED)
}

/// Calls `f` with the index and entry of each page of `[pfn, pfn + n)` in
/// order, stopping at its first error: one region search for the range
/// (page by page, with [`entry`], if it is not inside one region).
fn for_each_entry(
    table: &OwnershipTable,
    pfn: Pfn,
    n: u64,
    mut f: impl FnMut(u64, PageEntry) -> Result<(), Errno>,
) -> Result<(), Errno> {
    match table.range(pfn, n) {
        Some(entries) => entries
            .iter()
            .enumerate()
            .try_for_each(|(i, &e)| f(i as u64, e)),
        None => (0..n).try_for_each(|i| f(i, entry(table, Pfn(pfn.0 + i)))),
    }
}

/// Replaces the entry of each page of `[pfn, pfn + n)` with `f(index,
/// entry)`, as a slice when the range is inside one region.
fn update_entries(
    table: &mut OwnershipTable,
    pfn: Pfn,
    n: u64,
    mut f: impl FnMut(u64, PageEntry) -> PageEntry,
) {
    match table.range_mut(pfn, n) {
        Some(entries) => {
            for (i, e) in entries.iter_mut().enumerate() {
                *e = f(i as u64, *e);
            }
        }
        None => {
            for i in 0..n {
                let p = Pfn(pfn.0 + i);
                let e = entry(table, p);
                table.set(p, f(i, e));
            }
        }
    }
}

/// One host→guest share of a page ended: one fewer share; the page is the
/// host's alone again at zero. The caller checked the count is non-zero.
fn drop_share(e: PageEntry) -> PageEntry {
    let count = e.share_count().saturating_sub(1);
    if count == 0 {
        PageEntry::HOST_OWNED
    } else {
        PageEntry::host_owned(SO, N, 0, count)
    }
}

/// Checks the alignment and range of a host↔guest extent.
#[inline]
fn check_extent(g: &Guest, pfn: Option<Pfn>, gfn: Gfn, ext: Extent) -> Result<u64, Errno> {
    let n = ext.pages();
    let aligned = |v: u64| v.is_multiple_of(n);
    if !aligned(gfn.0) || !pfn.is_none_or(|p| aligned(p.0)) {
        return Err(Errno::Einval);
    }
    check_gfn_range(g, gfn, n)?;
    Ok(n)
}

/// `EINVAL` unless `[gfn, gfn + n)` is inside the guest's IPA space.
#[inline]
fn check_gfn_range(g: &Guest, gfn: Gfn, n: u64) -> Result<(), Errno> {
    let end = gfn.0.checked_add(n).ok_or(Errno::Einval)?;
    if n == 0 || end > g.gfn_limit() || end - 1 > MAX_GFN {
        return Err(Errno::Einval);
    }
    Ok(())
}

fn ipa(gfn: Gfn) -> Ipa {
    Ipa(gfn.0 * PAGE_SIZE)
}

fn pa(pfn: Pfn) -> PhysAddr {
    PhysAddr(pfn.0 * PAGE_SIZE)
}

/// Wipes the guest-private pages among `runs` (pages the guest shared keep
/// their contents).
fn wipe_private<M: PhysMem>(mem: M, runs: &[GuestRun]) {
    for r in runs {
        if let (GuestPageState::Owned, Some(p)) = (r.state, r.pfn) {
            wipe(mem, p, r.pages);
        }
    }
}

/// The host stage-2 ops for the frames of the selected runs, as runs of
/// pages contiguous in both spaces (a page not selected ends a run). An
/// iterator, so that a plan can check the ops and later apply them without
/// storing them.
#[derive(Clone)]
struct HostOps<'a, S, F> {
    runs: &'a [GuestRun],
    next: usize,
    select: S,
    op: F,
}

impl<S: Fn(GuestPageState) -> bool, F: Fn(Pfn, u64) -> Op> Iterator for HostOps<'_, S, F> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        let mut run: Option<(Pfn, u64)> = None;
        while let Some(r) = self.runs.get(self.next) {
            let frames = r.pfn.filter(|_| (self.select)(r.state));
            match (run, frames) {
                (None, None) => {}
                (None, Some(p)) => run = Some((p, r.pages)),
                (Some((start, len)), Some(p)) if start.0 + len == p.0 => {
                    run = Some((start, len + r.pages));
                }
                // Ends the run; the next call starts from this one.
                (Some(_), _) => break,
            }
            self.next += 1;
        }
        run.map(|(p, len)| (self.op)(p, len))
    }
}

fn host_ops<'a, S: Fn(GuestPageState) -> bool + Clone, F: Fn(Pfn, u64) -> Op + Clone>(
    runs: &'a [GuestRun],
    select: S,
    op: F,
) -> HostOps<'a, S, F> {
    HostOps {
        runs,
        next: 0,
        select,
        op,
    }
}

/// The guest stage-2 ops for runs of consecutive selected pages (a page not
/// selected ends a run).
#[derive(Clone)]
struct GuestOps<'a, S, F> {
    runs: &'a [GuestRun],
    next: usize,
    select: S,
    op: F,
}

impl<S: Fn(GuestPageState) -> bool, F: Fn(Gfn, u64) -> Op> Iterator for GuestOps<'_, S, F> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        let mut run: Option<(Gfn, u64)> = None;
        while let Some(r) = self.runs.get(self.next) {
            match (run, (self.select)(r.state)) {
                (None, false) => {}
                (None, true) => run = Some((r.gfn, r.pages)),
                (Some((start, len)), true) => run = Some((start, len + r.pages)),
                (Some(_), false) => break,
            }
            self.next += 1;
        }
        run.map(|(f, len)| (self.op)(f, len))
    }
}

/// Which table loses access first: access is always removed before it is
/// granted elsewhere, so no page is reachable by two principals that
/// should not share it, even for an instant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum First {
    Host,
    Guest,
}

/// Reserves the pages both plans need (the only step that can fail), then
/// applies the `first` plan, runs `between` (e.g. wiping pages that are by
/// then mapped by nobody), and applies the other plan.
#[allow(clippy::too_many_arguments)]
fn commit_plans<M, P, T, HI, GI>(
    (host_s2, host_pool): (&mut Stage2, &mut P),
    g: &mut Guest,
    mem: M,
    host_plan: &Plan<HI>,
    guest_plan: &Plan<GI>,
    tlb: &mut T,
    first: First,
    between: impl FnOnce(),
) -> Result<(), Errno>
where
    M: PhysMem,
    P: TablePool,
    T: TlbMaintenance + ?Sized,
    HI: Iterator<Item = Op> + Clone,
    GI: Iterator<Item = Op> + Clone,
{
    let mut mc = MemcachePool {
        cache: &mut g.memcache,
        mem,
    };
    let plans = (host_plan, guest_plan);
    let tables = (host_s2, &mut g.s2);
    if plans.0.needed() == 0 && plans.1.needed() == 0 {
        // Nothing to set aside (the common case): each plan runs on its
        // pool directly, which only takes back pages merges free.
        apply_plans(tables, (host_pool, &mut mc), plans, tlb, first, between);
        return Ok(());
    }
    let mut hr = Reserved::new(host_pool, plans.0.needed()).map_err(|_| Errno::Enomem)?;
    let mut gr = Reserved::new(&mut mc, plans.1.needed()).map_err(|_| Errno::Enomem)?;
    apply_plans(tables, (&mut hr, &mut gr), plans, tlb, first, between);
    Ok(())
}

/// Commits one checked operation on the guest's stage-2 alone (the
/// host's is unchanged): a host→guest share or its end. Its table pages
/// come from the guest's memcache; `ENOMEM`, with nothing changed, if it
/// holds too few. (What [`commit_plans`] does for a plan on each side,
/// without its generality on the path of every share.)
///
/// Inlined when the operation needs no new table page (a page in an
/// existing table, the common case); otherwise out of line: measured, the
/// table-allocating commit inlined into the transition runs a third
/// slower.
#[inline(always)]
fn commit_guest_only<M: PhysMem, T: TlbMaintenance + ?Sized>(
    g: &mut Guest,
    mem: M,
    checked: &Checked,
    tlb: &mut T,
) -> Result<(), Errno> {
    if checked.pages() != 0 {
        return commit_guest_allocating(g, mem, checked, tlb);
    }
    let Guest { s2, memcache, .. } = g;
    let mut pool = MemcachePool {
        cache: memcache,
        mem,
    };
    s2.apply_checked(&mut pool, tlb, checked)
        .map_err(|_| Errno::Enomem)
}

/// [`commit_guest_only`] of an operation that needs table pages.
#[inline(never)]
fn commit_guest_allocating<M: PhysMem, T: TlbMaintenance + ?Sized>(
    g: &mut Guest,
    mem: M,
    checked: &Checked,
    tlb: &mut T,
) -> Result<(), Errno> {
    let Guest { s2, memcache, .. } = g;
    let mut pool = MemcachePool {
        cache: memcache,
        mem,
    };
    s2.apply_checked(&mut pool, tlb, checked)
        .map_err(|_| Errno::Enomem)
}

/// The second half of [`commit_plans`]: applies the `first` plan, runs
/// `between`, applies the other, each with pages from its pool.
fn apply_plans<HP, GP, T, HI, GI>(
    (host_s2, guest_s2): (&mut Stage2, &mut Stage2),
    (host_pool, guest_pool): (&mut HP, &mut GP),
    (host_plan, guest_plan): (&Plan<HI>, &Plan<GI>),
    tlb: &mut T,
    first: First,
    between: impl FnOnce(),
) where
    HP: TablePool + ?Sized,
    GP: TablePool + ?Sized,
    T: TlbMaintenance + ?Sized,
    HI: Iterator<Item = Op> + Clone,
    GI: Iterator<Item = Op> + Clone,
{
    if first == First::Host {
        host_plan.apply(host_s2, host_pool, tlb);
        between();
        guest_plan.apply(guest_s2, guest_pool, tlb);
    } else {
        guest_plan.apply(guest_s2, guest_pool, tlb);
        between();
        host_plan.apply(host_s2, host_pool, tlb);
    }
}

impl<M: PhysMem, P: TablePool, H: HypMappings> Ownership<M, P, H> {
    /// Host shares its page with the hypervisor: O/N → SO/SB.
    pub fn host_share_hyp(&self, pfn: Pfn) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        check_ram(&host.table, pfn, 1)?;
        let e = entry(&host.table, pfn);
        if (e.host(), e.hyp(), e.owner()) != (O, N, Owner::Host) {
            return Err(Errno::Eperm);
        }
        host.table.set(pfn, PageEntry::host_owned(SO, SB, 0, 0));
        Ok(())
    }

    /// Host takes back a page shared with the hypervisor: SO/SB → O/N;
    /// `EBUSY` while the hypervisor has it pinned.
    pub fn host_unshare_hyp(&self, pfn: Pfn) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        check_ram(&host.table, pfn, 1)?;
        let e = entry(&host.table, pfn);
        if (e.host(), e.hyp()) != (SO, SB) {
            return Err(Errno::Eperm);
        }
        if e.pins() != 0 {
            return Err(Errno::Ebusy);
        }
        host.table.set(pfn, PageEntry::HOST_OWNED);
        Ok(())
    }

    /// The hypervisor pins `n` pages the host shared with it, mapping each
    /// on its first pin (pKVM's `hyp_pin_shared_mem`).
    pub fn hyp_pin_shared(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        check_ram(&host.table, pfn, n)?;
        for_each_entry(&host.table, pfn, n, |_, e| {
            if (e.host(), e.hyp()) != (SO, SB) {
                return Err(Errno::Eperm);
            }
            if e.pins() == u16::MAX {
                return Err(Errno::Ebusy);
            }
            Ok(())
        })?;
        update_entries(&mut host.table, pfn, n, |i, e| {
            if e.pins() == 0 {
                hyp.map(Pfn(pfn.0 + i), 1);
            }
            PageEntry::host_owned(SO, SB, e.pins() + 1, 0)
        });
        Ok(())
    }

    /// Drops one pin from each of `n` pages, unmapping each on its last.
    pub fn hyp_unpin_shared(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        check_ram(&host.table, pfn, n)?;
        for_each_entry(&host.table, pfn, n, |_, e| {
            if (e.host(), e.hyp()) != (SO, SB) || e.pins() == 0 {
                return Err(Errno::Eperm);
            }
            Ok(())
        })?;
        update_entries(&mut host.table, pfn, n, |i, e| {
            if e.pins() == 1 {
                hyp.unmap(Pfn(pfn.0 + i), 1);
            }
            PageEntry::host_owned(SO, SB, e.pins() - 1, 0)
        });
        Ok(())
    }

    /// Host shares `n` pages with the secure world (pKVM's FF-A share):
    /// O/N → SO/N, hypervisor untouched.
    pub fn host_share_ffa(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        check_host_owned(&host.table, pfn, n)?;
        update_entries(&mut host.table, pfn, n, |_, _| {
            PageEntry::host_owned(SO, N, 0, 0)
        });
        Ok(())
    }

    /// Ends a secure-world share: SO/N (no guest shares) → O/N.
    pub fn host_unshare_ffa(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        check_entries(&host.table, pfn, n, PageEntry::host_owned(SO, N, 0, 0))?;
        update_entries(&mut host.table, pfn, n, |_, _| PageEntry::HOST_OWNED);
        Ok(())
    }

    /// The host donates `n` pages to the hypervisor: O/N → N/O. The pages
    /// leave the host stage-2 and are mapped for the hypervisor.
    pub fn host_donate_hyp<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        pfn: Pfn,
        n: u64,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let h = &mut *host;
        check_host_owned(&h.table, pfn, n)?;
        let checked = check_one(&h.s2, &h.pool, host_annotate(pfn, n, hyp_annotation()))?;
        let plan = Plan::<NoOps>::One(&checked);
        let mut r = Reserved::new(&mut h.pool, plan.needed()).map_err(|_| Errno::Enomem)?;
        plan.apply(&mut h.s2, &mut r, tlb);
        update_entries(&mut h.table, pfn, n, |_, _| PageEntry::HYP_OWNED);
        hyp.map(pfn, n);
        Ok(())
    }

    /// The hypervisor gives `n` pages back to the host, zeroed: N/O → O/N.
    pub fn hyp_donate_host<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        pfn: Pfn,
        n: u64,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let h = &mut *host;
        check_entries(&h.table, pfn, n, PageEntry::HYP_OWNED)?;
        let checked = check_one(&h.s2, &h.pool, host_map(pfn, n, h.policy))?;
        let plan = Plan::<NoOps>::One(&checked);
        let mut r = Reserved::new(&mut h.pool, plan.needed()).map_err(|_| Errno::Enomem)?;
        hyp.unmap(pfn, n);
        wipe(self.mem, pfn, n);
        plan.apply(&mut h.s2, &mut r, tlb);
        update_entries(&mut h.table, pfn, n, |_, _| PageEntry::HOST_OWNED);
        Ok(())
    }

    /// The host lends a page (or a 2 MiB block) to a guest at `gfn`; the
    /// host keeps access. Host O, or SO already lent to guests → SO with
    /// one more share; guest N → SB.
    pub fn host_share_guest<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        pfn: Pfn,
        gfn: Gfn,
        ext: Extent,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut guard = self.lock_guest(handle)?;
        // One check that the slot is live, not one per use.
        let g: &mut Guest = &mut guard;
        let h = &mut *host;
        let n = check_extent(g, Some(pfn), gfn, ext)?;
        // One region search for the check and the update (a share never
        // spans regions: a 2 MiB one is aligned).
        let entries = h.table.range_mut(pfn, n).ok_or(Errno::Einval)?;
        for e in entries.iter() {
            let lendable = e.owner() == Owner::Host
                && e.hyp() == N
                && (e.host() == O || (e.host() == SO && e.share_count() > 0));
            if !lendable {
                return Err(Errno::Eperm);
            }
            if e.share_count() == u32::MAX {
                return Err(Errno::Ebusy);
            }
        }
        let mem = self.mem;
        let attrs = guest_attrs(S2State::SharedBorrowed, ext == Extent::Block);
        let op = Op::Map {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            pa: pa(pfn),
            attrs,
            policy: BlockPolicy::Largest,
        };
        let mut slot = None;
        let gc = check_one_into(&g.s2, &MemView(self.mem), op, &mut slot)?;
        check_guest_empty(g, self.mem, gfn, n, gc.entry())?;
        // What the host wrote is what the guest reads, caches on or off.
        // (Harmless should the commit then find the memcache short.)
        mem.sync_for_guest(pa(pfn), n * PAGE_SIZE);
        commit_guest_only(g, mem, gc, tlb)?;
        for e in entries.iter_mut() {
            *e = PageEntry::host_owned(SO, N, 0, e.share_count() + 1);
        }
        Ok(())
    }

    /// Ends a host→guest share of the page (or 2 MiB block) at `gfn`.
    /// `ENOENT` if nothing is mapped there, `E2BIG` if the size differs
    /// from the share's, `EPERM` if it is not a host page lent to the guest.
    pub fn host_unshare_guest<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        ext: Extent,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut guard = self.lock_guest(handle)?;
        // One check that the slot is live, not one per use.
        let g: &mut Guest = &mut guard;
        let h = &mut *host;
        let n = check_extent(g, None, gfn, ext)?;
        let op = Op::Unmap {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
        };
        let mut slot = None;
        let gc = check_one_into(&g.s2, &MemView(self.mem), op, &mut slot)?;
        // The entry the unmap changes, when the check read it; else look.
        let leaf = match gc.entry() {
            Some(leaf) => leaf,
            None => {
                g.s2.lookup(&MemView(self.mem), ipa(gfn))
                    .map_err(|_| Errno::Einval)?
            }
        };
        let Some(first) = leaf.output_for(ipa(gfn)) else {
            return Err(Errno::Enoent);
        };
        if leaf.descriptor.page_state() != Some(S2State::SharedBorrowed) {
            return Err(Errno::Eperm);
        }
        let block_share = leaf.descriptor.spare_bits() & SPARE_BLOCK_SHARE != 0;
        if block_share != (ext == Extent::Block) {
            return Err(Errno::E2big);
        }
        let pfn = Pfn::containing(first);
        // Every page of the extent must still be this share: a page of a
        // 2 MiB share reclaimed on its own (at teardown) is gone. (A single
        // page is the leaf just looked up.)
        if n > 1 {
            for_each_guest_run(g, self.mem, gfn, n, |r| match r.pfn {
                None => Err(Errno::Enoent),
                Some(p)
                    if r.state == GuestPageState::SharedBorrowed
                        && p.0 == pfn.0 + (r.gfn.0 - gfn.0) =>
                {
                    Ok(())
                }
                Some(_) => Err(Errno::Eperm),
            })?;
        }
        // What the guest maps is RAM (the checker's invariant); were it
        // not, no entry would be the host's to lend.
        let entries = h.table.range_mut(pfn, n).ok_or(Errno::Eperm)?;
        for e in entries.iter() {
            if e.owner() != Owner::Host || e.host() != SO {
                return Err(Errno::Eperm);
            }
            if e.share_count() == 0 {
                return Err(Errno::Einval);
            }
        }
        commit_guest_only(g, self.mem, gc, tlb)?;
        for e in entries.iter_mut() {
            *e = drop_share(*e);
        }
        Ok(())
    }

    /// The host donates a page (or a 2 MiB block) to a guest at `gfn`: host
    /// O → N (owner: the guest at `gfn`), guest N → O. Contents are kept:
    /// this is the in-place conversion of a shared page to private.
    pub fn host_donate_guest<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        pfn: Pfn,
        gfn: Gfn,
        ext: Extent,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut g = self.lock_guest(handle)?;
        let h = &mut *host;
        let n = check_extent(&g, Some(pfn), gfn, ext)?;
        check_host_owned(&h.table, pfn, n)?;
        let attrs = guest_attrs(S2State::Owned, false);
        let op = Op::Map {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            pa: pa(pfn),
            attrs,
            policy: BlockPolicy::Largest,
        };
        let gc = check_one(&g.s2, &MemView(self.mem), op)?;
        let gp = Plan::<NoOps>::One(&gc);
        check_guest_empty(&g, self.mem, gfn, n, gc.entry())?;
        let hc = check_one(
            &h.s2,
            &h.pool,
            host_annotate(pfn, n, guest_annotation(handle)),
        )?;
        let hp = Plan::<NoOps>::One(&hc);
        // Once the host can no longer write it, and before the guest can
        // see it: what the host wrote reaches the point of coherency.
        let mem = self.mem;
        commit_plans(
            (&mut h.s2, &mut h.pool),
            &mut g,
            self.mem,
            &hp,
            &gp,
            tlb,
            First::Host,
            || mem.sync_for_guest(pa(pfn), n * PAGE_SIZE),
        )?;
        update_entries(&mut h.table, pfn, n, |i, _| {
            PageEntry::guest_owned(N, handle, Gfn(gfn.0 + i))
        });
        Ok(())
    }

    /// The guest shares `n` (1–512) of its pages from `gfn` with the host:
    /// guest O → SO, host N → SB (mapped again). The guest stays owner.
    pub fn guest_share_host<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        n: u64,
    ) -> Result<(), Errno> {
        self.guest_share_change(tlb, handle, gfn, n, ConversionKind::Share, false)
    }

    /// The guest takes back `n` pages it shared: guest SO → O, host SB → N.
    pub fn guest_unshare_host<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        n: u64,
    ) -> Result<(), Errno> {
        self.guest_share_change(tlb, handle, gfn, n, ConversionKind::Unshare, false)
    }

    /// Records a guest's share or unshare request after checking it exactly
    /// as the transition will (DESIGN §5). `EBUSY` if another request is
    /// pending. Nothing changes but the pending record.
    pub fn guest_request_conversion(
        &self,
        handle: GuestHandle,
        conversion: Conversion,
    ) -> Result<(), Errno> {
        let host = self.host.lock();
        let mut g = self.lock_guest(handle)?;
        if g.pending.is_some() {
            return Err(Errno::Ebusy);
        }
        let n = conversion.pages;
        check_guest_range(&g, conversion.gfn, n)?;
        check_share_change(
            &host.table,
            &g,
            self.mem,
            conversion.gfn,
            n,
            conversion.kind,
        )?;
        g.pending = Some(conversion);
        Ok(())
    }

    /// The host completes the pending conversion. `EPERM` unless `conversion`
    /// is exactly the pending request. On success the request is cleared;
    /// on any other error it stays pending (the host may fix the cause, e.g.
    /// top up the memcache, and retry, or refuse it).
    pub fn host_complete_conversion<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        conversion: Conversion,
    ) -> Result<(), Errno> {
        self.guest_share_change(
            tlb,
            handle,
            conversion.gfn,
            conversion.pages,
            conversion.kind,
            true,
        )
    }

    /// The host refuses the pending conversion: the request is dropped and
    /// nothing else changes. `EPERM` if none is pending.
    pub fn host_refuse_conversion(&self, handle: GuestHandle) -> Result<Conversion, Errno> {
        let mut g = self.lock_guest(handle)?;
        g.pending.take().ok_or(Errno::Eperm)
    }

    fn guest_share_change<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        n: u64,
        kind: ConversionKind,
        completing: bool,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut g = self.lock_guest(handle)?;
        let policy = host.policy;
        let HostMmu {
            table,
            s2,
            pool,
            runs,
            ..
        } = &mut *host;
        if completing
            && g.pending
                != Some(Conversion {
                    kind,
                    gfn,
                    pages: n,
                })
        {
            return Err(Errno::Eperm);
        }
        check_guest_range(&g, gfn, n)?;
        check_share_change(table, &g, self.mem, gfn, n, kind)?;
        collect_runs(&g, self.mem, gfn, n, runs)?;
        let runs = &runs[..];
        let annotation = guest_annotation(handle);
        let (to, host_state, first) = match kind {
            ConversionKind::Share => (S2State::SharedOwned, SB, First::Guest),
            ConversionKind::Unshare => (S2State::Owned, N, First::Host),
        };
        // Every page is mapped (checked above): a share maps the host
        // again, an unshare takes the host's access away.
        let hp = Plan::new(
            s2,
            &*pool,
            host_ops(
                runs,
                |_| true,
                move |p, len| match kind {
                    ConversionKind::Share => host_map(p, len, policy),
                    ConversionKind::Unshare => host_annotate(p, len, annotation),
                },
            ),
        )?;
        let op = Op::SetSw {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            sw: SwBits::state(to),
        };
        let gc = check_one(&g.s2, &MemView(self.mem), op)?;
        let gp = Plan::<NoOps>::One(&gc);
        commit_plans((s2, pool), &mut g, self.mem, &hp, &gp, tlb, first, || {})?;
        for r in runs {
            if let Some(p) = r.pfn {
                update_entries(table, p, r.pages, |i, _| {
                    PageEntry::guest_owned(host_state, handle, Gfn(r.gfn.0 + i))
                });
            }
        }
        if completing {
            g.pending = None;
        }
        Ok(())
    }

    /// The guest gives `n` (1–512) pages from `gfn` back to the host: each
    /// guest-owned page is zeroed (unless the guest had shared it) and
    /// becomes host-owned; the IPA becomes `Relinquished`. Pages already
    /// empty are left as they are (relinquishing twice is not an error);
    /// a poisoned page gives `EHWPOISON`, a page the host lent `EPERM`.
    pub fn guest_relinquish<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        n: u64,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut g = self.lock_guest(handle)?;
        let policy = host.policy;
        let HostMmu {
            table,
            s2,
            pool,
            runs,
            ..
        } = &mut *host;
        check_guest_range(&g, gfn, n)?;
        collect_runs(&g, self.mem, gfn, n, runs)?;
        let runs = &runs[..];
        for r in runs {
            match (r.state, r.pfn) {
                (GuestPageState::Poisoned, _) => return Err(Errno::Ehwpoison),
                (GuestPageState::SharedBorrowed, _) => return Err(Errno::Eperm),
                (GuestPageState::Owned | GuestPageState::SharedOwned, Some(p)) => {
                    check_guest_entries(table, p, handle, r.gfn, r.pages)?;
                }
                _ => {}
            }
        }
        let owned =
            |s: GuestPageState| matches!(s, GuestPageState::Owned | GuestPageState::SharedOwned);
        let hp = Plan::new(
            s2,
            &*pool,
            host_ops(runs, owned, |p, len| host_map(p, len, policy)),
        )?;
        let op = Op::Annotate {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            annotation: relinquished_annotation(),
        };
        let gc = check_one(&g.s2, &MemView(self.mem), op)?;
        let gp = Plan::<NoOps>::One(&gc);
        // Guest-private pages are wiped once the guest no longer maps them
        // and before the host does; pages the guest shared keep contents.
        let mem = self.mem;
        commit_plans((s2, pool), &mut g, mem, &hp, &gp, tlb, First::Guest, || {
            wipe_private(mem, runs)
        })?;
        for r in runs {
            if let (true, Some(p)) = (owned(r.state), r.pfn) {
                update_entries(table, p, r.pages, |_, _| PageEntry::HOST_OWNED);
            }
        }
        Ok(())
    }

    /// After teardown started, the host takes back the page (or 2 MiB
    /// block) at `gfn`: guest-owned pages are zeroed (unless shared with
    /// the host) and become host-owned; a page the host lent is unshared.
    /// A poisoned page is already the host's: success, nothing changes.
    /// `EINVAL` if the guest is not dying, `ENOENT` if nothing is mapped.
    pub fn host_reclaim<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        gfn: Gfn,
        ext: Extent,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut g = self.lock_guest(handle)?;
        let policy = host.policy;
        let HostMmu {
            table,
            s2,
            pool,
            runs,
            ..
        } = &mut *host;
        if !g.dying {
            return Err(Errno::Einval);
        }
        let n = check_extent(&g, None, gfn, ext)?;
        collect_runs(&g, self.mem, gfn, n, runs)?;
        let runs = &runs[..];
        if runs.iter().all(|r| r.state == GuestPageState::Poisoned) {
            return Ok(());
        }
        if runs.iter().all(|r| r.pfn.is_none()) {
            return Err(Errno::Enoent);
        }
        for r in runs {
            match (r.state, r.pfn) {
                (GuestPageState::Owned | GuestPageState::SharedOwned, Some(p)) => {
                    check_guest_entries(table, p, handle, r.gfn, r.pages)?;
                }
                (GuestPageState::SharedBorrowed, Some(p)) => {
                    for_each_entry(table, p, r.pages, |_, e| {
                        if e.owner() != Owner::Host || e.share_count() == 0 {
                            return Err(Errno::Eperm);
                        }
                        Ok(())
                    })?;
                }
                _ => {}
            }
        }
        let owned =
            |s: GuestPageState| matches!(s, GuestPageState::Owned | GuestPageState::SharedOwned);
        let hp = Plan::new(
            s2,
            &*pool,
            host_ops(runs, owned, |p, len| host_map(p, len, policy)),
        )?;
        // Unmap the mapped pages only: a poisoned IPA stays poisoned.
        let unmap = GuestOps {
            runs,
            next: 0,
            select: |s| s != GuestPageState::Poisoned,
            op: |f, len| Op::Unmap {
                ipa: ipa(f),
                size: len * PAGE_SIZE,
            },
        };
        let gp = Plan::new(&g.s2, &MemView(self.mem), unmap)?;
        let mem = self.mem;
        commit_plans((s2, pool), &mut g, mem, &hp, &gp, tlb, First::Guest, || {
            wipe_private(mem, runs)
        })?;
        for r in runs {
            let Some(p) = r.pfn else { continue };
            if owned(r.state) {
                update_entries(table, p, r.pages, |_, _| PageEntry::HOST_OWNED);
            } else if r.state == GuestPageState::SharedBorrowed {
                update_entries(table, p, r.pages, |_, e| drop_share(e));
            }
        }
        Ok(())
    }

    /// The host takes back a page it donated and then faulted on (pKVM's
    /// forced reclaim): the page is zeroed and host-owned again, and the
    /// guest's IPA is poisoned until teardown. `EFAULT` not RAM; `EAGAIN`
    /// the host can already access it; `EPERM` not a guest-private page.
    pub fn host_force_reclaim<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        addr: PhysAddr,
    ) -> Result<(), Errno> {
        let pfn = Pfn::containing(addr);
        let mut host = self.host.lock();
        let h = &mut *host;
        let e = h.table.get(pfn).ok_or(Errno::Efault)?;
        if e.host() != N {
            return Err(Errno::Eagain);
        }
        let Owner::Guest { handle, gfn } = e.owner() else {
            return Err(Errno::Eperm);
        };
        let mut g = self.lock_guest(handle).map_err(|_| Errno::Eagain)?;
        match guest_page(&g, self.mem, gfn)? {
            (GuestPageState::Poisoned, _) => return Err(Errno::Ehwpoison),
            (_, None) => return Err(Errno::Enoent),
            (GuestPageState::Owned, Some(p)) if p == pfn => {}
            _ => return Err(Errno::Eperm),
        }
        let hc = check_one(&h.s2, &h.pool, host_map(pfn, 1, h.policy))?;
        let hp = Plan::<NoOps>::One(&hc);
        let op = Op::Annotate {
            ipa: ipa(gfn),
            size: PAGE_SIZE,
            annotation: poison_annotation(),
        };
        let gc = check_one(&g.s2, &MemView(self.mem), op)?;
        let gp = Plan::<NoOps>::One(&gc);
        let mem = self.mem;
        commit_plans(
            (&mut h.s2, &mut h.pool),
            &mut g,
            self.mem,
            &hp,
            &gp,
            tlb,
            First::Guest,
            || wipe(mem, pfn, 1),
        )?;
        h.table.set(pfn, PageEntry::HOST_OWNED);
        Ok(())
    }
}

/// `EINVAL` unless `1 <= n <= MAX_GUEST_RANGE` and the range is inside the
/// guest's IPA space.
fn check_guest_range(g: &Guest, gfn: Gfn, n: u64) -> Result<(), Errno> {
    if n == 0 || n > MAX_GUEST_RANGE {
        return Err(Errno::Einval);
    }
    check_gfn_range(g, gfn, n)
}

/// `EPERM` unless every page of `[gfn, gfn + n)` is empty in the guest
/// (nothing mapped, or relinquished). A poisoned IPA is not empty.
/// `entry` is the one guest entry covering the range, when the stage-2
/// check of the mapping already read it; otherwise the range is walked.
#[inline]
fn check_guest_empty<M: PhysMem>(
    g: &Guest,
    mem: M,
    gfn: Gfn,
    n: u64,
    entry: Option<stage2::Leaf>,
) -> Result<(), Errno> {
    if let Some(leaf) = entry {
        return match leaf_state(&leaf) {
            None => Err(Errno::Einval),
            Some(state) if state.is_empty() => Ok(()),
            Some(_) => Err(Errno::Eperm),
        };
    }
    for_each_guest_run(g, mem, gfn, n, |r| {
        if r.state.is_empty() {
            Ok(())
        } else {
            Err(Errno::Eperm)
        }
    })
}

/// `EPERM` unless the ownership table says each page of `[pfn, pfn + n)`
/// belongs to `handle` at the matching page of `[gfn, gfn + n)`.
fn check_guest_entries(
    table: &OwnershipTable,
    pfn: Pfn,
    handle: GuestHandle,
    gfn: Gfn,
    n: u64,
) -> Result<(), Errno> {
    // A page that is not RAM reads as the hypervisor's: `EPERM` too.
    for_each_entry(table, pfn, n, |i, e| match e.owner() {
        Owner::Guest { handle: h, gfn: f } if h == handle && f.0 == gfn.0 + i => Ok(()),
        _ => Err(Errno::Eperm),
    })
}

/// The checks of guest share (O/N → SO/SB) and unshare (SO/SB → O/N) for
/// every page, in order: `EHWPOISON` poisoned, `ENOENT` nothing mapped,
/// `EPERM` wrong state.
fn check_share_change<M: PhysMem>(
    table: &OwnershipTable,
    g: &Guest,
    mem: M,
    gfn: Gfn,
    n: u64,
    kind: ConversionKind,
) -> Result<(), Errno> {
    let (guest_from, host_from) = match kind {
        ConversionKind::Share => (GuestPageState::Owned, N),
        ConversionKind::Unshare => (GuestPageState::SharedOwned, SB),
    };
    for_each_guest_run(g, mem, gfn, n, |r| match (r.state, r.pfn) {
        (GuestPageState::Poisoned, _) => Err(Errno::Ehwpoison),
        (_, None) => Err(Errno::Enoent),
        (s, Some(p)) => {
            if s != guest_from {
                return Err(Errno::Eperm);
            }
            for_each_entry(table, p, r.pages, |i, e| {
                let owner_ok = e.owner()
                    == (Owner::Guest {
                        handle: g.handle,
                        gfn: Gfn(r.gfn.0 + i),
                    });
                if !owner_ok || e.host() != host_from {
                    return Err(Errno::Eperm);
                }
                Ok(())
            })
        }
    })
}
