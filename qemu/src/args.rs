//! Command-line parsing for `cargo qemu`, by hand (no dependencies).

use std::fmt;

use host_interface::guestdesc::MAX_VCPUS;

/// Usage text printed by `cargo qemu help` and on argument errors.
pub const USAGE: &str = "\
cargo qemu: build, boot and test the el2 hypervisor under QEMU

Usage: cargo qemu <command> [options]

Commands:
  build       Build el2, the test host and the test guest for
              aarch64-unknown-none (release); print the paths of el2's ELF,
              el2.bin (raw arm64 Image), testhost.bin (the default host, a
              raw Image) and testguest.bin (the test guest, a raw Image).
  run         Build, then boot el2 under qemu-system-aarch64 (virt machine,
              virtualization=on, GICv3) with a host image (the test host by
              default), console on this terminal; exits with QEMU's status.
  linux-images
              Download Debian's arm64 kernel and busybox-static packages
              (apt-get download, cached outside the repository), build a
              busybox initramfs and pack Android boot images from them
              (header v2, header v4, and a v4 boot + vendor boot pair);
              print their paths.
  guest-kernel
              Build a small arm64 Linux guest kernel with the upstream pKVM
              guest driver (CONFIG_ARM_PKVM_GUEST) from Debian trixie's
              linux-source-6.12 (apt-get download, cached outside the
              repository; configured with allnoconfig plus
              qemu/src/linux/pkvm-guest.config) and a busybox initramfs whose
              /init prints GUEST-* lines; print both paths. Installs the
              cross compiler and build tools with apt-get when root and
              missing, otherwise says what to install.
  host-driver Build the Linux host driver pkvm_rs.ko (host_interface/driver)
              against the headers of the exact Debian kernel linux-images
              boots (linux-headers-<release>, its -common package and
              linux-kbuild, apt-get download, cached outside the
              repository), and its static smoke test pkvm-rs-smoke; print
              both paths. Installs the cross compiler and the arm64 C
              library with apt-get when root and missing, otherwise says
              what to install.
  vmm-images  Build (or reuse from the caches) the host driver and its smoke
              test, pkvm-vmm (aarch64-unknown-linux-musl, release),
              testguest.bin and, when it can be built here, the pKVM Linux
              guest kernel; pack them as a GKI-style pair: a header v4
              boot image (the linux-images kernel, /init alone) and a
              vendor boot v4 image whose vendor ramdisk holds busybox, the
              driver (/lib/modules/pkvm_rs.ko), the smoke test, pkvm-vmm
              and the guests. Init loads the driver, runs the smoke test
              and pkvm-vmm with each guest, unloads the driver and powers
              off (VMM-* lines; `--append pkvm.shell` on `run` gives a
              shell after the checks). Print both paths
              (<cache>/images/vmm-boot.img, boot with --vendor-boot
              <cache>/images/vmm-vendor_boot.img).
  bench-boot [--host-map blocks|pages]
              Boot the same Debian kernel and initramfs five times directly
              at EL1 (no hypervisor) and five times under el2 (the v4 boot
              image), interleaved; print the median time to user space of
              each and their ratio. --host-map pages boots el2 with
              el2.host_map=pages: the host stage-2 maps RAM with 4 KiB
              pages only (TCG-friendly; costs el2 2 MiB of tables per GiB
              of RAM, and TLB reach on hardware); the default is blocks.
  bench-guest Boot the test host with the test guest in its VMM
              (--guest testguest --guest-append testguest.bench
              --guest-mem 256M) twice, with 2 MiB folios and with
              --guest-small-pages; print the guest's figures (null HVC,
              MMIO exit, share/unshare, first touch of 64 MiB) in ticks and
              ns per iteration against the host's null HVC.
  fuzz        Run the coverage-guided fuzz targets (fuzz/, cargo-fuzz on a
              nightly toolchain it installs if missing, saying so) one
              after another, 1 minute each by default, and print
              executions, coverage, corpus and crashes per target; fails
              on a crash. Options: --minutes N, --runs N, --target NAME
              (repeatable: host_call, guest_call, vm_layer, boot_image,
              device_tree); --proptest-cases N [--proptest-rounds R]
              runs the workspace's property tests longer instead.
  bench-guest-boot
              Boot the pKVM guest kernel and initramfs (guest-kernel) five
              times directly at EL1 as the only OS (-m 256M -smp 2) and five
              times as a protected guest in the test host's VMM under el2
              (--guest-mem 256M --guest-smp 2), interleaved; print the
              median time to the guest's user space of each, their ratio,
              and the VMM's exits per second by kind.
  test        Run the QEMU tests, each with a timeout (the Linux host tests
              build the linux-images first when they are missing, the
              Linux guest tests the guest kernel, which they skip when it
              cannot be built here, the Linux VMM test the vmm-images).
  test-all    The whole test suite, stopping at the first failure:
              cargo fmt --check, clippy (host and aarch64-unknown-none),
              the aarch64 release build, cargo test --workspace and the
              QEMU tests.
  help        Print this text.

