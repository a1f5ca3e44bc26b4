//! The guest_memfd model: one file of pages, each shared or private, with
//! its backing pages, folios and pins — the state a host kernel keeps for
//! a guest_memfd created with `GUEST_MEMFD_FLAG_MMAP`.
//!
//! What the hypervisor must do when a page changes hands is not here: the
//! VM layer ([`crate::vm`]) drives the host calls and then updates this
//! state.

use crate::kvm::{
    self, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KvmCreateGuestMemfd, errno,
};
use alloc::collections::BTreeMap;

/// Bytes per page.
pub const PAGE: u64 = 4096;
/// Pages per 2 MiB folio.
pub const HUGE_PAGES: u64 = 512;

/// Per-page attributes kept as merged ranges `start -> (end, private)`
/// covering the whole file (KVM's maple tree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    ranges: BTreeMap<u64, (u64, bool)>,
}

impl Attributes {
    /// `pages` pages, all `private` or all shared.
    pub fn new(pages: u64, private: bool) -> Attributes {
        let mut ranges = BTreeMap::new();
        ranges.insert(0, (pages, private));
        Attributes { ranges }
    }

    /// Whether page `page` is private.
    pub fn is_private(&self, page: u64) -> bool {
        self.ranges
            .range(..=page)
            .next_back()
            .is_some_and(|(_, (end, p))| page < *end && *p)
    }

    /// `Some(private)` if every page of `[start, end)` has it.
    pub fn uniform(&self, start: u64, end: u64) -> Option<bool> {
        let first = self.is_private(start);
        let mut at = start;
        while at < end {
            let (_, &(e, p)) = self.ranges.range(..=at).next_back()?;
            if p != first {
                return None;
            }
            at = e;
        }
        Some(first)
    }

    /// Sets `[start, end)`, merging with equal neighbours.
    pub fn set(&mut self, start: u64, end: u64, private: bool) {
        if start >= end {
            return;
        }
        // Split the ranges straddling the edges.
        for edge in [start, end] {
            if let Some((&s, &(e, p))) = self.ranges.range(..edge).next_back()
                && e > edge
            {
                self.ranges.insert(s, (edge, p));
                self.ranges.insert(edge, (e, p));
            }
        }
        let inside: alloc::vec::Vec<u64> = self.ranges.range(start..end).map(|(s, _)| *s).collect();
        for s in inside {
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, (end, private));
        // Merge with the neighbours.
        if let Some((&s, &(e, p))) = self.ranges.range(..start).next_back()
            && e == start
            && p == private
        {
            self.ranges.remove(&start);
            self.ranges.insert(s, (end, private));
        }
        let (&s, &(e, _)) = self
            .ranges
            .range(..=start)
            .next_back()
            .unwrap_or((&start, &(end, private)));
        if let Some(&(ne, np)) = self.ranges.get(&e)
            && np == private
        {
            self.ranges.remove(&e);
            self.ranges.insert(s, (ne, private));
        }
    }

    /// Number of merged ranges (for tests: adjacent equal ranges merge).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

/// A backing folio: a single page or a 2 MiB block of physically
/// contiguous pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Folio {
    /// First frame.
    pub pfn: u64,
    /// 0 (4 KiB) or 9 (2 MiB).
    pub order: u32,
    /// For order-0 folios split from a 2 MiB one: that folio's first frame,
    /// so the pieces can be merged back.
    pub split_from: Option<u64>,
}

/// How a page of the file is mapped into the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestMapping {
    /// Donated: the guest owns the page (private, or shared back by the
    /// guest).
    Donated {
        /// Guest frame.
        gfn: u64,
        /// Donated as part of a 2 MiB block.
        block: bool,
    },
    /// Lent: the host owns the page and shares it with the guest.
    Lent {
        /// Guest frame.
        gfn: u64,
        /// Lent as part of a 2 MiB block.
        block: bool,
    },
}

/// Why a host access through the mmap failed: KVM's `SIGBUS` cases, or
/// an mmap that was never allowed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MmapError {
    /// The file was created without `GUEST_MEMFD_FLAG_MMAP` (`ENODEV`).
    NoMmap,
    /// SIGBUS: beyond the file, or a private page.
    Sigbus {
        /// The offending offset.
        offset: u64,
    },
}

