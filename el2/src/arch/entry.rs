//! The assembly edge of el2: the arm64 Image header and `_start`, the
//! secondary-CPU entry, the EL2 exception vectors, entering a lower
//! exception level, switching the EL2 MMU on, and the two instructions
//! that may be UNDEFINED on some machines (the forwarded `smc` and the
//! semihosting `hlt`).
//!
//! Every offset into a structure shared with Rust ([`TrapFrame`],
//! [`MmuConfig`]) is a `const` operand computed with
//! [`core::mem::offset_of!`]; element `n` of `TrapFrame::x` is at
//! `X + 8 * n` (an array of `u64`).
//!
//! # Boot CPU (`_start`)
//!
//! The header follows the Linux arm64 boot protocol
//! (Documentation/arch/arm64/booting.rst): QEMU boots the ELF at its link
//! address (0x4020_0000, `x0` = 0, device tree at the start of RAM) or the
//! raw `el2.bin` as an Image (also at RAM + 2 MiB, `x0` = device tree). The
//! code is linked at 0x4020_0000 and is not position-independent, so both
//! must load it there (QEMU's `virt` does).
//!
//! `_start` reads the counter (boot timestamp), parks every CPU whose
//! MPIDR.Aff0 is not 0 (QEMU starts secondaries powered off under PSCI;
//! this is a safety net), enables FP/SIMD, installs the vectors (at EL2),
//! points SP at CPU 0's stack, zeroes `.bss`, invalidates the data cache
//! over the image (nothing cached from before boot may shadow what was
//! just written with the MMU off) and calls
//! `rust_main(x0, timestamp, current_el)`.
//!
//! # Exceptions
//!
//! Every vector saves a [`TrapFrame`] on SP_EL2 and calls `el2_trap(frame,
//! kind)`. el2 is built for the hard-float target, so its Rust code may use
//! the FP/SIMD registers; exceptions from the host (lower EL) therefore
//! also save the host's FP/SIMD state in this CPU's [`FpState`] and put it
//! back before returning: Z0–Z31, P0–P15 and FFR at the maximum vector
//! length when the CPU has SVE ([`HAS_SVE`]), else Q0–Q31, plus FPSR and
//! FPCR (EL2 runs with FPCR = 0). Exceptions taken at EL2 itself need no
//! such save: the only ones that return (the UNDEFINED `smc`/`hlt` fixups)
//! interrupt a function call, across which the Rust handler preserves what
//! the calling convention requires. A host in SME streaming mode is not
//! supported (saving its state at EL2 faults, which stops the machine with
//! the syndrome logged).
//!
//! # Secondary CPUs ([`el2_secondary_entry`])
//!
//! Started only by the PSCI relay's intercepted CPU_ON (or a wake-up from a
//! power-down state of an intercepted suspend call), at EL2 with the MMU
//! off and `x0` = the CPU's index. Before touching any memory but
//! [`SECONDARY_MMU`] (cleaned to the point of coherency by the boot CPU),
//! it installs the vectors, switches the MMU on with the final EL2 tables,
//! then takes its own stack and calls `secondary_main(index, timestamp)`.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicU8;

use el2::hyp::arch::{FpRegs, VcpuContext};

use super::percpu::MAX_CPUS;

/// Bytes of EL2 stack per CPU.
pub const STACK_SIZE: usize = 32 * 1024;

/// Registers saved on every exception taken to EL2, and the state
/// [`el2_enter_lower`] loads to enter a lower exception level.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    /// `x0`..`x30`.
    pub x: [u64; 31],
    /// `ELR_EL2`: where the `eret` returns to.
    pub elr: u64,
    /// `SPSR_EL2`: the state the `eret` restores.
    pub spsr: u64,
    /// Keeps the frame a multiple of 16 bytes (SP alignment).
    pad: u64,
}

const _: () = assert!(size_of::<TrapFrame>().is_multiple_of(16));

/// The registers of an SMCCC call forwarded to firmware: x0..x17 in and
/// out (SMCCC 1.2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SmcRegs {
    /// `x0`..`x17`.
    pub x: [u64; 18],
}

/// A host's FP/SIMD state, saved while el2 handles one of its exceptions.
/// Sized for the largest SVE vector length (2048 bits); without SVE only
/// the first 512 bytes of `z` hold Q0–Q31.
#[repr(C, align(16))]
pub struct FpState {
    /// Z0–Z31 at EL2's vector length (`str zN, [x, #N, mul vl]`), or
    /// Q0–Q31.
    z: [u8; 32 * 256],
    /// P0–P15 and FFR (`mul vl` predicate slots).
    p: [u8; 17 * 32],
    /// FPSR.
    fpsr: u64,
    /// FPCR.
    fpcr: u64,
}

/// One [`FpState`] per CPU, indexed by `TPIDR_EL2` (a CPU takes one host
/// exception at a time: EL2 runs with exceptions masked).
#[repr(C, align(16))]
pub struct FpAreas(UnsafeCell<[FpState; MAX_CPUS]>);

// SAFETY: only the vector assembly touches it, each CPU its own slot.
unsafe impl Sync for FpAreas {}

/// The per-CPU FP/SIMD save areas (`.bss`).
pub static FP_AREAS: FpAreas = FpAreas(UnsafeCell::new(
    [const {
        FpState {
            z: [0; 32 * 256],
            p: [0; 17 * 32],
            fpsr: 0,
            fpcr: 0,
        }
    }; MAX_CPUS],
));

/// 1 when the CPU has SVE: the vectors then save Z/P/FFR instead of Q
/// registers. Set by the boot CPU before the host first runs.
pub static HAS_SVE: AtomicU8 = AtomicU8::new(0);

