//! A guest's memcache: pages the host donated to the hypervisor for that
//! guest's stage-2 tables.

use crate::mem::PhysMem;
use core::ptr::NonNull;
use stage2::{PAGE_SIZE, PhysAddr, TablePool};

/// Free pages kept as a list threaded through the pages themselves (word 0
/// holds the next page's address), plus the guest's root table.
#[derive(Debug, Default)]
pub struct Memcache {
    head: Option<PhysAddr>,
    len: usize,
    root: Option<(PhysAddr, usize)>,
}

impl Memcache {
    /// An empty memcache.
    pub const fn new() -> Memcache {
        Memcache {
            head: None,
            len: 0,
            root: None,
        }
    }

    /// Free pages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no page is free.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a page owned by the hypervisor.
    pub(crate) fn push<M: PhysMem>(&mut self, mem: M, page: PhysAddr) {
        let next = self.head.map_or(0, PhysAddr::get);
        // SAFETY: `page` is a RAM page the hypervisor owns and no table uses;
        // `PhysMem` makes it writable.
        unsafe {
            mem.page_ptr(page)
                .cast::<u64>()
                .as_ptr()
                .write_volatile(next)
        };
        self.head = Some(page);
        self.len += 1;
    }

    /// Takes a page, contents undefined.
    pub(crate) fn pop<M: PhysMem>(&mut self, mem: M) -> Option<PhysAddr> {
        let page = self.head?;
        // SAFETY: every listed page was written by `push`.
        let next = unsafe { mem.page_ptr(page).cast::<u64>().as_ptr().read_volatile() };
        self.len -= 1;
        self.head = if self.len == 0 {
            None
        } else {
            Some(PhysAddr(next))
        };
        Some(page)
    }

    /// Calls `f` with every free page, without taking them.
    pub(crate) fn for_each<M: PhysMem>(&self, mem: M, mut f: impl FnMut(PhysAddr)) {
        let mut page = self.head;
        for _ in 0..self.len {
            let Some(p) = page else { return };
            f(p);
            // SAFETY: every listed page was written by `push`.
            page = Some(PhysAddr(unsafe {
                mem.page_ptr(p).cast::<u64>().as_ptr().read_volatile()
            }));
        }
    }

    /// The root table pages, if still held.
    pub(crate) fn root(&self) -> Option<(PhysAddr, usize)> {
        self.root
    }

    /// Sets the root table pages (donated at guest creation).
    pub(crate) fn set_root(&mut self, root: PhysAddr, pages: usize) {
        self.root = Some((root, pages));
    }
}

/// The memcache as a [`TablePool`] for the guest's stage-2.
pub(crate) struct MemcachePool<'a, M: PhysMem> {
    pub(crate) cache: &'a mut Memcache,
    pub(crate) mem: M,
}

// SAFETY: pages handed out are hypervisor-owned RAM pages in the memcache,
// zeroed here before use; the root is the donated, zeroed, aligned PGD;
// `table_ptr` is `PhysMem::page_ptr`, valid for every RAM page.
unsafe impl<M: PhysMem> TablePool for MemcachePool<'_, M> {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        let page = self.cache.pop(self.mem)?;
        // SAFETY: the page was just taken off the free list and is unused.
        unsafe { core::ptr::write_bytes(self.mem.page_ptr(page).as_ptr(), 0, PAGE_SIZE as usize) };
        Some(page)
    }

    fn free_page(&mut self, page: PhysAddr) {
        self.cache.push(self.mem, page);
    }

    fn alloc_root(&mut self, pages: usize) -> Option<PhysAddr> {
        match self.cache.root {
            Some((root, n)) if n == pages => Some(root),
            _ => None,
        }
    }

    fn free_root(&mut self, root: PhysAddr, pages: usize) {
        self.cache.root = Some((root, pages));
    }

    fn table_ptr(&self, table: PhysAddr) -> NonNull<u64> {
        self.mem.page_ptr(table).cast()
    }
}