/// One guest_memfd file.
#[derive(Clone, Debug)]
pub struct GuestMemfd {
    size: u64,
    flags: u64,
    pub(crate) attrs: Attributes,
    /// Backing folios by first page index.
    pub(crate) folios: BTreeMap<u64, Folio>,
    /// Guest mappings by page index.
    pub(crate) guest: BTreeMap<u64, GuestMapping>,
    /// Long-term pins (GUP) by page index.
    pub(crate) pins: BTreeMap<u64, u32>,
    /// Pages punched out of the file while pinned: no longer the file's,
    /// but not freed until their last pin drops (as a pinned folio outlives
    /// its truncation in Linux). `page -> [(frame, pins)]`.
    pub(crate) orphans: BTreeMap<u64, alloc::vec::Vec<(u64, u32)>>,
    /// Page ranges bound to memslots, `(start, end)`.
    pub(crate) bound: alloc::vec::Vec<(u64, u64)>,
}

impl GuestMemfd {
    /// `KVM_CREATE_GUEST_MEMFD`'s checks: flags must be supported, size
    /// non-zero and page aligned (`EINVAL`); `reserved` is not checked, as
    /// in KVM.
    pub fn new(args: &KvmCreateGuestMemfd) -> Result<GuestMemfd, i32> {
        if args.flags & !kvm::GUEST_MEMFD_SUPPORTED_FLAGS != 0
            || args.size == 0
            || !args.size.is_multiple_of(PAGE)
        {
            return Err(errno::EINVAL);
        }
        let private = args.flags & GUEST_MEMFD_FLAG_INIT_SHARED == 0;
        Ok(GuestMemfd {
            size: args.size,
            flags: args.flags,
            attrs: Attributes::new(args.size / PAGE, private),
            folios: BTreeMap::new(),
            guest: BTreeMap::new(),
            pins: BTreeMap::new(),
            orphans: BTreeMap::new(),
            bound: alloc::vec::Vec::new(),
        })
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Pages.
    pub fn pages(&self) -> u64 {
        self.size / PAGE
    }

    /// Creation flags.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// The attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.attrs
    }

    /// Whether page `page` is private.
    pub fn is_private(&self, page: u64) -> bool {
        self.attrs.is_private(page)
    }

    /// `mmap` of `len` bytes at `offset`: `ENODEV` without
    /// `GUEST_MEMFD_FLAG_MMAP`, `EINVAL` for a private (copy-on-write)
    /// mapping. Mapping beyond the file is allowed; touching it is not.
    pub fn mmap(&self, shared: bool) -> Result<(), i32> {
        if self.flags & GUEST_MEMFD_FLAG_MMAP == 0 {
            return Err(errno::ENODEV);
        }
        if !shared {
            return Err(errno::EINVAL);
        }
        Ok(())
    }

    /// Checks a host access through the mmap: `SIGBUS` beyond the file or
    /// on a private page.
    pub fn check_access(&self, offset: u64, len: u64) -> Result<(), MmapError> {
        if self.flags & GUEST_MEMFD_FLAG_MMAP == 0 {
            return Err(MmapError::NoMmap);
        }
        let end = offset
            .checked_add(len)
            .ok_or(MmapError::Sigbus { offset })?;
        let mut at = offset;
        while at < end {
            if at >= self.size || self.is_private(at / PAGE) {
                return Err(MmapError::Sigbus { offset: at });
            }
            at = (at / PAGE + 1) * PAGE;
        }
        Ok(())
    }

    /// The folio backing page `page`, with the page's own frame.
    pub fn frame(&self, page: u64) -> Option<(u64, Folio)> {
        let (&head, &f) = self.folios.range(..=page).next_back()?;
        let n = 1u64 << f.order;
        (page < head + n).then_some((head, f))
    }

    /// The frame backing page `page`, if allocated.
    pub fn pfn(&self, page: u64) -> Option<u64> {
        self.frame(page).map(|(head, f)| f.pfn + (page - head))
    }

