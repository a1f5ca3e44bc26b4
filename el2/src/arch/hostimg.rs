//! The host image: what the runner loaded (its descriptor), checking it,
//! and getting the host ready to enter — a Linux kernel placed as
//! `Documentation/arch/arm64/booting.rst` requires, its initrd, command
//! line and device tree.
//!
//! # The host descriptor
//!
//! The runner describes what it loaded in 48 bytes at [`HOST_DESC_ADDR`]
//! (eight little-endian `u64`s written with QEMU's
//! `-device loader,addr=...,data=...,data-len=8`):
//!
//! | offset | field |
//! |---|---|
//! | 0x00 | magic: the bytes `PKVMHOST` ([`DESC_MAGIC`]) |
//! | 0x08 | kind: [`DESC_RAW`] (a raw arm64 `Image`, optional initrd) or [`DESC_ANDROID`] (an Android boot image, optional vendor boot image) |
//! | 0x10 | address of the image (the `Image` or `boot.img`) |
//! | 0x18 | its size in bytes (the file's size) |
//! | 0x20 | address of the second file (initrd or `vendor_boot.img`), 0 if none |
//! | 0x28 | its size in bytes, 0 if none |
//!
//! Every range must lie inside one RAM region and the two must not
//! overlap; [`super::layout::compute`] then checks them against the
//! hypervisor's memory and the host device tree. A bad descriptor or image
//! stops the boot with a message naming the field (exit status 5).
//!
//! Without the magic, the old protocol applies: a raw `Image` at
//! [`HOST_IMAGE_ADDR`], entered in place, no initrd — how the runner loads
//! the built-in test host.
//!
//! # What el2 does with each kind
//!
//! - Raw `Image`: entered in place. Its address must be `text_offset`
//!   above a 2 MiB boundary (the runner loads it at
//!   `HOST_IMAGE_ADDR + text_offset`), and `[address, address +
//!   image_size)` (the kernel with its BSS) must be free host RAM not
//!   overlapping the initrd. The initrd stays where it was loaded; `/chosen`
//!   gets `linux,initrd-start/end` for it.
//! - Android boot image (header v0–v4, with a vendor boot image for v3/v4):
//!   parsed and validated by [`el2::bootimg::BootImage::parse`]; the
//!   kernel stays where it lies inside the loaded image when that is
//!   `text_offset` above a 2 MiB boundary with `image_size` bytes free
//!   there ([`el2::bootimg::plan_in_place`]: `cargo qemu` loads boot
//!   images so; the BSS may then cover the rest of the image, whose initrd
//!   and DTB el2 copies out first), else it is copied to the lowest
//!   `2 MiB + text_offset` address where `image_size` bytes are free; the
//!   initrd (vendor ramdisk, then the boot
//!   ramdisk, then a v4 bootconfig) right above it
//!   ([`el2::bootimg::plan`], avoiding the hypervisor, the host device
//!   tree, QEMU's device tree and the loaded images themselves); both are
//!   cleaned to the point of coherency (a kernel left in place is not:
//!   el2 wrote nothing there) and the instruction cache
//!   invalidated (the host starts with its MMU and caches off).
//!   `/chosen/bootargs` becomes the image's command lines joined (vendor
//!   first, then boot; v0–v2: cmdline then extra_cmdline), followed by
//!   QEMU's `-append` text if there is one. The DTB of the vendor boot
//!   image (v3/v4) or of the v2 header, when present, replaces QEMU's as
//!   the base of the host's device tree (it must describe this machine:
//!   the runner packs QEMU's own, dumped with the same machine options).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use el2::bootimg::{self, BootImage, BootImageError};

use super::layout::{self, HOST_IMAGE_ADDR, ImageError, MemLayout};
use super::sysreg;
use el2::fdt::{DtError, Range};

