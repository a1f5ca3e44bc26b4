//! A simulated machine for host tests of the core and of the host-side
//! layers above it.
//!
//! - [`SimArch`]: the [`Arch`] of a simulated CPU. A vCPU runs a script of
//!   [`GuestOp`]s; the vCPU's PC counts ops (from its PC when the script
//!   first runs), so the core's "skip" and "retry" of an instruction work
//!   unchanged (one op is one instruction, [`Arch::INSN_SIZE`] = 1). Loads and stores are translated
//!   through the guest's stage-2 by [`translate`], a table walker written
//!   from the architecture (it reads raw descriptors from simulated RAM,
//!   independent of the `stage2` crate), and fault exactly where hardware
//!   would.
//! - [`Machine`]: simulated RAM, the hypervisor over it, a CPU, and the
//!   in-process host call conduit ([`Machine::call`]), plus host memory
//!   accesses checked against the host's stage-2.

use crate::hyp::Hypervisor;
use crate::hyp::arch::{Abort, Arch, Trap, VcpuContext, VcpuRef};
use host_interface::abi::{Exit, HostCall};
use ownership::testing::{RecordingHyp, SimMem, SimRam};
use ownership::{Layout, MemRegion, Ownership, Pfn, PhysMem};
use stage2::testing::ArenaPool;
use stage2::{Ipa, PAGE_SIZE, PaRange, PhysAddr, TablePool, TlbMaintenance};
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

/// One step of a scripted guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestOp {
    /// HVC with x0 = `id`, x1..x3 = `args`; the result is logged.
    Hvc {
        /// Function id.
        id: u64,
        /// x1..x3.
        args: [u64; 3],
    },
    /// 8-byte store of `value` (from x1) at `ipa`.
    Store {
        /// Guest address.
        ipa: u64,
        /// Value.
        value: u64,
    },
    /// 4-byte store of `value` (from w1) at `ipa` (the width of most
    /// device registers).
    Store32 {
        /// Guest address.
        ipa: u64,
        /// Value.
        value: u32,
    },
    /// 8-byte load from `ipa` into x1; the value is logged.
    Load {
        /// Guest address.
        ipa: u64,
    },
    /// Writes `byte` to every byte of the page at `ipa` (no valid syndrome
    /// if it faults: like a `dc zva` or a string store).
    Fill {
        /// Guest address (any byte of the page).
        ipa: u64,
        /// Byte.
        byte: u8,
    },
    /// SMC with x0 = `id`, x1..x3 = `args` (the SMCCC conduit el2 also
    /// serves); the result is logged like an HVC's.
    Smc {
        /// Function id.
        id: u64,
        /// x1..x3.
        args: [u64; 3],
    },
    /// WFI.
    Wfi,
    /// A write of `value` to `ICC_SGI1R_EL1` (trapped to el2).
    Sgi {
        /// The value.
        value: u64,
    },
    /// An instruction the hypervisor does not handle (e.g. a trapped
    /// system register access) with this syndrome.
    Undefined {
        /// ESR value reported.
        esr: u64,
    },
}

/// What a scripted guest observed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SimEvent {
    /// An HVC at script step `step` returned x0..x3.
    HvcReturned {
        /// vCPU index.
        vcpu: usize,
        /// Script step.
        step: usize,
        /// x0..x3 after the call.
        x: [u64; 4],
    },
    /// A load at `step` read `value`.
    Loaded {
        /// vCPU index.
        vcpu: usize,
        /// Script step.
        step: usize,
        /// Value read.
        value: u64,
    },
    /// A store or fill at `step` completed.
    Stored {
        /// vCPU index.
        vcpu: usize,
        /// Script step.
        step: usize,
    },
}

struct Script {
    ops: Vec<GuestOp>,
    /// The step whose trap is outstanding.
    trapped: Option<usize>,
    /// The PC of step 0: the vCPU's PC when the script first runs.
    base: Option<u64>,
}

/// Counts TLB maintenance; the simulation has no TLB to get wrong (the
/// `stage2` tests check the sequences).
#[derive(Debug, Default)]
pub struct SimTlb {
    /// Instructions issued.
    pub ops: u64,
}

