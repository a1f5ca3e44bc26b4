//! The GICv3 around a guest run: this CPU's redistributor (to enable the
//! EL2 physical timer's interrupt that carries the host's timer deadline
//! while a guest owns the virtual timer, see [`super::timer`]) and the
//! guest's virtual CPU interface state (`ICH_*_EL2`).
//!
//! el2 does not own the GIC: the host programs the distributor and its
//! redistributors as it likes. The only redistributor state el2 touches is
//! PPI 26 (the EL2 physical timer, which no EL1 host uses): group 1,
//! enabled, each time a vCPU is loaded (Linux disables every PPI it does
//! not use when it brings a CPU up). el2 maps the first 2 MiB of the
//! redistributor region (8 frames of 256 KiB at most, enough for
//! [`super::percpu::MAX_CPUS`] CPUs) Device at EL2.
//!
//! The guest's `ICH_VMCR_EL2` and active-priority registers are loaded and
//! saved with the vCPU, so one guest never sees another's virtual CPU
//! interface state; its list registers and `ICH_HCR_EL2` are written
//! before every entry from what the core's virtual GIC prepared
//! (`el2::hyp::vgic`) and read back after every exit, and cleared when the
//! vCPU is put. While the guest's timer interrupt is with the guest, the
//! physical PPI 27 is kept active here ([`set_timer_active`]); the GIC
//! maintenance interrupt (PPI 25) is enabled with PPI 26.

use core::sync::atomic::{AtomicU64, Ordering};

use el2::hyp::arch::GicCpuRegs;
use el2::hyp::vgic::ListRegs;

use super::percpu::{self, MAX_CPUS};
use super::sysreg::{self, mrs, msr};

/// The redistributor region el2 maps, set once at boot: `(base, size)`.
static REDIST: AtomicU64 = AtomicU64::new(0);
static REDIST_SIZE: AtomicU64 = AtomicU64::new(0);

/// Each CPU's redistributor `SGI_base` (0 = not looked up yet, 1 = none).
static SGI_BASE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Bytes of the redistributor region el2 maps.
pub const MAPPED: u64 = 2 << 20;

/// INTID of the EL2 physical timer (CNTHP).
pub const HYP_TIMER_PPI: u32 = 26;
/// INTID of the GIC maintenance interrupt.
pub const MAINTENANCE_PPI: u32 = 25;
/// INTID of the EL1 virtual timer.
pub const VTIMER_PPI: u32 = 27;

const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_TYPER_LAST: u64 = 1 << 4;
const SGI_BASE_OFFSET: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_ISENABLER0: u64 = 0x100;
const GICR_ICENABLER0: u64 = 0x180;
const GICR_ISACTIVER0: u64 = 0x300;
const GICR_ICACTIVER0: u64 = 0x380;

/// Records the redistributor region (boot CPU, at boot, after it is
/// mapped).
pub fn set_redistributors(base: u64, size: u64) {
    REDIST_SIZE.store(size.min(MAPPED), Ordering::Relaxed);
    REDIST.store(base, Ordering::Release);
}

