//! Checks of el2's mediation of the GICv3 ITS and the redistributors' LPI
//! tables (el2's `arch::its` and `arch::gicr_lpi`): hardware that writes
//! memory by physical address must never be pointed at memory the host
//! does not own, and memory it uses must stay put.
//!
//! ITS (the device tree's `arm,gic-v3-its`; skipped without one):
//! `GITS_TYPER` reads through; `LDRSW` of `GITS_CTLR` (Quiescent, bit
//! 31) is sign-extended; a device-table `GITS_BASER<n>` in
//! hypervisor memory, past the end of RAM, straddling host RAM and
//! hypervisor memory, or in a page the host shares is refused (register
//! unchanged, the pages untouched); one in host RAM is taken (Indirect
//! cleared): donated to el2, the host's read of it aborts, `UnshareHyp`
//! → -EPERM, and invalidating the register gives it back zeroed.
//! `GITS_CBASER` in hypervisor memory is refused, in host RAM taken and
//! pinned. With the ITS enabled: SYNC / MAPD (ITT in host RAM) / SYNC
//! reach the hardware (the ITT pinned) and a MAPD whose ITT is hypervisor
//! memory stalls the queue at its offset (`CREADR.Stalled`); `GITS_BASER`
//! writes while enabled are ignored; disabling the ITS releases every
//! page. Commands refused at the head of the queue: a DeviceID beyond the
//! device table, more EventID bits than the ITS has, a GICv4 command, an
//! unknown one. MAPD V=0 releases the ITT once the ITS has run it; a
//! `CWRITER` past the queue moves nothing.
//!
//! LPIs (redistributor 0): `PROPBASER.IDbits` above 16 bits reads back
//! clamped; `EnableLPIs` with a property table in hypervisor memory reads
//! back clear (nothing pinned); with both tables in host RAM it is set and
//! every table page pinned (`UnshareHyp` → -EBUSY); a `PROPBASER` write
//! while enabled is ignored; clearing `EnableLPIs` releases the pages.
//!
//! With a VM built from test-host pages (one donated, one lent): every
//! register and MAPD above pointed at the guest's pages is refused; the
//! queue, an ITT, the device table and the LPI tables cannot be donated or
//! lent to the guest while in use, and can once the ITS or LPIs are off;
//! the teardown gives every page back.
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
const EPERM: u64 = (-errno::EPERM) as u64;
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
    let its = its_base(p).and_then(|base| {
        let t = its_checks(s, p, base);
        if t.is_none() {
            s.skip("ITS tables", "no device table among GITS_BASER<n>");
        }
        t
    });
    if its.is_none() && its_base(p).is_none() {
        s.skip("ITS mediation", "no arm,gic-v3-its in the device tree");
    }
    let rd = match p.gic {
        Some((_, (redist, _))) if lpis_enabled(redist) => {
            s.skip(
                "LPI table mediation",
                "LPIs already enabled on redistributor 0",
            );
            None
        }
        Some((_, (redist, _))) => {
            lpi_checks(s, p, redist);
            Some(redist)
        }
        None => {
            s.skip("LPI table mediation", "no GICv3");
            None
        }
    };
    if its.is_some() || rd.is_some() {
        guest_page_checks(s, its.as_ref(), rd);
    }
    let r = hvc([HostCall::CheckInvariants.id(), 0, 0, 0, 0, 0]);
    s.check(
        "el2's ownership invariants hold after the ITS and LPI checks",
        r[..3] == [0, 0, 0],
        format_args!("{r:x?}"),
    );
}

/// The ITS under test: its frame and the device table's register.
struct ItsUnderTest {
    base: u64,
    baser: u64,
    /// The device table register's read-only fields (type, entry size...).
    keep: u64,
}

impl ItsUnderTest {
    /// A valid device-table `GITS_BASER` value: `pages` 4 KiB pages at `pa`.
    fn table(&self, pa: u64, pages: u64) -> u64 {
        self.keep | VALID | pa | (pages - 1)
    }

