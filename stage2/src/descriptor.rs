//! Stage-2 descriptors (VMSAv8-64, 4 KiB granule) and their typed fields.
//!
//! Bit layout of a leaf (block or page), from the Arm ARM and pKVM
//! (`kvm_pgtable.h`):
//!
//! | bits  | field |
//! |-------|-------|
//! | 0     | valid |
//! | 1     | table (levels 0–2) or page (level 3); 0 = block |
//! | 5:2   | MemAttr (FWB = 0 encoding) |
//! | 6, 7  | S2AP read, write |
//! | 9:8   | shareability |
//! | 10    | access flag |
//! | 47:12 | output address |
//! | 54:53 | XN (0b00 executable, 0b10 execute-never at EL1 and EL0) |
//! | 56:55 | software page state (pKVM SW0/SW1) |
//! | 58:57 | spare software bits (SW2/SW3) |
//!
//! An invalid descriptor (bit 0 clear) may carry an annotation, as in pKVM
//! v7.1+: a type in bits 63:60, an owner id in bits 3:1 and 56 bits of
//! metadata in bits 59:4. The all-zero descriptor means "nothing here".

use crate::addr::PhysAddr;
use crate::level::Level;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_SHIFT: u32 = 8;
const SH_MASK: u64 = 0b11 << SH_SHIFT;
const AF: u64 = 1 << 10;
/// Output address bits 47:12.
pub(crate) const OA_MASK: u64 = ((1 << 48) - 1) & !((1 << 12) - 1);
const XN_SHIFT: u32 = 53;
const XN_MASK: u64 = 0b11 << XN_SHIFT;
const XN_NONE: u64 = 0b10 << XN_SHIFT;
const STATE_SHIFT: u32 = 55;
const STATE_MASK: u64 = 0b11 << STATE_SHIFT;
const SPARE_SHIFT: u32 = 57;
const SPARE_MASK: u64 = 0b11 << SPARE_SHIFT;
/// All software bits (58:55).
pub(crate) const SW_MASK: u64 = STATE_MASK | SPARE_MASK;
/// The attribute bits of a leaf: everything but valid, type and address.
pub(crate) const LEAF_ATTR_MASK: u64 = (0x3ff << 2) | (0x3fff << 50);

const ANNOT_TYPE_SHIFT: u32 = 60;
const ANNOT_OWNER_SHIFT: u32 = 1;
const ANNOT_OWNER_MASK: u64 = 0b111 << ANNOT_OWNER_SHIFT;
const ANNOT_META_SHIFT: u32 = 4;
const ANNOT_META_MASK: u64 = ((1 << 56) - 1) << ANNOT_META_SHIFT;

/// Stage-2 memory type (MemAttr\[3:0\], encoding without FEAT_S2FWB).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemAttr {
    /// Normal memory, inner and outer write-back cacheable (0b1111).
    NormalWriteBack,
    /// Normal memory, inner and outer non-cacheable (0b0101).
    NormalNonCacheable,
    /// Device-nGnRE (0b0001), for MMIO.
    DeviceNgnre,
}

impl MemAttr {
    const fn bits(self) -> u64 {
        match self {
            MemAttr::NormalWriteBack => 0b1111,
            MemAttr::NormalNonCacheable => 0b0101,
            MemAttr::DeviceNgnre => 0b0001,
        }
    }

    const fn from_bits(bits: u64) -> Option<MemAttr> {
        match bits {
            0b1111 => Some(MemAttr::NormalWriteBack),
            0b0101 => Some(MemAttr::NormalNonCacheable),
            0b0001 => Some(MemAttr::DeviceNgnre),
            _ => None,
        }
    }
}

/// Stage-2 access permissions: read and write (S2AP) and execute (XN).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Perms(u8);

impl Perms {
    /// No access.
    pub const NONE: Perms = Perms(0);
    /// Read.
    pub const R: Perms = Perms(1);
    /// Write.
    pub const W: Perms = Perms(2);
    /// Execute.
    pub const X: Perms = Perms(4);
    /// Read and write.
    pub const RW: Perms = Perms(3);
    /// Read and execute.
    pub const RX: Perms = Perms(5);
    /// Read, write and execute.
    pub const RWX: Perms = Perms(7);

