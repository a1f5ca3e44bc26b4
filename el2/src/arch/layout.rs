//! Where everything lives in physical memory, and the host-image protocol
//! with the `cargo qemu` runner.
//!
//! # Memory map (QEMU `virt`, `-m 1G`: RAM at 0x4000_0000..0x8000_0000)
//!
//! | range | what | owner |
//! |---|---|---|
//! | RAM base .. +2 MiB (0x4000_0000) | the host's device tree ([`host_dtb`]), written by el2 | host |
//! | 0x4020_0000 .. `__image_end` (2 MiB aligned) | el2: code, data, `.bss`, per-CPU stacks and data, EL2 page tables | hypervisor |
//! | 0x43ff_f000 .. +48 | the host descriptor written by the runner ([`super::hostimg`]) | host |
//! | [`HOST_IMAGE_ADDR`] (0x4400_0000) .. | the host image as loaded (the test host by default; a raw `Image`, or a boot image and, 2 MiB aligned after it, its vendor boot image or initrd) | host |
//! | top of RAM − [`carveout_size`] .. top | el2's heap (buddy allocator): ownership table, host stage-2 tables, bookkeeping | hypervisor |
//! | the rest of RAM | free | host |
//!
//! Both hypervisor ranges are absent from the host's stage-2, owned by the
//! hypervisor in the ownership table, and `no-map` children of
//! `/reserved-memory` in the host's device tree. QEMU's own device tree
//! (at the RAM base for an ELF boot, at 0x4800_0000 when el2 boots as a raw
//! Image) is host memory: el2 reads it, then writes the host's copy at the
//! RAM base.
//!
//! # Host image protocol
//!
//! The runner describes what it loaded in a host descriptor at
//! [`super::hostimg::HOST_DESC_ADDR`] (0x43ff_f000): a raw arm64 `Image`
//! (+ initrd) or an Android boot image (+ vendor boot image), each as an
//! address and size; see [`super::hostimg`]. Without a descriptor, the old
//! protocol applies: a raw `Image` at [`HOST_IMAGE_ADDR`]
//! (`-device loader,file=<Image>,addr=0x44000000,force-raw=on`), which el2
//! checks (magic `ARM\x64` at +0x38, little-endian, `text_offset`
//! compatible with the address, `image_size` inside free host RAM) and
//! enters in place — how the built-in test host is loaded. Either way the
//! host is entered at EL1h with `x0` = the host device tree, `x1`..`x3` =
//! 0, MMU off, interrupts masked (Linux's boot protocol). No image is a
//! boot error.
//!
//! A Linux kernel from a boot image is copied to the lowest free
//! 2 MiB-aligned address + `text_offset` (0x4040_0000 on `-m 1G`, just
//! above el2), its initrd right above it.
//!
//! # Host MMIO
//!
//! The host's stage-2 maps as Device (RW, XN) the `reg` ranges of every
//! enabled device node of the device tree, walking into buses with an
//! identity (empty) `ranges` and taking the windows of buses that
//! translate (e.g. the PCIe host bridge's MMIO and I/O windows), minus RAM,
//! page-aligned. Any other address faults at stage 2, and el2 injects an
//! abort into the host.

use el2::fdt::{Platform, Range};

/// Where the runner loads the host image (see the module docs); keep
/// `qemu/src/qemu.rs` (`HOST_IMAGE_ADDR`) and `tests/testhost/linker.ld` in
/// step.
pub const HOST_IMAGE_ADDR: u64 = 0x4400_0000;

/// Most bytes the host device tree may take (it lives below el2's image).
pub const HOST_DTB_MAX: u64 = 2 << 20;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const BLOCK_2M: u64 = 2 * MIB;

/// The carve-out size for `ram_bytes` of RAM: 32 MiB, or RAM/64 (rounded
/// up to 2 MiB) if larger (the ownership table takes RAM/512, the heap
/// rounds allocations to powers of two), but never more than a quarter of
/// RAM.
pub fn carveout_size(ram_bytes: u64) -> u64 {
    let want = (32 * MIB).max((ram_bytes / 64).next_multiple_of(BLOCK_2M));
    want.min((ram_bytes / 4) & !(BLOCK_2M - 1))
}

/// Why the memory layout does not work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LayoutError {
    /// el2's own image is not inside RAM.
    ImageNotInRam(Range),
    /// RAM is too small or too fragmented for the carve-out.
    NoRoomForCarveout,
    /// The carve-out collides with something.
    CarveoutOverlaps(Range),
    /// RAM starting at physical address 0 (unsupported: null pointers).
    RamAtZero,
    /// No room below el2 for the host device tree.
    NoRoomForDtb,
    /// A host image range overlaps where the host device tree goes.
    HostOverlapsDtb(Range),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::ImageNotInRam(r) => write!(f, "el2's image {r} is not inside RAM"),
            LayoutError::NoRoomForCarveout => {
                write!(
                    f,
                    "the highest RAM region is too small for the hypervisor carve-out"
                )
            }
            LayoutError::CarveoutOverlaps(r) => write!(
                f,
                "the hypervisor memory would overlap {r} (el2's image, reserved memory, QEMU's device tree, the host image or its device tree)"
            ),
            LayoutError::RamAtZero => write!(f, "RAM at physical address 0 is not supported"),
            LayoutError::HostOverlapsDtb(r) => write!(
                f,
                "the host image range {r} overlaps the host device tree's slot below el2"
            ),
            LayoutError::NoRoomForDtb => write!(
                f,
                "no room for the host device tree between the start of RAM and el2's image"
            ),
        }
    }
}

