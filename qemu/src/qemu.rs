//! Finding (or installing) `qemu-system-aarch64` and the command line that
//! boots el2, its host and (for the built-in test host's VMM) a guest on it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use host_interface::guestdesc::{Blob, DESC_ADDR, FILES_ADDR, FLAG_SMALL_PAGES, GuestDesc, WORDS};

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
pub fn is_root() -> bool {
    match process::stdout_of(Command::new("id").arg("-u")) {
        Ok(uid) => uid.trim() == "0",
        Err(_) => env::var("USER").is_ok_and(|user| user == "root"),
    }
}

/// Where the host image is loaded (raw): el2 looks for an arm64 Image
/// header there when there is no host descriptor. Must match
/// `HOST_IMAGE_ADDR` in `el2/src/arch/layout.rs` and the link address in
/// `tests/testhost/linker.ld`.
pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;

/// Where the host descriptor goes (`el2/src/arch/hostimg.rs`,
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

/// Where RAM starts on QEMU's `virt` machine.
pub const RAM_BASE: u64 = 0x4000_0000;
/// How much of the top of RAM the guest's files must stay clear of: el2
/// carves its memory from the top of RAM (its heap: 32 MiB, or RAM/64 when
/// larger), and QEMU's loader would write the files before el2 runs, under
/// its feet. 64 MiB covers the carve-out up to 4 GiB of RAM.
pub const EL2_TOP_RESERVE: u64 = 64 << 20;
/// Longest guest command line the guest descriptor accepts
/// (`GuestDesc::decode`).
pub const MAX_GUEST_CMDLINE: u64 = 4096;

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
    /// The GICv3 ITS (`its=on`, the default; see [`MACHINE_OPTS`]).
    pub its: bool,
    /// Extra devices, each a QEMU `-device` value (e.g. `virtio-rng-pci`).
    pub devices: Vec<String>,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            cpu: crate::args::DEFAULT_CPU.to_owned(),
            smp: crate::args::DEFAULT_SMP,
            mem: crate::args::DEFAULT_MEM.to_owned(),
            gdb: false,
            its: true,
            devices: Vec::new(),
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

/// A protected guest the built-in test host runs as its VMM, handed over
/// with a guest descriptor (`host_interface::guestdesc`).
#[derive(Debug, Clone, Copy)]
pub struct Guest<'a> {
    /// The guest's raw arm64 Image.
    pub kernel: &'a Path,
    /// An initrd.
    pub initrd: Option<&'a Path>,
    /// A file holding the guest's kernel command line (see
    /// [`write_guest_cmdline`]): QEMU's loader only loads files.
    pub cmdline: Option<&'a Path>,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Back guest memory with 4 KiB pages only.
    pub small_pages: bool,
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
    /// A guest for the built-in test host's VMM ([`Host::InPlace`] only).
    pub guest: Option<Guest<'a>>,
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

/// The `-device loader` arguments that write `words` as little-endian
/// `u64`s from `base` up, one loader per word: QEMU's data loader writes at
/// most 8 bytes. Both descriptors (el2's host descriptor, the test host's
/// guest descriptor) are written this way.
pub fn words_args(base: u64, words: &[u64]) -> Vec<String> {
    words
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            [
                "-device".to_owned(),
                format!(
                    "loader,addr={:#x},data={w:#x},data-len=8",
                    base + 8 * i as u64
                ),
            ]
        })
        .collect()
}

/// The `-device loader` arguments that write the host descriptor
/// (`el2/src/arch/hostimg.rs`): magic, kind, then (address, size) of the
/// image and of the second file (0, 0 for none).
pub fn descriptor_args(kind: u64, image: (u64, u64), extra: (u64, u64)) -> Vec<String> {
    words_args(
        HOST_DESC_ADDR,
        &[DESC_MAGIC, kind, image.0, image.1, extra.0, extra.1],
    )
}

