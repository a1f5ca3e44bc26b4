//! Target `host_call`: the host call decoder and dispatcher
//! (`Hypervisor::handle_host_call`, through `Machine::raw_call`) with any
//! registers, on the simulated machine.
//!
//! An input is a list of [`Step`]s (at most [`MAX_STEPS`]). Most are one
//! host call whose arguments are *aimed* per argument type (frames of
//! every kind, guest frames at block edges, valid and invalid handles,
//! extents, IPA sizes, completions...; see [`Arg`]), optionally with the
//! SVE hint bit in the function id or a non-zero register beyond the
//! call's arity; [`Step::Raw`] is six aimed registers with any function
//! id. [`Step::QuickVm`] and [`Step::Script`] are shortcuts a host would
//! take anyway (create a VM with its memcache and entry points; give a
//! vCPU one of the canned guest scripts), so that `VcpuRun` and the
//! conversion calls meet guests doing things. Every VM created gets
//! canned script 0 on each vCPU.
//!
//! After every step the oracle of [`crate::machine`] runs (invariant
//! checker, host access to every page, zeroed pages on return, PageState);
//! at the end every VM is torn down and every page accounted for.

use crate::input::{Input, Output};
use crate::machine::{RAM, Sim};
use el2::sim::GuestOp;
use host_interface::abi::{GuestCall, HostCall, SMCCC_SVE_HINT};
use std::vec::Vec;

/// Most steps read from one input.
pub const MAX_STEPS: usize = 48;

/// First guest handle.
pub const H0: u64 = 0x1000;

/// VM slots for [`Step::QuickVm`]: root (2 pages, 2-aligned), metadata (4
/// pages), memcache (8 pages).
pub const VM_SLOTS: [(u64, u64, u64); 4] = [
    (RAM + 0x10, RAM + 0x14, RAM + 0x18),
    (RAM + 0x20, RAM + 0x24, RAM + 0x28),
    (RAM + 0x30, RAM + 0x34, RAM + 0x38),
    (RAM + 0x40, RAM + 0x44, RAM + 0x48),
];

/// Frames: VM pages, single pages, the two 2 MiB blocks and their edges,
/// pool and hypervisor-share pages, the carve-out and the ends of RAM,
/// and frames that are not RAM.
pub const PFNS: [u64; 40] = [
    RAM + 0x10,
    RAM + 0x14,
    RAM + 0x18,
    RAM + 0x20,
    RAM + 0x24,
    RAM + 0x28,
    RAM + 0x30,
    RAM + 0x34,
    RAM + 0x60,
    RAM + 0x61,
    RAM + 0x62,
    RAM + 0x63,
    RAM + 0x64,
    RAM + 0x65,
    RAM + 0x80,
    RAM + 0x81,
    RAM + 0x100,
    RAM + 0x104,
    RAM + 0x200,
    RAM + 0x201,
    RAM + 0x3ff,
    RAM + 0x400,
    RAM + 0x401,
    RAM + 0x5ff,
    RAM + 0x600,
    RAM + 0x6ff,
    RAM + 0x700,
    RAM + 0x7ff,
    RAM + 0x800,
    RAM,
    RAM - 1,
    RAM + 0x11,
    RAM + 0x15,
    RAM + 0x19,
    0,
    0x9000,
    1 << 28,
    u64::MAX,
    u64::MAX >> 12,
    RAM + 0x66,
];

/// Guest frames: RAM at 0x8000_0000 (block edges), low memory, MMIO (the
/// GIC, the UART), the ends of 36/40/48-bit IPA spaces.
pub const GFNS: [u64; 24] = [
    0x80000,
    0x80001,
    0x80002,
    0x80003,
    0x80010,
    0x80200,
    0x80201,
    0x803ff,
    0x80400,
    0x80600,
    0x0,
    0x1,
    0x200,
    0x8000,
    0x80a0,
    0x9000,
    0xf_ffff,
    0xfff_fe00,
    0xfff_ffff,
    0x1000_0000,
    0xf_ffff_ffff,
    1 << 36,
    u64::MAX >> 12,
    u64::MAX,
];

