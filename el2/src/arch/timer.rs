//! The generic timer around a guest run.
//!
//! A host that el2 enters at EL1 uses the EL1 virtual timer (`CNTV_*`,
//! PPI 27; guests-at-el2.md §5.3), and so does a guest. While a vCPU is
//! loaded the virtual timer is the guest's: the host's `CNTV_CTL_EL0` and
//! `CNTV_CVAL_EL0` are saved, and if its timer is armed (enabled, not
//! masked) its deadline moves to the EL2 physical timer (`CNTHP_*`, PPI
//! 26, which no EL1 host uses; host `CNTVOFF_EL2` is 0, so the two
//! counters agree). When the deadline passes while the guest runs, PPI 26
//! is a physical interrupt that `HCR_EL2.IMO` routes to el2: the run ends
//! ([`el2::hyp::arch::Trap::Interrupt`]), the host's virtual timer is put
//! back — already expired, so the host takes its own PPI 27 as soon as it
//! unmasks interrupts — and `CNTHP` is disabled again. The guest never
//! reads the host's timer state, and the host never loses a deadline.
//!
//! The guest's timer: `CNTVOFF_EL2`, `CNTV_CVAL_EL0`, `CNTV_CTL_EL0` are
//! loaded with the vCPU and saved with it (`CNTV_CTL_EL0` is then cleared
//! so the guest's timer cannot fire at the host). `CNTHCTL_EL2` lets the
//! guest read the physical counter but traps its physical timer
//! registers (`EL1PCEN` clear). The guest's timer interrupt reaches it
//! through the virtual GIC as PPI 27 ([`guest_line`] is sampled before
//! every entry; see `el2::hyp::vgic` and [`super::gic`]).

use el2::hyp::arch::TimerRegs;

use super::sysreg::{mrs, msr};

/// `CNTx_CTL.ENABLE`.
const CTL_ENABLE: u64 = 1 << 0;
/// `CNTx_CTL.IMASK`.
const CTL_IMASK: u64 = 1 << 1;
/// `CNTx_CTL.ISTATUS`.
const CTL_ISTATUS: u64 = 1 << 2;
/// `CNTHCTL_EL2` (E2H = 0): EL1PCTEN | EL1PCEN, the host's.
const CNTHCTL_HOST: u64 = 0b11;
/// `CNTHCTL_EL2` for a guest: EL1PCTEN only.
const CNTHCTL_GUEST: u64 = 0b01;

/// The host's timer while a guest has the CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostTimer {
    ctl: u64,
    cval: u64,
}

/// Saves the host's virtual timer, carries its deadline on the EL2
/// physical timer (when `ppis`: its interrupt is enabled in this CPU's
/// redistributor, [`super::gic::enable_el2_ppis`]), and loads the guest's.
pub fn load(guest: &TimerRegs, ppis: bool) -> HostTimer {
    let host = HostTimer {
        ctl: mrs!("cntv_ctl_el0"),
        cval: mrs!("cntv_cval_el0"),
    };
    let armed = host.ctl & CTL_ENABLE != 0 && host.ctl & CTL_IMASK == 0;
    if armed && ppis {
        // SAFETY: the EL2 physical timer is el2's own; its interrupt only
        // ends the guest run (HCR_EL2.IMO while the guest runs).
        unsafe {
            msr!("cnthp_cval_el2", host.cval);
            msr!("cnthp_ctl_el2", CTL_ENABLE);
        }
    }
    // SAFETY: the virtual timer now belongs to the guest: the host's
    // state is saved above and restored by `put`. CNTHCTL_EL2 only
    // changes what EL1 may access.
    unsafe {
        msr!("cntv_ctl_el0", 0u64);
        msr!("cnthctl_el2", CNTHCTL_GUEST);
        msr!("cntvoff_el2", guest.offset);
        msr!("cntv_cval_el0", guest.cval);
        msr!("cntv_ctl_el0", guest.ctl & (CTL_ENABLE | CTL_IMASK));
    }
    host
}

/// The loaded guest's timer output: enabled, not masked, condition met
/// (`CNTV_CTL_EL0.ISTATUS`).
pub fn guest_line() -> bool {
    let ctl = mrs!("cntv_ctl_el0");
    ctl & CTL_ENABLE != 0 && ctl & CTL_IMASK == 0 && ctl & CTL_ISTATUS != 0
}

/// Saves the guest's virtual timer and gives the host its own back.
pub fn put(guest: &mut TimerRegs, host: HostTimer) {
    guest.ctl = mrs!("cntv_ctl_el0");
    guest.cval = mrs!("cntv_cval_el0");
    // SAFETY: restores the host's timer state saved by `load` and stops
    // the EL2 physical timer; nothing at EL2 uses either.
    unsafe {
        msr!("cntv_ctl_el0", 0u64);
        msr!("cnthp_ctl_el2", 0u64);
        msr!("cntvoff_el2", 0u64);
        msr!("cnthctl_el2", CNTHCTL_HOST);
        msr!("cntv_cval_el0", host.cval);
        msr!("cntv_ctl_el0", host.ctl & (CTL_ENABLE | CTL_IMASK));
    }
}
