//! Host-side test doubles: an arena [`TablePool`] with failure injection.
//! The recording TLB is [`crate::tlb::record::RecordingTlb`].

extern crate std;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::level::ENTRIES_PER_TABLE;
use crate::pool::TablePool;
use core::ptr::NonNull;
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

/// Pretend physical address of the arena's first page. Below 4 GiB so the
/// tables fit any supported PA range.
pub const ARENA_BASE: u64 = 0x8000_0000;

/// A fixed arena of 4 KiB pages standing in for physical memory.
///
/// Allocation can be limited (`set_alloc_limit`) to inject out-of-memory
/// failures, and the whole arena can be snapshotted to prove a failed
/// operation changed nothing.
pub struct ArenaPool {
    mem: NonNull<u64>,
    pages: usize,
    used: Vec<bool>,
    in_use: usize,
    cursor: usize,
    limit: Option<usize>,
    peak: usize,
}

impl ArenaPool {
    /// An arena of `pages` pages.
    pub fn new(pages: usize) -> ArenaPool {
        let words: Box<[u64]> = vec![0u64; pages * ENTRIES_PER_TABLE].into_boxed_slice();
        let mem = NonNull::new(Box::into_raw(words).cast::<u64>()).expect("non-null box");
        ArenaPool {
            mem,
            pages,
            used: vec![false; pages],
            in_use: 0,
            cursor: 0,
            limit: None,
            peak: 0,
        }
    }

    /// Allows only `n` more page allocations (`None`: unlimited).
    pub fn set_alloc_limit(&mut self, n: Option<usize>) {
        self.limit = n;
    }

    /// Pages currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Largest number of pages handed out at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// A copy of every word of the arena.
    pub fn snapshot(&self) -> Vec<u64> {
        // SAFETY: `mem` points to `pages * 512` initialised words owned by
        // this arena; no mutable access is live while `&self` is borrowed.
        unsafe { core::slice::from_raw_parts(self.mem.as_ptr(), self.pages * ENTRIES_PER_TABLE) }
            .to_vec()
    }

    fn index(&self, pa: PhysAddr) -> usize {
        let off = pa
            .get()
            .checked_sub(ARENA_BASE)
            .expect("address below the arena");
        assert_eq!(off % PAGE_SIZE, 0, "unaligned table address {pa:?}");
        let idx = (off / PAGE_SIZE) as usize;
        assert!(idx < self.pages, "address beyond the arena {pa:?}");
        idx
    }

    fn take_budget(&mut self) -> bool {
        match &mut self.limit {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    fn zero(&mut self, idx: usize, pages: usize) {
        // SAFETY: the range lies inside the arena (checked by the callers'
        // index arithmetic), and no reference into it is live.
        unsafe {
            core::ptr::write_bytes(
                self.mem.as_ptr().add(idx * ENTRIES_PER_TABLE),
                0,
                pages * ENTRIES_PER_TABLE,
            )
        };
    }

    fn mark(&mut self, idx: usize, pages: usize, used: bool) {
        for u in &mut self.used[idx..idx + pages] {
            assert_ne!(*u, used, "double allocation or double free");
            *u = used;
        }
        if used {
            self.in_use += pages;
            self.peak = self.peak.max(self.in_use);
        } else {
            self.in_use -= pages;
        }
    }
}

impl Drop for ArenaPool {
    fn drop(&mut self) {
        let words = self.pages * ENTRIES_PER_TABLE;
        // SAFETY: `mem` came from `Box::into_raw` of a boxed slice of exactly
        // `words` words, and is freed only here.
        drop(unsafe {
            Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                self.mem.as_ptr(),
                words,
            ))
        });
    }
}

#[cold]
#[inline(never)]
fn bad_table_address(table: PhysAddr) -> ! {
    panic!("table address {table:?} outside the arena or unaligned")
}

// SAFETY: pages are handed out at most once (tracked in `used`), zeroed on
// allocation, aligned by construction (ARENA_BASE is aligned to 64 KiB and
// roots are placed at indexes aligned to their size), and `table_ptr`
// returns a stable pointer into the arena.
unsafe impl TablePool for ArenaPool {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        if self.in_use == self.pages {
            return None;
        }
        let start = self.cursor;
        let mut idx = start;
        while self.used[idx] {
            idx = (idx + 1) % self.pages;
            if idx == start {
                return None;
            }
        }
        if !self.take_budget() {
            return None;
        }
        self.cursor = (idx + 1) % self.pages;
        self.mark(idx, 1, true);
        self.zero(idx, 1);
        Some(PhysAddr(ARENA_BASE + idx as u64 * PAGE_SIZE))
    }

    fn free_page(&mut self, page: PhysAddr) {
        let idx = self.index(page);
        self.mark(idx, 1, false);
    }

    fn alloc_root(&mut self, pages: usize) -> Option<PhysAddr> {
        assert!(pages.is_power_of_two() && pages <= 16);
        let mut idx = 0;
        while idx + pages <= self.pages {
            if self.used[idx..idx + pages].iter().all(|u| !u) {
                if !self.take_budget() {
                    return None;
                }
                self.mark(idx, pages, true);
                self.zero(idx, pages);
                return Some(PhysAddr(ARENA_BASE + idx as u64 * PAGE_SIZE));
            }
            idx += pages;
        }
        None
    }

    fn free_root(&mut self, root: PhysAddr, pages: usize) {
        let idx = self.index(root);
        self.mark(idx, pages, false);
    }

    #[inline]
    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64> {
        // One combined range and alignment check, inlined: this runs on
        // every table visit, where EL2's identity-mapped pools cost
        // nothing, and the benchmarks time it.
        let off = table.get().wrapping_sub(ARENA_BASE);
        if !off.is_multiple_of(PAGE_SIZE) || off >= self.pages as u64 * PAGE_SIZE {
            bad_table_address(table);
        }
        // SAFETY: `off` is a page-aligned offset below the arena's size, so
        // the pointer stays inside the arena.
        unsafe { self.mem.add((off / 8) as usize) }
    }
}
