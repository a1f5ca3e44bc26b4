//! guest_memfd conformance: the cases 1–37 of guest_memfd.md §4 (Linux's
//! guest_memfd selftests, the memslot and x86 conversion selftests, and the
//! in-place conversion series' argument rules), each either exercised
//! through the VMM API on the simulated machine, or listed with the reason
//! it does not apply to this model.
//!
//! How the fd/ioctl world maps onto the model:
//!
//! | Linux | here |
//! |---|---|
//! | `KVM_CREATE_GUEST_MEMFD` | [`Vm::create_guest_memfd`] → [`GmemId`] |
//! | `mmap(MAP_SHARED / MAP_PRIVATE)` | [`GuestMemfd::mmap`] |
//! | loads/stores through the mmap, `SIGBUS` | [`KvmVm::gmem_read`] / [`KvmVm::gmem_write`], [`MmapError::Sigbus`] |
//! | `fallocate(PUNCH_HOLE \| KEEP_SIZE)` | [`KvmVm::gmem_punch_hole`] |
//! | `fstat` | [`GuestMemfd::size`], [`PAGE`] |
//! | GUP long-term pin | [`KvmVm::gmem_pin`] / [`KvmVm::gmem_unpin`] |
//! | `KVM_SET_USER_MEMORY_REGION2` | [`Vm::set_memory_region`] |
//! | `KVM_SET_MEMORY_ATTRIBUTES2` | [`Vm::set_memory_attributes`] |
//! | guest reads/writes, ucalls | scripted guests ([`GuestOp`]) |
//! | x86 `MAP_GPA_RANGE` / implicit conversion | MEM_SHARE / MEM_UNSHARE → [`VcpuExit::MemoryFault`] |
//!
//! The rule that changes several x86 cases: **the owner decides** (DESIGN
//! §5). The VMM converts pages the host owns at will; pages the guest owns
//! (faulted into it as private) change only through the guest's own
//! MEM_SHARE / MEM_UNSHARE request. The x86 selftests flip guest-touched
//! pages from the host side; here those flips go through a guest request.
//!
//! [`GuestMemfd::mmap`]: host_interface::gmem::GuestMemfd::mmap
//! [`GuestMemfd::size`]: host_interface::gmem::GuestMemfd::size

use el2::sim::{GuestOp, Machine, SimPages};
use host_interface::abi::{GuestCall, GuestState, HostCall, SMCCC_INVALID_PARAMETER};
use host_interface::gmem::{MmapError, PAGE};
use host_interface::hypervisor::{AccessFault, CallError, Hypervisor};
use host_interface::kvm::*;
use host_interface::vm::{GmemId, KvmVm, Vcpu, VcpuExit, Vm};
use std::cell::RefCell;

/// Where guest RAM starts.
const RAM: u64 = 0x8000_0000;
const P: u64 = PAGE;
const MIB2: u64 = 2 << 20;
const MMAP: u64 = GUEST_MEMFD_FLAG_MMAP;
const SHARED: u64 = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;

type SimVm<'m> = KvmVm<&'m mut Machine, SimPages>;

// ---------------------------------------------------------------------------
// The case table.

