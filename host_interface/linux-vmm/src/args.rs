//! The command line, in crosvm's shape:
//!
//! ```text
//! pkvm-vmm run [--mem <MiB>] [--cpus <n>] [--initrd <file>] [--params <cmdline>]...
//!              [--device <path>] --protected-vm <kernel Image>
//! ```
//!
//! - `--mem <MiB>` (`-m`; default 256): guest RAM, a multiple of 2. crosvm's
//!   `size=<MiB>` form is accepted too.
//! - `--cpus <n>` (`-c`; default 1): vCPUs, 1 to 8 (crosvm's
//!   `num-cores=<n>` too).
//! - `--initrd <file>` (`-i`): an initrd, put after the kernel.
//! - `--params <text>` (`-p`): the kernel command line; given several
//!   times, the parts are joined with a space, as crosvm does.
//! - `--protected-vm <kernel>`: the kernel `Image` to run as a protected
//!   VM. As in crosvm, `--protected-vm` may also stand alone with the
//!   kernel as the last argument (`... --protected-vm --mem 64 Image`);
//!   it is required either way: this VMM runs protected VMs only.
//! - `--device <path>`: the driver's device node (default `/dev/pkvm-rs`).
//!
//! Every option takes its value as the next argument or after `=`
//! (`--mem=64`).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// crosvm's default guest RAM, in MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;

/// The usage text.
pub const USAGE: &str = "\
usage: pkvm-vmm run [--mem <MiB>] [--cpus <n>] [--initrd <file>] [--params <cmdline>]...
                    [--device <path>] --protected-vm <kernel Image>
       pkvm-vmm help

Runs a Linux arm64 Image (or anything booting like one) as a protected VM
under el2, over the pkvm-rs host driver (/dev/pkvm-rs).

  -m, --mem <MiB>         guest RAM in MiB, a multiple of 2 (default 256)
  -c, --cpus <n>          vCPUs, 1 to 8 (default 1)
  -i, --initrd <file>     an initrd
  -p, --params <text>     the kernel command line (repeatable: joined by spaces)
      --protected-vm <k>  the kernel Image (required)
      --device <path>     the driver's device (default /dev/pkvm-rs)

The guest's console (its PL011) is this program's standard output, raw;
standard input goes to it (a terminal is put in raw mode: Ctrl-C goes to
the guest). The VMM's own lines start with `vmm: ` and go to standard error.
SIGINT or SIGTERM stops the VM cleanly.

Exit status: 0 the guest powered off and reported no failure; 8 the guest
reported failing checks; 9 it reset; 10 it crashed (el2 stopped a vCPU);
11 VMM error; 128 + n stopped by signal n; 2 bad command line.";

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub cpus: usize,
    /// The initrd.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub params: String,
    /// The kernel `Image`.
    pub kernel: PathBuf,
    /// The driver's device node.
    pub device: PathBuf,
}

/// A command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `run`.
    Run(RunOptions),
    /// `help`, `--help`, `-h`.
    Help,
}

/// A bad command line: what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(what.into()))
}

fn number<T: std::str::FromStr>(
    option: &str,
    value: &OsString,
    prefix: &str,
) -> Result<T, ArgError> {
    let text = value.to_string_lossy();
    let digits = text.strip_prefix(prefix).unwrap_or(&text);
    digits
        .parse()
        .or_else(|_| err(format!("{option}: not a number: {text:?}")))
}

fn set_kernel(k: OsString, kernel: &mut Option<PathBuf>) -> Result<(), ArgError> {
    if kernel.replace(PathBuf::from(k)).is_some() {
        return err("more than one kernel");
    }
    Ok(())
}

