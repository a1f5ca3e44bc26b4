//! VMM mode: when the runner hands the test host a guest (a guest
//! descriptor at [`guestdesc::DESC_ADDR`], `cargo qemu run --guest`), the
//! test host runs that guest as a protected VM with the VMM library
//! (`host_interface::vmm`) over real HVCs, instead of its own suite.
//!
//! - The descriptor is decoded ([`GuestDesc::decode`]) and every file
//!   checked to lie in host RAM, clear of this image, the device tree, the
//!   descriptor page and the hypervisor's `no-map` ranges, before a byte
//!   of it is read.
//! - Guest memory comes from a buddy frame allocator ([`Frames`]) over
//!   host RAM from the first 2 MiB boundary after the last guest file up
//!   to the first `no-map` range above it (el2's carve-out at the top of
//!   RAM): nothing else of ours lives there, except the top 1/16 of it (32
//!   MiB at most), which joins the heap for the VMM's bookkeeping.
//! - The conduit ([`HostHv`]) makes host calls with `HVC #0` and copies
//!   host memory through the identity map, turning an injected abort
//!   (counted by our vector) into an [`AccessFault`].
//! - Before each vCPU run the EL1 virtual timer is armed 2 ms ahead; el2
//!   carries the deadline while the guest runs and ends the run when it
//!   passes ([`super::gic`] lets that interrupt reach el2).
//! - The guest's console goes out byte by byte as it comes, each line
//!   starting with `guest: ` (so a prompt shows before its newline;
//!   [`Prefixed`]). The VMM's own lines go out as they are (`vmm: ...`),
//!   on a line of their own.
//! - Console input: bytes typed on this test host's own PL011 (QEMU's
//!   stdio) are polled between vCPU runs and handed to the VMM, which puts
//!   them in the guest's PL011 receive FIFO as far as it has room (the
//!   rest waits in this UART's FIFO, and behind it in QEMU). This UART's
//!   FIFOs are turned on first, so 16 bytes wait per poll rather than 1.
//! - The clock of the VMM's counts is the virtual counter.
//!
//! The run ends with PSCI `SYSTEM_OFF` and the VMM's exit status
//! ([`VmmReport::exit_status`]): 0 powered off with no failure and a
//! verified teardown, 8 the guest reported failing checks, 9 it reset, 10
//! it crashed or every vCPU is off, 11 a VMM error (bad descriptor, bad
//! image, a failed host call) or a failed teardown check.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use buddy_system_allocator::FrameAllocator;
use host_interface::abi::HostCall;
use host_interface::guestdesc::{self, Blob, DescError, FLAG_SMALL_PAGES, GuestDesc, WORDS};
use host_interface::hypervisor::hvc::Hvc;
use host_interface::hypervisor::{AccessFault, CallError, Hypervisor};
use host_interface::vm::HostPages;
use host_interface::vmm::console::Prefixed;
use host_interface::vmm::{self, STATUS_VMM_ERROR, VmmConfig, VmmHost};

use super::Platform;
use super::arch::{self, println};

const PAGE: u64 = 4096;
const BLOCK: u64 = 2 << 20;
/// How far ahead the timer is armed before each vCPU run.
const TIMESLICE_US: u64 = 2_000;
/// Null host calls timed for the benchmark line.
const BENCH_ITERS: u64 = 10_000;
/// At most this much of the guest-memory region joins the heap...
const HEAP_EXTRA_MAX: u64 = 32 << 20;
/// ... and at most this fraction of it.
const HEAP_FRACTION: u64 = 16;
/// What starts each line of the guest's console output.
const GUEST_PREFIX: &[u8] = b"guest: ";

/// Reads the guest descriptor's words (each through the abort-safe
/// probe: if el2 refused the page, the magic is simply absent).
fn read_words() -> [u64; WORDS] {
    core::array::from_fn(|i| arch::probe_read(guestdesc::DESC_ADDR + 8 * i as u64))
}

/// The guest the runner handed over, if any: `None` without a
/// descriptor; `Some(Err)` for one that is refused.
pub fn guest(p: &Platform) -> Option<Result<Guest, String>> {
    match GuestDesc::decode(&read_words()) {
        Err(DescError::NoMagic) => None,
        Err(e) => Some(Err(alloc::format!("{e}"))),
        Ok(d) => Some(check(p, &d).map(|pages| Guest { desc: d, pages })),
    }
}

