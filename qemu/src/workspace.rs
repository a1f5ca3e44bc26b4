//! The workspace: where it is, running cargo in it, and building el2, the
//! test host and the test guest.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure::Failure;
use crate::process;

/// The bare-metal target el2, the test host and the test guest are built
/// for.
pub const EL2_TARGET: &str = "aarch64-unknown-none";
/// The target of the static Linux userspace VMM (`pkvm-vmm`).
pub const VMM_TARGET: &str = "aarch64-unknown-linux-musl";

/// Root of the workspace (the parent of this package's directory).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the qemu package lives inside the workspace")
}

/// `path` relative to the workspace root when it is inside it, for messages.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A `cargo` command run from the workspace root, using the same cargo that
/// runs `cargo qemu` (`$CARGO`) when there is one.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd.args(args.into_iter().map(Into::into));
    cmd
}

/// A `rustc` command run from the workspace root, so `rust-toolchain.toml`
/// picks the toolchain.
fn rustc() -> Command {
    let program = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd
}

/// Makes sure the toolchain `rust-toolchain.toml` names has what the
/// workspace needs: the `aarch64-unknown-none` and
/// `aarch64-unknown-linux-musl` targets and the `clippy`,
/// `rustfmt` and `llvm-tools` components. rustup installs the toolchain
/// itself on first use, but does not always add the target and components
/// the file lists to a toolchain that is already installed (seen here), so
/// this adds whatever is missing, saying so. Without rustup, or if it fails,
/// it says what to do and carries on (the build that needs them will fail
/// with cargo's own message).
pub fn ensure_toolchain() {
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.current_dir(root()).args(args);
        cmd
    };
    let Ok(targets) = process::stdout_of(&mut rustup(&["target", "list", "--installed"])) else {
        eprintln!(
            "==> rustup not found: make sure the {EL2_TARGET} target and llvm-tools are installed"
        );
        return;
    };
    for target in [EL2_TARGET, VMM_TARGET] {
        if !targets.lines().any(|l| l.trim() == target) {
            println!("==> installing the {target} target (rustup target add {target})");
            if let Err(e) = process::checked(&mut rustup(&["target", "add", target])) {
                eprintln!("==> could not add {target}: {e}");
            }
        }
    }
    let components =
        process::stdout_of(&mut rustup(&["component", "list", "--installed"])).unwrap_or_default();
    for wanted in ["clippy", "rustfmt", "llvm-tools"] {
        let have = components
            .lines()
            .any(|l| l.trim() == wanted || l.trim().starts_with(&format!("{wanted}-")));
        if !have {
            println!("==> installing the {wanted} component (rustup component add {wanted})");
            if let Err(e) = process::checked(&mut rustup(&["component", "add", wanted])) {
                eprintln!("==> could not add {wanted}: {e}");
            }
        }
    }
}

/// The images `cargo qemu build` produces.
#[derive(Debug, Clone)]
pub struct Images {
    /// The el2 ELF, which `cargo qemu run` boots.
    pub el2: PathBuf,
    /// el2 as a raw binary with its arm64 Image header (`el2.bin`), if
    /// `rust-objcopy` (or `llvm-objcopy`) could make it.
    pub el2_raw: Option<PathBuf>,
    /// The test host as a raw arm64 Image (`testhost.bin`): the default
    /// host image.
    pub testhost: PathBuf,
    /// The test guest as a raw arm64 Image (`testguest.bin`): the guest
    /// `--guest testguest` runs in the test host's VMM.
    pub testguest: PathBuf,
}

/// The cargo arguments that build el2, the test host and the test guest,
/// as shown to the user.
pub const BUILD_IMAGES: [&str; 10] = [
    "build",
    "-p",
    "el2",
    "-p",
    "testhost",
    "-p",
    "testguest",
    "--target",
    EL2_TARGET,
    "--release",
];

/// Builds el2, the test host and the test guest for
/// `aarch64-unknown-none` (release) and makes their raw binaries (the test
/// host's and the test guest's are required: both are loaded as raw
/// Images).
///
/// Cargo's human-readable output goes to stderr as usual; its JSON messages
/// on stdout give the exact paths of the ELFs, whatever the target
/// directory.
pub fn build_images() -> Result<Images, Failure> {
    eprintln!("==> cargo {}", BUILD_IMAGES.join(" "));
    let mut cmd = cargo(BUILD_IMAGES);
    cmd.arg("--message-format=json-render-diagnostics");
    let messages = process::stdout_of(&mut cmd).map_err(|f| {
        Failure::failed(format!(
            "building el2, the test host and the test guest failed: {f}"
        ))
    })?;
    let elf = |name: &str| -> Result<PathBuf, Failure> {
        let path = find_executable(&messages, name).unwrap_or_else(|| {
            root()
                .join("target")
                .join(EL2_TARGET)
                .join("release")
                .join(name)
        });
        if path.is_file() {
            Ok(path)
        } else {
            Err(Failure::failed(format!(
                "cargo built {name} but {} does not exist",
                path.display()
            )))
        }
    };
    let el2 = elf("el2")?;
    let testhost_elf = elf("testhost")?;
    let testguest_elf = elf("testguest")?;
    let el2_raw = make_raw_binary(&el2).ok();
    let required_raw = |elf: &Path, what: &str| {
        make_raw_binary(elf).map_err(|tried| {
            Failure::unavailable(format!(
                "cannot make {what}'s raw Image: rust-objcopy (rustup component \
                 llvm-tools, which rust-toolchain.toml asks for) or llvm-objcopy is needed.\n{}",
                tried.join("\n")
            ))
        })
    };
    let testhost = required_raw(&testhost_elf, "the test host")?;
    let testguest = required_raw(&testguest_elf, "the test guest")?;
    Ok(Images {
        el2,
        el2_raw,
        testhost,
        testguest,
    })
}

