//! Target `device_tree`: device-tree validation and everything el2 does
//! with a tree it accepted, in boot order (`el2/src/arch/boot.rs`):
//! `total_size`, `validate`, `raw_ram`, `strip_nops` and `validate`
//! again, `Fdt::new`, `Platform::parse`, `write_host_tree`, and the tree
//! it writes validated and read back.
//!
//! An input is a configuration (the boot CPU's MPIDR, up to three
//! hypervisor ranges, the `/chosen` edits, aimed) and the blob.
//!
//! Checked, besides "no panic, no hang": `total_size` agrees with the
//! header; `raw_ram` and the platform's RAM and MMIO are normalised
//! (sorted, disjoint, non-empty); a tree `strip_nops` rewrote still
//! passes `validate`, has no `FDT_NOP` left and the same `raw_ram`; the
//! platform puts the boot CPU first; the host tree `write_host_tree`
//! writes passes `validate`, is read by `Fdt::new`, reserves every
//! hypervisor range `no-map` under `/reserved-memory` (with the cells of
//! that node), carries the `/chosen` edits (bootargs replaced or kept,
//! initrd properties written or dropped); and when every node and
//! property name of the input is one `vm-fdt` writes (so nothing was
//! dropped), the host tree gives el2 the same platform (RAM, CPUs, GIC,
//! ITS, UART, PSCI method, MMIO) with the hypervisor ranges reserved.

use crate::input::{Input, Output};
use el2::fdt::{self, ChosenEdits, Platform, Range};
use flat_device_tree::Fdt;
use flat_device_tree::node::FdtNode;
use std::string::String;
use std::vec::Vec;

/// Boot CPU MPIDRs.
pub const MPIDRS: [u64; 6] = [0, 1, 0x100, 0x8000_0000, 0xff_00ff_ffff, u64::MAX];
/// Hypervisor range bases: el2's image, its carve-out, past 4 GiB, the
/// top of the address space.
pub const HYP_BASES: [u64; 6] = [
    0x4020_0000,
    0x7e00_0000,
    0x4000_0000,
    1 << 32,
    0,
    u64::MAX - 0xfff,
];
/// Hypervisor range sizes.
pub const HYP_SIZES: [u64; 5] = [2 << 20, 32 << 20, 4096, 0, 1 << 32];
/// `bootargs` edits.
pub const BOOTARGS: [Option<&str>; 4] =
    [None, Some("console=ttyAMA0 panic=-1"), Some(""), Some("a")];

/// What el2 is asked to do with the tree.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Config {
    /// The boot CPU's MPIDR.
    pub mpidr: u64,
    /// Hypervisor ranges.
    pub hyp: Vec<Range>,
    /// `bootargs` (a [`BOOTARGS`] entry).
    pub bootargs: Option<&'static str>,
    /// The initrd.
    pub initrd: Option<Range>,
}

impl Config {
    /// Reads a configuration.
    pub fn read(i: &mut Input<'_>) -> Config {
        let mpidr = i.value(&MPIDRS);
        let n = i.byte() % 4;
        let hyp = (0..n)
            .map(|_| Range {
                base: i.value(&HYP_BASES),
                size: i.value(&HYP_SIZES),
            })
            .collect();
        let bootargs = i.pick(&BOOTARGS);
        let initrd = i.bool().then(|| Range {
            base: i.value(&HYP_BASES),
            size: i.value(&HYP_SIZES),
        });
        Config {
            mpidr,
            hyp,
            bootargs,
            initrd,
        }
    }

    /// Writes it as [`Config::read`] reads it.
    pub fn write(&self, o: &mut Output) {
        o.value(&MPIDRS, self.mpidr).byte(self.hyp.len() as u8);
        for r in &self.hyp {
            o.value(&HYP_BASES, r.base).value(&HYP_SIZES, r.size);
        }
        o.pick(&BOOTARGS, self.bootargs).bool(self.initrd.is_some());
        if let Some(r) = self.initrd {
            o.value(&HYP_BASES, r.base).value(&HYP_SIZES, r.size);
        }
    }

