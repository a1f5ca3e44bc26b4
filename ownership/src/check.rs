//! The invariant checker: proves the ownership table, the host stage-2,
//! every guest stage-2 and the hypervisor's mappings agree.
//!
//! Checked, for every page of RAM:
//! - a host-owned page is mapped in the host stage-2 (identity, RAM
//!   attributes), its states are one of O/N, SO/SB (shared with the
//!   hypervisor), SO/N (lent to guests, or to the secure world), its share
//!   count equals the number of guest mappings that borrow it, and pins
//!   only exist while it is shared with the hypervisor;
//! - a hypervisor-owned page is absent from the host stage-2 and annotated
//!   as the hypervisor's;
//! - a guest-owned page is mapped by exactly that guest at exactly the gfn
//!   the table records, in state O (host has no access, annotated as the
//!   guest's) or SO (host borrows it, mapped);
//! - the hypervisor maps exactly the pages it owns or has pinned.
//!
//! And for every table: no valid leaf outside RAM except the host's MMIO,
//! guest leaves only in states consistent with the table, and no table
//! left that is uniform (blocks wherever the range is uniform) — except
//! in a host stage-2 with 4 KiB mappings ([`BlockPolicy::PagesOnly`]),
//! whose RAM must be mapped with pages only.

use crate::mem::{HypMappings, PhysMem};
use crate::state::{
    HOST_MMIO_ATTRS, HOST_RAM_ATTRS, MemView, OWNER_ID_GUEST, Ownership, RELINQUISHED,
    SPARE_BLOCK_SHARE, guest_annotation, hyp_annotation,
};
use crate::types::{Gfn, GuestHandle, Owner, PageState, Pfn};
use alloc::collections::BTreeMap;
use core::fmt;
use stage2::{AnnotationType, BlockPolicy, Ipa, PAGE_SIZE, PageState as S2State, TablePool};

/// A broken invariant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Violation {
    /// What is wrong.
    pub what: &'static str,
    /// The page concerned, if one.
    pub pfn: Option<Pfn>,
    /// The guest and gfn concerned, if any.
    pub guest: Option<(GuestHandle, Gfn)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)?;
        if let Some(p) = self.pfn {
            write!(f, " at {p:?}")?;
        }
        if let Some((h, g)) = self.guest {
            write!(f, " (guest {:#x}, {g:?})", h.0)?;
        }
        Ok(())
    }
}

fn fail<T>(
    what: &'static str,
    pfn: Option<Pfn>,
    guest: Option<(GuestHandle, Gfn)>,
) -> Result<T, Violation> {
    Err(Violation { what, pfn, guest })
}

