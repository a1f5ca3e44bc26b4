//! Target `guest_call`: the guest call handler and everything a vCPU run
//! does at EL2 (`el2::hyp::guest_call`: SMCCC, PSCI, the conversion
//! protocol, MEM_RELINQUISH, MMIO_GUARD, the virtual GIC's registers and
//! SGIs, stage-2 faults, traps nobody handles), driven through `VcpuRun`
//! with arbitrary completions, on the simulated machine.
//!
//! Every input starts from a VM that already runs: 1–4 vCPUs (vCPU 0
//! started), a memcache of 16 pages, guest RAM at 0x8000_0000 (four
//! donated pages, two lent pages, and by the first byte's bits a donated
//! and a lent 2 MiB block). Then the input's [`Step`]s (at most
//! [`MAX_STEPS`]): give a vCPU a script of arbitrary guest ops (any
//! function id and registers, loads and stores anywhere, WFI, SGIs,
//! unhandled traps; see [`crate::guest_ops`]), run it with any completion
//! (none, values, fail, invalid), serve its exits as a host would (by a
//! policy byte), map or unmap memory, complete or refuse conversions
//! (possibly altered), top the memcache up, drive SPI lines and the timer,
//! force-reclaim pages, start vCPUs, start the teardown.
//!
//! After every step the oracle of [`crate::machine`] runs; at the end the
//! VM is torn down and every page accounted for.

use crate::guest_ops;
use crate::host_call::{INTIDS, LEVELS, OFFSETS, RUN_FLAGS, VALUES};
use crate::input::{Input, Output};
use crate::machine::{RAM, Sim};
use el2::sim::GuestOp;
use host_interface::abi::{Exit, GuestState, HostCall};
use std::vec::Vec;

/// Most steps read from one input.
pub const MAX_STEPS: usize = 40;

/// The VM's handle.
const H: u64 = 0x1000;
/// Guest RAM: where the guest's memory is mapped, 8 MiB.
const GUEST_RAM: u64 = 0x8_0000;
const GUEST_RAM_END: u64 = GUEST_RAM + 0x800;

/// Guest frames the host maps at: RAM pages, blocks, outside RAM.
pub const GFNS: [u64; 14] = [
    0x80000,
    0x80001,
    0x80002,
    0x80003,
    0x80004,
    0x80010,
    0x80200,
    0x80201,
    0x80400,
    0x80600,
    0x807ff,
    0x9000,
    0x8000,
    0x1000_0000,
];

/// One step of an input.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// vCPU `vcpu % 8` runs `ops` from its current PC.
    Script {
        /// vCPU.
        vcpu: u8,
        /// Ops.
        ops: Vec<GuestOp>,
    },
    /// One `VcpuRun` with completion `flags` and values.
    Run {
        /// vCPU index (`% 8`).
        vcpu: u8,
        /// x3.
        flags: u64,
        /// x4.
        v0: u64,
        /// x5.
        v1: u64,
    },
    /// Up to six runs, each exit answered as `policy` says.
    Serve {
        /// vCPU.
        vcpu: u8,
        /// Bit 0: complete conversions (else refuse); bit 1: map memory at
        /// a fault in guest RAM; bit 2: lend it (else donate); bit 3:
        /// start vCPUs the guest asks for (else refuse with -2); bits 4–7:
        /// the value an emulated read loads.
        policy: u8,
    },
    /// Maps (0 donate, 1 lend) or unmaps (2) `extent` pages at `gfn`.
    Map {
        /// 0, 1, 2.
        kind: u8,
        /// Guest frame.
        gfn: u64,
        /// 1 or 512 (or not).
        extent: u64,
    },
    /// Completes (`complete`) or refuses the pending conversion; `alter`
    /// changes the gfn (bit 0), the pages (bit 1) or the kind (bit 2) of
    /// what the host completes.
    Convert {
        /// Complete, else refuse.
        complete: bool,
        /// Alterations.
        alter: u8,
    },
    /// Tops the memcache up with `pages % 8 + 1` pages.
    Topup {
        /// Pages.
        pages: u8,
    },
    /// Sets an SPI line.
    Irq {
        /// INTID.
        intid: u64,
        /// Level.
        level: u64,
    },
    /// Flips the virtual timer's output.
    Timer,
    /// Force-reclaims the frame behind `gfn`, at byte `offset`.
    ForceReclaim {
        /// Guest frame.
        gfn: u64,
        /// Byte offset.
        offset: u64,
    },
    /// `VcpuInit`.
    Init {
        /// vCPU.
        vcpu: u8,
        /// Entry.
        entry: u64,
        /// x0.
        x0: u64,
    },
    /// `TeardownStart`: the VM dies (later runs fail).
    Teardown,
}

