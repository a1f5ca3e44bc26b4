//! The guest's console: a PL011 UART at [`crate::platform::UART`], as
//! little of it as a guest needs to print (PL011 TRM, DDI 0183).
//!
//! - `UARTDR` (0x000): a write prints its low byte; reads 0 (no input).
//! - `UARTFR` (0x018): `TXFE | RXFE` (0x90): the transmitter is never
//!   busy and there is never input.
//! - Peripheral id (0xfe0..0xfec): 0x11, 0x10, 0x14, 0x00 (an r1p4 PL011);
//!   PrimeCell id (0xff0..0xffc): 0x0d, 0xf0, 0x05, 0xb1 — what Linux's
//!   AMBA bus reads to bind its driver.
//! - Everything else reads as zero and ignores writes.

/// Data register.
pub const UARTDR: u64 = 0x000;
/// Flag register.
pub const UARTFR: u64 = 0x018;
/// `UARTFR.TXFE`: transmit FIFO empty.
pub const FR_TXFE: u64 = 1 << 7;
/// `UARTFR.RXFE`: receive FIFO empty.
pub const FR_RXFE: u64 = 1 << 4;
/// First peripheral id register.
pub const PERIPH_ID: u64 = 0xfe0;
/// First PrimeCell id register.
pub const PCELL_ID: u64 = 0xff0;
/// Peripheral id bytes 0..3.
pub const PERIPH_ID_VALUES: [u64; 4] = [0x11, 0x10, 0x14, 0x00];
/// PrimeCell id bytes 0..3.
pub const PCELL_ID_VALUES: [u64; 4] = [0x0d, 0xf0, 0x05, 0xb1];

/// The emulated PL011: no state (no input, an always-empty FIFO).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pl011;

impl Pl011 {
    /// A read of the register at `offset` (from the UART's base).
    pub fn read(&self, offset: u64) -> u64 {
        match offset {
            UARTFR => FR_TXFE | FR_RXFE,
            o if (PERIPH_ID..PERIPH_ID + 16).contains(&o) && o.is_multiple_of(4) => {
                PERIPH_ID_VALUES[((o - PERIPH_ID) / 4) as usize]
            }
            o if (PCELL_ID..PCELL_ID + 16).contains(&o) && o.is_multiple_of(4) => {
                PCELL_ID_VALUES[((o - PCELL_ID) / 4) as usize]
            }
            _ => 0,
        }
    }

    /// A write of `value` to the register at `offset`: the byte the guest
    /// prints, if it wrote `UARTDR`.
    pub fn write(&mut self, offset: u64, value: u64) -> Option<u8> {
        (offset == UARTDR).then_some(value as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers() {
        let mut u = Pl011;
        assert_eq!(u.read(UARTFR), 0x90);
        assert_eq!(u.read(UARTDR), 0);
        let ids: [u64; 8] = core::array::from_fn(|i| u.read(0xfe0 + 4 * i as u64));
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(u.read(0xfe1), 0, "unaligned id reads are RAZ");
        assert_eq!(u.read(0x030), 0, "UARTCR reads as zero");
        assert_eq!(u.write(UARTDR, 0x141), Some(0x41));
        assert_eq!(u.write(0x030, 0x301), None, "writes elsewhere are ignored");
    }
}
