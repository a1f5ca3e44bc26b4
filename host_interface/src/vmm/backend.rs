//! The VM backend the VMM runs over: crosvm's shape ([`crate::vm::Vm`]
//! plus the vCPU and device calls a protected guest needs), so the same
//! run loop, devices, loading and device tree run over any host.
//!
//! Two implementations:
//!
//! - [`KvmVm`] (here): the VM layer over the hypervisor's host calls, as
//!   the built-in test host (real HVCs) and the host tests (the simulated
//!   machine) run it. It has the host's physical view too, so it verifies
//!   the teardown ([`super::teardown`]) and probes backing frames
//!   directly ([`VmBackend::probe`]).
//! - `pkvm-vmm`'s `LinuxVm` (`host_interface/linux-vmm/`): the ioctls of
//!   the Linux host driver (`host_interface/driver/pkvm_rs_uapi.h`) from
//!   userspace. It cannot see host-physical memory: its teardown is
//!   [`Teardown::Closed`], and it probes through the guest_memfd mapping.
//!
//! | what the VMM does | trait method | [`KvmVm`] | Linux driver |
//! |---|---|---|---|
//! | create RAM | [`Vm::create_guest_memfd`] | in-process guest_memfd model | `KVM_CREATE_GUEST_MEMFD` + `mmap` |
//! | bind it | [`Vm::set_memory_region`] | memslot | `KVM_SET_USER_MEMORY_REGION2` |
//! | convert | [`Vm::set_memory_attributes`] (`error_offset`) | conversion + `ConvertComplete` | `KVM_SET_MEMORY_ATTRIBUTES2` |
//! | read/write shared RAM | [`VmBackend::gmem_read`], [`VmBackend::gmem_write`] | the host's mapping of the backing pages | the guest_memfd mapping |
//! | punch | [`VmBackend::gmem_punch_hole`] | free the backing | `fallocate(PUNCH_HOLE)` |
//! | boot vCPU | [`VmBackend::init_boot_vcpu`] | `VcpuInit` | `KVM_SET_ONE_REG` PC, X0 |
//! | an SPI | [`VmBackend::set_irq_line`] | `IrqLine` | `KVM_IRQ_LINE` |
//! | run | [`VmBackend::run_vcpu`] | `VcpuRun` loop | `KVM_RUN` + the run page |
//! | complete an exit | [`VmBackend::set_mmio_data`], [`VmBackend::set_hypercall_result`] | next `VcpuRun`'s arguments | the run page |
//! | probe a frame | [`VmBackend::probe`] | read the backing frame directly | read through the mapping |
//! | destroy | [`VmBackend::destroy`] | verified teardown | close every fd |

use crate::gmem::{MmapError, PAGE};
use crate::hypervisor::{CallError, Hypervisor};
use crate::kvm::errno;
use crate::vm::{GmemId, HostPages, KvmVm, UnhandledAccess, Vcpu, VcpuExit, Vm};

use super::teardown::{self, HostStats, Teardown, TeardownError};

/// What [`VmBackend::probe`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Probe {
    /// The host read the page.
    Read,
    /// The access was refused (an injected abort, or SIGBUS/`EFAULT`
    /// from the host kernel).
    Refused,
    /// Nothing backs that offset.
    Unbacked,
}

/// A protected VM as the VMM drives it (crosvm's `Vm` and `Vcpu`, the
/// parts guest_memfd and a protected guest need; vCPUs by index).
///
/// Errors are positive errno values, as KVM's ioctls give them.
pub trait VmBackend: Vm {
    /// What destroying the VM hands back ([`KvmVm`]: its conduit and
    /// page allocator).
    type Remains;

    /// The size of guest_memfd `gmem`, if it exists.
    fn gmem_size(&self, gmem: GmemId) -> Option<u64>;

    /// Reads `buf.len()` bytes at `offset` of `gmem` through its mapping
    /// (a private page is SIGBUS: an error, never a crash).
    fn gmem_read(&mut self, gmem: GmemId, offset: u64, buf: &mut [u8]) -> Result<(), MmapError>;