/// Writes the guest's command line to `path` for QEMU's loader; `None`
/// (nothing written) for an empty one, which the descriptor leaves out.
/// Refuses a line longer than the descriptor takes.
pub fn write_guest_cmdline(path: &Path, text: &str) -> Result<Option<PathBuf>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() as u64 > MAX_GUEST_CMDLINE {
        return Err(format!(
            "the guest command line is {} bytes; at most {MAX_GUEST_CMDLINE} fit the guest \
             descriptor",
            text.len()
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path.to_owned()))
}

/// The guest descriptor for `guest` on a machine with `ram` bytes of RAM,
/// and where each file goes: the kernel Image raw at [`FILES_ADDR`], the
/// initrd and then the command line each at the next 2 MiB boundary.
///
/// Reads the kernel (to check its arm64 Image header) and the other files'
/// sizes. Every file must end at most at RAM_BASE + `ram` − 64 MiB (el2
/// takes memory from the top of RAM); the descriptor must pass the same
/// checks the test host makes ([`GuestDesc::decode`]).
pub fn guest_layout(guest: &Guest<'_>, ram: u64) -> Result<(GuestDesc, Vec<String>), String> {
    let kernel = guest.kernel;
    let data = std::fs::read(kernel).map_err(|e| format!("guest {}: {e}", kernel.display()))?;
    let header = el2::bootimg::Arm64Image::parse(&data).map_err(|e| {
        // el2's errors name the boot image they come from; here there is
        // no boot image, only the Image.
        let e = e.to_string();
        let why = e.strip_prefix("boot image: ").unwrap_or(&e);
        format!("guest {}: not a raw arm64 Image: {why}", kernel.display())
    })?;
    // The VMM copies the Image to the start of guest RAM + text_offset and
    // the kernel uses image_size bytes from there (its BSS included).
    let needs = header.text_offset.saturating_add(header.image_size);
    if needs > guest.mem {
        return Err(format!(
            "guest {}: the Image needs {needs:#x} bytes of guest RAM (text_offset + image_size), \
             more than the guest's {} MiB (--guest-mem)",
            kernel.display(),
            guest.mem >> 20
        ));
    }
    let kernel_blob = Blob {
        addr: FILES_ADDR,
        size: data.len() as u64,
    };
    let mut args = raw_loader(kernel, kernel_blob.addr).to_vec();
    let mut end = kernel_blob.end();
    // Each further file at the next 2 MiB boundary after the one before.
    let mut place = |path: &Path, what: &str| -> Result<Blob, String> {
        let size = file_len(path)?;
        if size == 0 {
            return Err(format!("guest {what} {} is empty", path.display()));
        }
        let blob = Blob {
            addr: GuestDesc::next_file_addr(end),
            size,
        };
        args.extend(raw_loader(path, blob.addr));
        end = blob.end();
        Ok(blob)
    };
    let initrd = guest.initrd.map(|p| place(p, "initrd")).transpose()?;
    let cmdline = match guest.cmdline {
        Some(p) => {
            let len = file_len(p)?;
            if len > MAX_GUEST_CMDLINE {
                return Err(format!(
                    "guest command line {} is {len} bytes; at most {MAX_GUEST_CMDLINE} fit the \
                     guest descriptor",
                    p.display()
                ));
            }
            // An empty command line is no command line: the descriptor has
            // no zero-sized files.
            if len == 0 {
                None
            } else {
                Some(place(p, "command line")?)
            }
        }
        None => None,
    };
    let limit = RAM_BASE.saturating_add(ram).saturating_sub(EL2_TOP_RESERVE);
    if end > limit {
        return Err(format!(
            "the guest's files end at {end:#x}, above {limit:#x}: with {} MiB of RAM, files \
             loaded from {FILES_ADDR:#x} must stay {} MiB clear of the top of RAM, where el2 \
             takes its memory; give the machine more memory (--mem) or the guest smaller files",
            ram >> 20,
            EL2_TOP_RESERVE >> 20
        ));
    }
    let desc = GuestDesc {
        kernel: kernel_blob,
        initrd,
        cmdline,
        mem: guest.mem,
        vcpus: u64::from(guest.vcpus),
        flags: if guest.small_pages {
            FLAG_SMALL_PAGES
        } else {
            0
        },
    };
    // The test host refuses what `decode` refuses; say so here, where the
    // options that caused it are known, rather than from inside QEMU.
    GuestDesc::decode(&desc.encode()).map_err(|e| e.to_string())?;
    Ok((desc, args))
}

