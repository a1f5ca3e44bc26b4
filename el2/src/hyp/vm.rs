//! Per-VM state at EL2: the vCPUs' contexts, their power state and what
//! each waits for. It lives in the metadata pages the host donates at VM
//! creation (pKVM does the same), not on the hypervisor's heap, so a
//! protected guest's registers are in hypervisor memory the host cannot
//! map.

use super::arch::VcpuContext;
use super::vgic::{Vgic, VgicCpu, VgicDist};
use ownership::{ConversionKind, GuestHandle};

/// Most vCPUs per VM.
pub const MAX_VCPUS: usize = 8;
/// Pages the host donates for a VM's metadata.
pub const META_PAGES: u64 = host_interface::abi::VM_META_PAGES;

/// What a vCPU's last exit left pending, resolved on its next run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Waiting {
    /// Nothing: run the guest.
    #[default]
    Nothing,
    /// The guest's MEM_SHARE/MEM_UNSHARE awaits the host's conversion.
    Conversion {
        /// Share or unshare.
        kind: ConversionKind,
        /// First gfn.
        gfn: u64,
        /// Pages.
        pages: u64,
        /// The host's answer, once given.
        outcome: Outcome,
    },
    /// A stage-2 fault the host may resolve by mapping memory (retry) or
    /// complete as MMIO.
    Fault {
        /// The syndrome describes the access, so it can be emulated.
        isv: bool,
        /// Raised for a guest hypercall that is retried (or failed with
        /// `RUN_FAIL_ACCESS`).
        hvc: bool,
        /// A read into `reg` (a write needs no value).
        read: bool,
        /// Register.
        reg: u8,
        /// Access size in bytes.
        size: u8,
        /// A read sign-extends the value.
        sign: bool,
        /// The register is 64 bits wide.
        wide: bool,
    },
    /// The guest's PSCI CPU_ON of vCPU `target` awaits the host's answer.
    CpuOn {
        /// The vCPU to start.
        target: usize,
    },
    /// The vCPU hit a trap nobody handles: it does not run again.
    Stopped,
}

/// The host's answer to a pending conversion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// Completed: the guest's call succeeds.
    Done,
    /// Refused or failed: the guest's call returns INVALID_PARAMETER.
    Refused,
}

/// Whether a vCPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Power {
    /// Off: never started, or it called CPU_OFF.
    #[default]
    Off,
    /// A CPU_ON for it awaits the host's answer.
    OnPending,
    /// On.
    On,
}

/// One vCPU.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct VcpuState {
    /// Registers.
    pub ctx: VcpuContext,
    /// Power state.
    pub power: Power,
    /// Running on some CPU now.
    pub running: bool,
    /// What its last exit left pending.
    pub waiting: Waiting,
    /// Entry point and context id of a pending CPU_ON of this vCPU.
    pub boot: (u64, u64),
}

/// One VM.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct VmState {
    /// The guest's handle.
    pub handle: GuestHandle,
    /// vCPUs the VM was created with.
    pub vcpu_count: usize,
    /// Some vCPU has run: the host may no longer set entry points.
    pub started: bool,
    /// The vCPUs.
    pub vcpus: [VcpuState; MAX_VCPUS],
    /// The virtual GIC's distributor.
    pub vgic_dist: VgicDist,
    /// The virtual GIC's redistributors, one per vCPU.
    pub vgic_cpus: [VgicCpu; MAX_VCPUS],
    /// The MMIO granules the guest guarded.
    pub mmio_guard: MmioGuard,
    /// The host's answer to the guest's pending conversion when it came
    /// while the vCPU that asked was still running (between the request
    /// and the save of its exit, on another CPU): that vCPU's save takes
    /// it, so the answer is never lost to the save's older copy. A guest
    /// has at most one conversion pending, so one slot suffices.
    pub unclaimed: Option<Outcome>,
}

/// Most disjoint runs of guarded MMIO pages a VM can have (neighbouring
/// pages merge into one run: a Linux guest needs a handful).
pub const MMIO_GUARD_RUNS: usize = 64;

/// The guest's MMIO guard (DESIGN §4, pKVM's MMIO_GUARD): once it has
/// guarded one granule, a stage-2 fault elsewhere outside its memory no
/// longer reaches the host as an emulatable MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct MmioGuard {
    /// Guarded runs `[first gfn, end gfn)`, `count` of them used.
    pub runs: [(u64, u64); MMIO_GUARD_RUNS],
    /// Runs in use.
    pub count: usize,
}

