//! The device tree: checking it, reading the platform from it, and writing
//! the host's copy.
//!
//! - [`validate`] walks the whole blob once (header, memory reservation
//!   block, every structure token, every name) before anything else reads
//!   it. The reader, `flat_device_tree`, returns `Option`/`Result` for
//!   missing things but still indexes arrays on some malformed inputs (more
//!   than 64 levels, unbalanced nodes, offsets outside the blob) and
//!   recurses once per level; after [`validate`] none of that can happen
//!   (at most [`MAX_DEPTH`] levels, balanced, every offset inside). A bad
//!   tree is reported on the UART as a [`DtError`] and el2 stops.
//! - [`strip_nops`] then removes `FDT_NOP` tokens from the structure
//!   block, in place: `flat_device_tree` 3.1 stops looking for a node at a
//!   NOP between two sibling nodes (its `find_node`, `all_nodes` and
//!   `skip_current_node` loops only accept `FDT_BEGIN_NODE`), and libfdt's
//!   `fdt_nop_node`, which QEMU uses on a `-dtb` tree's `/memory` nodes (as
//!   do other bootloaders), leaves exactly that.
//! - [`Platform::parse`] takes RAM, CPUs, GIC, UART, PSCI method and the
//!   MMIO regions from the tree. It allocates nothing (it runs before the
//!   heap exists).
//! - [`write_host_tree`] copies every node, property and memory reservation
//!   with `vm-fdt` and adds a `no-map` child of `/reserved-memory` per
//!   hypervisor region (creating `/reserved-memory` if there is none).

use alloc::vec::Vec;
use core::fmt;

use flat_device_tree::Fdt;
use flat_device_tree::node::{CellSize, FdtNode};
use vm_fdt::{FdtReserveEntry, FdtWriter};

/// Most CPUs el2 supports; more in the device tree are ignored.
pub const MAX_CPUS: usize = 8;

/// MPIDR affinity fields (Aff3, Aff2, Aff1, Aff0).
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;

/// Largest device tree el2 accepts (Linux's limit too).
pub const MAX_SIZE: usize = 2 << 20;
/// Deepest node nesting el2 accepts (the root is depth 1).
pub const MAX_DEPTH: usize = 16;
/// Longest node or property name accepted.
const MAX_NAME: usize = 255;

