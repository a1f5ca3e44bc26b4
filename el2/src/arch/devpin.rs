//! Pinning host memory a device writes by physical address (the GICv3 ITS
//! and the redistributors' LPI tables), so the host can no longer hand it
//! to anyone while the device uses it.
//!
//! A claimed range must be RAM the host owns (or has already shared with
//! the hypervisor). Each page is shared with the hypervisor if it was not
//! (`host_share_hyp`) and pinned (`hyp_pin_shared`): while pinned the host
//! keeps its access but can neither donate nor lend the page to a guest
//! (`EPERM`) nor take it back from the hypervisor (`EBUSY`). Releasing
//! drops the pin and, on a page's last claim, undoes the share if el2 made
//! it. A claim is all or nothing: a page that fails leaves every page as it
//! was.

use alloc::collections::BTreeMap;

use ownership::{Errno, PageState, Pfn};

use super::host::Hypervisor;

const PAGE: u64 = 4096;

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
