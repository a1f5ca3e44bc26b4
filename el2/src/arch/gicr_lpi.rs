//! The redistributors' LPI tables, mediated: `GICR_PROPBASER` and
//! `GICR_PENDBASER` name memory the GIC reads and writes by physical
//! address, so — as for the ITS ([`super::its`]) — the tables the host
//! programs must lie in host-owned RAM, which el2 pins
//! ([`super::devpin`]) while a register holds them.
//!
//! Each redistributor's `RD_base` frame (its first 64 KiB: `GICR_CTLR`,
//! `GICR_TYPER`, `GICR_WAKER`, the LPI registers...) is absent from the
//! host's stage-2; el2 emulates the host's accesses to it: writes of
//! `PROPBASER`/`PENDBASER` are checked (a refused value leaves the
//! register as it was), everything else passes through. The `SGI_base`
//! frames (enables, priorities...) stay the host's.

use super::devpin;
use super::host::Hypervisor;
use super::percpu::MAX_CPUS;

/// Bytes of an `RD_base` frame.
pub const RD_FRAME: u64 = 0x1_0000;

const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;

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

/// The configuration table a `PROPBASER` value names: one byte per LPI
/// (INTIDs from 8192).
fn prop_table(v: u64) -> Option<(u64, u64)> {
    let bits = id_bits(v);
    if bits < 14 {
        return None;
    }
    Some((v & 0x000f_ffff_ffff_f000, (1u64 << bits) - 8192))
}

/// The pending table a `PENDBASER` value names, for `bits` INTID bits:
/// one bit per INTID, 64 KiB aligned.
fn pend_table(v: u64, bits: u64) -> (u64, u64) {
    (
        v & 0x000f_ffff_ffff_0000,
        ((1u64 << bits) / 8).max(0x1_0000),
    )
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
        (GICR_PROPBASER, 8, Some(v)) => {
            let claim = prop_table(v);
            if let Some((b, s)) = claim
                && devpin::claim(hyp, b, s).is_err()
            {
                log::warn!("GICR_PROPBASER {v:#x}: table not in host-owned RAM: refused");
                return 0;
            }
            if let Some((b, s)) = core::mem::replace(&mut fr.prop, claim) {
                devpin::release(hyp, b, s);
            }
            write64(addr, v);
            0
        }
        (GICR_PENDBASER, 8, Some(v)) => {
            let bits = fr
                .prop
                .map(|_| id_bits(read64(fr.base + GICR_PROPBASER)))
                .unwrap_or(16);
            let (b, s) = pend_table(v, bits);
            if devpin::claim(hyp, b, s).is_err() {
                log::warn!("GICR_PENDBASER {v:#x}: table not in host-owned RAM: refused");
                return 0;
            }
            if let Some((ob, os)) = fr.pend.replace((b, s)) {
                devpin::release(hyp, ob, os);
            }
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