    /// Whether every permission in `other` is in `self`.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two permission sets.
    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    const fn bits(self) -> u64 {
        let mut b = 0;
        if self.contains(Perms::R) {
            b |= S2AP_R;
        }
        if self.contains(Perms::W) {
            b |= S2AP_W;
        }
        if !self.contains(Perms::X) {
            b |= XN_NONE;
        }
        b
    }

    const fn from_bits(desc: u64) -> Perms {
        let mut p = 0;
        if desc & S2AP_R != 0 {
            p |= 1;
        }
        if desc & S2AP_W != 0 {
            p |= 2;
        }
        // XN 0b00 is executable at EL1 and EL0; any other value removes
        // execution from at least one of them, which we treat as "not X".
        if desc & XN_MASK == 0 {
            p |= 4;
        }
        Perms(p)
    }
}

impl core::ops::BitOr for Perms {
    type Output = Perms;
    fn bitor(self, rhs: Perms) -> Perms {
        self.union(rhs)
    }
}

/// Shareability of a stage-2 leaf (SH\[1:0\]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Shareability {
    /// Non-shareable (0b00).
    NonShareable,
    /// Outer shareable (0b10).
    OuterShareable,
    /// Inner shareable (0b11).
    InnerShareable,
}

impl Shareability {
    const fn bits(self) -> u64 {
        match self {
            Shareability::NonShareable => 0b00,
            Shareability::OuterShareable => 0b10,
            Shareability::InnerShareable => 0b11,
        }
    }

    const fn from_bits(bits: u64) -> Option<Shareability> {
        match bits {
            0b00 => Some(Shareability::NonShareable),
            0b10 => Some(Shareability::OuterShareable),
            0b11 => Some(Shareability::InnerShareable),
            _ => None,
        }
    }
}

/// The page state kept in software bits 56:55 of a valid leaf (pKVM's
/// `PKVM_PAGE_*` encoding). "No access" is not a state a valid leaf can
/// have: it is an invalid descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PageState {
    /// Owned by the principal this table belongs to, and only by it (0b00).
    Owned,
    /// Owned by this principal and lent to another (0b01).
    SharedOwned,
    /// Owned by another principal and borrowed by this one (0b10).
    SharedBorrowed,
}

impl PageState {
    const fn bits(self) -> u64 {
        match self {
            PageState::Owned => 0,
            PageState::SharedOwned => 1,
            PageState::SharedBorrowed => 2,
        }
    }

    const fn from_bits(bits: u64) -> Option<PageState> {
        match bits {
            0 => Some(PageState::Owned),
            1 => Some(PageState::SharedOwned),
            2 => Some(PageState::SharedBorrowed),
            _ => None,
        }
    }
}

/// The software-defined bits of a valid leaf: the page state (bits 56:55)
/// and two spare bits (58:57) free for the owner of the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SwBits {
    /// Page state.
    pub state: PageState,
    /// Spare bits, 0..=3.
    pub spare: u8,
}

impl SwBits {
    /// Software bits with the given state and no spare bits set.
    pub const fn state(state: PageState) -> SwBits {
        SwBits { state, spare: 0 }
    }

    pub(crate) const fn is_valid(self) -> bool {
        self.spare <= 3
    }

    pub(crate) const fn bits(self) -> u64 {
        (self.state.bits() << STATE_SHIFT) | ((self.spare as u64 & 3) << SPARE_SHIFT)
    }
}

/// Every attribute of a leaf mapping except its output address.
///
/// The access flag is always set: this crate never relies on AF faults.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeafAttrs {
    /// Memory type.
    pub mem: MemAttr,
    /// Access permissions.
    pub perms: Perms,
    /// Shareability.
    pub shareability: Shareability,
    /// Software bits (page state and spare bits).
    pub sw: SwBits,
}

impl LeafAttrs {
    /// Normal write-back, inner shareable RAM with the given permissions,
    /// in state [`PageState::Owned`].
    pub const fn normal(perms: Perms) -> LeafAttrs {
        LeafAttrs {
            mem: MemAttr::NormalWriteBack,
            perms,
            shareability: Shareability::InnerShareable,
            sw: SwBits::state(PageState::Owned),
        }
    }

    /// Device-nGnRE MMIO with the given permissions, in state
    /// [`PageState::Owned`].
    pub const fn device(perms: Perms) -> LeafAttrs {
        LeafAttrs {
            mem: MemAttr::DeviceNgnre,
            perms,
            shareability: Shareability::NonShareable,
            sw: SwBits::state(PageState::Owned),
        }
    }

