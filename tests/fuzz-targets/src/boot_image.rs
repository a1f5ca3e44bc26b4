//! Target `boot_image`: Android boot image and vendor boot parsing
//! (`el2::bootimg`), the arm64 Image header, and the load planner.
//!
//! An input is a mode byte, a planner configuration (RAM and up to six
//! ranges to avoid, aimed: QEMU's RAM, el2's ranges, the ends of the
//! address space) and the image bytes. Modes: a boot image alone; a boot
//! image and a vendor boot image (split by a length); a raw Image and an
//! initrd; an Image header alone; the packer's images from input parts
//! (parsed back, they must give the same parts); an Image header with
//! aimed fields and an initrd (planner-heavy).
//!
//! Checked, besides "no panic, no hang": a parsed image's sections lie
//! inside the input, the kernel is not empty and has a valid Image header
//! where the planner needs one; `write_initrd` writes exactly
//! `initrd_size` bytes (refusing a short buffer) with a correct bootconfig
//! trailer; `write_cmdline` writes the trimmed parts joined by one space
//! (refusing a short buffer); and a plan the planner returns keeps its
//! contract: the kernel at a 2 MiB boundary + `text_offset` with its
//! `image_size`, the initrd page aligned, the DTB at a 2 MiB boundary with
//! [`DTB_SPACE`] bytes, all three inside RAM, apart from each other and
//! from every range to avoid.

use crate::input::{Input, Output};
use el2::bootimg::{self, Arm64Image, BootImage, DTB_SPACE, pack};
use std::vec::Vec;

/// RAM bases: QEMU's, zero, other 2 MiB-aligned and unaligned bases, the
/// top of a 40-bit space.
pub const RAM_BASES: [u64; 8] = [
    0x4000_0000,
    0,
    0x8000_0000,
    0x4020_0000,
    0x4000_1000,
    1 << 32,
    (1 << 40) - (1 << 30),
    0x4010_0000,
];
/// RAM sizes: QEMU's default, small machines, sizes that barely fit.
pub const RAM_SIZES: [u64; 8] = [
    1 << 30,
    128 << 20,
    4 << 20,
    3 << 20,
    (2 << 20) + 4096,
    0,
    64 << 20,
    8 << 20,
];
/// Largest RAM or range size read raw: 4 GiB (the planner scans RAM
/// linearly; QEMU's default is 1 GiB).
pub const MAX_SIZE: u64 = 4 << 30;
/// Bases of ranges to avoid: el2's image, its carve-out, QEMU's tree, the
/// host images, RAM's start.
pub const AVOID_BASES: [u64; 8] = [
    0x4020_0000,
    0x7e00_0000,
    0x4000_0000,
    0x4400_0000,
    0x4040_0000,
    0x4060_0000,
    0x4800_0000,
    0x4000_1000,
];
/// Sizes of ranges to avoid.
pub const AVOID_SIZES: [u64; 8] = [
    2 << 20,
    32 << 20,
    1 << 20,
    0,
    4096,
    16 << 20,
    1 << 30,
    6 << 20,
];

/// Where the planner places things.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PlanConfig {
    /// RAM `(base, size)`.
    pub ram: (u64, u64),
    /// Ranges to avoid.
    pub avoid: Vec<(u64, u64)>,
}

impl PlanConfig {
    /// Reads a configuration.
    pub fn read(i: &mut Input<'_>) -> PlanConfig {
        let ram = (i.value(&RAM_BASES), i.value(&RAM_SIZES) % (MAX_SIZE + 1));
        let n = i.byte() % 7;
        let avoid = (0..n)
            .map(|_| {
                (
                    i.value(&AVOID_BASES),
                    i.value(&AVOID_SIZES) % (MAX_SIZE + 1),
                )
            })
            .collect();
        PlanConfig { ram, avoid }
    }

    /// Writes it as [`PlanConfig::read`] reads it.
    pub fn write(&self, o: &mut Output) {
        o.value(&RAM_BASES, self.ram.0)
            .value(&RAM_SIZES, self.ram.1);
        o.byte(self.avoid.len() as u8);
        for &(b, s) in &self.avoid {
            o.value(&AVOID_BASES, b).value(&AVOID_SIZES, s);
        }
    }

    /// QEMU's 1 GiB at 0x4000_0000 with el2's ranges and the host image.
    pub fn qemu() -> PlanConfig {
        PlanConfig {
            ram: (0x4000_0000, 1 << 30),
            avoid: vec![
                (0x4020_0000, 2 << 20),
                (0x7e00_0000, 32 << 20),
                (0x4000_0000, 1 << 20),
                (0x4400_0000, 16 << 20),
            ],
        }
    }
}

