//! Checks of el2's mediation of the GICv3 ITS and the redistributors' LPI
//! tables (el2's `arch::its` and `arch::gicr_lpi`): hardware that writes
//! memory by physical address must never be pointed at memory the host
//! does not own, and memory it uses must stay put.
//!
//! ITS (the device tree's `arm,gic-v3-its`; skipped without one):
//! `GITS_TYPER` reads through; a device-table `GITS_BASER<n>` in
//! hypervisor memory, past the end of RAM, or straddling host RAM and
//! hypervisor memory is refused (register unchanged, the host page
//! untouched); one in host RAM is taken (Indirect cleared), its page shared
//! with el2 and pinned, and `UnshareHyp` of it → -EBUSY; `GITS_CBASER` in
//! hypervisor memory is refused, in host RAM taken and pinned; with the
//! ITS enabled, SYNC / MAPD (ITT in host RAM) / SYNC reach the hardware
//! (`GITS_CREADR` catches up, the ITT pinned), a MAPD whose ITT is
//! hypervisor memory stalls the queue at its offset (`CREADR.Stalled`);
//! `GITS_BASER` writes while enabled are ignored; disabling the ITS
//! releases every page.
//!
//! LPIs (redistributor 0): `PROPBASER.IDbits` above 16 bits reads back
//! clamped; `EnableLPIs` with a property table in hypervisor memory reads
//! back clear (nothing pinned); with both tables in host RAM it is set and
//! every table page pinned (`UnshareHyp` → -EBUSY); a `PROPBASER` write
//! while enabled is ignored; clearing `EnableLPIs` releases the pages.
//!
//! Last, el2's ownership invariant checker must find nothing wrong.

use host_interface::abi::{HostCall, errno, page_state};

use super::Platform;
use super::arch::{self, hvc};
use super::checks::Summary;

const GITS_CTLR: u64 = 0x0;
const GITS_TYPER: u64 = 0x8;
const GITS_CBASER: u64 = 0x80;
const GITS_CWRITER: u64 = 0x88;
const GITS_CREADR: u64 = 0x90;
const GITS_BASER0: u64 = 0x100;
const VALID: u64 = 1 << 63;
const INDIRECT: u64 = 1 << 62;
const GICR_CTLR: u64 = 0x0;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
const ENABLE_LPIS: u32 = 1;
const EBUSY: u64 = (-errno::EBUSY) as u64;
const PAGE: u64 = 4096;

#[repr(C, align(4096))]
struct Pages<const N: usize>([u8; N]);

#[repr(C, align(65536))]
struct Pages64k([u8; 0x1_0000]);

static mut DEVICE_TABLE: Pages<4096> = Pages([0; 4096]);
static mut QUEUE: Pages<4096> = Pages([0; 4096]);
static mut ITT: Pages<4096> = Pages([0; 4096]);
static mut PROP: Pages64k = Pages64k([0; 0x1_0000]);
static mut PEND: Pages64k = Pages64k([0; 0x1_0000]);

