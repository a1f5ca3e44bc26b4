//! `el2::fdt::Platform::parse` on QEMU-virt-like trees: the GICv3 ITS and
//! redistributor regions el2 must be able to mediate (an ITS or a
//! redistributor el2 does not mediate could be pointed at any memory).

use el2::fdt::{DtError, Gic, Platform, validate};
use flat_device_tree::Fdt;
use vm_fdt::FdtWriter;

/// What to put in the tree.
#[derive(Clone, Copy)]
struct Shape {
    its_nodes: usize,
    its_disabled: bool,
    redist_regions: Option<u32>,
}

fn reg(w: &mut FdtWriter, pairs: &[(u64, u64)]) {
    let cells: Vec<u64> = pairs.iter().flat_map(|&(b, s)| [b, s]).collect();
    w.property_array_u64("reg", &cells).unwrap();
}

fn tree(shape: Shape) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_string("compatible", "linux,dummy-virt").unwrap();

    let mem = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    reg(&mut w, &[(0x4000_0000, 0x4000_0000)]);
    w.end_node(mem).unwrap();

    let cpus = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    for i in 0..2u32 {
        let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_string("compatible", "arm,cortex-a72").unwrap();
        w.property_u32("reg", i).unwrap();
        w.property_string("enable-method", "psci").unwrap();
        w.end_node(cpu).unwrap();
    }
    w.end_node(cpus).unwrap();

    let psci = w.begin_node("psci").unwrap();
    w.property_string("compatible", "arm,psci-1.0").unwrap();
    w.property_string("method", "smc").unwrap();
    w.end_node(psci).unwrap();

    let gic = w.begin_node("intc@8000000").unwrap();
    w.property_string("compatible", "arm,gic-v3").unwrap();
    w.property_null("interrupt-controller").unwrap();
    w.property_u32("#interrupt-cells", 3).unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_null("ranges").unwrap();
    if let Some(n) = shape.redist_regions {
        w.property_u32("#redistributor-regions", n).unwrap();
    }
    reg(
        &mut w,
        &[(0x0800_0000, 0x1_0000), (0x080a_0000, 0x00f6_0000)],
    );
    for i in 0..shape.its_nodes {
        let base = 0x0808_0000 + 0x2_0000 * i as u64;
        let its = w.begin_node(&format!("its@{base:x}")).unwrap();
        w.property_string("compatible", "arm,gic-v3-its").unwrap();
        w.property_null("msi-controller").unwrap();
        if shape.its_disabled {
            w.property_string("status", "disabled").unwrap();
        }
        reg(&mut w, &[(base, 0x2_0000)]);
        w.end_node(its).unwrap();
    }
    w.end_node(gic).unwrap();

    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn parse(shape: Shape) -> Result<Platform, DtError> {
    let blob = tree(shape);
    validate(&blob).expect("a valid tree");
    let fdt = Fdt::new(&blob).expect("parsable");
    Platform::parse(&fdt, 0)
}

const ONE_ITS: Shape = Shape {
    its_nodes: 1,
    its_disabled: false,
    redist_regions: None,
};

#[test]
fn one_its_is_found() {
    let p = parse(ONE_ITS).unwrap();
    let its = p.its.expect("the ITS");
    assert_eq!((its.base, its.size), (0x0808_0000, 0x2_0000));
    assert_eq!(p.cpu_count, 2);
}

#[test]
fn no_its_or_a_disabled_one_is_none() {
    let none = parse(Shape {
        its_nodes: 0,
        ..ONE_ITS
    })
    .unwrap();
    assert!(none.its.is_none());
    let disabled = parse(Shape {
        its_disabled: true,
        ..ONE_ITS
    })
    .unwrap();
    assert!(disabled.its.is_none());
}

#[test]
fn a_second_its_is_refused() {
    let e = parse(Shape {
        its_nodes: 2,
        ..ONE_ITS
    })
    .unwrap_err();
    assert!(
        matches!(e, DtError::TooMany(what) if what.contains("ITS")),
        "{e}"
    );
}

#[test]
fn more_than_one_redistributor_region_is_refused() {
    assert!(
        parse(Shape {
            redist_regions: Some(1),
            ..ONE_ITS
        })
        .is_ok()
    );
    let e = parse(Shape {
        redist_regions: Some(2),
        ..ONE_ITS
    })
    .unwrap_err();
    assert!(
        matches!(e, DtError::TooMany(what) if what.contains("redistributor")),
        "{e}"
    );
}

