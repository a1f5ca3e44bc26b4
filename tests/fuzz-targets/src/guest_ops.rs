//! Scripted guest instructions (`el2::sim::GuestOp`) as the guest targets
//! read them: every op kind, with aimed function ids, arguments, IPAs and
//! data. Guest RAM is at 0x8000_0000 in both guest targets.

use crate::input::{Input, Output};
use el2::sim::GuestOp;
use std::vec::Vec;

/// Most ops in one script.
pub const MAX_OPS: usize = 12;

const GICD: u64 = 0x0800_0000;
const GICR: u64 = 0x080a_0000;
const UART: u64 = 0x0900_0000;

/// Function ids: the KVM vendor calls (pKVM's guest ABI), SMCCC and PSCI
/// calls in both conventions, the SVE hint, garbage in the upper half,
/// unknown ids, a host call id.
pub const IDS: [u64; 36] = [
    0xC600_0003,
    0xC600_0004,
    0xC600_0009,
    0xC600_0007,
    0x8400_0003,
    0xC400_0003,
    0x8400_0002,
    0x8400_0008,
    0x8400_0009,
    0x8600_FF01,
    0x8600_0000,
    0xC600_0002,
    0x8000_0000,
    0x8000_0001,
    0x8000_8000,
    0x8000_7fff,
    0x8000_3fff,
    0x8400_0000,
    0x8400_0001,
    0xC400_0001,
    0x8400_0004,
    0xC400_0004,
    0x8400_0005,
    0x8400_0006,
    0x8400_000a,
    0x8400_0012,
    0xC400_0012,
    0xC601_0003,
    0x1_C600_0003,
    0xC600_0005,
    0xC600_0000,
    0x8601_FF01,
    0xC600_0008,
    0,
    u64::MAX,
    0xC400_0009,
];

/// Guest addresses: RAM pages and block edges, unaligned addresses,
/// the virtual GIC's registers (distributor, two redistributors), the
/// UART, addresses past a 40-bit IPA space.
pub const IPAS: [u64; 52] = [
    0x8000_0000,
    0x8000_0008,
    0x8000_1000,
    0x8000_2000,
    0x8000_3000,
    0x8001_0000,
    0x8001_1000,
    0x8000_0ff8,
    0x8000_0ffc,
    0x8020_0000,
    0x8020_1000,
    0x803f_f000,
    0x8040_0000,
    0x8040_1000,
    0x8060_0000,
    0x807f_f000,
    0x4000_0000,
    UART,
    UART + 0x18,
    UART + 0x1000,
    GICD,
    GICD + 0x4,
    GICD + 0x8,
    GICD + 0x80,
    GICD + 0x100,
    GICD + 0x104,
    GICD + 0x180,
    GICD + 0x184,
    GICD + 0x204,
    GICD + 0x284,
    GICD + 0x304,
    GICD + 0x420,
    GICD + 0x820,
    GICD + 0xc08,
    GICD + 0x6100,
    GICD + 0xffe8,
    GICD + 0x1_0000,
    GICR,
    GICR + 0x8,
    GICR + 0xc,
    GICR + 0x14,
    GICR + 0xffe8,
    GICR + 0x1_0080,
    GICR + 0x1_0100,
    GICR + 0x1_0180,
    GICR + 0x1_0200,
    GICR + 0x1_0280,
    GICR + 0x1_0400,
    GICR + 0x1_0c04,
    GICR + 0x2_0008,
    GICR + 0x3_0100,
    1 << 40,
];

/// Hypercall arguments: guest addresses (aligned or not), page counts at
/// the 512-page limit, MPIDRs, PSCI ids, reset types.
pub const ARGS: [u64; 26] = [
    0,
    1,
    0x8000_0000,
    0x8000_1000,
    0x8000_2000,
    0x8001_0000,
    0x8020_0000,
    0x8040_0000,
    0x8000_0008,
    2,
    511,
    512,
    513,
    600,
    UART,
    GICD,
    3,
    8,
    0x100,
    0x8000_0001,
    0xC400_0003,
    0x8000_0000_0000_0000,
    u64::MAX,
    0xffff_ffff_8000_0000,
    1 << 40,
    0x8000_0002,
];

/// Data stored: small values, all ones, GIC enables and priorities.
pub const DATA: [u64; 14] = [
    0,
    1,
    0x41,
    0xff,
    0xffff,
    0xffff_ffff,
    u64::MAX,
    0x8000_0000,
    0x1_0000_0001,
    0xa5a5_a5a5_a5a5_a5a5,
    2,
    0x12,
    0x80,
    0x2,
];

