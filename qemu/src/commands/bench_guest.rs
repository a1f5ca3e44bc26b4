//! `cargo qemu bench-guest`: what the test guest's hypervisor paths cost,
//! against the host's null HVC, with 2 MiB folios and with 4 KiB pages.
//!
//! The test host boots on the default machine (`cortex-a72`, 2 CPUs,
//! 1 GiB) with `--guest testguest --guest-append testguest.bench
//! --guest-mem 256M`, twice: once with guest memory in 2 MiB folios, once
//! with `--guest-small-pages`. In bench mode the test host prints
//!
//! ```text
//! testhost: bench host_hvc_null iters=<n> ticks=<t> hz=<f>
//! ```
//!
//! and the guest one line per figure of [`FIGURES`]:
//!
//! ```text
//! testguest: bench <name> iters=<n> ticks=<t> hz=<f>
//! ```
//!
//! where `ticks` is the counter ticks all `iters` iterations took and `hz`
//! the counter's frequency. The lines are found anywhere in a console line
//! (the VMM may prefix the guest's output, e.g. `guest: `). Each figure is
//! shown as ticks and nanoseconds per iteration and as a multiple of the
//! host's null HVC in the same boot; `touch_64m` (first touch of 64 MiB of
//! guest memory) is also compared across the two boots.

use std::collections::HashMap;
use std::time::Duration;

use crate::commands::bench::qemu_version;
use crate::commands::run::describe_exit;
use crate::failure::Failure;
use crate::process::{self, TempDir};
use crate::qemu::{self, Boot, Guest, Host, Machine};
use crate::workspace;

/// The guest's figures, in the order they are shown.
pub const FIGURES: [&str; 7] = [
    "hvc_null",
    "mmio_exit",
    "share_1",
    "unshare_1",
    "share_512",
    "unshare_512",
    "touch_64m",
];
/// The host's figure every guest figure is compared with.
pub const HOST_FIGURE: &str = "host_hvc_null";
/// What starts a guest figure's line (after any prefix).
pub const GUEST_LINE: &str = "testguest: bench ";
/// What starts the host's figure's line (after any prefix).
pub const HOST_LINE: &str = "testhost: bench ";
/// The guest command line that puts the test guest in bench mode.
pub const BENCH_APPEND: &str = "testguest.bench";
/// Guest RAM: room for `touch_64m` and the share figures beside the
/// guest's own image, stacks and tables.
pub const BENCH_GUEST_MEM: u64 = 256 << 20;
/// The figure compared between 2 MiB folios and 4 KiB pages.
const TOUCH: &str = "touch_64m";
/// Each boot is killed, and the benchmark fails, after this long.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Console lines shown when a boot fails.
const TAIL_LINES: usize = 60;

/// One figure: `iters` iterations took `ticks` ticks of a `hz` counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Iterations (at least 1).
    pub iters: u64,
    /// Counter ticks for all of them.
    pub ticks: u64,
    /// Counter frequency (positive, finite).
    pub hz: f64,
}

impl Sample {
    /// Mean ticks per iteration.
    pub fn ticks_per_iter(&self) -> f64 {
        self.ticks as f64 / self.iters as f64
    }

    /// Mean nanoseconds per iteration.
    pub fn ns_per_iter(&self) -> f64 {
        self.ticks_per_iter() * 1e9 / self.hz
    }
}

/// The figures of one boot.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRun {
    /// The host's null HVC.
    pub host_hvc_null: Sample,
    /// The guest's figures, in the order of [`FIGURES`].
    pub guest: [Sample; FIGURES.len()],
}

impl BenchRun {
    /// The guest's figure `name` (one of [`FIGURES`]).
    pub fn figure(&self, name: &str) -> Option<Sample> {
        let i = FIGURES.iter().position(|f| *f == name)?;
        Some(self.guest[i])
    }

    /// How many host null HVCs figure `sample` costs (time per iteration
    /// over the host's), so counters of different rates compare too.
    pub fn ratio(&self, sample: &Sample) -> f64 {
        sample.ns_per_iter() / self.host_hvc_null.ns_per_iter()
    }
}