impl Default for MmioGuard {
    fn default() -> MmioGuard {
        MmioGuard {
            runs: [(0, 0); MMIO_GUARD_RUNS],
            count: 0,
        }
    }
}

impl MmioGuard {
    /// Whether the guest has guarded anything (the guard is on).
    pub fn active(&self) -> bool {
        self.count > 0
    }

    /// Whether `gfn` is guarded.
    pub fn contains(&self, gfn: u64) -> bool {
        self.runs[..self.count]
            .iter()
            .any(|&(s, e)| s <= gfn && gfn < e)
    }

    /// Guards `gfn`; `false` when the runs are all used.
    pub fn insert(&mut self, gfn: u64) -> bool {
        if self.contains(gfn) {
            return true;
        }
        let n = self.count;
        let end = gfn + 1;
        if let Some(i) = self.runs[..n].iter().position(|r| r.1 == gfn) {
            self.runs[i].1 = end;
            // It may now touch the next run.
            if let Some(j) = self.runs[..n].iter().position(|r| r.0 == end) {
                self.runs[i].1 = self.runs[j].1;
                self.runs[j] = self.runs[n - 1];
                self.count -= 1;
            }
            return true;
        }
        if let Some(i) = self.runs[..n].iter().position(|r| r.0 == end) {
            self.runs[i].0 = gfn;
            return true;
        }
        if n == MMIO_GUARD_RUNS {
            return false;
        }
        self.runs[n] = (gfn, end);
        self.count += 1;
        true
    }
}

const _: () = assert!(core::mem::size_of::<VmState>() <= (META_PAGES * 4096) as usize);

impl VmState {
    /// A VM with `vcpu_count` vCPUs, all off.
    pub fn new(handle: GuestHandle, vcpu_count: usize) -> VmState {
        VmState {
            handle,
            vcpu_count,
            started: false,
            vcpus: [VcpuState::default(); MAX_VCPUS],
            vgic_dist: VgicDist::default(),
            vgic_cpus: [VgicCpu::default(); MAX_VCPUS],
            mmio_guard: MmioGuard::default(),
            unclaimed: None,
        }
    }

    /// The VM's virtual GIC.
    pub fn vgic(&mut self) -> Vgic<'_> {
        let n = self.vcpu_count.min(MAX_VCPUS);
        Vgic {
            dist: &mut self.vgic_dist,
            cpus: &mut self.vgic_cpus[..n],
        }
    }

    /// vCPU `index`, if the VM was created with it.
    pub fn vcpu_mut(&mut self, index: usize) -> Option<&mut VcpuState> {
        let count = self.vcpu_count;
        self.vcpus.get_mut(index).filter(|_| index < count)
    }

    /// Whether any vCPU is running now.
    pub fn any_running(&self) -> bool {
        self.vcpus.iter().any(|v| v.running)
    }
}

impl VcpuState {
    /// Resets the vCPU at `entry` with `x0` = `arg` and turns it on (the
    /// host's `VcpuInit`, or the guest's CPU_ON once the host agreed).
    pub fn power_on(&mut self, entry: u64, arg: u64) {
        self.ctx = VcpuContext::reset(entry, arg);
        self.power = Power::On;
        self.waiting = Waiting::Nothing;
        self.boot = (0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_granules_merge_into_runs() {
        let mut g = MmioGuard::default();
        assert!(!g.active());
        for gfn in [10, 12, 11, 20, 9] {
            assert!(g.insert(gfn));
        }
        assert_eq!(g.count, 2, "9..13 and 20");
        assert!(g.contains(9) && g.contains(12) && g.contains(20));
        assert!(!g.contains(13) && !g.contains(8) && !g.contains(19));
        assert!(g.insert(12), "again: nothing changes");
        assert_eq!(g.count, 2);
        // Every run used: another disjoint granule is refused.
        let mut g = MmioGuard::default();
        for i in 0..MMIO_GUARD_RUNS as u64 {
            assert!(g.insert(100 + 2 * i));
        }
        assert!(!g.insert(1000));
        assert!(g.insert(101), "joining two runs still fits");
        assert_eq!(g.count, MMIO_GUARD_RUNS - 1);
        assert!(g.insert(1000));
    }
}
