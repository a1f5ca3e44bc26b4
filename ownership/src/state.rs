//! The principals (host, hypervisor, guests), their locks, and guest
//! lifecycle.
//!
//! # Locks
//!
//! | order | lock | protects |
//! |-------|------|----------|
//! | 1 | `host` | the ownership table, the host stage-2 and its table pool |
//! | 2 | `hyp` | the hypervisor's own mappings |
//! | 3 | one per guest slot | whether the slot holds a guest; that guest's stage-2, memcache, pending conversion |
//!
//! A call takes the locks it needs in that order and holds them until it
//! returns; no call holds two guest locks at once. This is pKVM's order
//! (host, then hypervisor, then guest). The guest slots are a fixed array
//! made by [`Ownership::new`], so unlike pKVM's VM table they need no lock
//! of their own: a guest is created or removed under its slot's lock (and
//! the host's), which is what every call on that guest takes anyway. A
//! host-to-guest transition therefore takes two locks, not three.

use crate::errno::Errno;
use crate::mem::{HypMappings, PhysMem, wipe};
use crate::memcache::{Memcache, MemcachePool};
use crate::table::{MemRegion, OwnershipTable, PageEntry};
use crate::transitions::MAX_GUEST_RANGE;
use crate::types::{Gfn, GuestHandle, GuestPageState, Pfn};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use spin::{Mutex, MutexGuard};
use stage2::{
    Annotation, AnnotationType, BlockPolicy, Checked, Ipa, LeafAttrs, Op, PAGE_SIZE, PaRange,
    PageState as S2State, Perms, PhysAddr, Reserved, Stage2, Stage2Config, SwBits, TablePool,
    TlbMaintenance,
};

/// First guest handle (pKVM's `HANDLE_OFFSET`).
pub const HANDLE_OFFSET: u16 = 0x1000;
/// Most guests at once (pKVM's `KVM_MAX_PVMS`).
pub const MAX_GUESTS: usize = 255;
/// Owner id of the hypervisor in host stage-2 annotations (pKVM's).
pub const OWNER_ID_HYP: u8 = 1;
/// Owner id of a guest in host stage-2 annotations (pKVM's).
pub const OWNER_ID_GUEST: u8 = 2;
/// Guest stage-2 annotation: the guest relinquished the page at this IPA.
pub const RELINQUISHED: AnnotationType = match AnnotationType::new(4) {
    Some(t) => t,
    None => AnnotationType::POISONED,
};
/// Spare software bit marking a guest leaf that came from a 2 MiB host
/// share, so a 4 KiB unshare of it is refused with `E2BIG`.
pub const SPARE_BLOCK_SHARE: u8 = 1;

/// How the host maps its RAM: normal write-back, read/write/execute.
pub const HOST_RAM_ATTRS: LeafAttrs = LeafAttrs::normal(Perms::RWX);
/// How the host maps MMIO: device, read/write.
pub const HOST_MMIO_ATTRS: LeafAttrs = LeafAttrs::device(Perms::RW);

/// The attributes of a guest leaf in `state`.
pub(crate) const fn guest_attrs(state: S2State, block_share: bool) -> LeafAttrs {
    let mut a = LeafAttrs::normal(Perms::RWX).with_state(state);
    if block_share {
        a.sw = SwBits {
            state,
            spare: SPARE_BLOCK_SHARE,
        };
    }
    a
}

/// The host stage-2 annotation of a page the hypervisor owns.
pub(crate) fn hyp_annotation() -> Annotation {
    Annotation::new(AnnotationType::DONATION, OWNER_ID_HYP, 0).unwrap_or_else(|| unreachable!())
}

/// The host stage-2 annotation of a page guest `handle` owns. Uniform
/// across the guest's pages, so a 2 MiB donation stays one entry; the gfn
/// lives in the ownership table.
pub(crate) fn guest_annotation(handle: GuestHandle) -> Annotation {
    Annotation::new(AnnotationType::DONATION, OWNER_ID_GUEST, handle.0 as u64)
        .unwrap_or_else(|| unreachable!())
}

pub(crate) fn poison_annotation() -> Annotation {
    Annotation::new(AnnotationType::POISONED, 0, 0).unwrap_or_else(|| unreachable!())
}