/// A guest to run: its descriptor and the host RAM its memory comes from.
pub struct Guest {
    desc: GuestDesc,
    /// Host frames for guest memory: `[start, end)` pfns.
    pages: (u64, u64),
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Checks every file's range and finds the RAM for guest memory.
fn check(p: &Platform, d: &GuestDesc) -> Result<(u64, u64), String> {
    let image = super::image_range();
    let mut busy: Vec<(&str, (u64, u64))> = alloc::vec![
        ("the test host's image", image),
        ("the device tree", p.dtb),
        ("the guest descriptor", (guestdesc::DESC_ADDR, PAGE)),
    ];
    for &h in p.hyp() {
        busy.push(("hypervisor memory", h));
    }
    let names = ["kernel", "initrd", "command line"];
    let mut last_end = image.0 + image.1;
    for (name, file) in names.iter().zip(d.files()) {
        let Some(Blob { addr, size }) = file else {
            continue;
        };
        let range = (addr, size);
        let in_ram = p
            .ram()
            .iter()
            .any(|&(base, len)| addr >= base && addr.saturating_add(size) <= base + len);
        if !in_ram {
            return Err(alloc::format!(
                "guest {name} {addr:#x}+{size:#x} is not inside host RAM"
            ));
        }
        if let Some((what, _)) = busy.iter().find(|(_, b)| overlaps(range, *b)) {
            return Err(alloc::format!(
                "guest {name} {addr:#x}+{size:#x} overlaps {what}"
            ));
        }
        last_end = last_end.max(addr + size);
    }
    // Guest memory: from the 2 MiB boundary after the files to the first
    // hypervisor range above (the carve-out at the top of RAM) or the end
    // of that RAM region.
    let start = last_end.next_multiple_of(BLOCK);
    let &(base, len) = p
        .ram()
        .iter()
        .find(|&&(base, len)| start >= base && start < base + len)
        .ok_or("no host RAM above the guest's files")?;
    let mut end = base + len;
    for &(what, (b, s)) in &busy {
        if overlaps((start, end - start), (b, s)) {
            if b <= start {
                return Err(alloc::format!(
                    "{what} at {b:#x} is where guest memory would start ({start:#x})"
                ));
            }
            end = end.min(b);
        }
    }
    let end = end & !(PAGE - 1);
    if end <= start {
        return Err("no host RAM left for guest memory".into());
    }
    Ok((start / PAGE, end / PAGE))
}

/// Host pages for guests: a buddy allocator over the frames above the
/// guest's files (naturally aligned power-of-two runs).
pub struct Frames(FrameAllocator<32>);

impl HostPages for Frames {
    fn alloc(&mut self, order: u32) -> Option<u64> {
        self.0.alloc(1usize << order).map(|pfn| pfn as u64)
    }

    fn free(&mut self, pfn: u64, order: u32) {
        self.0.dealloc(pfn as usize, 1usize << order);
    }
}

/// The conduit: real host calls, host memory through the identity map.
pub struct HostHv(Hvc);

impl Hypervisor for HostHv {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        self.0.call(call, args)
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        arch::read_phys(pa, buf).map_err(|pa| AccessFault { pa })
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        // SAFETY: the VMM writes only pages it allocated from `Frames`
        // (RAM nothing else of ours uses); a page el2 refuses faults.
        unsafe { arch::write_phys(pa, data) }.map_err(|pa| AccessFault { pa })
    }
}

/// What the VMM library needs of the test host.
struct Host {
    out: Prefixed,
    timeslice: u64,
}

impl Host {
    fn flush(&mut self) {
        self.out.end_line(&mut arch::Console::write_raw);
    }
}

impl VmmHost for Host {
    fn console(&mut self, bytes: &[u8]) {
        self.out
            .feed(GUEST_PREFIX, bytes, &mut arch::Console::write_raw);
    }

    fn log(&mut self, line: fmt::Arguments<'_>) {
        self.flush();
        println!("{line}");
    }

    fn before_run(&mut self, _vcpu: usize) {
        arch::arm_virtual_timer(self.timeslice);
    }