/// What [`el2_mmu_enable`] loads: the EL2 stage-1 translation regime.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuConfig {
    /// `MAIR_EL2`.
    pub mair: u64,
    /// `TCR_EL2`.
    pub tcr: u64,
    /// `TTBR0_EL2`: the root table.
    pub ttbr0: u64,
    /// `SCTLR_EL2` with the MMU and caches on.
    pub sctlr: u64,
}

/// A value shared between the boot CPU's Rust code and assembly that runs
/// with the MMU off.
#[repr(C, align(64))]
pub struct AsmShared<T>(UnsafeCell<T>);

// SAFETY: the contents are written only by the boot CPU during boot, before
// any secondary CPU is started, and read-only afterwards (see the users).
unsafe impl<T> Sync for AsmShared<T> {}

impl<T> AsmShared<T> {
    /// Pointer to the value.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// The final EL2 MMU configuration secondary CPUs load in
/// [`el2_secondary_entry`]. Written once by the boot CPU, which cleans it to
/// the point of coherency before starting any secondary.
pub static SECONDARY_MMU: AsmShared<MmuConfig> = AsmShared(UnsafeCell::new(MmuConfig {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    sctlr: 0,
}));

/// The EL2 stacks, one per CPU, indexed by CPU index. In `.bss`: zeroed at
/// boot, hypervisor-owned (part of the image).
#[repr(C, align(4096))]
pub struct Stacks(UnsafeCell<[[u8; STACK_SIZE]; MAX_CPUS]>);

// SAFETY: each CPU uses only its own stack, and only through SP (never
// through Rust references to this static).
unsafe impl Sync for Stacks {}

/// The per-CPU EL2 stacks.
pub static STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK_SIZE]; MAX_CPUS]));

impl Stacks {
    /// The initial stack pointer (top of the stack) of CPU `index`.
    pub fn top(&self, index: usize) -> u64 {
        let base = self.0.get() as u64;
        base + ((index.min(MAX_CPUS - 1) + 1) * STACK_SIZE) as u64
    }
}

/// Vector kinds passed to `el2_trap` (the vector table's entry index).
pub mod kind {
    /// Synchronous exception from EL2 itself (SP_EL2).
    pub const CURRENT_SYNC: u64 = 4;
    /// Synchronous exception from a lower EL in AArch64 (the host).
    pub const LOWER_SYNC: u64 = 8;
    /// IRQ from a lower EL in AArch64.
    pub const LOWER_IRQ: u64 = 9;
    /// FIQ from a lower EL in AArch64.
    pub const LOWER_FIQ: u64 = 10;
    /// Synchronous exception from a lower EL in AArch32 (the host's EL0).
    pub const LOWER_SYNC_32: u64 = 12;
    /// IRQ from a lower EL in AArch32.
    pub const LOWER_IRQ_32: u64 = 13;
    /// FIQ from a lower EL in AArch32.
    pub const LOWER_FIQ_32: u64 = 14;

    /// A name for a vector kind, for error messages.
    pub fn name(kind: u64) -> &'static str {
        const NAMES: [&str; 16] = [
            "EL2t synchronous",
            "EL2t IRQ",
            "EL2t FIQ",
            "EL2t SError",
            "EL2h synchronous",
            "EL2h IRQ",
            "EL2h FIQ",
            "EL2h SError",
            "lower-EL AArch64 synchronous",
            "lower-EL AArch64 IRQ",
            "lower-EL AArch64 FIQ",
            "lower-EL AArch64 SError",
            "lower-EL AArch32 synchronous",
            "lower-EL AArch32 IRQ",
            "lower-EL AArch32 FIQ",
            "lower-EL AArch32 SError",
        ];
        usize::try_from(kind)
            .ok()
            .and_then(|k| NAMES.get(k))
            .copied()
            .unwrap_or("unknown")
    }
}

unsafe extern "C" {
    /// Entry point of secondary CPUs started through PSCI CPU_ON
    /// (`x0` = CPU index). Not callable from Rust; its address is what the
    /// PSCI relay passes to the firmware.
    pub fn el2_secondary_entry();

    /// Zeroes the FP/SIMD registers (V0–V31, or with [`HAS_SVE`] also
    /// P0–P15 and FFR; FPSR, FPCR), loads `TrapFrame` `frame` (all of
    /// x0..x30, ELR_EL2, SPSR_EL2), sets SP_EL2 to `stack_top` and executes
    /// `eret`.
    pub fn el2_enter_lower(frame: *const TrapFrame, stack_top: u64) -> !;

    /// Switches the EL2 stage-1 MMU to `config` (MMU off, load, invalidate
    /// the EL2 TLB, MMU and caches on). Touches no memory but `config`
    /// while the MMU is off.
    pub fn el2_mmu_enable(config: *const MmuConfig);

    /// Issues `smc #0` with `regs.x` in x0..x17 and writes x0..x17 back.
    /// If the `smc` is UNDEFINED (no firmware handles the function), the
    /// EL2 fault handler resumes after it with x0 = -1 (NOT_SUPPORTED) and
    /// the other registers as they were.
    pub fn el2_smc_forward(regs: *mut SmcRegs);

    /// The `smc` instruction inside [`el2_smc_forward`] (address only).
    pub fn el2_smc_forward_insn();

    /// Semihosting call: `hlt #0xf000` with w0 = `op`, x1 = `param`;
    /// returns x0. If semihosting is off (`hlt` is UNDEFINED), the EL2 fault
    /// handler resumes after it with x0 = -1.
    pub fn el2_semihost_call(op: u64, param: u64) -> u64;

    /// The `hlt` instruction inside [`el2_semihost_call`] (address only).
    pub fn el2_semihost_insn();

    /// Enters the loaded vCPU whose registers are `ctx` (FP/SIMD, SP_EL0,
    /// x0..x30, PC, PSTATE) and returns, once the guest takes an exception
    /// to EL2 through the guest vectors, the vector's kind ([`kind`]) with
    /// all of them saved back into `ctx`. Follows the C calling convention
    /// (x19..x30, SP and D8..D15 preserved); FPCR is 0 on return.
    pub fn el2_guest_enter(ctx: *mut el2::hyp::arch::VcpuContext) -> u64;

    /// The host's exception vectors (address only).
    fn el2_vectors();
    /// The vectors while a vCPU is loaded (address only): current-EL
    /// entries as the host's, lower-EL entries the guest exit path.
    fn el2_guest_vectors();
}

