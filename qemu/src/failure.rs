//! The error type of `cargo qemu` commands: a message and an exit code.

use std::fmt;

/// Exit code for a failed build, test or step.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a usage error, a missing tool, or something not
/// implemented yet.
pub const EXIT_UNAVAILABLE: u8 = 2;

/// A command failed: why, and with which exit code the runner ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Exit code of `cargo qemu`.
    pub code: u8,
    /// What went wrong, printed after `cargo qemu: `.
    pub message: String,
}

impl Failure {
    /// A failed build, test or step (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }

    /// A missing tool, usage error or unimplemented feature (exit code 2).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
