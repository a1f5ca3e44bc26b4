//! Errors returned by stage-2 operations.

use crate::addr::{Ipa, PhysAddr};
use crate::level::Level;
use core::fmt;

/// Linux errno values, for callers that report errors the kernel's way.
pub mod errno {
    /// No such entry.
    pub const ENOENT: i32 = 2;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
}

/// Why a stage-2 operation was refused. Every refusal happens before any
/// descriptor is changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// An address or size is not a multiple of 4 KiB (or of the block size
    /// an explicit block operation asks for).
    Unaligned(u64),
    /// The range is empty.
    EmptyRange,
    /// The end of the range does not fit in 64 bits.
    RangeOverflow,
    /// The range reaches beyond the configured IPA size.
    IpaOutOfRange {
        /// First IPA past the end of the requested range.
        end: u64,
        /// First IPA past the configured input range.
        limit: u64,
    },
    /// An output address has bits beyond the configured PA range.
    OutputOutOfRange {
        /// First PA past the end of the requested output range.
        end: u64,
        /// First PA past the configured output range.
        limit: u64,
    },
    /// The level cannot hold a block (levels 0 and 3 with 4 KiB pages), or
    /// is beyond the start level of this table.
    BlockNotAllowed(Level),
    /// Permissions or software bits were to be changed on a page that is
    /// not mapped.
    NotMapped(Ipa),
    /// The page pool could not supply the table pages the operation needs.
    OutOfMemory {
        /// Table pages the operation needed.
        needed: usize,
    },
    /// Spare software bits out of range (0..=3).
    InvalidSoftwareBits,
    /// The IPA size or PA range is not supported (IPA 32–48 bits, not above
    /// the PA range).
    InvalidConfig,
    /// A prepared operation was committed to a different table, or after
    /// another change to it.
    StalePreparation,
}

impl Error {
    /// The Linux errno this error corresponds to (positive).
    pub const fn errno(self) -> i32 {
        match self {
            Error::OutOfMemory { .. } => errno::ENOMEM,
            Error::NotMapped(_) => errno::ENOENT,
            _ => errno::EINVAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unaligned(v) => write!(f, "{v:#x} is not aligned"),
            Error::EmptyRange => write!(f, "empty range"),
            Error::RangeOverflow => write!(f, "range end overflows 64 bits"),
            Error::IpaOutOfRange { end, limit } => {
                write!(
                    f,
                    "range ends at IPA {end:#x}, beyond the IPA limit {limit:#x}"
                )
            }
            Error::OutputOutOfRange { end, limit } => {
                write!(
                    f,
                    "output range ends at {end:#x}, beyond the PA limit {limit:#x}"
                )
            }
            Error::BlockNotAllowed(l) => write!(f, "level {} cannot hold a block", l.get()),
            Error::NotMapped(ipa) => write!(f, "{ipa:?} is not mapped"),
            Error::OutOfMemory { needed } => {
                write!(
                    f,
                    "out of page-table pages ({needed} needed); nothing was changed"
                )
            }
            Error::InvalidSoftwareBits => write!(f, "spare software bits must be 0..=3"),
            Error::InvalidConfig => write!(f, "unsupported IPA size or PA range"),
            Error::StalePreparation => write!(f, "prepared operation is stale"),
        }
    }
}

/// Checks that `[start, start + size)` is a non-empty, page-aligned range
/// whose end fits in 64 bits, and returns its end.
pub(crate) fn check_range(start: u64, size: u64) -> Result<u64, Error> {
    if !start.is_multiple_of(crate::PAGE_SIZE) {
        return Err(Error::Unaligned(start));
    }
    if !size.is_multiple_of(crate::PAGE_SIZE) {
        return Err(Error::Unaligned(size));
    }
    if size == 0 {
        return Err(Error::EmptyRange);
    }
    start.checked_add(size).ok_or(Error::RangeOverflow)
}

/// Checks an output range against the PA limit.
pub(crate) fn check_output(pa: PhysAddr, size: u64, limit: u64) -> Result<(), Error> {
    let end = check_range(pa.get(), size)?;
    if end > limit {
        return Err(Error::OutputOutOfRange { end, limit });
    }
    Ok(())
}
