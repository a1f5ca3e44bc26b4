//! The Android/GKI-shaped image pair that runs the Linux VMM end to end
//! inside the Linux host under el2 (`cargo qemu vmm-images`).
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
//! 2. Two images, as a GKI device boots: the generic kernel in the boot
//!    image, everything device-specific in the vendor boot image.
//!    - `<cache>/images/vmm-boot.img`: header v4, Debian's kernel and a
//!      boot ramdisk holding only `/init` = `vmm-init.sh`
//!      ([`boot_ramdisk`], as linux-images' `boot-v4-pair.img`), command
//!      line [`BOOT_CMDLINE`].
//!    - `<cache>/images/vmm-vendor_boot.img`: vendor boot v4 with the
//!      vendor ramdisk ([`vendor_ramdisk`]: linux-images' vendor ramdisk
//!      (busybox, the virtio modules, `/etc/vendor-ramdisk`) followed by
//!      the parts at the paths below ([`Parts::entries`]) as a second cpio
//!      archive, the module in `/lib/modules/` where a GKI vendor ramdisk
//!      keeps its vendor modules), QEMU's device tree dumped by
//!      linux-images, and the vendor command line
//!      ([`super::VENDOR_CMDLINE`]).
//!
//!    el2 gives the kernel the vendor ramdisk then the boot ramdisk, and
//!    the vendor command line then the boot one.
//! 3. The pair is parsed back with el2's parser ([`pack`]), and each image
//!    is rewritten only when a byte of it changes: any changed input (a
//!    source of the driver, of the VMM, of the test guest, the guest
//!    kernel's recipe, this init) changes one of them.
//!    `<cache>/images/vmm-boot.manifest` lists what went in, with sizes
//!    and hashes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use el2::bootimg;

use super::guest_kernel::{self, GUEST_CMDLINE, GuestKernel, fnv1a64};
use super::host_driver::{self, CROSS_COMPILE};
use super::{VENDOR_CMDLINE, cache_dir, check_image, io_err, write_if_changed};
use crate::cpio::{self, Entry};
use crate::failure::{EXIT_UNAVAILABLE, Failure};
use crate::process;
use crate::workspace::{self, VMM_TARGET, find_in_path};

/// The init script of the VMM boot image (its boot ramdisk's `/init`).
pub const VMM_INIT: &str = include_str!("vmm-init.sh");

/// The boot image's file name, in `<cache>/images/`.
pub const BOOT_IMAGE: &str = "vmm-boot.img";
/// The vendor boot image's file name, in `<cache>/images/`.
pub const VENDOR_BOOT_IMAGE: &str = "vmm-vendor_boot.img";
/// What went into both, in `<cache>/images/`.
pub const MANIFEST: &str = "vmm-boot.manifest";
/// The pair's name, which init prints (`pkvm_image=` reaches it as an
/// environment variable): [`BOOT_CMDLINE`] gives it, the tests look for
/// it.
#[cfg(test)]
pub const IMAGE_NAME: &str = "vmm-boot+vmm-vendor_boot";
/// The boot image's own command line, joined by el2 after the vendor
/// boot image's ([`super::VENDOR_CMDLINE`]).
pub const BOOT_CMDLINE: &str = "pkvm_image=vmm-boot+vmm-vendor_boot";

/// The host driver, in the vendor ramdisk: `/lib/modules/`, where a GKI
/// vendor ramdisk keeps the vendor modules first-stage init loads.
pub const MODULE_PATH: &str = "lib/modules/pkvm_rs.ko";
/// The driver's smoke test, in the vendor ramdisk.
pub const SMOKE_PATH: &str = "bin/pkvm-rs-smoke";
/// The VMM, in the vendor ramdisk.
pub const VMM_PATH: &str = "bin/pkvm-vmm";
/// The test guest, in the vendor ramdisk.
pub const TESTGUEST_PATH: &str = "guest/testguest.bin";
/// The pKVM Linux guest kernel, in the vendor ramdisk (when it could be
/// built).
pub const GUEST_IMAGE_PATH: &str = "guest/Image";
/// The Linux guest's initramfs, in the vendor ramdisk (with
/// [`GUEST_IMAGE_PATH`]).
pub const GUEST_INITRD_PATH: &str = "guest/initramfs.cpio";
/// The Linux guest's command line, in the vendor ramdisk: the one the
/// QEMU tests of the guest kernel use, with which its init powers off by
/// itself.
pub const GUEST_PARAMS_PATH: &str = "guest/params";
/// Why the Linux guest is not in the vendor ramdisk (instead of
/// [`GUEST_IMAGE_PATH`]).
pub const GUEST_SKIPPED_PATH: &str = "guest/linux-guest-skipped";
/// The file only linux-images' vendor ramdisk has (its `init.sh` reports
/// it too): init's evidence that its payloads came from the vendor boot
/// image, since the boot ramdisk holds `/init` alone (linux-images writes
/// it; the tests check both ramdisks and init agree).
#[cfg(test)]
pub const VENDOR_MARKER_PATH: &str = "etc/vendor-ramdisk";

