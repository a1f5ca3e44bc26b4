//! The guest's console: a PL011 UART at [`crate::platform::UART`] (PL011
//! TRM, DDI 0183, r1p4), with a receive FIFO the host fills and the
//! interrupt line the device tree names (SPI [`super::fdt::UART_SPI`],
//! INTID [`UART_INTID`]).
//!
//! # Registers
//!
//! | offset | register | model |
//! |--------|----------|-------|
//! | 0x000 | `UARTDR` | a write prints its low byte; a read takes the oldest received byte (0 when the FIFO is empty; the error bits 11:8 are always 0) |
//! | 0x004 | `UARTRSR`/`UARTECR` | reads 0 (no errors), writes ignored |
//! | 0x018 | `UARTFR` | `TXFE` always (the transmitter is never busy: every byte is printed at once), `RXFE`/`RXFF` from the receive FIFO |
//! | 0x020, 0x024, 0x028 | `UARTILPR`, `UARTIBRD`, `UARTFBRD` | stored, read back, no effect |
//! | 0x02c | `UARTLCR_H` | stored; `FEN` (bit 4) selects a 16-byte receive FIFO (else a 1-byte holding register) |
//! | 0x030 | `UARTCR` | stored (reset 0x300); the receiver takes bytes only while `UARTEN` and `RXE` are set |
//! | 0x034 | `UARTIFLS` | stored (reset 0x12); `RXIFLSEL` sets the receive interrupt's FIFO level (1/8 .. 7/8 of 16) |
//! | 0x038 | `UARTIMSC` | the interrupt mask (bits 10:0) |
//! | 0x03c | `UARTRIS` | raw interrupt status |
//! | 0x040 | `UARTMIS` | `UARTRIS & UARTIMSC` |
//! | 0x044 | `UARTICR` | write 1 to clear (`RXIC`, `RTIC`; `TXIC` has no lasting effect) |
//! | 0x048 | `UARTDMACR` | stored, no DMA |
//! | 0xfe0..0xffc | ids | peripheral id 0x11, 0x10, 0x14, 0x00 (an r1p4 PL011, 16-byte FIFOs); PrimeCell id 0x0d, 0xf0, 0x05, 0xb1 — what Linux's AMBA bus reads to bind its driver |
//!
//! Everything else reads as zero and ignores writes.
//!
//! # Interrupts
//!
//! - Transmit (`TXRIS`, bit 5): always set — the transmit FIFO is always
//!   empty, below any trigger level. A guest enables `TXIM` only while it
//!   has bytes queued, and the next interrupt lets it write them.
//! - Receive (`RXRIS`, bit 4): set when the FIFO fills to the trigger
//!   level (`UARTIFLS.RXIFLSEL`; 1 byte with the FIFO off), cleared when
//!   reads take it below that level or by `UARTICR.RXIC`.
//! - Receive timeout (`RTRIS`, bit 6): set when the FIFO holds data and
//!   the line went idle — the host's next poll brought no byte
//!   ([`Pl011::rx_idle`]); cleared when the FIFO empties or by
//!   `UARTICR.RTIC`.
//!
//! The UART's interrupt line is `UARTMIS != 0`. Whenever its level changes
//! the model calls the [`IrqLine`] hook it is handed, so the VMM can drive
//! the SPI of the VM's interrupt controller (with the `IrqLine` host call
//! on el2; `KVM_IRQ_LINE` under KVM). The model itself knows nothing of
//! the platform.

use alloc::collections::VecDeque;

/// Data register.
pub const UARTDR: u64 = 0x000;
/// Receive status / error clear register.
pub const UARTRSR: u64 = 0x004;
/// Flag register.
pub const UARTFR: u64 = 0x018;
/// IrDA low-power counter register.
pub const UARTILPR: u64 = 0x020;
/// Integer baud rate register.
pub const UARTIBRD: u64 = 0x024;
/// Fractional baud rate register.
pub const UARTFBRD: u64 = 0x028;
/// Line control register.
pub const UARTLCR_H: u64 = 0x02c;
/// Control register.
pub const UARTCR: u64 = 0x030;
/// Interrupt FIFO level select register.
pub const UARTIFLS: u64 = 0x034;
/// Interrupt mask set/clear register.
pub const UARTIMSC: u64 = 0x038;
/// Raw interrupt status register.
pub const UARTRIS: u64 = 0x03c;
/// Masked interrupt status register.
pub const UARTMIS: u64 = 0x040;
/// Interrupt clear register.
pub const UARTICR: u64 = 0x044;
/// DMA control register.
pub const UARTDMACR: u64 = 0x048;

