//! The test guest proper (`target_os = "none"` only): boot, the device
//! tree the VMM hands over, the conformance suite ([`checks`]) and the
//! benchmark ([`bench`](mod@bench)).

#[cfg(not(target_arch = "aarch64"))]
compile_error!("testguest only supports aarch64 bare-metal targets (aarch64-unknown-none)");

pub mod arch;
mod bench;
mod checks;
mod entry;
mod testdev;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use flat_device_tree::Fdt;
use host_interface::platform::{self, FDT_MAX, RAM_BASE};

use arch::{mrs, println};
use entry::Frame;

/// Most vCPUs the platform gives a guest.
const MAX_CPUS: usize = 8;

/// 2 MiB.
pub const BLOCK: u64 = 2 << 20;
/// 4 KiB.
pub const PAGE: u64 = 4096;

/// What the test guest learns from its device tree.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// Guest RAM: the `/memory` region holding this image.
    pub ram_base: u64,
    /// Its size in bytes.
    pub ram_size: u64,
    /// `reg` of each `/cpus/cpu@N` node (vCPU N's MPIDR Aff0).
    pub cpus: [u64; MAX_CPUS],
    /// Entries of `cpus` used.
    pub cpu_count: usize,
    /// Whether `/psci` is compatible with `arm,psci-*`.
    pub psci_compatible: bool,
    /// `/psci` `method`, if the node and property exist.
    pub psci_method: Option<&'static str>,
    /// `testguest.fail` in `/chosen/bootargs`.
    pub fail: bool,
    /// `testguest.bench` in `/chosen/bootargs`.
    pub bench: bool,
    /// The test device's IPA (its node's `reg`, else the platform's).
    pub testdev: u64,
    /// The PL011's IPA (its node's `reg`, else the platform's).
    pub uart: u64,
    /// The device tree's IPA.
    pub dtb: u64,
}

