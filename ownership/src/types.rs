//! Frame numbers, guest handles, owners and page states.

use core::fmt;
use stage2::{Ipa, PAGE_SHIFT, PhysAddr};

/// Pages in a 2 MiB block.
pub const BLOCK_PAGES: u64 = 512;

/// A physical frame number (4 KiB pages).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

/// A guest frame number: a 4 KiB page of a guest's IPA space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

macro_rules! frame {
    ($t:ident, $addr:ident, $name:literal) => {
        impl $t {
            /// The first address of the frame, or `None` if it does not fit
            /// in 64 bits.
            pub const fn addr(self) -> Option<$addr> {
                if self.0 > (u64::MAX >> PAGE_SHIFT) {
                    None
                } else {
                    Some($addr(self.0 << PAGE_SHIFT))
                }
            }

            /// The frame holding `addr`.
            pub const fn containing(addr: $addr) -> $t {
                $t(addr.0 >> PAGE_SHIFT)
            }

            /// `self + n`, or `None` on overflow.
            pub const fn checked_add(self, n: u64) -> Option<$t> {
                match self.0.checked_add(n) {
                    Some(v) => Some($t(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({:#x})"), self.0)
            }
        }
    };
}

frame!(Pfn, PhysAddr, "Pfn");
frame!(Gfn, Ipa, "Gfn");

/// A guest's handle (pKVM's `pkvm_handle_t`, 16 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GuestHandle(pub u16);

/// Who owns a page.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Owner {
    /// The host.
    Host,
    /// The hypervisor.
    Hyp,
    /// A guest, at a guest frame.
    Guest {
        /// The guest.
        handle: GuestHandle,
        /// Where the guest maps the page.
        gfn: Gfn,
    },
}

/// How one principal sees a page (pKVM's `pkvm_page_state`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PageState {
    /// Owned by this principal, and only it has access.
    Owned,
    /// Owned by this principal, and lent to another.
    SharedOwned,
    /// Borrowed from another principal.
    SharedBorrowed,
    /// No access.
    NoPage,
}

impl PageState {
    pub(crate) const fn bits(self) -> u64 {
        match self {
            PageState::Owned => 0,
            PageState::SharedOwned => 1,
            PageState::SharedBorrowed => 2,
            PageState::NoPage => 3,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> PageState {
        match bits & 3 {
            0 => PageState::Owned,
            1 => PageState::SharedOwned,
            2 => PageState::SharedBorrowed,
            _ => PageState::NoPage,
        }
    }

    /// The short name used in pKVM's tables: O, SO, SB, N.
    pub const fn short(self) -> &'static str {
        match self {
            PageState::Owned => "O",
            PageState::SharedOwned => "SO",
            PageState::SharedBorrowed => "SB",
            PageState::NoPage => "N",
        }
    }
}

/// How a guest sees one of its IPA pages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum GuestPageState {
    /// Mapped, owned by the guest (guest-private).
    Owned,
    /// Mapped, owned by the guest and shared with the host.
    SharedOwned,
    /// Mapped, a host page the host shares with the guest.
    SharedBorrowed,
    /// Nothing mapped.
    NoPage,
    /// The host force-reclaimed the page; the IPA is dead until teardown.
    Poisoned,
    /// The guest gave the page back; empty until the host maps a new one.
    Relinquished,
}

impl GuestPageState {
    /// Whether a new page may be mapped at this IPA.
    pub const fn is_empty(self) -> bool {
        matches!(self, GuestPageState::NoPage | GuestPageState::Relinquished)
    }

    /// The short name: O, SO, SB, N, P, R.
    pub const fn short(self) -> &'static str {
        match self {
            GuestPageState::Owned => "O",
            GuestPageState::SharedOwned => "SO",
            GuestPageState::SharedBorrowed => "SB",
            GuestPageState::NoPage => "N",
            GuestPageState::Poisoned => "P",
            GuestPageState::Relinquished => "R",
        }
    }
}

/// The size of a host↔guest share, donation, unshare or reclaim: one page
/// or one 2 MiB block (both addresses 2 MiB aligned).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Extent {
    /// One 4 KiB page.
    Page,
    /// One 2 MiB block: 512 pages.
    Block,
}

impl Extent {
    /// The extent for a page count, if it is 1 or 512.
    pub const fn from_pages(pages: u64) -> Option<Extent> {
        match pages {
            1 => Some(Extent::Page),
            BLOCK_PAGES => Some(Extent::Block),
            _ => None,
        }
    }

    /// Number of pages.
    pub const fn pages(self) -> u64 {
        match self {
            Extent::Page => 1,
            Extent::Block => BLOCK_PAGES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(Pfn(0x40000).addr(), Some(PhysAddr(0x4000_0000)));
        assert_eq!(Pfn(u64::MAX).addr(), None);
        assert_eq!(Gfn::containing(Ipa(0x1fff)), Gfn(1));
        assert_eq!(Pfn(u64::MAX).checked_add(1), None);
        assert_eq!(Extent::from_pages(512), Some(Extent::Block));
        assert_eq!(Extent::from_pages(2), None);
        for s in [
            PageState::Owned,
            PageState::SharedOwned,
            PageState::SharedBorrowed,
            PageState::NoPage,
        ] {
            assert_eq!(PageState::from_bits(s.bits()), s);
        }
    }
}