pub(crate) fn relinquished_annotation() -> Annotation {
    Annotation::new(RELINQUISHED, 0, 0).unwrap_or_else(|| unreachable!())
}

/// The kind of a guest-requested conversion (DESIGN §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConversionKind {
    /// MEM_SHARE: guest-private pages become shared with the host.
    Share,
    /// MEM_UNSHARE: guest-shared pages become private again.
    Unshare,
}

/// A conversion the guest asked for and the host has not yet completed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Conversion {
    /// Share or unshare.
    pub kind: ConversionKind,
    /// First guest page.
    pub gfn: Gfn,
    /// Pages (1–512).
    pub pages: u64,
}

/// One protected guest's memory state.
pub struct Guest {
    pub(crate) handle: GuestHandle,
    pub(crate) s2: Stage2,
    pub(crate) memcache: Memcache,
    pub(crate) pending: Option<Conversion>,
    pub(crate) dying: bool,
    pub(crate) meta: Option<(Pfn, u64)>,
}

impl Guest {
    /// The guest's handle.
    pub fn handle(&self) -> GuestHandle {
        self.handle
    }

    /// The guest's stage-2 table.
    pub fn stage2(&self) -> &Stage2 {
        &self.s2
    }

    /// Free pages in the memcache.
    pub fn memcache_pages(&self) -> usize {
        self.memcache.len()
    }

    /// Whether teardown has started.
    pub fn is_dying(&self) -> bool {
        self.dying
    }

    /// The pending guest-requested conversion, if any.
    pub fn pending(&self) -> Option<Conversion> {
        self.pending
    }

    /// The metadata pages donated at creation, if any.
    pub fn meta(&self) -> Option<(Pfn, u64)> {
        self.meta
    }

    /// First gfn past the guest's IPA space.
    pub(crate) fn gfn_limit(&self) -> u64 {
        self.s2.config().ipa_limit() / PAGE_SIZE
    }
}

/// The host's memory state: the ownership table and the host stage-2.
pub struct HostMmu<P: TablePool> {
    pub(crate) table: OwnershipTable,
    pub(crate) s2: Stage2,
    pub(crate) pool: P,
    pub(crate) mmio: Vec<(PhysAddr, u64)>,
    /// How the host's RAM is mapped ([`Ownership::new_with_policy`]).
    pub(crate) policy: BlockPolicy,
    /// Room for the runs of one guest range (at most one per page of the
    /// largest range a call may cover), allocated once with the table so
    /// that no transition allocates. Used under the host lock only.
    pub(crate) runs: Vec<GuestRun>,
}

impl<P: TablePool> HostMmu<P> {
    /// The ownership table.
    pub fn table(&self) -> &OwnershipTable {
        &self.table
    }

    /// The host stage-2.
    pub fn stage2(&self) -> &Stage2 {
        &self.s2
    }

    /// The pool the host stage-2 takes table pages from.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// How the host's RAM is mapped: [`BlockPolicy::Largest`] (the
    /// default) or [`BlockPolicy::PagesOnly`].
    pub fn policy(&self) -> BlockPolicy {
        self.policy
    }
}

/// A read-only view of memory for table walks (lookups never allocate).
pub(crate) struct MemView<M: PhysMem>(pub(crate) M);

// SAFETY: never hands out pages; `table_ptr` is `PhysMem::page_ptr`, valid
// for the RAM pages guest tables live in.
unsafe impl<M: PhysMem> TablePool for MemView<M> {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        None
    }
    fn free_page(&mut self, _page: PhysAddr) {}
    fn alloc_root(&mut self, _pages: usize) -> Option<PhysAddr> {
        None
    }
    fn free_root(&mut self, _root: PhysAddr, _pages: usize) {}
    #[inline]
    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64> {
        self.0.page_ptr(table).cast()
    }
}

/// Stage-2 operations planned against one table, with the table pages they
/// need counted before anything changes.
pub(crate) enum Plan<'a, I> {
    /// One op whose check (kept by the caller) commits without walking the
    /// table again.
    One(&'a Checked),
    /// Ops that come from an iterator walked twice, to check and then to
    /// apply, so that the plan never stores them (no allocation).
    Ops {
        /// The ops.
        ops: I,
        /// Table pages they need.
        needed: usize,
    },
}

