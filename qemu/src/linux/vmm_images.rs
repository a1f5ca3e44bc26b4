//! The boot image that runs the Linux VMM end to end inside the Linux host
//! under el2 (`cargo qemu vmm-images`).
//!
//! 1. Its parts, each built or found in its own cache: the Linux host
//!    images ([`super::ensure`]: Debian's kernel, busybox, the virtio
//!    modules), the host driver and its smoke test
//!    ([`super::host_driver::ensure`]), `pkvm-vmm` (`cargo build -p
//!    pkvm-vmm --target aarch64-unknown-linux-musl --release`, then
//!    `aarch64-linux-gnu-strip --strip-debug` into `<cache>/vmm-images/`:
//!    the release profile keeps debug info, 8 MB of it), the test guest
//!    (`testguest.bin`, from `cargo qemu build`) and, when it can be built
//!    here, the pKVM Linux guest kernel and its initramfs
//!    ([`super::guest_kernel::ensure`]; when it cannot, the image says
//!    why in `/guest/linux-guest-skipped` and init skips that guest).
//! 2. The ramdisk is linux-images' busybox initramfs
//!    ([`super::initramfs_with`]) with `/init` = `vmm-init.sh` and the
//!    parts at the paths below ([`Parts::entries`]).
//! 3. It is packed with Debian's kernel as a header v4 boot image, the
//!    layout of linux-images' `boot-v4.img` ([`super::write_boot_v4`]:
//!    QEMU's device tree at boot, parsed back with el2's parser), as
//!    `<cache>/images/vmm-boot.img`, rewritten only when a byte of it
//!    changes: any changed input (a source of the driver, of the VMM, of
//!    the test guest, the guest kernel's recipe, this init) changes the
//!    ramdisk. `<cache>/images/vmm-boot.manifest` lists what went in, with
//!    sizes and hashes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::guest_kernel::{self, GUEST_CMDLINE, GuestKernel, fnv1a64};
use super::host_driver::{self, CROSS_COMPILE};
use super::{cache_dir, cmdline_for, io_err, write_boot_v4, write_if_changed};
use crate::cpio::Entry;
use crate::failure::{EXIT_UNAVAILABLE, Failure};
use crate::process;
use crate::workspace::{self, VMM_TARGET, find_in_path};

/// The init script of the VMM boot image.
pub const VMM_INIT: &str = include_str!("vmm-init.sh");

/// The boot image's file name, in `<cache>/images/`.
pub const BOOT_IMAGE: &str = "vmm-boot.img";
/// What went into it, in `<cache>/images/`.
pub const MANIFEST: &str = "vmm-boot.manifest";
/// The image's name on its command line (`pkvm_image=vmm-boot`).
pub const IMAGE_NAME: &str = "vmm-boot";

/// The host driver, in the ramdisk.
pub const MODULE_PATH: &str = "lib/pkvm/pkvm_rs.ko";
/// The driver's smoke test, in the ramdisk.
pub const SMOKE_PATH: &str = "bin/pkvm-rs-smoke";
/// The VMM, in the ramdisk.
pub const VMM_PATH: &str = "bin/pkvm-vmm";
/// The test guest, in the ramdisk.
pub const TESTGUEST_PATH: &str = "guest/testguest.bin";
/// The pKVM Linux guest kernel, in the ramdisk (when it could be built).
pub const GUEST_IMAGE_PATH: &str = "guest/Image";
/// The Linux guest's initramfs, in the ramdisk (with [`GUEST_IMAGE_PATH`]).
pub const GUEST_INITRD_PATH: &str = "guest/initramfs.cpio";
/// The Linux guest's command line, in the ramdisk: the one the QEMU tests
/// of the guest kernel use, with which its init powers off by itself.
pub const GUEST_PARAMS_PATH: &str = "guest/params";
/// Why the Linux guest is not in the ramdisk (instead of
/// [`GUEST_IMAGE_PATH`]).
pub const GUEST_SKIPPED_PATH: &str = "guest/linux-guest-skipped";

/// The directories the ramdisk adds (linux-images' `bin` and `lib` are
/// there already).
const DIRS: [&str; 2] = ["lib/pkvm", "guest"];

/// The kernel command-line word that gives a shell after the checks.
pub const SHELL_ARG: &str = "pkvm.shell";

