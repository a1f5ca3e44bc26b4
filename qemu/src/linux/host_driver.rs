//! The Linux host driver `pkvm_rs.ko` and its smoke test, cross-built for
//! the exact Debian kernel `cargo qemu linux-images` boots
//! (`cargo qemu host-driver`).
//!
//! 1. The kernel is the one linux-images downloads (its `.deb` named in
//!    `<cache>/debs/manifest`, e.g. `linux-image-6.1.0-57-arm64_6.1.192-3`):
//!    release `6.1.0-57-arm64`, version `6.1.192-3`. The module must be
//!    built against headers of exactly that version (`vermagic`).
//! 2. Three packages are downloaded with `apt-get download`, pinned to that
//!    version, into `<cache>/host-driver/debs` ([`header_packages`]):
//!    `linux-headers-<release>` (arm64) and `linux-headers-<abi>-common`
//!    (`Architecture: all`) through linux-images' private arm64 apt
//!    configuration (`<cache>/apt`), and `linux-kbuild-<major.minor>` for
//!    the *build* machine's architecture (`dpkg --print-architecture`,
//!    amd64 here: it is `Multi-Arch: foreign`, its `fixdep`/`modpost` run
//!    on the build machine) through a second private apt configuration
//!    rooted at `<cache>/host-driver/apt-<arch>` (the system's Debian
//!    sources restricted to that architecture). Nothing of the system's apt
//!    state changes. `<cache>/host-driver/debs/manifest` names them: a
//!    later run uses them without the network.
//! 3. They are extracted with `dpkg-deb -x` into one private root,
//!    `<cache>/host-driver/root/<release>_<version>`, with the one fix-up
//!    the packages need: the `-arm64` headers' one-line `Makefile`
//!    includes `/usr/src/linux-headers-<abi>-common/Makefile` by absolute
//!    path, rewritten to the private root (the `scripts` and `tools`
//!    symlinks are relative and resolve inside it as extracted).
//! 4. The cross compiler and friends ([`TOOLS`]: Debian's
//!    `gcc-aarch64-linux-gnu`, which provides the `aarch64-linux-gnu-gcc-12`
//!    the headers' Makefile asks for, binutils, `libc6-dev-arm64-cross` for
//!    the static smoke test, make) are installed with apt-get when this
//!    runs as root and they are missing (saying so), with
//!    `cargo qemu guest-kernel`'s installer
//!    ([`super::guest_kernel::ensure_packages`]); otherwise the command
//!    says what to install and fails.
//! 5. `host_interface/driver` ([`SOURCES`] of it) is copied to
//!    `<cache>/host-driver/build/<key>` and built there (the repository
//!    stays free of objects): `make -C <headers> M=<copy> ARCH=arm64
//!    CROSS_COMPILE=aarch64-linux-gnu- modules` (then `strip --strip-debug`
//!    of the module: Debian's headers build with debug info), and
//!    `aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -pthread` of
//!    `smoke.c`. The results land in `<cache>/host-driver/out/<key>/`
//!    (`pkvm_rs.ko`, `pkvm-rs-smoke`, `build.log`, `build-info`); the key
//!    ([`cache_key`]) is the kernel's release and version and a hash of
//!    the recipe and of every source file, so a run that finds them builds
//!    nothing.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::apt::{self, Apt};
use super::guest_kernel::{
    compiler_version, ensure_packages, fnv1a64, format_duration, lock_dir, run_logged,
};
use super::{cache_dir, io_err};
use crate::failure::Failure;
use crate::process;
use crate::workspace::{self, find_in_path};

/// The module's file name.
pub const MODULE: &str = "pkvm_rs.ko";
/// The smoke test's file name (a static aarch64 Linux executable).
pub const SMOKE: &str = "pkvm-rs-smoke";
/// Where the driver's sources are, in the workspace.
pub const DRIVER_DIR: &str = "host_interface/driver";
/// The files of [`DRIVER_DIR`] a build uses (and hashes): the Kbuild
/// files, every `.c` and `.h`.
pub const SOURCES: &[&str] = &["Kbuild", "Makefile"];

/// Kbuild's architecture.
pub const ARCH: &str = "arm64";
/// The cross compiler prefix (Debian's `gcc-aarch64-linux-gnu`).
pub const CROSS_COMPILE: &str = "aarch64-linux-gnu-";

