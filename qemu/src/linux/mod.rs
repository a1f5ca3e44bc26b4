//! Linux host images from Debian's packages (`cargo qemu linux-images`).
//!
//! 1. Debian's arm64 kernel (`linux-image-arm64` resolved to its versioned
//!    package) and `busybox-static` are downloaded with `apt-get download`
//!    through a private apt configuration ([`apt`]) into the cache
//!    ([`cache_dir`]), then extracted with `dpkg-deb -x`. A complete cached
//!    set (`<cache>/debs/manifest`) is reused without touching the network.
//! 2. A busybox initramfs (uncompressed cpio "newc", written by [`cpio`]
//!    with its device node, no root needed) runs `init.sh`: it prints
//!    `HOST-*` marker lines (user space reached, every CPU at EL1, CPU
//!    count, the /dev/mem probe of hypervisor memory refused, MSIs through
//!    the ITS when the machine has a virtio PCI device, still alive) and
//!    powers off. It carries the kernel package's virtio-pci and
//!    virtio-rng modules ([`VIRTIO_MODULES`], under `/lib/virtio/`) for
//!    the MSI check.
//! 3. QEMU's device tree for the default machine is dumped
//!    (`-machine ...,dumpdtb=`) for the images that carry a DTB.
//! 4. The project's packer (`el2::bootimg::pack`) builds a header v2 image
//!    (with the DTB), a header v4 image (QEMU's DTB at boot), and a v4
//!    boot + vendor boot v4 pair (vendor ramdisk with busybox, boot ramdisk
//!    with `/init`, vendor and boot command lines, DTB in the vendor boot
//!    image). Each is parsed back with `el2::bootimg` before use.
//!
//! Everything lives outside the repository; nothing here is committed.
//!
//! The pKVM guest kernel and its initramfs (`cargo qemu guest-kernel`) are
//! built by [`guest_kernel`]; the host driver `pkvm_rs.ko` and its smoke
//! test (`cargo qemu host-driver`), for the kernel built here, by
//! [`host_driver`]; the boot + vendor boot pair that runs the Linux VMM
//! end to end (`cargo qemu vmm-images`: this vendor ramdisk plus the
//! driver, `pkvm-vmm` and its guests) by [`vmm_images`].

pub mod apt;
pub mod guest_kernel;
pub mod host_driver;
pub mod vmm_images;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use el2::bootimg::{self, BootImage};

use crate::cpio::{self, Entry};
use crate::failure::Failure;
use crate::process;
use crate::qemu::{self, Machine};
use crate::workspace::find_in_path;

/// The init script of every initramfs.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// The first line init prints: the benchmark's and the tests' marker.
pub const MARKER: &str = "HOST-USERSPACE-OK";

/// Console and panic behaviour every image's command line starts with.
pub const BASE_CMDLINE: &str = "console=ttyAMA0 panic=-1";

/// The command line of a boot that is not from a boot image (raw Image,
/// direct boot): [`BASE_CMDLINE`] and `pkvm_image=<name>`, which reaches
/// init as an environment variable.
pub fn cmdline_for(name: &str) -> String {
    format!("{BASE_CMDLINE} pkvm_image={name}")
}

/// The vendor boot image's command line (the pair's first part).
pub const VENDOR_CMDLINE: &str = "console=ttyAMA0 panic=-1 pkvm_vendor_cmdline=1";
/// The pair's boot image command line (joined after the vendor's).
pub const PAIR_BOOT_CMDLINE: &str = "pkvm_image=boot-v4+vendor_boot";

/// The cache directory: `$PKVM_RS_CACHE`, else `$XDG_CACHE_HOME/pkvm-rs`,
/// else `$HOME/.cache/pkvm-rs`.
pub fn cache_dir() -> Result<PathBuf, Failure> {
    let nonempty = |v: &str| env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = nonempty("PKVM_RS_CACHE") {
        return Ok(p);
    }
    if let Some(p) = nonempty("XDG_CACHE_HOME") {
        return Ok(p.join("pkvm-rs"));
    }
    if let Some(p) = nonempty("HOME") {
        return Ok(p.join(".cache").join("pkvm-rs"));
    }
    Err(Failure::unavailable(
        "no cache directory: set PKVM_RS_CACHE (or XDG_CACHE_HOME or HOME)",
    ))
}

