//! The guest's device tree: what a Linux arm64 guest needs to find its
//! memory, CPUs, PSCI, interrupt controller, timer, console and the test
//! device (the layout of [`crate::platform`]), written with `vm-fdt`.
//!
//! ```text
//! / { compatible = "linux,dummy-virt"; #address-cells = <2>; #size-cells = <2>;
//!     interrupt-parent = <&gic>;
//!     chosen { bootargs; stdout-path = "/pl011@9000000"; linux,initrd-start/-end; };
//!     memory@80000000 { device_type = "memory"; reg = <RAM_BASE size>; };
//!     cpus { cpu@N { compatible = "arm,armv8"; enable-method = "psci"; reg = <N>; }; };
//!     psci { compatible = "arm,psci-1.0", "arm,psci-0.2"; method = "hvc"; };
//!     intc@8000000 { compatible = "arm,gic-v3"; reg = <dist 64K>, <redist 128K × vCPUs>; };
//!     timer { compatible = "arm,armv8-timer"; interrupts = PPI 13, 14, 11, 10; always-on; };
//!     apb-pclk { compatible = "fixed-clock"; clock-frequency = <24000000>; };
//!     pl011@9000000 { compatible = "arm,pl011", "arm,primecell"; interrupts = SPI 1; };
//!     test-device@a000000 { compatible = "pkvm-rs,test-device"; };
//! };
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use vm_fdt::{Error, FdtWriter};

use crate::platform::{GIC_DIST, GIC_REDIST, RAM_BASE, TEST_DEVICE, UART, testdev, vcpu_mpidr};

/// Bytes of the GICv3 distributor's frame.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Bytes of one GICv3 redistributor (RD_base + SGI_base frames).
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// Bytes of the PL011's and the test device's register files.
pub const DEVICE_SIZE: u64 = 0x1000;
/// The fixed clock feeding the PL011, in Hz.
pub const CLOCK_HZ: u32 = 24_000_000;
/// The GIC's phandle.
pub const GIC_PHANDLE: u32 = 1;
/// The clock's phandle.
pub const CLOCK_PHANDLE: u32 = 2;
/// The PL011's interrupt: SPI 1.
pub const UART_SPI: u32 = 1;

/// GIC interrupt specifier, first cell: an SPI.
const GIC_SPI: u32 = 0;
/// GIC interrupt specifier, first cell: a PPI.
const GIC_PPI: u32 = 1;
/// Interrupt flags: level-sensitive, active high.
const IRQ_LEVEL_HIGH: u32 = 4;
/// The architected timer's PPIs: secure physical, non-secure physical,
/// virtual, hypervisor physical (the binding's order).
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// The PL011 node's path (`/chosen/stdout-path`).
pub fn pl011_path() -> String {
    format!("/pl011@{UART:x}")
}

/// What the device tree describes.
#[derive(Clone, Copy, Debug)]
pub struct FdtConfig<'a> {
    /// Guest RAM in bytes, from [`RAM_BASE`].
    pub mem: u64,
    /// vCPUs (1..=8).
    pub vcpus: usize,
    /// `/chosen/bootargs`.
    pub cmdline: &'a str,
    /// The initrd's guest physical range `[start, end)`, if any.
    pub initrd: Option<(u64, u64)>,
}

fn reg(pairs: &[(u64, u64)]) -> Vec<u64> {
    pairs.iter().flat_map(|&(a, s)| [a, s]).collect()
}

