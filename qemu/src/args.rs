//! Command-line parsing for `cargo qemu`, by hand (no dependencies).

use std::fmt;

/// Usage text printed by `cargo qemu help` and on argument errors.
pub const USAGE: &str = "\
cargo qemu: build, boot and test the el2 hypervisor under QEMU

Usage: cargo qemu <command> [options]

Commands:
  build       Build el2 and the test host for aarch64-unknown-none
              (release); print the paths of el2's ELF, el2.bin (raw arm64
              Image) and testhost.bin (the default host, a raw Image).
  run         Build, then boot el2 under qemu-system-aarch64 (virt machine,
              virtualization=on, GICv3) with a host image (the test host by
              default), console on this terminal; exits with QEMU's status.
  linux-images
              Download Debian's arm64 kernel and busybox-static packages
              (apt-get download, cached outside the repository), build a
              busybox initramfs and pack Android boot images from them
              (header v2, header v4, and a v4 boot + vendor boot pair);
              print their paths.
  bench-boot  Boot the same Debian kernel and initramfs five times directly
              at EL1 (no hypervisor) and five times under el2 (the v4 boot
              image), interleaved; print the median time to user space of
              each and their ratio.
  test        Run the QEMU tests, each with a timeout (the Linux host tests
              build the linux-images first when they are missing).
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
  --mem <size>     Guest RAM, e.g. 1G or 512M (default: 1G)

If qemu-system-aarch64 is missing and cargo qemu runs as root, it installs
Debian's qemu-system-arm with apt-get; otherwise it says what to install.
Set QEMU_SYSTEM_AARCH64 to use a QEMU binary outside PATH.
";

/// Default QEMU CPU model: an Armv8.0 core with EL2 support in QEMU.
pub const DEFAULT_CPU: &str = "cortex-a72";
/// Default number of CPUs.
pub const DEFAULT_SMP: u32 = 2;
/// Default guest RAM size, in QEMU's `-m` syntax.
pub const DEFAULT_MEM: &str = "1G";

/// A parsed `cargo qemu` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the usage text.
    Help,
    /// Build el2 and print where the images are.
    Build,
    /// Build el2 and boot it under QEMU.
    Run(RunOptions),
    /// Download the Debian packages and build the Linux host images.
    LinuxImages,
    /// Benchmark Linux boot time directly at EL1 vs under el2.
    BenchBoot,
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
    /// Guest RAM size in QEMU's `-m` syntax (`--mem`).
    pub mem: String,
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
        "bench-boot" => no_arguments("bench-boot", rest).map(|()| Command::BenchBoot),
        "test-all" => no_arguments("test-all", rest).map(|()| Command::TestAll),
        "run" => parse_run(rest).map(Command::Run),
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

fn parse_run(rest: &[String]) -> Result<RunOptions, ArgError> {
    let mut options = RunOptions::default();
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
                if inline.is_some() {
                    return Err(ArgError::UnexpectedValue("--gdb"));
                }
                options.gdb = true;
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
    Ok(options)
}

/// Whether `s` is a positive size QEMU's `-m` accepts: digits with an
/// optional K, M, G or T suffix (no suffix means MiB).
fn is_memory_size(s: &str) -> bool {
    let digits = s
        .strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunOptions, ArgError> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        match parse(all)? {
            Command::Run(options) => Ok(options),
            other => panic!("expected run, got {other:?}"),
        }
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
        assert_eq!(parse(["bench-boot"]), Ok(Command::BenchBoot));
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
        for bad in ["", "G", "0", "0M", "1.5G", "1GB", "-1G", "1 G"] {
            assert!(!is_memory_size(bad), "{bad}");
        }
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