/// The Debian packages the build needs on the build machine, and why.
pub const TOOLS: [(&str, &str); 4] = [
    (
        "gcc-aarch64-linux-gnu",
        "the cross compiler (aarch64-linux-gnu-gcc-12, which the kernel headers ask for)",
    ),
    (
        "binutils-aarch64-linux-gnu",
        "the cross assembler and linker",
    ),
    (
        "libc6-dev-arm64-cross",
        "the arm64 C library the static smoke test links",
    ),
    ("make", "Kbuild"),
];

/// How the module and the smoke test are built, hashed into
/// [`cache_key`]: change this text whenever the steps or flags change.
const RECIPE: &str = "host-driver recipe 1: make -C <headers> M=<copy of \
    host_interface/driver> ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- modules; \
    aarch64-linux-gnu-strip --strip-debug pkvm_rs.ko; \
    aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -pthread -I<copy> -o pkvm-rs-smoke smoke.c";

/// What `host-driver` produces.
#[derive(Debug, Clone)]
pub struct HostDriver {
    /// The kernel release the module is for (`uname -r`, e.g.
    /// `6.1.0-57-arm64`).
    pub kernel_release: String,
    /// The Debian version of that kernel and of its headers (e.g.
    /// `6.1.192-3`).
    pub kernel_version: String,
    /// The cache key ([`cache_key`]): the output directory's name.
    pub key: String,
    /// `pkvm_rs.ko`.
    pub module: PathBuf,
    /// `pkvm-rs-smoke` (static aarch64 executable).
    pub smoke: PathBuf,
    /// The kernel headers the module was built against.
    pub headers: PathBuf,
    /// The full log of the build.
    pub log: PathBuf,
}

/// `(release, version)` of a kernel image package's file name:
/// `linux-image-6.1.0-57-arm64_6.1.192-3_arm64.deb` gives
/// `("6.1.0-57-arm64", "6.1.192-3")`.
pub fn kernel_of_deb(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (Some(name), Some(version), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let release = name.strip_prefix("linux-image-")?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.+~%".contains(&b))
    };
    (ok(release) && ok(version) && release.contains('.'))
        .then(|| (release.to_owned(), version.replace("%3a", ":")))
}

/// The three packages of a kernel's headers, pinned to its version:
/// `(name, architecture qualifier)`; `None` as qualifier for the
/// `Architecture: all` package. `release` is e.g. `6.1.0-57-arm64`.
pub fn header_packages(release: &str, build_arch: &str) -> Option<[(String, Option<String>); 3]> {
    let abi = release.strip_suffix("-arm64")?;
    let mut numbers = abi.split(['.', '-']);
    let (Some(major), Some(minor)) = (numbers.next(), numbers.next()) else {
        return None;
    };
    if !major.bytes().all(|b| b.is_ascii_digit()) || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some([
        (format!("linux-headers-{release}"), Some(ARCH.to_owned())),
        (format!("linux-headers-{abi}-common"), None),
        (
            format!("linux-kbuild-{major}.{minor}"),
            Some(build_arch.to_owned()),
        ),
    ])
}

/// `apt-get download`'s argument for a pinned package.
pub fn pinned(name: &str, arch: Option<&str>, version: &str) -> String {
    match arch {
        Some(a) => format!("{name}:{a}={version}"),
        None => format!("{name}={version}"),
    }
}

/// The driver's source files in `dir` ([`SOURCES`], every `.c` and `.h`),
/// sorted by name, with their contents.
pub fn sources(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let wanted =
            SOURCES.contains(&name.as_str()) || name.ends_with(".c") || name.ends_with(".h");
        if wanted && entry.path().is_file() {
            let data = fs::read(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            out.push((name, data));
        }
    }
    out.sort();
    if !out.iter().any(|(n, _)| n == "Kbuild") {
        return Err(Failure::failed(format!(
            "{} has no Kbuild: not the driver's directory",
            dir.display()
        )));
    }
    Ok(out)
}

/// The cache key of a build: the kernel release and version (made safe
/// for a file name), then 16 hex digits hashing the recipe, both, and
/// every source file's name and contents.
pub fn cache_key(release: &str, version: &str, sources: &[(String, Vec<u8>)]) -> String {
    let mut all = Vec::new();
    for part in [RECIPE, release, version] {
        all.extend_from_slice(part.as_bytes());
        all.push(0);
    }
    for (name, data) in sources {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        all.extend_from_slice(&(data.len() as u64).to_le_bytes());
        all.extend_from_slice(data);
    }
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| if c == ':' || c == '/' { '_' } else { c })
            .collect()
    };
    format!("{}_{}-{:016x}", safe(release), safe(version), fnv1a64(&all))
}

