//! The redistributors' LPI tables, mediated: `GICR_PROPBASER` and
//! `GICR_PENDBASER` name memory the GIC reads and writes by physical
//! address, so — as for the ITS ([`super::its`]) — the tables must lie in
//! host-owned RAM, which el2 pins ([`super::devpin::claim`]; they hold no
//! addresses, so the host may keep writing them) while the redistributor
//! uses them.
//!
//! Each redistributor's `RD_base` frame (its first 64 KiB: `GICR_CTLR`,
//! `GICR_TYPER`, `GICR_WAKER`, the LPI registers...) is absent from the
//! host's stage-2; el2 emulates the host's accesses to it. The
//! `SGI_base` frames (enables, priorities...) stay the host's; a GICv4
//! redistributor's `VLPI_base` frame, and anything in the redistributor
//! region past the frames el2 mediates, are kept from the host altogether
//! (see `boot`).
//!
//! The redistributor touches the tables only while `GICR_CTLR.EnableLPIs`
//! is set, so that is where the check sits:
//!
//! - Setting `EnableLPIs`: el2 claims the tables the two registers name
//!   (the configuration table for `PROPBASER.IDbits`, the 64 KiB pending
//!   table); if either is not host-owned RAM the bit is dropped (the host
//!   reads `EnableLPIs` back clear, and el2 logs why).
//! - Clearing it: the tables are released once the redistributor reads
//!   back clear with `RWP` clear (checked again on every later access to
//!   the frame until it does).
//! - `PROPBASER`/`PENDBASER` writes while `EnableLPIs` is set, or the
//!   tables are awaiting release, are ignored (the architecture makes them
//!   UNPREDICTABLE); otherwise they pass through, `PROPBASER.IDbits`
//!   clamped to [`MAX_ID_BITS`] (the host reads the clamped value back;
//!   Linux uses 16 bits of LPI INTIDs at most), which keeps the pending
//!   table at its 64 KiB minimum.
//! - Writes pass through only to the registers a host programs
//!   (`GICR_CTLR`, `STATUSR`, `WAKER`, `SETLPIR`, `CLRLPIR`, `INVLPIR` and
//!   `INVALLR` without their GICv4.1 virtual bit); others are dropped.
//!
//! At boot ([`init`]) LPIs left enabled by firmware or a previous kernel
//! are turned off (el2 refuses to boot if they cannot be) and `PROPBASER`
//! is clamped, so nothing el2 did not check is ever in use.

use super::devpin;
use super::host::Hypervisor;
use super::lograte::warn_limited;
use super::percpu::MAX_CPUS;

/// Bytes of an `RD_base` frame.
pub const RD_FRAME: u64 = 0x1_0000;

const GICR_CTLR: u64 = 0x0;
const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_STATUSR: u64 = 0x10;
const GICR_WAKER: u64 = 0x14;
const GICR_SETLPIR: u64 = 0x40;
const GICR_CLRLPIR: u64 = 0x48;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
const GICR_INVLPIR: u64 = 0xa0;
const GICR_INVALLR: u64 = 0xb0;
/// `GICR_INVLPIR.V` / `GICR_INVALLR.V`: a GICv4.1 virtual LPI.
const INV_VIRTUAL: u64 = 1 << 63;
/// Bound on an `RWP` wait (register reads).
const WAIT_READS: u32 = 1_000_000;
/// Most LPI INTID bits a host may configure (`PROPBASER.IDbits` + 1).
pub const MAX_ID_BITS: u64 = 16;
/// Bytes of a pending table for [`MAX_ID_BITS`]: one bit per INTID,
/// at least 64 KiB (its alignment).
const PEND_BYTES: u64 = 0x1_0000;

/// A redistributor's frame and its claimed tables.
#[derive(Clone, Copy, Default)]
struct Frame {
    base: u64,
    prop: Option<(u64, u64)>,
    pend: Option<(u64, u64)>,
    /// `EnableLPIs` was cleared; the tables go once the redistributor
    /// says it is done with them.
    release_pending: bool,
}

struct Frames {
    frames: [Frame; MAX_CPUS],
    count: usize,
}

static FRAMES: spin::Mutex<Frames> = spin::Mutex::new(Frames {
    frames: [Frame {
        base: 0,
        prop: None,
        pend: None,
        release_pending: false,
    }; MAX_CPUS],
    count: 0,
});

