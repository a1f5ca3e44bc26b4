//! `cargo qemu`: the host-side runner of the workspace.
//!
//! Invoked through the alias in `.cargo/config.toml`
//! (`cargo qemu <command>` = `cargo run --quiet --package qemu -- <command>`),
//! it builds the `el2` hypervisor for `aarch64-unknown-none`, boots it under
//! `qemu-system-aarch64`, runs the QEMU tests and the whole test suite. See
//! [`args::USAGE`] for the commands.
//!
//! Its dependencies are the workspace's own `el2` library (the Android
//! boot image packer and parser, feature `pack`) and `host_interface` (the
//! guest descriptor handed to the test host's VMM): arguments are parsed by
//! hand ([`args`]), QEMU is found or installed by [`qemu`], cargo is driven
//! by [`workspace`], the Linux host images are built by [`linux`] (with
//! [`cpio`]) and the commands live in [`commands`].

mod args;
mod commands;
mod cpio;
mod dtb;
mod failure;
mod linux;
mod process;
mod qemu;
mod workspace;

use std::process::ExitCode;

use args::Command;
use failure::{EXIT_FAILED, EXIT_UNAVAILABLE};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("cargo qemu: error: {error}\n");
            eprint!("{}", args::USAGE);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if !matches!(command, Command::Help) {
        workspace::ensure_toolchain();
    }
    let result = match command {
        Command::Help => {
            print!("{}", args::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Build => commands::build::build().map(|()| ExitCode::SUCCESS),
        Command::Run(options) => commands::run::run(&options),
        Command::LinuxImages => commands::linux_images::linux_images().map(|()| ExitCode::SUCCESS),
        Command::GuestKernel => commands::guest_kernel::guest_kernel().map(|()| ExitCode::SUCCESS),
        Command::HostDriver => commands::host_driver::host_driver().map(|()| ExitCode::SUCCESS),
        Command::VmmImages => commands::vmm_images::vmm_images().map(|()| ExitCode::SUCCESS),
        Command::BenchBoot(host_map) => {
            commands::bench::bench_boot(host_map).map(|()| ExitCode::SUCCESS)
        }
        Command::Fuzz(options) => commands::fuzz::fuzz(&options).map(|()| ExitCode::SUCCESS),
        Command::BenchGuest => commands::bench_guest::bench_guest().map(|()| ExitCode::SUCCESS),
        Command::BenchGuestBoot => {
            commands::bench_guest_boot::bench_guest_boot().map(|()| ExitCode::SUCCESS)
        }
        Command::Test => commands::test::run_all().map(|summary| {
            // The summary line has been printed; add nothing after it.
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }),
        Command::TestAll => Ok(if commands::test_all::test_all() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        }),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("cargo qemu: {failure}");
            ExitCode::from(failure.code)
        }
    }
}