/// Why the device tree cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DtError {
    /// No device tree magic at the address.
    NoMagic(u64),
    /// A header field is out of range.
    Header(&'static str),
    /// The structure block is malformed at this offset.
    Structure {
        /// Offset inside the structure block.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A node or property el2 needs is missing or unusable.
    Missing(&'static str),
    /// More entries of a kind than el2 has room for.
    TooMany(&'static str),
    /// The host's tree could not be written.
    Write(&'static str),
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtError::NoMagic(at) => write!(f, "no device tree (magic 0xd00dfeed) at {at:#x}"),
            DtError::Header(what) => write!(f, "bad device tree header: {what}"),
            DtError::Structure { offset, what } => write!(
                f,
                "malformed device tree structure block at offset {offset:#x}: {what}"
            ),
            DtError::Missing(what) => write!(f, "device tree lacks {what}"),
            DtError::TooMany(what) => write!(f, "device tree has too many {what}"),
            DtError::Write(what) => write!(f, "cannot write the host's device tree: {what}"),
        }
    }
}

fn be32(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(data: &[u8], off: usize) -> Option<u64> {
    let hi = be32(data, off)?;
    let lo = be32(data, off.checked_add(4)?)?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The `totalsize` header field of the blob starting at `header` (at
/// least [`HEADER_SIZE`] bytes).
pub fn total_size(header: &[u8], at: u64) -> Result<usize, DtError> {
    if be32(header, 0) != Some(FDT_MAGIC) {
        return Err(DtError::NoMagic(at));
    }
    let size = be32(header, 4).ok_or(DtError::Header("truncated"))? as usize;
    if !(HEADER_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DtError::Header("totalsize below 40 bytes or above 2 MiB"));
    }
    Ok(size)
}

/// A name (NUL-terminated) at `off` in `data`: its length without the NUL.
fn name_at(data: &[u8], off: usize) -> Option<&str> {
    let rest = data.get(off..)?;
    let len = rest.iter().take(MAX_NAME + 1).position(|&b| b == 0)?;
    let name = rest.get(..len)?;
    if name.iter().all(|b| b.is_ascii_graphic()) {
        core::str::from_utf8(name).ok()
    } else {
        None
    }
}

/// Checks every structural property the reader relies on (module docs).
pub fn validate(blob: &[u8]) -> Result<(), DtError> {
    let hdr = |off: usize| be32(blob, off).ok_or(DtError::Header("truncated"));
    if hdr(0)? != FDT_MAGIC {
        return Err(DtError::NoMagic(blob.as_ptr() as u64));
    }
    let total = hdr(4)? as usize;
    if total != blob.len() || total < HEADER_SIZE {
        return Err(DtError::Header("totalsize"));
    }
    let (off_struct, off_strings, off_rsv) =
        (hdr(8)? as usize, hdr(12)? as usize, hdr(16)? as usize);
    let (version, last_comp) = (hdr(20)?, hdr(24)?);
    let (size_strings, size_struct) = (hdr(32)? as usize, hdr(36)? as usize);
    if version < 17 || last_comp > 17 {
        return Err(DtError::Header("version (need 17, compatible down to 16)"));
    }
    let inside = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= total);
    if !inside(off_struct, size_struct) || !off_struct.is_multiple_of(4) || off_struct < HEADER_SIZE
    {
        return Err(DtError::Header("structure block outside the blob"));
    }
    if !inside(off_strings, size_strings) || off_strings < HEADER_SIZE {
        return Err(DtError::Header("strings block outside the blob"));
    }
    if !off_rsv.is_multiple_of(8) || off_rsv < HEADER_SIZE || off_rsv >= total {
        return Err(DtError::Header("memory reservation block"));
    }
    // Memory reservations: (address, size) pairs ending with (0, 0).
    let mut off = off_rsv;
    loop {
        let (Some(a), Some(s)) = (be64(blob, off), be64(blob, off + 8)) else {
            return Err(DtError::Header("memory reservation block not terminated"));
        };
        off += 16;
        if a == 0 && s == 0 {
            break;
        }
    }

    let st = &blob[off_struct..off_struct + size_struct];
    let strings = &blob[off_strings..off_strings + size_strings];
    let err = |offset: usize, what: &'static str| DtError::Structure { offset, what };
    let mut pos = 0usize;
    let mut depth = 0usize;
    let mut roots = 0usize;
    // Per open node, the properties el2 reads (`KEYED`) already seen.
    let mut seen = [0u8; MAX_DEPTH + 1];
    loop {
        let token = be32(st, pos).ok_or(err(pos, "ends without FDT_END"))?;
        let at = pos;
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                if depth == 0 {
                    roots += 1;
                    if roots > 1 {
                        return Err(err(at, "more than one root node"));
                    }
                }
                let name = name_at(st, pos).ok_or(err(pos, "bad node name"))?;
                if depth == 0 && !name.is_empty() {
                    return Err(err(at, "root node has a name"));
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(err(at, "nodes nested too deep"));
                }
                seen[depth] = 0;
                pos = (pos + name.len() + 1).next_multiple_of(4);
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err(err(at, "property outside any node"));
                }
                let len = be32(st, pos).ok_or(err(pos, "truncated property"))? as usize;
                let nameoff = be32(st, pos + 4).ok_or(err(pos, "truncated property"))? as usize;
                pos += 8;
                if pos.checked_add(len).is_none_or(|end| end > st.len()) {
                    return Err(err(at, "property value past the structure block"));
                }
                let name = name_at(strings, nameoff).ok_or(err(at, "bad property name"))?;
                if name.is_empty() {
                    return Err(err(at, "empty property name"));
                }
                // Names are unique in a node (the devicetree
                // specification); readers of a tree that repeats one
                // differ on which value counts (`flat_device_tree` takes
                // the first `device_type` but the last `#address-cells`),
                // so a repeat of a property el2 reads is refused.
                if let Some(k) = KEYED.iter().position(|&n| n == name) {
                    let bit = 1u8 << k;
                    if seen[depth] & bit != 0 {
                        return Err(err(
                            at,
                            "a node repeats #address-cells, #size-cells, reg, device_type or status",
                        ));
                    }
                    seen[depth] |= bit;
                }
                // Cell counts are one cell of at most 4 (the devicetree
                // specification's widest address): a wider value is read
                // differently by different readers (the full word here,
                // its low byte by `flat_device_tree`).
                if (name == "#address-cells" || name == "#size-cells")
                    && (len != 4 || be32(st, pos).is_none_or(|cells| cells > 4))
                {
                    return Err(err(
                        at,
                        "#address-cells or #size-cells not one cell of 0 to 4",
                    ));
                }
                pos = (pos + len).next_multiple_of(4);
            }
            FDT_NOP => {}
            FDT_END_NODE => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(err(at, "FDT_END_NODE without a node"))?;
            }
            FDT_END => {
                if depth != 0 || roots != 1 {
                    return Err(err(at, "FDT_END inside a node or without a root"));
                }
                return Ok(());
            }
            _ => return Err(err(at, "unknown token")),
        }
    }
}