Options for `run`:
  --host <image>   Host to boot under el2: an Android boot image
                   (\"ANDROID!\", header v0-v4) or a raw arm64 Image
                   (\"ARM\\x64\" at +0x38); default: the built-in test host
  --vendor-boot <vendor_boot.img>
                   The vendor boot image (v3/v4) of a v3/v4 --host boot image
  --initrd <file>  An initrd for a raw --host Image
  --append <args>  Kernel command line for the host (/chosen/bootargs);
                   `testhost.fail` makes the test host fail one check
  --gdb            Start QEMU halted with a gdb server on :1234 (-s -S)
  --cpu <model>    QEMU CPU model (default: cortex-a72)
  --smp <N>        Number of CPUs (default: 2)
  --mem <size>     Machine RAM, e.g. 1G or 512M (default: 1G)
  --its on|off     The GICv3 ITS, which el2 mediates (default: on)
  --device <spec>  Add a QEMU device (-device <spec>), e.g. virtio-rng-pci
                   (a PCI device using MSIs through the ITS); repeatable

  A protected guest run by the built-in test host's VMM (not with --host):
  --guest <Image>  A raw arm64 Image (\"ARM\\x64\" at +0x38) to run as the
                   guest; the word `testguest` means the built testguest.bin
  --guest-initrd <file>
                   An initrd for the guest
  --guest-append <args>
                   The guest's kernel command line (at most 4096 bytes);
                   `testguest.fail` makes the test guest fail one check
  --guest-mem <size>
                   Guest RAM: a multiple of 2 MiB, at least 16M
                   (default: 128M)
  --guest-smp <N>  Number of guest vCPUs, 1 to 8 (default: 1)
  --guest-small-pages
                   Back guest memory with 4 KiB pages only (no 2 MiB folios)

  The guest's console: with --guest the terminal is the guest's console
  too: bytes typed go to the guest's PL011, Ctrl-C included; Ctrl-A x quits
  QEMU, Ctrl-A c switches to QEMU's monitor and back, Ctrl-A h lists the
  keys. The pKVM guest (cargo qemu guest-kernel) gives a shell with
  `guest.shell` on its command line, and powers off when it exits:
    cargo qemu run --guest <Image> --guest-initrd <initramfs.cpio> \
        --guest-append 'console=ttyAMA0 guest.shell' --guest-mem 256M

Exit statuses of `run` (QEMU's, set by el2): 0 the host powered off
normally; 1 a test-host check failed; 2/3 the test host hit an unexpected
exception / panicked; 4 el2 was not entered at EL2; 5 el2 could not boot;
6 el2 took an unexpected exception; 7 el2 panicked; with --guest: 8 the
guest reported failing checks; 9 the guest reset (PSCI SYSTEM_RESET);
10 the guest crashed or el2 stopped it; 11 the VMM failed (bad guest
image, a hypervisor call failed, or the teardown check failed); 12 the
host reset the machine (a Linux host's reboot, or panic with panic=-1).

If qemu-system-aarch64 is missing and cargo qemu runs as root, it installs
Debian's qemu-system-arm with apt-get; otherwise it says what to install.
Set QEMU_SYSTEM_AARCH64 to use a QEMU binary outside PATH.
";

/// Default QEMU CPU model: an Armv8.0 core with EL2 support in QEMU.
pub const DEFAULT_CPU: &str = "cortex-a72";
/// Default number of CPUs.
pub const DEFAULT_SMP: u32 = 2;
/// Default machine RAM size, in QEMU's `-m` syntax.
pub const DEFAULT_MEM: &str = "1G";

/// The `--guest` value that means the built test guest (`testguest.bin`)
/// rather than a file.
pub const BUILTIN_GUEST: &str = "testguest";
/// Default guest RAM (`--guest-mem`), in bytes: 128 MiB.
pub const DEFAULT_GUEST_MEM: u64 = 128 << 20;
/// Least guest RAM (`--guest-mem`), in bytes: 16 MiB, room for a small
/// kernel, its page tables and stacks.
pub const MIN_GUEST_MEM: u64 = 16 << 20;
/// Most guest RAM the guest descriptor accepts (`GuestDesc::decode`): 1 TiB.
pub const MAX_GUEST_MEM: u64 = 1 << 40;
/// Guest RAM is handed out in 2 MiB folios, so its size is a multiple of
/// 2 MiB (the guest descriptor refuses anything else).
pub const GUEST_MEM_ALIGN: u64 = 2 << 20;
/// Default number of guest vCPUs (`--guest-smp`).
pub const DEFAULT_GUEST_SMP: u32 = 1;
/// Most guest vCPUs (`--guest-smp`): the guest descriptor's limit.
pub const MAX_GUEST_SMP: u32 = MAX_VCPUS as u32;

/// A parsed `cargo qemu` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the usage text.
    Help,
    /// Build el2 and print where the images are.
    Build,
    /// Build el2 and boot it under QEMU (boxed: the options dwarf every
    /// other variant).
    Run(Box<RunOptions>),
    /// Download the Debian packages and build the Linux host images.
    LinuxImages,
    /// Build the pKVM guest kernel and its initramfs.
    GuestKernel,
    /// Build the Linux host driver and its smoke test.
    HostDriver,
    /// Build the boot image that runs the Linux VMM end to end.
    VmmImages,
    /// Benchmark Linux boot time directly at EL1 vs under el2, with the
    /// host stage-2 mapping RAM as given (`--host-map`).
    BenchBoot(crate::commands::bench::HostMap),
    /// Benchmark the test guest's hypervisor paths (null HVC, MMIO exit,
    /// share/unshare, first touch) with 2 MiB folios and 4 KiB pages.
    BenchGuest,
    /// Benchmark the pKVM Linux guest's boot directly at EL1 vs as a
    /// protected guest under el2.
    BenchGuestBoot,
    /// Run the fuzz targets (or longer property tests).
    Fuzz(crate::commands::fuzz::FuzzOptions),
    /// Run the QEMU tests.
    Test,
    /// Run the whole test suite.
    TestAll,
}

/// Options of `cargo qemu run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Host image to boot under el2 (`--host`): an Android boot image or
    /// a raw arm64 Image; `None` boots the built-in test host.
    pub host: Option<String>,
    /// The vendor boot image of a v3/v4 boot image (`--vendor-boot`).
    pub vendor_boot: Option<String>,
    /// An initrd for a raw Image (`--initrd`).
    pub initrd: Option<String>,
    /// The host's kernel command line (`--append`).
    pub append: Option<String>,
    /// Wait for gdb on port 1234 (`--gdb`).
    pub gdb: bool,
    /// QEMU CPU model (`--cpu`).
    pub cpu: String,
    /// Number of CPUs (`--smp`).
    pub smp: u32,
    /// Machine RAM size in QEMU's `-m` syntax (`--mem`).
    pub mem: String,
    /// The GICv3 ITS (`--its on|off`, on by default).
    pub its: bool,
    /// Extra QEMU devices (`--device <spec>`, repeatable).
    pub devices: Vec<String>,
    /// A protected guest for the built-in test host's VMM (`--guest` and
    /// the `--guest-*` options).
    pub guest: Option<GuestOptions>,
}

/// The guest kernel `--guest` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestImage {
    /// The built test guest, `testguest.bin` (`--guest testguest`).
    Testguest,
    /// A raw arm64 Image file.
    File(String),
}

/// The options of a guest run by the built-in test host's VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOptions {
    /// The kernel Image (`--guest`).
    pub image: GuestImage,
    /// An initrd (`--guest-initrd`).
    pub initrd: Option<String>,
    /// The guest's kernel command line (`--guest-append`).
    pub append: Option<String>,
    /// Guest RAM in bytes (`--guest-mem`): a multiple of 2 MiB, at least
    /// [`MIN_GUEST_MEM`].
    pub mem: u64,
    /// vCPUs (`--guest-smp`), 1 to [`MAX_GUEST_SMP`].
    pub smp: u32,
    /// Back guest memory with 4 KiB pages only (`--guest-small-pages`).
    pub small_pages: bool,
}

impl GuestOptions {
    /// A guest running `image` with every other option at its default.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            initrd: None,
            append: None,
            mem: DEFAULT_GUEST_MEM,
            smp: DEFAULT_GUEST_SMP,
            small_pages: false,
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            host: None,
            vendor_boot: None,
            initrd: None,
            append: None,
            gdb: false,
            cpu: DEFAULT_CPU.to_owned(),
            smp: DEFAULT_SMP,
            mem: DEFAULT_MEM.to_owned(),
            its: true,
            devices: Vec::new(),
            guest: None,
        }
    }
}

