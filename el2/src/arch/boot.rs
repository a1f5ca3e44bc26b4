//! The boot sequence of the `el2` binary: from `_start` to the host's
//! first instruction, on the boot CPU and on secondaries.
//!
//! # Boot sequence (boot CPU)
//!
//! 1. [`super::entry`]: `_start` (Image header) → stack, `.bss`, vectors →
//!    [`rust_main`].
//! 2. EL2 MMU and caches on with the early identity map ([`super::mmu`]),
//!    before any lock or atomic; then the console and `log`
//!    ([`super::console`]).
//! 3. The device tree (`x0`, or the start of RAM for an ELF boot: 2 MiB
//!    below el2's link address) is validated, stripped of NOP tokens and
//!    read (`el2::fdt`).
//! 4. The final EL2 identity map (RAM Normal, the console UART and the
//!    GICv3 redistributors Device); secondaries will load the same.
//! 5. The host descriptor (or the legacy raw image header at
//!    [`super::layout::HOST_IMAGE_ADDR`]) is read and checked
//!    ([`super::hostimg`]), the memory layout computed ([`super::layout`])
//!    and the heap set up over the carve-out ([`super::mem`]).
//! 6. The ownership table over all RAM with el2's image and the carve-out
//!    hypervisor-owned, and the host stage-2: identity map of RAM and the
//!    device tree's MMIO with the largest blocks, hypervisor memory absent
//!    (`ownership::Ownership::new`).
//! 7. The host is made ready ([`super::hostimg`]): a boot image is parsed
//!    and validated, its kernel and initrd placed and cleaned to the point
//!    of coherency, its command lines joined. The host's device tree (a
//!    copy of QEMU's, or of the boot image's DTB, with `no-map`
//!    reservations of the hypervisor's memory and `/chosen` bootargs and
//!    initrd) is written at the start of RAM and cleaned to the point of
//!    coherency.
//! 8. The boot CPU enters the host at EL1 ([`super::host::enter`]); a
//!    timestamp line reports how long 1–8 took.

use alloc::vec::Vec;
use core::convert::Infallible;
use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::Ordering;

use aarch64_cpu::registers::{MPIDR_EL1, Readable};
use flat_device_tree::Fdt;
use ownership::{Errno, Layout, MemRegion, Ownership, Pfn};
use stage2::tlb::arm::ArmTlb;
use stage2::{BlockPolicy, PaRange, PhysAddr};

use super::entry::{SECONDARY_MMU, el2_mmu_enable};
use super::exit::status;
use super::hostimg::{HostError, HostImage};
use super::layout::{LayoutError, MemLayout};
use super::mem::{HeapPool, HypBitmap, IdentityMem};
use super::mmu::{FinalMap, MapError, Memory};
use super::percpu::{MPIDR_AFF_MASK, Power};
use super::{
    console, entry, exit, gic, gicr_lpi, host, hostimg, its, layout, mem, mmu, percpu, pl011,
    residency, sysreg,
};
use el2::fdt::{self, ChosenEdits, DtError, Gic, Platform, Range};
use el2::options;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// el2's own image: `[__image_start, __image_end)` (linker.ld aligns both
/// to 2 MiB).
fn image_range() -> Range {
    // Taking the address of linker symbols reads nothing.
    let (start, end) = (
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    );
    Range {
        base: start,
        size: end - start,
    }
}

const PAGE: u64 = 4096;

/// Why boot stopped.
enum BootError {
    Dt(DtError),
    Layout(LayoutError),
    Host(HostError),
    Map(MapError),
    Ownership(Errno),
    Other(&'static str),
}

impl From<DtError> for BootError {
    fn from(e: DtError) -> Self {
        BootError::Dt(e)
    }
}

impl From<LayoutError> for BootError {
    fn from(e: LayoutError) -> Self {
        BootError::Layout(e)
    }
}

impl From<HostError> for BootError {
    fn from(e: HostError) -> Self {
        BootError::Host(e)
    }
}

impl From<MapError> for BootError {
    fn from(e: MapError) -> Self {
        BootError::Map(e)
    }
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Dt(e) => write!(f, "{e}"),
            BootError::Layout(e) => write!(f, "{e}"),
            BootError::Host(e) => write!(f, "{e}"),
            BootError::Map(e) => write!(f, "EL2 identity map: {e}"),
            BootError::Ownership(e) => {
                write!(f, "building the ownership table and host stage-2: {e}")
            }
            BootError::Other(s) => f.write_str(s),
        }
    }
}