/// Where the runner writes the host descriptor (module docs): the page
/// just below [`HOST_IMAGE_ADDR`]. Keep `qemu/src/qemu.rs`
/// (`HOST_DESC_ADDR`) in step.
pub const HOST_DESC_ADDR: u64 = 0x43ff_f000;
/// The descriptor's magic: the bytes `PKVMHOST`, read as a little-endian
/// `u64`.
pub const DESC_MAGIC: u64 = u64::from_le_bytes(*b"PKVMHOST");
/// Descriptor kind: a raw arm64 `Image`, optional initrd.
pub const DESC_RAW: u64 = 1;
/// Descriptor kind: an Android boot image, optional vendor boot image.
pub const DESC_ANDROID: u64 = 2;
/// Bytes of the descriptor.
const DESC_LEN: usize = 48;

const PAGE: u64 = 4096;
const BLOCK_2M: u64 = 2 << 20;

/// Why the host cannot be booted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostError {
    /// A descriptor field is wrong.
    Descriptor {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The boot image (or the raw kernel's Image header) is refused.
    Image(BootImageError),
    /// The legacy raw image at [`HOST_IMAGE_ADDR`] is refused.
    Legacy(ImageError),
    /// A range the host needs overlaps something it must not.
    Overlap {
        /// What.
        what: &'static str,
        /// Where.
        range: Range,
    },
    /// The boot image's DTB is not a usable device tree.
    Dtb(DtError),
}

impl From<BootImageError> for HostError {
    fn from(e: BootImageError) -> Self {
        HostError::Image(e)
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Descriptor { field, what } => {
                write!(f, "host descriptor at {HOST_DESC_ADDR:#x}: {field} {what}")
            }
            HostError::Image(e) => write!(f, "{e}"),
            HostError::Legacy(e) => write!(f, "{e}"),
            HostError::Overlap { what, range } => write!(f, "{what} {range}"),
            HostError::Dtb(e) => write!(f, "the boot image's DTB: {e}"),
        }
    }
}

fn desc_err(field: &'static str, what: &'static str) -> HostError {
    HostError::Descriptor { field, what }
}

/// What the runner loaded, checked (module docs).
#[derive(Clone, Copy, Debug)]
pub enum HostImage {
    /// No descriptor: a raw `Image` at [`HOST_IMAGE_ADDR`], run in place.
    Legacy(layout::ImageHeader),
    /// A raw `Image`, run in place, and an optional initrd left in place.
    Raw {
        /// The file as loaded.
        kernel: Range,
        /// The kernel once running: its address + `image_size`.
        window: Range,
        /// The initrd as loaded.
        initrd: Option<Range>,
    },
    /// An Android boot image and an optional vendor boot image.
    Android {
        /// `boot.img` as loaded.
        boot: Range,
        /// `vendor_boot.img` as loaded.
        vendor: Option<Range>,
    },
}

impl HostImage {
    /// The ranges the host's files occupy until the host runs, for the
    /// layout's overlap checks (unused slots are empty ranges).
    pub fn ranges(&self) -> [Range; 2] {
        let none = Range { base: 0, size: 0 };
        match *self {
            HostImage::Legacy(h) => [layout::host_image_range(&h), none],
            HostImage::Raw { window, initrd, .. } => [window, initrd.unwrap_or(none)],
            HostImage::Android { boot, vendor } => [boot, vendor.unwrap_or(none)],
        }
    }
}

/// The bytes of `r`.
///
/// # Safety
///
/// `r` is inside RAM, which the final EL2 map maps Normal, and nothing
/// writes it while the slice lives (boot runs on one CPU; the copies el2
/// makes go to ranges [`bootimg::plan`] keeps apart from it).
unsafe fn loaded<'a>(r: Range) -> &'a [u8] {
    // SAFETY: per this function's contract.
    unsafe { core::slice::from_raw_parts(r.base as *const u8, r.size as usize) }
}

fn in_ram(ram: &[Range], r: &Range) -> bool {
    ram.iter().any(|m| m.base <= r.base && r.end() <= m.end())
}

