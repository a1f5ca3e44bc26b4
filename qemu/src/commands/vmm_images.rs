//! `cargo qemu vmm-images`: build the boot and vendor boot images that
//! run the Linux VMM end to end inside the Linux host, and print where
//! they are.

use std::time::Instant;

use crate::failure::Failure;
use crate::linux::guest_kernel::format_duration;
use crate::linux::vmm_images::{self, SHELL_ARG};
use crate::workspace;

/// Builds el2's workspace images (for `testguest.bin`), then the VMM boot
/// and vendor boot images from their parts (or finds them in the caches),
/// and prints the parts, the images' paths last, and the commands that
/// boot them.
pub fn vmm_images() -> Result<(), Failure> {
    let started = Instant::now();
    let images = workspace::build_images()?;
    let v = vmm_images::ensure(&images.testguest)?;
    println!("host driver: {}", v.module.display());
    println!("smoke test: {}", v.smoke.display());
    println!("pkvm-vmm (stripped): {}", v.vmm.display());
    println!("test guest: {}", v.testguest.display());
    match &v.linux_guest {
        Ok(g) => {
            println!("Linux guest kernel: {}", g.image.display());
            println!("Linux guest initramfs: {}", g.initramfs.display());
        }
        Err(why) => println!("Linux guest: left out ({why})"),
    }
    println!("manifest: {}", v.manifest.display());
    println!("took {}", format_duration(started.elapsed()));
    println!();
    println!(
        "Boot the pair under el2 (init loads the driver, runs the smoke test and pkvm-vmm with each \
         guest, unloads the driver and powers off; exit status 0 when every step passed, 12 \
         after `VMM-FAILED: ...`):"
    );
    let run = format!(
        "cargo qemu run --host {} --vendor-boot {}",
        v.boot.display(),
        v.vendor_boot.display()
    );
    println!("  {run}");
    println!("With a shell after the checks, the driver loaded, to run pkvm-vmm by hand:");
    println!("  {run} --append {SHELL_ARG}");
    println!();
    println!("VMM boot image (kernel, /init): {}", v.boot.display());
    println!(
        "VMM vendor boot image (vendor ramdisk with the driver, the VMM and the guests; DTB): {}",
        v.vendor_boot.display()
    );
    Ok(())
}
