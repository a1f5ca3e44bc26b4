//! Per-VM state at EL2: the vCPUs' contexts and what each waits for. It
//! lives in the metadata page the host donates at VM creation (pKVM does
//! the same), not on the hypervisor's heap.

use super::arch::{PSTATE_EL1H_MASKED, VcpuContext};
use ownership::{ConversionKind, GuestHandle};

/// Most vCPUs per VM.
pub const MAX_VCPUS: usize = 8;
/// Pages the host donates for a VM's metadata.
pub const META_PAGES: u64 = 1;

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
    },
    /// A hypercall handed to the host; its answer comes with the next run.
    Hypercall,
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

/// One vCPU.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct VcpuState {
    /// Registers.
    pub ctx: VcpuContext,
    /// `VcpuInit` was called.
    pub initialized: bool,
    /// Running on some CPU now.
    pub running: bool,
    /// What its last exit left pending.
    pub waiting: Waiting,
}

/// One VM.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct VmState {
    /// The guest's handle.
    pub handle: GuestHandle,
    /// vCPUs the VM was created with.
    pub vcpu_count: usize,
    /// The vCPUs.
    pub vcpus: [VcpuState; MAX_VCPUS],
}

const _: () = assert!(core::mem::size_of::<VmState>() <= (META_PAGES * 4096) as usize);

impl VmState {
    /// A VM with `vcpu_count` uninitialised vCPUs.
    pub fn new(handle: GuestHandle, vcpu_count: usize) -> VmState {
        VmState {
            handle,
            vcpu_count,
            vcpus: [VcpuState::default(); MAX_VCPUS],
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
    /// Sets the entry point and x0, as `VcpuInit` does.
    pub fn init(&mut self, entry: u64, x0: u64) {
        self.ctx = VcpuContext {
            pc: entry,
            pstate: PSTATE_EL1H_MASKED,
            ..VcpuContext::default()
        };
        self.ctx.x[0] = x0;
        self.initialized = true;
        self.waiting = Waiting::Nothing;
    }
}
