//! `cargo qemu build`: build el2, the test host and the test guest and say
//! where the images are.

use crate::failure::Failure;
use crate::workspace;

/// Builds el2, the test host and the test guest and prints their paths on
/// stdout.
pub fn build() -> Result<(), Failure> {
    let images = workspace::build_images()?;
    println!("el2 ELF: {}", workspace::shown(&images.el2));
    match &images.el2_raw {
        Some(raw) => println!("el2 raw binary (arm64 Image): {}", workspace::shown(raw)),
        None => println!("el2 raw binary: not made (no rust-objcopy)"),
    }
    println!(
        "test host (raw arm64 Image, the default host): {}",
        workspace::shown(&images.testhost)
    );
    println!(
        "test guest (raw arm64 Image, run with --guest testguest): {}",
        workspace::shown(&images.testguest)
    );
    Ok(())
}
