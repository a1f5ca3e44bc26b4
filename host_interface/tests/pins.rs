//! host_interface's own contract for long-term pins (GUP) on guest_memfd
//! pages, tested over a fake hypervisor so that it holds whatever sits
//! below the VM layer (`src/vm.rs`, DESIGN §5, guest_memfd.md §3):
//!
//! - shared → private fails with `EAGAIN` while the host pins a page of
//!   the range, `error_offset` naming the first pinned page, and nothing
//!   changes: no attribute, no host call (a lend to the guest is not
//!   ended), the pinned page keeps its contents;
//! - pins do not block private → shared, nor a range that does not change;
//! - a pin inside a 2 MiB folio lent as one block fails the whole range
//!   and the block stays lent;
//! - a guest's own MEM_UNSHARE of a page the host pins fails the same way:
//!   el2 is not asked to complete it, and the next run refuses it;
//! - a pinned page punched out of the file stays allocated until its last
//!   pin drops; destroying the VM frees it;
//! - pins are taken only on shared pages inside the file.
//!
//! The fake hypervisor does what it is told and records every call; the
//! fake allocator reuses freed pages first, so a page freed too early
//! would be handed out again.

use host_interface::abi::{Exit, HostCall, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use host_interface::gmem::{GuestMapping, HUGE_PAGES};
use host_interface::hypervisor::{AccessFault, CallError, Hypervisor};
use host_interface::kvm::{
    GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE, KvmCreateGuestMemfd, KvmMemoryAttributes2,
    KvmUserspaceMemoryRegion2, errno,
};
use host_interface::vm::{GmemId, HostPages, KvmVm, Vcpu, VcpuExit, Vm};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const P: u64 = 4096;
/// Where guest RAM starts (the memslot's GPA).
const RAM: u64 = 0x8000_0000;
const HANDLE: u64 = 0x1000;

/// A hypervisor that accepts every call, records it, and answers
/// `VcpuRun` from a script of exits. Frames donated to the guest (and not
/// shared back) refuse host accesses, as el2's stage-2 would.
#[derive(Default)]
struct FakeHv {
    calls: Vec<(HostCall, Vec<u64>)>,
    exits: VecDeque<Exit>,
    mem: BTreeMap<u64, Vec<u8>>,
    /// Frames the host cannot access.
    private: BTreeSet<u64>,
    /// Donated guest frames: gfn → pfn.
    donated: BTreeMap<u64, u64>,
}

impl FakeHv {
    /// Frames `[pa, pa + len)` touches, or the first refused address.
    fn check(&self, pa: u64, len: usize) -> Result<(), AccessFault> {
        let end = pa + len as u64;
        let mut at = pa;
        while at < end {
            if self.private.contains(&(at / P)) {
                return Err(AccessFault { pa: at });
            }
            at = (at / P + 1) * P;
        }
        Ok(())
    }
}

impl Hypervisor for FakeHv {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        self.calls.push((call, args.to_vec()));
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        match call {
            HostCall::VmCreate => return Ok([HANDLE, 0, 0, 0, 0]),
            HostCall::VcpuRun => {
                let exit = self.exits.pop_front().unwrap_or(Exit::Wfi);
                return Ok(exit.to_regs());
            }
            HostCall::DonateGuest => {
                for i in 0..a(3) {
                    self.private.insert(a(1) + i);
                    self.donated.insert(a(2) + i, a(1) + i);
                }
            }
            HostCall::ConvertComplete => {
                for gfn in a(1)..a(1) + a(2) {
                    let pfn = self.donated[&gfn];
                    if a(3) == 1 {
                        self.private.remove(&pfn);
                    } else {
                        self.private.insert(pfn);
                    }
                }
            }
            _ => {}
        }
        Ok([0; 5])
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        self.check(pa, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = pa + i as u64;
            *b = self.mem.get(&(at / P)).map_or(0, |p| p[(at % P) as usize]);
        }
        Ok(())
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        self.check(pa, data.len())?;
        for (i, b) in data.iter().enumerate() {
            let at = pa + i as u64;
            let page = self
                .mem
                .entry(at / P)
                .or_insert_with(|| vec![0; P as usize]);
            page[(at % P) as usize] = *b;
        }
        Ok(())
    }
}

/// A page allocator that hands out freed single pages first, and counts
/// what is outstanding.
struct Pages {
    next: u64,
    free: Vec<u64>,
    /// Pages allocated and not freed.
    outstanding: BTreeSet<u64>,
}

