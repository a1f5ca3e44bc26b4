//! `cargo qemu fuzz`: the coverage-guided fuzz targets, and longer
//! property-test runs.
//!
//! The targets' logic lives in `tests/fuzz-targets` (a stable workspace
//! crate, replayed by `cargo test`); `fuzz/` holds the cargo-fuzz crate
//! around it, which needs a nightly toolchain. This command installs what
//! is missing (the nightly toolchain, cargo-fuzz), saying so, and runs
//! every target (or those named with `--target`) one after another for
//! `--minutes` each (and/or `--runs` executions), with
//!
//! ```text
//! cargo +nightly fuzz run <target> --fuzz-dir fuzz --sanitizer none \
//!     [--no-trace-compares] --target-dir fuzz/target/<flavour> \
//!     fuzz/work/<target> fuzz/corpus/<target> -- \
//!     -max_total_time=<s> [-runs=<n>] -timeout=30 -print_final_stats=1
//! ```
//!
//! from the workspace root (the exact line is printed). The grown corpus
//! goes to `fuzz/work/<target>` (not committed; kept between runs), the
//! committed seeds in `fuzz/corpus/<target>` are read only, a crashing
//! input goes to `fuzz/artifacts/<target>/`, and libFuzzer's whole output
//! to `fuzz/work/<target>.log`. The build and tests of the workspace stay
//! on the stable toolchain `rust-toolchain.toml` pins: nightly is used
//! here and nowhere else.
//!
//! Why these flags: the code under test is safe Rust apart from the
//! simulator's accessors, so AddressSanitizer (cargo-fuzz's default,
//! about 3× slower) is off; debug assertions and overflow checks stay on
//! (cargo-fuzz's default without `--release`). The targets over the
//! simulated machine read their inputs through tables of aimed values and
//! spend most of their time in the checks after every step, where
//! comparison tracing costs about 3.4× the executions and finds little,
//! so they are built without it; the parsers keep it (magic numbers,
//! lengths), in a separate target directory so neither build undoes the
//! other.
//!
//! At the end a table gives, per target: executions, the coverage
//! libFuzzer reached (`cov:` edges and `ft:` features), the corpus
//! (inputs and bytes), crashes and the time taken; the command fails if
//! any target crashed (or could not run).
//!
//! `--proptest-cases N` runs the workspace's property tests instead
//! ([`PROPTEST_SUITES`], each `--proptest-rounds` times, default 1, with
//! `PROPTEST_CASES=N`): longer than CI's runs, each round with fresh
//! random cases.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::ArgError;
use crate::failure::Failure;
use crate::process;
use crate::workspace;

/// A fuzz target: its cargo-fuzz binary (and corpus directory) and whether
/// it is built with comparison tracing (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The `[[bin]]` of `fuzz/Cargo.toml`.
    pub name: &'static str,
    /// Built with `-sanitizer-coverage-trace-compares`.
    pub trace_compares: bool,
}

/// Every target, in the order they run.
pub const TARGETS: [Target; 5] = [
    Target {
        name: "host_call",
        trace_compares: false,
    },
    Target {
        name: "guest_call",
        trace_compares: false,
    },
    Target {
        name: "vm_layer",
        trace_compares: false,
    },
    Target {
        name: "boot_image",
        trace_compares: true,
    },
    Target {
        name: "device_tree",
        trace_compares: true,
    },
];

/// Minutes per target when neither `--minutes` nor `--runs` is given: a
/// short run.
pub const DEFAULT_MINUTES: u64 = 1;
/// libFuzzer's `-timeout`: one input running longer than this (seconds)
/// is a hang, reported as a crash. The slowest inputs take well under a
/// second; the margin is for a loaded machine.
pub const INPUT_TIMEOUT_SECS: u64 = 30;
/// The toolchain cargo-fuzz runs on.
pub const NIGHTLY: &str = "nightly";