/// `UARTFR.TXFE`: transmit FIFO empty.
pub const FR_TXFE: u64 = 1 << 7;
/// `UARTFR.RXFF`: receive FIFO full.
pub const FR_RXFF: u64 = 1 << 6;
/// `UARTFR.TXFF`: transmit FIFO full (never).
pub const FR_TXFF: u64 = 1 << 5;
/// `UARTFR.RXFE`: receive FIFO empty.
pub const FR_RXFE: u64 = 1 << 4;

/// Interrupt bit (RIS, MIS, IMSC, ICR): receive.
pub const INT_RX: u32 = 1 << 4;
/// Interrupt bit: transmit.
pub const INT_TX: u32 = 1 << 5;
/// Interrupt bit: receive timeout.
pub const INT_RT: u32 = 1 << 6;
/// The interrupt bits that exist (modem, RX, TX, RT, errors).
pub const INT_ALL: u32 = 0x7ff;

/// `UARTLCR_H.FEN`: FIFOs enabled.
pub const LCR_H_FEN: u32 = 1 << 4;
/// `UARTCR.UARTEN`: UART enabled.
pub const CR_UARTEN: u32 = 1 << 0;
/// `UARTCR.RXE`: receiver enabled.
pub const CR_RXE: u32 = 1 << 9;
/// `UARTCR` at reset: `TXE | RXE`, UART disabled.
pub const CR_RESET: u32 = 0x300;
/// `UARTIFLS` at reset: both FIFOs at 1/2.
pub const IFLS_RESET: u32 = 0x12;

/// Bytes of the receive FIFO (an r1p4 PL011's; Linux reads the revision
/// from the peripheral id and uses 16).
pub const RX_FIFO: usize = 16;

/// The UART's SPI as an INTID (SPI n is INTID 32 + n).
pub const UART_INTID: u32 = 32 + super::fdt::UART_SPI;

/// First peripheral id register.
pub const PERIPH_ID: u64 = 0xfe0;
/// First PrimeCell id register.
pub const PCELL_ID: u64 = 0xff0;
/// Peripheral id bytes 0..3.
pub const PERIPH_ID_VALUES: [u64; 4] = [0x11, 0x10, 0x14, 0x00];
/// PrimeCell id bytes 0..3.
pub const PCELL_ID_VALUES: [u64; 4] = [0x0d, 0xf0, 0x05, 0xb1];

/// Where the UART's interrupt line goes: called with the new level each
/// time it changes (never twice with the same level).
pub trait IrqLine {
    /// The line is now high (`true`) or low.
    fn set_level(&mut self, high: bool);
}

impl<F: FnMut(bool)> IrqLine for F {
    fn set_level(&mut self, high: bool) {
        self(high)
    }
}

/// The emulated PL011.
#[derive(Clone, Debug)]
pub struct Pl011 {
    rx: VecDeque<u8>,
    /// Latched raw status of RX and RT (TX is always set).
    ris: u32,
    imsc: u32,
    cr: u32,
    lcr_h: u32,
    ifls: u32,
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    dmacr: u32,
    /// The level last reported to the [`IrqLine`].
    line: bool,
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl011 {
    /// A PL011 as after reset: UART disabled, FIFOs off, every interrupt
    /// masked, the line low.
    pub fn new() -> Self {
        Pl011 {
            rx: VecDeque::with_capacity(RX_FIFO),
            ris: 0,
            imsc: 0,
            cr: CR_RESET,
            lcr_h: 0,
            ifls: IFLS_RESET,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            dmacr: 0,
            line: false,
        }
    }

    /// Bytes the receive FIFO holds at most: 16, or 1 with the FIFOs off.
    fn depth(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            RX_FIFO
        } else {
            1
        }
    }

