//! Finding (or installing) `qemu-system-aarch64` and the command line that
//! boots el2 and its host on it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure::Failure;
use crate::process;
use crate::workspace::find_in_path;

/// The QEMU system emulator el2 runs on.
pub const QEMU: &str = "qemu-system-aarch64";
/// Environment variable naming a QEMU binary to use instead of the one on
/// PATH.
pub const QEMU_ENV: &str = "QEMU_SYSTEM_AARCH64";
/// The Debian package that ships `qemu-system-aarch64`.
pub const DEBIAN_PACKAGE: &str = "qemu-system-arm";

/// Returns the path of `qemu-system-aarch64`, installing Debian's
/// `qemu-system-arm` with apt-get first if it is missing and we are root.
///
/// Not being root, or having no apt-get, is an [`Failure::unavailable`]
/// that says what to install.
pub fn ensure() -> Result<PathBuf, Failure> {
    if let Some(path) = env::var_os(QEMU_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Failure::unavailable(format!(
                "{QEMU_ENV} is set to {}, which is not a file",
                path.display()
            )))
        };
    }
    if let Some(path) = find_in_path(QEMU) {
        return Ok(path);
    }
    let install = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y --no-install-recommends {DEBIAN_PACKAGE}"
    );
    if !is_root() {
        return Err(Failure::unavailable(format!(
            "{QEMU} not found on PATH. Install it, then run this again:\n  \
             Debian/Ubuntu: sudo sh -c '{install}'\n  \
             Fedora:        sudo dnf install qemu-system-aarch64-core\n  \
             or set {QEMU_ENV} to the path of a qemu-system-aarch64 binary."
        )));
    }
    if find_in_path("apt-get").is_none() {
        return Err(Failure::unavailable(format!(
            "{QEMU} not found on PATH and apt-get is not available to install it; \
             install QEMU's aarch64 system emulator with this system's package \
             manager, or set {QEMU_ENV} to its path."
        )));
    }
    eprintln!("==> {QEMU} not found; running as root, so installing Debian's {DEBIAN_PACKAGE}:");
    eprintln!("==> {install}");
    process::checked(Command::new("apt-get").arg("update"))
        .map_err(|f| Failure::unavailable(format!("installing {DEBIAN_PACKAGE}: {f}")))?;
    process::checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", DEBIAN_PACKAGE]),
    )
    .map_err(|f| Failure::unavailable(format!("installing {DEBIAN_PACKAGE}: {f}")))?;
    find_in_path(QEMU).ok_or_else(|| {
        Failure::unavailable(format!(
            "installed {DEBIAN_PACKAGE} but {QEMU} is still not on PATH"
        ))
    })
}

/// Whether this process runs as root (uid 0), asked of `id -u`, with
/// `$USER` as a fallback.
fn is_root() -> bool {
    match process::stdout_of(Command::new("id").arg("-u")) {
        Ok(uid) => uid.trim() == "0",
        Err(_) => env::var("USER").is_ok_and(|user| user == "root"),
    }
}

/// Where the host image is loaded (raw): el2 looks for an arm64 Image
/// header there when there is no host descriptor. Must match
/// `HOST_IMAGE_ADDR` in `el2/src/boot/layout.rs` and the link address in
/// `tests/testhost/linker.ld`.
pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;

/// Where the host descriptor goes (`el2/src/boot/hostimg.rs`,
/// `HOST_DESC_ADDR`): eight little-endian `u64`s describing what the
/// runner loaded.
pub const HOST_DESC_ADDR: u64 = 0x43ff_f000;
/// The descriptor's magic, the bytes `PKVMHOST` as a little-endian `u64`.
pub const DESC_MAGIC: u64 = u64::from_le_bytes(*b"PKVMHOST");
/// Descriptor kind: a raw arm64 Image (+ initrd).
pub const DESC_RAW: u64 = 1;
/// Descriptor kind: an Android boot image (+ vendor boot image).
pub const DESC_ANDROID: u64 = 2;

const BLOCK_2M: u64 = 2 << 20;

/// The machine QEMU emulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPU model (`-cpu`).
    pub cpu: String,
    /// Number of CPUs (`-smp`).
    pub smp: u32,
    /// RAM size (`-m`).
    pub mem: String,
    /// Wait for gdb on :1234 (`-s -S`).
    pub gdb: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            cpu: crate::args::DEFAULT_CPU.to_owned(),
            smp: crate::args::DEFAULT_SMP,
            mem: crate::args::DEFAULT_MEM.to_owned(),
            gdb: false,
        }
    }
}