/// The directories the vendor parts add (linux-images' `bin` and `lib`
/// are there already, in the first archive).
const DIRS: [&str; 2] = ["lib/modules", "guest"];

/// The kernel command-line word that gives a shell after the checks.
pub const SHELL_ARG: &str = "pkvm.shell";

/// The line init prints once it found its payloads in the vendor ramdisk.
pub const VENDOR_RAMDISK_PRESENT: &str = "VMM-VENDOR-RAMDISK: present";

/// The markers init prints, in order, when every step passes with the
/// Linux guest in the image (the QEMU test's lists must ask for each).
#[cfg(test)]
pub const MARKERS: [&str; 7] = [
    VENDOR_RAMDISK_PRESENT,
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
    /// The boot image (`<cache>/images/vmm-boot.img`): kernel and `/init`.
    pub boot: PathBuf,
    /// The vendor boot image (`<cache>/images/vmm-vendor_boot.img`): the
    /// vendor ramdisk with every payload, the DTB.
    pub vendor_boot: PathBuf,
    /// What went into them (`<cache>/images/vmm-boot.manifest`).
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

/// The bytes of the vendor ramdisk's VMM parts.
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
    /// The vendor ramdisk entries of the parts (directories first), with
    /// their modes: programs executable, data not.
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

    /// The manifest's text: one line per part, `<image>: <what> <size>
    /// <FNV-1a 64>` (the boot ramdisk's `/init`; the vendor ramdisk's
    /// parts and `dtb`, the device tree), each image's command line, and
    /// the skip reason if any.
    pub fn manifest(&self, dtb: &[u8]) -> String {
        let mut text = format!(
            "# cargo qemu vmm-images: what {BOOT_IMAGE} and {VENDOR_BOOT_IMAGE} carry beyond \
             Debian's kernel and linux-images' vendor ramdisk\n"
        );
        let mut line = |image: &str, what: &str, data: &[u8]| {
            let _ = writeln!(
                text,
                "{image}: {what} {} {:016x}",
                data.len(),
                fnv1a64(data)
            );
        };
        line(BOOT_IMAGE, "init", VMM_INIT.as_bytes());
        for entry in self.entries() {
            if let Entry::File(path, _, data) = entry {
                line(VENDOR_BOOT_IMAGE, path, data);
            }
        }
        line(VENDOR_BOOT_IMAGE, "dtb", dtb);
        let _ = writeln!(text, "{BOOT_IMAGE}: cmdline {BOOT_CMDLINE}");
        let _ = writeln!(text, "{VENDOR_BOOT_IMAGE}: cmdline {VENDOR_CMDLINE}");
        if let Err(why) = self.linux_guest {
            let _ = writeln!(text, "# Linux guest skipped: {why}");
        }
        text
    }
}

/// The Linux guest's command line as written to [`GUEST_PARAMS_PATH`].
const GUEST_PARAMS_LINE: &str = GUEST_CMDLINE;

/// The boot image's ramdisk: [`VMM_INIT`] as `/init`, nothing else (the
/// generic part; the kernel unpacks it after the vendor ramdisk).
pub fn boot_ramdisk() -> Vec<u8> {
    cpio::archive(&[Entry::File("init", 0o755, VMM_INIT.as_bytes())])
}

/// The vendor ramdisk: linux-images' vendor ramdisk (busybox, the virtio
/// modules, [`VENDOR_MARKER_PATH`]; no `/init`) followed by `parts` as a
/// second cpio archive. The kernel unpacks concatenated archives in turn,
/// as it does the vendor and boot ramdisks el2 places one after the
/// other, so linux-images' part is reused byte for byte.
pub fn vendor_ramdisk(busybox: &[u8], modules: &[(String, Vec<u8>)], parts: &Parts<'_>) -> Vec<u8> {
    let mut out = super::vendor_ramdisk(busybox, modules);
    out.extend_from_slice(&cpio::archive(&parts.entries()));
    out
}