/// The physical memory layout (module docs).
#[derive(Clone, Copy, Debug)]
pub struct MemLayout {
    /// el2's image, 2 MiB aligned at both ends.
    pub image: Range,
    /// The heap carve-out at the top of RAM.
    pub carveout: Range,
    /// Where the host device tree goes, and how much room it has.
    pub host_dtb: Range,
}

impl MemLayout {
    /// The hypervisor-owned ranges: el2's image and the carve-out.
    pub fn hyp(&self) -> [Range; 2] {
        [self.image, self.carveout]
    }
}

/// Computes the layout for `platform`, el2's image `image`, QEMU's device
/// tree `dt` (still read while the heap is in use) and the ranges the
/// runner loaded the host's images into (`host`: addresses and sizes).
pub fn compute(
    platform: &Platform,
    image: Range,
    dt: Range,
    host: &[Range],
) -> Result<MemLayout, LayoutError> {
    let ram = platform.ram.as_slice();
    if ram.iter().any(|r| r.base == 0) {
        return Err(LayoutError::RamAtZero);
    }
    let in_ram = |r: &Range| ram.iter().any(|m| m.base <= r.base && r.end() <= m.end());
    if !in_ram(&image) {
        return Err(LayoutError::ImageNotInRam(image));
    }
    let total: u64 = ram.iter().map(|r| r.size).sum();
    let size = carveout_size(total);
    let top = ram
        .iter()
        .max_by_key(|r| r.end())
        .ok_or(LayoutError::NoRoomForCarveout)?;
    let end = top.end() & !(BLOCK_2M - 1);
    let base = end
        .checked_sub(size)
        .ok_or(LayoutError::NoRoomForCarveout)?;
    if size == 0 || base < top.base {
        return Err(LayoutError::NoRoomForCarveout);
    }
    let carveout = Range { base, size };

    // The host device tree: from the start of el2's RAM region up to el2.
    let region = ram
        .iter()
        .find(|m| m.base <= image.base && image.end() <= m.end())
        .ok_or(LayoutError::ImageNotInRam(image))?;
    let dtb_base = region.base.next_multiple_of(PAGE);
    let room = image.base.saturating_sub(dtb_base).min(HOST_DTB_MAX);
    if room < PAGE {
        return Err(LayoutError::NoRoomForDtb);
    }
    let host_dtb = Range {
        base: dtb_base,
        size: room,
    };
    if carveout.overlaps(&image) {
        return Err(LayoutError::CarveoutOverlaps(image));
    }
    // QEMU's device tree is read until the host's copy is written, long
    // after the heap (the carve-out) is in use.
    if carveout.overlaps(&dt) {
        return Err(LayoutError::CarveoutOverlaps(dt));
    }
    for other in platform
        .reserved
        .as_slice()
        .iter()
        .chain(host)
        .chain([&host_dtb])
    {
        if other.overlaps(&carveout) || other.overlaps(&image) {
            return Err(LayoutError::CarveoutOverlaps(*other));
        }
    }
    // The host's device tree is written over its slot after the host's
    // images are in place.
    if let Some(h) = host.iter().find(|h| h.overlaps(&host_dtb)) {
        return Err(LayoutError::HostOverlapsDtb(*h));
    }
    Ok(MemLayout {
        image,
        carveout,
        host_dtb,
    })
}

/// The fields of an arm64 Image header el2 checks.
#[derive(Clone, Copy, Debug)]
pub struct ImageHeader {
    /// `text_offset`.
    pub text_offset: u64,
    /// `image_size` (0: unknown, pre-3.17 kernels).
    pub image_size: u64,
    /// `flags`.
    pub flags: u64,
}

/// Why the host image cannot be booted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ImageError {
    /// No `ARM\x64` magic: nothing loaded at [`HOST_IMAGE_ADDR`].
    NoMagic,
    /// Big-endian kernel (flags bit 0).
    BigEndian,
    /// `text_offset` does not fit the load address's 2 MiB alignment.
    TextOffset(u64),
    /// The image (per `image_size`) leaves RAM or overlaps the hypervisor.
    Placement(Range),
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::NoMagic => write!(
                f,
                "no arm64 Image (magic \"ARM\\x64\" at +0x38) at {HOST_IMAGE_ADDR:#x}: load the host \
                 with -device loader,file=<Image>,addr={HOST_IMAGE_ADDR:#x},force-raw=on"
            ),
            ImageError::BigEndian => write!(f, "the host image is big-endian"),
            ImageError::TextOffset(t) => write!(
                f,
                "the host image's text_offset {t:#x} needs a load address of 2 MiB + {t:#x}, \
                 not {HOST_IMAGE_ADDR:#x}"
            ),
            ImageError::Placement(r) => write!(
                f,
                "the host image {r} does not fit in free host RAM (outside RAM, or over el2's memory)"
            ),
        }
    }
}

/// Parses the 64-byte Image header `h`.
pub fn parse_image_header(h: &[u8; 64]) -> Result<ImageHeader, ImageError> {
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if h[0x38..0x3c] != *b"ARM\x64" {
        return Err(ImageError::NoMagic);
    }
    let hdr = ImageHeader {
        text_offset: u64_at(0x08),
        image_size: u64_at(0x10),
        flags: u64_at(0x18),
    };
    if hdr.flags & 1 != 0 {
        return Err(ImageError::BigEndian);
    }
    if !HOST_IMAGE_ADDR
        .wrapping_sub(hdr.text_offset)
        .is_multiple_of(BLOCK_2M)
    {
        return Err(ImageError::TextOffset(hdr.text_offset));
    }
    Ok(hdr)
}

/// The range the host image occupies (its `image_size`, or 64 bytes if
/// unknown), page aligned.
pub fn host_image_range(hdr: &ImageHeader) -> Range {
    Range {
        base: HOST_IMAGE_ADDR,
        size: hdr.image_size.max(64).next_multiple_of(PAGE),
    }
}
