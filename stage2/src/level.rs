//! Translation table levels of the 4 KiB granule.

use crate::addr::PAGE_SHIFT;

/// Number of descriptors in one 4 KiB translation table.
pub const ENTRIES_PER_TABLE: usize = 512;

/// A translation level, 0 to 3 (no LPA2, so no level -1).
///
/// Level 3 holds pages; levels 1 and 2 may hold blocks (1 GiB and 2 MiB);
/// level 0 holds only tables.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Level(u8);

impl Level {
    /// Level 0: 512 GiB per entry, tables only.
    pub const L0: Level = Level(0);
    /// Level 1: 1 GiB per entry; may hold blocks.
    pub const L1: Level = Level(1);
    /// Level 2: 2 MiB per entry; may hold blocks.
    pub const L2: Level = Level(2);
    /// Level 3: 4 KiB pages.
    pub const L3: Level = Level(3);

    /// The level numbered `n`, if it exists for the 4 KiB granule.
    pub const fn new(n: u8) -> Option<Level> {
        if n <= 3 { Some(Level(n)) } else { None }
    }

    /// The level number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// log2 of the bytes one entry at this level maps.
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + 9 * (3 - self.0 as u32)
    }

    /// Bytes one entry at this level maps (4 KiB, 2 MiB, 1 GiB or 512 GiB).
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Whether a block (a leaf above level 3) is allowed at this level.
    pub const fn allows_block(self) -> bool {
        self.0 == 1 || self.0 == 2
    }

    /// Whether a leaf descriptor (block or page) is allowed at this level.
    pub const fn allows_leaf(self) -> bool {
        self.0 >= 1
    }

    /// The next level down, if any.
    pub const fn next(self) -> Option<Level> {
        if self.0 < 3 {
            Some(Level(self.0 + 1))
        } else {
            None
        }
    }

    /// Index of `addr` in a 512-entry table at this level.
    pub const fn index(self, addr: u64) -> usize {
        ((addr >> self.shift()) & (ENTRIES_PER_TABLE as u64 - 1)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shifts() {
        assert_eq!(Level::L3.size(), 4096);
        assert_eq!(Level::L2.size(), 2 << 20);
        assert_eq!(Level::L1.size(), 1 << 30);
        assert_eq!(Level::L0.size(), 512 << 30);
        assert_eq!(Level::L0.shift(), 39);
    }

    #[test]
    fn block_rules() {
        assert!(!Level::L0.allows_block());
        assert!(Level::L1.allows_block());
        assert!(Level::L2.allows_block());
        assert!(!Level::L3.allows_block());
        assert!(Level::L3.allows_leaf());
        assert!(!Level::L0.allows_leaf());
    }

    #[test]
    fn construction_and_navigation() {
        assert_eq!(Level::new(4), None);
        assert_eq!(Level::new(2), Some(Level::L2));
        assert_eq!(Level::L2.next(), Some(Level::L3));
        assert_eq!(Level::L3.next(), None);
        assert_eq!(Level::L2.index(0x4020_0000), 1);
        assert_eq!(Level::L1.index(0x4000_0000), 1);
        assert_eq!(Level::L3.index(0x1ff000), 511);
    }
}
