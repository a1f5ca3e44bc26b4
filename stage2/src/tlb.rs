//! TLB maintenance and barriers, behind a trait so host tests can record
//! and check the exact sequence.
//!
//! The sequences follow Linux's nVHE hypervisor (`__kvm_tlb_flush_vmid_ipa`
//! and `__kvm_tlb_flush_vmid`, pkvm.md §5.6):
//!
//! - by IPA: `dsb ishst`, switch to the table's VMID, `tlbi ipas2e1is` for
//!   each IPA, `dsb ish`, `tlbi vmalle1is`, `dsb ish`, `isb`, switch back.
//!   The stage-2 invalidation must complete before the stage-1 one, or
//!   another CPU could refill a combined stage-1+2 entry from the old
//!   stage-2.
//! - whole VMID: `dsb ishst`, switch, `tlbi vmalls12e1is`, `dsb ish`,
//!   `isb`, switch back.

use crate::addr::Ipa;
use crate::level::Level;

/// The TLB and barrier instructions stage-2 maintenance needs. The
/// [`Stage2`](crate::Stage2) code decides the order; implementations only
/// execute (or record) single instructions.
pub trait TlbMaintenance {
    /// `dsb ishst`: make earlier descriptor stores visible to table walkers.
    fn dsb_ishst(&mut self);
    /// `dsb ish`: wait for earlier TLB maintenance to complete.
    fn dsb_ish(&mut self);
    /// `isb`.
    fn isb(&mut self);
    /// `tlbi ipas2e1is`: invalidate stage-2 entries for `ipa` in the current
    /// VMID, inner shareable, with `level` as the TTL hint when known.
    fn tlbi_ipas2e1is(&mut self, ipa: Ipa, level: Option<Level>);
    /// `tlbi vmalle1is`: invalidate stage-1 entries of the current VMID.
    fn tlbi_vmalle1is(&mut self);
    /// `tlbi vmalls12e1is`: invalidate stage-1 and stage-2 entries of the
    /// current VMID.
    fn tlbi_vmalls12e1is(&mut self);
    /// Makes `vttbr` (the root and VMID of the table being maintained) the
    /// current stage-2 context for the TLBIs that follow, returning the
    /// previous context for [`restore_vttbr`](Self::restore_vttbr).
    fn switch_vttbr(&mut self, vttbr: u64) -> u64;
    /// Restores the context returned by `switch_vttbr`.
    fn restore_vttbr(&mut self, previous: u64);
}

/// The real instructions, for code running at EL2.
#[cfg(target_arch = "aarch64")]
pub mod arm {
    use super::TlbMaintenance;
    use crate::addr::Ipa;
    use crate::level::Level;
    use core::arch::asm;

    /// Executes TLB maintenance and barriers on the current CPU. Only
    /// meaningful at EL2.
    #[derive(Debug, Default)]
    pub struct ArmTlb;

    impl TlbMaintenance for ArmTlb {
        fn dsb_ishst(&mut self) {
            // SAFETY: a barrier has no memory-safety effect.
            unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        }

        fn dsb_ish(&mut self) {
            // SAFETY: a barrier has no memory-safety effect.
            unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
        }

        fn isb(&mut self) {
            // SAFETY: a barrier has no memory-safety effect.
            unsafe { asm!("isb", options(nostack, preserves_flags)) };
        }

        fn tlbi_ipas2e1is(&mut self, ipa: Ipa, level: Option<Level>) {
            // Xt: IPA[55:12] in bits 43:0, TTL in bits 47:44 (0b01xx for a
            // 4 KiB granule with the level in xx; 0 = no hint). The hint is
            // only architecturally meaningful with FEAT_TTL and is ignored
            // otherwise.
            let ttl = match level {
                Some(l) if l.get() >= 1 => 0b0100 | l.get() as u64,
                _ => 0,
            };
            let arg = ((ipa.get() >> 12) & ((1 << 44) - 1)) | (ttl << 44);
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe { asm!("tlbi ipas2e1is, {}", in(reg) arg, options(nostack, preserves_flags)) };
        }

        fn tlbi_vmalle1is(&mut self) {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
        }

        fn tlbi_vmalls12e1is(&mut self) {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
        }

