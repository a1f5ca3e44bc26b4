//! The `cargo qemu` commands.

pub mod bench;
pub mod bench_guest;
pub mod bench_guest_boot;
pub mod build;
pub mod fuzz;
pub mod guest_kernel;
pub mod host_driver;
pub mod linux_images;
pub mod run;
pub mod test;
pub mod test_all;
pub mod vmm_images;
