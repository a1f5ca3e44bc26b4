//! A small arm64 guest kernel with the upstream pKVM guest driver, and its
//! initramfs (`cargo qemu guest-kernel`).
//!
//! 1. Debian trixie's `linux-source-6.12` (`Architecture: all`) is
//!    downloaded with `apt-get download` through a private apt
//!    configuration under `<cache>/guest-kernel/apt` whose only source is
//!    trixie `main` from the system's own main Debian mirror, signed by
//!    Debian's archive keyring ([`apt::trixie_source`]); nothing of the
//!    system's apt state changes. `<cache>/guest-kernel/debs/manifest`
//!    names the downloaded package: while it does, later runs use it
//!    without the network (delete it to look for a newer version). The
//!    tarball inside is extracted once to `<cache>/guest-kernel/src/`.
//! 2. The build tools ([`TOOLS`]) are checked with `dpkg -s`; when some are
//!    missing they are installed with apt-get if this runs as root (saying
//!    so first, one retry), otherwise the command says what to install.
//! 3. The kernel is configured out of tree (`make O=<cache>/guest-kernel/build`):
//!    `make allnoconfig`, the fragment [`FRAGMENT`]
//!    (`qemu/src/linux/pkvm-guest.config`) merged with
//!    `scripts/kconfig/merge_config.sh -m`, `make olddefconfig`; the final
//!    `.config` must have every symbol of [`REQUIRED`]. Then
//!    `make -j<nproc> Image`, its output in a log with a progress line on
//!    the terminal every [`PROGRESS_EVERY`].
//! 4. `Image`, `config`, `System.map`, `build.log` and `build-info` land in
//!    `<cache>/guest-kernel/out/<key>/`, the key being the source
//!    package's version and a hash of the fragment and of the build recipe
//!    ([`cache_key`]): a run that finds them builds nothing.
//! 5. The guest initramfs (uncompressed cpio "newc" with busybox-static
//!    from linux-images' cached `.deb`, `/dev/console`, and `/init` =
//!    `qemu/src/linux/guest-init.sh`) is `<cache>/guest-kernel/initramfs.cpio`.
//!
//! The extracted source (`<cache>/guest-kernel/src/`, 1.7 GB) and the
//! out-of-tree build (`build/`, ~105 MB of objects) are kept: a change of
//! the fragment then rebuilds incrementally (measured: 12 s for three
//! added virtio symbols, 12 files compiled) instead of extracting and
//! compiling everything again (~3.5 min on 2 cores). Both can be deleted
//! at any time; the next build re-creates them from the cached `.deb`
//! (147 MB). A new source version replaces the old tree and empties
//! `build/`.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::apt::{self, Apt};
use super::{DIRS, cache_dir, extract, io_err, write_if_changed};
use crate::cpio::{self, Entry};
use crate::failure::Failure;
use crate::process;
use crate::qemu::is_root;
use crate::workspace::find_in_path;

/// The config fragment applied on top of `make allnoconfig`.
pub const FRAGMENT: &str = include_str!("pkvm-guest.config");

/// The guest initramfs's `/init`.
pub const GUEST_INIT: &str = include_str!("guest-init.sh");

/// The first line the guest's init prints (then `Linux <release>`).
pub const GUEST_MARKER: &str = "GUEST-USERSPACE-OK";

/// The guest's command line on QEMU's `virt` machine (PL011 console).
pub const GUEST_CMDLINE: &str = "console=ttyAMA0 panic=-1";

/// The Debian source package of the kernel (trixie, `Architecture: all`).
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// The tarball inside [`SOURCE_PACKAGE`], and its top directory.
const TARBALL: &str = "usr/src/linux-source-6.12.tar.xz";
const TARBALL_TOP: &str = "linux-source-6.12";

/// Kbuild's architecture and cross compiler prefix.
pub const ARCH: &str = "arm64";
/// The cross compiler prefix (Debian's `gcc-aarch64-linux-gnu`).
pub const CROSS_COMPILE: &str = "aarch64-linux-gnu-";

/// How the Image is built, hashed into [`cache_key`]: change this text
/// whenever the steps or the make variables change.
const RECIPE: &str = "guest-kernel recipe 1: make O=build allnoconfig; \
    scripts/kconfig/merge_config.sh -m build/.config pkvm-guest.config; \
    make olddefconfig; make -j<nproc> Image; ARCH=arm64 \
    CROSS_COMPILE=aarch64-linux-gnu- KBUILD_BUILD_USER=pkvm-rs \
    KBUILD_BUILD_HOST=guest-kernel";

/// The symbols the final `.config` must set to `y`.
pub const REQUIRED: [&str; 6] = [
    "CONFIG_ARM_PKVM_GUEST",
    "CONFIG_DMA_RESTRICTED_POOL",
    "CONFIG_SERIAL_AMBA_PL011_CONSOLE",
    "CONFIG_ARM_GIC_V3",
    "CONFIG_SMP",
    "CONFIG_BLK_DEV_INITRD",
];

