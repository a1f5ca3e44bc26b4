//! The redistributors' LPI tables, mediated: `GICR_PROPBASER` and
//! `GICR_PENDBASER` name memory the GIC reads and writes by physical
//! address, so — as for the ITS ([`super::its`]) — the tables must lie in
//! host-owned RAM, which el2 pins ([`super::devpin`]) while the
//! redistributor uses them.
//!
//! Each redistributor's `RD_base` frame (its first 64 KiB: `GICR_CTLR`,
//! `GICR_TYPER`, `GICR_WAKER`, the LPI registers...) is absent from the
//! host's stage-2; el2 emulates the host's accesses to it. The
//! `SGI_base` frames (enables, priorities...) stay the host's.
//!
//! The redistributor touches the tables only while `GICR_CTLR.EnableLPIs`
//! is set, so that is where the check sits:
//!
//! - Setting `EnableLPIs`: el2 claims the tables the two registers name
//!   (the configuration table for `PROPBASER.IDbits`, the 64 KiB pending
//!   table); if either is not host-owned RAM the bit is dropped (the host
//!   reads `EnableLPIs` back clear, and el2 logs why).
//! - Clearing it: once the redistributor reads back clear (after `RWP`),
//!   the tables are released.
//! - `PROPBASER`/`PENDBASER` writes while `EnableLPIs` is set are ignored
//!   (the architecture makes them UNPREDICTABLE); while clear they pass
//!   through, `PROPBASER.IDbits` clamped to [`MAX_ID_BITS`] (the host
//!   reads the clamped value back; Linux uses 16 bits of LPI INTIDs at
//!   most), which keeps the pending table at its 64 KiB minimum.

use super::devpin;
use super::host::Hypervisor;
use super::percpu::MAX_CPUS;

/// Bytes of an `RD_base` frame.
pub const RD_FRAME: u64 = 0x1_0000;

const GICR_CTLR: u64 = 0x0;
const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
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
    }; MAX_CPUS],
    count: 0,
});

/// Takes the `RD_base` frames at `bases` under el2's mediation (boot,
/// once; the frames are mapped at EL2 and absent from the host's stage-2).
pub fn init(bases: &[u64]) {
    let mut f = FRAMES.lock();
    for (slot, &b) in f.frames.iter_mut().zip(bases) {
        slot.base = b;
    }
    f.count = bases.len().min(MAX_CPUS);
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

    /// Claims the tables for `EnableLPIs`; whether they are the host's.
    fn claim_tables(&mut self, hyp: &Hypervisor, index: usize) -> bool {
        let propbaser = read64(self.base + GICR_PROPBASER);
        let pendbaser = read64(self.base + GICR_PENDBASER);
        let prop = prop_table(propbaser);
        if let Some((b, s)) = prop
            && devpin::claim(hyp, b, s).is_err()
        {
            log::warn!(
                "redistributor {index}: EnableLPIs with GICR_PROPBASER {propbaser:#x}: table not in host-owned RAM: refused"
            );
            return false;
        }
        let (b, s) = pend_table(pendbaser);
        if devpin::claim(hyp, b, s).is_err() {
            log::warn!(
                "redistributor {index}: EnableLPIs with GICR_PENDBASER {pendbaser:#x}: table not in host-owned RAM: refused"
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
        if want && !was && !self.claim_tables(hyp, index) {
            v &= !GICR_CTLR_ENABLE_LPIS;
        }
        write32(self.base + GICR_CTLR, v);
        if was && !want {
            for _ in 0..1_000_000 {
                if read32(self.base + GICR_CTLR) & GICR_CTLR_RWP == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            // A redistributor whose EnableLPIs cannot be cleared keeps
            // using the tables: they stay pinned.
            if !self.lpis_on() {
                self.release(hyp);
            }
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
    let addr = fr.base + offset;
    match (offset, size, write) {
        // An 8-byte write also covers GICR_IIDR, which is read-only.
        (GICR_CTLR, 4 | 8, Some(v)) => {
            fr.set_ctlr(hyp, index, v as u32);
            0
        }
        (GICR_PROPBASER | GICR_PENDBASER, 8, Some(v)) if fr.lpis_on() => {
            log::warn!(
                "redistributor {index}: register {offset:#x} := {v:#x} while LPIs are enabled: ignored"
            );
            0
        }
        (GICR_PROPBASER, 8, Some(v)) => {
            write64(addr, clamp_id_bits(v));
            0
        }
        (GICR_PENDBASER, 8, Some(v)) => {
            write64(addr, v);
            0
        }
        // Halves of the two registers are not how anyone programs them:
        // ignored (the register keeps its value).
        (0x70..=0x7f, _, Some(_)) => 0,
        (_, 8, Some(v)) if offset.is_multiple_of(8) => {
            write64(addr, v);
            0
        }
        (_, 4, Some(v)) if offset.is_multiple_of(4) => {
            write32(addr, v as u32);
            0
        }
        (_, 8, None) if offset.is_multiple_of(8) => read64(addr),
        (_, 4, None) if offset.is_multiple_of(4) => u64::from(read32(addr)),
        _ => 0,
    }
}
