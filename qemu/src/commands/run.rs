//! `cargo qemu run`: build el2 and the test host, boot them under QEMU
//! (with a guest for the test host's VMM when `--guest` is given).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::args::{GuestImage, GuestOptions, RunOptions};
use crate::failure::Failure;
use crate::process::{self, TempDir};
use crate::qemu::{self, Boot, Guest, Host, Machine};
use crate::workspace::{self, Images};

/// el2's exit statuses (`el2/src/arch/exit.rs`, `status`), for messages.
/// A host's own SYSTEM_OFF status (the test host: 1 = a check failed;
/// as the VMM of a `--guest`, 8 to 11) passes through as it is.
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
        8 => "the guest reported failing checks",
        9 => "the guest reset (PSCI SYSTEM_RESET)",
        10 => "the guest crashed or el2 stopped it",
        11 => {
            "the VMM failed (bad guest image, a hypervisor call failed, or the teardown check \
             failed)"
        }
        12 => "the host reset the machine (PSCI SYSTEM_RESET; a Linux host's reboot or panic)",
        _ => return None,
    })
}

/// What `cargo qemu run --guest` says about the console before QEMU
/// starts.
pub const CONSOLE_KEYS: &str = "\
==> QEMU console follows; with --guest it is the guest's console too: what you type goes to
    the guest's PL011 (with `guest.shell` in --guest-append, the pKVM guest's init gives you a
    shell; `exit` or Ctrl-D powers the guest off). Ctrl-C goes to the guest; Ctrl-A x quits
    QEMU, Ctrl-A c switches to QEMU's monitor and back, Ctrl-A h lists the keys.";

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

/// What can be checked of the guest's options before anything is built:
/// a `--guest` Image file (not the built test guest) and `--guest-initrd`
/// exist, and `--guest-append` fits the guest descriptor. The rest (the
/// Image header, where the files go) is checked once the test guest is
/// built, by [`qemu::guest_layout`].
fn check_guest_options(guest: &GuestOptions) -> Result<(), Failure> {
    if let Some(append) = &guest.append
        && append.len() as u64 > qemu::MAX_GUEST_CMDLINE
    {
        return Err(Failure::unavailable(format!(
            "--guest-append is {} bytes; the guest descriptor takes at most {}",
            append.len(),
            qemu::MAX_GUEST_CMDLINE
        )));
    }
    let image = match &guest.image {
        GuestImage::File(f) => Some(("--guest", f)),
        GuestImage::Testguest => None,
    };
    let initrd = guest.initrd.as_ref().map(|f| ("--guest-initrd", f));
    for (option, file) in image.into_iter().chain(initrd) {
        if !Path::new(file).is_file() {
            return Err(Failure::unavailable(format!(
                "{option} {file}: no such file"
            )));
        }
    }
    Ok(())
}

