//! Target `vm_layer`: the guest_memfd/VM layer a host kernel gives its
//! VMM (`host_interface::vm::KvmVm` over the simulated machine): guest
//! memfds, memslots, memory attributes (conversions), host reads and
//! writes through the mmap, pins, hole punching, `fallocate`, 2 MiB
//! folios on and off, vCPU entry points, scripted guests run through
//! `Vcpu::run` with their exits served by a VMM policy (or completed with
//! arbitrary values), and at the end `destroy_checked`.
//!
//! An input is a set-up byte (vCPUs, folios) and [`Step`]s (at most
//! [`MAX_STEPS`]) with aimed sizes, offsets, guest addresses and flags.
//! After every host call the VM layer makes, a page handed back to the
//! host must read as zeros ([`Oracle::after_call`]); after every step the
//! oracle of [`crate::machine`] runs (the invariant checker, host access
//! to every page through the host stage-2, PageState).
//! The VM layer's host calls go through [`Hv`], which fails the input if
//! one step makes more than [`CALL_BUDGET`] of them (a run loop that
//! never returns). At the end the VM is destroyed: every page that was
//! private to the guest must read as zeros, every page the VM allocated
//! must be back with the host's allocator, and every page of RAM the
//! host's again (the carve-out excepted), with no VM left.

use crate::guest_ops;
use crate::input::{Input, Output};
use crate::machine::{CARVE, Oracle, RAM, RAM_END, machine};
use el2::sim::{GuestOp, Machine, SimPages};
use host_interface::abi::HostCall;
use host_interface::hypervisor::{AccessFault, CallError, Hypervisor};
use host_interface::kvm::{
    GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMORY_EXIT_FLAG_PRIVATE, KvmCreateGuestMemfd,
    KvmMemoryAttributes2, KvmUserspaceMemoryRegion2,
};
use host_interface::vm::{GmemId, KvmVm, Vcpu, VcpuExit, Vm};
use ownership::{Owner, PageState};
use std::collections::BTreeMap;
use std::vec::Vec;

/// Most steps read from one input.
pub const MAX_STEPS: usize = 32;
/// Most host calls one step may make.
pub const CALL_BUDGET: u64 = 20_000;
/// Pages of the host's allocator: the first three 2 MiB blocks of RAM.
const HOST_POOL: u64 = 1536;

const MIB: u64 = 1 << 20;

/// guest_memfd sizes.
pub const GMEM_SIZES: [u64; 9] = [
    4 * MIB,
    2 * MIB,
    4096,
    8192,
    2 * MIB + 4096,
    6 * MIB,
    0,
    4095,
    1 << 40,
];
/// guest_memfd flags.
pub const GMEM_FLAGS: [u64; 5] = [
    GUEST_MEMFD_FLAG_MMAP,
    GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    0,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    4,
];
/// Memslot ids.
pub const SLOTS: [u64; 7] = [0, 1, 2, 3, 32763, 32764, 1 << 16];
/// Memslot flags.
pub const REGION_FLAGS: [u64; 4] = [KVM_MEM_GUEST_MEMFD as u64, 0, 4 | 1, 4 | 2];
/// Guest physical addresses of memslots.
pub const GPAS: [u64; 10] = [
    0x8000_0000,
    0x8020_0000,
    0x8040_0000,
    0x8000_1000,
    0x8060_0000,
    0,
    (1 << 40) - 2 * MIB,
    1 << 40,
    0x0900_0000,
    0x8000_0800,
];
/// Memslot sizes (0 deletes).
pub const REGION_SIZES: [u64; 7] = [4 * MIB, 2 * MIB, 4096, 0, 8 * MIB, 8192, 4095];
/// Offsets into a guest_memfd.
pub const OFFSETS: [u64; 9] = [
    0,
    4096,
    2 * MIB,
    0x1f_f000,
    4 * MIB - 4096,
    4 * MIB,
    8,
    0x20_1000,
    u64::MAX - 4095,
];
/// Lengths of conversions, punches, allocations.
pub const LENS: [u64; 8] = [
    4096,
    2 * MIB,
    4 * MIB,
    8192,
    0,
    4095,
    u64::MAX,
    2 * MIB + 4096,
];
/// Longest read or write through the mmap (longer raw lengths wrap).
pub const MAX_RW: u64 = 8 * MIB;
/// Lengths of reads and writes through the mmap.
pub const RW_LENS: [u64; 7] = [8, 4096, 1, 8192, 100, 0, 2 * MIB];
/// Attributes.
pub const ATTRS: [u64; 4] = [
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    0,
    1,
    KVM_MEMORY_ATTRIBUTE_PRIVATE | 1,
];
/// Values for entry points, x0, MMIO data, hypercall results.
pub const VALUES: [u64; 6] = [0, 0x8000_0000, 1, u64::MAX, (-2i64) as u64, 0x41];

