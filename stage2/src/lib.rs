//! VMSAv8-64 stage-2 translation tables for a pKVM-style hypervisor.
//!
//! - 4 KiB granule, levels 0–3, IPA sizes 32–48 bits with concatenated
//!   root tables ([`Stage2Config`], which also gives `VTCR_EL2`).
//! - Typed descriptors ([`Descriptor`]): memory type, S2AP, shareability,
//!   AF, XN, a 2-bit page state and 2 spare software bits, and annotated
//!   invalid entries recording who owns an unmapped page.
//! - Range operations ([`Op`]): map, unmap, annotate, change permissions,
//!   change software bits, split, merge; lookups and walks. Mappings use
//!   the largest block that fits; a partly changed block splits with
//!   break-before-make and a table that becomes uniform merges back.
//! - Prepare, then commit: every operation validates its arguments and
//!   reserves every table page it needs before it writes anything, so a
//!   failed operation changes nothing.
//! - TLB maintenance and barriers behind [`TlbMaintenance`], issued in
//!   Linux's order (`ipas2e1is`, then `vmalle1is`, with the DSBs).
//!
//! The crate is `no_std` and has no architecture dependency except the
//! optional [`tlb::arm::ArmTlb`]; host tests use the arena pool and the
//! recording TLB behind the `test-utils` feature.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod addr;
pub mod config;
pub mod descriptor;
pub mod error;
pub mod level;
pub mod pool;
mod table;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod tlb;

pub use addr::{Ipa, PAGE_SHIFT, PAGE_SIZE, PhysAddr};
pub use config::{PaRange, Stage2Config};
pub use descriptor::{
    Annotation, AnnotationType, Descriptor, DescriptorKind, LeafAttrs, MemAttr, PageState, Perms,
    Shareability, SwBits,
};
pub use error::Error;
pub use level::{ENTRIES_PER_TABLE, Level};
pub use pool::{Reserved, TablePool};
pub use table::{BlockPolicy, Checked, Leaf, Op, Prepared, Stage2, Stats, TLBI_BATCH, Work};
pub use tlb::TlbMaintenance;