/// The [`Guest`] for `--guest` and its options: `testguest` is the built
/// `testguest.bin`; `cmdline` is the file holding `--guest-append` (see
/// [`qemu::write_guest_cmdline`]).
pub fn guest_of<'a>(
    guest: &'a GuestOptions,
    images: &'a Images,
    cmdline: Option<&'a Path>,
) -> Guest<'a> {
    Guest {
        kernel: match &guest.image {
            GuestImage::Testguest => &images.testguest,
            GuestImage::File(f) => Path::new(f),
        },
        initrd: guest.initrd.as_deref().map(Path::new),
        cmdline,
        mem: guest.mem,
        vcpus: guest.smp,
        small_pages: guest.small_pages,
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
    if let Some(guest) = &options.guest {
        check_guest_options(guest)?;
    }
    let qemu = qemu::ensure()?;
    let images = workspace::build_images()?;
    let machine = Machine {
        cpu: options.cpu.clone(),
        smp: options.smp,
        mem: options.mem.clone(),
        gdb: options.gdb,
        its: options.its,
        devices: options.devices.clone(),
    };
    let host = match &host_arg {
        Some(h) => host_of(h, vendor.as_deref(), initrd.as_deref())?,
        None => Host::InPlace(&images.testhost),
    };
    // QEMU's loader reads the command line file when QEMU starts; the
    // directory holding it is removed when `scratch` is dropped, after QEMU
    // has exited.
    let guest_append = options.guest.as_ref().and_then(|g| g.append.as_deref());
    let scratch = guest_append.map(|_| TempDir::new()).transpose()?;
    let cmdline = match (guest_append, &scratch) {
        (Some(text), Some(dir)) => {
            qemu::write_guest_cmdline(&dir.path().join("guest-cmdline"), text)
                .map_err(Failure::unavailable)?
        }
        _ => None,
    };
    let guest = options
        .guest
        .as_ref()
        .map(|g| guest_of(g, &images, cmdline.as_deref()));
    let boot = Boot {
        kernel: &images.el2,
        host,
        append: options.append.as_deref(),
        dtb: None,
        machine: &machine,
        guest,
    };
    let mut cmd = qemu::boot_command(&qemu, &boot).map_err(Failure::unavailable)?;
    if options.guest.is_some() {
        cmd.args(qemu::interactive_console_args());
    }
    eprintln!("==> {}", process::display(&cmd));
    if options.gdb {
        eprintln!("==> QEMU is halted waiting for gdb on :1234; in another terminal run:");
        eprintln!(
            "    gdb-multiarch {} -ex 'target remote :1234'",
            workspace::shown(&images.el2)
        );
    }
    if options.guest.is_some() {
        eprintln!("{CONSOLE_KEYS}");
    } else {
        eprintln!("==> QEMU console follows (quit QEMU with Ctrl-A x)");
    }
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
        assert!(
            describe_exit(8)
                .unwrap()
                .contains("guest reported failing checks")
        );
        assert!(describe_exit(9).unwrap().contains("SYSTEM_RESET"));
        assert!(
            describe_exit(12)
                .unwrap()
                .contains("host reset the machine")
        );
        assert!(
            describe_exit(10)
                .unwrap()
                .contains("crashed or el2 stopped it")
        );
        assert!(describe_exit(11).unwrap().contains("teardown check failed"));
        for code in 1..=12 {
            assert!(describe_exit(code).is_some(), "{code}");
        }
        assert_eq!(describe_exit(13), None);
        assert_eq!(describe_exit(42), None);
    }

    #[test]
    fn guest_options_are_checked_before_the_build() {
        let dir = std::env::temp_dir().join(format!("qemu-run-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("Image");
        std::fs::write(&image, b"x").unwrap();
        let path = |p: &Path| p.display().to_string();
        // The built test guest needs no file yet.
        assert!(check_guest_options(&GuestOptions::new(GuestImage::Testguest)).is_ok());
        let file = GuestOptions::new(GuestImage::File(path(&image)));
        assert!(check_guest_options(&file).is_ok());
        let missing = GuestOptions::new(GuestImage::File(path(&dir.join("missing"))));
        let e = check_guest_options(&missing).unwrap_err();
        assert!(e.message.starts_with("--guest ") && e.message.ends_with("no such file"));
        let e = check_guest_options(&GuestOptions {
            initrd: Some(path(&dir.join("missing"))),
            ..file.clone()
        })
        .unwrap_err();
        assert!(e.message.starts_with("--guest-initrd "), "{}", e.message);
        let e = check_guest_options(&GuestOptions {
            append: Some("a".repeat(4097)),
            ..file.clone()
        })
        .unwrap_err();
        assert!(e.message.contains("4097 bytes"), "{}", e.message);
        assert!(
            check_guest_options(&GuestOptions {
                append: Some("a".repeat(4096)),
                ..file
            })
            .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_options_become_a_guest() {
        let images = Images {
            el2: PathBuf::from("el2"),
            el2_raw: None,
            testhost: PathBuf::from("testhost.bin"),
            testguest: PathBuf::from("t/testguest.bin"),
        };
        let options = GuestOptions {
            initrd: Some("initrd".to_owned()),
            append: Some("ignored: the file says".to_owned()),
            mem: 256 << 20,
            smp: 3,
            small_pages: true,
            ..GuestOptions::new(GuestImage::Testguest)
        };
        let g = guest_of(&options, &images, Some(Path::new("cmdline")));
        assert_eq!(g.kernel, Path::new("t/testguest.bin"));
        assert_eq!(g.initrd, Some(Path::new("initrd")));
        assert_eq!(g.cmdline, Some(Path::new("cmdline")));
        assert_eq!((g.mem, g.vcpus, g.small_pages), (256 << 20, 3, true));
        let file = GuestOptions::new(GuestImage::File("my/Image".to_owned()));
        let g = guest_of(&file, &images, None);
        assert_eq!(g.kernel, Path::new("my/Image"));
        assert_eq!((g.initrd, g.cmdline), (None, None));
        assert_eq!((g.mem, g.vcpus, g.small_pages), (128 << 20, 1, false));
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
