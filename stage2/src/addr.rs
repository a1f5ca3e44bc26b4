//! Address types: intermediate physical addresses and physical addresses.

use core::fmt;

/// log2 of the translation granule (4 KiB).
pub const PAGE_SHIFT: u32 = 12;
/// Size of a translation granule (and of one page) in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The raw address.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// Whether the address is 4 KiB aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }

            /// The address rounded down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// The 4 KiB frame number of this address.
            pub const fn frame(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// An intermediate physical address: the input of a stage-2 translation.
    Ipa,
    "Ipa"
);
address_type!(
    /// A physical address: the output of a stage-2 translation, and the
    /// location of translation tables themselves.
    PhysAddr,
    "PhysAddr"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert!(Ipa(0x20_0000).is_aligned(0x20_0000));
        assert!(!Ipa(0x20_1000).is_aligned(0x20_0000));
        assert!(Ipa(0x20_1000).is_page_aligned());
        assert!(!PhysAddr(0x20_1001).is_page_aligned());
        assert_eq!(Ipa(0x20_1234).align_down(PAGE_SIZE), Ipa(0x20_1000));
        assert_eq!(PhysAddr(0x4000_1000).frame(), 0x40001);
    }

    #[test]
    fn checked_add_detects_overflow() {
        assert_eq!(Ipa(u64::MAX - 0xfff).checked_add(0x1000), None);
        assert_eq!(Ipa(0x1000).checked_add(0x1000), Some(Ipa(0x2000)));
    }

    #[test]
    fn formatting() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{:?}", Ipa(0x1000)), "Ipa(0x1000)");
        assert_eq!(format!("{}", PhysAddr(0x1000)), "0x1000");
    }
}