        fn switch_vttbr(&mut self, vttbr: u64) -> u64 {
            let previous: u64;
            // SAFETY: reading VTTBR_EL2 has no side effect.
            unsafe { asm!("mrs {}, vttbr_el2", out(reg) previous, options(nostack, nomem)) };
            if previous != vttbr {
                // SAFETY: at EL2 with the host or guest not running on this
                // CPU (we are in the hypervisor), VTTBR_EL2 only selects the
                // VMID that TLB maintenance acts on; it is restored after.
                unsafe { asm!("msr vttbr_el2, {}", "isb", in(reg) vttbr, options(nostack)) };
            }
            previous
        }

        fn restore_vttbr(&mut self, previous: u64) {
            let current: u64;
            // SAFETY: reading VTTBR_EL2 has no side effect.
            unsafe { asm!("mrs {}, vttbr_el2", out(reg) current, options(nostack, nomem)) };
            if current != previous {
                // SAFETY: restores the value `switch_vttbr` found.
                unsafe { asm!("msr vttbr_el2, {}", "isb", in(reg) previous, options(nostack)) };
            }
        }
    }
}

/// A [`TlbMaintenance`] that records every call, for host tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod record {
    extern crate std;
    use super::TlbMaintenance;
    use crate::addr::Ipa;
    use crate::level::Level;
    use std::vec::Vec;

    /// One recorded instruction.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum TlbOp {
        /// `dsb ishst`
        DsbIshst,
        /// `dsb ish`
        DsbIsh,
        /// `isb`
        Isb,
        /// `tlbi ipas2e1is` with its TTL hint.
        Ipas2e1is(Ipa, Option<Level>),
        /// `tlbi vmalle1is`
        Vmalle1is,
        /// `tlbi vmalls12e1is`
        Vmalls12e1is,
        /// VTTBR switched to this value.
        Switch(u64),
        /// VTTBR restored to this value.
        Restore(u64),
    }

    /// Records every instruction in order.
    #[derive(Debug, Default)]
    pub struct RecordingTlb {
        /// The instructions issued so far.
        pub ops: Vec<TlbOp>,
        current: u64,
    }

    /// Issues nothing: for benchmarks, where recording would add
    /// allocation to the timings (the host has no stage-2 TLB).
    #[derive(Debug, Default, Clone, Copy)]
    pub struct NoopTlb;

    impl TlbMaintenance for NoopTlb {
        #[inline]
        fn dsb_ishst(&mut self) {}
        #[inline]
        fn dsb_ish(&mut self) {}
        #[inline]
        fn isb(&mut self) {}
        #[inline]
        fn tlbi_ipas2e1is(&mut self, _ipa: Ipa, _level: Option<Level>) {}
        #[inline]
        fn tlbi_vmalle1is(&mut self) {}
        #[inline]
        fn tlbi_vmalls12e1is(&mut self) {}
        #[inline]
        fn switch_vttbr(&mut self, vttbr: u64) -> u64 {
            vttbr
        }
        #[inline]
        fn restore_vttbr(&mut self, _previous: u64) {}
    }

    impl RecordingTlb {
        /// An empty recorder.
        pub fn new() -> RecordingTlb {
            RecordingTlb::default()
        }

        /// Takes the recorded instructions, leaving the log empty.
        pub fn take(&mut self) -> Vec<TlbOp> {
            core::mem::take(&mut self.ops)
        }
    }

    impl TlbMaintenance for RecordingTlb {
        fn dsb_ishst(&mut self) {
            self.ops.push(TlbOp::DsbIshst);
        }
        fn dsb_ish(&mut self) {
            self.ops.push(TlbOp::DsbIsh);
        }
        fn isb(&mut self) {
            self.ops.push(TlbOp::Isb);
        }
        fn tlbi_ipas2e1is(&mut self, ipa: Ipa, level: Option<Level>) {
            self.ops.push(TlbOp::Ipas2e1is(ipa, level));
        }
        fn tlbi_vmalle1is(&mut self) {
            self.ops.push(TlbOp::Vmalle1is);
        }
        fn tlbi_vmalls12e1is(&mut self) {
            self.ops.push(TlbOp::Vmalls12e1is);
        }
        fn switch_vttbr(&mut self, vttbr: u64) -> u64 {
            self.ops.push(TlbOp::Switch(vttbr));
            core::mem::replace(&mut self.current, vttbr)
        }
        fn restore_vttbr(&mut self, previous: u64) {
            self.ops.push(TlbOp::Restore(previous));
            self.current = previous;
        }
    }
}