/// One step of an input.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// `KVM_CREATE_GUEST_MEMFD`.
    CreateGmem {
        /// Size.
        size: u64,
        /// Flags.
        flags: u64,
    },
    /// `KVM_SET_USER_MEMORY_REGION2` on guest_memfd `gmem`.
    Region {
        /// Slot id.
        slot: u64,
        /// Flags.
        flags: u64,
        /// Guest address.
        gpa: u64,
        /// Size.
        size: u64,
        /// guest_memfd.
        gmem: u8,
        /// Offset in it.
        offset: u64,
    },
    /// `KVM_SET_MEMORY_ATTRIBUTES2`.
    Attrs {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// Attributes.
        attrs: u64,
        /// Flags (0 valid).
        flags: u8,
    },
    /// A read through the mmap.
    Read {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A write through the mmap.
    Write {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Byte written.
        byte: u8,
    },
    /// A long-term pin.
    Pin {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
    },
    /// Drops a pin.
    Unpin {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
    },
    /// `fallocate(PUNCH_HOLE)`.
    Punch {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `fallocate(0)`.
    Allocate {
        /// guest_memfd.
        gmem: u8,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// 2 MiB folios on or off.
    Huge(bool),
    /// A vCPU's entry point.
    Init {
        /// vCPU.
        vcpu: u8,
        /// Entry.
        entry: u64,
        /// x0.
        x0: u64,
    },
    /// A vCPU's guest script.
    Script {
        /// vCPU.
        vcpu: u8,
        /// Ops.
        ops: Vec<GuestOp>,
    },
    /// Up to eight runs, the exits served as `policy` says: bit 0 convert
    /// what the guest asks (else refuse), bit 1 punch what it
    /// relinquishes, bit 2 flip the timer on WFI, bit 3 start vCPUs it
    /// starts (else -2), bits 4–7 the MMIO read value.
    Run {
        /// vCPU.
        vcpu: u8,
        /// Policy.
        policy: u8,
    },
    /// Completes the last exit with these values as MMIO data (`mmio`)
    /// or a hypercall result.
    Complete {
        /// vCPU.
        vcpu: u8,
        /// MMIO, else hypercall.
        mmio: bool,
        /// x0 / data.
        v0: u64,
        /// x1.
        v1: u64,
    },
}

impl Step {
    /// Reads one step.
    pub fn read(i: &mut Input<'_>) -> Step {
        match i.byte() % 18 {
            0 => Step::CreateGmem {
                size: i.value(&GMEM_SIZES),
                flags: i.value(&GMEM_FLAGS),
            },
            1 => Step::Region {
                slot: i.value(&SLOTS),
                flags: i.value(&REGION_FLAGS),
                gpa: i.value(&GPAS),
                size: i.value(&REGION_SIZES),
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
            },
            2 | 3 => Step::Attrs {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
                size: i.value(&LENS),
                attrs: i.value(&ATTRS),
                flags: i.byte(),
            },
            4 => Step::Read {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
                len: i.value(&RW_LENS),
            },
            5 => Step::Write {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
                len: i.value(&RW_LENS),
                byte: i.byte(),
            },
            6 => Step::Pin {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
            },
            7 => Step::Unpin {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
            },
            8 => Step::Punch {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
                len: i.value(&LENS),
            },
            9 => Step::Allocate {
                gmem: i.byte(),
                offset: i.value(&OFFSETS),
                len: i.value(&LENS),
            },
            10 => Step::Huge(i.bool()),
            11 => Step::Init {
                vcpu: i.byte(),
                entry: i.value(&VALUES),
                x0: i.value(&VALUES),
            },
            12 | 13 => Step::Script {
                vcpu: i.byte(),
                ops: guest_ops::read_script(i),
            },
            14..=16 => Step::Run {
                vcpu: i.byte(),
                policy: i.byte(),
            },
            _ => Step::Complete {
                vcpu: i.byte(),
                mmio: i.bool(),
                v0: i.value(&VALUES),
                v1: i.value(&VALUES),
            },
        }
    }

    /// Writes the step as [`Step::read`] reads it.
    pub fn write(&self, o: &mut Output) {
        match self {
            Step::CreateGmem { size, flags } => {
                o.byte(0)
                    .value(&GMEM_SIZES, *size)
                    .value(&GMEM_FLAGS, *flags);
            }
            Step::Region {
                slot,
                flags,
                gpa,
                size,
                gmem,
                offset,
            } => {
                o.byte(1)
                    .value(&SLOTS, *slot)
                    .value(&REGION_FLAGS, *flags)
                    .value(&GPAS, *gpa)
                    .value(&REGION_SIZES, *size)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset);
            }
            Step::Attrs {
                gmem,
                offset,
                size,
                attrs,
                flags,
            } => {
                o.byte(2)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset)
                    .value(&LENS, *size)
                    .value(&ATTRS, *attrs)
                    .byte(*flags);
            }
            Step::Read { gmem, offset, len } => {
                o.byte(4)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset)
                    .value(&RW_LENS, *len);
            }
            Step::Write {
                gmem,
                offset,
                len,
                byte,
            } => {
                o.byte(5)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset)
                    .value(&RW_LENS, *len)
                    .byte(*byte);
            }
            Step::Pin { gmem, offset } => {
                o.byte(6).byte(*gmem).value(&OFFSETS, *offset);
            }
            Step::Unpin { gmem, offset } => {
                o.byte(7).byte(*gmem).value(&OFFSETS, *offset);
            }
            Step::Punch { gmem, offset, len } => {
                o.byte(8)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset)
                    .value(&LENS, *len);
            }
            Step::Allocate { gmem, offset, len } => {
                o.byte(9)
                    .byte(*gmem)
                    .value(&OFFSETS, *offset)
                    .value(&LENS, *len);
            }
            Step::Huge(on) => {
                o.byte(10).bool(*on);
            }
            Step::Init { vcpu, entry, x0 } => {
                o.byte(11)
                    .byte(*vcpu)
                    .value(&VALUES, *entry)
                    .value(&VALUES, *x0);
            }
            Step::Script { vcpu, ops } => {
                o.byte(12).byte(*vcpu);
                guest_ops::write_script(o, ops);
            }
            Step::Run { vcpu, policy } => {
                o.byte(14).byte(*vcpu).byte(*policy);
            }
            Step::Complete { vcpu, mmio, v0, v1 } => {
                o.byte(17)
                    .byte(*vcpu)
                    .bool(*mmio)
                    .value(&VALUES, *v0)
                    .value(&VALUES, *v1);
            }
        }
    }
}