/// How a selftest case relates to this model.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// The case applies as written; the test exercises it.
    Applies(&'static str),
    /// The case's point applies, but the model answers differently.
    AppliesDifferently {
        /// What the test checks.
        how: &'static str,
        /// Why it differs.
        why: &'static str,
    },
    /// The case has no counterpart in this model.
    DoesNotApply(&'static str),
}

struct Case {
    number: u32,
    verdict: Verdict,
    test: Option<fn()>,
}

const fn applies(number: u32, what: &'static str, test: fn()) -> Case {
    Case {
        number,
        verdict: Verdict::Applies(what),
        test: Some(test),
    }
}

const fn differs(number: u32, how: &'static str, why: &'static str, test: fn()) -> Case {
    Case {
        number,
        verdict: Verdict::AppliesDifferently { how, why },
        test: Some(test),
    }
}

const fn not_here(number: u32, why: &'static str) -> Case {
    Case {
        number,
        verdict: Verdict::DoesNotApply(why),
        test: None,
    }
}

const CASES: &[Case] = &[
    applies(
        1,
        "each single flag bit: create succeeds iff the bit is supported (MMAP, INIT_SHARED), else EINVAL",
        case_01_flags,
    ),
    applies(
        2,
        "sizes 0 and 1..PAGE_SIZE-1 (and unaligned sizes) give EINVAL for every flag combination",
        case_02_sizes,
    ),
    applies(
        3,
        "two files (1 and 2 pages): sizes match, distinct identities, the first unchanged",
        case_03_two_files,
    ),
    not_here(
        4,
        "the model has no fd-level read/write/pread/pwrite: a guest_memfd is a GmemId inside KvmVm and \
         the only host data path is the MAP_SHARED mapping (gmem_read/gmem_write model loads and stores \
         through it), so there is no syscall that could be refused",
    ),
    applies(
        5,
        "MMAP|INIT_SHARED: fill with 0xaa and read back; punch page 0 -> zeros there, 0xaa elsewhere; \
         rewrite page 0 -> all 0xaa",
        case_05_fill_punch_refill,
    ),
    differs(
        6,
        "an access past the end SIGBUSes at offset == size (writes and reads), check_access agrees, \
         bytes below size keep what was written before",
        "the model checks an access whole before moving any byte: a write straddling the end SIGBUSes \
         and writes nothing, where memset through a real mapping stores the bytes below size first",
        case_06_beyond_end_sigbus,
    ),
    not_here(
        7,
        "NUMA mempolicy (mbind/get_mempolicy on the mapping) is a host-kernel mm feature; the model's \
         host allocator (HostPages) has no nodes",
    ),
    not_here(
        8,
        "MADV_HUGEPAGE/MADV_COLLAPSE/MADV_DONTNEED act on host page tables of the host kernel's mm, \
         outside this model (folio size here follows the 2 MiB rules of DESIGN §5 instead)",
    ),
    applies(
        9,
        "MMAP without INIT_SHARED: every access through the mapping SIGBUSes (all pages private)",
        case_09_private_by_default_sigbus,
    ),
    applies(10, "MAP_PRIVATE mmap -> EINVAL", case_10_map_private),
    applies(
        11,
        "without MMAP: mmap -> ENODEV, accesses report NoMmap, pins EFAULT",
        case_11_no_mmap,
    ),
    applies(
        12,
        "fstat: size == requested size, block size == PAGE_SIZE",
        case_12_fstat,
    ),
    differs(
        13,
        "punch at PAGE_SIZE-1 or with an unaligned length -> EINVAL; punch at and beyond the end -> \
         success, no-op; aligned punch frees the page; touching it again allocates a fresh zeroed page",
        "there is no fallocate allocate mode (pages are allocated on first touch by the host or the \
         guest), so 'allocate the whole file' and 'allocate at/after size -> EINVAL' have no call; \
         other fallocate modes (EOPNOTSUPP) have no call either",
        case_13_fallocate,
    ),
    applies(
        14,
        "PUNCH_HOLE with each listed unaligned (offset, len) -> EINVAL (and len 0)",
        case_14_punch_einval,
    ),
    applies(
        15,
        "MMAP|INIT_SHARED 1-page file bound with userspace_addr 0: host writes 0xaa, guest reads 0xaa \
         and writes 0xff, host reads 0xff",
        case_15_guest_round_trip,
    ),
    differs(
        16,
        "a memslot naming a guest_memfd id that does not exist in this VM -> EINVAL (another VM's ids \
         name nothing here, or this VM's own file)",
        "guest_memfds are per-VM ids, not fds: a KVM fd, VM fd or plain memfd has no counterpart, and \
         another VM's file cannot be named at all; EBADF (not an open fd) cannot arise",
        case_16_bad_gmem,
    ),
    applies(
        17,
        "guest_memfd_offset 1..PAGE_SIZE-1 -> EINVAL; offset 0 succeeds",
        case_17_offsets,
    ),
    applies(
        18,
        "disjoint halves of one file bind; after deleting the first, re-creating it over the other's \
         GPAs (front or back) -> EEXIST; binding an already-bound file range -> EINVAL; modifying a \
         slot -> EINVAL",
        case_18_overlaps,
    ),
    differs(
        19,
        "invalid flag bits, LOG_DIRTY_PAGES or READONLY with GUEST_MEMFD, and a slot without \
         GUEST_MEMFD -> EINVAL",
        "the model has no KVM_CAP_NR_MEMSLOTS limit (nor a slot-id/address-space check), so 'one more \
         slot than the cap' cannot be tested; every slot must be guest_memfd-backed",
        case_19_flags,
    ),
    applies(
        20,
        "memory that starts shared (INIT_SHARED): the guest's pattern is visible to the host (through \
         the same file, not a separate backing)",
        case_20_starts_shared,
    ),
    differs(
        21,
        "for (0,4K),(0,2M),(4K,4K),(4K,2M),(2M,4K) of a 2M+4K area: the guest asks for a range \
         conversion (MEM_SHARE, then MEM_UNSHARE), the VMM converts; the host sees the guest's data \
         in the range and SIGBUS outside it; the guest then sees the host's writes, in place",
        "x86's two-backing model shows the host its own shared pattern after a private conversion; \
         with one page per offset (in-place) the host sees the guest's data or SIGBUS. The \
         fallocate-during-conversion variant (allocate on private, punch on shared) would discard \
         the in-place data and has no counterpart",
        case_21_range_conversions,
    ),
    differs(
        22,
        "punching pages the guest owns -> EBUSY with nothing changed (the guest keeps its data); \
         punching private pages the host still owns, or pages the guest relinquished, works and the \
         guest then reads zeros",
        "pKVM cannot take a page from a protected guest without poisoning it, so the host may not \
         punch guest-owned memory; the guest gives pages back with MEM_RELINQUISH instead",
        case_22_punch_private,
    ),
    differs(
        23,
        "two vCPUs and two memslots over one file: each guest access lands at the right file offset \
         and each vCPU's conversion request is served",
        "the guest_memfd lives inside the KvmVm (destroy frees its backing), so 'fallocate after the \
         VM fd is closed' has no counterpart",
        case_23_multi_vcpu_multi_slot,
    ),
    differs(
        24,
        "INIT_SHARED file: pages made private SIGBUS for the host (guest's own page via \
         MEM_SHARE/MEM_UNSHARE; host-lent page via the VMM's conversion)",
        "a guest cannot ask to make a page the host lent it private (MEM_UNSHARE of a borrowed page \
         returns INVALID_PARAMETER): pKVM's guest requests only cover pages the guest owns; the VMM \
         converts host-owned pages itself",
        case_24_private_sigbus,
    ),
    differs(
        25,
        "deleting the slot under a private gfn the guest never touched: the next guest read is an \
         MMIO exit (len 8), as in the v8 per-gmem-attribute form; deleting a slot whose pages the \
         guest owns -> EBUSY",
        "the mainline form (memory-fault exit with EFAULT) needs a slot deleted under a looping vCPU \
         that holds private pages; pKVM cannot take those pages back, so that deletion is refused",
        case_25_deleted_slot,
    ),
    not_here(
        26,
        "needs a private attribute on a non-guest_memfd memslot; attributes are per guest_memfd here \
         (the selftest itself skips this case in that mode) and every memslot must be \
         guest_memfd-backed (case 19 checks the EINVAL)",
    ),
    applies(
        27,
        "init_private: contents preserved both ways (private write seen by the host after MEM_SHARE; \
         host's shared write seen by the guest after MEM_UNSHARE); host accesses to private pages SIGBUS",
        case_27_init_private,
    ),
    applies(
        28,
        "init_shared: shared -> private -> shared keeps contents (the private->shared step of a page \
         the guest owns is the guest's MEM_SHARE)",
        case_28_init_shared,
    ),
    applies(
        29,
        "indexing (4 pages, each in turn): converting one page changes only that page",
        case_29_indexing,
    ),
    applies(
        30,
        "conversions before allocation are honoured at the first fault (shared -> lent, private -> \
         donated), both reading zeros",
        case_30_before_allocation,
    ),
    applies(
        31,
        "unallocated folios (8 pages, mixed allocated/unallocated/guest-faulted layouts): bulk to \
         private, then per page to shared",
        case_31_unallocated_folios,
    ),
    applies(
        32,
        "truncate: punching a shared page keeps it shared (zeros after); punching a private page \
         keeps it private and the guest reads zeros",
        case_32_truncate,
    ),
    not_here(
        33,
        "fork() and other processes' mappings are host-kernel mm features; the model has one VMM \
         view of each file (and no way for a second mapping to outlive a conversion)",
    ),
    applies(
        34,
        "elevated refcount (4 pages, each pinned in turn): bulk to private -> EAGAIN with the pinned \
         page's error_offset; per page only the pinned one fails; after unpinning bulk succeeds and the \
         guest reads what was last written",
        case_34_elevated_refcount,
    ),
    applies(
        35,
        "ATTRIBUTES2 argument checks: flags, reserved, unknown attribute bits, size 0, unaligned \
         offset/size, offset >= size, end > size, wrap -> EINVAL, nothing changed",
        case_35_attributes2_einval,
    ),
    not_here(
        36,
        "in-place conversion cannot be turned off here (no ENOTTY mode) and every KvmVm is a protected \
         VM with private memory (no 'VM without private memory' to get EINVAL from)",
    ),
    applies(
        37,
        "setting the attribute a range already has succeeds without unmapping anything (also for \
         pages the guest owns)",
        case_37_same_attribute,
    ),
];

#[test]
fn all_37_cases_are_listed() {
    let mut numbers: Vec<u32> = CASES.iter().map(|c| c.number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=37).collect::<Vec<_>>(), "each case once");
    let (mut same, mut different, mut not) = (0, 0, 0);
    for c in CASES {
        match c.verdict {
            Verdict::Applies(what) => {
                assert!(c.test.is_some() && !what.is_empty(), "case {}", c.number);
                same += 1;
            }
            Verdict::AppliesDifferently { how, why } => {
                assert!(
                    c.test.is_some() && !how.is_empty() && !why.is_empty(),
                    "case {}",
                    c.number
                );
                different += 1;
            }
            Verdict::DoesNotApply(why) => {
                assert!(c.test.is_none() && !why.is_empty(), "case {}", c.number);
                not += 1;
            }
        }
    }
    for c in CASES {
        let tag = match c.verdict {
            Verdict::Applies(_) => "applies",
            Verdict::AppliesDifferently { .. } => "applies differently",
            Verdict::DoesNotApply(_) => "does not apply",
        };
        println!("case {:2}: {tag}", c.number);
    }
    println!(
        "{} cases apply ({same} as written, {different} differently), {not} do not apply",
        same + different
    );
    assert_eq!(same + different + not, 37);
}

// ---------------------------------------------------------------------------
// Helpers.

fn create(vm: &mut impl Vm, size: u64, flags: u64) -> Result<GmemId, i32> {
    vm.create_guest_memfd(&KvmCreateGuestMemfd {
        size,
        flags,
        reserved: [0; 6],
    })
}

fn region(slot: u32, gpa: u64, size: u64, gmem: GmemId, offset: u64) -> KvmUserspaceMemoryRegion2 {
    KvmUserspaceMemoryRegion2 {
        slot,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: gpa,
        memory_size: size,
        guest_memfd: gmem.0,
        guest_memfd_offset: offset,
        ..Default::default()
    }
}

fn delete(slot: u32) -> KvmUserspaceMemoryRegion2 {
    KvmUserspaceMemoryRegion2 {
        slot,
        ..Default::default()
    }
}

fn attrs(offset: u64, size: u64, private: bool) -> KvmMemoryAttributes2 {
    KvmMemoryAttributes2 {
        offset,
        size,
        attributes: if private {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        },
        ..Default::default()
    }
}

fn convert(
    vm: &mut impl Vm,
    id: GmemId,
    offset: u64,
    size: u64,
    private: bool,
) -> Result<(), (i32, u64)> {
    let mut a = attrs(offset, size, private);
    vm.set_memory_attributes(id, &mut a)
        .map_err(|e| (e, a.error_offset))
}

/// A VM with no memory yet.
fn bare_vm(m: &mut Machine, vcpus: usize) -> SimVm<'_> {
    let mut vm = KvmVm::new(m, SimPages::for_machine(), vcpus).unwrap();
    for i in 0..vcpus {
        vm.init_vcpu(i, 0, 0).unwrap();
    }
    vm
}

/// A VM with one vCPU and a `size`-byte guest_memfd bound whole at [`RAM`].
fn vm_with_ram(m: &mut Machine, size: u64, flags: u64) -> (SimVm<'_>, GmemId) {
    let mut vm = bare_vm(m, 1);
    let id = create(&mut vm, size, flags).unwrap();
    vm.set_memory_region(&region(0, RAM, size, id, 0)).unwrap();
    (vm, id)
}

