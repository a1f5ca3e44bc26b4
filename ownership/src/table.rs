//! The page ownership table: one 8-byte entry per 4 KiB page of RAM.
//!
//! # Entry layout (8 bytes per page)
//!
//! | bits  | field |
//! |-------|-------|
//! | 1:0   | host state (O=0, SO=1, SB=2, N=3) |
//! | 3:2   | hypervisor state |
//! | 5:4   | owner kind: host=0, hypervisor=1, guest=2 |
//! | 7:6   | reserved (0) |
//! | 63:8  | owner data |
//!
//! Owner data depends on the owner, since only one kind applies at a time:
//! - guest: handle in bits 23:8, gfn (40 bits, a 52-bit IPA) in 63:24;
//! - host: hypervisor pin count (u16) in bits 23:8, host→guest share count
//!   (u32) in bits 55:24;
//! - hypervisor: none.
//!
//! So the table costs **8 bytes per 4 KiB page** (0.2 % of RAM), pKVM's
//! `hyp_page` budget, while also recording the owning guest and gfn (which
//! pKVM keeps in host stage-2 annotations instead).

use crate::errno::Errno;
use crate::types::{Gfn, GuestHandle, Owner, PageState, Pfn};
use alloc::vec::Vec;

/// Bytes the table uses per page of RAM.
pub const BYTES_PER_PAGE: usize = core::mem::size_of::<PageEntry>();

/// Most RAM regions the table covers.
pub const MAX_REGIONS: usize = 16;

/// Largest gfn an entry can record (40 bits).
pub const MAX_GFN: u64 = (1 << 40) - 1;

/// A range of RAM: `pages` pages from `base`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemRegion {
    /// First frame.
    pub base: Pfn,
    /// Number of pages.
    pub pages: u64,
}

impl MemRegion {
    /// One past the last frame, if it fits.
    pub fn end(&self) -> Option<Pfn> {
        self.base.checked_add(self.pages)
    }

    /// Whether `[pfn, pfn + n)` lies inside this region (overflow-safe).
    pub fn contains(&self, pfn: Pfn, n: u64) -> bool {
        pfn.0 >= self.base.0 && n <= self.pages && pfn.0 - self.base.0 <= self.pages - n
    }
}

/// One page's entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct PageEntry(u64);

const OWNER_HOST: u64 = 0;
const OWNER_HYP: u64 = 1;
const OWNER_GUEST: u64 = 2;

impl PageEntry {
    /// A page owned by the host and not shared: host O, hypervisor N.
    pub const HOST_OWNED: PageEntry = PageEntry(PageState::NoPage.bits() << 2);

    /// A page owned by the hypervisor: host N, hypervisor O.
    pub const HYP_OWNED: PageEntry = PageEntry(PageState::NoPage.bits() | (OWNER_HYP << 4));

    /// The host's view.
    pub const fn host(self) -> PageState {
        PageState::from_bits(self.0)
    }

    /// The hypervisor's view.
    pub const fn hyp(self) -> PageState {
        PageState::from_bits(self.0 >> 2)
    }

    /// The owner.
    pub const fn owner(self) -> Owner {
        match (self.0 >> 4) & 3 {
            OWNER_HYP => Owner::Hyp,
            OWNER_GUEST => Owner::Guest {
                handle: GuestHandle((self.0 >> 8) as u16),
                gfn: Gfn(self.0 >> 24),
            },
            _ => Owner::Host,
        }
    }

    /// Hypervisor pins (0 unless the host owns the page).
    pub const fn pins(self) -> u16 {
        if (self.0 >> 4) & 3 == OWNER_HOST {
            (self.0 >> 8) as u16
        } else {
            0
        }
    }

    /// Host→guest shares (0 unless the host owns the page).
    pub const fn share_count(self) -> u32 {
        if (self.0 >> 4) & 3 == OWNER_HOST {
            (self.0 >> 24) as u32
        } else {
            0
        }
    }

    /// The same entry with different host and hypervisor states.
    pub const fn with_states(self, host: PageState, hyp: PageState) -> PageEntry {
        PageEntry((self.0 & !0xf) | host.bits() | (hyp.bits() << 2))
    }

    /// A host-owned entry with these states and counts.
    pub const fn host_owned(host: PageState, hyp: PageState, pins: u16, shares: u32) -> PageEntry {
        PageEntry(host.bits() | (hyp.bits() << 2) | ((pins as u64) << 8) | ((shares as u64) << 24))
    }

    /// A guest-owned entry; `gfn` must be at most [`MAX_GFN`].
    pub const fn guest_owned(host: PageState, handle: GuestHandle, gfn: Gfn) -> PageEntry {
        PageEntry(
            host.bits()
                | (PageState::NoPage.bits() << 2)
                | (OWNER_GUEST << 4)
                | ((handle.0 as u64) << 8)
                | ((gfn.0 & MAX_GFN) << 24),
        )
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// The table: every page of every RAM region.
pub struct OwnershipTable {
    regions: Vec<(MemRegion, Vec<PageEntry>)>,
}

impl OwnershipTable {
    /// A table over `regions` (any order; non-empty, non-overlapping, at
    /// most [`MAX_REGIONS`]), every page host-owned.
    pub fn new(regions: &[MemRegion]) -> Result<OwnershipTable, Errno> {
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(Errno::Einval);
        }
        let mut sorted: Vec<MemRegion> = regions.to_vec();
        sorted.sort_by_key(|r| r.base);
        for (i, r) in sorted.iter().enumerate() {
            let end = r.end().ok_or(Errno::Einval)?;
            if r.pages == 0 || end.addr().is_none() {
                return Err(Errno::Einval);
            }
            if let Some(next) = sorted.get(i + 1)
                && next.base < end
            {
                return Err(Errno::Einval);
            }
        }
        let mut out = Vec::new();
        for r in sorted {
            let pages = usize::try_from(r.pages).map_err(|_| Errno::Einval)?;
            let mut v = Vec::new();
            v.try_reserve_exact(pages).map_err(|_| Errno::Enomem)?;
            v.resize(pages, PageEntry::HOST_OWNED);
            out.push((r, v));
        }
        Ok(OwnershipTable { regions: out })
    }

    /// The regions, in address order.
    pub fn regions(&self) -> impl Iterator<Item = MemRegion> + '_ {
        self.regions.iter().map(|(r, _)| *r)
    }

