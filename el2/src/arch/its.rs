//! The host's GICv3 ITS, mediated: the ITS reads and writes its tables by
//! physical address, past stage-2, so el2 makes sure every address it will
//! use is memory the host can no longer hand to anyone — and that no
//! address the ITS reads can be written by the host.
//!
//! The ITS control frame (`GITS_CTLR` .. `GITS_BASER<n>`, the first 64 KiB
//! of the ITS) is absent from the host's stage-2; el2 emulates the host's
//! accesses to it ([`host_access`], reached from the host's stage-2 fault
//! path). The translation frame (`GITS_TRANSLATER`, where devices write
//! MSIs) stays the host's.
//!
//! - `GITS_BASER<n>`: only device and collection tables are accepted (no
//!   GICv4 vPE table); the table must be page-aligned host-owned RAM, and
//!   is *taken* from the host ([`devpin::take`]: donated to el2) while the
//!   register holds it, because a device-table entry names the ITT the ITS
//!   writes: a host that could write the table could aim the ITS anywhere.
//!   Linux never touches a flat table after programming it. Two-level
//!   (`Indirect`) tables are not offered: el2 clears the bit, which the
//!   host reads back (Linux then uses flat tables). If the hardware reads
//!   the value back as another table (a page size it does not support),
//!   the write is undone and the pages returned. A refused value leaves
//!   the register as it was.
//! - Commands: the ITS reads a shadow command queue in hypervisor memory,
//!   never the host's. `GITS_CBASER` names the host's queue (pinned, see
//!   [`devpin::claim`], so it stays the host's); the hardware register
//!   points at the shadow, the host reads back its own value. On each
//!   `GITS_CWRITER` write el2 copies the new commands from the host's
//!   queue into the shadow at the same offsets, checks each, and only then
//!   moves the hardware `CWRITER`:
//!   - `MAPD`: the DeviceID must fit the device table, the size the ITS's
//!     EventID bits, and the ITT must be host-owned RAM, pinned while the
//!     device is mapped; at most [`MAX_DEVICES`] devices are mapped. An
//!     ITT a `MAPD` unmaps (V = 0, or a remap) is released only once the
//!     hardware's `GITS_CREADR` has passed that command, since commands
//!     queued before it may still write the ITT.
//!   - With `GITS_TYPER.PTA` (target addresses are physical), the RDbase
//!     of `MAPC`, `SYNC` and `MOVALL` must be a redistributor el2 knows.
//!   - The other GICv3 commands (MOVI, INT, CLEAR, MAPTI, MAPI, INV,
//!     INVALL, DISCARD) name tables el2 has checked (the ITT through the
//!     device table, in el2's hands) and no address of their own. GICv4
//!     commands and unknown ones are refused.
//!   - A refused command, or a `CWRITER` that would overrun commands the
//!     ITS has not read yet, stalls the queue there: the hardware never
//!     sees it, `GITS_CREADR` reads back with `Stalled` set at its offset,
//!     and nothing more is forwarded until the host reprograms the queue.
//!     A stall of the hardware's own shows through `GITS_CREADR` too, and
//!     the host's `CWRITER.Retry` reaches it.
//! - `GITS_CTLR`: when the host disables the ITS, el2 releases every table
//!   once the ITS reads back disabled and quiescent (checked again on every
//!   later access until it is), invalidating the hardware `GITS_BASER<n>`
//!   and `GITS_CBASER` (the host reads them back invalid). Table registers
//!   are only written while the ITS is disabled, quiescent and holds
//!   nothing awaiting release.
//! - Other registers: reads pass through; writes are dropped (an
//!   implementation's own registers are none of the host's business).
//!
//! At boot ([`init`]) el2 disables the ITS (firmware or a previous kernel
//! may have left it on), waits for it to be quiescent and invalidates every
//! table register, so nothing it did not check is ever in use.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::collections::{BTreeMap, VecDeque};

use super::devpin;
use super::host::Hypervisor;
use super::lograte::warn_limited;

/// Bytes of the control frame el2 emulates.
pub const CONTROL_FRAME: u64 = 0x1_0000;
/// Most devices mapped (`MAPD` with V = 1) at once; each pins its ITT.
pub const MAX_DEVICES: usize = 4096;