/// Handles: the first VMs, the last slot, and values that are not.
pub const HANDLES: [u64; 10] = [
    H0,
    H0 + 1,
    H0,
    H0 + 2,
    H0 + 3,
    H0 + 254,
    H0 + 255,
    0,
    0xffff,
    0x1_0000,
];

/// vCPU indices.
pub const VCPUS: [u64; 8] = [0, 1, 0, 2, 3, 7, 8, u64::MAX];
/// vCPU counts for `VmCreate`.
pub const VCPU_COUNTS: [u64; 7] = [1, 2, 4, 3, 8, 0, 9];
/// Extents (1 and 512 are the valid ones).
pub const EXTENTS: [u64; 7] = [1, 512, 1, 0, 2, 511, 513];
/// IPA sizes.
pub const IPA_BITS: [u64; 10] = [40, 36, 32, 44, 48, 52, 31, 0, 255, 256];
/// Page counts for `MemcacheTopup`, `HypPoolDonate`, conversions.
pub const COUNTS: [u64; 10] = [1, 2, 4, 8, 16, 0, 511, 512, 513, u64::MAX];
/// Entry points, x0 values, MMIO data.
pub const VALUES: [u64; 8] = [
    0,
    1,
    0x8000_0000,
    0x1234_5678_9abc_def0,
    0xff,
    2,
    u64::MAX,
    1 << 63,
];
/// `VcpuRun` completion flags (1 values, 2 fail; others invalid).
pub const RUN_FLAGS: [u64; 5] = [0, 1, 2, 0, 3];
/// Conversion kinds (1 share, 0 unshare).
pub const KINDS: [u64; 3] = [1, 0, 2];
/// INTIDs for `IrqLine` (SPIs are 32..96).
pub const INTIDS: [u64; 9] = [32, 33, 48, 95, 96, 31, 27, 1023, 1 << 32];
/// Line levels.
pub const LEVELS: [u64; 3] = [1, 0, 2];
/// Byte offsets inside a page (`ForceReclaim` takes an address).
pub const OFFSETS: [u64; 4] = [0, 8, 0xfff, 0x1000];
/// Everything, for raw registers.
pub const ANY: [u64; 24] = [
    0,
    1,
    2,
    512,
    40,
    H0,
    H0 + 1,
    RAM + 0x10,
    RAM + 0x14,
    RAM + 0x60,
    RAM + 0x200,
    RAM + 0x700,
    0x80000,
    0x80200,
    0x8000_0000,
    0x4000_0000,
    0xC600_0000,
    0xC600_0009,
    0xC601_0003,
    0x8600_FF01,
    u64::MAX,
    1 << 63,
    0xffff_ffff,
    0x1_0000_0000,
];
/// Function ids for [`Step::Raw`]: every host call, the SVE hint, the
/// ends of the range, guest and firmware ids.
pub const IDS: [u64; 12] = [
    0xC600_0000,
    0xC600_0016,
    0xC600_0017,
    0xC601_0009,
    0xC6FF_0000,
    0xC5FF_FFFF,
    0x8600_FF01,
    0x8400_0000,
    0x1_C600_0000,
    0,
    u64::MAX,
    0xC600_0003,
];

/// The type of an argument, which decides its table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arg {
    /// A frame.
    Pfn,
    /// A guest frame.
    Gfn,
    /// A VM handle.
    Handle,
    /// A vCPU index.
    Vcpu,
    /// A vCPU count.
    VcpuCount,
    /// An extent.
    Extent,
    /// IPA bits.
    IpaBits,
    /// A page count.
    Count,
    /// An entry point, x0, data.
    Value,
    /// `VcpuRun` flags.
    RunFlags,
    /// A conversion kind.
    Kind,
    /// An INTID.
    Intid,
    /// A line level.
    Level,
    /// A physical address (a frame and an offset: two selectors).
    Addr,
    /// Anything.
    Any,
}

