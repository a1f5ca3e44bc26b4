//! Downloading Debian's arm64 packages with a private apt configuration.
//!
//! Nothing of the system's apt state changes: the arm64 package lists go
//! to `<cache>/apt/lists`, the downloaded archives to `<cache>/debs`, and
//! the sources are a generated copy of the system's Debian sources
//! (`/etc/apt/sources.list.d/*.sources` in deb822 form and
//! `/etc/apt/sources.list` one-line entries) with `Architectures: arm64`.
//! The system's dpkg architectures are not touched (no
//! `dpkg --add-architecture`); `APT::Architectures=arm64` is set on the
//! command line instead. Mirror addresses come only from the system's
//! configuration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure::Failure;
use crate::process;

/// One source: the fields kept from the system's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `URIs`.
    pub uris: String,
    /// `Suites`.
    pub suites: String,
    /// `Components`.
    pub components: String,
    /// `Signed-By` (a keyring path or an inline key block), if any.
    pub signed_by: Option<String>,
}

/// The stanzas of a deb822 file: `(field, value)` pairs, continuation
/// lines joined with newlines, comments dropped.
pub fn parse_deb822(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

fn field<'a>(stanza: &'a [(String, String)], name: &str) -> Option<&'a str> {
    stanza
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a source is Debian's own archive (signed with Debian's archive
/// keyring, or, without `Signed-By`, served from a `/debian` or
/// `/debian-security` path): third-party repositories rarely carry arm64
/// packages, and their failures would only slow `apt-get update` down.
fn is_debian(s: &Source) -> bool {
    match &s.signed_by {
        Some(k) => k.contains("debian-archive-keyring"),
        None => s.uris.split_whitespace().any(|u| {
            let u = u.trim_end_matches('/');
            u.ends_with("/debian") || u.ends_with("/debian-security")
        }),
    }
}

/// The binary (`deb`) sources of a deb822 `.sources` file.
pub fn sources_from_deb822(text: &str) -> Vec<Source> {
    parse_deb822(text)
        .iter()
        .filter(|st| {
            field(st, "Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
                && !field(st, "Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        })
        .filter_map(|st| {
            Some(Source {
                uris: field(st, "URIs")?.to_owned(),
                suites: field(st, "Suites")?.to_owned(),
                components: field(st, "Components").unwrap_or("").to_owned(),
                signed_by: field(st, "Signed-By").map(str::to_owned),
            })
        })
        .collect()
}

/// The `deb` lines of a one-line-style `sources.list`
/// (`deb [opt=value ...] uri suite component...`).
pub fn sources_from_list(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in opts.split_whitespace() {
                if let Some(k) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(k.to_owned());
                }
            }
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Source {
            uris: uri.to_owned(),
            suites: suite.to_owned(),
            components: words.collect::<Vec<_>>().join(" "),
            signed_by,
        });
    }
    out
}

/// The system's Debian sources under `etc_apt` (normally `/etc/apt`).
pub fn system_sources(etc_apt: &Path) -> Vec<Source> {
    let mut all = Vec::new();
    if let Ok(text) = fs::read_to_string(etc_apt.join("sources.list")) {
        all.extend(sources_from_list(&text));
    }
    let mut files: Vec<PathBuf> = fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => all.extend(sources_from_deb822(&text)),
            Some("list") => all.extend(sources_from_list(&text)),
            _ => {}
        }
    }
    all.into_iter().filter(is_debian).collect()
}

/// The private deb822 sources file: every source with `Architectures:
/// arm64`.
pub fn render_sources(sources: &[Source]) -> String {
    let mut out = String::from(
        "# Generated by `cargo qemu linux-images` from the system's Debian sources,\n\
         # restricted to arm64. Used only with the private apt options of that command.\n",
    );
    for s in sources {
        out.push('\n');
        out.push_str("Types: deb\n");
        out.push_str(&format!("URIs: {}\n", s.uris));
        out.push_str(&format!("Suites: {}\n", s.suites));
        if !s.components.is_empty() {
            out.push_str(&format!("Components: {}\n", s.components));
        }
        if let Some(k) = &s.signed_by {
            out.push_str(&format!("Signed-By: {k}\n"));
        }
        out.push_str("Architectures: arm64\n");
    }
    out
}

/// The keyring Debian's own archive is signed with (package
/// `debian-archive-keyring`); bookworm's current version
/// (2023.3+deb12u2) carries trixie's keys too.
pub const DEBIAN_ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian release `cargo qemu guest-kernel` takes its kernel source
/// (`linux-source-6.12`) from.
pub const TRIXIE: &str = "trixie";

/// Whether a source is the main Debian archive (not `-security`,
/// `-updates` or `-backports`): one of its suites is a release itself
/// (`bookworm`, `stable`), without a `-` suffix, and none of its URIs is
/// the security archive.
fn is_main_archive(s: &Source) -> bool {
    s.suites
        .split_whitespace()
        .any(|suite| !suite.contains('-'))
        && !s
            .uris
            .split_whitespace()
            .any(|u| u.contains("debian-security"))
}

