//! The virtual GICv3 every protected VM gets, emulated at EL2.
//!
//! # Why at EL2
//!
//! The guest's interrupt configuration (which interrupts it enables, their
//! priorities and routing, what is pending or active) is guest state the
//! host has no need to see, the virtual timer's interrupt is a guest
//! resource el2 already switches, and the guest touches the distributor
//! and redistributors mostly at boot: emulating them here keeps them
//! private and costs no exit to the host. The host only drives the lines of
//! the devices it emulates ([`Vgic::set_spi_line`], the `IrqLine` host
//! call).
//!
//! # What the guest sees
//!
//! A GICv3 in a single security state with affinity routing (`ARE` RAO),
//! its distributor at [`platform::GIC_DIST`] and one redistributor per vCPU
//! from [`platform::GIC_REDIST`] (128 KiB frames, `GICR_TYPER.Last` on the
//! last), INTIDs 0–15 (SGIs), 16–31 (PPIs) and [`NR_SPIS`] SPIs from 32;
//! every interrupt is group 1 (`IGROUPR` RAO/WI); no LPIs, no ITS. Each
//! register the Linux GICv3 driver uses is emulated with the width it uses
//! (byte-wide priorities, 64-bit `IROUTER` and `GICR_TYPER`); reserved or
//! absent registers read as zero and ignore writes.
//!
//! # Delivery
//!
//! The model keeps, per interrupt, enable, pending (an edge latch, or the
//! line level plus a software latch for level-sensitive ones), active,
//! priority and configuration. Before every guest entry [`Vgic::flush`]
//! moves what the vCPU should see into its list registers: active
//! interrupts first (they must stay in a list register until the guest
//! deactivates them), then pending ones by priority; when more are waiting
//! than the CPU has list registers (QEMU has 4: the count comes from
//! `ICH_VTR_EL2`), `ICH_HCR_EL2.UIE` asks for a maintenance interrupt once
//! the guest has worked through them. After every exit [`Vgic::fold`] moves
//! the list registers' state back. The virtual timer's PPI 27 is a
//! hardware interrupt (`HW` = 1, physical INTID 27): while it is pending or
//! active for the guest the physical PPI is kept active so it does not
//! fire at el2 again, and the guest's deactivation deactivates it
//! (guests-at-el2.md §5.4).
//!
//! SGIs: the guest's `ICC_SGI1R_EL1` writes trap to el2 ([`Vgic::sgi`]);
//! a target vCPU running on another CPU sees its SGI at its next entry.
//! `ICC_SGI0R_EL1`/`ICC_ASGI1R_EL1` generate group 0 / other-security
//! SGIs, which this GIC does not have: they are dropped.

use host_interface::platform;

/// SPIs a VM has (INTIDs 32..32 + `NR_SPIS`).
pub const NR_SPIS: usize = 64;
/// One past the largest INTID.
pub const NR_INTIDS: u32 = 32 + NR_SPIS as u32;
/// Most list registers the architecture allows.
pub const MAX_LRS: usize = 16;
/// The EL1 virtual timer's PPI.
pub const TIMER_INTID: u32 = 27;
/// Bytes of one redistributor (RD_base + SGI_base frames).
pub const REDIST_STRIDE: u64 = 0x2_0000;
/// Bytes of the distributor.
pub const DIST_SIZE: u64 = 0x1_0000;

/// `ICH_HCR_EL2.En`.
pub const ICH_HCR_EN: u64 = 1 << 0;
/// `ICH_HCR_EL2.UIE`: maintenance interrupt when at most one list register
/// holds an interrupt.
pub const ICH_HCR_UIE: u64 = 1 << 1;

const LR_STATE_PENDING: u64 = 1 << 62;
const LR_STATE_ACTIVE: u64 = 1 << 63;
const LR_HW: u64 = 1 << 61;
const LR_GROUP1: u64 = 1 << 60;

/// `GICD_CTLR.EnableGrp1`.
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
/// `GICD_CTLR`: ARE (bit 4) and DS (bit 6) read as one.
const CTLR_RAO: u32 = (1 << 4) | (1 << 6);
/// `GICD_IIDR`/`GICR_IIDR`: Arm (0x43b), this model's revision.
const IIDR: u32 = 0x0100_043b;
/// `GICx_PIDR2`: architecture revision 3.
const PIDR2_GICV3: u32 = 0x3b;
/// `GICR_WAKER.ProcessorSleep`.
const WAKER_SLEEP: u32 = 1 << 1;
/// `GICR_WAKER.ChildrenAsleep`.
const WAKER_ASLEEP: u32 = 1 << 2;

