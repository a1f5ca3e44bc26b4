//! Running child processes: shell-like display, exit statuses, timeouts,
//! and a temporary directory for the files a run hands QEMU.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::failure::Failure;

/// Renders `cmd` as a shell-like line for messages (environment not shown).
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Describes how a process ended: `exit code N` or `killed by signal N`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}

/// Runs `cmd` with inherited stdio and waits for it.
pub fn status(cmd: &mut Command) -> Result<ExitStatus, Failure> {
    cmd.status()
        .map_err(|e| Failure::failed(format!("cannot run `{}`: {e}", display(cmd))))
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
pub fn checked(cmd: &mut Command) -> Result<(), Failure> {
    let status = status(cmd)?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "`{}` failed ({})",
            display(cmd),
            describe(status)
        )))
    }
}

/// Runs `cmd` and returns its stdout as text, failing unless it succeeds.
/// Its stderr is passed through.
pub fn stdout_of(cmd: &mut Command) -> Result<String, Failure> {
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure::failed(format!("cannot run `{}`: {e}", display(cmd))))?;
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "`{}` failed ({})",
            display(cmd),
            describe(output.status)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How long [`run_timed`] keeps reading output after the child ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How a process run under [`run_timed`] ended.
#[derive(Debug)]
pub struct Timed {
    /// The exit status (after the kill, if it timed out).
    pub status: ExitStatus,
    /// Whether it was killed for running out of time.
    pub timed_out: bool,
    /// Everything it wrote to stdout and stderr, interleaved by arrival.
    pub output: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// When the marker given to [`run_timed`] (the first of
    /// [`run_scripted`]'s) first appeared in the output (from the start),
    /// if it did.
    pub marker_at: Option<Duration>,
    /// The same for each of [`run_scripted`]'s markers, in order.
    pub markers_at: Vec<Option<Duration>>,
    /// How many steps of the input script ([`run_scripted`]) were sent.
    pub sent: usize,
}

/// One step of a conversation with a child ([`run_scripted`]): once
/// `after` shows in its output (after where the previous step's text
/// showed), `send` is written to its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect<'a> {
    /// What to wait for.
    pub after: &'a str,
    /// What to type then.
    pub send: &'a str,
}

/// Where the next step's text may show: the script's progress through
/// the output.
#[derive(Debug, Default)]
struct Script {
    /// Steps done.
    next: usize,
    /// Output bytes already matched by earlier steps.
    from: usize,
}

impl Script {
    /// Advances over every step whose text `output` now shows; returns
    /// what to send, in order.
    fn advance<'a>(&mut self, steps: &[Expect<'a>], output: &[u8]) -> Vec<&'a str> {
        let mut send = Vec::new();
        while let Some(step) = steps.get(self.next) {
            let want = step.after.as_bytes();
            let Some(at) = output[self.from.min(output.len())..]
                .windows(want.len().max(1))
                .position(|w| w == want)
            else {
                break;
            };
            self.from += at + want.len();
            self.next += 1;
            send.push(step.send);
        }
        send
    }
}

/// Runs `cmd` with stdin closed, capturing its stdout and stderr (and
/// echoing them to ours as they come unless `echo` is false), kills it if
/// it runs longer than `timeout`, and notes when `marker` first shows in
/// the output ([`Timed::marker_at`]).
pub fn run_timed(
    cmd: &mut Command,
    timeout: Duration,
    marker: Option<&str>,
    echo: bool,
) -> Result<Timed, Failure> {
    run_scripted(cmd, timeout, marker.as_slice(), echo, &[])
}

