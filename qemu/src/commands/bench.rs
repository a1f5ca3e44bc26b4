//! `cargo qemu bench-boot`: Linux boot time directly at EL1 against under
//! el2.
//!
//! The same Debian kernel and initramfs (`cargo qemu linux-images`) boot
//! [`RUNS`] times each way, interleaved (direct, el2, direct, el2, ...), on
//! the default machine (`cortex-a72`, 2 CPUs, 1 GiB):
//!
//! - direct: QEMU loads the kernel (`-kernel Image -initrd initramfs.cpio`)
//!   and starts it at EL1 (no `virtualization=on`);
//! - el2: QEMU starts el2 at EL2, which loads the kernel and initrd from
//!   the header v4 boot image and enters it at EL1 under stage-2.
//!
//! The time of a run is wall clock from spawning QEMU to the init's
//! [`MARKER`] line on the console. Every run must also end with exit
//! status 0 (init powers off). Under el2 each run also reports el2's
//! residency: the counter ticks el2 spent in the host's traps (and in its
//! own boot) as a share of the time from its entry to the host's
//! SYSTEM_OFF, from el2's own `residency at SYSTEM_OFF` line — the figure
//! that carries over to hardware, unlike TCG's wall clock.

use std::path::Path;
use std::time::Duration;

use crate::failure::Failure;
use crate::linux::{self, MARKER};
use crate::process;
use crate::qemu::{self, Boot, Host, Machine};
use crate::workspace;

/// How el2 maps the host's RAM in `bench-boot` (`--host-map`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostMap {
    /// el2's default: the largest blocks.
    Blocks,
    /// `el2.host_map=pages`: 4 KiB pages only.
    Pages,
}

impl HostMap {
    /// The el2 boot option (`-append`) that selects it, if any.
    pub fn el2_option(self) -> Option<&'static str> {
        match self {
            HostMap::Blocks => None,
            HostMap::Pages => Some("el2.host_map=pages"),
        }
    }
}

