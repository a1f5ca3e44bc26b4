//! The host's GICv3 ITS, mediated: the ITS writes its tables by physical
//! address, past stage-2, so el2 makes sure every address it will use is
//! memory the host can no longer hand to anyone.
//!
//! The ITS control frame (`GITS_CTLR` .. `GITS_BASER<n>`, the first 64 KiB
//! of the ITS) is absent from the host's stage-2; el2 emulates the host's
//! accesses to it ([`host_access`], reached from the host's stage-2 fault
//! path). The translation frame (`GITS_TRANSLATER`, where devices write
//! MSIs) stays the host's.
//!
//! - `GITS_BASER<n>`: a table the host programs must lie in host-owned RAM;
//!   its pages are pinned ([`super::devpin`]) while the register holds it.
//!   Two-level (`Indirect`) tables are not offered: el2 clears the bit,
//!   which the host reads back (Linux then uses flat tables). If the
//!   hardware reads the value back as a table outside the one checked
//!   (a page size it does not support), the write is undone. A refused
//!   value leaves the register as it was.
//! - Commands: the ITS reads a shadow command queue in hypervisor memory,
//!   never the host's. `GITS_CBASER` names the host's queue (pinned, so it
//!   stays the host's); the hardware register points at the shadow, the
//!   host reads back its own value. On each `GITS_CWRITER` write el2 copies
//!   the new commands from the host's queue into the shadow at the same
//!   offsets, checks each, and only then moves the hardware `CWRITER`: a
//!   `MAPD`'s ITT must be host-owned RAM (pinned while the device is
//!   mapped; released by `MAPD` with V = 0 or a remap); the other GICv3
//!   commands (MOVI, INT, CLEAR, SYNC, MAPC, MAPTI, MAPI, INV, INVALL,
//!   MOVALL, DISCARD) carry no address the ITS writes. An unknown or
//!   refused command stalls the queue there: the hardware never sees it,
//!   `GITS_CREADR` reads back with `Stalled` set at its offset, and
//!   nothing more is forwarded until the host reprograms the queue.
//! - `GITS_CTLR`: when the host disables the ITS, el2 waits for it to be
//!   quiescent, invalidates the hardware `GITS_BASER<n>` and `GITS_CBASER`
//!   (the host reads them back invalid) and releases every pinned page.
//! - Everything else in the frame passes through.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::collections::BTreeMap;

use super::devpin;
use super::host::Hypervisor;

/// Bytes of the control frame el2 emulates.
pub const CONTROL_FRAME: u64 = 0x1_0000;

const GITS_CTLR: u64 = 0x0000;
const GITS_TYPER: u64 = 0x0008;
const GITS_CBASER: u64 = 0x0080;
const GITS_CWRITER: u64 = 0x0088;
const GITS_CREADR: u64 = 0x0090;
const GITS_BASER0: u64 = 0x0100;
const CTLR_ENABLED: u32 = 1 << 0;
const CTLR_QUIESCENT: u32 = 1 << 31;
const VALID: u64 = 1 << 63;
const INDIRECT: u64 = 1 << 62;
const QUEUE_OFFSET: u64 = 0xf_ffe0;
const CMD_BYTES: u64 = 32;
/// CBASER attribute fields kept (InnerCache, OuterCache, Shareability).
const CBASER_ATTRS: u64 = (0b111 << 59) | (0b111 << 53) | (0b11 << 10);

/// Command numbers the ITS may see.
const ALLOWED_CMDS: [u8; 11] = [
    0x01, // MOVI
    0x03, // INT
    0x04, // CLEAR
    0x05, // SYNC
    0x09, // MAPC
    0x0a, // MAPTI
    0x0b, // MAPI
    0x0c, // INV
    0x0d, // INVALL
    0x0e, // MOVALL
    0x0f, // DISCARD
];
const CMD_MAPD: u8 = 0x08;