/// The Debian packages the build needs, and why. `make Image` of this
/// configuration (no modules, no module signing, no BTF, no objtool on
/// arm64, no in-kernel headers) needs neither libssl-dev, libelf-dev, cpio
/// nor kmod: none of its host programs links against libssl or libelf.
pub const TOOLS: [(&str, &str); 9] = [
    ("gcc-aarch64-linux-gnu", "the cross compiler"),
    (
        "binutils-aarch64-linux-gnu",
        "the cross assembler and linker",
    ),
    ("gcc", "the host compiler for Kbuild's host programs"),
    ("libc6-dev", "the host C library headers"),
    ("make", "Kbuild"),
    ("flex", "the Kconfig lexer"),
    ("bison", "the Kconfig parser"),
    ("bc", "kernel/time/timeconst.h"),
    ("xz-utils", "the source tarball (tar -xJ)"),
];

/// How often the build prints a progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// What `guest-kernel` produces.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The version of [`SOURCE_PACKAGE`] it was built from (e.g.
    /// `6.12.117-1`).
    pub source_version: String,
    /// The cache key ([`cache_key`]): the output directory's name.
    pub key: String,
    /// The raw arm64 `Image` (QEMU's `-kernel`, el2's raw guest Image).
    pub image: PathBuf,
    /// The final `.config`.
    pub config: PathBuf,
    /// `System.map`.
    pub system_map: PathBuf,
    /// The full log of the configuration and build.
    pub log: PathBuf,
    /// The guest initramfs (uncompressed cpio "newc").
    pub initramfs: PathBuf,
}