/// A `(address, size)` pair of the descriptor as a range inside RAM
/// (`None` for size 0).
fn desc_range(
    ram: &[Range],
    base: u64,
    size: u64,
    field: &'static str,
) -> Result<Option<Range>, HostError> {
    if size == 0 {
        return Ok(None);
    }
    if base.checked_add(size).is_none() {
        return Err(desc_err(field, "overflows"));
    }
    let r = Range { base, size };
    if !in_ram(ram, &r) {
        return Err(desc_err(field, "is not inside RAM"));
    }
    Ok(Some(r))
}

/// Reads the descriptor (or the legacy raw image header) and checks what
/// it describes (module docs).
pub fn read(ram: &[Range]) -> Result<HostImage, HostError> {
    let desc = Range {
        base: HOST_DESC_ADDR,
        size: DESC_LEN as u64,
    };
    let mut d = [0u64; DESC_LEN / 8];
    if in_ram(ram, &desc) {
        // SAFETY: the descriptor is inside RAM (checked), mapped Normal by
        // the final map; QEMU's loader wrote it before el2 started.
        let bytes = unsafe { loaded(desc) };
        for (v, b) in d.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *v = u64::from_le_bytes(a);
        }
    }
    if d[0] != DESC_MAGIC {
        return read_legacy(ram);
    }
    let image = desc_range(ram, d[2], d[3], "image (address, size)")?
        .ok_or(desc_err("image size", "is zero"))?;
    let extra = desc_range(ram, d[4], d[5], "second file (address, size)")?;
    if extra.is_some_and(|e| e.overlaps(&image)) {
        return Err(desc_err("second file", "overlaps the image"));
    }
    match d[1] {
        DESC_RAW => {
            // SAFETY: `image` is inside RAM (checked above), mapped Normal;
            // nothing writes it during boot.
            let kernel = unsafe { loaded(image) };
            let k = bootimg::Arm64Image::parse(kernel)?;
            if !image
                .base
                .wrapping_sub(k.text_offset)
                .is_multiple_of(BLOCK_2M)
            {
                return Err(BootImageError {
                    field: "kernel load address (not text_offset above a 2 MiB boundary)",
                    problem: bootimg::Problem::Invalid,
                }
                .into());
            }
            let window = Range {
                base: image.base,
                size: k
                    .image_size
                    .checked_next_multiple_of(PAGE)
                    .ok_or(BootImageError {
                        field: "kernel image_size",
                        problem: bootimg::Problem::Overflow,
                    })?,
            };
            if !in_ram(ram, &window) {
                return Err(HostError::Overlap {
                    what: "the kernel with its BSS (image_size) leaves RAM:",
                    range: window,
                });
            }
            if let Some(i) = extra.filter(|i| i.overlaps(&window)) {
                return Err(HostError::Overlap {
                    what: "the initrd overlaps the kernel's image_size:",
                    range: i,
                });
            }
            Ok(HostImage::Raw {
                kernel: image,
                window,
                initrd: extra,
            })
        }
        DESC_ANDROID => Ok(HostImage::Android {
            boot: image,
            vendor: extra,
        }),
        _ => Err(desc_err(
            "kind",
            "is neither 1 (raw Image) nor 2 (Android boot image)",
        )),
    }
}

/// The old protocol: a raw `Image` at [`HOST_IMAGE_ADDR`].
fn read_legacy(ram: &[Range]) -> Result<HostImage, HostError> {
    let at = HOST_IMAGE_ADDR;
    let header = Range { base: at, size: 64 };
    if !in_ram(ram, &header) {
        return Err(HostError::Legacy(ImageError::Placement(header)));
    }
    let mut h = [0u8; 64];
    // SAFETY: the 64 bytes are RAM (checked above), mapped Normal by the
    // final map; QEMU's loader wrote them before el2 started.
    h.copy_from_slice(unsafe { loaded(header) });
    let hdr = layout::parse_image_header(&h).map_err(HostError::Legacy)?;
    let window = layout::host_image_range(&hdr);
    if !in_ram(ram, &window) {
        return Err(HostError::Legacy(ImageError::Placement(window)));
    }
    Ok(HostImage::Legacy(hdr))
}