/// `VBAR_EL2` while the host runs.
pub fn host_vectors() -> u64 {
    el2_vectors as *const () as u64
}

/// `VBAR_EL2` while a vCPU is loaded.
pub fn guest_vectors() -> u64 {
    el2_guest_vectors as *const () as u64
}

global_asm!(
    r#"
    /* ---------------------------------------------------------------- */
    /* arm64 Image header (64 bytes) and the boot CPU's entry.           */
    /* ---------------------------------------------------------------- */
    .section .text.head, "ax"
    .global _start
_start:
    b       1f                  /* code0: branch past the header */
    .long   0                   /* code1 */
    .quad   0                   /* text_offset */
    .quad   __image_size        /* image_size: .bss and stacks included */
    .quad   0xa                 /* flags: little-endian, 4 KiB pages, anywhere */
    .quad   0                   /* res2 */
    .quad   0                   /* res3 */
    .quad   0                   /* res4 */
    .ascii  "ARM\x64"           /* magic */
    .long   0                   /* res5 (no PE/COFF header) */

1:
    mrs     x20, cntpct_el0     /* boot timestamp */
    mov     x19, x0             /* device tree pointer (0 for an ELF boot) */

    /* Park every CPU but the one with MPIDR.Aff0 == 0. */
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, 9f

    mrs     x21, CurrentEL
    ubfx    x21, x21, #2, #2
    cmp     x21, #2
    b.ne    2f
    mov     x1, #0x33ff         /* CPTR_EL2: RES1 bits, TFP clear: FP/SIMD for EL2 */
    msr     cptr_el2, x1
    adrp    x1, el2_vectors
    add     x1, x1, :lo12:el2_vectors
    msr     vbar_el2, x1
    b       3f
2:
    mov     x1, #(3 << 20)      /* not at EL2: CPACR_EL1.FPEN so Rust can report it */
    msr     cpacr_el1, x1
3:
    isb

    /* CPU 0's stack. */
    adrp    x1, {stacks}
    add     x1, x1, :lo12:{stacks}
    mov     x2, #{stack_size}
    add     sp, x1, x2

    /* Zero .bss (16-byte aligned at both ends, see linker.ld). */
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
4:
    cmp     x1, x2
    b.hs    5f
    stp     xzr, xzr, [x1], #16
    b       4b
5:
    /* Drop any cache line over the image: memory is what counts now. */
    adrp    x0, __image_start
    add     x0, x0, :lo12:__image_start
    adrp    x1, __image_end
    add     x1, x1, :lo12:__image_end
    bl      el2_dcache_inval_range

    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      {rust_main}         /* does not return */
9:
    wfe
    b       9b

    /* ---------------------------------------------------------------- */
    .section .text.el2, "ax"

    /* x0 = start, x1 = end: `dc ivac` every line, then `dsb sy`. */
el2_dcache_inval_range:
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4     /* DminLine: log2(words per line) */
    mov     x2, #4
    lsl     x2, x2, x3          /* line size in bytes */
    sub     x3, x2, #1
    bic     x0, x0, x3
1:
    cmp     x0, x1
    b.hs    2f
    dc      ivac, x0
    add     x0, x0, x2
    b       1b
2:
    dsb     sy
    ret

    /* Secondary CPUs: x0 = CPU index (PSCI context id). */
    .global el2_secondary_entry
el2_secondary_entry:
    mrs     x20, cntpct_el0
    mov     x19, x0
    cmp     x19, #{max_cpus}
    b.hs    9f
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    adrp    x1, el2_vectors
    add     x1, x1, :lo12:el2_vectors
    msr     vbar_el2, x1
    isb
    adrp    x0, {secondary_mmu}
    add     x0, x0, :lo12:{secondary_mmu}
    bl      el2_mmu_enable
    adrp    x1, {stacks}
    add     x1, x1, :lo12:{stacks}
    mov     x2, #{stack_size}
    madd    x1, x19, x2, x1     /* base of this CPU's stack */
    add     sp, x1, x2          /* its top */
    mov     x0, x19
    mov     x1, x20
    bl      {secondary_main}    /* does not return */
9:
    wfe
    b       9b

    /* x0 = &MmuConfig. */
    .global el2_mmu_enable
el2_mmu_enable:
    ldr     x1, [x0, #{mmu_mair}]
    ldr     x2, [x0, #{mmu_tcr}]
    ldr     x3, [x0, #{mmu_ttbr0}]
    ldr     x4, [x0, #{mmu_sctlr}]
    mrs     x5, sctlr_el2
    bic     x5, x5, #1          /* MMU off: no memory access until it is on again */
    msr     sctlr_el2, x5
    isb
    msr     mair_el2, x1
    msr     tcr_el2, x2
    msr     ttbr0_el2, x3
    isb
    tlbi    alle2
    dsb     nsh
    isb
    msr     sctlr_el2, x4       /* MMU, D-cache and I-cache on */
    isb
    ic      iallu
    dsb     nsh
    isb
    ret

    /* x0 = &TrapFrame, x1 = stack top. EL2's FP/SIMD state does not
       reach the host: V0-V31 (hence Z0-Z31: a V write zeroes the rest),
       P0-P15 and FFR with SVE, FPSR and FPCR are zeroed first. */
    .global el2_enter_lower
el2_enter_lower:
    mov     sp, x1
    movi    v0.2d, #0
    movi    v1.2d, #0
    movi    v2.2d, #0
    movi    v3.2d, #0
    movi    v4.2d, #0
    movi    v5.2d, #0
    movi    v6.2d, #0
    movi    v7.2d, #0
    movi    v8.2d, #0
    movi    v9.2d, #0
    movi    v10.2d, #0
    movi    v11.2d, #0
    movi    v12.2d, #0
    movi    v13.2d, #0
    movi    v14.2d, #0
    movi    v15.2d, #0
    movi    v16.2d, #0
    movi    v17.2d, #0
    movi    v18.2d, #0
    movi    v19.2d, #0
    movi    v20.2d, #0
    movi    v21.2d, #0
    movi    v22.2d, #0
    movi    v23.2d, #0
    movi    v24.2d, #0
    movi    v25.2d, #0
    movi    v26.2d, #0
    movi    v27.2d, #0
    movi    v28.2d, #0
    movi    v29.2d, #0
    movi    v30.2d, #0
    movi    v31.2d, #0
    msr     fpsr, xzr
    msr     fpcr, xzr
    adrp    x2, {has_sve}
    ldrb    w2, [x2, :lo12:{has_sve}]
    cbz     w2, 1f
    .arch_extension sve
    pfalse  p0.b
    pfalse  p1.b
    pfalse  p2.b
    pfalse  p3.b
    pfalse  p4.b
    pfalse  p5.b
    pfalse  p6.b
    pfalse  p7.b
    pfalse  p8.b
    pfalse  p9.b
    pfalse  p10.b
    pfalse  p11.b
    pfalse  p12.b
    pfalse  p13.b
    pfalse  p14.b
    pfalse  p15.b
    wrffr   p0.b
1:
    ldr     x2, [x0, #{elr}]
    ldr     x3, [x0, #{spsr}]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [x0, #({x} + 16)]
    ldp     x4, x5, [x0, #({x} + 32)]
    ldp     x6, x7, [x0, #({x} + 48)]
    ldp     x8, x9, [x0, #({x} + 64)]
    ldp     x10, x11, [x0, #({x} + 80)]
    ldp     x12, x13, [x0, #({x} + 96)]
    ldp     x14, x15, [x0, #({x} + 112)]
    ldp     x16, x17, [x0, #({x} + 128)]
    ldp     x18, x19, [x0, #({x} + 144)]
    ldp     x20, x21, [x0, #({x} + 160)]
    ldp     x22, x23, [x0, #({x} + 176)]
    ldp     x24, x25, [x0, #({x} + 192)]
    ldp     x26, x27, [x0, #({x} + 208)]
    ldp     x28, x29, [x0, #({x} + 224)]
    ldr     x30, [x0, #({x} + 240)]
    ldp     x0, x1, [x0, #({x} + 0)]
    eret
    dsb     nsh
    isb

    /* x0 = &VcpuContext: enter the guest; returns the exit's kind.
       Stack while the guest runs (SP_EL2, which the guest exit finds
       unchanged): x19..x30, d8..d15, then the context pointer. */
    .global el2_guest_enter
el2_guest_enter:
    stp     x29, x30, [sp, #-16]!
    stp     x27, x28, [sp, #-16]!
    stp     x25, x26, [sp, #-16]!
    stp     x23, x24, [sp, #-16]!
    stp     x21, x22, [sp, #-16]!
    stp     x19, x20, [sp, #-16]!
    stp     d14, d15, [sp, #-16]!
    stp     d12, d13, [sp, #-16]!
    stp     d10, d11, [sp, #-16]!
    stp     d8, d9, [sp, #-16]!
    stp     x0, xzr, [sp, #-16]!
    add     x1, x0, #{ctx_fp}
    ldp     q0, q1, [x1, #({fp_q} + 0)]
    ldp     q2, q3, [x1, #({fp_q} + 32)]
    ldp     q4, q5, [x1, #({fp_q} + 64)]
    ldp     q6, q7, [x1, #({fp_q} + 96)]
    ldp     q8, q9, [x1, #({fp_q} + 128)]
    ldp     q10, q11, [x1, #({fp_q} + 160)]
    ldp     q12, q13, [x1, #({fp_q} + 192)]
    ldp     q14, q15, [x1, #({fp_q} + 224)]
    ldp     q16, q17, [x1, #({fp_q} + 256)]
    ldp     q18, q19, [x1, #({fp_q} + 288)]
    ldp     q20, q21, [x1, #({fp_q} + 320)]
    ldp     q22, q23, [x1, #({fp_q} + 352)]
    ldp     q24, q25, [x1, #({fp_q} + 384)]
    ldp     q26, q27, [x1, #({fp_q} + 416)]
    ldp     q28, q29, [x1, #({fp_q} + 448)]
    ldp     q30, q31, [x1, #({fp_q} + 480)]
    ldr     x2, [x1, #{fp_fpsr_g}]
    msr     fpsr, x2
    ldr     x2, [x1, #{fp_fpcr_g}]
    msr     fpcr, x2
    ldr     x2, [x0, #{ctx_sp_el0}]
    msr     sp_el0, x2
    ldr     x2, [x0, #{ctx_pc}]
    msr     elr_el2, x2
    ldr     x2, [x0, #{ctx_pstate}]
    msr     spsr_el2, x2
    ldp     x2, x3, [x0, #({ctx_x} + 16)]
    ldp     x4, x5, [x0, #({ctx_x} + 32)]
    ldp     x6, x7, [x0, #({ctx_x} + 48)]
    ldp     x8, x9, [x0, #({ctx_x} + 64)]
    ldp     x10, x11, [x0, #({ctx_x} + 80)]
    ldp     x12, x13, [x0, #({ctx_x} + 96)]
    ldp     x14, x15, [x0, #({ctx_x} + 112)]
    ldp     x16, x17, [x0, #({ctx_x} + 128)]
    ldp     x18, x19, [x0, #({ctx_x} + 144)]
    ldp     x20, x21, [x0, #({ctx_x} + 160)]
    ldp     x22, x23, [x0, #({ctx_x} + 176)]
    ldp     x24, x25, [x0, #({ctx_x} + 192)]
    ldp     x26, x27, [x0, #({ctx_x} + 208)]
    ldp     x28, x29, [x0, #({ctx_x} + 224)]
    ldr     x30, [x0, #({ctx_x} + 240)]
    ldp     x0, x1, [x0, #({ctx_x} + 0)]
    eret
    dsb     nsh
    isb

    /* From a guest vector: x1 = kind, the guest's x0, x1 at [sp], the
       context pointer at [sp, #16]. Saves the guest, unwinds
       el2_guest_enter's frame and returns the kind. */
el2_guest_exit:
    ldr     x0, [sp, #16]
    stp     x2, x3, [x0, #({ctx_x} + 16)]
    stp     x4, x5, [x0, #({ctx_x} + 32)]
    stp     x6, x7, [x0, #({ctx_x} + 48)]
    stp     x8, x9, [x0, #({ctx_x} + 64)]
    stp     x10, x11, [x0, #({ctx_x} + 80)]
    stp     x12, x13, [x0, #({ctx_x} + 96)]
    stp     x14, x15, [x0, #({ctx_x} + 112)]
    stp     x16, x17, [x0, #({ctx_x} + 128)]
    stp     x18, x19, [x0, #({ctx_x} + 144)]
    stp     x20, x21, [x0, #({ctx_x} + 160)]
    stp     x22, x23, [x0, #({ctx_x} + 176)]
    stp     x24, x25, [x0, #({ctx_x} + 192)]
    stp     x26, x27, [x0, #({ctx_x} + 208)]
    stp     x28, x29, [x0, #({ctx_x} + 224)]
    str     x30, [x0, #({ctx_x} + 240)]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x0, #({ctx_x} + 0)]
    mrs     x2, elr_el2
    str     x2, [x0, #{ctx_pc}]
    mrs     x2, spsr_el2
    str     x2, [x0, #{ctx_pstate}]
    mrs     x2, sp_el0
    str     x2, [x0, #{ctx_sp_el0}]
    add     x2, x0, #{ctx_fp}
    stp     q0, q1, [x2, #({fp_q} + 0)]
    stp     q2, q3, [x2, #({fp_q} + 32)]
    stp     q4, q5, [x2, #({fp_q} + 64)]
    stp     q6, q7, [x2, #({fp_q} + 96)]
    stp     q8, q9, [x2, #({fp_q} + 128)]
    stp     q10, q11, [x2, #({fp_q} + 160)]
    stp     q12, q13, [x2, #({fp_q} + 192)]
    stp     q14, q15, [x2, #({fp_q} + 224)]
    stp     q16, q17, [x2, #({fp_q} + 256)]
    stp     q18, q19, [x2, #({fp_q} + 288)]
    stp     q20, q21, [x2, #({fp_q} + 320)]
    stp     q22, q23, [x2, #({fp_q} + 352)]
    stp     q24, q25, [x2, #({fp_q} + 384)]
    stp     q26, q27, [x2, #({fp_q} + 416)]
    stp     q28, q29, [x2, #({fp_q} + 448)]
    stp     q30, q31, [x2, #({fp_q} + 480)]
    mrs     x3, fpsr
    str     x3, [x2, #{fp_fpsr_g}]
    mrs     x3, fpcr
    str     x3, [x2, #{fp_fpcr_g}]
    msr     fpcr, xzr           /* EL2's own FP mode */
    mov     x0, x1
    add     sp, sp, #16         /* the context pointer */
    ldp     d8, d9, [sp], #16
    ldp     d10, d11, [sp], #16
    ldp     d12, d13, [sp], #16
    ldp     d14, d15, [sp], #16
    ldp     x19, x20, [sp], #16
    ldp     x21, x22, [sp], #16
    ldp     x23, x24, [sp], #16
    ldp     x25, x26, [sp], #16
    ldp     x27, x28, [sp], #16
    ldp     x29, x30, [sp], #16
    ret

    /* x0 = &SmcRegs: x0..x17 in and out. */
    .global el2_smc_forward
    .global el2_smc_forward_insn
el2_smc_forward:
    stp     x19, x30, [sp, #-16]!
    mov     x19, x0
    ldp     x2, x3, [x19, #({smc_x} + 16)]
    ldp     x4, x5, [x19, #({smc_x} + 32)]
    ldp     x6, x7, [x19, #({smc_x} + 48)]
    ldp     x8, x9, [x19, #({smc_x} + 64)]
    ldp     x10, x11, [x19, #({smc_x} + 80)]
    ldp     x12, x13, [x19, #({smc_x} + 96)]
    ldp     x14, x15, [x19, #({smc_x} + 112)]
    ldp     x16, x17, [x19, #({smc_x} + 128)]
    ldp     x0, x1, [x19, #({smc_x} + 0)]
el2_smc_forward_insn:
    smc     #0
    stp     x0, x1, [x19, #({smc_x} + 0)]
    stp     x2, x3, [x19, #({smc_x} + 16)]
    stp     x4, x5, [x19, #({smc_x} + 32)]
    stp     x6, x7, [x19, #({smc_x} + 48)]
    stp     x8, x9, [x19, #({smc_x} + 64)]
    stp     x10, x11, [x19, #({smc_x} + 80)]
    stp     x12, x13, [x19, #({smc_x} + 96)]
    stp     x14, x15, [x19, #({smc_x} + 112)]
    stp     x16, x17, [x19, #({smc_x} + 128)]
    ldp     x19, x30, [sp], #16
    ret

    /* x0 = operation, x1 = parameter; returns x0. */
    .global el2_semihost_call
    .global el2_semihost_insn
el2_semihost_call:
el2_semihost_insn:
    hlt     #0xf000
    ret

    /* ---------------------------------------------------------------- */
    /* Exception vectors: every entry saves a TrapFrame on SP_EL2 and    */
    /* calls el2_trap(frame, kind), then restores it and returns.        */
    /* ---------------------------------------------------------------- */
    .macro EL2_VECTOR kind
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #({x} + 0)]
    stp     x2, x3, [sp, #({x} + 16)]
    stp     x4, x5, [sp, #({x} + 32)]
    stp     x6, x7, [sp, #({x} + 48)]
    stp     x8, x9, [sp, #({x} + 64)]
    stp     x10, x11, [sp, #({x} + 80)]
    stp     x12, x13, [sp, #({x} + 96)]
    stp     x14, x15, [sp, #({x} + 112)]
    stp     x16, x17, [sp, #({x} + 128)]
    stp     x18, x19, [sp, #({x} + 144)]
    stp     x20, x21, [sp, #({x} + 160)]
    stp     x22, x23, [sp, #({x} + 176)]
    stp     x24, x25, [sp, #({x} + 192)]
    stp     x26, x27, [sp, #({x} + 208)]
    stp     x28, x29, [sp, #({x} + 224)]
    str     x30, [sp, #({x} + 240)]
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    str     x0, [sp, #{elr}]
    str     x1, [sp, #{spsr}]
    .if \kind >= 8
    bl      el2_fp_save         /* from the host: keep its FP/SIMD state */
    .endif
    mov     x0, sp
    mov     x1, #\kind
    bl      {trap}
    .if \kind >= 8
    bl      el2_fp_restore
    .endif
    b       el2_trap_return
    .endm

    /* x0 = this CPU's FpState (uses x0..x2 only). */
    .macro FP_AREA
    mrs     x0, tpidr_el2
    adrp    x1, {fp_areas}
    add     x1, x1, :lo12:{fp_areas}
    mov     x2, #{fp_size}
    madd    x0, x0, x2, x1
    .endm

    .section .text.el2, "ax"
    .arch_extension sve
el2_fp_save:
    FP_AREA
    adrp    x1, {has_sve}
    ldrb    w1, [x1, :lo12:{has_sve}]
    cbnz    w1, 1f
    stp     q0, q1, [x0, #({fp_z} + 0)]
    stp     q2, q3, [x0, #({fp_z} + 32)]
    stp     q4, q5, [x0, #({fp_z} + 64)]
    stp     q6, q7, [x0, #({fp_z} + 96)]
    stp     q8, q9, [x0, #({fp_z} + 128)]
    stp     q10, q11, [x0, #({fp_z} + 160)]
    stp     q12, q13, [x0, #({fp_z} + 192)]
    stp     q14, q15, [x0, #({fp_z} + 224)]
    stp     q16, q17, [x0, #({fp_z} + 256)]
    stp     q18, q19, [x0, #({fp_z} + 288)]
    stp     q20, q21, [x0, #({fp_z} + 320)]
    stp     q22, q23, [x0, #({fp_z} + 352)]
    stp     q24, q25, [x0, #({fp_z} + 384)]
    stp     q26, q27, [x0, #({fp_z} + 416)]
    stp     q28, q29, [x0, #({fp_z} + 448)]
    stp     q30, q31, [x0, #({fp_z} + 480)]
    b       2f
1:
    add     x1, x0, #{fp_z}
    str     z0, [x1, #0, mul vl]
    str     z1, [x1, #1, mul vl]
    str     z2, [x1, #2, mul vl]
    str     z3, [x1, #3, mul vl]
    str     z4, [x1, #4, mul vl]
    str     z5, [x1, #5, mul vl]
    str     z6, [x1, #6, mul vl]
    str     z7, [x1, #7, mul vl]
    str     z8, [x1, #8, mul vl]
    str     z9, [x1, #9, mul vl]
    str     z10, [x1, #10, mul vl]
    str     z11, [x1, #11, mul vl]
    str     z12, [x1, #12, mul vl]
    str     z13, [x1, #13, mul vl]
    str     z14, [x1, #14, mul vl]
    str     z15, [x1, #15, mul vl]
    str     z16, [x1, #16, mul vl]
    str     z17, [x1, #17, mul vl]
    str     z18, [x1, #18, mul vl]
    str     z19, [x1, #19, mul vl]
    str     z20, [x1, #20, mul vl]
    str     z21, [x1, #21, mul vl]
    str     z22, [x1, #22, mul vl]
    str     z23, [x1, #23, mul vl]
    str     z24, [x1, #24, mul vl]
    str     z25, [x1, #25, mul vl]
    str     z26, [x1, #26, mul vl]
    str     z27, [x1, #27, mul vl]
    str     z28, [x1, #28, mul vl]
    str     z29, [x1, #29, mul vl]
    str     z30, [x1, #30, mul vl]
    str     z31, [x1, #31, mul vl]
    mov     x2, #{fp_p}
    add     x1, x0, x2
    str     p0, [x1, #0, mul vl]
    str     p1, [x1, #1, mul vl]
    str     p2, [x1, #2, mul vl]
    str     p3, [x1, #3, mul vl]
    str     p4, [x1, #4, mul vl]
    str     p5, [x1, #5, mul vl]
    str     p6, [x1, #6, mul vl]
    str     p7, [x1, #7, mul vl]
    str     p8, [x1, #8, mul vl]
    str     p9, [x1, #9, mul vl]
    str     p10, [x1, #10, mul vl]
    str     p11, [x1, #11, mul vl]
    str     p12, [x1, #12, mul vl]
    str     p13, [x1, #13, mul vl]
    str     p14, [x1, #14, mul vl]
    str     p15, [x1, #15, mul vl]
    rdffr   p0.b
    str     p0, [x1, #16, mul vl]
2:
    mov     x2, #{fp_fpsr}
    add     x2, x0, x2
    mrs     x1, fpsr
    str     x1, [x2]
    mrs     x1, fpcr
    str     x1, [x2, #({fp_fpcr} - {fp_fpsr})]
    msr     fpcr, xzr           /* EL2's own FP mode: defaults, no traps */
    ret

el2_fp_restore:
    FP_AREA
    mov     x2, #{fp_fpsr}
    add     x2, x0, x2
    ldr     x1, [x2]
    msr     fpsr, x1
    ldr     x1, [x2, #({fp_fpcr} - {fp_fpsr})]
    msr     fpcr, x1
    adrp    x1, {has_sve}
    ldrb    w1, [x1, :lo12:{has_sve}]
    cbnz    w1, 1f
    ldp     q0, q1, [x0, #({fp_z} + 0)]
    ldp     q2, q3, [x0, #({fp_z} + 32)]
    ldp     q4, q5, [x0, #({fp_z} + 64)]
    ldp     q6, q7, [x0, #({fp_z} + 96)]
    ldp     q8, q9, [x0, #({fp_z} + 128)]
    ldp     q10, q11, [x0, #({fp_z} + 160)]
    ldp     q12, q13, [x0, #({fp_z} + 192)]
    ldp     q14, q15, [x0, #({fp_z} + 224)]
    ldp     q16, q17, [x0, #({fp_z} + 256)]
    ldp     q18, q19, [x0, #({fp_z} + 288)]
    ldp     q20, q21, [x0, #({fp_z} + 320)]
    ldp     q22, q23, [x0, #({fp_z} + 352)]
    ldp     q24, q25, [x0, #({fp_z} + 384)]
    ldp     q26, q27, [x0, #({fp_z} + 416)]
    ldp     q28, q29, [x0, #({fp_z} + 448)]
    ldp     q30, q31, [x0, #({fp_z} + 480)]
    ret
1:
    mov     x2, #{fp_p}
    add     x1, x0, x2
    ldr     p0, [x1, #16, mul vl]
    wrffr   p0.b
    ldr     p0, [x1, #0, mul vl]
    ldr     p1, [x1, #1, mul vl]
    ldr     p2, [x1, #2, mul vl]
    ldr     p3, [x1, #3, mul vl]
    ldr     p4, [x1, #4, mul vl]
    ldr     p5, [x1, #5, mul vl]
    ldr     p6, [x1, #6, mul vl]
    ldr     p7, [x1, #7, mul vl]
    ldr     p8, [x1, #8, mul vl]
    ldr     p9, [x1, #9, mul vl]
    ldr     p10, [x1, #10, mul vl]
    ldr     p11, [x1, #11, mul vl]
    ldr     p12, [x1, #12, mul vl]
    ldr     p13, [x1, #13, mul vl]
    ldr     p14, [x1, #14, mul vl]
    ldr     p15, [x1, #15, mul vl]
    add     x1, x0, #{fp_z}
    ldr     z0, [x1, #0, mul vl]
    ldr     z1, [x1, #1, mul vl]
    ldr     z2, [x1, #2, mul vl]
    ldr     z3, [x1, #3, mul vl]
    ldr     z4, [x1, #4, mul vl]
    ldr     z5, [x1, #5, mul vl]
    ldr     z6, [x1, #6, mul vl]
    ldr     z7, [x1, #7, mul vl]
    ldr     z8, [x1, #8, mul vl]
    ldr     z9, [x1, #9, mul vl]
    ldr     z10, [x1, #10, mul vl]
    ldr     z11, [x1, #11, mul vl]
    ldr     z12, [x1, #12, mul vl]
    ldr     z13, [x1, #13, mul vl]
    ldr     z14, [x1, #14, mul vl]
    ldr     z15, [x1, #15, mul vl]
    ldr     z16, [x1, #16, mul vl]
    ldr     z17, [x1, #17, mul vl]
    ldr     z18, [x1, #18, mul vl]
    ldr     z19, [x1, #19, mul vl]
    ldr     z20, [x1, #20, mul vl]
    ldr     z21, [x1, #21, mul vl]
    ldr     z22, [x1, #22, mul vl]
    ldr     z23, [x1, #23, mul vl]
    ldr     z24, [x1, #24, mul vl]
    ldr     z25, [x1, #25, mul vl]
    ldr     z26, [x1, #26, mul vl]
    ldr     z27, [x1, #27, mul vl]
    ldr     z28, [x1, #28, mul vl]
    ldr     z29, [x1, #29, mul vl]
    ldr     z30, [x1, #30, mul vl]
    ldr     z31, [x1, #31, mul vl]
    ret

    .section .text.vectors, "ax"
    .balign 0x800
    .global el2_vectors
el2_vectors:
    EL2_VECTOR 0
    EL2_VECTOR 1
    EL2_VECTOR 2
    EL2_VECTOR 3
    EL2_VECTOR 4
    EL2_VECTOR 5
    EL2_VECTOR 6
    EL2_VECTOR 7
    EL2_VECTOR 8
    EL2_VECTOR 9
    EL2_VECTOR 10
    EL2_VECTOR 11
    EL2_VECTOR 12
    EL2_VECTOR 13
    EL2_VECTOR 14
    EL2_VECTOR 15

    /* ---------------------------------------------------------------- */
    /* While a vCPU is loaded: current-EL entries as above, lower-EL     */
    /* entries leave the guest (x0, x1 pushed, x1 = the kind).           */
    /* ---------------------------------------------------------------- */
    .macro GUEST_EXIT kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x1, #\kind
    b       el2_guest_exit
    .endm

    .balign 0x800
    .global el2_guest_vectors
el2_guest_vectors:
    EL2_VECTOR 0
    EL2_VECTOR 1
    EL2_VECTOR 2
    EL2_VECTOR 3
    EL2_VECTOR 4
    EL2_VECTOR 5
    EL2_VECTOR 6
    EL2_VECTOR 7
    GUEST_EXIT 8
    GUEST_EXIT 9
    GUEST_EXIT 10
    GUEST_EXIT 11
    GUEST_EXIT 12
    GUEST_EXIT 13
    GUEST_EXIT 14
    GUEST_EXIT 15

el2_trap_return:
    ldr     x0, [sp, #{elr}]
    ldr     x1, [sp, #{spsr}]
    msr     elr_el2, x0
    msr     spsr_el2, x1
    ldp     x0, x1, [sp, #({x} + 0)]
    ldp     x2, x3, [sp, #({x} + 16)]
    ldp     x4, x5, [sp, #({x} + 32)]
    ldp     x6, x7, [sp, #({x} + 48)]
    ldp     x8, x9, [sp, #({x} + 64)]
    ldp     x10, x11, [sp, #({x} + 80)]
    ldp     x12, x13, [sp, #({x} + 96)]
    ldp     x14, x15, [sp, #({x} + 112)]
    ldp     x16, x17, [sp, #({x} + 128)]
    ldp     x18, x19, [sp, #({x} + 144)]
    ldp     x20, x21, [sp, #({x} + 160)]
    ldp     x22, x23, [sp, #({x} + 176)]
    ldp     x24, x25, [sp, #({x} + 192)]
    ldp     x26, x27, [sp, #({x} + 208)]
    ldp     x28, x29, [sp, #({x} + 224)]
    ldr     x30, [sp, #({x} + 240)]
    add     sp, sp, #{frame_size}
    eret
    dsb     nsh
    isb
"#,
    rust_main = sym super::boot::rust_main,
    secondary_main = sym super::boot::secondary_main,
    trap = sym super::trap::el2_trap,
    stacks = sym STACKS,
    secondary_mmu = sym SECONDARY_MMU,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
    frame_size = const size_of::<TrapFrame>(),
    x = const offset_of!(TrapFrame, x),
    elr = const offset_of!(TrapFrame, elr),
    spsr = const offset_of!(TrapFrame, spsr),
    mmu_mair = const offset_of!(MmuConfig, mair),
    mmu_tcr = const offset_of!(MmuConfig, tcr),
    mmu_ttbr0 = const offset_of!(MmuConfig, ttbr0),
    mmu_sctlr = const offset_of!(MmuConfig, sctlr),
    smc_x = const offset_of!(SmcRegs, x),
    fp_areas = sym FP_AREAS,
    has_sve = sym HAS_SVE,
    fp_size = const size_of::<FpState>(),
    fp_z = const offset_of!(FpState, z),
    fp_p = const offset_of!(FpState, p),
    fp_fpsr = const offset_of!(FpState, fpsr),
    fp_fpcr = const offset_of!(FpState, fpcr),
    ctx_x = const offset_of!(VcpuContext, x),
    ctx_pc = const offset_of!(VcpuContext, pc),
    ctx_pstate = const offset_of!(VcpuContext, pstate),
    ctx_sp_el0 = const offset_of!(VcpuContext, sp_el0),
    ctx_fp = const offset_of!(VcpuContext, fp),
    fp_q = const offset_of!(FpRegs, q),
    fp_fpsr_g = const offset_of!(FpRegs, fpsr),
    fp_fpcr_g = const offset_of!(FpRegs, fpcr),
);

/// Stops this CPU for good: waits for events forever.
pub fn park() -> ! {
    loop {
        // SAFETY: `wfe` only waits for an event; it touches no memory or
        // registers.
        unsafe {
            core::arch::asm!("wfe", options(nomem, nostack, preserves_flags));
        }
    }
}
