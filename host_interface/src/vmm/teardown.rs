//! Tearing the VM down and proving nothing leaked.
//!
//! How much can be proved depends on the backend ([`Teardown`]): the
//! [`KvmVm`] backend has the host's physical view and verifies everything
//! below ([`Teardown::Verified`]); a userspace VMM over the Linux driver
//! only closes the VM's files, and the driver reclaims and frees its pages
//! out of its sight ([`Teardown::Closed`]).
//!
//! The VMM reads [`HostCall::HostStats`] before it creates the VM. At the
//! end it destroys the VM ([`KvmVm::destroy_checked`]): every guest page
//! is reclaimed and, between `TeardownFinish` and freeing, every page that
//! was private to the guest is read back through the host's own mapping
//! and must be all zero (the hypervisor wipes a guest's pages before the
//! host gets them). Then every page the VMM allocated is freed and
//! `HostStats` read again: the host must own exactly as many pages as
//! before, and its stage-2 must have as many leaves and table pages as
//! before (every block split for the guest merged back).

use core::fmt;

use alloc::vec;

use crate::abi::HostCall;
use crate::gmem::PAGE;
use crate::hypervisor::{CallError, Hypervisor};
use crate::vm::{HostPages, KvmVm, ReclaimedPage};

/// The host's memory as [`HostCall::HostStats`] counts it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HostStats {
    /// Pages the host owns (x2).
    pub owned_pages: u64,
    /// Leaves of the host's stage-2 (x3).
    pub leaves: u64,
    /// Table pages of the host's stage-2 (x4).
    pub tables: u64,
}

impl HostStats {
    /// Asks the hypervisor.
    pub fn read<H: Hypervisor>(hv: &mut H) -> Result<HostStats, CallError> {
        let v = hv.call(HostCall::HostStats, &[])?;
        Ok(HostStats {
            owned_pages: v[0],
            leaves: v[1],
            tables: v[2],
        })
    }
}

/// How the VM ended, as far as its backend can tell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Teardown {
    /// Every check below passed.
    Verified(TeardownReport),
    /// The VM was destroyed (its files closed); the backend cannot see
    /// what became of its pages.
    Closed,
}

impl Teardown {
    /// The verified report, if the backend could verify.
    pub fn verified(&self) -> Option<&TeardownReport> {
        match self {
            Teardown::Verified(r) => Some(r),
            Teardown::Closed => None,
        }
    }
}

/// What a verified teardown found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TeardownReport {
    /// Guest pages reclaimed (every page mapped into the guest at the
    /// end, private, guest-shared or lent).
    pub reclaimed: u64,
    /// Of those, the guest-private pages, each read back all zero.
    pub private_zeroed: u64,
    /// `HostStats` before the VM was created.
    pub before: HostStats,
    /// `HostStats` after it was destroyed and every page freed.
    pub after: HostStats,
}

/// Why the teardown check failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TeardownError {
    /// `HostStats` failed.
    Stats(CallError),
    /// A teardown host call failed (errno).
    Destroy(i32),
    /// A guest-private page was not zero after teardown.
    NotZero {
        /// Its host frame.
        pfn: u64,
        /// The guest frame it was at.
        gfn: u64,
        /// The first non-zero byte's offset in the page.
        offset: usize,
        /// That byte.
        byte: u8,
    },
    /// A guest-private page could not be read after teardown (the
    /// hypervisor still refused the host).
    Unreadable {
        /// Its host frame.
        pfn: u64,
        /// The guest frame it was at.
        gfn: u64,
    },
    /// The host owns a different number of pages than before.
    OwnedPages(HostStats, HostStats),
    /// The host's stage-2 has a different number of leaves than before.
    Leaves(HostStats, HostStats),
    /// The host's stage-2 has a different number of table pages.
    Tables(HostStats, HostStats),
}

impl fmt::Display for TeardownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeardownError::Stats(e) => write!(f, "HostStats failed: {e:?}"),
            TeardownError::Destroy(e) => write!(f, "destroying the VM failed: errno {e}"),
            TeardownError::NotZero {
                pfn,
                gfn,
                offset,
                byte,
            } => write!(
                f,
                "guest-private page {pfn:#x} (guest frame {gfn:#x}) is not zero after teardown: \
                 byte {offset:#x} is {byte:#04x}"
            ),
            TeardownError::Unreadable { pfn, gfn } => write!(
                f,
                "guest-private page {pfn:#x} (guest frame {gfn:#x}) cannot be read after \
                 teardown (injected abort)"
            ),
            TeardownError::OwnedPages(a, b) => write!(
                f,
                "host-owned pages {} before the VM, {} after it",
                a.owned_pages, b.owned_pages
            ),
            TeardownError::Leaves(a, b) => write!(
                f,
                "host stage-2 leaves {} before the VM, {} after it (blocks not merged back)",
                a.leaves, b.leaves
            ),
            TeardownError::Tables(a, b) => write!(
                f,
                "host stage-2 table pages {} before the VM, {} after it",
                a.tables, b.tables
            ),
        }
    }
}

/// Destroys `vm` and checks the teardown against `before` (read before
/// the VM was created). Returns the verdict and, unless a teardown host
/// call failed, the conduit and the page allocator.
pub fn teardown<H: Hypervisor, A: HostPages>(
    vm: KvmVm<H, A>,
    before: HostStats,
) -> (Result<TeardownReport, TeardownError>, Option<(H, A)>) {
    let mut reclaimed = 0u64;
    let mut private = 0u64;
    let mut first_bad: Option<TeardownError> = None;
    let mut page = vec![0u8; PAGE as usize];
    let destroyed = vm.destroy_checked(|hv, p: ReclaimedPage| {
        reclaimed += 1;
        if !p.private {
            return;
        }
        private += 1;
        if first_bad.is_some() {
            return;
        }
        match hv.read(p.pfn * PAGE, &mut page) {
            Err(_) => {
                first_bad = Some(TeardownError::Unreadable {
                    pfn: p.pfn,
                    gfn: p.gfn,
                })
            }
            Ok(()) => {
                if let Some((offset, &byte)) = page.iter().enumerate().find(|(_, b)| **b != 0) {
                    first_bad = Some(TeardownError::NotZero {
                        pfn: p.pfn,
                        gfn: p.gfn,
                        offset,
                        byte,
                    });
                }
            }
        }
    });
    let (mut hv, pages) = match destroyed {
        Ok(v) => v,
        Err(e) => return (Err(TeardownError::Destroy(e)), None),
    };
    let verdict = (|| {
        if let Some(e) = first_bad {
            return Err(e);
        }
        let after = HostStats::read(&mut hv).map_err(TeardownError::Stats)?;
        if after.owned_pages != before.owned_pages {
            return Err(TeardownError::OwnedPages(before, after));
        }
        if after.leaves != before.leaves {
            return Err(TeardownError::Leaves(before, after));
        }
        if after.tables != before.tables {
            return Err(TeardownError::Tables(before, after));
        }
        Ok(TeardownReport {
            reclaimed,
            private_zeroed: private,
            before,
            after,
        })
    })();
    (verdict, Some((hv, pages)))
}