const GITS_CTLR: u64 = 0x0000;
const GITS_TYPER: u64 = 0x0008;
const GITS_CBASER: u64 = 0x0080;
const GITS_CWRITER: u64 = 0x0088;
const GITS_CREADR: u64 = 0x0090;
const GITS_BASER0: u64 = 0x0100;
const GITS_BASER7: u64 = 0x0138;
const CTLR_ENABLED: u32 = 1 << 0;
const CTLR_QUIESCENT: u32 = 1 << 31;
const VALID: u64 = 1 << 63;
const INDIRECT: u64 = 1 << 62;
const QUEUE_OFFSET: u64 = 0xf_ffe0;
/// `GITS_CREADR.Stalled` and `GITS_CWRITER.Retry`.
const STALLED: u64 = 1 << 0;
const CMD_BYTES: u64 = 32;
/// CBASER attribute fields kept (InnerCache, OuterCache, Shareability).
const CBASER_ATTRS: u64 = (0b111 << 59) | (0b111 << 53) | (0b11 << 10);
/// `GITS_BASER<n>.Type` values el2 accepts.
const TYPE_DEVICES: u64 = 1;
const TYPE_COLLECTIONS: u64 = 4;
/// Bound on a quiescence wait (register reads).
const WAIT_READS: u32 = 1_000_000;

/// GICv3 commands that carry no address the ITS uses.
const PLAIN_CMDS: [u8; 8] = [
    0x01, // MOVI
    0x03, // INT
    0x04, // CLEAR
    0x0a, // MAPTI
    0x0b, // MAPI
    0x0c, // INV
    0x0d, // INVALL
    0x0f, // DISCARD
];
const CMD_SYNC: u8 = 0x05;
const CMD_MAPD: u8 = 0x08;
const CMD_MAPC: u8 = 0x09;
const CMD_MOVALL: u8 = 0x0e;

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
    /// EventID bits (`GITS_TYPER.ID_bits` + 1).
    id_bits: u64,
    /// Target addresses are physical (`GITS_TYPER.PTA`).
    pta: bool,
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
    /// Commands forwarded since the queue was set.
    issued: u64,
    /// Offset of the command el2 stalled the queue at.
    stalled: Option<u64>,
    /// Each `GITS_BASER<n>`'s table, taken from the host.
    tables: [Option<(u64, u64)>; 8],
    /// DeviceIDs the device table has room for (0: no device table).
    devices: u64,
    /// Device id → its ITT, claimed.
    itts: BTreeMap<u32, (u64, u64)>,
    /// ITTs to release once command number `.0` has completed.
    deferred: VecDeque<(u64, (u64, u64))>,
    /// The host disabled the ITS; the tables go once it is quiescent.
    release_pending: bool,
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