/// The arguments that load `guest` and write its descriptor at
/// [`DESC_ADDR`] ([`guest_layout`]).
pub fn guest_args(guest: &Guest<'_>, ram: u64) -> Result<Vec<String>, String> {
    let (desc, mut args) = guest_layout(guest, ram)?;
    let words: [u64; WORDS] = desc.encode();
    args.extend(words_args(DESC_ADDR, &words));
    Ok(args)
}

/// Where an Android boot image is loaded: at or just above
/// [`HOST_IMAGE_ADDR`], so that its kernel lands `text_offset` above a
/// 2 MiB boundary and el2 boots it in place instead of copying it
/// (`el2::bootimg::plan_in_place`). An image that does not parse goes at
/// [`HOST_IMAGE_ADDR`], for el2 to refuse with its own message.
pub fn android_load_addr(image: &[u8]) -> u64 {
    let Ok(img) = el2::bootimg::BootImage::parse(image, None) else {
        return HOST_IMAGE_ADDR;
    };
    let Ok(k) = el2::bootimg::Arm64Image::parse(img.kernel) else {
        return HOST_IMAGE_ADDR;
    };
    let kernel_off = img.kernel.as_ptr() as u64 - image.as_ptr() as u64;
    let shift = (k.text_offset % BLOCK_2M + BLOCK_2M - kernel_off % BLOCK_2M) % BLOCK_2M;
    HOST_IMAGE_ADDR + shift
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
            let data = std::fs::read(boot).map_err(|e| format!("{}: {e}", boot.display()))?;
            let len = data.len() as u64;
            let at = android_load_addr(&data);
            args.extend(raw_loader(boot, at));
            let mut extra = (0, 0);
            if let Some(vendor) = vendor {
                let vlen = file_len(vendor)?;
                let addr = (at + len).next_multiple_of(BLOCK_2M);
                args.extend(raw_loader(vendor, addr));
                extra = (addr, vlen);
            }
            args.extend(descriptor_args(DESC_ANDROID, (at, len), extra));
        }
    }
    Ok(args)
}

/// The `-machine` options every QEMU command of the runner shares (el2
/// boots, device-tree dumps and the direct-boot baseline).
///
/// `its=on` (unless [`Machine::its`] is off): the GICv3 ITS reads and
/// writes its tables by physical address, past stage-2; el2 mediates its
/// control frame and the redistributors' LPI registers (el2's
/// `arch::its`, `arch::gicr_lpi`), so the tables must be host-owned RAM,
/// held while in use. Other DMA-capable devices (virtio-pci doing DMA)
/// remain outside what stage-2 protects until el2 manages an SMMU.
const MACHINE_OPTS: &str = "virt,gic-version=3";

/// The `-machine` value for `machine` without EL2.
fn machine_base(machine: &Machine) -> String {
    let its = if machine.its { "on" } else { "off" };
    format!("{MACHINE_OPTS},its={its}")
}

/// The `-machine` value for `machine` under el2.
fn machine_arg(machine: &Machine, extra: &str) -> String {
    format!("{},virtualization=on{extra}", machine_base(machine))
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
    for d in &machine.devices {
        args.extend(["-device".to_owned(), d.clone()]);
    }
    args
}