/// The set-up byte: bits 0–1 vCPUs - 1; bit 2 2 MiB folios off.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Setup(pub u8);

/// Reads a whole input.
pub fn decode(data: &[u8]) -> (Setup, Vec<Step>) {
    let mut i = Input::new(data);
    let setup = Setup(i.byte());
    let mut steps = Vec::new();
    while !i.is_empty() && steps.len() < MAX_STEPS {
        steps.push(Step::read(&mut i));
    }
    (setup, steps)
}

/// Writes an input.
pub fn encode(setup: Setup, steps: &[Step]) -> Vec<u8> {
    let mut o = Output::new();
    o.byte(setup.0);
    for s in steps {
        s.write(&mut o);
    }
    o.finish()
}

/// The conduit the VM layer uses: the machine, with a budget of host
/// calls per step.
pub struct Hv<'m> {
    /// The machine.
    pub m: &'m mut Machine,
    /// Its oracle ([`Oracle::after_call`] after every host call).
    pub oracle: Oracle,
    /// Host calls in this step.
    pub calls: u64,
}

impl Hypervisor for Hv<'_> {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        self.calls += 1;
        assert!(
            self.calls <= CALL_BUDGET,
            "the VM layer made {CALL_BUDGET} host calls in one step (last {call:?} {args:x?}): it does not return"
        );
        let r = Hypervisor::call(&mut *self.m, call, args);
        self.oracle.after_call(self.m);
        r
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        Hypervisor::read(&mut *self.m, pa, buf)
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        Hypervisor::write(&mut *self.m, pa, data)
    }
}