/// Writes the device tree; errors are `vm-fdt`'s (a NUL in the command
/// line, say).
pub fn build(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, Error> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", cfg.cmdline)?;
    w.property_string("stdout-path", &pl011_path())?;
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let memory = w.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[RAM_BASE, cfg.mem])?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..cfg.vcpus {
        let mpidr = vcpu_mpidr(i);
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_string("enable-method", "psci")?;
        // MPIDR Aff0 < 8: fits one cell.
        w.property_u32("reg", mpidr as u32)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let gic = w.begin_node(&format!("intc@{GIC_DIST:x}"))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_array_u64(
        "reg",
        &reg(&[
            (GIC_DIST, GIC_DIST_SIZE),
            (GIC_REDIST, GIC_REDIST_SIZE * cfg.vcpus as u64),
        ]),
    )?;
    w.property_phandle(GIC_PHANDLE)?;
    w.end_node(gic)?;

    // PPI flags: the CPU mask (bits 15:8, one bit per vCPU; GICv3 ignores
    // it) and level-high.
    let cpu_mask = ((1u32 << cfg.vcpus.min(8)) - 1) << 8;
    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    let irqs: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, cpu_mask | IRQ_LEVEL_HIGH])
        .collect();
    w.property_array_u32("interrupts", &irqs)?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let clock = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", CLOCK_HZ)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(CLOCK_PHANDLE)?;
    w.end_node(clock)?;

    let uart = w.begin_node(&format!("pl011@{UART:x}"))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".to_string(), "arm,primecell".to_string()],
    )?;
    w.property_array_u64("reg", &[UART, DEVICE_SIZE])?;
    w.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    w.property_string_list(
        "clock-names",
        vec!["uartclk".to_string(), "apb_pclk".to_string()],
    )?;
    w.end_node(uart)?;

    let dev = w.begin_node(&format!("test-device@{TEST_DEVICE:x}"))?;
    w.property_string("compatible", testdev::COMPATIBLE)?;
    w.property_array_u64("reg", &[TEST_DEVICE, DEVICE_SIZE])?;
    w.end_node(dev)?;

    w.end_node(root)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flat_device_tree::Fdt;

    fn config(vcpus: usize, initrd: Option<(u64, u64)>) -> FdtConfig<'static> {
        FdtConfig {
            mem: 64 << 20,
            vcpus,
            cmdline: "console=ttyAMA0 testguest.fail",
            initrd,
        }
    }

    #[test]
    fn names_everything_a_guest_looks_for() {
        let blob = build(&config(2, Some((0x8040_0000, 0x8040_1234)))).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.root().unwrap();
        assert!(root.compatible().all().any(|c| c == "linux,dummy-virt"));
        // Memory.
        let mem = fdt.find_node("/memory@80000000").unwrap();
        assert_eq!(
            mem.property("device_type").unwrap().as_str(),
            Some("memory")
        );
        let r = mem.reg().next().unwrap();
        assert_eq!(r.starting_address as u64, RAM_BASE);
        assert_eq!(r.size, Some(64 << 20));
        // CPUs.
        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 2);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu.ids().unwrap().first().unwrap(), i);
            assert_eq!(
                cpu.property("enable-method").unwrap().as_str(),
                Some("psci")
            );
            assert_eq!(
                cpu.property("compatible").unwrap().as_str(),
                Some("arm,armv8")
            );
        }
        // PSCI over HVC.
        let psci = fdt.find_node("/psci").unwrap();
        let compat: Vec<_> = psci.compatible().unwrap().all().collect();
        assert_eq!(compat, ["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        // The GIC, its phandle the root's interrupt-parent.
        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        let regs: Vec<_> = gic
            .reg()
            .map(|r| (r.starting_address as u64, r.size.unwrap() as u64))
            .collect();
        assert_eq!(
            regs,
            [(GIC_DIST, 0x1_0000), (GIC_REDIST, 2 * 0x2_0000)],
            "one redistributor per vCPU"
        );
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(
            gic.property("#interrupt-cells").unwrap().as_usize(),
            Some(3)
        );
        assert_eq!(
            root.property("interrupt-parent").unwrap().as_usize(),
            Some(GIC_PHANDLE as usize)
        );
        assert_eq!(fdt.find_phandle(GIC_PHANDLE).unwrap().name, "intc@8000000");
        // The timer's four PPIs, level-high with the CPU mask.
        let timer = fdt.find_compatible(&["arm,armv8-timer"]).unwrap();
        let cells: Vec<u32> = timer
            .property("interrupts")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            cells,
            [1, 13, 0x304, 1, 14, 0x304, 1, 11, 0x304, 1, 10, 0x304]
        );
        assert!(timer.property("always-on").is_some());
        // The clock and the PL011.
        let clk = fdt.find_phandle(CLOCK_PHANDLE).unwrap();
        assert_eq!(
            clk.property("clock-frequency").unwrap().as_usize(),
            Some(24_000_000)
        );
        let uart = fdt.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(uart.name, "pl011@9000000");
        let compat: Vec<_> = uart.compatible().unwrap().all().collect();
        assert_eq!(compat, ["arm,pl011", "arm,primecell"]);
        let r = uart.reg().next().unwrap();
        assert_eq!((r.starting_address as u64, r.size), (UART, Some(0x1000)));
        let names: Vec<_> = uart.property("clock-names").unwrap().iter_str().collect();
        assert_eq!(names, ["uartclk", "apb_pclk"]);
        let irq = uart.property("interrupts").unwrap().value;
        assert_eq!(irq, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4]);
        // The test device.
        let dev = fdt.find_compatible(&[testdev::COMPATIBLE]).unwrap();
        assert_eq!(dev.name, "test-device@a000000");
        let r = dev.reg().next().unwrap();
        assert_eq!(
            (r.starting_address as u64, r.size),
            (TEST_DEVICE, Some(0x1000))
        );
        // /chosen.
        let chosen = fdt.chosen().unwrap();
        assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 testguest.fail"));
        let node = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            node.property("stdout-path").unwrap().as_str(),
            Some("/pl011@9000000")
        );
        assert!(
            fdt.find_node("/pl011@9000000").is_some(),
            "stdout-path resolves"
        );
        let start = node.property("linux,initrd-start").unwrap().value;
        let end = node.property("linux,initrd-end").unwrap().value;
        assert_eq!(start, 0x8040_0000u64.to_be_bytes());
        assert_eq!(end, 0x8040_1234u64.to_be_bytes());
    }

    #[test]
    fn no_initrd_no_initrd_properties() {
        let blob = build(&config(1, None)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        assert_eq!(fdt.cpus().count(), 1);
        assert!(blob.len() < 4096, "a small tree");
    }

    #[test]
    fn a_nul_in_the_command_line_is_an_error() {
        let cfg = FdtConfig {
            cmdline: "a\0b",
            ..config(1, None)
        };
        assert_eq!(build(&cfg), Err(Error::InvalidString));
    }
}