/// The host, ready to enter.
#[derive(Debug)]
pub struct Prepared {
    /// Where the boot CPU enters the host.
    pub entry: u64,
    /// The host's `/chosen` edits: command line and initrd.
    pub bootargs: Option<String>,
    /// The initrd in host RAM.
    pub initrd: Option<Range>,
    /// The boot image's DTB (a copy), to use instead of QEMU's.
    pub dtb: Option<Vec<u8>>,
}

/// Gets the host described by `host` ready (module docs): `lay` is the
/// memory layout, `ram` the RAM regions, `qemu_dt` QEMU's device tree
/// (still to be read, so left alone) and `qemu_bootargs` its
/// `/chosen/bootargs`.
pub fn prepare(
    host: &HostImage,
    lay: &MemLayout,
    ram: &[Range],
    qemu_dt: Range,
    qemu_bootargs: Option<&str>,
) -> Result<Prepared, HostError> {
    // The host device tree is written last, over whatever is there: it
    // must not land on a kernel that runs in place or on its initrd.
    for r in host.ranges() {
        if r.size > 0 && !matches!(host, HostImage::Android { .. }) && r.overlaps(&lay.host_dtb) {
            return Err(HostError::Overlap {
                what: "the host image overlaps the host device tree's place",
                range: r,
            });
        }
    }
    match *host {
        HostImage::Legacy(_) => Ok(Prepared {
            entry: HOST_IMAGE_ADDR,
            bootargs: None,
            initrd: None,
            dtb: None,
        }),
        HostImage::Raw {
            kernel,
            window,
            initrd,
        } => {
            log::info!(
                "host: raw arm64 Image at {kernel} (runs in place, {window} with its BSS){}",
                if initrd.is_some() { ", initrd" } else { "" }
            );
            if let Some(i) = initrd {
                log::info!("host initrd at {i}, left in place");
            }
            // el2 wrote neither: no cache maintenance is owed for them
            // (see the in-place boot image kernel in `prepare_android`).
            sysreg::invalidate_icache();
            Ok(Prepared {
                entry: kernel.base,
                bootargs: None,
                initrd,
                dtb: None,
            })
        }
        HostImage::Android { boot, vendor } => {
            prepare_android(boot, vendor, lay, ram, qemu_dt, qemu_bootargs)
        }
    }
}