/// The markers init prints, in order, when every step passes with the
/// Linux guest in the image (the QEMU test's lists must ask for each).
#[cfg(test)]
pub const MARKERS: [&str; 6] = [
    "VMM-SMOKE-OK",
    "VMM-TESTGUEST-OK",
    "VMM-LINUX-GUEST-OK",
    "VMM-RMMOD-OK",
    "VMM-KERNEL-LOG-CLEAN",
    "VMM-ALL-OK",
];
/// The marker that replaces `VMM-LINUX-GUEST-OK` when the image has no
/// Linux guest.
pub const LINUX_GUEST_SKIPPED: &str = "VMM-LINUX-GUEST-SKIPPED";
/// The line init prints on the first failure, before `<what> (status N)`.
pub const FAILED: &str = "VMM-FAILED: ";

/// What `vmm-images` produces.
#[derive(Debug, Clone)]
pub struct VmmImages {
    /// The boot image (`<cache>/images/vmm-boot.img`).
    pub boot: PathBuf,
    /// What went into it (`<cache>/images/vmm-boot.manifest`).
    pub manifest: PathBuf,
    /// `pkvm_rs.ko`.
    pub module: PathBuf,
    /// `pkvm-rs-smoke`.
    pub smoke: PathBuf,
    /// `pkvm-vmm`, stripped (`<cache>/vmm-images/pkvm-vmm`).
    pub vmm: PathBuf,
    /// `testguest.bin`.
    pub testguest: PathBuf,
    /// The pKVM Linux guest kernel and initramfs in the image, or why
    /// they are not (they cannot be built here).
    pub linux_guest: Result<GuestKernel, String>,
}

/// The bytes of the ramdisk's parts.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// `pkvm_rs.ko`.
    pub module: &'a [u8],
    /// `pkvm-rs-smoke`.
    pub smoke: &'a [u8],
    /// `pkvm-vmm`.
    pub vmm: &'a [u8],
    /// `testguest.bin`.
    pub testguest: &'a [u8],
    /// The Linux guest's kernel `Image` and initramfs, or why they are
    /// missing.
    pub linux_guest: Result<(&'a [u8], &'a [u8]), &'a str>,
}

impl<'a> Parts<'a> {
    /// The ramdisk entries of the parts (directories first), with their
    /// modes: programs executable, data not.
    pub fn entries(&self) -> Vec<Entry<'a>> {
        let mut e: Vec<Entry<'a>> = DIRS.iter().map(|d| Entry::Dir(d)).collect();
        e.push(Entry::File(MODULE_PATH, 0o644, self.module));
        e.push(Entry::File(SMOKE_PATH, 0o755, self.smoke));
        e.push(Entry::File(VMM_PATH, 0o755, self.vmm));
        e.push(Entry::File(TESTGUEST_PATH, 0o644, self.testguest));
        e.push(Entry::File(
            GUEST_PARAMS_PATH,
            0o644,
            GUEST_PARAMS_LINE.as_bytes(),
        ));
        match self.linux_guest {
            Ok((image, initrd)) => {
                e.push(Entry::File(GUEST_IMAGE_PATH, 0o644, image));
                e.push(Entry::File(GUEST_INITRD_PATH, 0o644, initrd));
            }
            Err(why) => e.push(Entry::File(GUEST_SKIPPED_PATH, 0o644, why.as_bytes())),
        }
        e
    }

    /// The manifest's text: one line per part, `<ramdisk path> <size>
    /// <FNV-1a 64>`, and the skip reason if any.
    pub fn manifest(&self) -> String {
        let mut text = String::from("# cargo qemu vmm-images: what vmm-boot.img's ramdisk adds\n");
        for entry in self.entries() {
            if let Entry::File(path, _, data) = entry {
                let _ = writeln!(text, "{path} {} {:016x}", data.len(), fnv1a64(data));
            }
        }
        if let Err(why) = self.linux_guest {
            let _ = writeln!(text, "# Linux guest skipped: {why}");
        }
        text
    }
}

/// The Linux guest's command line as written to [`GUEST_PARAMS_PATH`].
const GUEST_PARAMS_LINE: &str = GUEST_CMDLINE;

