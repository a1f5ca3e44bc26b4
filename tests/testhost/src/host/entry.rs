//! Assembly: the Image header and `_start`, the secondary-CPU entry, the
//! EL1 vectors and the EL1 MMU switch. Offsets into [`Frame`] and
//! [`MmuConfig`] are `offset_of!` const operands.
//!
//! `_start` (boot CPU, entered by el2 at EL1h with `x0` = device tree, MMU
//! off): reads the counter, enables FP/SIMD, installs the vectors, takes
//! stack 0, zeroes `.bss`, invalidates the image's cache lines and calls
//! `testhost_main(dtb, timestamp)`.
//!
//! [`secondary_entry`] (a CPU started with PSCI CPU_ON, `x0` = context id):
//! vectors, MMU on with [`MMU`] (cleaned to PoC by the boot CPU), its slot
//! found by its MPIDR in [`CPU_SLOTS`] (in `TPIDR_EL1`: its stack and abort
//! log; a CPU without a slot parks), then `secondary_main(context)`.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};

/// Bytes of stack per CPU slot.
pub const STACK_SIZE: usize = 64 * 1024;

/// CPU slots: stacks and abort logs for this many CPUs (el2's maximum).
pub const MAX_CPUS: usize = 8;

/// Registers saved by the EL1 vectors: general purpose, FP/SIMD (the
/// Rust handler may use them, and the suite checks el2 preserves them
/// across its own exceptions, so this vector must not disturb them
/// either), FPSR/FPCR.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    /// `x0`..`x30`.
    pub x: [u64; 31],
    /// `ELR_EL1`.
    pub elr: u64,
    /// `SPSR_EL1`.
    pub spsr: u64,
    /// FPSR.
    fpsr: u64,
    /// FPCR.
    fpcr: u64,
    /// `q0`..`q31`.
    q: [u128; 32],
}

const _: () = assert!(size_of::<Frame>().is_multiple_of(16));

/// What [`mmu_enable`] loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuConfig {
    /// `MAIR_EL1`.
    pub mair: u64,
    /// `TCR_EL1`.
    pub tcr: u64,
    /// `TTBR0_EL1`.
    pub ttbr0: u64,
    /// `SCTLR_EL1`.
    pub sctlr: u64,
}

/// A value written by the boot CPU and read by assembly with the MMU off.
#[repr(C, align(64))]
pub struct Shared<T>(UnsafeCell<T>);

// SAFETY: written by the boot CPU before it starts any other CPU, read-only
// afterwards.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Pointer to the value.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// The EL1 MMU configuration (both CPUs use the same tables).
pub static MMU: Shared<MmuConfig> = Shared(UnsafeCell::new(MmuConfig {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    sctlr: 0,
}));

/// One stack per CPU slot (slot 0: the boot CPU).
#[repr(C, align(4096))]
pub struct Stacks(UnsafeCell<[[u8; STACK_SIZE]; MAX_CPUS]>);

// SAFETY: each CPU uses its own stack, only through SP.
unsafe impl Sync for Stacks {}

/// The stacks.
pub static STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK_SIZE]; MAX_CPUS]));

/// The MPIDR affinity of the CPU of each slot (`u64::MAX`: none), written by
/// the boot CPU before it starts any other ([`super::arch::set_cpu_slots`]).
pub static CPU_SLOTS: Shared<[u64; MAX_CPUS]> = Shared(UnsafeCell::new([u64::MAX; MAX_CPUS]));

unsafe extern "C" {
    /// Where a CPU started with PSCI CPU_ON begins (`x0` = context id).
    pub fn secondary_entry();
    /// Loads `config` into the EL1 MMU registers and turns MMU and caches
    /// on.
    pub fn mmu_enable(config: *const MmuConfig);
}

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       1f
    .long   0
    .quad   0                   /* text_offset */
    .quad   __image_size
    .quad   0x2                 /* flags: little-endian, 4 KiB pages */
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"
    .long   0
1:
    mrs     x20, cntpct_el0
    mov     x19, x0
    mov     x1, #(3 << 20)      /* CPACR_EL1.FPEN: FP/SIMD for Rust */
    msr     cpacr_el1, x1
    adrp    x1, th_vectors
    add     x1, x1, :lo12:th_vectors
    msr     vbar_el1, x1
    msr     tpidr_el1, xzr      /* CPU slot 0 */
    isb
    adrp    x1, {stacks}
    add     x1, x1, :lo12:{stacks}
    mov     x2, #{stack_size}
    add     sp, x1, x2
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:
    cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    adrp    x0, __image_start
    add     x0, x0, :lo12:__image_start
    adrp    x1, __image_end
    add     x1, x1, :lo12:__image_end
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4
    mov     x2, #4
    lsl     x2, x2, x3
4:
    cmp     x0, x1
    b.hs    5f
    dc      ivac, x0
    add     x0, x0, x2
    b       4b
5:
    dsb     sy
    mov     x0, x19
    mov     x1, x20
    bl      {main}
6:
    wfe
    b       6b

    .section .text.th, "ax"
    .global secondary_entry
secondary_entry:
    mov     x19, x0
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    adrp    x1, th_vectors
    add     x1, x1, :lo12:th_vectors
    msr     vbar_el1, x1
    isb
    adrp    x0, {mmu}
    add     x0, x0, :lo12:{mmu}
    bl      mmu_enable
    /* x1 = MPIDR affinity (Aff3 in 39:32, Aff2..Aff0 in 23:0) */
    mrs     x2, mpidr_el1
    and     x1, x2, #0xffffff
    ubfx    x2, x2, #32, #8
    orr     x1, x1, x2, lsl #32
    adrp    x2, {slots}
    add     x2, x2, :lo12:{slots}
    mov     x3, #0