/// As [`run_timed`], with the times of several `markers`
/// ([`Timed::markers_at`]), typing into the child's stdin as `script`
/// says (an expect-style conversation: each step waits for its text in the
/// output, then sends its input). With an empty script stdin is closed;
/// otherwise it is a pipe that stays open until the child ends.
pub fn run_scripted(
    cmd: &mut Command,
    timeout: Duration,
    markers: &[&str],
    echo: bool,
    script: &[Expect<'_>],
) -> Result<Timed, Failure> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(if script.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::failed(format!("cannot run `{}`: {e}", display(cmd))))?;
    let mut stdin = child.stdin.take();

    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tee(out, tx.clone(), echo.then_some(false))),
        child
            .stderr
            .take()
            .map(|err| tee(err, tx.clone(), echo.then_some(true))),
    ];
    drop(tx);

    let mut output = Vec::new();
    let mut markers_at = vec![None; markers.len()];
    let mut progress = Script::default();
    let mut take = |output: &mut Vec<u8>, at: Instant, chunk: &[u8]| -> Vec<&str> {
        output.extend_from_slice(chunk);
        for (m, seen) in markers.iter().zip(markers_at.iter_mut()) {
            if seen.is_some() || m.is_empty() {
                continue;
            }
            // Only the tail can hold a marker that just completed.
            let from = output.len().saturating_sub(chunk.len() + m.len());
            if output[from..].windows(m.len()).any(|w| w == m.as_bytes()) {
                *seen = Some(at.saturating_duration_since(start));
            }
        }
        progress.advance(script, output)
    };

    // While the child runs: collect its output as it comes (answering the
    // script's steps) and watch the clock.
    let deadline = start + timeout;
    let waited = (|| -> io::Result<(ExitStatus, bool)> {
        loop {
            match rx.recv_timeout(POLL) {
                Ok((at, chunk)) => {
                    for text in take(&mut output, at, &chunk) {
                        if let Some(pipe) = stdin.as_mut() {
                            // A child that stopped reading is judged on
                            // its output; nothing to do about it here.
                            let _ = pipe.write_all(text.as_bytes()).and_then(|()| pipe.flush());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both pipes closed: the child is ending.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return wait_until(&mut child, deadline);
                }
            }
            if let Some(status) = child.try_wait()? {
                return Ok((status, false));
            }
            if Instant::now() >= deadline {
                return wait_until(&mut child, deadline);
            }
        }
    })();
    let (status, timed_out) =
        waited.map_err(|e| Failure::failed(format!("waiting for `{}`: {e}", display(cmd))))?;
    let elapsed = start.elapsed();
    drop(stdin);

    // Collect what is left in the pipes. A grandchild that inherited them
    // could keep them open after the child is gone, so stop waiting after a
    // grace period instead of joining the reader threads unconditionally.
    let grace = Instant::now() + OUTPUT_GRACE;
    loop {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, chunk)) => {
                // Too late to answer anything.
                let _ = take(&mut output, at, &chunk);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                for reader in readers.into_iter().flatten() {
                    let _ = reader.join();
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    Ok(Timed {
        status,
        timed_out,
        output: String::from_utf8_lossy(&output).into_owned(),
        elapsed,
        marker_at: markers_at.first().copied().flatten(),
        markers_at,
        sent: progress.next,
    })
}

/// How often a run looks at the clock and the child while waiting for
/// output.
const POLL: Duration = Duration::from_millis(20);

/// Copies `from` to our stdout (`echo` = `Some(false)`), stderr
/// (`Some(true)`) or nowhere (`None`) as it arrives and sends each chunk,
/// with when it arrived, on `to`.
fn tee(
    mut from: impl Read + Send + 'static,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    echo: Option<bool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = Instant::now();
                    let chunk = &buf[..n];
                    match echo {
                        Some(true) => {
                            let mut err = io::stderr().lock();
                            let _ = err.write_all(chunk);
                            let _ = err.flush();
                        }
                        Some(false) => {
                            let mut out = io::stdout().lock();
                            let _ = out.write_all(chunk);
                            let _ = out.flush();
                        }
                        None => {}
                    }
                    if to.send((at, chunk.to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Waits for `child` until `deadline`, then kills it. Returns its status and
/// whether it had to be killed.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<(ExitStatus, bool)> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            // It may exit between try_wait and kill; that is fine either way.
            let _ = child.kill();
            return Ok((child.wait()?, true));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A directory of the runner's own under the system's temporary
/// directory, removed with its contents when dropped: for files QEMU loads
/// at start-up (a guest's command line) that are of no use after the run.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/cargo-qemu-<pid>-<n>`, with the first `n` not taken
    /// (by a run that did not get to clean up, for instance).
    pub fn new() -> Result<Self, Failure> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let mut last = None;
        for n in 0..1000 {
            let path = base.join(format!("cargo-qemu-{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(Failure::failed(format!(
                        "cannot create a temporary directory {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        Err(Failure::failed(format!(
            "cannot create a temporary directory in {}: {}",
            base.display(),
            last.map_or_else(|| "every name is taken".to_owned(), |e| e.to_string())
        )))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Nothing to do about a failure here: it is only a leftover in the
        // system's temporary directory.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        let mut cmd = Command::new("cargo");
        cmd.args(["clippy", "--", "-D", "warnings", "a b", "it's", ""]);
        assert_eq!(
            display(&cmd),
            r"cargo clippy -- -D warnings 'a b' 'it'\''s' ''"
        );
    }

    #[cfg(unix)]
    #[test]
    fn timeout_kills_and_captures() {
        let timed = run_timed(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
            None,
            false,
        )
        .unwrap();
        assert!(timed.timed_out);
        assert!(!timed.status.success());
        assert!(timed.output.contains("started"));
        assert!(timed.elapsed < Duration::from_secs(10));
    }

    #[cfg(unix)]
    #[test]
    fn marker_time_is_noted() {
        let timed = run_timed(
            Command::new("sh").args(["-c", "echo a; sleep 0.3; echo MARK-ER; sleep 0.2"]),
            Duration::from_secs(10),
            Some("MARK-ER"),
            false,
        )
        .unwrap();
        let at = timed.marker_at.unwrap();
        assert!(at >= Duration::from_millis(250), "{at:?}");
        assert!(at < timed.elapsed);
        let none = run_timed(
            Command::new("sh").args(["-c", "echo a"]),
            Duration::from_secs(10),
            Some("MARK-ER"),
            false,
        )
        .unwrap();
        assert_eq!(none.marker_at, None);
    }

    #[test]
    fn script_steps_match_in_order_across_chunks() {
        let steps = [
            Expect {
                after: "prompt> ",
                send: "one\n",
            },
            Expect {
                after: "prompt> ",
                send: "two\n",
            },
            Expect {
                after: "done",
                send: "",
            },
        ];
        let mut s = Script::default();
        let mut out = b"boot... prom".to_vec();
        assert!(s.advance(&steps, &out).is_empty());
        out.extend_from_slice(b"pt> ");
        assert_eq!(s.advance(&steps, &out), ["one\n"]);
        // The same prompt does not answer the second step twice.
        assert!(s.advance(&steps, &out).is_empty());
        out.extend_from_slice(b"one\nprompt> two\ndone");
        assert_eq!(s.advance(&steps, &out), ["two\n", ""]);
        assert_eq!(s.next, 3);
        assert!(s.advance(&steps, &out).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn scripted_input_reaches_the_child() {
        let steps = [
            Expect {
                after: "ready",
                send: "one\n",
            },
            Expect {
                after: "got-one",
                send: "two\n",
            },
        ];
        let timed = run_scripted(
            Command::new("sh").args(["-c", "echo ready; read a; echo got-$a; read b; echo got-$b"]),
            Duration::from_secs(10),
            &["got-one", "got-two", "never"],
            false,
            &steps,
        )
        .unwrap();
        let [one, two, never] = timed.markers_at[..] else {
            panic!("{:?}", timed.markers_at)
        };
        assert!(one.unwrap() <= two.unwrap());
        assert_eq!(never, None);
        assert_eq!(timed.marker_at, one);
        assert!(!timed.timed_out);
        assert!(timed.status.success());
        assert!(timed.output.contains("got-two"), "{}", timed.output);
        assert_eq!(timed.sent, 2);
        // A step whose text never shows: the child waits on its stdin (kept
        // open) until the timeout.
        let timed = run_scripted(
            Command::new("sh").args(["-c", "echo ready; read a; echo got-$a"]),
            Duration::from_millis(500),
            &[],
            false,
            &[Expect {
                after: "never",
                send: "x\n",
            }],
        )
        .unwrap();
        assert!(timed.timed_out);
        assert_eq!(timed.sent, 0);
    }

    #[test]
    fn temp_dirs_are_distinct_and_removed() {
        let a = TempDir::new().unwrap();
        let b = TempDir::new().unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let kept = a.path().to_owned();
        drop(a);
        assert!(!kept.exists());
        assert!(b.path().is_dir());
    }

    #[cfg(unix)]
    #[test]
    fn exit_code_passes_through() {
        let timed = run_timed(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
            None,
            false,
        )
        .unwrap();
        assert!(!timed.timed_out);
        assert_eq!(timed.status.code(), Some(3));
        assert!(timed.output.contains("out"));
        assert!(timed.output.contains("err"));
    }
}