impl TlbMaintenance for SimTlb {
    fn dsb_ishst(&mut self) {
        self.ops += 1;
    }
    fn dsb_ish(&mut self) {
        self.ops += 1;
    }
    fn isb(&mut self) {
        self.ops += 1;
    }
    fn tlbi_ipas2e1is(&mut self, _ipa: Ipa, _level: Option<stage2::Level>) {
        self.ops += 1;
    }
    fn tlbi_vmalle1is(&mut self) {
        self.ops += 1;
    }
    fn tlbi_vmalls12e1is(&mut self) {
        self.ops += 1;
    }
    fn switch_vttbr(&mut self, _vttbr: u64) -> u64 {
        0
    }
    fn restore_vttbr(&mut self, _previous: u64) {}
}

/// The simulated CPU.
pub struct SimArch {
    mem: SimMem,
    scripts: BTreeMap<(u16, usize), Script>,
    /// Everything the guests observed, in order.
    pub events: Vec<SimEvent>,
    /// TLB maintenance.
    pub tlb: SimTlb,
    /// Pages handed to the hypervisor's allocator.
    pub allocator_pages: u64,
    /// The vCPU loaded on this CPU (between `vcpu_load` and `vcpu_put`):
    /// the simulation checks the core pairs them and runs only the loaded
    /// vCPU.
    pub loaded: Option<(u16, usize)>,
    /// `vcpu_load` calls so far.
    pub loads: u64,
    /// `(pc, x0)` of each vCPU when its script first ran: where and with
    /// what the hypervisor started it.
    pub entries: BTreeMap<(u16, usize), (u64, u64)>,
    /// The virtual timer output the loaded vCPU's timer shows.
    pub timer: bool,
    /// The list registers each vCPU was last entered with.
    pub lrs: BTreeMap<(u16, usize), crate::hyp::vgic::ListRegs>,
}

/// Why a simulated translation failed, at which level.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalkFault {
    /// Translation fault (invalid entry, or IPA beyond the input size).
    Translation(u8),
    /// Access flag clear.
    AccessFlag(u8),
    /// S2AP does not allow the access.
    Permission(u8),
}

fn read_u64<M: PhysMem>(mem: M, pa: u64) -> u64 {
    let page = mem.page_ptr(PhysAddr(pa & !(PAGE_SIZE - 1)));
    // SAFETY: `page_ptr` returned a valid page; the offset is inside it and
    // 8-byte aligned (descriptor addresses are).
    unsafe {
        page.as_ptr()
            .add((pa % PAGE_SIZE) as usize)
            .cast::<u64>()
            .read_volatile()
    }
}

/// Translates `ipa` through the stage-2 described by `vttbr`/`vtcr` (4 KiB
/// granule) as the architecture specifies, checking S2AP for a read or a
/// write. Returns the output address. Tables are read from simulated RAM.
pub fn translate<M: PhysMem>(
    mem: M,
    vttbr: u64,
    vtcr: u64,
    ipa: u64,
    write: bool,
) -> Result<u64, WalkFault> {
    translate_with(|pa| read_u64(mem, pa), vttbr, vtcr, ipa, write)
}

