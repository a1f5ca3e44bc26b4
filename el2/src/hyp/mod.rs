//! The hypervisor core: host call dispatch, guest call handling, VM and
//! vCPU lifecycle, and the exits the host sees — arch-neutral, so the same
//! code runs at EL2 and in `cargo test`.
//!
//! # Locks
//!
//! `vms` (the VM table and every VM's metadata) is taken before any lock of
//! the [`Ownership`] state (which has its own order: guests, host,
//! hypervisor, guest). A vCPU runs with no lock held: its context is copied
//! out under `vms`, the vCPU is marked running, and the context is copied
//! back when it exits.

pub mod arch;
pub mod guest_call;
pub mod host_call;
pub mod vgic;
pub mod vm;

use arch::Arch;
use core::sync::atomic::{AtomicBool, Ordering};
use host_interface::abi::Exit;
use ownership::state::MAX_GUESTS;
use ownership::{Errno, GuestHandle, HypMappings, Ownership, PhysMem};
use spin::Mutex;
use stage2::{PhysAddr, TablePool};
use vm::VmState;

/// The VM table: where each guest's metadata page is.
pub(crate) struct VmTable {
    slots: [Option<PhysAddr>; MAX_GUESTS],
}

/// The hypervisor: memory ownership plus VMs and vCPUs.
pub struct Hypervisor<M: PhysMem, P: TablePool, H: HypMappings> {
    /// Who owns which page, and every stage-2.
    pub mem: Ownership<M, P, H>,
    vms: Mutex<VmTable>,
    finalized: AtomicBool,
}

/// How the host completes a vCPU's last exit when it runs it again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Completion {
    /// Values: an MMIO read's data (`[value, _]`) or a hypercall's x0, x1.
    Values([u64; 2]),
    /// The host cannot map what a guest hypercall faulted on: the call
    /// fails with INVALID_PARAMETER.
    Fail,
}

/// What a host call returns: `x1` and the values for `x2`..`x6`.
pub type CallResult = Result<[u64; 5], Errno>;

impl<M: PhysMem, P: TablePool, H: HypMappings> Hypervisor<M, P, H> {
    /// A hypervisor over `mem`, with no VMs, not finalised.
    pub fn new(mem: Ownership<M, P, H>) -> Self {
        Hypervisor {
            mem,
            vms: Mutex::new(VmTable {
                slots: [None; MAX_GUESTS],
            }),
            finalized: AtomicBool::new(false),
        }
    }

    /// Whether the init-only calls are sealed.
    pub fn is_finalized(&self) -> bool {
        self.finalized.load(Ordering::Acquire)
    }

    /// `VTTBR_EL2` and `VTCR_EL2` of the host's stage-2.
    pub fn host_mmu(&self) -> (u64, u64) {
        self.mem
            .with_host(|h| (h.stage2().vttbr(), h.stage2().vtcr()))
    }

    /// Runs `f` on the metadata of VM `handle` with the VM table locked.
    pub(crate) fn with_vm<R>(
        &self,
        handle: GuestHandle,
        f: impl FnOnce(&mut VmState) -> R,
    ) -> Result<R, Errno> {
        let table = self.vms.lock();
        let pa = slot_of(handle)
            .and_then(|i| table.slots[i])
            .ok_or(Errno::Einval)?;
        // SAFETY: `pa` is the metadata page donated for this VM at creation:
        // hypervisor-owned, holding a `VmState` written then, and only
        // reached through the VM table, whose lock is held.
        let vm = unsafe { &mut *self.mem.mem().page_ptr(pa).cast::<VmState>().as_ptr() };
        Ok(f(vm))
    }

    /// The VM table, locked, for creation and teardown.
    pub(crate) fn vm_table(&self) -> spin::MutexGuard<'_, VmTable> {
        self.vms.lock()
    }

    pub(crate) fn seal(&self) {
        self.finalized.store(true, Ordering::Release);
    }

    /// The exit a VM's vCPU would give now, for tests: runs nothing.
    pub fn vcpu_waiting(&self, handle: GuestHandle, vcpu: usize) -> Result<vm::Waiting, Errno> {
        self.with_vm(handle, |vm| vm.vcpus.get(vcpu).map(|v| v.waiting))?
            .ok_or(Errno::Einval)
    }

    /// The power state of a VM's vCPU, for tests.
    pub fn vcpu_power(&self, handle: GuestHandle, vcpu: usize) -> Result<vm::Power, Errno> {
        self.with_vm(handle, |vm| vm.vcpus.get(vcpu).map(|v| v.power))?
            .ok_or(Errno::Einval)
    }

    /// Runs one vCPU; see [`host_call`] for the protocol.
    pub fn run_vcpu<A: Arch>(
        &self,
        arch: &mut A,
        handle: GuestHandle,
        vcpu: usize,
        complete: Option<Completion>,
    ) -> Result<Exit, Errno> {
        guest_call::run(self, arch, handle, vcpu, complete)
    }
}

impl VmTable {
    pub(crate) fn get(&self, handle: GuestHandle) -> Option<PhysAddr> {
        slot_of(handle).and_then(|i| self.slots[i])
    }

    pub(crate) fn set(&mut self, handle: GuestHandle, meta: Option<PhysAddr>) {
        if let Some(i) = slot_of(handle) {
            self.slots[i] = meta;
        }
    }
}

fn slot_of(handle: GuestHandle) -> Option<usize> {
    let i = handle.0.checked_sub(ownership::state::HANDLE_OFFSET)? as usize;
    (i < MAX_GUESTS).then_some(i)
}