    fn input(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match arch::uart_getc() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn now_ns(&mut self) -> Option<u64> {
        let (t, hz) = arch::virtual_now();
        Some((u128::from(t) * 1_000_000_000 / u128::from(hz)) as u64)
    }
}

/// `len` bytes of host RAM at `addr` (checked by [`check`]).
fn file(b: Blob) -> &'static [u8] {
    // SAFETY: `check` made sure the file lies in host RAM (mapped Normal
    // by `testhost_main`), clear of everything of ours; QEMU's loader put
    // it there, and the frame allocator never hands it out, so nothing
    // writes it while the guest runs.
    unsafe { core::slice::from_raw_parts(b.addr as *const u8, b.size as usize) }
}

/// The null host call round trip.
fn bench(hv: &mut HostHv) {
    let (t0, hz) = arch::virtual_now();
    for _ in 0..BENCH_ITERS {
        let _ = hv.call(HostCall::Version, &[]);
    }
    let (t1, _) = arch::virtual_now();
    println!(
        "testhost: bench host_hvc_null iters={BENCH_ITERS} ticks={} hz={hz}",
        t1.wrapping_sub(t0)
    );
}

/// Ends the run with `status`, saying what it means.
fn finish(status: u8, meaning: &str) -> ! {
    arch::disarm_virtual_timer();
    println!("testhost: guest run finished: status {status} ({meaning})");
    arch::power_off(u64::from(status))
}

/// Runs the guest and powers off with the outcome; `gic` is the result of
/// setting up the GIC (a guest runs without it, but a vCPU that spins
/// then never comes back).
pub fn run(guest: Result<Guest, String>, gic: Result<(), &'static str>) -> ! {
    let g = match guest {
        Ok(g) => g,
        Err(e) => {
            println!("testhost: guest descriptor refused: {e}");
            finish(STATUS_VMM_ERROR, "VMM error")
        }
    };
    let d = g.desc;
    let kernel = file(d.kernel);
    let initrd = d.initrd.map(file);
    let cmdline = match d.cmdline.map(file) {
        None => "",
        Some(bytes) => match core::str::from_utf8(bytes) {
            Ok(s) => s.trim_end_matches(['\0', '\n', '\r']),
            Err(_) => {
                println!("testhost: the guest command line is not UTF-8");
                finish(STATUS_VMM_ERROR, "VMM error")
            }
        },
    };
    let small = d.flags & FLAG_SMALL_PAGES != 0;
    println!(
        "testhost: running a guest as a VMM: kernel {} bytes, initrd {} bytes, {} MiB, {} \
         vCPU(s){}",
        kernel.len(),
        initrd.map_or(0, <[u8]>::len),
        d.mem >> 20,
        d.vcpus,
        if small { ", small pages" } else { "" }
    );
    if let Err(e) = gic {
        println!("testhost: GIC not set up ({e}): a spinning vCPU will not be preempted");
    }
    // The VMM's bookkeeping grows with guest memory (a few dozen bytes
    // per page mapped): the heap gets the top of the region too.
    let (first, last) = (g.pages.0 * PAGE, g.pages.1 * PAGE);
    let extra = ((last - first) / HEAP_FRACTION).min(HEAP_EXTRA_MAX) & !(BLOCK - 1);
    let heap_start = last - extra;
    if extra > 0 {
        // SAFETY: host RAM above the guest's files, which `check` found
        // free of everything of ours; the frame allocator never gets it.
        unsafe { super::grow_heap(heap_start, last) };
    }
    let mut frames = FrameAllocator::<32>::new();
    frames.insert(g.pages.0 as usize..(heap_start / PAGE) as usize);
    println!(
        "testhost: guest memory from host RAM {first:#x}..{heap_start:#x}, VMM heap + {} MiB",
        extra >> 20
    );
    let mut hv = HostHv(Hvc);
    bench(&mut hv);
    let (_, hz) = arch::virtual_now();
    let mut host = Host {
        out: Prefixed::new(),
        timeslice: hz * TIMESLICE_US / 1_000_000,
    };
    arch::uart_enable_fifo();
    let config = VmmConfig {
        mem: d.mem,
        vcpus: d.vcpus as usize,
        cmdline,
        small_pages: small,
        kernel,
        initrd,
    };
    let report = vmm::run_guest(hv, Frames(frames), config, &mut host);
    host.flush();
    finish(report.exit_status(), report.meaning())
}