impl Step {
    /// Reads one step.
    pub fn read(i: &mut Input<'_>) -> Step {
        match i.byte() % 16 {
            0..=3 => Step::Script {
                vcpu: i.byte(),
                ops: guest_ops::read_script(i),
            },
            4 | 5 => Step::Run {
                vcpu: i.byte(),
                flags: i.value(&RUN_FLAGS),
                v0: i.value(&VALUES),
                v1: i.value(&VALUES),
            },
            6..=8 => Step::Serve {
                vcpu: i.byte(),
                policy: i.byte(),
            },
            9 => Step::Map {
                kind: i.byte(),
                gfn: i.value(&GFNS),
                extent: i.value(&[1, 512, 2]),
            },
            10 => Step::Convert {
                complete: i.bool(),
                alter: i.byte(),
            },
            11 => Step::Topup { pages: i.byte() },
            12 => Step::Irq {
                intid: i.value(&INTIDS),
                level: i.value(&LEVELS),
            },
            13 => match i.byte() % 4 {
                0 => Step::Timer,
                1 => Step::Teardown,
                _ => Step::ForceReclaim {
                    gfn: i.value(&GFNS),
                    offset: i.value(&OFFSETS),
                },
            },
            _ => Step::Init {
                vcpu: i.byte(),
                entry: i.value(&VALUES),
                x0: i.value(&VALUES),
            },
        }
    }

    /// Writes the step as [`Step::read`] reads it.
    pub fn write(&self, o: &mut Output) {
        match self {
            Step::Script { vcpu, ops } => {
                o.byte(0).byte(*vcpu);
                guest_ops::write_script(o, ops);
            }
            Step::Run {
                vcpu,
                flags,
                v0,
                v1,
            } => {
                o.byte(4)
                    .byte(*vcpu)
                    .value(&RUN_FLAGS, *flags)
                    .value(&VALUES, *v0)
                    .value(&VALUES, *v1);
            }
            Step::Serve { vcpu, policy } => {
                o.byte(6).byte(*vcpu).byte(*policy);
            }
            Step::Map { kind, gfn, extent } => {
                o.byte(9)
                    .byte(*kind)
                    .value(&GFNS, *gfn)
                    .value(&[1, 512, 2], *extent);
            }
            Step::Convert { complete, alter } => {
                o.byte(10).bool(*complete).byte(*alter);
            }
            Step::Topup { pages } => {
                o.byte(11).byte(*pages);
            }
            Step::Irq { intid, level } => {
                o.byte(12).value(&INTIDS, *intid).value(&LEVELS, *level);
            }
            Step::Timer => {
                o.byte(13).byte(0);
            }
            Step::Teardown => {
                o.byte(13).byte(1);
            }
            Step::ForceReclaim { gfn, offset } => {
                o.byte(13)
                    .byte(2)
                    .value(&GFNS, *gfn)
                    .value(&OFFSETS, *offset);
            }
            Step::Init { vcpu, entry, x0 } => {
                o.byte(14)
                    .byte(*vcpu)
                    .value(&VALUES, *entry)
                    .value(&VALUES, *x0);
            }
        }
    }
}

/// The set-up byte: bits 0–1 vCPUs - 1; bit 2 donate a 2 MiB block at
/// 0x8020_0000; bit 3 lend a 2 MiB block at 0x8040_0000; bit 4 the timer
/// line starts high.
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

/// A page the host can give: single pages come from RAM + 0x60..0x200
/// and RAM + 0x600.., blocks from the two 2 MiB blocks.
fn free_page(sim: &Sim, extent: u64) -> u64 {
    if extent == 512 {
        for b in [RAM + 0x200, RAM + 0x400] {
            if (b..b + 512).all(|p| sim.host_free(p)) {
                return b;
            }
        }
        return RAM + 0x200;
    }
    (RAM + 0x60..RAM + 0x200)
        .chain(RAM + 0x600..RAM + 0x700)
        .find(|p| sim.host_free(*p))
        .unwrap_or(RAM + 0x60)
}

