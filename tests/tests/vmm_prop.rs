//! Property test of the VMM API: random VMM and guest actions on one
//! protected VM whose RAM is a 4 MiB guest_memfd (private by default) at
//! 0x8000_0000, checked against a small model of the file.
//!
//! VMM actions: conversions (both directions, anywhere in the file), reads
//! and writes through the mapping (they must succeed exactly when the whole
//! range is shared and inside the file, else SIGBUS at the first offending
//! byte), pins and unpins, punch holes. Guest actions: short scripts of
//! Fill / Load / MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH on a few gfns, the
//! VMM serving the exits (converting, or sometimes refusing, the guest's
//! requests; punching what the guest relinquished).
//!
//! The model keeps, per page of the file, its attribute, its contents (every
//! page is always filled with one byte) and its pin count, and predicts the
//! result of every VMM call (the guest's loads too: they must read the
//! model's contents). Whether a page is the guest's is asked from the
//! hypervisor (`GuestPageState`), an oracle independent of the VMM layer's
//! bookkeeping. A guest MEM_SHARE/MEM_UNSHARE must return 0 exactly when the
//! VMM converted that page for that step, -3 otherwise; MEM_RELINQUISH
//! returns 0 exactly when its exit came (and the page reads zeros after).
//!
//! After every step (besides the checker `Machine::call` runs after every
//! host call): the ownership invariant checker, the attributes and pins
//! against the model, and the hypervisor's view of every guest page against
//! the VMM layer's (mapping kind, frame, attribute). At the end the VM is
//! destroyed and every page is back with the allocator.

use el2::sim::{GuestOp, Machine, SimEvent, SimPages};
use host_interface::abi::{GuestCall, GuestState, HostCall, SMCCC_INVALID_PARAMETER};
use host_interface::gmem::{GuestMapping, MmapError, PAGE};
use host_interface::kvm::*;
use host_interface::vm::{GmemId, KvmVm, Vcpu, VcpuExit, Vm};
use proptest::prelude::*;

const RAM: u64 = 0x8000_0000;
const P: u64 = PAGE;
const PAGES: u64 = 1024;
const SIZE: u64 = PAGES * P;
/// File pages the guest and the pins work on (block edges included).
const FEW: [u64; 8] = [0, 1, 2, 511, 512, 513, 700, 1023];

type SimVm<'m> = KvmVm<&'m mut Machine, SimPages>;

#[derive(Clone, Copy, Debug)]
enum GOp {
    Fill(u64, u8),
    Load(u64),
    Share(u64),
    Unshare(u64),
    Relinquish(u64),
}

#[derive(Clone, Debug)]
enum Step {
    Convert {
        first: u64,
        pages: u64,
        private: bool,
    },
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        page: u64,
        pages: u64,
        byte: u8,
    },
    Pin(u64),
    Unpin(u64),
    Punch {
        offset: u64,
        len: u64,
    },
    Guest {
        ops: Vec<GOp>,
        refuse: u8,
    },
}

fn few() -> impl Strategy<Value = u64> {
    prop::sample::select(FEW.to_vec())
}

