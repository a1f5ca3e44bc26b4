//! Build script for `el2`: links the bare-metal binary with `linker.ld`.
//!
//! The linker script is passed only when building for a bare-metal target
//! (`target_os = "none"`, i.e. `aarch64-unknown-none`); host builds of the
//! binary (used by `cargo test`/`cargo clippy` on the workspace) link normally.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=linker.ld");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo::rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