/// [`translate`] with descriptors read by `read` (a physical address in,
/// the 64-bit descriptor out), for tables outside simulated RAM.
pub fn translate_with(
    read: impl Fn(u64) -> u64,
    vttbr: u64,
    vtcr: u64,
    ipa: u64,
    write: bool,
) -> Result<u64, WalkFault> {
    let ipa_bits = 64 - (vtcr & 0x3f);
    if ipa_bits >= 64 || ipa >> ipa_bits != 0 {
        return Err(WalkFault::Translation(0));
    }
    let sl0 = (vtcr >> 6) & 3;
    let mut level = 2u64.checked_sub(sl0).ok_or(WalkFault::Translation(0))?;
    let oa_mask = ((1u64 << 48) - 1) & !0xfff;
    let mut table = vttbr & ((1u64 << 48) - 1) & !1;
    let mut first = true;
    loop {
        let shift = 12 + 9 * (3 - level);
        let idx = if first {
            ipa >> shift
        } else {
            (ipa >> shift) & 511
        };
        first = false;
        let desc = read(table + idx * 8);
        if desc & 1 == 0 {
            return Err(WalkFault::Translation(level as u8));
        }
        let is_table_or_page = desc & 2 != 0;
        if level < 3 && is_table_or_page {
            table = desc & oa_mask;
            level += 1;
            continue;
        }
        // A block at level 0, or a block-type entry at level 3, is reserved.
        if (level == 3) != is_table_or_page || level == 0 {
            return Err(WalkFault::Translation(level as u8));
        }
        if desc & (1 << 10) == 0 {
            return Err(WalkFault::AccessFlag(level as u8));
        }
        let need = if write { 1 << 7 } else { 1 << 6 };
        if desc & need == 0 {
            return Err(WalkFault::Permission(level as u8));
        }
        let size = 1u64 << shift;
        return Ok((desc & oa_mask & !(size - 1)) | (ipa & (size - 1)));
    }
}

impl SimArch {
    /// A CPU over `mem`, with no scripts.
    pub fn new(mem: SimMem) -> SimArch {
        SimArch {
            mem,
            scripts: BTreeMap::new(),
            events: Vec::new(),
            tlb: SimTlb::default(),
            allocator_pages: 0,
            loaded: None,
            loads: 0,
            entries: BTreeMap::new(),
            timer: false,
            lrs: BTreeMap::new(),
        }
    }

    /// Sets the script vCPU `index` of `handle` runs.
    pub fn script(&mut self, handle: ownership::GuestHandle, index: usize, ops: Vec<GuestOp>) {
        self.scripts.insert(
            (handle.0, index),
            Script {
                ops,
                trapped: None,
                base: None,
            },
        );
    }

    /// The events of one vCPU.
    pub fn events_of(&self, vcpu: usize) -> Vec<SimEvent> {
        self.events
            .iter()
            .copied()
            .filter(|e| match e {
                SimEvent::HvcReturned { vcpu: v, .. }
                | SimEvent::Loaded { vcpu: v, .. }
                | SimEvent::Stored { vcpu: v, .. } => *v == vcpu,
            })
            .collect()
    }

    /// The value x0..x3 held after the HVC at `step` of `vcpu` returned,
    /// the last time it did.
    pub fn hvc_result(&self, vcpu: usize, step: usize) -> Option<[u64; 4]> {
        self.events.iter().rev().find_map(|e| match e {
            SimEvent::HvcReturned {
                vcpu: v,
                step: s,
                x,
            } if *v == vcpu && *s == step => Some(*x),
            _ => None,
        })
    }

    /// The value the load at `step` of `vcpu` read, the last time it ran.
    pub fn loaded(&self, vcpu: usize, step: usize) -> Option<u64> {
        self.events.iter().rev().find_map(|e| match e {
            SimEvent::Loaded {
                vcpu: v,
                step: s,
                value,
            } if *v == vcpu && *s == step => Some(*value),
            _ => None,
        })
    }
}

impl Arch for SimArch {
    type Tlb = SimTlb;
    const INSN_SIZE: u64 = 1;

    fn tlb(&mut self) -> &mut SimTlb {
        &mut self.tlb
    }

    fn vcpu_load(&mut self, vcpu: VcpuRef, _ctx: &mut VcpuContext) {
        assert_eq!(self.loaded, None, "vcpu_load with a vCPU already loaded");
        self.loaded = Some((vcpu.handle.0, vcpu.index));
        self.loads += 1;
    }

    fn vcpu_put(&mut self, vcpu: VcpuRef, _ctx: &mut VcpuContext) {
        assert_eq!(
            self.loaded,
            Some((vcpu.handle.0, vcpu.index)),
            "vcpu_put of a vCPU that is not loaded"
        );
        self.loaded = None;
    }