/// The ops of a plan that has none, or only a checked one.
pub(crate) type NoOps = core::iter::Empty<Op>;

impl<'a, I: Iterator<Item = Op> + Clone> Plan<'a, I> {
    /// Validates every op against the table as it is now and counts its
    /// pages. The ops of one plan touch disjoint pages, so each one's count
    /// on today's table bounds what it needs after the earlier ones ran.
    pub(crate) fn new<P: TablePool + ?Sized>(s2: &Stage2, pool: &P, ops: I) -> Result<Self, Errno> {
        let mut needed = 0;
        for op in ops.clone() {
            needed += s2.check(pool, op).map_err(|_| Errno::Einval)?.pages();
        }
        Ok(Plan::Ops { ops, needed })
    }

    /// Table pages the plan needs.
    pub(crate) fn needed(&self) -> usize {
        match self {
            Plan::One(checked) => checked.pages(),
            Plan::Ops { needed, .. } => *needed,
        }
    }

    /// Applies every op with pages from `reserved`. Cannot fail: every op
    /// was validated and its pages reserved (and nothing changed the table
    /// since the check: the stage-2 generation check would catch it).
    pub(crate) fn apply<P: TablePool + ?Sized, T: TlbMaintenance + ?Sized>(
        &self,
        s2: &mut Stage2,
        reserved: &mut P,
        tlb: &mut T,
    ) {
        match self {
            Plan::One(checked) => {
                let r = s2.apply_checked(reserved, tlb, checked);
                debug_assert!(r.is_ok(), "planned stage-2 op failed: {r:?}");
            }
            Plan::Ops { ops, .. } => {
                for op in ops.clone() {
                    let r = s2.apply(reserved, tlb, op);
                    debug_assert!(r.is_ok(), "planned stage-2 op failed: {r:?}");
                }
            }
        }
    }
}

/// Checks one op. The result stays in the caller's frame ([`Plan::One`]
/// refers to it): moving it around costs more than the check itself.
#[inline(always)]
pub(crate) fn check_one<P: TablePool + ?Sized>(
    s2: &Stage2,
    pool: &P,
    op: Op,
) -> Result<Checked, Errno> {
    s2.check(pool, op).map_err(|_| Errno::Einval)
}

/// [`check_one`] into `out`, a slot in the caller's frame
/// ([`Stage2::check_into`]): for the single-page transitions, where moving
/// the result costs as much as a lock.
#[inline(always)]
pub(crate) fn check_one_into<'a, P: TablePool + ?Sized>(
    s2: &Stage2,
    pool: &P,
    op: Op,
    out: &'a mut Option<Checked>,
) -> Result<&'a Checked, Errno> {
    s2.check_into(pool, op, out).map_err(|_| Errno::Einval)
}

/// The host identity-map op for `n` pages from `pfn`, with the host's
/// mapping `policy`.
pub(crate) fn host_map(pfn: Pfn, n: u64, policy: BlockPolicy) -> Op {
    let pa = PhysAddr(pfn.0 * PAGE_SIZE);
    Op::Map {
        ipa: Ipa(pa.0),
        size: n * PAGE_SIZE,
        pa,
        attrs: HOST_RAM_ATTRS,
        policy,
    }
}

/// The host op removing access to `n` pages from `pfn`, recording `owner`.
pub(crate) fn host_annotate(pfn: Pfn, n: u64, annotation: Annotation) -> Op {
    Op::Annotate {
        ipa: Ipa(pfn.0 * PAGE_SIZE),
        size: n * PAGE_SIZE,
        annotation,
    }
}

/// Where the machine's memory is, for [`Ownership::new`].
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// The CPU's physical address range; the host stage-2 covers it.
    pub pa_range: PaRange,
    /// RAM regions (from the device tree).
    pub ram: &'a [MemRegion],
    /// MMIO regions `(base, size)` the host may access.
    pub mmio: &'a [(PhysAddr, u64)],
    /// Parts of RAM the hypervisor keeps for itself (its carve-out).
    pub hyp: &'a [MemRegion],
}