/// One vCPU's private interrupts (SGIs and PPIs) and redistributor state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub struct VgicCpu {
    /// Enabled (`GICR_ISENABLER0`).
    pub enabled: u32,
    /// Edge latches (and the software latch of level-sensitive PPIs).
    pub pending: u32,
    /// Active, outside the list registers.
    pub active: u32,
    /// Line levels of level-sensitive PPIs (the timer's).
    pub level: u32,
    /// Edge-triggered (SGIs always; PPIs per `GICR_ICFGR1`).
    pub edge: u32,
    /// Priorities.
    pub priority: [u8; 32],
    /// `GICR_WAKER.ProcessorSleep`.
    pub sleeping: bool,
}

impl Default for VgicCpu {
    fn default() -> VgicCpu {
        VgicCpu {
            enabled: 0,
            pending: 0,
            active: 0,
            level: 0,
            // SGIs are edge-triggered; PPIs start level-sensitive.
            edge: 0xffff,
            priority: [0; 32],
            sleeping: true,
        }
    }
}

/// A VM's distributor and SPIs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub struct VgicDist {
    /// `GICD_CTLR` (writable bits).
    pub ctlr: u32,
    /// SPIs enabled (bit n = INTID 32 + n).
    pub enabled: u64,
    /// SPI edge latches and software latches.
    pub pending: u64,
    /// SPIs active, outside the list registers.
    pub active: u64,
    /// SPI line levels (level-sensitive SPIs).
    pub level: u64,
    /// SPIs configured edge-triggered.
    pub edge: u64,
    /// SPI priorities.
    pub priority: [u8; NR_SPIS],
    /// `GICD_IROUTER<n>` values.
    pub route: [u64; NR_SPIS],
}

impl Default for VgicDist {
    fn default() -> VgicDist {
        VgicDist {
            ctlr: 0,
            enabled: 0,
            pending: 0,
            active: 0,
            level: 0,
            edge: 0,
            priority: [0; NR_SPIS],
            route: [0; NR_SPIS],
        }
    }
}

/// A vCPU's list registers and `ICH_HCR_EL2` as the world switch loads
/// them before an entry and saves them after an exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct ListRegs {
    /// `ICH_LR<n>_EL2`.
    pub lr: [u64; MAX_LRS],
    /// List registers in use (the rest are zero).
    pub used: u64,
    /// `ICH_HCR_EL2`.
    pub hcr: u64,
    /// Non-zero: the physical timer PPI must be active while the vCPU runs
    /// (its virtual twin is with the guest, or its line is high and the
    /// guest cannot take it yet).
    pub timer_hw_active: u64,
}

/// What an MMIO access asks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access {
    /// Byte offset in the distributor or redistributor.
    pub offset: u64,
    /// Bytes (1, 2, 4 or 8).
    pub size: u8,
    /// The value of a write; `None` for a read.
    pub write: Option<u64>,
}

/// A VM's virtual GIC: its distributor and every vCPU's private state.
pub struct Vgic<'a> {
    /// The distributor.
    pub dist: &'a mut VgicDist,
    /// The vCPUs' redistributors.
    pub cpus: &'a mut [VgicCpu],
}

fn bit32(intid: u32) -> u32 {
    1 << (intid % 32)
}

fn spi_bit(intid: u32) -> u64 {
    1 << (intid - 32)
}

/// An interrupt's place in the model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Irq {
    Private(u32),
    Spi(u32),
}

impl Irq {
    fn of(intid: u32) -> Option<Irq> {
        match intid {
            0..32 => Some(Irq::Private(intid)),
            32.. if intid < NR_INTIDS => Some(Irq::Spi(intid)),
            _ => None,
        }
    }
}

/// One candidate for a list register.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    intid: u32,
    active: bool,
    pending: bool,
    priority: u8,
    level_sensitive: bool,
}