fn setup(sim: &mut Sim, s: Setup) {
    let vcpus = u64::from(s.0 & 3) + 1;
    let r = sim.call(HostCall::VmCreate, &[40, RAM + 0x10, RAM + 0x14, vcpus]);
    assert!(r.is_ok() && r.vals[0] == H, "VmCreate: {r:?}");
    assert!(
        sim.call(HostCall::MemcacheTopup, &[H, RAM + 0x20, 16])
            .is_ok()
    );
    for i in 0..4 {
        assert!(
            sim.call(
                HostCall::DonateGuest,
                &[H, RAM + 0x60 + i, GUEST_RAM + i, 1]
            )
            .is_ok()
        );
    }
    for i in 0..2 {
        assert!(
            sim.call(
                HostCall::ShareGuest,
                &[H, RAM + 0x64 + i, GUEST_RAM + 0x10 + i, 1]
            )
            .is_ok()
        );
    }
    if s.0 & 4 != 0 {
        assert!(
            sim.call(
                HostCall::DonateGuest,
                &[H, RAM + 0x200, GUEST_RAM + 0x200, 512]
            )
            .is_ok()
        );
    }
    if s.0 & 8 != 0 {
        assert!(
            sim.call(
                HostCall::ShareGuest,
                &[H, RAM + 0x400, GUEST_RAM + 0x400, 512]
            )
            .is_ok()
        );
    }
    sim.m.arch.timer = s.0 & 16 != 0;
    assert!(sim.call(HostCall::VcpuInit, &[H, 0, 0, 0]).is_ok());
}

fn handle() -> ownership::GuestHandle {
    ownership::GuestHandle(H as u16)
}

/// Maps a page (or block) of the host's at `gfn` (`lend` or donate).
fn map(sim: &mut Sim, gfn: u64, extent: u64, lend: bool) {
    let pfn = free_page(sim, extent);
    let call = if lend {
        HostCall::ShareGuest
    } else {
        HostCall::DonateGuest
    };
    sim.call(call, &[H, pfn, gfn, extent]);
}

fn serve(sim: &mut Sim, vcpu: u64, policy: u8) {
    let mut complete = [0u64; 3];
    for _ in 0..6 {
        let r = sim.call(
            HostCall::VcpuRun,
            &[H, vcpu, complete[0], complete[1], complete[2]],
        );
        complete = [0; 3];
        let Some(exit) = r.exit() else {
            return;
        };
        match exit {
            Exit::MemoryFault { gpa, size, flags } => {
                if policy & 1 != 0 {
                    let kind = u64::from(flags == 0);
                    sim.call(
                        HostCall::ConvertComplete,
                        &[H, gpa / 4096, size / 4096, kind],
                    );
                } else {
                    sim.call(HostCall::ConvertRefuse, &[H]);
                }
            }
            Exit::Stage2Fault { gpa, isv, hvc, .. } => {
                let gfn = gpa / 4096;
                if policy & 2 != 0 && (GUEST_RAM..GUEST_RAM_END).contains(&gfn) {
                    map(sim, gfn, 1, policy & 4 != 0);
                } else if isv {
                    complete = [1, u64::from(policy >> 4) * 0x1111_1111, 0];
                } else if hvc {
                    complete = [2, 0, 0];
                } else {
                    return;
                }
            }
            Exit::Hypercall { .. } => {
                let x0 = if policy & 8 != 0 { 0 } else { (-2i64) as u64 };
                complete = [1, x0, 0];
            }
            Exit::MemcacheEmpty { pages } => {
                for _ in 0..pages.min(16) {
                    let pfn = free_page(sim, 1);
                    sim.call(HostCall::MemcacheTopup, &[H, pfn, 1]);
                }
            }
            Exit::Relinquished { .. } | Exit::Wfi | Exit::Interrupted => {}
            Exit::SystemEvent { .. } | Exit::PoweredOff | Exit::Stopped { .. } => return,
        }
    }
}