    fn run_vcpu(&mut self, vcpu: VcpuRef, ctx: &mut VcpuContext) -> Trap {
        assert_eq!(
            self.loaded,
            Some((vcpu.handle.0, vcpu.index)),
            "run_vcpu of a vCPU that is not loaded"
        );
        let mem = self.mem;
        self.lrs.insert((vcpu.handle.0, vcpu.index), ctx.gic.lrs);
        let Some(script) = self.scripts.get_mut(&(vcpu.handle.0, vcpu.index)) else {
            return Trap::Other { esr: u64::MAX };
        };
        if script.base.is_none() {
            self.entries
                .insert((vcpu.handle.0, vcpu.index), (ctx.pc, ctx.x[0]));
        }
        let base = *script.base.get_or_insert(ctx.pc);
        // Report how the outstanding trap ended: skipped past (done) or
        // left at the same step (retried).
        if let Some(step) = script.trapped.take()
            && ctx.pc == base.wrapping_add(step as u64 + 1)
        {
            let event = match script.ops[step] {
                GuestOp::Hvc { .. } | GuestOp::Smc { .. } => Some(SimEvent::HvcReturned {
                    vcpu: vcpu.index,
                    step,
                    x: [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]],
                }),
                GuestOp::Load { .. } => Some(SimEvent::Loaded {
                    vcpu: vcpu.index,
                    step,
                    value: ctx.x[1],
                }),
                GuestOp::Store { .. } | GuestOp::Store32 { .. } | GuestOp::Fill { .. } => {
                    Some(SimEvent::Stored {
                        vcpu: vcpu.index,
                        step,
                    })
                }
                _ => None,
            };
            self.events.extend(event);
        }
        loop {
            let step = ctx.pc.wrapping_sub(base) as usize;
            let Some(op) = script.ops.get(step).copied() else {
                // The end of the script powers the guest off.
                ctx.x[..4].copy_from_slice(&[0x8400_0008, 0, 0, 0]);
                ctx.pc += 1;
                return Trap::Hvc { imm: 0 };
            };
            match op {
                GuestOp::Hvc { id, args } => {
                    ctx.x[0] = id;
                    ctx.x[1..4].copy_from_slice(&args);
                    ctx.pc += 1;
                    script.trapped = Some(step);
                    return Trap::Hvc { imm: 0 };
                }
                GuestOp::Smc { id, args } => {
                    ctx.x[0] = id;
                    ctx.x[1..4].copy_from_slice(&args);
                    // el2 steps past a trapped SMC before reporting it.
                    ctx.pc += 1;
                    script.trapped = Some(step);
                    return Trap::Smc { imm: 0 };
                }
                GuestOp::Store { ipa, value } => {
                    ctx.x[1] = value;
                    match translate(mem, vcpu.vttbr, vcpu.vtcr, ipa, true) {
                        Ok(pa) => {
                            let page = mem.page_ptr(PhysAddr(pa & !(PAGE_SIZE - 1)));
                            // SAFETY: a RAM page the guest maps writable.
                            unsafe {
                                page.as_ptr()
                                    .add((pa % PAGE_SIZE) as usize)
                                    .cast::<u64>()
                                    .write_unaligned(value)
                            };
                            self.events.push(SimEvent::Stored {
                                vcpu: vcpu.index,
                                step,
                            });
                            ctx.pc += 1;
                        }
                        Err(_) => {
                            script.trapped = Some(step);
                            return Trap::DataAbort(Abort {
                                ipa,
                                write: true,
                                isv: true,
                                size: 8,
                                reg: 1,
                                sign: false,
                                wide: true,
                                permission: false,
                            });
                        }
                    }
                }
                GuestOp::Store32 { ipa, value } => {
                    ctx.x[1] = u64::from(value);
                    match translate(mem, vcpu.vttbr, vcpu.vtcr, ipa, true) {
                        Ok(pa) => {
                            let page = mem.page_ptr(PhysAddr(pa & !(PAGE_SIZE - 1)));
                            // SAFETY: a RAM page the guest maps writable.
                            unsafe {
                                page.as_ptr()
                                    .add((pa % PAGE_SIZE) as usize)
                                    .cast::<u32>()
                                    .write_unaligned(value)
                            };
                            self.events.push(SimEvent::Stored {
                                vcpu: vcpu.index,
                                step,
                            });
                            ctx.pc += 1;
                        }
                        Err(_) => {
                            script.trapped = Some(step);
                            return Trap::DataAbort(Abort {
                                ipa,
                                write: true,
                                isv: true,
                                size: 4,
                                reg: 1,
                                sign: false,
                                wide: false,
                                permission: false,
                            });
                        }
                    }
                }
                GuestOp::Load { ipa } => match translate(mem, vcpu.vttbr, vcpu.vtcr, ipa, false) {
                    Ok(pa) => {
                        let page = mem.page_ptr(PhysAddr(pa & !(PAGE_SIZE - 1)));
                        // SAFETY: a RAM page the guest maps readable.
                        let value = unsafe {
                            page.as_ptr()
                                .add((pa % PAGE_SIZE) as usize)
                                .cast::<u64>()
                                .read_unaligned()
                        };
                        ctx.x[1] = value;
                        self.events.push(SimEvent::Loaded {
                            vcpu: vcpu.index,
                            step,
                            value,
                        });
                        ctx.pc += 1;
                    }
                    Err(_) => {
                        script.trapped = Some(step);
                        return Trap::DataAbort(Abort {
                            ipa,
                            write: false,
                            isv: true,
                            size: 8,
                            reg: 1,
                            sign: false,
                            wide: true,
                            permission: false,
                        });
                    }
                },
                GuestOp::Fill { ipa, byte } => {
                    let base = ipa & !(PAGE_SIZE - 1);
                    match translate(mem, vcpu.vttbr, vcpu.vtcr, base, true) {
                        Ok(pa) => {
                            // SAFETY: a RAM page the guest maps writable.
                            unsafe {
                                core::ptr::write_bytes(
                                    mem.page_ptr(PhysAddr(pa)).as_ptr(),
                                    byte,
                                    PAGE_SIZE as usize,
                                )
                            };
                            self.events.push(SimEvent::Stored {
                                vcpu: vcpu.index,
                                step,
                            });
                            ctx.pc += 1;
                        }
                        Err(_) => {
                            script.trapped = Some(step);
                            return Trap::DataAbort(Abort {
                                ipa: base,
                                write: true,
                                isv: false,
                                size: 0,
                                reg: 0,
                                sign: false,
                                wide: false,
                                permission: false,
                            });
                        }
                    }
                }
                GuestOp::Wfi => {
                    ctx.pc += 1;
                    return Trap::Wfi;
                }
                GuestOp::Sgi { value } => {
                    ctx.pc += 1;
                    return Trap::Sgi { value };
                }
                GuestOp::Undefined { esr } => return Trap::Other { esr },
            }
        }
    }

    fn nr_lrs(&self) -> usize {
        // QEMU's CPU interface.
        4
    }

    fn timer_line(&mut self) -> bool {
        self.timer
    }

    fn add_to_allocator(&mut self, _pa: PhysAddr, pages: u64) {
        self.allocator_pages += pages;
    }
}