/// `ICC_SGI1R_EL1` values: SGI 1 to vCPU 0, SGI 2 to vCPU 1, broadcast
/// (IRM), all targets, an Aff1 target, nothing, everything.
pub const SGIS: [u64; 8] = [
    (1 << 24) | 1,
    (2 << 24) | 2,
    1 << 40,
    (15 << 24) | 0xffff,
    (1 << 16) | 1,
    0,
    u64::MAX,
    (3 << 24) | 3,
];

/// Syndromes of traps the hypervisor does not handle.
pub const ESRS: [u64; 8] = [
    0x18 << 26,
    0x01 << 26,
    0x07 << 26,
    0x2f << 26,
    0x24 << 26,
    0x16 << 26,
    0,
    u64::MAX,
];

/// Highest entry point a target starts a vCPU at. The simulated CPU
/// counts its PC with `ctx.pc += 1` (`el2::sim::SimArch::run_vcpu`), which
/// overflows (a panic in debug builds) when a script starts within its
/// length of `u64::MAX`; the core itself steps PCs with `wrapping_add`.
/// So entry points (`VcpuInit`, a guest's `CPU_ON`) are clamped below this.
pub const MAX_ENTRY: u64 = u64::MAX - 4096;

/// The ops with the entry point of every `CPU_ON` clamped to
/// [`MAX_ENTRY`] (see there).
pub fn sim_safe(ops: &[GuestOp]) -> Vec<GuestOp> {
    ops.iter()
        .map(|op| match *op {
            GuestOp::Hvc { id, mut args } | GuestOp::Smc { id, mut args }
                if (id as u32) & !0x4001_0000 == 0x8400_0003 =>
            {
                args[1] = args[1].min(MAX_ENTRY);
                match op {
                    GuestOp::Hvc { .. } => GuestOp::Hvc { id, args },
                    _ => GuestOp::Smc { id, args },
                }
            }
            other => other,
        })
        .collect()
}

/// Reads one op.
pub fn read(i: &mut Input<'_>) -> GuestOp {
    match i.byte() % 11 {
        0 | 9 | 10 => GuestOp::Hvc {
            id: i.value(&IDS),
            args: [i.value(&ARGS), i.value(&ARGS), i.value(&ARGS)],
        },
        1 => GuestOp::Smc {
            id: i.value(&IDS),
            args: [i.value(&ARGS), i.value(&ARGS), i.value(&ARGS)],
        },
        2 => GuestOp::Store {
            ipa: i.value(&IPAS),
            value: i.value(&DATA),
        },
        3 => GuestOp::Store32 {
            ipa: i.value(&IPAS),
            value: i.value(&DATA) as u32,
        },
        4 => GuestOp::Load {
            ipa: i.value(&IPAS),
        },
        5 => GuestOp::Fill {
            ipa: i.value(&IPAS),
            byte: i.byte(),
        },
        6 => GuestOp::Wfi,
        7 => GuestOp::Sgi {
            value: i.value(&SGIS),
        },
        _ => GuestOp::Undefined {
            esr: i.value(&ESRS),
        },
    }
}

/// Writes one op as [`read`] reads it.
pub fn write(o: &mut Output, op: &GuestOp) {
    match *op {
        GuestOp::Hvc { id, args } => {
            o.byte(0).value(&IDS, id);
            args.iter().for_each(|a| {
                o.value(&ARGS, *a);
            });
        }
        GuestOp::Smc { id, args } => {
            o.byte(1).value(&IDS, id);
            args.iter().for_each(|a| {
                o.value(&ARGS, *a);
            });
        }
        GuestOp::Store { ipa, value } => {
            o.byte(2).value(&IPAS, ipa).value(&DATA, value);
        }
        GuestOp::Store32 { ipa, value } => {
            o.byte(3).value(&IPAS, ipa).value(&DATA, u64::from(value));
        }
        GuestOp::Load { ipa } => {
            o.byte(4).value(&IPAS, ipa);
        }
        GuestOp::Fill { ipa, byte } => {
            o.byte(5).value(&IPAS, ipa).byte(byte);
        }
        GuestOp::Wfi => {
            o.byte(6);
        }
        GuestOp::Sgi { value } => {
            o.byte(7).value(&SGIS, value);
        }
        GuestOp::Undefined { esr } => {
            o.byte(8).value(&ESRS, esr);
        }
    }
}

/// Reads a script: a count byte (1..=[`MAX_OPS`]) and the ops.
pub fn read_script(i: &mut Input<'_>) -> Vec<GuestOp> {
    let n = i.byte() as usize % MAX_OPS + 1;
    (0..n).map(|_| read(i)).collect()
}

/// Writes a script as [`read_script`] reads it (at most [`MAX_OPS`]).
pub fn write_script(o: &mut Output, ops: &[GuestOp]) {
    assert!(!ops.is_empty() && ops.len() <= MAX_OPS, "1..=12 ops");
    o.byte(ops.len() as u8 - 1);
    for op in ops {
        write(o, op);
    }
}