impl Pages {
    fn new() -> Pages {
        Pages {
            next: 0x4_0000,
            free: Vec::new(),
            outstanding: BTreeSet::new(),
        }
    }
}

impl HostPages for Pages {
    fn alloc(&mut self, order: u32) -> Option<u64> {
        let pfn = match (order, self.free.pop()) {
            (0, Some(p)) => p,
            (_, p) => {
                self.free.extend(p);
                let n = 1u64 << order;
                let pfn = self.next.next_multiple_of(n);
                self.next = pfn + n;
                pfn
            }
        };
        for p in pfn..pfn + (1 << order) {
            assert!(self.outstanding.insert(p), "page {p:#x} handed out twice");
        }
        Some(pfn)
    }

    fn free(&mut self, pfn: u64, order: u32) {
        for p in pfn..pfn + (1 << order) {
            assert!(self.outstanding.remove(&p), "page {p:#x} freed twice");
            self.free.push(p);
        }
    }
}

type TestVm = KvmVm<FakeHv, Pages>;

/// A VM with one vCPU and a guest_memfd of `pages` pages (shared or
/// private) bound at [`RAM`].
fn vm_with_ram(pages: u64, shared: bool) -> (TestVm, GmemId) {
    let mut vm = KvmVm::new(FakeHv::default(), Pages::new(), 1).unwrap();
    let flags = GUEST_MEMFD_FLAG_MMAP
        | if shared {
            GUEST_MEMFD_FLAG_INIT_SHARED
        } else {
            0
        };
    let id = vm
        .create_guest_memfd(&KvmCreateGuestMemfd {
            size: pages * P,
            flags,
            reserved: [0; 6],
        })
        .unwrap();
    vm.set_memory_region(&KvmUserspaceMemoryRegion2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: RAM,
        memory_size: pages * P,
        guest_memfd: id.0,
        ..Default::default()
    })
    .unwrap();
    (vm, id)
}

/// `KVM_SET_MEMORY_ATTRIBUTES2` of `[offset, offset + len)`: the error
/// comes with its `error_offset`.
fn convert(
    vm: &mut TestVm,
    id: GmemId,
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
    vm.set_memory_attributes(id, &mut a)
        .map_err(|e| (e, a.error_offset))
}

fn private_pages(vm: &TestVm, id: GmemId, pages: u64) -> Vec<bool> {
    let g = vm.gmem(id).unwrap();
    (0..pages).map(|p| g.is_private(p)).collect()
}

/// Host calls with their arguments.
type Calls = Vec<(HostCall, Vec<u64>)>;

/// The host calls made since `from`.
fn calls_since(vm: &mut TestVm, from: usize) -> Calls {
    vm.hypervisor().calls[from..].to_vec()
}

fn calls(vm: &mut TestVm) -> usize {
    vm.hypervisor().calls.len()
}

fn fill(vm: &mut TestVm, id: GmemId, page: u64, byte: u8) {
    vm.gmem_write(id, page * P, &[byte; P as usize]).unwrap();
}

fn first_byte(vm: &mut TestVm, id: GmemId, page: u64) -> u8 {
    let mut b = [0u8; 1];
    vm.gmem_read(id, page * P, &mut b).unwrap();
    b[0]
}

/// Runs vCPU 0 through `exits` (the fake answers `Wfi` once they run out).
fn run(vm: &mut TestVm, exits: &[Exit]) -> VcpuExit {
    vm.hypervisor().exits.extend(exits.iter().copied());
    vm.vcpu(0).run().unwrap()
}

fn fault(gpa: u64) -> Exit {
    Exit::Stage2Fault {
        gpa,
        write: true,
        exec: false,
        isv: true,
        size: 8,
        reg: 1,
        data: 0,
        hvc: false,
    }
}

