//! A small crosvm-shaped VMM: runs one protected guest (a Linux arm64
//! `Image`, or anything booting like one) on the platform of
//! [`crate::platform`], over any VM backend ([`VmBackend`]). `no_std` +
//! `alloc`, no dependency on the hypervisor or on a particular host: the
//! built-in test host runs it over [`KvmVm`] on real HVCs, host tests over
//! [`KvmVm`] on the simulated machine, and the Linux userspace VMM
//! (`pkvm-vmm`, `host_interface/linux-vmm/`) over the Linux host driver's
//! ioctls.
//!
//! What differs between those hosts is behind two traits:
//!
//! - [`VmBackend`] ([`backend`]): how the VM is driven — guest_memfd,
//!   memslots, conversions, the guest_memfd mapping, the boot vCPU, an
//!   SPI line, running a vCPU and completing its exits, punching, and
//!   what the backend can verify at teardown.
//! - [`VmmHost`]: where the guest's console bytes and the VMM's log lines
//!   go, where typed input for the guest's console comes from, a clock,
//!   and a hook before each vCPU run (the test host arms its timer there,
//!   so a vCPU that spins in the guest comes back).
//!
//! # A run
//!
//! [`run_guest`] does everything; the steps are public for hosts and tests
//! that need them apart:
//!
//! 1. [`Vmm::create`] (over [`KvmVm`]) or [`Vmm::create_with`] (any
//!    backend): checks the [`VmmConfig`] and the kernel's `Image` header
//!    ([`image`]), plans guest RAM ([`image::BootLayout`]), writes the
//!    device tree ([`fdt`]), then has the backend create the VM ([`KvmVm`]
//!    reads [`HostStats`](crate::abi::HostCall::HostStats)
//!    ([`teardown::HostStats`]) first), and creates its RAM guest_memfd
//!    ([`memory`]).
//! 2. [`Vmm::load`]: kernel, initrd and device tree go into RAM in place
//!    (shared, written, private); vCPU 0 starts at the kernel's entry with
//!    `x0` = the device tree's IPA. The other vCPUs stay off until the
//!    guest starts them with PSCI `CPU_ON`.
//! 3. [`Vmm::run`]: the vCPUs that are on run round-robin, one
//!    [`VmBackend::run_vcpu`] at a time, and their exits are served ([`run`](mod@run)):
//!    conversions the guest asked for, relinquished memory, MMIO to the
//!    PL011 ([`pl011`]) and the test device ([`testdev`]), `CPU_ON`, system
//!    events; each is counted ([`stats`]). Between runs the host's console
//!    input goes into the PL011's receive FIFO, and the PL011's interrupt
//!    line drives its SPI with the `IrqLine` host call. It ends when the
//!    guest powers off or resets, a vCPU crashes, every vCPU is off, or the
//!    VMM fails — never on a timer. A host that schedules the vCPUs
//!    itself (a thread per vCPU) calls [`Vmm::handle_exit`] and
//!    [`Vmm::poll_console`] instead ([`run::Step`]).
//! 4. [`Vmm::finish`]: tears the VM down and verifies what the backend
//!    can ([`teardown`]), logs the outcome and returns a [`VmmReport`].
//!
//! # Log lines
//!
//! Exactly these (the runner's tests match them):
//!
//! - `vmm: guest powered off` | `vmm: guest reset` |
//!   `vmm: guest stopped: exception class {ec:#x}` | `vmm: all vCPUs off` |
//!   `vmm: stopped by the host (signal {n})` | `vmm: error: {what}`
//! - once a VM was created, the counts ([`stats`]):
//!   `vmm: conversions: {n} to shared ({p} pages), {m} to private ({q}
//!   pages), {r} refused` and `vmm: exits: {kind} {count}, ..., total {t}
//!   in {ms} ms ({rate}/s)`
//! - `vmm: guest reported {p} passed, {f} failed` (if the guest used
//!   `REPORT`)
//! - `vmm: {n} host accesses to guest-private memory were refused
//!   (injected aborts)` (over a backend whose teardown is
//!   [`Teardown::Closed`]: `(EFAULT from the host kernel)`)
//! - `vmm: teardown verified: {n} pages reclaimed, {k} private pages read
//!   back zero; host pages {a} -> {b}, host stage-2 leaves {c} -> {d}`
//!   ([`Teardown::Verified`]) or `vmm: teardown: VM closed; the host
//!   kernel reclaims and frees its pages (not verifiable here)`
//!   ([`Teardown::Closed`]) or `vmm: TEARDOWN-CHECK-FAILED: {what}`
//!
//! Nothing a guest does makes the VMM panic: every guest-controlled value
//! is range-checked, and failures are values ([`Outcome`], [`VmmError`]).

