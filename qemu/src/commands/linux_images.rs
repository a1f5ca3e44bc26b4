//! `cargo qemu linux-images`: build the Linux host images and print where
//! they are.

use crate::failure::Failure;
use crate::linux;

/// Builds (or reuses) the Linux host images and prints their paths on
/// stdout, with the commands that boot them.
pub fn linux_images() -> Result<(), Failure> {
    let l = linux::ensure()?;
    println!("kernel package: {}", l.kernel_package);
    println!("kernel (raw arm64 Image): {}", l.kernel.display());
    println!("initramfs (cpio newc): {}", l.initramfs.display());
    println!("QEMU virt device tree: {}", l.dtb.display());
    println!("boot image v2 (with DTB): {}", l.boot_v2.display());
    println!("boot image v4: {}", l.boot_v4.display());
    println!("boot image v4 of the pair: {}", l.boot_v4_pair.display());
    println!(
        "vendor boot image v4 of the pair: {}",
        l.vendor_boot.display()
    );
    println!();
    println!("Boot them under el2 with:");
    println!("  cargo qemu run --host {}", l.boot_v2.display());
    println!("  cargo qemu run --host {}", l.boot_v4.display());
    println!(
        "  cargo qemu run --host {} --vendor-boot {}",
        l.boot_v4_pair.display(),
        l.vendor_boot.display()
    );
    println!(
        "  cargo qemu run --host {} --initrd {} --append '{}'",
        l.kernel.display(),
        l.initramfs.display(),
        linux::cmdline_for("raw")
    );
    Ok(())
}