/// Tears the VM down and checks every page went back.
fn finish(vm: SimVm<'_>) {
    let pages = vm.destroy().unwrap();
    assert_eq!(pages.in_use(), 0, "every page back to the host allocator");
}

fn pat(byte: u8) -> u64 {
    u64::from_le_bytes([byte; 8])
}

/// The VMM reads 8 bytes through its mapping.
fn read64(vm: &mut SimVm<'_>, id: GmemId, offset: u64) -> Result<u64, MmapError> {
    let mut b = [0u8; 8];
    vm.gmem_read(id, offset, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The VMM fills a page through its mapping.
fn fill(vm: &mut SimVm<'_>, id: GmemId, offset: u64, byte: u8) -> Result<(), MmapError> {
    vm.gmem_write(id, offset, &[byte; P as usize])
}

fn sigbus(offset: u64) -> Result<u64, MmapError> {
    Err(MmapError::Sigbus { offset })
}

fn guest_state(vm: &mut SimVm<'_>, gpa: u64) -> GuestState {
    let h = vm.handle();
    let r = Machine::call(vm.hypervisor(), HostCall::GuestPageState, &[h, gpa / P]);
    assert!(r.is_ok(), "{r:?}");
    GuestState::from_raw(r.vals[0]).unwrap()
}

fn share(gpa: u64, pages: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemShare.id(),
        args: [gpa, pages, 0],
    }
}

fn unshare(gpa: u64, pages: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemUnshare.id(),
        args: [gpa, pages, 0],
    }
}

fn relinquish(gpa: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemRelinquish.id(),
        args: [gpa, 1, 0],
    }
}

fn load(gpa: u64) -> GuestOp {
    GuestOp::Load { ipa: gpa }
}

fn gfill(gpa: u64, byte: u8) -> GuestOp {
    GuestOp::Fill { ipa: gpa, byte }
}

/// A memslot as the VMM's table knows it: `(gpa, size, gmem, offset)`.
type Slot = (u64, u64, GmemId, u64);

/// A conversion the VMM did for its guest: `(gpa, size, private, result)`
/// (the result with `error_offset` on failure).
type Conversion = (u64, u64, bool, Result<(), (i32, u64)>);

/// What the VMM did while serving a guest.
#[derive(Debug, Default)]
struct Served {
    conversions: Vec<Conversion>,
    relinquished: Vec<(u64, u64)>,
}

/// Runs `ops` on vCPU `vcpu` until the script's end powers it off,
/// serving exits as a VMM does: conversions done through the memslot
/// table, relinquished memory punched.
fn run_on(vm: &mut SimVm<'_>, vcpu: usize, slots: &[Slot], ops: Vec<GuestOp>) -> Served {
    let h = ownership::GuestHandle(vm.handle() as u16);
    vm.hypervisor().arch.script(h, vcpu, ops);
    let mut served = Served::default();
    let translate = |gpa: u64| {
        slots
            .iter()
            .find(|s| gpa >= s.0 && gpa - s.0 < s.1)
            .map(|s| (s.2, s.3 + (gpa - s.0)))
            .expect("exit inside a memslot")
    };
    loop {
        match vm.vcpu(vcpu).run().unwrap() {
            VcpuExit::MemoryFault { gpa, size, flags } => {
                let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                let (id, offset) = translate(gpa);
                let r = convert(vm, id, offset, size, private);
                served.conversions.push((gpa, size, private, r));
            }
            VcpuExit::Relinquished { gpa, size } => {
                let (id, offset) = translate(gpa);
                vm.gmem_punch_hole(id, offset, size).unwrap();
                served.relinquished.push((gpa, size));
            }
            VcpuExit::SystemEvent(0) => break,
            VcpuExit::Wfi => {}
            other => panic!("unexpected exit {other:?}"),
        }
        vm.hypervisor().check();
    }
    vm.hypervisor().check();
    served
}

/// [`run_on`] vCPU 0 of a VM whose RAM is gmem 0 bound whole at [`RAM`].
fn run(vm: &mut SimVm<'_>, ops: Vec<GuestOp>) -> Served {
    run_on(vm, 0, &[(RAM, u64::MAX - RAM, GmemId(0), 0)], ops)
}

fn loaded(vm: &mut SimVm<'_>, step: usize) -> Option<u64> {
    vm.hypervisor().arch.loaded(0, step)
}

fn hvc(vm: &mut SimVm<'_>, step: usize) -> [u64; 4] {
    vm.hypervisor()
        .arch
        .hvc_result(0, step)
        .expect("HVC returned")
}

// ---------------------------------------------------------------------------
// 4.1 guest_memfd_test.c

#[test]
fn case_01_flags() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    for bit in 0..64 {
        let flag = 1u64 << bit;
        let r = create(&mut vm, P, flag);
        if flag & GUEST_MEMFD_SUPPORTED_FLAGS != 0 {
            let id = r.unwrap_or_else(|e| panic!("flag {flag:#x}: {e}"));
            assert_eq!(vm.gmem(id).unwrap().flags(), flag);
        } else {
            assert_eq!(r, Err(errno::EINVAL), "flag {flag:#x}");
        }
    }
    // The default VM type advertises both (case 15 relies on it).
    assert_eq!(GUEST_MEMFD_SUPPORTED_FLAGS, MMAP | SHARED);
    assert!(create(&mut vm, P, SHARED).is_ok());
    assert_eq!(create(&mut vm, P, SHARED | 1 << 2), Err(errno::EINVAL));
    finish(vm);
}

#[test]
fn case_02_sizes() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    for flags in [0, MMAP, SHARED] {
        assert_eq!(create(&mut vm, 0, flags), Err(errno::EINVAL));
        for size in 1..P {
            assert_eq!(create(&mut vm, size, flags), Err(errno::EINVAL), "{size}");
        }
        for size in [P + 1, 2 * P - 1, u64::MAX] {
            assert_eq!(create(&mut vm, size, flags), Err(errno::EINVAL), "{size}");
        }
        assert!(create(&mut vm, P, flags).is_ok());
    }
    finish(vm);
}

#[test]
fn case_03_two_files() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let a = create(&mut vm, P, SHARED).unwrap();
    let b = create(&mut vm, 2 * P, SHARED).unwrap();
    assert_ne!(a, b, "each create is a distinct file");
    assert_eq!(vm.gmem(a).unwrap().size(), P);
    assert_eq!(vm.gmem(b).unwrap().size(), 2 * P);
    // Touching the second does not change the first.
    fill(&mut vm, b, P, 1).unwrap();
    assert_eq!(vm.gmem(a).unwrap().size(), P);
    assert_eq!(vm.gmem(a).unwrap().pfn(0), None);
    assert_ne!(vm.gmem(b).unwrap().pfn(1), None);
    finish(vm);
}

#[test]
fn case_05_fill_punch_refill() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let size = 4 * P;
    let id = create(&mut vm, size, SHARED).unwrap();
    assert_eq!(vm.gmem(id).unwrap().mmap(true), Ok(()));
    vm.gmem_write(id, 0, &vec![0xaa; size as usize]).unwrap();
    for off in (0..size).step_by(512) {
        assert_eq!(read64(&mut vm, id, off), Ok(pat(0xaa)), "{off:#x}");
    }
    vm.gmem_punch_hole(id, 0, P).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(0), None);
    for off in (0..P).step_by(512) {
        assert_eq!(read64(&mut vm, id, off), Ok(0), "{off:#x}");
    }
    for off in (P..size).step_by(512) {
        assert_eq!(read64(&mut vm, id, off), Ok(pat(0xaa)), "{off:#x}");
    }
    fill(&mut vm, id, 0, 0xaa).unwrap();
    for off in (0..size).step_by(256) {
        assert_eq!(read64(&mut vm, id, off), Ok(pat(0xaa)), "{off:#x}");
    }
    finish(vm);
}

