//! `_start`: the arm64 Image header and the assembly path into Rust.
//!
//! The header follows the Linux arm64 boot protocol
//! (Documentation/arch/arm64/booting.rst), so the raw binary produced by
//! `cargo qemu build` can be loaded like a kernel `Image`; `cargo qemu run`
//! boots the ELF instead, which QEMU loads at its link address.
//!
//! Caveat: the code is linked at 0x4020_0000 and is not position-independent
//! yet (e.g. `core::fmt` tables hold absolute addresses), although the header
//! says "placed anywhere" (flags bit 3). QEMU's `virt` loader puts an Image
//! 2 MiB above the start of RAM, i.e. at 0x4020_0000, so both the ELF and the
//! raw binary boot there; other loaders may not.
//!
//! On entry from QEMU all CPUs may start here. Only the CPU whose MPIDR Aff0
//! is 0 continues; the others wait in a `wfe` loop until booting secondaries
//! is implemented. The boot CPU keeps `x0` (the DTB pointer under the Linux
//! protocol), enables FP/SIMD at its exception level (Rust code may use the
//! SIMD registers), points SP at the 64 KiB stack reserved by `linker.ld`,
//! zeroes `.bss` and calls `rust_main(x0)`.

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    /* arm64 Image header (64 bytes). */
    b       1f                  /* code0: branch past the header */
    .long   0                   /* code1 */
    .quad   0                   /* text_offset */
    .quad   __image_size        /* image_size: from linker.ld, .bss and stack included */
    .quad   0xa                 /* flags: little-endian, 4 KiB pages, placed anywhere */
    .quad   0                   /* res2 */
    .quad   0                   /* res3 */
    .quad   0                   /* res4 */
    .ascii  "ARM\x64"           /* magic */
    .long   0                   /* res5 (PE/COFF offset: none) */

1:
    mov     x19, x0             /* keep the DTB pointer for rust_main */

    /* Park every CPU but the one with MPIDR.Aff0 == 0. */
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, 5f

    /* Let Rust code use FP/SIMD at the current exception level. */
    mrs     x1, CurrentEL
    ubfx    x1, x1, #2, #2
    cmp     x1, #2
    b.ne    2f
    mov     x1, #0x33ff         /* CPTR_EL2: RES1 bits set, TFP (bit 10) clear */
    msr     cptr_el2, x1
    b       3f
2:
    mov     x1, #(3 << 20)      /* CPACR_EL1.FPEN = 0b11: no FP/SIMD traps */
    msr     cpacr_el1, x1
3:
    isb

    /* Stack: 64 KiB above .bss, reserved by linker.ld. */
    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1

    /* Zero .bss; linker.ld aligns both ends to 16 bytes. */
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
4:
    cmp     x1, x2
    b.hs    6f
    stp     xzr, xzr, [x1], #16
    b       4b

6:
    mov     x0, x19
    bl      rust_main           /* does not return */

5:
    wfe
    b       5b
"#
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