/// Finds the `executable` of the `compiler-artifact` message for the binary
/// target `name` in cargo's JSON output.
fn find_executable(messages: &str, name: &str) -> Option<PathBuf> {
    let name = format!("\"name\":\"{name}\"");
    messages
        .lines()
        .filter(|line| {
            line.contains("\"reason\":\"compiler-artifact\"")
                && line.contains("\"kind\":[\"bin\"]")
                && line.contains(&name)
        })
        .find_map(|line| json_string_field(line, "executable"))
        .map(PathBuf::from)
}

/// The value of the string field `field` in one line of JSON, unescaped.
/// Returns `None` when the field is absent or not a string (e.g. `null`).
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let mut value = String::new();
    let mut chars = line[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
}

/// Writes `<elf>.bin` (a raw binary) with `rust-objcopy -O binary`;
/// on failure, says what was tried.
///
/// `rust-objcopy` comes with the `llvm-tools` component, which
/// `rust-toolchain.toml` asks rustup to install; `llvm-objcopy` on PATH is
/// used if it is missing.
fn make_raw_binary(elf: &Path) -> Result<PathBuf, Vec<String>> {
    let raw = elf.with_extension("bin");
    let mut tried = Vec::new();
    for objcopy in objcopy_candidates() {
        let mut cmd = Command::new(&objcopy);
        cmd.args(["-O", "binary"]).arg(elf).arg(&raw);
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(raw),
            Ok(out) => tried.push(format!(
                "{} failed ({}): {}",
                objcopy.display(),
                process::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", objcopy.display())),
        }
    }
    if tried.is_empty() {
        tried.push("no rust-objcopy or llvm-objcopy found".to_owned());
    }
    Err(tried)
}

/// `rust-objcopy` from the toolchain's llvm-tools, then `llvm-objcopy` from
/// PATH.
fn objcopy_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    let sysroot = process::stdout_of(rustc().args(["--print", "sysroot"]));
    let host = process::stdout_of(rustc().arg("-vV")).ok().and_then(|v| {
        v.lines()
            .find_map(|l| l.strip_prefix("host: "))
            .map(str::to_owned)
    });
    if let (Ok(sysroot), Some(host)) = (sysroot, host) {
        let path = Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(host.trim())
            .join("bin/rust-objcopy");
        if path.is_file() {
            candidates.push(path);
        }
    }
    if let Some(path) = find_in_path("llvm-objcopy") {
        candidates.push(path);
    }
    candidates
}

/// Looks `name` up in the directories of `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file we may execute.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGES: &str = concat!(
        r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"crate_types":["lib"],"name":"el2"},"executable":null,"fresh":true}"#,
        "\n",
        r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"crate_types":["bin"],"name":"el2","src_path":"/w/el2/src/main.rs"},"filenames":["/w/target/aarch64-unknown-none/release/el2"],"executable":"/w/target/aarch64-unknown-none/release/el2","fresh":false}"#,
        "\n",
        r#"{"reason":"build-finished","success":true}"#,
        "\n",
    );

    #[test]
    fn finds_the_el2_executable() {
        assert_eq!(
            find_executable(MESSAGES, "el2"),
            Some(PathBuf::from("/w/target/aarch64-unknown-none/release/el2"))
        );
        assert_eq!(find_executable(MESSAGES, "other"), None);
        assert_eq!(find_executable(MESSAGES, "testhost"), None);
        assert_eq!(find_executable(MESSAGES, "testguest"), None);
    }

    #[test]
    fn the_build_names_every_image() {
        assert_eq!(
            BUILD_IMAGES.join(" "),
            "build -p el2 -p testhost -p testguest --target aarch64-unknown-none --release"
        );
    }

    #[test]
    fn json_strings_are_unescaped() {
        assert_eq!(
            json_string_field(r#"{"executable":"C:\\a \"b\"\u0041"}"#, "executable"),
            Some(r#"C:\a "b"A"#.to_owned())
        );
        assert_eq!(
            json_string_field(r#"{"executable":null}"#, "executable"),
            None
        );
    }

    #[test]
    fn root_is_the_workspace() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(root().join("el2").is_dir());
        assert_eq!(shown(&root().join("el2/src")), "el2/src");
    }
}