/// The properties [`validate`] refuses to see twice in one node.
const KEYED: [&str; 5] = [
    "#address-cells",
    "#size-cells",
    "reg",
    "device_type",
    "status",
];

/// RAM as read straight from the structure block of `blob` (a tree that
/// passed [`validate`]; `FDT_NOP` tokens allowed): the `reg` ranges of the
/// enabled nodes with `device_type = "memory"`, decoded with their parent's
/// `#address-cells` / `#size-cells` (default 2 / 1; other than 1–2 / 0–2
/// skipped), normalized. Reads only: for the checks made before the tree is
/// edited in place (and so before [`Platform::parse`] can read it).
pub fn raw_ram(blob: &[u8]) -> Ranges<MAX_RAM> {
    /// What is known about the open node at one depth.
    #[derive(Clone, Copy)]
    struct Open {
        /// `#address-cells`, `#size-cells` for its children.
        cells: (u32, u32),
        memory: bool,
        enabled: bool,
        /// Offset and length of its `reg` value in the structure block.
        reg: (usize, usize),
        /// The properties above already read (bits: address cells, size
        /// cells, device_type, status, reg): a repeated property keeps its
        /// first value, as `flat_device_tree`'s lookups (and so
        /// [`Platform::parse`]) do.
        seen: u8,
    }
    const FRESH: Open = Open {
        cells: (2, 1),
        memory: false,
        enabled: true,
        reg: (0, 0),
        seen: 0,
    };
    /// A string property's value as `flat_device_tree`'s `as_str` sees it:
    /// without its trailing NULs.
    fn trimmed(value: &[u8]) -> &[u8] {
        let end = value.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &value[..end]
    }
    let mut out = Ranges::new();
    let field = |off: usize| be32(blob, off).map(|v| v as usize);
    let (Some(off_struct), Some(off_strings), Some(size_strings), Some(size_struct)) =
        (field(8), field(12), field(32), field(36))
    else {
        return out;
    };
    let (Some(st), Some(strings)) = (
        blob.get(off_struct..off_struct.saturating_add(size_struct)),
        blob.get(off_strings..off_strings.saturating_add(size_strings)),
    ) else {
        return out;
    };
    let mut open = [FRESH; MAX_DEPTH + 1];
    let mut depth = 0usize;
    let mut pos = 0usize;
    while let Some(token) = be32(st, pos) {
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                let Some(name) = name_at(st, pos) else {
                    break;
                };
                pos = (pos + name.len() + 1).next_multiple_of(4);
                depth += 1;
                let Some(slot) = open.get_mut(depth) else {
                    break;
                };
                *slot = FRESH;
            }
            FDT_PROP => {
                let (Some(len), Some(nameoff)) = (be32(st, pos), be32(st, pos + 4)) else {
                    break;
                };
                let (len, start) = (len as usize, pos + 8);
                pos = (start + len).next_multiple_of(4);
                let (Some(value), Some(name), Some(node)) = (
                    st.get(start..start + len),
                    name_at(strings, nameoff as usize),
                    open.get_mut(depth),
                ) else {
                    continue;
                };
                let bit = match name {
                    "#address-cells" => 1,
                    "#size-cells" => 2,
                    "device_type" => 4,
                    "status" => 8,
                    "reg" => 16,
                    _ => 0,
                };
                if bit == 0 || node.seen & bit != 0 {
                    continue;
                }
                node.seen |= bit;
                match name {
                    "#address-cells" => node.cells.0 = be32(value, 0).unwrap_or(2),
                    "#size-cells" => node.cells.1 = be32(value, 0).unwrap_or(1),
                    "device_type" => node.memory = trimmed(value) == b"memory",
                    "status" => {
                        node.enabled = matches!(trimmed(value), b"okay" | b"ok");
                    }
                    _ => node.reg = (start, len),
                }
            }
            FDT_END_NODE => {
                if let (Some(node), Some(parent)) = (
                    open.get(depth),
                    depth.checked_sub(1).and_then(|d| open.get(d)),
                ) && node.memory
                    && node.enabled
                {
                    let (ac, sc) = (parent.cells.0 as usize, parent.cells.1 as usize);
                    if (1..=2).contains(&ac) && sc <= 2 {
                        let reg = st.get(node.reg.0..node.reg.0 + node.reg.1).unwrap_or(&[]);
                        let cell = |at: usize, n: usize| {
                            (0..n).try_fold(0u64, |v, i| {
                                be32(reg, at + 4 * i).map(|c| (v << 32) | u64::from(c))
                            })
                        };
                        for entry in 0..reg.len() / (4 * (ac + sc)) {
                            let at = entry * 4 * (ac + sc);
                            if let (Some(base), Some(size)) = (cell(at, ac), cell(at + 4 * ac, sc))
                                && size > 0
                            {
                                out.push(Range { base, size });
                            }
                        }
                    }
                }
                depth = depth.saturating_sub(1);
            }
            FDT_END => break,
            _ => {}
        }
    }
    out.normalize();
    out
}

