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
//! interface state. Virtual interrupt delivery (list registers) is not
//! done yet: `ICH_HCR_EL2` stays 0 (the virtual CPU interface signals
//! nothing), and a guest's ICC accesses reach only its own ICV state.

use core::sync::atomic::{AtomicU64, Ordering};

use el2::hyp::arch::GicCpuRegs;

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

const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_TYPER_LAST: u64 = 1 << 4;
const SGI_BASE_OFFSET: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_ISENABLER0: u64 = 0x100;

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

/// Makes sure this CPU's EL2 physical timer interrupt (PPI 26) is group 1
/// and enabled, so the host's deadline can end a guest run. Returns
/// whether it could (a GICv3 with this CPU's redistributor mapped).
pub fn enable_hyp_timer_ppi() -> bool {
    let Some(sgi) = sgi_base() else {
        return false;
    };
    let bit = 1u32 << HYP_TIMER_PPI;
    let group = read32(sgi + GICR_IGROUPR0);
    if group & bit == 0 {
        write32(sgi + GICR_IGROUPR0, group | bit);
    }
    write32(sgi + GICR_ISENABLER0, bit);
    true
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
/// disabled for the host.
pub fn save(regs: &mut GicCpuRegs) {
    regs.vmcr = mrs!("ich_vmcr_el2");
    regs.ap0r0 = mrs!("ich_ap0r0_el2");
    regs.ap1r0 = mrs!("ich_ap1r0_el2");
    // SAFETY: as in `load`; zero disables the virtual CPU interface.
    unsafe {
        msr!("ich_hcr_el2", 0u64);
        msr!("ich_ap0r0_el2", 0u64);
        msr!("ich_ap1r0_el2", 0u64);
    }
}