/// FNV-1a, 64 bits: a stable hash for cache keys (not for security).
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache key of a build: the source version (with `:` and `/` made
/// safe for a file name), then 16 hex digits hashing the recipe, the
/// version and the fragment.
pub fn cache_key(source_version: &str, fragment: &str) -> String {
    let mut all = Vec::new();
    for part in [RECIPE, source_version, fragment] {
        all.extend_from_slice(part.as_bytes());
        all.push(0);
    }
    let safe: String = source_version
        .chars()
        .map(|c| if c == ':' || c == '/' { '_' } else { c })
        .collect();
    format!("{safe}-{:016x}", fnv1a64(&all))
}

/// The version in a `.deb` file name (`name_version_arch.deb`, an epoch's
/// `:` written `%3a` by apt).
pub fn deb_version(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (Some(_), Some(version), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (!version.is_empty()).then(|| version.replace("%3a", ":").replace("%3A", ":"))
}

/// The symbols of a `.config` (or fragment): `CONFIG_X=value`, and
/// `# CONFIG_X is not set` as `n`.
pub fn parse_config(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# ")
                && let Some(name) = rest.strip_suffix(" is not set")
                && name.starts_with("CONFIG_")
            {
                return Some((name.to_owned(), "n".to_owned()));
            }
            let (k, v) = l.split_once('=')?;
            k.starts_with("CONFIG_")
                .then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn value_of<'a>(config: &'a [(String, String)], name: &str) -> Option<&'a str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks that every [`REQUIRED`] symbol is `y` in `config` (a `.config`'s
/// text); the error names each one that is not, with what it is.
pub fn check_required(config: &str) -> Result<(), String> {
    let parsed = parse_config(config);
    let wrong: Vec<String> = REQUIRED
        .iter()
        .filter_map(|name| match value_of(&parsed, name) {
            Some("y") => None,
            Some(v) => Some(format!("{name}={v}")),
            None => Some(format!("{name} absent")),
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

/// The fragment's settings the final `.config` does not have (Kconfig
/// dropped them: a dependency is missing), as `CONFIG_X=wanted (got)`.
pub fn fragment_mismatches(fragment: &str, config: &str) -> Vec<String> {
    let got = parse_config(config);
    parse_config(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let have = value_of(&got, &name).unwrap_or("n");
            (have != want).then(|| format!("{name}={want} (got {have})"))
        })
        .collect()
}

/// The packages `dpkg -s` output says are installed (`Status: install ok
/// installed`).
pub fn installed_packages(dpkg_status: &str) -> Vec<String> {
    apt::parse_deb822(dpkg_status)
        .iter()
        .filter(|st| {
            st.iter()
                .any(|(k, v)| k == "Status" && v.split_whitespace().last() == Some("installed"))
        })
        .filter_map(|st| {
            st.iter()
                .find(|(k, _)| k == "Package")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

/// The `packages` (name, why) not in `installed` (a package may carry an
/// architecture qualifier there, `bc:amd64`).
pub fn missing_packages(
    packages: &[(&'static str, &'static str)],
    installed: &[String],
) -> Vec<&'static str> {
    packages
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            !installed
                .iter()
                .any(|i| i == p || i.split(':').next() == Some(p))
        })
        .collect()
}

/// `1m05s`, `12.3s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// Whether `lists` (a private apt lists directory) holds a verified
/// Release file of `suite` (apt moves one there only once its signature
/// checked out).
pub fn has_release(lists: &[String], suite: &str) -> bool {
    let needle = format!("_dists_{suite}_");
    lists
        .iter()
        .any(|n| n.contains(&needle) && (n.ends_with("_InRelease") || n.ends_with("_Release")))
}

/// The guest initramfs: the usual directories, `/dev/console`, busybox
/// and `/init` ([`GUEST_INIT`]).
pub fn guest_initramfs(busybox: &[u8]) -> Vec<u8> {
    let mut e: Vec<Entry<'_>> = DIRS.iter().map(|d| Entry::Dir(d)).collect();
    e.push(Entry::CharDev("dev/console", 5, 1));
    e.push(Entry::File("bin/busybox", 0o755, busybox));
    e.push(Entry::File("init", 0o755, GUEST_INIT.as_bytes()));
    cpio::archive(&e)
}

/// The newest (by modification time) file of `dir` named
/// `<prefix>...<suffix>`.
pub(crate) fn newest_file(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn need_program(program: &str, package: &str) -> Result<(), Failure> {
    if find_in_path(program).is_some() {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "{program} not found: guest-kernel needs it (Debian package {package})"
        )))
    }
}

/// The cached source package named by the manifest, if it is there.
fn cached_source_deb(debs: &Path) -> Option<(PathBuf, String)> {
    let name = fs::read_to_string(debs.join("manifest")).ok()?;
    let name = name.trim();
    let deb = debs.join(name);
    let version = deb_version(name)?;
    deb.is_file().then_some((deb, version))
}

/// Downloads [`SOURCE_PACKAGE`] from trixie (or finds it in the cache):
/// its path and version.
fn source_deb(gk: &Path) -> Result<(PathBuf, String), Failure> {
    let debs = gk.join("debs");
    if let Some(found) = cached_source_deb(&debs) {
        return Ok(found);
    }
    fs::create_dir_all(&debs).map_err(|e| io_err(&debs, e))?;
    need_program("apt-get", "apt")?;
    if !Path::new(apt::DEBIAN_ARCHIVE_KEYRING).is_file() {
        return Err(Failure::unavailable(format!(
            "{} is missing: guest-kernel checks Debian trixie's Release file with it \
             (Debian package debian-archive-keyring)",
            apt::DEBIAN_ARCHIVE_KEYRING
        )));
    }
    let system = apt::system_sources(Path::new("/etc/apt"));
    let source = apt::trixie_source(&system, apt::DEBIAN_ARCHIVE_KEYRING).ok_or_else(|| {
        Failure::unavailable(
            "no main Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d: \
             guest-kernel downloads Debian trixie's linux-source-6.12 from the Debian mirror \
             this system is configured with",
        )
    })?;
    let apt = Apt::with_sources(
        &gk.join("apt"),
        "debian-trixie.sources",
        &apt::render_trixie_sources(&source),
    )?;
    let started = Instant::now();
    apt.update()?;
    let lists: Vec<String> = fs::read_dir(apt.lists())
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    if !has_release(&lists, apt::TRIXIE) {
        return Err(Failure::unavailable(format!(
            "apt-get update brought no verified Release file of Debian {} from {}: no \
             network to the archive, or {} lacks trixie's signing keys (bookworm's \
             debian-archive-keyring 2023.3+deb12u2 has them)",
            apt::TRIXIE,
            source.uris,
            apt::DEBIAN_ARCHIVE_KEYRING
        )));
    }
    apt.download_as_named(&debs, &[SOURCE_PACKAGE])
        .map_err(|f| {
            Failure::unavailable(format!(
                "cannot download {SOURCE_PACKAGE} from Debian {}: {f}",
                apt::TRIXIE
            ))
        })?;
    let prefix = format!("{SOURCE_PACKAGE}_");
    let deb = newest_file(&debs, &prefix, "_all.deb").ok_or_else(|| {
        Failure::failed(format!(
            "apt-get download left no {prefix}*_all.deb in {}",
            debs.display()
        ))
    })?;
    let name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let version = deb_version(&name)
        .ok_or_else(|| Failure::failed(format!("no version in the file name {name}")))?;
    eprintln!(
        "==> downloaded {name} ({:.0} MB) in {}",
        deb.metadata().map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
        format_duration(started.elapsed())
    );
    // Older versions are of no further use.
    for old in fs::read_dir(&debs).into_iter().flatten().flatten() {
        let n = old.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".deb") && *n != name {
            eprintln!("==> removing the older {n}");
            let _ = fs::remove_file(old.path());
        }
    }
    let manifest = debs.join("manifest");
    fs::write(&manifest, format!("{name}\n")).map_err(|e| io_err(&manifest, e))?;
    Ok((deb, version))
}

/// The source tree of `version`, extracted from `deb` once into
/// `<gk>/src/linux-source-6.12_<version>`; other versions' trees are
/// removed.
fn source_tree(gk: &Path, deb: &Path, key_version: &str) -> Result<PathBuf, Failure> {
    let src = gk.join("src");
    let dest = src.join(format!("{TARBALL_TOP}_{key_version}"));
    if dest.join("Makefile").is_file() {
        return Ok(dest);
    }
    need_program("dpkg-deb", "dpkg")?;
    need_program("tar", "tar")?;
    need_program("xz", "xz-utils")?;
    fs::create_dir_all(&src).map_err(|e| io_err(&src, e))?;
    for old in fs::read_dir(&src).into_iter().flatten().flatten() {
        eprintln!(
            "==> removing {} (another source version, or an interrupted extraction)",
            old.path().display()
        );
        let _ = fs::remove_dir_all(old.path());
    }
    let started = Instant::now();
    let tmp = src.join(format!(".extract.{}", std::process::id()));
    let debroot = tmp.join("deb");
    fs::create_dir_all(&debroot).map_err(|e| io_err(&debroot, e))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(&debroot);
    eprintln!("==> {}", process::display(&cmd));
    process::checked(&mut cmd)?;
    let mut cmd = Command::new("tar");
    cmd.arg("-xJf")
        .arg(debroot.join(TARBALL))
        .arg("-C")
        .arg(&tmp);
    eprintln!("==> {}", process::display(&cmd));
    process::checked(&mut cmd)?;
    fs::rename(tmp.join(TARBALL_TOP), &dest).map_err(|e| io_err(&dest, e))?;
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "==> extracted the source to {} in {}",
        dest.display(),
        format_duration(started.elapsed())
    );
    Ok(dest)
}