pub mod backend;
pub mod console;
pub mod fdt;
pub mod image;
pub mod memory;
pub mod pl011;
pub mod run;
pub mod stats;
pub mod teardown;
pub mod testdev;

use core::fmt;

use alloc::vec::Vec;

use crate::hypervisor::{CallError, Hypervisor};
use crate::platform::RAM_BASE;
use crate::vm::{HostPages, KvmVm};

pub use backend::VmBackend;
use image::{Arm64Image, BootLayout, ImageError, LayoutError};
use memory::GuestMemory;
use pl011::Pl011;
use run::Power;
pub use run::Step;
use stats::VmmStats;
use teardown::{HostStats, Teardown, TeardownError};
pub use testdev::GuestReport;
use testdev::TestDevice;

/// Guest RAM must be a multiple of this (2 MiB).
pub const MEM_ALIGN: u64 = 2 << 20;
/// Most vCPUs a guest may have.
pub const MAX_VCPUS: usize = 8;
/// The largest IPA space the VM layer creates (40 bits): RAM must end
/// below it.
pub const IPA_LIMIT: u64 = 1 << 40;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct VmmConfig<'a> {
    /// Guest RAM in bytes: a non-zero multiple of 2 MiB, ending below
    /// [`IPA_LIMIT`].
    pub mem: u64,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: usize,
    /// The kernel command line (`/chosen/bootargs`).
    pub cmdline: &'a str,
    /// Back guest memory with 4 KiB pages only (no 2 MiB folios).
    pub small_pages: bool,
    /// The kernel `Image`.
    pub kernel: &'a [u8],
    /// The initrd, if any.
    pub initrd: Option<&'a [u8]>,
}