/// Waits (bounded) for the ITS at `base` to be disabled and quiescent.
fn wait_quiescent(base: u64) -> bool {
    for _ in 0..WAIT_READS {
        let c = read32(base + GITS_CTLR);
        if c & CTLR_ENABLED == 0 && c & CTLR_QUIESCENT != 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Takes the ITS at `base` under el2's mediation (boot, once; the frame is
/// mapped and absent from the host's stage-2): disabled, quiescent, every
/// table register invalid.
pub fn init(base: u64) -> Result<(), &'static str> {
    let ctlr = read32(base + GITS_CTLR);
    if ctlr & CTLR_ENABLED != 0 {
        log::info!("GICv3 ITS at {base:#x} was left enabled: disabling it");
        write32(base + GITS_CTLR, ctlr & !CTLR_ENABLED);
    }
    if !wait_quiescent(base) {
        return Err("the GICv3 ITS does not become quiescent");
    }
    for n in 0..8 {
        write64(base + GITS_BASER0 + 8 * n, 0);
    }
    write64(base + GITS_CBASER, 0);
    write64(base + GITS_CWRITER, 0);
    let typer = read64(base + GITS_TYPER);
    let its = Its {
        base,
        itt_entry: ((typer >> 4) & 0xf) + 1,
        id_bits: ((typer >> 8) & 0x1f) + 1,
        pta: typer & (1 << 19) != 0,
        cbaser: 0,
        queue: None,
        shadow: None,
        cwriter: 0,
        forwarded: 0,
        issued: 0,
        stalled: None,
        tables: [None; 8],
        devices: 0,
        itts: BTreeMap::new(),
        deferred: VecDeque::new(),
        release_pending: false,
        counts: (0, 0),
    };
    log::info!(
        "GICv3 ITS at {base:#x}: control frame mediated by el2 (ITT entry {} bytes, {} EventID bits{})",
        its.itt_entry,
        its.id_bits,
        if its.pta {
            ", physical target addresses"
        } else {
            ""
        }
    );
    *ITS.lock() = Some(its);
    Ok(())
}

/// Whether `ipa` is in the mediated control frame; its offset.
pub fn offset_of(ipa: u64) -> Option<u64> {
    let its = ITS.lock();
    let base = its.as_ref()?.base;
    ipa.checked_sub(base).filter(|o| *o < CONTROL_FRAME)
}

/// The table a `GITS_BASER<n>` value describes: `(base, bytes, page
/// size)`.
fn baser_table(v: u64) -> (u64, u64, u64) {
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
    (pa, pages * psz, psz)
}

impl Its {
    fn enabled(&self) -> bool {
        read32(self.base + GITS_CTLR) & CTLR_ENABLED != 0
    }

    /// Whether table registers may change: disabled, quiescent, nothing
    /// awaiting release.
    fn idle(&self) -> bool {
        let c = read32(self.base + GITS_CTLR);
        c & CTLR_ENABLED == 0 && c & CTLR_QUIESCENT != 0 && !self.release_pending
    }

    fn queue_bytes(&self) -> u64 {
        self.queue.map_or(0, |q| q.1)
    }

    /// Commands the hardware has completed since the queue was set.
    fn completed(&self) -> u64 {
        let size = self.queue_bytes();
        if size == 0 {
            return self.issued;
        }
        let hw = read64(self.base + GITS_CREADR) & QUEUE_OFFSET;
        let outstanding = (self.forwarded + size - hw) % size / CMD_BYTES;
        self.issued.saturating_sub(outstanding)
    }

    /// Releases what is due: ITTs whose unmapping command has completed,
    /// and every table once a disabled ITS is quiescent.
    fn progress(&mut self, hyp: &Hypervisor) {
        if self.release_pending {
            let c = read32(self.base + GITS_CTLR);
            if c & CTLR_ENABLED != 0 {
                // Enabled again before it went quiet: it keeps its tables.
                self.release_pending = false;
            } else if c & CTLR_QUIESCENT != 0 {
                self.release_pending = false;
                log::info!(
                    "ITS disabled by the host: {} commands forwarded, {} refused; tables released",
                    self.counts.0,
                    self.counts.1
                );
                self.release_all(hyp);
                return;
            }
        }
        if self.deferred.is_empty() {
            return;
        }
        let done = self.completed();
        while let Some(&(seq, (b, s))) = self.deferred.front() {
            if seq >= done {
                break;
            }
            devpin::release(hyp, b, s);
            self.deferred.pop_front();
        }
    }

    /// Drops the queue, its shadow and claim.
    fn drop_queue(&mut self, hyp: &Hypervisor) {
        if let Some((b, s)) = self.queue.take() {
            devpin::release(hyp, b, s);
        }
        if let Some(sh) = self.shadow.take() {
            // SAFETY: allocated by `set_cbaser` with this layout; the ITS no
            // longer reads it (disabled and quiescent, or its CBASER is
            // being replaced while so).
            unsafe { dealloc(sh.ptr, sh.layout) };
        }
        // The ITS is quiescent: every command is done, and command numbers
        // restart with the next queue.
        for (_, (b, s)) in core::mem::take(&mut self.deferred) {
            devpin::release(hyp, b, s);
        }
        self.cbaser = 0;
        self.cwriter = 0;
        self.forwarded = 0;
        self.issued = 0;
        self.stalled = None;
    }

    /// Releases everything (the ITS is disabled and quiescent).
    fn release_all(&mut self, hyp: &Hypervisor) {
        for n in 0..8 {
            write64(self.base + GITS_BASER0 + 8 * n as u64, 0);
            if let Some((b, s)) = self.tables[n].take() {
                devpin::give_back(hyp, b, s);
            }
        }
        self.devices = 0;
        for (_, (b, s)) in core::mem::take(&mut self.itts) {
            devpin::release(hyp, b, s);
        }
        write64(self.base + GITS_CBASER, 0);
        self.drop_queue(hyp);
    }

    fn set_cbaser(&mut self, hyp: &Hypervisor, v: u64) {
        if !self.idle() {
            warn_limited!("ITS: GITS_CBASER written while the ITS is enabled or busy: ignored");
            return;
        }
        if v & VALID == 0 {
            write64(self.base + GITS_CBASER, 0);
            self.drop_queue(hyp);
            return;
        }
        let base = v & 0x000f_ffff_ffff_f000;
        let bytes = ((v & 0xff) + 1) * 0x1000;
        if let Err(e) = devpin::claim(hyp, base, bytes) {
            warn_limited!("ITS: GITS_CBASER {v:#x}: queue not in host-owned RAM ({e:?}): refused");
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
            warn_limited!("ITS: no memory for a {bytes}-byte shadow command queue: refused");
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
        if !self.idle() {
            warn_limited!("ITS: GITS_BASER{n} written while the ITS is enabled or busy: ignored");
            return;
        }
        let reg = self.base + GITS_BASER0 + 8 * n as u64;
        let cur = read64(reg);
        let ty = (cur >> 56) & 7;
        if ty == 0 {
            // Unimplemented table: the register is read-only.
            return;
        }
        let v = v & !INDIRECT;
        if v & VALID == 0 {
            write64(reg, v);
            if let Some((b, s)) = self.tables[n].take() {
                devpin::give_back(hyp, b, s);
            }
            if ty == TYPE_DEVICES {
                self.devices = 0;
            }
            return;
        }
        if ty != TYPE_DEVICES && ty != TYPE_COLLECTIONS {
            warn_limited!("ITS: GITS_BASER{n} (table type {ty}, GICv4) is not offered: refused");
            return;
        }
        let (b, s, psz) = baser_table(v);
        if !b.is_multiple_of(psz) {
            warn_limited!("ITS: GITS_BASER{n} {v:#x}: table not aligned to its page size: refused");
            return;
        }
        let same = self.tables[n] == Some((b, s));
        if !same && let Err(e) = devpin::take(hyp, b, s) {
            warn_limited!(
                "ITS: GITS_BASER{n} {v:#x}: table not in host-owned RAM ({e:?}): refused"
            );
            return;
        }
        write64(reg, v);
        // The hardware may not take every field as written (a fixed page
        // size changes both the size and how the address bits read): the
        // table it will use must lie inside what was taken.
        let took = read64(reg);
        let (tb, ts, _) = baser_table(took);
        if took & VALID == 0 || took & INDIRECT != 0 || tb < b || tb.saturating_add(ts) > b + s {
            warn_limited!(
                "ITS: GITS_BASER{n} {v:#x} reads back as {took:#x}, not the table checked: refused"
            );
            write64(reg, cur);
            if !same {
                devpin::give_back(hyp, b, s);
            }
            return;
        }
        if !same && let Some((ob, os)) = self.tables[n].replace((b, s)) {
            devpin::give_back(hyp, ob, os);
        }
        if ty == TYPE_DEVICES {
            let entry = ((took >> 48) & 0x1f) + 1;
            self.devices = ts / entry;
        }
    }

    /// Whether an RDbase field (bits [51:16] of `dw`) names a known
    /// redistributor, when target addresses are physical.
    fn rdbase_ok(&self, dw: u64) -> bool {
        !self.pta || super::gicr_lpi::is_rd_frame(dw & 0x000f_ffff_ffff_0000)
    }

    /// Checks one command (4 doublewords, number `seq`) and claims what it
    /// needs; `Err` says why it is refused.
    fn check_command(
        &mut self,
        hyp: &Hypervisor,
        cmd: &[u64; 4],
        seq: u64,
    ) -> Result<(), &'static str> {
        let op = cmd[0] as u8;
        match op {
            _ if PLAIN_CMDS.contains(&op) => Ok(()),
            CMD_SYNC | CMD_MAPC => self
                .rdbase_ok(cmd[2])
                .then_some(())
                .ok_or("RDbase is not a redistributor"),
            CMD_MOVALL => (self.rdbase_ok(cmd[2]) && self.rdbase_ok(cmd[3]))
                .then_some(())
                .ok_or("RDbase is not a redistributor"),
            CMD_MAPD => self.check_mapd(hyp, cmd, seq),
            _ => Err("not a GICv3 physical-LPI command"),
        }
    }

    fn check_mapd(
        &mut self,
        hyp: &Hypervisor,
        cmd: &[u64; 4],
        seq: u64,
    ) -> Result<(), &'static str> {
        let dev = (cmd[0] >> 32) as u32;
        if u64::from(dev) >= self.devices {
            return Err("DeviceID beyond the device table");
        }
        let valid = cmd[2] & VALID != 0;
        if !valid {
            if let Some(old) = self.itts.remove(&dev) {
                self.deferred.push_back((seq, old));
            }
            return Ok(());
        }
        let bits = (cmd[1] & 0x1f) + 1;
        if bits > self.id_bits {
            return Err("ITT size beyond the ITS's EventID bits");
        }
        if self.itts.len() >= MAX_DEVICES && !self.itts.contains_key(&dev) {
            return Err("too many devices mapped");
        }
        let itt = cmd[2] & 0x000f_ffff_ffff_ff00;
        let bytes = (1u64 << bits) * self.itt_entry;
        devpin::claim(hyp, itt, bytes).map_err(|_| "ITT not in host-owned RAM")?;
        if let Some(old) = self.itts.insert(dev, (itt, bytes)) {
            self.deferred.push_back((seq, old));
        }
        Ok(())
    }

    fn set_cwriter(&mut self, hyp: &Hypervisor, v: u64) {
        self.cwriter = v;
        let size = self.queue_bytes();
        let (Some((qbase, _)), Some(shadow)) = (self.queue, self.shadow.as_ref()) else {
            return;
        };
        let shadow = shadow.ptr as u64;
        let target = v & QUEUE_OFFSET;
        if self.stalled.is_some() {
            return;
        }
        if target >= size {
            warn_limited!("ITS: GITS_CWRITER {v:#x} beyond the {size}-byte queue: ignored");
            return;
        }
        // The ITS reads from here on: el2 must not write commands it has
        // not read yet (the hardware only moves forward, so this is safe).
        let hw = read64(self.base + GITS_CREADR) & QUEUE_OFFSET;
        let mut pos = self.forwarded;
        while pos != target {
            let next = (pos + CMD_BYTES) % size;
            let mut cmd = [0u64; 4];
            for (i, w) in cmd.iter_mut().enumerate() {
                // SAFETY: the host's queue is host-owned RAM el2 claimed
                // (pinned) at CBASER time and maps Normal; `pos` + 32 is
                // inside it. A read of the host's bytes.
                *w =
                    unsafe { core::ptr::read_volatile((qbase + pos + 8 * i as u64) as *const u64) };
            }
            let verdict = if next == hw {
                Err("the queue would overrun commands the ITS has not read")
            } else {
                self.check_command(hyp, &cmd, self.issued)
            };
            if let Err(why) = verdict {
                self.counts.1 += 1;
                warn_limited!(
                    "ITS: command {:#04x} at queue offset {pos:#x} refused: {why} ([{:#x}, {:#x}, {:#x}, {:#x}]): queue stalled",
                    cmd[0] as u8,
                    cmd[0],
                    cmd[1],
                    cmd[2],
                    cmd[3]
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
            self.issued += 1;
            pos = next;
        }
        self.forwarded = pos;
        let retry = if self.stalled.is_none() {
            v & STALLED
        } else {
            0
        };
        write64(self.base + GITS_CWRITER, pos | retry);
    }

    fn set_ctlr(&mut self, v: u32) {
        let was = self.enabled();
        write32(self.base + GITS_CTLR, v);
        if was && v & CTLR_ENABLED == 0 {
            // Released by `progress` once the ITS is quiescent.
            self.release_pending = true;
            if !wait_quiescent(self.base) {
                warn_limited!("ITS: not quiescent yet after the host disabled it: tables kept");
            }
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
    its.progress(hyp);
    let reg = offset & !7;
    let addr = its.base + offset;
    // The 64-bit registers take 4- and 8-byte writes; anything narrower
    // is not an access the architecture defines for them.
    let wide = size == 4 || (size == 8 && offset.is_multiple_of(8));
    match (reg, write) {
        (GITS_CTLR, Some(v)) if offset == GITS_CTLR && size == 4 => {
            its.set_ctlr(v as u32);
            its.progress(hyp);
            0
        }
        (GITS_CBASER, Some(v)) if wide => {
            let new = merge(its.cbaser, offset, size, v);
            its.set_cbaser(hyp, new);
            0
        }
        (GITS_CBASER, None) => half(its.cbaser, offset, size),
        (GITS_CWRITER, Some(v)) if wide => {
            let new = merge(its.cwriter, offset, size, v);
            its.set_cwriter(hyp, new);
            its.progress(hyp);
            0
        }
        (GITS_CWRITER, None) => half(its.cwriter, offset, size),
        (GITS_CREADR, None) => {
            let real = read64(its.base + GITS_CREADR);
            let at = real & QUEUE_OFFSET;
            let stalled = real & STALLED != 0 || its.stalled == Some(at);
            half(at | u64::from(stalled), offset, size)
        }
        (GITS_BASER0..=GITS_BASER7, Some(v)) if wide => {
            let n = ((reg - GITS_BASER0) / 8) as usize;
            let new = merge(read64(its.base + reg), offset, size, v);
            its.set_baser(hyp, n, new);
            0
        }
        (_, Some(v)) => {
            warn_limited!(
                "ITS: host write of {v:#x} to offset {offset:#x} ({size} bytes): ignored"
            );
            0
        }
        (_, None) => match size {
            8 if offset.is_multiple_of(8) => read64(addr),
            4 if offset.is_multiple_of(4) => u64::from(read32(addr)),
            _ => 0,
        },
    }
}