impl Arg {
    fn table(self) -> &'static [u64] {
        match self {
            Arg::Pfn => &PFNS,
            Arg::Gfn => &GFNS,
            Arg::Handle => &HANDLES,
            Arg::Vcpu => &VCPUS,
            Arg::VcpuCount => &VCPU_COUNTS,
            Arg::Extent => &EXTENTS,
            Arg::IpaBits => &IPA_BITS,
            Arg::Count => &COUNTS,
            Arg::Value => &VALUES,
            Arg::RunFlags => &RUN_FLAGS,
            Arg::Kind => &KINDS,
            Arg::Intid => &INTIDS,
            Arg::Level => &LEVELS,
            Arg::Addr | Arg::Any => &ANY,
        }
    }

    fn read(self, i: &mut Input<'_>) -> u64 {
        match self {
            Arg::Addr => {
                let pfn = i.value(&PFNS);
                pfn.wrapping_mul(4096).wrapping_add(i.value(&OFFSETS))
            }
            _ => i.value(self.table()),
        }
    }

    fn write(self, o: &mut Output, v: u64) {
        match self {
            Arg::Addr => {
                o.value(&PFNS, v / 4096).value(&OFFSETS, v % 4096);
            }
            _ => {
                o.value(self.table(), v);
            }
        }
    }
}

/// The arguments of a call, by type, in `x1`...
pub fn signature(call: HostCall) -> &'static [Arg] {
    use Arg::*;
    match call {
        HostCall::Version
        | HostCall::Finalize
        | HostCall::HostStats
        | HostCall::CheckInvariants => &[],
        HostCall::ShareHyp | HostCall::UnshareHyp | HostCall::PageState => &[Pfn],
        HostCall::ConvertRefuse | HostCall::TeardownStart | HostCall::TeardownFinish => &[Handle],
        HostCall::ForceReclaim => &[Addr],
        HostCall::GuestPageState => &[Handle, Gfn],
        HostCall::HypPoolDonate => &[Pfn, Count],
        HostCall::UnshareGuest | HostCall::Reclaim => &[Handle, Gfn, Extent],
        HostCall::MemcacheTopup => &[Handle, Pfn, Count],
        HostCall::IrqLine => &[Handle, Intid, Level],
        HostCall::VmCreate => &[IpaBits, Pfn, Pfn, VcpuCount],
        HostCall::VcpuInit => &[Handle, Vcpu, Value, Value],
        HostCall::ShareGuest | HostCall::DonateGuest => &[Handle, Pfn, Gfn, Extent],
        HostCall::ConvertComplete => &[Handle, Gfn, Count, Kind],
        HostCall::VcpuRun => &[Handle, Vcpu, RunFlags, Value, Value],
    }
}

/// How a typed call is altered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// As the ABI says.
    Plain,
    /// With the SVE hint bit (bit 16) in the function id.
    SveHint,
    /// With register `x[1 + arity + (n % (5 - arity))]` set to `value`
    /// (nothing if the call takes five arguments).
    Extra(u8, u64),
}

/// One step of an input.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// A host call with typed arguments.
    Call(HostCall, Variant, Vec<u64>),
    /// `x0`..`x5` as given.
    Raw([u64; 6]),
    /// Create VM slot `slot` ([`VM_SLOTS`]) with `vcpus` vCPUs: its
    /// memcache topped up with 8 pages, every vCPU started at entry 0.
    QuickVm {
        /// Slot.
        slot: u8,
        /// vCPUs (1..=8).
        vcpus: u8,
    },
    /// Give vCPU `vcpu` of VM `H0 + vm` canned script `script`.
    Script {
        /// VM (0..4).
        vm: u8,
        /// vCPU.
        vcpu: u8,
        /// Script ([`canned_script`]).
        script: u8,
    },
}

/// Opcodes: `0..230` a typed call (`op % 23` the call, `op / 23` the
/// variant: 0–7 plain, 8 SVE hint, 9 extra register).
const OP_RAW: u8 = 230;
const OP_QUICK_VM: u8 = 240;
const OP_SCRIPT: u8 = 248;