/// QEMU's arguments for `boot`.
///
/// `virtualization=on` gives the CPU EL2; `-semihosting` lets el2 set QEMU's
/// exit status; `-no-reboot` turns a guest reset into an exit; `-nic none`
/// avoids loading network option ROMs that a minimal QEMU install lacks.
/// Host files go in with `-device loader,...,force-raw=on` so QEMU copies
/// them to RAM as they are; see [`host_args`]. A guest's files and its
/// descriptor go in the same way, after the host's; see [`guest_args`].
pub fn boot_args(boot: &Boot<'_>) -> Result<Vec<String>, String> {
    let machine = boot.machine;
    let mut args = machine_args(machine_arg(machine, ""), machine);
    args.extend(["-semihosting", "-no-reboot", "-kernel"].map(str::to_owned));
    args.push(boot.kernel.display().to_string());
    args.extend(host_args(&boot.host)?);
    if let Some(guest) = &boot.guest {
        if !matches!(boot.host, Host::InPlace(_)) {
            return Err(
                "a guest runs inside the built-in test host's VMM; it cannot go with another host"
                    .to_owned(),
            );
        }
        let ram = crate::args::memory_bytes(&machine.mem)
            .ok_or_else(|| format!("machine memory {:?} is not a QEMU size", machine.mem))?;
        args.extend(guest_args(guest, ram)?);
    }
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

/// QEMU's arguments for an interactive console on this terminal, instead
/// of what `-nographic` sets up (`-serial mon:stdio`): the same
/// multiplexed stdio with the monitor behind Ctrl-A c and Ctrl-A x to
/// quit, but `signal=off`, so Ctrl-C reaches the guest (as byte 0x03, to
/// interrupt what its shell runs) rather than killing QEMU.
pub fn interactive_console_args() -> Vec<String> {
    [
        "-chardev",
        "stdio,id=console,mux=on,signal=off",
        "-serial",
        "chardev:console",
        "-mon",
        "chardev=console,mode=readline",
    ]
    .map(str::to_owned)
    .to_vec()
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
        machine_arg(machine, &format!(",dumpdtb={}", path.display())),
        machine,
    )
}

