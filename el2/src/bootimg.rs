//! Android boot images: the parser the hypervisor uses to load a Linux
//! host, and (feature `pack`) the packer the runner uses to build them.
//!
//! Formats (AOSP `bootimg.h`, little-endian):
//! - boot header v0–v2 (`ANDROID!`, page size from the header): header
//!   page, kernel, ramdisk, second stage, recovery DTBO (v1+), DTB (v2),
//!   each padded to the page size;
//! - boot header v3–v4 (`ANDROID!`, 4096-byte pages): header, kernel,
//!   ramdisk, boot signature (v4);
//! - vendor boot v3–v4 (`VNDRBOOT`, page size from the header): header,
//!   vendor ramdisk(s), DTB, vendor ramdisk table (v4), bootconfig (v4).
//!
//! Every size, offset and page-size field is checked (overflow,
//! truncation, overlap); a bad image is refused with an error that names
//! the field. Nothing here panics on any input.

use core::fmt;

/// `ANDROID!`.
pub const BOOT_MAGIC: &[u8; 8] = b"ANDROID!";
/// `VNDRBOOT`.
pub const VENDOR_BOOT_MAGIC: &[u8; 8] = b"VNDRBOOT";
/// Page size of v3/v4 boot images.
pub const V3_PAGE_SIZE: u32 = 4096;
/// The arm64 Image header magic, at offset 0x38.
pub const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// What is wrong with an image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Problem {
    /// The field's value is not allowed.
    Invalid,
    /// The section (or the header) runs past the end of the image.
    Truncated,
    /// An offset or size computation overflows.
    Overflow,
    /// The field is required and is zero or missing.
    Missing,
    /// Two regions overlap.
    Overlap,
}

/// A refused image: which field, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootImageError {
    /// The header field (or section) at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for BootImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.problem {
            Problem::Invalid => "invalid",
            Problem::Truncated => "runs past the end of the image",
            Problem::Overflow => "overflows",
            Problem::Missing => "missing",
            Problem::Overlap => "overlaps another region",
        };
        write!(f, "boot image: {} {what}", self.field)
    }
}

fn err(field: &'static str, problem: Problem) -> BootImageError {
    BootImageError { field, problem }
}

fn u32_at(b: &[u8], off: usize, field: &'static str) -> Result<u32, BootImageError> {
    let s = b.get(off..off + 4).ok_or(err(field, Problem::Truncated))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize, field: &'static str) -> Result<u64, BootImageError> {
    let s = b.get(off..off + 8).ok_or(err(field, Problem::Truncated))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// A NUL-terminated string field, as text (bytes after the first NUL are
/// ignored; invalid UTF-8 is refused).
fn str_at<'a>(
    b: &'a [u8],
    off: usize,
    len: usize,
    field: &'static str,
) -> Result<&'a str, BootImageError> {
    let s = b
        .get(off..off + len)
        .ok_or(err(field, Problem::Truncated))?;
    let end = s.iter().position(|c| *c == 0).unwrap_or(len);
    core::str::from_utf8(&s[..end]).map_err(|_| err(field, Problem::Invalid))
}

fn round_up(v: u64, page: u64, field: &'static str) -> Result<u64, BootImageError> {
    v.checked_next_multiple_of(page)
        .ok_or(err(field, Problem::Overflow))
}

/// Walks the page-aligned sections of an image.
struct Sections<'a> {
    image: &'a [u8],
    page: u64,
    next: u64,
}

impl<'a> Sections<'a> {
    fn new(image: &'a [u8], page: u64, header_size: u64) -> Result<Self, BootImageError> {
        let next = round_up(header_size, page, "header_size")?;
        Ok(Sections { image, page, next })
    }

    fn take(&mut self, size: u32, field: &'static str) -> Result<&'a [u8], BootImageError> {
        let start = self.next;
        let end = start
            .checked_add(size as u64)
            .ok_or(err(field, Problem::Overflow))?;
        if end > self.image.len() as u64 {
            return Err(err(field, Problem::Truncated));
        }
        self.next = round_up(end, self.page, field)?;
        Ok(&self.image[start as usize..end as usize])
    }
}

fn check_page_size(p: u32, field: &'static str) -> Result<u64, BootImageError> {
    if !(2048..=65536).contains(&p) || !p.is_power_of_two() {
        return Err(err(field, Problem::Invalid));
    }
    Ok(p as u64)
}

/// A parsed boot image (with its vendor boot image, for v3/v4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootImage<'a> {
    /// Boot header version (0–4).
    pub header_version: u32,
    /// The kernel (an arm64 Image).
    pub kernel: &'a [u8],
    /// Ramdisks in load order: the vendor ramdisk first (v3/v4), then the
    /// generic one. Empty slices are absent.
    pub ramdisks: [&'a [u8]; 2],
    /// Command-line parts in order: vendor (v3/v4) or boot cmdline, then
    /// the boot cmdline (v3/v4) or the extra cmdline (v0–v2).
    pub cmdline: [&'a str; 2],
    /// The DTB, from the vendor boot image (v3/v4) or the v2 header.
    pub dtb: Option<&'a [u8]>,
    /// Vendor bootconfig (v4), appended to the initrd with its trailer.
    pub bootconfig: &'a [u8],
    /// `os_version` (boot header).
    pub os_version: u32,
}

impl<'a> BootImage<'a> {
    /// Parses a boot image; v3/v4 images take an optional vendor boot
    /// image, which must be v3/v4 too. A v0–v2 image with a vendor boot
    /// image is refused.
    pub fn parse(
        boot: &'a [u8],
        vendor: Option<&'a [u8]>,
    ) -> Result<BootImage<'a>, BootImageError> {
        if boot.get(0..8) != Some(&BOOT_MAGIC[..]) {
            return Err(err("magic", Problem::Invalid));
        }
        let version = u32_at(boot, 40, "header_version")?;
        let img = match version {
            0..=2 => {
                if vendor.is_some() {
                    return Err(err("vendor_boot", Problem::Invalid));
                }
                parse_v0_v2(boot, version)?
            }
            3 | 4 => parse_v3_v4(boot, version, vendor)?,
            _ => return Err(err("header_version", Problem::Invalid)),
        };
        if img.kernel.is_empty() {
            return Err(err("kernel_size", Problem::Missing));
        }
        Ok(img)
    }

    /// A raw arm64 `Image` and an optional initrd (empty: none), not
    /// packed in a boot image, in the same form so that [`plan`] and
    /// [`write_initrd`](Self::write_initrd) handle both alike: no command
    /// line, no DTB, `header_version` 0. The kernel's Image header is
    /// checked ([`Arm64Image::parse`]).
    pub fn raw(kernel: &'a [u8], initrd: &'a [u8]) -> Result<BootImage<'a>, BootImageError> {
        if kernel.is_empty() {
            return Err(err("kernel_size", Problem::Missing));
        }
        Arm64Image::parse(kernel)?;
        Ok(BootImage {
            header_version: 0,
            kernel,
            ramdisks: [initrd, &[]],
            cmdline: ["", ""],
            dtb: None,
            bootconfig: &[],
            os_version: 0,
        })
    }