/// Whether `[a, a + n)` and `[b, b + m)` share an address, as the planner
/// decides it (a range that overflows reaches the top).
fn overlap(a: u64, n: u64, b: u64, m: u64) -> bool {
    a < b.saturating_add(m) && b < a.saturating_add(n)
}

fn inside(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

/// Checks everything a parsed image promises (module docs) and plans it.
fn check_image(img: &BootImage<'_>, inputs: &[&[u8]], cfg: &PlanConfig) {
    assert!(
        img.header_version <= 4,
        "header version {}",
        img.header_version
    );
    assert!(
        !img.kernel.is_empty(),
        "an image without a kernel was accepted"
    );
    let parts = [img.kernel, img.ramdisks[0], img.ramdisks[1], img.bootconfig];
    for part in parts.iter().chain(img.dtb.iter()) {
        assert!(
            inputs.iter().any(|input| inside(input, part)),
            "a section outside the image"
        );
    }
    for c in img.cmdline {
        assert!(
            inputs.iter().any(|input| inside(input, c.as_bytes())),
            "a command line outside the image"
        );
    }
    // The initrd.
    let size = img.initrd_size() as usize;
    let expected = img.ramdisks.iter().map(|r| r.len()).sum::<usize>()
        + if img.bootconfig.is_empty() {
            0
        } else {
            img.bootconfig.len() + bootimg::BOOTCONFIG_TRAILER
        };
    assert_eq!(size, expected, "initrd_size");
    let mut out = vec![0u8; size];
    assert_eq!(img.write_initrd(&mut out), Ok(size), "write_initrd");
    let mut at = 0;
    for r in img.ramdisks {
        assert_eq!(&out[at..at + r.len()], r, "ramdisk bytes");
        at += r.len();
    }
    if !img.bootconfig.is_empty() {
        let bc = img.bootconfig;
        assert_eq!(&out[at..at + bc.len()], bc);
        let t = &out[at + bc.len()..];
        assert_eq!(t[0..4], (bc.len() as u32).to_le_bytes(), "bootconfig size");
        let sum = bc.iter().fold(0u32, |s, b| s.wrapping_add(u32::from(*b)));
        assert_eq!(t[4..8], sum.to_le_bytes(), "bootconfig checksum");
        assert_eq!(&t[8..20], b"#BOOTCONFIG\n");
    }
    if size > 0 {
        assert!(
            img.write_initrd(&mut out[..size - 1]).is_err(),
            "short initrd buffer"
        );
    }
    // The command line.
    let joined: Vec<&str> = img
        .cmdline
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect();
    let joined = joined.join(" ");
    let mut buf = vec![0u8; joined.len() + 8];
    let n = img.write_cmdline(&mut buf).expect("a big enough buffer");
    assert_eq!(&buf[..n], joined.as_bytes(), "write_cmdline");
    if n > 0 {
        assert!(
            img.write_cmdline(&mut buf[..n - 1]).is_err(),
            "short cmdline buffer"
        );
    }
    check_plan(img, cfg);
}

/// Plans `img` in `cfg` and checks the plan's contract (module docs).
fn check_plan(img: &BootImage<'_>, cfg: &PlanConfig) {
    let plan = bootimg::plan(img, cfg.ram, &cfg.avoid);
    let Ok(p) = plan else {
        return;
    };
    let k = Arm64Image::parse(img.kernel).expect("a planned kernel has a valid header");
    let (ram, ram_end) = (
        cfg.ram.0,
        cfg.ram.0.checked_add(cfg.ram.1).expect("RAM fits"),
    );
    let in_ram = |at: u64, n: u64| at >= ram && at.checked_add(n).is_some_and(|e| e <= ram_end);
    let clear = |at: u64, n: u64| cfg.avoid.iter().all(|&(b, s)| !overlap(at, n, b, s));
    assert_eq!(
        p.kernel % (2 << 20),
        k.text_offset,
        "kernel at 2 MiB + text_offset: {p:?}"
    );
    assert_eq!(p.kernel_size, k.image_size, "{p:?}");
    assert!(
        in_ram(p.kernel, k.image_size),
        "kernel outside RAM: {p:?} {cfg:?}"
    );
    assert!(
        clear(p.kernel, k.image_size),
        "kernel over an avoided range: {p:?} {cfg:?}"
    );
    let (initrd, initrd_size) = p.initrd;
    assert_eq!(initrd_size, img.initrd_size(), "{p:?}");
    if initrd_size > 0 {
        assert_eq!(initrd % 4096, 0, "initrd alignment: {p:?}");
        assert!(
            in_ram(initrd, initrd_size),
            "initrd outside RAM: {p:?} {cfg:?}"
        );
        assert!(
            clear(initrd, initrd_size),
            "initrd over an avoided range: {p:?} {cfg:?}"
        );
        assert!(
            !overlap(initrd, initrd_size, p.kernel, k.image_size),
            "initrd over the kernel: {p:?}"
        );
    }
    assert_eq!(p.dtb % (2 << 20), 0, "DTB alignment: {p:?}");
    assert!(in_ram(p.dtb, DTB_SPACE), "DTB outside RAM: {p:?} {cfg:?}");
    assert!(
        clear(p.dtb, DTB_SPACE),
        "DTB over an avoided range: {p:?} {cfg:?}"
    );
    assert!(
        !overlap(p.dtb, DTB_SPACE, p.kernel, k.image_size),
        "DTB over the kernel: {p:?}"
    );
    assert!(
        initrd_size == 0 || !overlap(p.dtb, DTB_SPACE, initrd, initrd_size),
        "DTB over the initrd: {p:?}"
    );
}

/// Printable ASCII (no NUL), so it packs and parses back as text.
fn text(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|b| char::from(b % 95 + 32))
        .collect()
}

