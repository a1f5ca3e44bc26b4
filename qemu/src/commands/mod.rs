//! The `cargo qemu` commands.

pub mod bench;
pub mod bench_guest;
pub mod build;
pub mod linux_images;
pub mod run;
pub mod test;
pub mod test_all;