/// The trixie source for `cargo qemu guest-kernel`: the system's own main
/// Debian mirror (the `URIs` of the first Debian source that serves a
/// release, from [`system_sources`]), suite `trixie`, component `main`,
/// signed by `keyring` (Debian's archive keyring). `None` when the system
/// names no main Debian archive.
pub fn trixie_source(system: &[Source], keyring: &str) -> Option<Source> {
    let main = system.iter().find(|s| is_debian(s) && is_main_archive(s))?;
    Some(Source {
        uris: main.uris.clone(),
        suites: TRIXIE.to_owned(),
        components: "main".to_owned(),
        signed_by: Some(keyring.to_owned()),
    })
}

/// The private deb822 sources file of `cargo qemu guest-kernel`: the
/// trixie source, arm64 package indices only (`linux-source-6.12` is
/// `Architecture: all`, listed in every architecture's index) and only
/// the `Packages` index target (no translations, no AppStream metadata).
pub fn render_trixie_sources(source: &Source) -> String {
    let mut out = String::from(
        "# Generated by `cargo qemu guest-kernel` from the system's main Debian mirror:\n\
         # Debian trixie for linux-source-6.12. Used only with that command's private\n\
         # apt options (<cache>/guest-kernel/apt).\n\n",
    );
    out.push_str("Types: deb\n");
    out.push_str(&format!("URIs: {}\n", source.uris));
    out.push_str(&format!("Suites: {}\n", source.suites));
    out.push_str(&format!("Components: {}\n", source.components));
    if let Some(k) = &source.signed_by {
        out.push_str(&format!("Signed-By: {k}\n"));
    }
    out.push_str("Architectures: arm64\n");
    out.push_str("Targets: Packages\n");
    out
}

/// apt with the private configuration rooted at `<cache>/apt` (or another
/// private root, for `guest-kernel`).
pub struct Apt {
    root: PathBuf,
}

impl Apt {
    /// Writes the private sources under `cache/apt` from the system's
    /// configuration.
    pub fn new(cache: &Path) -> Result<Apt, Failure> {
        let sources = system_sources(Path::new("/etc/apt"));
        if sources.is_empty() {
            return Err(Failure::unavailable(
                "no Debian package sources in /etc/apt/sources.list or \
                 /etc/apt/sources.list.d/*.sources: linux-images downloads Debian's arm64 \
                 packages through the sources this system is configured with",
            ));
        }
        Apt::with_sources(
            &cache.join("apt"),
            "debian-arm64.sources",
            &render_sources(&sources),
        )
    }

    /// A private apt configuration rooted at `root`, whose only sources
    /// file is `name` with `text` (written every time: it follows the
    /// system's configuration).
    pub fn with_sources(root: &Path, name: &str, text: &str) -> Result<Apt, Failure> {
        let parts = root.join("sources.list.d");
        for dir in [
            parts.clone(),
            root.join("lists/partial"),
            root.join("cache/archives/partial"),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
        }
        let file = parts.join(name);
        fs::write(&file, text).map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
        Ok(Apt {
            root: root.to_owned(),
        })
    }

    /// The directory of the downloaded package lists.
    pub fn lists(&self) -> PathBuf {
        self.root.join("lists")
    }

    /// The `-o` options of the private configuration.
    pub fn options(&self) -> Vec<String> {
        let r = self.root.display();
        [
            "Dir::Etc::SourceList=/dev/null".to_owned(),
            format!("Dir::Etc::SourceParts={r}/sources.list.d"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::Cache={r}/cache"),
            "APT::Architectures=arm64".to_owned(),
            "Debug::NoLocking=1".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    /// `program` (apt-get, apt-cache) with the private options.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.options());
        cmd
    }

    /// `apt-get update` of the private lists. A failure is reported but
    /// not fatal: the lists that did arrive may have what is needed.
    pub fn update(&self) -> Result<(), Failure> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "update"]);
        eprintln!("==> {}", process::display(&cmd));
        let status = process::status(&mut cmd)?;
        if !status.success() {
            eprintln!(
                "==> apt-get update failed ({}); trying with the lists it fetched",
                process::describe(status)
            );
        }
        Ok(())
    }

    /// The versioned kernel package `linux-image-arm64` depends on (e.g.
    /// `linux-image-6.1.0-56-arm64`).
    pub fn kernel_package(&self) -> Result<String, Failure> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["depends", "linux-image-arm64:arm64"]);
        let out = process::stdout_of(&mut cmd)?;
        parse_kernel_depends(&out).ok_or_else(|| {
            Failure::failed(format!(
                "`{}` names no linux-image-* package:\n{out}",
                process::display(&cmd)
            ))
        })
    }

    /// `apt-get download` of `packages` (arm64) into `dir`.
    pub fn download(&self, dir: &Path, packages: &[&str]) -> Result<(), Failure> {
        let arm64: Vec<String> = packages.iter().map(|p| format!("{p}:arm64")).collect();
        self.download_as_named(dir, &arm64)
    }

    /// `apt-get download` of `packages`, names passed as they are (an
    /// `Architecture: all` package such as `linux-source-6.12`), into
    /// `dir`.
    pub fn download_as_named<S: AsRef<str>>(
        &self,
        dir: &Path,
        packages: &[S],
    ) -> Result<(), Failure> {
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).args(["-q", "download"]);
        cmd.args(packages.iter().map(AsRef::as_ref));
        eprintln!("==> (in {}) {}", dir.display(), process::display(&cmd));
        process::checked(&mut cmd)
    }
}