impl Step {
    /// Reads one step.
    pub fn read(i: &mut Input<'_>) -> Step {
        let op = i.byte();
        match op {
            0..OP_RAW => {
                let call = HostCall::ALL[op as usize % 23];
                let variant = match op / 23 {
                    8 => Variant::SveHint,
                    9 => Variant::Extra(i.byte(), i.value(&ANY)),
                    _ => Variant::Plain,
                };
                let args = signature(call).iter().map(|a| a.read(i)).collect();
                Step::Call(call, variant, args)
            }
            OP_RAW..OP_QUICK_VM => {
                let mut x = [0u64; 6];
                x[0] = i.value(&IDS);
                for v in &mut x[1..] {
                    *v = i.value(&ANY);
                }
                Step::Raw(x)
            }
            OP_QUICK_VM..OP_SCRIPT => Step::QuickVm {
                slot: op - OP_QUICK_VM,
                vcpus: i.byte(),
            },
            OP_SCRIPT..=255 => Step::Script {
                vm: op - OP_SCRIPT,
                vcpu: i.byte(),
                script: i.byte(),
            },
        }
    }

    /// Writes the step so that [`Step::read`] reads it back.
    pub fn write(&self, o: &mut Output) {
        match self {
            Step::Call(call, variant, args) => {
                let n = *call as u8;
                match variant {
                    Variant::Plain => o.byte(n),
                    Variant::SveHint => o.byte(8 * 23 + n),
                    Variant::Extra(k, v) => o.byte(9 * 23 + n).byte(*k).value(&ANY, *v),
                };
                for (a, v) in signature(*call).iter().zip(args) {
                    a.write(o, *v);
                }
            }
            Step::Raw(x) => {
                o.byte(OP_RAW).value(&IDS, x[0]);
                for v in &x[1..] {
                    o.value(&ANY, *v);
                }
            }
            Step::QuickVm { slot, vcpus } => {
                o.byte(OP_QUICK_VM + slot % 8).byte(*vcpus);
            }
            Step::Script { vm, vcpu, script } => {
                o.byte(OP_SCRIPT + vm % 8).byte(*vcpu).byte(*script);
            }
        }
    }
}

/// Reads a whole input.
pub fn decode(data: &[u8]) -> Vec<Step> {
    let mut i = Input::new(data);
    let mut steps = Vec::new();
    while !i.is_empty() && steps.len() < MAX_STEPS {
        steps.push(Step::read(&mut i));
    }
    steps
}

/// Writes steps as an input.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut o = Output::new();
    for s in steps {
        s.write(&mut o);
    }
    o.finish()
}

fn hvc(call: GuestCall, args: [u64; 3]) -> GuestOp {
    GuestOp::Hvc {
        id: call.id(),
        args,
    }
}