/// The host el2 boots, and how the runner hands it over.
#[derive(Debug, Clone, Copy)]
pub enum Host<'a> {
    /// Nothing (el2 then stops with a boot error).
    None,
    /// A raw Image loaded at [`HOST_IMAGE_ADDR`] without a descriptor and
    /// run in place: the built-in test host (linked at that address).
    InPlace(&'a Path),
    /// A raw arm64 Image (loaded at [`HOST_IMAGE_ADDR`] + its
    /// `text_offset`, run in place) and an optional initrd (loaded at the
    /// next 2 MiB boundary after the kernel's `image_size`).
    Raw {
        /// The Image.
        kernel: &'a Path,
        /// The initrd.
        initrd: Option<&'a Path>,
    },
    /// An Android boot image (at [`HOST_IMAGE_ADDR`]) and an optional
    /// vendor boot image (at the next 2 MiB boundary after it).
    Android {
        /// `boot.img`.
        boot: &'a Path,
        /// `vendor_boot.img`.
        vendor: Option<&'a Path>,
    },
}

/// What QEMU boots.
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    /// el2: its ELF (loaded at its link address, entered at EL2, device
    /// tree at the start of RAM) or its raw Image (`el2.bin`: device tree
    /// in `x0`).
    pub kernel: &'a Path,
    /// The host.
    pub host: Host<'a>,
    /// The kernel command line (`-append`, the device tree's
    /// `/chosen/bootargs`, which el2 passes on to the host, after a boot
    /// image's own command line).
    pub append: Option<&'a str>,
    /// A device tree replacing QEMU's (`-dtb`).
    pub dtb: Option<&'a Path>,
    /// The machine.
    pub machine: &'a Machine,
}

fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn raw_loader(path: &Path, addr: u64) -> [String; 2] {
    [
        "-device".to_owned(),
        format!("loader,file={},addr={addr:#x},force-raw=on", path.display()),
    ]
}

/// The `-device loader` arguments that write the host descriptor
/// (`el2/src/boot/hostimg.rs`): magic, kind, then (address, size) of the
/// image and of the second file (0, 0 for none).
pub fn descriptor_args(kind: u64, image: (u64, u64), extra: (u64, u64)) -> Vec<String> {
    let words = [DESC_MAGIC, kind, image.0, image.1, extra.0, extra.1];
    words
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            [
                "-device".to_owned(),
                format!(
                    "loader,addr={:#x},data={w:#x},data-len=8",
                    HOST_DESC_ADDR + 8 * i as u64
                ),
            ]
        })
        .collect()
}

/// The arguments that load `host` (module docs of `hostimg.rs` in el2 for
/// the protocol). Reads the files' sizes (and a raw Image's header).
pub fn host_args(host: &Host<'_>) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    match *host {
        Host::None => {}
        Host::InPlace(image) => args.extend(raw_loader(image, HOST_IMAGE_ADDR)),
        Host::Raw { kernel, initrd } => {
            let data = std::fs::read(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
            let k = el2::bootimg::Arm64Image::parse(&data)
                .map_err(|e| format!("{}: not a raw arm64 Image: {e}", kernel.display()))?;
            let at = HOST_IMAGE_ADDR + k.text_offset;
            args.extend(raw_loader(kernel, at));
            let mut extra = (0, 0);
            if let Some(initrd) = initrd {
                let len = file_len(initrd)?;
                let addr = (at + k.image_size.max(data.len() as u64)).next_multiple_of(BLOCK_2M);
                args.extend(raw_loader(initrd, addr));
                extra = (addr, len);
            }
            args.extend(descriptor_args(DESC_RAW, (at, data.len() as u64), extra));
        }
        Host::Android { boot, vendor } => {
            let len = file_len(boot)?;
            args.extend(raw_loader(boot, HOST_IMAGE_ADDR));
            let mut extra = (0, 0);
            if let Some(vendor) = vendor {
                let vlen = file_len(vendor)?;
                let addr = (HOST_IMAGE_ADDR + len).next_multiple_of(BLOCK_2M);
                args.extend(raw_loader(vendor, addr));
                extra = (addr, vlen);
            }
            args.extend(descriptor_args(DESC_ANDROID, (HOST_IMAGE_ADDR, len), extra));
        }
    }
    Ok(args)
}

/// The `-machine` options every QEMU command of the runner shares (el2
/// boots, device-tree dumps and the direct-boot baseline).
///
/// `its=off`: QEMU's GICv3 ITS reads and writes its tables (device, ITT,
/// collection tables) by physical address, bypassing stage-2, so a host
/// could point it at hypervisor memory. DMA-capable devices (the ITS,
/// virtio devices doing DMA) are outside what stage-2 protects until el2
/// manages an SMMU; the ITS is the one el2's hosts would program, so it is
/// left out of the machine.
const MACHINE_OPTS: &str = "virt,gic-version=3,its=off";