/// The packer's images from input parts, parsed back.
fn round_trip(i: &mut Input<'_>, cfg: &PlanConfig) {
    let version = u32::from(i.byte() % 5);
    let page = i.pick(&[4096u32, 2048, 16384, 65536]);
    let part = |i: &mut Input<'_>| {
        let n = i.u16() as usize % 8192;
        i.bytes(n).to_vec()
    };
    let body = part(i);
    let image_size = i.value(&[0, 1 << 20, 64, 8 << 20]);
    let kernel = pack::arm64_image(&body, image_size.max(64 + body.len() as u64));
    let ramdisk = part(i);
    let dtb = part(i);
    let cmdline_bytes = part(i);
    let vendor_ramdisk = part(i);
    let vendor_cmdline_bytes = part(i);
    let bootconfig = part(i);
    let with_vendor = i.bool();
    if version <= 2 {
        let cmdline = text(&cmdline_bytes, 511);
        let img = pack::boot_v0_v2(version, page, &kernel, &ramdisk, &dtb, &cmdline);
        let b = BootImage::parse(&img, None).expect("the packer's image parses");
        assert_eq!(b.header_version, version);
        assert_eq!(b.kernel, &kernel[..]);
        assert_eq!(b.ramdisks, [&ramdisk[..], &[][..]]);
        assert_eq!(b.cmdline, [cmdline.as_str(), ""]);
        let want_dtb = (version == 2 && !dtb.is_empty()).then_some(&dtb[..]);
        assert_eq!(b.dtb, want_dtb);
        check_image(&b, &[&img], cfg);
    } else {
        let cmdline = text(&cmdline_bytes, 1535);
        let boot = pack::boot_v3_v4(version, &kernel, &ramdisk, &cmdline);
        let vcmd = text(&vendor_cmdline_bytes, 2047);
        let vendor = pack::vendor_boot(version, &vendor_ramdisk, &dtb, &vcmd, &bootconfig);
        let b = BootImage::parse(&boot, with_vendor.then_some(&vendor[..]))
            .expect("the packer's images parse");
        assert_eq!(b.header_version, version);
        assert_eq!(b.kernel, &kernel[..]);
        if with_vendor {
            assert_eq!(b.ramdisks, [&vendor_ramdisk[..], &ramdisk[..]]);
            assert_eq!(b.cmdline, [vcmd.as_str(), cmdline.as_str()]);
            assert_eq!(b.dtb, (!dtb.is_empty()).then_some(&dtb[..]));
            let bc: &[u8] = if version == 4 { &bootconfig } else { &[] };
            assert_eq!(b.bootconfig, bc);
        } else {
            assert_eq!(b.ramdisks, [&[][..], &ramdisk[..]]);
            assert_eq!(b.cmdline, ["", cmdline.as_str()]);
            assert_eq!(b.dtb, None);
        }
        check_image(&b, &[&boot, &vendor], cfg);
    }
}

/// Text offsets: 0, Linux's old 0x80000, page multiples, invalid ones.
pub const TEXT_OFFSETS: [u64; 6] = [0, 0x8_0000, 0x1000, 0x1f_f000, 2 << 20, 0x800];
/// Image sizes: 0 (the file's), small, Linux-sized, 2 MiB exactly.
pub const IMAGE_SIZES: [u64; 6] = [0, 64, 1 << 20, 20 << 20, 2 << 20, 64 << 20];