#[test]
fn a_pinned_page_fails_shared_to_private_with_eagain_at_its_offset() {
    let (mut vm, id) = vm_with_ram(4, true);
    for p in 0..4 {
        fill(&mut vm, id, p, 0x80 + p as u8);
    }
    for i in 0..4u64 {
        vm.gmem_pin(id, i * P).unwrap();
        assert_eq!(vm.gmem(id).unwrap().pins(i), 1);
        let before = calls(&mut vm);
        assert_eq!(
            convert(&mut vm, id, 0, 4 * P, true),
            Err((errno::EAGAIN, i * P)),
            "page {i} pinned"
        );
        assert_eq!(private_pages(&vm, id, 4), [false; 4], "nothing changed");
        assert_eq!(calls_since(&mut vm, before), Calls::new(), "no host call");
        // One page at a time: only the pinned one fails.
        for p in 0..4 {
            let r = convert(&mut vm, id, p * P, P, true);
            if p == i {
                assert_eq!(r, Err((errno::EAGAIN, p * P)));
            } else {
                assert_eq!(r, Ok(()), "page {p} (page {i} pinned)");
            }
        }
        // The pinned page is still the host's, shared, with its contents.
        assert!(!vm.gmem(id).unwrap().is_private(i));
        assert_eq!(first_byte(&mut vm, id, i), 0x80 + i as u8);
        convert(&mut vm, id, 0, 4 * P, false).unwrap();
        vm.gmem_unpin(id, i * P).unwrap();
        assert_eq!(vm.gmem(id).unwrap().pins(i), 0);
        // Unpinned: the whole range converts, and back.
        convert(&mut vm, id, 0, 4 * P, true).unwrap();
        assert_eq!(private_pages(&vm, id, 4), [true; 4]);
        convert(&mut vm, id, 0, 4 * P, false).unwrap();
    }
    vm.destroy().unwrap();
}

#[test]
fn the_first_pinned_page_of_the_range_is_the_error_offset() {
    let (mut vm, id) = vm_with_ram(8, true);
    for p in [6, 2, 5] {
        vm.gmem_pin(id, p * P).unwrap();
    }
    assert_eq!(
        convert(&mut vm, id, 0, 8 * P, true),
        Err((errno::EAGAIN, 2 * P))
    );
    assert_eq!(
        convert(&mut vm, id, 3 * P, 5 * P, true),
        Err((errno::EAGAIN, 5 * P))
    );
    // Pages already private do not count; pinned pages outside the range
    // do not either.
    convert(&mut vm, id, 3 * P, 2 * P, true).unwrap();
    assert_eq!(
        convert(&mut vm, id, 3 * P, 4 * P, true),
        Err((errno::EAGAIN, 5 * P))
    );
    convert(&mut vm, id, 0, 2 * P, true).unwrap();
    convert(&mut vm, id, 7 * P, P, true).unwrap();
    assert_eq!(
        private_pages(&vm, id, 8),
        [true, true, false, true, true, false, false, true]
    );
    // Two pins on one page: one unpin is not enough.
    vm.gmem_pin(id, 2 * P).unwrap();
    vm.gmem_unpin(id, 2 * P).unwrap();
    assert_eq!(
        convert(&mut vm, id, 2 * P, P, true),
        Err((errno::EAGAIN, 2 * P))
    );
    vm.gmem_unpin(id, 2 * P).unwrap();
    convert(&mut vm, id, 2 * P, P, true).unwrap();
    vm.destroy().unwrap();
}

#[test]
fn pins_block_neither_private_to_shared_nor_an_unchanged_range() {
    let (mut vm, id) = vm_with_ram(4, true);
    convert(&mut vm, id, P, 3 * P, true).unwrap();
    vm.gmem_pin(id, 0).unwrap();
    // Page 0 is pinned and already shared: to shared changes nothing.
    convert(&mut vm, id, 0, P, false).unwrap();
    // Private to shared around the pinned page.
    convert(&mut vm, id, 0, 4 * P, false).unwrap();
    assert_eq!(private_pages(&vm, id, 4), [false; 4]);
    // Private pages to private, next to the pinned page (outside the range).
    convert(&mut vm, id, P, 3 * P, true).unwrap();
    convert(&mut vm, id, P, 3 * P, true).unwrap();
    assert_eq!(private_pages(&vm, id, 4), [false, true, true, true]);
    vm.gmem_unpin(id, 0).unwrap();
    vm.destroy().unwrap();
}

