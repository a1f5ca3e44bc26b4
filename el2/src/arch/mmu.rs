//! The EL2 stage-1 translation regime: identity maps built in static
//! tables inside the image.
//!
//! - 4 KiB granule, 39-bit VA (`TCR_EL2.T0SZ` = 25, walk from level 1), so
//!   EL2 can reach physical addresses below 512 GiB; the device tree must
//!   put RAM and the console UART there (QEMU `virt` does).
//! - `MAIR_EL2`: attribute 0 = Device-nGnRE, attribute 1 = Normal
//!   write-back read/write-allocate (inner and outer).
//! - Descriptors: AF set, AP = RW (AP[1] is RES1 in the single-privilege
//!   EL2 regime), inner-shareable Normal memory, Device memory XN.
//!
//! Two maps are built, both in `.bss` (hypervisor-owned):
//!
//! 1. [`early_map`], before the device tree is read: 512 × 1 GiB blocks,
//!    Device everywhere except the gigabytes holding the el2 image and the
//!    device tree, which are Normal. It only needs the image's and the
//!    tree's addresses, so the MMU and caches are on before any lock or
//!    atomic is used (spinlocks need Normal, cacheable memory).
//! 2. [`FinalMap`], from the device tree: every RAM region Normal (largest
//!    blocks: 1 GiB, 2 MiB, 4 KiB), the console UART Device, nothing else.
//!    Its configuration is also what secondary CPUs load.

use core::cell::UnsafeCell;
use core::fmt;

use super::entry::MmuConfig;

/// Bits of virtual (= physical) address EL2 translates.
pub const VA_BITS: u32 = 39;
/// First address EL2 cannot map.
pub const VA_LIMIT: u64 = 1 << VA_BITS;

const ENTRIES: usize = 512;
const PAGE: u64 = 4096;

/// `MAIR_EL2`: Attr0 = Device-nGnRE (0x04), Attr1 = Normal WB RWA (0xff).
const MAIR: u64 = 0x04 | (0xff << 8);
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
/// AP[2:1] = 0b01: read/write (AP[1] is RES1 at EL2).
const AP_RW: u64 = 1 << 6;
/// XN (bit 54) in the single-privilege EL2 regime.
const XN: u64 = 1 << 54;
const DESC_BLOCK: u64 = 0b01;
const DESC_TABLE_OR_PAGE: u64 = 0b11;
const ADDR_MASK: u64 = ((1 << 48) - 1) & !(PAGE - 1);

/// `SCTLR_EL2` RES1 bits for `HCR_EL2.E2H` = 0 (4, 5, 11, 16, 18, 22, 23,
/// 28, 29), as Linux's `SCTLR_EL2_RES1`.
const SCTLR_EL2_RES1: u64 = 0x30C5_0830;
const SCTLR_M: u64 = 1 << 0;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_SA: u64 = 1 << 3;
const SCTLR_I: u64 = 1 << 12;

/// How a range is mapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Memory {
    /// Normal, write-back, inner shareable, executable.
    Normal,
    /// Device-nGnRE, execute-never.
    Device,
}

impl Memory {
    const fn attrs(self) -> u64 {
        match self {
            Memory::Normal => ATTR_NORMAL | SH_INNER | AF | AP_RW,
            Memory::Device => ATTR_DEVICE | AF | AP_RW | XN,
        }
    }
}

/// Why a map could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// The range reaches past [`VA_LIMIT`] or is not page aligned.
    BadRange {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// The range overlaps one mapped before.
    Overlap(u64),
    /// The static table pool is exhausted.
    NoTables,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::BadRange { start, end } => write!(
                f,
                "range {start:#x}..{end:#x} is not page aligned or not below {VA_LIMIT:#x}"
            ),
            MapError::Overlap(at) => write!(f, "overlapping mappings at {at:#x}"),
            MapError::NoTables => write!(f, "out of EL2 page-table pages"),
        }
    }
}

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

/// A fixed pool of table pages in `.bss`; only the boot CPU touches it,
/// during boot.
struct TableArea<const N: usize>(UnsafeCell<[Table; N]>);

// SAFETY: written only by the boot CPU before secondaries start; afterwards
// only read by table walkers.
unsafe impl<const N: usize> Sync for TableArea<N> {}

impl<const N: usize> TableArea<N> {
    const fn new() -> Self {
        const EMPTY: Table = Table([0; ENTRIES]);
        TableArea(UnsafeCell::new([EMPTY; N]))
    }

    fn page(&self, i: usize) -> *mut u64 {
        debug_assert!(i < N);
        // The pointer arithmetic stays inside the array (`i < N`).
        self.0.get().cast::<Table>().wrapping_add(i).cast::<u64>()
    }
}

/// The early map's single level-1 table.
static EARLY: TableArea<1> = TableArea::new();
/// Tables of the final map (root + level-2/3 tables).
const FINAL_TABLES: usize = 24;
static FINAL: TableArea<FINAL_TABLES> = TableArea::new();

