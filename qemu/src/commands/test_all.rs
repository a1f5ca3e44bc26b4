//! `cargo qemu test-all`: the whole test suite, stopping at the first
//! failure.

use std::process::Command;

use crate::commands::test;
use crate::failure::Failure;
use crate::process;
use crate::workspace::{self, EL2_TARGET};

/// What a step runs.
enum Action {
    /// A cargo command in the workspace.
    Cargo(Vec<&'static str>),
    /// The QEMU tests (`cargo qemu test`).
    QemuTests,
}

/// One step of the suite.
struct Step {
    title: String,
    action: Action,
}

fn cargo_step(args: &[&'static str]) -> Step {
    Step {
        title: format!("cargo {}", args.join(" ")),
        action: Action::Cargo(args.to_vec()),
    }
}

/// The steps, in order.
fn steps() -> Vec<Step> {
    vec![
        cargo_step(&["fmt", "--all", "--check"]),
        cargo_step(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        cargo_step(&[
            "clippy",
            "-p",
            "stage2",
            "-p",
            "ownership",
            "-p",
            "host_interface",
            "-p",
            "el2",
            "-p",
            "testhost",
            "-p",
            "testguest",
            "--target",
            EL2_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
        cargo_step(&workspace::BUILD_IMAGES),
        cargo_step(&["test", "--workspace"]),
        Step {
            title: "QEMU tests (cargo qemu test)".to_owned(),
            action: Action::QemuTests,
        },
    ]
}

/// Runs every step, announcing each, and stops at the first failure. Ends
/// with a list of the steps and a `steps: N passed, M failed` line; returns
/// whether every step passed.
pub fn test_all() -> bool {
    let steps = steps();
    let total = steps.len();
    let mut results: Vec<Result<(), Failure>> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        println!();
        println!("==> [{}/{total}] {}", i + 1, step.title);
        let result = match &step.action {
            Action::Cargo(args) => {
                let mut cmd: Command = workspace::cargo(args.iter().copied());
                process::status(&mut cmd).and_then(|status| {
                    if status.success() {
                        Ok(())
                    } else {
                        Err(Failure::failed(format!(
                            "`{}` failed ({})",
                            step.title,
                            process::describe(status)
                        )))
                    }
                })
            }
            Action::QemuTests => test::run_all().and_then(|summary| {
                if summary.failed == 0 {
                    Ok(())
                } else {
                    Err(Failure::failed(format!(
                        "{} QEMU test(s) failed",
                        summary.failed
                    )))
                }
            }),
        };
        let failed = result.is_err();
        results.push(result);
        if failed {
            break;
        }
    }

    println!();
    println!("test-all summary:");
    for (i, step) in steps.iter().enumerate() {
        let state = match results.get(i) {
            Some(Ok(())) => "ok     ",
            Some(Err(_)) => "FAILED ",
            None => "skipped",
        };
        println!("  {state} [{}/{total}] {}", i + 1, step.title);
    }
    let passed = results.iter().filter(|r| r.is_ok()).count();
    let failed = results.len() - passed;
    let skipped = total - results.len();
    if let Some(Err(failure)) = results.last() {
        println!("stopped at the first failure: {failure}");
    }
    if skipped == 0 {
        println!("steps: {passed} passed, {failed} failed");
    } else {
        println!("steps: {passed} passed, {failed} failed, {skipped} skipped");
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_the_documented_suite() {
        let titles: Vec<String> = steps().into_iter().map(|s| s.title).collect();
        assert_eq!(
            titles,
            [
                "cargo fmt --all --check",
                "cargo clippy --workspace --all-targets -- -D warnings",
                "cargo clippy -p stage2 -p ownership -p host_interface -p el2 -p testhost \
                 -p testguest --target aarch64-unknown-none -- -D warnings",
                "cargo build -p el2 -p testhost -p testguest --target aarch64-unknown-none \
                 --release",
                "cargo test --workspace",
                "QEMU tests (cargo qemu test)",
            ]
        );
    }
}