fn read64(addr: u64) -> u64 {
    // SAFETY: `addr` is inside the redistributor region el2 mapped Device
    // at boot (callers bound it); a register read has no side effect.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as `read64`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as `read64`; the registers written (this CPU's PPI 26 group
    // and enable bits) are el2's own.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// A redistributor's frames in the mapped region.
#[derive(Clone, Copy, Debug)]
pub struct RdFrame {
    /// Its `RD_base` (the `SGI_base` frame follows).
    pub base: u64,
    /// GICv4 (`GICR_TYPER.VLPIS`): a `VLPI_base` frame and a reserved one
    /// follow the `SGI_base` frame.
    pub vlpis: bool,
}

impl RdFrame {
    /// Bytes of all its frames.
    pub fn size(&self) -> u64 {
        if self.vlpis {
            4 * SGI_BASE_OFFSET
        } else {
            2 * SGI_BASE_OFFSET
        }
    }
}

/// Every redistributor in the mapped region (walked with
/// `GICR_TYPER.Last`), at most [`MAX_CPUS`].
pub fn rd_frames() -> alloc::vec::Vec<RdFrame> {
    let base = REDIST.load(Ordering::Acquire);
    let size = REDIST_SIZE.load(Ordering::Relaxed);
    let mut out = alloc::vec::Vec::new();
    let mut at = base;
    while base != 0 && at + 2 * SGI_BASE_OFFSET <= base + size && out.len() < MAX_CPUS {
        let typer = read64(at + GICR_TYPER);
        let frame = RdFrame {
            base: at,
            vlpis: typer & GICR_TYPER_VLPIS != 0,
        };
        if at + frame.size() > base + size {
            break;
        }
        out.push(frame);
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        at += frame.size();
    }
    out
}

/// This CPU's redistributor `SGI_base`, found by its affinity.
fn sgi_base() -> Option<u64> {
    let cpu = sysreg::cpu_index().min(MAX_CPUS - 1);
    match SGI_BASE[cpu].load(Ordering::Relaxed) {
        0 => {}
        1 => return None,
        b => return Some(b),
    }
    let base = REDIST.load(Ordering::Acquire);
    let size = REDIST_SIZE.load(Ordering::Relaxed);
    let mpidr = percpu::get(cpu).map(|c| c.mpidr())?;
    // GICR_TYPER[63:32]: Aff3.Aff2.Aff1.Aff0.
    let want = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    let mut found = 1;
    let mut at = base;
    while base != 0 && at + 2 * SGI_BASE_OFFSET <= base + size {
        let typer = read64(at + GICR_TYPER);
        if typer >> 32 == want {
            found = at + SGI_BASE_OFFSET;
            break;
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        at += if typer & GICR_TYPER_VLPIS != 0 {
            4 * SGI_BASE_OFFSET
        } else {
            2 * SGI_BASE_OFFSET
        };
    }
    SGI_BASE[cpu].store(found, Ordering::Relaxed);
    (found != 1).then_some(found)
}

/// Makes sure this CPU's EL2 physical timer interrupt (PPI 26), the GIC
/// maintenance interrupt (PPI 25) and the virtual timer's PPI 27 are
/// group 1 and enabled while a guest runs, so the host's deadline, the
/// virtual CPU interface and the guest's own timer can end a guest run
/// (a host that never enabled PPI 27 — one that does not use its timer's
/// interrupt — gets it disabled again by [`restore_vtimer_ppi`]).
/// Returns whether PPI 27 was enabled before, or `None` when it could not
/// (no GICv3 redistributor for this CPU).
pub fn enable_el2_ppis() -> Option<bool> {
    let sgi = sgi_base()?;
    let bit = (1u32 << HYP_TIMER_PPI) | (1u32 << MAINTENANCE_PPI) | (1u32 << VTIMER_PPI);
    let group = read32(sgi + GICR_IGROUPR0);
    if group & bit != bit {
        write32(sgi + GICR_IGROUPR0, group | bit);
    }
    let was = read32(sgi + GICR_ISENABLER0) & (1 << VTIMER_PPI) != 0;
    write32(sgi + GICR_ISENABLER0, bit);
    Some(was)
}

/// Disables PPI 27 again for a host that had it disabled.
pub fn restore_vtimer_ppi(was_enabled: bool) {
    if let (false, Some(sgi)) = (was_enabled, sgi_base()) {
        write32(sgi + GICR_ICENABLER0, 1 << VTIMER_PPI);
    }
}

/// Makes the physical virtual-timer PPI active (`true`) or not, in this
/// CPU's redistributor: active while the guest's timer interrupt is with
/// the guest (a hardware-mapped list register), so it does not fire at
/// el2 again. Returns whether it could.
pub fn set_timer_active(active: bool) -> bool {
    let Some(sgi) = sgi_base() else {
        return false;
    };
    let reg = if active {
        GICR_ISACTIVER0
    } else {
        GICR_ICACTIVER0
    };
    write32(sgi + reg, 1 << VTIMER_PPI);
    true
}

/// List registers of this CPU's virtual CPU interface
/// (`ICH_VTR_EL2.ListRegs` + 1).
pub fn nr_lrs() -> usize {
    ((mrs!("ich_vtr_el2") & 0x1f) + 1) as usize
}

/// Writes `ICH_LR<n>_EL2`.
fn write_lr(n: usize, v: u64) {
    macro_rules! lr {
        ($($i:literal => $r:literal),*) => {
            match n {
                // SAFETY: list register `n` exists (n < ICH_VTR_EL2's
                // count, checked by the callers); it only shapes what the
                // guest's virtual CPU interface shows.
                $($i => unsafe { msr!($r, v) },)*
                _ => {}
            }
        };
    }
    lr!(0 => "ich_lr0_el2", 1 => "ich_lr1_el2", 2 => "ich_lr2_el2", 3 => "ich_lr3_el2",
        4 => "ich_lr4_el2", 5 => "ich_lr5_el2", 6 => "ich_lr6_el2", 7 => "ich_lr7_el2",
        8 => "ich_lr8_el2", 9 => "ich_lr9_el2", 10 => "ich_lr10_el2", 11 => "ich_lr11_el2",
        12 => "ich_lr12_el2", 13 => "ich_lr13_el2", 14 => "ich_lr14_el2", 15 => "ich_lr15_el2");
}

/// Reads `ICH_LR<n>_EL2`.
fn read_lr(n: usize) -> u64 {
    macro_rules! lr {
        ($($i:literal => $r:literal),*) => {
            match n {
                $($i => mrs!($r),)*
                _ => 0,
            }
        };
    }
    lr!(0 => "ich_lr0_el2", 1 => "ich_lr1_el2", 2 => "ich_lr2_el2", 3 => "ich_lr3_el2",
        4 => "ich_lr4_el2", 5 => "ich_lr5_el2", 6 => "ich_lr6_el2", 7 => "ich_lr7_el2",
        8 => "ich_lr8_el2", 9 => "ich_lr9_el2", 10 => "ich_lr10_el2", 11 => "ich_lr11_el2",
        12 => "ich_lr12_el2", 13 => "ich_lr13_el2", 14 => "ich_lr14_el2", 15 => "ich_lr15_el2")
}

/// Loads the list registers and `ICH_HCR_EL2` the core prepared, clearing
/// the unused ones (`nr` = the CPU's list registers).
pub fn write_lrs(regs: &ListRegs, nr: usize) {
    let used = (regs.used as usize).min(nr);
    for n in 0..nr {
        write_lr(n, if n < used { regs.lr[n] } else { 0 });
    }
    // SAFETY: as `write_lr`: the guest's virtual CPU interface control.
    unsafe { msr!("ich_hcr_el2", regs.hcr) };
}

/// Reads back the list registers in use after an exit.
pub fn read_lrs(regs: &mut ListRegs) {
    for n in 0..(regs.used as usize).min(regs.lr.len()) {
        regs.lr[n] = read_lr(n);
    }
}

/// Loads a vCPU's virtual CPU interface state.
pub fn load(regs: &GicCpuRegs) {
    // SAFETY: the ICH_* registers exist (GICv3 system registers, checked
    // by the caller) and only shape the virtual CPU interface EL1 sees
    // while a guest runs (HCR_EL2.IMO/FMO set); the host does not use it.
    unsafe {
        msr!("ich_vmcr_el2", regs.vmcr);
        msr!("ich_ap0r0_el2", regs.ap0r0);
        msr!("ich_ap1r0_el2", regs.ap1r0);
        msr!("ich_hcr_el2", 0u64);
    }
}

/// Saves a vCPU's virtual CPU interface state and leaves the interface
/// disabled, its list registers empty, for the host.
pub fn save(regs: &mut GicCpuRegs) {
    regs.vmcr = mrs!("ich_vmcr_el2");
    regs.ap0r0 = mrs!("ich_ap0r0_el2");
    regs.ap1r0 = mrs!("ich_ap1r0_el2");
    for n in 0..nr_lrs().min(regs.lrs.lr.len()) {
        write_lr(n, 0);
    }
    // SAFETY: as in `load`; zero disables the virtual CPU interface.
    unsafe {
        msr!("ich_hcr_el2", 0u64);
        msr!("ich_ap0r0_el2", 0u64);
        msr!("ich_ap1r0_el2", 0u64);
    }
}
