//! `cargo qemu bench-guest-boot`: the pKVM Linux guest's boot time as the
//! only OS on the machine against as a protected guest under el2.
//!
//! The guest kernel and initramfs of `cargo qemu guest-kernel` boot
//! [`RUNS`] times each way, interleaved (direct, el2, direct, el2, ...):
//!
//! - direct: QEMU loads the kernel (`-machine virt,gic-version=3,its=on
//!   -cpu cortex-a72 -m 256M -smp 2 -kernel Image -initrd initramfs.cpio
//!   -append 'console=ttyAMA0 panic=-1'`) and starts it at EL1, no EL2;
//! - under el2: the default machine (`virtualization=on`, 2 CPUs, 1 GiB)
//!   boots el2 and the test host, whose VMM runs the same kernel and
//!   initramfs as a protected guest with 256 MiB and 2 vCPUs
//!   (`cargo qemu run --guest Image --guest-initrd initramfs.cpio
//!   --guest-append 'console=ttyAMA0 panic=-1' --guest-smp 2 --guest-mem
//!   256M`).
//!
//! The time of a run is wall clock from spawning QEMU to the guest init's
//! [`GUEST_MARKER`] line on the console; every run must also exit with
//! status 0 (init powers off). For the el2 runs the console also tells
//! when the test host's VMM started ([`VMM_START`]) and when the guest
//! kernel turned its MMIO guard on ([`GUARD`], el2's line, early in the
//! kernel's boot: the GIC's first ioremap), and the VMM's exit counts
//! (`vmm: exits: ...`, [`host_interface::vmm::stats`]) say where the time
//! goes: exits per second by kind over the VMM's run.

use std::time::Duration;

use host_interface::vmm::stats::{EXITS_PREFIX, ParsedExits, parse_exits};

use crate::commands::bench::{median, qemu_version};
use crate::failure::Failure;
use crate::linux::guest_kernel::{self, GUEST_CMDLINE, GUEST_MARKER};
use crate::process::{self, TempDir};
use crate::qemu::{self, Boot, Guest, Host, Machine};
use crate::workspace;

/// Runs of each kind.
pub const RUNS: usize = 5;
/// Each boot is killed, and the benchmark fails, after this long.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Guest RAM, both ways.
pub const GUEST_MEM: u64 = 256 << 20;
/// CPUs of the direct boot, vCPUs of the guest.
pub const CPUS: u32 = 2;
/// The test host's line when its VMM starts.
pub const VMM_START: &str = "testhost: running a guest as a VMM";
/// el2's line when the guest turns its MMIO guard on.
pub const GUARD: &str = "MMIO guard on";

/// One boot under el2.
#[derive(Debug, Clone, PartialEq)]
pub struct El2Run {
    /// Seconds to the guest's [`GUEST_MARKER`].
    pub to_marker: f64,
    /// Seconds to the VMM's start, if it showed.
    pub vmm_start: Option<f64>,
    /// Seconds to el2's MMIO guard line, if it showed.
    pub guard: Option<f64>,
    /// The VMM's exit counts (with the run's time).
    pub exits: ParsedExits,
}

/// One kind of exit over the el2 runs: medians.
#[derive(Debug, Clone, PartialEq)]
pub struct KindRow {
    /// The kind's name on the exits line.
    pub name: String,
    /// Median count per run.
    pub count: f64,
    /// Median exits per second of the VMM's run.
    pub per_second: f64,
    /// Median share of all exits, in percent.
    pub share: f64,
}

/// The exits line of an el2 run's `output`, which must carry the run's
/// time.
pub fn exits_of(output: &str) -> Result<ParsedExits, String> {
    let e = parse_exits(output).ok_or(format!("no `{EXITS_PREFIX}...` line"))?;
    match e.time {
        Some((ms, _)) if ms > 0 => Ok(e),
        _ => Err(format!(
            "the `{EXITS_PREFIX}...` line has no run time (`in <ms> ms`)"
        )),
    }
}

/// Per kind (in the exits line's order), the medians over `runs`, then a
/// `total` row.
pub fn kinds(runs: &[ParsedExits]) -> Vec<KindRow> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let names = first
        .counts
        .iter()
        .map(|(n, _)| n.clone())
        .chain(std::iter::once("total".to_owned()));
    names
        .map(|name| {
            let mut counts = Vec::new();
            let mut rates = Vec::new();
            let mut shares = Vec::new();
            for r in runs {
                let count = if name == "total" {
                    Some(r.total)
                } else {
                    r.count(&name)
                };
                let Some(count) = count else { continue };
                let ms = r.time.map_or(0, |(ms, _)| ms);
                counts.push(count as f64);
                rates.push(if ms == 0 {
                    f64::NAN
                } else {
                    count as f64 * 1000.0 / ms as f64
                });
                shares.push(if r.total == 0 {
                    0.0
                } else {
                    100.0 * count as f64 / r.total as f64
                });
            }
            KindRow {
                name,
                count: median(&counts),
                per_second: median(&rates),
                share: median(&shares),
            }
        })
        .collect()
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}"))
}

