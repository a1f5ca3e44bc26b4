//! The VM layer a host kernel provides its VMM, over the hypervisor's host
//! calls: guest_memfds, memslots bound to them, in-place conversion, and a
//! vCPU run loop that resolves stage-2 faults itself and surfaces only the
//! exits a VMM sees. Its API is shaped like crosvm's hypervisor traits
//! ([`Vm`], [`Vcpu`], [`VcpuExit`]).
//!
//! # Rules
//!
//! - **The owner decides** (DESIGN §5): the VMM converts pages the host
//!   owns at will; a page the guest owns converts only when the guest asked
//!   for exactly that (its MEM_SHARE/MEM_UNSHARE became a
//!   [`VcpuExit::MemoryFault`]); anything else is `EPERM`.
//! - Conversions are in place and keep contents; shared→private fails with
//!   `EAGAIN` and `error_offset` while the host still pins a page.
//! - Guest stage-2 faults inside a memslot are resolved here: private
//!   offsets are donated, shared offsets lent, a whole 2 MiB at a time when
//!   the backing folio is 2 MiB and the range has one attribute. Faults
//!   outside every memslot are MMIO exits.
//! - If the VMM runs a vCPU again without converting what its guest asked
//!   for, the request is refused: the guest's call returns -3.

use crate::abi::{self, Exit, HostCall};
use crate::gmem::{GuestMapping, GuestMemfd, HUGE_PAGES, MmapError, PAGE};
use crate::hypervisor::{CallError, Hypervisor};
use crate::kvm::{
    KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMORY_EXIT_FLAG_PRIVATE,
    KvmCreateGuestMemfd, KvmMemoryAttributes2, KvmUserspaceMemoryRegion2, errno,
};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The host's physical page allocator (what backs guest_memfd folios,
/// guest roots, metadata and memcaches).
pub trait HostPages {
    /// `2^order` contiguous, naturally aligned pages, or `None`.
    fn alloc(&mut self, order: u32) -> Option<u64>;
    /// Returns `2^order` pages from `pfn`.
    fn free(&mut self, pfn: u64, order: u32);
}

/// A guest_memfd of a VM.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub struct GmemId(pub u32);