/// Why the command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// The first argument is not a known command.
    UnknownCommand(String),
    /// An option the command does not take.
    UnknownOption {
        /// The command being parsed.
        command: &'static str,
        /// The offending option.
        option: String,
    },
    /// A positional argument where none is accepted.
    UnexpectedArgument {
        /// The command being parsed.
        command: &'static str,
        /// The offending argument.
        argument: String,
    },
    /// An option that needs a value was last on the line.
    MissingValue(&'static str),
    /// A flag was given a value (`--gdb=yes`).
    UnexpectedValue(&'static str),
    /// An option's value is malformed.
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value given.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// Two options that cannot go together.
    Conflict {
        /// The option given.
        option: &'static str,
        /// The option it cannot be combined with.
        with: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// An option given without the option it modifies.
    Requires {
        /// The option given.
        option: &'static str,
        /// The option it needs.
        needs: &'static str,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCommand(c) => write!(f, "unknown command `{c}`"),
            Self::UnknownOption { command, option } => {
                write!(f, "`{command}` does not take the option `{option}`")
            }
            Self::UnexpectedArgument { command, argument } => {
                write!(f, "`{command}` takes no argument `{argument}`")
            }
            Self::MissingValue(option) => write!(f, "`{option}` needs a value"),
            Self::UnexpectedValue(option) => write!(f, "`{option}` takes no value"),
            Self::InvalidValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "invalid value `{value}` for `{option}`: expected {expected}"
            ),
            Self::Conflict { option, with, why } => {
                write!(f, "`{option}` cannot be combined with `{with}`: {why}")
            }
            Self::Requires { option, needs } => write!(f, "`{option}` needs `{needs}`"),
        }
    }
}

impl std::error::Error for ArgError {}