#[test]
fn case_06_beyond_end_sigbus() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let size = 4 * P;
    let id = create(&mut vm, size, SHARED).unwrap();
    // "Map" four times the file and write all of it: SIGBUS at the end.
    assert_eq!(
        vm.gmem_write(id, 0, &vec![0x5a; 4 * size as usize]),
        Err(MmapError::Sigbus { offset: size })
    );
    // The model's access is checked whole: nothing was stored.
    assert_eq!(read64(&mut vm, id, 0), Ok(0));
    // Write what lies below the end, then touch the end.
    vm.gmem_write(id, 0, &vec![0x5a; size as usize]).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        vm.gmem_read(id, size, &mut b),
        Err(MmapError::Sigbus { offset: size })
    );
    assert_eq!(
        vm.gmem_read(id, size - 4, &mut b),
        Err(MmapError::Sigbus { offset: size })
    );
    assert_eq!(
        vm.gmem_write(id, 3 * size, &[1]),
        Err(MmapError::Sigbus { offset: 3 * size })
    );
    let g = vm.gmem(id).unwrap();
    assert_eq!(
        g.check_access(size, 1),
        Err(MmapError::Sigbus { offset: size })
    );
    assert_eq!(g.check_access(size - 1, 1), Ok(()));
    assert_eq!(
        g.check_access(u64::MAX, 2),
        Err(MmapError::Sigbus { offset: u64::MAX })
    );
    for off in (0..size).step_by(1024) {
        assert_eq!(read64(&mut vm, id, off), Ok(pat(0x5a)));
    }
    assert_eq!(read64(&mut vm, id, size - 8), Ok(pat(0x5a)));
    finish(vm);
}

#[test]
fn case_09_private_by_default_sigbus() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let size = 4 * P;
    let id = create(&mut vm, size, MMAP).unwrap();
    assert_eq!(vm.gmem(id).unwrap().mmap(true), Ok(()));
    for page in 0..4 {
        let off = page * P + 8 * page;
        assert_eq!(read64(&mut vm, id, off), sigbus(off));
        assert_eq!(
            vm.gmem_write(id, off, &[1]),
            Err(MmapError::Sigbus { offset: off })
        );
        assert_eq!(vm.gmem_pin(id, page * P), Err(errno::EFAULT));
        assert!(vm.gmem(id).unwrap().is_private(page));
    }
    assert_eq!(vm.gmem(id).unwrap().pfn(0), None, "nothing allocated");
    finish(vm);
}

#[test]
fn case_10_map_private() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    for flags in [MMAP, SHARED] {
        let id = create(&mut vm, 4 * P, flags).unwrap();
        assert_eq!(vm.gmem(id).unwrap().mmap(false), Err(errno::EINVAL));
        assert_eq!(vm.gmem(id).unwrap().mmap(true), Ok(()));
    }
    finish(vm);
}

#[test]
fn case_11_no_mmap() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    for flags in [0, GUEST_MEMFD_FLAG_INIT_SHARED] {
        let id = create(&mut vm, 4 * P, flags).unwrap();
        let g = vm.gmem(id).unwrap();
        assert_eq!(g.mmap(true), Err(errno::ENODEV));
        assert_eq!(g.check_access(0, P), Err(MmapError::NoMmap));
        assert_eq!(g.check_access(0, 4 * P), Err(MmapError::NoMmap));
        assert_eq!(read64(&mut vm, id, 0), Err(MmapError::NoMmap));
        assert_eq!(vm.gmem_write(id, 0, &[1]), Err(MmapError::NoMmap));
        assert_eq!(vm.gmem_pin(id, 0), Err(errno::EFAULT));
    }
    finish(vm);
}

#[test]
fn case_12_fstat() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    for pages in [1, 4, 513] {
        let id = create(&mut vm, pages * P, SHARED).unwrap();
        let g = vm.gmem(id).unwrap();
        assert_eq!(g.size(), pages * P);
        assert_eq!(g.pages(), pages);
    }
    assert_eq!(PAGE, 4096, "st_blksize");
    finish(vm);
}

#[test]
fn case_13_fallocate() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let size = 4 * P;
    let id = create(&mut vm, size, SHARED).unwrap();
    // "Allocate" the whole file: the host touches it.
    vm.gmem_write(id, 0, &vec![7; size as usize]).unwrap();
    assert_eq!(vm.gmem_punch_hole(id, P - 1, P), Err(errno::EINVAL));
    // At and beyond the end: success, nothing happens.
    vm.gmem_punch_hole(id, size, P).unwrap();
    vm.gmem_punch_hole(id, size + P, P).unwrap();
    vm.gmem_punch_hole(id, 16 * size, 4 * P).unwrap();
    vm.gmem_punch_hole(id, u64::MAX - (P - 1), P).unwrap();
    assert_eq!(read64(&mut vm, id, size - 8), Ok(pat(7)));
    // Unaligned length.
    assert_eq!(vm.gmem_punch_hole(id, 0, P - 1), Err(errno::EINVAL));
    assert_eq!(vm.gmem_punch_hole(id, 0, P + 1), Err(errno::EINVAL));
    // Aligned punch.
    let before = vm.gmem(id).unwrap().pfn(0);
    assert!(before.is_some());
    vm.gmem_punch_hole(id, 0, P).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(0), None);
    // A punch running past the end frees what is inside.
    vm.gmem_punch_hole(id, 3 * P, 8 * P).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(3), None);
    assert_eq!(read64(&mut vm, id, 2 * P), Ok(pat(7)));
    // "Re-allocate" the punched page: a fresh zeroed page.
    assert_eq!(read64(&mut vm, id, 0), Ok(0));
    assert!(vm.gmem(id).unwrap().pfn(0).is_some());
    fill(&mut vm, id, 0, 9).unwrap();
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(9)));
    finish(vm);
}

#[test]
fn case_14_punch_einval() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    fill(&mut vm, id, 0, 3).unwrap();
    fill(&mut vm, id, P, 3).unwrap();
    let bad = [
        (0, 1),
        (0, P - 1),
        (0, P + 1),
        (1, 1),
        (1, P - 1),
        (1, P),
        (1, P + 1),
        (P, 1),
        (P, P - 1),
        (P, P + 1),
        (0, 0),
        (P, 0),
    ];
    for (off, len) in bad {
        assert_eq!(
            vm.gmem_punch_hole(id, off, len),
            Err(errno::EINVAL),
            "({off}, {len})"
        );
    }
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(3)), "nothing punched");
    assert_eq!(read64(&mut vm, id, P), Ok(pat(3)));
    finish(vm);
}

#[test]
fn case_15_guest_round_trip() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, P, SHARED).unwrap();
    let mut r = region(0, RAM, P, id, 0);
    r.userspace_addr = 0;
    vm.set_memory_region(&r).unwrap();
    fill(&mut vm, id, 0, 0xaa).unwrap();
    run(
        &mut vm,
        vec![load(RAM), load(RAM + P - 8), gfill(RAM, 0xff)],
    );
    assert_eq!(loaded(&mut vm, 0), Some(pat(0xaa)));
    assert_eq!(loaded(&mut vm, 1), Some(pat(0xaa)));
    assert_eq!(guest_state(&mut vm, RAM), GuestState::SharedBorrowed);
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(0xff)));
    assert_eq!(read64(&mut vm, id, P - 8), Ok(pat(0xff)));
    finish(vm);
}

// ---------------------------------------------------------------------------
// 4.2 set_memory_region_test.c

/// Lets two VMs share one machine (each VM owns its conduit).
struct Shared<'a>(&'a RefCell<Machine>);

impl Hypervisor for Shared<'_> {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        <Machine as Hypervisor>::call(&mut self.0.borrow_mut(), call, args)
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        <Machine as Hypervisor>::read(&mut self.0.borrow_mut(), pa, buf)
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        <Machine as Hypervisor>::write(&mut self.0.borrow_mut(), pa, data)
    }
}

#[test]
fn case_16_bad_gmem() {
    let cell = RefCell::new(Machine::new());
    let first = Machine::ram_pfn() + 0x1000;
    let mut a = KvmVm::new(Shared(&cell), SimPages::new(first, 0x600), 1).unwrap();
    let mut b = KvmVm::new(Shared(&cell), SimPages::new(first + 0x600, 0x600), 1).unwrap();
    // No guest_memfd at all yet.
    assert_eq!(
        b.set_memory_region(&region(0, RAM, P, GmemId(0), 0)),
        Err(errno::EINVAL)
    );
    let a0 = create(&mut a, 4 * P, SHARED).unwrap();
    let a1 = create(&mut a, 4 * P, SHARED).unwrap();
    assert_eq!(a1, GmemId(1));
    let b0 = create(&mut b, 4 * P, SHARED).unwrap();
    // A's second file's id names nothing in B.
    assert_eq!(
        b.set_memory_region(&region(0, RAM, P, a1, 0)),
        Err(errno::EINVAL)
    );
    for bogus in [2, 1000, u32::MAX] {
        assert_eq!(
            b.set_memory_region(&region(0, RAM, P, GmemId(bogus), 0)),
            Err(errno::EINVAL)
        );
    }
    // Id 0 in B is B's own file: binding it binds B's, never A's.
    assert_eq!(a0, b0);
    a.gmem_write(a0, 0, &[0xa0; P as usize]).unwrap();
    b.set_memory_region(&region(0, RAM, P, b0, 0)).unwrap();
    assert!(b.gmem(b0).unwrap().pfn(0).is_none());
    assert!(a.gmem(a0).unwrap().pfn(0).is_some());
    for vm in [a, b] {
        assert_eq!(vm.destroy().unwrap().in_use(), 0);
    }
    cell.borrow().check();
}

