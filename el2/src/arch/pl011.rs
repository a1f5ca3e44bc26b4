//! Minimal polled transmit-only driver for the Arm PL011 UART, with the
//! register block described by `tock-registers`.
//!
//! The UART is not (re)programmed: firmware (or QEMU, which needs nothing)
//! has set it up; el2 only queues bytes.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

/// Physical base address of the PL011 on QEMU's `virt` machine: the console
/// el2 uses until it has read the device tree.
pub const QEMU_VIRT_PL011_BASE: usize = 0x0900_0000;

register_bitfields![u32,
    /// Flag register.
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
    ],
];

register_structs! {
    /// The PL011 registers el2 uses (offsets from the PL011 TRM).
    Pl011Regs {
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01c => @END),
    }
}

/// How many times [`Pl011::write_byte`] polls a full transmit FIFO before
/// dropping the byte (the host owns the UART and may have disabled it).
const TXFF_SPINS: u32 = 300_000;

/// Set when a byte was dropped because the FIFO stayed full: later bytes
/// then poll once only (and clear it if the FIFO has room again), so a
/// stuck UART costs no more than one bounded wait. A plain flag (single
/// loads and stores), usable with the MMU off.
static STUCK: AtomicBool = AtomicBool::new(false);

/// A PL011 UART at a fixed physical (= EL2 virtual) address.
pub struct Pl011 {
    regs: *const Pl011Regs,
}

impl Pl011 {
    /// The UART whose registers are at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the address of a PL011 register block, mapped (or the MMU
    /// off) as Device memory, for as long as the value is used.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            regs: base as *const Pl011Regs,
        }
    }

    fn regs(&self) -> &Pl011Regs {
        // SAFETY: `new`'s contract: `regs` points to a live PL011 register
        // block; tock-registers only does volatile accesses through it.
        unsafe { &*self.regs }
    }

    /// Sends one byte, waiting a bounded time while the transmit FIFO is
    /// full; drops it if the FIFO stays full (see [`STUCK`]).
    pub fn write_byte(&mut self, byte: u8) {
        let regs = self.regs();
        let spins = if STUCK.load(Ordering::Relaxed) {
            1
        } else {
            TXFF_SPINS
        };
        for _ in 0..spins {
            if !regs.fr.is_set(FR::TXFF) {
                regs.dr.set(u32::from(byte));
                STUCK.store(false, Ordering::Relaxed);
                return;
            }
            core::hint::spin_loop();
        }
        STUCK.store(true, Ordering::Relaxed);
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}
