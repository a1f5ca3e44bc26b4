//! The virtual platform a protected guest sees, as the VMM library
//! ([`crate::vmm`]) builds it: where RAM and the emulated devices sit in
//! the guest's physical address space, and the protocol of the project's
//! test device.
//!
//! Everything here is plain constants (no allocation), shared by the VMM
//! (host side) and the guests that run under it (`tests/testguest`), so
//! both compile against one definition.
//!
//! # Guest physical memory map
//!
//! | IPA | size | what |
//! |-----|------|------|
//! | [`GIC_DIST`] | 64 KiB | GICv3 distributor (emulated; with the Linux-guest issue) |
//! | [`GIC_REDIST`] | 128 KiB per vCPU | GICv3 redistributors |
//! | [`UART`] | 4 KiB | PL011 console (emulated by the VMM) |
//! | [`TEST_DEVICE`] | 4 KiB | the test device (below) |
//! | [`RAM_BASE`] | the VM's memory size | RAM: one guest_memfd |
//!
//! Inside RAM (the Linux arm64 boot protocol, `booting.rst`): the kernel
//! `Image` at [`RAM_BASE`] + its `text_offset`; the initrd at the next
//! 2 MiB boundary after the kernel's `image_size`; the device tree in the
//! last 2 MiB of RAM ([`FDT_MAX`] bytes at most). The boot vCPU starts at
//! the kernel's first instruction in EL1h with D, A, I, F masked, MMU and
//! caches off, `x0` = the device tree's IPA, `x1`..`x3` = 0. The other
//! vCPUs start off; the guest brings them up with PSCI `CPU_ON` (over HVC:
//! the device tree's `/psci` has `method = "hvc"`).
//!
//! Any IPA outside RAM and the emulated devices is unbacked: a guest
//! access there is an MMIO exit the VMM answers with zeros (reads) and
//! drops (writes), counting it.

/// First IPA of guest RAM (crosvm's arm64 layout).
pub const RAM_BASE: u64 = 0x8000_0000;

/// The PL011 UART the VMM emulates for the guest console (QEMU `virt`'s
/// address, SPI 1 = INTID 33). Register file as the PL011 TRM: `UARTDR`
/// at 0x000 (a write prints a byte, a read takes one from the receive
/// FIFO the host's console fills), `UARTFR` at 0x018 (never busy
/// transmitting; RXFE/RXFF from the receive FIFO), the interrupt mask,
/// raw and masked status and clear registers (receive, receive timeout
/// and transmit interrupts drive the SPI through the `IrqLine` host call),
/// peripheral and PrimeCell id registers at 0xfe0..0xfff (Linux's AMBA
/// bus reads them); the rest read as zero and ignore writes. See
/// `host_interface::vmm::pl011`.
pub const UART: u64 = 0x0900_0000;

/// The GICv3 distributor's IPA (QEMU `virt`'s).
pub const GIC_DIST: u64 = 0x0800_0000;
/// The first GICv3 redistributor's IPA (QEMU `virt`'s); one 128 KiB frame
/// per vCPU.
pub const GIC_REDIST: u64 = 0x080a_0000;

/// The test device's IPA: a 4 KiB MMIO region the VMM emulates, through
/// which a test guest asks the VMM to act on its memory (see
/// [`testdev`]). Device-tree node `test-device@a000000`, compatible
/// [`testdev::COMPATIBLE`].
pub const TEST_DEVICE: u64 = 0x0a00_0000;

/// Largest device tree the VMM writes (it sits in the last 2 MiB of RAM).
pub const FDT_MAX: u64 = 2 << 20;

/// MPIDR of vCPU `index` as the guest reads it and the device tree's
/// `/cpus/cpu@N` `reg` names it: Aff0 = index (bit 31 is RES1 in the
/// register, not in the device tree).
pub const fn vcpu_mpidr(index: usize) -> u64 {
    index as u64
}

