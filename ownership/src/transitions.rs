//! Every memory transition of DESIGN §2, plus guest-requested conversions
//! (DESIGN §5).
//!
//! Each one follows the same shape: take the locks in order, check every
//! page and every precondition, count and reserve the page-table pages the
//! host and guest stage-2 changes need (host pool and guest memcache), and
//! only then change anything. A call that returns an error changed nothing.

use crate::errno::Errno;
use crate::mem::{HypMappings, PhysMem, wipe};
use crate::memcache::MemcachePool;
use crate::state::{
    Conversion, ConversionKind, Guest, HostMmu, MemView, Ownership, Plan, SPARE_BLOCK_SHARE,
    check_entries, check_host_owned, for_each_guest_page, guest_annotation, guest_attrs,
    guest_page, host_annotate, host_map, hyp_annotation, poison_annotation,
    relinquished_annotation, slot,
};
use crate::table::{MAX_GFN, OwnershipTable, PageEntry};
use crate::types::{BLOCK_PAGES, Extent, Gfn, GuestHandle, GuestPageState, Owner, PageState, Pfn};
use alloc::vec::Vec;
use stage2::{
    BlockPolicy, Ipa, Op, PAGE_SIZE, PageState as S2State, PhysAddr, Reserved, SwBits, TablePool,
    TlbMaintenance,
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

/// One host→guest share of `pfn` ended: one fewer share; the page is the
/// host's alone again at zero. The caller checked the count is non-zero.
fn drop_share(table: &mut OwnershipTable, pfn: Pfn) {
    let count = entry(table, pfn).share_count().saturating_sub(1);
    let e = if count == 0 {
        PageEntry::HOST_OWNED
    } else {
        PageEntry::host_owned(SO, N, 0, count)
    };
    table.set(pfn, e);
}

/// Checks the alignment and range of a host↔guest extent.
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

/// One guest page of a range: its gfn, state and frame.
type GuestPageInfo = (Gfn, GuestPageState, Option<Pfn>);

/// The state and frame of every page of `[gfn, gfn + n)`.
fn collect_pages<M: PhysMem>(
    g: &Guest,
    mem: M,
    gfn: Gfn,
    n: u64,
) -> Result<Vec<GuestPageInfo>, Errno> {
    let mut v = Vec::new();
    v.try_reserve_exact(n as usize).map_err(|_| Errno::Enomem)?;
    for_each_guest_page(g, mem, gfn, n, |f, state, pfn| {
        v.push((f, state, pfn));
        Ok(())
    })?;
    Ok(v)
}

/// Wipes the guest-private pages among `pages` (pages the guest shared keep
/// their contents).
fn wipe_private<M: PhysMem>(mem: M, pages: &[GuestPageInfo]) {
    for &(_, state, pfn) in pages {
        if let (GuestPageState::Owned, Some(p)) = (state, pfn) {
            wipe(mem, p, 1);
        }
    }
}

/// Plans host stage-2 ops for the frames of the selected `pages`, as runs
/// of pages contiguous in both spaces.
fn plan_host_runs<P: TablePool>(
    h: &HostMmu<P>,
    pages: &[GuestPageInfo],
    plan: &mut Plan,
    select: impl Fn(GuestPageState) -> bool,
    op: impl Fn(Pfn, u64) -> Op,
) -> Result<(), Errno> {
    let mut run: Option<(Pfn, u64)> = None;
    for &(_, state, pfn) in pages {
        let next = pfn.filter(|_| select(state));
        match (run, next) {
            (Some((start, len)), Some(p)) if start.0 + len == p.0 => run = Some((start, len + 1)),
            (prev, next) => {
                if let Some((start, len)) = prev {
                    plan.add(&h.s2, &h.pool, op(start, len))?;
                }
                run = next.map(|p| (p, 1));
            }
        }
    }
    if let Some((start, len)) = run {
        plan.add(&h.s2, &h.pool, op(start, len))?;
    }
    Ok(())
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
fn commit_plans<M: PhysMem, P: TablePool, T: TlbMaintenance + ?Sized>(
    h: &mut HostMmu<P>,
    g: &mut Guest,
    mem: M,
    host_plan: Plan,
    guest_plan: Plan,
    tlb: &mut T,
    first: First,
    between: impl FnOnce(),
) -> Result<(), Errno> {
    let mut hr = Reserved::new(&mut h.pool, host_plan.needed).map_err(|_| Errno::Enomem)?;
    let mut mc = MemcachePool {
        cache: &mut g.memcache,
        mem,
    };
    let mut gr = Reserved::new(&mut mc, guest_plan.needed).map_err(|_| Errno::Enomem)?;
    if first == First::Host {
        host_plan.apply(&mut h.s2, &mut hr, tlb);
        between();
        guest_plan.apply(&mut g.s2, &mut gr, tlb);
    } else {
        guest_plan.apply(&mut g.s2, &mut gr, tlb);
        between();
        host_plan.apply(&mut h.s2, &mut hr, tlb);
    }
    Ok(())
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
        for i in 0..n {
            let e = entry(&host.table, Pfn(pfn.0 + i));
            if (e.host(), e.hyp()) != (SO, SB) {
                return Err(Errno::Eperm);
            }
            if e.pins() == u16::MAX {
                return Err(Errno::Ebusy);
            }
        }
        for i in 0..n {
            let p = Pfn(pfn.0 + i);
            let e = entry(&host.table, p);
            if e.pins() == 0 {
                hyp.map(p, 1);
            }
            host.table
                .set(p, PageEntry::host_owned(SO, SB, e.pins() + 1, 0));
        }
        Ok(())
    }

    /// Drops one pin from each of `n` pages, unmapping each on its last.
    pub fn hyp_unpin_shared(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        check_ram(&host.table, pfn, n)?;
        for i in 0..n {
            let e = entry(&host.table, Pfn(pfn.0 + i));
            if (e.host(), e.hyp()) != (SO, SB) || e.pins() == 0 {
                return Err(Errno::Eperm);
            }
        }
        for i in 0..n {
            let p = Pfn(pfn.0 + i);
            let e = entry(&host.table, p);
            if e.pins() == 1 {
                hyp.unmap(p, 1);
            }
            host.table
                .set(p, PageEntry::host_owned(SO, SB, e.pins() - 1, 0));
        }
        Ok(())
    }

    /// Host shares `n` pages with the secure world (pKVM's FF-A share):
    /// O/N → SO/N, hypervisor untouched.
    pub fn host_share_ffa(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        check_host_owned(&host.table, pfn, n)?;
        for i in 0..n {
            host.table
                .set(Pfn(pfn.0 + i), PageEntry::host_owned(SO, N, 0, 0));
        }
        Ok(())
    }

    /// Ends a secure-world share: SO/N (no guest shares) → O/N.
    pub fn host_unshare_ffa(&self, pfn: Pfn, n: u64) -> Result<(), Errno> {
        let mut host = self.host.lock();
        check_entries(&host.table, pfn, n, PageEntry::host_owned(SO, N, 0, 0))?;
        for i in 0..n {
            host.table.set(Pfn(pfn.0 + i), PageEntry::HOST_OWNED);
        }
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
        let mut plan = Plan::new();
        plan.add(&h.s2, &h.pool, host_annotate(pfn, n, hyp_annotation()))?;
        let mut r = Reserved::new(&mut h.pool, plan.needed).map_err(|_| Errno::Enomem)?;
        plan.apply(&mut h.s2, &mut r, tlb);
        for i in 0..n {
            h.table.set(Pfn(pfn.0 + i), PageEntry::HYP_OWNED);
        }
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
        let mut plan = Plan::new();
        plan.add(&h.s2, &h.pool, host_map(pfn, n))?;
        let mut r = Reserved::new(&mut h.pool, plan.needed).map_err(|_| Errno::Enomem)?;
        hyp.unmap(pfn, n);
        wipe(self.mem, pfn, n);
        plan.apply(&mut h.s2, &mut r, tlb);
        for i in 0..n {
            h.table.set(Pfn(pfn.0 + i), PageEntry::HOST_OWNED);
        }
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
        let n = check_extent(&g, Some(pfn), gfn, ext)?;
        check_ram(&h.table, pfn, n)?;
        for i in 0..n {
            let e = entry(&h.table, Pfn(pfn.0 + i));
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
        check_guest_empty(&g, self.mem, gfn, n)?;
        let mem = self.mem;
        let attrs = guest_attrs(S2State::SharedBorrowed, ext == Extent::Block);
        let mut gp = Plan::new();
        let op = Op::Map {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            pa: pa(pfn),
            attrs,
            policy: BlockPolicy::Largest,
        };
        gp.add(&g.s2, &MemView(self.mem), op)?;
        // What the host wrote is what the guest reads, caches on or off.
        commit_plans(
            h,
            &mut g,
            self.mem,
            Plan::new(),
            gp,
            tlb,
            First::Host,
            || mem.sync_for_guest(pa(pfn), n * PAGE_SIZE),
        )?;
        for i in 0..n {
            let p = Pfn(pfn.0 + i);
            let e = entry(&h.table, p);
            h.table
                .set(p, PageEntry::host_owned(SO, N, 0, e.share_count() + 1));
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
        let n = check_extent(&g, None, gfn, ext)?;
        let leaf =
            g.s2.lookup(&MemView(self.mem), ipa(gfn))
                .map_err(|_| Errno::Einval)?;
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
        // 2 MiB share reclaimed on its own (at teardown) is gone.
        for_each_guest_page(&g, self.mem, gfn, n, |f, state, p| match p {
            None => Err(Errno::Enoent),
            Some(p) if state == GuestPageState::SharedBorrowed && p.0 == pfn.0 + (f.0 - gfn.0) => {
                Ok(())
            }
            Some(_) => Err(Errno::Eperm),
        })?;
        for i in 0..n {
            let e = entry(&h.table, Pfn(pfn.0 + i));
            if e.owner() != Owner::Host || e.host() != SO {
                return Err(Errno::Eperm);
            }
            if e.share_count() == 0 {
                return Err(Errno::Einval);
            }
        }
        let mut gp = Plan::new();
        gp.add(
            &g.s2,
            &MemView(self.mem),
            Op::Unmap {
                ipa: ipa(gfn),
                size: n * PAGE_SIZE,
            },
        )?;
        commit_plans(
            h,
            &mut g,
            self.mem,
            Plan::new(),
            gp,
            tlb,
            First::Guest,
            || {},
        )?;
        for i in 0..n {
            drop_share(&mut h.table, Pfn(pfn.0 + i));
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
        let n = check_extent(&g, Some(pfn), gfn, ext)?;
        check_host_owned(&h.table, pfn, n)?;
        check_guest_empty(&g, self.mem, gfn, n)?;
        let mut hp = Plan::new();
        hp.add(
            &h.s2,
            &h.pool,
            host_annotate(pfn, n, guest_annotation(handle)),
        )?;
        let mut gp = Plan::new();
        let attrs = guest_attrs(S2State::Owned, false);
        let op = Op::Map {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            pa: pa(pfn),
            attrs,
            policy: BlockPolicy::Largest,
        };
        gp.add(&g.s2, &MemView(self.mem), op)?;
        // Once the host can no longer write it, and before the guest can
        // see it: what the host wrote reaches the point of coherency.
        let mem = self.mem;
        commit_plans(h, &mut g, self.mem, hp, gp, tlb, First::Host, || {
            mem.sync_for_guest(pa(pfn), n * PAGE_SIZE)
        })?;
        for i in 0..n {
            h.table.set(
                Pfn(pfn.0 + i),
                PageEntry::guest_owned(N, handle, Gfn(gfn.0 + i)),
            );
        }
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let host = self.host.lock();
        let mut g = gm.lock();
        if g.pending.is_some() {
            return Err(Errno::Ebusy);
        }
        let n = conversion.pages;
        check_guest_range(&g, conversion.gfn, n)?;
        check_share_change(&host, &g, self.mem, conversion.gfn, n, conversion.kind)?;
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
        let guests = self.guests.read();
        let mut g = slot(&guests, handle)?.lock();
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
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
        check_share_change(h, &g, self.mem, gfn, n, kind)?;
        let pages = collect_pages(&g, self.mem, gfn, n)?;
        let mut hp = Plan::new();
        let (to, host_state, first) = match kind {
            ConversionKind::Share => {
                plan_host_runs(h, &pages, &mut hp, |_| true, host_map)?;
                (S2State::SharedOwned, SB, First::Guest)
            }
            ConversionKind::Unshare => {
                let annotation = guest_annotation(handle);
                plan_host_runs(
                    h,
                    &pages,
                    &mut hp,
                    |_| true,
                    |p, len| host_annotate(p, len, annotation),
                )?;
                (S2State::Owned, N, First::Host)
            }
        };
        let mut gp = Plan::new();
        let op = Op::SetSw {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            sw: SwBits::state(to),
        };
        gp.add(&g.s2, &MemView(self.mem), op)?;
        commit_plans(h, &mut g, self.mem, hp, gp, tlb, first, || {})?;
        for &(f, _, pfn) in &pages {
            if let Some(p) = pfn {
                h.table
                    .set(p, PageEntry::guest_owned(host_state, handle, f));
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
        check_guest_range(&g, gfn, n)?;
        let pages = collect_pages(&g, self.mem, gfn, n)?;
        for &(f, state, pfn) in &pages {
            match (state, pfn) {
                (GuestPageState::Poisoned, _) => return Err(Errno::Ehwpoison),
                (GuestPageState::SharedBorrowed, _) => return Err(Errno::Eperm),
                (GuestPageState::Owned | GuestPageState::SharedOwned, Some(p)) => {
                    check_guest_page_entry(&h.table, p, handle, f)?;
                }
                _ => {}
            }
        }
        let owned =
            |s: GuestPageState| matches!(s, GuestPageState::Owned | GuestPageState::SharedOwned);
        let mut hp = Plan::new();
        plan_host_runs(h, &pages, &mut hp, owned, host_map)?;
        let mut gp = Plan::new();
        let op = Op::Annotate {
            ipa: ipa(gfn),
            size: n * PAGE_SIZE,
            annotation: relinquished_annotation(),
        };
        gp.add(&g.s2, &MemView(self.mem), op)?;
        // Guest-private pages are wiped once the guest no longer maps them
        // and before the host does; pages the guest shared keep contents.
        let mem = self.mem;
        commit_plans(h, &mut g, mem, hp, gp, tlb, First::Guest, || {
            wipe_private(mem, &pages)
        })?;
        for &(_, state, pfn) in &pages {
            if let (true, Some(p)) = (owned(state), pfn) {
                h.table.set(p, PageEntry::HOST_OWNED);
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
        let guests = self.guests.read();
        let gm = slot(&guests, handle)?;
        let mut host = self.host.lock();
        let mut g = gm.lock();
        let h = &mut *host;
        if !g.dying {
            return Err(Errno::Einval);
        }
        let n = check_extent(&g, None, gfn, ext)?;
        let pages = collect_pages(&g, self.mem, gfn, n)?;
        if pages.iter().all(|p| p.1 == GuestPageState::Poisoned) {
            return Ok(());
        }
        if pages.iter().all(|p| p.2.is_none()) {
            return Err(Errno::Enoent);
        }
        for &(f, state, pfn) in &pages {
            match (state, pfn) {
                (GuestPageState::Owned | GuestPageState::SharedOwned, Some(p)) => {
                    check_guest_page_entry(&h.table, p, handle, f)?;
                }
                (GuestPageState::SharedBorrowed, Some(p)) => {
                    let e = entry(&h.table, p);
                    if e.owner() != Owner::Host || e.share_count() == 0 {
                        return Err(Errno::Eperm);
                    }
                }
                _ => {}
            }
        }
        let owned =
            |s: GuestPageState| matches!(s, GuestPageState::Owned | GuestPageState::SharedOwned);
        let mut hp = Plan::new();
        plan_host_runs(h, &pages, &mut hp, owned, host_map)?;
        let mut gp = Plan::new();
        // Unmap the mapped pages only: a poisoned IPA stays poisoned.
        plan_guest_runs(
            &g,
            self.mem,
            &pages,
            &mut gp,
            |s| s != GuestPageState::Poisoned,
            |f, len| Op::Unmap {
                ipa: ipa(f),
                size: len * PAGE_SIZE,
            },
        )?;
        let mem = self.mem;
        commit_plans(h, &mut g, mem, hp, gp, tlb, First::Guest, || {
            wipe_private(mem, &pages)
        })?;
        for &(_, state, pfn) in &pages {
            let Some(p) = pfn else { continue };
            if owned(state) {
                h.table.set(p, PageEntry::HOST_OWNED);
            } else if state == GuestPageState::SharedBorrowed {
                drop_share(&mut h.table, p);
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
        let guests = self.guests.read();
        let mut host = self.host.lock();
        let h = &mut *host;
        let e = h.table.get(pfn).ok_or(Errno::Efault)?;
        if e.host() != N {
            return Err(Errno::Eagain);
        }
        let Owner::Guest { handle, gfn } = e.owner() else {
            return Err(Errno::Eperm);
        };
        let gm = slot(&guests, handle).map_err(|_| Errno::Eagain)?;
        let mut g = gm.lock();
        match guest_page(&g, self.mem, gfn)? {
            (GuestPageState::Poisoned, _) => return Err(Errno::Ehwpoison),
            (_, None) => return Err(Errno::Enoent),
            (GuestPageState::Owned, Some(p)) if p == pfn => {}
            _ => return Err(Errno::Eperm),
        }
        let mut hp = Plan::new();
        hp.add(&h.s2, &h.pool, host_map(pfn, 1))?;
        let mut gp = Plan::new();
        let op = Op::Annotate {
            ipa: ipa(gfn),
            size: PAGE_SIZE,
            annotation: poison_annotation(),
        };
        gp.add(&g.s2, &MemView(self.mem), op)?;
        let mem = self.mem;
        commit_plans(h, &mut g, self.mem, hp, gp, tlb, First::Guest, || {
            wipe(mem, pfn, 1)
        })?;
        h.table.set(pfn, PageEntry::HOST_OWNED);
        Ok(())
    }
}

/// Plans guest stage-2 ops for runs of consecutive selected `pages`.
fn plan_guest_runs<M: PhysMem>(
    g: &Guest,
    mem: M,
    pages: &[GuestPageInfo],
    plan: &mut Plan,
    select: impl Fn(GuestPageState) -> bool,
    op: impl Fn(Gfn, u64) -> Op,
) -> Result<(), Errno> {
    let mut run: Option<(Gfn, u64)> = None;
    for &(f, state, _) in pages {
        let take = select(state);
        match run {
            Some((start, len)) if take => run = Some((start, len + 1)),
            Some((start, len)) => {
                plan.add(&g.s2, &MemView(mem), op(start, len))?;
                run = None;
            }
            None if take => run = Some((f, 1)),
            None => {}
        }
    }
    if let Some((start, len)) = run {
        plan.add(&g.s2, &MemView(mem), op(start, len))?;
    }
    Ok(())
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
fn check_guest_empty<M: PhysMem>(g: &Guest, mem: M, gfn: Gfn, n: u64) -> Result<(), Errno> {
    for_each_guest_page(g, mem, gfn, n, |_, state, _| {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Errno::Eperm)
        }
    })
}

/// `EPERM` unless the ownership table says `pfn` belongs to `handle` at
/// `gfn`.
fn check_guest_page_entry(
    table: &OwnershipTable,
    pfn: Pfn,
    handle: GuestHandle,
    gfn: Gfn,
) -> Result<(), Errno> {
    match table.get(pfn).map(PageEntry::owner) {
        Some(Owner::Guest { handle: h, gfn: f }) if h == handle && f == gfn => Ok(()),
        _ => Err(Errno::Eperm),
    }
}

/// The checks of guest share (O/N → SO/SB) and unshare (SO/SB → O/N) for
/// every page: `EHWPOISON` poisoned, `ENOENT` nothing mapped, `EPERM`
/// wrong state.
fn check_share_change<M: PhysMem, P: TablePool>(
    h: &HostMmu<P>,
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
    for i in 0..n {
        let f = Gfn(gfn.0 + i);
        let (state, pfn) = guest_page(g, mem, f)?;
        match (state, pfn) {
            (GuestPageState::Poisoned, _) => return Err(Errno::Ehwpoison),
            (_, None) => return Err(Errno::Enoent),
            (s, Some(p)) => {
                if s != guest_from {
                    return Err(Errno::Eperm);
                }
                check_guest_page_entry(&h.table, p, g.handle, f)?;
                if entry(&h.table, p).host() != host_from {
                    return Err(Errno::Eperm);
                }
            }
        }
    }
    Ok(())
}