/// A host call's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reply {
    /// x0: SMCCC status.
    pub status: i64,
    /// x1: 0 or -errno.
    pub ret: i64,
    /// x2..x6.
    pub vals: [u64; 5],
}

impl Reply {
    /// The call ran and succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == 0 && self.ret == 0
    }

    /// The exit a successful `VcpuRun` returned.
    pub fn exit(&self) -> Option<Exit> {
        if self.is_ok() {
            Exit::from_regs(self.vals)
        } else {
            None
        }
    }
}

/// The hypervisor type the simulation runs.
pub type SimHypervisor = Hypervisor<SimMem, ArenaPool, RecordingHyp>;

/// A simulated machine: RAM, the hypervisor, one CPU.
pub struct Machine {
    /// The hypervisor.
    pub hyp: SimHypervisor,
    /// The CPU.
    pub arch: SimArch,
    /// The RAM (declared last, so dropped last: everything points into it).
    pub ram: SimRam,
    /// Run the ownership invariant checker after every host call (on by
    /// default; a violation panics with its description).
    pub check_calls: bool,
}

/// A host access the host stage-2 refused: EL2 would inject a synchronous
/// external abort.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HostFault(pub WalkFault);

impl Machine {
    /// Where RAM starts.
    pub const RAM_BASE: u64 = 0x4000_0000;
    /// RAM pages (32 MiB).
    pub const RAM_PAGES: u64 = 8192;
    /// Pages at the top of RAM kept by the hypervisor (4 MiB).
    pub const CARVE_PAGES: u64 = 1024;