    /// The total initrd size: every ramdisk, plus the bootconfig and its
    /// 20-byte trailer when present.
    pub fn initrd_size(&self) -> u64 {
        let bc = if self.bootconfig.is_empty() {
            0
        } else {
            self.bootconfig.len() as u64 + BOOTCONFIG_TRAILER as u64
        };
        self.ramdisks.iter().map(|r| r.len() as u64).sum::<u64>() + bc
    }

    /// Writes the initrd (ramdisks in order, then the bootconfig with its
    /// trailer) into `out`, which must be [`initrd_size`](Self::initrd_size)
    /// bytes; returns the bytes written.
    pub fn write_initrd(&self, out: &mut [u8]) -> Result<usize, BootImageError> {
        let total = self.initrd_size() as usize;
        let out = out
            .get_mut(..total)
            .ok_or(err("initrd", Problem::Truncated))?;
        let mut at = 0;
        for r in self.ramdisks {
            out[at..at + r.len()].copy_from_slice(r);
            at += r.len();
        }
        if !self.bootconfig.is_empty() {
            out[at..at + self.bootconfig.len()].copy_from_slice(self.bootconfig);
            at += self.bootconfig.len();
            let sum = self
                .bootconfig
                .iter()
                .fold(0u32, |s, b| s.wrapping_add(*b as u32));
            out[at..at + 4].copy_from_slice(&(self.bootconfig.len() as u32).to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&sum.to_le_bytes());
            out[at + 8..at + 20].copy_from_slice(b"#BOOTCONFIG\n");
            at += BOOTCONFIG_TRAILER;
        }
        Ok(at)
    }

    /// The command line: the parts joined by one space, empty parts
    /// skipped, written into `out`; returns the length.
    pub fn write_cmdline(&self, out: &mut [u8]) -> Result<usize, BootImageError> {
        let mut at = 0;
        for part in self
            .cmdline
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            let sep = usize::from(at > 0);
            let end = at + sep + part.len();
            let dst = out
                .get_mut(at..end)
                .ok_or(err("cmdline", Problem::Truncated))?;
            if sep == 1 {
                dst[0] = b' ';
            }
            dst[sep..].copy_from_slice(part.as_bytes());
            at = end;
        }
        Ok(at)
    }
}

/// `header_size` values accepted in a boot image v3 header: 1580, the
/// size of AOSP's `boot_img_hdr_v3`, and 1596, which AOSP's early v3
/// `mkbootimg` wrote (still so in Debian bookworm's `mkbootimg`
/// 29.0.6, whose v3 images carry exactly the same fields at the same
/// offsets). For v3 and v4 the field is informational: the header always
/// takes one 4096-byte page and the kernel starts on the next one, so
/// both values give the same layout. Any other value is refused.
pub const V3_HEADER_SIZES: [u32; 2] = [1580, 1596];
/// `header_size` of a boot image v4 header (`boot_img_hdr_v4`).
pub const V4_HEADER_SIZE: u32 = 1584;
/// `header_size` values accepted in a vendor boot v3 header: 2112, the
/// size of AOSP's `vendor_boot_img_hdr_v3`, and 2108, which the same
/// early `mkbootimg` (Debian bookworm's 29.0.6) wrote although it writes
/// every field up to byte 2112. Both round up to the same number of
/// header pages for every allowed page size, so the layout is the same.
pub const VENDOR_V3_HEADER_SIZES: [u32; 2] = [2112, 2108];
/// `header_size` of a vendor boot v4 header (`vendor_boot_img_hdr_v4`).
pub const VENDOR_V4_HEADER_SIZE: u32 = 2128;

/// Bytes the bootconfig trailer adds: size, checksum, `#BOOTCONFIG\n`.
pub const BOOTCONFIG_TRAILER: usize = 20;

fn parse_v0_v2(b: &[u8], version: u32) -> Result<BootImage<'_>, BootImageError> {
    let page = check_page_size(u32_at(b, 36, "page_size")?, "page_size")?;
    let kernel_size = u32_at(b, 8, "kernel_size")?;
    let ramdisk_size = u32_at(b, 16, "ramdisk_size")?;
    let second_size = u32_at(b, 24, "second_size")?;
    let os_version = u32_at(b, 44, "os_version")?;
    let cmdline = str_at(b, 64, 512, "cmdline")?;
    let extra = str_at(b, 608, 1024, "extra_cmdline")?;
    let (recovery_dtbo_size, header_size) = if version >= 1 {
        let hs = u32_at(b, 1644, "header_size")?;
        let expected = if version == 1 { 1648 } else { 1660 };
        if hs != expected {
            return Err(err("header_size", Problem::Invalid));
        }
        (u32_at(b, 1632, "recovery_dtbo_size")?, hs as u64)
    } else {
        (0, 1632)
    };
    let dtb_size = if version >= 2 {
        u32_at(b, 1648, "dtb_size")?
    } else {
        0
    };
    if header_size > page {
        return Err(err("header_size", Problem::Invalid));
    }
    let mut s = Sections::new(b, page, header_size)?;
    let kernel = s.take(kernel_size, "kernel_size")?;
    let ramdisk = s.take(ramdisk_size, "ramdisk_size")?;
    s.take(second_size, "second_size")?;
    s.take(recovery_dtbo_size, "recovery_dtbo_size")?;
    let dtb = s.take(dtb_size, "dtb_size")?;
    Ok(BootImage {
        header_version: version,
        kernel,
        ramdisks: [ramdisk, &[]],
        cmdline: [cmdline, extra],
        dtb: (!dtb.is_empty()).then_some(dtb),
        bootconfig: &[],
        os_version,
    })
}

