//! `cargo qemu host-driver`: build the Linux host driver (`pkvm_rs.ko`)
//! and its smoke test for the kernel linux-images boots, and print where
//! they are.

use std::time::Instant;

use crate::failure::Failure;
use crate::linux::guest_kernel::format_duration;
use crate::linux::host_driver;

/// Builds (or finds in the cache) the module and the smoke test and prints
/// their paths on stdout, the module's and the smoke test's last.
pub fn host_driver() -> Result<(), Failure> {
    let started = Instant::now();
    let d = host_driver::ensure()?;
    println!(
        "kernel: linux-image-{} {}",
        d.kernel_release, d.kernel_version
    );
    println!("kernel headers: {}", d.headers.display());
    println!("cache key: {}", d.key);
    println!("build log: {}", d.log.display());
    println!("took {}", format_duration(started.elapsed()));
    println!();
    println!(
        "In the Linux host under el2 (busybox): `insmod {}` creates /dev/pkvm-rs; then run \
         `{}` (a static aarch64 program) as root.",
        host_driver::MODULE,
        host_driver::SMOKE
    );
    println!();
    println!("module: {}", d.module.display());
    println!("smoke test: {}", d.smoke.display());
    Ok(())
}