    /// A machine with 32 MiB of RAM at 0x4000_0000 (the top 4 MiB the
    /// hypervisor's) and 32 MiB of MMIO below it.
    pub fn new() -> Machine {
        let ram = SimRam::new(Self::RAM_BASE, Self::RAM_PAGES * PAGE_SIZE);
        let mut arch = SimArch::new(ram.mem());
        let ram_pfn = Self::RAM_BASE / PAGE_SIZE;
        let layout = Layout {
            pa_range: PaRange::Bits40,
            ram: &[MemRegion {
                base: Pfn(ram_pfn),
                pages: Self::RAM_PAGES,
            }],
            mmio: &[(PhysAddr(0x0800_0000), 0x0200_0000)],
            hyp: &[MemRegion {
                base: Pfn(ram_pfn + Self::RAM_PAGES - Self::CARVE_PAGES),
                pages: Self::CARVE_PAGES,
            }],
        };
        let own = Ownership::new(
            layout,
            ram.mem(),
            ArenaPool::new(2048),
            RecordingHyp::default(),
            &mut arch.tlb,
        )
        .expect("simulated machine set-up");
        Machine {
            hyp: Hypervisor::new(own),
            arch,
            ram,
            check_calls: true,
        }
    }

    /// First frame of RAM.
    pub const fn ram_pfn() -> u64 {
        Self::RAM_BASE / PAGE_SIZE
    }

    /// Issues a host call with `args` in x1.. through the real dispatcher.
    pub fn call(&mut self, call: HostCall, args: &[u64]) -> Reply {
        let mut raw = [0u64; 6];
        raw[0] = call.id();
        for (d, a) in raw[1..].iter_mut().zip(args) {
            *d = *a;
        }
        self.raw_call(raw)
    }

    /// Issues a host call with raw x0..x5.
    pub fn raw_call(&mut self, regs: [u64; 6]) -> Reply {
        let mut x = [0u64; 31];
        x[..6].copy_from_slice(&regs);
        self.hyp.handle_host_call(&mut self.arch, &mut x);
        if self.check_calls {
            self.check();
        }
        Reply {
            status: x[0] as i64,
            ret: x[1] as i64,
            vals: [x[2], x[3], x[4], x[5], x[6]],
        }
    }

    /// Runs the invariant checker; panics with the violation.
    pub fn check(&self) {
        if let Err(v) = ownership::check::check(&self.hyp.mem) {
            panic!("invariant broken: {v}");
        }
    }

    fn host_pa(&self, pa: u64, write: bool) -> Result<u64, HostFault> {
        // The host stage-2's tables live in the hypervisor's pool (outside
        // simulated RAM): read them through it.
        self.hyp.mem.with_host(|h| {
            let (vttbr, vtcr) = (h.stage2().vttbr(), h.stage2().vtcr());
            let read = |table_pa: u64| {
                let page = h.pool().table_ptr(PhysAddr(table_pa & !(PAGE_SIZE - 1)));
                // SAFETY: a table page of the host stage-2, valid while the
                // host lock is held; the offset is inside it and aligned.
                unsafe {
                    page.as_ptr()
                        .add(((table_pa % PAGE_SIZE) / 8) as usize)
                        .read_volatile()
                }
            };
            translate_with(read, vttbr, vtcr, pa, write).map_err(HostFault)
        })
    }

    /// The host reads the page at `pfn` through its identity map.
    pub fn host_read_page(&self, pfn: u64) -> Result<[u8; 4096], HostFault> {
        let pa = self.host_pa(pfn * PAGE_SIZE, false)?;
        Ok(self.ram.read_page(Pfn(pa / PAGE_SIZE)))
    }

