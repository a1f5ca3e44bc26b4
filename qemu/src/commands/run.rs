//! `cargo qemu run`: build el2 and the test host, boot them under QEMU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::args::RunOptions;
use crate::failure::Failure;
use crate::process;
use crate::qemu::{self, Boot, Host, Machine};
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

/// The kind of a `--host` file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// An Android boot image (`ANDROID!`), with its header version.
    Android(u32),
    /// A raw arm64 Image (`ARM\x64` at 0x38).
    Raw,
}

/// What the file at `path` is: an Android boot image or a raw arm64
/// Image. el2 validates the rest (and refuses a bad image with a message
/// naming the field); the runner only picks how to load it.
pub fn host_kind(path: &Path) -> Result<HostKind, Failure> {
    let data = std::fs::read(path)
        .map_err(|e| Failure::unavailable(format!("--host {}: {e}", path.display())))?;
    if data.starts_with(b"ANDROID!") {
        let v = data
            .get(40..44)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(u32::MAX);
        return Ok(HostKind::Android(v));
    }
    if data.get(0x38..0x3c) == Some(b"ARM\x64".as_slice()) {
        return Ok(HostKind::Raw);
    }
    Err(Failure::unavailable(format!(
        "--host {}: neither an Android boot image (\"ANDROID!\") nor a raw arm64 Image \
         (\"ARM\\x64\" at offset 0x38)",
        path.display()
    )))
}

/// The [`Host`] for `--host`, `--vendor-boot` and `--initrd`.
pub fn host_of<'a>(
    host: &'a Path,
    vendor: Option<&'a Path>,
    initrd: Option<&'a Path>,
) -> Result<Host<'a>, Failure> {
    for p in vendor.iter().chain(initrd.iter()) {
        if !p.is_file() {
            return Err(Failure::unavailable(format!(
                "{}: no such file",
                p.display()
            )));
        }
    }
    match host_kind(host)? {
        HostKind::Android(version) => {
            if initrd.is_some() {
                return Err(Failure::unavailable(
                    "--initrd goes with a raw Image; a boot image carries its ramdisk",
                ));
            }
            if vendor.is_some() && version < 3 {
                return Err(Failure::unavailable(format!(
                    "--vendor-boot goes with a boot image of header v3 or v4; {} is v{version}",
                    host.display()
                )));
            }
            Ok(Host::Android { boot: host, vendor })
        }
        HostKind::Raw => {
            if vendor.is_some() {
                return Err(Failure::unavailable(
                    "--vendor-boot goes with an Android boot image, not a raw Image",
                ));
            }
            Ok(Host::Raw {
                kernel: host,
                initrd,
            })
        }
    }
}

/// Builds el2 and the test host, boots el2 with the chosen host and the
/// console on this terminal, and passes QEMU's exit status through. Prints
/// how long QEMU ran (the build excluded).
pub fn run(options: &RunOptions) -> Result<ExitCode, Failure> {
    let host_arg = options.host.as_ref().map(PathBuf::from);
    let vendor = options.vendor_boot.as_ref().map(PathBuf::from);
    let initrd = options.initrd.as_ref().map(PathBuf::from);
    if host_arg.is_none() && (vendor.is_some() || initrd.is_some()) {
        return Err(Failure::unavailable(
            "--vendor-boot and --initrd need --host (a boot image or a raw Image)",
        ));
    }
    if let Some(h) = &host_arg {
        host_of(h, vendor.as_deref(), initrd.as_deref())?;
    }
    let qemu = qemu::ensure()?;
    let images = workspace::build_images()?;
    let machine = Machine {
        cpu: options.cpu.clone(),
        smp: options.smp,
        mem: options.mem.clone(),
        gdb: options.gdb,
    };
    let host = match &host_arg {
        Some(h) => host_of(h, vendor.as_deref(), initrd.as_deref())?,
        None => Host::InPlace(&images.testhost),
    };
    let boot = Boot {
        kernel: &images.el2,
        host,
        append: options.append.as_deref(),
        dtb: None,
        machine: &machine,
    };
    let mut cmd = qemu::boot_command(&qemu, &boot).map_err(Failure::unavailable)?;
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
        assert_eq!(host_kind(&good).unwrap(), HostKind::Raw);
        let boot = dir.join("boot");
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(b"ANDROID!");
        b[40] = 4;
        std::fs::write(&boot, &b).unwrap();
        assert_eq!(host_kind(&boot).unwrap(), HostKind::Android(4));
        let bad = dir.join("bad");
        std::fs::write(&bad, b"VNDRBOOT").unwrap();
        assert!(host_kind(&bad).unwrap_err().message.contains("neither"));
        assert!(host_kind(&dir.join("missing")).is_err());
        // Option combinations.
        assert!(matches!(
            host_of(&boot, Some(&bad), None).unwrap(),
            Host::Android {
                vendor: Some(_),
                ..
            }
        ));
        assert!(
            host_of(&boot, None, Some(&bad)).is_err(),
            "initrd with a boot image"
        );
        assert!(
            host_of(&good, Some(&bad), None).is_err(),
            "vendor boot with a raw Image"
        );
        assert!(matches!(
            host_of(&good, None, Some(&bad)).unwrap(),
            Host::Raw {
                initrd: Some(_),
                ..
            }
        ));
        b[40] = 2;
        std::fs::write(&boot, &b).unwrap();
        assert!(
            host_of(&boot, Some(&bad), None)
                .unwrap_err()
                .message
                .contains("v3 or v4")
        );
        assert!(host_of(&boot, Some(&dir.join("missing")), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