    /// Writes `data` at `offset` of `gmem` through its mapping.
    fn gmem_write(&mut self, gmem: GmemId, offset: u64, data: &[u8]) -> Result<(), MmapError>;

    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` on `[offset, offset + len)`.
    fn gmem_punch_hole(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32>;

    /// Whether guest memory is backed by 2 MiB folios that the loader
    /// should allocate whole ([`VmBackend::gmem_allocate`]) before
    /// writing into them. The default: no (the host kernel chooses).
    fn huge_folios(&self) -> bool {
        false
    }

    /// `fallocate(0)` on `[offset, offset + len)`: backs the range
    /// without changing it. The default does nothing (a hint only).
    fn gmem_allocate(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        let _ = (gmem, offset, len);
        Ok(())
    }

    /// Sets the boot vCPU's (vCPU 0's) PC and `x0`, before the first run.
    fn init_boot_vcpu(&mut self, pc: u64, x0: u64) -> Result<(), i32>;

    /// Drives SPI `intid` (32..) of the VM's interrupt controller.
    fn set_irq_line(&mut self, intid: u32, high: bool) -> Result<(), i32>;

    /// Runs vCPU `index` until an exit the VMM must see.
    fn run_vcpu(&mut self, index: usize) -> Result<VcpuExit, i32>;

    /// The value the MMIO read of vCPU `index`'s last exit returns.
    fn set_mmio_data(&mut self, index: usize, value: u64);

    /// The guest's x0 and x1 after vCPU `index`'s hypercall exit.
    fn set_hypercall_result(&mut self, index: usize, x0: u64, x1: u64);

    /// The guest access that made the last failed run fail, if the
    /// backend knows it. The default: unknown.
    fn unhandled_access(&self) -> Option<UnhandledAccess> {
        None
    }

    /// The host's most direct read of the page at `offset` of `gmem`
    /// (the test device's `PROBE_PHYS`): [`KvmVm`] reads the backing
    /// frame through the host's own mapping, bypassing the guest_memfd's
    /// checks; a userspace backend has only the guest_memfd mapping.
    fn probe(&mut self, gmem: GmemId, offset: u64) -> Probe;

    /// Destroys the VM. `baseline` is [`HostStats`] as read before the VM
    /// was created, for a backend that can verify the teardown against
    /// it. Returns the verdict and, unless the teardown failed, what the
    /// VM leaves.
    fn destroy(
        self,
        baseline: Option<HostStats>,
    ) -> (Result<Teardown, TeardownError>, Option<Self::Remains>);
}

fn call_errno(e: CallError) -> i32 {
    match e {
        CallError::NotSupported => errno::EINVAL,
        CallError::Errno(n) => i32::try_from(n).unwrap_or(errno::EINVAL),
    }
}

impl<H: Hypervisor, A: HostPages> VmBackend for KvmVm<H, A> {
    type Remains = (H, A);

    fn gmem_size(&self, gmem: GmemId) -> Option<u64> {
        self.gmem(gmem).map(|g| g.size())
    }

    fn gmem_read(&mut self, gmem: GmemId, offset: u64, buf: &mut [u8]) -> Result<(), MmapError> {
        KvmVm::gmem_read(self, gmem, offset, buf)
    }

    fn gmem_write(&mut self, gmem: GmemId, offset: u64, data: &[u8]) -> Result<(), MmapError> {
        KvmVm::gmem_write(self, gmem, offset, data)
    }

    fn gmem_punch_hole(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        KvmVm::gmem_punch_hole(self, gmem, offset, len)
    }

    fn huge_folios(&self) -> bool {
        KvmVm::huge_folios(self)
    }

    fn gmem_allocate(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        KvmVm::gmem_allocate(self, gmem, offset, len)
    }

    fn init_boot_vcpu(&mut self, pc: u64, x0: u64) -> Result<(), i32> {
        self.init_vcpu(0, pc, x0)
    }

    fn set_irq_line(&mut self, intid: u32, high: bool) -> Result<(), i32> {
        let args = [self.handle(), u64::from(intid), u64::from(high)];
        self.hypervisor()
            .call(crate::abi::HostCall::IrqLine, &args)
            .map(|_| ())
            .map_err(call_errno)
    }

    fn run_vcpu(&mut self, index: usize) -> Result<VcpuExit, i32> {
        self.vcpu(index).run()
    }

    fn set_mmio_data(&mut self, index: usize, value: u64) {
        self.vcpu(index).set_mmio_data(value);
    }

    fn set_hypercall_result(&mut self, index: usize, x0: u64, x1: u64) {
        self.vcpu(index).set_hypercall_result(x0, x1);
    }

    fn unhandled_access(&self) -> Option<UnhandledAccess> {
        KvmVm::unhandled_access(self)
    }

    fn probe(&mut self, gmem: GmemId, offset: u64) -> Probe {
        let Some(pfn) = self.gmem(gmem).and_then(|g| g.pfn(offset / PAGE)) else {
            return Probe::Unbacked;
        };
        let mut page = alloc::vec![0u8; PAGE as usize];
        match self.hypervisor().read(pfn * PAGE, &mut page) {
            Ok(()) => Probe::Read,
            Err(_) => Probe::Refused,
        }
    }

    fn destroy(
        self,
        baseline: Option<HostStats>,
    ) -> (Result<Teardown, TeardownError>, Option<Self::Remains>) {
        match baseline {
            Some(before) => {
                let (verdict, parts) = teardown::teardown(self, before);
                (verdict.map(Teardown::Verified), parts)
            }
            None => match self.destroy_checked(|_, _| {}) {
                Ok(parts) => (Ok(Teardown::Closed), Some(parts)),
                Err(e) => (Err(TeardownError::Destroy(e)), None),
            },
        }
    }
}