/// The property-test suites `--proptest-cases` runs: package and test
/// target. Those of el2, ownership and stage2 fix their case counts in
/// their `ProptestConfig` (PROPTEST_CASES does not change them; every
/// round draws new cases); `tests`' `vmm_prop` reads PROPTEST_CASES.
pub const PROPTEST_SUITES: [(&str, &str); 5] = [
    ("el2", "prop"),
    ("ownership", "model"),
    ("ownership", "robustness"),
    ("stage2", "model"),
    ("tests", "vmm_prop"),
];

/// Options of `cargo qemu fuzz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzOptions {
    /// Seconds per target (`--minutes`, rounded to a second, at least
    /// one); `None` with `runs` set means no time limit.
    pub seconds: Option<u64>,
    /// Executions per target (`--runs`).
    pub runs: Option<u64>,
    /// The targets to run (`--target`, repeatable); empty: all of them.
    pub targets: Vec<&'static str>,
    /// Run the property tests with `PROPTEST_CASES` set to this
    /// (`--proptest-cases`) instead of fuzzing.
    pub proptest_cases: Option<u64>,
    /// Rounds of property tests (`--proptest-rounds`, default 1).
    pub proptest_rounds: u32,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        Self {
            seconds: None,
            runs: None,
            targets: Vec::new(),
            proptest_cases: None,
            proptest_rounds: 1,
        }
    }
}

impl FuzzOptions {
    /// The targets to run, in [`TARGETS`] order.
    pub fn selected(&self) -> Vec<Target> {
        TARGETS
            .iter()
            .copied()
            .filter(|t| self.targets.is_empty() || self.targets.contains(&t.name))
            .collect()
    }

    /// libFuzzer's time limit per target, in seconds (`None`: none).
    pub fn time_limit(&self) -> Option<u64> {
        match (self.seconds, self.runs) {
            (Some(s), _) => Some(s),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_MINUTES * 60),
        }
    }
}

/// Parses the arguments after `cargo qemu fuzz`.
pub fn parse(rest: &[String]) -> Result<FuzzOptions, ArgError> {
    let mut options = FuzzOptions::default();
    let mut rounds_given = false;
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
            "--minutes" => {
                let v = value("--minutes")?;
                options.seconds = match v.parse::<f64>() {
                    Ok(m) if m.is_finite() && m > 0.0 && m <= 7.0 * 24.0 * 60.0 => {
                        Some(((m * 60.0).round() as u64).max(1))
                    }
                    _ => {
                        return Err(ArgError::InvalidValue {
                            option: "--minutes",
                            value: v,
                            expected: "a number of minutes above 0 (at most a week)",
                        });
                    }
                };
            }
            "--runs" => {
                let v = value("--runs")?;
                options.runs = Some(positive(
                    &v,
                    "--runs",
                    "a number of executions, at least 1",
                )?);
            }
            "--target" => {
                let v = value("--target")?;
                let Some(t) = TARGETS.iter().find(|t| t.name == v) else {
                    return Err(ArgError::InvalidValue {
                        option: "--target",
                        value: v,
                        expected: "host_call, guest_call, vm_layer, boot_image or device_tree",
                    });
                };
                if !options.targets.contains(&t.name) {
                    options.targets.push(t.name);
                }
            }
            "--proptest-cases" => {
                let v = value("--proptest-cases")?;
                options.proptest_cases = Some(positive(
                    &v,
                    "--proptest-cases",
                    "a number of cases, at least 1",
                )?);
            }
            "--proptest-rounds" => {
                let v = value("--proptest-rounds")?;
                let n = positive(&v, "--proptest-rounds", "a number of rounds, at least 1")?;
                options.proptest_rounds = u32::try_from(n).map_err(|_| ArgError::InvalidValue {
                    option: "--proptest-rounds",
                    value: v,
                    expected: "a number of rounds below 2^32",
                })?;
                rounds_given = true;
            }
            other if other.starts_with('-') => {
                return Err(ArgError::UnknownOption {
                    command: "fuzz",
                    option: other.to_owned(),
                });
            }
            other => {
                return Err(ArgError::UnexpectedArgument {
                    command: "fuzz",
                    argument: other.to_owned(),
                });
            }
        }
    }
    if options.proptest_cases.is_some() {
        let fuzz_option = [
            (options.seconds.is_some(), "--minutes"),
            (options.runs.is_some(), "--runs"),
            (!options.targets.is_empty(), "--target"),
        ];
        if let Some((_, option)) = fuzz_option.iter().find(|(given, _)| *given) {
            return Err(ArgError::Conflict {
                option,
                with: "--proptest-cases",
                why: "--proptest-cases runs the property tests instead of the fuzzers",
            });
        }
    } else if rounds_given {
        return Err(ArgError::Requires {
            option: "--proptest-rounds",
            needs: "--proptest-cases",
        });
    }
    Ok(options)
}

