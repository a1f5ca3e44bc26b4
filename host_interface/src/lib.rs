//! The ABI both the hypervisor and its host compile against, and the
//! host-side layer a host kernel would provide its VMM.
//!
//! - [`abi`]: host call ids, arguments and errno values, guest call ids,
//!   and the exit record `VcpuRun` returns — one numbered table.
//! - [`kvm`]: KVM's guest_memfd uAPI structures, in KVM's layout.
//! - [`hypervisor`]: the [`hypervisor::Hypervisor`] conduit (real HVC on
//!   aarch64; `el2::sim::Machine` in process).
//! - [`gmem`]: the guest_memfd model (attributes, folios, pins).
//! - [`platform`]: the guest's virtual platform (IPA layout, devices)
//!   and the test device protocol, shared with test guests.
//! - [`guestdesc`]: how the runner tells the test host which guest to run.
//! - [`uapi`]: the Linux host driver's ioctl interface
//!   (`driver/pkvm_rs_uapi.h`).
//! - [`vm`]: the VM layer (memslots, in-place conversion, the vCPU run loop)
//!   and the crosvm-shaped VMM API ([`vm::Vm`], [`vm::Vcpu`],
//!   [`vm::VcpuExit`]).
//! - [`vmm`]: a small VMM that runs one protected guest (loading, device
//!   tree, PL011, test device, PSCI `CPU_ON`, teardown) over any VM
//!   backend ([`vmm::VmBackend`]): [`vm::KvmVm`] for the built-in test
//!   host (verified teardown), the Linux driver's ioctls for the userspace
//!   VMM `pkvm-vmm` (`linux-vmm/`).
//!
//! `no_std` + `alloc`; this crate does not depend on `el2`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod abi;
pub mod gmem;
pub mod guestdesc;
pub mod hypervisor;
pub mod kvm;
pub mod platform;
pub mod uapi;
pub mod vm;
pub mod vmm;
