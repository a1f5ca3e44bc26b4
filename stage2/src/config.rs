//! Stage-2 configuration: IPA size, start level, concatenated root tables,
//! and the matching `VTCR_EL2` value (4 KiB granule only).

use crate::error::Error;
use crate::level::{ENTRIES_PER_TABLE, Level};

/// The physical address range (`ID_AA64MMFR0_EL1.PARange`, `VTCR_EL2.PS`).
/// 52-bit ranges are capped at 48 bits: this crate does not use LPA2.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum PaRange {
    /// 32 bits, 4 GiB (PS = 0b000).
    Bits32,
    /// 36 bits, 64 GiB (PS = 0b001).
    Bits36,
    /// 40 bits, 1 TiB (PS = 0b010).
    Bits40,
    /// 42 bits, 4 TiB (PS = 0b011).
    Bits42,
    /// 44 bits, 16 TiB (PS = 0b100).
    Bits44,
    /// 48 bits, 256 TiB (PS = 0b101).
    Bits48,
}

impl PaRange {
    /// Decodes `ID_AA64MMFR0_EL1.PARange` (bits 3:0). 52 bits (0b0110) is
    /// capped to 48; unknown values give `None`.
    pub const fn from_parange(field: u64) -> Option<PaRange> {
        match field {
            0 => Some(PaRange::Bits32),
            1 => Some(PaRange::Bits36),
            2 => Some(PaRange::Bits40),
            3 => Some(PaRange::Bits42),
            4 => Some(PaRange::Bits44),
            5 | 6 => Some(PaRange::Bits48),
            _ => None,
        }
    }

    /// Number of address bits.
    pub const fn bits(self) -> u8 {
        match self {
            PaRange::Bits32 => 32,
            PaRange::Bits36 => 36,
            PaRange::Bits40 => 40,
            PaRange::Bits42 => 42,
            PaRange::Bits44 => 44,
            PaRange::Bits48 => 48,
        }
    }

    /// The `VTCR_EL2.PS` encoding.
    pub const fn ps(self) -> u64 {
        self as u64
    }
}

/// Smallest supported IPA size.
pub const MIN_IPA_BITS: u8 = 32;
/// Largest supported IPA size (no LPA2).
pub const MAX_IPA_BITS: u8 = 48;

/// Shape of one stage-2 translation: input size, output range and the
/// translation regime parameters that follow from them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stage2Config {
    ipa_bits: u8,
    pa_range: PaRange,
    vmid16: bool,
}

impl Stage2Config {
    /// A configuration for `ipa_bits` of input (32–48) translated to
    /// `pa_range`. The IPA size may not exceed the PA range: the
    /// architecture does not allow a stage-2 input size larger than the
    /// implemented physical address size.
    pub const fn new(ipa_bits: u8, pa_range: PaRange) -> Result<Stage2Config, Error> {
        if ipa_bits < MIN_IPA_BITS || ipa_bits > MAX_IPA_BITS || ipa_bits > pa_range.bits() {
            return Err(Error::InvalidConfig);
        }
        Ok(Stage2Config {
            ipa_bits,
            pa_range,
            vmid16: false,
        })
    }

    /// The same configuration with 16-bit VMIDs enabled (`VTCR_EL2.VS`).
    pub const fn with_vmid16(self, vmid16: bool) -> Stage2Config {
        Stage2Config { vmid16, ..self }
    }

    /// IPA size in bits.
    pub const fn ipa_bits(self) -> u8 {
        self.ipa_bits
    }

    /// Output address range.
    pub const fn pa_range(self) -> PaRange {
        self.pa_range
    }

    /// First IPA beyond the input range.
    pub const fn ipa_limit(self) -> u64 {
        1 << self.ipa_bits
    }

    /// First PA beyond the output range.
    pub const fn pa_limit(self) -> u64 {
        1 << self.pa_range.bits()
    }

    /// Number of levels walked. Like Linux (`stage2_pgtable_levels`), this
    /// uses as many concatenated root tables as the architecture allows (up
    /// to 16, i.e. 4 extra bits) to save a level, and never fewer than 2.
    pub const fn levels(self) -> u8 {
        let levels = (self.ipa_bits - 4 - 4) / 9;
        if levels < 2 { 2 } else { levels }
    }

    /// The level the walk starts at.
    pub const fn start_level(self) -> Level {
        match Level::new(4 - self.levels()) {
            Some(l) => l,
            None => Level::L0,
        }
    }

    /// Number of descriptors in the (possibly concatenated) root table.
    pub const fn root_entries(self) -> usize {
        1 << (self.ipa_bits as u32 - self.start_level().shift())
    }

    /// Number of concatenated 4 KiB pages forming the root table (1–16).
    pub const fn root_pages(self) -> usize {
        let pages = self.root_entries() / ENTRIES_PER_TABLE;
        if pages == 0 { 1 } else { pages }
    }