type SimVm<'m> = KvmVm<Hv<'m>, SimPages>;

/// A memslot the VMM made: guest address, size, guest_memfd, offset.
#[derive(Clone, Copy, Debug)]
struct Slot {
    gpa: u64,
    size: u64,
    gmem: GmemId,
    offset: u64,
}

/// What the VMM remembers.
#[derive(Default)]
struct Vmm {
    gmems: u32,
    slots: BTreeMap<u64, Slot>,
}

impl Vmm {
    fn gmem(&self, n: u8) -> GmemId {
        // One past the last is a guest_memfd that does not exist.
        GmemId(u32::from(n) % (self.gmems + 1))
    }

    /// The guest_memfd and offset behind `gpa`.
    fn lookup(&self, gpa: u64) -> Option<(GmemId, u64)> {
        self.slots
            .values()
            .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
            .map(|s| (s.gmem, s.offset + (gpa - s.gpa)))
    }
}

fn attrs(offset: u64, size: u64, attributes: u64, flags: u64) -> KvmMemoryAttributes2 {
    KvmMemoryAttributes2 {
        offset,
        size,
        attributes,
        flags,
        ..Default::default()
    }
}

fn serve(vm: &mut SimVm<'_>, vmm: &Vmm, vcpu: usize, policy: u8) {
    for _ in 0..8 {
        let Ok(exit) = vm.vcpu(vcpu).run() else {
            return;
        };
        match exit {
            VcpuExit::MemoryFault { gpa, size, flags } => {
                if policy & 1 != 0
                    && let Some((g, off)) = vmm.lookup(gpa)
                {
                    let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                    let a = if private {
                        KVM_MEMORY_ATTRIBUTE_PRIVATE
                    } else {
                        0
                    };
                    let _ = vm.set_memory_attributes(g, &mut attrs(off, size, a, 0));
                }
            }
            VcpuExit::Mmio { .. } => {
                vm.vcpu(vcpu)
                    .set_mmio_data(u64::from(policy >> 4) * 0x0101_0101);
            }
            VcpuExit::Hypercall { .. } => {
                let x0 = if policy & 8 != 0 { 0 } else { (-2i64) as u64 };
                vm.vcpu(vcpu).set_hypercall_result(x0, 0);
            }
            VcpuExit::Relinquished { gpa, size } => {
                if policy & 2 != 0
                    && let Some((g, off)) = vmm.lookup(gpa)
                {
                    let _ = vm.gmem_punch_hole(g, off, size);
                }
            }
            VcpuExit::Wfi => {
                if policy & 4 != 0 {
                    let t = &mut vm.hypervisor().m.arch.timer;
                    *t = !*t;
                }
            }
            VcpuExit::Interrupted => {}
            VcpuExit::SystemEvent(_) | VcpuExit::PoweredOff | VcpuExit::InternalError { .. } => {
                return;
            }
        }
    }
}