    /// Total pages covered.
    pub fn pages(&self) -> u64 {
        self.regions.iter().map(|(r, _)| r.pages).sum()
    }

    /// Whether `[pfn, pfn + n)` is RAM inside a single region.
    #[inline]
    pub fn is_ram(&self, pfn: Pfn, n: u64) -> bool {
        n > 0 && self.regions.iter().any(|(r, _)| r.contains(pfn, n))
    }

    /// The region holding all of `[pfn, pfn + n)` and the index of `pfn`
    /// in it.
    #[inline(always)]
    fn slot(&self, pfn: Pfn, n: u64) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .position(|(r, _)| r.contains(pfn, n))
            .map(|i| (i, (pfn.0 - self.regions[i].0.base.0) as usize))
    }

    /// The entry of `pfn`, if it is RAM.
    #[inline]
    pub fn get(&self, pfn: Pfn) -> Option<PageEntry> {
        self.slot(pfn, 1).map(|(r, i)| self.regions[r].1[i])
    }

    /// Replaces the entry of `pfn`; returns `false` (and does nothing) if
    /// it is not RAM.
    #[inline]
    pub fn set(&mut self, pfn: Pfn, entry: PageEntry) -> bool {
        match self.slot(pfn, 1) {
            Some((r, i)) => {
                self.regions[r].1[i] = entry;
                true
            }
            None => false,
        }
    }

    /// The entries of `[pfn, pfn + n)`, if it is RAM inside one region: a
    /// range is checked or changed with one region search instead of one
    /// per page.
    #[inline]
    pub fn range(&self, pfn: Pfn, n: u64) -> Option<&[PageEntry]> {
        let (r, i) = self.slot(pfn, n)?;
        self.regions[r].1.get(i..i + n as usize)
    }

    /// The entries of `[pfn, pfn + n)` for changing, if it is RAM inside
    /// one region.
    #[inline(always)]
    pub fn range_mut(&mut self, pfn: Pfn, n: u64) -> Option<&mut [PageEntry]> {
        // One pass: the region found is the slice indexed (no second
        // lookup of it by position).
        let (r, v) = self.regions.iter_mut().find(|(r, _)| r.contains(pfn, n))?;
        let i = (pfn.0 - r.base.0) as usize;
        v.get_mut(i..i + n as usize)
    }

    /// Every page with its entry, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (Pfn, PageEntry)> + '_ {
        self.regions.iter().flat_map(|(r, v)| {
            v.iter()
                .enumerate()
                .map(move |(i, e)| (Pfn(r.base.0 + i as u64), *e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_eight_bytes() {
        assert_eq!(BYTES_PER_PAGE, 8);
    }

    #[test]
    fn entry_fields_round_trip() {
        let e = PageEntry::HOST_OWNED;
        assert_eq!(
            (e.host(), e.hyp(), e.owner()),
            (PageState::Owned, PageState::NoPage, Owner::Host)
        );
        let e = PageEntry::host_owned(
            PageState::SharedOwned,
            PageState::SharedBorrowed,
            u16::MAX,
            u32::MAX,
        );
        assert_eq!(e.pins(), u16::MAX);
        assert_eq!(e.share_count(), u32::MAX);
        assert_eq!(e.hyp(), PageState::SharedBorrowed);
        let e = PageEntry::guest_owned(PageState::NoPage, GuestHandle(0x1234), Gfn(MAX_GFN));
        assert_eq!(
            e.owner(),
            Owner::Guest {
                handle: GuestHandle(0x1234),
                gfn: Gfn(MAX_GFN)
            }
        );
        assert_eq!((e.pins(), e.share_count()), (0, 0));
        assert_eq!(
            e.with_states(PageState::SharedBorrowed, PageState::NoPage)
                .owner(),
            e.owner()
        );
        let h = PageEntry::HYP_OWNED;
        assert_eq!(
            (h.host(), h.hyp(), h.owner()),
            (PageState::NoPage, PageState::Owned, Owner::Hyp)
        );
    }

    #[test]
    fn regions_are_validated() {
        let r = |b, p| MemRegion {
            base: Pfn(b),
            pages: p,
        };
        assert!(OwnershipTable::new(&[]).is_err());
        assert!(OwnershipTable::new(&[r(0x100, 0)]).is_err());
        assert!(OwnershipTable::new(&[r(0x100, 0x10), r(0x108, 4)]).is_err());
        assert!(OwnershipTable::new(&[r(u64::MAX - 1, 4)]).is_err());
        let t = OwnershipTable::new(&[r(0x200, 4), r(0x100, 0x10)]).unwrap();
        assert_eq!(t.pages(), 0x14);
        assert!(t.is_ram(Pfn(0x10f), 1));
        assert!(!t.is_ram(Pfn(0x10f), 2));
        assert!(!t.is_ram(Pfn(0x110), 1));
        assert!(!t.is_ram(Pfn(0x100), 0));
        assert!(!t.is_ram(Pfn(u64::MAX), u64::MAX));
        assert_eq!(t.iter().next().unwrap().0, Pfn(0x100));
    }
}