/// The `-arm64` headers' Makefile with its absolute include made to
/// point into `root`.
pub fn fixed_makefile(text: &str, root: &Path) -> String {
    text.replace(
        "include /usr/src/",
        &format!("include {}/usr/src/", root.display()),
    )
}

/// The build machine's Debian architecture (`dpkg --print-architecture`,
/// else from the Rust target).
fn build_arch() -> String {
    process::stdout_of(Command::new("dpkg").arg("--print-architecture"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "x86" => "i386",
                other => other,
            }
            .to_owned()
        })
}

fn unavailable(what: &str) -> impl Fn(Failure) -> Failure + '_ {
    move |f| Failure::unavailable(format!("{what}: {f}"))
}

/// `apt-get` with `apt`'s private options but for `arch`'s packages.
fn apt_get_for(apt: &Apt, arch: &str) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(apt.options().into_iter().map(|o| {
        if o.starts_with("APT::Architectures=") {
            format!("APT::Architectures={arch}")
        } else {
            o
        }
    }));
    cmd
}

/// `apt-get download` of `packages` into `dir`; when that fails, once more
/// after `apt-get update` of the private lists.
fn download(apt: &Apt, arch: &str, dir: &Path, packages: &[String]) -> Result<(), Failure> {
    let attempt = || {
        let mut cmd = apt_get_for(apt, arch);
        cmd.current_dir(dir).args(["-q", "download"]).args(packages);
        eprintln!("==> (in {}) {}", dir.display(), process::display(&cmd));
        process::checked(&mut cmd)
    };
    if attempt().is_ok() {
        return Ok(());
    }
    let mut update = apt_get_for(apt, arch);
    update.args(["-q", "update"]);
    eprintln!("==> {}", process::display(&update));
    let status = process::status(&mut update)?;
    if !status.success() {
        eprintln!(
            "==> apt-get update failed ({}); trying with the lists it fetched",
            process::describe(status)
        );
    }
    attempt()
}

/// The three header packages of `release`/`version` in `<hd>/debs`,
/// downloaded unless the manifest names them.
fn header_debs(
    cache: &Path,
    hd: &Path,
    release: &str,
    version: &str,
) -> Result<Vec<PathBuf>, Failure> {
    let dir = hd.join("debs");
    fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let manifest = dir.join("manifest");
    let arch = build_arch();
    let pkgs = header_packages(release, &arch).ok_or_else(|| {
        Failure::failed(format!(
            "cannot name the headers of kernel release {release} (want <major>.<minor>...-arm64)"
        ))
    })?;
    let file_of = |name: &str, arch: Option<&str>| {
        format!(
            "{name}_{}_{}.deb",
            version.replace(':', "%3a"),
            arch.unwrap_or("all")
        )
    };
    let files: Vec<PathBuf> = pkgs
        .iter()
        .map(|(n, a)| dir.join(file_of(n, a.as_deref())))
        .collect();
    let named = fs::read_to_string(&manifest).unwrap_or_default();
    if files.iter().all(|f| {
        f.is_file()
            && f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| named.lines().any(|l| l.trim() == n))
    }) {
        return Ok(files);
    }
    super::need("apt-get", "apt").map_err(unavailable("host-driver downloads kernel headers"))?;
    let arm64 = Apt::new(cache)?;
    let started = Instant::now();
    let arm64_pkgs: Vec<String> = pkgs[..2]
        .iter()
        .map(|(n, a)| pinned(n, a.as_deref(), version))
        .collect();
    let hint = format!(
        "the headers of {release} {version} are not in the archive any more? Delete {} \
         and run `cargo qemu linux-images` for the current kernel",
        cache.join("debs/manifest").display()
    );
    download(&arm64, ARCH, &dir, &arm64_pkgs).map_err(|f| {
        Failure::unavailable(format!(
            "cannot download the arm64 kernel headers: {f} ({hint})"
        ))
    })?;
    let kbuild = if arch == ARCH {
        arm64
    } else {
        let system = apt::system_sources(Path::new("/etc/apt"));
        // Package indices only (no translations, no AppStream data).
        let text = apt::render_sources(&system)
            .replace(
                "Architectures: arm64\n",
                &format!("Architectures: {arch}\nTargets: Packages\n"),
            )
            .replace(
                "restricted to arm64",
                &format!("restricted to {arch} (host-driver: linux-kbuild)"),
            );
        Apt::with_sources(
            &hd.join(format!("apt-{arch}")),
            &format!("debian-{arch}.sources"),
            &text,
        )?
    };
    let (name, a) = &pkgs[2];
    download(&kbuild, &arch, &dir, &[pinned(name, a.as_deref(), version)]).map_err(|f| {
        Failure::unavailable(format!(
            "cannot download {name} for the build machine ({arch}): {f} ({hint})"
        ))
    })?;
    for f in &files {
        if !f.is_file() {
            return Err(Failure::failed(format!(
                "apt-get download left no {} in {}",
                f.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                dir.display()
            )));
        }
    }
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    fs::write(&manifest, names.join("\n") + "\n").map_err(|e| io_err(&manifest, e))?;
    eprintln!(
        "==> downloaded the kernel headers and kbuild in {}",
        format_duration(started.elapsed())
    );
    Ok(files)
}