/// What `linux-images` produces.
#[derive(Debug, Clone)]
pub struct LinuxImages {
    /// The kernel package and its version (`linux-image-..._<version>`).
    pub kernel_package: String,
    /// Debian's kernel: a raw arm64 `Image` (`vmlinuz-*`).
    pub kernel: PathBuf,
    /// The complete initramfs (busybox, `/init`, `/dev/console`).
    pub initramfs: PathBuf,
    /// QEMU's device tree for [`Machine::default`].
    pub dtb: PathBuf,
    /// Header v2, with the initramfs and the DTB.
    pub boot_v2: PathBuf,
    /// Header v4, with the initramfs, no DTB.
    pub boot_v4: PathBuf,
    /// Header v4 with only `/init`: boots with [`Self::vendor_boot`].
    pub boot_v4_pair: PathBuf,
    /// Vendor boot v4: busybox ramdisk, DTB, vendor command line.
    pub vendor_boot: PathBuf,
    /// The extracted busybox-static (`bin/busybox`), for other ramdisks
    /// built on this one ([`vmm_images`]).
    pub busybox: PathBuf,
    /// The extracted kernel package (its `lib/modules`, for
    /// [`virtio_modules`]).
    pub kernel_root: PathBuf,
}

fn io_err(path: &Path, e: std::io::Error) -> Failure {
    Failure::failed(format!("{}: {e}", path.display()))
}

fn need(tool: &str, package: &str) -> Result<(), Failure> {
    if find_in_path(tool).is_some() {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "{tool} not found: linux-images needs it (Debian package {package})"
        )))
    }
}

/// The two packages linux-images needs, downloaded (or found in the cache):
/// the paths of the kernel's and busybox's `.deb`.
fn debs(cache: &Path) -> Result<(PathBuf, PathBuf), Failure> {
    let dir = cache.join("debs");
    fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let manifest = dir.join("manifest");
    if let Ok(text) = fs::read_to_string(&manifest) {
        let files: Vec<PathBuf> = text.lines().map(|l| dir.join(l.trim())).collect();
        if let [kernel, busybox] = files.as_slice()
            && kernel.is_file()
            && busybox.is_file()
        {
            eprintln!(
                "==> using the cached packages in {} (delete {} to look for newer ones)",
                dir.display(),
                manifest.display()
            );
            return Ok((kernel.clone(), busybox.clone()));
        }
    }
    need("apt-get", "apt")?;
    let apt = apt::Apt::new(cache)?;
    apt.update()?;
    let kernel_pkg = apt.kernel_package()?;
    eprintln!("==> linux-image-arm64 is {kernel_pkg}");
    apt.download(&dir, &[&kernel_pkg, "busybox-static"])?;
    let newest = |prefix: &str| -> Result<PathBuf, Failure> {
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with("_arm64.deb"))
            })
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .collect();
        found.sort();
        found.pop().map(|(_, p)| p).ok_or_else(|| {
            Failure::failed(format!(
                "apt-get download left no {prefix}*_arm64.deb in {}",
                dir.display()
            ))
        })
    };
    let kernel = newest(&format!("{kernel_pkg}_"))?;
    let busybox = newest("busybox-static_")?;
    let names: Vec<String> = [&kernel, &busybox]
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    fs::write(&manifest, names.join("\n") + "\n").map_err(|e| io_err(&manifest, e))?;
    Ok((kernel, busybox))
}

