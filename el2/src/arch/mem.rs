//! el2's memory: the heap over the carve-out, and the machine traits the
//! ownership and stage-2 crates need ([`IdentityMem`], [`HeapPool`],
//! [`HypBitmap`]).
//!
//! EL2 identity-maps all of RAM (see [`super::mmu`]), so a physical address
//! is also the pointer to it.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::vec::Vec;
use core::ptr::NonNull;

use buddy_system_allocator::LockedHeap;
use ownership::{HypMappings, MemRegion, Pfn, PhysMem};
use stage2::{PAGE_SIZE, PhysAddr, TablePool};

use super::sysreg;

/// The global allocator: a buddy allocator over the carve-out (blocks up
/// to 2^31 bytes). EL2 runs with interrupts masked, so the spinlock inside
/// cannot be re-entered by an interrupt; a fault while it is held stops
/// the machine anyway.
#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands `[start, start + size)` to the heap.
///
/// # Safety
///
/// The range is RAM, mapped Normal at EL2, owned by the hypervisor and used
/// by nothing else, for the rest of the run. Call once.
pub unsafe fn init_heap(start: u64, size: u64) {
    // SAFETY: per this function's contract.
    unsafe { HEAP.lock().init(start as usize, size as usize) };
}

/// Adds `[start, start + size)` to the heap (pages the host gave the
/// hypervisor with `HypPoolDonate`).
///
/// # Safety
///
/// As for [`init_heap`]: the range is RAM, mapped Normal at EL2, owned by
/// the hypervisor and used by nothing else, for the rest of the run.
pub unsafe fn add_to_heap(start: u64, size: u64) {
    // SAFETY: per this function's contract.
    unsafe {
        HEAP.lock()
            .add_to_heap(start as usize, (start + size) as usize)
    };
}

/// Bytes of heap in use and in total.
pub fn heap_stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.stats_alloc_actual(), h.stats_total_bytes())
}

/// Physical memory through EL2's identity map.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMem;

// SAFETY: EL2 maps every RAM region Normal at its physical address (the
// final map is built from the same device tree the ownership table is), so
// a page's pointer is its address, valid up to the end of its region; el2
// holds no Rust references into RAM the ownership table manages. RAM at
// address 0 is refused by the layout, so the pointer is never null.
unsafe impl PhysMem for IdentityMem {
    fn page_ptr(self, pa: PhysAddr) -> NonNull<u8> {
        NonNull::new(pa.get() as *mut u8).unwrap_or(NonNull::dangling())
    }

    fn clean_to_poc(self, pa: PhysAddr, len: u64) {
        sysreg::clean_inval_to_poc(pa.get(), len);
    }

    fn sync_for_guest(self, pa: PhysAddr, len: u64) {
        sysreg::clean_inval_to_poc(pa.get(), len);
        sysreg::invalidate_icache();
    }
}

/// Page-table pages for the host stage-2, from the heap.
#[derive(Debug, Default)]
pub struct HeapPool;

fn page_layout(pages: usize) -> Option<Layout> {
    let bytes = pages.checked_mul(PAGE_SIZE as usize)?;
    Layout::from_size_align(bytes, bytes).ok()
}

fn alloc_pages(pages: usize) -> Option<PhysAddr> {
    let layout = page_layout(pages)?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    (!p.is_null()).then_some(PhysAddr(p as u64))
}

fn free_pages(pa: PhysAddr, pages: usize) {
    if let Some(layout) = page_layout(pages) {
        // SAFETY: `pa` came from `alloc_pages(pages)` (TablePool contract:
        // callers return what they were given, with the same count).
        unsafe { dealloc(pa.get() as *mut u8, layout) };
    }
}

// SAFETY: pages come from the global allocator with `alloc_zeroed` and a
// layout aligned to their size (so 4 KiB pages are page aligned and roots
// are aligned to their size), are not used by anything else until freed,
// and are identity mapped, so `table_ptr` is the address itself.
unsafe impl TablePool for HeapPool {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        alloc_pages(1)
    }

    fn free_page(&mut self, page: PhysAddr) {
        free_pages(page, 1);
    }

    fn alloc_root(&mut self, pages: usize) -> Option<PhysAddr> {
        alloc_pages(pages)
    }

    fn free_root(&mut self, root: PhysAddr, pages: usize) {
        free_pages(root, pages);
    }

    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64> {
        NonNull::new(table.get() as *mut u64).unwrap_or(NonNull::dangling())
    }
}

/// The hypervisor's stage-1 "mappings" of RAM pages. EL2 identity-maps all
/// of RAM, so mapping is bookkeeping: one bit per page, so that
/// `is_mapped` tells the invariant checker the truth about what the
/// ownership code asked for.
pub struct HypBitmap {
    regions: Vec<(MemRegion, Vec<u64>)>,
}

impl HypBitmap {
    /// A bitmap over `ram`, nothing mapped; `None` if out of memory.
    pub fn new(ram: &[MemRegion]) -> Option<HypBitmap> {
        let mut regions = Vec::new();
        regions.try_reserve_exact(ram.len()).ok()?;
        for r in ram {
            let words = usize::try_from(r.pages.div_ceil(64)).ok()?;
            let mut bits = Vec::new();
            bits.try_reserve_exact(words).ok()?;
            bits.resize(words, 0u64);
            regions.push((*r, bits));
        }
        Some(HypBitmap { regions })
    }

    fn locate(&self, pfn: Pfn) -> Option<(usize, usize, u64)> {
        self.regions.iter().enumerate().find_map(|(i, (r, _))| {
            let off = pfn.0.checked_sub(r.base.0)?;
            (off < r.pages).then_some((i, (off / 64) as usize, 1u64 << (off % 64)))
        })
    }

    fn set(&mut self, pfn: Pfn, n: u64, on: bool) {
        for i in 0..n {
            let Some(p) = pfn.checked_add(i) else { return };
            if let Some((r, w, bit)) = self.locate(p)
                && let Some(word) = self.regions.get_mut(r).and_then(|(_, b)| b.get_mut(w))
            {
                if on {
                    *word |= bit;
                } else {
                    *word &= !bit;
                }
            }
        }
    }
}

impl HypMappings for HypBitmap {
    fn map(&mut self, pfn: Pfn, n: u64) {
        self.set(pfn, n, true);
    }

    fn unmap(&mut self, pfn: Pfn, n: u64) {
        self.set(pfn, n, false);
    }

    fn is_mapped(&self, pfn: Pfn) -> bool {
        self.locate(pfn)
            .and_then(|(r, w, bit)| Some(self.regions.get(r)?.1.get(w)? & bit != 0))
            .unwrap_or(false)
    }
}