/// Every page's owner and every principal's stage-2, behind the locks in
/// the module docs.
pub struct Ownership<M: PhysMem, P: TablePool, H: HypMappings> {
    pub(crate) mem: M,
    /// [`MAX_GUESTS`] slots, slot `i` for handle `HANDLE_OFFSET + i`.
    pub(crate) guests: Box<[Slot]>,
    pub(crate) host: Mutex<HostMmu<P>>,
    pub(crate) hyp: Mutex<H>,
}

impl<M: PhysMem, P: TablePool, H: HypMappings> Ownership<M, P, H> {
    /// Sets up the table over `layout.ram` (all host-owned), the host
    /// stage-2 as an identity map of RAM and MMIO with the largest blocks,
    /// and the hypervisor carve-out owned by the hypervisor and absent from
    /// the host stage-2.
    pub fn new<T: TlbMaintenance + ?Sized>(
        layout: Layout<'_>,
        mem: M,
        pool: P,
        hyp: H,
        tlb: &mut T,
    ) -> Result<Self, Errno> {
        Self::new_with_policy(layout, BlockPolicy::Largest, mem, pool, hyp, tlb)
    }

    /// [`new`](Self::new), with the host's RAM mapped by `policy` for the
    /// host's whole life: [`BlockPolicy::Largest`] (blocks wherever they
    /// fit; pages coming back merge into blocks again) or
    /// [`BlockPolicy::PagesOnly`] (4 KiB pages only, never merged: costs
    /// a level-3 table per 2 MiB of RAM, 2 MiB of tables per GiB, and on
    /// hardware the TLB reach of 4 KiB entries; it exists for emulators
    /// whose TLB handles stage-2 blocks badly, see el2's `el2.host_map`
    /// boot option). MMIO is mapped with blocks either way.
    pub fn new_with_policy<T: TlbMaintenance + ?Sized>(
        layout: Layout<'_>,
        policy: BlockPolicy,
        mem: M,
        mut pool: P,
        mut hyp: H,
        tlb: &mut T,
    ) -> Result<Self, Errno> {
        let mut table = OwnershipTable::new(layout.ram)?;
        let mut guests = Vec::new();
        guests
            .try_reserve_exact(MAX_GUESTS)
            .map_err(|_| Errno::Enomem)?;
        guests.resize_with(MAX_GUESTS, || Mutex::new(None));
        let mut runs = Vec::new();
        runs.try_reserve_exact(MAX_GUEST_RANGE as usize)
            .map_err(|_| Errno::Enomem)?;
        let bits = layout.pa_range.bits();
        let config = Stage2Config::new(bits, layout.pa_range).map_err(|_| Errno::Einval)?;
        let mut s2 = Stage2::new(config, 0, &mut pool).map_err(|_| Errno::Enomem)?;
        let mut mmio = Vec::new();
        mmio.try_reserve(layout.mmio.len())
            .map_err(|_| Errno::Enomem)?;
        for &(base, size) in layout.mmio {
            let op = Op::Map {
                ipa: Ipa(base.0),
                size,
                pa: base,
                attrs: HOST_MMIO_ATTRS,
                policy: BlockPolicy::Largest,
            };
            s2.apply(&mut pool, tlb, op).map_err(Errno::from)?;
            mmio.push((base, size));
        }
        for r in layout.ram {
            s2.apply(&mut pool, tlb, host_map(r.base, r.pages, policy))
                .map_err(Errno::from)?;
        }
        for r in layout.hyp {
            if !table.is_ram(r.base, r.pages) {
                return Err(Errno::Einval);
            }
            s2.apply(
                &mut pool,
                tlb,
                host_annotate(r.base, r.pages, hyp_annotation()),
            )
            .map_err(Errno::from)?;
            for i in 0..r.pages {
                table.set(Pfn(r.base.0 + i), PageEntry::HYP_OWNED);
            }
            hyp.map(r.base, r.pages);
        }
        Ok(Ownership {
            mem,
            guests: guests.into_boxed_slice(),
            host: Mutex::new(HostMmu {
                table,
                s2,
                pool,
                mmio,
                policy,
                runs,
            }),
            hyp: Mutex::new(hyp),
        })
    }

