//! The console: `log` records on the PL011, serialised across CPUs by a
//! spinlock, plus a lock-free emergency path for fatal errors.
//!
//! Before the device tree is read, the console is QEMU `virt`'s PL011
//! ([`QEMU_VIRT_PL011_BASE`]); [`set_uart`] switches to the UART the device
//! tree names. Lines look like `el2[0]: message` (`el2[0] WARN: ...` for
//! warnings and errors); the number is the CPU index.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use el2::options::LogLevel;
use log::{Level, LevelFilter, Log, Metadata, Record};

use super::pl011::{Pl011, QEMU_VIRT_PL011_BASE};
use super::sysreg;

/// Base address of the console UART.
static UART_BASE: AtomicUsize = AtomicUsize::new(QEMU_VIRT_PL011_BASE);
/// Serialises whole lines.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// How many times a fatal-path write retries the lock before writing
/// without it (the holder may be this very CPU, interrupted by a fault).
const EMERGENCY_SPINS: u32 = 1 << 20;

/// A UART writer for code that runs before the MMU is on: no lock, no
/// atomic, the QEMU `virt` UART.
pub fn early_uart() -> Pl011 {
    // SAFETY: QEMU virt's PL011 is at this address; before the MMU is on
    // every access is Device-nGnRnE, and the early map keeps it Device.
    unsafe { Pl011::new(QEMU_VIRT_PL011_BASE) }
}

fn uart() -> Pl011 {
    // SAFETY: UART_BASE only ever holds QEMU virt's PL011 or the PL011 the
    // device tree names, which the final EL2 map maps as Device.
    unsafe { Pl011::new(UART_BASE.load(Ordering::Relaxed)) }
}

/// Makes the PL011 at `base` the console. The caller has mapped it.
pub fn set_uart(base: usize) {
    let _guard = LOCK.lock();
    UART_BASE.store(base, Ordering::Relaxed);
}

struct Logger;

static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let _guard = LOCK.lock();
        let mut u = uart();
        let cpu = sysreg::cpu_index();
        // Writing to the UART cannot fail.
        let _ = match record.level() {
            Level::Info | Level::Debug | Level::Trace => {
                writeln!(u, "el2[{cpu}]: {}", record.args())
            }
            level => writeln!(u, "el2[{cpu}] {level}: {}", record.args()),
        };
    }

    fn flush(&self) {}
}

/// Installs the logger. Needs atomics, so the MMU must be on.
pub fn init() {
    // Fails only if a logger is already set, which is then ours.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Sets how much el2 prints (the `el2.log` boot option).
pub fn set_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Off => LevelFilter::Off,
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    });
}

/// Prints a line even if the console lock cannot be had (fatal paths).
pub fn emergency(args: fmt::Arguments<'_>) {
    let mut spins = 0;
    let guard = loop {
        if let Some(g) = LOCK.try_lock() {
            break Some(g);
        }
        spins += 1;
        if spins >= EMERGENCY_SPINS {
            break None;
        }
        core::hint::spin_loop();
    };
    let mut u = uart();
    let _ = writeln!(u, "el2[{}] FATAL: {args}", sysreg::cpu_index());
    drop(guard);
}