    /// What boot does on QEMU: el2's two ranges, bootargs and an initrd.
    pub fn qemu() -> Config {
        Config {
            mpidr: 0,
            hyp: vec![
                Range {
                    base: 0x4020_0000,
                    size: 2 << 20,
                },
                Range {
                    base: 0x7e00_0000,
                    size: 32 << 20,
                },
            ],
            bootargs: BOOTARGS[1],
            initrd: Some(Range {
                base: 0x4000_0000,
                size: 4096,
            }),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The `FDT_NOP` tokens of a tree that passed `validate`.
fn nops(blob: &[u8]) -> usize {
    let (Some(off), Some(size)) = (be32(blob, 8), be32(blob, 36)) else {
        return 0;
    };
    let st = &blob[off as usize..off as usize + size as usize];
    let (mut pos, mut n) = (0usize, 0usize);
    while let Some(token) = be32(st, pos) {
        pos += 4;
        match token {
            1 => {
                let len = st[pos..].iter().position(|b| *b == 0).unwrap_or(0);
                pos = (pos + len + 1).next_multiple_of(4);
            }
            3 => pos = (pos + 8 + be32(st, pos).unwrap_or(0) as usize).next_multiple_of(4),
            4 => n += 1,
            9 => break,
            _ => {}
        }
    }
    n
}

fn normalized(r: &[Range], what: &str) {
    for w in r.windows(2) {
        assert!(w[0].end() < w[1].base, "{what} not normalized: {r:?}");
    }
    assert!(
        r.iter().all(|r| r.size > 0),
        "{what} has an empty range: {r:?}"
    );
}

/// Node names `vm-fdt` writes (its `node_name_valid`).
fn node_name_ok(name: &str) -> bool {
    if name.is_empty() {
        return true;
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, ',' | '.' | '_' | '+' | '-');
    let mut parts = name.split('@');
    let node = parts.next().unwrap_or("");
    let unit = parts.next();
    parts.next().is_none()
        && !node.is_empty()
        && node.len() <= 31
        && node.starts_with(|c: char| c.is_ascii_alphabetic())
        && !node.contains(|c: char| !valid(c))
        && unit.is_none_or(|u| !u.contains(|c: char| !valid(c)))
}

/// Property names `vm-fdt` writes (its `property_name_valid`).
fn prop_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 31
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, ',' | '.' | '_' | '+' | '?' | '#' | '-')
        })
}

/// Whether `write_host_tree` copies every node and property of `tree`.
fn nothing_dropped(tree: &Fdt<'_>) -> bool {
    tree.all_nodes()
        .all(|n| node_name_ok(n.name) && n.properties().all(|p| prop_name_ok(p.name)))
}

fn cells(v: &[u8], at: usize, n: usize) -> Option<u64> {
    (0..n).try_fold(0u64, |acc, k| {
        be32(v, at + 4 * k).map(|c| (acc << 32) | u64::from(c))
    })
}

/// The first child of the root named exactly `name`, as el2's writer
/// and Linux find `/chosen` and `/reserved-memory` (`Fdt::find_node`
/// would also take `chosen@0`).
fn top_node<'b, 'a>(tree: &'b Fdt<'a>, name: &str) -> Option<FdtNode<'b, 'a>> {
    tree.find_node("/")?.children().find(|c| c.name == name)
}