/// Parses the arguments after `cargo qemu` (program name excluded).
///
/// No arguments, `help`, `-h` and `--help` (anywhere) all mean
/// [`Command::Help`].
pub fn parse<I, S>(args: I) -> Result<Command, ArgError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    match command.as_str() {
        "help" => no_arguments("help", rest).map(|()| Command::Help),
        "build" => no_arguments("build", rest).map(|()| Command::Build),
        "test" => no_arguments("test", rest).map(|()| Command::Test),
        "linux-images" => no_arguments("linux-images", rest).map(|()| Command::LinuxImages),
        "guest-kernel" => no_arguments("guest-kernel", rest).map(|()| Command::GuestKernel),
        "host-driver" => no_arguments("host-driver", rest).map(|()| Command::HostDriver),
        "vmm-images" => no_arguments("vmm-images", rest).map(|()| Command::VmmImages),
        "bench-boot" => parse_bench_boot(rest).map(Command::BenchBoot),
        "fuzz" => crate::commands::fuzz::parse(rest).map(Command::Fuzz),
        "bench-guest" => no_arguments("bench-guest", rest).map(|()| Command::BenchGuest),
        "bench-guest-boot" => {
            no_arguments("bench-guest-boot", rest).map(|()| Command::BenchGuestBoot)
        }
        "test-all" => no_arguments("test-all", rest).map(|()| Command::TestAll),
        "run" => parse_run(rest).map(|options| Command::Run(Box::new(options))),
        other => Err(ArgError::UnknownCommand(other.to_owned())),
    }
}

fn no_arguments(command: &'static str, rest: &[String]) -> Result<(), ArgError> {
    match rest.first() {
        None => Ok(()),
        Some(arg) if arg.starts_with('-') => Err(ArgError::UnknownOption {
            command,
            option: arg.clone(),
        }),
        Some(arg) => Err(ArgError::UnexpectedArgument {
            command,
            argument: arg.clone(),
        }),
    }
}

fn parse_bench_boot(rest: &[String]) -> Result<crate::commands::bench::HostMap, ArgError> {
    use crate::commands::bench::HostMap;
    let mut host_map = HostMap::Blocks;
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let value = match arg.split_once('=') {
            Some(("--host-map", v)) => v.to_owned(),
            None if arg == "--host-map" => args
                .next()
                .cloned()
                .ok_or(ArgError::MissingValue("--host-map"))?,
            _ => {
                no_arguments("bench-boot", core::slice::from_ref(arg))?;
                continue;
            }
        };
        host_map = match value.as_str() {
            "blocks" => HostMap::Blocks,
            "pages" => HostMap::Pages,
            _ => {
                return Err(ArgError::InvalidValue {
                    option: "--host-map",
                    value,
                    expected: "blocks or pages",
                });
            }
        };
    }
    Ok(host_map)
}

fn parse_run(rest: &[String]) -> Result<RunOptions, ArgError> {
    let mut options = RunOptions::default();
    // The guest's options may come before `--guest`, so they are collected
    // here and checked against it once the whole line is read.
    let mut guest_image: Option<GuestImage> = None;
    let mut guest = GuestOptions::new(GuestImage::Testguest);
    // The first `--guest-*` option given, to name it if `--guest` is not.
    let mut guest_only: Option<&'static str> = None;
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if arg.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |option: &'static str| -> Result<String, ArgError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().cloned().ok_or(ArgError::MissingValue(option)),
            }
        };
        let flag = |option: &'static str| -> Result<(), ArgError> {
            match inline {
                Some(_) => Err(ArgError::UnexpectedValue(option)),
                None => Ok(()),
            }
        };
        if let Some(option) = GUEST_ONLY.iter().copied().find(|o| *o == name) {
            guest_only.get_or_insert(option);
        }
        match name {
            "--host" => options.host = Some(value("--host")?),
            "--vendor-boot" => options.vendor_boot = Some(value("--vendor-boot")?),
            "--initrd" => options.initrd = Some(value("--initrd")?),
            "--append" => options.append = Some(value("--append")?),
            "--cpu" => {
                let cpu = value("--cpu")?;
                if cpu.is_empty() || cpu.starts_with('-') {
                    return Err(ArgError::InvalidValue {
                        option: "--cpu",
                        value: cpu,
                        expected: "a QEMU CPU model such as cortex-a72 or max",
                    });
                }
                options.cpu = cpu;
            }
            "--smp" => {
                let smp = value("--smp")?;
                options.smp = match smp.parse::<u32>() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(ArgError::InvalidValue {
                            option: "--smp",
                            value: smp,
                            expected: "a number of CPUs, at least 1",
                        });
                    }
                };
            }
            "--mem" => {
                let mem = value("--mem")?;
                if !is_memory_size(&mem) {
                    return Err(ArgError::InvalidValue {
                        option: "--mem",
                        value: mem,
                        expected: "a size such as 1G, 512M or 2048 (MiB)",
                    });
                }
                options.mem = mem;
            }
            "--gdb" => {
                flag("--gdb")?;
                options.gdb = true;
            }
            "--its" => {
                let v = value("--its")?;
                options.its = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(ArgError::InvalidValue {
                            option: "--its",
                            value: v,
                            expected: "on or off",
                        });
                    }
                };
            }
            "--device" => {
                let d = value("--device")?;
                if d.is_empty() || d.starts_with('-') {
                    return Err(ArgError::InvalidValue {
                        option: "--device",
                        value: d,
                        expected: "a QEMU -device value such as virtio-rng-pci",
                    });
                }
                options.devices.push(d);
            }
            "--guest" => {
                let image = value("--guest")?;
                guest_image = Some(match image.as_str() {
                    BUILTIN_GUEST => GuestImage::Testguest,
                    "" => {
                        return Err(ArgError::InvalidValue {
                            option: "--guest",
                            value: image,
                            expected: "a raw arm64 Image, or `testguest` for the built test guest",
                        });
                    }
                    _ => GuestImage::File(image),
                });
            }
            "--guest-initrd" => guest.initrd = Some(value("--guest-initrd")?),
            "--guest-append" => guest.append = Some(value("--guest-append")?),
            "--guest-mem" => {
                let mem = value("--guest-mem")?;
                guest.mem = match memory_bytes(&mem) {
                    Some(bytes)
                        if bytes.is_multiple_of(GUEST_MEM_ALIGN)
                            && (MIN_GUEST_MEM..=MAX_GUEST_MEM).contains(&bytes) =>
                    {
                        bytes
                    }
                    _ => {
                        return Err(ArgError::InvalidValue {
                            option: "--guest-mem",
                            value: mem,
                            expected: "a size such as 128M or 1G (no suffix: MiB), \
                                       a multiple of 2 MiB from 16M to 1T",
                        });
                    }
                };
            }
            "--guest-smp" => {
                let smp = value("--guest-smp")?;
                guest.smp = match smp.parse::<u32>() {
                    Ok(n) if (1..=MAX_GUEST_SMP).contains(&n) => n,
                    _ => {
                        return Err(ArgError::InvalidValue {
                            option: "--guest-smp",
                            value: smp,
                            expected: "a number of vCPUs from 1 to 8",
                        });
                    }
                };
            }
            "--guest-small-pages" => {
                flag("--guest-small-pages")?;
                guest.small_pages = true;
            }
            other if other.starts_with('-') => {
                return Err(ArgError::UnknownOption {
                    command: "run",
                    option: other.to_owned(),
                });
            }
            other => {
                return Err(ArgError::UnexpectedArgument {
                    command: "run",
                    argument: other.to_owned(),
                });
            }
        }
    }
    match guest_image {
        Some(image) => {
            if options.host.is_some() {
                return Err(ArgError::Conflict {
                    option: "--guest",
                    with: "--host",
                    why: "the guest runs inside the built-in test host's VMM",
                });
            }
            options.guest = Some(GuestOptions { image, ..guest });
        }
        None => {
            if let Some(option) = guest_only {
                return Err(ArgError::Requires {
                    option,
                    needs: "--guest",
                });
            }
        }
    }
    Ok(options)
}