/// The canned guest scripts (`n % 6`): memory, conversions, MMIO and the
/// virtual GIC, PSCI, relinquish, and a trap nobody handles.
pub fn canned_script(n: u8) -> Vec<GuestOp> {
    const G: u64 = 0x8000_0000;
    const BLOCK: u64 = 0x8020_0000;
    const UART: u64 = 0x0900_0000;
    const GICD: u64 = 0x0800_0000;
    const GICR: u64 = 0x080a_0000;
    match n % 6 {
        0 => vec![
            GuestOp::Fill { ipa: G, byte: 0xa5 },
            GuestOp::Load { ipa: G + 8 },
            hvc(GuestCall::MemShare, [G, 1, 0]),
            GuestOp::Store {
                ipa: G + 16,
                value: 7,
            },
            hvc(GuestCall::MemUnshare, [G, 1, 0]),
            GuestOp::Store32 {
                ipa: UART,
                value: 0x41,
            },
            GuestOp::Fill {
                ipa: BLOCK + 0x1000,
                byte: 0x3c,
            },
            hvc(GuestCall::MemShare, [BLOCK, 2, 0]),
            hvc(GuestCall::MemRelinquish, [G + 0x1000, 1, 0]),
            GuestOp::Wfi,
        ],
        1 => vec![
            GuestOp::Hvc {
                id: 0xC400_0003,
                args: [1, 0x8000_0000, 0x77],
            },
            GuestOp::Hvc {
                id: 0x8400_0004,
                args: [1, 0, 0],
            },
            GuestOp::Store32 {
                ipa: GICD,
                value: 0x12,
            },
            GuestOp::Store32 {
                ipa: GICD + 0x104,
                value: 0xffff_ffff,
            },
            GuestOp::Store32 {
                ipa: GICR + 0x1_0100,
                value: 0xffff,
            },
            GuestOp::Sgi {
                value: 1 | (1 << 24),
            },
            GuestOp::Load { ipa: GICR + 8 },
            GuestOp::Wfi,
            GuestOp::Hvc {
                id: 0x8400_0002,
                args: [0; 3],
            },
        ],
        2 => vec![
            hvc(GuestCall::MmioGuard, [UART, 0, 0]),
            GuestOp::Store32 {
                ipa: UART,
                value: 0x42,
            },
            GuestOp::Store32 {
                ipa: UART + 0x1000,
                value: 0x43,
            },
            hvc(GuestCall::HypMeminfo, [0; 3]),
            hvc(GuestCall::CallUid, [0; 3]),
            hvc(GuestCall::Features, [0; 3]),
            hvc(GuestCall::MemShare, [G + 0x2000, 513, 0]),
            hvc(GuestCall::MemUnshare, [G + 0x2000, 0, 0]),
        ],
        3 => vec![
            GuestOp::Fill {
                ipa: BLOCK,
                byte: 0x11,
            },
            GuestOp::Fill {
                ipa: BLOCK + 0x1f_f000,
                byte: 0x22,
            },
            hvc(GuestCall::MemRelinquish, [BLOCK, 512, 0]),
            GuestOp::Load { ipa: BLOCK },
            hvc(GuestCall::MemShare, [BLOCK + 0x1000, 1, 0]),
            GuestOp::Hvc {
                id: 0x8400_0009,
                args: [0; 3],
            },
        ],
        4 => vec![
            GuestOp::Smc {
                id: 0x8000_0000,
                args: [0; 3],
            },
            GuestOp::Smc {
                id: 0x8400_000a,
                args: [0xC400_0003, 0, 0],
            },
            GuestOp::Hvc {
                id: 0x8400_0001,
                args: [0; 3],
            },
            GuestOp::Hvc {
                id: 0xC400_0012,
                args: [1, 0, 0],
            },
            GuestOp::Hvc {
                id: 0x8400_0012,
                args: [0x8000_0000, 0, 0],
            },
        ],
        _ => vec![
            GuestOp::Store {
                ipa: G + 0x3000,
                value: u64::MAX,
            },
            GuestOp::Undefined { esr: 0x18 << 26 },
            GuestOp::Load { ipa: G },
        ],
    }
}

/// Runs one step.
fn apply(sim: &mut Sim, step: &Step) {
    match step {
        Step::Call(call, variant, args) => {
            let mut x = [0u64; 6];
            x[0] = call.id();
            for (d, a) in x[1..].iter_mut().zip(args) {
                *d = *a;
            }
            let arity = signature(*call).len();
            match *variant {
                Variant::Plain => {}
                Variant::SveHint => x[0] |= SMCCC_SVE_HINT,
                Variant::Extra(k, v) => {
                    if arity < 5 {
                        x[1 + arity + k as usize % (5 - arity)] = v;
                    }
                }
            }
            raw_call(sim, x);
        }
        Step::Raw(x) => {
            raw_call(sim, *x);
        }
        Step::QuickVm { slot, vcpus } => {
            let (pgd, meta, mc) = VM_SLOTS[*slot as usize % VM_SLOTS.len()];
            let vcpus = u64::from(vcpus % 8 + 1);
            let r = raw_call(sim, regs(HostCall::VmCreate, &[40, pgd, meta, vcpus]));
            if r.is_ok() {
                let h = r.vals[0];
                sim.call(HostCall::MemcacheTopup, &[h, mc, 8]);
                for v in 0..vcpus {
                    sim.call(HostCall::VcpuInit, &[h, v, 0, v]);
                }
            }
        }
        Step::Script { vm, vcpu, script } => {
            let h = ownership::GuestHandle((H0 + u64::from(vm % 4)) as u16);
            sim.m
                .arch
                .script(h, usize::from(vcpu % 8), canned_script(*script));
        }
    }
}