fn positive(v: &str, option: &'static str, expected: &'static str) -> Result<u64, ArgError> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ArgError::InvalidValue {
            option,
            value: v.to_owned(),
            expected,
        }),
    }
}

/// What one target's run reached, from libFuzzer's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inputs executed (`stat::number_of_executed_units`, else the last
    /// `#N` status line).
    pub executions: u64,
    /// Edges covered (`cov:` of the last status line).
    pub cov: u64,
    /// Features (`ft:`).
    pub ft: u64,
    /// Inputs in the corpus (`corp: N/...`).
    pub corpus: u64,
    /// Their total size as libFuzzer prints it (`corp: .../27Kb`).
    pub corpus_size: String,
    /// Why the run failed, if it did: libFuzzer's deadly signal, panic,
    /// timeout or out-of-memory line.
    pub crash: Option<String>,
    /// Where libFuzzer wrote the crashing input.
    pub artifact: Option<String>,
}

/// The number after `key` in `line` (`"cov: 12 ft: 30"`, `"cov:"` → 12).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let digits: String = line[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads what a libFuzzer run reached from its output (stderr).
pub fn parse_libfuzzer(output: &str) -> Stats {
    let mut s = Stats::default();
    let mut final_execs = None;
    for line in output.lines() {
        let line = line.trim_end();
        if line.starts_with('#') && line.contains(" cov: ") {
            // `#1234\tNEW    cov: 2029 ft: 6550 corp: 583/27Kb lim: ...`
            s.executions = number_after(line, "#").unwrap_or(s.executions);
            s.cov = number_after(line, "cov:").unwrap_or(s.cov);
            s.ft = number_after(line, "ft:").unwrap_or(s.ft);
            if let Some(corp) = line.split("corp: ").nth(1) {
                let corp = corp.split_whitespace().next().unwrap_or("");
                if let Some((n, size)) = corp.split_once('/') {
                    s.corpus = n.parse().unwrap_or(s.corpus);
                    s.corpus_size = size.to_owned();
                }
            }
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            final_execs = n.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            s.artifact = Some(rest.trim().to_owned());
        } else if s.crash.is_none() {
            let crash = line.contains("==ERROR: libFuzzer")
                || line.contains("deadly signal")
                || line.contains("panicked at")
                || line.starts_with("ALARM: working on the last Unit")
                || line.contains("out-of-memory");
            if crash {
                s.crash = Some(
                    line.trim_start_matches([
                        '=', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
                    ])
                    .trim()
                    .to_owned(),
                );
            }
        }
    }
    if let Some(n) = final_execs {
        s.executions = n;
    }
    s
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Target.
    pub target: &'static str,
    /// What it reached.
    pub stats: Stats,
    /// How long it ran (build included).
    pub duration: Duration,
    /// Whether the run ended badly (a crash, or libFuzzer or the build
    /// failed).
    pub failed: bool,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The summary table: one line per target.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12} {:>12} {:>7} {:>8} {:>16} {:>8} {:>10}\n",
        "target", "executions", "cov", "ft", "corpus", "crashes", "time"
    );
    for r in rows {
        let corpus = format!("{} ({})", r.stats.corpus, r.stats.corpus_size);
        out.push_str(&format!(
            "{:<12} {:>12} {:>7} {:>8} {:>16} {:>8} {:>10}\n",
            r.target,
            r.stats.executions,
            r.stats.cov,
            r.stats.ft,
            corpus,
            u8::from(r.failed),
            human(r.duration)
        ));
    }
    out
}