/// The private root with the headers extracted and fixed up (once); the
/// path of `usr/src/linux-headers-<release>` in it.
fn headers_root(
    hd: &Path,
    debs: &[PathBuf],
    release: &str,
    version: &str,
) -> Result<PathBuf, Failure> {
    let roots = hd.join("root");
    let safe_version = version.replace(':', "_");
    let root = roots.join(format!("{release}_{safe_version}"));
    let headers = root.join(format!("usr/src/linux-headers-{release}"));
    if headers.join("Makefile").is_file() && headers.join("scripts/basic/fixdep").is_file() {
        return Ok(headers);
    }
    super::need("dpkg-deb", "dpkg")?;
    let tmp = roots.join(format!(".{release}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    for deb in debs {
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(deb).arg(&tmp);
        eprintln!("==> {}", process::display(&cmd));
        process::checked(&mut cmd)?;
    }
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).map_err(|e| io_err(&root, e))?;
    let makefile = headers.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(|e| io_err(&makefile, e))?;
    let fixed = fixed_makefile(&text, &root);
    fs::write(&makefile, &fixed).map_err(|e| io_err(&makefile, e))?;
    let fixdep = headers.join("scripts/basic/fixdep");
    if !fixdep.is_file() {
        return Err(Failure::failed(format!(
            "{} is missing after extracting the headers: the scripts symlink does not resolve \
             into linux-kbuild",
            fixdep.display()
        )));
    }
    eprintln!("==> kernel headers of {release} in {}", headers.display());
    Ok(headers)
}

/// Builds the module and the smoke test from `srcs` into `<hd>/out/<key>`.
fn build(
    hd: &Path,
    headers: &Path,
    srcs: &[(String, Vec<u8>)],
    release: &str,
    version: &str,
    key: &str,
) -> Result<PathBuf, Failure> {
    let out_root = hd.join("out");
    let done = out_root.join(key);
    let stage = out_root.join(format!(".{key}.partial"));
    let bdir = hd.join("build").join(key);
    for d in [&stage, &bdir] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    for (name, data) in srcs {
        let p = bdir.join(name);
        fs::write(&p, data).map_err(|e| io_err(&p, e))?;
    }
    let log_path = stage.join("build.log");
    let mut log = File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
    let started = Instant::now();
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(headers)
        .arg(format!("M={}", bdir.display()))
        .arg(format!("ARCH={ARCH}"))
        .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
        .arg("modules")
        // cargo's jobserver is not for this make.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    run_logged(
        &mut make,
        &format!("make -C {} M={} modules", headers.display(), bdir.display()),
        &mut log,
        &log_path,
        false,
    )?;
    // Debian's headers build with debug info: 0.9 MB of it in the
    // module, of no use in an initramfs.
    let mut strip = Command::new(format!("{CROSS_COMPILE}strip"));
    strip.arg("--strip-debug").arg(bdir.join(MODULE));
    run_logged(
        &mut strip,
        &format!("{CROSS_COMPILE}strip --strip-debug {MODULE}"),
        &mut log,
        &log_path,
        false,
    )?;
    let module_took = started.elapsed();
    let started = Instant::now();
    let mut cc = Command::new(format!("{CROSS_COMPILE}gcc"));
    cc.args(["-static", "-O2", "-Wall", "-Wextra", "-pthread"])
        .arg("-I")
        .arg(&bdir)
        .arg("-o")
        .arg(bdir.join(SMOKE))
        .arg(bdir.join("smoke.c"));
    run_logged(
        &mut cc,
        &format!("{CROSS_COMPILE}gcc -static -o {SMOKE} smoke.c"),
        &mut log,
        &log_path,
        false,
    )?;
    let smoke_took = started.elapsed();
    drop(log);
    for name in [MODULE, SMOKE] {
        let (from, to) = (bdir.join(name), stage.join(name));
        fs::copy(&from, &to).map_err(|e| io_err(&from, e))?;
    }
    let info = stage.join("build-info");
    let mut text = format!(
        "kernel: linux-image-{release} {version}\nheaders: {}\nkey: {key}\nrecipe: {RECIPE}\n\
         compiler: {}\nmodule build time: {}\nsmoke test build time: {}\nsources:\n",
        headers.display(),
        compiler_version(),
        format_duration(module_took),
        format_duration(smoke_took),
    );
    for (name, data) in srcs {
        text.push_str(&format!("  {name} {:016x}\n", fnv1a64(data)));
    }
    File::create(&info)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| io_err(&info, e))?;
    let _ = fs::remove_dir_all(&done);
    fs::rename(&stage, &done).map_err(|e| io_err(&done, e))?;
    let _ = fs::remove_dir_all(&bdir);
    eprintln!(
        "==> built {MODULE} in {} and {SMOKE} in {}",
        format_duration(module_took),
        format_duration(smoke_took)
    );
    Ok(done)
}