/// Checks every invariant; the first violation found is returned.
pub fn check<M: PhysMem, P: TablePool, H: HypMappings>(
    o: &Ownership<M, P, H>,
) -> Result<(), Violation> {
    let host = o.host.lock();
    let hyp = o.hyp.lock();
    let view = MemView(o.mem);
    let mut borrowed: BTreeMap<u64, u64> = BTreeMap::new();

    // Every guest leaf against the table.
    for slot in o.guests.iter() {
        let slot = slot.lock();
        let Some(g) = slot.as_ref() else {
            continue;
        };
        let h = g.handle;
        let limit = g.s2.config().ipa_limit();
        let mut err = Ok(());
        let _ = g.s2.walk(&view, Ipa(0), limit, |leaf| {
            if err.is_err() {
                return;
            }
            if !leaf.is_valid() {
                if let Some(a) = leaf.annotation()
                    && a.kind() != AnnotationType::POISONED
                    && a.kind() != RELINQUISHED
                {
                    err = fail(
                        "unknown annotation in a guest stage-2",
                        None,
                        Some((h, Gfn(leaf.base.0 / PAGE_SIZE))),
                    );
                }
                return;
            }
            let state = leaf.descriptor.page_state();
            let spare = leaf.descriptor.spare_bits();
            for i in 0..leaf.size() / PAGE_SIZE {
                let gfn = Gfn(leaf.base.0 / PAGE_SIZE + i);
                let pfn = Pfn(leaf.descriptor.output_address().0 / PAGE_SIZE + i);
                let at = Some((h, gfn));
                let Some(e) = host.table.get(pfn) else {
                    err = fail("guest maps memory that is not RAM", Some(pfn), at);
                    return;
                };
                let ok = match state {
                    Some(S2State::Owned) => {
                        e.owner() == (Owner::Guest { handle: h, gfn })
                            && e.host() == PageState::NoPage
                    }
                    Some(S2State::SharedOwned) => {
                        e.owner() == (Owner::Guest { handle: h, gfn })
                            && e.host() == PageState::SharedBorrowed
                    }
                    Some(S2State::SharedBorrowed) => {
                        *borrowed.entry(pfn.0).or_insert(0) += 1;
                        e.owner() == Owner::Host && e.host() == PageState::SharedOwned
                    }
                    None => false,
                };
                if !ok {
                    err = fail(
                        "guest leaf disagrees with the ownership table",
                        Some(pfn),
                        at,
                    );
                    return;
                }
                if spare & SPARE_BLOCK_SHARE != 0 && state != Some(S2State::SharedBorrowed) {
                    err = fail("block-share mark on a page the guest owns", Some(pfn), at);
                    return;
                }
            }
        });
        err?;
        if let Some((ipa, _)) = g.s2.find_mergeable(&view) {
            return fail(
                "guest stage-2 has a uniform table that is not a block",
                None,
                Some((h, Gfn(ipa.0 / PAGE_SIZE))),
            );
        }
    }

    // Every page of RAM against the host stage-2, its guest and the hyp.
    for (pfn, e) in host.table.iter() {
        let p = Some(pfn);
        let ipa = Ipa(pfn.0 * PAGE_SIZE);
        let leaf = host.s2.lookup(&host.pool, ipa).map_err(|_| Violation {
            what: "host lookup failed",
            pfn: p,
            guest: None,
        })?;
        let host_mapped = leaf.output_for(ipa) == Some(stage2::PhysAddr(ipa.0))
            && leaf.attrs() == Some(HOST_RAM_ATTRS);
        if !host_mapped && leaf.is_valid() {
            return fail("host maps a RAM page wrongly", p, None);
        }
        let hyp_should_map = match e.owner() {
            Owner::Host => {
                let states_ok = match (e.host(), e.hyp()) {
                    (PageState::Owned, PageState::NoPage) => e.pins() == 0 && e.share_count() == 0,
                    (PageState::SharedOwned, PageState::SharedBorrowed) => e.share_count() == 0,
                    (PageState::SharedOwned, PageState::NoPage) => e.pins() == 0,
                    _ => false,
                };
                if !states_ok {
                    return fail("impossible host/hyp states for a host page", p, None);
                }
                if !host_mapped {
                    return fail("host page missing from the host stage-2", p, None);
                }
                if u64::from(e.share_count()) != borrowed.get(&pfn.0).copied().unwrap_or(0) {
                    return fail("share count differs from guest mappings", p, None);
                }
                e.pins() > 0
            }
            Owner::Hyp => {
                if (e.host(), e.hyp()) != (PageState::NoPage, PageState::Owned) {
                    return fail("impossible states for a hypervisor page", p, None);
                }
                if leaf.is_valid() || leaf.annotation() != Some(hyp_annotation()) {
                    return fail("hypervisor page not annotated in the host stage-2", p, None);
                }
                true
            }
            Owner::Guest { handle, gfn } => {
                let at = Some((handle, gfn));
                let Ok(g) = o.lock_guest(handle) else {
                    return fail("page owned by a guest that does not exist", p, at);
                };
                let (state, mapped) =
                    crate::state::guest_page(&g, o.mem, gfn).map_err(|_| Violation {
                        what: "owner gfn outside the guest",
                        pfn: p,
                        guest: at,
                    })?;
                if mapped != Some(pfn) {
                    return fail("guest does not map its page at the recorded gfn", p, at);
                }
                let ok = match (e.host(), state) {
                    (PageState::NoPage, crate::GuestPageState::Owned) => {
                        !leaf.is_valid() && leaf.annotation() == Some(guest_annotation(handle))
                    }
                    (PageState::SharedBorrowed, crate::GuestPageState::SharedOwned) => host_mapped,
                    _ => false,
                };
                if !ok || e.hyp() != PageState::NoPage {
                    return fail("guest page states disagree with the host stage-2", p, at);
                }
                false
            }
        };
        if hyp.is_mapped(pfn) != hyp_should_map {
            return fail("hypervisor mapping disagrees with the table", p, None);
        }
    }

    // Host leaves outside RAM are MMIO with device attributes, and the host
    // never annotates a guest it does not know.
    let mut err = Ok(());
    let limit = host.s2.config().ipa_limit();
    let _ = host.s2.walk(&host.pool, Ipa(0), limit, |leaf| {
        if err.is_err() {
            return;
        }
        let first = Pfn(leaf.base.0 / PAGE_SIZE);
        if leaf.is_valid() {
            let in_ram = host.table.is_ram(first, leaf.size() / PAGE_SIZE);
            let in_mmio = host
                .mmio
                .iter()
                .any(|&(b, s)| leaf.base.0 >= b.0 && leaf.base.0 + leaf.size() <= b.0 + s);
            let ok = (in_ram && leaf.attrs() == Some(HOST_RAM_ATTRS))
                || (in_mmio && leaf.attrs() == Some(HOST_MMIO_ATTRS));
            if in_ram && host.policy == BlockPolicy::PagesOnly && leaf.size() != PAGE_SIZE {
                err = fail(
                    "host RAM mapped with a block under 4 KiB host mappings",
                    Some(first),
                    None,
                );
            } else if !ok {
                err = fail(
                    "host stage-2 maps something that is neither RAM nor MMIO",
                    Some(first),
                    None,
                );
            }
        } else if let Some(a) = leaf.annotation()
            && a.owner() == OWNER_ID_GUEST
            && o.lock_guest(GuestHandle(a.meta() as u16)).is_err()
        {
            err = fail(
                "host annotation names a guest that does not exist",
                Some(first),
                None,
            );
        }
    });
    err?;
    // (With 4 KiB host mappings uniform tables of pages are the point.)
    if host.policy == BlockPolicy::Largest
        && let Some((ipa, _)) = host.s2.find_mergeable(&host.pool)
    {
        return fail(
            "host stage-2 has a uniform table that is not a block",
            Some(Pfn(ipa.0 / PAGE_SIZE)),
            None,
        );
    }
    Ok(())
}