/// The options that only make sense with `--guest`.
const GUEST_ONLY: [&str; 5] = [
    "--guest-initrd",
    "--guest-append",
    "--guest-mem",
    "--guest-smp",
    "--guest-small-pages",
];

/// The bytes a size in QEMU's `-m` syntax stands for: digits with an
/// optional K, M, G or T suffix (either case; no suffix means MiB).
/// `None` when malformed, zero, or too large for a `u64`.
pub fn memory_bytes(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 20),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // `parse` alone would also take a leading `+`; the check above keeps
    // to plain digits.
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(1 << shift)?;
    (bytes != 0).then_some(bytes)
}

/// Whether `s` is a positive size QEMU's `-m` accepts (see
/// [`memory_bytes`]).
fn is_memory_size(s: &str) -> bool {
    memory_bytes(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunOptions, ArgError> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        match parse(all)? {
            Command::Run(options) => Ok(*options),
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn its_and_devices() {
        let o = run(&[]).unwrap();
        assert!(o.its && o.devices.is_empty());
        let o = run(&[
            "--its",
            "off",
            "--device",
            "virtio-rng-pci",
            "--device=pcie-root-port",
        ])
        .unwrap();
        assert!(!o.its);
        assert_eq!(o.devices, ["virtio-rng-pci", "pcie-root-port"]);
        assert!(run(&["--its=on"]).unwrap().its);
        assert!(matches!(
            run(&["--its", "maybe"]),
            Err(ArgError::InvalidValue {
                option: "--its",
                ..
            })
        ));
        assert!(matches!(
            run(&["--device", "-s"]),
            Err(ArgError::InvalidValue {
                option: "--device",
                ..
            })
        ));
        assert_eq!(run(&["--device"]), Err(ArgError::MissingValue("--device")));
    }

    #[test]
    fn no_arguments_is_help() {
        assert_eq!(parse(Vec::<String>::new()), Ok(Command::Help));
    }

    #[test]
    fn help_spellings() {
        assert_eq!(parse(["help"]), Ok(Command::Help));
        assert_eq!(parse(["--help"]), Ok(Command::Help));
        assert_eq!(parse(["-h"]), Ok(Command::Help));
        assert_eq!(parse(["run", "--help"]), Ok(Command::Help));
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse(["build"]), Ok(Command::Build));
        assert_eq!(parse(["test"]), Ok(Command::Test));
        assert_eq!(parse(["test-all"]), Ok(Command::TestAll));
        assert_eq!(parse(["linux-images"]), Ok(Command::LinuxImages));
        {
            use crate::commands::bench::HostMap;
            assert_eq!(
                parse(["bench-boot"]),
                Ok(Command::BenchBoot(HostMap::Blocks))
            );
            for line in [
                &["bench-boot", "--host-map", "pages"][..],
                &["bench-boot", "--host-map=pages"],
                &["bench-boot", "--host-map", "blocks", "--host-map=pages"],
            ] {
                assert_eq!(
                    parse(line.iter().copied()),
                    Ok(Command::BenchBoot(HostMap::Pages))
                );
            }
            assert_eq!(
                parse(["bench-boot", "--host-map=blocks"]),
                Ok(Command::BenchBoot(HostMap::Blocks))
            );
            assert_eq!(
                parse(["bench-boot", "--host-map", "huge"]),
                Err(ArgError::InvalidValue {
                    option: "--host-map",
                    value: "huge".to_owned(),
                    expected: "blocks or pages",
                })
            );
            assert_eq!(
                parse(["bench-boot", "--host-map"]),
                Err(ArgError::MissingValue("--host-map"))
            );
            assert!(matches!(
                parse(["bench-boot", "--fast"]),
                Err(ArgError::UnknownOption { .. })
            ));
            assert!(matches!(
                parse(["bench-boot", "pages"]),
                Err(ArgError::UnexpectedArgument { .. })
            ));
        }
        assert_eq!(
            parse(["fuzz"]),
            Ok(Command::Fuzz(crate::commands::fuzz::FuzzOptions::default()))
        );
        assert!(matches!(
            parse(["fuzz", "--target", "host_call", "--minutes", "2"]),
            Ok(Command::Fuzz(o)) if o.targets == ["host_call"] && o.seconds == Some(120)
        ));
        assert_eq!(parse(["bench-guest"]), Ok(Command::BenchGuest));
        assert_eq!(parse(["bench-guest-boot"]), Ok(Command::BenchGuestBoot));
        assert_eq!(parse(["bench-guest-boot", "-h"]), Ok(Command::Help));
        assert_eq!(
            parse(["bench-guest-boot", "--runs=3"]),
            Err(ArgError::UnknownOption {
                command: "bench-guest-boot",
                option: "--runs=3".to_owned(),
            })
        );
        assert_eq!(
            parse(["bench-guest-boot", "5"]),
            Err(ArgError::UnexpectedArgument {
                command: "bench-guest-boot",
                argument: "5".to_owned(),
            })
        );
        assert!(USAGE.contains("  bench-guest-boot\n"));
        assert!(USAGE.contains("Ctrl-A x quits"));
        assert!(matches!(
            parse(["bench-guest", "--guest-mem=1G"]),
            Err(ArgError::UnknownOption {
                command: "bench-guest",
                ..
            })
        ));
    }

    #[test]
    fn guest_kernel_command() {
        assert_eq!(parse(["guest-kernel"]), Ok(Command::GuestKernel));
        assert_eq!(parse(["guest-kernel", "--help"]), Ok(Command::Help));
        assert_eq!(
            parse(["guest-kernel", "--rebuild"]),
            Err(ArgError::UnknownOption {
                command: "guest-kernel",
                option: "--rebuild".to_owned()
            })
        );
        assert_eq!(
            parse(["guest-kernel", "Image"]),
            Err(ArgError::UnexpectedArgument {
                command: "guest-kernel",
                argument: "Image".to_owned()
            })
        );
        assert_eq!(
            parse(["guest_kernel"]),
            Err(ArgError::UnknownCommand("guest_kernel".to_owned()))
        );
        assert!(USAGE.contains("\n  guest-kernel\n"));
        assert!(USAGE.contains("linux-source-6.12"));
    }

    #[test]
    fn host_driver_command() {
        assert_eq!(parse(["host-driver"]), Ok(Command::HostDriver));
        assert_eq!(parse(["host-driver", "-h"]), Ok(Command::Help));
        assert_eq!(
            parse(["host-driver", "--rebuild"]),
            Err(ArgError::UnknownOption {
                command: "host-driver",
                option: "--rebuild".to_owned()
            })
        );
        assert_eq!(
            parse(["host-driver", "pkvm_rs.ko"]),
            Err(ArgError::UnexpectedArgument {
                command: "host-driver",
                argument: "pkvm_rs.ko".to_owned()
            })
        );
        assert_eq!(
            parse(["host_driver"]),
            Err(ArgError::UnknownCommand("host_driver".to_owned()))
        );
        assert!(USAGE.contains("\n  host-driver Build the Linux host driver pkvm_rs.ko"));
        assert!(USAGE.contains("linux-kbuild"));
    }

    #[test]
    fn vmm_images_command() {
        assert_eq!(parse(["vmm-images"]), Ok(Command::VmmImages));
        assert_eq!(parse(["vmm-images", "--help"]), Ok(Command::Help));
        assert_eq!(
            parse(["vmm-images", "--no-guest"]),
            Err(ArgError::UnknownOption {
                command: "vmm-images",
                option: "--no-guest".to_owned()
            })
        );
        assert_eq!(
            parse(["vmm-images", "vmm-boot.img"]),
            Err(ArgError::UnexpectedArgument {
                command: "vmm-images",
                argument: "vmm-boot.img".to_owned()
            })
        );
        assert_eq!(
            parse(["vmm_images"]),
            Err(ArgError::UnknownCommand("vmm_images".to_owned()))
        );
        assert!(USAGE.contains("\n  vmm-images  Build (or reuse from the caches) the host driver"));
        assert!(USAGE.contains("vmm-boot.img"));
        assert!(USAGE.contains("pkvm.shell"));
    }

    #[test]
    fn unknown_command() {
        assert_eq!(
            parse(["boot"]),
            Err(ArgError::UnknownCommand("boot".to_owned()))
        );
    }

    #[test]
    fn simple_commands_take_no_arguments() {
        assert_eq!(
            parse(["build", "--release"]),
            Err(ArgError::UnknownOption {
                command: "build",
                option: "--release".to_owned()
            })
        );
        assert_eq!(
            parse(["test", "boot"]),
            Err(ArgError::UnexpectedArgument {
                command: "test",
                argument: "boot".to_owned()
            })
        );
    }

    #[test]
    fn run_defaults() {
        let options = run(&[]).unwrap();
        assert_eq!(options, RunOptions::default());
        assert_eq!(options.cpu, "cortex-a72");
        assert_eq!(options.smp, 2);
        assert_eq!(options.mem, "1G");
        assert!(!options.gdb);
        assert_eq!(options.host, None);
        assert_eq!(options.append, None);
    }

    #[test]
    fn run_all_options() {
        let options = run(&[
            "--host",
            "Image",
            "--append",
            "console=ttyAMA0 quiet",
            "--gdb",
            "--cpu",
            "max",
            "--smp",
            "4",
            "--mem",
            "2G",
        ])
        .unwrap();
        assert_eq!(
            options,
            RunOptions {
                host: Some("Image".to_owned()),
                vendor_boot: None,
                initrd: None,
                append: Some("console=ttyAMA0 quiet".to_owned()),
                gdb: true,
                cpu: "max".to_owned(),
                smp: 4,
                mem: "2G".to_owned(),
                its: true,
                devices: Vec::new(),
                guest: None,
            }
        );
    }

    #[test]
    fn run_boot_image_options() {
        let options = run(&["--host", "boot.img", "--vendor-boot=vendor_boot.img"]).unwrap();
        assert_eq!(options.host.as_deref(), Some("boot.img"));
        assert_eq!(options.vendor_boot.as_deref(), Some("vendor_boot.img"));
        let options = run(&["--host", "Image", "--initrd", "initrd.cpio"]).unwrap();
        assert_eq!(options.initrd.as_deref(), Some("initrd.cpio"));
        assert_eq!(run(&["--initrd"]), Err(ArgError::MissingValue("--initrd")));
    }

    #[test]
    fn run_inline_values() {
        let options = run(&["--smp=1", "--mem=512M", "--cpu=cortex-a57"]).unwrap();
        assert_eq!(options.smp, 1);
        assert_eq!(options.mem, "512M");
        assert_eq!(options.cpu, "cortex-a57");
    }

    #[test]
    fn run_missing_value() {
        assert_eq!(run(&["--smp"]), Err(ArgError::MissingValue("--smp")));
        assert_eq!(run(&["--host"]), Err(ArgError::MissingValue("--host")));
    }

    #[test]
    fn run_invalid_values() {
        assert!(matches!(
            run(&["--smp", "0"]),
            Err(ArgError::InvalidValue {
                option: "--smp",
                ..
            })
        ));
        assert!(matches!(
            run(&["--smp", "two"]),
            Err(ArgError::InvalidValue {
                option: "--smp",
                ..
            })
        ));
        assert!(matches!(
            run(&["--mem", "lots"]),
            Err(ArgError::InvalidValue {
                option: "--mem",
                ..
            })
        ));
        assert!(matches!(
            run(&["--cpu", "--gdb"]),
            Err(ArgError::InvalidValue {
                option: "--cpu",
                ..
            })
        ));
        assert_eq!(run(&["--gdb=1"]), Err(ArgError::UnexpectedValue("--gdb")));
    }

    #[test]
    fn run_rejects_unknown() {
        assert_eq!(
            run(&["--fast"]),
            Err(ArgError::UnknownOption {
                command: "run",
                option: "--fast".to_owned()
            })
        );
        assert_eq!(
            run(&["Image"]),
            Err(ArgError::UnexpectedArgument {
                command: "run",
                argument: "Image".to_owned()
            })
        );
    }

    #[test]
    fn memory_sizes() {
        for ok in ["1G", "512M", "2048", "1g", "65536K", "1T"] {
            assert!(is_memory_size(ok), "{ok}");
        }
        for bad in ["", "G", "0", "0M", "1.5G", "1GB", "-1G", "1 G", "+1G"] {
            assert!(!is_memory_size(bad), "{bad}");
        }
    }

    #[test]
    fn memory_bytes_follow_qemu_suffixes() {
        assert_eq!(memory_bytes("128M"), Some(128 << 20));
        assert_eq!(memory_bytes("128"), Some(128 << 20), "no suffix: MiB");
        assert_eq!(memory_bytes("1g"), Some(1 << 30));
        assert_eq!(memory_bytes("16384K"), Some(16 << 20));
        assert_eq!(memory_bytes("2T"), Some(2 << 40));
        // Too large for a u64: refused, not wrapped.
        assert_eq!(memory_bytes("99999999999999999999"), None);
        assert_eq!(memory_bytes("20000000T"), None);
        assert_eq!(memory_bytes("0K"), None);
    }

    #[test]
    fn run_guest_defaults() {
        let options = run(&["--guest", "testguest"]).unwrap();
        let guest = options.guest.unwrap();
        assert_eq!(guest, GuestOptions::new(GuestImage::Testguest));
        assert_eq!(guest.mem, 128 << 20);
        assert_eq!(guest.smp, 1);
        assert!(!guest.small_pages);
        assert_eq!(guest.initrd, None);
        assert_eq!(guest.append, None);
        // Anything else is a file.
        let options = run(&["--guest=./testguest.bin"]).unwrap();
        assert_eq!(
            options.guest.unwrap().image,
            GuestImage::File("./testguest.bin".to_owned())
        );
        assert_eq!(run(&[]).unwrap().guest, None);
    }

    #[test]
    fn run_guest_all_options_both_forms() {
        let spaced = run(&[
            "--guest-mem",
            "256M",
            "--guest",
            "Image",
            "--guest-initrd",
            "initrd.cpio",
            "--guest-append",
            "console=hvc0 quiet",
            "--guest-smp",
            "8",
            "--guest-small-pages",
            "--append",
            "testhost.fail",
        ])
        .unwrap();
        let inline = run(&[
            "--guest-mem=256M",
            "--guest=Image",
            "--guest-initrd=initrd.cpio",
            "--guest-append=console=hvc0 quiet",
            "--guest-smp=8",
            "--guest-small-pages",
            "--append=testhost.fail",
        ])
        .unwrap();
        assert_eq!(spaced, inline);
        assert_eq!(spaced.append.as_deref(), Some("testhost.fail"));
        assert_eq!(
            spaced.guest,
            Some(GuestOptions {
                image: GuestImage::File("Image".to_owned()),
                initrd: Some("initrd.cpio".to_owned()),
                append: Some("console=hvc0 quiet".to_owned()),
                mem: 256 << 20,
                smp: 8,
                small_pages: true,
            })
        );
    }

    #[test]
    fn run_guest_conflicts_with_host() {
        let e = run(&["--host", "boot.img", "--guest", "testguest"]).unwrap_err();
        assert_eq!(
            e,
            ArgError::Conflict {
                option: "--guest",
                with: "--host",
                why: "the guest runs inside the built-in test host's VMM",
            }
        );
        assert!(
            e.to_string()
                .starts_with("`--guest` cannot be combined with `--host`")
        );
        // In either order.
        assert!(matches!(
            run(&["--guest", "testguest", "--host=Image"]),
            Err(ArgError::Conflict { .. })
        ));
    }

    #[test]
    fn run_guest_options_need_guest() {
        for (args, option) in [
            (&["--guest-initrd", "x"][..], "--guest-initrd"),
            (&["--guest-append", "x"][..], "--guest-append"),
            (&["--guest-mem=64M"][..], "--guest-mem"),
            (&["--guest-smp", "2"][..], "--guest-smp"),
            (&["--guest-small-pages"][..], "--guest-small-pages"),
            // The first one given is named.
            (
                &["--guest-smp", "2", "--guest-mem", "64M"][..],
                "--guest-smp",
            ),
        ] {
            let e = run(args).unwrap_err();
            assert_eq!(
                e,
                ArgError::Requires {
                    option,
                    needs: "--guest"
                },
                "{args:?}"
            );
            assert_eq!(e.to_string(), format!("`{option}` needs `--guest`"));
        }
    }

    #[test]
    fn run_guest_invalid_values() {
        let invalid = |args: &[&str], want: &str| match run(args) {
            Err(ArgError::InvalidValue { option, .. }) => assert_eq!(option, want, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        };
        for mem in [
            "15M", "14M", "17M", "129M", "0", "lots", "1.5G", "2T", "1000000T",
        ] {
            invalid(&["--guest", "testguest", "--guest-mem", mem], "--guest-mem");
        }
        for smp in ["0", "9", "-1", "two", ""] {
            invalid(&["--guest", "testguest", "--guest-smp", smp], "--guest-smp");
        }
        invalid(&["--guest="], "--guest");
        // The edges are accepted.
        for (mem, bytes) in [("16M", 16u64 << 20), ("16384K", 16 << 20), ("1T", 1 << 40)] {
            let g = run(&["--guest", "testguest", "--guest-mem", mem])
                .unwrap()
                .guest
                .unwrap();
            assert_eq!(g.mem, bytes, "{mem}");
        }
        for smp in [1, 8] {
            let n = smp.to_string();
            let g = run(&["--guest", "testguest", "--guest-smp", &n])
                .unwrap()
                .guest
                .unwrap();
            assert_eq!(g.smp, smp);
        }
        assert_eq!(
            run(&["--guest", "testguest", "--guest-small-pages=yes"]),
            Err(ArgError::UnexpectedValue("--guest-small-pages"))
        );
        assert_eq!(run(&["--guest"]), Err(ArgError::MissingValue("--guest")));
        assert_eq!(
            run(&["--guest", "testguest", "--guest-append"]),
            Err(ArgError::MissingValue("--guest-append"))
        );
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            ArgError::MissingValue("--cpu").to_string(),
            "`--cpu` needs a value"
        );
        assert_eq!(
            ArgError::UnknownCommand("x".to_owned()).to_string(),
            "unknown command `x`"
        );
    }
}