/// `/cpus` with one CPU (MPIDR 0) and `/psci` (method `smc`): what every
/// tree el2 accepts needs besides RAM.
fn one_cpu_and_psci(w: &mut FdtWriter) {
    let cpus = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    let cpu = w.begin_node("cpu@0").unwrap();
    w.property_string("device_type", "cpu").unwrap();
    w.property_u32("reg", 0).unwrap();
    w.end_node(cpu).unwrap();
    w.end_node(cpus).unwrap();
    let psci = w.begin_node("psci").unwrap();
    w.property_string("compatible", "arm,psci-1.0").unwrap();
    w.property_string("method", "smc").unwrap();
    w.end_node(psci).unwrap();
}

/// A tree for the lookups by type and compatible string: RAM in two
/// enabled memory nodes and a disabled one, two PL011s, a GICv2 node
/// first and (optionally) a GICv3 node after it, and `stdout` as
/// `/chosen/stdout-path` if given.
fn lookup_tree(gic_v3: bool, stdout: Option<&str>) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    if let Some(path) = stdout {
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("stdout-path", path).unwrap();
        w.end_node(chosen).unwrap();
    }
    for (base, size, enabled) in [
        (0x4000_0000u64, 0x4000_0000u64, true),
        (0xc000_0000, 0x1000_0000, false),
        (0x1_0000_0000, 0x2000_0000, true),
    ] {
        let mem = w.begin_node(&format!("memory@{base:x}")).unwrap();
        w.property_string("device_type", "memory").unwrap();
        if !enabled {
            w.property_string("status", "disabled").unwrap();
        }
        reg(&mut w, &[(base, size)]);
        w.end_node(mem).unwrap();
    }
    one_cpu_and_psci(&mut w);
    for base in [0x0900_0000u64, 0x0904_0000] {
        let uart = w.begin_node(&format!("pl011@{base:x}")).unwrap();
        w.property_string_list(
            "compatible",
            vec!["arm,pl011".to_owned(), "arm,primecell".to_owned()],
        )
        .unwrap();
        reg(&mut w, &[(base, 0x1000)]);
        w.end_node(uart).unwrap();
    }
    let v2 = w.begin_node("intc@2c001000").unwrap();
    w.property_string_list(
        "compatible",
        vec!["arm,gic-400".to_owned(), "arm,cortex-a15-gic".to_owned()],
    )
    .unwrap();
    reg(&mut w, &[(0x2c00_1000, 0x1000), (0x2c00_2000, 0x2000)]);
    w.end_node(v2).unwrap();
    if gic_v3 {
        let v3 = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        reg(
            &mut w,
            &[(0x0800_0000, 0x1_0000), (0x080a_0000, 0x00f6_0000)],
        );
        w.end_node(v3).unwrap();
    }
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn parse_blob(blob: &[u8]) -> Platform {
    validate(blob).expect("a valid tree");
    Platform::parse(&Fdt::new(blob).expect("parsable"), 0).expect("a platform")
}

fn range(base: u64, size: u64) -> el2::fdt::Range {
    el2::fdt::Range { base, size }
}

#[test]
fn ram_gic_and_console_are_found_by_type_and_compatible() {
    let p = parse_blob(&lookup_tree(true, None));
    // The disabled memory node is not RAM.
    assert_eq!(
        p.ram.as_slice(),
        &[
            range(0x4000_0000, 0x4000_0000),
            range(0x1_0000_0000, 0x2000_0000)
        ]
    );
    // A GICv3 anywhere wins over a GICv2 before it.
    assert_eq!(
        p.gic,
        Gic::V3 {
            dist: range(0x0800_0000, 0x1_0000),
            redist: range(0x080a_0000, 0x00f6_0000),
        }
    );
    // No stdout-path: the first PL011.
    assert_eq!(p.uart, Some(0x0900_0000));
    // Without a GICv3, the GICv2 (either compatible string).
    assert_eq!(
        parse_blob(&lookup_tree(false, None)).gic,
        Gic::V2 {
            dist: range(0x2c00_1000, 0x1000),
            cpu: range(0x2c00_2000, 0x2000),
        }
    );
}

#[test]
fn the_console_is_stdout_path_when_it_is_a_pl011() {
    let p = parse_blob(&lookup_tree(true, Some("/pl011@9040000")));
    assert_eq!(p.uart, Some(0x0904_0000));
    // stdout-path naming something else: the first PL011 instead.
    let p = parse_blob(&lookup_tree(true, Some("/intc@2c001000")));
    assert_eq!(p.uart, Some(0x0900_0000));
}