#[test]
fn eagain_keeps_a_pinned_page_lent_to_the_guest() {
    let (mut vm, id) = vm_with_ram(4, true);
    vm.set_huge_folios(false);
    fill(&mut vm, id, 1, 0x11);
    // The guest touches page 1: the host lends it.
    assert_eq!(run(&mut vm, &[fault(RAM + P)]), VcpuExit::Wfi);
    assert_eq!(
        vm.gmem(id).unwrap().guest_mapping(1),
        Some(GuestMapping::Lent {
            gfn: (RAM + P) / P,
            block: false
        })
    );
    vm.gmem_pin(id, P).unwrap();
    let before = calls(&mut vm);
    assert_eq!(
        convert(&mut vm, id, 0, 4 * P, true),
        Err((errno::EAGAIN, P))
    );
    assert_eq!(
        calls_since(&mut vm, before),
        Calls::new(),
        "a refused conversion ends no lend"
    );
    assert!(vm.gmem(id).unwrap().guest_mapping(1).is_some());
    assert_eq!(private_pages(&vm, id, 4), [false; 4]);
    // Unpinned, the conversion ends the lend first.
    vm.gmem_unpin(id, P).unwrap();
    let before = calls(&mut vm);
    convert(&mut vm, id, 0, 4 * P, true).unwrap();
    assert_eq!(
        calls_since(&mut vm, before),
        [(HostCall::UnshareGuest, vec![HANDLE, (RAM + P) / P, 1])]
    );
    assert_eq!(vm.gmem(id).unwrap().guest_mapping(1), None);
    vm.destroy().unwrap();
}

#[test]
fn a_pin_inside_a_2mib_folio_fails_the_whole_range_and_keeps_the_block_lent() {
    let (mut vm, id) = vm_with_ram(HUGE_PAGES, true);
    let gfn0 = RAM / P;
    // The guest touches page 5: the host lends the whole 2 MiB folio as
    // one block.
    assert_eq!(run(&mut vm, &[fault(RAM + 5 * P)]), VcpuExit::Wfi);
    let (_, folio) = vm.gmem(id).unwrap().frame(5).unwrap();
    assert_eq!(folio.order, 9);
    let lent = Some(GuestMapping::Lent {
        gfn: gfn0 + 5,
        block: true,
    });
    assert_eq!(vm.gmem(id).unwrap().guest_mapping(5), lent);
    // vhost pins a page of it.
    vm.gmem_pin(id, 5 * P).unwrap();
    let before = calls(&mut vm);
    assert_eq!(
        convert(&mut vm, id, 0, HUGE_PAGES * P, true),
        Err((errno::EAGAIN, 5 * P))
    );
    assert_eq!(calls_since(&mut vm, before), Calls::new());
    assert_eq!(vm.gmem(id).unwrap().guest_mapping(5), lent);
    assert_eq!(vm.gmem(id).unwrap().frame(0).unwrap().1, folio);
    assert!(private_pages(&vm, id, HUGE_PAGES).iter().all(|p| !p));
    // Another page of the folio converts: the block lend ends whole; the
    // pinned page stays shared, pinned and in place.
    let before = calls(&mut vm);
    convert(&mut vm, id, 6 * P, P, true).unwrap();
    assert_eq!(
        calls_since(&mut vm, before),
        [(HostCall::UnshareGuest, vec![HANDLE, gfn0, HUGE_PAGES])]
    );
    let g = vm.gmem(id).unwrap();
    assert_eq!(
        (g.pins(5), g.is_private(5), g.is_private(6)),
        (1, false, true)
    );
    assert_eq!(g.pfn(5), Some(folio.pfn + 5));
    vm.gmem_unpin(id, 5 * P).unwrap();
    convert(&mut vm, id, 0, HUGE_PAGES * P, true).unwrap();
    assert!(private_pages(&vm, id, HUGE_PAGES).iter().all(|p| *p));
    vm.destroy().unwrap();
}

#[test]
fn the_guests_unshare_of_a_pinned_page_fails_and_is_refused() {
    let (mut vm, id) = vm_with_ram(4, false);
    vm.set_huge_folios(false);
    let gfn = RAM / P;
    // The guest touches its private page 0 (donated), then shares it.
    let share = Exit::MemoryFault {
        gpa: RAM,
        size: P,
        flags: 0,
    };
    assert_eq!(
        run(&mut vm, &[fault(RAM), share]),
        VcpuExit::MemoryFault {
            gpa: RAM,
            size: P,
            flags: 0
        }
    );
    let before = calls(&mut vm);
    convert(&mut vm, id, 0, P, false).unwrap();
    assert_eq!(
        calls_since(&mut vm, before),
        [(HostCall::ConvertComplete, vec![HANDLE, gfn, 1, 1])]
    );
    // The VMM pins the page the guest shared.
    vm.gmem_pin(id, 0).unwrap();
    let unshare = Exit::MemoryFault {
        gpa: RAM,
        size: P,
        flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
    };
    assert_eq!(
        run(&mut vm, &[unshare]),
        VcpuExit::MemoryFault {
            gpa: RAM,
            size: P,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
        }
    );
    let before = calls(&mut vm);
    assert_eq!(convert(&mut vm, id, 0, P, true), Err((errno::EAGAIN, 0)));
    assert_eq!(
        calls_since(&mut vm, before),
        Calls::new(),
        "el2 is not asked to complete it"
    );
    assert!(!vm.gmem(id).unwrap().is_private(0));
    // Running the vCPU again refuses the request: the guest gets -3.
    let before = calls(&mut vm);
    assert_eq!(run(&mut vm, &[]), VcpuExit::Wfi);
    assert_eq!(
        calls_since(&mut vm, before)[0],
        (HostCall::ConvertRefuse, vec![HANDLE])
    );
    // Unpinned, the guest's next request goes through.
    vm.gmem_unpin(id, 0).unwrap();
    run(&mut vm, &[unshare]);
    let before = calls(&mut vm);
    convert(&mut vm, id, 0, P, true).unwrap();
    assert_eq!(
        calls_since(&mut vm, before),
        [(HostCall::ConvertComplete, vec![HANDLE, gfn, 1, 0])]
    );
    assert!(vm.gmem(id).unwrap().is_private(0));
    vm.destroy().unwrap();
}