/// QEMU's arguments that boot Linux directly at EL1, without el2 (no
/// `virtualization=on`; QEMU's own loader, PSCI over HVC): the
/// benchmark's baseline.
pub fn direct_args(machine: &Machine, kernel: &Path, initrd: &Path, append: &str) -> Vec<String> {
    let mut args = machine_args(machine_base(machine), machine);
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
            "-machine virt,gic-version=3,its=on,virtualization=on,dumpdtb=virt.dtb \
             -cpu cortex-a72 -smp 2 -m 1G -nographic -nic none"
        );
        assert_eq!(
            direct_args(&machine, Path::new("Image"), Path::new("initrd"), "quiet").join(" "),
            "-machine virt,gic-version=3,its=on -cpu cortex-a72 -smp 2 -m 1G -nographic \
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
            guest: None,
        };
        assert_eq!(
            boot_args(&boot).unwrap().join(" "),
            "-machine virt,gic-version=3,its=on,virtualization=on -cpu cortex-a72 -smp 2 -m 1G \
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
            its: false,
            devices: vec!["virtio-rng-pci".to_owned()],
        };
        let boot = Boot {
            kernel: Path::new("/t/el2"),
            host: Host::None,
            append: Some("testhost.fail"),
            dtb: Some(Path::new("t.dtb")),
            machine: &machine,
            guest: None,
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
        assert!(
            args.windows(2)
                .any(|w| w == ["-machine", "virt,gic-version=3,its=off,virtualization=on"])
        );
        assert!(args.windows(2).any(|w| w == ["-device", "virtio-rng-pci"]));
    }

    #[test]
    fn boot_images_are_loaded_with_their_kernel_on_a_2mib_boundary() {
        use el2::bootimg::pack;
        let k = pack::arm64_image(&[7; 5000], 3 << 20);
        // v3/v4: the kernel one 4 KiB page in.
        let v4 = pack::boot_v3_v4(4, &k, &[1; 100], "");
        assert_eq!(android_load_addr(&v4), HOST_IMAGE_ADDR + BLOCK_2M - 4096);
        // v0-v2: one header page in, whatever its size.
        for page in [2048u32, 4096, 16384] {
            let v2 = pack::boot_v0_v2(2, page, &k, &[1; 100], &[2; 64], "");
            let at = android_load_addr(&v2);
            assert_eq!((at + u64::from(page)) % BLOCK_2M, 0, "page {page}");
            assert!((HOST_IMAGE_ADDR..HOST_IMAGE_ADDR + BLOCK_2M).contains(&at));
        }
        // Not a boot image: at HOST_IMAGE_ADDR, for el2 to refuse.
        assert_eq!(android_load_addr(b"ANDROID?"), HOST_IMAGE_ADDR);
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

    /// A scratch directory of a test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qemu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A guest with the default options (128 MiB, 1 vCPU).
    fn guest<'a>(kernel: &'a Path) -> Guest<'a> {
        Guest {
            kernel,
            initrd: None,
            cmdline: None,
            mem: 128 << 20,
            vcpus: 1,
            small_pages: false,
        }
    }

    /// The `-device loader` argument writing `value` to `addr`.
    fn word(addr: u64, value: u64) -> String {
        format!("loader,addr={addr:#x},data={value:#x},data-len=8")
    }

    #[test]
    fn words_are_written_eight_bytes_apart() {
        assert_eq!(
            words_args(0x1000, &[7, u64::MAX]),
            [
                "-device",
                "loader,addr=0x1000,data=0x7,data-len=8",
                "-device",
                "loader,addr=0x1008,data=0xffffffffffffffff,data-len=8",
            ]
        );
        assert!(words_args(0x1000, &[]).is_empty());
    }

    #[test]
    fn guest_files_and_descriptor() {
        let dir = scratch("guest-files");
        let kernel = dir.join("Image");
        // 3 MiB + 5 bytes of file: the initrd goes at the 4 MiB boundary.
        let image = el2::bootimg::pack::arm64_image(&vec![1; (3 << 20) + 5 - 64], 8 << 20);
        std::fs::write(&kernel, &image).unwrap();
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, vec![2u8; (2 << 20) + 1]).unwrap();
        let cmdline = write_guest_cmdline(&dir.join("cmdline"), "testguest.fail x=1")
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&cmdline).unwrap(),
            "testguest.fail x=1"
        );
        let g = Guest {
            initrd: Some(&initrd),
            cmdline: Some(&cmdline),
            mem: 256 << 20,
            vcpus: 2,
            small_pages: true,
            ..guest(&kernel)
        };
        let (desc, _) = guest_layout(&g, 1 << 30).unwrap();
        let k = image.len() as u64;
        assert_eq!(
            desc.kernel,
            Blob {
                addr: 0x4800_0000,
                size: k
            }
        );
        assert_eq!(
            desc.initrd,
            Some(Blob {
                addr: 0x4840_0000,
                size: (2 << 20) + 1
            })
        );
        // The command line at the next 2 MiB boundary after the initrd.
        assert_eq!(
            desc.cmdline,
            Some(Blob {
                addr: 0x4880_0000,
                size: 18
            })
        );
        let args = guest_args(&g, 1 << 30).unwrap();
        let joined = args.join(" ");
        for (file, addr) in [
            (&kernel, "0x48000000"),
            (&initrd, "0x48400000"),
            (&cmdline, "0x48800000"),
        ] {
            assert!(
                joined.contains(&format!(
                    "-device loader,file={},addr={addr},force-raw=on",
                    file.display()
                )),
                "{file:?}: {joined}"
            );
        }
        // The descriptor, word by word, from 0x43ff_e000.
        let magic = u64::from_le_bytes(*b"PKVMGUES");
        let want = [
            magic,
            1,
            0x4800_0000,
            k,
            0x4840_0000,
            (2 << 20) + 1,
            0x4880_0000,
            18,
            256 << 20,
            2,
            FLAG_SMALL_PAGES,
        ];
        assert_eq!(want.len(), WORDS);
        for (i, w) in want.iter().enumerate() {
            let arg = word(0x43ff_e000 + 8 * i as u64, *w);
            assert!(args.contains(&arg), "word {i}: {arg}");
        }
        assert!(args.contains(&word(0x43ff_e000, 0x5345_5547_4d56_4b50)));
        // The words decode as the test host will decode them.
        assert_eq!(GuestDesc::decode(&desc.encode()), Ok(desc));
        // 3 files and 11 words, each `-device <spec>`.
        assert_eq!(args.len(), 2 * (3 + WORDS));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_without_initrd_or_cmdline() {
        let dir = scratch("guest-bare");
        let kernel = dir.join("Image");
        std::fs::write(&kernel, el2::bootimg::pack::arm64_image(&[1; 100], 1 << 20)).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        // An empty command line file is no command line.
        for g in [
            guest(&kernel),
            Guest {
                cmdline: Some(&empty),
                ..guest(&kernel)
            },
        ] {
            let (desc, files) = guest_layout(&g, 1 << 30).unwrap();
            assert_eq!(desc.initrd, None);
            assert_eq!(desc.cmdline, None);
            assert_eq!(desc.flags, 0);
            assert_eq!(desc.vcpus, 1);
            assert_eq!(desc.mem, 128 << 20);
            assert_eq!(files.len(), 2, "the kernel alone: {files:?}");
            let args = guest_args(&g, 1 << 30).unwrap();
            for i in 4..8 {
                assert!(args.contains(&word(0x43ff_e000 + 8 * i, 0)), "word {i}");
            }
        }
        assert_eq!(write_guest_cmdline(&dir.join("none"), ""), Ok(None));
        assert!(!dir.join("none").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_errors_are_clear() {
        let dir = scratch("guest-errors");
        let kernel = dir.join("Image");
        std::fs::write(&kernel, el2::bootimg::pack::arm64_image(&[1; 100], 1 << 20)).unwrap();
        let not_image = dir.join("not-image");
        std::fs::write(&not_image, vec![0u8; 4096]).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let long = dir.join("long");
        std::fs::write(&long, vec![b'x'; 4097]).unwrap();
        let err = |g: Guest<'_>, ram: u64| guest_args(&g, ram).unwrap_err();

        let e = err(guest(&not_image), 1 << 30);
        assert!(e.contains("not a raw arm64 Image"), "{e}");
        let e = err(guest(&dir.join("missing")), 1 << 30);
        assert!(e.contains("missing"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, el2::bootimg::pack::arm64_image(&[1; 100], 129 << 20)).unwrap();
        let e = err(guest(&big), 1 << 30);
        assert!(
            e.contains("needs 0x8100000 bytes of guest RAM") && e.contains("128 MiB"),
            "{e}"
        );
        assert!(
            guest_args(
                &Guest {
                    mem: 130 << 20,
                    ..guest(&big)
                },
                1 << 30
            )
            .is_ok()
        );
        let e = err(
            Guest {
                initrd: Some(&empty),
                ..guest(&kernel)
            },
            1 << 30,
        );
        assert!(e.contains("initrd") && e.contains("is empty"), "{e}");
        let e = err(
            Guest {
                cmdline: Some(&long),
                ..guest(&kernel)
            },
            1 << 30,
        );
        assert!(e.contains("4097 bytes; at most 4096"), "{e}");
        let e = write_guest_cmdline(&dir.join("c"), &"y".repeat(4097)).unwrap_err();
        assert!(e.contains("4097 bytes; at most 4096"), "{e}");
        assert!(write_guest_cmdline(&dir.join("c"), &"y".repeat(4096)).is_ok());
        // What the test host would refuse is refused here.
        let e = err(
            Guest {
                mem: 3 << 20,
                ..guest(&kernel)
            },
            1 << 30,
        );
        assert_eq!(e, "guest descriptor: bad memory size");
        let e = err(
            Guest {
                vcpus: 9,
                ..guest(&kernel)
            },
            1 << 30,
        );
        assert_eq!(e, "guest descriptor: bad vCPU count");
        // 128 MiB of RAM ends at 0x4800_0000: nothing fits below el2's
        // 64 MiB at the top.
        let e = err(guest(&kernel), 128 << 20);
        assert!(e.contains("above 0x44000000") && e.contains("--mem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_files_end_at_most_64m_below_the_top_of_ram() {
        let dir = scratch("guest-limit");
        let kernel = dir.join("Image");
        std::fs::write(&kernel, el2::bootimg::pack::arm64_image(&[1; 100], 1 << 20)).unwrap();
        // 256 MiB of RAM: files must end by 0x4c00_0000; the initrd
        // starts at 0x4820_0000.
        let initrd = dir.join("initrd");
        let file = std::fs::File::create(&initrd).unwrap();
        file.set_len(0x4c00_0000 - 0x4820_0000).unwrap();
        let g = Guest {
            initrd: Some(&initrd),
            ..guest(&kernel)
        };
        assert!(guest_args(&g, 256 << 20).is_ok());
        file.set_len(0x4c00_0000 - 0x4820_0000 + 1).unwrap();
        let e = guest_args(&g, 256 << 20).unwrap_err();
        assert!(e.contains("end at 0x4c000001, above 0x4c000000"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boot_line_with_a_guest() {
        let dir = scratch("guest-boot");
        let kernel = dir.join("Image");
        std::fs::write(&kernel, el2::bootimg::pack::arm64_image(&[1; 100], 1 << 20)).unwrap();
        let machine = Machine::default();
        let boot = Boot {
            kernel: Path::new("el2"),
            host: Host::InPlace(Path::new("testhost.bin")),
            append: None,
            dtb: None,
            machine: &machine,
            guest: Some(guest(&kernel)),
        };
        let line = boot_args(&boot).unwrap().join(" ");
        // The test host first, then the guest's files and descriptor.
        let host = line
            .find("loader,file=testhost.bin,addr=0x44000000,force-raw=on")
            .unwrap();
        let guest_file = line
            .find(&format!(
                "loader,file={},addr=0x48000000,force-raw=on",
                kernel.display()
            ))
            .unwrap();
        assert!(host < guest_file);
        assert!(line.contains(&word(0x43ff_e000, u64::from_le_bytes(*b"PKVMGUES"))));
        assert!(line.contains(&word(0x43ff_e000 + 8 * 10, 0)));
        // Without a guest, no guest descriptor.
        let plain = boot_args(&Boot {
            guest: None,
            ..boot
        })
        .unwrap()
        .join(" ");
        assert!(!plain.contains("0x43ffe000"));
        // A guest goes with the built-in test host only.
        for host in [
            Host::None,
            Host::Raw {
                kernel: &kernel,
                initrd: None,
            },
        ] {
            let e = boot_args(&Boot { host, ..boot }).unwrap_err();
            assert!(e.contains("built-in test host"), "{e}");
        }
        // The machine's memory sizes the limit: 1G fits, 128M does not.
        let small = Machine {
            mem: "128M".to_owned(),
            ..Machine::default()
        };
        assert!(
            boot_args(&Boot {
                machine: &small,
                ..boot
            })
            .unwrap_err()
            .contains("el2 takes its memory")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The guest descriptor sits below el2's host descriptor and the
    /// guest's files above the test host's image, as host_interface says.
    #[test]
    fn guest_descriptor_layout() {
        const {
            assert!(DESC_ADDR == 0x43ff_e000);
            assert!(FILES_ADDR == 0x4800_0000);
            assert!(DESC_ADDR + 8 * WORDS as u64 <= HOST_DESC_ADDR);
            assert!(FILES_ADDR >= HOST_IMAGE_ADDR + (64 << 20));
        }
    }

    /// The load address is written in three places; keep them equal.
    #[test]
    fn host_image_address_matches_el2_and_testhost() {
        let root = crate::workspace::root();
        let layout = std::fs::read_to_string(root.join("el2/src/arch/layout.rs")).unwrap();
        assert!(layout.contains("pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;"));
        let ld = std::fs::read_to_string(root.join("tests/testhost/linker.ld")).unwrap();
        assert!(ld.contains(". = 0x44000000;"));
        assert_eq!(HOST_IMAGE_ADDR, 0x4400_0000);
        let hostimg = std::fs::read_to_string(root.join("el2/src/arch/hostimg.rs")).unwrap();
        assert!(hostimg.contains("pub const HOST_DESC_ADDR: u64 = 0x43ff_f000;"));
        assert!(hostimg.contains("pub const DESC_RAW: u64 = 1;"));
        assert!(hostimg.contains("pub const DESC_ANDROID: u64 = 2;"));
        assert!(hostimg.contains(r#"u64::from_le_bytes(*b"PKVMHOST")"#));
        assert_eq!(HOST_DESC_ADDR, 0x43ff_f000);
    }
}