/// What differs between the hosts the VMM runs on.
pub trait VmmHost {
    /// Bytes the guest wrote to its console (the PL011), as written.
    fn console(&mut self, bytes: &[u8]);
    /// One line of the VMM's log (no newline).
    fn log(&mut self, line: fmt::Arguments<'_>);
    /// Called before every [`VmBackend::run_vcpu`] of vCPU `vcpu` in
    /// [`Vmm::run`] (e.g. to arm a timer that ends the run if the guest
    /// does not exit by itself).
    fn before_run(&mut self, vcpu: usize);
    /// Bytes typed for the guest's console: fills the start of `buf` (at
    /// most `buf.len()` bytes, what the PL011's receive FIFO can take
    /// now) and returns how many. Called between vCPU runs; anything the
    /// host does not hand over now it keeps for a later call. The default
    /// has no input.
    fn input(&mut self, buf: &mut [u8]) -> usize {
        let _ = buf;
        0
    }
    /// A monotonic clock in nanoseconds, for the run's duration in the
    /// exits line ([`stats`]); the default has none.
    fn now_ns(&mut self) -> Option<u64> {
        None
    }
}

/// Why the VMM failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmError {
    /// The configuration is out of range; the text says what.
    Config(&'static str),
    /// The kernel `Image` was refused.
    Image(ImageError),
    /// The files do not fit guest RAM.
    Layout(LayoutError),
    /// The device tree could not be written (`vm-fdt`'s message).
    DeviceTree(alloc::string::String),
    /// `HostStats` failed.
    Stats(CallError),
    /// A VM-layer call failed: what the VMM was doing, and the errno.
    Host {
        /// What failed.
        what: &'static str,
        /// The errno (positive).
        errno: i32,
    },
    /// Loading a file into guest RAM failed.
    Load {
        /// Which file.
        file: &'static str,
        /// Which step.
        step: &'static str,
        /// The errno (positive).
        errno: i32,
    },
    /// Running a vCPU failed.
    Run {
        /// The vCPU.
        vcpu: usize,
        /// The errno (positive).
        errno: i32,
        /// The guest access that could not be served, if that is why.
        access: Option<crate::vm::UnhandledAccess>,
    },
    /// Punching what the guest relinquished failed.
    Punch {
        /// Guest physical address.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// The errno (positive).
        errno: i32,
    },
    /// The hypervisor reported a system event the VMM does not know.
    SystemEvent(u64),
}

impl fmt::Display for VmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmError::Config(what) => write!(f, "bad configuration: {what}"),
            VmmError::Image(e) => e.fmt(f),
            VmmError::Layout(e) => e.fmt(f),
            VmmError::DeviceTree(e) => write!(f, "writing the device tree: {e}"),
            VmmError::Stats(e) => write!(f, "HostStats failed: {e:?}"),
            VmmError::Host { what, errno } => write!(f, "{what} failed: errno {errno}"),
            VmmError::Load { file, step, errno } => {
                write!(f, "loading the {file}: {step} failed: errno {errno}")
            }
            VmmError::Run {
                vcpu,
                errno,
                access: Some(a),
            } => write!(
                f,
                "running vCPU {vcpu} failed: errno {errno}: a guest {} at IPA {:#x} outside guest \
                 RAM that cannot be emulated (no syndrome)",
                if a.exec {
                    "instruction fetch"
                } else if a.write {
                    "store"
                } else {
                    "load"
                },
                a.gpa
            ),
            VmmError::Run { vcpu, errno, .. } => {
                write!(f, "running vCPU {vcpu} failed: errno {errno}")
            }
            VmmError::Punch { gpa, size, errno } => write!(
                f,
                "punching the relinquished range {gpa:#x}+{size:#x} failed: errno {errno}"
            ),
            VmmError::SystemEvent(kind) => write!(f, "unknown system event {kind}"),
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (PSCI `SYSTEM_OFF`).
    PoweredOff,
    /// The guest asked for a reset (PSCI `SYSTEM_RESET`/`SYSTEM_RESET2`).
    Reset,
    /// The hypervisor stopped a vCPU on a trap it cannot handle.
    Crashed {
        /// The vCPU.
        vcpu: usize,
        /// The trap's exception class.
        ec: u64,
    },
    /// Every vCPU turned itself off (PSCI `CPU_OFF`).
    AllVcpusOff,
    /// The host stopped the VM before the guest ended it (the Linux VMM
    /// on `SIGINT` or `SIGTERM`): exit status 128 + `signal`, as a shell
    /// reports a process that signal ended.
    Stopped {
        /// The signal's number.
        signal: u8,
    },
    /// The VMM failed.
    Error(VmmError),
}

/// Exit status: the guest powered off, reported no failure, and the
/// teardown check passed.
pub const STATUS_OK: u8 = 0;
/// Exit status: the guest reported failing checks.
pub const STATUS_GUEST_FAILED: u8 = 8;
/// Exit status: the guest reset.
pub const STATUS_RESET: u8 = 9;
/// Exit status: a vCPU crashed (was stopped), or every vCPU is off.
pub const STATUS_CRASHED: u8 = 10;
/// Exit status: the VMM failed, or the teardown check did.
pub const STATUS_VMM_ERROR: u8 = 11;

/// Everything a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// The guest's own tally (`REPORT`), if it gave one.
    pub guest: Option<GuestReport>,
    /// Host accesses to guest memory the hypervisor refused.
    pub refused: u64,
    /// MMIO accesses to addresses with no device (read 0, writes dropped).
    pub unbacked_mmio: u64,
    /// The run's counts (all zero if no VM was created).
    pub stats: VmmStats,
    /// The teardown (verified, or just done, as far as the backend can
    /// tell); `None` if no VM was created.
    pub teardown: Option<Result<Teardown, TeardownError>>,
}

impl VmmReport {
    /// The report of a run that failed before a VM existed.
    pub fn failed(e: VmmError) -> VmmReport {
        VmmReport {
            outcome: Outcome::Error(e),
            guest: None,
            refused: 0,
            unbacked_mmio: 0,
            stats: VmmStats::default(),
            teardown: None,
        }
    }

