//! The run loop: the vCPUs that are on run round-robin, one
//! [`VmBackend::run_vcpu`] at a time, with [`VmmHost::before_run`] before
//! each; each exit is served (and counted, [`super::stats`]) before that
//! vCPU runs again.
//!
//! A host that schedules vCPUs itself (the Linux VMM: one thread per vCPU,
//! each blocking in `KVM_RUN`) uses the loop's parts instead:
//! [`Vmm::handle_exit`] serves one run's result and says what comes next
//! ([`Step`]), [`Vmm::poll_console`] moves console input in, and
//! [`Vmm::set_run_time`] records how long it all took. The loop below is
//! exactly those calls in round-robin order.
//!
//! Before each run the host's console input ([`VmmHost::input`]) goes into
//! the PL011's receive FIFO, as much as it can take; a poll that brings
//! nothing while bytes wait is the line going idle (the receive timeout
//! interrupt). Each time the PL011's interrupt line changes level (on a
//! register access or on input) the VMM drives its SPI
//! ([`pl011::UART_INTID`]) with [`VmBackend::set_irq_line`] (the `IrqLine`
//! host call, `KVM_IRQ_LINE` under the Linux driver); a failure of that
//! call ends the run with a VMM error.
//!
//! | exit | what the VMM does |
//! |------|-------------------|
//! | `MemoryFault` | converts that range of RAM: the guest asked (a failure leaves the guest's call to fail) |
//! | `Relinquished` | punches that range (the part inside RAM) out of the guest_memfd |
//! | `Mmio` | the PL011, the test device, or nothing (reads 0, writes dropped); completed with [`VmBackend::set_mmio_data`] |
//! | `Hypercall` PSCI `CPU_ON` | INVALID_ADDRESS (-9) if the entry is not in RAM, else 0 and the target is on; anything else NOT_SUPPORTED (-1) |
//! | `SystemEvent(0)` / `(1)` | the run ends: powered off / reset |
//! | `Wfi`, `Interrupted` | the next vCPU's turn (a lone vCPU runs again) |
//! | `PoweredOff` | that vCPU is off; with none left on the run ends |
//! | `InternalError{ec}` | the run ends: the guest crashed |
//! | `Err(errno)` | the run ends: VMM error |
//!
//! A vCPU also yields its turn after [`EXITS_PER_TURN`] exits in a row,
//! so one that keeps exiting (MMIO in a loop) cannot starve the others.
//! A vCPU started by `CPU_ON` turns on once the caller's next run
//! returns: that run is what hands the VMM's answer to the hypervisor,
//! which only then starts the target.

use crate::platform::{TEST_DEVICE, UART, vcpu_mpidr};
use crate::vm::VcpuExit;

use super::backend::VmBackend;
use super::fdt::DEVICE_SIZE;
use super::pl011::{self, IrqLine};
use super::stats::ExitKind;
use super::{Outcome, Vmm, VmmError, VmmHost};

/// PSCI `CPU_ON`, SMC32/HVC32.
pub const PSCI_CPU_ON_32: u64 = 0x8400_0003;
/// PSCI `CPU_ON`, SMC64/HVC64.
pub const PSCI_CPU_ON_64: u64 = 0xC400_0003;
/// PSCI return: NOT_SUPPORTED.
pub const PSCI_NOT_SUPPORTED: i64 = -1;
/// PSCI return: INVALID_PARAMETERS.
pub const PSCI_INVALID_PARAMETERS: i64 = -2;
/// PSCI return: INVALID_ADDRESS.
pub const PSCI_INVALID_ADDRESS: i64 = -9;
/// MPIDR affinity fields (Aff3, Aff2, Aff1, Aff0) a PSCI target names.
pub const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;
/// Exits one vCPU may take in a row before the next vCPU's turn.
pub const EXITS_PER_TURN: u32 = 64;

/// Whether a vCPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Power {
    /// Off: never started, or it called `CPU_OFF`.
    Off,
    /// On: it gets turns.
    On,
    /// Started by vCPU `caller`'s `CPU_ON`: on once `caller`'s next run
    /// returns.
    Starting {
        /// The vCPU whose `CPU_ON` the VMM accepted.
        caller: usize,
    },
}

/// What serving one exit means for the vCPU that made it
/// ([`Vmm::handle_exit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// It may run again at once.
    Continue,
    /// Let another vCPU have a turn (it waits, it was interrupted, or it
    /// is off); a host with one thread per vCPU just runs it again.
    Yield,
    /// The run is over.
    End(Outcome),
}

/// The PL011's interrupt line as the VM's SPI [`pl011::UART_INTID`]: each
/// level change is a [`VmBackend::set_irq_line`]; the first failure is
/// kept and no further call is made.
struct UartSpi<'v, B: VmBackend> {
    vm: &'v mut B,
    failed: Option<i32>,
}

