//! The GICv3, set up the way Linux does, so the physical CPU interface can
//! signal an interrupt to el2 while a guest runs (el2 carries the test
//! host's timer deadline on its own timer PPI and ends the guest's run
//! when it fires). The test host itself keeps PSTATE.I masked: it never
//! takes an interrupt.
//!
//! - Distributor (the device tree's `arm,gic-v3` `reg[0]`): `GICD_CTLR`
//!   = ARE | EnableGrp1 (| EnableGrp1A), written as Linux writes it, with
//!   a wait for `RWP` after each write.
//! - This CPU's redistributor (in `reg[1]`, the frame whose `GICR_TYPER`
//!   affinity matches `MPIDR_EL1`, frames 128 KiB apart — 256 KiB with
//!   VLPIS — until `GICR_TYPER.Last`): `GICR_WAKER.ProcessorSleep`
//!   cleared and `ChildrenAsleep` waited for; every SGI/PPI group 1
//!   (`GICR_IGROUPR0`) at priority 0xa0 (`GICR_IPRIORITYR`).
//! - CPU interface: `ICC_SRE_EL1.SRE` = 1, `ICC_PMR_EL1` = 0xff,
//!   `ICC_IGRPEN1_EL1` = 1.

use super::arch::{self, mrs, msr};

const GICD_CTLR: u64 = 0x0;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
const GICD_CTLR_ENABLE_G1: u32 = 1 << 0;
const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_WAKER: u64 = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const SGI_BASE: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_IPRIORITYR: u64 = 0x400;
/// Default priority of every SGI and PPI (Linux's GICD_INT_DEF_PRI).
const PRIORITY: u32 = 0xa0a0_a0a0;
/// How long a register wait may take.
const WAIT_US: u64 = 100_000;

fn read32(addr: u64) -> u32 {
    // SAFETY: a GIC register the device tree names, mapped Device in our
    // identity map (everything outside RAM is); reading has no effect on
    // memory.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn read64(addr: u64) -> u64 {
    // SAFETY: as `read32`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as `read32`; the registers written configure interrupt
    // delivery only.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Initialises the distributor at `dist`, this CPU's redistributor in
/// `[redist, redist + redist_size)` and its CPU interface. Returns what
/// went wrong, if anything.
pub fn init(dist: u64, redist: u64, redist_size: u64) -> Result<(), &'static str> {
    // Distributor: affinity routing first (groups disabled), then enable.
    let wait_rwp = || arch::wait_for(WAIT_US, || read32(dist + GICD_CTLR) & GICD_CTLR_RWP == 0);
    let ctlr = read32(dist + GICD_CTLR);
    if ctlr & GICD_CTLR_ARE == 0 {
        write32(dist + GICD_CTLR, GICD_CTLR_ARE);
        if !wait_rwp() {
            return Err("GICD_CTLR.RWP did not clear");
        }
    }
    write32(
        dist + GICD_CTLR,
        GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1,
    );
    if !wait_rwp() {
        return Err("GICD_CTLR.RWP did not clear");
    }
    // This CPU's redistributor.
    let mpidr = mrs!("mpidr_el1");
    let want = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    let mut rd = None;
    let mut at = redist;
    while at.saturating_add(2 * SGI_BASE) <= redist.saturating_add(redist_size) {
        let typer = read64(at + GICR_TYPER);
        if typer >> 32 == want {
            rd = Some(at);
            break;
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        at += if typer & GICR_TYPER_VLPIS != 0 {
            4 * SGI_BASE
        } else {
            2 * SGI_BASE
        };
    }
    let rd = rd.ok_or("no redistributor for this CPU's MPIDR")?;
    let waker = read32(rd + GICR_WAKER);
    write32(rd + GICR_WAKER, waker & !WAKER_PROCESSOR_SLEEP);
    if !arch::wait_for(WAIT_US, || {
        read32(rd + GICR_WAKER) & WAKER_CHILDREN_ASLEEP == 0
    }) {
        return Err("GICR_WAKER.ChildrenAsleep did not clear");
    }
    let sgi = rd + SGI_BASE;
    write32(sgi + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        write32(sgi + GICR_IPRIORITYR + 4 * i, PRIORITY);
    }
    // CPU interface: system registers, every priority unmasked, group 1
    // on.
    msr!("icc_sre_el1", mrs!("icc_sre_el1") | 1);
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
    if mrs!("icc_sre_el1") & 1 == 0 {
        return Err("ICC_SRE_EL1.SRE stays 0 (system register interface disabled at EL2)");
    }
    msr!("icc_pmr_el1", 0xff);
    msr!("icc_igrpen1_el1", 1);
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
    Ok(())
}
