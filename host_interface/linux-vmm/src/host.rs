//! What the VMM library needs of a Linux process ([`VmmHost`]): the
//! guest's console on standard output (raw bytes, as the guest writes
//! them), the VMM's lines on standard error, typed input from standard
//! input, a monotonic clock; and the terminal in raw mode while the guest
//! runs.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::time::Instant;

use host_interface::vmm::VmmHost;

/// Most input bytes read ahead of the guest's PL011 (standard input is
/// not read while this many wait).
pub const INPUT_BACKLOG: usize = 4096;

/// The VMM's view of this process's standard streams.
pub struct LinuxHost<O: Write, E: Write> {
    out: O,
    err: E,
    /// Typed bytes the guest's PL011 has not taken yet.
    pending: VecDeque<u8>,
    /// The guest's output ended mid-line.
    mid_line: bool,
    /// Standard output and standard error are both terminals: a VMM line
    /// after an unfinished guest line starts on a new line.
    same_terminal: bool,
    start: Instant,
}

impl LinuxHost<io::Stdout, io::Stderr> {
    /// Over this process's standard output and error.
    pub fn stdio() -> Self {
        // SAFETY: isatty only looks at the fds.
        let ttys = unsafe { libc::isatty(1) == 1 && libc::isatty(2) == 1 };
        LinuxHost::new(io::stdout(), io::stderr(), ttys)
    }
}

impl<O: Write, E: Write> LinuxHost<O, E> {
    /// Over `out` (the guest's console) and `err` (the VMM's lines).
    pub fn new(out: O, err: E, same_terminal: bool) -> Self {
        LinuxHost {
            out,
            err,
            pending: VecDeque::new(),
            mid_line: false,
            same_terminal,
            start: Instant::now(),
        }
    }

    /// Queues typed bytes for the guest.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
    }

    /// Room left before [`INPUT_BACKLOG`].
    pub fn input_room(&self) -> usize {
        INPUT_BACKLOG.saturating_sub(self.pending.len())
    }

    /// The streams back (tests read them).
    #[cfg(test)]
    pub fn into_parts(self) -> (O, E) {
        (self.out, self.err)
    }
}

impl<O: Write, E: Write> VmmHost for LinuxHost<O, E> {
    fn console(&mut self, bytes: &[u8]) {
        // A console nobody reads (a closed pipe) must not stop the guest.
        let _ = self.out.write_all(bytes).and_then(|()| self.out.flush());
        if let Some(&last) = bytes.last() {
            self.mid_line = last != b'\n';
        }
    }

    fn log(&mut self, line: fmt::Arguments<'_>) {
        if self.mid_line && self.same_terminal {
            let _ = self.err.write_all(b"\n");
            self.mid_line = false;
        }
        let _ = writeln!(self.err, "{line}").and_then(|()| self.err.flush());
    }

    fn before_run(&mut self, _vcpu: usize) {}

    fn input(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.pending.len());
        for (d, s) in buf.iter_mut().zip(self.pending.drain(..n)) {
            *d = s;
        }
        n
    }

    fn now_ns(&mut self) -> Option<u64> {
        Some(self.start.elapsed().as_nanos() as u64)
    }
}

/// Standard input's terminal in raw mode until dropped: no line
/// editing, no echo, no signals from keys (Ctrl-C is a byte for the
/// guest), no CR/LF translation on input. Output processing stays on,
/// so the VMM's `\n` still starts a line.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on fd 0, if it is a terminal.
    pub fn enter() -> Option<RawTerminal> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a live termios.
        if unsafe { libc::isatty(0) } != 1 || unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: fd 0 and a live termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: fd 0 and the termios it had.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_raw_on_out_lines_on_err_input_queued() {
        let mut h = LinuxHost::new(Vec::new(), Vec::new(), true);
        h.console(b"~ # ");
        h.log(format_args!("vmm: guest powered off"));
        h.console(b"ok\r\n");
        h.log(format_args!("vmm: x"));
        h.push_input(b"ls\r");
        let mut buf = [0u8; 2];
        assert_eq!(h.input(&mut buf), 2);
        assert_eq!(&buf, b"ls");
        assert_eq!(h.input(&mut buf), 1);
        assert_eq!(h.input(&mut buf), 0);
        assert_eq!(h.input_room(), INPUT_BACKLOG);
        assert!(h.now_ns().is_some());
        let (out, err) = h.into_parts();
        assert_eq!(out, b"~ # ok\r\n");
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "\nvmm: guest powered off\nvmm: x\n",
            "a VMM line after an open guest line starts a new one"
        );
    }

    #[test]
    fn separate_streams_get_no_extra_newline() {
        let mut h = LinuxHost::new(Vec::new(), Vec::new(), false);
        h.console(b"prompt");
        h.log(format_args!("vmm: y"));
        assert_eq!(h.into_parts().1, b"vmm: y\n");
    }
}