/// A root with `cells` as `#address-cells` (`#size-cells` 1) and a memory
/// node with `props` in that order (128 MiB at 0x4000_0000 as `reg`
/// needs 2 address cells), one CPU and PSCI.
fn memory_tree(cells: u32, props: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", cells).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    let mem = w.begin_node("memory@40000000").unwrap();
    for (name, value) in props {
        w.property(name, value).unwrap();
    }
    w.end_node(mem).unwrap();
    one_cpu_and_psci(&mut w);
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

const REG_128M: [u8; 12] = [0, 0, 0, 0, 0x40, 0, 0, 0, 0x08, 0, 0, 0];

/// el2's own reader (`raw_ram`, used before the tree is edited) and
/// `Platform::parse` must find the same RAM.
fn ram_both_ways(blob: &[u8]) -> (Vec<el2::fdt::Range>, Vec<el2::fdt::Range>) {
    validate(blob).expect("a valid tree");
    let raw = el2::fdt::raw_ram(blob).as_slice().to_vec();
    let parsed = Platform::parse(&Fdt::new(blob).unwrap(), 0)
        .unwrap()
        .ram
        .as_slice()
        .to_vec();
    (raw, parsed)
}

#[test]
fn cell_counts_above_4_are_refused() {
    let blob = memory_tree(0x102, &[("device_type", b"memory\0"), ("reg", &REG_128M)]);
    assert!(validate(&blob).is_err(), "#address-cells 0x102 accepted");
    let ok = memory_tree(2, &[("device_type", b"memory\0"), ("reg", &REG_128M)]);
    assert!(validate(&ok).is_ok());
}

#[test]
fn a_repeated_property_el2_reads_is_refused() {
    // Two device_type properties: flat_device_tree takes the first.
    let dup = memory_tree(
        2,
        &[
            ("device_type", b"memory\0"),
            ("reg", &REG_128M),
            ("device_type", b"cpu\0"),
        ],
    );
    assert!(validate(&dup).is_err(), "a repeated device_type accepted");
    let dup_reg = memory_tree(
        2,
        &[
            ("device_type", b"memory\0"),
            ("reg", &REG_128M),
            ("reg", &REG_128M),
        ],
    );
    assert!(validate(&dup_reg).is_err(), "a repeated reg accepted");
    let dup_status = memory_tree(
        2,
        &[
            ("device_type", b"memory\0"),
            ("status", b"okay\0"),
            ("reg", &REG_128M),
            ("status", b"okay\0"),
        ],
    );
    assert!(validate(&dup_status).is_err(), "a repeated status accepted");
    // Two #address-cells in the root (found by the device_tree fuzz
    // target): flat_device_tree takes the last (1), el2's own reader the
    // first (0), so they found different RAM.
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 0).unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    let mem = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property(
        "reg",
        &[0x40, 0, 0, 0, 0x08, 0, 0, 0, 0x50, 0, 0, 0, 0x10, 0, 0, 0],
    )
    .unwrap();
    w.end_node(mem).unwrap();
    one_cpu_and_psci(&mut w);
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    assert!(
        validate(&blob).is_err(),
        "a repeated #address-cells accepted"
    );
    // Repeats of properties el2 does not read are the tree's business.
    let ok = memory_tree(
        2,
        &[
            ("device_type", b"memory\0"),
            ("reg", &REG_128M),
            ("x,note", b"a\0"),
            ("x,note", b"b\0"),
        ],
    );
    assert!(validate(&ok).is_ok());
}

#[test]
fn an_unterminated_device_type_is_read_alike_by_both_readers() {
    let want = vec![range(0x4000_0000, 0x0800_0000)];
    // "memory" without its NUL is "memory" to both.
    let bare = memory_tree(2, &[("device_type", b"memory"), ("reg", &REG_128M)]);
    assert_eq!(ram_both_ways(&bare), (want.clone(), want));
}

#[test]
fn chosen_is_the_node_named_exactly_chosen() {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    // A decoy before the real /chosen: Fdt::chosen() would take it.
    let decoy = w.begin_node("chosen@0").unwrap();
    w.property_string("stdout-path", "/pl011@9001000").unwrap();
    w.property_string("bootargs", "decoy").unwrap();
    w.end_node(decoy).unwrap();
    let mem = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    reg(&mut w, &[(0x4000_0000, 0x0800_0000)]);
    w.end_node(mem).unwrap();
    one_cpu_and_psci(&mut w);
    for base in [0x0900_0000u64, 0x0900_1000] {
        let uart = w.begin_node(&format!("pl011@{base:x}")).unwrap();
        w.property_string("compatible", "arm,pl011").unwrap();
        reg(&mut w, &[(base, 0x1000)]);
        w.end_node(uart).unwrap();
    }
    let chosen = w.begin_node("chosen").unwrap();
    w.property_string("stdout-path", "/pl011@9000000:115200n8")
        .unwrap();
    w.property_string("bootargs", "console=ttyAMA0").unwrap();
    w.end_node(chosen).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let p = parse_blob(&blob);
    assert_eq!(p.uart, Some(0x0900_0000));
    assert_eq!(
        el2::fdt::bootargs(&Fdt::new(&blob).unwrap()),
        Some("console=ttyAMA0")
    );
}