fn regs(call: HostCall, args: &[u64]) -> [u64; 6] {
    let mut x = [0u64; 6];
    x[0] = call.id();
    x[1..1 + args.len()].copy_from_slice(args);
    x
}

/// A raw call; a VM it creates gets canned script 0 on every vCPU. A
/// `VcpuInit` entry point is clamped to [`crate::guest_ops::MAX_ENTRY`]
/// (the simulated CPU's limit).
fn raw_call(sim: &mut Sim, mut x: [u64; 6]) -> el2::sim::Reply {
    if HostCall::from_id(x[0]) == Some(HostCall::VcpuInit) {
        x[3] = x[3].min(crate::guest_ops::MAX_ENTRY);
    }
    let r = sim.raw(x);
    if r.is_ok() && HostCall::from_id(x[0]) == Some(HostCall::VmCreate) {
        let h = ownership::GuestHandle(r.vals[0] as u16);
        for v in 0..8 {
            sim.m.arch.script(h, v, canned_script(0));
        }
    }
    r
}

/// The target: runs every step of `data`, checking after each, then tears
/// down and accounts for every page.
pub fn run(data: &[u8]) {
    let mut sim = Sim::new();
    for step in decode(data) {
        apply(&mut sim, &step);
        sim.check();
    }
    sim.finish();
}

