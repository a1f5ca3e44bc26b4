//! What a run did, counted: the vCPU exits the VMM served, by kind, and the
//! conversions the guest asked for. [`super::log_report`] prints them as
//! two lines after the outcome line, and [`parse_conversions`] and
//! [`parse_exits`] read them back (the runner's tests and benchmarks do):
//!
//! ```text
//! vmm: conversions: <n> to shared (<pages> pages), <m> to private (<pages> pages), <r> refused
//! vmm: exits: mmio-uart <c>, mmio-testdev <c>, mmio-unbacked <c>, memory-fault <c>, relinquished <c>, wfi <c>, interrupted <c>, hypercall <c>, powered-off <c>, system-event <c>, stopped <c>, total <t> in <ms> ms (<per second>/s)
//! ```
//!
//! - A conversion counts once per memory-fault exit, with the pages it
//!   covered (its size in 4 KiB pages, rounded up). `<r>` counts the
//!   requests the VMM did not carry out: refused (the range is not inside
//!   guest RAM) or failed (the guest_memfd conversion returned an error);
//!   the guest's call then fails.
//! - Every exit of [`crate::vm::Vcpu::run`] counts once under its kind
//!   ([`ExitKind`]); MMIO exits count under the device they reached. Every
//!   kind is always shown, in [`KINDS`]'s order.
//! - ` in <ms> ms (<per second>/s)`: the wall-clock time of
//!   [`super::Vmm::run`] and the exits per second over it, when the host
//!   has a clock ([`super::VmmHost::now_ns`]); without one the line ends
//!   after the total.

use core::fmt;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::gmem::PAGE;

/// What a vCPU exit was, as counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum ExitKind {
    /// An MMIO access to the PL011.
    MmioUart,
    /// An MMIO access to the test device.
    MmioTestdev,
    /// An MMIO access where no device is (read 0, write dropped).
    MmioUnbacked,
    /// A conversion the guest asked for (MEM_SHARE, MEM_UNSHARE...).
    MemoryFault,
    /// Memory the guest gave back.
    Relinquished,
    /// The vCPU waited for an interrupt.
    Wfi,
    /// A host interrupt (the test host's timeslice) ended the run.
    Interrupted,
    /// A hypercall for the VMM (PSCI `CPU_ON`).
    Hypercall,
    /// The vCPU was off.
    PoweredOff,
    /// The guest powered off or reset.
    SystemEvent,
    /// The hypervisor stopped the vCPU.
    Stopped,
}

/// Every kind with the name the exits line gives it, in the line's order.
pub const KINDS: [(ExitKind, &str); 11] = [
    (ExitKind::MmioUart, "mmio-uart"),
    (ExitKind::MmioTestdev, "mmio-testdev"),
    (ExitKind::MmioUnbacked, "mmio-unbacked"),
    (ExitKind::MemoryFault, "memory-fault"),
    (ExitKind::Relinquished, "relinquished"),
    (ExitKind::Wfi, "wfi"),
    (ExitKind::Interrupted, "interrupted"),
    (ExitKind::Hypercall, "hypercall"),
    (ExitKind::PoweredOff, "powered-off"),
    (ExitKind::SystemEvent, "system-event"),
    (ExitKind::Stopped, "stopped"),
];

/// The conversions the guest asked for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Conversions {
    /// Ranges converted to shared.
    pub to_shared: u64,
    /// Their pages.
    pub to_shared_pages: u64,
    /// Ranges converted to private.
    pub to_private: u64,
    /// Their pages.
    pub to_private_pages: u64,
    /// Requests refused: the range is not inside guest RAM.
    pub refused: u64,
    /// Requests that failed: the conversion returned an error.
    pub failed: u64,
}

impl Conversions {
    /// Records one request of `size` bytes: `done` is whether it was
    /// carried out, `None` if it was refused outright.
    pub fn record(&mut self, private: bool, size: u64, done: Option<bool>) {
        match done {
            None => self.refused += 1,
            Some(false) => self.failed += 1,
            Some(true) => {
                let pages = size.div_ceil(PAGE);
                if private {
                    self.to_private += 1;
                    self.to_private_pages += pages;
                } else {
                    self.to_shared += 1;
                    self.to_shared_pages += pages;
                }
            }
        }
    }

    /// Requests not carried out (`<r>` on the line).
    pub fn not_done(&self) -> u64 {
        self.refused + self.failed
    }
}

impl fmt::Display for Conversions {
    /// The line without its `vmm: conversions: ` prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to shared ({} pages), {} to private ({} pages), {} refused",
            self.to_shared,
            self.to_shared_pages,
            self.to_private,
            self.to_private_pages,
            self.not_done()
        )
    }
}