/// Takes the `RD_base` frames at `bases` under el2's mediation (boot,
/// once; the frames are mapped at EL2 and absent from the host's
/// stage-2): LPIs off, `PROPBASER` clamped.
pub fn init(bases: &[u64]) -> Result<(), &'static str> {
    let mut f = FRAMES.lock();
    for (i, (slot, &b)) in f.frames.iter_mut().zip(bases).enumerate() {
        slot.base = b;
        let ctlr = read32(b + GICR_CTLR);
        if ctlr & GICR_CTLR_ENABLE_LPIS != 0 {
            log::info!("redistributor {i}: LPIs were left enabled: disabling them");
            write32(b + GICR_CTLR, ctlr & !GICR_CTLR_ENABLE_LPIS);
            if !slot.lpis_done() {
                return Err("a redistributor's LPIs were left enabled and cannot be turned off");
            }
        }
        write64(
            b + GICR_PROPBASER,
            clamp_id_bits(read64(b + GICR_PROPBASER)),
        );
    }
    f.count = bases.len().min(MAX_CPUS);
    Ok(())
}

/// Whether `pa` is the `RD_base` of a redistributor el2 mediates.
pub fn is_rd_frame(pa: u64) -> bool {
    let f = FRAMES.lock();
    f.frames[..f.count].iter().any(|fr| fr.base == pa)
}

/// The frame index and offset of `ipa`, if it is in a mediated frame.
pub fn offset_of(ipa: u64) -> Option<(usize, u64)> {
    let f = FRAMES.lock();
    f.frames[..f.count].iter().enumerate().find_map(|(i, fr)| {
        ipa.checked_sub(fr.base)
            .filter(|o| *o < RD_FRAME)
            .map(|o| (i, o))
    })
}