fn prepare_android(
    boot: Range,
    vendor: Option<Range>,
    lay: &MemLayout,
    ram: &[Range],
    qemu_dt: Range,
    qemu_bootargs: Option<&str>,
) -> Result<Prepared, HostError> {
    let t0 = sysreg::counter();
    // SAFETY: both ranges are inside RAM (checked by `read`), mapped
    // Normal; el2 writes only to the ranges `plan` returns, which avoid
    // them.
    let (boot_bytes, vendor_bytes) = unsafe { (loaded(boot), vendor.map(|v| loaded(v))) };
    let img = BootImage::parse(boot_bytes, vendor_bytes)?;
    log::info!(
        "host: Android boot image v{} at {boot}{}: kernel {} bytes, ramdisks {} + {} bytes, \
         DTB {}",
        img.header_version,
        match vendor {
            Some(_) => " with a vendor boot image",
            None => "",
        },
        img.kernel.len(),
        img.ramdisks[0].len(),
        img.ramdisks[1].len(),
        match img.dtb {
            Some(d) if vendor.is_some() => alloc::format!("{} bytes (vendor boot)", d.len()),
            Some(d) => alloc::format!("{} bytes (boot image)", d.len()),
            None => String::from("none (QEMU's)"),
        }
    );
    let none = Range { base: 0, size: 0 };
    let pairs = |rs: &[Range]| -> Vec<(u64, u64)> {
        rs.iter()
            .filter(|r| r.size > 0)
            .map(|r| (r.base, r.size))
            .collect()
    };
    let keep_clear = pairs(&[lay.image, lay.carveout, lay.host_dtb, qemu_dt]);
    let avoid = pairs(&[
        lay.image,
        lay.carveout,
        lay.host_dtb,
        qemu_dt,
        boot,
        vendor.unwrap_or(none),
    ]);
    // The kernel stays where the runner loaded it when it lies on a 2 MiB
    // boundary (+ text_offset), as `cargo qemu` loads boot images: no copy.
    // The memory is identity-mapped, so the slice's address is physical.
    let kernel_at = img.kernel.as_ptr() as u64;
    let mut plan = ram
        .iter()
        .find_map(|r| {
            bootimg::plan_in_place(&img, (r.base, r.size), kernel_at, &keep_clear, &avoid)
        })
        .ok_or(BootImageError {
            field: "kernel image_size",
            problem: bootimg::Problem::Overlap,
        });
    if plan.is_err() {
        for r in ram {
            plan = bootimg::plan(&img, (r.base, r.size), &avoid);
            if plan.is_ok() {
                break;
            }
        }
    }
    let plan = plan?;
    let (initrd_at, initrd_size) = plan.initrd;
    if !plan.in_place {
        // SAFETY: `plan` put the kernel's `image_size` bytes in RAM (mapped
        // Normal) that is neither hypervisor memory, nor a device tree still
        // in use, nor a loaded image; the source is a loaded image, so the
        // two do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                img.kernel.as_ptr(),
                plan.kernel as *mut u8,
                img.kernel.len(),
            );
        }
    }
    let initrd = if initrd_size > 0 {
        // SAFETY: as for the kernel: `plan` placed these bytes in free host
        // RAM, apart from the kernel and from every source.
        let dst =
            unsafe { core::slice::from_raw_parts_mut(initrd_at as *mut u8, initrd_size as usize) };
        img.write_initrd(dst)?;
        sysreg::clean_inval_to_poc(initrd_at, initrd_size);
        Some(Range {
            base: initrd_at,
            size: initrd_size,
        })
    } else {
        None
    };
    // A copied kernel is el2's writes: cleaned to the point of coherency
    // for a kernel that starts with its caches off (booting.rst). In place
    // el2 wrote nothing there, and booting.rst asks a loader to clean only
    // what it wrote: lines el2 may hold (it read the header and, in the
    // BSS, the ramdisks through the cache) are clean copies of memory, and
    // the kernel itself invalidates what it writes with its MMU off
    // because of such speculatively loaded lines. That spares 32 MiB of
    // maintenance by address, which QEMU's TCG pays line by line.
    if !plan.in_place {
        sysreg::clean_inval_to_poc(plan.kernel, plan.kernel_size);
    }
    sysreg::invalidate_icache();

    let extra = qemu_bootargs.map(str::trim).unwrap_or("");
    let parts: usize = img.cmdline.iter().map(|p| p.len() + 1).sum();
    let mut line = alloc::vec![0u8; parts + extra.len() + 1];
    let mut n = img.write_cmdline(&mut line)?;
    if !extra.is_empty() {
        if n > 0 {
            line[n] = b' ';
            n += 1;
        }
        line[n..n + extra.len()].copy_from_slice(extra.as_bytes());
        n += extra.len();
    }
    line.truncate(n);
    let bootargs = String::from_utf8(line).map_err(|_| BootImageError {
        field: "cmdline",
        problem: bootimg::Problem::Invalid,
    })?;
    log::info!(
        "host kernel {} {:#x} ({:#x} bytes with its BSS), initrd {} ({} bytes), in {} us; \
         command line {bootargs:?}",
        if plan.in_place {
            "in place at"
        } else {
            "copied to"
        },
        plan.kernel,
        plan.kernel_size,
        match initrd {
            Some(r) => alloc::format!("{r}"),
            None => String::from("none"),
        },
        initrd_size,
        sysreg::ticks_to_us(sysreg::counter().saturating_sub(t0))
    );
    Ok(Prepared {
        entry: plan.kernel,
        bootargs: (!bootargs.is_empty()).then_some(bootargs),
        initrd,
        dtb: img.dtb.map(<[u8]>::to_vec),
    })
}