/// Rust entry point of the boot CPU, called by `_start` with a valid stack
/// and a zeroed `.bss`: `dtb` = `x0` at entry, `t0` = the counter at entry,
/// `el` = the exception level.
pub(super) extern "C" fn rust_main(dtb: u64, t0: u64, el: u64) -> ! {
    if el != 2 {
        let mut u = console::early_uart();
        let _ = writeln!(
            u,
            "el2: entered at EL{el}, expected EL2 (start QEMU with -machine virt,virtualization=on)"
        );
        exit::exit(status::WRONG_EL);
    }
    sysreg::set_cpu_index(0);
    let image = image_range();
    let dtb = if dtb != 0 {
        dtb
    } else {
        image.base.saturating_sub(2 << 20)
    };
    // SAFETY: boot CPU, MMU off, nothing walks the early table yet.
    let early = unsafe { mmu::early_map(&[image.base, image.end() - 1, dtb]) };
    // SAFETY: the early map covers the image (code, data, stack) with
    // Normal memory at its own address, so execution continues unchanged.
    unsafe { el2_mmu_enable(&early) };
    console::init();
    log::info!(
        "el2 v{}.{}: entered at EL2 at {} us (counter {} Hz), MMU on",
        el2::HYP_VERSION.0,
        el2::HYP_VERSION.1,
        sysreg::ticks_to_us(t0),
        sysreg::counter_hz()
    );
    let Err(e) = boot(dtb, t0, image);
    // Why the boot failed is printed even under `el2.log=off`.
    if log::max_level() < log::LevelFilter::Error {
        log::set_max_level(log::LevelFilter::Error);
    }
    log::error!("boot failed: {e}");
    exit::exit(status::BOOT_FAILED)
}