fn read64(a: u64) -> u64 {
    // SAFETY: a GIC register the device tree names, in a gigabyte our
    // identity map keeps Device; el2 emulates or passes the access.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

fn write64(a: u64, v: u64) {
    // SAFETY: as `read64`; the registers written are the ITS's and
    // redistributor 0's, which nothing else in the test host uses.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

fn read32(a: u64) -> u32 {
    // SAFETY: as `read64`.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn write32(a: u64, v: u32) {
    // SAFETY: as `write64`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

/// `(host state, hyp state, pins)` of a page.
fn state(pa: u64) -> (u64, u64, u64) {
    let r = hvc([HostCall::PageState.id(), pa / PAGE, 0, 0, 0, 0]);
    (r[2], r[3], r[5] & 0xffff)
}

const PINNED: (u64, u64, u64) = (page_state::SHARED_OWNED, page_state::SHARED_BORROWED, 1);
const FREE: (u64, u64, u64) = (page_state::OWNED, page_state::NOPAGE, 0);

fn unshare(pa: u64) -> u64 {
    hvc([HostCall::UnshareHyp.id(), pa / PAGE, 0, 0, 0, 0])[1]
}

/// The ITS's register frame, from the device tree.
fn its_base(p: &Platform) -> Option<u64> {
    // SAFETY: the device tree el2 wrote, as parsed at boot.
    let fdt = unsafe { flat_device_tree::Fdt::from_ptr(p.dtb.0 as *const u8) }.ok()?;
    let node = fdt.find_compatible(&["arm,gic-v3-its"])?;
    if node
        .property("status")
        .and_then(|s| s.as_str())
        .is_some_and(|s| s != "okay" && s != "ok")
    {
        return None;
    }
    node.reg().next().map(|r| r.starting_address as u64)
}

/// A hypervisor address and the end of RAM: addresses the host does not own.
fn not_host(p: &Platform) -> (u64, u64) {
    let hyp = p.hyp().first().map_or(0, |h| h.0);
    let ram_end = p.ram().iter().map(|r| r.0 + r.1).max().unwrap_or(0);
    (hyp, ram_end)
}

/// Runs the ITS and LPI checks.
pub fn run(s: &mut Summary, p: &Platform) {
    match its_base(p) {
        Some(base) => its_checks(s, p, base),
        None => s.skip("ITS mediation", "no arm,gic-v3-its in the device tree"),
    }
    match p.gic {
        Some((_, (redist, _))) => lpi_checks(s, p, redist),
        None => s.skip("LPI table mediation", "no GICv3"),
    }
    let r = hvc([HostCall::CheckInvariants.id(), 0, 0, 0, 0, 0]);
    s.check(
        "el2's ownership invariants hold after the ITS and LPI checks",
        r[..3] == [0, 0, 0],
        format_args!("{r:x?}"),
    );
}

fn its_checks(s: &mut Summary, p: &Platform, its: u64) {
    let typer = read64(its + GITS_TYPER);
    s.check(
        "ITS: GITS_TYPER reads through el2 (physical LPIs)",
        typer & 1 == 1,
        format_args!("GITS_TYPER = {typer:#x}"),
    );
    let Some(n) = (0..8u64).find(|n| (read64(its + GITS_BASER0 + 8 * n) >> 56) & 7 == 1) else {
        s.skip("ITS tables", "no device table among GITS_BASER<n>");
        return;
    };
    let baser = its + GITS_BASER0 + 8 * n;
    let keep = read64(baser) & !(VALID | INDIRECT | 0x0000_ffff_ffff_f3ff);
    // A 1-page table of 4 KiB pages at `pa`.
    let table = |pa: u64, pages: u64| keep | VALID | pa | (pages - 1);
    let (hyp, ram_end) = not_host(p);

    let before = read64(baser);
    write64(baser, table(hyp, 1));
    let a = read64(baser);
    write64(baser, table(ram_end, 1));
    let b = read64(baser);
    s.check(
        "ITS: GITS_BASER with a table in hypervisor memory or past RAM is refused",
        a == before && b == before,
        format_args!("before {before:#x}, after {a:#x} / {b:#x}"),
    );
    // A table whose first page is the host's and second is el2's.
    if let Some(&(h, _)) = p
        .hyp()
        .iter()
        .find(|h| p.ram().iter().any(|r| r.0 < h.0 && h.0 <= r.0 + r.1))
    {
        let host_page = h - PAGE;
        let st = state(host_page);
        write64(baser, table(host_page, 2));
        let after = read64(baser);
        let st2 = state(host_page);
        s.check(
            "ITS: a table straddling host RAM and hypervisor memory is refused; the host page is left as it was",
            after == before && st2 == st,
            format_args!("register {after:#x}, host page {st:x?} -> {st2:x?}"),
        );
    }

    let dt = &raw mut DEVICE_TABLE as u64;
    write64(baser, table(dt, 1) | INDIRECT);
    let got = read64(baser);
    let st = state(dt);
    s.check(
        "ITS: GITS_BASER in host RAM is taken (Indirect cleared); the page is shared with el2 and pinned",
        got & VALID != 0 && got & INDIRECT == 0 && got & 0x0000_ffff_ffff_f000 == dt && st == PINNED,
        format_args!("register {got:#x}, page {st:x?}"),
    );
    let r = unshare(dt);
    s.check(
        "ITS: UnshareHyp of the device table's page -> -EBUSY",
        r == EBUSY && state(dt) == PINNED,
        format_args!("{r:#x}"),
    );

    let queue = &raw mut QUEUE as u64;
    let cb_attrs = (0b001 << 59) | (0b01 << 10); // RaWb inner, inner shareable
    write64(its + GITS_CBASER, VALID | cb_attrs | hyp);
    let a = read64(its + GITS_CBASER);
    write64(its + GITS_CBASER, VALID | cb_attrs | queue);
    let b = read64(its + GITS_CBASER);
    s.check(
        "ITS: GITS_CBASER in hypervisor memory is refused, in host RAM taken and pinned",
        a & VALID == 0 && b == VALID | cb_attrs | queue && state(queue) == PINNED,
        format_args!("{a:#x} / {b:#x}, queue page {:x?}", state(queue)),
    );

    // Commands: SYNC, MAPD device 1 (ITT in host RAM, 32 events), SYNC.
    let itt = &raw mut ITT as u64;
    let cmds = queue as *mut [u64; 4];
    let put = |slot: usize, cmd: [u64; 4]| {
        // SAFETY: `slot` < 128 commands of our own queue page.
        unsafe { cmds.add(slot).write_volatile(cmd) };
    };
    put(0, [0x05, 0, 0, 0]);
    put(1, [0x08 | (1 << 32), 4, VALID | itt, 0]);
    put(2, [0x05, 0, 0, 0]);
    arch::clean_to_poc(queue, PAGE);
    write32(its + GITS_CTLR, 1);
    write64(its + GITS_CWRITER, 0x60);
    let done = arch::wait_for(100_000, || read64(its + GITS_CREADR) == 0x60);
    let creadr = read64(its + GITS_CREADR);
    s.check(
        "ITS: SYNC, MAPD (ITT in host RAM), SYNC reach the ITS; the ITT is pinned",
        done && state(itt) == PINNED,
        format_args!("GITS_CREADR = {creadr:#x}, ITT page {:x?}", state(itt)),
    );

    // MAPD device 2 with its ITT in hypervisor memory, then a SYNC.
    put(3, [0x08 | (2 << 32), 4, VALID | hyp, 0]);
    put(4, [0x05, 0, 0, 0]);
    arch::clean_to_poc(queue, PAGE);
    write64(its + GITS_CWRITER, 0xa0);
    let stalled = arch::wait_for(100_000, || read64(its + GITS_CREADR) == 0x60 | 1);
    let creadr = read64(its + GITS_CREADR);
    s.check(
        "ITS: a MAPD whose ITT is hypervisor memory stalls the queue at its offset (CREADR.Stalled)",
        stalled,
        format_args!("GITS_CREADR = {creadr:#x}, want 0x61"),
    );

    write64(baser, 0);
    let still = read64(baser);
    s.check(
        "ITS: GITS_BASER writes while the ITS is enabled are ignored",
        still == got,
        format_args!("{still:#x}, was {got:#x}"),
    );

    write32(its + GITS_CTLR, 0);
    let (b, c) = (read64(baser), read64(its + GITS_CBASER));
    let pages = [state(dt), state(queue), state(itt)];
    s.check(
        "ITS: disabling it releases every table (pages host-owned, unpinned; BASER, CBASER invalid)",
        b & VALID == 0 && c & VALID == 0 && pages == [FREE; 3],
        format_args!("BASER {b:#x}, CBASER {c:#x}, pages {pages:x?}"),
    );
}

fn lpi_checks(s: &mut Summary, p: &Platform, rd: u64) {
    let prop = &raw mut PROP as u64;
    let pend = &raw mut PEND as u64;
    let (hyp, _) = not_host(p);
    let attrs = (0b111 << 7) | (0b01 << 10); // RaWaWb inner, inner shareable
    let ctlr = read32(rd + GICR_CTLR);
    if ctlr & ENABLE_LPIS != 0 {
        s.skip(
            "LPI table mediation",
            "LPIs already enabled on redistributor 0",
        );
        return;
    }

    write64(rd + GICR_PROPBASER, attrs | prop | 31);
    let got = read64(rd + GICR_PROPBASER);
    s.check(
        "LPI: GICR_PROPBASER.IDbits above 16 bits reads back as 16 bits",
        got & 0x1f == 15 && got & 0x000f_ffff_ffff_f000 == prop,
        format_args!("{got:#x}"),
    );

    write64(rd + GICR_PROPBASER, attrs | hyp | 15);
    write64(rd + GICR_PENDBASER, attrs | pend);
    write32(rd + GICR_CTLR, ctlr | ENABLE_LPIS);
    let c = read32(rd + GICR_CTLR);
    s.check(
        "LPI: EnableLPIs with the property table in hypervisor memory reads back clear; nothing pinned",
        c & ENABLE_LPIS == 0 && state(pend) == FREE,
        format_args!("GICR_CTLR = {c:#x}, pending page {:x?}", state(pend)),
    );

    write64(rd + GICR_PROPBASER, attrs | prop | 15);
    write32(rd + GICR_CTLR, ctlr | ENABLE_LPIS);
    let c = read32(rd + GICR_CTLR);
    // 2^16 - 8192 property bytes: 14 pages; the pending table's 16 pages.
    let ends = [prop, prop + 13 * PAGE, pend, pend + 15 * PAGE];
    let states = ends.map(state);
    s.check(
        "LPI: EnableLPIs with both tables in host RAM is set; every table page pinned",
        c & ENABLE_LPIS != 0 && states == [PINNED; 4] && state(prop + 14 * PAGE) == FREE,
        format_args!("GICR_CTLR = {c:#x}, pages {states:x?}"),
    );
    let r = unshare(pend);
    s.check(
        "LPI: UnshareHyp of a pending-table page -> -EBUSY",
        r == EBUSY,
        format_args!("{r:#x}"),
    );
    write64(rd + GICR_PROPBASER, attrs | hyp | 15);
    let got = read64(rd + GICR_PROPBASER);
    s.check(
        "LPI: GICR_PROPBASER writes while LPIs are enabled are ignored",
        got & 0x000f_ffff_ffff_f000 == prop,
        format_args!("{got:#x}"),
    );

    write32(rd + GICR_CTLR, ctlr & !ENABLE_LPIS);
    let c = read32(rd + GICR_CTLR);
    let states = ends.map(state);
    s.check(
        "LPI: clearing EnableLPIs releases the tables",
        c & ENABLE_LPIS == 0 && states == [FREE; 4],
        format_args!("GICR_CTLR = {c:#x}, pages {states:x?}"),
    );
}