fn gop() -> impl Strategy<Value = GOp> {
    prop_oneof![
        3 => (few(), any::<u8>()).prop_map(|(p, b)| GOp::Fill(p, b)),
        3 => few().prop_map(GOp::Load),
        3 => few().prop_map(GOp::Share),
        3 => few().prop_map(GOp::Unshare),
        1 => few().prop_map(GOp::Relinquish),
    ]
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        3 => (few(), 1..4u64).prop_map(|(p, n)| (p, n.min(PAGES - p))),
        1 => (0..2u64).prop_map(|b| (b * 512, 512)),
        1 => (0..PAGES).prop_flat_map(|p| (Just(p), 1..=PAGES - p)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let page = prop_oneof![3 => few(), 1 => 0..PAGES + 4];
    prop_oneof![
        5 => (range(), prop_oneof![3 => Just(false), 2 => Just(true)])
            .prop_map(|((first, pages), private)| Step::Convert { first, pages, private }),
        3 => (prop_oneof![3 => few().prop_map(|p| p * P), 1 => 0..SIZE + 2 * P], 0..64u64, 1..=64u64)
            .prop_map(|(o, d, len)| Step::Read { offset: o + d, len }),
        3 => (page.clone(), 1..=3u64, any::<u8>()).prop_map(|(page, pages, byte)| Step::Write { page, pages, byte }),
        3 => few().prop_map(Step::Pin),
        2 => few().prop_map(Step::Unpin),
        2 => prop_oneof![
            4 => range().prop_map(|(p, n)| (p * P, n * P)),
            1 => (0..SIZE + 4 * P, 0..3 * P),
            1 => (PAGES - 2..PAGES + 8).prop_map(|p| (p * P, 4 * P)),
        ].prop_map(|(offset, len)| Step::Punch { offset, len }),
        6 => (prop::collection::vec(gop(), 1..6), any::<u8>()).prop_map(|(ops, refuse)| Step::Guest { ops, refuse }),
    ]
}

/// What the VMM's file should look like.
struct Model {
    private: Vec<bool>,
    content: Vec<u8>,
    pins: Vec<u32>,
    /// Pins on pages punched out of the file while pinned.
    orphan_pins: Vec<u32>,
}

impl Model {
    /// Where an access of `[offset, offset + len)` SIGBUSes, if it does
    /// (`check_access`'s rule: the first byte of the first bad page).
    fn first_bad(&self, offset: u64, len: u64) -> Option<u64> {
        let mut at = offset;
        while at < offset + len {
            if at >= SIZE || self.private[(at / P) as usize] {
                return Some(at);
            }
            at = (at / P + 1) * P;
        }
        None
    }
}

fn pat(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

fn gpa(page: u64) -> u64 {
    RAM + page * P
}

/// The hypervisor's view of file page `page` (gfn = RAM + page), with the
/// checker off for these read-only queries.
fn guest_view(vm: &mut SimVm<'_>, page: u64) -> (GuestState, u64) {
    let h = vm.handle();
    let m: &mut Machine = vm.hypervisor();
    let was = m.check_calls;
    m.check_calls = false;
    let r = m.call(HostCall::GuestPageState, &[h, gpa(page) / P]);
    m.check_calls = was;
    assert!(r.is_ok(), "GuestPageState: {r:?}");
    (GuestState::from_raw(r.vals[0]).unwrap(), r.vals[1])
}

fn guest_owned(vm: &mut SimVm<'_>, page: u64) -> bool {
    matches!(
        guest_view(vm, page).0,
        GuestState::Owned | GuestState::SharedOwned
    )
}

fn convert(
    vm: &mut SimVm<'_>,
    id: GmemId,
    first: u64,
    pages: u64,
    private: bool,
) -> Result<(), (i32, u64)> {
    let mut a = KvmMemoryAttributes2 {
        offset: first * P,
        size: pages * P,
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

/// A guest request the VMM served: the script step, the result.
struct Served {
    step: usize,
    gpa: u64,
    size: u64,
    private: bool,
    result: Option<Result<(), (i32, u64)>>,
}

fn run_guest(vm: &mut SimVm<'_>, id: GmemId, model: &mut Model, ops: &[GOp], refuse: u8) {
    let h = ownership::GuestHandle(vm.handle() as u16);
    let script: Vec<GuestOp> = ops
        .iter()
        .map(|op| match *op {
            GOp::Fill(p, byte) => GuestOp::Fill { ipa: gpa(p), byte },
            GOp::Load(p) => GuestOp::Load {
                ipa: gpa(p) + 8 * (p % 8),
            },
            GOp::Share(p) => GuestOp::Hvc {
                id: GuestCall::MemShare.id(),
                args: [gpa(p), 1, 0],
            },
            GOp::Unshare(p) => GuestOp::Hvc {
                id: GuestCall::MemUnshare.id(),
                args: [gpa(p), 1, 0],
            },
            GOp::Relinquish(p) => GuestOp::Hvc {
                id: GuestCall::MemRelinquish.id(),
                args: [gpa(p), 1, 0],
            },
        })
        .collect();
    {
        let arch = &mut vm.hypervisor().arch;
        arch.events.clear();
        arch.script(h, 0, script);
    }
    let mut served: Vec<Served> = Vec::new();
    let mut relinquished: Vec<(usize, u64, u64)> = Vec::new();
    let mut faults = 0u32;
    loop {
        let exit = vm.vcpu(0).run().expect("vCPU run");
        // Every finished op logs one event: their count is the step that
        // caused this exit.
        let step = vm.hypervisor().arch.events.len();
        match exit {
            VcpuExit::MemoryFault {
                gpa: at,
                size,
                flags,
            } => {
                let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                let refused = refuse >> (faults % 8) & 1 != 0;
                faults += 1;
                let result = (!refused).then(|| {
                    // The guest's pages are the guest's: only the pin rule
                    // can stop the conversion.
                    let first = (at - RAM) / P;
                    let expect = if private
                        && let Some(p) = (first..first + size / P)
                            .find(|p| model.pins[*p as usize] > 0 && !model.private[*p as usize])
                    {
                        Err((errno::EAGAIN, p * P))
                    } else {
                        Ok(())
                    };
                    let r = convert(vm, id, first, size / P, private);
                    assert_eq!(r, expect, "guest's conversion of {at:#x}+{size:#x}");
                    if r.is_ok() {
                        // Attributes now, for the next prediction; the
                        // replay below checks the guest saw it.
                        for p in first..first + size / P {
                            model.private[p as usize] = private;
                        }
                    }
                    r
                });
                served.push(Served {
                    step,
                    gpa: at,
                    size,
                    private,
                    result,
                });
            }
            VcpuExit::Relinquished { gpa: at, size } => {
                vm.gmem_punch_hole(id, at - RAM, size)
                    .expect("punching relinquished memory");
                // Punching takes pinned pages out of the file; their pins
                // stay until dropped (contents are replayed below, in script
                // order).
                for p in (at - RAM) / P..(at - RAM + size) / P {
                    model.orphan_pins[p as usize] += model.pins[p as usize];
                    model.pins[p as usize] = 0;
                }
                relinquished.push((step, at, size));
            }
            VcpuExit::SystemEvent(0) => break,
            other => panic!("unexpected exit {other:?}"),
        }
        vm.hypervisor().check();
    }
    // Replay the script against the model, in order.
    let events: Vec<SimEvent> = vm.hypervisor().arch.events.clone();
    assert_eq!(events.len(), ops.len(), "every op finished once");
    for (step, (op, ev)) in ops.iter().zip(&events).enumerate() {
        let hvc = match *ev {
            SimEvent::HvcReturned { step: s, x, .. } => {
                assert_eq!(s, step);
                Some(x)
            }
            SimEvent::Loaded { step: s, value, .. } => {
                assert_eq!(s, step);
                let GOp::Load(p) = *op else {
                    panic!("load event for {op:?}")
                };
                assert_eq!(
                    value,
                    pat(model.content[p as usize]),
                    "guest load of page {p}"
                );
                None
            }
            SimEvent::Stored { step: s, .. } => {
                assert_eq!(s, step);
                None
            }
        };
        match *op {
            GOp::Fill(p, b) => model.content[p as usize] = b,
            GOp::Load(_) => {}
            GOp::Share(p) | GOp::Unshare(p) => {
                let x = hvc.expect("an HVC result");
                let to_private = matches!(op, GOp::Unshare(_));
                let request = served.iter().find(|s| s.step == step);
                if let Some(s) = request {
                    assert_eq!((s.gpa, s.size, s.private), (gpa(p), P, to_private));
                }
                match request.and_then(|s| s.result) {
                    Some(Ok(())) => {
                        assert_eq!(x[..2], [0, 1], "{op:?} converted");
                        model.private[p as usize] = to_private;
                    }
                    _ => assert_eq!(x[0], SMCCC_INVALID_PARAMETER as u64, "{op:?} not converted"),
                }
            }
            GOp::Relinquish(p) => {
                let x = hvc.expect("an HVC result");
                let exit = relinquished.iter().find(|r| r.0 == step);
                if x[0] == 0 {
                    assert_eq!(exit.map(|r| (r.1, r.2)), Some((gpa(p), P)));
                    model.content[p as usize] = 0;
                    model.pins[p as usize] = 0;
                } else {
                    assert_eq!(x[0], SMCCC_INVALID_PARAMETER as u64);
                    assert!(exit.is_none());
                }
            }
        }
    }
    assert!(served.iter().all(|s| s.step < ops.len()));
}

fn apply(vm: &mut SimVm<'_>, id: GmemId, model: &mut Model, step: &Step) {
    match *step {
        Step::Convert {
            first,
            pages,
            private,
        } => {
            let changing: Vec<u64> = (first..first + pages)
                .filter(|p| model.private[*p as usize] != private)
                .collect();
            let expect = if let Some(&p) = changing.iter().find(|p| guest_owned(vm, **p)) {
                Err((errno::EPERM, p * P))
            } else if let Some(&p) = changing
                .iter()
                .find(|p| private && model.pins[**p as usize] > 0)
            {
                Err((errno::EAGAIN, p * P))
            } else {
                Ok(())
            };
            assert_eq!(convert(vm, id, first, pages, private), expect, "{step:?}");
            if expect.is_ok() {
                for p in changing {
                    model.private[p as usize] = private;
                }
            }
        }
        Step::Read { offset, len } => {
            let mut buf = vec![0u8; len as usize];
            let r = vm.gmem_read(id, offset, &mut buf);
            match model.first_bad(offset, len) {
                Some(bad) => assert_eq!(r, Err(MmapError::Sigbus { offset: bad }), "{step:?}"),
                None => {
                    assert_eq!(r, Ok(()), "{step:?}");
                    for (i, b) in buf.iter().enumerate() {
                        let page = (offset + i as u64) / P;
                        assert_eq!(*b, model.content[page as usize], "{step:?} byte {i}");
                    }
                }
            }
        }
        Step::Write { page, pages, byte } => {
            let r = vm.gmem_write(id, page * P, &vec![byte; (pages * P) as usize]);
            match model.first_bad(page * P, pages * P) {
                Some(bad) => assert_eq!(r, Err(MmapError::Sigbus { offset: bad }), "{step:?}"),
                None => {
                    assert_eq!(r, Ok(()), "{step:?}");
                    for p in page..page + pages {
                        model.content[p as usize] = byte;
                    }
                }
            }
        }
        Step::Pin(page) => {
            let r = vm.gmem_pin(id, page * P);
            if model.private[page as usize] {
                assert_eq!(r, Err(errno::EFAULT), "{step:?}");
            } else {
                assert_eq!(r, Ok(()), "{step:?}");
                model.pins[page as usize] += 1;
            }
        }
        Step::Unpin(page) => {
            let r = vm.gmem_unpin(id, page * P);
            let (pins, orphans) = (model.pins[page as usize], model.orphan_pins[page as usize]);
            if pins > 0 {
                assert_eq!(r, Ok(()), "{step:?}");
                model.pins[page as usize] -= 1;
            } else if orphans > 0 {
                // A page punched out while pinned: its pin can still drop.
                assert_eq!(r, Ok(()), "{step:?}");
                model.orphan_pins[page as usize] -= 1;
            } else {
                assert_eq!(r, Err(errno::EINVAL), "{step:?}");
            }
        }
        Step::Punch { offset, len } => {
            let r = vm.gmem_punch_hole(id, offset, len);
            if !offset.is_multiple_of(P) || !len.is_multiple_of(P) || len == 0 {
                assert_eq!(r, Err(errno::EINVAL), "{step:?}");
                return;
            }
            let range = offset / P..((offset + len) / P).min(PAGES);
            if range.clone().any(|p| guest_owned(vm, p)) {
                assert_eq!(r, Err(errno::EBUSY), "{step:?}");
            } else {
                assert_eq!(r, Ok(()), "{step:?}");
                for p in range {
                    model.content[p as usize] = 0;
                    model.orphan_pins[p as usize] += model.pins[p as usize];
                    model.pins[p as usize] = 0;
                }
            }
        }
        Step::Guest { ref ops, refuse } => run_guest(vm, id, model, ops, refuse),
    }
}

/// The VMM layer, the hypervisor and the model agree.
fn check(vm: &mut SimVm<'_>, id: GmemId, model: &Model) {
    vm.hypervisor().check();
    let g = vm.gmem(id).unwrap().clone();
    for p in 0..PAGES {
        let i = p as usize;
        assert_eq!(g.is_private(p), model.private[i], "attribute of page {p}");
        assert_eq!(g.pins(p), model.pins[i], "pins of page {p}");
        if model.pins[i] > 0 {
            assert!(!model.private[i], "a pinned page is shared");
        }
        let (state, pfn) = guest_view(vm, p);
        match (state, g.guest_mapping(p)) {
            (GuestState::Owned, Some(GuestMapping::Donated { gfn, .. })) => {
                assert!(model.private[i], "guest-private page {p} is private");
                assert_eq!(gfn, gpa(p) / P);
            }
            (GuestState::SharedOwned, Some(GuestMapping::Donated { gfn, .. })) => {
                assert!(!model.private[i], "guest-shared page {p} is shared");
                assert_eq!(gfn, gpa(p) / P);
            }
            (GuestState::SharedBorrowed, Some(GuestMapping::Lent { gfn, .. })) => {
                assert!(!model.private[i], "lent page {p} is shared");
                assert_eq!(gfn, gpa(p) / P);
            }
            (GuestState::NoPage | GuestState::Relinquished, None) => continue,
            (s, m) => panic!("page {p}: hypervisor says {s:?}, VMM layer says {m:?}"),
        }
        assert_eq!(Some(pfn), g.pfn(p), "frame of page {p}");
    }
}

/// Runs `steps` on a fresh VM; with `shared_top`, the VMM first makes the
/// file's second 2 MiB shared (as it would a virtio/swiotlb area), so guest
/// faults there are host lends and host accesses succeed.
fn run_case(shared_top: bool, steps: &[Step]) {
    let mut m = Machine::new();
    let mut vm = KvmVm::new(&mut m, SimPages::for_machine(), 1).unwrap();
    vm.init_vcpu(0, 0, 0).unwrap();
    let id = vm
        .create_guest_memfd(&KvmCreateGuestMemfd {
            size: SIZE,
            flags: GUEST_MEMFD_FLAG_MMAP,
            reserved: [0; 6],
        })
        .unwrap();
    vm.set_memory_region(&KvmUserspaceMemoryRegion2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: RAM,
        memory_size: SIZE,
        guest_memfd: id.0,
        ..Default::default()
    })
    .unwrap();
    let mut model = Model {
        private: vec![true; PAGES as usize],
        content: vec![0; PAGES as usize],
        pins: vec![0; PAGES as usize],
        orphan_pins: vec![0; PAGES as usize],
    };
    let prefix = shared_top.then_some(Step::Convert {
        first: 512,
        pages: 512,
        private: false,
    });
    for step in prefix.iter().chain(steps) {
        apply(&mut vm, id, &mut model, step);
        check(&mut vm, id, &model);
    }
    let pages = vm.destroy().expect("teardown");
    assert_eq!(pages.in_use(), 0, "every page back to the host allocator");
    m.check();
}

proptest! {
    // 32 cases by default (about a second); PROPTEST_CASES asks for more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_vmm_and_guest_actions(
        shared_top in any::<bool>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run_case(shared_top, &steps);
    }
}

/// A fixed sequence through the interesting corners (2 MiB blocks split by
/// a guest share, a pinned unshare, relinquish, punch), so the model is
/// exercised even if the random cases miss them.
#[test]
fn scripted_corner_sequence() {
    use GOp::*;
    run_case(
        false,
        &[
            Step::Guest {
                ops: vec![Fill(512, 7), Share(513), Fill(513, 9)],
                refuse: 0,
            },
            Step::Read {
                offset: 513 * P,
                len: 16,
            },
            Step::Pin(513),
            Step::Guest {
                ops: vec![Unshare(513), Load(513)],
                refuse: 0,
            },
            Step::Unpin(513),
            Step::Guest {
                ops: vec![Unshare(513), Relinquish(512), Load(512), Share(0), Share(1)],
                refuse: 0b10,
            },
            Step::Convert {
                first: 0,
                pages: 1024,
                private: false,
            },
            Step::Convert {
                first: 700,
                pages: 4,
                private: false,
            },
            Step::Pin(701),
            Step::Convert {
                first: 699,
                pages: 4,
                private: true,
            },
            Step::Unpin(701),
            Step::Write {
                page: 700,
                pages: 3,
                byte: 0x70,
            },
            Step::Guest {
                ops: vec![Load(700), Fill(700, 1), Relinquish(700)],
                refuse: 0,
            },
            Step::Punch {
                offset: 0,
                len: SIZE,
            },
            Step::Punch {
                offset: 600 * P,
                len: 200 * P,
            },
            Step::Convert {
                first: 600,
                pages: 200,
                private: true,
            },
            Step::Guest {
                ops: vec![Load(700), Share(700), Unshare(700)],
                refuse: 0,
            },
        ],
    );
}