    /// Programs the device table and a 1-page queue, enables the ITS,
    /// writes `cmds` at the start of the queue and moves `CWRITER` past
    /// them; returns `GITS_CREADR` once it reaches `want` (or after 100 ms).
    fn run(&self, cmds: &[[u64; 4]], want: u64) -> u64 {
        let queue = &raw mut QUEUE as u64;
        write64(self.baser, self.table(&raw mut DEVICE_TABLE as u64, 1));
        write64(self.base + GITS_CBASER, VALID | CBASER_ATTRS | queue);
        for (i, c) in cmds.iter().enumerate() {
            // SAFETY: at most a few commands in our own 4 KiB queue page.
            unsafe { (queue as *mut [u64; 4]).add(i).write_volatile(*c) };
        }
        arch::clean_to_poc(queue, PAGE);
        write32(self.base + GITS_CTLR, 1);
        write64(self.base + GITS_CWRITER, 32 * cmds.len() as u64);
        arch::wait_for(100_000, || read64(self.base + GITS_CREADR) == want);
        read64(self.base + GITS_CREADR)
    }

    /// Disables the ITS (el2 then releases every table).
    fn stop(&self) {
        write32(self.base + GITS_CTLR, 0);
    }
}

/// CBASER attributes: RaWb inner cacheable, inner shareable.
const CBASER_ATTRS: u64 = (0b001 << 59) | (0b01 << 10);
/// Page state of a page donated to el2.
const TAKEN: (u64, u64, u64) = (page_state::NOPAGE, page_state::OWNED, 0);
const SYNC: [u64; 4] = [0x05, 0, 0, 0];

/// MAPD of `dev` with an ITT of 2^`bits` events at `itt` (V = 1), or
/// unmapping it (`itt` = `None`).
fn mapd(dev: u64, bits: u64, itt: Option<u64>) -> [u64; 4] {
    let dw2 = itt.map_or(0, |a| VALID | a);
    [0x08 | (dev << 32), bits - 1, dw2, 0]
}