/// Hand-made seeds: deep states a random input would take long to reach.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use HostCall::*;
    let call = |c: HostCall, args: &[u64]| Step::Call(c, Variant::Plain, args.to_vec());
    let run = |h: u64, v: u64| call(VcpuRun, &[h, v, 0, 0, 0]);
    let vm0 = || Step::QuickVm { slot: 0, vcpus: 1 };
    let donate = |pfn: u64, gfn: u64, n: u64| call(DonateGuest, &[H0, pfn, gfn, n]);
    let share = |pfn: u64, gfn: u64, n: u64| call(ShareGuest, &[H0, pfn, gfn, n]);
    let teardown = |h: u64| [call(TeardownStart, &[h]), call(Reclaim, &[h, 0x80000, 1])];
    let mut seeds = vec![
        (
            "calls",
            encode(&[
                call(Version, &[]),
                call(HostStats, &[]),
                call(PageState, &[RAM + 0x10]),
                call(ShareHyp, &[RAM + 0x80]),
                call(PageState, &[RAM + 0x80]),
                call(UnshareHyp, &[RAM + 0x80]),
                call(HypPoolDonate, &[RAM + 0x100, 4]),
                call(Finalize, &[]),
                call(HypPoolDonate, &[RAM + 0x104, 1]),
                call(CheckInvariants, &[]),
                Step::Call(Version, Variant::SveHint, vec![]),
                Step::Call(PageState, Variant::Extra(2, 1), vec![RAM]),
                Step::Raw([0xC600_0017, 0, 0, 0, 0, 0]),
            ]),
        ),
        (
            "vm-run",
            encode(&[
                vm0(),
                donate(RAM + 0x60, 0x80000, 1),
                donate(RAM + 0x61, 0x80001, 1),
                share(RAM + 0x62, 0x80002, 1),
                run(H0, 0),
                run(H0, 0),
                call(ConvertComplete, &[H0, 0x80000, 1, 1]),
                run(H0, 0),
                run(H0, 0),
                call(ConvertComplete, &[H0, 0x80000, 1, 0]),
                run(H0, 0),
                call(VcpuRun, &[H0, 0, 1, 0x41, 0]),
                run(H0, 0),
                call(GuestPageState, &[H0, 0x80000]),
                call(UnshareGuest, &[H0, 0x80002, 1]),
            ]),
        ),
        (
            "vm-block",
            encode(&[
                vm0(),
                donate(RAM + 0x200, 0x80200, 512),
                share(RAM + 0x400, 0x80400, 512),
                Step::Script {
                    vm: 0,
                    vcpu: 0,
                    script: 3,
                },
                run(H0, 0),
                run(H0, 0),
                call(ConvertRefuse, &[H0]),
                run(H0, 0),
                call(UnshareGuest, &[H0, 0x80400, 512]),
                call(ForceReclaim, &[(RAM + 0x205) * 4096]),
                call(GuestPageState, &[H0, 0x80205]),
            ]),
        ),
        (
            "vm-psci",
            encode(&[
                Step::QuickVm { slot: 1, vcpus: 2 },
                donate(RAM + 0x60, 0x80000, 1),
                Step::Script {
                    vm: 0,
                    vcpu: 0,
                    script: 1,
                },
                run(H0, 0),
                call(VcpuRun, &[H0, 0, 1, 0, 0]),
                run(H0, 1),
                call(IrqLine, &[H0, 33, 1]),
                run(H0, 0),
                run(H0, 0),
                run(H0, 1),
                call(IrqLine, &[H0, 33, 0]),
            ]),
        ),
        (
            "vm-guard",
            encode(&[
                vm0(),
                donate(RAM + 0x60, 0x80000, 1),
                Step::Script {
                    vm: 0,
                    vcpu: 0,
                    script: 2,
                },
                run(H0, 0),
                run(H0, 0),
                call(VcpuRun, &[H0, 0, 1, 0, 0]),
                run(H0, 0),
                call(VcpuRun, &[H0, 0, 2, 0, 0]),
                run(H0, 0),
                run(H0, 0),
            ]),
        ),
        (
            "vm-teardown",
            encode(&[
                vm0(),
                Step::QuickVm { slot: 1, vcpus: 1 },
                donate(RAM + 0x60, 0x80000, 1),
                share(RAM + 0x61, 0x80001, 1),
                call(DonateGuest, &[H0 + 1, RAM + 0x62, 0x80000, 1]),
                call(ShareGuest, &[H0 + 1, RAM + 0x61, 0x80001, 1]),
                run(H0, 0),
                teardown(H0)[0].clone(),
                teardown(H0)[1].clone(),
                call(Reclaim, &[H0, 0x80001, 1]),
                call(TeardownFinish, &[H0]),
                call(TeardownFinish, &[H0 + 1]),
                vm0(),
                run(H0, 0),
            ]),
        ),
    ];
    // One seed per call with its first table entries, so every decode arm
    // is in the corpus.
    for c in HostCall::ALL {
        let args: Vec<u64> = signature(c).iter().map(|a| a.table()[0]).collect();
        let mut steps = vec![vm0(), donate(RAM + 0x60, 0x80000, 1)];
        steps.push(Step::Call(c, Variant::Plain, args));
        seeds.push((call_name(c), encode(&steps)));
    }
    seeds
}

fn call_name(c: HostCall) -> &'static str {
    use HostCall::*;
    match c {
        Version => "call-version",
        ShareHyp => "call-share-hyp",
        UnshareHyp => "call-unshare-hyp",
        VmCreate => "call-vm-create",
        VcpuInit => "call-vcpu-init",
        MemcacheTopup => "call-memcache-topup",
        ShareGuest => "call-share-guest",
        UnshareGuest => "call-unshare-guest",
        DonateGuest => "call-donate-guest",
        VcpuRun => "call-vcpu-run",
        ConvertComplete => "call-convert-complete",
        ConvertRefuse => "call-convert-refuse",
        Reclaim => "call-reclaim",
        ForceReclaim => "call-force-reclaim",
        TeardownStart => "call-teardown-start",
        TeardownFinish => "call-teardown-finish",
        PageState => "call-page-state",
        GuestPageState => "call-guest-page-state",
        Finalize => "call-finalize",
        HypPoolDonate => "call-hyp-pool-donate",
        HostStats => "call-host-stats",
        IrqLine => "call-irq-line",
        CheckInvariants => "call-check-invariants",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip() {
        for (name, bytes) in seeds() {
            let steps = decode(&bytes);
            assert_eq!(encode(&steps), bytes, "{name}");
        }
    }
}