/// Removes every `FDT_NOP` token from the structure block of `blob` (a
/// tree that passed [`validate`]) by moving the other tokens down, and
/// shrinks `size_dt_struct` to match. The result passes [`validate`] too.
pub fn strip_nops(blob: &mut [u8]) {
    let (Some(off), Some(size)) = (be32(blob, 8), be32(blob, 36)) else {
        return;
    };
    let (off, size) = (off as usize, size as usize);
    let Some(st) = blob.get_mut(off..off + size) else {
        return;
    };
    let mut read = 0usize;
    let mut write = 0usize;
    while let Some(token) = be32(st, read) {
        let len = match token {
            FDT_BEGIN_NODE => {
                let name = st[read + 4..].iter().position(|&b| b == 0).unwrap_or(0);
                4 + (name + 1).next_multiple_of(4)
            }
            FDT_PROP => 12 + (be32(st, read + 4).unwrap_or(0) as usize).next_multiple_of(4),
            _ => 4,
        };
        let end = (read + len).min(st.len());
        if token != FDT_NOP {
            st.copy_within(read..end, write);
            write += end - read;
        }
        read = end;
        if token == FDT_END {
            break;
        }
    }
    if write < size {
        blob[36..40].copy_from_slice(&(write as u32).to_be_bytes());
    }
}

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Range {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Range {
    /// One past the last address (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.base, self.end())
    }
}

/// A fixed-capacity list of ranges (no heap).
#[derive(Clone, Copy, Debug)]
pub struct Ranges<const N: usize> {
    items: [Range; N],
    len: usize,
}

impl<const N: usize> Default for Ranges<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Ranges<N> {
    /// An empty list.
    pub const fn new() -> Self {
        Ranges {
            items: [Range { base: 0, size: 0 }; N],
            len: 0,
        }
    }

    /// Appends `r`; `false` if full.
    pub fn push(&mut self, r: Range) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = r;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[Range] {
        &self.items[..self.len]
    }

    /// Sorts by base and merges overlapping or touching ranges.
    pub fn normalize(&mut self) {
        let items = &mut self.items[..self.len];
        items.sort_unstable_by_key(|r| r.base);
        let mut out = 0usize;
        for i in 0..self.len {
            let r = self.items[i];
            if r.size == 0 {
                continue;
            }
            if out > 0 && r.base <= self.items[out - 1].end() {
                let last = &mut self.items[out - 1];
                let end = last.end().max(r.end());
                last.size = end - last.base;
            } else {
                self.items[out] = r;
                out += 1;
            }
        }
        self.len = out;
    }
}

/// The interrupt controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gic {
    /// GICv3: distributor and redistributor regions.
    V3 {
        /// Distributor.
        dist: Range,
        /// Redistributors.
        redist: Range,
    },
    /// GICv2: distributor and CPU interface.
    V2 {
        /// Distributor.
        dist: Range,
        /// CPU interface.
        cpu: Range,
    },
    /// None found.
    None,
}

/// Most RAM regions (the ownership table's limit).
pub const MAX_RAM: usize = 16;
/// Most MMIO regions given to the host.
pub const MAX_MMIO: usize = 64;

/// What el2 takes from the device tree.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// RAM (nodes with `device_type = "memory"`), sorted.
    pub ram: Ranges<MAX_RAM>,
    /// Device regions outside RAM (module docs of `el2/src/arch/layout.rs`).
    pub mmio: Ranges<MAX_MMIO>,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: Ranges<MAX_MMIO>,
    /// MPIDR of each CPU under `/cpus`, boot CPU first.
    pub cpus: [u64; MAX_CPUS],
    /// Number of entries of `cpus` used.
    pub cpu_count: usize,
    /// CPUs listed beyond [`MAX_CPUS`] (ignored).
    pub cpus_ignored: usize,
    /// The console PL011 base, if the tree names one.
    pub uart: Option<u64>,
    /// The GIC.
    pub gic: Gic,
    /// The GICv3 ITS (its register frames), if the tree has one enabled.
    pub its: Option<Range>,
    /// `/psci` `method` is `smc`.
    pub psci_smc: bool,
}