    /// The same attributes with a different page state.
    pub const fn with_state(self, state: PageState) -> LeafAttrs {
        LeafAttrs {
            sw: SwBits {
                state,
                spare: self.sw.spare,
            },
            ..self
        }
    }

    /// The attribute bits of a leaf with these attributes (AF set).
    #[inline(always)]
    pub(crate) const fn bits(self) -> u64 {
        (self.mem.bits() << MEMATTR_SHIFT)
            | self.perms.bits()
            | (self.shareability.bits() << SH_SHIFT)
            | AF
            | self.sw.bits()
    }
}

/// What an invalid descriptor's annotation says (bits 63:60). Type 0 is
/// "no annotation" and type 1 is reserved for break-before-make locking.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AnnotationType(u8);

impl AnnotationType {
    /// Host stage-2: the page was donated away from the host (pKVM type 2).
    pub const DONATION: AnnotationType = AnnotationType(2);
    /// Guest stage-2: the host force-reclaimed the page (pKVM type 3).
    pub const POISONED: AnnotationType = AnnotationType(3);

    /// A custom annotation type, 2..=15.
    pub const fn new(value: u8) -> Option<AnnotationType> {
        if value >= 2 && value <= 15 {
            Some(AnnotationType(value))
        } else {
            None
        }
    }

    /// The raw type value.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// The payload of an annotated invalid descriptor: who owns an unmapped page
/// and up to 56 bits of metadata (pKVM uses a guest handle and gfn).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Annotation {
    kind: AnnotationType,
    owner: u8,
    meta: u64,
}

impl Annotation {
    /// Largest owner id that fits (3 bits).
    pub const MAX_OWNER: u8 = 7;
    /// Largest metadata value that fits (56 bits).
    pub const MAX_META: u64 = (1 << 56) - 1;

    /// An annotation, or `None` if `owner` or `meta` does not fit.
    pub const fn new(kind: AnnotationType, owner: u8, meta: u64) -> Option<Annotation> {
        if owner > Self::MAX_OWNER || meta > Self::MAX_META {
            None
        } else {
            Some(Annotation { kind, owner, meta })
        }
    }

    /// The annotation type.
    pub const fn kind(self) -> AnnotationType {
        self.kind
    }

    /// The owner id.
    pub const fn owner(self) -> u8 {
        self.owner
    }

    /// The metadata.
    pub const fn meta(self) -> u64 {
        self.meta
    }

    const fn bits(self) -> u64 {
        ((self.kind.0 as u64) << ANNOT_TYPE_SHIFT)
            | ((self.owner as u64) << ANNOT_OWNER_SHIFT)
            | (self.meta << ANNOT_META_SHIFT)
    }
}

/// What a descriptor is, given the level it sits at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DescriptorKind {
    /// Bit 0 clear: translation faults; may carry an annotation.
    Invalid,
    /// Points to the next-level table (levels 0–2).
    Table,
    /// A block leaf (levels 1–2).
    Block,
    /// A page leaf (level 3).
    Page,
    /// A valid encoding the architecture reserves (block at level 0 or a
    /// block-type entry at level 3). This crate never writes one.
    Reserved,
}

/// One 64-bit stage-2 descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(u64);

impl Descriptor {
    /// The all-zero invalid descriptor: nothing mapped, no annotation.
    pub const EMPTY: Descriptor = Descriptor(0);

    /// Wraps a raw descriptor value.
    pub const fn from_raw(raw: u64) -> Descriptor {
        Descriptor(raw)
    }

    /// The raw descriptor value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A table descriptor pointing at `table`.
    pub const fn table(table: PhysAddr) -> Descriptor {
        Descriptor((table.0 & OA_MASK) | TABLE_OR_PAGE | VALID)
    }

    /// A leaf at `level` (a page at level 3, a block at levels 1–2) mapping
    /// `pa` (bits outside 47:12 are dropped). At level 0 the result is a
    /// reserved encoding: [`Stage2`](crate::Stage2) never writes one.
    pub const fn leaf(level: Level, pa: PhysAddr, attrs: LeafAttrs) -> Descriptor {
        Self::leaf_from_bits(level, pa.0, attrs.bits())
    }