impl Vgic<'_> {
    fn grp1_enabled(&self) -> bool {
        self.dist.ctlr & CTLR_ENABLE_GRP1 != 0
    }

    /// The vCPU an SPI is routed to (`IROUTER` names a vCPU by Aff0;
    /// 1-of-N routing, or a vCPU the VM lacks, means vCPU 0).
    pub fn spi_target(&self, intid: u32) -> usize {
        let route = self.dist.route[(intid - 32) as usize];
        let irm = route & (1 << 31) != 0;
        let aff0 = (route & 0xff) as usize;
        let upper = route & 0xff_00ff_ff00;
        if irm || upper != 0 || aff0 >= self.cpus.len() {
            0
        } else {
            aff0
        }
    }

    /// Drives an SPI's input line (a device the host emulates): edge
    /// interrupts latch on a rising edge, level-sensitive ones follow it.
    pub fn set_spi_line(&mut self, intid: u32, level: bool) -> bool {
        let Some(Irq::Spi(i)) = Irq::of(intid) else {
            return false;
        };
        let b = spi_bit(i);
        let was = self.dist.level & b != 0;
        if level {
            self.dist.level |= b;
            if !was && self.dist.edge & b != 0 {
                self.dist.pending |= b;
            }
        } else {
            self.dist.level &= !b;
        }
        true
    }

    /// Sets vCPU `vcpu`'s virtual timer line.
    pub fn set_timer_line(&mut self, vcpu: usize, level: bool) {
        if let Some(c) = self.cpus.get_mut(vcpu) {
            if level {
                c.level |= bit32(TIMER_INTID);
            } else {
                c.level &= !bit32(TIMER_INTID);
            }
        }
    }

    /// The guest's `ICC_SGI1R_EL1` write `value` from vCPU `from`: sets
    /// the SGI pending on every target.
    pub fn sgi(&mut self, from: usize, value: u64) {
        let intid = ((value >> 24) & 0xf) as u32;
        let irm = value & (1 << 40) != 0;
        let upper_aff =
            (value >> 16) & 0xff | ((value >> 32) & 0xff) << 8 | ((value >> 48) & 0xff) << 16;
        let rs = ((value >> 44) & 0xf) as usize;
        let list = value & 0xffff;
        for (i, c) in self.cpus.iter_mut().enumerate() {
            let hit = if irm {
                i != from
            } else {
                upper_aff == 0 && i / 16 == rs && list & (1 << (i % 16)) != 0
            };
            if hit {
                c.pending |= bit32(intid);
            }
        }
    }

    fn private_candidates(&self, vcpu: usize, out: &mut impl FnMut(Candidate)) {
        let c = &self.cpus[vcpu];
        let grp1 = self.grp1_enabled();
        for intid in 0..32 {
            let b = bit32(intid);
            let level_sensitive = c.edge & b == 0;
            let pending = c.pending & b != 0 || (level_sensitive && c.level & b != 0);
            let active = c.active & b != 0;
            if active || (pending && grp1 && c.enabled & b != 0) {
                out(Candidate {
                    intid,
                    active,
                    // An edge can be pending again while active; a level
                    // is re-sampled once the guest deactivates it.
                    pending: pending && (!level_sensitive || !active),
                    priority: c.priority[intid as usize],
                    level_sensitive,
                });
            }
        }
    }

    fn spi_candidates(&self, vcpu: usize, out: &mut impl FnMut(Candidate)) {
        let d = &*self.dist;
        let grp1 = self.grp1_enabled();
        for n in 0..NR_SPIS as u32 {
            let intid = 32 + n;
            let b = spi_bit(intid);
            let level_sensitive = d.edge & b == 0;
            let pending = d.pending & b != 0 || (level_sensitive && d.level & b != 0);
            let active = d.active & b != 0;
            if !(active || (pending && grp1 && d.enabled & b != 0)) {
                continue;
            }
            if self.spi_target(intid) != vcpu {
                continue;
            }
            out(Candidate {
                intid,
                active,
                pending: pending && (!level_sensitive || !active),
                priority: d.priority[n as usize],
                level_sensitive,
            });
        }
    }

    /// Fills `regs` with what vCPU `vcpu` should see (module docs), using
    /// `nr_lrs` list registers. Interrupts put in a list register leave the
    /// model (edge latches and active state move there) until
    /// [`Vgic::fold`] brings them back.
    pub fn flush(&mut self, vcpu: usize, nr_lrs: usize, regs: &mut ListRegs) {
        let nr = nr_lrs.min(MAX_LRS);
        let mut best = [None::<Candidate>; MAX_LRS];
        let mut waiting = 0usize;
        let rank = |c: &Candidate| (!c.active, c.priority, c.intid);
        let mut consider = |c: Candidate| {
            waiting += 1;
            // Insertion into the `nr` best, by rank.
            let mut item = c;
            for slot in best.iter_mut().take(nr) {
                match slot {
                    None => {
                        *slot = Some(item);
                        return;
                    }
                    Some(s) if rank(&item) < rank(s) => core::mem::swap(s, &mut item),
                    Some(_) => {}
                }
            }
        };
        if vcpu >= self.cpus.len() || nr_lrs == 0 {
            *regs = ListRegs::default();
            return;
        }
        self.private_candidates(vcpu, &mut consider);
        self.spi_candidates(vcpu, &mut consider);
        let mut out = ListRegs {
            hcr: ICH_HCR_EN,
            ..ListRegs::default()
        };
        if waiting > nr {
            out.hcr |= ICH_HCR_UIE;
        }
        let timer_line = self.cpus[vcpu].level & bit32(TIMER_INTID) != 0;
        out.timer_hw_active = u64::from(timer_line);
        for c in best.iter().take(nr).flatten() {
            let mut lr = u64::from(c.intid) | (u64::from(c.priority) << 48) | LR_GROUP1;
            if c.active {
                lr |= LR_STATE_ACTIVE;
            }
            if c.pending {
                lr |= LR_STATE_PENDING;
            }
            if c.intid == TIMER_INTID {
                // A hardware interrupt: the guest's deactivation reaches
                // the physical PPI.
                lr |= LR_HW | (u64::from(TIMER_INTID) << 32);
                out.timer_hw_active = 1;
            }
            out.lr[out.used as usize] = lr;
            out.used += 1;
            // The list register owns the interrupt's edge latch and
            // active state now.
            match Irq::of(c.intid) {
                Some(Irq::Private(i)) => {
                    let cpu = &mut self.cpus[vcpu];
                    cpu.active &= !bit32(i);
                    if !c.level_sensitive || c.pending {
                        cpu.pending &= !bit32(i);
                    }
                }
                Some(Irq::Spi(i)) => {
                    self.dist.active &= !spi_bit(i);
                    if !c.level_sensitive || c.pending {
                        self.dist.pending &= !spi_bit(i);
                    }
                }
                None => {}
            }
        }
        *regs = out;
    }

    /// Brings the state of vCPU `vcpu`'s list registers back into the
    /// model after an exit.
    pub fn fold(&mut self, vcpu: usize, regs: &ListRegs) {
        if vcpu >= self.cpus.len() {
            return;
        }
        for &lr in regs.lr.iter().take((regs.used as usize).min(MAX_LRS)) {
            let intid = (lr & 0xffff_ffff) as u32;
            let active = lr & LR_STATE_ACTIVE != 0;
            let pending = lr & LR_STATE_PENDING != 0;
            match Irq::of(intid) {
                Some(Irq::Private(i)) => {
                    let c = &mut self.cpus[vcpu];
                    let b = bit32(i);
                    if active {
                        c.active |= b;
                    }
                    // A level-sensitive interrupt's pending state comes
                    // from its line; an edge's latch goes back.
                    if pending && c.edge & b != 0 {
                        c.pending |= b;
                    }
                }
                Some(Irq::Spi(i)) => {
                    let b = spi_bit(i);
                    if active {
                        self.dist.active |= b;
                    }
                    if pending && self.dist.edge & b != 0 {
                        self.dist.pending |= b;
                    }
                }
                None => {}
            }
        }
    }

    /// Whether vCPU `vcpu` has an interrupt it could take now (a WFI
    /// should not wait).
    pub fn has_pending(&self, vcpu: usize) -> bool {
        if vcpu >= self.cpus.len() {
            return false;
        }
        let mut any = false;
        let mut f = |c: Candidate| any |= c.pending;
        self.private_candidates(vcpu, &mut f);
        self.spi_candidates(vcpu, &mut f);
        any
    }

    /// An access to the distributor; returns a read's value.
    pub fn dist_mmio(&mut self, a: Access) -> u64 {
        let off = a.offset;
        let write = a.write;
        match off {
            0x0000 => match write {
                Some(v) => {
                    self.dist.ctlr = (v as u32) & 0b11;
                    0
                }
                None => u64::from(self.dist.ctlr | CTLR_RAO),
            },
            // TYPER: ITLinesNumber, IDbits = 10 bits - 1.
            0x0004 => u64::from((NR_INTIDS / 32 - 1) | (9 << 19)),
            0x0008 => u64::from(IIDR),
            0x0080..0x0100 => {
                // IGROUPR: SPIs are group 1; SGIs/PPIs are the
                // redistributor's (RAZ here with ARE).
                let n = ((off - 0x80) / 4) as u32;
                if (1..NR_INTIDS / 32).contains(&n) {
                    0xffff_ffff
                } else {
                    0
                }
            }
            0x0100..0x0400 => {
                let reg = (off - 0x100) / 0x80;
                let n = ((off % 0x80) / 4) as u32;
                if n == 0 || n >= NR_INTIDS / 32 || a.size != 4 {
                    return 0;
                }
                let shift = (n - 1) * 32;
                let field = match reg {
                    0 | 1 => &mut self.dist.enabled,
                    2 | 3 => &mut self.dist.pending,
                    _ => &mut self.dist.active,
                };
                let cur = ((*field >> shift) & 0xffff_ffff) as u32;
                let mut shown = cur;
                if reg == 2 || reg == 3 {
                    // Pending as the guest sees it: latches and high
                    // level-sensitive lines.
                    let lvl = (self.dist.level & !self.dist.edge) >> shift;
                    shown |= lvl as u32;
                }
                if let Some(v) = write {
                    let v = u64::from(v as u32) << shift;
                    if reg.is_multiple_of(2) {
                        *field |= v;
                    } else {
                        *field &= !v;
                    }
                    return 0;
                }
                u64::from(shown)
            }
            0x0400..0x0800 => {
                // IPRIORITYR: byte-accessible.
                let mut out = 0u64;
                for i in 0..u64::from(a.size) {
                    let intid = (off - 0x400 + i) as u32;
                    let Some(Irq::Spi(_)) = Irq::of(intid) else {
                        continue;
                    };
                    let slot = &mut self.dist.priority[(intid - 32) as usize];
                    match write {
                        Some(v) => *slot = (v >> (8 * i)) as u8,
                        None => out |= u64::from(*slot) << (8 * i),
                    }
                }
                out
            }
            0x0c00..0x0d00 => {
                // ICFGR: two bits per INTID, bit 1 = edge.
                let first = ((off - 0xc00) / 4 * 16) as u32;
                if first < 32 || a.size != 4 {
                    return 0;
                }
                let mut out = 0u64;
                for k in 0..16 {
                    let intid = first + k;
                    let Some(Irq::Spi(_)) = Irq::of(intid) else {
                        continue;
                    };
                    let b = spi_bit(intid);
                    match write {
                        Some(v) => {
                            if v & (2 << (2 * k)) != 0 {
                                self.dist.edge |= b;
                            } else {
                                self.dist.edge &= !b;
                            }
                        }
                        None => {
                            if self.dist.edge & b != 0 {
                                out |= 2 << (2 * k);
                            }
                        }
                    }
                }
                out
            }
            0x6100..0x8000 => {
                // IROUTER<n>, 64-bit, or its 32-bit halves.
                let intid = ((off - 0x6000) / 8) as u32;
                let Some(Irq::Spi(_)) = Irq::of(intid) else {
                    return 0;
                };
                let slot = &mut self.dist.route[(intid - 32) as usize];
                let high = off % 8 == 4;
                const MASK: u64 = 0xff_8000_0000 | 0xff_ffff;
                match (write, a.size, high) {
                    (Some(v), 8, false) => *slot = v & MASK,
                    (Some(v), 4, false) => {
                        *slot = ((*slot & !0xffff_ffff) | (v & 0xffff_ffff)) & MASK
                    }
                    (Some(v), 4, true) => *slot = ((*slot & 0xffff_ffff) | (v << 32)) & MASK,
                    (None, 8, false) => return *slot,
                    (None, 4, false) => return *slot & 0xffff_ffff,
                    (None, 4, true) => return *slot >> 32,
                    _ => {}
                }
                0
            }
            0xffe8 => u64::from(PIDR2_GICV3),
            _ => 0,
        }
    }

    /// An access to vCPU `vcpu`'s redistributor (RD_base and SGI_base
    /// frames, `offset` from RD_base); returns a read's value.
    pub fn redist_mmio(&mut self, vcpu: usize, a: Access) -> u64 {
        let last = vcpu + 1 == self.cpus.len();
        let Some(c) = self.cpus.get_mut(vcpu) else {
            return 0;
        };
        let off = a.offset;
        let write = a.write;
        match off {
            0x0004 => u64::from(IIDR),
            0x0008 | 0x000c => {
                // TYPER: affinity = the vCPU's Aff0, processor number,
                // Last on the last redistributor.
                let typer = ((vcpu as u64) << 32) | ((vcpu as u64) << 8) | (u64::from(last) << 4);
                match (off, a.size) {
                    (0x8, 8) => typer,
                    (0x8, 4) => typer & 0xffff_ffff,
                    (0xc, 4) => typer >> 32,
                    _ => 0,
                }
            }
            0x0014 => match write {
                Some(v) => {
                    c.sleeping = v as u32 & WAKER_SLEEP != 0;
                    0
                }
                None => {
                    if c.sleeping {
                        u64::from(WAKER_SLEEP | WAKER_ASLEEP)
                    } else {
                        0
                    }
                }
            },
            0xffe8 => u64::from(PIDR2_GICV3),
            0x1_0080 => 0xffff_ffff,
            0x1_0100..0x1_0400 if off.is_multiple_of(0x80) && a.size == 4 => {
                let reg = (off - 0x1_0100) / 0x80;
                let field = match reg {
                    0 | 1 => &mut c.enabled,
                    2 | 3 => &mut c.pending,
                    _ => &mut c.active,
                };
                let mut shown = *field;
                if reg == 2 || reg == 3 {
                    shown |= c.level & !c.edge;
                }
                if let Some(v) = write {
                    if reg.is_multiple_of(2) {
                        *field |= v as u32;
                    } else {
                        *field &= !(v as u32);
                    }
                    return 0;
                }
                u64::from(shown)
            }
            0x1_0400..0x1_0420 => {
                let mut out = 0u64;
                for i in 0..u64::from(a.size) {
                    let Some(slot) = c.priority.get_mut((off - 0x1_0400 + i) as usize) else {
                        continue;
                    };
                    match write {
                        Some(v) => *slot = (v >> (8 * i)) as u8,
                        None => out |= u64::from(*slot) << (8 * i),
                    }
                }
                out
            }
            // ICFGR0: SGIs are edge-triggered (read-only).
            0x1_0c00 => 0xaaaa_aaaa,
            0x1_0c04 if a.size == 4 => {
                let mut out = 0u64;
                for k in 0..16 {
                    let b = bit32(16 + k);
                    match write {
                        Some(v) => {
                            if v & (2 << (2 * k)) != 0 {
                                c.edge |= b;
                            } else {
                                c.edge &= !b;
                            }
                        }
                        None => {
                            if c.edge & b != 0 {
                                out |= 2 << (2 * k);
                            }
                        }
                    }
                }
                out
            }
            _ => 0,
        }
    }

    /// An MMIO access at guest physical `ipa`: `Some(value)` (0 for a
    /// write) if it is the virtual GIC's, `None` if not.
    pub fn mmio(&mut self, ipa: u64, size: u8, write: Option<u64>) -> Option<u64> {
        let dist = ipa
            .checked_sub(platform::GIC_DIST)
            .filter(|o| *o < DIST_SIZE);
        if let Some(offset) = dist {
            return Some(self.dist_mmio(Access {
                offset,
                size,
                write,
            }));
        }
        let redist_size = REDIST_STRIDE * self.cpus.len() as u64;
        let offset = ipa
            .checked_sub(platform::GIC_REDIST)
            .filter(|o| *o < redist_size)?;
        let vcpu = (offset / REDIST_STRIDE) as usize;
        Some(self.redist_mmio(
            vcpu,
            Access {
                offset: offset % REDIST_STRIDE,
                size,
                write,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vgic<'a>(d: &'a mut VgicDist, c: &'a mut [VgicCpu]) -> Vgic<'a> {
        Vgic { dist: d, cpus: c }
    }

    fn w(v: &mut Vgic<'_>, ipa: u64, size: u8, val: u64) {
        assert_eq!(v.mmio(ipa, size, Some(val)), Some(0));
    }

    fn r(v: &mut Vgic<'_>, ipa: u64, size: u8) -> u64 {
        v.mmio(ipa, size, None).unwrap()
    }

    const D: u64 = platform::GIC_DIST;
    const R: u64 = platform::GIC_REDIST;

    #[test]
    fn linux_probe_sees_a_gicv3_with_one_redistributor_per_vcpu() {
        let (mut d, mut c) = (VgicDist::default(), [VgicCpu::default(); 2]);
        let mut v = vgic(&mut d, &mut c);
        assert_eq!(r(&mut v, D + 0xffe8, 4) & 0xf0, 0x30, "PIDR2: GICv3");
        assert_eq!(r(&mut v, R + 0xffe8, 4) & 0xf0, 0x30);
        let typer = r(&mut v, D + 4, 4);
        assert_eq!(typer & 0x1f, 2, "96 INTIDs");
        assert_eq!((typer >> 19) & 0x1f, 9, "10 ID bits");
        assert_eq!(r(&mut v, R + 8, 8), 0, "vCPU 0: affinity 0, not last");
        assert_eq!(
            r(&mut v, R + REDIST_STRIDE + 8, 8),
            (1 << 32) | (1 << 8) | (1 << 4)
        );
        assert_eq!(r(&mut v, R + REDIST_STRIDE + 0xc, 4), 1);
        // Waking the redistributor.
        assert_eq!(r(&mut v, R + 0x14, 4), 0b110);
        w(&mut v, R + 0x14, 4, 0);
        assert_eq!(r(&mut v, R + 0x14, 4), 0);
        // Outside the frames: not the GIC's.
        assert_eq!(v.mmio(R + 2 * REDIST_STRIDE, 4, None), None);
        assert_eq!(v.mmio(D - 4, 4, None), None);
        assert_eq!(r(&mut v, D, 4) & 0x50, 0x50, "ARE and DS read as one");
    }

    #[test]
    fn an_enabled_spi_is_delivered_to_its_target_by_priority() {
        let (mut d, mut c) = (VgicDist::default(), [VgicCpu::default(); 2]);
        let mut v = vgic(&mut d, &mut c);
        w(&mut v, D, 4, 2); // EnableGrp1
        // SPI 33 (n = 1) and 40: priorities, routed to vCPU 1, enabled.
        w(&mut v, D + 0x400 + 33, 1, 0xa0);
        w(&mut v, D + 0x400 + 40, 1, 0x80);
        w(&mut v, D + 0x6000 + 8 * 33, 8, 1);
        w(&mut v, D + 0x6000 + 8 * 40, 8, 1);
        w(&mut v, D + 0x104, 4, (1 << 1) | (1 << 8));
        assert_eq!(r(&mut v, D + 0x104, 4), (1 << 1) | (1 << 8));
        assert!(v.set_spi_line(33, true));
        assert!(v.set_spi_line(40, true));
        assert!(!v.set_spi_line(96, true), "no such SPI");
        let mut lrs = ListRegs::default();
        v.flush(0, 4, &mut lrs);
        assert_eq!(lrs.used, 0, "routed to vCPU 1");
        assert!(!v.has_pending(0) && v.has_pending(1));
        v.flush(1, 4, &mut lrs);
        assert_eq!(lrs.used, 2);
        assert_eq!(lrs.lr[0] & 0xffff_ffff, 40, "higher priority first");
        assert_eq!(lrs.lr[0] >> 48 & 0xff, 0x80);
        assert_eq!(lrs.lr[0] >> 62, 1, "pending");
        assert_eq!(lrs.lr[0] & LR_GROUP1, LR_GROUP1);
        assert_eq!(lrs.hcr, ICH_HCR_EN);
        // The guest acks SPI 40 (active) and finishes SPI 33.
        lrs.lr[0] = (lrs.lr[0] & !(3 << 62)) | LR_STATE_ACTIVE;
        lrs.lr[1] &= !(3 << 62);
        v.fold(1, &lrs);
        // Level-sensitive lines still high: 33 pending again; 40 active.
        v.flush(1, 4, &mut lrs);
        assert_eq!(lrs.used, 2);
        assert_eq!(lrs.lr[0] & 0xffff_ffff, 40);
        assert_eq!(lrs.lr[0] >> 62, 2, "active first");
        assert_eq!(lrs.lr[1] & 0xffff_ffff, 33);
        // Lines low, 40 deactivated: nothing left.
        v.set_spi_line(33, false);
        v.set_spi_line(40, false);
        lrs.lr[0] &= !(3 << 62);
        lrs.lr[1] &= !(3 << 62);
        v.fold(1, &lrs);
        v.flush(1, 4, &mut lrs);
        assert_eq!(lrs.used, 0);
    }

    #[test]
    fn sgis_reach_their_targets_and_more_than_the_lrs_ask_for_underflow() {
        let (mut d, mut c) = (VgicDist::default(), [VgicCpu::default(); 3]);
        let mut v = vgic(&mut d, &mut c);
        w(&mut v, D, 4, 2);
        for cpu in 0..3 {
            w(&mut v, R + cpu * REDIST_STRIDE + 0x1_0100, 4, 0xffff);
        }
        // SGI 5 to vCPU 1 and 2 (target list), SGI 6 to all but self.
        v.sgi(0, (5 << 24) | 0b110);
        v.sgi(2, (6 << 24) | (1 << 40));
        v.sgi(0, (7 << 24) | (1 << 16) | 1); // Aff1 = 1: nobody
        let mut lrs = ListRegs::default();
        v.flush(0, 4, &mut lrs);
        assert_eq!((lrs.used, lrs.lr[0] & 0xf), (1, 6));
        v.flush(1, 4, &mut lrs);
        assert_eq!(lrs.used, 2);
        v.flush(2, 4, &mut lrs);
        assert_eq!((lrs.used, lrs.lr[0] & 0xf), (1, 5));
        // Five SGIs to vCPU 1 with 4 list registers: underflow maintenance.
        for i in 8..13 {
            v.sgi(0, (i << 24) | 0b10);
        }
        v.flush(1, 4, &mut lrs);
        assert_eq!(lrs.used, 4);
        assert_eq!(lrs.hcr, ICH_HCR_EN | ICH_HCR_UIE);
        // None handled: they come back; the fifth is still in the model.
        v.fold(1, &lrs);
        v.flush(1, 4, &mut lrs);
        let ids: [u64; 4] = core::array::from_fn(|i| lrs.lr[i] & 0xf);
        assert_eq!(ids, [8, 9, 10, 11]);
        // The guest took all four: the fifth gets in.
        for l in lrs.lr.iter_mut().take(4) {
            *l &= !(3 << 62);
        }
        v.fold(1, &lrs);
        v.flush(1, 4, &mut lrs);
        assert_eq!((lrs.used, lrs.lr[0] & 0xf), (1, 12));
        assert_eq!(lrs.hcr, ICH_HCR_EN);
    }

    #[test]
    fn the_timer_is_a_hardware_interrupt() {
        let (mut d, mut c) = (VgicDist::default(), [VgicCpu::default(); 1]);
        let mut v = vgic(&mut d, &mut c);
        w(&mut v, D, 4, 2);
        v.set_timer_line(0, true);
        let mut lrs = ListRegs::default();
        v.flush(0, 4, &mut lrs);
        assert_eq!(lrs.used, 0, "PPI 27 not enabled yet");
        assert_eq!(lrs.timer_hw_active, 1, "its line is high: keep it quiet");
        w(&mut v, R + 0x1_0100, 4, 1 << 27);
        assert_eq!(r(&mut v, R + 0x1_0200, 4), 1 << 27, "pending: its line");
        v.flush(0, 4, &mut lrs);
        assert_eq!(lrs.used, 1);
        assert_eq!(lrs.lr[0] & LR_HW, LR_HW);
        assert_eq!((lrs.lr[0] >> 32) & 0x3ff, 27, "physical INTID");
        v.set_timer_line(0, false);
        lrs.lr[0] &= !(3 << 62);
        v.fold(0, &lrs);
        v.flush(0, 4, &mut lrs);
        assert_eq!((lrs.used, lrs.timer_hw_active), (0, 0));
    }

    #[test]
    fn registers_keep_what_linux_writes() {
        let (mut d, mut c) = (VgicDist::default(), [VgicCpu::default(); 1]);
        let mut v = vgic(&mut d, &mut c);
        // Priorities as 32-bit words and bytes; ICFGR; IROUTER halves.
        w(&mut v, D + 0x420, 4, 0xa0a0_a0a0);
        assert_eq!(r(&mut v, D + 0x420, 4), 0xa0a0_a0a0);
        assert_eq!(
            r(&mut v, D + 0x400, 4),
            0,
            "SGIs/PPIs are the redistributor's"
        );
        w(&mut v, D + 0xc08, 4, 0b10 << 2);
        assert_eq!(r(&mut v, D + 0xc08, 4), 0b10 << 2);
        w(&mut v, D + 0x6000 + 8 * 50 + 4, 4, 0xff);
        w(&mut v, D + 0x6000 + 8 * 50, 4, 0x8000_0000);
        assert_eq!(
            r(&mut v, D + 0x6000 + 8 * 50, 8),
            (0xff << 32) | 0x8000_0000
        );
        // Redistributor priorities, PPI configuration, enables.
        w(&mut v, R + 0x1_0418, 4, 0x1122_3344);
        assert_eq!(r(&mut v, R + 0x1_041b, 1), 0x11);
        assert_eq!(r(&mut v, R + 0x1_0c00, 4), 0xaaaa_aaaa);
        w(&mut v, R + 0x1_0c04, 4, 0b10 << 22);
        assert_eq!(r(&mut v, R + 0x1_0c04, 4), 0b10 << 22);
        w(&mut v, R + 0x1_0100, 4, 0b101);
        w(&mut v, R + 0x1_0180, 4, 0b001);
        assert_eq!(r(&mut v, R + 0x1_0100, 4), 0b100);
        assert_eq!(r(&mut v, R + 0x1_0080, 4), 0xffff_ffff, "group 1");
        // Unknown offsets: zero, writes ignored; no panic on odd sizes.
        for off in [0x10u64, 0xf00, 0x7ffc, 0xfffc, 0x6000] {
            w(&mut v, D + off, 4, u64::MAX);
            assert_eq!(r(&mut v, D + off, 4), 0, "{off:#x}");
        }
        for size in [1u8, 2, 4, 8] {
            for off in (0..0x2_0000).step_by(0x7f1) {
                let _ = v.mmio(R + off, size, Some(u64::MAX));
                let _ = v.mmio(R + off, size, None);
            }
        }
    }
}
