//! Host memory a device reads or writes by physical address (the GICv3
//! ITS and the redistributors' LPI tables), held so the host can no longer
//! hand it to anyone while the device uses it. Two kinds of hold:
//!
//! - [`claim`]: for tables that hold no addresses (the LPI property and
//!   pending tables, ITTs, the command queue el2 copies from). Each page
//!   is shared with the hypervisor if it was not (`host_share_hyp`) and
//!   pinned (`hyp_pin_shared`): the host keeps its access but can neither
//!   donate nor lend the page to a guest (`EPERM`) nor take it back from
//!   the hypervisor (`EBUSY`). [`release`] drops the pin and, on a page's
//!   last claim, undoes the share if el2 made it.
//! - [`take`]: for tables the device reads addresses from (the ITS device
//!   and collection tables: a device-table entry names the ITT the ITS
//!   writes). The pages are donated to the hypervisor (`host_donate_hyp`),
//!   so the host cannot write an address into them; [`give_back`] returns
//!   them zeroed.
//!
//! Both are all or nothing: a range that fails leaves every page as it
//! was. At most [`MAX_CLAIMED_PAGES`] pages are claimed at once, which
//! bounds el2's bookkeeping whatever the host asks for.

use alloc::collections::BTreeMap;

use ownership::{Errno, PageState, Pfn};
use stage2::tlb::arm::ArmTlb;

use super::host::Hypervisor;

const PAGE: u64 = 4096;

/// Most pages [`claim`] holds at once (64 MiB): far more than a host's
/// ITS and LPI tables need, small enough for el2's heap to track.
pub const MAX_CLAIMED_PAGES: usize = 16384;

/// Per page el2 pinned: claims on it, and whether el2 shared it.
static CLAIMS: spin::Mutex<BTreeMap<u64, (u32, bool)>> = spin::Mutex::new(BTreeMap::new());

/// The pages of `[base, base + size)`, or `None` for an empty or
/// overflowing range.
fn pages(base: u64, size: u64) -> Option<core::ops::Range<u64>> {
    let end = base.checked_add(size)?;
    (size > 0).then(|| base / PAGE..end.div_ceil(PAGE))
}

/// Claims `[base, base + size)` for a device (module docs).
pub fn claim(hyp: &Hypervisor, base: u64, size: u64) -> Result<(), Errno> {
    let range = pages(base, size).ok_or(Errno::Einval)?;
    let mem = &hyp.core.mem;
    // Check every page first.
    for pfn in range.clone() {
        let e = mem.page(Pfn(pfn)).ok_or(Errno::Efault)?;
        let ok = e.owner() == ownership::Owner::Host
            && matches!(
                (e.host(), e.hyp()),
                (PageState::Owned, PageState::NoPage)
                    | (PageState::SharedOwned, PageState::SharedBorrowed)
            );
        if !ok {
            return Err(Errno::Eperm);
        }
    }
    let mut claims = CLAIMS.lock();
    let new_pages = range.clone().filter(|p| !claims.contains_key(p)).count();
    if claims.len() + new_pages > MAX_CLAIMED_PAGES {
        return Err(Errno::Enomem);
    }
    let mut done = 0u64;
    let mut failed = None;
    for pfn in range.clone() {
        let shared_now = match mem.page(Pfn(pfn)) {
            Some(e) if e.host() == PageState::Owned => match mem.host_share_hyp(Pfn(pfn)) {
                Ok(()) => true,
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            },
            _ => false,
        };
        if let Err(err) = mem.hyp_pin_shared(Pfn(pfn), 1) {
            if shared_now {
                let _ = mem.host_unshare_hyp(Pfn(pfn));
            }
            failed = Some(err);
            break;
        }
        let c = claims.entry(pfn).or_insert((0, false));
        c.0 += 1;
        c.1 |= shared_now;
        done += 1;
    }
    if let Some(err) = failed {
        // Another CPU of the host raced us: undo what was done.
        for pfn in range.start..range.start + done {
            release_page(hyp, &mut claims, pfn);
        }
        return Err(err);
    }
    Ok(())
}

fn release_page(hyp: &Hypervisor, claims: &mut BTreeMap<u64, (u32, bool)>, pfn: u64) {
    let Some(c) = claims.get_mut(&pfn) else {
        return;
    };
    let mem = &hyp.core.mem;
    let _ = mem.hyp_unpin_shared(Pfn(pfn), 1);
    c.0 -= 1;
    if c.0 == 0 {
        if c.1 {
            let _ = mem.host_unshare_hyp(Pfn(pfn));
        }
        claims.remove(&pfn);
    }
}

/// Releases a claim of `[base, base + size)` made with [`claim`].
pub fn release(hyp: &Hypervisor, base: u64, size: u64) {
    let Some(range) = pages(base, size) else {
        return;
    };
    let mut claims = CLAIMS.lock();
    for pfn in range {
        release_page(hyp, &mut claims, pfn);
    }
}

/// Takes `[base, base + size)` (page-aligned, host-owned and not shared)
/// from the host for a device (module docs).
pub fn take(hyp: &Hypervisor, base: u64, size: u64) -> Result<(), Errno> {
    if !base.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
        return Err(Errno::Einval);
    }
    let range = pages(base, size).ok_or(Errno::Einval)?;
    hyp.core
        .mem
        .host_donate_hyp(&mut ArmTlb, Pfn(range.start), range.end - range.start)
}

/// Returns a range [`take`] took to the host, zeroed.
pub fn give_back(hyp: &Hypervisor, base: u64, size: u64) {
    let Some(range) = pages(base, size) else {
        return;
    };
    if let Err(e) =
        hyp.core
            .mem
            .hyp_donate_host(&mut ArmTlb, Pfn(range.start), range.end - range.start)
    {
        // Only if the pages are not el2's: a bug in the bookkeeping.
        log::error!("device table {base:#x}+{size:#x}: cannot return it to the host: {e:?}");
    }
}