#[test]
fn case_17_offsets() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    for off in 1..P {
        assert_eq!(
            vm.set_memory_region(&region(0, RAM, P, id, off)),
            Err(errno::EINVAL),
            "{off}"
        );
    }
    // Beyond the file, or overflowing.
    assert_eq!(
        vm.set_memory_region(&region(0, RAM, P, id, 4 * P)),
        Err(errno::EINVAL)
    );
    assert_eq!(
        vm.set_memory_region(&region(0, RAM, 2 * P, id, 3 * P)),
        Err(errno::EINVAL)
    );
    assert_eq!(
        vm.set_memory_region(&region(0, RAM, 2 * P, id, u64::MAX - (P - 1))),
        Err(errno::EINVAL)
    );
    vm.set_memory_region(&region(0, RAM, P, id, 0)).unwrap();
    vm.set_memory_region(&region(1, RAM + P, P, id, P)).unwrap();
    finish(vm);
}

#[test]
fn case_18_overlaps() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let half = 2 * P;
    let id = create(&mut vm, 2 * half, SHARED).unwrap();
    vm.set_memory_region(&region(0, RAM, half, id, 0)).unwrap();
    vm.set_memory_region(&region(1, RAM + half, half, id, half))
        .unwrap();
    vm.set_memory_region(&delete(0)).unwrap();
    // Re-create the first so its GPAs overlap the second's front or back.
    assert_eq!(
        vm.set_memory_region(&region(0, RAM + P, half, id, 0)),
        Err(errno::EEXIST)
    );
    assert_eq!(
        vm.set_memory_region(&region(0, RAM + half + P, half, id, 0)),
        Err(errno::EEXIST)
    );
    assert_eq!(
        vm.set_memory_region(&region(0, RAM + half, half, id, 0)),
        Err(errno::EEXIST)
    );
    // The same file range bound twice (disjoint GPAs): kvm_gmem_bind's EINVAL.
    assert_eq!(
        vm.set_memory_region(&region(2, RAM + 8 * half, P, id, half + P)),
        Err(errno::EINVAL)
    );
    // Slots bound to a guest_memfd are immutable: moving one is EINVAL.
    assert_eq!(
        vm.set_memory_region(&region(1, RAM + 16 * half, half, id, half)),
        Err(errno::EINVAL)
    );
    // Deleting a slot that does not exist.
    assert_eq!(vm.set_memory_region(&delete(7)), Err(errno::EINVAL));
    // The first half is free again, at its old GPAs.
    vm.set_memory_region(&region(0, RAM, half, id, 0)).unwrap();
    finish(vm);
}

#[test]
fn case_19_flags() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    let mut bad = vec![
        0,
        KVM_MEM_LOG_DIRTY_PAGES,
        KVM_MEM_READONLY,
        KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES,
        KVM_MEM_GUEST_MEMFD | KVM_MEM_READONLY,
    ];
    bad.extend((3..32).map(|b| KVM_MEM_GUEST_MEMFD | 1 << b));
    for flags in bad {
        let mut r = region(0, RAM, P, id, 0);
        r.flags = flags;
        assert_eq!(vm.set_memory_region(&r), Err(errno::EINVAL), "{flags:#x}");
    }
    vm.set_memory_region(&region(0, RAM, P, id, 0)).unwrap();
    finish(vm);
}

// ---------------------------------------------------------------------------
// 4.3 x86/private_mem_conversions_test.c

#[test]
fn case_20_starts_shared() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    let ops = (0..4).map(|i| gfill(RAM + i * P, 0x40 + i as u8)).collect();
    run(&mut vm, ops);
    for i in 0..4 {
        assert_eq!(
            guest_state(&mut vm, RAM + i * P),
            GuestState::SharedBorrowed
        );
        assert_eq!(read64(&mut vm, id, i * P), Ok(pat(0x40 + i as u8)));
        assert_eq!(read64(&mut vm, id, i * P + P - 8), Ok(pat(0x40 + i as u8)));
    }
    finish(vm);
}

#[test]
fn case_21_range_conversions() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 2 * MIB2, MMAP);
    let area = MIB2 + P;
    let pages = area / P;
    // The guest writes its private pattern over the whole area.
    run(
        &mut vm,
        (0..pages).map(|i| gfill(RAM + i * P, 0x11)).collect(),
    );
    for (off, size) in [(0, P), (0, MIB2), (P, P), (P, MIB2), (MIB2, P)] {
        let n = size / P;
        let served = run(&mut vm, vec![share(RAM + off, n)]);
        assert_eq!(served.conversions, vec![(RAM + off, size, false, Ok(()))]);
        assert_eq!(hvc(&mut vm, 0)[..2], [0, n], "({off:#x}, {size:#x})");
        // The host sees the guest's data in the range, nothing outside it.
        for p in [off, off + size / 2, off + size - P] {
            assert_eq!(read64(&mut vm, id, p), Ok(pat(0x11)), "{p:#x}");
        }
        if off > 0 {
            assert_eq!(read64(&mut vm, id, off - P), sigbus(off - P));
        }
        if off + size < area {
            assert_eq!(read64(&mut vm, id, off + size), sigbus(off + size));
        }
        // The host writes into the shared range; the guest sees it, and
        // still its own data outside.
        for i in 0..n {
            fill(&mut vm, id, off + i * P, 0x22).unwrap();
        }
        let outside = if off > 0 { off - P } else { off + size };
        let served = run(
            &mut vm,
            vec![
                load(RAM + off),
                load(RAM + off + size - 8),
                load(RAM + outside),
                unshare(RAM + off, n),
                load(RAM + off),
            ],
        );
        assert_eq!(served.conversions, vec![(RAM + off, size, true, Ok(()))]);
        assert_eq!(loaded(&mut vm, 0), Some(pat(0x22)));
        assert_eq!(loaded(&mut vm, 1), Some(pat(0x22)));
        assert_eq!(loaded(&mut vm, 2), Some(pat(0x11)));
        assert_eq!(hvc(&mut vm, 3)[..2], [0, n]);
        assert_eq!(loaded(&mut vm, 4), Some(pat(0x22)), "kept in place");
        assert_eq!(read64(&mut vm, id, off), sigbus(off));
        assert_eq!(guest_state(&mut vm, RAM + off), GuestState::Owned);
        // Back to the guest's pattern for the next range.
        run(
            &mut vm,
            (0..n).map(|i| gfill(RAM + off + i * P, 0x11)).collect(),
        );
    }
    finish(vm);
}

#[test]
fn case_22_punch_private() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 8 * P, MMAP);
    // The guest owns pages 0..4.
    run(&mut vm, (0..4).map(|i| gfill(RAM + i * P, 0x33)).collect());
    let pfns: Vec<_> = (0..4).map(|p| vm.gmem(id).unwrap().pfn(p)).collect();
    for (off, len) in [(0, 4 * P), (P, P), (3 * P, 5 * P)] {
        assert_eq!(
            vm.gmem_punch_hole(id, off, len),
            Err(errno::EBUSY),
            "({off:#x}, {len:#x})"
        );
    }
    // Nothing changed: same pages, the guest still reads its data.
    let now: Vec<_> = (0..4).map(|p| vm.gmem(id).unwrap().pfn(p)).collect();
    assert_eq!(now, pfns);
    run(&mut vm, vec![load(RAM), load(RAM + 3 * P)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(0x33)));
    assert_eq!(loaded(&mut vm, 1), Some(pat(0x33)));
    // The pKVM way: the guest relinquishes page 1; the VMM punches it
    // (run() does, on the exit); the guest reads zeros there afterwards.
    let served = run(&mut vm, vec![relinquish(RAM + P), load(RAM + P)]);
    assert_eq!(served.relinquished, vec![(RAM + P, P)]);
    assert_eq!(loaded(&mut vm, 1), Some(0));
    assert!(vm.gmem(id).unwrap().is_private(1));
    assert_eq!(guest_state(&mut vm, RAM + P), GuestState::Owned);
    // Private pages the host still owns (written while shared, then
    // converted, never faulted into the guest) can be punched.
    convert(&mut vm, id, 4 * P, 4 * P, false).unwrap();
    for p in 4..8 {
        fill(&mut vm, id, p * P, 0x44).unwrap();
    }
    convert(&mut vm, id, 4 * P, 4 * P, true).unwrap();
    vm.gmem_punch_hole(id, 4 * P, 2 * P).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(4), None);
    assert!(vm.gmem(id).unwrap().is_private(4));
    run(&mut vm, vec![load(RAM + 4 * P), load(RAM + 6 * P)]);
    assert_eq!(loaded(&mut vm, 0), Some(0), "punched: zeros");
    assert_eq!(loaded(&mut vm, 1), Some(pat(0x44)), "not punched: kept");
    finish(vm);
}