/// What a vCPU run returns to the VMM (crosvm's `VcpuExit` shape).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcpuExit {
    /// The guest asked to convert `[gpa, gpa + size)` (`flags` has
    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE` for shared→private): convert it with
    /// [`Vm::set_memory_attributes`] and run again, or just run again to
    /// refuse.
    MemoryFault {
        /// Guest physical address.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// `KVM_MEMORY_EXIT_FLAG_*`.
        flags: u64,
    },
    /// An access outside every memslot: emulate it; for a read, give the
    /// value with [`Vcpu::set_mmio_data`] before running again.
    Mmio {
        /// Guest physical address.
        address: u64,
        /// Bytes.
        size: u8,
        /// A write.
        write: bool,
        /// The data a write stores.
        data: u64,
    },
    /// A hypercall for the VMM (PSCI `CPU_ON`, already checked by the
    /// hypervisor: answer 0 to start the target vCPU, or a PSCI error);
    /// answer it with [`Vcpu::set_hypercall_result`] before running again.
    Hypercall {
        /// SMCCC function id.
        id: u64,
        /// x1..x3.
        args: [u64; 3],
    },
    /// The guest asked to power off (0) or reset (1).
    SystemEvent(u64),
    /// The guest gave `[gpa, gpa + size)` back (already wiped and the
    /// host's): punch that range of its guest_memfd.
    Relinquished {
        /// Guest physical address.
        gpa: u64,
        /// Bytes.
        size: u64,
    },
    /// The guest waits for an interrupt (KVM would block in the kernel).
    Wfi,
    /// The hypervisor stopped the vCPU on a trap it cannot handle.
    InternalError {
        /// The trap's exception class (ESR_EL2.EC); nothing else of a
        /// protected guest's state is revealed.
        ec: u64,
    },
    /// A host interrupt ended the run (KVM would handle it in the kernel
    /// and go on; a VMM that schedules vCPUs itself gets control back).
    Interrupted,
    /// The vCPU is off (not started yet, or it called PSCI `CPU_OFF`).
    PoweredOff,
}

/// crosvm's `Vm` trait, the parts guest_memfd needs.
pub trait Vm {
    /// `KVM_CREATE_GUEST_MEMFD`.
    fn create_guest_memfd(&mut self, args: &KvmCreateGuestMemfd) -> Result<GmemId, i32>;
    /// `KVM_SET_USER_MEMORY_REGION2` with `guest_memfd` naming a
    /// [`GmemId`].
    fn set_memory_region(&mut self, region: &KvmUserspaceMemoryRegion2) -> Result<(), i32>;
    /// `KVM_SET_MEMORY_ATTRIBUTES2` on a guest_memfd: writes
    /// `error_offset` on failure.
    fn set_memory_attributes(
        &mut self,
        gmem: GmemId,
        attrs: &mut KvmMemoryAttributes2,
    ) -> Result<(), i32>;
}

/// crosvm's `Vcpu` trait, the parts that matter here.
pub trait Vcpu {
    /// Runs until an exit the VMM must see.
    fn run(&mut self) -> Result<VcpuExit, i32>;
    /// The value an MMIO read returns.
    fn set_mmio_data(&mut self, value: u64);
    /// The guest's x0 and x1 after a hypercall exit.
    fn set_hypercall_result(&mut self, x0: u64, x1: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Memslot {
    gpa: u64,
    size: u64,
    gmem: GmemId,
    offset: u64,
}

/// A conversion the guest asked for and the VMM has not done yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    gfn: u64,
    pages: u64,
    to_private: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct VcpuSlot {
    /// Values completing the last exit.
    complete: Option<[u64; 2]>,
    /// The last exit can take values.
    completable: bool,
}

fn call_err(e: CallError) -> i32 {
    match e {
        CallError::NotSupported => errno::EINVAL,
        CallError::Errno(n) => i32::try_from(n).unwrap_or(errno::EINVAL),
    }
}

/// A protected VM as the host kernel sees it.
pub struct KvmVm<H: Hypervisor, A: HostPages> {
    hv: H,
    pages: A,
    handle: u64,
    pgd: u64,
    meta: u64,
    gmems: Vec<Option<GuestMemfd>>,
    slots: BTreeMap<u32, Memslot>,
    vcpus: Vec<VcpuSlot>,
    /// The guest's pending conversion request, and the vCPU that made it.
    request: Option<(usize, Request)>,
    /// Pages the host gave the hypervisor for this VM's tables.
    memcache: Vec<u64>,
    /// Back guest memory with 2 MiB folios where possible (on by default).
    huge_folios: bool,
    /// The last guest access a run could not resolve or emulate.
    unhandled: Option<UnhandledAccess>,
}

/// A guest access outside every memslot that cannot be emulated as MMIO
/// (no valid syndrome: a load/store pair, a write-back addressing mode, an
/// instruction fetch): the run that met it failed with `EFAULT`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnhandledAccess {
    /// Guest physical address.
    pub gpa: u64,
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub exec: bool,
}

/// A page that belonged to the guest when its VM was torn down, handed to
/// [`KvmVm::destroy_checked`]'s callback after `TeardownFinish` and
/// before the page is freed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReclaimedPage {
    /// The guest frame it was mapped at.
    pub gfn: u64,
    /// The host frame.
    pub pfn: u64,
    /// It was private to the guest (donated, its guest_memfd attribute
    /// private): the hypervisor must have zeroed it. Pages the guest
    /// shared back and pages the host lent keep their contents.
    pub private: bool,
}

/// `KVM_USER_MEM_SLOTS`: slot ids must be below it.
pub const KVM_USER_MEM_SLOTS: u32 = 32764;

/// Allocation order of a VM's metadata ([`abi::VM_META_PAGES`] pages).
const META_ORDER: u32 = abi::VM_META_PAGES.trailing_zeros();
const _: () = assert!(1 << META_ORDER == abi::VM_META_PAGES);

/// Pages given to the memcache when the hypervisor runs out.
pub const MEMCACHE_BATCH: u64 = 4;

impl<H: Hypervisor, A: HostPages> KvmVm<H, A> {
    /// Creates a protected VM with `vcpus` vCPUs (entry points set later
    /// with [`KvmVm::init_vcpu`]) and a 40-bit IPA space.
    pub fn new(mut hv: H, mut pages: A, vcpus: usize) -> Result<Self, i32> {
        // A 40-bit stage-2 has a 2-page concatenated root.
        let pgd = pages.alloc(1).ok_or(errno::ENOMEM)?;
        let Some(meta) = pages.alloc(META_ORDER) else {
            pages.free(pgd, 1);
            return Err(errno::ENOMEM);
        };
        match hv.call(HostCall::VmCreate, &[40, pgd, meta, vcpus as u64]) {
            Ok(v) => Ok(KvmVm {
                hv,
                pages,
                handle: v[0],
                pgd,
                meta,
                gmems: Vec::new(),
                slots: BTreeMap::new(),
                vcpus: alloc::vec![VcpuSlot::default(); vcpus],
                request: None,
                memcache: Vec::new(),
                huge_folios: true,
                unhandled: None,
            }),
            Err(e) => {
                pages.free(pgd, 1);
                pages.free(meta, META_ORDER);
                Err(call_err(e))
            }
        }
    }

    /// The hypervisor's handle of this VM.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// The conduit (for tests and debugging).
    pub fn hypervisor(&mut self) -> &mut H {
        &mut self.hv
    }

    /// Whether guest memory may be backed by 2 MiB folios (and mapped
    /// into the guest as 2 MiB blocks). On by default; off, every folio is
    /// one 4 KiB page ("small pages"). Set it before the guest touches
    /// memory: folios already allocated keep their size.
    pub fn set_huge_folios(&mut self, on: bool) {
        self.huge_folios = on;
    }

    /// Whether 2 MiB folios are allowed ([`KvmVm::set_huge_folios`]).
    pub fn huge_folios(&self) -> bool {
        self.huge_folios
    }

    /// The access that made the last failed run fail with `EFAULT`, if
    /// that is why it failed.
    pub fn unhandled_access(&self) -> Option<UnhandledAccess> {
        self.unhandled
    }

    /// The guest_memfd `id`.
    pub fn gmem(&self, id: GmemId) -> Option<&GuestMemfd> {
        self.gmems.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Sets vCPU `index`'s entry point and x0.
    pub fn init_vcpu(&mut self, index: usize, entry: u64, x0: u64) -> Result<(), i32> {
        self.hv
            .call(HostCall::VcpuInit, &[self.handle, index as u64, entry, x0])
            .map(|_| ())
            .map_err(call_err)
    }

    /// A [`Vcpu`] handle for vCPU `index`.
    pub fn vcpu(&mut self, index: usize) -> KvmVcpu<'_, H, A> {
        KvmVcpu { vm: self, index }
    }

    fn gmem_mut(&mut self, id: GmemId) -> Result<&mut GuestMemfd, i32> {
        self.gmems
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(errno::EBADF)
    }

    /// Gives the hypervisor `n` more pages for the VM's stage-2 tables.
    fn topup(&mut self, n: u64) -> Result<(), i32> {
        for _ in 0..n {
            let pfn = self.pages.alloc(0).ok_or(errno::ENOMEM)?;
            if let Err(e) = self
                .hv
                .call(HostCall::MemcacheTopup, &[self.handle, pfn, 1])
            {
                self.pages.free(pfn, 0);
                return Err(call_err(e));
            }
            self.memcache.push(pfn);
        }
        Ok(())
    }

    /// A host call that tops the memcache up and retries on `ENOMEM`.
    fn call_with_memcache(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], i32> {
        for _ in 0..8 {
            match self.hv.call(call, args) {
                Err(CallError::Errno(n)) if n == abi::errno::ENOMEM => {
                    self.topup(MEMCACHE_BATCH)?
                }
                r => return r.map_err(call_err),
            }
        }
        Err(errno::ENOMEM)
    }

    /// Zeroes a freshly allocated folio through the host's mapping (KVM
    /// zeroes a page once, when it is first handed out).
    fn zero(&mut self, pfn: u64, pages: u64) -> Result<(), i32> {
        static ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
        for i in 0..pages {
            self.hv
                .write((pfn + i) * PAGE, &ZEROS)
                .map_err(|_| errno::EFAULT)?;
        }
        Ok(())
    }

    /// Allocates backing for file page `page` (a 2 MiB folio when `huge`
    /// is possible), zeroed once.
    fn back(&mut self, id: GmemId, page: u64, huge: bool) -> Result<u64, i32> {
        if let Some(pfn) = self.gmem_mut(id)?.pfn(page) {
            return Ok(pfn);
        }
        let head = page - page % HUGE_PAGES;
        let g = self.gmem_mut(id)?;
        let range_free = head + HUGE_PAGES <= g.pages()
            && g.folios.range(head..head + HUGE_PAGES).next().is_none();
        if huge
            && range_free
            && let Some(pfn) = self.pages.alloc(9)
        {
            self.zero(pfn, HUGE_PAGES)?;
            self.gmem_mut(id)?.folios.insert(
                head,
                crate::gmem::Folio {
                    pfn,
                    order: 9,
                    split_from: None,
                },
            );
            return Ok(pfn + page - head);
        }
        let pfn = self.pages.alloc(0).ok_or(errno::ENOMEM)?;
        self.zero(pfn, 1)?;
        self.gmem_mut(id)?.folios.insert(
            page,
            crate::gmem::Folio {
                pfn,
                order: 0,
                split_from: None,
            },
        );
        Ok(pfn)
    }

    /// The memslot holding `gpa`: `(slot, file page)`.
    fn lookup(&self, gpa: u64) -> Option<(Memslot, u64)> {
        self.slots
            .values()
            .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
            .map(|s| (*s, (s.offset + (gpa - s.gpa)) / PAGE))
    }

    /// Resolves a guest stage-2 fault at `gpa` inside `slot`.
    fn fault_in(&mut self, slot: Memslot, page: u64, gpa: u64) -> Result<(), i32> {
        let gfn = gpa / PAGE;
        let huge_folios = self.huge_folios;
        let g = self.gmem_mut(slot.gmem)?;
        if g.guest.contains_key(&page) {
            return Ok(());
        }
        let private = g.is_private(page);
        // A whole 2 MiB at once when both spaces line up, the slot covers
        // it, it has one attribute, nothing in it is mapped yet, and the
        // backing is (or can be) one 2 MiB folio.
        let head = page - page % HUGE_PAGES;
        let ghead = gfn - gfn % HUGE_PAGES;
        let slot_first = slot.offset / PAGE;
        let slot_end = slot_first + slot.size / PAGE;
        let block_ok = huge_folios
            && gfn % HUGE_PAGES == page % HUGE_PAGES
            && head >= slot_first
            && head + HUGE_PAGES <= slot_end
            && g.attrs.uniform(head, head + HUGE_PAGES).is_some()
            && g.guest.range(head..head + HUGE_PAGES).next().is_none()
            && match g.frame(head) {
                Some((_, f)) => f.order == 9,
                None => g.folios.range(head..head + HUGE_PAGES).next().is_none(),
            };
        let call = if private {
            HostCall::DonateGuest
        } else {
            HostCall::ShareGuest
        };
        if block_ok {
            let pfn = self.back(slot.gmem, head, true)?;
            let huge = self
                .gmem_mut(slot.gmem)?
                .frame(head)
                .is_some_and(|(_, f)| f.order == 9);
            if huge {
                self.call_with_memcache(call, &[self.handle, pfn, ghead, HUGE_PAGES])?;
                let g = self.gmem_mut(slot.gmem)?;
                for i in 0..HUGE_PAGES {
                    let m = if private {
                        GuestMapping::Donated {
                            gfn: ghead + i,
                            block: true,
                        }
                    } else {
                        GuestMapping::Lent {
                            gfn: ghead + i,
                            block: true,
                        }
                    };
                    g.guest.insert(head + i, m);
                }
                return Ok(());
            }
        }
        let pfn = self.back(slot.gmem, page, false)?;
        self.call_with_memcache(call, &[self.handle, pfn, gfn, 1])?;
        let m = if private {
            GuestMapping::Donated { gfn, block: false }
        } else {
            GuestMapping::Lent { gfn, block: false }
        };
        self.gmem_mut(slot.gmem)?.guest.insert(page, m);
        Ok(())
    }

    /// The VMM reads its guest_memfd through the mmap.
    pub fn gmem_read(&mut self, id: GmemId, offset: u64, buf: &mut [u8]) -> Result<(), MmapError> {
        self.gmem_access(id, offset, buf.len() as u64, |hv, pa, range| {
            hv.read(pa, &mut buf[range])
        })
    }

    /// The VMM writes its guest_memfd through the mmap.
    pub fn gmem_write(&mut self, id: GmemId, offset: u64, data: &[u8]) -> Result<(), MmapError> {
        self.gmem_access(id, offset, data.len() as u64, |hv, pa, range| {
            hv.write(pa, &data[range])
        })
    }

    fn gmem_access(
        &mut self,
        id: GmemId,
        offset: u64,
        len: u64,
        mut f: impl FnMut(
            &mut H,
            u64,
            core::ops::Range<usize>,
        ) -> Result<(), crate::hypervisor::AccessFault>,
    ) -> Result<(), MmapError> {
        let g = self.gmem(id).ok_or(MmapError::NoMmap)?;
        g.check_access(offset, len)?;
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let page = at / PAGE;
            let chunk = (PAGE - at % PAGE).min(len - done);
            // A shared page the VMM touches first is allocated and zeroed.
            let pfn = self
                .back(id, page, false)
                .map_err(|_| MmapError::Sigbus { offset: at })?;
            let range = done as usize..(done + chunk) as usize;
            f(&mut self.hv, pfn * PAGE + at % PAGE, range)
                .map_err(|_| MmapError::Sigbus { offset: at })?;
            done += chunk;
        }
        Ok(())
    }

    /// A long-term pin (GUP) of a shared page, as vhost or VFIO would take.
    pub fn gmem_pin(&mut self, id: GmemId, offset: u64) -> Result<(), i32> {
        let g = self.gmem(id).ok_or(errno::EBADF)?;
        if !offset.is_multiple_of(PAGE) || g.check_access(offset, 1).is_err() {
            return Err(errno::EFAULT);
        }
        self.back(id, offset / PAGE, false)?;
        *self.gmem_mut(id)?.pins.entry(offset / PAGE).or_insert(0) += 1;
        Ok(())
    }

    /// Drops a pin on the page at `offset`: the page there now, or else one
    /// punched out of the file while pinned (freed on its last pin).
    pub fn gmem_unpin(&mut self, id: GmemId, offset: u64) -> Result<(), i32> {
        let g = self.gmem_mut(id)?;
        let page = offset / PAGE;
        if let Some(n) = g.pins.get_mut(&page) {
            *n -= 1;
            if *n == 0 {
                g.pins.remove(&page);
            }
            return Ok(());
        }
        let orphans = g.orphans.get_mut(&page).ok_or(errno::EINVAL)?;
        let Some((pfn, n)) = orphans.last_mut() else {
            return Err(errno::EINVAL);
        };
        *n -= 1;
        if *n == 0 {
            let pfn = *pfn;
            orphans.pop();
            if orphans.is_empty() {
                g.orphans.remove(&page);
            }
            self.pages.free(pfn, 0);
        }
        Ok(())
    }

    /// `fallocate(mode 0)`: allocates (and zeroes, once) backing for every
    /// page of `[offset, offset + len)` that has none, without touching
    /// the pages' attributes or contents. With 2 MiB folios allowed
    /// ([`KvmVm::set_huge_folios`]), each 2 MiB-aligned stretch of the
    /// range with no backing yet gets one 2 MiB folio (split into pages at
    /// once if its attributes are mixed, so a later conversion can merge
    /// it back); the rest gets 4 KiB pages. A VMM calls it before loading
    /// an image so the loaded range ends up in 2 MiB folios, which the
    /// guest then gets as 2 MiB blocks. `EINVAL` for an unaligned or empty
    /// range or one past the end of the file; `ENOMEM` when the host has no
    /// pages left (what was allocated stays allocated, as in KVM).
    pub fn gmem_allocate(&mut self, id: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        let g = self.gmem(id).ok_or(errno::EBADF)?;
        let end = offset.checked_add(len).ok_or(errno::EINVAL)?;
        if !offset.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 || end > g.size() {
            return Err(errno::EINVAL);
        }
        let (first, last) = (offset / PAGE, end / PAGE);
        let mut page = first;
        while page < last {
            let g = self.gmem(id).ok_or(errno::EBADF)?;
            let whole_block = page.is_multiple_of(HUGE_PAGES)
                && page + HUGE_PAGES <= last
                && g.folios.range(page..page + HUGE_PAGES).next().is_none();
            if self.huge_folios && whole_block {
                self.back(id, page, true)?;
                let g = self.gmem_mut(id)?;
                if g.frame(page).is_some_and(|(_, f)| f.order == 9) {
                    if g.attrs.uniform(page, page + HUGE_PAGES).is_none() {
                        g.split(page);
                    }
                    page += HUGE_PAGES;
                    continue;
                }
                // No 2 MiB run left: this page got a 4 KiB folio.
                page += 1;
                continue;
            }
            self.back(id, page, false)?;
            page += 1;
        }
        Ok(())
    }

    /// `fallocate(KEEP_SIZE | PUNCH_HOLE)`: frees the backing of
    /// `[offset, offset + len)` (attributes are kept; a later access gets a
    /// fresh zeroed page). Pages the host lent the guest are taken back
    /// first; a page the guest owns cannot be taken from a protected guest
    /// (`EBUSY`, nothing changed). A pinned page leaves the file but is
    /// freed only when its last pin drops. A range at or beyond the end is
    /// a no-op.
    pub fn gmem_punch_hole(&mut self, id: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        let g = self.gmem(id).ok_or(errno::EBADF)?;
        if !offset.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
            return Err(errno::EINVAL);
        }
        let first = offset / PAGE;
        let end = (offset.saturating_add(len) / PAGE).min(g.pages());
        if first >= end {
            return Ok(());
        }
        if g.guest
            .range(first..end)
            .any(|(_, m)| matches!(m, GuestMapping::Donated { .. }))
        {
            return Err(errno::EBUSY);
        }
        self.unlend(id, first, end)?;
        let mut page = first;
        while page < end {
            let g = self.gmem_mut(id)?;
            match g.frame(page) {
                None => page += 1,
                Some((head, f))
                    if f.order == 9
                        && head >= first
                        && head + HUGE_PAGES <= end
                        && g.pins.range(head..head + HUGE_PAGES).next().is_none() =>
                {
                    g.folios.remove(&head);
                    self.pages.free(f.pfn, 9);
                    page = head + HUGE_PAGES;
                }
                Some((_, f)) if f.order == 9 => g.split(page),
                Some((head, f)) => {
                    g.folios.remove(&head);
                    match g.pins.remove(&page) {
                        Some(n) => g.orphans.entry(page).or_default().push((f.pfn, n)),
                        None => self.pages.free(f.pfn, 0),
                    }
                    page += 1;
                }
            }
        }
        Ok(())
    }

    /// Ends every host→guest lend touching `[first, end)` of the file (a
    /// 2 MiB lend is ended whole; its other pages refault later).
    fn unlend(&mut self, id: GmemId, first: u64, end: u64) -> Result<(), i32> {
        let lent: Vec<(u64, GuestMapping)> = self
            .gmem(id)
            .ok_or(errno::EBADF)?
            .guest
            .range(first..end)
            .filter(|(_, m)| matches!(m, GuestMapping::Lent { .. }))
            .map(|(p, m)| (*p, *m))
            .collect();
        for (page, m) in lent {
            let GuestMapping::Lent { gfn, block } = m else {
                continue;
            };
            if !self.gmem(id).ok_or(errno::EBADF)?.guest.contains_key(&page) {
                continue;
            }
            let (gfn0, page0, n) = if block {
                (gfn - gfn % HUGE_PAGES, page - page % HUGE_PAGES, HUGE_PAGES)
            } else {
                (gfn, page, 1)
            };
            self.call_with_memcache(HostCall::UnshareGuest, &[self.handle, gfn0, n])?;
            let g = self.gmem_mut(id)?;
            for i in 0..n {
                g.guest.remove(&(page0 + i));
            }
        }
        Ok(())
    }

    /// Tears the VM down: every guest page reclaimed (guest-private pages
    /// come back zeroed), the VM's pages returned, the backing freed.
    pub fn destroy(self) -> Result<A, i32> {
        self.destroy_checked(|_, _| {}).map(|(_, pages)| pages)
    }

    /// [`KvmVm::destroy`], handing every page that was the guest's to
    /// `check` (with the conduit, to read it) after `TeardownFinish` made
    /// it the host's again and before anything is freed; returns the
    /// conduit and the page allocator, every page this VM allocated back in
    /// it. A VMM uses it to verify that the hypervisor zeroed the guest's
    /// private pages ([`ReclaimedPage::private`]).
    pub fn destroy_checked(
        mut self,
        mut check: impl FnMut(&mut H, ReclaimedPage),
    ) -> Result<(H, A), i32> {
        self.hv
            .call(HostCall::TeardownStart, &[self.handle])
            .map_err(call_err)?;
        // Every guest mapping, by 2 MiB block or page (a block some pages
        // of which the guest relinquished is still reclaimed whole: the
        // hypervisor skips the empty pages).
        let mut extents = alloc::collections::BTreeSet::new();
        for g in self.gmems.iter().flatten() {
            for m in g.guest.values() {
                let (GuestMapping::Donated { gfn, block } | GuestMapping::Lent { gfn, block }) = *m;
                extents.insert(if block {
                    (gfn - gfn % HUGE_PAGES, HUGE_PAGES)
                } else {
                    (gfn, 1)
                });
            }
        }
        for (gfn, n) in extents {
            match self.hv.call(HostCall::Reclaim, &[self.handle, gfn, n]) {
                Ok(_) | Err(CallError::Errno(abi::errno::ENOENT)) => {}
                Err(e) => return Err(call_err(e)),
            }
        }
        self.hv
            .call(HostCall::TeardownFinish, &[self.handle])
            .map_err(call_err)?;
        for g in self.gmems.iter().flatten() {
            for (&page, m) in &g.guest {
                let (GuestMapping::Donated { gfn, .. } | GuestMapping::Lent { gfn, .. }) = *m;
                let Some(pfn) = g.pfn(page) else {
                    continue;
                };
                let private = matches!(m, GuestMapping::Donated { .. }) && g.is_private(page);
                check(&mut self.hv, ReclaimedPage { gfn, pfn, private });
            }
        }
        // Destroying the VM drops the host's pins with its guest_memfds.
        for g in self.gmems.iter().flatten() {
            for f in g.folios.values() {
                self.pages.free(f.pfn, f.order);
            }
            for &(pfn, _) in g.orphans.values().flatten() {
                self.pages.free(pfn, 0);
            }
        }
        for pfn in self.memcache.drain(..) {
            self.pages.free(pfn, 0);
        }
        self.pages.free(self.pgd, 1);
        self.pages.free(self.meta, META_ORDER);
        Ok((self.hv, self.pages))
    }

    fn run_vcpu(&mut self, index: usize) -> Result<VcpuExit, i32> {
        let slot = *self.vcpus.get(index).ok_or(errno::EINVAL)?;
        // The vCPU that asked for a conversion runs again without the VMM
        // doing it: the request is refused. Other vCPUs leave it pending.
        if self.request.is_some_and(|(v, _)| v == index) {
            self.request = None;
            self.hv
                .call(HostCall::ConvertRefuse, &[self.handle])
                .map_err(call_err)?;
        }
        let mut complete = slot.complete.filter(|_| slot.completable);
        let mut fail_access = false;
        self.vcpus[index] = VcpuSlot::default();
        self.unhandled = None;
        loop {
            let args = match (complete.take(), core::mem::take(&mut fail_access)) {
                (_, true) => [self.handle, index as u64, abi::RUN_FAIL_ACCESS, 0, 0],
                (Some([a, b]), false) => {
                    [self.handle, index as u64, abi::RUN_COMPLETE_ACCESS, a, b]
                }
                (None, false) => [self.handle, index as u64, 0, 0, 0],
            };
            let exit = match self.hv.call(HostCall::VcpuRun, &args) {
                Ok(v) => Exit::from_regs(v).ok_or(errno::EINVAL)?,
                Err(e) => return Err(call_err(e)),
            };
            match exit {
                Exit::Stage2Fault {
                    gpa,
                    write,
                    exec,
                    isv,
                    size,
                    data,
                    hvc,
                    ..
                } => match self.lookup(gpa) {
                    Some((slot, page)) => self.fault_in(slot, page, gpa)?,
                    // A guest call (MEM_SHARE) on memory no slot backs:
                    // the call fails with INVALID_PARAMETER (DESIGN §4).
                    None if hvc => fail_access = true,
                    None if isv => {
                        self.vcpus[index].completable = true;
                        return Ok(VcpuExit::Mmio {
                            address: gpa,
                            size,
                            write,
                            data,
                        });
                    }
                    // KVM fails the run here too (`ENOSYS` on arm64: no
                    // syndrome to emulate the access with).
                    None => {
                        self.unhandled = Some(UnhandledAccess { gpa, write, exec });
                        return Err(errno::EFAULT);
                    }
                },
                Exit::MemoryFault { gpa, size, flags } => {
                    let to_private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                    self.request = Some((
                        index,
                        Request {
                            gfn: gpa / PAGE,
                            pages: size / PAGE,
                            to_private,
                        },
                    ));
                    return Ok(VcpuExit::MemoryFault { gpa, size, flags });
                }
                Exit::Hypercall { id, args } => {
                    self.vcpus[index].completable = true;
                    return Ok(VcpuExit::Hypercall { id, args });
                }
                Exit::SystemEvent { kind } => return Ok(VcpuExit::SystemEvent(kind)),
                Exit::Relinquished { gpa, size } => {
                    // The pages are the host's again; they are no longer in
                    // the guest.
                    for gfn in gpa / PAGE..(gpa + size) / PAGE {
                        if let Some((slot, page)) = self.lookup(gfn * PAGE) {
                            let g = self.gmem_mut(slot.gmem)?;
                            g.split(page);
                            g.guest.remove(&page);
                        }
                    }
                    return Ok(VcpuExit::Relinquished { gpa, size });
                }
                Exit::MemcacheEmpty { pages } => self.topup(pages.max(1))?,
                Exit::Wfi => return Ok(VcpuExit::Wfi),
                Exit::Stopped { ec } => return Ok(VcpuExit::InternalError { ec }),
                Exit::Interrupted => return Ok(VcpuExit::Interrupted),
                Exit::PoweredOff => return Ok(VcpuExit::PoweredOff),
            }
        }
    }
}

impl<H: Hypervisor, A: HostPages> Vm for KvmVm<H, A> {
    fn create_guest_memfd(&mut self, args: &KvmCreateGuestMemfd) -> Result<GmemId, i32> {
        let g = GuestMemfd::new(args)?;
        self.gmems.push(Some(g));
        Ok(GmemId(self.gmems.len() as u32 - 1))
    }

    fn set_memory_region(&mut self, r: &KvmUserspaceMemoryRegion2) -> Result<(), i32> {
        let id = GmemId(r.guest_memfd);
        // Bits 31:16 are the address space (arm64 has one), 15:0 the slot.
        if r.slot >> 16 != 0 || (r.slot & 0xffff) >= KVM_USER_MEM_SLOTS {
            return Err(errno::EINVAL);
        }
        if r.memory_size == 0 {
            // Deleting a slot: its guest mappings must go first; guest
            // pages cannot be taken from a protected guest.
            let s = self.slots.get(&r.slot).copied().ok_or(errno::EINVAL)?;
            let first = s.offset / PAGE;
            let end = first + s.size / PAGE;
            let g = self.gmem(s.gmem).ok_or(errno::EBADF)?;
            if g.guest
                .range(first..end)
                .any(|(_, m)| matches!(m, GuestMapping::Donated { .. }))
            {
                return Err(errno::EBUSY);
            }
            self.unlend(s.gmem, first, end)?;
            self.gmem_mut(s.gmem)?.bound.retain(|b| *b != (first, end));
            self.slots.remove(&r.slot);
            return Ok(());
        }
        if r.flags & KVM_MEM_GUEST_MEMFD == 0 || r.flags & !KVM_MEM_GUEST_MEMFD != 0 {
            return Err(errno::EINVAL);
        }
        if self.slots.contains_key(&r.slot) {
            // Slots bound to a guest_memfd are immutable.
            return Err(errno::EINVAL);
        }
        let aligned = [
            r.guest_phys_addr,
            r.memory_size,
            r.guest_memfd_offset,
            r.userspace_addr,
        ]
        .iter()
        .all(|v| v.is_multiple_of(PAGE));
        let gpa_end = r.guest_phys_addr.checked_add(r.memory_size);
        let off_end = r.guest_memfd_offset.checked_add(r.memory_size);
        let (Some(gpa_end), Some(off_end), true) = (gpa_end, off_end, aligned) else {
            return Err(errno::EINVAL);
        };
        if gpa_end > 1 << 40 {
            return Err(errno::EINVAL);
        }
        // KVM checks the GPA overlap before binding the guest_memfd.
        if self
            .slots
            .values()
            .any(|s| r.guest_phys_addr < s.gpa + s.size && s.gpa < gpa_end)
        {
            return Err(errno::EEXIST);
        }
        let g = self.gmem(id).ok_or(errno::EINVAL)?;
        if off_end > g.size() {
            return Err(errno::EINVAL);
        }
        let (first, end) = (r.guest_memfd_offset / PAGE, off_end / PAGE);
        if g.bound.iter().any(|&(s, e)| first < e && s < end) {
            return Err(errno::EINVAL);
        }
        self.gmem_mut(id)?.bound.push((first, end));
        let slot = Memslot {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            gmem: id,
            offset: r.guest_memfd_offset,
        };
        self.slots.insert(r.slot, slot);
        Ok(())
    }

    fn set_memory_attributes(
        &mut self,
        id: GmemId,
        a: &mut KvmMemoryAttributes2,
    ) -> Result<(), i32> {
        let g = self.gmem(id).ok_or(errno::EBADF)?;
        let valid_attrs = a.attributes == 0 || a.attributes == KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let end = a.offset.checked_add(a.size);
        let ok = a.flags == 0
            && a.reserved == [0; 11]
            && valid_attrs
            && a.size != 0
            && a.offset.is_multiple_of(PAGE)
            && a.size.is_multiple_of(PAGE)
            && end.is_some_and(|e| e <= g.size());
        if !ok {
            return Err(errno::EINVAL);
        }
        let to_private = a.attributes == KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let (first, end) = (a.offset / PAGE, (a.offset + a.size) / PAGE);
        if g.attrs.uniform(first, end) == Some(to_private) {
            return Ok(());
        }
        // Check everything first.
        let changing: Vec<u64> = (first..end)
            .filter(|p| g.is_private(*p) != to_private)
            .collect();
        let mut guest_owned = Vec::new();
        for &p in &changing {
            if let Some(GuestMapping::Donated { gfn, .. }) = g.guest_mapping(p) {
                guest_owned.push((p, gfn));
            }
        }
        if let Some(&(p, _)) = guest_owned.first() {
            // Only the guest's own request converts the guest's pages: the
            // whole request, and nothing else of the guest's.
            let req = self
                .request
                .map(|(_, r)| r)
                .filter(|r| r.to_private == to_private);
            let matches = req.is_some_and(|r| {
                guest_owned.len() as u64 == r.pages
                    && guest_owned
                        .iter()
                        .enumerate()
                        .all(|(i, &(_, gfn))| gfn == r.gfn + i as u64)
            });
            if !matches {
                a.error_offset = p * PAGE;
                return Err(errno::EPERM);
            }
        }
        if to_private && let Some(&p) = changing.iter().find(|p| g.pins(**p) > 0) {
            a.error_offset = p * PAGE;
            return Err(errno::EAGAIN);
        }
        // Commit: the guest's conversion at EL2, then the host's own pages.
        if let (Some((_, r)), false) = (self.request, guest_owned.is_empty()) {
            let shared = u64::from(!r.to_private);
            if let Err(e) = self.call_with_memcache(
                HostCall::ConvertComplete,
                &[self.handle, r.gfn, r.pages, shared],
            ) {
                a.error_offset = a.offset;
                return Err(e);
            }
            self.request = None;
        }
        if to_private {
            self.unlend(id, first, end)?;
        }
        let g = self.gmem_mut(id)?;
        g.attrs.set(first, end, to_private);
        for p in [first, end.saturating_sub(1)] {
            if g.attrs
                .uniform(
                    p - p % HUGE_PAGES,
                    (p - p % HUGE_PAGES + HUGE_PAGES).min(g.pages()),
                )
                .is_none()
            {
                g.split(p);
            } else {
                g.try_merge(p);
            }
        }
        if end - first > 1 {
            let mut p = first - first % HUGE_PAGES;
            while p < end {
                g.try_merge(p);
                p += HUGE_PAGES;
            }
        }
        Ok(())
    }
}

/// A vCPU of a [`KvmVm`].
pub struct KvmVcpu<'a, H: Hypervisor, A: HostPages> {
    vm: &'a mut KvmVm<H, A>,
    index: usize,
}

impl<H: Hypervisor, A: HostPages> Vcpu for KvmVcpu<'_, H, A> {
    fn run(&mut self) -> Result<VcpuExit, i32> {
        self.vm.run_vcpu(self.index)
    }

    fn set_mmio_data(&mut self, value: u64) {
        if let Some(v) = self.vm.vcpus.get_mut(self.index) {
            v.complete = Some([value, 0]);
        }
    }

    fn set_hypercall_result(&mut self, x0: u64, x1: u64) {
        if let Some(v) = self.vm.vcpus.get_mut(self.index) {
            v.complete = Some([x0, x1]);
        }
    }
}
