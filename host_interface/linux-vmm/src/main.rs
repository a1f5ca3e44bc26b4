//! `pkvm-vmm`: the Linux userspace VMM. Runs one protected guest under
//! el2 from a Linux host, over the pkvm-rs host driver (`/dev/pkvm-rs`,
//! `host_interface/driver/`), with the same VMM library the bare-metal
//! test host uses (`host_interface::vmm`: loading in place, the device
//! tree, the PL011, the test device, `CPU_ON`, conversions, the counts).
//!
//! ```text
//! pkvm-vmm run --mem <MiB> --cpus <n> [--initrd <file>] [--params <cmdline>] --protected-vm <kernel Image>
//! ```
//!
//! (see [`args`] for every option). Built as a static
//! `aarch64-unknown-linux-musl` binary:
//!
//! ```text
//! cargo build -p pkvm-vmm --target aarch64-unknown-linux-musl --release
//! ```
//!
//! - **Backend** ([`driver`]): [`driver::LinuxVm`] implements the library's
//!   `VmBackend` with the driver's ioctls (`host_interface::uapi`).
//! - **vCPUs** ([`vcpus`]): one thread per vCPU, each looping on
//!   `KVM_RUN`, exits served under one lock on the VMM.
//! - **Console** ([`host`]): the guest's PL011 output is standard output,
//!   raw; standard input goes to its receive FIFO (a terminal is put in
//!   raw mode for the run, so Ctrl-C is the guest's); the VMM's lines
//!   (`vmm: ...`, the library's, see `host_interface::vmm`) go to
//!   standard error.
//! - **Signals**: `SIGINT` and `SIGTERM` stop the VM (the vCPUs leave
//!   `KVM_RUN`, the VM is closed, the counts are printed).
//! - **Teardown**: the VM's files are closed and the driver reclaims its
//!   pages at el2; userspace cannot see host-physical memory, so the
//!   library's verified teardown (private pages read back zero,
//!   `HostStats` before and after) is the bare-metal backend's only, and
//!   this one reports `vmm: teardown: VM closed ...`. Likewise the test
//!   device's `PROBE_PHYS` reads the page through the guest_memfd mapping
//!   (the most direct access userspace has): refused means the kernel
//!   could not read it (the driver's mapping or el2 refused it).
//!
//! Exit status: 0 the guest powered off and reported no failing check;
//! 8 the guest reported failing checks; 9 the guest reset; 10 el2 stopped
//! a vCPU (the guest crashed); 11 the VMM failed (a file, the driver, a
//! guest access it cannot emulate); 128 + n stopped by signal n (130 for
//! `SIGINT`, 143 for `SIGTERM`); 2 a bad command line.

mod args;
mod driver;
mod host;
mod vcpus;

use std::process::ExitCode;

use host_interface::vmm::{
    STATUS_VMM_ERROR, Vmm, VmmConfig, VmmError, VmmHost, VmmReport, log_report,
};

use args::{Command, RunOptions, USAGE};
use driver::LinuxVm;
use host::{LinuxHost, RawTerminal};

/// Exit status of a bad command line.
const STATUS_USAGE: u8 = 2;

fn main() -> ExitCode {
    match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Run(options)) => ExitCode::from(run(&options)),
        Err(e) => {
            eprintln!("pkvm-vmm: {e}\n\n{USAGE}");
            ExitCode::from(STATUS_USAGE)
        }
    }
}

/// Reads a whole file for the guest, for the process's lifetime.
fn read(what: &str, path: &std::path::Path, host: &mut impl VmmHost) -> Option<&'static [u8]> {
    match std::fs::read(path) {
        Ok(bytes) => Some(Vec::leak(bytes)),
        Err(e) => {
            host.log(format_args!(
                "vmm: error: reading the {what} {}: {e}",
                path.display()
            ));
            None
        }
    }
}

/// Runs the guest `o` describes; the exit status.
fn run(o: &RunOptions) -> u8 {
    let mut host = LinuxHost::stdio();
    let Some(kernel) = read("kernel", &o.kernel, &mut host) else {
        return STATUS_VMM_ERROR;
    };
    let initrd = match &o.initrd {
        Some(p) => match read("initrd", p, &mut host) {
            Some(b) => Some(b),
            None => return STATUS_VMM_ERROR,
        },
        None => None,
    };
    let Some(mem) = o.mem_mib.checked_mul(1 << 20) else {
        host.log(format_args!(
            "vmm: error: --mem {} MiB is too large",
            o.mem_mib
        ));
        return STATUS_VMM_ERROR;
    };
    let config = VmmConfig {
        mem,
        vcpus: o.cpus,
        cmdline: String::leak(o.params.clone()),
        small_pages: false,
        kernel,
        initrd,
    };
    if let Err(e) = vcpus::install_signal_handlers() {
        host.log(format_args!("vmm: error: installing signal handlers: {e}"));
        return STATUS_VMM_ERROR;
    }
    host.log(format_args!(
        "vmm: pkvm-vmm: kernel {} ({} bytes), initrd {} bytes, {} MiB, {} vCPU(s) (a thread \
         each), driver {}",
        o.kernel.display(),
        kernel.len(),
        initrd.map_or(0, <[u8]>::len),
        o.mem_mib,
        o.cpus,
        o.device.display()
    ));
    let created = Vmm::create_with(config, |c| {
        LinuxVm::open(&o.device, c.vcpus)
            .map(|vm| (vm, None))
            .map_err(|e| VmmError::Host {
                what: e.what,
                errno: e.errno,
            })
    });
    let mut vmm = match created {
        Ok(v) => v,
        Err(e) => {
            let report = VmmReport::failed(e);
            log_report(&report, &mut host);
            return report.exit_status();
        }
    };
    if let Err(e) = vmm.load() {
        let (report, _) = vmm.finish(host_interface::vmm::Outcome::Error(e), &mut host);
        return report.exit_status();
    }
    let terminal = RawTerminal::enter();
    let ended = vcpus::run(vcpus::State { vmm, host });
    drop(terminal);
    match ended {
        Some(report) => {
            eprintln!(
                "vmm: exit status {} ({})",
                report.exit_status(),
                report.meaning()
            );
            report.exit_status()
        }
        None => {
            // Leave the VM's memory and files alone (a thread may still be
            // in KVM_RUN with its run page): the process's exit closes them.
            std::process::exit(i32::from(STATUS_VMM_ERROR))
        }
    }
}