/// The VMM boot image's ramdisk: linux-images' initramfs (busybox, the
/// virtio modules) with [`VMM_INIT`] as `/init` and `parts`.
pub fn ramdisk(busybox: &[u8], modules: &[(String, Vec<u8>)], parts: &Parts<'_>) -> Vec<u8> {
    super::initramfs_with(busybox, modules, VMM_INIT, parts.entries())
}

/// The cargo arguments that build `pkvm-vmm`, as shown to the user.
pub const BUILD_VMM: [&str; 7] = [
    "build",
    "-p",
    "pkvm-vmm",
    "--target",
    VMM_TARGET,
    "--release",
    "--message-format=json-render-diagnostics",
];

/// The `executable` of cargo's `compiler-artifact` message for the binary
/// `name` (a plain path: no JSON escapes in it, or `None`).
pub fn artifact_executable(messages: &str, name: &str) -> Option<PathBuf> {
    let name = format!("\"name\":\"{name}\"");
    messages
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"")
                && l.contains("\"kind\":[\"bin\"]")
                && l.contains(&name)
        })
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let path = &l[start..start + l[start..].find('"')?];
            (!path.contains('\\')).then(|| PathBuf::from(path))
        })
}

/// Builds `pkvm-vmm` for the Linux host and copies it, stripped of its
/// debug info, to `<dir>/pkvm-vmm` (unless that holds exactly the same).
fn build_vmm(dir: &Path) -> Result<PathBuf, Failure> {
    eprintln!("==> cargo {}", BUILD_VMM[..6].join(" "));
    let messages = process::stdout_of(&mut workspace::cargo(BUILD_VMM))
        .map_err(|f| Failure::failed(format!("building pkvm-vmm failed: {f}")))?;
    let built = artifact_executable(&messages, "pkvm-vmm").ok_or_else(|| {
        Failure::failed("cargo built pkvm-vmm but named no executable for it".to_owned())
    })?;
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let strip_tool = format!("{CROSS_COMPILE}strip");
    if find_in_path(&strip_tool).is_none() {
        return Err(Failure::unavailable(format!(
            "{strip_tool} not found: vmm-images strips pkvm-vmm with it (Debian package \
             binutils-aarch64-linux-gnu)"
        )));
    }
    let tmp = dir.join(format!(".pkvm-vmm.{}", std::process::id()));
    let mut strip = Command::new(&strip_tool);
    strip.arg("--strip-debug").arg("-o").arg(&tmp).arg(&built);
    process::checked(&mut strip)?;
    let data = fs::read(&tmp).map_err(|e| io_err(&tmp, e))?;
    let _ = fs::remove_file(&tmp);
    let path = dir.join("pkvm-vmm");
    write_if_changed(&path, &data)?;
    Ok(path)
}