/// The first `Depends: linux-image-...` of `apt-cache depends` output,
/// without its `:arm64` suffix.
pub fn parse_kernel_depends(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let dep = l
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        let name = dep.split(':').next()?.trim();
        (name.starts_with("linux-image-") && name != "linux-image-arm64").then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.invalid/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://thirdparty.invalid/repo
Suites: stable
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/other.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Enabled: no
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
";

    #[test]
    fn deb822_sources_are_read() {
        let s = sources_from_deb822(DEB822);
        assert_eq!(s.len(), 3, "deb only, enabled only: {s:?}");
        assert_eq!(s[0].suites, "bookworm bookworm-updates");
        assert!(is_debian(&s[0]));
        assert!(!is_debian(&s[1]), "third party");
        assert_eq!(s[2].components, "main contrib");
        assert!(s[2].signed_by.as_deref().unwrap().contains("\n abc\n"));
        assert!(
            !is_debian(&s[2]),
            "inline key: not the archive keyring file"
        );
        let text = render_sources(&s[..1]);
        assert!(text.contains("Architectures: arm64\n"));
        assert!(text.contains("URIs: http://mirror.invalid/debian\n"));
        // The rendered file reads back the same.
        assert_eq!(sources_from_deb822(&text), s[..1].to_vec());
    }

    #[test]
    fn one_line_sources_are_read() {
        let s = sources_from_list(
            "# comment\n\
             deb http://mirror.invalid/debian bookworm main contrib\n\
             deb-src http://mirror.invalid/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian-security bookworm-security main # x\n\
             deb [broken http://x y\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].components, "main contrib");
        assert!(is_debian(&s[0]));
        assert_eq!(s[1].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[1].suites, "bookworm-security");
    }

    #[test]
    fn kernel_dependency_is_found() {
        let out = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-56-arm64:arm64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-arm64")
        );
        assert_eq!(parse_kernel_depends("linux-image-arm64\n"), None);
    }

    #[test]
    fn trixie_comes_from_the_systems_main_mirror() {
        let system = sources_from_deb822(
            "Types: deb\n\
             URIs: http://mirror.invalid/debian-security\n\
             Suites: bookworm-security\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\n\
             URIs: https://thirdparty.invalid/debian\n\
             Suites: stable\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/other.gpg\n\n\
             Types: deb\n\
             URIs: http://mirror.invalid/debian\n\
             Suites: bookworm-updates bookworm\n\
             Components: main contrib\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        );
        let t = trixie_source(&system, DEBIAN_ARCHIVE_KEYRING).unwrap();
        assert_eq!(
            t.uris, "http://mirror.invalid/debian",
            "not security, not third party"
        );
        assert_eq!(t.suites, "trixie");
        assert_eq!(t.components, "main");
        assert_eq!(t.signed_by.as_deref(), Some(DEBIAN_ARCHIVE_KEYRING));
        let text = render_trixie_sources(&t);
        assert!(text.contains("\nSuites: trixie\n"));
        assert!(text.contains("\nArchitectures: arm64\n"));
        assert!(text.contains("\nTargets: Packages\n"));
        assert!(text.contains("\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        // It reads back as the same source.
        assert_eq!(sources_from_deb822(&text), vec![t]);
        // A one-line sources.list without Signed-By counts too.
        let list = sources_from_list("deb http://m.invalid/debian/ bookworm main\n");
        let t = trixie_source(&list, "/k.gpg").unwrap();
        assert_eq!(t.uris, "http://m.invalid/debian/");
        assert_eq!(t.signed_by.as_deref(), Some("/k.gpg"));
        // Only security and third-party sources: no main archive.
        assert_eq!(trixie_source(&system[..1], DEBIAN_ARCHIVE_KEYRING), None);
        assert_eq!(trixie_source(&[], DEBIAN_ARCHIVE_KEYRING), None);
    }

    #[test]
    fn private_options_leave_the_system_alone() {
        let apt = Apt {
            root: PathBuf::from("/c/apt"),
        };
        let o = apt.options().join(" ");
        assert!(o.contains("-o Dir::Etc::SourceList=/dev/null"));
        assert!(o.contains("-o Dir::Etc::SourceParts=/c/apt/sources.list.d"));
        assert!(o.contains("-o Dir::State::Lists=/c/apt/lists"));
        assert!(o.contains("-o Dir::Cache=/c/apt/cache"));
        assert!(o.contains("-o APT::Architectures=arm64"));
    }
}
