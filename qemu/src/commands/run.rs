//! `cargo qemu run`: build el2 and the test host, boot them under QEMU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::args::RunOptions;
use crate::failure::Failure;
use crate::process;
use crate::qemu::{self, Boot, Machine};
use crate::workspace;

/// el2's exit statuses (`el2/src/boot/exit.rs`, `status`), for messages.
/// A host's own SYSTEM_OFF status (the test host: 1 = a check failed)
/// passes through as it is.
pub fn describe_exit(code: i32) -> Option<&'static str> {
    Some(match code {
        0 => return None,
        1 => "the host reported a failure (the test host: a check failed)",
        2 => "the test host stopped on an unexpected exception or bad device tree",
        3 => "the test host panicked",
        4 => "el2 was not entered at EL2 (QEMU needs virtualization=on)",
        5 => "el2 could not boot (see its error above)",
        6 => "el2 took an unexpected exception (see its FATAL line above)",
        7 => "el2 panicked",
        _ => return None,
    })
}

/// Checks that `path` looks like a raw arm64 Image (`ARM\x64` at 0x38).
pub fn check_image(path: &Path) -> Result<(), Failure> {
    let data = std::fs::read(path)
        .map_err(|e| Failure::unavailable(format!("--host {}: {e}", path.display())))?;
    if data.get(0x38..0x3c) != Some(b"ARM\x64".as_slice()) {
        return Err(Failure::unavailable(format!(
            "--host {}: not a raw arm64 Image (no \"ARM\\x64\" magic at offset 0x38); \
             Android boot images are not supported yet",
            path.display()
        )));
    }
    Ok(())
}

/// Builds el2 and the test host, boots el2 with the chosen host and the
/// console on this terminal, and passes QEMU's exit status through. Prints
/// how long QEMU ran (the build excluded).
pub fn run(options: &RunOptions) -> Result<ExitCode, Failure> {
    let host_arg = options.host.as_ref().map(PathBuf::from);
    if let Some(host) = &host_arg {
        check_image(host)?;
    }
    let qemu = qemu::ensure()?;
    let images = workspace::build_images()?;
    let machine = Machine {
        cpu: options.cpu.clone(),
        smp: options.smp,
        mem: options.mem.clone(),
        gdb: options.gdb,
    };
    let host = host_arg.as_deref().unwrap_or(&images.testhost);
    let boot = Boot {
        kernel: &images.el2,
        host: Some(host),
        append: options.append.as_deref(),
        dtb: None,
        machine: &machine,
    };
    let mut cmd = qemu::boot_command(&qemu, &boot);
    eprintln!("==> {}", process::display(&cmd));
    if options.gdb {
        eprintln!("==> QEMU is halted waiting for gdb on :1234; in another terminal run:");
        eprintln!(
            "    gdb-multiarch {} -ex 'target remote :1234'",
            workspace::shown(&images.el2)
        );
    }
    eprintln!("==> QEMU console follows (quit QEMU with Ctrl-A x)");
    let start = Instant::now();
    let status = process::status(&mut cmd)?;
    let elapsed = start.elapsed();
    eprintln!(
        "==> QEMU ran for {:.3} s ({})",
        elapsed.as_secs_f64(),
        process::describe(status)
    );
    match status.code() {
        Some(code) => {
            if let Some(why) = describe_exit(code) {
                eprintln!("==> exit status {code}: {why}");
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        None => Err(Failure::failed(format!(
            "QEMU {}",
            process::describe(status)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_described() {
        assert_eq!(describe_exit(0), None);
        assert!(describe_exit(1).unwrap().contains("check failed"));
        assert!(describe_exit(5).unwrap().contains("could not boot"));
        assert_eq!(describe_exit(42), None);
    }

    #[test]
    fn host_images_are_checked() {
        let dir = std::env::temp_dir().join(format!("qemu-run-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        let mut image = vec![0u8; 64];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        std::fs::write(&good, &image).unwrap();
        assert!(check_image(&good).is_ok());
        let bad = dir.join("bad");
        std::fs::write(&bad, b"ANDROID!").unwrap();
        assert!(
            check_image(&bad)
                .unwrap_err()
                .message
                .contains("not a raw arm64 Image")
        );
        assert!(check_image(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
