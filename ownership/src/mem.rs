//! What the ownership code needs from the machine: access to physical
//! pages (to wipe them and to hold guest page tables) and the hypervisor's
//! own mappings.

use crate::types::Pfn;
use core::ptr::NonNull;
use stage2::{PAGE_SIZE, PhysAddr};

/// Access to physical memory.
///
/// # Safety
///
/// For every page of RAM the ownership table covers, `page_ptr` returns a
/// pointer valid for reads and writes from that page to the end of its RAM
/// region (physically contiguous pages are contiguous here, so a
/// concatenated root table can be reached from its first page), the same
/// pointer each time. Nothing else may hold a Rust reference into those
/// pages.
pub unsafe trait PhysMem: Copy {
    /// Where the page at `pa` can be accessed.
    fn page_ptr(self, pa: PhysAddr) -> NonNull<u8>;

    /// Cleans `[pa, pa + len)` to the point of coherency, so a reader with
    /// caches off (or through another mapping) sees what was written.
    fn clean_to_poc(self, pa: PhysAddr, len: u64);

    /// Makes `[pa, pa + len)`, about to be mapped into a guest, what the
    /// guest sees even with its MMU and caches off and when it executes
    /// it: cleaned to the point of coherency, and no stale instructions
    /// for it in the instruction caches (KVM does the same when it maps a
    /// page into a stage-2 without FWB). Defaults to [`clean_to_poc`].
    ///
    /// [`clean_to_poc`]: PhysMem::clean_to_poc
    fn sync_for_guest(self, pa: PhysAddr, len: u64) {
        self.clean_to_poc(pa, len);
    }
}

/// Zeroes `n` pages from `pfn` and cleans them to the point of coherency
/// (pKVM's `hyp_poison_page`: never skipped, FWB or not).
pub(crate) fn wipe<M: PhysMem>(mem: M, pfn: Pfn, n: u64) {
    for i in 0..n {
        let Some(pa) = Pfn(pfn.0 + i).addr() else {
            return;
        };
        let ptr = mem.page_ptr(pa);
        // SAFETY: the callers only wipe RAM pages they have just taken from
        // a guest or the hypervisor, which the `PhysMem` contract makes
        // accessible; no reference into the page exists.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, PAGE_SIZE as usize) };
        mem.clean_to_poc(pa, PAGE_SIZE);
    }
}

/// The hypervisor's own (stage-1) mappings of pages it owns or borrows.
///
/// pKVM maps a host-shared page at EL2 only while it is pinned, and a
/// donated page while the hypervisor owns it. An EL2 that identity-maps all
/// memory can implement `map`/`unmap` as bookkeeping only.
pub trait HypMappings {
    /// Maps `n` pages from `pfn` for the hypervisor.
    fn map(&mut self, pfn: Pfn, n: u64);
    /// Removes the hypervisor's mapping of `n` pages from `pfn`.
    fn unmap(&mut self, pfn: Pfn, n: u64);
    /// Whether the hypervisor maps `pfn` (for the invariant checker).
    fn is_mapped(&self, pfn: Pfn) -> bool;
}