fn outputs(dir: &Path, headers: PathBuf, release: &str, version: &str, key: &str) -> HostDriver {
    HostDriver {
        kernel_release: release.to_owned(),
        kernel_version: version.to_owned(),
        key: key.to_owned(),
        module: dir.join(MODULE),
        smoke: dir.join(SMOKE),
        headers,
        log: dir.join("build.log"),
    }
}

/// Builds `pkvm_rs.ko` and `pkvm-rs-smoke` for the kernel linux-images
/// boots, or finds them in the cache (module docs); progress goes to
/// stderr.
///
/// The error's [`Failure::code`] tells a test what to make of it:
/// [`crate::failure::EXIT_UNAVAILABLE`] means they cannot be built on this
/// machine (no access to Debian's archive, the headers of that kernel gone
/// from it, tools missing and not root, not a Debian system...: print
/// `SKIPPED: <message>`), while [`crate::failure::EXIT_FAILED`] means a
/// build was attempted and failed (the compiler).
pub fn ensure() -> Result<HostDriver, Failure> {
    let cache = cache_dir()?;
    let hd = cache.join("host-driver");
    fs::create_dir_all(&hd).map_err(|e| io_err(&hd, e))?;
    let (kernel_deb, _) = super::debs(&cache).map_err(|f| {
        if f.code == crate::failure::EXIT_UNAVAILABLE {
            f
        } else {
            Failure::unavailable(format!("the kernel package of linux-images: {f}"))
        }
    })?;
    let deb_name = kernel_deb
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let (release, version) = kernel_of_deb(&deb_name).ok_or_else(|| {
        Failure::failed(format!(
            "cannot read a kernel release and version from {deb_name}"
        ))
    })?;
    let driver = workspace::root().join(DRIVER_DIR);
    let srcs = sources(&driver)?;
    let key = cache_key(&release, &version, &srcs);
    let dir = hd.join("out").join(&key);
    let headers_of = |hd: &Path| {
        hd.join("root")
            .join(format!("{release}_{}", version.replace(':', "_")))
            .join(format!("usr/src/linux-headers-{release}"))
    };
    let warm = |dir: &Path| dir.join(MODULE).is_file() && dir.join(SMOKE).is_file();
    if warm(&dir) {
        return Ok(outputs(&dir, headers_of(&hd), &release, &version, &key));
    }
    let _lock = lock_dir(&hd, "host-driver")?;
    if warm(&dir) {
        return Ok(outputs(&dir, headers_of(&hd), &release, &version, &key));
    }
    ensure_packages("building the host driver", &TOOLS)?;
    for program in ["make", &format!("{CROSS_COMPILE}gcc")] {
        if find_in_path(program).is_none() {
            return Err(Failure::unavailable(format!(
                "{program} not found although its package is installed"
            )));
        }
    }
    let debs = header_debs(&cache, &hd, &release, &version)?;
    let headers = headers_root(&hd, &debs, &release, &version)?;
    eprintln!("==> building the host driver for {release} ({version}) from {DRIVER_DIR}");
    let done = build(&hd, &headers, &srcs, &release, &version, &key)?;
    Ok(outputs(&done, headers, &release, &version, &key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_and_version_from_the_deb() {
        assert_eq!(
            kernel_of_deb("linux-image-6.1.0-57-arm64_6.1.192-3_arm64.deb"),
            Some(("6.1.0-57-arm64".to_owned(), "6.1.192-3".to_owned()))
        );
        assert_eq!(
            kernel_of_deb("linux-image-6.1.0-57-arm64_1%3a6.1-3_arm64.deb"),
            Some(("6.1.0-57-arm64".to_owned(), "1:6.1-3".to_owned()))
        );
        assert_eq!(kernel_of_deb("busybox-static_1.35_arm64.deb"), None);
        assert_eq!(
            kernel_of_deb("linux-image-6.1.0-57-arm64_6.1.192-3.deb"),
            None
        );
        assert_eq!(kernel_of_deb("linux-image-x y_1_arm64.deb"), None);
    }

    #[test]
    fn header_packages_are_named_and_pinned() {
        let p = header_packages("6.1.0-57-arm64", "amd64").unwrap();
        assert_eq!(
            p[0],
            (
                "linux-headers-6.1.0-57-arm64".to_owned(),
                Some("arm64".to_owned())
            )
        );
        assert_eq!(p[1], ("linux-headers-6.1.0-57-common".to_owned(), None));
        assert_eq!(
            p[2],
            ("linux-kbuild-6.1".to_owned(), Some("amd64".to_owned()))
        );
        assert_eq!(
            pinned(&p[0].0, p[0].1.as_deref(), "6.1.192-3"),
            "linux-headers-6.1.0-57-arm64:arm64=6.1.192-3"
        );
        assert_eq!(
            pinned(&p[1].0, None, "6.1.192-3"),
            "linux-headers-6.1.0-57-common=6.1.192-3"
        );
        assert_eq!(
            header_packages("6.12.48+deb13-arm64", "amd64").unwrap()[2].0,
            "linux-kbuild-6.12"
        );
        assert!(header_packages("6.1.0-57-amd64", "amd64").is_none());
        assert!(header_packages("x.y-arm64", "amd64").is_none());
    }

    #[test]
    fn the_headers_makefile_is_pointed_at_the_private_root() {
        let text = "include /usr/src/linux-headers-6.1.0-57-common/Makefile\n";
        assert_eq!(
            fixed_makefile(text, Path::new("/c/host-driver/root/r")),
            "include /c/host-driver/root/r/usr/src/linux-headers-6.1.0-57-common/Makefile\n"
        );
    }

    #[test]
    fn cache_keys_follow_kernel_and_sources() {
        let srcs = vec![
            ("Kbuild".to_owned(), b"obj-m := pkvm_rs.o\n".to_vec()),
            ("main.c".to_owned(), b"int x;\n".to_vec()),
        ];
        let k = cache_key("6.1.0-57-arm64", "6.1.192-3", &srcs);
        assert!(k.starts_with("6.1.0-57-arm64_6.1.192-3-"), "{k}");
        assert_eq!(k.rsplit_once('-').unwrap().1.len(), 16);
        assert_eq!(k, cache_key("6.1.0-57-arm64", "6.1.192-3", &srcs));
        assert_ne!(k, cache_key("6.1.0-58-arm64", "6.1.192-3", &srcs));
        assert_ne!(k, cache_key("6.1.0-57-arm64", "6.1.193-1", &srcs));
        let mut changed = srcs.clone();
        changed[1].1.push(b'\n');
        assert_ne!(k, cache_key("6.1.0-57-arm64", "6.1.192-3", &changed));
        let mut renamed = srcs.clone();
        renamed[1].0 = "gmem.c".to_owned();
        assert_ne!(k, cache_key("6.1.0-57-arm64", "6.1.192-3", &renamed));
        assert!(cache_key("6.1", "1:2", &srcs).starts_with("6.1_1_2-"));
    }

    #[test]
    fn the_driver_sources_are_found() {
        let srcs = sources(&workspace::root().join(DRIVER_DIR)).unwrap();
        let names: Vec<&str> = srcs.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["Kbuild", "Makefile", "pkvm_rs_uapi.h", "smoke.c", "main.c"] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.ends_with(".md")));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