    /// The run's exit status, most serious first: [`STATUS_VMM_ERROR`],
    /// 128 + signal ([`Outcome::Stopped`]), [`STATUS_CRASHED`],
    /// [`STATUS_RESET`], [`STATUS_GUEST_FAILED`], [`STATUS_OK`].
    pub fn exit_status(&self) -> u8 {
        let teardown_ok = matches!(self.teardown, Some(Ok(_)));
        match self.outcome {
            Outcome::Error(_) => STATUS_VMM_ERROR,
            _ if !teardown_ok => STATUS_VMM_ERROR,
            Outcome::Stopped { signal } => 128u8.saturating_add(signal),
            Outcome::Crashed { .. } | Outcome::AllVcpusOff => STATUS_CRASHED,
            Outcome::Reset => STATUS_RESET,
            Outcome::PoweredOff if self.guest.is_some_and(|g| g.failed > 0) => STATUS_GUEST_FAILED,
            Outcome::PoweredOff => STATUS_OK,
        }
    }

    /// What [`VmmReport::exit_status`] means, in a few words.
    pub fn meaning(&self) -> &'static str {
        match self.exit_status() {
            STATUS_OK => "the guest powered off",
            STATUS_GUEST_FAILED => "the guest reported failing checks",
            STATUS_RESET => "the guest reset",
            s if s >= 128 => "stopped by the host",
            STATUS_CRASHED => match self.outcome {
                Outcome::AllVcpusOff => "every vCPU of the guest is off",
                _ => "the guest crashed",
            },
            _ => match self.outcome {
                Outcome::Error(_) => "VMM error",
                _ => "teardown check failed",
            },
        }
    }
}

/// One protected guest: its VM (over backend `B`), its RAM, its devices.
pub struct Vmm<'a, B: VmBackend> {
    config: VmmConfig<'a>,
    mem: GuestMemory<B>,
    layout: BootLayout,
    fdt: Vec<u8>,
    before: Option<HostStats>,
    power: Vec<Power>,
    uart: Pl011,
    testdev: TestDevice,
    stats: VmmStats,
}

fn check_config(c: &VmmConfig<'_>) -> Result<(), VmmError> {
    if c.mem == 0 || !c.mem.is_multiple_of(MEM_ALIGN) {
        return Err(VmmError::Config(
            "guest RAM must be a non-zero multiple of 2 MiB",
        ));
    }
    if c.mem > IPA_LIMIT - RAM_BASE {
        return Err(VmmError::Config(
            "guest RAM must end below the 40-bit IPA limit",
        ));
    }
    if c.vcpus == 0 || c.vcpus > MAX_VCPUS {
        return Err(VmmError::Config("the vCPU count must be 1 to 8"));
    }
    Ok(())
}

/// Checks `config` and the kernel, plans guest RAM and writes the device
/// tree: everything that needs no VM.
fn plan(config: &VmmConfig<'_>) -> Result<(BootLayout, Vec<u8>), VmmError> {
    check_config(config)?;
    let image = Arm64Image::parse(config.kernel).map_err(VmmError::Image)?;
    let kernel_len = config.kernel.len() as u64;
    let initrd_len = config.initrd.map(|i| i.len() as u64);
    let layout = BootLayout::plan(config.mem, &image, kernel_len, initrd_len, 0)
        .map_err(VmmError::Layout)?;
    let fdt = fdt::build(&fdt::FdtConfig {
        mem: config.mem,
        vcpus: config.vcpus,
        cmdline: config.cmdline,
        initrd: layout.initrd.map(|i| (i.ipa(), i.ipa() + i.len)),
    })
    .map_err(|e| VmmError::DeviceTree(alloc::string::ToString::to_string(&e)))?;
    let layout = BootLayout::plan(config.mem, &image, kernel_len, initrd_len, fdt.len() as u64)
        .map_err(VmmError::Layout)?;
    Ok((layout, fdt))
}

impl<'a, H: Hypervisor, A: HostPages> Vmm<'a, KvmVm<H, A>> {
    /// Over [`KvmVm`]: checks `config`, plans guest RAM, writes the device
    /// tree, reads `HostStats` (the teardown's baseline), then creates the
    /// VM (2 MiB folios unless [`VmmConfig::small_pages`]) and its RAM.
    /// Nothing is created if a check fails.
    pub fn create(mut hv: H, pages: A, config: VmmConfig<'a>) -> Result<Self, VmmError> {
        Vmm::create_with(config, |c| {
            let before = HostStats::read(&mut hv).map_err(VmmError::Stats)?;
            let mut vm = KvmVm::new(hv, pages, c.vcpus).map_err(|errno| VmmError::Host {
                what: "creating the VM",
                errno,
            })?;
            vm.set_huge_folios(!c.small_pages);
            Ok((vm, Some(before)))
        })
    }
}