fn parse_v3_v4<'a>(
    b: &'a [u8],
    version: u32,
    vendor: Option<&'a [u8]>,
) -> Result<BootImage<'a>, BootImageError> {
    let kernel_size = u32_at(b, 8, "kernel_size")?;
    let ramdisk_size = u32_at(b, 12, "ramdisk_size")?;
    let os_version = u32_at(b, 16, "os_version")?;
    let header_size = u32_at(b, 20, "header_size")?;
    let known: &[u32] = if version == 3 {
        &V3_HEADER_SIZES
    } else {
        &[V4_HEADER_SIZE]
    };
    if !known.contains(&header_size) {
        return Err(err("header_size", Problem::Invalid));
    }
    let cmdline = str_at(b, 44, 1536, "cmdline")?;
    let mut s = Sections::new(b, V3_PAGE_SIZE as u64, header_size as u64)?;
    let kernel = s.take(kernel_size, "kernel_size")?;
    let ramdisk = s.take(ramdisk_size, "ramdisk_size")?;
    if version == 4 {
        s.take(u32_at(b, 1580, "signature_size")?, "signature_size")?;
    }
    let mut img = BootImage {
        header_version: version,
        kernel,
        ramdisks: [&[], ramdisk],
        cmdline: ["", cmdline],
        dtb: None,
        bootconfig: &[],
        os_version,
    };
    if let Some(v) = vendor {
        parse_vendor(v, &mut img)?;
    }
    Ok(img)
}

fn parse_vendor<'a>(v: &'a [u8], img: &mut BootImage<'a>) -> Result<(), BootImageError> {
    if v.get(0..8) != Some(&VENDOR_BOOT_MAGIC[..]) {
        return Err(err("vendor_boot magic", Problem::Invalid));
    }
    let version = u32_at(v, 8, "vendor header_version")?;
    if version != 3 && version != 4 {
        return Err(err("vendor header_version", Problem::Invalid));
    }
    let page = check_page_size(u32_at(v, 12, "vendor page_size")?, "vendor page_size")?;
    let ramdisk_size = u32_at(v, 24, "vendor_ramdisk_size")?;
    let cmdline = str_at(v, 28, 2048, "vendor cmdline")?;
    let header_size = u32_at(v, 2096, "vendor header_size")?;
    let known: &[u32] = if version == 3 {
        &VENDOR_V3_HEADER_SIZES
    } else {
        &[VENDOR_V4_HEADER_SIZE]
    };
    if !known.contains(&header_size) {
        return Err(err("vendor header_size", Problem::Invalid));
    }
    let dtb_size = u32_at(v, 2100, "vendor dtb_size")?;
    let mut s = Sections::new(v, page, header_size as u64)?;
    let ramdisk = s.take(ramdisk_size, "vendor_ramdisk_size")?;
    let dtb = s.take(dtb_size, "vendor dtb_size")?;
    let mut bootconfig: &[u8] = &[];
    if version == 4 {
        let table_size = u32_at(v, 2112, "vendor_ramdisk_table_size")?;
        let entries = u32_at(v, 2116, "vendor_ramdisk_table_entry_num")?;
        let entry_size = u32_at(v, 2120, "vendor_ramdisk_table_entry_size")?;
        let bootconfig_size = u32_at(v, 2124, "vendor_bootconfig_size")?;
        let table = s.take(table_size, "vendor_ramdisk_table_size")?;
        if entries > 0
            && (entry_size < 108 || (entries as u64) * (entry_size as u64) > table_size as u64)
        {
            return Err(err("vendor_ramdisk_table_entry_size", Problem::Invalid));
        }
        // Every fragment must lie inside the vendor ramdisk section, and
        // the fragments must tile it in order (the bootloader concatenates
        // them; so do we, by loading the section whole).
        let mut expect = 0u64;
        for i in 0..entries as usize {
            let e = i * entry_size as usize;
            let size = u32_at(table, e, "vendor ramdisk table entry size")? as u64;
            let off = u32_at(table, e + 4, "vendor ramdisk table entry offset")? as u64;
            let end = off
                .checked_add(size)
                .ok_or(err("vendor ramdisk table entry", Problem::Overflow))?;
            if end > ramdisk_size as u64 {
                return Err(err("vendor ramdisk table entry", Problem::Truncated));
            }
            if off != expect {
                return Err(err("vendor ramdisk table entry offset", Problem::Overlap));
            }
            expect = end;
        }
        if entries > 0 && expect != ramdisk_size as u64 {
            return Err(err("vendor ramdisk table", Problem::Invalid));
        }
        bootconfig = s.take(bootconfig_size, "vendor_bootconfig_size")?;
    }
    img.ramdisks[0] = ramdisk;
    img.cmdline[0] = cmdline;
    img.dtb = (!dtb.is_empty()).then_some(dtb);
    img.bootconfig = bootconfig;
    Ok(())
}

/// The fields of an arm64 `Image` header that placement needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Arm64Image {
    /// Offset from a 2 MiB-aligned base where the image must be loaded.
    pub text_offset: u64,
    /// Bytes the image occupies once loaded (including BSS); at least the
    /// file size.
    pub image_size: u64,
    /// Header flags (bit 0 big-endian, bits 2:1 page size, bit 3 placement
    /// anywhere).
    pub flags: u64,
}