/// Everything counted over a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VmmStats {
    /// Exits by kind, indexed by [`ExitKind`].
    pub exits: [u64; KINDS.len()],
    /// The guest's conversions.
    pub conversions: Conversions,
    /// How long [`super::Vmm::run`] ran, in nanoseconds, if the host has a
    /// clock.
    pub run_ns: Option<u64>,
}

impl VmmStats {
    /// Counts one exit of `kind`.
    pub fn count(&mut self, kind: ExitKind) {
        self.exits[kind as usize] += 1;
    }

    /// Exits of `kind` so far.
    pub fn exits_of(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize]
    }

    /// Every exit.
    pub fn total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// The exits line, without its `vmm: exits: ` prefix.
    pub fn exits_line(&self) -> ExitsLine<'_> {
        ExitsLine(self)
    }
}

/// Shows a [`VmmStats`]'s exits line ([`VmmStats::exits_line`]).
pub struct ExitsLine<'a>(&'a VmmStats);

impl fmt::Display for ExitsLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        for (kind, name) in KINDS {
            write!(f, "{name} {}, ", s.exits_of(kind))?;
        }
        let total = s.total();
        write!(f, "total {total}")?;
        if let Some(ns) = s.run_ns {
            let per_s = if ns == 0 {
                0
            } else {
                (u128::from(total) * 1_000_000_000 / u128::from(ns)) as u64
            };
            write!(f, " in {} ms ({per_s}/s)", ns / 1_000_000)?;
        }
        Ok(())
    }
}

/// The prefix of the conversions line.
pub const CONVERSIONS_PREFIX: &str = "vmm: conversions: ";
/// The prefix of the exits line.
pub const EXITS_PREFIX: &str = "vmm: exits: ";

/// Reads the last conversions line in `output` (anywhere in a line);
/// `<r>` comes back as [`Conversions::refused`] (the line does not tell
/// refused from failed).
pub fn parse_conversions(output: &str) -> Option<Conversions> {
    output.lines().rev().find_map(|line| {
        let at = line.find(CONVERSIONS_PREFIX)? + CONVERSIONS_PREFIX.len();
        let w: Vec<&str> = line[at..].split_whitespace().collect();
        let num = |i: usize| w.get(i)?.trim_start_matches('(').parse::<u64>().ok();
        let shape = [
            None,
            Some("to"),
            Some("shared"),
            None,
            Some("pages),"),
            None,
            Some("to"),
            Some("private"),
            None,
            Some("pages),"),
            None,
            Some("refused"),
        ];
        if w.len() != shape.len() {
            return None;
        }
        for (word, want) in w.iter().zip(shape) {
            if let Some(want) = want
                && *word != want
            {
                return None;
            }
        }
        Some(Conversions {
            to_shared: num(0)?,
            to_shared_pages: num(3)?,
            to_private: num(5)?,
            to_private_pages: num(8)?,
            refused: num(10)?,
            failed: 0,
        })
    })
}

/// An exits line read back.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParsedExits {
    /// Each kind's name and count, in the line's order.
    pub counts: Vec<(String, u64)>,
    /// The total.
    pub total: u64,
    /// The run's milliseconds and exits per second, if the line has them.
    pub time: Option<(u64, u64)>,
}

impl ParsedExits {
    /// The count of kind `name`, if the line has it.
    pub fn count(&self, name: &str) -> Option<u64> {
        self.counts.iter().find(|(n, _)| n == name).map(|(_, c)| *c)
    }
}