/// Steps 3–8 of the boot sequence (module docs).
fn boot(dtb: u64, t0: u64, image: Range) -> Result<Infallible, BootError> {
    // Counter values at the end of each step, for the boot's breakdown.
    let mut marks = [t0; 6];
    // 3. The device tree.
    if !dtb.is_multiple_of(8) || dtb >= mmu::VA_LIMIT {
        return Err(DtError::NoMagic(dtb).into());
    }
    // SAFETY: the early map makes the device tree's gigabyte Normal memory
    // and nothing writes it while el2 reads it; 40 bytes of header first.
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) };
    let total = fdt::total_size(header, dtb)?;
    if dtb >> 30 != (dtb + total as u64 - 1) >> 30 {
        return Err(BootError::Other("the device tree crosses a 1 GiB boundary"));
    }
    let dt_range = Range {
        base: dtb,
        size: total as u64,
    };
    {
        // SAFETY: as above; `total` bytes stay in the same (mapped)
        // gigabyte. Read only, and dropped before the mutable view below.
        let ro = unsafe { core::slice::from_raw_parts(dtb as *const u8, total) };
        fdt::validate(ro)?;
        // Before editing the tree in place: it must be RAM (not some
        // device or ROM the early map happens to cover) and not el2.
        let raw_ram = fdt::raw_ram(ro);
        if !raw_ram
            .as_slice()
            .iter()
            .any(|r| r.base <= dt_range.base && dt_range.end() <= r.end())
        {
            return Err(BootError::Other(
                "the device tree is not inside a RAM region it describes",
            ));
        }
        if dt_range.overlaps(&image) {
            return Err(BootError::Other("the device tree overlaps el2's image"));
        }
    }
    // SAFETY: as above; `total` bytes stay in the same (mapped) gigabyte,
    // which was just checked to be RAM outside el2's image: RAM the host
    // will own (el2 replaces this tree with its own copy), so editing it
    // in place is harmless. No other reference to it is live.
    let blob = unsafe { core::slice::from_raw_parts_mut(dtb as *mut u8, total) };
    fdt::strip_nops(blob);
    fdt::validate(blob)?;
    let blob: &[u8] = blob;
    let tree = Fdt::new(blob).map_err(|_| DtError::NoMagic(dtb))?;
    // `el2.log` before anything else is printed (no heap yet: the other
    // options are read in step 6).
    if let Some(level) = options::log_level(fdt::bootargs(&tree).unwrap_or("")) {
        console::set_level(level);
    }
    let own_mpidr = MPIDR_EL1.get() & MPIDR_AFF_MASK;
    let platform = Platform::parse(&tree, own_mpidr)?;
    report_platform(&platform, dtb, total);
    if !platform.psci_smc {
        return Err(BootError::Other(
            "/psci method is not \"smc\": el2 relays the host's PSCI SMCs to firmware",
        ));
    }
    let ram = platform.ram.as_slice();
    if !ram
        .iter()
        .any(|r| r.base <= dt_range.base && dt_range.end() <= r.end())
    {
        return Err(BootError::Other("the device tree is not inside RAM"));
    }

    marks[0] = sysreg::counter();
    // 4. The final EL2 map: RAM Normal, the console UART Device. It maps
    // only RAM, so el2's image (code, data, stacks, page tables) must be
    // inside one RAM region, or turning it on would fault with no console.
    if !ram
        .iter()
        .any(|r| r.base <= image.base && image.end() <= r.end())
    {
        return Err(LayoutError::ImageNotInRam(image).into());
    }
    // SAFETY: boot CPU, once, before the final map is loaded.
    let mut map = unsafe { FinalMap::new() };
    for r in ram {
        let start = r.base.next_multiple_of(PAGE);
        let end = r.end() & !(PAGE - 1);
        if start < end {
            map.map(start, end, Memory::Normal)?;
        }
    }
    let uart = platform.uart.unwrap_or(pl011::QEMU_VIRT_PL011_BASE as u64);
    if ram.iter().any(|r| r.base <= uart && uart < r.end()) {
        return Err(BootError::Other("the console UART is inside RAM"));
    }
    let uart_page = uart & !(PAGE - 1);
    map.map(uart_page, uart_page + PAGE, Memory::Device)?;
    // The GICv3 redistributors of el2's CPUs (see `gic`): the EL2 timer's
    // interrupt is enabled there around guest runs.
    if let Gic::V3 { redist, .. } = platform.gic {
        let base = redist.base & !(PAGE - 1);
        let end = (redist.base + redist.size.min(gic::MAPPED)).next_multiple_of(PAGE);
        if ram.iter().any(|r| r.base < end && base < r.end()) {
            return Err(BootError::Other("the GICv3 redistributors overlap RAM"));
        }
        map.map(base, end, Memory::Device)?;
        gic::set_redistributors(redist.base, end - redist.base);
    }
    // The ITS control frame, which el2 mediates (see `its`).
    let its_frame = match (platform.gic, platform.its) {
        (Gic::V3 { .. }, Some(r)) => {
            // An ITS el2 cannot mediate could be pointed at any memory.
            if !r.base.is_multiple_of(PAGE) || r.size < its::CONTROL_FRAME {
                return Err(BootError::Other(
                    "the GICv3 ITS reg is not a page-aligned 64 KiB control frame",
                ));
            }
            if ram
                .iter()
                .any(|m| m.base < r.base + its::CONTROL_FRAME && r.base < m.end())
            {
                return Err(BootError::Other("the GICv3 ITS overlaps RAM"));
            }
            map.map(r.base, r.base + its::CONTROL_FRAME, Memory::Device)?;
            Some(r.base)
        }
        _ => None,
    };
    let config = map.config();
    // SAFETY: SECONDARY_MMU is written only here, by the boot CPU, before
    // any secondary starts; then cleaned to PoC for CPUs with the MMU off.
    unsafe {
        *SECONDARY_MMU.get() = config;
        sysreg::clean_inval_to_poc(SECONDARY_MMU.get() as u64, 64);
    }
    // SAFETY: the final map covers all RAM, hence el2's image, stack and
    // the device tree (both checked to be inside RAM), as Normal memory at the same addresses, and the
    // console UART as Device.
    unsafe { el2_mmu_enable(&config) };
    console::set_uart(uart as usize);
    log::info!(
        "final EL2 map on: RAM Normal, UART {uart:#x} Device ({} table pages)",
        map.tables()
    );

    marks[1] = sysreg::counter();
    // 5. The host image, the layout and the heap.
    let host = hostimg::read(ram)?;
    let lay = layout::compute(&platform, image, dt_range, &host.ranges())?;
    // SAFETY: the carve-out is RAM (inside the highest region), mapped
    // Normal by the final map, hypervisor-owned from now on (step 6 takes
    // it from the host) and used by nothing else.
    unsafe { mem::init_heap(lay.carveout.base, lay.carveout.size) };
    report_layout(&lay, &host);

    marks[2] = sysreg::counter();
    // 6. Ownership table and host stage-2.
    percpu::register(&platform.cpus[..platform.cpu_count]);
    let pa_range = PaRange::from_parange(sysreg::pa_range_field())
        .ok_or(BootError::Other("unknown ID_AA64MMFR0_EL1.PARange"))?;
    let pa_limit = 1u64 << pa_range.bits();
    let ram_regions: Vec<MemRegion> = ram
        .iter()
        .filter_map(|r| {
            let base = r.base.next_multiple_of(PAGE);
            let end = (r.end() & !(PAGE - 1)).min(pa_limit);
            (base < end).then(|| MemRegion {
                base: Pfn(base / PAGE),
                pages: (end - base) / PAGE,
            })
        })
        .collect();
    // Device frames el2 mediates leave the host's stage-2: the ITS control
    // frame and each redistributor's RD_base frame. So do a GICv4
    // redistributor's VLPI_base (and reserved) frames, which el2 does not
    // offer, and the rest of the redistributor region past the frames el2
    // found (redistributors of CPUs beyond el2's, whose LPI registers el2
    // would not see).
    let rd_frames = gic::rd_frames();
    let mut held: Vec<Range> = Vec::new();
    for f in &rd_frames {
        held.push(Range {
            base: f.base,
            size: gicr_lpi::RD_FRAME,
        });
        if f.vlpis {
            held.push(Range {
                base: f.base + 2 * gicr_lpi::RD_FRAME,
                size: 2 * gicr_lpi::RD_FRAME,
            });
        }
    }
    if let Gic::V3 { redist, .. } = platform.gic {
        let mediated_end = rd_frames.last().map_or(redist.base, |f| f.base + f.size());
        if mediated_end < redist.end() {
            held.push(Range {
                base: mediated_end,
                size: redist.end() - mediated_end,
            });
        }
    }
    if let Some(b) = its_frame {
        held.push(Range {
            base: b,
            size: its::CONTROL_FRAME,
        });
    }
    let mmio = host_mmio(&platform, pa_limit, &held);
    let hyp_regions: Vec<MemRegion> = lay
        .hyp()
        .iter()
        .map(|r| MemRegion {
            base: Pfn(r.base / PAGE),
            pages: r.size / PAGE,
        })
        .collect();
    let bitmap =
        HypBitmap::new(&ram_regions).ok_or(BootError::Other("out of heap for the hyp bitmap"))?;
    // el2's own words of the command line (`el2::options`), taken out of
    // what the host gets in step 7.
    let qemu_bootargs = fdt::bootargs(&tree);
    let el2_args = options::parse(qemu_bootargs.unwrap_or(""));
    for w in &el2_args.applied {
        log::info!("boot option {w}");
    }
    for w in &el2_args.ignored {
        log::warn!("boot option {w} not understood: ignored (and not passed to the host)");
    }
    let host_map = el2_args.options.host_map;
    let ownership = Ownership::new_with_policy(
        Layout {
            pa_range,
            ram: &ram_regions,
            mmio: &mmio,
            hyp: &hyp_regions,
        },
        host_map,
        IdentityMem,
        HeapPool,
        bitmap,
        &mut ArmTlb,
    )
    .map_err(BootError::Ownership)?;
    let (vtcr, vttbr, stats) = ownership.with_host(|h| {
        let s2 = h.stage2();
        (s2.vtcr(), s2.vttbr(), s2.stats(h.pool()))
    });
    log::info!(
        "host stage-2: {}-bit IPA, VMID 0, VTCR_EL2 {vtcr:#x}, root {:#x}, {} table pages, \
         {} blocks 1G / {} blocks 2M / {} pages 4K; {} MMIO regions; RAM mapped with {}",
        pa_range.bits(),
        vttbr & 0x0000_ffff_ffff_fffe,
        stats.tables,
        stats.leaves[1],
        stats.leaves[2],
        stats.leaves[3],
        mmio.len(),
        match host_map {
            BlockPolicy::Largest => "the largest blocks",
            BlockPolicy::PagesOnly => "4 KiB pages only (el2.host_map=pages)",
        }
    );

    marks[3] = sysreg::counter();
    // 7. The host: kernel, initrd, command line; then its device tree.
    let host_args = el2_args.host_line.as_deref().or(qemu_bootargs);
    let mut prepared = hostimg::prepare(&host, &lay, ram, dt_range, host_args)?;
    let edits = ChosenEdits {
        // A host el2 composes no line for gets QEMU's, without el2's words.
        bootargs: prepared
            .bootargs
            .as_deref()
            .or(el2_args.host_line.as_deref()),
        initrd: prepared.initrd,
    };
    let host_tree = match prepared.dtb.take() {
        None => fdt::write_host_tree(&tree, blob, &lay.hyp(), &edits)?,
        Some(dtb) => image_tree(dtb, &lay, &edits)?,
    };
    if host_tree.len() as u64 > lay.host_dtb.size {
        return Err(BootError::Other(
            "the host device tree does not fit below el2",
        ));
    }
    // QEMU's tree may sit exactly where the host's goes; it is no longer
    // read past this point.
    let _ = (tree, blob);
    // SAFETY: the destination is host RAM below el2's image (checked by the
    // layout), mapped Normal, and nothing else uses it during boot; the
    // source is a heap buffer, so they do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            host_tree.as_ptr(),
            lay.host_dtb.base as *mut u8,
            host_tree.len(),
        );
    }
    // The host starts with its MMU (and so its caches) off.
    sysreg::clean_inval_to_poc(lay.host_dtb.base, host_tree.len() as u64);
    log::info!(
        "host device tree: {} bytes at {:#x} (hypervisor ranges {} and {} reserved no-map)",
        host_tree.len(),
        lay.host_dtb.base,
        lay.image,
        lay.carveout
    );
    drop(host_tree);

    marks[4] = sysreg::counter();
    // 8. Enter the host.
    let gicv3 = matches!(platform.gic, Gic::V3 { .. }) && sysreg::has_gicv3_sysregs();
    let hyp = host::HYP.call_once(|| host::Hypervisor {
        core: el2::hyp::Hypervisor::new(ownership),
        vtcr,
        vttbr,
        hcr: host::host_hcr(),
        gicv3,
    });
    if let Some(cpu) = percpu::get(0) {
        cpu.set_power(Power::On);
    }
    let rd_bases: Vec<u64> = rd_frames.iter().map(|f| f.base).collect();
    gicr_lpi::init(&rd_bases).map_err(BootError::Other)?;
    if let Some(b) = its_frame {
        its::init(b).map_err(BootError::Other)?;
    }
    // Host exceptions save Z/P/FFR instead of Q registers from now on.
    entry::HAS_SVE.store(u8::from(sysreg::has_sve()), Ordering::Relaxed);
    let (used, total) = mem::heap_stats();
    let t1 = sysreg::counter();
    marks[5] = t1;
    residency::set_boot(t0, t1);
    let step = |i: usize| {
        let from = if i == 0 { t0 } else { marks[i - 1] };
        sysreg::ticks_to_us(marks[i].saturating_sub(from))
    };
    log::info!(
        "heap: {} KiB of {} KiB used; boot took {} us (el2 entry at {} us, host entry at {} us): \
         device tree {} us, EL2 map {} us, host image and layout {} us, ownership and host \
         stage-2 {} us, host kernel and device tree {} us, GIC and ITS {} us",
        used / 1024,
        total / 1024,
        sysreg::ticks_to_us(t1.saturating_sub(t0)),
        sysreg::ticks_to_us(t0),
        sysreg::ticks_to_us(t1),
        step(0),
        step(1),
        step(2),
        step(3),
        step(4),
        step(5),
    );
    if sysreg::has_hcx() {
        log::info!(
            "host controls: HCR_EL2 {:#x}, HCRX_EL2 {:#x} (FEAT_HCX)",
            hyp.hcr,
            sysreg::host_hcrx()
        );
    } else {
        log::info!("host controls: HCR_EL2 {:#x}", hyp.hcr);
    }
    log::info!(
        "entering the host at EL1: entry {:#x}, x0 = device tree {:#x}",
        prepared.entry,
        lay.host_dtb.base
    );
    host::enter(hyp, 0, prepared.entry, lay.host_dtb.base)
}

