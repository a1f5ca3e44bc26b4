//! Bugs the fuzz targets found in the code under test (el2), each as the
//! smallest test that shows it, kept as regression tests now that el2 is
//! fixed (2026-12-06: `bootimg::plan`'s checked search, `fdt::validate`'s
//! cell counts, `raw_ram` reading repeated and unterminated properties as
//! `Platform::parse` does, `fdt::top_node`). The targets no longer steer
//! clear of them: `boot_image` draws RAM anywhere in the 64-bit space and
//! `device_tree` compares `raw_ram` with the platform, and checks the host
//! tree's `/reserved-memory`, on every tree `validate` accepts.

use el2::bootimg::{self, BootImage, pack};
use el2::fdt::{self, ChosenEdits, Platform, Range};
use flat_device_tree::Fdt;
use vm_fdt::FdtWriter;

/// `bootimg::plan` with RAM that starts less than 2 MiB below the top of
/// the 64-bit address space: `first_fit` rounds the start of RAM up to
/// 2 MiB with `next_multiple_of`, which overflows (a panic with overflow
/// checks; in el2's release build the base wraps to 0 and the search
/// walks 2^43 steps, a hang at boot). The answer should be an error (no
/// room). Found by the `boot_image` fuzz target (round-trip mode, RAM base
/// `u64::MAX`).
#[test]
fn plan_near_the_top_of_the_address_space() {
    let kernel = pack::arm64_image(&[0u8; 64], 4096);
    let img = BootImage::raw(&kernel, &[]).expect("a raw Image");
    // One page, 1 MiB below the top: it ends inside the address space.
    let ram = (0xffff_ffff_fff0_0000, 0x1000);
    let plan = std::panic::catch_unwind(|| bootimg::plan(&img, ram, &[]));
    assert!(
        matches!(plan, Ok(Err(_))),
        "plan in RAM {ram:x?} should fail cleanly: {plan:?}"
    );
}

/// A tree `fdt::validate` accepts: the root with `root_cells` as its
/// `#address-cells` (`#size-cells` 1), a node `memory@40000000` with the
/// properties `memory` in that order, one CPU and PSCI.
fn tree_with_memory(root_cells: u32, memory: &[(&str, &[u8])]) -> Vec<u8> {
    tree_with(
        &[("#address-cells", root_cells), ("#size-cells", 1)],
        memory,
    )
}

/// [`tree_with_memory`] with the root's cell properties as given, in
/// order (repeats included).
fn tree_with(root_props: &[(&str, u32)], memory: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = FdtWriter::new().expect("a writer");
    let root = w.begin_node("").expect("root");
    for (name, value) in root_props {
        w.property_u32(name, *value).expect("prop");
    }
    let mem = w.begin_node("memory@40000000").expect("node");
    for (name, value) in memory {
        w.property(name, value).expect("prop");
    }
    w.end_node(mem).expect("end");
    let cpus = w.begin_node("cpus").expect("node");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 0).expect("prop");
    let cpu = w.begin_node("cpu@0").expect("node");
    w.property_string("device_type", "cpu").expect("prop");
    w.property_u32("reg", 0).expect("prop");
    w.end_node(cpu).expect("end");
    w.end_node(cpus).expect("end");
    let psci = w.begin_node("psci").expect("node");
    w.property_string("method", "smc").expect("prop");
    w.end_node(psci).expect("end");
    w.end_node(root).expect("end");
    w.finish().expect("a tree")
}

/// 128 MiB at 0x4000_0000 in two address cells and one size cell.
const REG: [u8; 12] = [0, 0, 0, 0, 0x40, 0, 0, 0, 0x08, 0, 0, 0];