fn read64(addr: u64) -> u64 {
    // SAFETY: `addr` is a register of a redistributor frame el2 maps
    // Device at boot; a register read.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn write64(addr: u64, v: u64) {
    // SAFETY: as `read64`; el2 decides what reaches the register.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as `read64`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as `write64`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// LPI INTID bits a `PROPBASER` value gives (its `IDbits` + 1).
fn id_bits(prop: u64) -> u64 {
    (prop & 0x1f) + 1
}

/// `v` with `IDbits` at most [`MAX_ID_BITS`] - 1.
fn clamp_id_bits(v: u64) -> u64 {
    if id_bits(v) > MAX_ID_BITS {
        (v & !0x1f) | (MAX_ID_BITS - 1)
    } else {
        v
    }
}

/// The configuration table a `PROPBASER` value names: one byte per LPI
/// (INTIDs from 8192), or `None` when it allows no LPI.
fn prop_table(v: u64) -> Option<(u64, u64)> {
    let bits = id_bits(v).min(MAX_ID_BITS);
    if bits < 14 {
        return None;
    }
    Some((v & 0x000f_ffff_ffff_f000, (1u64 << bits) - 8192))
}

/// The pending table a `PENDBASER` value names (64 KiB aligned).
fn pend_table(v: u64) -> (u64, u64) {
    const _: () = assert!((1 << MAX_ID_BITS) / 8 <= PEND_BYTES);
    (v & 0x000f_ffff_ffff_0000, PEND_BYTES)
}

impl Frame {
    fn lpis_on(&self) -> bool {
        read32(self.base + GICR_CTLR) & GICR_CTLR_ENABLE_LPIS != 0
    }

    /// Waits (bounded) for `EnableLPIs` to read clear with `RWP` clear;
    /// whether it did.
    fn lpis_done(&self) -> bool {
        for _ in 0..WAIT_READS {
            let c = read32(self.base + GICR_CTLR);
            if c & (GICR_CTLR_ENABLE_LPIS | GICR_CTLR_RWP) == 0 {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    /// Whether the table registers may change.
    fn tables_free(&self) -> bool {
        !self.release_pending && !self.lpis_on()
    }

    /// Releases the tables if a pending release is due.
    fn progress(&mut self, hyp: &Hypervisor, index: usize) {
        if !self.release_pending {
            return;
        }
        let c = read32(self.base + GICR_CTLR);
        if c & (GICR_CTLR_ENABLE_LPIS | GICR_CTLR_RWP) == 0 {
            self.release_pending = false;
            self.release(hyp);
            log::info!("redistributor {index}: LPIs disabled by the host; tables released");
        }
    }

    /// Claims the tables for `EnableLPIs`; whether they are the host's.
    fn claim_tables(&mut self, hyp: &Hypervisor, index: usize) -> bool {
        let propbaser = read64(self.base + GICR_PROPBASER);
        let pendbaser = read64(self.base + GICR_PENDBASER);
        if id_bits(propbaser) > MAX_ID_BITS {
            warn_limited!(
                "redistributor {index}: EnableLPIs with GICR_PROPBASER {propbaser:#x}: more INTID bits than el2 allows: refused"
            );
            return false;
        }
        let prop = prop_table(propbaser);
        if let Some((b, s)) = prop
            && let Err(e) = devpin::claim(hyp, b, s)
        {
            warn_limited!(
                "redistributor {index}: EnableLPIs with GICR_PROPBASER {propbaser:#x}: table not in host-owned RAM ({e:?}): refused"
            );
            return false;
        }
        let (b, s) = pend_table(pendbaser);
        if let Err(e) = devpin::claim(hyp, b, s) {
            warn_limited!(
                "redistributor {index}: EnableLPIs with GICR_PENDBASER {pendbaser:#x}: table not in host-owned RAM ({e:?}): refused"
            );
            if let Some((b, s)) = prop {
                devpin::release(hyp, b, s);
            }
            return false;
        }
        self.release(hyp);
        self.prop = prop;
        self.pend = Some((b, s));
        true
    }

    fn release(&mut self, hyp: &Hypervisor) {
        for (b, s) in [self.prop.take(), self.pend.take()].into_iter().flatten() {
            devpin::release(hyp, b, s);
        }
    }

    /// A host write of `GICR_CTLR`.
    fn set_ctlr(&mut self, hyp: &Hypervisor, index: usize, v: u32) {
        let was = self.lpis_on();
        let want = v & GICR_CTLR_ENABLE_LPIS != 0;
        let mut v = v;
        if want && !was {
            if self.release_pending {
                // Turned back on before the redistributor let go: the
                // registers cannot have changed since the tables were
                // claimed, so the claims stand.
                self.release_pending = false;
            } else if !self.claim_tables(hyp, index) {
                v &= !GICR_CTLR_ENABLE_LPIS;
            }
        }
        write32(self.base + GICR_CTLR, v);
        if was && !want {
            self.release_pending = true;
            if !self.lpis_done() {
                // A redistributor whose EnableLPIs cannot be cleared (or is
                // slow to) keeps using the tables: they stay pinned.
                warn_limited!("redistributor {index}: LPIs not off yet: tables kept");
            }
            self.progress(hyp, index);
        }
    }
}

/// A host access to redistributor frame `index` at `offset`; returns a
/// load's value.
pub fn host_access(
    hyp: &Hypervisor,
    index: usize,
    offset: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
    let mut f = FRAMES.lock();
    let Some(fr) = f.frames.get_mut(index) else {
        return 0;
    };
    fr.progress(hyp, index);
    let addr = fr.base + offset;
    let Some(v) = write else {
        return match size {
            8 if offset.is_multiple_of(8) => read64(addr),
            4 if offset.is_multiple_of(4) => u64::from(read32(addr)),
            _ => 0,
        };
    };
    match (offset, size) {
        // An 8-byte write also covers GICR_IIDR, which is read-only.
        (GICR_CTLR, 4 | 8) => fr.set_ctlr(hyp, index, v as u32),
        (GICR_PROPBASER | GICR_PENDBASER, 8) if !fr.tables_free() => {
            warn_limited!(
                "redistributor {index}: register {offset:#x} := {v:#x} while LPIs are in use: ignored"
            );
        }
        (GICR_PROPBASER, 8) => write64(addr, clamp_id_bits(v)),
        (GICR_PENDBASER, 8) => write64(addr, v),
        (GICR_STATUSR | GICR_WAKER, 4) => write32(addr, v as u32),
        (GICR_SETLPIR | GICR_CLRLPIR, 8) => write64(addr, v),
        (GICR_INVLPIR | GICR_INVALLR, 8) if v & INV_VIRTUAL == 0 => write64(addr, v),
        _ => {
            warn_limited!(
                "redistributor {index}: host write of {v:#x} to offset {offset:#x} ({size} bytes): ignored"
            );
        }
    }
    0
}
