//! `testguest`: the guest conformance suite (work in progress).

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "testguest is an aarch64-unknown-none guest Image; run it with `cargo qemu run --guest`"
    );
    std::process::exit(1);
}