    /// The host fills the page at `pfn` through its identity map.
    pub fn host_fill_page(&self, pfn: u64, byte: u8) -> Result<(), HostFault> {
        let pa = self.host_pa(pfn * PAGE_SIZE, true)?;
        self.ram.fill_page(Pfn(pa / PAGE_SIZE), byte);
        Ok(())
    }
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

impl Machine {
    /// Splits a host access of `len` bytes at `pa` into page chunks checked
    /// against the host stage-2, calling `f` with each chunk's address in
    /// simulated RAM and its range in the caller's buffer.
    fn host_chunks(
        &self,
        pa: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(*mut u8, core::ops::Range<usize>),
    ) -> Result<(), host_interface::hypervisor::AccessFault> {
        let mut done = 0usize;
        while done < len {
            let at = pa + done as u64;
            let real = self
                .host_pa(at, write)
                .map_err(|_| host_interface::hypervisor::AccessFault { pa: at })?;
            let chunk = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(len - done);
            let page = self.ram.mem().page_ptr(PhysAddr(real & !(PAGE_SIZE - 1)));
            // SAFETY: the offset is inside the page `page_ptr` returned.
            let ptr = unsafe { page.as_ptr().add((real % PAGE_SIZE) as usize) };
            f(ptr, done..done + chunk);
            done += chunk;
        }
        Ok(())
    }
}

impl host_interface::hypervisor::Hypervisor for Machine {
    fn call(
        &mut self,
        call: HostCall,
        args: &[u64],
    ) -> Result<[u64; 5], host_interface::hypervisor::CallError> {
        let r = Machine::call(self, call, args);
        let v = r.vals;
        host_interface::hypervisor::decode([
            r.status as u64,
            r.ret as u64,
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
        ])
    }

    fn read(
        &mut self,
        pa: u64,
        buf: &mut [u8],
    ) -> Result<(), host_interface::hypervisor::AccessFault> {
        self.host_chunks(pa, buf.len(), false, |page, range| {
            // SAFETY: `page` points into a RAM page the host stage-2 lets
            // the host read, with at least `range.len()` bytes left in it.
            unsafe {
                core::ptr::copy_nonoverlapping(page, buf[range.clone()].as_mut_ptr(), range.len())
            };
        })
    }

    fn write(
        &mut self,
        pa: u64,
        data: &[u8],
    ) -> Result<(), host_interface::hypervisor::AccessFault> {
        self.host_chunks(pa, data.len(), true, |page, range| {
            // SAFETY: `page` points into a RAM page the host stage-2 lets
            // the host write, with at least `range.len()` bytes left in it.
            unsafe {
                core::ptr::copy_nonoverlapping(data[range.clone()].as_ptr(), page, range.len())
            };
        })
    }
}

/// The host's page allocator on the simulated machine: a bitmap over
/// `[first, first + pages)` handing out naturally aligned runs.
pub struct SimPages {
    first: u64,
    used: Vec<bool>,
}

impl SimPages {
    /// An allocator over `pages` pages from `first`.
    pub fn new(first: u64, pages: u64) -> SimPages {
        SimPages {
            first,
            used: vec![false; pages as usize],
        }
    }

    /// The default pool of [`Machine`]: 12 MiB from RAM + 16 MiB.
    pub fn for_machine() -> SimPages {
        SimPages::new(Machine::ram_pfn() + 0x1000, 0xc00)
    }

    /// Pages handed out.
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

impl host_interface::vm::HostPages for SimPages {
    fn alloc(&mut self, order: u32) -> Option<u64> {
        let n = 1usize << order;
        let align = n as u64;
        let mut i = ((self.first.next_multiple_of(align)) - self.first) as usize;
        while i + n <= self.used.len() {
            if self.used[i..i + n].iter().all(|u| !u) {
                self.used[i..i + n].fill(true);
                return Some(self.first + i as u64);
            }
            i += n;
        }
        None
    }

    fn free(&mut self, pfn: u64, order: u32) {
        let i = (pfn - self.first) as usize;
        for u in &mut self.used[i..i + (1usize << order)] {
            assert!(*u, "freeing a page that is not allocated: {pfn:#x}");
            *u = false;
        }
    }
}