impl Arm64Image {
    /// Reads and checks the header of `kernel`.
    pub fn parse(kernel: &[u8]) -> Result<Arm64Image, BootImageError> {
        if kernel.get(0x38..0x3c) != Some(&ARM64_MAGIC[..]) {
            return Err(err("kernel Image magic", Problem::Invalid));
        }
        let text_offset = u64_at(kernel, 8, "kernel text_offset")?;
        let mut image_size = u64_at(kernel, 16, "kernel image_size")?;
        let flags = u64_at(kernel, 24, "kernel flags")?;
        if image_size == 0 {
            // Pre-3.17 kernels: text_offset is 0x80000 and the size unknown.
            image_size = kernel.len() as u64;
        }
        if flags & 1 != 0 {
            return Err(err("kernel flags (big-endian)", Problem::Invalid));
        }
        if !text_offset.is_multiple_of(4096) || text_offset >= 2 << 20 {
            return Err(err("kernel text_offset", Problem::Invalid));
        }
        if image_size < kernel.len() as u64 {
            return Err(err("kernel image_size", Problem::Invalid));
        }
        Ok(Arm64Image {
            text_offset,
            image_size,
            flags,
        })
    }
}

/// Where everything goes in RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoadPlan {
    /// Where the kernel is copied (and entered).
    pub kernel: u64,
    /// Bytes reserved for it (`image_size`).
    pub kernel_size: u64,
    /// Where the initrd goes, and its size (0: none).
    pub initrd: (u64, u64),
    /// Where the device tree goes (bytes reserved: `dtb_space`).
    pub dtb: u64,
    /// The kernel stays where it was loaded ([`plan_in_place`]): nothing
    /// to copy.
    pub in_place: bool,
}

/// Room reserved for the host's device tree (it grows when rewritten).
pub const DTB_SPACE: u64 = 2 << 20;

/// Places the kernel, initrd and device tree in `ram` (`(base, size)`),
/// avoiding every region in `avoid` (the hypervisor's memory, the boot
/// images themselves): the kernel at the lowest 2 MiB-aligned base +
/// `text_offset` that fits, then the initrd and the DTB above it.
pub fn plan(
    img: &BootImage<'_>,
    ram: (u64, u64),
    avoid: &[(u64, u64)],
) -> Result<LoadPlan, BootImageError> {
    place(img, ram, avoid, None)
}

/// As [`plan`], but leaves the kernel where it was loaded, at `kernel_at`
/// inside the boot image, when the boot protocol allows it: `kernel_at`
/// is `text_offset` above a 2 MiB boundary, and its `image_size` bytes lie
/// in `ram` clear of `keep_clear` (hypervisor memory, device trees). Those
/// bytes may cover the rest of the boot image and the vendor boot image
/// (the kernel's BSS): the caller must copy the initrd and the DTB out of
/// them, to the places planned clear of `avoid` (which lists the loaded
/// images) and of the kernel, before the kernel runs. `None` when the
/// kernel cannot stay (the caller then [`plan`]s a copy).
pub fn plan_in_place(
    img: &BootImage<'_>,
    ram: (u64, u64),
    kernel_at: u64,
    keep_clear: &[(u64, u64)],
    avoid: &[(u64, u64)],
) -> Option<LoadPlan> {
    let k = Arm64Image::parse(img.kernel).ok()?;
    let end = kernel_at.checked_add(k.image_size)?;
    let fits = kernel_at.checked_sub(k.text_offset)? % (2 << 20) == 0
        && kernel_at >= ram.0
        && end <= ram.0.checked_add(ram.1)?
        && keep_clear
            .iter()
            .all(|&(b, s)| end <= b || b.saturating_add(s) <= kernel_at);
    if !fits {
        return None;
    }
    place(img, ram, avoid, Some(kernel_at)).ok()
}

/// [`plan`], with the kernel at `kernel` if given (checked by the caller).
fn place(
    img: &BootImage<'_>,
    ram: (u64, u64),
    avoid: &[(u64, u64)],
    kernel: Option<u64>,
) -> Result<LoadPlan, BootImageError> {
    let k = Arm64Image::parse(img.kernel)?;
    let initrd = img.initrd_size();
    let ram_end = ram
        .0
        .checked_add(ram.1)
        .ok_or(err("ram", Problem::Overflow))?;
    let free = |start: u64, size: u64| {
        let Some(end) = start.checked_add(size) else {
            return false;
        };
        start >= ram.0
            && end <= ram_end
            && avoid
                .iter()
                .all(|&(b, s)| end <= b || b.saturating_add(s) <= start)
    };
    // Checked throughout: RAM may end near the top of the address space,
    // where rounding up or stepping on would wrap (and the search restart
    // from 0).
    let first_fit = |from: u64, size: u64, align: u64, offset: u64| {
        let mut base = from.checked_next_multiple_of(align)?;
        loop {
            let at = base.checked_add(offset)?;
            if at.checked_add(size)? > ram_end {
                return None;
            }
            if free(at, size.max(1)) {
                return Some(at);
            }
            base = base.checked_add(align)?;
        }
    };
    let in_place = kernel.is_some();
    let kernel = match kernel {
        Some(at) => at,
        None => first_fit(ram.0, k.image_size, 2 << 20, k.text_offset)
            .ok_or(err("kernel image_size", Problem::Overlap))?,
    };
    let after = kernel + k.image_size;
    // The initrd and the DTB go above the kernel, so never on it (which
    // matters in place, where the kernel's bytes are not in `avoid`).
    let initrd_at = if initrd > 0 {
        first_fit(after, initrd, 4096, 0).ok_or(err("ramdisk_size", Problem::Overlap))?
    } else {
        0
    };
    let dtb = first_fit(
        if initrd > 0 {
            initrd_at + initrd
        } else {
            after
        },
        DTB_SPACE,
        2 << 20,
        0,
    )
    .ok_or(err("dtb", Problem::Overlap))?;
    Ok(LoadPlan {
        kernel,
        kernel_size: k.image_size,
        initrd: (initrd_at, initrd),
        dtb,
        in_place,
    })
}

/// Builds boot images (feature `pack`): the runner's own packer and the
/// tests' fixtures.
#[cfg(any(test, feature = "pack"))]
pub mod pack {
    extern crate alloc;
    use alloc::vec::Vec;

    fn put32(v: &mut [u8], off: usize, x: u32) {
        v[off..off + 4].copy_from_slice(&x.to_le_bytes());
    }

    fn put64(v: &mut [u8], off: usize, x: u64) {
        v[off..off + 8].copy_from_slice(&x.to_le_bytes());
    }