impl<'v, B: VmBackend> UartSpi<'v, B> {
    fn new(vm: &'v mut B) -> Self {
        UartSpi { vm, failed: None }
    }

    /// The run's verdict on the calls made.
    fn result(self) -> Result<(), VmmError> {
        match self.failed {
            None => Ok(()),
            Some(errno) => Err(VmmError::Host {
                what: "driving the UART's interrupt line (IrqLine)",
                errno,
            }),
        }
    }
}

impl<B: VmBackend> IrqLine for UartSpi<'_, B> {
    fn set_level(&mut self, high: bool) {
        if self.failed.is_some() {
            return;
        }
        if let Err(errno) = self.vm.set_irq_line(pl011::UART_INTID, high) {
            self.failed = Some(errno);
        }
    }
}

fn mask(value: u64, size: u8) -> u64 {
    match size {
        1 | 2 | 4 => value & ((1u64 << (8 * u32::from(size))) - 1),
        _ => value,
    }
}

impl<B: VmBackend> Vmm<'_, B> {
    /// Runs the guest until it powers off or resets, crashes, turns every
    /// vCPU off, or the VMM fails. Not bounded by time:
    /// [`VmmHost::before_run`] is how a host gets control back from a
    /// spinning vCPU.
    ///
    /// The time it took goes into the counts ([`super::stats`]) when the
    /// host has a clock.
    pub fn run(&mut self, host: &mut impl VmmHost) -> Outcome {
        let start = host.now_ns();
        let outcome = self.run_loop(host);
        if let (Some(t0), Some(t1)) = (start, host.now_ns()) {
            self.set_run_time(t1.saturating_sub(t0));
        }
        outcome
    }

    /// Records how long the run took (for a host that schedules the vCPUs
    /// itself; [`Vmm::run`] does it).
    pub fn set_run_time(&mut self, ns: u64) {
        self.stats.run_ns = Some(ns);
    }

    fn run_loop(&mut self, host: &mut impl VmmHost) -> Outcome {
        let n = self.power.len();
        let mut current = 0;
        let mut streak = 0u32;
        loop {
            let Some(index) = (0..n)
                .map(|k| (current + k) % n)
                .find(|&i| self.power[i] == Power::On)
            else {
                return Outcome::AllVcpusOff;
            };
            if let Err(e) = self.poll_console(host) {
                return Outcome::Error(e);
            }
            host.before_run(index);
            let result = self.mem.vm().run_vcpu(index);
            let step = self.handle_exit(index, result, host);
            streak += 1;
            match step {
                Step::End(outcome) => return outcome,
                Step::Continue if streak < EXITS_PER_TURN => current = index,
                Step::Continue | Step::Yield => {
                    current = (index + 1) % n;
                    streak = 0;
                }
            }
        }
    }

    /// Serves what one run of vCPU `index` returned: an exit (completed
    /// through the backend before this returns, so the vCPU can run
    /// again) or the run's failure. A vCPU that vCPU `index` started with
    /// `CPU_ON` counts as on from here.
    pub fn handle_exit(
        &mut self,
        index: usize,
        result: Result<VcpuExit, i32>,
        host: &mut impl VmmHost,
    ) -> Step {
        for p in &mut self.power {
            if *p == (Power::Starting { caller: index }) {
                *p = Power::On;
            }
        }
        match result {
            Ok(exit) => self.serve(index, exit, host),
            Err(errno) => Step::End(Outcome::Error(VmmError::Run {
                vcpu: index,
                errno,
                access: self.mem.vm_ref().unhandled_access(),
            })),
        }
    }

    /// Moves the host's console input into the PL011's receive FIFO (as
    /// much as it takes now), or tells it the line is idle. [`Vmm::run`]
    /// calls it before every vCPU run; a host that schedules the vCPUs
    /// itself calls it when input comes and every few milliseconds.
    pub fn poll_console(&mut self, host: &mut impl VmmHost) -> Result<(), VmmError> {
        let room = self.uart.rx_room().min(pl011::RX_FIFO);
        let mut buf = [0u8; pl011::RX_FIFO];
        let got = if room > 0 {
            host.input(&mut buf[..room]).min(room)
        } else {
            0
        };
        let mut line = UartSpi::new(self.mem.vm());
        if got > 0 {
            self.uart.receive(&buf[..got], &mut line);
        } else {
            self.uart.rx_idle(&mut line);
        }
        line.result()
    }

    /// Serves one exit of vCPU `index`.
    fn serve(&mut self, index: usize, exit: VcpuExit, host: &mut impl VmmHost) -> Step {
        let kind = match exit {
            VcpuExit::MemoryFault { .. } => Some(ExitKind::MemoryFault),
            VcpuExit::Relinquished { .. } => Some(ExitKind::Relinquished),
            // Counted by the device it reaches.
            VcpuExit::Mmio { .. } => None,
            VcpuExit::Hypercall { .. } => Some(ExitKind::Hypercall),
            VcpuExit::SystemEvent(_) => Some(ExitKind::SystemEvent),
            VcpuExit::Wfi => Some(ExitKind::Wfi),
            VcpuExit::Interrupted => Some(ExitKind::Interrupted),
            VcpuExit::PoweredOff => Some(ExitKind::PoweredOff),
            VcpuExit::InternalError { .. } => Some(ExitKind::Stopped),
        };
        if let Some(kind) = kind {
            self.stats.count(kind);
        }
        match exit {
            VcpuExit::MemoryFault { gpa, size, flags } => {
                // The guest asked: convert that range. If the VMM cannot
                // (out of RAM, a pinned page), the guest's call fails.
                let private = flags & crate::kvm::KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                let done = match self.mem.offset_of(gpa, size) {
                    Ok(offset) => Some(self.mem.convert(offset, size, private).is_ok()),
                    Err(_) => None,
                };
                self.stats.conversions.record(private, size, done);
                Step::Continue
            }
            VcpuExit::Relinquished { gpa, size } => {
                // The part inside RAM (the guest may give back IPAs that
                // were empty: nothing to punch there).
                let start = gpa.max(crate::platform::RAM_BASE);
                let end = gpa
                    .saturating_add(size)
                    .min(crate::platform::RAM_BASE + self.mem.size());
                if start < end
                    && let Ok(offset) = self.mem.offset_of(start, end - start)
                    && let Err(errno) = self.mem.punch(offset, end - start)
                {
                    return Step::End(Outcome::Error(VmmError::Punch { gpa, size, errno }));
                }
                Step::Continue
            }
            VcpuExit::Mmio {
                address,
                size,
                write,
                data,
            } => match self.mmio(address, size, write, data, host) {
                Ok(value) => {
                    self.mem.vm().set_mmio_data(index, value);
                    Step::Continue
                }
                Err(e) => Step::End(Outcome::Error(e)),
            },
            VcpuExit::Hypercall { id, args } => {
                let x0 = self.hypercall(index, id, args);
                self.mem.vm().set_hypercall_result(index, x0 as u64, 0);
                Step::Continue
            }
            VcpuExit::SystemEvent(0) => Step::End(Outcome::PoweredOff),
            VcpuExit::SystemEvent(1) => Step::End(Outcome::Reset),
            VcpuExit::SystemEvent(kind) => Step::End(Outcome::Error(VmmError::SystemEvent(kind))),
            VcpuExit::Wfi | VcpuExit::Interrupted => Step::Yield,
            VcpuExit::PoweredOff => {
                self.power[index] = Power::Off;
                Step::Yield
            }
            VcpuExit::InternalError { ec } => Step::End(Outcome::Crashed { vcpu: index, ec }),
        }
    }

    /// An MMIO access: the value a read returns (0 for writes).
    fn mmio(
        &mut self,
        address: u64,
        size: u8,
        write: bool,
        data: u64,
        host: &mut impl VmmHost,
    ) -> Result<u64, VmmError> {
        let data = mask(data, size);
        if let Some(offset) = address.checked_sub(UART).filter(|o| *o < DEVICE_SIZE) {
            self.stats.count(ExitKind::MmioUart);
            let mut line = UartSpi::new(self.mem.vm());
            let value = if write {
                if let Some(byte) = self.uart.write(offset, data, &mut line) {
                    host.console(&[byte]);
                }
                0
            } else {
                mask(self.uart.read(offset, &mut line), size)
            };
            return line.result().map(|()| value);
        }
        if let Some(offset) = address
            .checked_sub(TEST_DEVICE)
            .filter(|o| *o < DEVICE_SIZE)
        {
            self.stats.count(ExitKind::MmioTestdev);
            if !write {
                return Ok(self.testdev.read(offset, size));
            }
            self.testdev.write(&mut self.mem, offset, size, data);
            return Ok(0);
        }
        self.stats.count(ExitKind::MmioUnbacked);
        Ok(0)
    }

    /// A hypercall the hypervisor handed on: the guest's x0.
    fn hypercall(&mut self, caller: usize, id: u64, args: [u64; 3]) -> i64 {
        if id != PSCI_CPU_ON_32 && id != PSCI_CPU_ON_64 {
            return PSCI_NOT_SUPPORTED;
        }
        let [mpidr, entry, _context] = args;
        // The hypervisor checked the target (a vCPU of this VM, off);
        // look it up anyway rather than trust an index.
        let Some(target) = (0..self.power.len()).find(|&i| vcpu_mpidr(i) == mpidr & MPIDR_AFFINITY)
        else {
            return PSCI_INVALID_PARAMETERS;
        };
        if !self.mem.contains(entry) {
            return PSCI_INVALID_ADDRESS;
        }
        if self.power[target] == Power::Off {
            self.power[target] = Power::Starting { caller };
        }
        0
    }
}