/// The host's device tree built on the boot image's DTB `dtb` instead of
/// QEMU's: checked like QEMU's, then copied with the hypervisor ranges
/// reserved and `edits` applied.
fn image_tree(
    mut dtb: Vec<u8>,
    lay: &MemLayout,
    edits: &ChosenEdits<'_>,
) -> Result<Vec<u8>, BootError> {
    let dt_err = |e: DtError| BootError::Host(HostError::Dtb(e));
    if dtb.len() < 40 {
        return Err(dt_err(DtError::Header("truncated")));
    }
    let total = fdt::total_size(&dtb, 0).map_err(dt_err)?;
    if total > dtb.len() {
        return Err(dt_err(DtError::Header(
            "totalsize past the end of dtb_size",
        )));
    }
    dtb.truncate(total);
    fdt::validate(&dtb).map_err(dt_err)?;
    fdt::strip_nops(&mut dtb);
    fdt::validate(&dtb).map_err(dt_err)?;
    let tree = Fdt::new(&dtb).map_err(|_| dt_err(DtError::NoMagic(0)))?;
    fdt::write_host_tree(&tree, &dtb, &lay.hyp(), edits).map_err(dt_err)
}

/// The host's MMIO: the device tree's device regions minus RAM and minus
/// the device frames el2 mediates (`held`), page aligned, below the PA
/// limit.
fn host_mmio(platform: &Platform, pa_limit: u64, held: &[Range]) -> Vec<(PhysAddr, u64)> {
    let mut out: Vec<(PhysAddr, u64)> = Vec::new();
    for r in platform.mmio.as_slice() {
        let mut pieces: Vec<Range> = alloc::vec![Range {
            base: r.base & !(PAGE - 1),
            size: (r.end().min(pa_limit).next_multiple_of(PAGE))
                .saturating_sub(r.base & !(PAGE - 1)),
        }];
        for ram in platform.ram.as_slice().iter().chain(held) {
            let mut next: Vec<Range> = Vec::new();
            for p in &pieces {
                if !p.overlaps(ram) {
                    next.push(*p);
                    continue;
                }
                if p.base < ram.base {
                    next.push(Range {
                        base: p.base,
                        size: ram.base - p.base,
                    });
                }
                if p.end() > ram.end() {
                    next.push(Range {
                        base: ram.end(),
                        size: p.end() - ram.end(),
                    });
                }
            }
            pieces = next;
        }
        for p in pieces.iter().filter(|p| p.size > 0 && p.base < pa_limit) {
            out.push((PhysAddr(p.base), p.size));
        }
    }
    // Rounding may have made neighbours overlap: merge.
    out.sort_unstable_by_key(|(b, _)| b.get());
    let mut merged: Vec<(PhysAddr, u64)> = Vec::with_capacity(out.len());
    for (b, s) in out {
        match merged.last_mut() {
            Some((lb, ls)) if b.get() <= lb.get() + *ls => {
                let end = (lb.get() + *ls).max(b.get() + s);
                *ls = end - lb.get();
            }
            _ => merged.push((b, s)),
        }
    }
    merged
}