    pub(crate) const fn leaf_from_bits(level: Level, pa: u64, attr_bits: u64) -> Descriptor {
        let ty = if level.get() == 3 { TABLE_OR_PAGE } else { 0 };
        Descriptor((pa & OA_MASK) | (attr_bits & LEAF_ATTR_MASK) | ty | VALID)
    }

    /// An invalid descriptor carrying `annotation`.
    pub const fn annotated(annotation: Annotation) -> Descriptor {
        Descriptor(annotation.bits())
    }

    /// Whether bit 0 (valid) is set.
    pub const fn is_valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// What this descriptor is at `level`.
    pub const fn kind(self, level: Level) -> DescriptorKind {
        if !self.is_valid() {
            DescriptorKind::Invalid
        } else if self.0 & TABLE_OR_PAGE != 0 {
            if level.get() == 3 {
                DescriptorKind::Page
            } else {
                DescriptorKind::Table
            }
        } else if level.allows_block() {
            DescriptorKind::Block
        } else {
            DescriptorKind::Reserved
        }
    }

    /// Whether this is a table descriptor at `level`.
    #[inline]
    pub const fn is_table(self, level: Level) -> bool {
        // Bit tests rather than `kind`: this runs on every entry of every
        // walk.
        self.0 & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE && level.get() != 3
    }

    /// Whether this is a valid leaf (block or page) at `level`.
    #[inline]
    pub const fn is_leaf(self, level: Level) -> bool {
        match self.0 & (VALID | TABLE_OR_PAGE) {
            // Page at level 3, table above.
            0b11 => level.get() == 3,
            // Block: levels 1 and 2 only.
            0b01 => level.allows_block(),
            _ => false,
        }
    }

    /// The output address (of a leaf) or next-level table (of a table).
    pub const fn output_address(self) -> PhysAddr {
        PhysAddr(self.0 & OA_MASK)
    }

    /// The memory type of a leaf, if it is one this crate writes.
    pub const fn mem_attr(self) -> Option<MemAttr> {
        MemAttr::from_bits((self.0 & MEMATTR_MASK) >> MEMATTR_SHIFT)
    }

    /// The access permissions of a leaf.
    pub const fn perms(self) -> Perms {
        Perms::from_bits(self.0)
    }

    /// The shareability of a leaf (`None` for the reserved value 0b01).
    pub const fn shareability(self) -> Option<Shareability> {
        Shareability::from_bits((self.0 & SH_MASK) >> SH_SHIFT)
    }

    /// Whether the access flag is set.
    pub const fn access_flag(self) -> bool {
        self.0 & AF != 0
    }

    /// The page state in software bits 56:55 (`None` for the value 0b11,
    /// which this crate never writes).
    pub const fn page_state(self) -> Option<PageState> {
        PageState::from_bits((self.0 & STATE_MASK) >> STATE_SHIFT)
    }

    /// The spare software bits 58:57.
    pub const fn spare_bits(self) -> u8 {
        ((self.0 & SPARE_MASK) >> SPARE_SHIFT) as u8
    }

    /// All attributes of a valid leaf, or `None` if this is not a leaf with
    /// an encoding this crate writes.
    pub fn leaf_attrs(self, level: Level) -> Option<LeafAttrs> {
        if !self.is_leaf(level) {
            return None;
        }
        Some(LeafAttrs {
            mem: self.mem_attr()?,
            perms: self.perms(),
            shareability: self.shareability()?,
            sw: SwBits {
                state: self.page_state()?,
                spare: self.spare_bits(),
            },
        })
    }

    /// The annotation of an invalid descriptor; `None` for a valid one, for
    /// the empty descriptor, and for any invalid value this crate does not
    /// write.
    pub const fn annotation(self) -> Option<Annotation> {
        if self.is_valid() || self.0 == 0 {
            return None;
        }
        let kind = (self.0 >> ANNOT_TYPE_SHIFT) as u8;
        let owner = ((self.0 & ANNOT_OWNER_MASK) >> ANNOT_OWNER_SHIFT) as u8;
        let meta = (self.0 & ANNOT_META_MASK) >> ANNOT_META_SHIFT;
        match AnnotationType::new(kind) {
            Some(kind) => Some(Annotation { kind, owner, meta }),
            None => None,
        }
    }

