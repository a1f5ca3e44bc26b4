//! The Linux arm64 boot protocol (`Documentation/arch/arm64/booting.rst`):
//! the kernel `Image` header, and where the kernel, the initrd and the
//! device tree go in guest RAM ([`crate::platform`] module docs).
//!
//! Everything here is arithmetic on the header and sizes: nothing is
//! written, and every size a guest image can carry is checked
//! overflow-safe before it is used.

use core::fmt;

use crate::platform::{FDT_MAX, RAM_BASE};

/// Bytes of the arm64 `Image` header.
pub const HEADER_SIZE: usize = 64;
/// The header's magic, at [`MAGIC_OFFSET`]: `ARM\x64`.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// Where the magic sits in the header.
pub const MAGIC_OFFSET: usize = 0x38;
/// 2 MiB: the initrd and the device tree start on such a boundary.
pub const BLOCK: u64 = 2 << 20;
/// 4 KiB.
const PAGE: u64 = 4096;

/// Header flag bit 0: the kernel is big-endian.
pub const FLAG_BIG_ENDIAN: u64 = 1 << 0;

/// What the header of a kernel `Image` says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Arm64Image {
    /// Where the image goes, from a 2 MiB-aligned base of RAM (+8).
    pub text_offset: u64,
    /// Bytes the kernel uses from its load address, its BSS included
    /// (+16); 0 in kernels older than 3.17.
    pub image_size: u64,
    /// Kernel flags (+24): endianness, page size, placement.
    pub flags: u64,
}

/// Why a kernel `Image` was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ImageError {
    /// Shorter than the 64-byte header.
    TooShort {
        /// The file's length.
        len: usize,
    },
    /// No `ARM\x64` at 0x38: not an arm64 `Image`.
    BadMagic,
    /// Flag bit 0 set: a big-endian kernel (the platform is little-endian).
    BigEndian,
    /// `text_offset` is not a multiple of 4 KiB.
    TextOffset {
        /// The header's value.
        text_offset: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::TooShort { len } => write!(
                f,
                "kernel Image: {len} bytes, shorter than its {HEADER_SIZE}-byte header"
            ),
            ImageError::BadMagic => {
                f.write_str("kernel Image: bad magic (no \"ARM\\x64\" at offset 0x38)")
            }
            ImageError::BigEndian => f.write_str("kernel Image: a big-endian kernel (flags bit 0)"),
            ImageError::TextOffset { text_offset } => write!(
                f,
                "kernel Image: text_offset {text_offset:#x} is not a multiple of 4 KiB"
            ),
        }
    }
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Arm64Image {
    /// Parses and checks the header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<Arm64Image, ImageError> {
        if image.len() < HEADER_SIZE {
            return Err(ImageError::TooShort { len: image.len() });
        }
        if image[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let header = Arm64Image {
            text_offset: le64(image, 8),
            image_size: le64(image, 16),
            flags: le64(image, 24),
        };
        if header.flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        if !header.text_offset.is_multiple_of(PAGE) {
            return Err(ImageError::TextOffset {
                text_offset: header.text_offset,
            });
        }
        Ok(header)
    }

    /// Bytes the kernel occupies from its load address: `image_size`, or
    /// the file's length if that is larger (or `image_size` is 0).
    pub fn footprint(&self, file_len: u64) -> u64 {
        self.image_size.max(file_len)
    }
}