fn report_platform(p: &Platform, dtb: u64, size: usize) {
    log::info!("device tree at {dtb:#x} ({size} bytes) is well formed");
    for r in p.ram.as_slice() {
        log::info!("  RAM {r} ({} MiB)", r.size >> 20);
    }
    log::info!(
        "  {} CPU(s){}, PSCI method {}",
        p.cpu_count,
        if p.cpus_ignored > 0 {
            " (more ignored: el2 supports 8)"
        } else {
            ""
        },
        if p.psci_smc { "smc" } else { "not smc" }
    );
    match p.gic {
        Gic::V3 { dist, redist } => {
            log::info!("  GICv3: distributor {dist}, redistributors {redist}")
        }
        Gic::V2 { dist, cpu } => log::info!("  GICv2: distributor {dist}, CPU interface {cpu}"),
        Gic::None => log::warn!("  no GIC in the device tree"),
    }
    match p.uart {
        Some(u) => log::info!("  console: PL011 at {u:#x}"),
        None => log::warn!("  no PL011 in the device tree; keeping QEMU virt's"),
    }
}

fn report_layout(l: &MemLayout, host: &HostImage) {
    log::info!(
        "hypervisor memory: image {} + carve-out {} ({} MiB heap)",
        l.image,
        l.carveout,
        l.carveout.size >> 20
    );
    if let HostImage::Legacy(hdr) = host {
        log::info!(
            "host image at {} (text_offset {:#x}, image_size {:#x}); host device tree at {:#x}",
            layout::host_image_range(hdr),
            hdr.text_offset,
            hdr.image_size,
            l.host_dtb.base
        );
    } else {
        log::info!(
            "host descriptor at {:#x}; host device tree at {:#x}",
            hostimg::HOST_DESC_ADDR,
            l.host_dtb.base
        );
    }
}