/// The shadow command queue.
struct Shadow {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the shadow is a heap block owned by the ITS state, reached only
// under its lock.
unsafe impl Send for Shadow {}

/// The mediated ITS.
struct Its {
    /// Physical address of the control frame (identity-mapped Device).
    base: u64,
    /// Bytes per ITT entry (`GITS_TYPER.ITT_entry_size` + 1).
    itt_entry: u64,
    /// The host's `GITS_CBASER` as it reads it back (0: none).
    cbaser: u64,
    /// The host's queue, claimed: `(base, bytes)`.
    queue: Option<(u64, u64)>,
    /// The shadow the hardware reads.
    shadow: Option<Shadow>,
    /// The host's `GITS_CWRITER` value.
    cwriter: u64,
    /// Offset up to which commands went to the shadow.
    forwarded: u64,
    /// Offset of the command that stalled the queue.
    stalled: Option<u64>,
    /// Each `GITS_BASER<n>`'s claimed table.
    tables: [Option<(u64, u64)>; 8],
    /// Device id → its ITT, claimed.
    itts: BTreeMap<u32, (u64, u64)>,
    /// Commands forwarded and refused, for the log.
    counts: (u64, u64),
}

static ITS: spin::Mutex<Option<Its>> = spin::Mutex::new(None);

fn read64(addr: u64) -> u64 {
    // SAFETY: `addr` is a register of the ITS control frame, which el2
    // maps Device at boot; a register read.
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

/// Takes the ITS at `base` under el2's mediation (boot, once; the frame is
/// mapped and absent from the host's stage-2).
pub fn init(base: u64) {
    let typer = read64(base + GITS_TYPER);
    let its = Its {
        base,
        itt_entry: ((typer >> 4) & 0xf) + 1,
        cbaser: 0,
        queue: None,
        shadow: None,
        cwriter: 0,
        forwarded: 0,
        stalled: None,
        tables: [None; 8],
        itts: BTreeMap::new(),
        counts: (0, 0),
    };
    *ITS.lock() = Some(its);
    log::info!(
        "GICv3 ITS at {base:#x}: control frame mediated by el2 (ITT entry {} bytes)",
        ((typer >> 4) & 0xf) + 1
    );
}

/// Whether `ipa` is in the mediated control frame; its offset.
pub fn offset_of(ipa: u64) -> Option<u64> {
    let its = ITS.lock();
    let base = its.as_ref()?.base;
    ipa.checked_sub(base).filter(|o| *o < CONTROL_FRAME)
}

/// The table a `GITS_BASER<n>` value describes: `(base, bytes)`.
fn baser_table(v: u64) -> (u64, u64) {
    let psz: u64 = match (v >> 8) & 3 {
        0 => 0x1000,
        1 => 0x4000,
        _ => 0x1_0000,
    };
    let pages = (v & 0xff) + 1;
    let pa = if psz == 0x1_0000 {
        (v & 0x0000_ffff_ffff_0000) | (((v >> 12) & 0xf) << 48)
    } else {
        v & 0x0000_ffff_ffff_f000
    };
    (pa, pages * psz)
}

impl Its {
    fn enabled(&self) -> bool {
        read32(self.base + GITS_CTLR) & CTLR_ENABLED != 0
    }

    fn queue_bytes(&self) -> u64 {
        self.queue.map_or(0, |q| q.1)
    }

    /// Drops the queue, its shadow and claim.
    fn drop_queue(&mut self, hyp: &Hypervisor) {
        if let Some((b, s)) = self.queue.take() {
            devpin::release(hyp, b, s);
        }
        if let Some(sh) = self.shadow.take() {
            // SAFETY: allocated by `set_cbaser` with this layout; the ITS no
            // longer reads it (disabled, or its CBASER is being replaced
            // while disabled).
            unsafe { dealloc(sh.ptr, sh.layout) };
        }
        self.cbaser = 0;
        self.cwriter = 0;
        self.forwarded = 0;
        self.stalled = None;
    }

    /// Releases everything (the ITS is disabled).
    fn release_all(&mut self, hyp: &Hypervisor) {
        for n in 0..8 {
            if let Some((b, s)) = self.tables[n].take() {
                devpin::release(hyp, b, s);
            }
            write64(self.base + GITS_BASER0 + 8 * n as u64, 0);
        }
        for (_, (b, s)) in core::mem::take(&mut self.itts) {
            devpin::release(hyp, b, s);
        }
        write64(self.base + GITS_CBASER, 0);
        self.drop_queue(hyp);
    }

    fn set_cbaser(&mut self, hyp: &Hypervisor, v: u64) {
        if self.enabled() {
            return;
        }
        if v & VALID == 0 {
            write64(self.base + GITS_CBASER, 0);
            self.drop_queue(hyp);
            return;
        }
        let base = v & 0x000f_ffff_ffff_f000;
        let bytes = ((v & 0xff) + 1) * 0x1000;
        if devpin::claim(hyp, base, bytes).is_err() {
            log::warn!("ITS: GITS_CBASER {v:#x}: queue not in host-owned RAM: refused");
            return;
        }
        let Ok(layout) = Layout::from_size_align(bytes as usize, 0x1_0000) else {
            devpin::release(hyp, base, bytes);
            return;
        };
        // SAFETY: a non-zero size with a valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            devpin::release(hyp, base, bytes);
            log::warn!("ITS: no memory for a {bytes}-byte shadow command queue");
            return;
        }
        self.drop_queue(hyp);
        self.queue = Some((base, bytes));
        self.shadow = Some(Shadow { ptr, layout });
        self.cbaser = v;
        super::sysreg::clean_inval_to_poc(ptr as u64, bytes);
        write64(
            self.base + GITS_CBASER,
            VALID | (v & CBASER_ATTRS) | (v & 0xff) | ptr as u64,
        );
        write64(self.base + GITS_CWRITER, 0);
    }

    fn set_baser(&mut self, hyp: &Hypervisor, n: usize, v: u64) {
        if self.enabled() {
            return;
        }
        let reg = self.base + GITS_BASER0 + 8 * n as u64;
        let cur = read64(reg);
        if (cur >> 56) & 7 == 0 {
            // Unimplemented table: the register is read-only.
            return;
        }
        let v = v & !INDIRECT;
        let claim = if v & VALID != 0 {
            let (b, s) = baser_table(v);
            if devpin::claim(hyp, b, s).is_err() {
                log::warn!("ITS: GITS_BASER{n} {v:#x}: table not in host-owned RAM: refused");
                return;
            }
            Some((b, s))
        } else {
            None
        };
        write64(reg, v);
        // The hardware may not take every field as written (a fixed page
        // size changes both the size and how the address bits read): the
        // table it will use must lie inside what was claimed.
        let took = read64(reg);
        if let Some((b, s)) = claim
            && took & VALID != 0
        {
            let (tb, ts) = baser_table(took);
            if tb < b || tb.saturating_add(ts) > b + s {
                log::warn!(
                    "ITS: GITS_BASER{n} {v:#x} reads back as {took:#x}, a table outside the one checked: refused"
                );
                write64(reg, cur);
                devpin::release(hyp, b, s);
                return;
            }
        }
        if let Some((b, s)) = core::mem::replace(&mut self.tables[n], claim) {
            devpin::release(hyp, b, s);
        }
    }

    /// Checks one command (4 doublewords) and claims what it needs.
    fn check_command(&mut self, hyp: &Hypervisor, cmd: &[u64; 4]) -> bool {
        let op = cmd[0] as u8;
        if ALLOWED_CMDS.contains(&op) {
            return true;
        }
        if op != CMD_MAPD {
            return false;
        }
        let dev = (cmd[0] >> 32) as u32;
        let valid = cmd[2] & (1 << 63) != 0;
        if !valid {
            if let Some((b, s)) = self.itts.remove(&dev) {
                devpin::release(hyp, b, s);
            }
            return true;
        }
        let bits = (cmd[1] & 0x1f) + 1;
        let itt = cmd[2] & 0x000f_ffff_ffff_ff00;
        let bytes = (1u64 << bits) * self.itt_entry;
        if devpin::claim(hyp, itt, bytes).is_err() {
            return false;
        }
        if let Some((b, s)) = self.itts.insert(dev, (itt, bytes)) {
            devpin::release(hyp, b, s);
        }
        true
    }

    fn set_cwriter(&mut self, hyp: &Hypervisor, v: u64) {
        self.cwriter = v;
        let size = self.queue_bytes();
        let (Some((qbase, _)), Some(shadow)) = (self.queue, self.shadow.as_ref()) else {
            return;
        };
        let shadow = shadow.ptr as u64;
        let target = v & QUEUE_OFFSET;
        if target >= size || self.stalled.is_some() {
            return;
        }
        let mut pos = self.forwarded;
        while pos != target {
            let mut cmd = [0u64; 4];
            for (i, w) in cmd.iter_mut().enumerate() {
                // SAFETY: the host's queue is host-owned RAM el2 claimed
                // (pinned) at CBASER time and maps Normal; `pos` + 32 is
                // inside it. A read of the host's bytes.
                *w =
                    unsafe { core::ptr::read_volatile((qbase + pos + 8 * i as u64) as *const u64) };
            }
            if !self.check_command(hyp, &cmd) {
                self.counts.1 += 1;
                log::warn!(
                    "ITS: command {:#04x} at queue offset {pos:#x} refused ({:#x?}): queue stalled",
                    cmd[0] as u8,
                    cmd
                );
                self.stalled = Some(pos);
                break;
            }
            for (i, w) in cmd.iter().enumerate() {
                // SAFETY: the shadow is `size` bytes of hypervisor memory
                // el2 allocated; `pos` + 32 is inside it.
                unsafe { core::ptr::write_volatile((shadow + pos + 8 * i as u64) as *mut u64, *w) };
            }
            super::sysreg::clean_inval_to_poc(shadow + pos, CMD_BYTES);
            self.counts.0 += 1;
            pos = (pos + CMD_BYTES) % size;
        }
        self.forwarded = pos;
        write64(self.base + GITS_CWRITER, pos);
    }

    fn set_ctlr(&mut self, hyp: &Hypervisor, v: u64) {
        let was = self.enabled();
        write32(self.base + GITS_CTLR, v as u32);
        if was && v as u32 & CTLR_ENABLED == 0 {
            for _ in 0..1_000_000 {
                if read32(self.base + GITS_CTLR) & CTLR_QUIESCENT != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            log::info!(
                "ITS disabled by the host: {} commands forwarded, {} refused; tables released",
                self.counts.0,
                self.counts.1
            );
            self.release_all(hyp);
        }
    }
}

/// Merges a 4-byte write into half of a 64-bit register value.
fn merge(old: u64, offset: u64, size: u8, v: u64) -> u64 {
    match (size, offset % 8) {
        (8, 0) => v,
        (4, 0) => (old & !0xffff_ffff) | (v & 0xffff_ffff),
        (4, 4) => (old & 0xffff_ffff) | (v << 32),
        _ => old,
    }
}

fn half(v: u64, offset: u64, size: u8) -> u64 {
    match (size, offset % 8) {
        (4, 0) => v & 0xffff_ffff,
        (4, 4) => v >> 32,
        _ => v,
    }
}

/// A host access to the control frame at `offset` (`size` bytes; `write`
/// for a store); returns a load's value.
pub fn host_access(hyp: &Hypervisor, offset: u64, size: u8, write: Option<u64>) -> u64 {
    let mut guard = ITS.lock();
    let Some(its) = guard.as_mut() else {
        return 0;
    };
    let reg = offset & !7;
    let addr = its.base + offset;
    match (reg, write) {
        (GITS_CTLR, Some(v)) if offset == GITS_CTLR => {
            its.set_ctlr(hyp, v);
            0
        }
        (GITS_CBASER, Some(v)) => {
            let new = merge(its.cbaser, offset, size, v);
            its.set_cbaser(hyp, new);
            0
        }
        (GITS_CBASER, None) => half(its.cbaser, offset, size),
        (GITS_CWRITER, Some(v)) => {
            let new = merge(its.cwriter, offset, size, v);
            its.set_cwriter(hyp, new);
            0
        }
        (GITS_CWRITER, None) => half(its.cwriter, offset, size),
        (GITS_CREADR, Some(_)) => 0,
        (GITS_CREADR, None) => {
            let real = read64(its.base + GITS_CREADR) & QUEUE_OFFSET;
            let stalled = its.stalled == Some(real);
            half(real | u64::from(stalled), offset, size)
        }
        (0x100..=0x138, Some(v)) => {
            let n = ((reg - GITS_BASER0) / 8) as usize;
            let new = merge(read64(its.base + reg), offset, size, v);
            its.set_baser(hyp, n, new);
            0
        }
        (_, Some(v)) => {
            match size {
                8 if offset.is_multiple_of(8) => write64(addr, v),
                4 if offset.is_multiple_of(4) => write32(addr, v as u32),
                _ => {}
            }
            0
        }
        (_, None) => match size {
            8 if offset.is_multiple_of(8) => read64(addr),
            4 if offset.is_multiple_of(4) => u64::from(read32(addr)),
            _ => 0,
        },
    }
}
