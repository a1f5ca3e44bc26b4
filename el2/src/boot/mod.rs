//! Bare-metal boot path of the `el2` binary (`target_os = "none"` only).
//!
//! [`entry`] holds `_start`, the arm64 Image header and the assembly that
//! gets to Rust; [`rust_main`] reports the exception level on the
//! [`pl011`] UART and leaves QEMU through [`exit`].

#[cfg(not(target_arch = "aarch64"))]
compile_error!("the el2 binary only supports aarch64 bare-metal targets (aarch64-unknown-none)");

mod entry;
mod exit;
mod pl011;

use core::fmt::Write;
use core::panic::PanicInfo;

use pl011::Pl011;

/// Semihosting exit code: the image entered at EL2 and stopped there.
///
/// `cargo qemu run` and `cargo qemu test` read this code; change them too if
/// it changes.
pub const EXIT_ENTERED_EL2: u32 = 3;

/// Semihosting exit code: the image was entered at an exception level other
/// than EL2 (e.g. QEMU was started without `virtualization=on`).
pub const EXIT_WRONG_EL: u32 = 4;

/// Rust entry point, called by `_start` on the boot CPU with a valid stack
/// and a zeroed `.bss`.
///
/// `dtb` is the value of `x0` at entry: the device tree address when loaded
/// as a Linux-style Image, unspecified when QEMU loads the ELF directly. It
/// is not used until booting a host lands (issue 6).
#[unsafe(no_mangle)]
extern "C" fn rust_main(_dtb: u64) -> ! {
    let el = current_el();
    let mut uart = Pl011::qemu_virt();
    let (major, minor) = el2::HYP_VERSION;
    // Writing to the UART cannot fail; the results are ignored.
    if el == 2 {
        let _ = writeln!(
            uart,
            "el2 v{major}.{minor}: entered at EL2 - boot not implemented yet (issue 6)"
        );
        exit::exit(EXIT_ENTERED_EL2)
    } else {
        let _ = writeln!(
            uart,
            "el2 v{major}.{minor}: entered at EL{el}, expected EL2 \
             (start QEMU with -machine virt,virtualization=on)"
        );
        exit::exit(EXIT_WRONG_EL)
    }
}

/// The exception level the CPU is executing at (0 to 3).
fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects and is permitted at every
    // exception level above EL0, which is where this image runs.
    unsafe {
        core::arch::asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags));
    }
    (el >> 2) & 0b11
}

/// Prints the panic on the UART and parks the CPU.
///
/// There are no exception vectors yet, so parking is all that can be done.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut uart = Pl011::qemu_virt();
    let _ = writeln!(uart, "el2: {info}");
    entry::park()
}