/// Rust entry of a secondary CPU, started by the PSCI relay's CPU_ON with
/// its index (or any CPU waking from a power-down suspend the relay
/// intercepted); the MMU is on and SP is the CPU's own stack.
pub(super) extern "C" fn secondary_main(index: u64, t0: u64) -> ! {
    let index = index as usize;
    sysreg::set_cpu_index(index);
    let (Some(hyp), Some(cpu)) = (host::HYP.get(), percpu::get(index)) else {
        console::emergency(format_args!(
            "secondary CPU {index} started before boot finished"
        ));
        entry::park()
    };
    if cpu.take_resuming() {
        // Woken from a power-down state of a suspend call the PSCI relay
        // intercepted: the CPU stays on; back to the host's resume entry.
        let (entry, context) = cpu.boot();
        log::info!(
            "CPU {index} resumed at EL2 at {} us; entering the host at {entry:#x} \
             (context {context:#x})",
            sysreg::ticks_to_us(t0)
        );
        host::enter(hyp, index, entry, context)
    }
    if cpu.transition(Power::OnPending, Power::On).is_err() {
        console::emergency(format_args!("CPU {index} started without a pending CPU_ON"));
        entry::park()
    }
    let (entry, context) = cpu.boot();
    log::info!(
        "CPU {index} up at EL2 at {} us; entering the host at {entry:#x} (context {context:#x})",
        sysreg::ticks_to_us(t0)
    );
    host::enter(hyp, index, entry, context)
}

/// Prints the panic and stops the machine with [`status::PANIC`].
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    console::emergency(format_args!("panic: {info}"));
    exit::exit(status::PANIC)
}