/// el2 reads RAM twice: `raw_ram` (its own reader of the structure
/// block, for the checks made before it edits the tree in place) and
/// `Platform::parse` (through `flat_device_tree`, for its layout). On a
/// tree `validate` accepts, both must find the same RAM, or `validate`
/// must refuse the tree.
fn assert_ram_read_alike(blob: &[u8]) {
    if fdt::validate(blob).is_err() {
        return;
    }
    let tree = Fdt::new(blob).expect("the tree reads");
    // A tree el2 cannot boot on is refused anyway.
    let Ok(platform) = Platform::parse(&tree, 0) else {
        return;
    };
    assert_eq!(
        fdt::raw_ram(blob).as_slice(),
        platform.ram.as_slice(),
        "raw_ram and Platform::parse disagree on RAM"
    );
}

/// The root says `#address-cells = <0x102>` (the devicetree specification
/// allows at most 4): `raw_ram` reads the whole value, skips the memory
/// node and finds no RAM; `Platform::parse` reads cell counts through
/// `flat_device_tree`'s `CellSize`, which keeps the low byte (2), and
/// finds 128 MiB. Found by the `device_tree` fuzz target; `validate` now
/// refuses such a tree.
#[test]
fn cell_counts_read_alike() {
    let blob = tree_with_memory(0x102, &[("device_type", b"memory\0"), ("reg", &REG)]);
    assert_ram_read_alike(&blob);
}

/// A memory node with two `device_type` properties, `"memory"` then
/// `"cpu"`: `raw_ram` keeps the last and finds no RAM, `Platform::parse`
/// (`FdtNode::property`) the first and finds 128 MiB. Found by the
/// `device_tree` fuzz target.
#[test]
fn duplicate_properties_read_alike() {
    let blob = tree_with_memory(
        2,
        &[
            ("device_type", b"memory\0"),
            ("reg", &REG),
            ("device_type", b"cpu\0"),
        ],
    );
    assert_ram_read_alike(&blob);
}

/// The root repeats `#address-cells`, `<0>` then `<1>`: `raw_ram` keeps
/// the first (no address cells: no RAM), `flat_device_tree`'s cell sizes
/// the last (one cell: 128 MiB at 0x4000_0000 and 256 MiB at
/// 0x5000_0000). Found by the `device_tree` fuzz target once its detours
/// around the bugs above were dropped (2026-12-06); `validate` now refuses
/// a node that repeats a property el2 reads.
#[test]
fn repeated_cell_counts_read_alike() {
    let repeated = tree_with(
        &[("#address-cells", 0), ("#address-cells", 1)],
        &[
            ("device_type", b"memory\0"),
            (
                "reg",
                &[0x40, 0, 0, 0, 0x08, 0, 0, 0, 0x50, 0, 0, 0, 0x10, 0, 0, 0],
            ),
        ],
    );
    assert_ram_read_alike(&repeated);
}

/// A memory node whose `device_type` is `"memory"` without its NUL
/// terminator: `raw_ram` wants exactly `memory\0` and finds no RAM,
/// `Platform::parse` (`as_str`, which trims trailing NULs and does not
/// need one) finds 128 MiB. The same goes for `status`. Found by the
/// `device_tree` fuzz target.
#[test]
fn unterminated_strings_read_alike() {
    let blob = tree_with_memory(2, &[("device_type", b"memory"), ("reg", &REG)]);
    assert_ram_read_alike(&blob);
}