    /// Runs `f` with the host state locked.
    pub fn with_host<R>(&self, f: impl FnOnce(&HostMmu<P>) -> R) -> R {
        f(&self.host.lock())
    }

    /// Runs `f` with the hypervisor mappings locked.
    pub fn with_hyp<R>(&self, f: impl FnOnce(&H) -> R) -> R {
        f(&self.hyp.lock())
    }

    /// Runs `f` with guest `handle` locked.
    pub fn with_guest<R>(
        &self,
        handle: GuestHandle,
        f: impl FnOnce(&Guest) -> R,
    ) -> Result<R, Errno> {
        let g = self.lock_guest(handle)?;
        Ok(f(&g))
    }

    /// The handles of every guest.
    pub fn guest_handles(&self) -> Vec<GuestHandle> {
        self.guests
            .iter()
            .filter_map(|s| s.lock().as_ref().map(|g| g.handle))
            .collect()
    }

    /// Locks guest `handle`'s slot: the guest, or `EINVAL` if there is
    /// none. (Lock order: after `host` and `hyp` when a call takes them.)
    #[inline]
    pub(crate) fn lock_guest(&self, handle: GuestHandle) -> Result<GuestGuard<'_>, Errno> {
        let slot = index(handle)
            .and_then(|i| self.guests.get(i))
            .ok_or(Errno::Einval)?
            .lock();
        if slot.is_none() {
            return Err(Errno::Einval);
        }
        Ok(GuestGuard(slot))
    }

    /// The memory-access handle.
    pub fn mem(&self) -> M {
        self.mem
    }

    /// The ownership entry of `pfn`, if it is RAM.
    pub fn page(&self, pfn: Pfn) -> Option<PageEntry> {
        self.host.lock().table.get(pfn)
    }

    /// How guest `handle` sees `gfn`, and the page it maps there.
    pub fn guest_state(
        &self,
        handle: GuestHandle,
        gfn: Gfn,
    ) -> Result<(GuestPageState, Option<Pfn>), Errno> {
        let g = self.lock_guest(handle)?;
        guest_page(&g, self.mem, gfn)
    }

    /// The leaf of guest `handle`'s stage-2 translating `gfn` (for tests
    /// and debugging: which level maps it, with which descriptor).
    pub fn guest_leaf(&self, handle: GuestHandle, gfn: Gfn) -> Result<stage2::Leaf, Errno> {
        let g = self.lock_guest(handle)?;
        if gfn.0 >= g.gfn_limit() {
            return Err(Errno::Einval);
        }
        g.s2.lookup(&MemView(self.mem), Ipa(gfn.0 * PAGE_SIZE))
            .map_err(|_| Errno::Einval)
    }

    /// Creates a guest with an `ipa_bits` stage-2 whose root is the
    /// `root_pages` (see [`Stage2Config::root_pages`]) host pages from
    /// `pgd`, which the host donates (they must be host-owned and aligned
    /// to the root's size). Returns the new guest's handle.
    pub fn create_guest<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        ipa_bits: u8,
        pgd: Pfn,
    ) -> Result<GuestHandle, Errno> {
        self.create_guest_with_meta(tlb, ipa_bits, pgd, None)
    }

    /// [`create_guest`](Self::create_guest), also donating `meta` (`(first
    /// page, pages)`) to the hypervisor in the same transaction, for the
    /// guest's metadata at EL2. The pages are zeroed, stay the hypervisor's
    /// for the guest's life, and go back to the host, zeroed, with the rest
    /// at [`finish_teardown`](Self::finish_teardown).
    pub fn create_guest_with_meta<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        ipa_bits: u8,
        pgd: Pfn,
        meta: Option<(Pfn, u64)>,
    ) -> Result<GuestHandle, Errno> {
        let config = Stage2Config::new(ipa_bits, PaRange::Bits48).map_err(|_| Errno::Einval)?;
        let pages = config.root_pages() as u64;
        if !pgd.0.is_multiple_of(pages) {
            return Err(Errno::Einval);
        }
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        // The first free slot, kept locked until the guest is in it.
        let Some((idx, mut slot)) = self
            .guests
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.lock()))
            .find(|(_, s)| s.is_none())
        else {
            return Err(Errno::Ebusy);
        };
        let h = &mut *host;
        check_host_owned(&h.table, pgd, pages)?;
        if let Some((m, n)) = meta {
            check_host_owned(&h.table, m, n)?;
            let overlaps = m.0 < pgd.0 + pages && pgd.0 < m.0 + n;
            if overlaps {
                return Err(Errno::Einval);
            }
        }
        let ops = core::iter::once((pgd, pages))
            .chain(meta)
            .map(|(first, n)| host_annotate(first, n, hyp_annotation()));
        let plan = Plan::new(&h.s2, &h.pool, ops)?;
        let mut reserved = Reserved::new(&mut h.pool, plan.needed()).map_err(|_| Errno::Enomem)?;
        // Everything is checked: commit.
        plan.apply(&mut h.s2, &mut reserved, tlb);
        drop(reserved);
        for (first, n) in core::iter::once((pgd, pages)).chain(meta) {
            for i in 0..n {
                h.table.set(Pfn(first.0 + i), PageEntry::HYP_OWNED);
            }
            hyp.map(first, n);
            wipe(self.mem, first, n);
        }
        let root = PhysAddr(pgd.0 * PAGE_SIZE);
        let mut memcache = Memcache::new();
        memcache.set_root(root, pages as usize);
        let vmid = idx as u16 + 1;
        let s2 = Stage2::new(
            config,
            vmid,
            &mut MemcachePool {
                cache: &mut memcache,
                mem: self.mem,
            },
        )
        .map_err(|_| Errno::Einval)?;
        let handle = GuestHandle(HANDLE_OFFSET + idx as u16);
        *slot = Some(Guest {
            handle,
            s2,
            memcache,
            pending: None,
            dying: false,
            meta,
        });
        Ok(handle)
    }

    /// The host donates `n` (1–512) pages from `pfn` to the hypervisor for
    /// guest `handle`'s page tables.
    pub fn topup_memcache<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
        pfn: Pfn,
        n: u64,
    ) -> Result<(), Errno> {
        if n == 0 || n > crate::types::BLOCK_PAGES {
            return Err(Errno::Einval);
        }
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let mut g = self.lock_guest(handle)?;
        let h = &mut *host;
        check_host_owned(&h.table, pfn, n)?;
        let checked = check_one(&h.s2, &h.pool, host_annotate(pfn, n, hyp_annotation()))?;
        let plan = Plan::<NoOps>::One(&checked);
        let mut reserved = Reserved::new(&mut h.pool, plan.needed()).map_err(|_| Errno::Enomem)?;
        plan.apply(&mut h.s2, &mut reserved, tlb);
        drop(reserved);
        hyp.map(pfn, n);
        for i in 0..n {
            let p = Pfn(pfn.0 + i);
            h.table.set(p, PageEntry::HYP_OWNED);
            g.memcache.push(self.mem, PhysAddr(p.0 * PAGE_SIZE));
        }
        Ok(())
    }

    /// Starts guest `handle`'s teardown: it will not run again, and the
    /// host may reclaim its pages.
    pub fn start_teardown(&self, handle: GuestHandle) -> Result<(), Errno> {
        let mut g = self.lock_guest(handle)?;
        if g.dying {
            return Err(Errno::Einval);
        }
        g.dying = true;
        Ok(())
    }

    /// Finishes guest `handle`'s teardown once the host has reclaimed every
    /// page: destroys its stage-2 and gives its table pages, memcache and
    /// root back to the host, zeroed. `EBUSY` while any page is still
    /// mapped in the guest; `ENOMEM` (nothing changed) if the host stage-2
    /// pool cannot take the pages back.
    pub fn finish_teardown<T: TlbMaintenance + ?Sized>(
        &self,
        tlb: &mut T,
        handle: GuestHandle,
    ) -> Result<(), Errno> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let mut slot = self.lock_guest(handle)?;
        let h = &mut *host;
        // Every page the guest's memory state holds, as runs of frames.
        let runs = {
            let g = &*slot;
            if !g.dying {
                return Err(Errno::Einval);
            }
            if g.s2.stats(&MemView(self.mem)).total_leaves() != 0 {
                return Err(Errno::Ebusy);
            }
            let mut pfns: Vec<u64> = Vec::new();
            let meta_pages = g.meta.map_or(0, |(_, n)| n as usize);
            let total =
                g.memcache.len() + g.s2.table_pages() + g.s2.config().root_pages() + meta_pages;
            pfns.try_reserve_exact(total).map_err(|_| Errno::Enomem)?;
            g.memcache
                .for_each(self.mem, |p| pfns.push(p.0 / PAGE_SIZE));
            g.s2.for_each_table_page(&MemView(self.mem), |p| pfns.push(p.0 / PAGE_SIZE));
            if let Some((root, pages)) = g.memcache.root() {
                pfns.extend((0..pages as u64).map(|i| root.0 / PAGE_SIZE + i));
            }
            if let Some((m, n)) = g.meta {
                pfns.extend((0..n).map(|i| m.0 + i));
            }
            pfns.sort_unstable();
            runs_of(&pfns)?
        };
        let plan = Plan::new(
            &h.s2,
            &h.pool,
            runs.iter().map(|&(pfn, n)| host_map(pfn, n, h.policy)),
        )?;
        let mut reserved = Reserved::new(&mut h.pool, plan.needed()).map_err(|_| Errno::Enomem)?;
        // Checked: commit.
        let Some(mut g) = slot.0.take() else {
            return Err(Errno::Einval);
        };
        g.s2.destroy(
            &mut MemcachePool {
                cache: &mut g.memcache,
                mem: self.mem,
            },
            tlb,
        );
        for &(pfn, n) in &runs {
            hyp.unmap(pfn, n);
            wipe(self.mem, pfn, n);
            for i in 0..n {
                h.table.set(Pfn(pfn.0 + i), PageEntry::HOST_OWNED);
            }
        }
        plan.apply(&mut h.s2, &mut reserved, tlb);
        Ok(())
    }
}

