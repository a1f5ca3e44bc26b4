//! The test host proper (`target_os = "none"` only): boot, the device tree
//! el2 hands over, and the conformance suite ([`checks`]).

#[cfg(not(target_arch = "aarch64"))]
compile_error!("testhost only supports aarch64 bare-metal targets (aarch64-unknown-none)");

pub mod arch;
mod checks;
mod entry;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

use flat_device_tree::Fdt;

use arch::{mrs, println};
use entry::Frame;

/// What the test host learns from its device tree.
pub struct Platform {
    /// RAM regions `(base, size)`.
    pub ram: [(u64, u64); 8],
    /// Entries of `ram` used.
    pub ram_count: usize,
    /// `no-map` children of `/reserved-memory`: the hypervisor's memory.
    pub hyp: [(u64, u64); 8],
    /// Entries of `hyp` used.
    pub hyp_count: usize,
    /// MPIDRs under `/cpus`.
    pub cpus: [u64; 8],
    /// Entries of `cpus` used.
    pub cpu_count: usize,
    /// Every `reg` range of the device tree (to find an address that is
    /// neither RAM nor a device).
    pub regs: [(u64, u64); 64],
    /// Entries of `regs` used.
    pub reg_count: usize,
    /// `/psci` method is `smc`.
    pub psci_smc: bool,
    /// `/chosen/bootargs` contains `testhost.fail`.
    pub inject_failure: bool,
    /// The device tree's address and size.
    pub dtb: (u64, u64),
}

impl Platform {
    fn parse(fdt: &Fdt<'_>, dtb: u64) -> Platform {
        let mut p = Platform {
            ram: [(0, 0); 8],
            ram_count: 0,
            hyp: [(0, 0); 8],
            hyp_count: 0,
            cpus: [0; 8],
            cpu_count: 0,
            regs: [(0, 0); 64],
            reg_count: 0,
            psci_smc: false,
            inject_failure: false,
            dtb: (dtb, fdt.total_size() as u64),
        };
        for node in fdt.all_nodes() {
            let is_memory = node.property("device_type").and_then(|d| d.as_str()) == Some("memory");
            for r in node.reg() {
                let (base, size) = (r.starting_address as u64, r.size.unwrap_or(0) as u64);
                if is_memory && p.ram_count < p.ram.len() {
                    p.ram[p.ram_count] = (base, size);
                    p.ram_count += 1;
                }
                if p.reg_count < p.regs.len() {
                    p.regs[p.reg_count] = (base, size);
                    p.reg_count += 1;
                }
            }
        }
        if let Some(rm) = fdt.find_node("/reserved-memory") {
            for child in rm.children() {
                if child.property("no-map").is_none() {
                    continue;
                }
                for r in child.reg() {
                    if p.hyp_count < p.hyp.len() {
                        p.hyp[p.hyp_count] =
                            (r.starting_address as u64, r.size.unwrap_or(0) as u64);
                        p.hyp_count += 1;
                    }
                }
            }
        }
        for cpu in fdt.cpus() {
            if let Ok(ids) = cpu.ids()
                && let Ok(id) = ids.first()
                && p.cpu_count < p.cpus.len()
            {
                p.cpus[p.cpu_count] = id as u64;
                p.cpu_count += 1;
            }
        }
        p.psci_smc = fdt
            .find_node("/psci")
            .and_then(|n| n.property("method"))
            .and_then(|m| m.as_str())
            == Some("smc");
        p.inject_failure = fdt
            .chosen()
            .ok()
            .and_then(|c| c.bootargs())
            .is_some_and(|a| a.split_whitespace().any(|w| w == "testhost.fail"));
        if let Some(uart) = fdt.find_compatible(&["arm,pl011"])
            && let Some(r) = uart.reg().next()
        {
            arch::set_uart(r.starting_address as u64);
        }
        p
    }

    /// The RAM regions.
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram[..self.ram_count]
    }

    /// The hypervisor's `no-map` regions.
    pub fn hyp(&self) -> &[(u64, u64)] {
        &self.hyp[..self.hyp_count]
    }

    /// The CPUs' MPIDRs.
    pub fn cpus(&self) -> &[u64] {
        &self.cpus[..self.cpu_count]
    }

    /// Every `reg` range in the tree.
    pub fn regs(&self) -> &[(u64, u64)] {
        &self.regs[..self.reg_count]
    }
}

/// The test host never allocates; `host_interface` links `alloc` (for its
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

/// Counter value when the boot CPU entered the test host.
static T0: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __image_start: u8;
}

/// Rust entry of the boot CPU (`dtb` = x0 from el2, `t0` = counter).
extern "C" fn testhost_main(dtb: u64, t0: u64) -> ! {
    let image = &raw const __image_start as u64;
    arch::mmu_on(&[image, dtb]);
    T0.store(t0, Ordering::Relaxed);
    let (_, hz) = arch::now();
    println!(
        "testhost: started at EL{} at {} us after reset (device tree at {dtb:#x})",
        (mrs!("CurrentEL") >> 2) & 3,
        (u128::from(t0) * 1_000_000 / u128::from(hz)) as u64
    );
    // SAFETY: el2 passes a device tree it wrote; its 4-byte header field
    // gives the size. The gigabyte it lives in is mapped Normal.
    let fdt = unsafe { Fdt::from_ptr(dtb as *const u8) };
    let fdt = match fdt {
        Ok(f) => f,
        Err(e) => {
            println!("testhost: cannot read the device tree at {dtb:#x}: {e:?}");
            arch::power_off(2)
        }
    };
    let platform = Platform::parse(&fdt, dtb);
    for &(base, size) in platform.ram() {
        let mut a = base & !((1 << 30) - 1);
        while a < base + size {
            arch::map_normal(a);
            a += 1 << 30;
        }
    }
    let summary = checks::run(&platform);
    println!(
        "testhost: finished in {} us",
        arch::us_since(T0.load(Ordering::Relaxed))
    );
    println!(
        "testhost: {} passed, {} failed, {} skipped",
        summary.passed, summary.failed, summary.skipped
    );
    arch::power_off(u64::from(summary.failed > 0))
}

/// Rust entry of the secondary CPU (`context` = the CPU_ON context id).
extern "C" fn secondary_main(context: u64) -> ! {
    checks::secondary(context)
}

/// Rust side of every EL1 vector.
extern "C" fn exception(frame: &mut Frame, kind: u64) {
    arch::sync_exception(frame, kind);
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("testhost: panic: {info}");
    arch::power_off(3)
}