#[test]
fn case_23_multi_vcpu_multi_slot() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 2);
    let id = create(&mut vm, 4 * P, MMAP).unwrap();
    // Slot 0: file pages 2..4 at RAM; slot 1: file pages 0..2 at RAM2.
    let ram2 = 0x9000_0000;
    vm.set_memory_region(&region(0, RAM, 2 * P, id, 2 * P))
        .unwrap();
    vm.set_memory_region(&region(1, ram2, 2 * P, id, 0))
        .unwrap();
    let slots = [(RAM, 2 * P, id, 2 * P), (ram2, 2 * P, id, 0)];
    let s0 = run_on(&mut vm, 0, &slots, vec![gfill(RAM, 0x22), share(RAM, 1)]);
    let s1 = run_on(
        &mut vm,
        1,
        &slots,
        vec![gfill(ram2 + P, 0x11), share(ram2 + P, 1), load(RAM)],
    );
    assert_eq!(s0.conversions, vec![(RAM, P, false, Ok(()))]);
    assert_eq!(s1.conversions, vec![(ram2 + P, P, false, Ok(()))]);
    assert_eq!(vm.hypervisor().arch.hvc_result(0, 1).unwrap()[0], 0);
    assert_eq!(vm.hypervisor().arch.hvc_result(1, 1).unwrap()[0], 0);
    // vCPU 1 sees vCPU 0's page (one VM, one stage-2).
    assert_eq!(vm.hypervisor().arch.loaded(1, 2), Some(pat(0x22)));
    // Each landed at its file offset.
    assert_eq!(read64(&mut vm, id, 2 * P), Ok(pat(0x22)));
    assert_eq!(read64(&mut vm, id, P), Ok(pat(0x11)));
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    assert_eq!(read64(&mut vm, id, 3 * P), sigbus(3 * P));
    let g = vm.gmem(id).unwrap();
    assert!(!g.is_private(1) && !g.is_private(2) && g.is_private(0) && g.is_private(3));
    finish(vm);
}

#[test]
fn case_24_private_sigbus() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    fill(&mut vm, id, 0, 0x24).unwrap();
    // The guest borrows page 0 and cannot ask to make it private.
    run(&mut vm, vec![load(RAM), unshare(RAM, 1)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(0x24)));
    assert_eq!(hvc(&mut vm, 1)[0], SMCCC_INVALID_PARAMETER as u64);
    assert_eq!(guest_state(&mut vm, RAM), GuestState::SharedBorrowed);
    // The VMM makes it private (ATTRIBUTES2): the host's access ends.
    convert(&mut vm, id, 0, P, true).unwrap();
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(0x24)), "in place");
    assert_eq!(guest_state(&mut vm, RAM), GuestState::Owned);
    // Page 1 goes private through the guest: it needs to own it first, so
    // the VMM makes it private, the guest shares then unshares it.
    convert(&mut vm, id, P, P, true).unwrap();
    let served = run(
        &mut vm,
        vec![gfill(RAM + P, 0x25), share(RAM + P, 1), unshare(RAM + P, 1)],
    );
    assert_eq!(
        served.conversions,
        vec![(RAM + P, P, false, Ok(())), (RAM + P, P, true, Ok(()))]
    );
    assert_eq!(read64(&mut vm, id, P), sigbus(P));
    assert_eq!(read64(&mut vm, id, 2 * P), Ok(0), "the rest is shared");
    finish(vm);
}

// ---------------------------------------------------------------------------
// 4.4 x86/private_mem_kvm_exits_test.c

#[test]
fn case_25_deleted_slot() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, MMAP).unwrap();
    vm.set_memory_region(&region(0, RAM, 2 * P, id, 0)).unwrap();
    vm.set_memory_region(&region(1, RAM + 2 * P, 2 * P, id, 2 * P))
        .unwrap();
    let h = ownership::GuestHandle(vm.handle() as u16);
    // The guest owns a page of slot 0: deleting slot 0 is refused.
    run(&mut vm, vec![gfill(RAM, 1)]);
    assert_eq!(vm.set_memory_region(&delete(0)), Err(errno::EBUSY));
    assert_eq!(guest_state(&mut vm, RAM), GuestState::Owned);
    // Slot 1's pages are private and untouched: delete it, and the read
    // becomes an MMIO exit.
    assert!(vm.gmem(id).unwrap().is_private(2));
    vm.set_memory_region(&delete(1)).unwrap();
    vm.hypervisor()
        .arch
        .script(h, 0, vec![load(RAM + 2 * P), load(RAM)]);
    assert_eq!(
        vm.vcpu(0).run().unwrap(),
        VcpuExit::Mmio {
            address: RAM + 2 * P,
            size: 8,
            write: false,
            data: 0
        }
    );
    vm.vcpu(0).set_mmio_data(0x2525);
    assert_eq!(vm.vcpu(0).run().unwrap(), VcpuExit::SystemEvent(0));
    assert_eq!(loaded(&mut vm, 0), Some(0x2525));
    assert_eq!(loaded(&mut vm, 1), Some(pat(1)));
    finish(vm);
}

// ---------------------------------------------------------------------------
// 4.5 x86/guest_memfd_conversions_test.c (in-place, v8)

#[test]
fn case_27_init_private() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, MMAP);
    // test_private: host accesses SIGBUS, the guest writes 'A'.
    assert_eq!(
        vm.gmem_write(id, 0, b"X"),
        Err(MmapError::Sigbus { offset: 0 })
    );
    run(&mut vm, vec![load(RAM), gfill(RAM, b'A')]);
    assert_eq!(loaded(&mut vm, 0), Some(0), "starts zeroed");
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    // To shared (the guest owns it: its MEM_SHARE): the host sees 'A'.
    let served = run(&mut vm, vec![share(RAM, 1)]);
    assert_eq!(served.conversions, vec![(RAM, P, false, Ok(()))]);
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(b'A')));
    assert_eq!(read64(&mut vm, id, P - 8), Ok(pat(b'A')));
    // test_shared: host writes 'B', guest sees it and writes 'C'.
    fill(&mut vm, id, 0, b'B').unwrap();
    run(&mut vm, vec![load(RAM), gfill(RAM, b'C')]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(b'B')));
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(b'C')));
    // To private (MEM_UNSHARE): the guest sees 'C', the host SIGBUSes.
    let served = run(&mut vm, vec![unshare(RAM, 1), load(RAM)]);
    assert_eq!(served.conversions, vec![(RAM, P, true, Ok(()))]);
    assert_eq!(loaded(&mut vm, 1), Some(pat(b'C')));
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    assert_eq!(
        vm.gmem_write(id, 0, &[1]),
        Err(MmapError::Sigbus { offset: 0 })
    );
    finish(vm);
}

#[test]
fn case_28_init_shared() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    fill(&mut vm, id, 0, b'A').unwrap();
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(b'A')));
    // Shared -> private: host-owned (lent), so the VMM converts it.
    convert(&mut vm, id, 0, P, true).unwrap();
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    run(&mut vm, vec![load(RAM), gfill(RAM, b'B')]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(b'A')), "kept to private");
    assert_eq!(guest_state(&mut vm, RAM), GuestState::Owned);
    // Private -> shared: the guest owns it now, so it asks.
    assert_eq!(convert(&mut vm, id, 0, P, false), Err((errno::EPERM, 0)));
    let served = run(&mut vm, vec![share(RAM, 1)]);
    assert_eq!(served.conversions, vec![(RAM, P, false, Ok(()))]);
    assert_eq!(read64(&mut vm, id, 0), Ok(pat(b'B')), "kept to shared");
    fill(&mut vm, id, 0, b'C').unwrap();
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(b'C')));
    finish(vm);
}