/// The results: one row per run pair, the medians and the ratio, then
/// where the el2 runs' time goes.
pub fn table(direct: &[f64], el2: &[El2Run]) -> String {
    let mut out = String::new();
    out.push_str(
        "| run | direct EL1 (s) | under el2 (s) | el2: VMM starts (s) | el2: guest's MMIO guard \
         (s) | el2: VMM run (ms) | el2: exits |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    let rows = direct.len().max(el2.len());
    for i in 0..rows {
        let d = direct.get(i).copied();
        let e = el2.get(i);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            secs(d),
            secs(e.map(|e| e.to_marker)),
            secs(e.and_then(|e| e.vmm_start)),
            secs(e.and_then(|e| e.guard)),
            e.and_then(|e| e.exits.time)
                .map_or_else(|| "-".to_owned(), |(ms, _)| ms.to_string()),
            e.map_or_else(|| "-".to_owned(), |e| e.exits.total.to_string()),
        ));
    }
    let md = median(direct);
    let mu = median(&el2.iter().map(|e| e.to_marker).collect::<Vec<_>>());
    let opt_median = |f: &dyn Fn(&El2Run) -> Option<f64>| {
        let v: Vec<f64> = el2.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let run_ms = opt_median(&|e| e.exits.time.map(|(ms, _)| ms as f64));
    let total = opt_median(&|e| Some(e.exits.total as f64));
    out.push_str(&format!(
        "| **median** | **{md:.3}** | **{mu:.3}** | {} | {} | {} | {} |\n",
        secs(opt_median(&|e| e.vmm_start)),
        secs(opt_median(&|e| e.guard)),
        run_ms.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
        total.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
    ));
    out.push_str(&format!(
        "\nratio under el2 / direct (time to {GUEST_MARKER}): {:.2}\n",
        mu / md
    ));
    let rows = kinds(&el2.iter().map(|e| e.exits.clone()).collect::<Vec<_>>());
    if !rows.is_empty() {
        out.push_str(
            "\nwhere the el2 runs' time goes: the VMM's exits over its whole run (guest boot to \
             power-off), medians\n",
        );
        out.push_str("| exit kind | per run | per second | share of exits |\n");
        out.push_str("|---|---|---|---|\n");
        for r in rows {
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.1}% |\n",
                r.name, r.count, r.per_second, r.share
            ));
        }
    }
    out
}