/// The `-machine` value for `machine` under el2.
fn machine_arg(extra: &str) -> String {
    format!("{MACHINE_OPTS},virtualization=on{extra}")
}

/// `-machine <machine_value>` and the options that size the machine (CPU
/// model, CPU count, memory, no network): the same in every command, so a
/// dumped device tree matches the machine el2 boots on.
fn machine_args(machine_value: String, machine: &Machine) -> Vec<String> {
    let mut args = vec!["-machine".to_owned(), machine_value];
    args.extend(
        [
            "-cpu",
            &machine.cpu,
            "-smp",
            &machine.smp.to_string(),
            "-m",
            &machine.mem,
            "-nographic",
            "-nic",
            "none",
        ]
        .map(str::to_owned),
    );
    args
}

/// QEMU's arguments for `boot`.
///
/// `virtualization=on` gives the CPU EL2; `-semihosting` lets el2 set QEMU's
/// exit status; `-no-reboot` turns a guest reset into an exit; `-nic none`
/// avoids loading network option ROMs that a minimal QEMU install lacks.
/// Host files go in with `-device loader,...,force-raw=on` so QEMU copies
/// them to RAM as they are; see [`host_args`].
pub fn boot_args(boot: &Boot<'_>) -> Result<Vec<String>, String> {
    let machine = boot.machine;
    let mut args = machine_args(machine_arg(""), machine);
    args.extend(["-semihosting", "-no-reboot", "-kernel"].map(str::to_owned));
    args.push(boot.kernel.display().to_string());
    args.extend(host_args(&boot.host)?);
    if let Some(append) = boot.append {
        args.push("-append".to_owned());
        args.push(append.to_owned());
    }
    if let Some(dtb) = boot.dtb {
        args.push("-dtb".to_owned());
        args.push(dtb.display().to_string());
    }
    if machine.gdb {
        args.extend(["-s", "-S"].map(str::to_owned));
    }
    Ok(args)
}

/// A QEMU command for `boot`.
pub fn boot_command(qemu: &Path, boot: &Boot<'_>) -> Result<Command, String> {
    let mut cmd = Command::new(qemu);
    cmd.args(boot_args(boot)?);
    Ok(cmd)
}

/// QEMU's arguments that dump its device tree for `machine` (as
/// [`boot_args`] would build it) to `path` and exit.
pub fn dumpdtb_args(machine: &Machine, path: &Path) -> Vec<String> {
    machine_args(
        machine_arg(&format!(",dumpdtb={}", path.display())),
        machine,
    )
}