fn apply(vm: &mut SimVm<'_>, vmm: &mut Vmm, step: &Step) {
    match *step {
        Step::CreateGmem { size, flags } => {
            let r = vm.create_guest_memfd(&KvmCreateGuestMemfd {
                size,
                flags,
                reserved: [0; 6],
            });
            if let Ok(id) = r {
                vmm.gmems = id.0 + 1;
            }
        }
        Step::Region {
            slot,
            flags,
            gpa,
            size,
            gmem,
            offset,
        } => {
            let id = vmm.gmem(gmem);
            let r = vm.set_memory_region(&KvmUserspaceMemoryRegion2 {
                slot: slot as u32,
                flags: flags as u32,
                guest_phys_addr: gpa,
                memory_size: size,
                guest_memfd_offset: offset,
                guest_memfd: id.0,
                ..Default::default()
            });
            if r.is_ok() {
                if size == 0 {
                    vmm.slots.remove(&slot);
                } else {
                    vmm.slots.insert(
                        slot,
                        Slot {
                            gpa,
                            size,
                            gmem: id,
                            offset,
                        },
                    );
                }
            }
        }
        Step::Attrs {
            gmem,
            offset,
            size,
            attrs: a,
            flags,
        } => {
            let mut at = attrs(offset, size, a, u64::from(flags % 4 == 3));
            let _ = vm.set_memory_attributes(vmm.gmem(gmem), &mut at);
        }
        Step::Read { gmem, offset, len } => {
            let mut buf = vec![0u8; (len % (MAX_RW + 1)) as usize];
            let _ = vm.gmem_read(vmm.gmem(gmem), offset, &mut buf);
        }
        Step::Write {
            gmem,
            offset,
            len,
            byte,
        } => {
            let data = vec![byte; (len % (MAX_RW + 1)) as usize];
            let _ = vm.gmem_write(vmm.gmem(gmem), offset, &data);
        }
        Step::Pin { gmem, offset } => {
            let _ = vm.gmem_pin(vmm.gmem(gmem), offset);
        }
        Step::Unpin { gmem, offset } => {
            let _ = vm.gmem_unpin(vmm.gmem(gmem), offset);
        }
        Step::Punch { gmem, offset, len } => {
            let _ = vm.gmem_punch_hole(vmm.gmem(gmem), offset, len);
        }
        Step::Allocate { gmem, offset, len } => {
            let _ = vm.gmem_allocate(vmm.gmem(gmem), offset, len);
        }
        Step::Huge(on) => vm.set_huge_folios(on),
        Step::Init { vcpu, entry, x0 } => {
            let _ = vm.init_vcpu(usize::from(vcpu % 8), entry.min(guest_ops::MAX_ENTRY), x0);
        }
        Step::Script { vcpu, ref ops } => {
            let h = ownership::GuestHandle(vm.handle() as u16);
            let ops = guest_ops::sim_safe(ops);
            vm.hypervisor().m.arch.script(h, usize::from(vcpu % 8), ops);
        }
        Step::Run { vcpu, policy } => serve(vm, vmm, usize::from(vcpu % 8), policy),
        Step::Complete { vcpu, mmio, v0, v1 } => {
            let mut v = vm.vcpu(usize::from(vcpu % 8));
            if mmio {
                v.set_mmio_data(v0);
            } else {
                v.set_hypercall_result(v0, v1);
            }
        }
    }
}