/// The ITS checks; the ITS under test for [`guest_page_checks`], if it
/// has a device table.
fn its_checks(s: &mut Summary, p: &Platform, its: u64) -> Option<ItsUnderTest> {
    let typer = read64(its + GITS_TYPER);
    s.check(
        "ITS: GITS_TYPER reads through el2 (physical LPIs)",
        typer & 1 == 1,
        format_args!("GITS_TYPER = {typer:#x}"),
    );
    // GITS_CTLR of a disabled ITS reads Quiescent (bit 31): LDRSW must
    // sign-extend it, as the hardware access would.
    let ctlr = read32(its + GITS_CTLR);
    let sext: u64;
    // SAFETY: a 32-bit load of the ITS's GITS_CTLR (see `read64`).
    unsafe {
        core::arch::asm!("ldrsw {v}, [{a}]", v = out(reg) sext, a = in(reg) its + GITS_CTLR,
            options(nostack, readonly, preserves_flags))
    };
    s.check(
        "ITS: a sign-extending load (LDRSW) of an emulated register is sign-extended",
        ctlr & (1 << 31) != 0 && sext == ctlr as i32 as i64 as u64,
        format_args!("GITS_CTLR {ctlr:#x}, LDRSW gave {sext:#x}"),
    );
    let n = (0..8u64).find(|n| (read64(its + GITS_BASER0 + 8 * n) >> 56) & 7 == 1)?;
    let baser = its + GITS_BASER0 + 8 * n;
    let t = ItsUnderTest {
        base: its,
        baser,
        keep: read64(baser) & !(VALID | INDIRECT | 0x0000_ffff_ffff_f3ff),
    };
    let (hyp, ram_end) = not_host(p);

    let before = read64(baser);
    write64(baser, t.table(hyp, 1));
    let a = read64(baser);
    write64(baser, t.table(ram_end, 1));
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
        write64(baser, t.table(host_page, 2));
        let after = read64(baser);
        let st2 = state(host_page);
        s.check(
            "ITS: a table straddling host RAM and hypervisor memory is refused; the host page is left as it was",
            after == before && st2 == st,
            format_args!("register {after:#x}, host page {st:x?} -> {st2:x?}"),
        );
    }
    // A shared page cannot become a table: the host could still write it.
    let dt = &raw mut DEVICE_TABLE as u64;
    let shared = hvc([HostCall::ShareHyp.id(), dt / PAGE, 0, 0, 0, 0])[1] == 0;
    write64(baser, t.table(dt, 1));
    let got = read64(baser);
    let unshared = unshare(dt) == 0;
    s.check(
        "ITS: a device table in a page the host shares with el2 is refused",
        shared && unshared && got == before,
        format_args!("share ok {shared}, register {got:#x}, unshare ok {unshared}"),
    );

    write64(baser, t.table(dt, 1) | INDIRECT);
    let got = read64(baser);
    let st = state(dt);
    s.check(
        "ITS: GITS_BASER in host RAM is taken (Indirect cleared); the page is donated to el2",
        got & VALID != 0 && got & INDIRECT == 0 && got & 0x0000_ffff_ffff_f000 == dt && st == TAKEN,
        format_args!("register {got:#x}, page {st:x?}"),
    );
    let log = &arch::ABORTS[arch::slot()];
    let aborts = log.count();
    let v = arch::probe_read(dt);
    let r = unshare(dt);
    s.check(
        "ITS: the host can no longer read the device table, nor UnshareHyp it (-EPERM)",
        log.count() == aborts + 1 && v == arch::SENTINEL && r == EPERM,
        format_args!(
            "{} aborts, read {v:#x}, unshare {r:#x}",
            log.count() - aborts
        ),
    );
    write64(baser, 0);
    let st = state(dt);
    // SAFETY: our own page, back in our hands.
    let v = unsafe { core::ptr::read_volatile(dt as *const u64) };
    s.check(
        "ITS: invalidating GITS_BASER gives the page back, zeroed",
        read64(baser) & VALID == 0 && st == FREE && v == 0,
        format_args!("page {st:x?}, first word {v:#x}"),
    );

    let queue = &raw mut QUEUE as u64;
    write64(its + GITS_CBASER, VALID | CBASER_ATTRS | hyp);
    let a = read64(its + GITS_CBASER);
    write64(its + GITS_CBASER, VALID | CBASER_ATTRS | queue);
    let b = read64(its + GITS_CBASER);
    s.check(
        "ITS: GITS_CBASER in hypervisor memory is refused, in host RAM taken and pinned",
        a & VALID == 0 && b == VALID | CBASER_ATTRS | queue && state(queue) == PINNED,
        format_args!("{a:#x} / {b:#x}, queue page {:x?}", state(queue)),
    );

    // Round 1: SYNC, MAPD device 1 (ITT in host RAM, 32 events), SYNC,
    // then a MAPD whose ITT is hypervisor memory.
    let itt = &raw mut ITT as u64;
    let cmds = [
        SYNC,
        mapd(1, 5, Some(itt)),
        SYNC,
        mapd(2, 5, Some(hyp)),
        SYNC,
    ];
    let creadr = t.run(&cmds, 0x60 | 1);
    s.check(
        "ITS: SYNC, MAPD (ITT in host RAM), SYNC reach the ITS (ITT pinned); a MAPD whose ITT is hypervisor memory stalls the queue at its offset",
        creadr == 0x60 | 1 && state(itt) == PINNED,
        format_args!("GITS_CREADR = {creadr:#x} (want 0x61), ITT page {:x?}", state(itt)),
    );
    let cur = read64(baser);
    write64(baser, 0);
    let still = read64(baser);
    s.check(
        "ITS: GITS_BASER writes while the ITS is enabled are ignored",
        still == cur && cur & VALID != 0,
        format_args!("{still:#x}, was {cur:#x}"),
    );
    t.stop();
    let (b, c) = (read64(baser), read64(its + GITS_CBASER));
    let pages = [state(dt), state(queue), state(itt)];
    s.check(
        "ITS: disabling it releases every table (pages host-owned, unpinned; BASER, CBASER invalid)",
        b & VALID == 0 && c & VALID == 0 && pages == [FREE; 3],
        format_args!("BASER {b:#x}, CBASER {c:#x}, pages {pages:x?}"),
    );

    // Rounds 2-4: commands refused at the head of the queue.
    let id_bits = ((typer >> 8) & 0x1f) + 1;
    for (name, cmd) in [
        (
            "ITS: a MAPD of a DeviceID beyond the device table stalls the queue",
            mapd(4096, 5, Some(itt)),
        ),
        (
            "ITS: a MAPD with more EventID bits than the ITS has stalls the queue",
            mapd(3, id_bits + 1, Some(itt)),
        ),
        (
            "ITS: a GICv4 command (VMAPP) stalls the queue",
            [0x29, 0, 0, 0],
        ),
        (
            "ITS: an unknown command (0xff) stalls the queue",
            [0xff, 0, 0, 0],
        ),
    ] {
        let creadr = t.run(&[cmd, SYNC], 1);
        t.stop();
        s.check(
            name,
            creadr == 1 && state(itt) == FREE,
            format_args!(
                "GITS_CREADR = {creadr:#x} (want 0x1), ITT {:x?}",
                state(itt)
            ),
        );
    }

    // Round 5: an ITT is released once the MAPD that unmaps it has run.
    let creadr = t.run(&[mapd(1, 5, Some(itt)), SYNC, mapd(1, 5, None), SYNC], 0x80);
    let st = state(itt);
    let on = read32(its + GITS_CTLR) & 1;
    t.stop();
    s.check(
        "ITS: MAPD V=0 releases the ITT once the ITS has run it (ITS still enabled)",
        creadr == 0x80 && st == FREE && on == 1,
        format_args!("GITS_CREADR = {creadr:#x}, ITT {st:x?}, enabled {on}"),
    );

    // A CWRITER past the end of the queue moves nothing.
    write64(baser, t.table(dt, 1));
    write64(its + GITS_CBASER, VALID | CBASER_ATTRS | queue);
    write32(its + GITS_CTLR, 1);
    write64(its + GITS_CWRITER, 0x2000);
    let creadr = read64(its + GITS_CREADR);
    t.stop();
    s.check(
        "ITS: a GITS_CWRITER beyond the queue is ignored",
        creadr == 0 && [state(dt), state(queue)] == [FREE; 2],
        format_args!("GITS_CREADR = {creadr:#x}"),
    );
    Some(t)
}