/// The test device: registers and commands.
///
/// All registers are 64 bits wide, little-endian, accessed with single
/// 8-byte loads and stores (anything else reads as zero / is ignored).
/// A guest writes the arguments to [`ARG0`]..[`ARG2`], then the command
/// number to [`CMD`]; the VMM carries the command out while it handles
/// that MMIO exit, so when the store completes [`RESULT`] holds the
/// outcome (0 or a negative errno unless the command says otherwise).
///
/// Guest addresses (`gpa`) must be page aligned and inside RAM; sizes are
/// multiples of 4 KiB. Otherwise the result is `-EINVAL`.
pub mod testdev {
    /// Device-tree `compatible` of the test device.
    pub const COMPATIBLE: &str = "pkvm-rs,test-device";

    /// Identity register (read-only): [`MAGIC`].
    pub const ID: u64 = 0x00;
    /// First argument (read/write).
    pub const ARG0: u64 = 0x08;
    /// Second argument (read/write).
    pub const ARG1: u64 = 0x10;
    /// Third argument (read/write).
    pub const ARG2: u64 = 0x18;
    /// Command register (write-only): writing a command number runs it.
    pub const CMD: u64 = 0x20;
    /// Result of the last command (read-only), an `i64`.
    pub const RESULT: u64 = 0x28;

    /// What [`ID`] reads: the bytes `PKVMTDEV`, little-endian.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"PKVMTDEV");

    /// `CHECK_PATTERN(gpa, byte)`: the VMM reads the page at `gpa` through
    /// its guest_memfd mapping (the way a VMM reads shared guest memory).
    /// Result: 0 if all 4096 bytes equal `byte`; 1 if they do not; `-EFAULT`
    /// if the mapping refused the access (SIGBUS: the page is private).
    pub const CHECK_PATTERN: u64 = 1;
    /// `FILL_PATTERN(gpa, byte)`: the VMM writes `byte` to every byte of
    /// the page at `gpa` through its guest_memfd mapping. Result: 0, or
    /// `-EFAULT` if the mapping refused the access (private page).
    pub const FILL_PATTERN: u64 = 2;
    /// `PROBE_PHYS(gpa)`: the VMM reads the host physical page backing
    /// `gpa` directly (bypassing the guest_memfd mapping's checks, as a
    /// buggy or malicious host would). Result: 0 if the read succeeded
    /// (the host could read it), 1 if the hypervisor refused it (an
    /// injected abort, which the VMM counts), `-ENOENT` if nothing backs
    /// `gpa`.
    pub const PROBE_PHYS: u64 = 3;
    /// `PUNCH(gpa, size)`: the VMM punches `[gpa, gpa + size)` out of the
    /// guest_memfd (`fallocate(PUNCH_HOLE)`). Result: 0 or the errno.
    pub const PUNCH: u64 = 4;
    /// `CONVERT(gpa, size, private)`: the VMM converts `[gpa, gpa + size)`
    /// of the guest_memfd to private (`private` = 1) or shared (0) on its
    /// own initiative (the guest did not ask). Result: 0 or the errno (the
    /// error offset is not reported).
    pub const CONVERT: u64 = 5;
    /// `REPORT(passed, failed)`: the guest's final tally, recorded by the
    /// VMM (which prints it and turns `failed` > 0 into a failing run).
    /// Result: 0.
    pub const REPORT: u64 = 6;
    /// `ABORTS()`: result = how many refused host accesses (injected
    /// aborts) the VMM has counted so far.
    pub const ABORTS: u64 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_does_not_overlap() {
        let regions = [
            (GIC_DIST, 0x1_0000),
            (GIC_REDIST, 0x2_0000 * 8),
            (UART, 0x1000),
            (TEST_DEVICE, 0x1000),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.0 + a.1 <= RAM_BASE, "below RAM");
            for b in &regions[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} vs {b:x?}");
            }
        }
        assert_eq!(&testdev::MAGIC.to_le_bytes(), b"PKVMTDEV");
    }
}