/// Why the files do not fit the guest's RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LayoutError {
    /// Guest RAM is too small to hold a kernel and the device tree's
    /// 2 MiB.
    NoRoom {
        /// Guest RAM in bytes.
        mem: u64,
    },
    /// The kernel (`text_offset` + its footprint) runs into the device
    /// tree's last 2 MiB of RAM.
    Kernel {
        /// Where the kernel's footprint ends (offset into RAM).
        end: u64,
        /// Where the device tree's 2 MiB start (offset into RAM).
        limit: u64,
    },
    /// The initrd runs into the device tree's last 2 MiB of RAM.
    Initrd {
        /// Where the initrd ends (offset into RAM).
        end: u64,
        /// Where the device tree's 2 MiB start (offset into RAM).
        limit: u64,
    },
    /// The device tree is larger than [`FDT_MAX`].
    DeviceTree {
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::NoRoom { mem } => write!(
                f,
                "{mem:#x} bytes of guest RAM leave no room for a kernel below the device tree's \
                 last 2 MiB"
            ),
            LayoutError::Kernel { end, limit } => write!(
                f,
                "the kernel (text_offset + image_size) ends at RAM offset {end:#x}, past \
                 {limit:#x} where the device tree's last 2 MiB of RAM start"
            ),
            LayoutError::Initrd { end, limit } => write!(
                f,
                "the initrd ends at RAM offset {end:#x}, past {limit:#x} where the device \
                 tree's last 2 MiB of RAM start"
            ),
            LayoutError::DeviceTree { size } => write!(
                f,
                "the device tree is {size} bytes, more than the {FDT_MAX} it may take"
            ),
        }
    }
}

/// A byte range of guest RAM, as an offset into the RAM guest_memfd.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Placement {
    /// Offset from [`RAM_BASE`] (= offset into the guest_memfd).
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

impl Placement {
    /// The guest physical address of its first byte.
    pub fn ipa(&self) -> u64 {
        RAM_BASE + self.offset
    }

    /// One past its last byte, as an offset.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Where everything goes in guest RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootLayout {
    /// The kernel file's bytes, at `text_offset`.
    pub kernel: Placement,
    /// The kernel's whole footprint (its BSS included).
    pub kernel_footprint: Placement,
    /// The initrd, at the next 2 MiB boundary after the footprint.
    pub initrd: Option<Placement>,
    /// The device tree, at the start of the last 2 MiB of RAM.
    pub fdt: Placement,
}

impl BootLayout {
    /// Plans a guest with `mem` bytes of RAM (a multiple of 2 MiB, checked
    /// by the caller) for the kernel `image` (`kernel_len` bytes of file),
    /// an initrd of `initrd_len` bytes and a device tree of `fdt_len`
    /// bytes.
    pub fn plan(
        mem: u64,
        image: &Arm64Image,
        kernel_len: u64,
        initrd_len: Option<u64>,
        fdt_len: u64,
    ) -> Result<BootLayout, LayoutError> {
        if fdt_len > FDT_MAX {
            return Err(LayoutError::DeviceTree { size: fdt_len });
        }
        let limit = mem
            .checked_sub(BLOCK)
            .filter(|l| *l > 0)
            .ok_or(LayoutError::NoRoom { mem })?;
        let footprint = image.footprint(kernel_len);
        let kernel_end = image
            .text_offset
            .checked_add(footprint)
            .filter(|e| *e <= limit)
            .ok_or(LayoutError::Kernel {
                end: image.text_offset.saturating_add(footprint),
                limit,
            })?;
        let initrd =
            match initrd_len {
                None | Some(0) => None,
                Some(len) => {
                    let offset = kernel_end.next_multiple_of(BLOCK);
                    let end = offset.checked_add(len).filter(|e| *e <= limit).ok_or(
                        LayoutError::Initrd {
                            end: offset.saturating_add(len),
                            limit,
                        },
                    )?;
                    Some(Placement {
                        offset,
                        len: end - offset,
                    })
                }
            };
        Ok(BootLayout {
            kernel: Placement {
                offset: image.text_offset,
                len: kernel_len,
            },
            kernel_footprint: Placement {
                offset: image.text_offset,
                len: footprint,
            },
            initrd,
            fdt: Placement {
                offset: limit,
                len: fdt_len,
            },
        })
    }

    /// The boot vCPU's entry point: the kernel's first instruction.
    pub fn entry(&self) -> u64 {
        self.kernel.ipa()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A header with these fields (and the magic).
    pub fn header(text_offset: u64, image_size: u64, flags: u64) -> alloc::vec::Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
        h
    }