    fn put_str(v: &mut [u8], off: usize, len: usize, s: &str) {
        let n = s.len().min(len - 1);
        v[off..off + n].copy_from_slice(&s.as_bytes()[..n]);
    }

    fn append(out: &mut Vec<u8>, data: &[u8], page: usize) {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(page), 0);
    }

    /// A boot image v0, v1 or v2 with `page_size` pages.
    pub fn boot_v0_v2(
        version: u32,
        page_size: u32,
        kernel: &[u8],
        ramdisk: &[u8],
        dtb: &[u8],
        cmdline: &str,
    ) -> Vec<u8> {
        let page = page_size as usize;
        let mut h = alloc::vec![0u8; page];
        h[0..8].copy_from_slice(super::BOOT_MAGIC);
        put32(&mut h, 8, kernel.len() as u32);
        put32(&mut h, 12, 0x4020_0000);
        put32(&mut h, 16, ramdisk.len() as u32);
        put32(&mut h, 20, 0x4800_0000);
        put32(&mut h, 32, 0x47e0_0000);
        put32(&mut h, 36, page_size);
        put32(&mut h, 40, version);
        put32(&mut h, 44, (14 << 25) | (2024 - 2000) << 4 | 1);
        put_str(&mut h, 48, 16, "qemu-virt");
        put_str(&mut h, 64, 512, cmdline);
        if version >= 1 {
            put32(&mut h, 1644, if version == 1 { 1648 } else { 1660 });
        }
        if version >= 2 {
            put32(&mut h, 1648, dtb.len() as u32);
            put64(&mut h, 1652, 0x47e0_0000);
        }
        let mut out = h;
        append(&mut out, kernel, page);
        append(&mut out, ramdisk, page);
        if version >= 2 {
            append(&mut out, dtb, page);
        }
        out
    }

    /// A boot image v3 or v4 (4096-byte pages, no signature).
    pub fn boot_v3_v4(version: u32, kernel: &[u8], ramdisk: &[u8], cmdline: &str) -> Vec<u8> {
        let mut h = alloc::vec![0u8; 4096];
        h[0..8].copy_from_slice(super::BOOT_MAGIC);
        put32(&mut h, 8, kernel.len() as u32);
        put32(&mut h, 12, ramdisk.len() as u32);
        put32(&mut h, 16, (14 << 25) | (2024 - 2000) << 4 | 1);
        put32(&mut h, 20, if version == 3 { 1580 } else { 1584 });
        put32(&mut h, 40, version);
        put_str(&mut h, 44, 1536, cmdline);
        let mut out = h;
        append(&mut out, kernel, 4096);
        append(&mut out, ramdisk, 4096);
        out
    }

    /// A vendor boot image v3 or v4 with one vendor ramdisk (v4: one
    /// table entry), a DTB and (v4) a bootconfig.
    pub fn vendor_boot(
        version: u32,
        ramdisk: &[u8],
        dtb: &[u8],
        cmdline: &str,
        bootconfig: &[u8],
    ) -> Vec<u8> {
        let page = 4096usize;
        let header_size: usize = if version == 3 { 2112 } else { 2128 };
        let mut h = alloc::vec![0u8; header_size.next_multiple_of(page)];
        h[0..8].copy_from_slice(super::VENDOR_BOOT_MAGIC);
        put32(&mut h, 8, version);
        put32(&mut h, 12, page as u32);
        put32(&mut h, 16, 0x4020_0000);
        put32(&mut h, 20, 0x4800_0000);
        put32(&mut h, 24, ramdisk.len() as u32);
        put_str(&mut h, 28, 2048, cmdline);
        put32(&mut h, 2076, 0x47e0_0000);
        put_str(&mut h, 2080, 16, "qemu-virt");
        put32(&mut h, 2096, header_size as u32);
        put32(&mut h, 2100, dtb.len() as u32);
        put64(&mut h, 2104, 0x47e0_0000);
        let mut table = Vec::new();
        if version == 4 {
            let mut e = alloc::vec![0u8; 108];
            put32(&mut e, 0, ramdisk.len() as u32);
            put32(&mut e, 4, 0);
            put32(&mut e, 8, 1);
            put_str(&mut e, 12, 32, "vendor");
            table = e;
            put32(&mut h, 2112, table.len() as u32);
            put32(&mut h, 2116, 1);
            put32(&mut h, 2120, 108);
            put32(&mut h, 2124, bootconfig.len() as u32);
        }
        let mut out = h;
        append(&mut out, ramdisk, page);
        append(&mut out, dtb, page);
        if version == 4 {
            append(&mut out, &table, page);
            append(&mut out, bootconfig, page);
        }
        out
    }

    /// A minimal arm64 Image: header (text_offset 0, `image_size`, flags
    /// 0xa) followed by `body`.
    pub fn arm64_image(body: &[u8], image_size: u64) -> Vec<u8> {
        let mut k = alloc::vec![0u8; 64];
        put64(&mut k, 16, image_size);
        put64(&mut k, 24, 0xa);
        k[0x38..0x3c].copy_from_slice(super::ARM64_MAGIC);
        k.extend_from_slice(body);
        k
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::pack::*;
    use super::*;
    use std::vec::Vec;

    fn kernel() -> Vec<u8> {
        arm64_image(&[0x5a; 10000], 3 << 20)
    }

    #[test]
    fn every_header_version_round_trips() {
        let k = kernel();
        let rd = [0x11u8; 5000];
        let dtb = [0xd7u8; 300];
        for v in 0..=2 {
            for page in [2048, 4096, 16384] {
                let img = boot_v0_v2(v, page, &k, &rd, &dtb, "console=ttyAMA0");
                let b = BootImage::parse(&img, None).unwrap();
                assert_eq!(b.header_version, v);
                assert_eq!(b.kernel, &k[..]);
                assert_eq!(b.ramdisks, [&rd[..], &[][..]]);
                assert_eq!(b.dtb, if v == 2 { Some(&dtb[..]) } else { None });
                assert_eq!(b.cmdline[0], "console=ttyAMA0");
            }
        }
        for v in [3, 4] {
            let img = boot_v3_v4(v, &k, &rd, "quiet");
            let b = BootImage::parse(&img, None).unwrap();
            assert_eq!((b.kernel, b.ramdisks[1], b.dtb), (&k[..], &rd[..], None));
            let vrd = [0x22u8; 3000];
            let vendor = vendor_boot(
                v,
                &vrd,
                &dtb,
                "console=ttyAMA0",
                if v == 4 { b"a=1\n" } else { b"" },
            );
            let b = BootImage::parse(&img, Some(&vendor)).unwrap();
            assert_eq!(b.ramdisks, [&vrd[..], &rd[..]], "vendor ramdisk first");
            assert_eq!(b.dtb, Some(&dtb[..]));
            let mut line = [0u8; 64];
            let n = b.write_cmdline(&mut line).unwrap();
            assert_eq!(&line[..n], b"console=ttyAMA0 quiet", "vendor cmdline first");
            let mut initrd = std::vec![0u8; b.initrd_size() as usize];
            let n = b.write_initrd(&mut initrd).unwrap();
            assert_eq!(n, initrd.len());
            assert_eq!(&initrd[..3000], &vrd[..]);
            assert_eq!(&initrd[3000..8000], &rd[..]);
            if v == 4 {
                assert_eq!(&initrd[8000..8004], b"a=1\n");
                assert_eq!(&initrd[initrd.len() - 12..], b"#BOOTCONFIG\n");
            }
        }
    }

    fn refused(img: &[u8], vendor: Option<&[u8]>) -> BootImageError {
        BootImage::parse(img, vendor).unwrap_err()
    }

    #[test]
    fn every_field_is_checked() {
        let k = kernel();
        let v2 = boot_v0_v2(2, 4096, &k, &[1; 100], &[2; 100], "");
        let patch = |img: &[u8], off: usize, val: u32| {
            let mut i = img.to_vec();
            i[off..off + 4].copy_from_slice(&val.to_le_bytes());
            i
        };
        let cases: &[(usize, u32, &str, Problem)] = &[
            (0, 0, "magic", Problem::Invalid),
            (40, 5, "header_version", Problem::Invalid),
            (36, 1000, "page_size", Problem::Invalid),
            (36, 1 << 20, "page_size", Problem::Invalid),
            (8, 0, "kernel_size", Problem::Missing),
            (8, u32::MAX, "kernel_size", Problem::Truncated),
            (16, 1 << 30, "ramdisk_size", Problem::Truncated),
            (24, 1 << 30, "second_size", Problem::Truncated),
            (1632, 1 << 30, "recovery_dtbo_size", Problem::Truncated),
            (1644, 1000, "header_size", Problem::Invalid),
            (1648, 1 << 30, "dtb_size", Problem::Truncated),
        ];
        for &(off, val, field, problem) in cases {
            assert_eq!(
                refused(&patch(&v2, off, val), None),
                BootImageError { field, problem },
                "{field}"
            );
        }
        assert_eq!(
            refused(&v2[..2000], None),
            BootImageError {
                field: "kernel_size",
                problem: Problem::Truncated
            }
        );
        assert_eq!(refused(&v2[..100], None).problem, Problem::Truncated);
        assert_eq!(refused(b"ANDRO", None).field, "magic");
        // v3/v4 and vendor boot.
        let v4 = boot_v3_v4(4, &k, &[1; 100], "");
        assert_eq!(refused(&patch(&v4, 20, 1580), None).field, "header_size");
        assert_eq!(
            refused(&patch(&v4, 1580, 1 << 30), None).field,
            "signature_size"
        );
        assert_eq!(refused(&v2, Some(&v4)).field, "vendor_boot");
        let vb = vendor_boot(4, &[3; 200], &[4; 50], "", b"");
        let vcases: &[(usize, u32, &str)] = &[
            (8, 2, "vendor header_version"),
            (12, 3000, "vendor page_size"),
            (24, 1 << 30, "vendor_ramdisk_size"),
            (2096, 2112, "vendor header_size"),
            (2100, 1 << 30, "vendor dtb_size"),
            (2112, 1 << 30, "vendor_ramdisk_table_size"),
            (2120, 4, "vendor_ramdisk_table_entry_size"),
            (2124, 1 << 30, "vendor_bootconfig_size"),
        ];
        for &(off, val, field) in vcases {
            assert_eq!(
                refused(&v4, Some(&patch(&vb, off, val))).field,
                field,
                "{field}"
            );
        }
        assert_eq!(refused(&v4, Some(b"VNDRBOOX")).field, "vendor_boot magic");
        // A table entry reaching past the vendor ramdisk.
        let bad = patch(&vb, 3 * 4096, 500);
        assert_eq!(refused(&v4, Some(&bad)).field, "vendor ramdisk table entry");
    }

    #[test]
    fn planning_near_the_top_of_the_address_space_fails_cleanly() {
        let k = kernel();
        let img = boot_v3_v4(4, &k, &[1; 100], "");
        let b = BootImage::parse(&img, None).unwrap();
        // Rounding the start up to 2 MiB, or stepping on, would wrap.
        for ram in [
            (u64::MAX - (1 << 20) + 1, 1 << 20),
            (0xffff_ffff_fff0_0000, 0x1000),
        ] {
            assert!(plan(&b, ram, &[]).is_err(), "{ram:x?}");
        }
    }

    #[test]
    fn a_kernel_on_a_2mib_boundary_stays_in_place() {
        let k = kernel();
        let img = boot_v3_v4(4, &k, &[1; 5000], "");
        let b = BootImage::parse(&img, None).unwrap();
        let ram = (0x4000_0000, 1 << 30);
        // The boot image loaded so that its kernel (one 4 KiB page in)
        // starts at 0x4820_0000.
        let boot = (0x4820_0000 - 4096, img.len() as u64);
        let hyp = [(0x4020_0000, 2 << 20), (0x7e00_0000, 32 << 20)];
        let avoid = [hyp[0], hyp[1], boot];
        let p = plan_in_place(&b, ram, 0x4820_0000, &hyp, &avoid).unwrap();
        assert!(p.in_place);
        assert_eq!((p.kernel, p.kernel_size), (0x4820_0000, 3 << 20));
        // The initrd and DTB go above the kernel's BSS, clear of the image.
        let (initrd, size) = p.initrd;
        assert_eq!(size, 5000);
        assert!(initrd >= 0x4820_0000 + (3 << 20));
        assert!(initrd >= boot.0 + boot.1);
        assert!(p.dtb >= initrd + size && p.dtb.is_multiple_of(2 << 20));
        // Not text_offset above a 2 MiB boundary: copied instead.
        assert_eq!(plan_in_place(&b, ram, 0x4820_1000, &hyp, &avoid), None);
        // The kernel's bytes would run into hypervisor memory, or past RAM.
        assert_eq!(plan_in_place(&b, ram, 0x7dc0_0000, &hyp, &avoid), None);
        assert_eq!(
            plan_in_place(&b, (0x4000_0000, 0x0840_0000), 0x4820_0000, &hyp, &[]),
            None
        );
        // No room left above it for the initrd: copied instead.
        assert_eq!(
            plan_in_place(&b, (0x4000_0000, 0x0860_0000), 0x4820_0000, &hyp, &avoid),
            None
        );
    }

    #[test]
    fn kernel_header_and_placement() {
        let k = kernel();
        let img = boot_v3_v4(4, &k, &[1; 5000], "");
        let b = BootImage::parse(&img, None).unwrap();
        let ram = (0x4000_0000, 1 << 30);
        // The hypervisor owns el2's image and the top 32 MiB; the boot
        // image sits at 0x4800_0000.
        let avoid = [
            (0x4020_0000, 2 << 20),
            (0x7e00_0000, 32 << 20),
            (0x4800_0000, img.len() as u64),
        ];
        let p = plan(&b, ram, &avoid).unwrap();
        assert_eq!(p.kernel, 0x4040_0000, "first free 2 MiB-aligned base");
        assert_eq!(p.kernel_size, 3 << 20);
        assert_eq!(p.initrd, (0x4070_0000, 5000));
        assert_eq!(p.dtb, 0x4080_0000);
        assert!(!p.in_place);
        // No room: refused, naming what did not fit.
        assert_eq!(
            plan(&b, (0x4000_0000, 4 << 20), &[]).unwrap_err().field,
            "dtb"
        );
        assert_eq!(
            plan(&b, (0x4000_0000, 3 << 20), &[]).unwrap_err().field,
            "ramdisk_size"
        );
        // Bad kernels.
        let mut bad = k.clone();
        bad[0x38] = 0;
        assert_eq!(
            Arm64Image::parse(&bad).unwrap_err().field,
            "kernel Image magic"
        );
        let mut bad = k.clone();
        bad[8] = 1;
        assert_eq!(
            Arm64Image::parse(&bad).unwrap_err().field,
            "kernel text_offset"
        );
        let mut bad = k.clone();
        bad[24] = 1;
        assert_eq!(
            Arm64Image::parse(&bad).unwrap_err().field,
            "kernel flags (big-endian)"
        );
        let small = arm64_image(&[0; 100], 10);
        assert_eq!(
            Arm64Image::parse(&small).unwrap_err().field,
            "kernel image_size"
        );
        assert!(Arm64Image::parse(&[0; 10]).is_err());
    }

    #[test]
    fn parsing_never_panics_on_garbage() {
        let k = kernel();
        let img = boot_v0_v2(2, 2048, &k, &[1; 100], &[2; 100], "x");
        let vb = vendor_boot(4, &[3; 200], &[4; 50], "", b"bc");
        let v4 = boot_v3_v4(4, &k, &[1; 100], "");
        let mut seed = 0x1234_5678u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for (base, vendor) in [(&img, None), (&v4, Some(&vb))] {
                let mut i = base.to_vec();
                let mut v = vendor.map(|v| v.to_vec());
                let target = match v.as_mut() {
                    Some(v) if !seed.is_multiple_of(2) => v,
                    _ => &mut i,
                };
                let at = (seed >> 8) as usize % target.len().min(2200);
                target[at] = (seed >> 32) as u8;
                let cut = (seed >> 40) as usize % (i.len() + 1);
                let r = BootImage::parse(&i[..cut.max(1)], v.as_deref());
                if let Ok(b) = r {
                    let _ = plan(&b, (0x4000_0000, 1 << 30), &[]);
                }
            }
        }
    }

    #[test]
    fn known_header_size_quirks_are_accepted_and_others_refused() {
        let k = kernel();
        let rd = [7u8; 3000];
        let patch = |img: &[u8], off: usize, val: u32| {
            let mut i = img.to_vec();
            i[off..off + 4].copy_from_slice(&val.to_le_bytes());
            i
        };
        let v3 = boot_v3_v4(3, &k, &rd, "x");
        for hs in V3_HEADER_SIZES {
            let img = patch(&v3, 20, hs);
            let b = BootImage::parse(&img, None).unwrap();
            assert_eq!((b.kernel, b.ramdisks[1]), (&k[..], &rd[..]));
        }
        for hs in [0, 1584, 1595, 1597, 4096, 4097, u32::MAX] {
            assert_eq!(
                refused(&patch(&v3, 20, hs), None),
                BootImageError {
                    field: "header_size",
                    problem: Problem::Invalid
                },
                "{hs}"
            );
        }
        let v4 = boot_v3_v4(4, &k, &rd, "x");
        assert_eq!(refused(&patch(&v4, 20, 1596), None).field, "header_size");
        let vb3 = vendor_boot(3, &[3; 200], &[4; 50], "", b"");
        for hs in VENDOR_V3_HEADER_SIZES {
            let vb = patch(&vb3, 2096, hs);
            let b = BootImage::parse(&v3, Some(&vb)).unwrap();
            assert_eq!(b.ramdisks[0], &[3; 200][..]);
            assert_eq!(b.dtb, Some(&[4u8; 50][..]));
        }
        for hs in [2109, 2128, 0] {
            assert_eq!(
                refused(&v3, Some(&patch(&vb3, 2096, hs))).field,
                "vendor header_size"
            );
        }
    }

    #[test]
    fn raw_kernel_and_initrd() {
        let k = kernel();
        let rd = [9u8; 777];
        let b = BootImage::raw(&k, &rd).unwrap();
        assert_eq!(b.initrd_size(), 777);
        assert_eq!(b.dtb, None);
        let mut line = [0u8; 8];
        assert_eq!(b.write_cmdline(&mut line), Ok(0));
        let p = plan(&b, (0x4000_0000, 1 << 30), &[(0x4000_0000, 4 << 20)]).unwrap();
        assert_eq!(p.kernel, 0x4040_0000);
        assert_eq!(p.initrd, (0x4070_0000, 777));
        assert_eq!(BootImage::raw(&[], &rd).unwrap_err().field, "kernel_size");
        assert_eq!(
            BootImage::raw(&[0; 64], &rd).unwrap_err().field,
            "kernel Image magic"
        );
    }

    /// Images made by Debian's `mkbootimg` (bookworm: 29.0.6, header v0–v3
    /// and vendor boot v3 only), when it is installed; says so when it is
    /// not and the test is skipped.
    #[test]
    fn images_from_debian_mkbootimg() {
        use std::process::Command;
        use std::string::ToString;
        let Ok(out) = Command::new("mkbootimg").arg("--help").output() else {
            std::println!(
                "SKIPPED images_from_debian_mkbootimg: mkbootimg is not installed \
                 (Debian: apt-get install mkbootimg)"
            );
            return;
        };
        assert!(out.status.success(), "mkbootimg --help failed");
        let help = std::string::String::from_utf8_lossy(&out.stdout).to_string();
        let dir =
            std::env::temp_dir().join(std::format!("bootimg-mkbootimg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = kernel();
        let rd: Vec<u8> = (0..70_001u32).map(|i| (i * 7) as u8).collect();
        let vrd: Vec<u8> = (0..5_003u32).map(|i| (i * 13) as u8).collect();
        let dtb: Vec<u8> = (0..999u32).map(|i| (i * 3) as u8).collect();
        let file = |name: &str, data: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let (kp, rp, vp, dp) = (
            file("kernel", &k),
            file("ramdisk", &rd),
            file("vendor_ramdisk", &vrd),
            file("dtb", &dtb),
        );
        let mkbootimg = |args: &[&std::ffi::OsStr]| {
            let st = Command::new("mkbootimg").args(args).status().unwrap();
            assert!(st.success(), "mkbootimg {args:?} failed");
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        for version in 0..=2u32 {
            for page in [2048u32, 4096, 16384] {
                let out = dir.join(std::format!("boot-v{version}-{page}.img"));
                let mut args = std::vec![
                    os("--header_version"),
                    os(&version.to_string()),
                    os("--pagesize"),
                    os(&page.to_string()),
                    os("--kernel"),
                    kp.clone().into_os_string(),
                    os("--ramdisk"),
                    rp.clone().into_os_string(),
                    os("--cmdline"),
                    os("console=ttyAMA0 panic=-1"),
                    os("--os_version"),
                    os("14.0.0"),
                    os("--os_patch_level"),
                    os("2024-01"),
                    os("-o"),
                    out.clone().into_os_string(),
                ];
                if version == 2 {
                    args.extend([os("--dtb"), dp.clone().into_os_string()]);
                }
                let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                mkbootimg(&refs);
                let img = std::fs::read(&out).unwrap();
                let b = BootImage::parse(&img, None)
                    .unwrap_or_else(|e| panic!("mkbootimg v{version} page {page}: {e}"));
                assert_eq!(b.header_version, version);
                assert_eq!(b.kernel, &k[..]);
                assert_eq!(b.ramdisks, [&rd[..], &[][..]]);
                assert_eq!(b.dtb, (version == 2).then_some(&dtb[..]));
                assert_eq!(b.cmdline[0], "console=ttyAMA0 panic=-1");
                // os_version 14.0.0: (a << 14) | (b << 7) | c above the patch level.
                assert_eq!(b.os_version >> 11, 14 << 14);
            }
        }
        if !help.contains("--vendor_boot") {
            std::println!("mkbootimg has no --vendor_boot: header v3 not tested");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        // v3 boot + vendor boot v3 (page size from the vendor header).
        let boot = dir.join("boot-v3.img");
        let vendor = dir.join("vendor_boot-v3.img");
        let args = [
            os("--header_version"),
            os("3"),
            os("--pagesize"),
            os("2048"),
            os("--kernel"),
            kp.clone().into_os_string(),
            os("--ramdisk"),
            rp.clone().into_os_string(),
            os("--cmdline"),
            os("quiet"),
            os("--vendor_cmdline"),
            os("console=ttyAMA0"),
            os("--vendor_ramdisk"),
            vp.clone().into_os_string(),
            os("--dtb"),
            dp.clone().into_os_string(),
            os("--vendor_boot"),
            vendor.clone().into_os_string(),
            os("-o"),
            boot.clone().into_os_string(),
        ];
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        mkbootimg(&refs);
        let img = std::fs::read(&boot).unwrap();
        let vimg = std::fs::read(&vendor).unwrap();
        let hs = u32::from_le_bytes([img[20], img[21], img[22], img[23]]);
        let vhs = u32::from_le_bytes([vimg[2096], vimg[2097], vimg[2098], vimg[2099]]);
        std::println!("mkbootimg v3 header_size {hs}, vendor v3 header_size {vhs}");
        assert!(V3_HEADER_SIZES.contains(&hs));
        assert!(VENDOR_V3_HEADER_SIZES.contains(&vhs));
        let b = BootImage::parse(&img, Some(&vimg)).unwrap();
        assert_eq!(b.header_version, 3);
        assert_eq!(b.kernel, &k[..]);
        assert_eq!(b.ramdisks, [&vrd[..], &rd[..]]);
        assert_eq!(b.dtb, Some(&dtb[..]));
        let mut line = [0u8; 64];
        let n = b.write_cmdline(&mut line).unwrap();
        assert_eq!(&line[..n], b"console=ttyAMA0 quiet");
        // v3 alone (no vendor boot).
        let b = BootImage::parse(&img, None).unwrap();
        assert_eq!(b.ramdisks, [&[][..], &rd[..]]);
        // Header v4 is refused by bookworm's mkbootimg; a newer one makes
        // images the packer's tests above cover.
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
