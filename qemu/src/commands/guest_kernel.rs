//! `cargo qemu guest-kernel`: build the pKVM guest kernel and its
//! initramfs and print where they are.

use crate::failure::Failure;
use crate::linux::guest_kernel::{self, GUEST_CMDLINE, GUEST_MARKER, SOURCE_PACKAGE};

/// Builds (or finds in the cache) the guest kernel and initramfs and
/// prints their paths on stdout, the kernel's and the initramfs's last.
pub fn guest_kernel() -> Result<(), Failure> {
    let g = guest_kernel::ensure()?;
    println!("source: {SOURCE_PACKAGE} {}", g.source_version);
    println!("cache key: {}", g.key);
    println!("guest kernel .config: {}", g.config.display());
    println!("guest kernel System.map: {}", g.system_map.display());
    println!("guest kernel build log: {}", g.log.display());
    println!();
    println!(
        "Boot it under plain QEMU (no el2; its init prints {GUEST_MARKER} and GUEST-* lines):"
    );
    println!(
        "  qemu-system-aarch64 -machine virt,gic-version=3 -cpu cortex-a72 -m 512M -nographic \
         -nic none -kernel {} -initrd {} -append '{GUEST_CMDLINE}'",
        g.image.display(),
        g.initramfs.display()
    );
    println!();
    println!("guest kernel: {}", g.image.display());
    println!("guest initramfs: {}", g.initramfs.display());
    Ok(())
}