/// Parses `iters=<n> ticks=<t> hz=<f>` (in any order; other `key=value`
/// words are ignored, so the lines can grow).
fn parse_sample(fields: &str) -> Result<Sample, String> {
    let mut iters = None;
    let mut ticks = None;
    let mut hz = None;
    for word in fields.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!("`{word}` is not key=value"));
        };
        let bad = || format!("bad {key} `{value}`");
        match key {
            "iters" => iters = Some(value.parse::<u64>().map_err(|_| bad())?),
            "ticks" => ticks = Some(value.parse::<u64>().map_err(|_| bad())?),
            "hz" => hz = Some(value.parse::<f64>().map_err(|_| bad())?),
            _ => {}
        }
    }
    let iters = iters.ok_or("no iters=")?;
    let ticks = ticks.ok_or("no ticks=")?;
    let hz = hz.ok_or("no hz=")?;
    if iters == 0 {
        return Err("iters=0".to_owned());
    }
    if !(hz.is_finite() && hz > 0.0) {
        return Err(format!("hz={hz} is not a positive frequency"));
    }
    Ok(Sample { iters, ticks, hz })
}

/// Finds the bench lines in a boot's console output. A figure printed more
/// than once counts by its last line; names outside [`FIGURES`] are
/// ignored. Fails, naming them, when a figure is missing or a bench line
/// of a known figure is malformed.
pub fn parse_bench(output: &str) -> Result<BenchRun, String> {
    let mut found: HashMap<&str, Sample> = HashMap::new();
    for line in output.lines() {
        let (rest, host) = if let Some(at) = line.find(GUEST_LINE) {
            (&line[at + GUEST_LINE.len()..], false)
        } else if let Some(at) = line.find(HOST_LINE) {
            (&line[at + HOST_LINE.len()..], true)
        } else {
            continue;
        };
        let (name, fields) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
        let known = if host {
            (name == HOST_FIGURE).then_some(HOST_FIGURE)
        } else {
            FIGURES.iter().copied().find(|f| *f == name)
        };
        let Some(name) = known else { continue };
        let sample =
            parse_sample(fields).map_err(|e| format!("malformed bench line {line:?}: {e}"))?;
        found.insert(name, sample);
    }
    let missing: Vec<String> = std::iter::once((HOST_LINE, HOST_FIGURE))
        .chain(FIGURES.iter().map(|f| (GUEST_LINE, *f)))
        .filter(|(_, name)| !found.contains_key(name))
        .map(|(prefix, name)| format!("`{prefix}{name}`"))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(format!(
            "no {} line{s} (followed by iters=<n> ticks=<t> hz=<f>)",
            missing.join(", ")
        ));
    }
    let get = |name: &str| found.get(name).copied().ok_or(format!("no {name} line"));
    let host_hvc_null = get(HOST_FIGURE)?;
    let mut guest = [host_hvc_null; FIGURES.len()];
    for (slot, name) in guest.iter_mut().zip(FIGURES) {
        *slot = get(name)?;
    }
    Ok(BenchRun {
        host_hvc_null,
        guest,
    })
}

/// The last `n` lines of `output`, for a failure message.
fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The table of both boots: per figure ticks and ns per iteration and the
/// multiple of the host's null HVC, then `touch_64m` across the boots.
pub fn table(folios: &BenchRun, pages: &BenchRun) -> String {
    let mut out = String::new();
    let col = |s: &Sample, run: &BenchRun| {
        format!(
            "{:>12.1} {:>12.1} {:>9.2}",
            s.ticks_per_iter(),
            s.ns_per_iter(),
            run.ratio(s)
        )
    };
    out.push_str(&format!(
        "{:<14} | {:^35} | {:^35}\n",
        "", "2 MiB folios", "4 KiB pages"
    ));
    let head = format!("{:>12} {:>12} {:>9}", "ticks/iter", "ns/iter", "x host");
    out.push_str(&format!("{:<14} | {head} | {head}\n", "figure"));
    let rows = std::iter::once((HOST_FIGURE, folios.host_hvc_null, pages.host_hvc_null)).chain(
        FIGURES
            .iter()
            .zip(folios.guest.iter().zip(&pages.guest))
            .map(|(name, (f, p))| (*name, *f, *p)),
    );
    for (name, f, p) in rows {
        out.push_str(&format!(
            "{name:<14} | {} | {}\n",
            col(&f, folios),
            col(&p, pages)
        ));
    }
    if let (Some(f), Some(p)) = (folios.figure(TOUCH), pages.figure(TOUCH)) {
        let (f_ms, p_ms) = (f.ns_per_iter() / 1e6, p.ns_per_iter() / 1e6);
        out.push_str(&format!(
            "{TOUCH}: 2 MiB folios {f_ms:.3} ms, 4 KiB pages {p_ms:.3} ms; \
             4 KiB pages / 2 MiB folios: {:.2}\n",
            p_ms / f_ms
        ));
    }
    out
}