/// Makes sure the [`TOOLS`] are installed (see [`ensure_packages`]).
fn ensure_tools() -> Result<(), Failure> {
    ensure_packages("building the guest kernel", &TOOLS)
}

/// Makes sure the Debian `packages` (name, why) are installed for
/// `purpose` (e.g. "building the guest kernel"): as root, installs the
/// missing ones with apt-get (saying so first, retrying once); otherwise
/// fails naming them and the command that installs them
/// ([`Failure::unavailable`]).
pub(crate) fn ensure_packages(
    purpose: &str,
    packages: &[(&'static str, &'static str)],
) -> Result<(), Failure> {
    need_program("dpkg", "dpkg").map_err(|_| {
        Failure::unavailable(format!(
            "dpkg not found: {purpose} needs a Debian system (dpkg and apt-get) to find \
             and install its build tools"
        ))
    })?;
    let missing = || -> Vec<&'static str> {
        let out = Command::new("dpkg")
            .arg("-s")
            .args(packages.iter().map(|(p, _)| *p))
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        missing_packages(packages, &installed_packages(&out))
    };
    let first = missing();
    if first.is_empty() {
        return Ok(());
    }
    let list = first.join(" ");
    let install = format!("apt-get install -y --no-install-recommends {list}");
    let why: Vec<String> = packages
        .iter()
        .filter(|(p, _)| first.contains(p))
        .map(|(p, w)| format!("{p} ({w})"))
        .collect();
    if !is_root() {
        return Err(Failure::unavailable(format!(
            "{purpose} needs Debian packages that are not installed: {}. \
             Install them, then run this again:\n  sudo sh -c 'apt-get update && \
             DEBIAN_FRONTEND=noninteractive {install}'",
            why.join(", ")
        )));
    }
    need_program("apt-get", "apt")?;
    eprintln!(
        "==> {purpose} needs {}; running as root, so installing them:",
        why.join(", ")
    );
    eprintln!("==> apt-get update && {install}");
    let status = process::status(Command::new("apt-get").arg("update"))?;
    if !status.success() {
        eprintln!(
            "==> apt-get update failed ({}); installing from the lists there are",
            process::describe(status)
        );
    }
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&first);
    let status = process::status(&mut cmd)?;
    if !status.success() {
        // Another apt (unattended upgrades, a second run) may hold the
        // lock or race on the archive cache; once more after a pause.
        eprintln!(
            "==> `{}` failed ({}); another apt may hold its lock: retrying once in 10 s",
            process::display(&cmd),
            process::describe(status)
        );
        thread::sleep(Duration::from_secs(10));
        process::checked(&mut cmd)
            .map_err(|f| Failure::unavailable(format!("installing the build tools: {f}")))?;
    }
    let still = missing();
    if !still.is_empty() {
        return Err(Failure::unavailable(format!(
            "apt-get install finished but these packages are still not installed: {}",
            still.join(" ")
        )));
    }
    Ok(())
}