fn apply(sim: &mut Sim, step: &Step) {
    match step {
        Step::Script { vcpu, ops } => {
            sim.m
                .arch
                .script(handle(), usize::from(vcpu % 8), guest_ops::sim_safe(ops));
        }
        Step::Run {
            vcpu,
            flags,
            v0,
            v1,
        } => {
            sim.call(
                HostCall::VcpuRun,
                &[H, u64::from(vcpu % 8), *flags, *v0, *v1],
            );
        }
        Step::Serve { vcpu, policy } => serve(sim, u64::from(vcpu % 8), *policy),
        Step::Map { kind, gfn, extent } => match kind % 3 {
            0 => map(sim, *gfn, *extent, false),
            1 => map(sim, *gfn, *extent, true),
            _ => {
                sim.call(HostCall::UnshareGuest, &[H, *gfn, *extent]);
            }
        },
        Step::Convert { complete, alter } => {
            let pending = sim.m.hyp.mem.with_guest(handle(), |g| g.pending());
            match (complete, pending) {
                (true, Ok(Some(c))) => {
                    let gfn = c.gfn.0 + u64::from(alter & 1);
                    let pages = c.pages + u64::from(alter >> 1 & 1);
                    let share = u64::from(c.kind == ownership::ConversionKind::Share);
                    let kind = share ^ u64::from(alter >> 2 & 1);
                    sim.call(HostCall::ConvertComplete, &[H, gfn, pages, kind]);
                }
                (true, _) => {
                    sim.call(HostCall::ConvertComplete, &[H, GUEST_RAM, 1, 1]);
                }
                (false, _) => {
                    sim.call(HostCall::ConvertRefuse, &[H]);
                }
            }
        }
        Step::Topup { pages } => {
            for _ in 0..pages % 8 + 1 {
                let pfn = free_page(sim, 1);
                sim.call(HostCall::MemcacheTopup, &[H, pfn, 1]);
            }
        }
        Step::Irq { intid, level } => {
            sim.call(HostCall::IrqLine, &[H, *intid, *level]);
        }
        Step::Timer => sim.m.arch.timer = !sim.m.arch.timer,
        Step::ForceReclaim { gfn, offset } => {
            if let Some((state, pfn)) = sim.guest_state(H, *gfn)
                && state != GuestState::NoPage
                && pfn != u64::MAX
            {
                // Any offset, as a host could pass: the address may wrap.
                sim.call(
                    HostCall::ForceReclaim,
                    &[(pfn * 4096).wrapping_add(*offset)],
                );
            }
        }
        Step::Init { vcpu, entry, x0 } => {
            let entry = (*entry).min(guest_ops::MAX_ENTRY);
            sim.call(HostCall::VcpuInit, &[H, u64::from(vcpu % 8), entry, *x0]);
        }
        Step::Teardown => {
            sim.call(HostCall::TeardownStart, &[H]);
        }
    }
}

/// The target: set-up, every step checked, teardown and accounting.
pub fn run(data: &[u8]) {
    let (s, steps) = decode(data);
    let mut sim = Sim::new();
    setup(&mut sim, s);
    sim.check();
    for step in &steps {
        apply(&mut sim, step);
        sim.check();
    }
    sim.finish();
}

fn hvc(id: u64, args: [u64; 3]) -> GuestOp {
    GuestOp::Hvc { id, args }
}