/// Packs the pair: a header v4 boot image with `kernel` and
/// [`boot_ramdisk`], and a vendor boot v4 image with `vendor_ramdisk`,
/// `dtb` and the vendor command line; both are parsed back with el2's
/// parser (what el2 will do at boot) before they are returned. `name`
/// names the boot image in the error.
pub fn pack(
    name: &Path,
    kernel: &[u8],
    vendor_ramdisk: &[u8],
    dtb: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let boot = bootimg::pack::boot_v3_v4(4, kernel, &boot_ramdisk(), BOOT_CMDLINE);
    let vendor = bootimg::pack::vendor_boot(4, vendor_ramdisk, dtb, VENDOR_CMDLINE, b"");
    check_image(name, &boot, Some(&vendor))?;
    Ok((boot, vendor))
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
/// and vendor boot images (module docs); `testguest` is the built
/// `testguest.bin`.
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
    let dtb = read(&linux.dtb)?;
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
    let vendor_boot = out.join(VENDOR_BOOT_IMAGE);
    let manifest = out.join(MANIFEST);
    let (boot_img, vendor_img) = pack(
        &boot,
        &kernel,
        &vendor_ramdisk(&busybox, &modules, &parts),
        &dtb,
    )?;
    write_if_changed(&boot, &boot_img)?;
    write_if_changed(&vendor_boot, &vendor_img)?;
    write_if_changed(&manifest, parts.manifest(&dtb).as_bytes())?;
    Ok(VmmImages {
        boot,
        vendor_boot,
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

    /// Every file the vendor ramdisk adds to linux-images' vendor
    /// ramdisk, whatever the guest kernel (the Linux guest's two files
    /// come on top).
    const VENDOR_FILES: [&str; 5] = [
        MODULE_PATH,
        SMOKE_PATH,
        VMM_PATH,
        TESTGUEST_PATH,
        GUEST_PARAMS_PATH,
    ];

    fn has(a: &[u8], s: &[u8]) -> bool {
        a.windows(s.len()).any(|w| w == s)
    }

    /// Whether the cpio archive(s) `a` have an entry named `name`.
    fn entry(a: &[u8], name: &str) -> bool {
        has(a, format!("{name}\0").as_bytes())
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

    fn virtio() -> Vec<(String, Vec<u8>)> {
        vec![("virtio-rng".to_owned(), b"\x7fELF-virtio".to_vec())]
    }

    #[test]
    fn the_boot_ramdisk_holds_init_alone() {
        let boot = boot_ramdisk();
        assert!(entry(&boot, "init") && has(&boot, VMM_INIT.as_bytes()));
        assert!(boot.starts_with(b"070701") && entry(&boot, "TRAILER!!!"));
        // One file and the trailer: no payload, no busybox.
        assert_eq!(boot.windows(6).filter(|w| w == b"070701").count(), 2);
        for name in VENDOR_FILES
            .iter()
            .chain(&["bin/busybox", VENDOR_MARKER_PATH])
        {
            assert!(!entry(&boot, name), "{name}");
        }
    }

    #[test]
    fn the_vendor_ramdisk_is_linux_images_vendor_ramdisk_plus_the_vmm_parts() {
        let with = vendor_ramdisk(
            b"\x7fELF-busybox",
            &virtio(),
            &parts(Ok((b"guest-Image", b"guest-cpio"))),
        );
        // linux-images' vendor ramdisk, byte for byte, then the parts.
        let base = super::super::vendor_ramdisk(b"\x7fELF-busybox", &virtio());
        assert!(with.starts_with(&base) && with.len() > base.len());
        assert!(with[base.len()..].starts_with(b"070701"));
        for name in VENDOR_FILES
            .iter()
            .chain(&[GUEST_IMAGE_PATH, GUEST_INITRD_PATH])
            .chain(&[
                VENDOR_MARKER_PATH,
                "bin/busybox",
                "dev/console",
                "lib/virtio/virtio-rng.ko",
            ])
        {
            assert!(entry(&with, name), "{name}");
        }
        for data in [
            &b"ELF-module"[..],
            b"ELF-smoke",
            b"ELF-vmm",
            b"testguest-image",
            b"guest-Image",
            b"guest-cpio",
            b"ELF-virtio",
            GUEST_CMDLINE.as_bytes(),
        ] {
            assert!(has(&with, data));
        }
        // No /init there: it is the boot ramdisk's.
        assert!(!entry(&with, "init") && !has(&with, VMM_INIT.as_bytes()));
        assert!(!entry(&with, GUEST_SKIPPED_PATH));
        // Directories before their files, so the kernel can create them.
        let at = |s: &str| with.windows(s.len()).position(|w| w == s.as_bytes());
        assert!(at("guest\0") < at("guest/testguest.bin\0"));
        assert!(at("lib/modules\0") < at("lib/modules/pkvm_rs.ko\0"));
        assert!(at("lib\0") < at("lib/modules\0"));
        // Each archive 4-byte aligned: the next one (and the boot
        // ramdisk after them) starts where the kernel looks for it.
        assert_eq!(base.len() % 4, 0);
        assert_eq!(with.len() % 4, 0);

        let without = vendor_ramdisk(b"bb", &[], &parts(Err("no compiler")));
        assert!(entry(&without, GUEST_SKIPPED_PATH));
        assert!(has(&without, b"no compiler"));
        assert!(!entry(&without, GUEST_IMAGE_PATH));
    }

    #[test]
    fn the_pair_parses_back_as_el2_boots_it() {
        let kernel = bootimg::pack::arm64_image(&[0x5a; 8192], 1 << 20);
        let vendor_rd = vendor_ramdisk(b"bb", &virtio(), &parts(Err("none here")));
        let dtb = b"\xd0\x0d\xfe\xedfake-dtb";
        let (boot, vendor) = pack(Path::new("vmm-boot.img"), &kernel, &vendor_rd, dtb).unwrap();
        assert!(boot.starts_with(b"ANDROID!") && vendor.starts_with(b"VNDRBOOT"));
        let img = bootimg::BootImage::parse(&boot, Some(&vendor)).unwrap();
        assert_eq!(img.header_version, 4);
        assert_eq!(img.kernel, &kernel[..]);
        assert_eq!(img.dtb, Some(&dtb[..]));
        // The initrd el2 builds: the vendor ramdisk, then /init.
        assert_eq!(img.ramdisks[0], &vendor_rd[..]);
        assert_eq!(img.ramdisks[1], &boot_ramdisk()[..]);
        let mut cmdline = [0u8; 256];
        let n = img.write_cmdline(&mut cmdline).unwrap();
        assert_eq!(
            std::str::from_utf8(&cmdline[..n]).unwrap(),
            format!("{VENDOR_CMDLINE} {BOOT_CMDLINE}")
        );
        assert_eq!(BOOT_CMDLINE, format!("pkvm_image={IMAGE_NAME}"));
    }

    #[test]
    fn the_manifest_lists_every_part() {
        let dtb = b"fake-dtb";
        let m = parts(Ok((b"guest-Image", b"guest-cpio"))).manifest(dtb);
        assert!(m.contains(&format!(
            "vmm-vendor_boot.img: lib/modules/pkvm_rs.ko 11 {:016x}\n",
            fnv1a64(b"\x7fELF-module")
        )));
        assert!(m.contains(&format!(
            "vmm-boot.img: init {} {:016x}\n",
            VMM_INIT.len(),
            fnv1a64(VMM_INIT.as_bytes())
        )));
        assert!(m.contains(&format!(
            "vmm-vendor_boot.img: dtb 8 {:016x}\n",
            fnv1a64(dtb)
        )));
        assert!(m.contains("vmm-vendor_boot.img: guest/Image 11 "));
        assert!(m.contains(&format!("vmm-boot.img: cmdline {BOOT_CMDLINE}\n")));
        assert!(m.contains(&format!("vmm-vendor_boot.img: cmdline {VENDOR_CMDLINE}\n")));
        assert!(!m.contains("skipped"));
        let m = parts(Err("no network")).manifest(dtb);
        assert!(m.contains("# Linux guest skipped: no network\n"));
        assert!(!m.contains("guest/Image "));
    }

    #[test]
    fn init_uses_the_paths_and_prints_the_markers() {
        assert!(VMM_INIT.starts_with("#!/bin/busybox sh\n"));
        for path in VENDOR_FILES.iter().chain(&[
            GUEST_IMAGE_PATH,
            GUEST_INITRD_PATH,
            GUEST_SKIPPED_PATH,
            VENDOR_MARKER_PATH,
        ]) {
            let name = path.rsplit('/').next().unwrap();
            assert!(VMM_INIT.contains(name), "{path}");
        }
        for dir_path in [
            MODULE_PATH,
            TESTGUEST_PATH,
            GUEST_IMAGE_PATH,
            VENDOR_MARKER_PATH,
        ] {
            assert!(VMM_INIT.contains(&format!("/{dir_path}")), "{dir_path}");
        }
        // Nothing of the old single-image layout is left.
        assert!(!VMM_INIT.contains("/lib/pkvm/"));
        for marker in MARKERS.iter().chain(&[LINUX_GUEST_SKIPPED, SHELL_ARG]) {
            assert!(VMM_INIT.contains(marker), "{marker}");
        }
        assert!(VMM_INIT.contains(&format!("echo \"{FAILED}$1 (status $2)\"")));
        // The vendor ramdisk's check comes before the first payload runs.
        let at = |s: &str| VMM_INIT.find(s).unwrap();
        assert!(at(VENDOR_RAMDISK_PRESENT) < at("\ninsmod "));
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