#[test]
fn case_29_indexing() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    for p in 0..4 {
        fill(&mut vm, id, p * P, 0x50 + p as u8).unwrap();
    }
    let mut expect = [0x50u8, 0x51, 0x52, 0x53];
    for i in 0..4u64 {
        convert(&mut vm, id, i * P, P, true).unwrap();
        for p in 0..4 {
            let r = read64(&mut vm, id, p * P);
            if p == i {
                assert_eq!(r, sigbus(p * P));
            } else {
                assert_eq!(r, Ok(pat(expect[p as usize])), "page {p} with {i} private");
                assert!(!vm.gmem(id).unwrap().is_private(p));
            }
        }
        // The guest sees the page's data, writes its own, and shares it back.
        let new = 0x60 + i as u8;
        let served = run(
            &mut vm,
            vec![
                load(RAM + i * P),
                gfill(RAM + i * P, new),
                share(RAM + i * P, 1),
            ],
        );
        assert_eq!(loaded(&mut vm, 0), Some(pat(expect[i as usize])));
        assert_eq!(served.conversions, vec![(RAM + i * P, P, false, Ok(()))]);
        expect[i as usize] = new;
        for p in 0..4 {
            assert_eq!(read64(&mut vm, id, p * P), Ok(pat(expect[p as usize])));
        }
    }
    finish(vm);
}

#[test]
fn case_30_before_allocation() {
    let mut m = Machine::new();
    // before_allocation_shared: a private file, page 1 made shared first.
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, MMAP);
    convert(&mut vm, id, P, P, false).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(1), None);
    run(&mut vm, vec![load(RAM + P)]);
    assert_eq!(loaded(&mut vm, 0), Some(0));
    assert_eq!(guest_state(&mut vm, RAM + P), GuestState::SharedBorrowed);
    assert_eq!(read64(&mut vm, id, P), Ok(0));
    finish(vm);
    // before_allocation_private: a shared file, page 2 made private first.
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    convert(&mut vm, id, 2 * P, P, true).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(2), None);
    run(&mut vm, vec![load(RAM + 2 * P)]);
    assert_eq!(loaded(&mut vm, 0), Some(0));
    assert_eq!(guest_state(&mut vm, RAM + 2 * P), GuestState::Owned);
    assert_eq!(read64(&mut vm, id, 2 * P), sigbus(2 * P));
    finish(vm);
}

#[test]
fn case_31_unallocated_folios() {
    // (pages the host allocates before, pages the guest faults after the
    // bulk conversion to private)
    let layouts: [(u8, u8); 6] = [
        (0x00, 0x00),
        (0xff, 0x00),
        (0x55, 0xaa),
        (0x0f, 0x3c),
        (0xc3, 0xff),
        (0x81, 0x42),
    ];
    for (host, guest) in layouts {
        let mut m = Machine::new();
        let (mut vm, id) = vm_with_ram(&mut m, 8 * P, SHARED);
        let value = |p: u64| {
            if host >> p & 1 != 0 {
                pat(0x70 + p as u8)
            } else {
                0
            }
        };
        for p in 0..8 {
            if host >> p & 1 != 0 {
                fill(&mut vm, id, p * P, 0x70 + p as u8).unwrap();
            }
        }
        convert(&mut vm, id, 0, 8 * P, true).unwrap();
        let faulted: Vec<u64> = (0..8).filter(|p| guest >> p & 1 != 0).collect();
        run(&mut vm, faulted.iter().map(|p| load(RAM + p * P)).collect());
        for (step, p) in faulted.iter().enumerate() {
            assert_eq!(
                loaded(&mut vm, step),
                Some(value(*p)),
                "{host:#x}/{guest:#x} page {p}"
            );
        }
        // Per page back to shared: the guest asks for its own pages, the
        // VMM converts the host's.
        for p in 0..8 {
            if guest >> p & 1 != 0 {
                let served = run(&mut vm, vec![share(RAM + p * P, 1)]);
                assert_eq!(served.conversions, vec![(RAM + p * P, P, false, Ok(()))]);
            } else {
                convert(&mut vm, id, p * P, P, false).unwrap();
            }
        }
        for p in 0..8 {
            assert_eq!(
                read64(&mut vm, id, p * P),
                Ok(value(p)),
                "{host:#x}/{guest:#x} page {p}"
            );
        }
        finish(vm);
    }
}

#[test]
fn case_32_truncate() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    fill(&mut vm, id, 0, 0x32).unwrap();
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(0x32)));
    // Punch a shared page (lent to the guest): still shared, zeros.
    vm.gmem_punch_hole(id, 0, P).unwrap();
    assert!(!vm.gmem(id).unwrap().is_private(0));
    assert_eq!(guest_state(&mut vm, RAM), GuestState::NoPage);
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(0));
    assert_eq!(read64(&mut vm, id, 0), Ok(0));
    // Write, make it private, punch: still private, the guest reads zeros.
    fill(&mut vm, id, 0, 0x33).unwrap();
    convert(&mut vm, id, 0, P, true).unwrap();
    vm.gmem_punch_hole(id, 0, P).unwrap();
    assert!(vm.gmem(id).unwrap().is_private(0));
    assert_eq!(read64(&mut vm, id, 0), sigbus(0));
    run(&mut vm, vec![load(RAM)]);
    assert_eq!(loaded(&mut vm, 0), Some(0));
    assert_eq!(guest_state(&mut vm, RAM), GuestState::Owned);
    finish(vm);
}

#[test]
fn case_34_elevated_refcount() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    let mut last = [0u8; 4];
    for p in 0..4 {
        fill(&mut vm, id, p * P, 0x80 + p as u8).unwrap();
        last[p as usize] = 0x80 + p as u8;
    }
    for i in 0..4u64 {
        vm.gmem_pin(id, i * P).unwrap();
        assert_eq!(
            convert(&mut vm, id, 0, 4 * P, true),
            Err((errno::EAGAIN, i * P))
        );
        assert!(
            (0..4).all(|p| !vm.gmem(id).unwrap().is_private(p)),
            "nothing changed"
        );
        for p in 0..4 {
            let r = convert(&mut vm, id, p * P, P, true);
            if p == i {
                assert_eq!(r, Err((errno::EAGAIN, p * P)));
            } else {
                assert_eq!(r, Ok(()));
            }
        }
        // The pinned page is still shared and writable.
        fill(&mut vm, id, i * P, 0x90 + i as u8).unwrap();
        last[i as usize] = 0x90 + i as u8;
        vm.gmem_unpin(id, i * P).unwrap();
        convert(&mut vm, id, 0, 4 * P, true).unwrap();
        assert!((0..4).all(|p| vm.gmem(id).unwrap().is_private(p)));
        // Back to shared for the next page (the host still owns them all).
        convert(&mut vm, id, 0, 4 * P, false).unwrap();
    }
    convert(&mut vm, id, 0, 4 * P, true).unwrap();
    run(&mut vm, (0..4).map(|p| load(RAM + p * P)).collect());
    for (p, byte) in last.iter().enumerate() {
        assert_eq!(loaded(&mut vm, p), Some(pat(*byte)), "page {p}");
    }
    // A guest's own unshare is refused while the VMM pins the page.
    let served = run(&mut vm, vec![share(RAM, 1)]);
    assert_eq!(served.conversions[0].3, Ok(()));
    vm.gmem_pin(id, 0).unwrap();
    let served = run(&mut vm, vec![unshare(RAM, 1)]);
    assert_eq!(
        served.conversions,
        vec![(RAM, P, true, Err((errno::EAGAIN, 0)))]
    );
    assert_eq!(hvc(&mut vm, 0)[0], SMCCC_INVALID_PARAMETER as u64);
    assert_eq!(guest_state(&mut vm, RAM), GuestState::SharedOwned);
    vm.gmem_unpin(id, 0).unwrap();
    assert_eq!(vm.gmem_unpin(id, 0), Err(errno::EINVAL), "no pin left");
    finish(vm);
}

// ---------------------------------------------------------------------------
// 4.6 ioctl-argument cases