/// What to make of the guest kernel's build for the image: the kernel, a
/// reason to leave it out (it cannot be built here), or a failure (a
/// build was attempted and failed).
pub fn linux_guest_verdict(
    built: Result<GuestKernel, Failure>,
) -> Result<Result<GuestKernel, String>, Failure> {
    match built {
        Ok(g) => Ok(Ok(g)),
        Err(f) if f.code == EXIT_UNAVAILABLE => Ok(Err(format!(
            "the pKVM guest kernel cannot be built here: {}",
            f.message
        ))),
        Err(f) => Err(Failure::failed(format!(
            "building the pKVM guest kernel failed: {}",
            f.message
        ))),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    fs::read(path).map_err(|e| io_err(path, e))
}

/// Builds (or finds in their caches) every part and writes the VMM boot
/// image (module docs); `testguest` is the built `testguest.bin`.
/// Progress goes to stderr.
///
/// The error's [`Failure::code`] tells a test what to make of it:
/// [`EXIT_UNAVAILABLE`] means a part the image cannot do without (the
/// Linux host images, the host driver) cannot be built on this machine
/// (print `SKIPPED: <message>`); [`crate::failure::EXIT_FAILED`] means a
/// build was attempted and failed. A Linux guest that cannot be built here
/// is left out ([`VmmImages::linux_guest`]), not an error.
pub fn ensure(testguest: &Path) -> Result<VmmImages, Failure> {
    let cache = cache_dir()?;
    let linux = super::ensure()?;
    let driver = host_driver::ensure().map_err(|f| {
        if f.code == EXIT_UNAVAILABLE {
            Failure::unavailable(format!("the host driver: {f}"))
        } else {
            f
        }
    })?;
    let vmm = build_vmm(&cache.join("vmm-images"))?;
    eprintln!("==> the pKVM guest kernel (cargo qemu guest-kernel)");
    let linux_guest = linux_guest_verdict(guest_kernel::ensure())?;
    if let Err(why) = &linux_guest {
        eprintln!("==> the image will have no Linux guest: {why}");
    }

    let kernel = read(&linux.kernel)?;
    let busybox = read(&linux.busybox)?;
    let modules = super::virtio_modules(&linux.kernel_root)?;
    let (module, smoke, vmm_bin, guest_bin) = (
        read(&driver.module)?,
        read(&driver.smoke)?,
        read(&vmm)?,
        read(testguest)?,
    );
    let guest_files = match &linux_guest {
        Ok(g) => Ok((read(&g.image)?, read(&g.initramfs)?)),
        Err(why) => Err(why.as_str()),
    };
    let parts = Parts {
        module: &module,
        smoke: &smoke,
        vmm: &vmm_bin,
        testguest: &guest_bin,
        linux_guest: match &guest_files {
            Ok((image, initrd)) => Ok((image.as_slice(), initrd.as_slice())),
            Err(why) => Err(*why),
        },
    };
    let out = cache.join("images");
    let boot = out.join(BOOT_IMAGE);
    let manifest = out.join(MANIFEST);
    write_boot_v4(
        &boot,
        &kernel,
        &ramdisk(&busybox, &modules, &parts),
        &cmdline_for(IMAGE_NAME),
    )?;
    write_if_changed(&manifest, parts.manifest().as_bytes())?;
    Ok(VmmImages {
        boot,
        manifest,
        module: driver.module,
        smoke: driver.smoke,
        vmm,
        testguest: testguest.to_owned(),
        linux_guest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the ramdisk adds to linux-images' initramfs, whatever
    /// the guest kernel (the Linux guest's two files come on top).
    const RAMDISK_FILES: [&str; 5] = [
        MODULE_PATH,
        SMOKE_PATH,
        VMM_PATH,
        TESTGUEST_PATH,
        GUEST_PARAMS_PATH,
    ];

    fn has(a: &[u8], s: &[u8]) -> bool {
        a.windows(s.len()).any(|w| w == s)
    }

    fn parts(linux_guest: Result<(&'static [u8], &'static [u8]), &'static str>) -> Parts<'static> {
        Parts {
            module: b"\x7fELF-module",
            smoke: b"\x7fELF-smoke",
            vmm: b"\x7fELF-vmm",
            testguest: b"testguest-image",
            linux_guest,
        }
    }

    #[test]
    fn the_ramdisk_is_linux_images_plus_the_vmm_parts() {
        let modules = vec![("virtio-rng".to_owned(), b"\x7fELF-virtio".to_vec())];
        let with = ramdisk(
            b"\x7fELF-busybox",
            &modules,
            &parts(Ok((b"guest-Image", b"guest-cpio"))),
        );
        for name in RAMDISK_FILES
            .iter()
            .chain(&[GUEST_IMAGE_PATH, GUEST_INITRD_PATH])
            .chain(&[
                "init",
                "bin/busybox",
                "dev/console",
                "lib/virtio/virtio-rng.ko",
            ])
        {
            assert!(has(&with, format!("{name}\0").as_bytes()), "{name}");
        }
        for data in [
            &b"ELF-module"[..],
            b"ELF-smoke",
            b"ELF-vmm",
            b"testguest-image",
            b"guest-Image",
            b"guest-cpio",
            b"ELF-virtio",
            VMM_INIT.as_bytes(),
            GUEST_CMDLINE.as_bytes(),
        ] {
            assert!(has(&with, data));
        }
        // (init names the file: look for the entry, its name and NUL.)
        assert!(!has(&with, format!("{GUEST_SKIPPED_PATH}\0").as_bytes()));
        // linux-images' own init is not there: /init is the VMM's.
        assert!(!has(&with, super::super::INIT_SCRIPT.as_bytes()));
        // Directories before their files, so the kernel can create them.
        let at = |s: &str| with.windows(s.len()).position(|w| w == s.as_bytes());
        assert!(at("guest\0") < at("guest/testguest.bin\0"));
        assert!(at("lib/pkvm\0") < at("lib/pkvm/pkvm_rs.ko\0"));
        assert_eq!(with.len() % 4, 0);

        let without = ramdisk(b"bb", &[], &parts(Err("no compiler")));
        assert!(has(&without, format!("{GUEST_SKIPPED_PATH}\0").as_bytes()));
        assert!(has(&without, b"no compiler"));
        assert!(!has(&without, format!("{GUEST_IMAGE_PATH}\0").as_bytes()));
    }

    #[test]
    fn the_manifest_lists_every_part() {
        let m = parts(Ok((b"guest-Image", b"guest-cpio"))).manifest();
        assert!(m.contains(&format!(
            "lib/pkvm/pkvm_rs.ko 11 {:016x}\n",
            fnv1a64(b"\x7fELF-module")
        )));
        assert!(m.contains("guest/Image 11 "));
        assert!(!m.contains("skipped"));
        let m = parts(Err("no network")).manifest();
        assert!(m.contains("# Linux guest skipped: no network\n"));
        assert!(!m.contains("guest/Image "));
    }

    #[test]
    fn init_uses_the_paths_and_prints_the_markers() {
        assert!(VMM_INIT.starts_with("#!/bin/busybox sh\n"));
        for path in
            RAMDISK_FILES
                .iter()
                .chain(&[GUEST_IMAGE_PATH, GUEST_INITRD_PATH, GUEST_SKIPPED_PATH])
        {
            let name = path.rsplit('/').next().unwrap();
            assert!(VMM_INIT.contains(name), "{path}");
        }
        for dir_path in [MODULE_PATH, TESTGUEST_PATH, GUEST_IMAGE_PATH] {
            assert!(VMM_INIT.contains(&format!("/{dir_path}")), "{dir_path}");
        }
        for marker in MARKERS.iter().chain(&[LINUX_GUEST_SKIPPED, SHELL_ARG]) {
            assert!(VMM_INIT.contains(marker), "{marker}");
        }
        assert!(VMM_INIT.contains(&format!("echo \"{FAILED}$1 (status $2)\"")));
        // The documented commands.
        assert!(VMM_INIT.contains("pkvm-vmm run --cpus 2 --protected-vm /guest/testguest.bin"));
        assert!(VMM_INIT.contains(
            "pkvm-vmm run --mem 256 --initrd /guest/initramfs.cpio --params \"$params\""
        ));
        assert!(VMM_INIT.contains("rmmod pkvm_rs"));
        assert!(VMM_INIT.trim_end().ends_with("poweroff -f"));
        assert!(VMM_INIT.contains("reboot -f"));
        assert_eq!(GUEST_PARAMS_LINE, "console=ttyAMA0 panic=-1");
    }

    #[test]
    fn the_vmm_executable_is_found_in_cargos_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"host_interface"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"crate_types":["bin"],"name":"pkvm-vmm"},"executable":"/t/aarch64-unknown-linux-musl/release/pkvm-vmm","fresh":true}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n",
        );
        assert_eq!(
            artifact_executable(messages, "pkvm-vmm"),
            Some(PathBuf::from(
                "/t/aarch64-unknown-linux-musl/release/pkvm-vmm"
            ))
        );
        assert_eq!(artifact_executable(messages, "host_interface"), None);
        assert_eq!(artifact_executable(messages, "el2"), None);
        assert_eq!(
            BUILD_VMM[..6].join(" "),
            "build -p pkvm-vmm --target aarch64-unknown-linux-musl --release"
        );
    }

    #[test]
    fn an_unbuildable_guest_kernel_is_left_out_and_a_failed_build_fails() {
        let out = linux_guest_verdict(Err(Failure::unavailable("no network"))).unwrap();
        assert_eq!(
            out.unwrap_err(),
            "the pKVM guest kernel cannot be built here: no network"
        );
        let f = linux_guest_verdict(Err(Failure::failed("gcc died"))).unwrap_err();
        assert_eq!(f.code, crate::failure::EXIT_FAILED);
        assert!(f.message.contains("gcc died"));
    }
}