/// Coalesces sorted frame numbers into `(first, count)` runs.
pub(crate) fn runs_of(pfns: &[u64]) -> Result<Vec<(Pfn, u64)>, Errno> {
    let mut runs: Vec<(Pfn, u64)> = Vec::new();
    for &p in pfns {
        match runs.last_mut() {
            Some((start, n)) if start.0 + *n == p => *n += 1,
            _ => {
                runs.try_reserve(1).map_err(|_| Errno::Enomem)?;
                runs.push((Pfn(p), 1));
            }
        }
    }
    Ok(runs)
}

/// The slot index of `handle`.
pub(crate) fn index(handle: GuestHandle) -> Option<usize> {
    let i = handle.0.checked_sub(HANDLE_OFFSET)? as usize;
    (i < MAX_GUESTS).then_some(i)
}

/// One guest slot: empty, or a live guest.
pub(crate) type Slot = Mutex<Option<Guest>>;

/// A locked slot holding a live guest ([`Ownership::lock_guest`]).
pub(crate) struct GuestGuard<'a>(pub(crate) MutexGuard<'a, Option<Guest>>);

impl Deref for GuestGuard<'_> {
    type Target = Guest;

    #[inline]
    fn deref(&self) -> &Guest {
        // Made only over a live slot, which is emptied only through this
        // guard (`finish_teardown`, which drops it right after).
        self.0.as_ref().expect("guard over a live guest slot")
    }
}

