//! Build script for `testguest`: links the bare-metal binary with
//! `linker.ld` when building for `target_os = "none"`; host builds (used by
//! `cargo test`/`cargo clippy` on the workspace) link normally.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=linker.ld");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo::rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