/// The same misreading when el2 writes the host's tree: a
/// `/reserved-memory` with `#address-cells = #size-cells = <0x101>` gets
/// its `el2-hypervisor@...` child written with one address and one size
/// cell (the low byte), so a host reading the tree as written finds a
/// `reg` that matches none of its declared cells. el2 should refuse the
/// tree (or the cell counts) instead.
#[test]
fn reserved_memory_reg_matches_its_cells() {
    let mut w = FdtWriter::new().expect("a writer");
    let root = w.begin_node("").expect("root");
    w.property_u32("#address-cells", 2).expect("prop");
    w.property_u32("#size-cells", 2).expect("prop");
    let rm = w.begin_node("reserved-memory").expect("node");
    w.property_u32("#address-cells", 0x101).expect("prop");
    w.property_u32("#size-cells", 0x101).expect("prop");
    w.property_null("ranges").expect("prop");
    w.end_node(rm).expect("end");
    w.end_node(root).expect("end");
    let blob = w.finish().expect("a tree");

    if fdt::validate(&blob).is_err() {
        return;
    }
    let tree = Fdt::new(&blob).expect("the tree reads");
    let hyp = [Range {
        base: 0x4020_0000,
        size: 2 << 20,
    }];
    let edits = ChosenEdits {
        bootargs: None,
        initrd: None,
    };
    let Ok(out) = fdt::write_host_tree(&tree, &blob, &hyp, &edits) else {
        return;
    };
    let host = Fdt::new(&out).expect("the host tree reads");
    let rm = host
        .find_node("/reserved-memory")
        .expect("/reserved-memory");
    let cells = |name: &str| {
        let v = rm.property(name).expect("a cell count").value;
        u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize
    };
    let (ac, sc) = (cells("#address-cells"), cells("#size-cells"));
    let node = rm
        .children()
        .find(|c| c.name == "el2-hypervisor@40200000")
        .expect("the hypervisor's node");
    let reg = node.property("reg").expect("a reg").value;
    assert_eq!(
        reg.len(),
        4 * (ac + sc),
        "reg of {} bytes under #address-cells {ac:#x}, #size-cells {sc:#x}",
        reg.len()
    );
}

/// A tree with a node `chosen@0` before `/chosen`, each naming a
/// different PL011 as `stdout-path`. el2 writes the host's `/chosen` edits
/// into the node named exactly `chosen`, as Linux finds it, but reads its
/// own console from `Fdt::chosen()`, which also takes `chosen@0` (and so
/// for `/cpus`, `/psci` and `/reserved-memory`, read through
/// `Fdt::find_node`). Found by the `device_tree` fuzz target (a mutation
/// renamed `memory@40000000` to `chosen@40000000`), which now looks nodes
/// up by their exact name as el2's writer does (`top_node`).
#[test]
fn chosen_is_the_node_named_chosen() {
    let mut w = FdtWriter::new().expect("a writer");
    let root = w.begin_node("").expect("root");
    w.property_u32("#address-cells", 2).expect("prop");
    w.property_u32("#size-cells", 1).expect("prop");
    let decoy = w.begin_node("chosen@0").expect("node");
    w.property_string("stdout-path", "/pl011@9001000")
        .expect("prop");
    w.end_node(decoy).expect("end");
    let mem = w.begin_node("memory@40000000").expect("node");
    w.property_string("device_type", "memory").expect("prop");
    w.property("reg", &REG).expect("prop");
    w.end_node(mem).expect("end");
    let cpus = w.begin_node("cpus").expect("node");
    w.property_u32("#address-cells", 1).expect("prop");
    w.property_u32("#size-cells", 0).expect("prop");
    let cpu = w.begin_node("cpu@0").expect("node");
    w.property_string("device_type", "cpu").expect("prop");
    w.property_u32("reg", 0).expect("prop");
    w.end_node(cpu).expect("end");
    w.end_node(cpus).expect("end");
    let psci = w.begin_node("psci").expect("node");
    w.property_string("method", "smc").expect("prop");
    w.end_node(psci).expect("end");
    for base in [0x0900_0000u32, 0x0900_1000] {
        let uart = w.begin_node(&format!("pl011@{base:x}")).expect("node");
        w.property_string("compatible", "arm,pl011").expect("prop");
        w.property_array_u32("reg", &[0, base, 0x1000])
            .expect("prop");
        w.end_node(uart).expect("end");
    }
    let chosen = w.begin_node("chosen").expect("node");
    w.property_string("stdout-path", "/pl011@9000000")
        .expect("prop");
    w.end_node(chosen).expect("end");
    w.end_node(root).expect("end");
    let blob = w.finish().expect("a tree");

    fdt::validate(&blob).expect("a valid tree");
    let tree = Fdt::new(&blob).expect("the tree reads");
    let platform = Platform::parse(&tree, 0).expect("a platform");
    assert_eq!(
        platform.uart,
        Some(0x0900_0000),
        "el2's console is not the /chosen stdout-path"
    );
}