    /// The `VTCR_EL2` value: T0SZ, SL0, inner/outer write-back
    /// write-allocate walks, inner shareable, 4 KiB granule, PS, VS and the
    /// RES1 bit 31. Hardware AF/DBM updates are left off: this crate always
    /// sets AF itself.
    pub const fn vtcr(self) -> u64 {
        let t0sz = 64 - self.ipa_bits as u64;
        // SL0 for 4 KiB: 2 = level 0, 1 = level 1, 0 = level 2.
        let sl0 = 2 - self.start_level().get() as u64;
        let irgn0 = 0b01 << 8;
        let orgn0 = 0b01 << 10;
        let sh0 = 0b11 << 12;
        let tg0 = 0b00 << 14;
        let ps = self.pa_range.ps() << 16;
        let vs = if self.vmid16 { 1 << 19 } else { 0 };
        let res1 = 1 << 31;
        t0sz | (sl0 << 6) | irgn0 | orgn0 | sh0 | tg0 | ps | vs | res1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsupported_sizes() {
        assert_eq!(
            Stage2Config::new(31, PaRange::Bits48),
            Err(Error::InvalidConfig)
        );
        assert_eq!(
            Stage2Config::new(49, PaRange::Bits48),
            Err(Error::InvalidConfig)
        );
        assert_eq!(
            Stage2Config::new(44, PaRange::Bits40),
            Err(Error::InvalidConfig)
        );
        assert!(Stage2Config::new(40, PaRange::Bits40).is_ok());
    }

    /// Start level and concatenation computed by hand from the Arm rules
    /// (4 KiB granule: level 1 covers 30 bits per entry, level 2 21 bits,
    /// level 0 39 bits; at most 16 concatenated tables).
    #[test]
    fn start_level_and_concatenation() {
        let cases: [(u8, u8, usize); 9] = [
            // ipa bits, start level, root pages
            (32, 2, 4),  // 2^(32-21) = 2048 entries at level 2
            (33, 2, 8),  // 4096 entries
            (34, 2, 16), // 8192 entries: 16 tables, the maximum
            (35, 1, 1),  // 32 entries at level 1
            (39, 1, 1),  // 512 entries
            (40, 1, 2),  // 1024 entries: the guest default
            (43, 1, 16), // 8192 entries
            (44, 0, 1),  // 32 entries at level 0
            (48, 0, 1),  // 512 entries
        ];
        for (ipa, start, pages) in cases {
            let c = Stage2Config::new(ipa, PaRange::Bits48).unwrap();
            assert_eq!(c.start_level().get(), start, "ipa {ipa}");
            assert_eq!(c.root_pages(), pages, "ipa {ipa}");
        }
        for ipa in MIN_IPA_BITS..=MAX_IPA_BITS {
            let c = Stage2Config::new(ipa, PaRange::Bits48).unwrap();
            assert!(c.root_pages() >= 1 && c.root_pages() <= 16, "ipa {ipa}");
            assert_eq!(
                c.root_entries() as u64 * c.start_level().size(),
                1u64 << ipa
            );
        }
    }

    /// VTCR_EL2 values computed by hand:
    /// T0SZ | SL0<<6 | IRGN0=1<<8 | ORGN0=1<<10 | SH0=3<<12 | TG0=0 | PS<<16 | VS<<19 | 1<<31.
    #[test]
    fn vtcr_matches_hand_computed_values() {
        // 40-bit guest on a 40-bit PA machine: T0SZ=24 (0x18), SL0=1 (0x40),
        // PS=2 (0x20000): 0x8002_3558.
        let c = Stage2Config::new(40, PaRange::Bits40).unwrap();
        assert_eq!(c.vtcr(), 0x8002_3558);
        // Host on QEMU cortex-a72 (PARange 44 bits): T0SZ=20 (0x14), SL0=2
        // (0x80), PS=4 (0x40000): 0x8004_3594.
        let c = Stage2Config::new(44, PaRange::Bits44).unwrap();
        assert_eq!(c.vtcr(), 0x8004_3594);
        // 48-bit with 16-bit VMIDs: T0SZ=16 (0x10), SL0=2, PS=5 (0x50000),
        // VS (0x80000): 0x800D_3590.
        let c = Stage2Config::new(48, PaRange::Bits48)
            .unwrap()
            .with_vmid16(true);
        assert_eq!(c.vtcr(), 0x800D_3590);
        // 32-bit IPA: T0SZ=32 (0x20), SL0=0 (start level 2, 4 tables),
        // PS=0: 0x8000_3520.
        let c = Stage2Config::new(32, PaRange::Bits32).unwrap();
        assert_eq!(c.vtcr(), 0x8000_3520);
    }

    #[test]
    fn parange_decoding() {
        assert_eq!(PaRange::from_parange(2), Some(PaRange::Bits40));
        assert_eq!(PaRange::from_parange(6), Some(PaRange::Bits48));
        assert_eq!(PaRange::from_parange(7), None);
        assert_eq!(PaRange::Bits44.ps(), 4);
        let c = Stage2Config::new(40, PaRange::Bits44).unwrap();
        assert_eq!(c.ipa_limit(), 1 << 40);
        assert_eq!(c.pa_limit(), 1 << 44);
    }
}
