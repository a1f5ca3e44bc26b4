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
/// header there. Must match `HOST_IMAGE_ADDR` in `el2/src/boot/layout.rs`
/// and the link address in `tests/testhost/linker.ld`.
pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;

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

/// What QEMU boots.
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    /// el2: its ELF (loaded at its link address, entered at EL2, device
    /// tree at the start of RAM) or its raw Image (`el2.bin`: device tree
    /// in `x0`).
    pub kernel: &'a Path,
    /// The host image, loaded raw at [`HOST_IMAGE_ADDR`]; `None` loads none
    /// (el2 then stops with a boot error).
    pub host: Option<&'a Path>,
    /// The kernel command line (`-append`, the device tree's
    /// `/chosen/bootargs`, which el2 passes on to the host).
    pub append: Option<&'a str>,
    /// A device tree replacing QEMU's (`-dtb`).
    pub dtb: Option<&'a Path>,
    /// The machine.
    pub machine: &'a Machine,
}

/// QEMU's arguments for `boot`.
///
/// `virtualization=on` gives the CPU EL2; `-semihosting` lets el2 set QEMU's
/// exit status; `-no-reboot` turns a guest reset into an exit; `-nic none`
/// avoids loading network option ROMs that a minimal QEMU install lacks.
/// The host image goes in with `-device loader,...,force-raw=on` so QEMU
/// copies it to RAM as it is.
pub fn boot_args(boot: &Boot<'_>) -> Vec<String> {
    let machine = boot.machine;
    let mut args: Vec<String> = [
        "-machine",
        "virt,virtualization=on,gic-version=3",
        "-cpu",
        &machine.cpu,
        "-smp",
        &machine.smp.to_string(),
        "-m",
        &machine.mem,
        "-nographic",
        "-nic",
        "none",
        "-semihosting",
        "-no-reboot",
        "-kernel",
    ]
    .map(str::to_owned)
    .into();
    args.push(boot.kernel.display().to_string());
    if let Some(host) = boot.host {
        args.push("-device".to_owned());
        args.push(format!(
            "loader,file={},addr={HOST_IMAGE_ADDR:#x},force-raw=on",
            host.display()
        ));
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
    args
}

/// A QEMU command for `boot`.
pub fn boot_command(qemu: &Path, boot: &Boot<'_>) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(boot_args(boot));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_boot_line() {
        let machine = Machine::default();
        let boot = Boot {
            kernel: Path::new("el2"),
            host: Some(Path::new("testhost.bin")),
            append: None,
            dtb: None,
            machine: &machine,
        };
        assert_eq!(
            boot_args(&boot).join(" "),
            "-machine virt,virtualization=on,gic-version=3 -cpu cortex-a72 -smp 2 -m 1G \
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
            host: None,
            append: Some("testhost.fail"),
            dtb: Some(Path::new("t.dtb")),
            machine: &machine,
        };
        let args = boot_args(&boot);
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

    /// The load address is written in three places; keep them equal.
    #[test]
    fn host_image_address_matches_el2_and_testhost() {
        let root = crate::workspace::root();
        let layout = std::fs::read_to_string(root.join("el2/src/boot/layout.rs")).unwrap();
        assert!(layout.contains("pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;"));
        let ld = std::fs::read_to_string(root.join("tests/testhost/linker.ld")).unwrap();
        assert!(ld.contains(". = 0x44000000;"));
        assert_eq!(HOST_IMAGE_ADDR, 0x4400_0000);
    }
}