impl DerefMut for GuestGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Guest {
        self.0.as_mut().expect("guard over a live guest slot")
    }
}

/// `EINVAL` unless `[pfn, pfn + n)` is RAM in one region; `EPERM` unless
/// every page's entry is `expected`.
pub(crate) fn check_entries(
    table: &OwnershipTable,
    pfn: Pfn,
    n: u64,
    expected: PageEntry,
) -> Result<(), Errno> {
    let entries = table.range(pfn, n).filter(|_| n > 0).ok_or(Errno::Einval)?;
    if entries.iter().all(|&e| e == expected) {
        Ok(())
    } else {
        Err(Errno::Eperm)
    }
}

/// `EINVAL` unless `[pfn, pfn + n)` is RAM in one region; `EPERM` unless
/// every page is host-owned and not shared.
pub(crate) fn check_host_owned(table: &OwnershipTable, pfn: Pfn, n: u64) -> Result<(), Errno> {
    check_entries(table, pfn, n, PageEntry::HOST_OWNED)
}

/// Pages of a guest range that one entry of the guest stage-2 covers:
/// `pages` pages from `gfn`, all in `state`, mapped from `pfn` onward if
/// mapped. A 2 MiB block is one run, not 512 pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct GuestRun {
    pub(crate) gfn: Gfn,
    pub(crate) pages: u64,
    pub(crate) state: GuestPageState,
    pub(crate) pfn: Option<Pfn>,
}

