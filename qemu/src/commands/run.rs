//! `cargo qemu run`: build el2 and boot it under QEMU.

use std::process::ExitCode;

use crate::args::RunOptions;
use crate::failure::{EXIT_UNAVAILABLE, Failure};
use crate::process;
use crate::qemu::{self, Machine};
use crate::workspace;

/// Semihosting exit code of the el2 stub once it has reached EL2; must match
/// `EXIT_ENTERED_EL2` in `el2/src/boot/mod.rs`.
pub const EL2_EXIT_ENTERED_EL2: i32 = 3;
/// Semihosting exit code of the el2 stub when it was entered at another
/// exception level; must match `EXIT_WRONG_EL` in `el2/src/boot/mod.rs`.
pub const EL2_EXIT_WRONG_EL: i32 = 4;

/// Message printed when el2 stops after reaching EL2, which is all it can
/// do until booting a host lands.
pub const NOT_IMPLEMENTED: &str =
    "el2 reached EL2 but booting a host is not implemented yet (issue 6)";

/// Builds el2, boots it with the console on this terminal and passes QEMU's
/// exit status through, except that the stub's "reached EL2" exit (3)
/// becomes an honest "not implemented yet" and exit status 2.
pub fn run(options: &RunOptions) -> Result<ExitCode, Failure> {
    if let Some(host) = &options.host {
        return Err(Failure::unavailable(format!(
            "--host {host}: booting a host kernel under el2 is not implemented yet \
             (boot issue, issue 6)"
        )));
    }
    let qemu = qemu::ensure()?;
    let images = workspace::build_el2()?;
    let machine = Machine {
        cpu: options.cpu.clone(),
        smp: options.smp,
        mem: options.mem.clone(),
        gdb: options.gdb,
    };
    let mut cmd = qemu::boot_command(&qemu, &images.elf, &machine);
    eprintln!("==> {}", process::display(&cmd));
    if options.gdb {
        eprintln!("==> QEMU is halted waiting for gdb on :1234; in another terminal run:");
        eprintln!(
            "    gdb-multiarch {} -ex 'target remote :1234'",
            workspace::shown(&images.elf)
        );
    }
    eprintln!("==> QEMU console follows (quit QEMU with Ctrl-A x)");
    let status = process::status(&mut cmd)?;
    match status.code() {
        Some(EL2_EXIT_ENTERED_EL2) => {
            println!("{NOT_IMPLEMENTED}");
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        }
        Some(EL2_EXIT_WRONG_EL) => {
            println!("el2 was not entered at EL2 (see its console line above)");
            Ok(ExitCode::from(EL2_EXIT_WRONG_EL as u8))
        }
        Some(code) => {
            if code != 0 {
                eprintln!("QEMU exited with code {code}");
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        None => Err(Failure::failed(format!(
            "QEMU {}",
            process::describe(status)
        ))),
    }
}
