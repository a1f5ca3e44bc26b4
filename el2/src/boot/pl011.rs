//! Minimal polled transmit-only driver for the Arm PL011 UART.
//!
//! The MMU is off, so the registers are accessed at their physical address
//! (as Device-nGnRnE memory). QEMU's UART needs no initialisation to
//! transmit.

use core::fmt;
use core::ptr;

/// Physical base address of the PL011 on QEMU's `virt` machine.
pub const QEMU_VIRT_PL011_BASE: usize = 0x0900_0000;

/// Data register offset.
const UARTDR: usize = 0x00;
/// Flag register offset.
const UARTFR: usize = 0x18;
/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// A PL011 UART at a fixed physical address.
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// The UART of QEMU's `virt` machine.
    pub fn qemu_virt() -> Self {
        Self {
            base: QEMU_VIRT_PL011_BASE,
        }
    }

    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn write_byte(&mut self, byte: u8) {
        let fr = (self.base + UARTFR) as *const u32;
        let dr = (self.base + UARTDR) as *mut u32;
        // SAFETY: `base` is the PL011 of the machine this image is built for
        // (QEMU virt); with the MMU off its flag register is a readable,
        // aligned 32-bit device register at this physical address.
        while unsafe { ptr::read_volatile(fr) } & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: as above, the data register is a writable, aligned 32-bit
        // device register; writing a byte to it queues that byte for sending.
        unsafe { ptr::write_volatile(dr, u32::from(byte)) };
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