#[test]
fn case_35_attributes2_einval() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    let size = 4 * P;
    let base = attrs(0, P, true);
    let mut bad = vec![];
    bad.push(KvmMemoryAttributes2 { flags: 1, ..base });
    for i in 0..11 {
        let mut a = base;
        a.reserved[i] = 1;
        bad.push(a);
    }
    for bit in (0..64).filter(|b| 1u64 << b != KVM_MEMORY_ATTRIBUTE_PRIVATE) {
        bad.push(KvmMemoryAttributes2 {
            attributes: 1 << bit,
            ..base
        });
    }
    bad.push(KvmMemoryAttributes2 {
        attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE | 1,
        ..base
    });
    for (offset, len) in [
        (0, 0),
        (1, P),
        (P - 1, P),
        (0, 1),
        (0, P + 1),
        (size, P),
        (size + P, P),
        (3 * P, 2 * P),
        (0, size + P),
        (P, u64::MAX - (P - 1)),
        (u64::MAX - (P - 1), P),
    ] {
        bad.push(KvmMemoryAttributes2 {
            offset,
            size: len,
            ..base
        });
    }
    for mut a in bad {
        let before = a;
        assert_eq!(
            vm.set_memory_attributes(id, &mut a),
            Err(errno::EINVAL),
            "{before:?}"
        );
        assert!(
            (0..4).all(|p| !vm.gmem(id).unwrap().is_private(p)),
            "{before:?}"
        );
    }
    // Both valid attribute values, for contrast.
    let mut a = base;
    vm.set_memory_attributes(id, &mut a).unwrap();
    let mut a = attrs(0, size, false);
    vm.set_memory_attributes(id, &mut a).unwrap();
    // A guest_memfd that does not exist.
    assert_eq!(
        vm.set_memory_attributes(GmemId(9), &mut attrs(0, P, true)),
        Err(errno::EBADF)
    );
    finish(vm);
}

#[test]
fn case_37_same_attribute() {
    let mut m = Machine::new();
    let (mut vm, id) = vm_with_ram(&mut m, 4 * P, SHARED);
    fill(&mut vm, id, 0, 0x37).unwrap();
    // Page 0 lent to the guest (shared); page 1 donated (private, the guest's).
    convert(&mut vm, id, P, P, true).unwrap();
    run(&mut vm, vec![load(RAM), gfill(RAM + P, 0x38)]);
    assert_eq!(guest_state(&mut vm, RAM), GuestState::SharedBorrowed);
    assert_eq!(guest_state(&mut vm, RAM + P), GuestState::Owned);
    let mappings = |vm: &SimVm<'_>| {
        let g = vm.gmem(id).unwrap();
        (0..4)
            .map(|p| (g.guest_mapping(p), g.pfn(p), g.is_private(p)))
            .collect::<Vec<_>>()
    };
    let before = mappings(&vm);
    // Shared to shared, private to private (even the guest's page: nothing
    // changes, so the owner rule is not involved), pinned shared to shared.
    convert(&mut vm, id, 0, P, false).unwrap();
    convert(&mut vm, id, P, P, true).unwrap();
    vm.gmem_pin(id, 0).unwrap();
    convert(&mut vm, id, 0, P, false).unwrap();
    vm.gmem_unpin(id, 0).unwrap();
    assert_eq!(mappings(&vm), before, "nothing unmapped or moved");
    assert_eq!(guest_state(&mut vm, RAM), GuestState::SharedBorrowed);
    assert_eq!(guest_state(&mut vm, RAM + P), GuestState::Owned);
    // A range where only some pages change: only those change; the page
    // the guest owns is not touched.
    convert(&mut vm, id, 2 * P, 2 * P, true).unwrap();
    convert(&mut vm, id, P, 3 * P, true).unwrap();
    assert_eq!(guest_state(&mut vm, RAM + P), GuestState::Owned);
    run(&mut vm, vec![load(RAM), load(RAM + P)]);
    assert_eq!(loaded(&mut vm, 0), Some(pat(0x37)));
    assert_eq!(loaded(&mut vm, 1), Some(pat(0x38)));
    finish(vm);
}

// ---------------------------------------------------------------------------
// Divergences from KVM (and two bugs) found while writing these cases, now
// fixed: each test asserts what KVM does and guards against regressions.

#[test]

fn finding_punch_keeps_a_pinned_page_until_unpinned() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    fill(&mut vm, id, 0, 0xd0).unwrap();
    let pinned = vm.gmem(id).unwrap().pfn(0).unwrap();
    // vhost/VFIO holds a long-term pin on page 0 (its DMA target).
    vm.gmem_pin(id, 0).unwrap();
    // Truncation succeeds in KVM too, but the pinned folio stays allocated
    // until the pin drops.
    vm.gmem_punch_hole(id, 0, P).unwrap();
    // The next page the host allocates must not be the pinned one.
    fill(&mut vm, id, P, 0xd1).unwrap();
    assert_ne!(
        vm.gmem(id).unwrap().pfn(1),
        Some(pinned),
        "a page still pinned for DMA was handed out again"
    );
    // And the holder can still drop its pin.
    assert_eq!(vm.gmem_unpin(id, 0), Ok(()));
}

#[test]

fn finding_memslot_id_out_of_range_is_einval() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    // Bits 31:16 are the address space; arm64 has one.
    assert_eq!(
        vm.set_memory_region(&region(1 << 16, RAM, P, id, 0)),
        Err(errno::EINVAL)
    );
    // (u16)slot >= KVM_USER_MEM_SLOTS (at most 32768).
    assert_eq!(
        vm.set_memory_region(&region(0xffff, RAM + P, P, id, P)),
        Err(errno::EINVAL)
    );
}

#[test]

fn finding_gpa_overlap_is_checked_before_the_binding() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 1);
    let id = create(&mut vm, 4 * P, SHARED).unwrap();
    vm.set_memory_region(&region(0, RAM, P, id, 0)).unwrap();
    // KVM's __kvm_set_memory_region runs kvm_check_memslot_overlap before
    // kvm_gmem_bind: an overlapping GPA is EEXIST whatever the binding.
    assert_eq!(
        vm.set_memory_region(&region(1, RAM, P, id, 0)),
        Err(errno::EEXIST),
        "same file range and same GPAs"
    );
    assert_eq!(
        vm.set_memory_region(&region(1, RAM, P, GmemId(7), 0)),
        Err(errno::EEXIST),
        "no such guest_memfd, same GPAs"
    );
}

#[test]

fn finding_a_conversion_request_survives_another_vcpus_run() {
    let mut m = Machine::new();
    let mut vm = bare_vm(&mut m, 2);
    let id = create(&mut vm, 4 * P, MMAP).unwrap();
    vm.set_memory_region(&region(0, RAM, 4 * P, id, 0)).unwrap();
    let h = ownership::GuestHandle(vm.handle() as u16);
    vm.hypervisor()
        .arch
        .script(h, 0, vec![gfill(RAM, 1), share(RAM, 1)]);
    vm.hypervisor().arch.script(h, 1, vec![load(RAM + P)]);
    assert_eq!(
        vm.vcpu(0).run().unwrap(),
        VcpuExit::MemoryFault {
            gpa: RAM,
            size: P,
            flags: 0
        }
    );
    // A VMM with a thread per vCPU keeps running vCPU 1 while it serves
    // vCPU 0's exit (KVM's exits are per vCPU).
    assert_eq!(vm.vcpu(1).run().unwrap(), VcpuExit::SystemEvent(0));
    assert_eq!(convert(&mut vm, id, 0, P, false), Ok(()));
    assert_eq!(vm.vcpu(0).run().unwrap(), VcpuExit::SystemEvent(0));
    assert_eq!(hvc(&mut vm, 1)[0], 0, "vCPU 0's MEM_SHARE succeeded");
}

#[test]

fn finding_share_outside_guest_memory_returns_invalid_parameter() {
    let mut m = Machine::new();
    let (mut vm, _id) = vm_with_ram(&mut m, 4 * P, MMAP);
    let h = ownership::GuestHandle(vm.handle() as u16);
    vm.hypervisor()
        .arch
        .script(h, 0, vec![share(0x9000_0000, 1), load(RAM)]);
    // DESIGN §4: "range outside guest memory → -3". The replayed share
    // faults on an IPA no memslot backs; the VM layer answers
    // RUN_FAIL_ACCESS and the guest's call fails instead of wedging.
    assert_eq!(vm.vcpu(0).run(), Ok(VcpuExit::SystemEvent(0)));
    assert_eq!(hvc(&mut vm, 0)[0], SMCCC_INVALID_PARAMETER as u64);
}

#[test]

fn finding_example_vmm_survives_a_relinquish_below_ram() {
    let mut m = Machine::new();
    let mut vmm = tests::ExampleVmm::new(&mut m, MIB2).unwrap();
    // The hypervisor accepts relinquishing an empty IPA (it becomes
    // Relinquished) and reports it; ExampleVmm::serve must not assume the
    // address is inside its RAM (it once underflowed here).
    let r = vmm.run(vec![relinquish(0x1000)]);
    assert_eq!(r, Ok(0));
}