/// Runs of each kind.
pub const RUNS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(120);

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The first line of `qemu --version` (e.g. `QEMU emulator version
/// 7.2.22 (Debian ...)`), for a benchmark's heading; empty if QEMU cannot
/// say.
pub fn qemu_version(qemu_bin: &Path) -> String {
    process::stdout_of(std::process::Command::new(qemu_bin).arg("--version"))
        .map(|v| v.lines().next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// A number after `key` in `output` (e.g. el2's `boot took 28000 us`).
fn number_after(output: &str, key: &str) -> Option<u64> {
    let at = output.find(key)? + key.len();
    let digits: String = output[at..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The host stage-2's table pages from el2's `host stage-2: ... N table
/// pages` line.
fn host_table_pages(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.contains("host stage-2:"))?;
    let before = &line[..line.find(" table pages")?];
    before.rsplit(' ').next()?.parse().ok()
}

/// Boots each way [`RUNS`] times, interleaved, and prints each run, the
/// medians and their ratio; el2 maps the host's RAM as `host_map` says.
pub fn bench_boot(host_map: HostMap) -> Result<(), Failure> {
    let qemu_bin = qemu::ensure()?;
    let images = workspace::build_images()?;
    let l = linux::ensure()?;
    let machine = Machine::default();
    let version = qemu_version(&qemu_bin);
    println!(
        "bench-boot: {} ({}), -cpu {} -smp {} -m {}, {RUNS} runs each, interleaved; \
         time = QEMU spawn to {MARKER:?} on the console",
        l.kernel_package, version, machine.cpu, machine.smp, machine.mem
    );
    println!(
        "  el2 maps the host's RAM with {}",
        match host_map {
            HostMap::Blocks => "the largest blocks (its default; --host-map pages for 4 KiB pages)",
            HostMap::Pages =>
                "4 KiB pages only (el2.host_map=pages: TCG-friendly, not for hardware; \
                 costs a level-3 table per 2 MiB of RAM and 4 KiB TLB reach)",
        }
    );
    let direct_args = qemu::direct_args(
        &machine,
        &l.kernel,
        &l.initramfs,
        &linux::cmdline_for("direct"),
    );
    let el2_boot = Boot {
        kernel: &images.el2,
        host: Host::Android {
            boot: &l.boot_v4,
            vendor: None,
        },
        append: host_map.el2_option(),
        dtb: None,
        machine: &machine,
        guest: None,
    };
    let el2_args = qemu::boot_args(&el2_boot).map_err(Failure::failed)?;
    let mut direct = Vec::new();
    let mut under = Vec::new();
    let mut el2_boot_us = Vec::new();
    let mut shares = Vec::new();
    let mut trap_shares = Vec::new();
    let mut table_pages = None;
    for i in 1..=RUNS {
        for (name, args) in [("direct EL1", &direct_args), ("under el2", &el2_args)] {
            let mut cmd = std::process::Command::new(&qemu_bin);
            cmd.args(args);
            if i == 1 {
                println!("  {name}: {}", process::display(&cmd));
            }
            let t = process::run_timed(&mut cmd, TIMEOUT, Some(MARKER), false)?;
            let Some(at) = t.marker_at else {
                return Err(Failure::failed(format!(
                    "{name} run {i}: no {MARKER} (exit: {}, timed out: {}); output:\n{}",
                    process::describe(t.status),
                    t.timed_out,
                    t.output
                )));
            };
            if !t.status.success() {
                return Err(Failure::failed(format!(
                    "{name} run {i}: QEMU {}; output:\n{}",
                    process::describe(t.status),
                    t.output
                )));
            }
            let secs = at.as_secs_f64();
            let mut extra = String::new();
            if name == "under el2" {
                under.push(secs);
                table_pages = table_pages.or(host_table_pages(&t.output));
                if let Some(us) = number_after(&t.output, "boot took") {
                    el2_boot_us.push(us as f64);
                    let copy = number_after_last(&t.output, "bytes), in")
                        .map_or(f64::NAN, |c| c as f64 / 1000.0);
                    let kernel = if t.output.contains("host kernel in place at") {
                        "kernel booted in place, initrd copied"
                    } else {
                        "kernel and initrd copied"
                    };
                    extra = format!(
                        " (el2 boot {:.1} ms, of which {kernel} in {copy:.1} ms",
                        us as f64 / 1000.0
                    );
                }
                match residency(&t.output) {
                    Some(r) => {
                        extra.push_str(&format!(
                            "; el2 residency {:.3}% in {} traps, {:.3}% with its boot)",
                            r.traps_share() * 100.0,
                            r.traps,
                            r.share() * 100.0
                        ));
                        shares.push(r.share());
                        trap_shares.push(r.traps_share());
                    }
                    None => extra.push(')'),
                }
            } else {
                direct.push(secs);
            }
            println!(
                "  run {i} {name:<10}: {secs:.3} s to the marker, {:.3} s to exit{extra}",
                t.elapsed.as_secs_f64()
            );
        }
    }
    let (md, mu) = (median(&direct), median(&under));
    println!("median direct EL1: {md:.3} s");
    println!("median under el2:  {mu:.3} s");
    if !el2_boot_us.is_empty() {
        println!(
            "median el2 boot (entry to host entry, incl. the kernel copy): {:.1} ms",
            median(&el2_boot_us) / 1000.0
        );
    }
    if !shares.is_empty() {
        println!(
            "median el2 residency (counter ticks at EL2 / time from el2 entry to the host's \
             SYSTEM_OFF, all CPUs' traps over one CPU's time): {:.3}% in the host's traps, \
             {:.3}% with el2's boot (target: at most 2%)",
            median(&trap_shares) * 100.0,
            median(&shares) * 100.0
        );
    }
    if let Some(n) = table_pages {
        println!(
            "host stage-2 at boot: {n} table pages ({} KiB of el2's heap)",
            n * 4
        );
    }
    println!(
        "ratio under el2 / direct: {:.3} (target: at most 1.05)",
        mu / md
    );
    Ok(())
}

/// el2's `residency at SYSTEM_OFF` line, parsed.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Residency {
    /// Microseconds in the host's traps (all CPUs, vCPU runs excluded).
    pub traps_us: u64,
    /// Host traps taken.
    pub traps: u64,
    /// el2's own boot, entry to the host's first instruction.
    pub boot_us: u64,
    /// From el2's entry to the host's SYSTEM_OFF.
    pub span_us: u64,
}

impl Residency {
    /// The traps' share of the span.
    pub fn traps_share(&self) -> f64 {
        self.traps_us as f64 / self.span_us.max(1) as f64
    }

    /// The traps' and el2's boot's share of the span.
    pub fn share(&self) -> f64 {
        (self.traps_us + self.boot_us) as f64 / self.span_us.max(1) as f64
    }
}

/// Reads el2's `residency at SYSTEM_OFF: <us> us in <n> host traps over
/// <s>.<us> s since el2 entry (...; boot <us> us, ...` line.
pub fn residency(output: &str) -> Option<Residency> {
    let at = output.rfind("residency at SYSTEM_OFF:")?;
    let line = output[at..].lines().next()?;
    let traps_us = number_after(line, "SYSTEM_OFF:")?;
    let traps = number_after(line, "us in")?;
    let secs = number_after(line, "over")?;
    let frac_at = line.find(" over ")? + " over ".len();
    let frac: String = line[frac_at..]
        .split_once('.')?
        .1
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let boot_us = number_after(line, "boot")?;
    Some(Residency {
        traps_us,
        traps,
        boot_us,
        span_us: secs * 1_000_000 + micros,
    })
}

/// The number after the last `key` in `output`.
fn number_after_last(output: &str, key: &str) -> Option<u64> {
    let at = output.rfind(key)?;
    number_after(&output[at..], key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_table_pages_are_read() {
        let out = "[el2 I] host stage-2: 40-bit IPA, VMID 0, VTCR_EL2 0x80023558, root \
                   0x7e0f0000, 519 table pages, 0 blocks 1G / 3 blocks 2M / 261632 pages 4K; \
                   4 MMIO regions; RAM mapped with 4 KiB pages only\n";
        assert_eq!(host_table_pages(out), Some(519));
        assert_eq!(host_table_pages("no such line"), None);
        assert_eq!(HostMap::Blocks.el2_option(), None);
        assert_eq!(HostMap::Pages.el2_option(), Some("el2.host_map=pages"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn residency_lines_are_read() {
        let out = "el2[0]: booting\r\n\
                   el2[1]: residency at SYSTEM_OFF: 3021 us in 2210 host traps over 4.812003 s \
                   since el2 entry (0.062%; boot 31204 us, 0.648%; with boot 0.711%): host \
                   calls 0 (0 us), vCPU runs 0 (0 us)\r\nnext line";
        let r = residency(out).unwrap();
        assert_eq!(
            r,
            Residency {
                traps_us: 3021,
                traps: 2210,
                boot_us: 31204,
                span_us: 4_812_003,
            }
        );
        assert!((r.share() - (3021.0 + 31204.0) / 4_812_003.0).abs() < 1e-12);
        assert!((r.traps_share() - 3021.0 / 4_812_003.0).abs() < 1e-12);
        assert_eq!(residency("el2: no such line"), None);
    }

    #[test]
    fn numbers_are_found() {
        let out = "el2[0]: heap: 1 KiB; boot took 28123 us (el2 entry at 5 us)\n\
                   host kernel copied to 0x40400000 (0x2010000 bytes), in 812 us;";
        assert_eq!(number_after(out, "boot took"), Some(28123));
        assert_eq!(number_after_last(out, "bytes), in"), Some(812));
        assert_eq!(number_after(out, "missing"), None);
    }
}