/// What a logged command did: lines, and the compile lines among them.
#[derive(Default)]
pub(crate) struct LogStats {
    /// Lines of output.
    pub(crate) lines: usize,
    /// `CC`, `AS` and `HOSTCC` lines.
    pub(crate) compiled: usize,
}

/// Runs `cmd` with its stdout and stderr appended to `log` (not shown),
/// printing `==> <label>` first and, with `progress`, a line every
/// [`PROGRESS_EVERY`]. On failure, the error carries the last lines and
/// the log's path.
pub(crate) fn run_logged(
    cmd: &mut Command,
    label: &str,
    log: &mut File,
    log_path: &Path,
    progress: bool,
) -> Result<LogStats, Failure> {
    let shown = process::display(cmd);
    eprintln!("==> {label}");
    let io = |e: std::io::Error| io_err(log_path, e);
    writeln!(log, "$ {shown}").map_err(io)?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::failed(format!("cannot run `{shown}`: {e}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = |from: Box<dyn Read + Send>, tx: mpsc::Sender<String>| {
        thread::spawn(move || {
            for line in BufReader::new(from).split(b'\n') {
                let Ok(line) = line else { break };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let threads = [
        child.stdout.take().map(|o| reader(Box::new(o), tx.clone())),
        child.stderr.take().map(|e| reader(Box::new(e), tx.clone())),
    ];
    drop(tx);
    let mut stats = LogStats::default();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut last_compiled = String::new();
    let mut next_report = started + PROGRESS_EVERY;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                writeln!(log, "{line}").map_err(io)?;
                stats.lines += 1;
                let word = line.split_whitespace().next().unwrap_or("");
                if matches!(word, "CC" | "AS" | "HOSTCC") {
                    stats.compiled += 1;
                    last_compiled = line.trim().to_owned();
                }
                tail.push_back(line);
                if tail.len() > 25 {
                    tail.pop_front();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if progress && Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            eprintln!(
                "==>   {}: {} files compiled{}",
                format_duration(started.elapsed()),
                stats.compiled,
                if last_compiled.is_empty() {
                    String::new()
                } else {
                    format!(", now {last_compiled}")
                }
            );
        }
    }
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    let status = child
        .wait()
        .map_err(|e| Failure::failed(format!("waiting for `{shown}`: {e}")))?;
    writeln!(
        log,
        "# {} after {}",
        process::describe(status),
        format_duration(started.elapsed())
    )
    .map_err(io)?;
    if !status.success() {
        let mut msg = format!(
            "`{shown}` failed ({}); its last lines:\n",
            process::describe(status)
        );
        for l in &tail {
            let _ = writeln!(msg, "  {l}");
        }
        let _ = write!(msg, "the full log is {}", log_path.display());
        return Err(Failure::failed(msg));
    }
    Ok(stats)
}

/// The first line of `aarch64-linux-gnu-gcc --version`, for build-info.
pub(crate) fn compiler_version() -> String {
    process::stdout_of(Command::new(format!("{CROSS_COMPILE}gcc")).arg("--version"))
        .ok()
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The paths of a finished build in `dir`.
fn outputs(dir: &Path, source_version: &str, key: &str, initramfs: &Path) -> GuestKernel {
    GuestKernel {
        source_version: source_version.to_owned(),
        key: key.to_owned(),
        image: dir.join("Image"),
        config: dir.join("config"),
        system_map: dir.join("System.map"),
        log: dir.join("build.log"),
        initramfs: initramfs.to_owned(),
    }
}

/// Configures and builds the kernel of `tree` in `<gk>/build` (kept for
/// incremental rebuilds; emptied when it held another source tree's
/// objects), then moves the results to `<gk>/out/<key>`.
fn build(gk: &Path, tree: &Path, source_version: &str, key: &str) -> Result<PathBuf, Failure> {
    let out_root = gk.join("out");
    let done = out_root.join(key);
    let stage = out_root.join(format!(".{key}.partial"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(|e| io_err(&stage, e))?;
    let log_path = stage.join("build.log");
    let mut log = File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
    eprintln!(
        "==> building the guest kernel ({SOURCE_PACKAGE} {source_version}); the full log is {}",
        log_path.display()
    );

    let bdir = gk.join("build");
    let stamp = bdir.join(".pkvm-rs-source");
    let tree_text = tree.display().to_string();
    if bdir.exists() && fs::read_to_string(&stamp).ok().as_deref() != Some(tree_text.as_str()) {
        eprintln!(
            "==> emptying {}: it holds another source tree's objects",
            bdir.display()
        );
        fs::remove_dir_all(&bdir).map_err(|e| io_err(&bdir, e))?;
    }
    fs::create_dir_all(&bdir).map_err(|e| io_err(&bdir, e))?;
    fs::write(&stamp, &tree_text).map_err(|e| io_err(&stamp, e))?;
    let fragment = bdir.join("pkvm-guest.config");
    fs::write(&fragment, FRAGMENT).map_err(|e| io_err(&fragment, e))?;

    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(tree)
            .arg(format!("O={}", bdir.display()))
            .arg(format!("ARCH={ARCH}"))
            .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
            .arg("KBUILD_BUILD_USER=pkvm-rs")
            .arg("KBUILD_BUILD_HOST=guest-kernel")
            .args(args)
            // cargo's jobserver is not for this make.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        cmd
    };
    let started = Instant::now();
    run_logged(
        &mut make(&["allnoconfig"]),
        "make allnoconfig",
        &mut log,
        &log_path,
        false,
    )?;
    let config = bdir.join(".config");
    let mut merge = Command::new("sh");
    merge
        .current_dir(tree)
        .arg(tree.join("scripts/kconfig/merge_config.sh"))
        .arg("-m")
        .arg("-O")
        .arg(&bdir)
        .arg(&config)
        .arg(&fragment)
        .env("ARCH", ARCH)
        .env("CROSS_COMPILE", CROSS_COMPILE);
    run_logged(
        &mut merge,
        "merge_config.sh -m .config pkvm-guest.config",
        &mut log,
        &log_path,
        false,
    )?;
    run_logged(
        &mut make(&["olddefconfig"]),
        "make olddefconfig",
        &mut log,
        &log_path,
        false,
    )?;
    let text = fs::read_to_string(&config).map_err(|e| io_err(&config, e))?;
    check_required(&text).map_err(|wrong| {
        Failure::failed(format!(
            "the configured kernel ({}) lacks what a pKVM guest needs: {wrong}. \
             Kconfig dropped them: a dependency is missing from \
             qemu/src/linux/pkvm-guest.config (see {})",
            config.display(),
            log_path.display()
        ))
    })?;
    for m in fragment_mismatches(FRAGMENT, &text) {
        eprintln!("==> warning: pkvm-guest.config asks for {m}");
    }
    eprintln!(
        "==> configured in {}: {} lines of .config, every required symbol set ({})",
        format_duration(started.elapsed()),
        text.lines().count(),
        REQUIRED.join(" ")
    );
    let jobs = thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let stats = run_logged(
        &mut make(&[&format!("-j{jobs}"), "Image"]),
        &format!(
            "make -j{jobs} Image (a progress line every {}s)",
            PROGRESS_EVERY.as_secs()
        ),
        &mut log,
        &log_path,
        true,
    )?;
    let took = started.elapsed();
    eprintln!(
        "==> built in {}: {} files compiled",
        format_duration(took),
        stats.compiled
    );
    drop(log);

    for (from, to) in [
        ("arch/arm64/boot/Image", "Image"),
        (".config", "config"),
        ("System.map", "System.map"),
    ] {
        let (from, to) = (bdir.join(from), stage.join(to));
        fs::copy(&from, &to).map_err(|e| io_err(&from, e))?;
    }
    let info = stage.join("build-info");
    fs::write(
        &info,
        format!(
            "source: {SOURCE_PACKAGE} {source_version} ({})\nkey: {key}\nrecipe: {RECIPE}\n\
             compiler: {}\njobs: {jobs}\nbuild time: {}\n",
            tree.display(),
            compiler_version(),
            format_duration(took)
        ),
    )
    .map_err(|e| io_err(&info, e))?;
    let _ = fs::remove_dir_all(&done);
    fs::rename(&stage, &done).map_err(|e| io_err(&done, e))?;
    Ok(done)
}

/// busybox-static's `.deb`: the one linux-images downloaded
/// (`<cache>/debs`), else downloaded alone through its private apt.
fn busybox_deb(cache: &Path) -> Result<PathBuf, Failure> {
    let dir = cache.join("debs");
    if let Ok(text) = fs::read_to_string(dir.join("manifest")) {
        let named = text.lines().map(|l| dir.join(l.trim())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("busybox-static_"))
                && p.is_file()
        });
        if let Some(deb) = named {
            return Ok(deb);
        }
    }
    if let Some(deb) = newest_file(&dir, "busybox-static_", "_arm64.deb") {
        return Ok(deb);
    }
    need_program("apt-get", "apt")?;
    fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let apt = Apt::new(cache)?;
    apt.update()?;
    apt.download(&dir, &["busybox-static"]).map_err(|f| {
        Failure::unavailable(format!("cannot download busybox-static for arm64: {f}"))
    })?;
    newest_file(&dir, "busybox-static_", "_arm64.deb").ok_or_else(|| {
        Failure::failed(format!(
            "apt-get download left no busybox-static_*_arm64.deb in {}",
            dir.display()
        ))
    })
}

/// Writes the guest initramfs to `<gk>/initramfs.cpio` (unless it is
/// already there, byte for byte).
fn ensure_initramfs(cache: &Path, gk: &Path) -> Result<PathBuf, Failure> {
    let deb = busybox_deb(cache)?;
    let root = extract(cache, &deb)?;
    let busybox_path = root.join("bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(|e| io_err(&busybox_path, e))?;
    let path = gk.join("initramfs.cpio");
    write_if_changed(&path, &guest_initramfs(&busybox))?;
    Ok(path)
}

/// Holds `<gk>/lock` (an advisory lock) while one run downloads and
/// builds: two runs never share the build tree.
fn lock(gk: &Path) -> Result<File, Failure> {
    lock_dir(gk, "guest-kernel")
}

/// Holds `<dir>/lock` (an advisory lock) while one `cargo qemu <what>`
/// run downloads and builds; another run waits for it, saying so.
pub(crate) fn lock_dir(dir: &Path, what: &str) -> Result<File, Failure> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    if file.try_lock().is_err() {
        eprintln!(
            "==> waiting for another {what} run to finish (it holds {})",
            path.display()
        );
        file.lock().map_err(|e| io_err(&path, e))?;
    }
    Ok(file)
}

/// Downloads, configures and builds the guest kernel and its initramfs,
/// or finds them in the cache (module docs); progress goes to stderr.
///
/// The error's [`Failure::code`] tells a test what to make of it:
/// [`crate::failure::EXIT_UNAVAILABLE`] means the kernel cannot be built
/// on this machine (no network to the archive, tools missing and not
/// root, not a Debian system...: print `SKIPPED: <message>`), while
/// [`crate::failure::EXIT_FAILED`] means a build was attempted and
/// failed (a configuration check, the compiler).
pub fn ensure() -> Result<GuestKernel, Failure> {
    let cache = cache_dir()?;
    let gk = cache.join("guest-kernel");
    fs::create_dir_all(&gk).map_err(|e| io_err(&gk, e))?;

    // Warm: the manifest's version and the fragment name a finished build.
    let warm = |gk: &Path| -> Option<(String, String, PathBuf)> {
        let (_, version) = cached_source_deb(&gk.join("debs"))?;
        let key = cache_key(&version, FRAGMENT);
        let dir = gk.join("out").join(&key);
        dir.join("Image").is_file().then_some((version, key, dir))
    };
    let (version, key, dir) = match warm(&gk) {
        Some(found) => found,
        None => {
            let _lock = lock(&gk)?;
            match warm(&gk) {
                // Another run built it while this one waited.
                Some(found) => found,
                None => {
                    ensure_tools()?;
                    let (deb, version) = source_deb(&gk)?;
                    let key = cache_key(&version, FRAGMENT);
                    let dir = gk.join("out").join(&key);
                    if !dir.join("Image").is_file() {
                        let safe = key.rsplit_once('-').map_or(key.as_str(), |(v, _)| v);
                        let tree = source_tree(&gk, &deb, safe)?;
                        build(&gk, &tree, &version, &key)?;
                    }
                    (version, key, dir)
                }
            }
        }
    };
    let initramfs = ensure_initramfs(&cache, &gk)?;
    Ok(outputs(&dir, &version, &key, &initramfs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_follow_version_and_fragment() {
        let k = cache_key("6.12.117-1", FRAGMENT);
        assert_eq!(k, cache_key("6.12.117-1", FRAGMENT), "stable");
        assert!(k.starts_with("6.12.117-1-"), "{k}");
        let hash = k.rsplit_once('-').unwrap().1;
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k, cache_key("6.12.107-1", FRAGMENT));
        assert_ne!(
            k,
            cache_key("6.12.117-1", &format!("{FRAGMENT}CONFIG_X=y\n"))
        );
        // An epoch is made safe for a file name.
        assert!(cache_key("1:6.12", "").starts_with("1_6.12-"));
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn deb_versions_are_read_from_file_names() {
        assert_eq!(
            deb_version("linux-source-6.12_6.12.117-1_all.deb").as_deref(),
            Some("6.12.117-1")
        );
        assert_eq!(
            deb_version("busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb").as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(deb_version("linux-source-6.12_all.deb"), None);
        assert_eq!(deb_version("a_b_c_d.deb"), None);
        assert_eq!(deb_version("linux-source-6.12_6.12.117-1_all.tar"), None);
    }

    const GOOD: &str = "\
CONFIG_SMP=y
CONFIG_ARM_GIC_V3=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_SERIAL_AMBA_PL011_CONSOLE=y
CONFIG_DMA_RESTRICTED_POOL=y
CONFIG_ARM_PKVM_GUEST=y
# CONFIG_KVM is not set
CONFIG_NR_CPUS=512
";

    #[test]
    fn config_checks() {
        assert_eq!(check_required(GOOD), Ok(()));
        let bad = GOOD
            .replace(
                "CONFIG_ARM_PKVM_GUEST=y\n",
                "# CONFIG_ARM_PKVM_GUEST is not set\n",
            )
            .replace("CONFIG_SMP=y\n", "");
        let e = check_required(&bad).unwrap_err();
        assert!(e.contains("CONFIG_ARM_PKVM_GUEST=n"), "{e}");
        assert!(e.contains("CONFIG_SMP absent"), "{e}");
        assert!(!e.contains("GIC"), "{e}");
        let parsed = parse_config(GOOD);
        assert!(parsed.contains(&("CONFIG_KVM".to_owned(), "n".to_owned())));
        assert!(parsed.contains(&("CONFIG_NR_CPUS".to_owned(), "512".to_owned())));
        // A fragment's `is not set` matches an absent symbol; a dropped `y`
        // is reported.
        let m = fragment_mismatches(
            "# CONFIG_KVM is not set\n# CONFIG_FOO is not set\nCONFIG_SMP=y\nCONFIG_BAR=y\n",
            GOOD,
        );
        assert_eq!(m, vec!["CONFIG_BAR=y (got n)".to_owned()]);
    }

    #[test]
    fn the_fragment_asks_for_every_required_symbol() {
        let f = parse_config(FRAGMENT);
        for name in REQUIRED {
            assert_eq!(value_of(&f, name), Some("y"), "{name}");
        }
        for name in [
            "CONFIG_OF",
            "CONFIG_ARM_ARCH_TIMER",
            "CONFIG_RD_GZIP",
            "CONFIG_DEVTMPFS",
            "CONFIG_PROC_FS",
            "CONFIG_SYSFS",
            "CONFIG_BINFMT_ELF",
            "CONFIG_BINFMT_SCRIPT",
            "CONFIG_ARM_PSCI_FW",
            "CONFIG_PRINTK",
            "CONFIG_PRINTK_TIME",
        ] {
            assert_eq!(value_of(&f, name), Some("y"), "{name}");
        }
        assert_eq!(value_of(&f, "CONFIG_KVM"), Some("n"), "a guest: KVM off");
        // Every fragment line is a setting, a comment or blank.
        for l in FRAGMENT.lines() {
            assert!(
                l.is_empty() || l.starts_with('#') || l.starts_with("CONFIG_"),
                "{l}"
            );
        }
    }

    #[test]
    fn dpkg_status_gives_the_missing_tools() {
        let out = "\
Package: make
Status: install ok installed
Version: 4.3-4.1

Package: flex
Status: deinstall ok config-files

Package: bc
Architecture: amd64
Status: install ok installed
";
        let installed = installed_packages(out);
        assert_eq!(installed, vec!["make".to_owned(), "bc".to_owned()]);
        let missing = missing_packages(&TOOLS, &installed);
        assert!(
            missing.contains(&"flex"),
            "config files only is not installed"
        );
        assert!(missing.contains(&"gcc-aarch64-linux-gnu"));
        assert!(!missing.contains(&"make") && !missing.contains(&"bc"));
        let all: Vec<String> = TOOLS.iter().map(|(p, _)| format!("{p}:amd64")).collect();
        assert!(missing_packages(&TOOLS, &all).is_empty());
    }

    #[test]
    fn releases_in_lists() {
        let lists = [
            "deb.debian.org_debian_dists_trixie_InRelease".to_owned(),
            "deb.debian.org_debian_dists_trixie_main_binary-arm64_Packages.lz4".to_owned(),
        ];
        assert!(has_release(&lists, "trixie"));
        assert!(!has_release(&lists, "bookworm"));
        assert!(!has_release(&lists[1..], "trixie"));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_duration(Duration::from_secs(130)), "2m10s");
    }

    #[test]
    fn guest_initramfs_has_init_busybox_and_console() {
        let a = guest_initramfs(b"\x7fELF-busybox");
        let has = |s: &[u8]| a.windows(s.len()).any(|w| w == s);
        assert!(has(b"init\0") && has(b"bin/busybox\0") && has(b"dev/console\0"));
        assert!(has(GUEST_INIT.as_bytes()), "the script itself, verbatim");
        assert_eq!(a.len() % 4, 0);
        assert!(GUEST_INIT.starts_with("#!/bin/busybox sh\n"));
        for line in [
            GUEST_MARKER,
            "GUEST-CPUS:",
            "GUEST-PKVM:",
            "GUEST-PKVM-MISSING",
            "GUEST-MMIO-GUARD:",
            "GUEST-SWIOTLB:",
            "GUEST-POWEROFF",
            "smccc: KVM: hypervisor services detected",
            "/sys/devices/system/cpu/online",
            "poweroff -f",
            // The interactive shell (`guest.shell`), which the console
            // test drives.
            "guest.shell) shell=1",
            "GUEST-SHELL: ",
            "PS1='pkvm-guest# ' setsid cttyhack sh",
            "GUEST-SHELL-EXIT: the shell exited with status",
        ] {
            assert!(GUEST_INIT.contains(line), "{line}");
        }
        // The shell comes before the power-off.
        assert!(GUEST_INIT.find("cttyhack sh") < GUEST_INIT.rfind("poweroff -f"));
    }
}