/// The target (module docs).
pub fn run(data: &[u8]) {
    let (setup, steps) = decode(data);
    let mut m = machine();
    let oracle = Oracle::new(&mut m);
    let vcpus = usize::from(setup.0 & 3) + 1;
    let pages = SimPages::new(RAM, HOST_POOL);
    let hv = Hv {
        m: &mut m,
        oracle,
        calls: 0,
    };
    let mut vm = KvmVm::new(hv, pages, vcpus).unwrap_or_else(|e| panic!("KvmVm::new: errno {e}"));
    vm.set_huge_folios(setup.0 & 4 == 0);
    let mut vmm = Vmm::default();
    for step in &steps {
        vm.hypervisor().calls = 0;
        apply(&mut vm, &mut vmm, step);
        let hv = vm.hypervisor();
        hv.oracle.check(hv.m);
    }
    vm.hypervisor().calls = 0;
    let (hv, pages) = vm
        .destroy_checked(|hv, page| {
            if page.private {
                let bytes =
                    hv.m.host_read_page(page.pfn)
                        .expect("a reclaimed page reads");
                assert!(
                    bytes.iter().all(|b| *b == 0),
                    "private page {:#x} (gfn {:#x}) not zeroed at teardown",
                    page.pfn,
                    page.gfn
                );
            }
        })
        .unwrap_or_else(|e| panic!("destroying the VM failed: errno {e}"));
    assert_eq!(pages.in_use(), 0, "pages the VM allocated were not freed");
    let mut oracle = hv.oracle;
    oracle.check(&mut m);
    assert!(m.hyp.mem.guest_handles().is_empty(), "a VM is left");
    for pfn in RAM..RAM_END {
        let e = m.hyp.mem.page(ownership::Pfn(pfn)).expect("RAM");
        if pfn >= CARVE {
            assert_eq!(e.owner(), Owner::Hyp);
        } else {
            assert!(
                e.owner() == Owner::Host
                    && (e.host(), e.hyp()) == (PageState::Owned, PageState::NoPage)
                    && e.share_count() == 0
                    && e.pins() == 0,
                "page {pfn:#x} not back with the host: {:?} host {:?} hyp {:?} shares {} pins {}",
                e.owner(),
                e.host(),
                e.hyp(),
                e.share_count(),
                e.pins()
            );
        }
    }
}

