//! The test host proper (`target_os = "none"` only): boot, the device tree
//! el2 hands over, and the conformance suite ([`checks`]) or, with
//! `testhost.stress` on the command line, the SMP stress mode ([`stress`],
//! [`focus`], [`race`]). Every CPU runs in a slot (0: the boot CPU; see
//! `arch::set_cpu_slots`) with its own stack and abort log, up to 8.

#[cfg(not(target_arch = "aarch64"))]
compile_error!("testhost only supports aarch64 bare-metal targets (aarch64-unknown-none)");

pub mod arch;
mod checks;
mod entry;
mod focus;
mod gic;
mod its;
mod race;
mod stress;
mod vmm;

use core::cell::UnsafeCell;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

use buddy_system_allocator::LockedHeap;
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
    /// `testhost.stress[=<ms>]` in bootargs: run the SMP stress mode for
    /// this many milliseconds instead of the suite.
    pub stress: Option<u64>,
    /// `testhost.seed=<n>` (decimal or `0x` hex): the stress mode's seed.
    pub seed: Option<u64>,
    /// The device tree's address and size.
    pub dtb: (u64, u64),
    /// The GICv3: distributor base, redistributor region `(base, size)`
    /// (the `arm,gic-v3` node's `reg[0]` and `reg[1]`).
    pub gic: Option<(u64, (u64, u64))>,
}

/// A decimal or `0x`-prefixed hexadecimal number.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
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
            stress: None,
            seed: None,
            dtb: (dtb, fdt.total_size() as u64),
            gic: None,
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
        let bootargs = fdt.chosen().ok().and_then(|c| c.bootargs()).unwrap_or("");
        for word in bootargs.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("testhost.fail", None) => p.inject_failure = true,
                ("testhost.stress", None) => p.stress = Some(stress::DEFAULT_MS),
                ("testhost.stress", Some(v)) => {
                    p.stress = Some(parse_number(v).unwrap_or(stress::DEFAULT_MS));
                }
                ("testhost.seed", Some(v)) => p.seed = parse_number(v),
                _ => {}
            }
        }
        if let Some(gic) = fdt.find_compatible(&["arm,gic-v3"]) {
            let mut regs = gic
                .reg()
                .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
            if let (Some(dist), Some(redist)) = (regs.next(), regs.next()) {
                p.gic = Some((dist.0, redist));
            }
        }
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

/// Bytes of the heap (the VMM library's tables and buffers in VMM mode).
pub const HEAP_SIZE: usize = 8 << 20;

/// The heap's memory, in `.bss`.
#[repr(C, align(4096))]
struct HeapSpace(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: handed to the allocator once, at boot, before anything else
// touches it; only the allocator uses it after that.
unsafe impl Sync for HeapSpace {}

static HEAP_SPACE: HeapSpace = HeapSpace(UnsafeCell::new([0; HEAP_SIZE]));

/// The global allocator: a buddy heap over [`HEAP_SPACE`] (and, in VMM
/// mode, a slice of host RAM, see [`grow_heap`]).
#[global_allocator]
static ALLOCATOR: LockedHeap<32> = LockedHeap::empty();

/// Adds `[start, end)` to the heap.
///
/// # Safety
///
/// The range is RAM mapped Normal that nothing else uses, ever.
pub unsafe fn grow_heap(start: u64, end: u64) {
    // SAFETY: per the contract.
    unsafe { ALLOCATOR.lock().add_to_heap(start as usize, end as usize) };
}

/// Counter value when the boot CPU entered the test host.
static T0: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// This image in memory: `(start, size)`, `.bss` and stacks included.
pub fn image_range() -> (u64, u64) {
    let start = &raw const __image_start as u64;
    let end = &raw const __image_end as u64;
    (start, end - start)
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
    arch::set_cpu_slots(arch::mpidr(), platform.cpus());
    for &(base, size) in platform.ram() {
        let mut a = base & !((1 << 30) - 1);
        while a < base + size {
            arch::map_normal(a);
            a += 1 << 30;
        }
    }
    // SAFETY: the heap's memory is ours, in `.bss`, and handed over once,
    // before the first allocation.
    unsafe {
        ALLOCATOR
            .lock()
            .init(HEAP_SPACE.0.get() as usize, HEAP_SIZE)
    };
    if let Some(guest) = vmm::guest(&platform) {
        let gic = match platform.gic {
            Some((dist, (redist, size))) => gic::init(dist, redist, size),
            None => Err("no arm,gic-v3 node in the device tree"),
        };
        vmm::run(guest, gic)
    }
    let summary = match platform.stress {
        Some(ms) => stress::run(&platform, ms),
        None => checks::run(&platform),
    };
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

/// Rust entry of a secondary CPU (`context` = the CPU_ON context id,
/// which says what it is to run).
extern "C" fn secondary_main(context: u64) -> ! {
    if stress::is_worker(context) {
        stress::worker(context)
    } else if focus::is_helper(context) {
        focus::helper(context)
    } else if race::is_race(context) {
        race::secondary(context)
    } else {
        checks::secondary(context)
    }
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