/// `TCR_EL2` for a 39-bit VA, 4 KiB granule, write-back inner-shareable
/// walks and the CPU's physical address size.
fn tcr() -> u64 {
    let t0sz = 64 - u64::from(VA_BITS);
    let irgn0 = 0b01 << 8;
    let orgn0 = 0b01 << 10;
    let sh0 = 0b11 << 12;
    let ps = super::sysreg::pa_range_field().min(0b101) << 16;
    let res1 = (1 << 31) | (1 << 23);
    t0sz | irgn0 | orgn0 | sh0 | ps | res1
}

fn config(root: *mut u64) -> MmuConfig {
    MmuConfig {
        mair: MAIR,
        tcr: tcr(),
        ttbr0: root as u64,
        sctlr: SCTLR_EL2_RES1 | SCTLR_M | SCTLR_C | SCTLR_SA | SCTLR_I,
    }
}

/// Writes one descriptor of a table the walker may read.
///
/// # Safety
///
/// `table` points to a live 512-entry table of this module and `idx < 512`.
unsafe fn write_entry(table: *mut u64, idx: usize, value: u64) {
    // SAFETY: per the contract the slot is inside a table this module owns.
    unsafe { table.add(idx).write_volatile(value) };
}

/// Reads one descriptor.
///
/// # Safety
///
/// As [`write_entry`].
unsafe fn read_entry(table: *mut u64, idx: usize) -> u64 {
    // SAFETY: per the contract the slot is inside a table this module owns.
    unsafe { table.add(idx).read_volatile() }
}

/// Builds the early map (see the module docs) and returns its
/// configuration. `normal` lists addresses whose gigabyte must be Normal
/// memory (the image, the device tree).
///
/// # Safety
///
/// Boot CPU only, before the MMU is on and before secondaries start; the
/// early table must not be in use.
pub unsafe fn early_map(normal: &[u64]) -> MmuConfig {
    let root = EARLY.page(0);
    for i in 0..ENTRIES {
        let base = (i as u64) << 30;
        let memory = if normal.iter().any(|&a| a >> 30 == i as u64) {
            Memory::Normal
        } else {
            Memory::Device
        };
        // SAFETY: `root` is the early table, `i < 512`; per the contract
        // nothing walks it yet.
        unsafe { write_entry(root, i, base | memory.attrs() | DESC_BLOCK) };
    }
    config(root)
}

/// The final identity map, built range by range from the device tree.
pub struct FinalMap {
    used: usize,
}

impl FinalMap {
    /// Starts an empty final map.
    ///
    /// # Safety
    ///
    /// Boot CPU only, once, before the final map is loaded.
    pub unsafe fn new() -> FinalMap {
        FinalMap { used: 1 }
    }

    fn root(&self) -> *mut u64 {
        FINAL.page(0)
    }

    fn alloc(&mut self) -> Result<*mut u64, MapError> {
        if self.used >= FINAL_TABLES {
            return Err(MapError::NoTables);
        }
        let t = FINAL.page(self.used);
        self.used += 1;
        Ok(t)
    }

    /// Identity-maps `[start, end)` (page aligned) as `memory`, with the
    /// largest blocks that fit.
    pub fn map(&mut self, start: u64, end: u64, memory: Memory) -> Result<(), MapError> {
        if start >= end
            || !start.is_multiple_of(PAGE)
            || !end.is_multiple_of(PAGE)
            || end > VA_LIMIT
        {
            return Err(MapError::BadRange { start, end });
        }
        let root = self.root();
        self.map_in(root, 1, 0, start, end, memory.attrs())
    }

    fn map_in(
        &mut self,
        table: *mut u64,
        level: u32,
        table_base: u64,
        start: u64,
        end: u64,
        attrs: u64,
    ) -> Result<(), MapError> {
        let shift = 39 - 9 * level;
        let size = 1u64 << shift;
        let mut addr = start;
        while addr < end {
            let idx = ((addr - table_base) >> shift) as usize;
            let entry_base = table_base + ((idx as u64) << shift);
            let chunk_end = end.min(entry_base + size);
            // SAFETY: `table` is a table of the final map and `idx < 512`
            // because `addr` lies inside the table's span.
            let old = unsafe { read_entry(table, idx) };
            if addr == entry_base && chunk_end == entry_base + size {
                if old != 0 {
                    return Err(MapError::Overlap(addr));
                }
                let kind = if level == 3 {
                    DESC_TABLE_OR_PAGE
                } else {
                    DESC_BLOCK
                };
                // SAFETY: as above; the final map is not live yet.
                unsafe { write_entry(table, idx, entry_base | attrs | kind) };
            } else {
                let next = if old == 0 {
                    let t = self.alloc()?;
                    // SAFETY: as above.
                    unsafe { write_entry(table, idx, t as u64 | DESC_TABLE_OR_PAGE) };
                    t
                } else if level < 3 && old & 0b11 == DESC_TABLE_OR_PAGE {
                    (old & ADDR_MASK) as *mut u64
                } else {
                    return Err(MapError::Overlap(addr));
                };
                self.map_in(next, level + 1, entry_base, addr, chunk_end, attrs)?;
            }
            addr = chunk_end;
        }
        Ok(())
    }

    /// Table pages used so far (root included).
    pub fn tables(&self) -> usize {
        self.used
    }

    /// The configuration that loads this map.
    pub fn config(&self) -> MmuConfig {
        config(self.root())
    }
}