/// Parses the arguments after the program's name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ArgError> {
    let mut args = args.into_iter().peekable();
    match args.next() {
        None => return err("no command (try `pkvm-vmm help`)"),
        Some(c) if c == "run" => {}
        Some(c) if c == "help" || c == "--help" || c == "-h" => return Ok(Command::Help),
        Some(c) => return err(format!("unknown command {:?}", c.to_string_lossy())),
    }
    let mut mem_mib = None;
    let mut cpus = None;
    let mut initrd = None;
    let mut params: Vec<String> = Vec::new();
    let mut protected = false;
    let mut kernel: Option<PathBuf> = None;
    let mut device = None;
    while let Some(a) = args.next() {
        let text = a.to_string_lossy().into_owned();
        if !text.starts_with('-') || text == "-" {
            set_kernel(a, &mut kernel)?;
            continue;
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ => (text.clone(), None),
        };
        let name = match name.as_str() {
            "-m" => "--mem",
            "-c" => "--cpus",
            "-i" => "--initrd",
            "-p" => "--params",
            "-h" => "--help",
            n => n,
        };
        if name == "--help" {
            return Ok(Command::Help);
        }
        if name == "--protected-vm" {
            protected = true;
            if let Some(v) = inline {
                set_kernel(v, &mut kernel)?;
            } else if let Some(next) = args.next_if(|n| !n.to_string_lossy().starts_with('-')) {
                set_kernel(next, &mut kernel)?;
            }
            continue;
        }
        if !matches!(
            name,
            "--mem" | "--cpus" | "--initrd" | "--params" | "--device"
        ) {
            return err(format!("unknown option {text:?}"));
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            return err(format!("{name} needs a value"));
        };
        match name {
            "--mem" => mem_mib = Some(number::<u64>(name, &value, "size=")?),
            "--cpus" => cpus = Some(number::<usize>(name, &value, "num-cores=")?),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--params" => params.push(value.to_string_lossy().into_owned()),
            _ => device = Some(PathBuf::from(value)),
        }
    }
    if !protected {
        return err("--protected-vm is required: this VMM runs protected VMs only");
    }
    let Some(kernel) = kernel else {
        return err("no kernel Image (--protected-vm <kernel>)");
    };
    Ok(Command::Run(RunOptions {
        mem_mib: mem_mib.unwrap_or(DEFAULT_MEM_MIB),
        cpus: cpus.unwrap_or(1),
        initrd,
        params: params.join(" "),
        kernel,
        device: device.unwrap_or_else(|| PathBuf::from(host_interface::uapi::DEVICE)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, ArgError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> RunOptions {
        match p(args) {
            Ok(Command::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn the_briefs_command_line() {
        assert_eq!(
            run(&[
                "run",
                "--mem",
                "64",
                "--cpus",
                "2",
                "--protected-vm",
                "/testguest.bin"
            ]),
            RunOptions {
                mem_mib: 64,
                cpus: 2,
                initrd: None,
                params: String::new(),
                kernel: "/testguest.bin".into(),
                device: "/dev/pkvm-rs".into(),
            }
        );
    }

    #[test]
    fn every_option_and_form() {
        let o = run(&[
            "run",
            "-m",
            "size=128",
            "--cpus=num-cores=4",
            "--initrd=/rd.cpio",
            "-p",
            "console=ttyAMA0",
            "--params",
            "panic=-1 guest.shell",
            "--device",
            "/tmp/dev",
            "--protected-vm=/Image",
        ]);
        assert_eq!(o.mem_mib, 128);
        assert_eq!(o.cpus, 4);
        assert_eq!(o.initrd, Some("/rd.cpio".into()));
        assert_eq!(o.params, "console=ttyAMA0 panic=-1 guest.shell");
        assert_eq!(o.device, PathBuf::from("/tmp/dev"));
        assert_eq!(o.kernel, PathBuf::from("/Image"));
    }

    #[test]
    fn crosvms_flag_form_with_the_kernel_last() {
        let o = run(&["run", "--protected-vm", "--mem", "32", "Image"]);
        assert_eq!((o.mem_mib, o.kernel), (32, "Image".into()));
        let o = run(&["run", "Image", "--protected-vm"]);
        assert_eq!(o.kernel, PathBuf::from("Image"));
        assert_eq!(o.cpus, 1, "default");
        assert_eq!(o.mem_mib, DEFAULT_MEM_MIB, "default");
    }

    #[test]
    fn help() {
        for h in [&["help"][..], &["--help"], &["-h"], &["run", "--help"]] {
            assert_eq!(p(h), Ok(Command::Help));
        }
        assert!(USAGE.contains("--protected-vm"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases: [(&[&str], &str); 9] = [
            (&[], "no command"),
            (&["start"], "unknown command \"start\""),
            (&["run", "Image"], "--protected-vm is required"),
            (&["run", "--protected-vm"], "no kernel Image"),
            (&["run", "--protected-vm", "a", "b"], "more than one kernel"),
            (
                &["run", "--mem", "x", "--protected-vm", "k"],
                "--mem: not a number: \"x\"",
            ),
            (&["run", "--cpus"], "--cpus needs a value"),
            (
                &["run", "--gdb", "--protected-vm", "k"],
                "unknown option \"--gdb\"",
            ),
            (
                &["run", "--cpus", "-1", "--protected-vm", "k"],
                "--cpus: not a number",
            ),
        ];
        for (args, want) in cases {
            let e = p(args).expect_err(&format!("{args:?}"));
            assert!(e.0.starts_with(want), "{args:?}: {e}");
        }
    }
}