/// Checks the host tree (module docs).
fn check_host_tree(out: &[u8], cfg: &Config, orig: &Fdt<'_>, orig_platform: Option<&Platform>) {
    fdt::validate(out).unwrap_or_else(|e| panic!("the host tree does not validate: {e}"));
    let tree = Fdt::new(out).expect("the host tree reads");
    let rm = top_node(&tree, "reserved-memory").expect("a /reserved-memory");
    let ac = rm
        .property("#address-cells")
        .and_then(|p| be32(p.value, 0))
        .unwrap_or(2) as usize;
    let sc = rm
        .property("#size-cells")
        .and_then(|p| be32(p.value, 0))
        .unwrap_or(1) as usize;
    // A node per range, found by name and contents: two ranges may share a
    // base, and the input tree may have a node of that name already.
    for r in &cfg.hyp {
        let name = format!("el2-hypervisor@{:x}", r.base);
        let reserves = |c: &FdtNode<'_, '_>| {
            let Some(reg) = c.property("reg").map(|p| p.value) else {
                return false;
            };
            c.property("no-map").is_some()
                && reg.len() == 4 * (ac + sc)
                && cells(reg, 0, ac) == Some(r.base)
                && cells(reg, 4 * ac, sc) == Some(r.size)
        };
        assert!(
            rm.children().any(|c| c.name == name && reserves(&c)),
            "no {name} reserving {r:x?} no-map under /reserved-memory ({ac} + {sc} cells)"
        );
    }
    let chosen = top_node(&tree, "chosen").expect("a /chosen");
    let prop = |name: &str| chosen.property(name).map(|p| p.value);
    let orig_bootargs =
        top_node(orig, "chosen").and_then(|c| c.property("bootargs").map(|p| p.value));
    match cfg.bootargs {
        Some(args) => {
            let mut want = String::from(args).into_bytes();
            want.push(0);
            assert_eq!(prop("bootargs"), Some(&want[..]), "bootargs edited");
        }
        None if nothing_dropped(orig) => {
            assert_eq!(prop("bootargs"), orig_bootargs, "bootargs kept");
        }
        None => {}
    }
    match cfg.initrd {
        Some(r) => {
            assert_eq!(prop("linux,initrd-start"), Some(&r.base.to_be_bytes()[..]));
            assert_eq!(prop("linux,initrd-end"), Some(&r.end().to_be_bytes()[..]));
        }
        None => {
            assert_eq!(
                prop("linux,initrd-start"),
                None,
                "the tree's initrd is dropped"
            );
            assert_eq!(
                prop("linux,initrd-end"),
                None,
                "the tree's initrd is dropped"
            );
        }
    }
    // The same platform for el2, when nothing was dropped.
    let (Some(p), true) = (orig_platform, nothing_dropped(orig)) else {
        return;
    };
    let q = Platform::parse(&tree, cfg.mpidr & fdt::MPIDR_AFF_MASK)
        .unwrap_or_else(|e| panic!("the host tree's platform: {e}"));
    assert_eq!(p.ram.as_slice(), q.ram.as_slice(), "RAM");
    assert_eq!(p.mmio.as_slice(), q.mmio.as_slice(), "MMIO");
    assert_eq!(p.cpus, q.cpus, "CPUs");
    assert_eq!(p.cpu_count, q.cpu_count, "CPUs");
    assert_eq!(p.gic, q.gic, "GIC");
    assert_eq!(p.its, q.its, "ITS");
    assert_eq!(p.uart, q.uart, "UART");
    assert_eq!(p.psci_smc, q.psci_smc, "PSCI method");
    for r in p.reserved.as_slice() {
        assert!(q.reserved.as_slice().contains(r), "reserved {r:?} lost");
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let cfg = Config::read(&mut i);
    let blob = i.rest();
    if let Ok(n) = fdt::total_size(blob, 0) {
        assert!((40..=fdt::MAX_SIZE).contains(&n));
        assert_eq!(Some(n as u32), be32(blob, 4));
    }
    if fdt::validate(blob).is_err() {
        return;
    }
    let ram = fdt::raw_ram(blob);
    normalized(ram.as_slice(), "raw_ram");
    let mut copy = blob.to_vec();
    fdt::strip_nops(&mut copy);
    fdt::validate(&copy).unwrap_or_else(|e| panic!("strip_nops broke the tree: {e}"));
    assert_eq!(nops(&copy), 0, "FDT_NOP left");
    assert_eq!(
        fdt::raw_ram(&copy).as_slice(),
        ram.as_slice(),
        "strip_nops changed RAM"
    );
    let Ok(tree) = Fdt::new(&copy) else {
        return;
    };
    let platform = Platform::parse(&tree, cfg.mpidr & fdt::MPIDR_AFF_MASK).ok();
    if let Some(p) = &platform {
        // el2 checks the tree lies in RAM with `raw_ram` before it edits
        // it, and builds its layout from the platform's RAM afterwards.
        assert_eq!(
            p.ram.as_slice(),
            ram.as_slice(),
            "raw_ram and the platform's RAM"
        );
        normalized(p.ram.as_slice(), "RAM");
        normalized(p.mmio.as_slice(), "MMIO");
        assert!(!p.ram.as_slice().is_empty(), "a platform without RAM");
        assert!(
            (1..=fdt::MAX_CPUS).contains(&p.cpu_count),
            "CPUs: {}",
            p.cpu_count
        );
        assert_eq!(p.cpus[0], cfg.mpidr & fdt::MPIDR_AFF_MASK, "boot CPU first");
    }
    let edits = ChosenEdits {
        bootargs: cfg.bootargs,
        initrd: cfg.initrd,
    };
    if let Ok(out) = fdt::write_host_tree(&tree, &copy, &cfg.hyp, &edits) {
        check_host_tree(&out, &cfg, &tree, platform.as_ref());
    }
}

/// QEMU's own trees for `virt` (GICv3, GICv3 with ITS, GICv2): QEMU 7.2's
/// `qemu-system-aarch64 -machine virt,gic-version=3,its=off,
/// virtualization=on,dumpdtb=<file> -cpu cortex-a72 -smp 2 -m 1G -nic none`
/// (`its=on`; `gic-version=2`), cut after the strings block and
/// `totalsize` set to match (QEMU pads its dump to 1 MiB).
pub const QEMU_TREES: [(&str, &[u8]); 3] = [
    (
        "qemu-virt-gicv3",
        include_bytes!("../data/qemu-virt-gicv3.dtb"),
    ),
    (
        "qemu-virt-gicv3-its",
        include_bytes!("../data/qemu-virt-gicv3-its.dtb"),
    ),
    (
        "qemu-virt-gicv2",
        include_bytes!("../data/qemu-virt-gicv2.dtb"),
    ),
];

/// Inserts an `FDT_NOP` before the first `FDT_BEGIN_NODE` named `node`
/// (libfdt's `fdt_nop_node` leaves NOPs between siblings).
fn with_nop_before(blob: &[u8], node: &str) -> Vec<u8> {
    let off = be32(blob, 8).unwrap_or(0) as usize;
    let size = be32(blob, 36).unwrap_or(0) as usize;
    let mut pat = vec![0, 0, 0, 1];
    pat.extend_from_slice(node.as_bytes());
    pat.push(0);
    let Some(at) = blob[off..off + size]
        .windows(pat.len())
        .position(|w| w == pat)
        .filter(|p| p % 4 == 0)
    else {
        return blob.to_vec();
    };
    let mut out = blob[..off + at].to_vec();
    out.extend_from_slice(&4u32.to_be_bytes());
    out.extend_from_slice(&blob[off + at..]);
    let put = |out: &mut Vec<u8>, field: usize, v: usize| {
        out[field..field + 4].copy_from_slice(&(v as u32).to_be_bytes());
    };
    put(&mut out, 4, blob.len() + 4);
    put(&mut out, 36, size + 4);
    for field in [12, 16] {
        let v = be32(blob, field).unwrap_or(0) as usize;
        if v >= off + size {
            put(&mut out, field, v + 4);
        }
    }
    out
}

/// A small tree written with `vm-fdt`: 1-cell addresses, a
/// `/reserved-memory` with a child, a GICv3 with an ITS, a PL011 named by
/// `stdout-path`, an identity bus with a device, a `/memreserve/`.
pub fn small_tree() -> Vec<u8> {
    use vm_fdt::{FdtReserveEntry, FdtWriter};
    let rsv = [FdtReserveEntry::new(0x4000_0000, 0x1000).expect("a reservation")];
    let mut w = FdtWriter::new_with_mem_reserv(&rsv).expect("a writer");
    let root = w.begin_node("").expect("root");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 1).expect("prop");
    let mem = w.begin_node("memory@40000000").expect("node");
    w.property_string("device_type", "memory").expect("prop");
    w.property_array_u32("reg", &[0x4000_0000, 0x0800_0000, 0x5000_0000, 0x1000_0000])
        .expect("prop");
    w.end_node(mem).expect("end");
    let cpus = w.begin_node("cpus").expect("node");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 0).expect("prop");
    for (k, mpidr) in [0u32, 1, 0x100].into_iter().enumerate() {
        let c = w.begin_node(&format!("cpu@{k}")).expect("node");
        w.property_string("device_type", "cpu").expect("prop");
        w.property_u32("reg", mpidr).expect("prop");
        w.end_node(c).expect("end");
    }
    w.end_node(cpus).expect("end");
    let psci = w.begin_node("psci").expect("node");
    w.property_string("method", "smc").expect("prop");
    w.end_node(psci).expect("end");
    let gic = w.begin_node("intc@8000000").expect("node");
    w.property_string("compatible", "arm,gic-v3").expect("prop");
    w.property_array_u32("reg", &[0x0800_0000, 0x1_0000, 0x080a_0000, 0x40_0000])
        .expect("prop");
    w.property_null("ranges").expect("prop");
    let its = w.begin_node("its@8080000").expect("node");
    w.property_string("compatible", "arm,gic-v3-its")
        .expect("prop");
    w.property_array_u32("reg", &[0x0808_0000, 0x2_0000])
        .expect("prop");
    w.end_node(its).expect("end");
    w.end_node(gic).expect("end");
    let uart = w.begin_node("pl011@9000000").expect("node");
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )
    .expect("prop");
    w.property_array_u32("reg", &[0x0900_0000, 0x1000])
        .expect("prop");
    w.end_node(uart).expect("end");
    let bus = w.begin_node("bus@a000000").expect("node");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 1).expect("prop");
    w.property_null("ranges").expect("prop");
    let dev = w.begin_node("dev@a001000").expect("node");
    w.property_array_u32("reg", &[0x0a00_1000, 0x200])
        .expect("prop");
    w.end_node(dev).expect("end");
    w.end_node(bus).expect("end");
    let rm = w.begin_node("reserved-memory").expect("node");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 1).expect("prop");
    w.property_null("ranges").expect("prop");
    let fw = w.begin_node("firmware@4f000000").expect("node");
    w.property_array_u32("reg", &[0x4f00_0000, 0x10_0000])
        .expect("prop");
    w.property_null("no-map").expect("prop");
    w.end_node(fw).expect("end");
    w.end_node(rm).expect("end");
    let chosen = w.begin_node("chosen").expect("node");
    w.property_string("stdout-path", "/pl011@9000000")
        .expect("prop");
    w.property_string("bootargs", "earlycon").expect("prop");
    w.property_u64("linux,initrd-start", 0x4800_0000)
        .expect("prop");
    w.property_u64("linux,initrd-end", 0x4810_0000)
        .expect("prop");
    w.end_node(chosen).expect("end");
    w.end_node(root).expect("end");
    w.finish().expect("a tree")
}

/// Hand-made seeds: QEMU's trees (one with NOPs between siblings, as
/// `fdt_nop_node` leaves them), the small tree, each with el2's
/// configuration and with others.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let input = |cfg: &Config, blob: &[u8]| {
        let mut o = Output::new();
        cfg.write(&mut o);
        o.raw(blob);
        o.finish()
    };
    let qemu = Config::qemu();
    let other = Config {
        mpidr: 1,
        hyp: vec![Range {
            base: 1 << 32,
            size: 4096,
        }],
        bootargs: None,
        initrd: None,
    };
    let mut seeds = Vec::new();
    for (name, blob) in QEMU_TREES {
        seeds.push((name.to_string(), input(&qemu, blob)));
    }
    let nop = with_nop_before(with_nop_before(QEMU_TREES[0].1, "cpus").as_slice(), "psci");
    seeds.push(("qemu-virt-nops".into(), input(&qemu, &nop)));
    seeds.push(("qemu-virt-other".into(), input(&other, QEMU_TREES[1].1)));
    let small = small_tree();
    seeds.push(("small".into(), input(&qemu, &small)));
    seeds.push((
        "small-other".into(),
        input(&other, &with_nop_before(&small, "psci")),
    ));
    seeds
}