fn node_status_ok(node: FdtNode<'_, '_>) -> bool {
    match node.property("status").and_then(|p| p.as_str()) {
        None => true,
        Some(s) => s == "okay" || s == "ok",
    }
}

fn is_memory(node: FdtNode<'_, '_>) -> bool {
    node.property("device_type").and_then(|p| p.as_str()) == Some("memory")
}

fn base_name<'a>(node: FdtNode<'_, 'a>) -> &'a str {
    node.name.split('@').next().unwrap_or("")
}

fn regs<'a>(node: FdtNode<'_, 'a>) -> impl Iterator<Item = Range> + 'a {
    node.reg().filter_map(|r| {
        Some(Range {
            base: r.starting_address as u64,
            size: r.size? as u64,
        })
    })
}

/// The child of the root named exactly `name` (`chosen`, `cpus`, `psci`,
/// `reserved-memory`): the node Linux reads and el2's writer edits.
/// `Fdt::find_node` and `Fdt::chosen` would also take `chosen@0` or an
/// alias, and so read another node than the one the host sees.
pub fn top_node<'b, 'a>(fdt: &'b Fdt<'a>, name: &str) -> Option<FdtNode<'b, 'a>> {
    fdt.find_node("/")?.children().find(|n| n.name == name)
}

/// `/chosen/bootargs` of the node [`top_node`] names `chosen`.
pub fn bootargs<'a>(fdt: &Fdt<'a>) -> Option<&'a str> {
    top_node(fdt, "chosen")?
        .property("bootargs")
        .and_then(|p| p.as_str())
}

