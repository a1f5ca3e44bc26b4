//! The guest's RAM: one guest_memfd (`GUEST_MEMFD_FLAG_MMAP`, private by
//! default) bound as memslot 0 at [`RAM_BASE`], and what the VMM does with
//! it: load files in place (DESIGN §5), read and write shared pages
//! through the mapping, convert and punch ranges, and read a backing frame
//! directly.
//!
//! # Loading in place
//!
//! A file goes in as the host's own shared pages and is converted to
//! private in place: the range is converted to shared, written through the
//! guest_memfd mapping, and converted back to private; the guest then gets
//! those very pages (with their contents) as its own. With 2 MiB folios
//! on, the 2 MiB blocks a file touches are allocated first as whole
//! folios, so they are split by the first conversion and merge back with
//! the second, and the guest gets them as 2 MiB blocks.

use alloc::boxed::Box;

use crate::gmem::{MmapError, PAGE};
use crate::kvm::{
    GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, KvmCreateGuestMemfd,
    KvmMemoryAttributes2, KvmUserspaceMemoryRegion2, errno,
};
use crate::platform::RAM_BASE;
use crate::vm::GmemId;

use super::backend::{Probe, VmBackend};
use super::image::BLOCK;

/// Why a range of guest addresses was refused before anything was done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BadRange;

/// Setting up guest RAM failed: the VM (to tear down) and the errno.
pub struct SetupError<B: VmBackend> {
    /// The VM, as it was.
    pub vm: B,
    /// Why (positive errno).
    pub errno: i32,
}

/// Guest RAM over a [`VmBackend`].
pub struct GuestMemory<B: VmBackend> {
    vm: B,
    ram: GmemId,
    size: u64,
}

impl<B: VmBackend> GuestMemory<B> {
    /// Creates the RAM guest_memfd of `size` bytes in `vm` and binds it at
    /// [`RAM_BASE`] as memslot 0. On failure the VM is handed back with
    /// the errno, so it can still be torn down.
    pub fn new(mut vm: B, size: u64) -> Result<Self, Box<SetupError<B>>> {
        let ram = match vm.create_guest_memfd(&KvmCreateGuestMemfd {
            size,
            flags: GUEST_MEMFD_FLAG_MMAP,
            reserved: [0; 6],
        }) {
            Ok(id) => id,
            Err(e) => return Err(Box::new(SetupError { vm, errno: e })),
        };
        if let Err(e) = vm.set_memory_region(&KvmUserspaceMemoryRegion2 {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: RAM_BASE,
            memory_size: size,
            guest_memfd: ram.0,
            ..Default::default()
        }) {
            return Err(Box::new(SetupError { vm, errno: e }));
        }
        Ok(GuestMemory { vm, ram, size })
    }

    /// The VM.
    pub fn vm(&mut self) -> &mut B {
        &mut self.vm
    }

    /// The VM, to look at.
    pub fn vm_ref(&self) -> &B {
        &self.vm
    }

    /// Gives the VM back (to tear it down).
    pub fn into_vm(self) -> B {
        self.vm
    }

    /// The RAM guest_memfd.
    pub fn ram(&self) -> GmemId {
        self.ram
    }

    /// RAM bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The guest_memfd offset of `[gpa, gpa + len)` if the range lies
    /// inside RAM (a `len` of 0 is inside when `gpa` is).
    pub fn offset_of(&self, gpa: u64, len: u64) -> Result<u64, BadRange> {
        let offset = gpa.checked_sub(RAM_BASE).ok_or(BadRange)?;
        let end = offset.checked_add(len).ok_or(BadRange)?;
        if offset >= self.size || end > self.size {
            return Err(BadRange);
        }
        Ok(offset)
    }

    /// Whether `ipa` is inside RAM.
    pub fn contains(&self, ipa: u64) -> bool {
        self.offset_of(ipa, 0).is_ok()
    }

