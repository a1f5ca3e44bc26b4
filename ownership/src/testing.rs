//! Host-side test doubles: simulated RAM and recorded hypervisor mappings.

extern crate std;

use crate::mem::{HypMappings, PhysMem};
use crate::types::Pfn;
use core::ptr::NonNull;
use stage2::{PAGE_SIZE, PhysAddr};
use std::boxed::Box;
use std::collections::BTreeSet;
use std::vec;

/// Simulated RAM: one contiguous region of bytes at a physical address.
pub struct SimRam {
    base: u64,
    size: u64,
    mem: NonNull<u8>,
}

impl SimRam {
    /// `size` bytes (a multiple of 4 KiB) of zeroed RAM at `base`.
    pub fn new(base: u64, size: u64) -> SimRam {
        assert!(base.is_multiple_of(PAGE_SIZE) && size.is_multiple_of(PAGE_SIZE));
        let buf: Box<[u8]> = vec![0u8; size as usize].into_boxed_slice();
        let mem = NonNull::new(Box::into_raw(buf).cast::<u8>()).expect("non-null");
        SimRam { base, size, mem }
    }

    /// The handle the ownership code uses.
    pub fn mem(&self) -> SimMem {
        SimMem {
            base: self.base,
            size: self.size,
            mem: self.mem,
        }
    }

    /// A copy of one page.
    pub fn read_page(&self, pfn: Pfn) -> [u8; 4096] {
        let mut out = [0u8; 4096];
        let p = self.mem().page_ptr(PhysAddr(pfn.0 * PAGE_SIZE));
        // SAFETY: `page_ptr` checked the page is inside the buffer.
        unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), out.as_mut_ptr(), 4096) };
        out
    }

    /// Fills one page with `byte`.
    pub fn fill_page(&self, pfn: Pfn, byte: u8) {
        let p = self.mem().page_ptr(PhysAddr(pfn.0 * PAGE_SIZE));
        // SAFETY: as above.
        unsafe { core::ptr::write_bytes(p.as_ptr(), byte, 4096) };
    }
}

impl Drop for SimRam {
    fn drop(&mut self) {
        // SAFETY: `mem` came from `Box::into_raw` of `size` bytes.
        drop(unsafe {
            Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                self.mem.as_ptr(),
                self.size as usize,
            ))
        });
    }
}

/// A copyable handle to [`SimRam`]; valid while the `SimRam` lives.
#[derive(Clone, Copy, Debug)]
pub struct SimMem {
    base: u64,
    size: u64,
    mem: NonNull<u8>,
}

// SAFETY: `page_ptr` returns a pointer into the owned buffer after checking
// the page is inside it, and the buffer is contiguous, so the rest of the
// region follows the page.
unsafe impl PhysMem for SimMem {
    #[inline]
    fn page_ptr(self, pa: PhysAddr) -> NonNull<u8> {
        let off = pa.0.checked_sub(self.base).filter(|o| *o < self.size);
        let off = off.unwrap_or_else(|| panic!("{pa:?} is outside simulated RAM"));
        // SAFETY: `off < size`, inside the buffer.
        unsafe { self.mem.add(off as usize) }
    }

    #[inline]
    fn clean_to_poc(self, _pa: PhysAddr, _len: u64) {}
}

/// Records which pages the hypervisor maps.
#[derive(Debug, Default)]
pub struct RecordingHyp {
    /// Mapped frames.
    pub mapped: BTreeSet<u64>,
}

impl HypMappings for RecordingHyp {
    fn map(&mut self, pfn: Pfn, n: u64) {
        for i in 0..n {
            assert!(
                self.mapped.insert(pfn.0 + i),
                "hyp maps {:#x} twice",
                pfn.0 + i
            );
        }
    }

    fn unmap(&mut self, pfn: Pfn, n: u64) {
        for i in 0..n {
            assert!(
                self.mapped.remove(&(pfn.0 + i)),
                "hyp unmaps {:#x} it did not map",
                pfn.0 + i
            );
        }
    }

    fn is_mapped(&self, pfn: Pfn) -> bool {
        self.mapped.contains(&pfn.0)
    }
}