/// Hand-made seeds: a VM with 4 MiB of private RAM (2 MiB folios) and a
/// guest that shares, unshares, relinquishes and uses MMIO; the same with
/// small pages; conversions with pins; two memslots over one file.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const G: u64 = 0x8000_0000;
    let hvc = |id: u64, args: [u64; 3]| GuestOp::Hvc { id, args };
    let ram = |size: u64, flags: u64| {
        [
            Step::CreateGmem { size, flags },
            Step::Region {
                slot: 0,
                flags: KVM_MEM_GUEST_MEMFD as u64,
                gpa: G,
                size,
                gmem: 0,
                offset: 0,
            },
        ]
    };
    let guest = vec![
        GuestOp::Fill { ipa: G, byte: 0x5a },
        GuestOp::Load { ipa: G + 8 },
        hvc(0xC600_0003, [G, 1, 0]),
        GuestOp::Store { ipa: G, value: 7 },
        hvc(0xC600_0004, [G, 1, 0]),
        GuestOp::Store32 {
            ipa: 0x0900_0000,
            value: 0x41,
        },
        GuestOp::Load { ipa: 0x0900_0018 },
        hvc(0xC600_0009, [G + 0x1000, 1, 0]),
        GuestOp::Fill {
            ipa: 0x8020_0000,
            byte: 1,
        },
        hvc(0xC400_0003, [1, G, 0]),
        hvc(0x8400_0008, [0; 3]),
    ];
    let script = |ops: Vec<GuestOp>| Step::Script { vcpu: 0, ops };
    let run = |policy: u8| Step::Run { vcpu: 0, policy };
    let mut seeds = Vec::new();
    let mut steps: Vec<Step> = ram(4 * MIB, GUEST_MEMFD_FLAG_MMAP).to_vec();
    steps.extend([
        Step::Init {
            vcpu: 0,
            entry: 0,
            x0: 0,
        },
        script(guest.clone()),
        run(0xfb),
        run(0x1b),
        Step::Read {
            gmem: 0,
            offset: 0,
            len: 8,
        },
        run(0x0b),
    ]);
    seeds.push(("guest-run", encode(Setup(1), &steps)));
    seeds.push(("guest-run-small-pages", encode(Setup(4), &steps)));
    let mut steps: Vec<Step> = ram(
        4 * MIB,
        GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    )
    .to_vec();
    steps.extend([
        Step::Write {
            gmem: 0,
            offset: 4096,
            len: 8192,
            byte: 0x33,
        },
        Step::Pin {
            gmem: 0,
            offset: 4096,
        },
        Step::Attrs {
            gmem: 0,
            offset: 0,
            size: 2 * MIB,
            attrs: KVM_MEMORY_ATTRIBUTE_PRIVATE,
            flags: 0,
        },
        Step::Unpin {
            gmem: 0,
            offset: 4096,
        },
        Step::Attrs {
            gmem: 0,
            offset: 0,
            size: 2 * MIB,
            attrs: KVM_MEMORY_ATTRIBUTE_PRIVATE,
            flags: 0,
        },
        Step::Init {
            vcpu: 0,
            entry: 0,
            x0: 0,
        },
        script(vec![
            GuestOp::Load { ipa: G + 0x1000 },
            GuestOp::Load { ipa: 0x8020_0000 },
            hvc(0xC600_0004, [0x8020_0000, 2, 0]),
            hvc(0xC600_0009, [0x8020_0000, 1, 0]),
        ]),
        run(0x03),
        Step::Punch {
            gmem: 0,
            offset: 2 * MIB,
            len: 2 * MIB,
        },
        Step::Allocate {
            gmem: 0,
            offset: 0,
            len: 4 * MIB,
        },
        run(0x03),
    ]);
    seeds.push(("shared-pins", encode(Setup(0), &steps)));
    let steps = vec![
        Step::CreateGmem {
            size: 4 * MIB,
            flags: GUEST_MEMFD_FLAG_MMAP,
        },
        Step::Region {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD as u64,
            gpa: G,
            size: 2 * MIB,
            gmem: 0,
            offset: 0,
        },
        Step::Region {
            slot: 1,
            flags: KVM_MEM_GUEST_MEMFD as u64,
            gpa: 0x8040_0000,
            size: 2 * MIB,
            gmem: 0,
            offset: 2 * MIB,
        },
        Step::Init {
            vcpu: 0,
            entry: 0,
            x0: 0,
        },
        Step::Init {
            vcpu: 1,
            entry: 0,
            x0: 1,
        },
        script(vec![
            GuestOp::Fill {
                ipa: 0x8040_0000,
                byte: 9,
            },
            hvc(0xC600_0003, [0x8040_0000, 512, 0]),
            GuestOp::Load { ipa: 0x8060_0000 },
        ]),
        Step::Script {
            vcpu: 1,
            ops: vec![GuestOp::Fill { ipa: G, byte: 3 }, GuestOp::Wfi],
        },
        run(0x01),
        Step::Run { vcpu: 1, policy: 0 },
        Step::Complete {
            vcpu: 0,
            mmio: true,
            v0: 0x41,
            v1: 0,
        },
        run(0x01),
        Step::Region {
            slot: 1,
            flags: KVM_MEM_GUEST_MEMFD as u64,
            gpa: 0x8040_0000,
            size: 0,
            gmem: 0,
            offset: 0,
        },
    ];
    seeds.push(("two-slots", encode(Setup(1), &steps)));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip() {
        for (name, bytes) in seeds() {
            let (s, steps) = decode(&bytes);
            assert_eq!(encode(s, &steps), bytes, "{name}");
        }
    }
}
