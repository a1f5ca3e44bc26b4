//! `cargo qemu build`: build el2 and say where its images are.

use crate::failure::Failure;
use crate::workspace;

/// Builds el2 and prints the ELF path (and the raw binary's, if made) on
/// stdout.
pub fn build() -> Result<(), Failure> {
    let images = workspace::build_el2()?;
    println!("el2 ELF: {}", workspace::shown(&images.elf));
    if let Some(raw) = &images.raw {
        println!("el2 raw binary (arm64 Image): {}", workspace::shown(raw));
    }
    Ok(())
}