#[test]
fn a_punched_pinned_page_is_freed_on_its_last_unpin() {
    let (mut vm, id) = vm_with_ram(4, true);
    vm.set_huge_folios(false);
    fill(&mut vm, id, 0, 0xd0);
    let pinned = vm.gmem(id).unwrap().pfn(0).unwrap();
    vm.gmem_pin(id, 0).unwrap();
    vm.gmem_pin(id, 0).unwrap();
    vm.gmem_punch_hole(id, 0, P).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(0), None, "out of the file");
    // The next page the host allocates is not the pinned one.
    fill(&mut vm, id, 1, 0xd1);
    assert_ne!(vm.gmem(id).unwrap().pfn(1), Some(pinned));
    vm.gmem_unpin(id, 0).unwrap();
    fill(&mut vm, id, 2, 0xd2);
    assert_ne!(vm.gmem(id).unwrap().pfn(2), Some(pinned), "one pin left");
    vm.gmem_unpin(id, 0).unwrap();
    assert_eq!(vm.gmem_unpin(id, 0), Err(errno::EINVAL), "no pin left");
    // Freed on the last unpin: the allocator hands it out again.
    fill(&mut vm, id, 3, 0xd3);
    assert_eq!(vm.gmem(id).unwrap().pfn(3), Some(pinned));
    let pages = vm.destroy().unwrap();
    assert!(pages.outstanding.is_empty(), "{:x?}", pages.outstanding);
}

#[test]
fn destroying_the_vm_frees_pinned_and_punched_pinned_pages() {
    let (mut vm, id) = vm_with_ram(4, true);
    vm.set_huge_folios(false);
    fill(&mut vm, id, 0, 1);
    fill(&mut vm, id, 1, 2);
    vm.gmem_pin(id, 0).unwrap();
    vm.gmem_pin(id, P).unwrap();
    vm.gmem_punch_hole(id, P, P).unwrap();
    let pages = vm.destroy().unwrap();
    assert!(pages.outstanding.is_empty(), "{:x?}", pages.outstanding);
}

#[test]
fn pins_are_only_taken_on_shared_pages_inside_the_file() {
    let (mut vm, id) = vm_with_ram(4, true);
    convert(&mut vm, id, 2 * P, P, true).unwrap();
    assert_eq!(vm.gmem_pin(id, 2 * P), Err(errno::EFAULT), "private");
    assert_eq!(vm.gmem_pin(id, 4 * P), Err(errno::EFAULT), "past the end");
    assert_eq!(vm.gmem_pin(id, P + 8), Err(errno::EFAULT), "unaligned");
    assert_eq!(vm.gmem_pin(GmemId(7), 0), Err(errno::EBADF));
    assert_eq!(vm.gmem_unpin(id, 0), Err(errno::EINVAL), "not pinned");
    assert!((0..4).all(|p| vm.gmem(id).unwrap().pins(p) == 0));
    // A pin backs the page (zeroed) if it had no backing yet.
    vm.gmem_pin(id, 3 * P).unwrap();
    assert!(vm.gmem(id).unwrap().pfn(3).is_some());
    assert_eq!(first_byte(&mut vm, id, 3), 0);
    vm.gmem_unpin(id, 3 * P).unwrap();
    vm.destroy().unwrap();
}