/// Boots each way [`RUNS`] times, interleaved, and prints each run, the
/// table and the ratio.
pub fn bench_guest_boot() -> Result<(), Failure> {
    let qemu_bin = qemu::ensure()?;
    let images = workspace::build_images()?;
    let g = guest_kernel::ensure()?;
    let el2_machine = Machine::default();
    let direct_machine = Machine {
        mem: format!("{}M", GUEST_MEM >> 20),
        smp: CPUS,
        ..Machine::default()
    };
    let scratch = TempDir::new()?;
    let cmdline = qemu::write_guest_cmdline(&scratch.path().join("guest-cmdline"), GUEST_CMDLINE)
        .map_err(Failure::failed)?;
    println!(
        "bench-guest-boot: {}; guest kernel {} {} ({}); {RUNS} runs each, interleaved; time = \
         QEMU spawn to {GUEST_MARKER:?} on the console",
        qemu_version(&qemu_bin),
        guest_kernel::SOURCE_PACKAGE,
        g.source_version,
        g.key
    );
    let direct_args = qemu::direct_args(&direct_machine, &g.image, &g.initramfs, GUEST_CMDLINE);
    let el2_boot = Boot {
        kernel: &images.el2,
        host: Host::InPlace(&images.testhost),
        append: None,
        dtb: None,
        machine: &el2_machine,
        guest: Some(Guest {
            kernel: &g.image,
            initrd: Some(&g.initramfs),
            cmdline: cmdline.as_deref(),
            mem: GUEST_MEM,
            vcpus: CPUS,
            small_pages: false,
        }),
    };
    let el2_args = qemu::boot_args(&el2_boot).map_err(Failure::failed)?;
    let mut direct = Vec::new();
    let mut el2 = Vec::new();
    for i in 1..=RUNS {
        for (name, args) in [("direct EL1", &direct_args), ("under el2", &el2_args)] {
            let mut cmd = std::process::Command::new(&qemu_bin);
            cmd.args(args);
            if i == 1 {
                println!("  {name}: {}", process::display(&cmd));
            }
            let under = name == "under el2";
            let markers: &[&str] = if under {
                &[GUEST_MARKER, VMM_START, GUARD]
            } else {
                &[GUEST_MARKER]
            };
            let t = process::run_scripted(&mut cmd, TIMEOUT, markers, false, &[])?;
            let fail = |why: String| {
                Failure::failed(format!(
                    "{name} run {i}: {why} (exit: {}, timed out: {}); output:\n{}",
                    process::describe(t.status),
                    t.timed_out,
                    t.output
                ))
            };
            let Some(at) = t.marker_at else {
                return Err(fail(format!("no {GUEST_MARKER}")));
            };
            if !t.status.success() {
                return Err(fail("QEMU did not exit with status 0".to_owned()));
            }
            let secs_at = |k: usize| t.markers_at.get(k).copied().flatten();
            let to_marker = at.as_secs_f64();
            let mut extra = String::new();
            if under {
                let exits = exits_of(&t.output).map_err(fail)?;
                let run = El2Run {
                    to_marker,
                    vmm_start: secs_at(1).map(|d| d.as_secs_f64()),
                    guard: secs_at(2).map(|d| d.as_secs_f64()),
                    exits,
                };
                let (ms, rate) = run.exits.time.unwrap_or_default();
                extra = format!(
                    " (VMM starts at {} s, guest's MMIO guard at {} s; VMM run {ms} ms, {} \
                     exits, {rate}/s)",
                    secs(run.vmm_start),
                    secs(run.guard),
                    run.exits.total
                );
                el2.push(run);
            } else {
                direct.push(to_marker);
            }
            println!(
                "  run {i} {name:<10}: {to_marker:.3} s to the marker, {:.3} s to exit{extra}",
                t.elapsed.as_secs_f64()
            );
        }
    }
    println!();
    print!("{}", table(&direct, &el2));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exits_line(uart: u64, wfi: u64, ms: u64) -> String {
        let total = uart + wfi + 100;
        format!(
            "vmm: guest powered off\r\n{EXITS_PREFIX}mmio-uart {uart}, wfi {wfi}, interrupted \
             100, total {total} in {ms} ms ({}/s)\r\n",
            total * 1000 / ms
        )
    }

    #[test]
    fn exits_lines_need_their_time() {
        let e = exits_of(&exits_line(1000, 900, 2000)).unwrap();
        assert_eq!(e.total, 2000);
        assert_eq!(e.time, Some((2000, 1000)));
        assert!(
            exits_of("nothing")
                .unwrap_err()
                .contains("no `vmm: exits: ")
        );
        assert!(
            exits_of("vmm: exits: wfi 3, total 3")
                .unwrap_err()
                .contains("no run time")
        );
        assert!(exits_of("vmm: exits: wfi 3, total 3 in 0 ms (0/s)").is_err());
    }

    #[test]
    fn kinds_are_medians_per_second_and_shares() {
        let runs: Vec<ParsedExits> = [(1000, 900, 2000), (3000, 100, 1000), (2000, 1900, 4000)]
            .iter()
            .map(|&(u, w, ms)| exits_of(&exits_line(u, w, ms)).unwrap())
            .collect();
        let rows = kinds(&runs);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mmio-uart", "wfi", "interrupted", "total"]);
        let uart = &rows[0];
        assert_eq!(uart.count, 2000.0);
        // 500/s, 3000/s, 500/s.
        assert_eq!(uart.per_second, 500.0);
        // 50%, ~94%, 50%.
        assert_eq!(uart.share, 50.0);
        let total = &rows[3];
        assert_eq!(total.count, 3200.0);
        assert_eq!(total.share, 100.0);
        assert!(kinds(&[]).is_empty());
    }

    #[test]
    fn the_table_has_every_run_the_medians_and_the_kinds() {
        let run = |to_marker: f64, uart: u64| El2Run {
            to_marker,
            vmm_start: Some(0.05),
            guard: Some(0.4),
            exits: exits_of(&exits_line(uart, 500, 2500)).unwrap(),
        };
        let t = table(
            &[1.0, 1.2, 1.1],
            &[run(2.0, 100), run(2.4, 300), run(2.2, 200)],
        );
        assert!(
            t.contains("| 1 | 1.000 | 2.000 | 0.050 | 0.400 | 2500 | 700 |"),
            "{t}"
        );
        assert!(
            t.contains("| **median** | **1.100** | **2.200** | 0.050 | 0.400 | 2500 | 800 |"),
            "{t}"
        );
        assert!(
            t.contains("ratio under el2 / direct (time to GUEST-USERSPACE-OK): 2.00"),
            "{t}"
        );
        assert!(t.contains("| mmio-uart | 200 | 80 | 25.0% |"), "{t}");
        assert!(t.contains("| total | 800 | 320 | 100.0% |"), "{t}");
        // A run without the optional markers shows dashes.
        let bare = El2Run {
            vmm_start: None,
            guard: None,
            ..run(2.0, 1)
        };
        let t = table(&[1.0], &[bare]);
        assert!(
            t.contains("| 1 | 1.000 | 2.000 | - | - | 2500 | 601 |"),
            "{t}"
        );
    }
}