/// Reads the last exits line in `output` (anywhere in a line).
pub fn parse_exits(output: &str) -> Option<ParsedExits> {
    output.lines().rev().find_map(|line| {
        let at = line.find(EXITS_PREFIX)? + EXITS_PREFIX.len();
        let rest = line[at..].trim_end();
        let mut counts = Vec::new();
        let mut total = None;
        let mut time = None;
        for part in rest.split(", ") {
            let mut w = part.split_whitespace();
            let name = w.next()?;
            let n = w.next()?.parse::<u64>().ok()?;
            if name == "total" {
                time = match (w.next(), w.next(), w.next(), w.next(), w.next()) {
                    (None, ..) => None,
                    (Some("in"), Some(ms), Some("ms"), Some(rate), None) => {
                        let rate = rate.strip_prefix('(')?.strip_suffix("/s)")?;
                        Some((ms.parse().ok()?, rate.parse().ok()?))
                    }
                    _ => return None,
                };
                total = Some(n);
            } else {
                if total.is_some() || w.next().is_some() {
                    return None;
                }
                counts.push((name.to_string(), n));
            }
        }
        Some(ParsedExits {
            counts,
            total: total?,
            time,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn conversions_are_counted_with_their_pages() {
        let mut c = Conversions::default();
        c.record(false, 4096, Some(true));
        c.record(false, 3 * 4096, Some(true));
        c.record(true, 100, Some(true));
        c.record(true, 4096, None);
        c.record(false, 4096, Some(false));
        assert_eq!(
            c,
            Conversions {
                to_shared: 2,
                to_shared_pages: 4,
                to_private: 1,
                to_private_pages: 1,
                refused: 1,
                failed: 1,
            }
        );
        assert_eq!(
            format!("{CONVERSIONS_PREFIX}{c}"),
            "vmm: conversions: 2 to shared (4 pages), 1 to private (1 pages), 2 refused"
        );
    }

    #[test]
    fn exits_are_counted_and_shown_in_order() {
        let mut s = VmmStats::default();
        for _ in 0..3 {
            s.count(ExitKind::MmioUart);
        }
        s.count(ExitKind::Wfi);
        s.count(ExitKind::SystemEvent);
        assert_eq!(s.total(), 5);
        assert_eq!(s.exits_of(ExitKind::MmioUart), 3);
        let line = format!("{}", s.exits_line());
        assert_eq!(
            line,
            "mmio-uart 3, mmio-testdev 0, mmio-unbacked 0, memory-fault 0, relinquished 0, \
             wfi 1, interrupted 0, hypercall 0, powered-off 0, system-event 1, stopped 0, total 5"
        );
        s.run_ns = Some(2_500_000_000);
        assert!(
            format!("{}", s.exits_line()).ends_with("stopped 0, total 5 in 2500 ms (2/s)"),
            "{}",
            s.exits_line()
        );
        s.run_ns = Some(0);
        assert!(format!("{}", s.exits_line()).ends_with("total 5 in 0 ms (0/s)"));
    }

    #[test]
    fn lines_parse_back() {
        let mut s = VmmStats {
            run_ns: Some(1_234_567_890),
            ..VmmStats::default()
        };
        for (i, (kind, _)) in KINDS.iter().enumerate() {
            for _ in 0..i * 10 {
                s.count(*kind);
            }
        }
        s.conversions.record(false, 8192, Some(true));
        s.conversions.record(true, 4096, None);
        let out = format!(
            "guest: hello\r\nvmm: guest powered off\r\n{CONVERSIONS_PREFIX}{}\r\n{EXITS_PREFIX}{}\r\n",
            s.conversions,
            s.exits_line()
        );
        let c = parse_conversions(&out).unwrap();
        assert_eq!((c.to_shared, c.to_shared_pages), (1, 2));
        assert_eq!((c.to_private, c.to_private_pages, c.refused), (0, 0, 1));
        let e = parse_exits(&out).unwrap();
        assert_eq!(e.total, s.total());
        assert_eq!(e.counts.len(), KINDS.len());
        for (i, (_, name)) in KINDS.iter().enumerate() {
            assert_eq!(e.count(name), Some(i as u64 * 10), "{name}");
        }
        assert_eq!(
            e.time,
            Some((1234, s.total() * 1_000_000_000 / 1_234_567_890))
        );
        // No clock: no time; the last line counts; a prefix is fine.
        s.run_ns = None;
        let later = format!("{out}testhost: {EXITS_PREFIX}{}\n", s.exits_line());
        let e = parse_exits(&later).unwrap();
        assert_eq!(e.time, None);
        assert_eq!(e.count("wfi"), Some(50));
    }

    #[test]
    fn malformed_lines_do_not_parse() {
        for bad in [
            "vmm: conversions: 1 to shared (1 pages), 0 to private (0 pages)",
            "vmm: conversions: x to shared (1 pages), 0 to private (0 pages), 0 refused",
            "vmm: conversions: 1 to private (1 pages), 0 to shared (0 pages), 0 refused",
            "vmm: conversions: 1 to shared (1 pages), 0 to private (0 pages), 0 refused extra",
        ] {
            assert_eq!(parse_conversions(bad), None, "{bad}");
        }
        for bad in [
            "vmm: exits: wfi 1",
            "vmm: exits: wfi x, total 1",
            "vmm: exits: wfi 1, total 1 in 5 s (1/s)",
            "vmm: exits: wfi 1, total 1 in 5 ms 1/s",
            "vmm: exits: total 1, wfi 1",
            "vmm: exits: wfi 1 2, total 3",
        ] {
            assert_eq!(parse_exits(bad), None, "{bad}");
        }
        assert_eq!(
            parse_exits("vmm: exits: total 0").map(|e| (e.total, e.counts.len())),
            Some((0, 0))
        );
    }
}
