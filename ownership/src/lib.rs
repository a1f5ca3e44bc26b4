//! Page ownership: who may touch which physical page, and every transition
//! between the host, the hypervisor and protected guests (DESIGN §1–§2,
//! §5).
//!
//! - [`OwnershipTable`]: one 8-byte [`PageEntry`] per 4 KiB page of RAM
//!   with the host state, the hypervisor state, the owner (host,
//!   hypervisor, or guest handle + gfn), the host→guest share count and
//!   the hypervisor pin count: **8 bytes per page**.
//! - [`Ownership`]: the principals. The host's stage-2 is an identity map
//!   of RAM and MMIO with the largest blocks; pages it loses are annotated
//!   with their owner. Each guest has its own stage-2 (guest view in the
//!   leaves' software bits), a memcache of donated pages for its tables,
//!   and at most one pending conversion. The hypervisor's mappings are
//!   behind [`HypMappings`].
//! - Transitions (methods of [`Ownership`]) check every page first,
//!   reserve every page-table page both stage-2 changes need, then change
//!   state; an error means nothing changed. Pages leaving a guest for the
//!   host are zeroed and cleaned to PoC (through [`PhysMem`]) unless the
//!   guest had shared them.
//! - [`check`]: the invariant checker that proves the table and every
//!   stage-2 agree.
//!
//! Lock order: see the [`state`] module.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod check;
pub mod errno;
pub mod mem;
pub mod memcache;
pub mod state;
pub mod table;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod transitions;
pub mod types;

pub use errno::Errno;
pub use mem::{HypMappings, PhysMem};
pub use state::{Conversion, ConversionKind, Guest, HostMmu, Layout, Ownership};
pub use table::{BYTES_PER_PAGE, MemRegion, OwnershipTable, PageEntry};
pub use types::{BLOCK_PAGES, Extent, Gfn, GuestHandle, GuestPageState, Owner, PageState, Pfn};