    /// Converts `[offset, offset + len)` of RAM (the error offset is
    /// dropped).
    pub fn convert(&mut self, offset: u64, len: u64, private: bool) -> Result<(), i32> {
        convert(&mut self.vm, self.ram, offset, len, private).map_err(|(e, _)| e)
    }

    /// Loads `data` at RAM offset `offset` (page aligned) in place:
    /// shared, written through the mapping, then private
    /// ([`load_in_place`]).
    pub fn load(&mut self, offset: u64, data: &[u8]) -> Result<(), (&'static str, i32)> {
        load_in_place(&mut self.vm, self.ram, offset, data)
    }

    /// Reads RAM at `offset` through the guest_memfd mapping (SIGBUS on a
    /// private page).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), MmapError> {
        self.vm.gmem_read(self.ram, offset, buf)
    }

    /// Writes RAM at `offset` through the guest_memfd mapping.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), MmapError> {
        self.vm.gmem_write(self.ram, offset, data)
    }

    /// Punches `[offset, offset + len)` out of RAM.
    pub fn punch(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        self.vm.gmem_punch_hole(self.ram, offset, len)
    }

    /// Reads the page at RAM offset `offset` the most direct way the
    /// backend has ([`VmBackend::probe`]): over the hypervisor's conduit,
    /// the backing frame itself, bypassing the mapping's checks (as a
    /// buggy or malicious host would).
    pub fn probe(&mut self, offset: u64) -> Probe {
        self.vm.probe(self.ram, offset)
    }
}

/// `KVM_SET_MEMORY_ATTRIBUTES2` on `[offset, offset + len)` of guest_memfd
/// `gmem`: to private or to shared. On failure, the errno and the error
/// offset.
pub fn convert<B: VmBackend + ?Sized>(
    vm: &mut B,
    gmem: GmemId,
    offset: u64,
    len: u64,
    private: bool,
) -> Result<(), (i32, u64)> {
    let mut a = KvmMemoryAttributes2 {
        offset,
        size: len,
        attributes: if private {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        },
        ..Default::default()
    };
    vm.set_memory_attributes(gmem, &mut a)
        .map_err(|e| (e, a.error_offset))
}

/// Loads `data` at offset `offset` (page aligned) of guest_memfd `gmem` in
/// place (module docs): the range (rounded up to whole pages) is converted
/// to shared, written through the mapping, and converted to private. With
/// 2 MiB folios on ([`VmBackend::huge_folios`]), the 2 MiB blocks it
/// touches are allocated first ([`VmBackend::gmem_allocate`]). On failure,
/// which step failed and its errno.
pub fn load_in_place<B: VmBackend + ?Sized>(
    vm: &mut B,
    gmem: GmemId,
    offset: u64,
    data: &[u8],
) -> Result<(), (&'static str, i32)> {
    if data.is_empty() {
        return Ok(());
    }
    let size = vm
        .gmem_size(gmem)
        .ok_or(("finding its guest_memfd", errno::EBADF))?;
    let len = (data.len() as u64).next_multiple_of(PAGE);
    let end = offset
        .checked_add(len)
        .filter(|e| offset.is_multiple_of(PAGE) && *e <= size)
        .ok_or(("placing it in the guest_memfd", errno::EINVAL))?;
    if vm.huge_folios() {
        let first = offset - offset % BLOCK;
        let last = end.next_multiple_of(BLOCK).min(size);
        vm.gmem_allocate(gmem, first, last - first)
            .map_err(|e| ("allocating its backing", e))?;
    }
    convert(vm, gmem, offset, len, false).map_err(|(e, _)| ("converting it to shared", e))?;
    vm.gmem_write(gmem, offset, data)
        .map_err(|_| ("writing it through the guest_memfd mapping", errno::EFAULT))?;
    convert(vm, gmem, offset, len, true).map_err(|(e, _)| ("converting it to private", e))
}
