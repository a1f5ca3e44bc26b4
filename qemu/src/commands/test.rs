//! `cargo qemu test`: the tests that boot el2 under QEMU.

use std::time::Duration;

use crate::commands::run::{EL2_EXIT_ENTERED_EL2, EL2_EXIT_WRONG_EL};
use crate::failure::Failure;
use crate::process;
use crate::qemu::{self, Machine};
use crate::workspace;

/// One QEMU test: boot el2, then judge QEMU's exit status and the console.
#[derive(Debug, Clone)]
pub struct QemuTest {
    /// Name shown in the results.
    pub name: &'static str,
    /// The machine to boot on.
    pub machine: fn() -> Machine,
    /// QEMU is killed, and the test fails, after this long.
    pub timeout: Duration,
    /// Expected exit status of QEMU (set by el2 through semihosting).
    pub exit_code: i32,
    /// Strings the console output must contain.
    pub output: &'static [&'static str],
}

/// Every QEMU test.
pub const TESTS: &[QemuTest] = &[QemuTest {
    // Proves the image is entered at EL2, runs Rust code, prints on the
    // UART and exits through semihosting.
    name: "el2_stub_enters_el2_and_exits_via_semihosting",
    machine: Machine::default,
    timeout: Duration::from_secs(30),
    exit_code: EL2_EXIT_ENTERED_EL2,
    output: &["entered at EL2"],
}];

/// Counts of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
}

/// Builds el2, makes sure QEMU is there, runs every test in [`TESTS`] and
/// prints one result line per test and a closing `N passed, M failed` line.
pub fn run_all() -> Result<Summary, Failure> {
    let qemu = qemu::ensure()?;
    let images = workspace::build_el2()?;
    println!("running {} QEMU test(s)", TESTS.len());
    let mut summary = Summary {
        passed: 0,
        failed: 0,
    };
    let mut failures = Vec::new();
    for test in TESTS {
        let mut cmd = qemu::boot_command(&qemu, &images.elf, &(test.machine)());
        println!("--- {} ({} s timeout)", test.name, test.timeout.as_secs());
        println!("    {}", process::display(&cmd));
        let timed = process::with_timeout(&mut cmd, test.timeout)?;
        let verdict = judge(test, timed.status.code(), timed.timed_out, &timed.output);
        match verdict {
            Ok(()) => {
                summary.passed += 1;
                println!(
                    "test {} ... ok ({:.1} s)",
                    test.name,
                    timed.elapsed.as_secs_f64()
                );
            }
            Err(why) => {
                summary.failed += 1;
                println!("test {} ... FAILED: {why}", test.name);
                failures.push(test.name);
            }
        }
    }
    if !failures.is_empty() {
        println!("failed: {}", failures.join(", "));
    }
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

/// Whether a run of `test` that ended with `code` (`None`: killed by a
/// signal) and printed `output` passed; if not, why.
fn judge(test: &QemuTest, code: Option<i32>, timed_out: bool, output: &str) -> Result<(), String> {
    if timed_out {
        return Err(format!("timed out after {} s", test.timeout.as_secs()));
    }
    match code {
        None => return Err("QEMU was killed by a signal".to_owned()),
        Some(code) if code != test.exit_code => {
            let hint = match code {
                EL2_EXIT_WRONG_EL => " (el2 was not entered at EL2)",
                1 => " (QEMU failed to start, or el2 exited without semihosting)",
                _ => "",
            };
            return Err(format!(
                "QEMU exited with code {code}, expected {}{hint}",
                test.exit_code
            ));
        }
        Some(_) => {}
    }
    match test.output.iter().find(|want| !output.contains(*want)) {
        Some(missing) => Err(format!("console output lacks {missing:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub_test() -> &'static QemuTest {
        &TESTS[0]
    }

    #[test]
    fn passes_on_expected_exit_and_output() {
        let out = "el2 v0.1: entered at EL2 - boot not implemented yet (issue 6)\r\n";
        assert_eq!(judge(stub_test(), Some(3), false, out), Ok(()));
    }

    #[test]
    fn fails_on_timeout_wrong_code_or_missing_output() {
        let out = "entered at EL2";
        assert!(judge(stub_test(), Some(3), true, out).is_err());
        assert!(judge(stub_test(), None, false, out).is_err());
        assert!(
            judge(stub_test(), Some(4), false, out)
                .unwrap_err()
                .contains("not entered at EL2")
        );
        assert!(
            judge(stub_test(), Some(3), false, "nothing")
                .unwrap_err()
                .contains("entered at EL2")
        );
    }
}