    /// How page `page` is mapped into the guest.
    pub fn guest_mapping(&self, page: u64) -> Option<GuestMapping> {
        self.guest.get(&page).copied()
    }

    /// Pins on page `page`.
    pub fn pins(&self, page: u64) -> u32 {
        self.pins.get(&page).copied().unwrap_or(0)
    }

    /// Splits the 2 MiB folio holding `page` (if any) into pages.
    pub(crate) fn split(&mut self, page: u64) {
        let Some((head, f)) = self.frame(page) else {
            return;
        };
        if f.order == 0 {
            return;
        }
        self.folios.remove(&head);
        for i in 0..(1u64 << f.order) {
            self.folios.insert(
                head + i,
                Folio {
                    pfn: f.pfn + i,
                    order: 0,
                    split_from: Some(f.pfn),
                },
            );
        }
    }

    /// Merges the 2 MiB range holding `page` back into one folio when its
    /// 512 pages are all there, contiguous from one split folio, and of one
    /// attribute.
    pub(crate) fn try_merge(&mut self, page: u64) -> bool {
        let head = page - page % HUGE_PAGES;
        if head + HUGE_PAGES > self.pages() || self.attrs.uniform(head, head + HUGE_PAGES).is_none()
        {
            return false;
        }
        let Some(first) = self.folios.get(&head).copied() else {
            return false;
        };
        let Some(origin) = first.split_from else {
            return false;
        };
        let all = (0..HUGE_PAGES).all(|i| {
            self.folios.get(&(head + i)).is_some_and(|f| {
                f.order == 0 && f.split_from == Some(origin) && f.pfn == origin + i
            })
        });
        if !all {
            return false;
        }
        for i in 0..HUGE_PAGES {
            self.folios.remove(&(head + i));
        }
        self.folios.insert(
            head,
            Folio {
                pfn: origin,
                order: 9,
                split_from: None,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_merge_ranges() {
        let mut a = Attributes::new(16, true);
        a.set(4, 8, false);
        assert!(!a.is_private(4) && !a.is_private(7) && a.is_private(8) && a.is_private(3));
        assert_eq!(a.range_count(), 3);
        a.set(8, 10, false);
        assert_eq!(a.range_count(), 3);
        assert_eq!(a.uniform(4, 10), Some(false));
        a.set(4, 10, true);
        assert_eq!(a.range_count(), 1);
        assert_eq!(a.uniform(0, 16), Some(true));
        a.set(0, 16, false);
        assert_eq!(a.range_count(), 1);
        a.set(15, 16, true);
        assert_eq!(a.uniform(0, 15), Some(false));
        assert_eq!(a.uniform(14, 16), None);
        assert!(a.is_private(15));
        assert!(!a.is_private(16));
    }

    #[test]
    fn create_rules() {
        let c = |size, flags| {
            GuestMemfd::new(&KvmCreateGuestMemfd {
                size,
                flags,
                reserved: [0; 6],
            })
        };
        assert_eq!(c(0, 0).unwrap_err(), errno::EINVAL);
        assert_eq!(c(100, 0).unwrap_err(), errno::EINVAL);
        assert_eq!(c(PAGE, 1 << 2).unwrap_err(), errno::EINVAL);
        assert!(c(PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED).is_ok());
        let g = c(4 * PAGE, GUEST_MEMFD_FLAG_MMAP).unwrap();
        assert!(g.is_private(0));
        assert_eq!(g.check_access(0, 1), Err(MmapError::Sigbus { offset: 0 }));
        let g = c(
            4 * PAGE,
            GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
        )
        .unwrap();
        assert_eq!(g.check_access(4 * PAGE - 1, 1), Ok(()));
        assert_eq!(
            g.check_access(4 * PAGE, 1),
            Err(MmapError::Sigbus { offset: 4 * PAGE })
        );
        assert_eq!(c(PAGE, 0).unwrap().mmap(true), Err(errno::ENODEV));
        assert_eq!(g.mmap(false), Err(errno::EINVAL));
    }
}
