//! Conformance tests and a small example VMM for the hypervisor.
//!
//! [`ExampleVmm`] is what a crosvm-style VMM does with the host interface,
//! step by step, recording what it saw ([`Event`]): it creates a protected
//! VM whose RAM is one guest_memfd (private by default, host-mappable),
//! loads a guest image into shared pages and converts them to private in
//! place before the first run (the guest then sees the image: no copy),
//! and serves the exits of a scripted guest: conversions the guest asks
//! for (or refuses them), relinquished memory (punched), MMIO to the
//! console, and PSCI calls. The memory steps and the console are the VMM
//! library's (`host_interface::vmm`: [`memory::load_in_place`],
//! [`memory::convert`], [`Pl011`]); the whole library (device tree, test
//! device, `CPU_ON`, verified teardown) is exercised in `tests/vmm_lib.rs`
//! with [`RecordingHost`]. Everything runs on the simulated machine
//! (`el2::sim`), through the same hypervisor core that runs at EL2.

use std::fmt;

use el2::sim::{GuestOp, Machine, SimPages};
use host_interface::kvm::*;
use host_interface::platform;
use host_interface::vm::{GmemId, KvmVm, Vcpu, VcpuExit, Vm};
use host_interface::vmm::VmmHost;
use host_interface::vmm::memory;
use host_interface::vmm::pl011::Pl011;
use host_interface::vmm::run::PSCI_NOT_SUPPORTED;
use std::vec::Vec;

/// Where guest RAM starts (crosvm's arm64 layout: the platform's).
pub const GUEST_RAM: u64 = platform::RAM_BASE;
/// The console the example guest writes to: the platform's PL011.
pub const CONSOLE: u64 = platform::UART;

/// What the VMM saw while running the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A conversion the guest asked for, and whether the VMM did it.
    Converted {
        /// Guest address.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// To private.
        private: bool,
        /// The VMM's conversion result (errno on failure).
        result: Result<(), i32>,
    },
    /// Memory the guest gave back, punched from the guest_memfd.
    Relinquished {
        /// Guest address.
        gpa: u64,
        /// Bytes.
        size: u64,
    },
    /// A byte written to the console.
    Console(u8),
    /// A PSCI call, answered NOT_SUPPORTED.
    Psci(u64),
}

/// A crosvm-shaped VMM for one protected VM on the simulated machine.
pub struct ExampleVmm<'m> {
    /// The VM.
    pub vm: KvmVm<&'m mut Machine, SimPages>,
    /// Its RAM.
    pub ram: GmemId,
    /// What happened.
    pub events: Vec<Event>,
    /// Refuse (instead of doing) the conversions the guest asks for.
    pub refuse_conversions: bool,
}

impl<'m> ExampleVmm<'m> {
    /// A VM with `ram_size` bytes of RAM (a guest_memfd, private by
    /// default, mappable) at [`GUEST_RAM`], one vCPU.
    pub fn new(machine: &'m mut Machine, ram_size: u64) -> Result<Self, i32> {
        let mut vm = KvmVm::new(machine, SimPages::for_machine(), 1)?;
        let ram = vm.create_guest_memfd(&KvmCreateGuestMemfd {
            size: ram_size,
            flags: GUEST_MEMFD_FLAG_MMAP,
            reserved: [0; 6],
        })?;
        vm.set_memory_region(&KvmUserspaceMemoryRegion2 {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: GUEST_RAM,
            memory_size: ram_size,
            guest_memfd: ram.0,
            ..Default::default()
        })?;
        Ok(ExampleVmm {
            vm,
            ram,
            events: Vec::new(),
            refuse_conversions: false,
        })
    }

    /// Converts `[offset, offset + size)` of RAM.
    pub fn convert(&mut self, offset: u64, size: u64, private: bool) -> Result<(), (i32, u64)> {
        memory::convert(&mut self.vm, self.ram, offset, size, private)
    }

    /// Loads `image` at RAM offset `offset`: shared, written, then
    /// converted to private in place (the library's
    /// [`memory::load_in_place`]).
    pub fn load_image(&mut self, offset: u64, image: &[u8]) -> Result<(), i32> {
        memory::load_in_place(&mut self.vm, self.ram, offset, image).map_err(|(_, e)| e)
    }

    /// Runs the guest script until it powers off; returns the exit code
    /// (0 off, 1 reset).
    pub fn run(&mut self, script: Vec<GuestOp>) -> Result<u64, i32> {
        self.vm.init_vcpu(0, 0, 0)?;
        let handle = ownership::GuestHandle(self.vm.handle() as u16);
        self.vm.hypervisor().arch.script(handle, 0, script);
        self.serve()
    }

    /// Serves exits until the guest powers off.
    pub fn serve(&mut self) -> Result<u64, i32> {
        let mut uart = Pl011::new();
        // The example guest takes no interrupts: the UART's line goes nowhere.
        let mut no_irq = |_high: bool| {};
        loop {
            let exit = self.vm.vcpu(0).run()?;
            match exit {
                VcpuExit::MemoryFault { gpa, size, flags } => {
                    let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                    let result = if self.refuse_conversions {
                        Err(errno::EPERM)
                    } else {
                        self.convert(gpa - GUEST_RAM, size, private)
                            .map_err(|e| e.0)
                    };
                    self.events.push(Event::Converted {
                        gpa,
                        size,
                        private,
                        result,
                    });
                }
                VcpuExit::Relinquished { gpa, size } => {
                    // The guest may relinquish IPAs outside its RAM (they
                    // were empty): nothing of the guest_memfd to punch.
                    if let Some(offset) = gpa.checked_sub(GUEST_RAM) {
                        self.vm.gmem_punch_hole(self.ram, offset, size)?;
                    }
                    self.events.push(Event::Relinquished { gpa, size });
                }
                VcpuExit::Mmio {
                    address,
                    write,
                    data,
                    ..
                } => {
                    let mut value = 0;
                    if let Some(offset) = address.checked_sub(CONSOLE).filter(|o| *o < 0x1000) {
                        if write {
                            if let Some(byte) = uart.write(offset, data, &mut no_irq) {
                                self.events.push(Event::Console(byte));
                            }
                        } else {
                            value = uart.read(offset, &mut no_irq);
                        }
                    }
                    self.vm.vcpu(0).set_mmio_data(value);
                }
                VcpuExit::Hypercall { id, .. } => {
                    self.events.push(Event::Psci(id));
                    self.vm
                        .vcpu(0)
                        .set_hypercall_result(PSCI_NOT_SUPPORTED as u64, 0);
                }
                VcpuExit::SystemEvent(kind) => return Ok(kind),
                VcpuExit::Wfi => {}
                VcpuExit::InternalError { ec } => return Err(-(ec as i32) - 1000),
                VcpuExit::Interrupted | VcpuExit::PoweredOff => {}
            }
        }
    }
}

/// A [`VmmHost`] that records everything: the guest's console bytes, the
/// VMM's log lines, and which vCPU each run was for.
#[derive(Clone, Debug, Default)]
pub struct RecordingHost {
    /// The guest's console output.
    pub console: Vec<u8>,
    /// The VMM's log lines.
    pub log: Vec<String>,
    /// The vCPU of each run, in order.
    pub runs: Vec<usize>,
}

impl VmmHost for RecordingHost {
    fn console(&mut self, bytes: &[u8]) {
        self.console.extend_from_slice(bytes);
    }

    fn log(&mut self, line: fmt::Arguments<'_>) {
        self.log.push(line.to_string());
    }

    fn before_run(&mut self, vcpu: usize) {
        self.runs.push(vcpu);
    }
}