/// Whether redistributor `rd` has LPIs on already (then it is left alone).
fn lpis_enabled(rd: u64) -> bool {
    read32(rd + GICR_CTLR) & ENABLE_LPIS != 0
}

fn lpi_checks(s: &mut Summary, p: &Platform, rd: u64) {
    let prop = &raw mut PROP as u64;
    let pend = &raw mut PEND as u64;
    let (hyp, _) = not_host(p);
    let attrs = (0b111 << 7) | (0b01 << 10); // RaWaWb inner, inner shareable
    let ctlr = read32(rd + GICR_CTLR);

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

#[repr(C, align(8192))]
struct Pgd([u8; 8192]);

static mut VM_PGD: Pgd = Pgd([0; 8192]);
static mut VM_META: Pages<{ 4 * 4096 }> = Pages([0; 4 * 4096]);
static mut VM_CACHE: Pages<{ 4 * 4096 }> = Pages([0; 4 * 4096]);
static mut GUEST_DONATED: Pages<4096> = Pages([0; 4096]);
static mut GUEST_SHARED: Pages<4096> = Pages([0; 4096]);

/// Guest frames the checks below use: the donated page, the shared page,
/// then the frames pinned pages are offered at.
const GFN_DONATED: u64 = 0x20;
const GFN_SHARED: u64 = 0x21;
const GFN_QUEUE: u64 = 0x22;
const GFN_ITT: u64 = 0x23;
const GFN_DT: u64 = 0x24;
const GFN_PEND: u64 = 0x25;
const GFN_PROP: u64 = 0x26;

/// A host call; `Ok(x2..x6)` or `Err(x1)`.
fn call(c: HostCall, a: [u64; 5]) -> Result<[u64; 5], u64> {
    let r = hvc([c.id(), a[0], a[1], a[2], a[3], a[4]]);
    if r[1] == 0 {
        Ok([r[2], r[3], r[4], r[5], 0])
    } else {
        Err(r[1])
    }
}

/// An error code as the checks print it.
fn code(r: Result<[u64; 5], u64>) -> i64 {
    r.map_or_else(|e| e as i64, |_| 0)
}

/// Refused because the page is in use (pinned or not the host's).
fn in_use(r: Result<[u64; 5], u64>) -> bool {
    matches!(r, Err(EPERM) | Err(EBUSY))
}

/// Creates a one-vCPU VM from the test host's own pages with a topped-up
/// memcache, donates `GUEST_DONATED` and lends `GUEST_SHARED` to it.
fn create_vm() -> Result<u64, &'static str> {
    let pfn = |a: u64| a / PAGE;
    let pgd = &raw mut VM_PGD as u64;
    let meta = &raw mut VM_META as u64;
    let cache = &raw mut VM_CACHE as u64;
    let h = call(HostCall::VmCreate, [40, pfn(pgd), pfn(meta), 1, 0])
        .map_err(|_| "VmCreate failed")?[0];
    call(HostCall::MemcacheTopup, [h, pfn(cache), 4, 0, 0]).map_err(|_| "MemcacheTopup failed")?;
    let donated = &raw mut GUEST_DONATED as u64;
    let shared = &raw mut GUEST_SHARED as u64;
    call(HostCall::DonateGuest, [h, pfn(donated), GFN_DONATED, 1, 0])
        .map_err(|_| "DonateGuest failed")?;
    call(HostCall::ShareGuest, [h, pfn(shared), GFN_SHARED, 1, 0])
        .map_err(|_| "ShareGuest failed")?;
    Ok(h)
}