/// An Image header with aimed fields, then a raw image and initrd.
fn planned(i: &mut Input<'_>, cfg: &PlanConfig) {
    let mut k = vec![0u8; 64];
    k[8..16].copy_from_slice(&i.value(&TEXT_OFFSETS).to_le_bytes());
    k[16..24].copy_from_slice(&i.value(&IMAGE_SIZES).to_le_bytes());
    k[24..32].copy_from_slice(&i.value(&[0xa, 0, 1, 8]).to_le_bytes());
    k[0x38..0x3c].copy_from_slice(bootimg::ARM64_MAGIC);
    let extra = i.u16() as usize % 4096;
    k.extend_from_slice(i.bytes(extra));
    let initrd = i.rest();
    if let Ok(img) = BootImage::raw(&k, initrd) {
        check_image(&img, &[&k, initrd], cfg);
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let mode = i.byte() % 6;
    let cfg = PlanConfig::read(&mut i);
    match mode {
        0 => {
            let boot = i.rest();
            if let Ok(img) = BootImage::parse(boot, None) {
                check_image(&img, &[boot], &cfg);
            }
        }
        1 => {
            let n = i.u32() as usize;
            let rest = i.rest();
            let (boot, vendor) = rest.split_at(n % (rest.len() + 1));
            if let Ok(img) = BootImage::parse(boot, Some(vendor)) {
                check_image(&img, &[boot, vendor], &cfg);
            }
        }
        2 => {
            let n = i.u32() as usize;
            let rest = i.rest();
            let (kernel, initrd) = rest.split_at(n % (rest.len() + 1));
            if let Ok(img) = BootImage::raw(kernel, initrd) {
                check_image(&img, &[kernel, initrd], &cfg);
            }
        }
        3 => {
            let kernel = i.rest();
            if let Ok(k) = Arm64Image::parse(kernel) {
                assert!(k.image_size >= kernel.len() as u64);
                assert!(k.text_offset % 4096 == 0 && k.text_offset < 2 << 20);
                assert_eq!(k.flags & 1, 0, "big-endian accepted");
            }
        }
        4 => round_trip(&mut i, &cfg),
        _ => planned(&mut i, &cfg),
    }
}

fn input(mode: u8, cfg: &PlanConfig, rest: impl FnOnce(&mut Output)) -> Vec<u8> {
    let mut o = Output::new();
    o.byte(mode);
    cfg.write(&mut o);
    rest(&mut o);
    o.finish()
}

/// Hand-made seeds: every header version packed, a v3/v4 pair, a raw
/// Image with an initrd, the round-trip and planner modes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cfg = PlanConfig::qemu();
    let small = PlanConfig {
        ram: (0x4000_0000, 8 << 20),
        avoid: vec![(0x4020_0000, 2 << 20), (0x4060_0000, 4096)],
    };
    let kernel = pack::arm64_image(&[0x14; 200], 3 << 20);
    let names = ["boot-v0", "boot-v1", "boot-v2"];
    let mut seeds = Vec::new();
    for v in 0..3u32 {
        let img = pack::boot_v0_v2(
            v,
            2048 << v,
            &kernel,
            b"ramdisk!",
            b"\xd0\x0d\xfe\xed",
            "console=ttyAMA0",
        );
        seeds.push((
            names[v as usize],
            input(0, &cfg, |o| {
                o.raw(&img);
            }),
        ));
    }
    for (name, v) in [("boot-v3-pair", 3u32), ("boot-v4-pair", 4)] {
        let boot = pack::boot_v3_v4(v, &kernel, b"generic ramdisk", "quiet");
        let vendor = pack::vendor_boot(
            v,
            b"vendor ramdisk",
            b"\xd0\x0d\xfe\xed",
            "console=ttyAMA0",
            b"androidboot.x=1\n",
        );
        seeds.push((
            name,
            input(1, &small, |o| {
                o.u32(boot.len() as u32).raw(&boot).raw(&vendor);
            }),
        ));
    }
    let boot = pack::boot_v3_v4(4, &kernel, b"", "");
    seeds.push((
        "boot-v4-alone",
        input(0, &cfg, |o| {
            o.raw(&boot);
        }),
    ));
    seeds.push((
        "raw-image",
        input(2, &small, |o| {
            o.u32(kernel.len() as u32).raw(&kernel).raw(b"an initrd");
        }),
    ));
    seeds.push((
        "image-header",
        input(3, &cfg, |o| {
            o.raw(&kernel);
        }),
    ));
    seeds.push((
        "round-trip",
        input(4, &small, |o| {
            o.byte(4).byte(0).u16(11).raw(b"kernel body").byte(0);
            for part in [
                &b"ramdisk"[..],
                b"dtb",
                b"console=ttyAMA0",
                b"vendor",
                b"quiet",
                b"bootconfig",
            ] {
                o.u16(part.len() as u16).raw(part);
            }
            o.byte(1);
        }),
    ));
    seeds.push((
        "planner",
        input(5, &small, |o| {
            o.byte(1).byte(4).byte(0).u16(4).raw(b"body").raw(&[7; 300]);
        }),
    ));
    seeds
}