    #[test]
    fn parses_the_header() {
        let h = header(0x8_0000, 0x12_3000, 0xa);
        assert_eq!(
            Arm64Image::parse(&h),
            Ok(Arm64Image {
                text_offset: 0x8_0000,
                image_size: 0x12_3000,
                flags: 0xa
            })
        );
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(
            Arm64Image::parse(&[0; 63]),
            Err(ImageError::TooShort { len: 63 })
        );
        let mut h = header(0, 0x1000, 0);
        h[MAGIC_OFFSET] = b'X';
        assert_eq!(Arm64Image::parse(&h), Err(ImageError::BadMagic));
        assert_eq!(
            Arm64Image::parse(&header(0, 0x1000, 1)),
            Err(ImageError::BigEndian)
        );
        assert_eq!(
            Arm64Image::parse(&header(0x800, 0x1000, 0)),
            Err(ImageError::TextOffset { text_offset: 0x800 })
        );
        assert!(
            alloc::format!("{}", ImageError::BadMagic).contains("bad magic"),
            "messages name the problem"
        );
    }

    #[test]
    fn plans_kernel_initrd_and_device_tree() {
        let img = Arm64Image::parse(&header(0, 0x30_1000, 0)).unwrap();
        let l = BootLayout::plan(64 << 20, &img, 0x20_0000, Some(5000), 900).unwrap();
        assert_eq!(
            l.kernel,
            Placement {
                offset: 0,
                len: 0x20_0000
            }
        );
        assert_eq!(l.kernel_footprint.end(), 0x30_1000);
        assert_eq!(l.entry(), RAM_BASE);
        assert_eq!(
            l.initrd,
            Some(Placement {
                offset: 0x40_0000,
                len: 5000
            })
        );
        assert_eq!(l.fdt.offset, (64 << 20) - BLOCK);
        assert_eq!(l.fdt.ipa(), RAM_BASE + (62 << 20));
        // No initrd; image_size 0 uses the file's length.
        let img = Arm64Image::parse(&header(0x8_0000, 0, 0)).unwrap();
        let l = BootLayout::plan(4 << 20, &img, 0x1000, None, 100).unwrap();
        assert_eq!(l.initrd, None);
        assert_eq!(l.kernel_footprint.len, 0x1000);
        assert_eq!(l.entry(), RAM_BASE + 0x8_0000);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let img = Arm64Image::parse(&header(0, 0x20_0001, 0)).unwrap();
        assert_eq!(
            BootLayout::plan(4 << 20, &img, 0x1000, None, 100),
            Err(LayoutError::Kernel {
                end: 0x20_0001,
                limit: 0x20_0000
            })
        );
        let img = Arm64Image::parse(&header(0, 0x1000, 0)).unwrap();
        assert_eq!(
            BootLayout::plan(2 << 20, &img, 0x1000, None, 100),
            Err(LayoutError::NoRoom { mem: 2 << 20 })
        );
        assert_eq!(
            BootLayout::plan(6 << 20, &img, 0x1000, Some(0x20_0001), 100),
            Err(LayoutError::Initrd {
                end: 0x40_0001,
                limit: 0x40_0000
            })
        );
        assert_eq!(
            BootLayout::plan(6 << 20, &img, 0x1000, None, FDT_MAX + 1),
            Err(LayoutError::DeviceTree { size: FDT_MAX + 1 })
        );
        // Huge header values do not overflow.
        let img = Arm64Image::parse(&header(!0xfff, u64::MAX, 0)).unwrap();
        assert!(matches!(
            BootLayout::plan(6 << 20, &img, 0x1000, None, 100),
            Err(LayoutError::Kernel { .. })
        ));
        let img = Arm64Image::parse(&header(0, 0x1000, 0)).unwrap();
        assert!(matches!(
            BootLayout::plan(6 << 20, &img, 0x1000, Some(u64::MAX), 100),
            Err(LayoutError::Initrd { .. })
        ));
    }
}