/// The guest page state a stage-2 entry gives, `None` for a valid leaf
/// without a page state (which a guest table never holds).
#[inline]
pub(crate) fn leaf_state(leaf: &stage2::Leaf) -> Option<GuestPageState> {
    if leaf.is_valid() {
        match leaf.descriptor.page_state() {
            Some(S2State::Owned) => Some(GuestPageState::Owned),
            Some(S2State::SharedOwned) => Some(GuestPageState::SharedOwned),
            Some(S2State::SharedBorrowed) => Some(GuestPageState::SharedBorrowed),
            None => None,
        }
    } else {
        Some(match leaf.annotation() {
            Some(a) if a.kind() == AnnotationType::POISONED => GuestPageState::Poisoned,
            Some(a) if a.kind() == RELINQUISHED => GuestPageState::Relinquished,
            _ => GuestPageState::NoPage,
        })
    }
}

/// Calls `f` with every run of `[gfn, gfn + n)` in order (one per entry of
/// the guest stage-2, from one walk), stopping at the first error `f`
/// returns.
pub(crate) fn for_each_guest_run<M: PhysMem>(
    g: &Guest,
    mem: M,
    gfn: Gfn,
    n: u64,
    mut f: impl FnMut(GuestRun) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let end = gfn.0.checked_add(n).ok_or(Errno::Einval)?;
    if n == 0 || end > g.gfn_limit() {
        return Err(Errno::Einval);
    }
    let mut result = Ok(());
    g.s2.walk(
        &MemView(mem),
        Ipa(gfn.0 * PAGE_SIZE),
        n * PAGE_SIZE,
        |leaf| {
            if result.is_err() {
                return;
            }
            let Some(state) = leaf_state(leaf) else {
                result = Err(Errno::Einval);
                return;
            };
            let first = (leaf.base.0 / PAGE_SIZE).max(gfn.0);
            let last = ((leaf.base.0 + leaf.size()) / PAGE_SIZE).min(end);
            let pfn = leaf.output_for(Ipa(first * PAGE_SIZE)).map(Pfn::containing);
            result = f(GuestRun {
                gfn: Gfn(first),
                pages: last - first,
                state,
                pfn,
            });
        },
    )
    .map_err(|_| Errno::Einval)?;
    result
}

/// The runs of `[gfn, gfn + n)` (`n` at most [`MAX_GUEST_RANGE`]), into
/// `runs`, whose room was set aside when the table was built: this never
/// allocates.
pub(crate) fn collect_runs<M: PhysMem>(
    g: &Guest,
    mem: M,
    gfn: Gfn,
    n: u64,
    runs: &mut Vec<GuestRun>,
) -> Result<(), Errno> {
    runs.clear();
    if n > MAX_GUEST_RANGE {
        return Err(Errno::Einval);
    }
    for_each_guest_run(g, mem, gfn, n, |run| {
        // At most one run per page, so the room always suffices.
        if runs.len() == runs.capacity() {
            return Err(Errno::Enomem);
        }
        runs.push(run);
        Ok(())
    })
}

/// How `g` sees `gfn`, and the page mapped there.
pub(crate) fn guest_page<M: PhysMem>(
    g: &Guest,
    mem: M,
    gfn: Gfn,
) -> Result<(GuestPageState, Option<Pfn>), Errno> {
    if gfn.0 >= g.gfn_limit() {
        return Err(Errno::Einval);
    }
    let ipa = Ipa(gfn.0 * PAGE_SIZE);
    let leaf = g.s2.lookup(&MemView(mem), ipa).map_err(|_| Errno::Einval)?;
    let state = leaf_state(&leaf).ok_or(Errno::Einval)?;
    Ok((state, leaf.output_for(ipa).map(Pfn::containing)))
}