/// Hand-made seeds.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const G: u64 = 0x8000_0000;
    let script = |vcpu: u8, ops: Vec<GuestOp>| Step::Script { vcpu, ops };
    let serve = |vcpu: u8, policy: u8| Step::Serve { vcpu, policy };
    let run = |vcpu: u8, flags: u64, v0: u64| Step::Run {
        vcpu,
        flags,
        v0,
        v1: 0,
    };
    vec![
        (
            "share-unshare",
            encode(
                Setup(0),
                &[
                    script(
                        0,
                        vec![
                            GuestOp::Fill { ipa: G, byte: 0x5a },
                            hvc(0xC600_0003, [G, 1, 0]),
                            GuestOp::Load { ipa: G },
                            hvc(0xC600_0004, [G, 1, 0]),
                            hvc(0xC600_0003, [G + 0x1000, 3, 0]),
                            hvc(0xC600_0009, [G + 0x2000, 1, 0]),
                        ],
                    ),
                    run(0, 0, 0),
                    Step::Convert {
                        complete: true,
                        alter: 0,
                    },
                    run(0, 0, 0),
                    run(0, 0, 0),
                    Step::Convert {
                        complete: false,
                        alter: 0,
                    },
                    serve(0, 0x03),
                    serve(0, 0x01),
                ],
            ),
        ),
        (
            "faults-mmio",
            encode(
                Setup(4),
                &[
                    script(
                        0,
                        vec![
                            GuestOp::Load { ipa: G + 0x3000 },
                            GuestOp::Store32 {
                                ipa: 0x0900_0000,
                                value: 0x41,
                            },
                            GuestOp::Load { ipa: 0x0900_0018 },
                            hvc(0xC600_0007, [0x0900_0000, 0, 0]),
                            GuestOp::Store {
                                ipa: 0x4000_0000,
                                value: 1,
                            },
                            GuestOp::Fill {
                                ipa: 0x8060_0000,
                                byte: 1,
                            },
                            hvc(0xC600_0003, [0x8060_0000, 1, 0]),
                        ],
                    ),
                    serve(0, 0x06),
                    run(0, 1, 0xabcd),
                    run(0, 0, 0),
                    run(0, 1, 7),
                    run(0, 2, 0),
                    serve(0, 0xf2),
                    Step::ForceReclaim {
                        gfn: 0x80201,
                        offset: 0,
                    },
                    serve(0, 0x07),
                ],
            ),
        ),
        (
            "psci-smp",
            encode(
                Setup(3),
                &[
                    script(
                        0,
                        vec![
                            hvc(0xC400_0003, [1, G, 0x77]),
                            hvc(0x8400_0004, [1, 0, 0]),
                            hvc(0xC400_0003, [2, G, 0x78]),
                            hvc(0x8400_000a, [0xC400_0003, 0, 0]),
                            hvc(0x8000_0001, [0x8000_0001, 0, 0]),
                            hvc(0x8400_0001, [0, 0, 0]),
                            hvc(0x8400_0002, [0, 0, 0]),
                        ],
                    ),
                    script(
                        1,
                        vec![
                            hvc(0x8400_0000, [0; 3]),
                            GuestOp::Wfi,
                            hvc(0x8400_0008, [0; 3]),
                        ],
                    ),
                    run(0, 0, 0),
                    run(0, 1, 0),
                    run(1, 0, 0),
                    run(0, 0, 0),
                    run(0, 1, (-2i64) as u64),
                    serve(0, 0x08),
                    serve(1, 0),
                    run(2, 0, 0),
                ],
            ),
        ),
        (
            "vgic",
            encode(
                Setup(1 | 16),
                &[
                    script(
                        0,
                        vec![
                            GuestOp::Store32 {
                                ipa: 0x0800_0000,
                                value: 0x12,
                            },
                            GuestOp::Store32 {
                                ipa: 0x0800_0104,
                                value: 0xffff_ffff,
                            },
                            GuestOp::Store32 {
                                ipa: 0x080a_0000 + 0x1_0100,
                                value: 0xffff_ffff,
                            },
                            GuestOp::Load {
                                ipa: 0x080a_0000 + 8,
                            },
                            GuestOp::Sgi {
                                value: (1 << 24) | 1,
                            },
                            GuestOp::Sgi { value: 1 << 40 },
                            GuestOp::Wfi,
                            GuestOp::Load {
                                ipa: 0x0800_0000 + 0xffe8,
                            },
                        ],
                    ),
                    Step::Irq {
                        intid: 33,
                        level: 1,
                    },
                    serve(0, 0),
                    Step::Timer,
                    serve(0, 0),
                    Step::Irq {
                        intid: 33,
                        level: 0,
                    },
                    run(0, 0, 0),
                ],
            ),
        ),
        (
            "relinquish-teardown",
            encode(
                Setup(4 | 8),
                &[
                    script(
                        0,
                        vec![
                            GuestOp::Fill {
                                ipa: 0x8020_0000,
                                byte: 0x77,
                            },
                            hvc(0xC600_0009, [0x8020_0000, 513, 0]),
                            hvc(0xC600_0009, [0x8040_0000, 1, 0]),
                            GuestOp::Load { ipa: 0x8040_1000 },
                            hvc(0xC600_0003, [0x8020_1000, 2, 0]),
                            GuestOp::Undefined { esr: 0x18 << 26 },
                        ],
                    ),
                    serve(0, 0x07),
                    serve(0, 0x07),
                    Step::Map {
                        kind: 0,
                        gfn: 0x80200,
                        extent: 1,
                    },
                    Step::Map {
                        kind: 2,
                        gfn: 0x80400,
                        extent: 512,
                    },
                    Step::Topup { pages: 3 },
                    serve(0, 0),
                    Step::Teardown,
                    run(0, 0, 0),
                ],
            ),
        ),
    ]
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