/// The fuzz directory.
fn fuzz_dir() -> PathBuf {
    workspace::root().join("fuzz")
}

/// A `cargo +nightly` command from the workspace root, without the
/// variables the stable cargo running `cargo qemu` set for its children
/// (they would pin the stable toolchain or its tools).
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace::root())
        .arg(format!("+{NIGHTLY}"));
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The `cargo +nightly fuzz run` command of `target` (module docs).
pub fn run_command(target: Target, options: &FuzzOptions) -> Command {
    let dir = fuzz_dir();
    let flavour = if target.trace_compares {
        "cmp"
    } else {
        "nocmp"
    };
    let mut cmd = nightly_cargo();
    cmd.args([
        "fuzz",
        "run",
        target.name,
        "--fuzz-dir",
        "fuzz",
        "--sanitizer",
        "none",
    ]);
    if !target.trace_compares {
        cmd.arg("--no-trace-compares");
    }
    cmd.arg("--target-dir")
        .arg(dir.join("target").join(flavour));
    cmd.arg(dir.join("work").join(target.name));
    cmd.arg(dir.join("corpus").join(target.name));
    cmd.arg("--");
    if let Some(s) = options.time_limit() {
        cmd.arg(format!("-max_total_time={s}"));
    }
    if let Some(n) = options.runs {
        cmd.arg(format!("-runs={n}"));
    }
    cmd.arg(format!("-timeout={INPUT_TIMEOUT_SECS}"));
    cmd.arg("-print_final_stats=1");
    cmd
}