impl Platform {
    /// Reads the platform from a tree that passed [`validate`]; `own_mpidr`
    /// is the boot CPU's MPIDR (its affinity fields).
    pub fn parse(fdt: &Fdt<'_>, own_mpidr: u64) -> Result<Platform, DtError> {
        let mut p = Platform {
            ram: Ranges::new(),
            mmio: Ranges::new(),
            reserved: Ranges::new(),
            cpus: [0; MAX_CPUS],
            cpu_count: 0,
            cpus_ignored: 0,
            uart: None,
            gic: Gic::None,
            its: None,
            psci_smc: false,
        };
        let root = fdt.find_node("/").ok_or(DtError::Missing("a root node"))?;

        // One walk over every node finds what is looked up by type or
        // compatible string (each walk of the tree is costly under TCG,
        // where el2 boots): the memory nodes, the first GICv3 and GICv2
        // (first in tree order, enabled or not, as `find_compatible`), the
        // enabled ITS nodes and the first PL011.
        let mut gic_v3 = None;
        let mut gic_v2 = None;
        let mut its_nodes = (None, false);
        let mut first_pl011 = None;
        for node in fdt.all_nodes() {
            if is_memory(node) && node_status_ok(node) {
                // RAM.
                for r in regs(node).filter(|r| r.size > 0) {
                    if !p.ram.push(r) {
                        return Err(DtError::TooMany("RAM regions (max 16)"));
                    }
                }
            }
            let Some(compatible) = node.compatible() else {
                continue;
            };
            let has = |name: &str| compatible.all().any(|c| c == name);
            if gic_v3.is_none() && has("arm,gic-v3") {
                gic_v3 = Some(node);
            }
            if gic_v2.is_none() && (has("arm,cortex-a15-gic") || has("arm,gic-400")) {
                gic_v2 = Some(node);
            }
            if has("arm,gic-v3-its") && node_status_ok(node) {
                match its_nodes {
                    (None, _) => its_nodes.0 = Some(node),
                    (Some(_), _) => its_nodes.1 = true,
                }
            }
            if first_pl011.is_none() && has("arm,pl011") {
                first_pl011 = Some(node);
            }
        }
        p.ram.normalize();
        if p.ram.as_slice().is_empty() {
            return Err(DtError::Missing("a memory node with a reg property"));
        }

        // Reserved memory.
        for r in fdt.memory_reservations() {
            let r = Range {
                base: r.address() as u64,
                size: r.size() as u64,
            };
            if !p.reserved.push(r) {
                return Err(DtError::TooMany("memory reservations"));
            }
        }
        if let Some(rm) = top_node(fdt, "reserved-memory") {
            for child in rm.children() {
                for r in regs(child) {
                    if !p.reserved.push(r) {
                        return Err(DtError::TooMany("reserved-memory regions"));
                    }
                }
            }
        }

        // CPUs: boot CPU first.
        let cpus = top_node(fdt, "cpus").ok_or(DtError::Missing("/cpus"))?;
        let cpu_cells = match cpus.cell_sizes().address_cells {
            CellSize::One => 1,
            CellSize::Two => 2,
            _ => return Err(DtError::Missing("/cpus #address-cells of 1 or 2")),
        };
        let mut all = [u64::MAX; MAX_CPUS];
        let mut n = 0usize;
        let mut own_index = None;
        for cpu in cpus.children() {
            let is_cpu = cpu.property("device_type").and_then(|d| d.as_str()) == Some("cpu");
            if !is_cpu || !node_status_ok(cpu) {
                continue;
            }
            let reg = cpu.property("reg").ok_or(DtError::Missing("a cpu reg"))?;
            let mpidr = match cpu_cells {
                1 => be32(reg.value, 0).map(u64::from),
                _ => be64(reg.value, 0),
            }
            .ok_or(DtError::Missing("a cpu reg of #address-cells"))?
                & MPIDR_AFF_MASK;
            if mpidr == own_mpidr {
                own_index = Some(n);
            }
            match all.get_mut(n) {
                Some(slot) => *slot = mpidr,
                None => {
                    if mpidr == own_mpidr {
                        return Err(DtError::TooMany("CPUs before the boot CPU"));
                    }
                    p.cpus_ignored += 1;
                    continue;
                }
            }
            n += 1;
        }
        let own = own_index.ok_or(DtError::Missing("a /cpus entry for the boot CPU"))?;
        p.cpus[0] = all[own];
        let mut k = 1;
        for (i, &m) in all.iter().take(n).enumerate() {
            if i != own {
                p.cpus[k] = m;
                k += 1;
            }
        }
        p.cpu_count = n;

        // PSCI.
        let psci = top_node(fdt, "psci").ok_or(DtError::Missing("/psci"))?;
        p.psci_smc = psci.property("method").and_then(|m| m.as_str()) == Some("smc");

        // GIC.
        if let Some(gic) = gic_v3 {
            // el2 mediates the LPI registers of the redistributors it
            // finds in one region; a second region would be the host's.
            let regions = gic
                .property("#redistributor-regions")
                .and_then(|p| p.as_usize())
                .unwrap_or(1);
            if regions > 1 {
                return Err(DtError::TooMany(
                    "GICv3 redistributor regions (el2 mediates one)",
                ));
            }
            let mut r = regs(gic);
            let dist = r
                .next()
                .ok_or(DtError::Missing("the GICv3 distributor reg"))?;
            let redist = r
                .next()
                .ok_or(DtError::Missing("the GICv3 redistributor reg"))?;
            p.gic = Gic::V3 { dist, redist };
        } else if let Some(gic) = gic_v2 {
            let mut r = regs(gic);
            let dist = r
                .next()
                .ok_or(DtError::Missing("the GICv2 distributor reg"))?;
            let cpu = r
                .next()
                .ok_or(DtError::Missing("the GICv2 CPU interface reg"))?;
            p.gic = Gic::V2 { dist, cpu };
        }
        if let (Some(its), second) = its_nodes {
            // An ITS el2 does not mediate could be pointed at any memory.
            if second {
                return Err(DtError::TooMany("GICv3 ITS nodes (el2 mediates one)"));
            }
            p.its = Some(
                regs(its)
                    .next()
                    .ok_or(DtError::Missing("the GICv3 ITS reg"))?,
            );
        }

        // Console: /chosen stdout-path if it is a PL011, else the first PL011.
        let is_pl011 = |n: FdtNode<'_, '_>| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
        };
        // `stdout-path` is `<path or alias>[:<options>]`.
        let stdout = top_node(fdt, "chosen")
            .and_then(|c| c.property("stdout-path"))
            .and_then(|p| p.as_str())
            .and_then(|path| fdt.find_node(path.split(':').next().unwrap_or(path)))
            .filter(|n| is_pl011(*n));
        let uart = stdout.or(first_pl011);
        p.uart = uart.and_then(|u| regs(u).next()).map(|r| r.base);

        // MMIO: the reg of every enabled device node, and the windows of
        // buses that translate addresses (`ranges` with entries); children
        // of identity buses (empty `ranges`) are walked.
        for child in root.children() {
            collect_mmio(child, &mut p.mmio, 2)?;
        }
        p.mmio.normalize();
        Ok(p)
    }
}