impl<'a, B: VmBackend> Vmm<'a, B> {
    /// Checks `config`, plans guest RAM and writes the device tree; then
    /// `create` makes the VM (with `config.vcpus` vCPUs) and gives it with
    /// the teardown's baseline, if its backend verifies against one; then
    /// the VM's RAM is created. `create` is not called if a check fails;
    /// if RAM cannot be set up, the VM is destroyed again.
    pub fn create_with(
        config: VmmConfig<'a>,
        create: impl FnOnce(&VmmConfig<'a>) -> Result<(B, Option<HostStats>), VmmError>,
    ) -> Result<Self, VmmError> {
        let (layout, fdt) = plan(&config)?;
        let (vm, before) = create(&config)?;
        let mem = match GuestMemory::new(vm, config.mem) {
            Ok(m) => m,
            Err(failed) => {
                let memory::SetupError { vm, errno } = *failed;
                // Nothing of the guest's exists yet: give the VM back
                // unverified.
                let _ = vm.destroy(None);
                return Err(VmmError::Host {
                    what: "setting up guest RAM",
                    errno,
                });
            }
        };
        let mut power = alloc::vec![Power::Off; config.vcpus];
        power[0] = Power::On;
        Ok(Vmm {
            config,
            mem,
            layout,
            fdt,
            before,
            power,
            uart: Pl011::new(),
            testdev: TestDevice::default(),
            stats: VmmStats::default(),
        })
    }

    /// Loads the kernel, the initrd and the device tree into guest RAM in
    /// place, and sets vCPU 0's entry point (the kernel's) and `x0` (the
    /// device tree's IPA).
    pub fn load(&mut self) -> Result<(), VmmError> {
        let l = self.layout;
        let files = [
            ("kernel", Some(l.kernel.offset), Some(self.config.kernel)),
            ("initrd", l.initrd.map(|i| i.offset), self.config.initrd),
            ("device tree", Some(l.fdt.offset), Some(&self.fdt[..])),
        ];
        for (file, offset, data) in files {
            if let (Some(offset), Some(data)) = (offset, data) {
                self.mem
                    .load(offset, data)
                    .map_err(|(step, errno)| VmmError::Load { file, step, errno })?;
            }
        }
        self.mem
            .vm()
            .init_boot_vcpu(l.entry(), l.fdt.ipa())
            .map_err(|errno| VmmError::Host {
                what: "setting vCPU 0's entry point",
                errno,
            })
    }

    /// The VM (for hosts and tests that look inside it).
    pub fn vm(&mut self) -> &mut B {
        self.mem.vm()
    }

    /// The guest's RAM.
    pub fn memory(&mut self) -> &mut GuestMemory<B> {
        &mut self.mem
    }

    /// Where the files go in guest RAM.
    pub fn layout(&self) -> &BootLayout {
        &self.layout
    }

    /// The device tree the guest gets.
    pub fn device_tree(&self) -> &[u8] {
        &self.fdt
    }

    /// `HostStats` as read before the VM was created, if the backend
    /// verifies its teardown against it.
    pub fn stats_before(&self) -> Option<HostStats> {
        self.before
    }

    /// The number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.power.len()
    }

    /// The guest's `REPORT`, if it gave one so far.
    pub fn guest_report(&self) -> Option<GuestReport> {
        self.testdev.report
    }

    /// Host accesses to guest memory refused so far.
    pub fn refused(&self) -> u64 {
        self.testdev.refused
    }

    /// MMIO accesses to addresses with no device so far.
    pub fn unbacked_mmio(&self) -> u64 {
        self.stats.exits_of(stats::ExitKind::MmioUnbacked)
    }

    /// The counts so far.
    pub fn stats(&self) -> &VmmStats {
        &self.stats
    }

    /// The guest's PL011 (to look at its state).
    pub fn uart(&self) -> &Pl011 {
        &self.uart
    }

