//! The guest's console output on a host's own terminal, line by line
//! marked as the guest's: [`Prefixed`] writes a prefix (e.g. `guest: `)
//! before each line and `\r\n` after it, passing every other byte through
//! as it comes, so a prompt shows before its newline and an interactive
//! shell stays usable.
//!
//! - `\n` (alone or after `\r`) ends the line: `\r\n`.
//! - `\r` not followed by `\n` returns to the line's start, which for the
//!   guest is just after the prefix: `\r` and the prefix again, so line
//!   editing (which redraws from `\r`) keeps its columns.
//! - Anything else (escape sequences, backspace) goes through as it is.
//!
//! [`Prefixed::end_line`] ends a line the guest left open, before a line
//! of the host's own.

/// The state of the output: where in a line it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefixed {
    /// Something of the current line is out (the prefix at least).
    mid_line: bool,
    /// A `\r` came last and is not out yet.
    cr: bool,
}

impl Prefixed {
    /// A fresh output, at the start of a line.
    pub const fn new() -> Self {
        Prefixed {
            mid_line: false,
            cr: false,
        }
    }

    /// Feeds `bytes` of the guest's output; `out` writes raw bytes.
    pub fn feed(&mut self, prefix: &[u8], bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        for &b in bytes {
            match b {
                b'\n' => {
                    if !self.mid_line {
                        out(prefix);
                    }
                    out(b"\r\n");
                    self.mid_line = false;
                    self.cr = false;
                }
                b'\r' => self.cr = true,
                _ => {
                    if self.cr {
                        self.cr = false;
                        out(b"\r");
                        out(prefix);
                        self.mid_line = true;
                    }
                    if !self.mid_line {
                        out(prefix);
                        self.mid_line = true;
                    }
                    out(&[b]);
                }
            }
        }
    }

    /// Ends a line the guest left open (nothing if it is at a line's
    /// start); a pending `\r` is dropped.
    pub fn end_line(&mut self, out: &mut impl FnMut(&[u8])) {
        if self.mid_line {
            out(b"\r\n");
        }
        self.mid_line = false;
        self.cr = false;
    }

    /// Whether the output is in the middle of a line.
    pub fn mid_line(&self) -> bool {
        self.mid_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn run(chunks: &[&[u8]], end: bool) -> Vec<u8> {
        let mut p = Prefixed::new();
        let mut out = Vec::new();
        let mut w = |b: &[u8]| out.extend_from_slice(b);
        for c in chunks {
            p.feed(b"g: ", c, &mut w);
        }
        if end {
            p.end_line(&mut w);
        }
        out
    }

    #[test]
    fn lines_get_the_prefix_and_crlf() {
        assert_eq!(run(&[b"one\r\ntwo\n"], false), b"g: one\r\ng: two\r\n");
        assert_eq!(run(&[b"on", b"e\r", b"\n"], false), b"g: one\r\n");
        assert_eq!(run(&[b"\r\n\n"], false), b"g: \r\ng: \r\n", "empty lines");
        assert_eq!(run(&[b""], true), b"");
    }

    #[test]
    fn a_prompt_shows_before_its_newline() {
        assert_eq!(run(&[b"~ # "], false), b"g: ~ # ");
        assert_eq!(run(&[b"~ # ", b"l", b"s"], true), b"g: ~ # ls\r\n");
    }

    #[test]
    fn a_lone_cr_returns_after_the_prefix() {
        assert_eq!(run(&[b"abc\rxy\n"], false), b"g: abc\rg: xy\r\n");
        assert_eq!(run(&[b"\rz"], false), b"\rg: z", "at a line's start too");
        assert_eq!(run(&[b"a\x08 \x08\x1b[K"], false), b"g: a\x08 \x08\x1b[K");
        assert_eq!(
            run(&[b"ab\r"], true),
            b"g: ab\r\n",
            "a pending CR is dropped"
        );
    }
}