/// Adds the device regions of `node` (and, through identity buses, of its
/// children) to `out`.
fn collect_mmio(
    node: FdtNode<'_, '_>,
    out: &mut Ranges<MAX_MMIO>,
    depth: usize,
) -> Result<(), DtError> {
    let skip = matches!(
        base_name(node),
        "memory" | "reserved-memory" | "chosen" | "aliases" | "cpus" | "psci" | "__symbols__"
    );
    if skip || is_memory(node) || !node_status_ok(node) || depth > MAX_DEPTH {
        return Ok(());
    }
    for r in regs(node).filter(|r| r.size > 0) {
        if !out.push(r) {
            return Err(DtError::TooMany("device regions (max 64)"));
        }
    }
    match node.property("ranges") {
        Some(prop) if prop.value.is_empty() => {
            for child in node.children() {
                collect_mmio(child, out, depth + 1)?;
            }
        }
        Some(_) => {
            for w in node.ranges() {
                let r = Range {
                    base: w.parent_bus_address as u64,
                    size: w.size as u64,
                };
                if r.size > 0 && !out.push(r) {
                    return Err(DtError::TooMany("device regions (max 64)"));
                }
            }
        }
        None => {}
    }
    Ok(())
}

/// The header's `boot_cpuid_phys`.
fn boot_cpuid(blob: &[u8]) -> u32 {
    be32(blob, 28).unwrap_or(0)
}

fn write_err(e: vm_fdt::Error) -> DtError {
    DtError::Write(match e {
        vm_fdt::Error::InvalidNodeName => "invalid node name",
        vm_fdt::Error::InvalidPropertyName => "invalid property name",
        vm_fdt::Error::TotalSizeTooLarge => "tree too large",
        vm_fdt::Error::NodeDepthTooLarge => "nodes nested too deep",
        _ => "vm-fdt error",
    })
}

/// Encodes `v` in `cells` 32-bit big-endian cells.
fn push_cells(out: &mut Vec<u8>, v: u64, cells: usize) -> Result<(), DtError> {
    match cells {
        1 => {
            let v =
                u32::try_from(v).map_err(|_| DtError::Write("address above 4 GiB in 1 cell"))?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        2 => out.extend_from_slice(&v.to_be_bytes()),
        _ => return Err(DtError::Write("/reserved-memory cells other than 1 or 2")),
    }
    Ok(())
}

fn cells(c: CellSize) -> usize {
    match c {
        CellSize::One => 1,
        CellSize::Two => 2,
        _ => 0,
    }
}

/// Writes the `no-map` children for the hypervisor regions.
fn write_hyp_nodes(
    w: &mut FdtWriter,
    hyp: &[Range],
    addr_cells: usize,
    size_cells: usize,
) -> Result<(), DtError> {
    for r in hyp {
        let name = alloc::format!("el2-hypervisor@{:x}", r.base);
        let node = w.begin_node(&name).map_err(write_err)?;
        let mut reg = Vec::new();
        push_cells(&mut reg, r.base, addr_cells)?;
        push_cells(&mut reg, r.size, size_cells)?;
        w.property("reg", &reg).map_err(write_err)?;
        w.property_null("no-map").map_err(write_err)?;
        w.end_node(node).map_err(write_err)?;
    }
    Ok(())
}

/// What el2 puts in the host's `/chosen` (created if the tree has none).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChosenEdits<'a> {
    /// `bootargs`: replaces the tree's when set, else the tree's is kept.
    pub bootargs: Option<&'a str>,
    /// `linux,initrd-start` and `linux,initrd-end` (64-bit cells). The
    /// tree's own are always dropped (they would describe an initrd el2
    /// did not load); these are written when set.
    pub initrd: Option<Range>,
}

const INITRD_START: &str = "linux,initrd-start";
const INITRD_END: &str = "linux,initrd-end";

/// Writes the properties `edits` adds to `/chosen`.
fn write_chosen_edits(w: &mut FdtWriter, edits: &ChosenEdits<'_>) -> Result<(), DtError> {
    if let Some(args) = edits.bootargs {
        w.property_string("bootargs", args).map_err(write_err)?;
    }
    if let Some(r) = edits.initrd {
        w.property_u64(INITRD_START, r.base).map_err(write_err)?;
        w.property_u64(INITRD_END, r.end()).map_err(write_err)?;
    }
    Ok(())
}