/// QEMU's arguments that boot Linux directly at EL1, without el2 (no
/// `virtualization=on`; QEMU's own loader, PSCI over HVC): the
/// benchmark's baseline.
pub fn direct_args(machine: &Machine, kernel: &Path, initrd: &Path, append: &str) -> Vec<String> {
    let mut args = machine_args(MACHINE_OPTS.to_owned(), machine);
    args.extend(["-no-reboot", "-kernel"].map(str::to_owned));
    args.push(kernel.display().to_string());
    args.push("-initrd".to_owned());
    args.push(initrd.display().to_string());
    args.push("-append".to_owned());
    args.push(append.to_owned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpdtb_and_direct_lines_size_the_machine_like_el2_boots() {
        let machine = Machine::default();
        assert_eq!(
            dumpdtb_args(&machine, Path::new("virt.dtb")).join(" "),
            "-machine virt,gic-version=3,its=off,virtualization=on,dumpdtb=virt.dtb \
             -cpu cortex-a72 -smp 2 -m 1G -nographic -nic none"
        );
        assert_eq!(
            direct_args(&machine, Path::new("Image"), Path::new("initrd"), "quiet").join(" "),
            "-machine virt,gic-version=3,its=off -cpu cortex-a72 -smp 2 -m 1G -nographic \
             -nic none -no-reboot -kernel Image -initrd initrd -append quiet"
        );
    }

    #[test]
    fn default_boot_line() {
        let machine = Machine::default();
        let boot = Boot {
            kernel: Path::new("el2"),
            host: Host::InPlace(Path::new("testhost.bin")),
            append: None,
            dtb: None,
            machine: &machine,
        };
        assert_eq!(
            boot_args(&boot).unwrap().join(" "),
            "-machine virt,gic-version=3,its=off,virtualization=on -cpu cortex-a72 -smp 2 -m 1G \
             -nographic -nic none -semihosting -no-reboot -kernel el2 \
             -device loader,file=testhost.bin,addr=0x44000000,force-raw=on"
        );
    }

    #[test]
    fn gdb_append_and_machine_options() {
        let machine = Machine {
            cpu: "max".to_owned(),
            smp: 4,
            mem: "2G".to_owned(),
            gdb: true,
        };
        let boot = Boot {
            kernel: Path::new("/t/el2"),
            host: Host::None,
            append: Some("testhost.fail"),
            dtb: Some(Path::new("t.dtb")),
            machine: &machine,
        };
        let args = boot_args(&boot).unwrap();
        assert!(
            args.ends_with(
                &[
                    "-kernel",
                    "/t/el2",
                    "-append",
                    "testhost.fail",
                    "-dtb",
                    "t.dtb",
                    "-s",
                    "-S"
                ]
                .map(str::to_owned)
            )
        );
        assert!(!args.iter().any(|a| a.starts_with("loader")));
        assert!(args.windows(2).any(|w| w == ["-cpu", "max"]));
        assert!(args.windows(2).any(|w| w == ["-smp", "4"]));
        assert!(args.windows(2).any(|w| w == ["-m", "2G"]));
    }

    #[test]
    fn descriptor_and_android_loaders() {
        let dir = std::env::temp_dir().join(format!("qemu-desc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let boot = dir.join("boot.img");
        let vendor = dir.join("vendor_boot.img");
        std::fs::write(&boot, vec![0u8; (3 << 20) + 5]).unwrap();
        std::fs::write(&vendor, vec![0u8; 4096]).unwrap();
        let args = host_args(&Host::Android {
            boot: &boot,
            vendor: Some(&vendor),
        })
        .unwrap()
        .join(" ");
        assert!(args.contains(&format!(
            "loader,file={},addr=0x44000000,force-raw=on",
            boot.display()
        )));
        // The vendor image at the next 2 MiB boundary after boot.img.
        assert!(args.contains(&format!(
            "loader,file={},addr=0x44400000,force-raw=on",
            vendor.display()
        )));
        assert!(args.contains("loader,addr=0x43fff000,data=0x54534f484d564b50,data-len=8"));
        assert!(args.contains("loader,addr=0x43fff008,data=0x2,data-len=8"));
        assert!(args.contains("loader,addr=0x43fff010,data=0x44000000,data-len=8"));
        assert!(args.contains("loader,addr=0x43fff018,data=0x300005,data-len=8"));
        assert!(args.contains("loader,addr=0x43fff020,data=0x44400000,data-len=8"));
        assert!(args.contains("loader,addr=0x43fff028,data=0x1000,data-len=8"));
        // A raw Image: in place at HOST_IMAGE_ADDR + text_offset, the
        // initrd after its image_size.
        let kernel = dir.join("Image");
        std::fs::write(&kernel, el2::bootimg::pack::arm64_image(&[1; 100], 5 << 20)).unwrap();
        let args = host_args(&Host::Raw {
            kernel: &kernel,
            initrd: Some(&vendor),
        })
        .unwrap()
        .join(" ");
        assert!(args.contains("loader,addr=0x43fff008,data=0x1,data-len=8"));
        assert!(args.contains(&format!(
            "loader,file={},addr=0x44600000,force-raw=on",
            vendor.display()
        )));
        assert!(
            host_args(&Host::Raw {
                kernel: &vendor,
                initrd: None
            })
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The load address is written in three places; keep them equal.
    #[test]
    fn host_image_address_matches_el2_and_testhost() {
        let root = crate::workspace::root();
        let layout = std::fs::read_to_string(root.join("el2/src/boot/layout.rs")).unwrap();
        assert!(layout.contains("pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;"));
        let ld = std::fs::read_to_string(root.join("tests/testhost/linker.ld")).unwrap();
        assert!(ld.contains(". = 0x44000000;"));
        assert_eq!(HOST_IMAGE_ADDR, 0x4400_0000);
        let hostimg = std::fs::read_to_string(root.join("el2/src/boot/hostimg.rs")).unwrap();
        assert!(hostimg.contains("pub const HOST_DESC_ADDR: u64 = 0x43ff_f000;"));
        assert!(hostimg.contains("pub const DESC_RAW: u64 = 1;"));
        assert!(hostimg.contains("pub const DESC_ANDROID: u64 = 2;"));
        assert!(hostimg.contains(r#"u64::from_le_bytes(*b"PKVMHOST")"#));
        assert_eq!(HOST_DESC_ADDR, 0x43ff_f000);
    }
}