impl Platform {
    fn parse(fdt: &Fdt<'static>, dtb: u64, image: u64) -> Result<Platform, &'static str> {
        let mut ram = None;
        for node in fdt.all_nodes() {
            if node.property("device_type").and_then(|d| d.as_str()) != Some("memory") {
                continue;
            }
            for r in node.reg() {
                let (base, size) = (r.starting_address as u64, r.size.unwrap_or(0) as u64);
                let holds_image = base <= image && image - base < size;
                if holds_image || ram.is_none() {
                    ram = Some((base, size));
                }
                if holds_image {
                    break;
                }
            }
        }
        let (ram_base, ram_size) = ram.ok_or("no /memory region")?;
        let mut p = Platform {
            ram_base,
            ram_size,
            cpus: [0; MAX_CPUS],
            cpu_count: 0,
            psci_compatible: false,
            psci_method: None,
            fail: false,
            bench: false,
            testdev: platform::TEST_DEVICE,
            uart: platform::UART,
            dtb,
        };
        for cpu in fdt.cpus() {
            if let Ok(ids) = cpu.ids()
                && let Ok(id) = ids.first()
                && p.cpu_count < MAX_CPUS
            {
                p.cpus[p.cpu_count] = id as u64;
                p.cpu_count += 1;
            }
        }
        if let Some(psci) = fdt.find_node("/psci") {
            p.psci_compatible = psci
                .compatible()
                .is_some_and(|c| c.all().any(|s| s.starts_with("arm,psci")));
            p.psci_method = psci.property("method").and_then(|m| m.as_str());
        }
        if let Some(args) = fdt.chosen().ok().and_then(|c| c.bootargs()) {
            p.fail = args.split_whitespace().any(|w| w == "testguest.fail");
            p.bench = args.split_whitespace().any(|w| w == "testguest.bench");
        }
        if let Some(dev) = fdt.find_compatible(&[platform::testdev::COMPATIBLE])
            && let Some(r) = dev.reg().next()
        {
            p.testdev = r.starting_address as u64;
        }
        if let Some(uart) = fdt.find_compatible(&["arm,pl011"])
            && let Some(r) = uart.reg().next()
        {
            p.uart = r.starting_address as u64;
        }
        Ok(p)
    }

    /// First IPA past RAM.
    pub fn ram_end(&self) -> u64 {
        self.ram_base.saturating_add(self.ram_size)
    }

    /// The vCPUs' MPIDRs (Aff0), as the device tree lists them.
    pub fn cpus(&self) -> &[u64] {
        &self.cpus[..self.cpu_count]
    }

    /// RAM the suite may use for its test pages: from the first 2 MiB
    /// boundary after this image to the 2 MiB boundary below the device
    /// tree (which sits in the last 2 MiB of RAM), both 2 MiB aligned.
    /// Never touched by anything else.
    pub fn free(&self) -> (u64, u64) {
        let image_end = &raw const __image_end as u64;
        let start = image_end.next_multiple_of(BLOCK);
        let mut end = self.ram_end().saturating_sub(FDT_MAX) & !(BLOCK - 1);
        if (self.ram_base..self.ram_end()).contains(&self.dtb) {
            end = end.min(self.dtb & !(BLOCK - 1));
        }
        (start, end.max(start))
    }
}

/// The test guest never allocates; `host_interface` links `alloc` (for its
/// host-side models), so a global allocator must exist: this one refuses
/// every request.
struct NoAlloc;

// SAFETY: `alloc` always reports failure (null), which the GlobalAlloc
// contract allows; `dealloc` is never reached as nothing is ever allocated.
unsafe impl core::alloc::GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

#[global_allocator]
static ALLOCATOR: NoAlloc = NoAlloc;

/// Checks passed so far.
pub static PASSED: AtomicU64 = AtomicU64::new(0);
/// Checks failed so far.
pub static FAILED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Device-tree header magic.
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Set once [`fatal`] runs.
static DYING: AtomicBool = AtomicBool::new(false);

/// Reports the tally so far plus one failure to the test device, then
/// powers off: the end of a run that cannot go on. Entered again (the
/// report or SYSTEM_OFF itself faulted, or the other vCPU is already
/// dying), it only waits.
pub fn fatal() -> ! {
    if DYING.swap(true, Ordering::SeqCst) {
        loop {
            arch::wfi();
        }
    }
    let passed = PASSED.load(Ordering::Relaxed);
    let failed = FAILED.load(Ordering::Relaxed) + 1;
    println!("testguest: {passed} passed, {failed} failed");
    let _ = testdev::report(passed, failed);
    arch::system_off()
}

/// Reads the device tree at `dtb` (MMU on, its gigabyte Normal).
fn read_fdt(dtb: u64) -> Result<Fdt<'static>, &'static str> {
    if !(RAM_BASE..1 << 39).contains(&dtb) || !dtb.is_multiple_of(8) {
        return Err("x0 is not an 8-byte aligned RAM address");
    }
    // SAFETY: `dtb` is an aligned address in a gigabyte we map Normal (at
    // or above RAM_BASE); the VMM put the device tree there, so the
    // 8-byte header words are readable.
    let (magic, size) = unsafe {
        let words = (dtb as *const [u8; 8]).read_volatile();
        (
            u32::from_be_bytes([words[0], words[1], words[2], words[3]]),
            u32::from_be_bytes([words[4], words[5], words[6], words[7]]),
        )
    };
    if magic != FDT_MAGIC {
        return Err("bad magic");
    }
    if u64::from(size) > FDT_MAX || u64::from(size) < 40 {
        return Err("totalsize out of range");
    }
    // SAFETY: a device tree header with a sane `totalsize` is at `dtb`;
    // the VMM wrote it there and nothing changes it during the run (the
    // suite never hands its pages out), so `'static` holds.
    unsafe { Fdt::from_ptr(dtb as *const u8) }.map_err(|_| "not a valid device tree")
}

/// Rust entry of the boot vCPU (`dtb` = x0 from the VMM).
extern "C" fn testguest_main(dtb: u64) -> ! {
    let image = &raw const __image_start as u64;
    if dtb >= RAM_BASE {
        arch::mmu_on(&[image, dtb]);
    } else {
        arch::mmu_on(&[image]);
    }
    let fdt = match read_fdt(dtb) {
        Ok(f) => f,
        Err(e) => {
            println!("testguest: cannot read the device tree at {dtb:#x}: {e}");
            fatal()
        }
    };
    let p = match Platform::parse(&fdt, dtb, image) {
        Ok(p) => p,
        Err(e) => {
            println!("testguest: device tree at {dtb:#x}: {e}");
            fatal()
        }
    };
    arch::set_uart(p.uart);
    testdev::set_base(p.testdev);
    let mut gb = p.ram_base & !((1 << 30) - 1);
    while gb < p.ram_end() {
        arch::map_normal(gb);
        gb += 1 << 30;
    }
    println!(
        "testguest: started on vCPU {} at EL{}, RAM {:#x}..{:#x}, {} vCPU(s), device tree at {dtb:#x}",
        mrs!("mpidr_el1") & 0xff,
        (mrs!("CurrentEL") >> 2) & 3,
        p.ram_base,
        p.ram_end(),
        p.cpu_count
    );
    if p.bench {
        let ok = bench::run(&p);
        println!("testguest: bench done");
        let _ = testdev::report(0, u64::from(!ok));
        arch::system_off()
    }
    checks::run(&p);
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("testguest: {passed} passed, {failed} failed");
    let _ = testdev::report(passed, failed);
    arch::system_off()
}

/// Rust entry of the secondary vCPU (`context` = the CPU_ON context id).
extern "C" fn secondary_main(context: u64) -> ! {
    checks::secondary(context)
}

/// Rust side of every EL1 vector.
extern "C" fn exception(frame: &mut Frame, kind: u64) {
    arch::sync_exception(frame, kind);
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // One line: PanicInfo's own Display puts the message on a new line.
    match info.location() {
        Some(l) => println!(
            "testguest: panic at {}:{}: {}",
            l.file(),
            l.line(),
            info.message()
        ),
        None => println!("testguest: panic: {}", info.message()),
    }
    fatal()
}
