//! el2's own boot options.
//!
//! They are words of the kernel command line el2 is booted with (QEMU's
//! `-append`, the device tree's `/chosen/bootargs`) that start with `el2.`,
//! as Linux's `kvm-arm.mode=protected` is a word of its own. el2 takes
//! every such word out before the host sees the line, known or not: they
//! are addressed to el2, and a host kernel would only warn about them.
//!
//! | word | meaning |
//! |---|---|
//! | `el2.host_map=blocks` | the default: the host stage-2 maps RAM with the largest blocks (1 GiB, 2 MiB) and merges pages back into blocks |
//! | `el2.host_map=pages` | the host stage-2 maps RAM with 4 KiB pages only, never merged |
//! | `el2.log=<level>` | el2's console messages: `off`, `error`, `warn`, `info` (the default), `debug` or `trace` |
//!
//! `el2.host_map=pages` is for emulators, not hardware. QEMU's TCG keeps
//! one combined TLB entry per stage-1 + stage-2 translation with the larger
//! of the two page sizes, so under stage-2 blocks each by-address TLB
//! invalidation the host kernel issues flushes far more than the page it
//! names; with 4 KiB stage-2 pages a Linux host boots under el2 about as
//! fast as without it (`cargo qemu bench-boot --host-map pages`). Its cost:
//! a level-3 table per 2 MiB of RAM (2 MiB of el2's heap per GiB, taken
//! at boot), and on hardware the TLB reach of 4 KiB entries.
//!
//! `el2.log` takes effect as soon as el2 has read its device tree
//! ([`log_level`] needs no heap); under TCG every console line costs
//! about a millisecond of emulated UART writes, so `el2.log=warn` shortens
//! el2's boot by the twenty-odd lines it prints at `info`.
//!
//! A word el2 does not know (or a value it does not take) is dropped too
//! and reported by [`parse`], which el2 logs as a warning: a typo must not
//! stop the boot, nor reach the host.

use alloc::string::String;
use alloc::vec::Vec;
use stage2::BlockPolicy;

/// The prefix of el2's words.
pub const PREFIX: &str = "el2.";

/// How much el2 prints (`el2.log`), as the `log` crate's levels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub enum LogLevel {
    /// Nothing (fatal errors, and why a boot failed, still reach the
    /// console).
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also what el2 does (the default).
    #[default]
    Info,
    /// Also details for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn from_word(value: &str) -> Option<LogLevel> {
        Some(match value {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// el2's boot options.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootOptions {
    /// How the host stage-2 maps RAM (`el2.host_map`).
    pub host_map: BlockPolicy,
    /// How much el2 prints (`el2.log`).
    pub log: LogLevel,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            host_map: BlockPolicy::Largest,
            log: LogLevel::Info,
        }
    }
}

/// The level `el2.log` words in `line` ask for (the last one that names a
/// level), without allocating: for use before el2 has a heap.
pub fn log_level(line: &str) -> Option<LogLevel> {
    line.split_ascii_whitespace()
        .rev()
        .filter_map(|w| w.strip_prefix("el2.log="))
        .find_map(LogLevel::from_word)
}

/// A command line with el2's words taken out.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Parsed<'a> {
    /// The options the words set.
    pub options: BootOptions,
    /// The `el2.` words applied, in order.
    pub applied: Vec<&'a str>,
    /// The `el2.` words not understood (unknown name or value), dropped.
    pub ignored: Vec<&'a str>,
    /// The line without any `el2.` word (the other words in order, one
    /// space apart), for the host; `None` when the line had no `el2.`
    /// word, so that the host gets it untouched.
    pub host_line: Option<String>,
}

/// Reads el2's words from `line` (a later word overrides an earlier one).
pub fn parse(line: &str) -> Parsed<'_> {
    let mut p = Parsed::default();
    let mut rest: Vec<&str> = Vec::new();
    let mut any = false;
    for word in line.split_ascii_whitespace() {
        let Some(option) = word.strip_prefix(PREFIX) else {
            rest.push(word);
            continue;
        };
        any = true;
        let known = match option {
            "host_map=blocks" => {
                p.options.host_map = BlockPolicy::Largest;
                true
            }
            "host_map=pages" => {
                p.options.host_map = BlockPolicy::PagesOnly;
                true
            }
            _ => match option.strip_prefix("log=").and_then(LogLevel::from_word) {
                Some(level) => {
                    p.options.log = level;
                    true
                }
                None => false,
            },
        };
        if known {
            p.applied.push(word);
        } else {
            p.ignored.push(word);
        }
    }
    if any {
        p.host_line = Some(rest.join(" "));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_el2_words_is_left_alone() {
        let p = parse("console=ttyAMA0  earlycon rdinit=/init");
        assert_eq!(p.options, BootOptions::default());
        assert_eq!(p.host_line, None);
        assert!(p.applied.is_empty() && p.ignored.is_empty());
        assert_eq!(parse("").host_line, None);
    }

    #[test]
    fn host_map_is_read_and_taken_out() {
        let p = parse("console=ttyAMA0 el2.host_map=pages quiet");
        assert_eq!(p.options.host_map, BlockPolicy::PagesOnly);
        assert_eq!(p.applied, ["el2.host_map=pages"]);
        assert_eq!(p.host_line.as_deref(), Some("console=ttyAMA0 quiet"));
        let p = parse("el2.host_map=pages el2.host_map=blocks");
        assert_eq!(p.options.host_map, BlockPolicy::Largest, "last wins");
        assert_eq!(p.host_line.as_deref(), Some(""));
    }

    #[test]
    fn log_level_is_read_with_and_without_a_heap() {
        let line = "quiet el2.log=warn el2.log=loud el2.log=debug x";
        assert_eq!(log_level(line), Some(LogLevel::Debug), "the last level");
        let p = parse(line);
        assert_eq!(p.options.log, LogLevel::Debug);
        assert_eq!(p.applied, ["el2.log=warn", "el2.log=debug"]);
        assert_eq!(p.ignored, ["el2.log=loud"]);
        assert_eq!(p.host_line.as_deref(), Some("quiet x"));
        assert_eq!(log_level("el2.log=off"), Some(LogLevel::Off));
        assert_eq!(log_level("el2.log= el2.logx=warn"), None);
        assert_eq!(parse("").options.log, LogLevel::Info);
    }

    #[test]
    fn unknown_words_are_dropped_and_reported() {
        let p = parse("a el2.host_map=huge el2.nope b el2. el2.host_map");
        assert_eq!(p.options, BootOptions::default());
        assert_eq!(
            p.ignored,
            ["el2.host_map=huge", "el2.nope", "el2.", "el2.host_map"]
        );
        assert_eq!(p.host_line.as_deref(), Some("a b"));
        // Not el2's: only the exact prefix counts.
        let p = parse("xel2.host_map=pages EL2.host_map=pages");
        assert_eq!(p.host_line, None);
        assert_eq!(p.options, BootOptions::default());
    }
}