8:
    ldr     x4, [x2, x3, lsl #3]
    cmp     x4, x1
    b.eq    9f
    add     x3, x3, #1
    cmp     x3, #{max_cpus}
    b.lo    8b
    b       7f                  /* no slot: park */
9:
    msr     tpidr_el1, x3       /* CPU slot */
    adrp    x1, {stacks}
    add     x1, x1, :lo12:{stacks}
    mov     x2, #{stack_size}
    add     x3, x3, #1
    madd    x1, x3, x2, x1
    mov     sp, x1
    mov     x0, x19
    bl      {secondary}
7:
    wfe
    b       7b

    .global mmu_enable
mmu_enable:
    ldr     x1, [x0, #{mmu_mair}]
    ldr     x2, [x0, #{mmu_tcr}]
    ldr     x3, [x0, #{mmu_ttbr0}]
    ldr     x4, [x0, #{mmu_sctlr}]
    msr     mair_el1, x1
    msr     tcr_el1, x2
    msr     ttbr0_el1, x3
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    msr     sctlr_el1, x4
    isb
    ic      iallu
    dsb     nsh
    isb
    ret

    .macro TH_VECTOR kind
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #({x} + 0)]
    mov     x1, #\kind
    b       th_common
    .endm

    .section .text.thvectors, "ax"
    .balign 0x800
th_vectors:
    TH_VECTOR 0
    TH_VECTOR 1
    TH_VECTOR 2
    TH_VECTOR 3
    TH_VECTOR 4
    TH_VECTOR 5
    TH_VECTOR 6
    TH_VECTOR 7
    TH_VECTOR 8
    TH_VECTOR 9
    TH_VECTOR 10
    TH_VECTOR 11
    TH_VECTOR 12
    TH_VECTOR 13
    TH_VECTOR 14
    TH_VECTOR 15

    /* sp = frame with x0, x1 saved; x1 = kind. */
th_common:
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
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    str     x2, [sp, #{elr}]
    str     x3, [sp, #{spsr}]
    mrs     x2, fpsr
    mrs     x3, fpcr
    str     x2, [sp, #{fpsr}]
    str     x3, [sp, #{fpcr}]
    stp     q0, q1, [sp, #({q} + 0)]
    stp     q2, q3, [sp, #({q} + 32)]
    stp     q4, q5, [sp, #({q} + 64)]
    stp     q6, q7, [sp, #({q} + 96)]
    stp     q8, q9, [sp, #({q} + 128)]
    stp     q10, q11, [sp, #({q} + 160)]
    stp     q12, q13, [sp, #({q} + 192)]
    stp     q14, q15, [sp, #({q} + 224)]
    stp     q16, q17, [sp, #({q} + 256)]
    stp     q18, q19, [sp, #({q} + 288)]
    stp     q20, q21, [sp, #({q} + 320)]
    stp     q22, q23, [sp, #({q} + 352)]
    stp     q24, q25, [sp, #({q} + 384)]
    stp     q26, q27, [sp, #({q} + 416)]
    stp     q28, q29, [sp, #({q} + 448)]
    stp     q30, q31, [sp, #({q} + 480)]
    mov     x0, sp
    bl      {handler}
    ldp     q0, q1, [sp, #({q} + 0)]
    ldp     q2, q3, [sp, #({q} + 32)]
    ldp     q4, q5, [sp, #({q} + 64)]
    ldp     q6, q7, [sp, #({q} + 96)]
    ldp     q8, q9, [sp, #({q} + 128)]
    ldp     q10, q11, [sp, #({q} + 160)]
    ldp     q12, q13, [sp, #({q} + 192)]
    ldp     q14, q15, [sp, #({q} + 224)]
    ldp     q16, q17, [sp, #({q} + 256)]
    ldp     q18, q19, [sp, #({q} + 288)]
    ldp     q20, q21, [sp, #({q} + 320)]
    ldp     q22, q23, [sp, #({q} + 352)]
    ldp     q24, q25, [sp, #({q} + 384)]
    ldp     q26, q27, [sp, #({q} + 416)]
    ldp     q28, q29, [sp, #({q} + 448)]
    ldp     q30, q31, [sp, #({q} + 480)]
    ldr     x2, [sp, #{fpsr}]
    ldr     x3, [sp, #{fpcr}]
    msr     fpsr, x2
    msr     fpcr, x3
    ldr     x0, [sp, #{elr}]
    ldr     x1, [sp, #{spsr}]
    msr     elr_el1, x0
    msr     spsr_el1, x1
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
"#,
    main = sym super::testhost_main,
    secondary = sym super::secondary_main,
    handler = sym super::exception,
    stacks = sym STACKS,
    mmu = sym MMU,
    slots = sym CPU_SLOTS,
    max_cpus = const MAX_CPUS,
    stack_size = const STACK_SIZE,
    frame_size = const size_of::<Frame>(),
    x = const offset_of!(Frame, x),
    elr = const offset_of!(Frame, elr),
    spsr = const offset_of!(Frame, spsr),
    fpsr = const offset_of!(Frame, fpsr),
    fpcr = const offset_of!(Frame, fpcr),
    q = const offset_of!(Frame, q),
    mmu_mair = const offset_of!(MmuConfig, mair),
    mmu_tcr = const offset_of!(MmuConfig, tcr),
    mmu_ttbr0 = const offset_of!(MmuConfig, ttbr0),
    mmu_sctlr = const offset_of!(MmuConfig, sctlr),
);