/// Installs the nightly toolchain and cargo-fuzz when missing, saying so.
fn ensure_cargo_fuzz() -> Result<(), Failure> {
    let toolchains = process::stdout_of(Command::new("rustup").args(["toolchain", "list"]))
        .map_err(|e| {
            Failure::unavailable(format!(
                "cargo qemu fuzz needs rustup for a nightly toolchain: {e}"
            ))
        })?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        println!(
            "==> installing the {NIGHTLY} toolchain for cargo-fuzz (rustup toolchain install \
             {NIGHTLY} --profile minimal); the workspace stays on stable"
        );
        process::checked(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let have_fuzz = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_fuzz {
        println!("==> installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        let mut install = workspace::cargo(["install", "cargo-fuzz", "--locked"]);
        process::checked(&mut install)?;
    }
    Ok(())
}

/// Whether a libFuzzer or cargo line is worth echoing while a target runs
/// (the full output goes to the log): not the stream of `NEW`/`REDUCE`
/// events.
fn echoed(line: &str) -> bool {
    !(line.starts_with('#') && (line.contains("\tNEW ") || line.contains("\tREDUCE ")))
}

/// Runs one target, echoing its progress and logging all of it.
fn run_target(target: Target, options: &FuzzOptions) -> Result<Row, Failure> {
    let work = fuzz_dir().join("work");
    fs::create_dir_all(work.join(target.name))
        .map_err(|e| Failure::failed(format!("cannot create {}: {e}", work.display())))?;
    let log_path = work.join(format!("{}.log", target.name));
    let mut log = fs::File::create(&log_path)
        .map_err(|e| Failure::failed(format!("cannot create {}: {e}", log_path.display())))?;
    let mut cmd = run_command(target, options);
    println!();
    println!("==> fuzzing {}: {}", target.name, process::display(&cmd));
    println!("    (full output: {})", workspace::shown(&log_path));
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::failed(format!("cannot run `{}`: {e}", process::display(&cmd))))?;
    // libFuzzer writes everything to stderr; cargo-fuzz's stdout is
    // forwarded by a thread so that neither pipe fills up.
    let stdout = child.stdout.take().expect("piped stdout");
    let forward = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("    {line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut output = String::new();
    let stderr = child.stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let _ = writeln!(log, "{line}");
        if echoed(&line) {
            eprintln!("    {line}");
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = child
        .wait()
        .map_err(|e| Failure::failed(format!("waiting for `{}`: {e}", process::display(&cmd))))?;
    let out = forward.join().unwrap_or_default();
    let _ = write!(log, "{out}");
    let mut stats = parse_libfuzzer(&output);
    let failed = !status.success();
    if failed && stats.crash.is_none() {
        stats.crash = Some(format!("cargo fuzz failed ({})", process::describe(status)));
    }
    Ok(Row {
        target: target.name,
        stats,
        duration: start.elapsed(),
        failed,
    })
}

/// `cargo qemu fuzz`: fuzzes the selected targets (or runs the property
/// tests) and prints the summary; fails if any target crashed.
pub fn fuzz(options: &FuzzOptions) -> Result<(), Failure> {
    if let Some(cases) = options.proptest_cases {
        return proptests(cases, options.proptest_rounds);
    }
    ensure_cargo_fuzz()?;
    let mut rows = Vec::new();
    for target in options.selected() {
        rows.push(run_target(target, options)?);
    }
    println!();
    println!("fuzz summary ({}):", describe_limits(options));
    print!("{}", table(&rows));
    let failed: Vec<&Row> = rows.iter().filter(|r| r.failed).collect();
    for r in &failed {
        println!(
            "{}: {}",
            r.target,
            r.stats.crash.as_deref().unwrap_or("failed")
        );
        if let Some(a) = &r.stats.artifact {
            println!(
                "  reproduce: cargo +{NIGHTLY} fuzz run {} --fuzz-dir fuzz --sanitizer none {a}",
                r.target
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{} of {} fuzz target(s) crashed or failed",
            failed.len(),
            rows.len()
        )))
    }
}

fn describe_limits(options: &FuzzOptions) -> String {
    match (options.time_limit(), options.runs) {
        (Some(s), Some(n)) => format!("each target up to {s} s or {n} executions"),
        (Some(s), None) => format!("each target {s} s"),
        (None, Some(n)) => format!("each target {n} executions"),
        (None, None) => "no limit".to_owned(),
    }
}

/// The `cargo test` command of one property-test suite.
pub fn proptest_command(package: &str, test: &str, cases: u64) -> Command {
    let mut cmd = workspace::cargo(["test", "-p", package, "--test", test]);
    cmd.env("PROPTEST_CASES", cases.to_string());
    cmd
}

/// Runs every suite of [`PROPTEST_SUITES`] `rounds` times with
/// `PROPTEST_CASES=cases`, then a summary; fails if any run failed.
fn proptests(cases: u64, rounds: u32) -> Result<(), Failure> {
    let mut results: Vec<(String, bool, Duration)> = Vec::new();
    for round in 1..=rounds {
        for (package, test) in PROPTEST_SUITES {
            let mut cmd = proptest_command(package, test, cases);
            println!();
            println!(
                "==> [round {round}/{rounds}] PROPTEST_CASES={cases} {}",
                process::display(&cmd)
            );
            let start = Instant::now();
            let ok = process::status(&mut cmd)?.success();
            results.push((
                format!("round {round}: {package} {test}"),
                ok,
                start.elapsed(),
            ));
        }
    }
    println!();
    println!("proptest summary (PROPTEST_CASES={cases}, {rounds} round(s)):");
    for (name, ok, d) in &results {
        let state = if *ok { "ok    " } else { "FAILED" };
        println!("  {state} {name} ({})", human(*d));
    }
    let failed = results.iter().filter(|r| !r.1).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{failed} property-test run(s) failed"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cargo-fuzz binaries `fuzz/Cargo.toml` declares.
    fn declared_bins(manifest: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut in_bin = false;
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(v) = line.strip_prefix("name") {
                let v = v
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                names.push(v.to_owned());
            }
        }
        names
    }

    /// Whether `path` exists under the workspace root.
    fn in_workspace(path: &str) -> bool {
        workspace::root().join(path).exists()
    }

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn defaults_fuzz_every_target_briefly() {
        let o = parse(&[]).unwrap();
        assert_eq!(o, FuzzOptions::default());
        assert_eq!(o.selected(), TARGETS.to_vec());
        assert_eq!(o.time_limit(), Some(60));
    }

    #[test]
    fn minutes_runs_and_targets() {
        let o = parse(&args(&[
            "--minutes",
            "2.5",
            "--target=vm_layer",
            "--target",
            "host_call",
        ]))
        .unwrap();
        assert_eq!(o.time_limit(), Some(150));
        // In TARGETS order, whatever the order given.
        let names: Vec<_> = o.selected().iter().map(|t| t.name).collect();
        assert_eq!(names, ["host_call", "vm_layer"]);
        let o = parse(&args(&["--runs", "1000000"])).unwrap();
        assert_eq!((o.runs, o.time_limit()), (Some(1_000_000), None));
        let o = parse(&args(&["--runs=5", "--minutes=1"])).unwrap();
        assert_eq!((o.runs, o.time_limit()), (Some(5), Some(60)));
        let o = parse(&args(&["--minutes", "0.001"])).unwrap();
        assert_eq!(o.time_limit(), Some(1), "at least a second");
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            &["--minutes", "0"][..],
            &["--minutes", "-1"],
            &["--minutes", "soon"],
            &["--minutes", "NaN"],
            &["--runs", "0"],
            &["--target", "nope"],
            &["--proptest-cases", "0"],
            &["--proptest-cases", "10", "--proptest-rounds", "0"],
        ] {
            assert!(
                matches!(parse(&args(bad)), Err(ArgError::InvalidValue { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(&args(&["--minutes"])),
            Err(ArgError::MissingValue("--minutes"))
        );
        assert!(matches!(
            parse(&args(&["--jobs", "2"])),
            Err(ArgError::UnknownOption { .. })
        ));
        assert!(matches!(
            parse(&args(&["host_call"])),
            Err(ArgError::UnexpectedArgument { .. })
        ));
    }

    #[test]
    fn proptest_options() {
        let o = parse(&args(&[
            "--proptest-cases",
            "5000",
            "--proptest-rounds",
            "3",
        ]))
        .unwrap();
        assert_eq!((o.proptest_cases, o.proptest_rounds), (Some(5000), 3));
        assert_eq!(
            parse(&args(&["--proptest-rounds", "3"])),
            Err(ArgError::Requires {
                option: "--proptest-rounds",
                needs: "--proptest-cases"
            })
        );
        assert!(matches!(
            parse(&args(&["--proptest-cases", "9", "--target", "host_call"])),
            Err(ArgError::Conflict {
                option: "--target",
                ..
            })
        ));
        let cmd = proptest_command("el2", "prop", 9);
        assert_eq!(
            process::display(&cmd).split_once(' ').unwrap().1,
            "test -p el2 --test prop"
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            env,
            [(
                std::ffi::OsStr::new("PROPTEST_CASES"),
                Some(std::ffi::OsStr::new("9"))
            )]
        );
    }

    #[test]
    fn targets_match_the_cargo_fuzz_crate() {
        let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        let mut bins = declared_bins(&manifest);
        bins.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_owned()).collect();
        names.sort();
        assert_eq!(bins, names);
        for t in TARGETS {
            assert!(
                in_workspace(&format!("fuzz/corpus/{}", t.name)),
                "{}",
                t.name
            );
            assert!(
                in_workspace(&format!("fuzz/fuzz_targets/{}.rs", t.name)),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn proptest_suites_exist() {
        for (package, test) in PROPTEST_SUITES {
            // Each package lives in the directory of its name.
            let path = format!("{package}/tests/{test}.rs");
            assert!(in_workspace(&path), "{path}");
            let text = fs::read_to_string(workspace::root().join(&path)).unwrap();
            assert!(text.contains("proptest!"), "{path} has no proptest");
        }
    }

    #[test]
    fn run_command_flags() {
        let o = FuzzOptions {
            seconds: Some(180),
            runs: Some(77),
            ..FuzzOptions::default()
        };
        let sim = process::display(&run_command(TARGETS[0], &o));
        let fuzz = fuzz_dir();
        assert!(sim.starts_with("cargo +nightly fuzz run host_call --fuzz-dir fuzz --sanitizer none --no-trace-compares --target-dir "), "{sim}");
        assert!(
            sim.contains(&format!(
                "{} {} -- -max_total_time=180 -runs=77 -timeout=30 -print_final_stats=1",
                fuzz.join("work/host_call").display(),
                fuzz.join("corpus/host_call").display()
            )),
            "{sim}"
        );
        assert!(sim.contains(&fuzz.join("target/nocmp").display().to_string()));
        let parser = process::display(&run_command(TARGETS[4], &o));
        assert!(!parser.contains("--no-trace-compares"), "{parser}");
        assert!(parser.contains(&fuzz.join("target/cmp").display().to_string()));
        let cmd = run_command(TARGETS[0], &o);
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_owned())
            .collect();
        assert!(removed.iter().any(|k| k == "RUSTUP_TOOLCHAIN"));
    }

    const RUN: &str = "\
INFO: Seed: 3925784808
#2\tINITED cov: 1200 ft: 3000 corp: 29/1024b exec/s: 0 rss: 30Mb
#906\tNEW    cov: 1855 ft: 5227 corp: 304/11840b lim: 84 exec/s: 56 rss: 32Mb L: 20/84 MS: 1 ChangeByte-
#1048576\tpulse  cov: 2029 ft: 6550 corp: 583/27Kb lim: 84 exec/s: 192 rss: 33Mb
#1000000\tDONE   cov: 2031 ft: 6552 corp: 584/27Kb lim: 84 exec/s: 190 rss: 33Mb
Done 1000000 runs in 5263 second(s)
stat::number_of_executed_units: 1000000
stat::average_exec_per_sec:     190
";

    #[test]
    fn libfuzzer_output_is_read() {
        let s = parse_libfuzzer(RUN);
        assert_eq!(
            s,
            Stats {
                executions: 1_000_000,
                cov: 2031,
                ft: 6552,
                corpus: 584,
                corpus_size: "27Kb".to_owned(),
                crash: None,
                artifact: None,
            }
        );
        let crash = "\
#409\tNEW    cov: 3216 ft: 8540 corp: 193/5532b lim: 84 exec/s: 19 rss: 122Mb
thread '<unnamed>' (29421) panicked at el2/src/bootimg.rs:524:29:
attempt to add with overflow
==29421== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/fuzz/artifacts/boot_image/'; Test unit written to /w/fuzz/artifacts/boot_image/crash-65825
stat::number_of_executed_units: 2459
";
        let s = parse_libfuzzer(crash);
        assert_eq!(s.executions, 2459);
        assert_eq!(s.cov, 3216);
        assert_eq!(
            s.crash.as_deref(),
            Some("thread '<unnamed>' (29421) panicked at el2/src/bootimg.rs:524:29:")
        );
        assert_eq!(
            s.artifact.as_deref(),
            Some("/w/fuzz/artifacts/boot_image/crash-65825")
        );
        let hang = "ALARM: working on the last Unit for 31 seconds\n";
        assert!(parse_libfuzzer(hang).crash.unwrap().starts_with("ALARM"));
    }

    #[test]
    fn summary_table() {
        let rows = [Row {
            target: "host_call",
            stats: parse_libfuzzer(RUN),
            duration: Duration::from_secs(5263),
            failed: false,
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "host_call",
                "1000000",
                "2031",
                "6552",
                "584",
                "(27Kb)",
                "0",
                "1h27m43s"
            ]
        );
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(61)), "1m01s");
    }

    #[test]
    fn progress_lines() {
        assert!(!echoed("#906\tNEW    cov: 1855 ft: 5227"));
        assert!(!echoed("#907\tREDUCE cov: 1855 ft: 5227"));
        assert!(echoed("#1048576\tpulse  cov: 2029"));
        assert!(echoed("   Compiling el2 v0.1.0"));
    }
}