    /// This leaf with its permissions replaced.
    pub(crate) const fn with_perms(self, perms: Perms) -> Descriptor {
        Descriptor((self.0 & !(S2AP_R | S2AP_W | XN_MASK)) | perms.bits())
    }

    /// This leaf with its software bits replaced.
    pub(crate) const fn with_sw(self, sw: SwBits) -> Descriptor {
        Descriptor((self.0 & !SW_MASK) | sw.bits())
    }

    /// The leaf attribute bits (everything but valid, type and address).
    pub(crate) const fn attr_bits(self) -> u64 {
        self.0 & LEAF_ATTR_MASK
    }
}

impl core::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(v: u64) -> PhysAddr {
        PhysAddr(v)
    }

    #[test]
    fn page_leaf_encoding_matches_hand_computed_value() {
        // Normal WB (0xF<<2), R|W (3<<6), inner shareable (3<<8), AF (1<<10),
        // executable (XN 00), page type (0b11).
        let d = Descriptor::leaf(Level::L3, pa(0x4000_1000), LeafAttrs::normal(Perms::RWX));
        assert_eq!(d.raw(), 0x4000_1000 | 0x3c | 0xc0 | 0x300 | 0x400 | 0b11);
        assert_eq!(d.kind(Level::L3), DescriptorKind::Page);
        assert_eq!(d.output_address(), pa(0x4000_1000));
    }

    #[test]
    fn block_leaf_has_type_bit_clear() {
        let d = Descriptor::leaf(Level::L2, pa(0x4020_0000), LeafAttrs::normal(Perms::RW));
        assert_eq!(d.raw() & 0b11, 0b01);
        assert_eq!(d.kind(Level::L2), DescriptorKind::Block);
        // Not executable: XN = 0b10 in bits 54:53.
        assert_eq!((d.raw() >> 53) & 3, 0b10);
        assert_eq!(d.perms(), Perms::RW);
    }

    #[test]
    fn device_leaf() {
        let d = Descriptor::leaf(Level::L2, pa(0x0800_0000), LeafAttrs::device(Perms::RW));
        assert_eq!((d.raw() >> 2) & 0xf, 0b0001);
        assert_eq!(d.mem_attr(), Some(MemAttr::DeviceNgnre));
        assert_eq!(d.shareability(), Some(Shareability::NonShareable));
    }

    #[test]
    fn every_mem_attr_round_trips() {
        for m in [
            MemAttr::NormalWriteBack,
            MemAttr::NormalNonCacheable,
            MemAttr::DeviceNgnre,
        ] {
            let a = LeafAttrs {
                mem: m,
                ..LeafAttrs::normal(Perms::R)
            };
            let d = Descriptor::leaf(Level::L3, pa(0x1000), a);
            assert_eq!(d.mem_attr(), Some(m));
            assert_eq!(d.leaf_attrs(Level::L3), Some(a));
        }
        assert_eq!(Descriptor::from_raw(0b0011 << 2 | 1).mem_attr(), None);
    }

    #[test]
    fn every_permission_round_trips() {
        for p in 0..8 {
            let perms = Perms(p);
            let d = Descriptor::leaf(Level::L3, pa(0x1000), LeafAttrs::normal(perms));
            assert_eq!(d.perms(), perms);
            assert_eq!(d.with_perms(Perms::NONE).perms(), Perms::NONE);
            assert_eq!(d.with_perms(Perms::RWX).output_address(), pa(0x1000));
        }
        // XN = 0b01 (PXN only) still counts as not executable.
        assert!(
            !Descriptor::from_raw(1 | (0b01 << 53))
                .perms()
                .contains(Perms::X)
        );
        assert_eq!(Perms::R | Perms::W, Perms::RW);
    }

    #[test]
    fn every_shareability_round_trips() {
        for s in [
            Shareability::NonShareable,
            Shareability::OuterShareable,
            Shareability::InnerShareable,
        ] {
            let a = LeafAttrs {
                shareability: s,
                ..LeafAttrs::normal(Perms::R)
            };
            let d = Descriptor::leaf(Level::L3, pa(0x1000), a);
            assert_eq!(d.shareability(), Some(s));
        }
        assert_eq!(Descriptor::from_raw(1 | (0b01 << 8)).shareability(), None);
    }

    #[test]
    fn access_flag_always_set() {
        let d = Descriptor::leaf(Level::L3, pa(0x1000), LeafAttrs::normal(Perms::NONE));
        assert!(d.access_flag());
        assert!(!Descriptor::from_raw(1).access_flag());
    }

    #[test]
    fn software_bits_use_55_to_58() {
        let base = Descriptor::leaf(Level::L3, pa(0x1000), LeafAttrs::normal(Perms::RWX));
        let so = base.with_sw(SwBits::state(PageState::SharedOwned));
        assert_eq!(so.raw() ^ base.raw(), 1 << 55);
        let sb = base.with_sw(SwBits::state(PageState::SharedBorrowed));
        assert_eq!(sb.raw() ^ base.raw(), 1 << 56);
        let spare = base.with_sw(SwBits {
            state: PageState::Owned,
            spare: 3,
        });
        assert_eq!(spare.raw() ^ base.raw(), 3 << 57);
        assert_eq!(spare.spare_bits(), 3);
        assert_eq!(sb.page_state(), Some(PageState::SharedBorrowed));
        assert_eq!(Descriptor::from_raw(1 | 3 << 55).page_state(), None);
    }

    #[test]
    fn table_descriptor() {
        let d = Descriptor::table(pa(0x8000_3000));
        assert_eq!(d.raw(), 0x8000_3003);
        assert_eq!(d.kind(Level::L0), DescriptorKind::Table);
        assert_eq!(d.kind(Level::L3), DescriptorKind::Page);
        assert!(d.is_table(Level::L2));
        assert!(!d.is_leaf(Level::L2));
    }

    #[test]
    fn reserved_encodings_are_recognised() {
        // Block-type entry at level 0 and at level 3.
        assert_eq!(
            Descriptor::from_raw(1).kind(Level::L0),
            DescriptorKind::Reserved
        );
        assert_eq!(
            Descriptor::from_raw(1).kind(Level::L3),
            DescriptorKind::Reserved
        );
        assert_eq!(Descriptor::from_raw(1).leaf_attrs(Level::L3), None);
    }

    #[test]
    fn annotations_match_pkvm_values() {
        // pKVM: a hyp-owned page is 0x2000_0000_0000_0002 (DONATION, owner 1).
        let hyp = Annotation::new(AnnotationType::DONATION, 1, 0).unwrap();
        assert_eq!(Descriptor::annotated(hyp).raw(), 0x2000_0000_0000_0002);
        // Guest owner (2) with handle 0x1000 and gfn 0x1234: meta = gfn<<16 | handle.
        let guest = Annotation::new(AnnotationType::DONATION, 2, (0x1234 << 16) | 0x1000).unwrap();
        assert_eq!(
            Descriptor::annotated(guest).raw(),
            0x2000_0000_0000_0004 | (0x1000 << 4) | (0x1234 << 20)
        );
        // Poisoned guest PTE is 0x3000_0000_0000_0000.
        let poison = Annotation::new(AnnotationType::POISONED, 0, 0).unwrap();
        assert_eq!(Descriptor::annotated(poison).raw(), 0x3000_0000_0000_0000);
        for a in [hyp, guest, poison] {
            let d = Descriptor::annotated(a);
            assert!(!d.is_valid());
            assert_eq!(d.annotation(), Some(a));
        }
    }

    #[test]
    fn annotation_limits() {
        assert!(Annotation::new(AnnotationType::DONATION, 8, 0).is_none());
        assert!(Annotation::new(AnnotationType::DONATION, 0, 1 << 56).is_none());
        let max = Annotation::new(AnnotationType::DONATION, 7, Annotation::MAX_META).unwrap();
        assert_eq!(Descriptor::annotated(max).annotation(), Some(max));
        assert_eq!(AnnotationType::new(0), None);
        assert_eq!(AnnotationType::new(1), None);
        assert_eq!(AnnotationType::new(16), None);
        assert_eq!(AnnotationType::new(15).map(AnnotationType::get), Some(15));
        assert_eq!(Descriptor::EMPTY.annotation(), None);
        // An invalid value with type 0 or 1 is not an annotation.
        assert_eq!(
            Descriptor::from_raw(0x1000_0000_0000_0000).annotation(),
            None
        );
        assert_eq!(Descriptor::from_raw(0x4).annotation(), None);
    }
}