/// Boots the test host with the bench guest twice (2 MiB folios, then
/// 4 KiB pages) and prints the figures.
pub fn bench_guest() -> Result<(), Failure> {
    let qemu_bin = qemu::ensure()?;
    let images = workspace::build_images()?;
    let machine = Machine::default();
    let scratch = TempDir::new()?;
    let cmdline = qemu::write_guest_cmdline(&scratch.path().join("guest-cmdline"), BENCH_APPEND)
        .map_err(Failure::failed)?;
    println!(
        "bench-guest: {}, -cpu {} -smp {} -m {}; test guest with {} MiB, 1 vCPU, \
         --guest-append {BENCH_APPEND}",
        qemu_version(&qemu_bin),
        machine.cpu,
        machine.smp,
        machine.mem,
        BENCH_GUEST_MEM >> 20
    );
    let mut runs = Vec::new();
    for (name, small_pages) in [("2 MiB folios", false), ("4 KiB pages", true)] {
        let boot = Boot {
            kernel: &images.el2,
            host: Host::InPlace(&images.testhost),
            append: None,
            dtb: None,
            machine: &machine,
            guest: Some(Guest {
                kernel: &images.testguest,
                initrd: None,
                cmdline: cmdline.as_deref(),
                mem: BENCH_GUEST_MEM,
                vcpus: 1,
                small_pages,
            }),
        };
        let mut cmd = qemu::boot_command(&qemu_bin, &boot).map_err(Failure::failed)?;
        println!("  {name}: {}", process::display(&cmd));
        let t = process::run_timed(&mut cmd, TIMEOUT, None, false)?;
        let fail = |why: String| {
            Failure::failed(format!(
                "bench-guest, {name}: {why}; the console's last lines:\n{}",
                tail(&t.output, TAIL_LINES)
            ))
        };
        if t.timed_out {
            return Err(fail(format!("timed out after {} s", TIMEOUT.as_secs())));
        }
        if !t.status.success() {
            let hint = t
                .status
                .code()
                .and_then(describe_exit)
                .map(|why| format!(" ({why})"))
                .unwrap_or_default();
            return Err(fail(format!(
                "QEMU {}{hint}, expected exit code 0",
                process::describe(t.status)
            )));
        }
        let run = parse_bench(&t.output).map_err(fail)?;
        println!("  {name}: {:.2} s", t.elapsed.as_secs_f64());
        runs.push(run);
    }
    let [folios, pages] = <[BenchRun; 2]>::try_from(runs)
        .map_err(|_| Failure::failed("bench-guest: expected two boots"))?;
    print!("{}", table(&folios, &pages));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bench boot's console as the test host and guest are asked to
    /// print it (the VMM prefixing the guest's lines with `guest: `).
    const SAMPLE: &str = "el2[0]: entering the host at EL1\r\n\
        testhost: started at EL1\r\n\
        testhost: bench host_hvc_null iters=1000 ticks=62500 hz=62500000\r\n\
        vmm: running testguest.bin, 1 vCPU(s), 256 MiB\r\n\
        guest: testguest: started\r\n\
        guest: testguest: bench hvc_null iters=1000 ticks=125000 hz=62500000\r\n\
        guest: testguest: bench mmio_exit iters=1000 ticks=250000 hz=62500000\r\n\
        guest: testguest: bench share_1 iters=100 ticks=12500 hz=62500000\r\n\
        guest: testguest: bench unshare_1 iters=100 ticks=12500 hz=62500000\r\n\
        guest: testguest: bench share_512 iters=10 ticks=62500 hz=62500000\r\n\
        guest: testguest: bench unshare_512 iters=10 ticks=62500 hz=62500000\r\n\
        guest: testguest: bench touch_64m iters=1 ticks=625000 hz=62500000.0\r\n\
        vmm: guest powered off\r\n";

    #[test]
    fn bench_lines_parse() {
        let run = parse_bench(SAMPLE).unwrap();
        assert_eq!(
            run.host_hvc_null,
            Sample {
                iters: 1000,
                ticks: 62500,
                hz: 62_500_000.0
            }
        );
        // 62.5 ticks at 62.5 MHz: 1 us per host null HVC.
        assert_eq!(run.host_hvc_null.ticks_per_iter(), 62.5);
        assert!((run.host_hvc_null.ns_per_iter() - 1000.0).abs() < 1e-9);
        let hvc = run.figure("hvc_null").unwrap();
        assert_eq!(hvc.ticks_per_iter(), 125.0);
        assert!((run.ratio(&hvc) - 2.0).abs() < 1e-9);
        let touch = run.figure("touch_64m").unwrap();
        assert!((touch.ns_per_iter() - 10_000_000.0).abs() < 1e-3);
        assert_eq!(run.figure("share_512").unwrap().ticks_per_iter(), 6250.0);
        assert_eq!(run.figure("nope"), None);
    }

    #[test]
    fn bench_lines_last_wins_unknown_ignored_any_order() {
        let more = format!(
            "{SAMPLE}testguest: bench hvc_null hz=1000 ticks=30 iters=3 extra=1\n\
             testguest: bench new_figure iters=x\ntesthost: bench other iters=x\n"
        );
        let run = parse_bench(&more).unwrap();
        let hvc = run.figure("hvc_null").unwrap();
        assert_eq!(
            hvc,
            Sample {
                iters: 3,
                ticks: 30,
                hz: 1000.0
            }
        );
        assert!((hvc.ns_per_iter() - 10_000_000.0).abs() < 1e-3);
    }

    #[test]
    fn missing_or_malformed_lines_fail_clearly() {
        let no_touch: String = SAMPLE
            .lines()
            .filter(|l| !l.contains("touch_64m"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = parse_bench(&no_touch).unwrap_err();
        assert_eq!(
            e,
            "no `testguest: bench touch_64m` line (followed by iters=<n> ticks=<t> hz=<f>)"
        );
        let e = parse_bench("testguest: started\n").unwrap_err();
        assert!(
            e.starts_with("no `testhost: bench host_hvc_null`, `testguest: bench hvc_null`, "),
            "{e}"
        );
        assert!(
            e.contains("`testguest: bench touch_64m` lines (followed by"),
            "{e}"
        );
        for (bad, why) in [
            ("iters=0 ticks=1 hz=1", "iters=0"),
            ("iters=1 ticks=1 hz=0", "not a positive frequency"),
            ("iters=1 ticks=1 hz=inf", "not a positive frequency"),
            ("iters=1 ticks=-1 hz=1", "bad ticks"),
            ("iters=1 ticks=1", "no hz="),
            ("iters=1 hz=1", "no ticks="),
            ("ticks=1 hz=1", "no iters="),
            ("iters=1 ticks=1 hz=1 junk", "not key=value"),
            ("", "no iters="),
        ] {
            let out = format!("{SAMPLE}guest: testguest: bench mmio_exit {bad}\n");
            let e = parse_bench(&out).unwrap_err();
            assert!(e.starts_with("malformed bench line"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_shows_every_figure_and_the_touch_ratio() {
        let folios = parse_bench(SAMPLE).unwrap();
        let pages = parse_bench(&SAMPLE.replace(
            "touch_64m iters=1 ticks=625000",
            "touch_64m iters=1 ticks=2500000",
        ))
        .unwrap();
        let t = table(&folios, &pages);
        for name in std::iter::once(HOST_FIGURE).chain(FIGURES) {
            assert!(
                t.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name}:\n{t}"
            );
        }
        assert!(t.contains("2 MiB folios"), "{t}");
        let hvc = t.lines().find(|l| l.starts_with("hvc_null ")).unwrap();
        assert!(hvc.contains("125.0") && hvc.contains("2000.0") && hvc.contains("2.00"));
        assert!(
            t.contains(
                "touch_64m: 2 MiB folios 10.000 ms, 4 KiB pages 40.000 ms; \
                 4 KiB pages / 2 MiB folios: 4.00"
            ),
            "{t}"
        );
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