    /// Tears the VM down, verifies what the backend can, logs the outcome
    /// (see the module docs) and returns the report, with what the VM
    /// leaves ([`KvmVm`]: the conduit and the page allocator) unless the
    /// teardown failed.
    pub fn finish(
        self,
        outcome: Outcome,
        host: &mut impl VmmHost,
    ) -> (VmmReport, Option<B::Remains>) {
        let guest = self.testdev.report;
        let refused = self.testdev.refused;
        let counts = self.stats;
        let (verdict, parts) = self.mem.into_vm().destroy(self.before);
        let report = VmmReport {
            outcome,
            guest,
            refused,
            unbacked_mmio: counts.exits_of(stats::ExitKind::MmioUnbacked),
            stats: counts,
            teardown: Some(verdict),
        };
        log_report(&report, host);
        (report, parts)
    }
}

/// Logs what `report` says, in the module docs' lines.
pub fn log_report(report: &VmmReport, host: &mut impl VmmHost) {
    match &report.outcome {
        Outcome::PoweredOff => host.log(format_args!("vmm: guest powered off")),
        Outcome::Reset => host.log(format_args!("vmm: guest reset")),
        Outcome::Crashed { ec, .. } => {
            host.log(format_args!("vmm: guest stopped: exception class {ec:#x}"))
        }
        Outcome::AllVcpusOff => host.log(format_args!("vmm: all vCPUs off")),
        Outcome::Stopped { signal } => {
            host.log(format_args!("vmm: stopped by the host (signal {signal})"))
        }
        Outcome::Error(e) => host.log(format_args!("vmm: error: {e}")),
    }
    if report.teardown.is_some() {
        host.log(format_args!(
            "{}{}",
            stats::CONVERSIONS_PREFIX,
            report.stats.conversions
        ));
        host.log(format_args!(
            "{}{}",
            stats::EXITS_PREFIX,
            report.stats.exits_line()
        ));
    }
    if let Some(g) = report.guest {
        host.log(format_args!(
            "vmm: guest reported {} passed, {} failed",
            g.passed, g.failed
        ));
    }
    let Some(teardown) = &report.teardown else {
        return;
    };
    host.log(format_args!(
        "vmm: {} host accesses to guest-private memory were refused ({})",
        report.refused,
        match teardown {
            // A userspace backend's probes go through the kernel.
            Ok(Teardown::Closed) => "EFAULT from the host kernel",
            _ => "injected aborts",
        }
    ));
    match teardown {
        Ok(Teardown::Closed) => host.log(format_args!(
            "vmm: teardown: VM closed; the host kernel reclaims and frees its pages (not \
             verifiable here)"
        )),
        Ok(Teardown::Verified(t)) => host.log(format_args!(
            "vmm: teardown verified: {} pages reclaimed, {} private pages read back zero; host \
             pages {} -> {}, host stage-2 leaves {} -> {}",
            t.reclaimed,
            t.private_zeroed,
            t.before.owned_pages,
            t.after.owned_pages,
            t.before.leaves,
            t.after.leaves
        )),
        Err(e) => host.log(format_args!("vmm: TEARDOWN-CHECK-FAILED: {e}")),
    }
}

/// Runs the guest `config` describes over [`KvmVm`] from start to end:
/// creates the VM, loads it, runs it, tears it down and verifies the
/// teardown, logging as the module docs say. The outcome is the returned
/// report.
pub fn run_guest<H: Hypervisor, A: HostPages>(
    hv: H,
    pages: A,
    config: VmmConfig<'_>,
    host: &mut impl VmmHost,
) -> VmmReport {
    match Vmm::create(hv, pages, config) {
        Ok(vmm) => run_created(vmm, host),
        Err(e) => {
            let report = VmmReport::failed(e);
            log_report(&report, host);
            report
        }
    }
}

/// Loads, runs round-robin ([`Vmm::run`]) and finishes a created VMM.
pub fn run_created<B: VmBackend>(mut vmm: Vmm<'_, B>, host: &mut impl VmmHost) -> VmmReport {
    let outcome = match vmm.load() {
        Ok(()) => vmm.run(host),
        Err(e) => Outcome::Error(e),
    };
    vmm.finish(outcome, host).0
}
