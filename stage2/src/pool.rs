//! Where translation-table pages come from: the [`TablePool`] trait, and
//! the intrusive page lists used to reserve pages before a change and to
//! free detached tables after the TLB maintenance that makes it safe.

use crate::addr::PhysAddr;
use core::ptr::NonNull;

/// A source of zeroed 4 KiB pages for translation tables, and the mapping
/// from a table's physical address to where this code can access it.
///
/// At EL2 this is the hypervisor's buddy pool or a VM's donated memcache
/// (identity mapped, so `table_ptr` is the physical address); in host tests
/// it is an arena with failure injection.
///
/// # Safety
///
/// Implementations promise that:
/// - `alloc_page` returns a 4 KiB-aligned page, filled with zeroes, that
///   nothing else uses until it is passed to `free_page`;
/// - `alloc_root(n)` returns `n` physically contiguous such pages, aligned
///   to `n * 4 KiB`, until passed to `free_root(_, n)`;
/// - `table_ptr(pa)` for any page (or root) handed out and not yet freed
///   returns a pointer valid for reads and writes of the whole page (the
///   whole root for a root), and the same pointer every time.
pub unsafe trait TablePool {
    /// A zeroed page, or `None` when the pool is empty.
    fn alloc_page(&mut self) -> Option<PhysAddr>;

    /// Returns a page handed out by `alloc_page`. Its contents are arbitrary.
    fn free_page(&mut self, page: PhysAddr);

    /// `pages` (1–16, a power of two) contiguous zeroed pages aligned to
    /// their total size, for a concatenated root table.
    fn alloc_root(&mut self, pages: usize) -> Option<PhysAddr>;

    /// Returns a root handed out by `alloc_root`.
    fn free_root(&mut self, root: PhysAddr, pages: usize);

    /// Where the table at `table` can be read and written.
    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64>;
}

/// A list of whole pages threaded through the pages themselves: word 0 of
/// each page holds the physical address of the next one. The address is
/// page aligned, so the word reads as an invalid descriptor to any table
/// walker that might still see the page.
#[derive(Debug, Default)]
pub(crate) struct PageList {
    head: Option<PhysAddr>,
    len: usize,
}

impl PageList {
    pub(crate) const fn new() -> PageList {
        PageList { head: None, len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `page` to the list, overwriting its word 0.
    pub(crate) fn push<P: TablePool + ?Sized>(&mut self, pool: &P, page: PhysAddr) {
        let next = self.head.map_or(0, PhysAddr::get);
        // SAFETY: `page` is a table page owned by the caller (handed out by
        // `pool`, not linked into any live table, or detached and awaiting
        // free); the pool contract makes word 0 writable.
        unsafe { pool.table_ptr(page).as_ptr().write_volatile(next) };
        self.head = Some(page);
        self.len += 1;
    }

    /// Takes a page off the list and clears its word 0, so a page that was
    /// zero when pushed is zero again.
    pub(crate) fn pop<P: TablePool + ?Sized>(&mut self, pool: &P) -> Option<PhysAddr> {
        let page = self.head?;
        let ptr = pool.table_ptr(page).as_ptr();
        // SAFETY: every page on the list was pushed by `push`, which wrote
        // word 0; the pool contract makes it readable and writable.
        let next = unsafe { ptr.read_volatile() };
        // SAFETY: as above.
        unsafe { ptr.write_volatile(0) };
        self.len -= 1;
        self.head = if self.len == 0 {
            None
        } else {
            Some(PhysAddr(next))
        };
        Some(page)
    }

    /// Gives every page back to the pool.
    #[inline]
    pub(crate) fn free_all<P: TablePool + ?Sized>(&mut self, pool: &mut P) {
        if self.len == 0 {
            // Most operations reserve nothing and free nothing.
            return;
        }
        while let Some(page) = self.pop(pool) {
            pool.free_page(page);
        }
    }
}

/// Pages taken from a pool ahead of a multi-step change, so that every
/// step after the reservation finds the table pages it needs.
///
/// It is itself a [`TablePool`]: allocations come from the reserved pages
/// only (so a step can never take more than was set aside), frees go
/// straight back to the underlying pool, and whatever is left over returns
/// to it when the reservation is dropped.
pub struct Reserved<'a, P: TablePool + ?Sized> {
    pool: &'a mut P,
    pages: PageList,
}

impl<'a, P: TablePool + ?Sized> Reserved<'a, P> {
    /// Takes `pages` pages from `pool`, or none at all if it has fewer.
    pub fn new(pool: &'a mut P, pages: usize) -> Result<Reserved<'a, P>, crate::Error> {
        let mut list = PageList::new();
        for _ in 0..pages {
            match pool.alloc_page() {
                Some(page) => list.push(&*pool, page),
                None => {
                    list.free_all(pool);
                    return Err(crate::Error::OutOfMemory { needed: pages });
                }
            }
        }
        Ok(Reserved { pool, pages: list })
    }

    /// Reserved pages not yet used.
    pub fn remaining(&self) -> usize {
        self.pages.len()
    }
}

impl<P: TablePool + ?Sized> Drop for Reserved<'_, P> {
    fn drop(&mut self) {
        self.pages.free_all(self.pool);
    }
}

// SAFETY: reserved pages come from the underlying pool, which upholds the
// contract; `pop` re-zeroes the one word the list used, so pages handed out
// are zeroed; roots and addresses are delegated unchanged.
unsafe impl<P: TablePool + ?Sized> TablePool for Reserved<'_, P> {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        self.pages.pop(&*self.pool)
    }

    fn free_page(&mut self, page: PhysAddr) {
        self.pool.free_page(page);
    }

    fn alloc_root(&mut self, pages: usize) -> Option<PhysAddr> {
        self.pool.alloc_root(pages)
    }

    fn free_root(&mut self, root: PhysAddr, pages: usize) {
        self.pool.free_root(root, pages);
    }

    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64> {
        self.pool.table_ptr(table)
    }
}