/// `dpkg-deb -x` of `deb` into `<cache>/root/<deb name>` (once).
fn extract(cache: &Path, deb: &Path) -> Result<PathBuf, Failure> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Failure::failed(format!("odd package name {}", deb.display())))?;
    let root = cache.join("root");
    let dest = root.join(stem);
    if dest.is_dir() {
        return Ok(dest);
    }
    need("dpkg-deb", "dpkg")?;
    let tmp = root.join(format!(".{stem}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(&tmp);
    eprintln!("==> {}", process::display(&cmd));
    process::checked(&mut cmd)?;
    fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
    Ok(dest)
}

/// The `vmlinuz-*` of an extracted kernel package.
fn find_kernel(root: &Path) -> Result<PathBuf, Failure> {
    let boot = root.join("boot");
    fs::read_dir(&boot)
        .map_err(|e| io_err(&boot, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Failure::failed(format!("no vmlinuz-* in {}", boot.display())))
}

/// Writes `data` to `path` unless it already holds exactly that (a QEMU
/// of another run may be reading it).
fn write_if_changed(path: &Path, data: &[u8]) -> Result<(), Failure> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, data).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// The directories every ramdisk has.
const DIRS: [&str; 8] = [
    "bin",
    "dev",
    "etc",
    "lib",
    "lib/virtio",
    "proc",
    "sys",
    "tmp",
];

/// The kernel package's modules init loads for the MSI check, in load
/// order (`/lib/virtio/<name>.ko`), with their paths under
/// `lib/modules/<release>/kernel/`. Debian builds virtio-pci as modules;
/// virtio itself and the hwrng core are built in.
pub const VIRTIO_MODULES: [(&str, &str); 4] = [
    (
        "virtio_pci_legacy_dev",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
    ),
    (
        "virtio_pci_modern_dev",
        "drivers/virtio/virtio_pci_modern_dev.ko",
    ),
    ("virtio_pci", "drivers/virtio/virtio_pci.ko"),
    ("virtio-rng", "drivers/char/hw_random/virtio-rng.ko"),
];

/// Modules for a ramdisk: `(name, contents)`, see [`VIRTIO_MODULES`].
pub type Modules = Vec<(String, Vec<u8>)>;

/// Reads [`VIRTIO_MODULES`] from an extracted kernel package.
pub fn virtio_modules(kernel_root: &Path) -> Result<Modules, Failure> {
    let dir = kernel_root.join("lib/modules");
    let release = fs::read_dir(&dir)
        .map_err(|e| io_err(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .ok_or_else(|| {
            Failure::failed(format!(
                "no lib/modules/<release>/kernel in {}",
                dir.display()
            ))
        })?;
    VIRTIO_MODULES
        .iter()
        .map(|(name, path)| {
            let file = release.join("kernel").join(path);
            let data = fs::read(&file).map_err(|e| io_err(&file, e))?;
            Ok(((*name).to_owned(), data))
        })
        .collect()
}

/// The entries every ramdisk with busybox has: directories, the console,
/// busybox, the modules.
fn base_entries<'a>(
    busybox: &'a [u8],
    modules: &'a [(String, Vec<u8>)],
    names: &'a [String],
) -> Vec<Entry<'a>> {
    let mut e: Vec<Entry<'_>> = DIRS.iter().map(|d| Entry::Dir(d)).collect();
    e.push(Entry::CharDev("dev/console", 5, 1));
    e.push(Entry::File("bin/busybox", 0o755, busybox));
    for (path, (_, data)) in names.iter().zip(modules) {
        e.push(Entry::File(path, 0o644, data));
    }
    e
}

/// Ramdisk paths of `modules`.
fn module_paths(modules: &[(String, Vec<u8>)]) -> Vec<String> {
    modules
        .iter()
        .map(|(name, _)| format!("lib/virtio/{name}.ko"))
        .collect()
}

/// The complete initramfs: busybox, the modules, `/init`, `/dev/console`.
pub fn initramfs(busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let names = module_paths(modules);
    let mut e = base_entries(busybox, modules, &names);
    e.push(Entry::File("init", 0o755, INIT_SCRIPT.as_bytes()));
    cpio::archive(&e)
}

/// Packs `kernel` and `ramdisk` as a header v4 boot image with `cmdline`
/// (QEMU's device tree at boot: the layout of `boot-v4.img`), parses it
/// back with el2's parser and writes it to `path` unless it holds exactly
/// that already.
pub fn write_boot_v4(
    path: &Path,
    kernel: &[u8],
    ramdisk: &[u8],
    cmdline: &str,
) -> Result<(), Failure> {
    let v4 = bootimg::pack::boot_v3_v4(4, kernel, ramdisk, cmdline);
    check_image(path, &v4, None)?;
    write_if_changed(path, &v4)
}

/// The vendor ramdisk of the pair: everything but `/init`, plus
/// `/etc/vendor-ramdisk`, which init reports.
pub fn vendor_ramdisk(busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let names = module_paths(modules);
    let mut e = base_entries(busybox, modules, &names);
    e.push(Entry::File(
        "etc/vendor-ramdisk",
        0o644,
        b"from the vendor boot image\n",
    ));
    cpio::archive(&e)
}

/// The boot ramdisk of the pair: `/init` only (unpacked after the vendor
/// ramdisk, as the vendor-first initrd order requires).
pub fn pair_boot_ramdisk() -> Vec<u8> {
    cpio::archive(&[Entry::File("init", 0o755, INIT_SCRIPT.as_bytes())])
}

/// Dumps QEMU's device tree for `machine` (the same options the runner
/// boots with) to `path`.
fn dump_dtb(qemu_bin: &Path, machine: &Machine, path: &Path) -> Result<(), Failure> {
    let mut cmd = Command::new(qemu_bin);
    cmd.args(qemu::dumpdtb_args(machine, path));
    eprintln!("==> {}", process::display(&cmd));
    let out = cmd
        .output()
        .map_err(|e| Failure::failed(format!("cannot run QEMU: {e}")))?;
    if !out.status.success() || !path.is_file() {
        return Err(Failure::failed(format!(
            "dumping QEMU's device tree failed ({}): {}",
            process::describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Parses a packed image back with el2's parser (what el2 will do).
fn check_image(path: &Path, boot: &[u8], vendor: Option<&[u8]>) -> Result<(), Failure> {
    BootImage::parse(boot, vendor).map(|_| ()).map_err(|e| {
        Failure::failed(format!(
            "{}: the packed image is refused: {e}",
            path.display()
        ))
    })
}

/// Downloads (or reuses) the packages and builds every image (module
/// docs). Prints progress on stderr.
pub fn ensure() -> Result<LinuxImages, Failure> {
    let cache = cache_dir()?;
    fs::create_dir_all(&cache).map_err(|e| io_err(&cache, e))?;
    let (kernel_deb, busybox_deb) = debs(&cache)?;
    let kernel_root = extract(&cache, &kernel_deb)?;
    let busybox_root = extract(&cache, &busybox_deb)?;
    let kernel_path = find_kernel(&kernel_root)?;
    let kernel = fs::read(&kernel_path).map_err(|e| io_err(&kernel_path, e))?;
    bootimg::Arm64Image::parse(&kernel).map_err(|e| {
        Failure::failed(format!(
            "{} is not a raw arm64 Image: {e}",
            kernel_path.display()
        ))
    })?;
    let busybox_path = busybox_root.join("bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(|e| io_err(&busybox_path, e))?;
    let modules = virtio_modules(&kernel_root)?;

    let out = cache.join("images");
    fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    let qemu_bin = qemu::ensure()?;
    let dtb_path = out.join("qemu-virt.dtb");
    dump_dtb(&qemu_bin, &Machine::default(), &dtb_path)?;
    let dtb = fs::read(&dtb_path).map_err(|e| io_err(&dtb_path, e))?;

    let full = initramfs(&busybox, &modules);
    let initramfs_path = out.join("initramfs.cpio");
    write_if_changed(&initramfs_path, &full)?;

    let images = LinuxImages {
        kernel_package: kernel_deb
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .replace("%3a", ":"),
        kernel: kernel_path,
        initramfs: initramfs_path,
        dtb: dtb_path,
        boot_v2: out.join("boot-v2.img"),
        boot_v4: out.join("boot-v4.img"),
        boot_v4_pair: out.join("boot-v4-pair.img"),
        vendor_boot: out.join("vendor_boot-v4.img"),
        busybox: busybox_path,
        kernel_root,
    };
    let v2 = bootimg::pack::boot_v0_v2(2, 4096, &kernel, &full, &dtb, &cmdline_for("boot-v2"));
    check_image(&images.boot_v2, &v2, None)?;
    write_if_changed(&images.boot_v2, &v2)?;
    drop(v2);
    write_boot_v4(&images.boot_v4, &kernel, &full, &cmdline_for("boot-v4"))?;
    let pair = bootimg::pack::boot_v3_v4(4, &kernel, &pair_boot_ramdisk(), PAIR_BOOT_CMDLINE);
    let vendor = bootimg::pack::vendor_boot(
        4,
        &vendor_ramdisk(&busybox, &modules),
        &dtb,
        VENDOR_CMDLINE,
        b"",
    );
    check_image(&images.boot_v4_pair, &pair, Some(&vendor))?;
    write_if_changed(&images.boot_v4_pair, &pair)?;
    write_if_changed(&images.vendor_boot, &vendor)?;
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines() {
        assert_eq!(
            cmdline_for("direct"),
            "console=ttyAMA0 panic=-1 pkvm_image=direct"
        );
        assert!(VENDOR_CMDLINE.starts_with(BASE_CMDLINE));
    }

    #[test]
    fn ramdisks_split_between_vendor_and_boot() {
        let bb = b"\x7fELF-busybox";
        let modules = vec![("virtio-rng".to_owned(), b"\x7fELF-module".to_vec())];
        let full = initramfs(bb, &modules);
        let vendor = vendor_ramdisk(bb, &modules);
        let boot = pair_boot_ramdisk();
        let has = |a: &[u8], s: &[u8]| a.windows(s.len()).any(|w| w == s);
        assert!(has(&full, b"init\0") && has(&full, b"bin/busybox\0"));
        assert!(has(&full, b"dev/console\0"));
        assert!(has(&vendor, b"bin/busybox\0") && !has(&vendor, b"init\0"));
        assert!(has(&vendor, b"etc/vendor-ramdisk\0"));
        assert!(has(&full, b"lib/virtio/virtio-rng.ko\0") && has(&full, b"ELF-module"));
        assert!(has(&vendor, b"lib/virtio/virtio-rng.ko\0"));
        assert!(has(&boot, b"init\0") && !has(&boot, b"busybox\0"));
        // Concatenated archives stay 4-byte aligned (vendor first).
        assert_eq!(vendor.len() % 4, 0);
        assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
        assert!(INIT_SCRIPT.contains(MARKER));
    }

    #[test]
    fn cache_dir_follows_the_environment_order() {
        // Only reads the environment; the variables are not changed here
        // (tests run in parallel), so just check the result's shape.
        let dir = cache_dir().unwrap();
        assert!(dir.is_absolute() || env::var_os("PKVM_RS_CACHE").is_some());
    }
}