/// Copies `/chosen` with `edits` applied.
fn copy_chosen(
    w: &mut FdtWriter,
    node: FdtNode<'_, '_>,
    edits: &ChosenEdits<'_>,
    depth: usize,
) -> Result<(), DtError> {
    let h = w.begin_node("chosen").map_err(write_err)?;
    for prop in node.properties() {
        let replaced = matches!(prop.name, INITRD_START | INITRD_END)
            || (prop.name == "bootargs" && edits.bootargs.is_some());
        if !replaced {
            w.property(prop.name, prop.value).map_err(write_err)?;
        }
    }
    write_chosen_edits(w, edits)?;
    for child in node.children() {
        copy_node(w, child, false, &[], &ChosenEdits::default(), depth + 1)?;
    }
    w.end_node(h).map_err(write_err)
}

/// Copies `node` and its subtree into `w` (`top` for the root, where
/// `hyp` and `edits` apply).
fn copy_node(
    w: &mut FdtWriter,
    node: FdtNode<'_, '_>,
    top: bool,
    hyp: &[Range],
    edits: &ChosenEdits<'_>,
    depth: usize,
) -> Result<(), DtError> {
    if depth > MAX_DEPTH {
        return Err(DtError::Write("nodes nested too deep"));
    }
    let name = if top { "" } else { node.name };
    let handle = match w.begin_node(name) {
        Ok(h) => h,
        Err(vm_fdt::Error::InvalidNodeName) => {
            log::warn!("host device tree: node {name:?} dropped (name vm-fdt rejects)");
            return Ok(());
        }
        Err(e) => return Err(write_err(e)),
    };
    for prop in node.properties() {
        match w.property(prop.name, prop.value) {
            Ok(()) => {}
            Err(vm_fdt::Error::InvalidPropertyName) => {
                log::warn!(
                    "host device tree: property {:?} of {name:?} dropped",
                    prop.name
                );
            }
            Err(e) => return Err(write_err(e)),
        }
    }
    let mut has_reserved = false;
    let mut has_chosen = false;
    for child in node.children() {
        if top && child.name == "chosen" && !has_chosen {
            has_chosen = true;
            copy_chosen(w, child, edits, depth + 1)?;
        } else if top && child.name == "reserved-memory" {
            has_reserved = true;
            let sizes = child.cell_sizes();
            let h = w.begin_node("reserved-memory").map_err(write_err)?;
            for prop in child.properties() {
                w.property(prop.name, prop.value).map_err(write_err)?;
            }
            for grandchild in child.children() {
                copy_node(w, grandchild, false, &[], edits, depth + 2)?;
            }
            write_hyp_nodes(w, hyp, cells(sizes.address_cells), cells(sizes.size_cells))?;
            w.end_node(h).map_err(write_err)?;
        } else {
            copy_node(w, child, false, &[], edits, depth + 1)?;
        }
    }
    if top && !has_chosen {
        let h = w.begin_node("chosen").map_err(write_err)?;
        write_chosen_edits(w, edits)?;
        w.end_node(h).map_err(write_err)?;
    }
    if top && !has_reserved {
        let h = w.begin_node("reserved-memory").map_err(write_err)?;
        w.property_u32("#address-cells", 2).map_err(write_err)?;
        w.property_u32("#size-cells", 2).map_err(write_err)?;
        w.property_null("ranges").map_err(write_err)?;
        write_hyp_nodes(w, hyp, 2, 2)?;
        w.end_node(h).map_err(write_err)?;
    }
    w.end_node(handle).map_err(write_err)
}

/// The host's device tree: a copy of `fdt` (a tree that passed
/// [`validate`], `blob` its bytes) with every range of `hyp` reserved
/// `no-map` under `/reserved-memory` and `edits` applied to `/chosen`.
pub fn write_host_tree(
    fdt: &Fdt<'_>,
    blob: &[u8],
    hyp: &[Range],
    edits: &ChosenEdits<'_>,
) -> Result<Vec<u8>, DtError> {
    let mut rsv = Vec::new();
    for r in fdt.memory_reservations() {
        let e = FdtReserveEntry::new(r.address() as u64, r.size() as u64)
            .map_err(|_| DtError::Write("bad memory reservation"))?;
        rsv.push(e);
    }
    let mut w = FdtWriter::new_with_mem_reserv(&rsv).map_err(write_err)?;
    w.set_boot_cpuid_phys(boot_cpuid(blob));
    let root = fdt.find_node("/").ok_or(DtError::Missing("a root node"))?;
    copy_node(&mut w, root, true, hyp, edits, 1)?;
    w.finish().map_err(write_err)
}