/// Tears the VM down: lent pages back, every frame reclaimed.
fn destroy_vm(h: u64) -> bool {
    let mut ok = true;
    for gfn in [GFN_SHARED, GFN_ITT, GFN_PEND] {
        // Only the frames a check managed to lend are mapped.
        let _ = call(HostCall::UnshareGuest, [h, gfn, 1, 0, 0]);
    }
    ok &= call(HostCall::TeardownStart, [h, 0, 0, 0, 0]).is_ok();
    for gfn in [GFN_DONATED, GFN_QUEUE, GFN_DT, GFN_PROP] {
        let _ = call(HostCall::Reclaim, [h, gfn, 1, 0, 0]);
    }
    ok &= call(HostCall::TeardownFinish, [h, 0, 0, 0, 0]).is_ok();
    ok
}

/// Pages donated to or shared with a guest, as tables or queues, and the
/// reverse: pages the ITS or the redistributor uses, offered to a guest.
fn guest_page_checks(s: &mut Summary, its: Option<&ItsUnderTest>, rd: Option<u64>) {
    let h = match create_vm() {
        Ok(h) => h,
        Err(why) => {
            s.check(
                "guest pages: a VM built from test-host pages",
                false,
                format_args!("{why}"),
            );
            return;
        }
    };
    let donated = &raw mut GUEST_DONATED as u64;
    let shared = &raw mut GUEST_SHARED as u64;
    let queue = &raw mut QUEUE as u64;
    let itt = &raw mut ITT as u64;
    let dt = &raw mut DEVICE_TABLE as u64;
    let prop = &raw mut PROP as u64;
    let pend = &raw mut PEND as u64;
    let pfn = |a: u64| a / PAGE;

    if let Some(t) = its {
        let before = read64(t.baser);
        write64(t.baser, t.table(donated, 1));
        let a = read64(t.baser);
        write64(t.baser, t.table(shared, 1));
        let b = read64(t.baser);
        write64(t.base + GITS_CBASER, VALID | CBASER_ATTRS | donated);
        let c = read64(t.base + GITS_CBASER);
        write64(t.base + GITS_CBASER, VALID | CBASER_ATTRS | shared);
        let d = read64(t.base + GITS_CBASER);
        s.check(
            "ITS: GITS_BASER and GITS_CBASER at a page donated to or shared with a guest are refused",
            a == before && b == before && c & VALID == 0 && d & VALID == 0,
            format_args!("BASER {before:#x} -> {a:#x} / {b:#x}, CBASER {c:#x} / {d:#x}"),
        );
        let r1 = t.run(&[mapd(1, 5, Some(donated)), SYNC], 1);
        t.stop();
        let r2 = t.run(&[mapd(1, 5, Some(shared)), SYNC], 1);
        t.stop();
        s.check(
            "ITS: a MAPD whose ITT is a guest's page (donated or shared) stalls the queue",
            r1 == 1 && r2 == 1,
            format_args!("GITS_CREADR = {r1:#x} / {r2:#x} (want 0x1)"),
        );

        let creadr = t.run(&[mapd(1, 5, Some(itt)), SYNC], 0x40);
        let q = call(HostCall::DonateGuest, [h, pfn(queue), GFN_QUEUE, 1, 0]);
        let i = call(HostCall::ShareGuest, [h, pfn(itt), GFN_ITT, 1, 0]);
        let d = call(HostCall::DonateGuest, [h, pfn(dt), GFN_DT, 1, 0]);
        s.check(
            "ITS: while it uses them, the queue and an ITT cannot be donated or lent to a guest, nor the device table donated",
            creadr == 0x40 && in_use(q) && in_use(i) && d == Err(EPERM),
            format_args!(
                "GITS_CREADR {creadr:#x}; queue {}, ITT {}, device table {}",
                code(q),
                code(i),
                code(d)
            ),
        );
        t.stop();
        let q = call(HostCall::DonateGuest, [h, pfn(queue), GFN_QUEUE, 1, 0]);
        let i = call(HostCall::ShareGuest, [h, pfn(itt), GFN_ITT, 1, 0]);
        s.check(
            "ITS: once it is disabled, the queue can be donated and the ITT lent to a guest",
            q.is_ok() && i.is_ok(),
            format_args!("queue {}, ITT {}", code(q), code(i)),
        );
    }

    if let Some(rd) = rd {
        let attrs = (0b111 << 7) | (0b01 << 10);
        let ctlr = read32(rd + GICR_CTLR);
        write64(rd + GICR_PROPBASER, attrs | donated | 15);
        write64(rd + GICR_PENDBASER, attrs | pend);
        write32(rd + GICR_CTLR, ctlr | ENABLE_LPIS);
        let a = read32(rd + GICR_CTLR);
        write64(rd + GICR_PROPBASER, attrs | prop | 15);
        write64(rd + GICR_PENDBASER, attrs | shared);
        write32(rd + GICR_CTLR, ctlr | ENABLE_LPIS);
        let b = read32(rd + GICR_CTLR);
        s.check(
            "LPI: EnableLPIs with a table at a guest's page (donated or shared) reads back clear; nothing pinned",
            a & ENABLE_LPIS == 0 && b & ENABLE_LPIS == 0 && [state(prop), state(pend)] == [FREE; 2],
            format_args!("GICR_CTLR {a:#x} / {b:#x}"),
        );

        write64(rd + GICR_PENDBASER, attrs | pend);
        write32(rd + GICR_CTLR, ctlr | ENABLE_LPIS);
        let on = read32(rd + GICR_CTLR) & ENABLE_LPIS != 0;
        let p = call(HostCall::ShareGuest, [h, pfn(pend), GFN_PEND, 1, 0]);
        let q = call(HostCall::DonateGuest, [h, pfn(prop), GFN_PROP, 1, 0]);
        s.check(
            "LPI: while LPIs are enabled, the tables cannot be lent or donated to a guest",
            on && in_use(p) && in_use(q),
            format_args!("enabled {on}; pending {}, property {}", code(p), code(q)),
        );
        write32(rd + GICR_CTLR, ctlr & !ENABLE_LPIS);
        let p = call(HostCall::ShareGuest, [h, pfn(pend), GFN_PEND, 1, 0]);
        let q = call(HostCall::DonateGuest, [h, pfn(prop), GFN_PROP, 1, 0]);
        s.check(
            "LPI: once LPIs are disabled, the tables can be lent and donated to a guest",
            p.is_ok() && q.is_ok(),
            format_args!("pending {}, property {}", code(p), code(q)),
        );
    }

    let gone = destroy_vm(h);
    let pages = [
        donated,
        shared,
        queue,
        itt,
        dt,
        prop,
        pend,
        &raw mut VM_PGD as u64,
        &raw mut VM_META as u64,
        &raw mut VM_CACHE as u64,
    ]
    .map(state);
    s.check(
        "guest pages: the VM torn down, every page it had back with the host",
        gone && pages == [FREE; 10],
        format_args!("teardown ok {gone}, pages {pages:x?}"),
    );
}