    /// FIFO level at which the receive interrupt asserts.
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        match (self.ifls >> 3) & 7 {
            0 => RX_FIFO / 8,
            1 => RX_FIFO / 4,
            2 => RX_FIFO / 2,
            3 => RX_FIFO * 3 / 4,
            // 0b100 is 7/8; the reserved encodings behave like it.
            _ => RX_FIFO * 7 / 8,
        }
    }

    /// `UARTRIS`.
    pub fn raw_status(&self) -> u32 {
        self.ris | INT_TX
    }

    /// `UARTMIS`.
    pub fn masked_status(&self) -> u32 {
        self.raw_status() & self.imsc
    }

    /// The level of the interrupt line (`UARTMIS != 0`).
    pub fn level(&self) -> bool {
        self.line
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// How many bytes the receiver takes now: the FIFO's free room while
    /// the UART and its receiver are enabled, else 0. A host offers no
    /// more than this, so nothing typed is dropped: the rest waits on the
    /// host's side.
    pub fn rx_room(&self) -> usize {
        if self.cr & CR_UARTEN == 0 || self.cr & CR_RXE == 0 {
            return 0;
        }
        self.depth().saturating_sub(self.rx.len())
    }

    /// Receives `bytes` (as many as [`Pl011::rx_room`] allows; returns how
    /// many): the receive interrupt asserts when the FIFO reaches its
    /// trigger level.
    pub fn receive(&mut self, bytes: &[u8], irq: &mut impl IrqLine) -> usize {
        let n = bytes.len().min(self.rx_room());
        self.rx.extend(&bytes[..n]);
        if n > 0 && self.rx.len() >= self.rx_trigger() {
            self.ris |= INT_RX;
        }
        self.update(irq);
        n
    }

    /// The host polled and had nothing more: the line is idle, so data
    /// left in the FIFO raises the receive timeout interrupt.
    pub fn rx_idle(&mut self, irq: &mut impl IrqLine) {
        if !self.rx.is_empty() {
            self.ris |= INT_RT;
            self.update(irq);
        }
    }

    /// A read of the register at `offset` (from the UART's base).
    pub fn read(&mut self, offset: u64, irq: &mut impl IrqLine) -> u64 {
        match offset {
            UARTDR => {
                let byte = self.rx.pop_front().unwrap_or(0);
                if self.rx.len() < self.rx_trigger() {
                    self.ris &= !INT_RX;
                }
                if self.rx.is_empty() {
                    self.ris &= !INT_RT;
                }
                self.update(irq);
                u64::from(byte)
            }
            UARTFR => {
                let mut fr = FR_TXFE;
                if self.rx.is_empty() {
                    fr |= FR_RXFE;
                }
                if self.rx.len() >= self.depth() {
                    fr |= FR_RXFF;
                }
                fr
            }
            UARTILPR => self.ilpr.into(),
            UARTIBRD => self.ibrd.into(),
            UARTFBRD => self.fbrd.into(),
            UARTLCR_H => self.lcr_h.into(),
            UARTCR => self.cr.into(),
            UARTIFLS => self.ifls.into(),
            UARTIMSC => self.imsc.into(),
            UARTRIS => self.raw_status().into(),
            UARTMIS => self.masked_status().into(),
            UARTDMACR => self.dmacr.into(),
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
    pub fn write(&mut self, offset: u64, value: u64, irq: &mut impl IrqLine) -> Option<u8> {
        let v = value as u32;
        match offset {
            UARTDR => return Some(value as u8),
            UARTILPR => self.ilpr = v & 0xff,
            UARTIBRD => self.ibrd = v & 0xffff,
            UARTFBRD => self.fbrd = v & 0x3f,
            UARTLCR_H => self.lcr_h = v & 0xff,
            UARTCR => self.cr = v & 0xff87,
            UARTIFLS => self.ifls = v & 0x3f,
            UARTIMSC => self.imsc = v & INT_ALL,
            UARTICR => self.ris &= !(v & INT_ALL),
            UARTDMACR => self.dmacr = v & 0x7,
            _ => {}
        }
        self.update(irq);
        None
    }

    /// Reports the line's level to `irq` if it changed.
    fn update(&mut self, irq: &mut impl IrqLine) {
        let level = self.masked_status() != 0;
        if level != self.line {
            self.line = level;
            irq.set_level(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Records every level the UART reports.
    #[derive(Default)]
    struct Levels(Vec<bool>);

    impl IrqLine for Levels {
        fn set_level(&mut self, high: bool) {
            self.0.push(high);
        }
    }

    /// A UART as Linux's pl011 driver sets it up: FIFOs on, RX at 1/2,
    /// enabled, receive and timeout interrupts unmasked.
    fn linux_setup(u: &mut Pl011, l: &mut Levels) {
        u.write(UARTIMSC, 0, l);
        u.write(UARTICR, 0x7ff, l);
        u.write(UARTIFLS, 0x12, l);
        u.write(UARTLCR_H, 0x70, l);
        u.write(UARTCR, 0x301, l);
        u.write(UARTIMSC, u64::from(INT_RX | INT_RT), l);
    }

    #[test]
    fn identity_and_flags() {
        let mut u = Pl011::new();
        let l = &mut Levels::default();
        assert_eq!(u.read(UARTFR, l), 0x90, "TXFE | RXFE");
        assert_eq!(u.read(UARTDR, l), 0, "an empty FIFO reads 0");
        let ids: [u64; 8] = core::array::from_fn(|i| u.read(0xfe0 + 4 * i as u64, l));
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(u.read(0xfe1, l), 0, "unaligned id reads are RAZ");
        assert_eq!(u.read(UARTCR, l), 0x300, "reset value");
        assert_eq!(u.read(UARTIFLS, l), 0x12, "reset value");
        assert_eq!(u.read(UARTRIS, l), u64::from(INT_TX), "TX is always set");
        assert_eq!(u.read(UARTMIS, l), 0, "everything masked at reset");
        assert_eq!(u.write(UARTDR, 0x141, l), Some(0x41));
        assert_eq!(u.write(UARTCR, 0x301, l), None);
        assert_eq!(u.read(UARTCR, l), 0x301, "read back");
        for (reg, value) in [
            (UARTIBRD, 0x27),
            (UARTFBRD, 0x4),
            (UARTLCR_H, 0x70),
            (UARTILPR, 0x9),
            (UARTDMACR, 0x0),
        ] {
            u.write(reg, value, l);
            assert_eq!(u.read(reg, l), value, "{reg:#x}");
        }
        assert_eq!(u.read(0x800, l), 0, "unknown registers are RAZ");
        u.write(0x800, 1, l);
        assert!(l.0.is_empty(), "no interrupt unmasked, no line change");
    }

    #[test]
    fn the_receiver_takes_bytes_only_when_enabled() {
        let mut u = Pl011::new();
        let l = &mut Levels::default();
        assert_eq!(u.rx_room(), 0, "UARTEN is clear at reset");
        assert_eq!(u.receive(b"abc", l), 0);
        u.write(UARTCR, 0x301, l);
        assert_eq!(u.rx_room(), 1, "FIFOs off: a 1-byte holding register");
        assert_eq!(u.receive(b"abc", l), 1);
        assert_eq!(u.read(UARTFR, l), 0x80 | 0x40, "TXFE | RXFF, not RXFE");
        assert_eq!(u.read(UARTDR, l), u64::from(b'a'));
        u.write(UARTLCR_H, u64::from(LCR_H_FEN), l);
        assert_eq!(u.rx_room(), 16);
        assert_eq!(u.receive(&[7; 20], l), 16);
        assert_eq!(u.rx_room(), 0);
        assert_eq!(u.read(UARTFR, l) & FR_RXFF, FR_RXFF);
        u.write(UARTCR, 0x101, l);
        for _ in 0..16 {
            assert_eq!(u.read(UARTDR, l), 7);
        }
        assert_eq!(u.rx_room(), 0, "RXE clear");
        assert_eq!(u.read(UARTFR, l), 0x90);
    }

    #[test]
    fn receive_interrupt_at_the_trigger_level() {
        let mut u = Pl011::new();
        let l = &mut Levels::default();
        linux_setup(&mut u, l);
        assert!(l.0.is_empty() && !u.level());
        // 1/2 of 16: the 8th byte raises RX.
        assert_eq!(u.receive(b"1234567", l), 7);
        assert_eq!(u.read(UARTRIS, l) & u64::from(INT_RX), 0);
        assert!(l.0.is_empty());
        u.receive(b"8", l);
        assert_eq!(u.read(UARTMIS, l), u64::from(INT_RX));
        assert_eq!(l.0, [true]);
        // Reading below the level clears it: the line drops.
        assert_eq!(u.read(UARTDR, l), u64::from(b'1'));
        assert_eq!(u.read(UARTMIS, l), 0);
        assert_eq!(l.0, [true, false]);
        // Other levels: 1/8 is 2 bytes, 7/8 is 14.
        while u.read(UARTFR, l) & FR_RXFE == 0 {
            u.read(UARTDR, l);
        }
        u.write(UARTIFLS, 0, l);
        u.receive(b"a", l);
        assert!(!u.level());
        u.receive(b"b", l);
        assert!(u.level());
        // ICR clears a latched RX even above the level.
        u.write(UARTICR, u64::from(INT_RX), l);
        assert!(!u.level());
        assert_eq!(l.0, [true, false, true, false]);
        u.read(UARTDR, l);
        u.read(UARTDR, l);
        u.write(UARTIFLS, 4 << 3, l);
        u.receive(&[0; 13], l);
        assert!(!u.level());
        u.receive(&[0; 1], l);
        assert!(u.level());
    }

    #[test]
    fn receive_timeout_when_the_line_goes_idle() {
        let mut u = Pl011::new();
        let l = &mut Levels::default();
        linux_setup(&mut u, l);
        u.rx_idle(l);
        assert!(l.0.is_empty(), "nothing received: no timeout");
        u.receive(b"ls\r", l);
        assert!(!u.level(), "below the trigger level");
        u.rx_idle(l);
        assert_eq!(u.read(UARTMIS, l), u64::from(INT_RT));
        assert_eq!(l.0, [true]);
        // Linux's handler reads until RXFE; the FIFO empties and RT clears.
        let mut got = Vec::new();
        while u.read(UARTFR, l) & FR_RXFE == 0 {
            got.push(u.read(UARTDR, l) as u8);
        }
        assert_eq!(got, b"ls\r");
        assert_eq!(l.0, [true, false]);
        // RTIC clears it too, with data still there; masking drops the line.
        u.receive(b"x", l);
        u.rx_idle(l);
        u.write(UARTICR, u64::from(INT_RT), l);
        assert_eq!(l.0, [true, false, true, false]);
        u.rx_idle(l);
        assert!(u.level());
        u.write(UARTIMSC, 0, l);
        assert!(!u.level());
        assert_eq!(
            u.read(UARTRIS, l),
            u64::from(INT_TX | INT_RT),
            "raw is unmasked"
        );
        // Unmasking what is pending raises the line again.
        u.write(UARTIMSC, u64::from(INT_RT), l);
        assert_eq!(l.0, [true, false, true, false, true, false, true]);
    }

    #[test]
    fn transmit_interrupt_is_always_pending() {
        let mut u = Pl011::new();
        let l = &mut Levels::default();
        linux_setup(&mut u, l);
        // The driver unmasks TX when it has bytes queued...
        u.write(UARTIMSC, u64::from(INT_RX | INT_RT | INT_TX), l);
        assert_eq!(u.read(UARTMIS, l), u64::from(INT_TX));
        assert_eq!(l.0, [true]);
        // ...an ICR of TX does not clear it (the FIFO is still empty)...
        u.write(UARTICR, u64::from(INT_TX), l);
        assert!(u.level());
        // ...and masks it once they are written.
        u.write(UARTIMSC, u64::from(INT_RX | INT_RT), l);
        assert_eq!(l.0, [true, false]);
        assert_eq!(u.write(UARTDR, u64::from(b'x'), l), Some(b'x'));
        assert_eq!(l.0, [true, false], "writing DR changes no level");
    }

    #[test]
    fn closures_are_irq_lines() {
        let mut u = Pl011::new();
        let mut seen = Vec::new();
        let mut hook = |high: bool| seen.push(high);
        u.write(UARTIMSC, u64::from(INT_TX), &mut hook);
        u.write(UARTIMSC, 0, &mut hook);
        assert_eq!(seen, [true, false]);
    }
}
