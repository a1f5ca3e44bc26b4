//! The `cargo qemu` commands.

pub mod build;
pub mod run;
pub mod test;
pub mod test_all;
