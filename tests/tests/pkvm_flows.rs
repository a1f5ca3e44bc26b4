//! pKVM-style flows through the VMM API, on the simulated machine, with
//! the ownership invariant checker after every host call (the machine runs
//! it) and byte checks on both sides.

use el2::sim::{GuestOp, Machine};
use host_interface::abi::{GuestCall, GuestState, HostCall};
use host_interface::gmem::MmapError;
use host_interface::kvm::*;
use host_interface::vm::{Vcpu, VcpuExit};
use tests::*;

const MIB2: u64 = 2 << 20;

fn share(gpa: u64, n: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemShare.id(),
        args: [gpa, n, 0],
    }
}
fn unshare(gpa: u64, n: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemUnshare.id(),
        args: [gpa, n, 0],
    }
}
fn relinquish(gpa: u64) -> GuestOp {
    GuestOp::Hvc {
        id: GuestCall::MemRelinquish.id(),
        args: [gpa, 1, 0],
    }
}

fn guest_state(vmm: &mut ExampleVmm, gpa: u64) -> (GuestState, u64) {
    let h = vmm.vm.handle();
    let v = vmm
        .vm
        .hypervisor()
        .call_raw(HostCall::GuestPageState, &[h, gpa >> 12]);
    (GuestState::from_raw(v[0]).unwrap(), v[1])
}

trait Raw {
    fn call_raw(&mut self, call: HostCall, args: &[u64]) -> [u64; 5];
}

impl Raw for &mut Machine {
    fn call_raw(&mut self, call: HostCall, args: &[u64]) -> [u64; 5] {
        let r = Machine::call(self, call, args);
        assert!(r.is_ok(), "{call:?}: {r:?}");
        r.vals
    }
}

#[test]
fn example_vmm_loads_an_image_in_place_and_serves_a_guest() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, 4 * MIB2).unwrap();
    let image: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    vmm.load_image(0, &image).unwrap();
    // The image is private now: the VMM's mapping refuses it.
    let mut b = [0u8; 8];
    assert_eq!(
        vmm.vm.gmem_read(vmm.ram, 0, &mut b),
        Err(MmapError::Sigbus { offset: 0 })
    );
    let exit = vmm
        .run(vec![
            GuestOp::Load { ipa: GUEST_RAM },
            GuestOp::Load {
                ipa: GUEST_RAM + 4096 + 8,
            },
            share(GUEST_RAM + MIB2, 1),
            GuestOp::Fill {
                ipa: GUEST_RAM + MIB2,
                byte: b'A',
            },
            GuestOp::Store {
                ipa: CONSOLE,
                value: b'!' as u64,
            },
            GuestOp::Hvc {
                id: 0x8400_0003,
                args: [1, 0, 0],
            },
            relinquish(GUEST_RAM + 2 * MIB2),
        ])
        .unwrap();
    assert_eq!(exit, 0, "powered off");
    let arch = &vmm.vm.hypervisor().arch;
    // The guest saw the image, in place.
    assert_eq!(
        arch.loaded(0, 0),
        Some(u64::from_le_bytes(image[0..8].try_into().unwrap()))
    );
    assert_eq!(
        arch.loaded(0, 1),
        Some(u64::from_le_bytes(image[4104..4112].try_into().unwrap()))
    );
    assert_eq!(
        arch.hvc_result(0, 2).unwrap()[..2],
        [0, 1],
        "MEM_SHARE succeeded"
    );
    assert_eq!(
        arch.hvc_result(0, 5).unwrap()[0],
        (-2i64) as u64,
        "CPU_ON of a vCPU the VM does not have: refused by el2, not the VMM"
    );
    assert_eq!(arch.hvc_result(0, 6).unwrap()[..2], [0, 1]);
    assert_eq!(
        vmm.events,
        vec![
            Event::Converted {
                gpa: GUEST_RAM + MIB2,
                size: 4096,
                private: false,
                result: Ok(())
            },
            Event::Console(b'!'),
            Event::Relinquished {
                gpa: GUEST_RAM + 2 * MIB2,
                size: 4096
            },
        ]
    );
    // The host reads the guest's shared page through its mapping.
    let mut page = [0u8; 4096];
    vmm.vm.gmem_read(vmm.ram, MIB2, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == b'A'));
    let pages = vmm.vm.destroy().unwrap();
    assert_eq!(pages.in_use(), 0, "every page back to the host allocator");
    m.check();
}

#[test]
fn guest_share_and_unshare_round_trip_with_bytes() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, MIB2).unwrap();
    let gpa = GUEST_RAM + 0x3000;
    let exit = vmm
        .run(vec![
            GuestOp::Fill {
                ipa: gpa,
                byte: 0x11,
            },
            share(gpa, 1),
            GuestOp::Load { ipa: gpa },
            unshare(gpa, 1),
            GuestOp::Load { ipa: gpa },
        ])
        .unwrap();
    assert_eq!(exit, 0);
    let arch = &vmm.vm.hypervisor().arch;
    assert_eq!(arch.hvc_result(0, 1).unwrap()[0], 0);
    assert_eq!(arch.hvc_result(0, 3).unwrap()[0], 0);
    // Contents were kept across both conversions.
    assert_eq!(arch.loaded(0, 2), Some(0x1111_1111_1111_1111));
    assert_eq!(arch.loaded(0, 4), Some(0x1111_1111_1111_1111));
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
    let mut b = [0u8; 1];
    assert!(
        vmm.vm.gmem_read(vmm.ram, 0x3000, &mut b).is_err(),
        "private again"
    );
}

#[test]
fn unshare_while_the_vmm_pins_the_page_fails_then_succeeds() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, MIB2).unwrap();
    let gpa = GUEST_RAM + 0x5000;
    vmm.vm.init_vcpu(0, 0, 0).unwrap();
    let h = ownership::GuestHandle(vmm.vm.handle() as u16);
    vmm.vm.hypervisor().arch.script(
        h,
        0,
        vec![
            GuestOp::Fill { ipa: gpa, byte: 7 },
            share(gpa, 1),
            unshare(gpa, 1),
            unshare(gpa, 1),
        ],
    );
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert_eq!(
        exit,
        VcpuExit::MemoryFault {
            gpa,
            size: 4096,
            flags: 0
        }
    );
    vmm.convert(0x5000, 4096, false).unwrap();
    // The VMM pins the now-shared page (vhost, VFIO...).
    vmm.vm.gmem_pin(vmm.ram, 0x5000).unwrap();
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert_eq!(
        exit,
        VcpuExit::MemoryFault {
            gpa,
            size: 4096,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
        }
    );
    // Shared -> private fails while pinned: EAGAIN with the page's offset.
    assert_eq!(vmm.convert(0, 0x6000, true), Err((errno::EAGAIN, 0x5000)));
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::SharedOwned);
    // The VMM gives up: the guest's call returns INVALID_PARAMETER and
    // nothing changed; it asks again.
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert_eq!(
        exit,
        VcpuExit::MemoryFault {
            gpa,
            size: 4096,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
        }
    );
    assert_eq!(
        vmm.vm.hypervisor().arch.hvc_result(0, 2).unwrap()[0],
        (-3i64) as u64
    );
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::SharedOwned);
    let mut b = [0u8; 1];
    vmm.vm.gmem_read(vmm.ram, 0x5000, &mut b).unwrap();
    assert_eq!(b[0], 7);
    // Unpinned, the conversion succeeds.
    vmm.vm.gmem_unpin(vmm.ram, 0x5000).unwrap();
    vmm.convert(0x5000, 4096, true).unwrap();
    assert_eq!(vmm.vm.vcpu(0).run().unwrap(), VcpuExit::SystemEvent(0));
    assert_eq!(vmm.vm.hypervisor().arch.hvc_result(0, 3).unwrap()[0], 0);
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
}

#[test]
fn the_vmm_cannot_convert_what_the_guest_owns_unasked() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, 2 * MIB2).unwrap();
    let gpa = GUEST_RAM + 0x2000;
    assert_eq!(
        vmm.run(vec![GuestOp::Fill { ipa: gpa, byte: 1 }]).unwrap(),
        0
    );
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
    // The fault donated the whole first 2 MiB (one folio, one block).
    assert_eq!(guest_state(&mut vmm, GUEST_RAM).0, GuestState::Owned);
    // The pages are the guest's: converting them to shared is refused,
    // with the first offending offset.
    assert_eq!(
        vmm.convert(0x2000, 4096, false),
        Err((errno::EPERM, 0x2000))
    );
    assert_eq!(vmm.convert(0, MIB2, false), Err((errno::EPERM, 0)));
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
    // Host-owned pages (the second 2 MiB, never touched) convert freely.
    vmm.convert(MIB2 + 0x4000, 0x4000, false).unwrap();
    vmm.convert(MIB2 + 0x4000, 0x4000, true).unwrap();
    // Converting to what it already is: success, no effect.
    vmm.convert(0x2000, 4096, true).unwrap();
}

#[test]
fn refused_conversion_leaves_nothing_behind() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, MIB2).unwrap();
    vmm.refuse_conversions = true;
    let gpa = GUEST_RAM + 0x1000;
    let exit = vmm
        .run(vec![
            GuestOp::Fill { ipa: gpa, byte: 3 },
            share(gpa, 1),
            GuestOp::Load { ipa: gpa },
        ])
        .unwrap();
    assert_eq!(exit, 0);
    assert_eq!(
        vmm.vm.hypervisor().arch.hvc_result(0, 1).unwrap()[..2],
        [(-3i64) as u64, 0]
    );
    assert_eq!(
        vmm.vm.hypervisor().arch.loaded(0, 2),
        Some(0x0303_0303_0303_0303)
    );
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
}

#[test]
fn relinquish_wipes_punches_and_refaults_a_fresh_zero_page() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, MIB2).unwrap();
    let gpa = GUEST_RAM + 0x7000;
    vmm.vm.init_vcpu(0, 0, 0).unwrap();
    let h = ownership::GuestHandle(vmm.vm.handle() as u16);
    vmm.vm.hypervisor().arch.script(
        h,
        0,
        vec![
            GuestOp::Fill {
                ipa: gpa,
                byte: 0xee,
            },
            relinquish(gpa),
            GuestOp::Load { ipa: gpa },
        ],
    );
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert_eq!(exit, VcpuExit::Relinquished { gpa, size: 4096 });
    let old = vmm.vm.gmem(vmm.ram).unwrap().pfn(7).unwrap();
    {
        let raw = vmm.vm.hypervisor();
        let page = raw.host_read_page(old).unwrap();
        assert!(page.iter().all(|b| *b == 0), "wiped before the host got it");
    }
    vmm.vm.gmem_punch_hole(vmm.ram, 0x7000, 4096).unwrap();
    assert_eq!(vmm.vm.gmem(vmm.ram).unwrap().pfn(7), None, "punched");
    assert!(
        vmm.vm.gmem(vmm.ram).unwrap().is_private(7),
        "attributes survive a punch"
    );
    assert_eq!(vmm.vm.vcpu(0).run().unwrap(), VcpuExit::SystemEvent(0));
    assert_eq!(
        vmm.vm.hypervisor().arch.loaded(0, 2),
        Some(0),
        "a fresh zeroed page"
    );
    assert_eq!(guest_state(&mut vmm, gpa).0, GuestState::Owned);
}

#[test]
fn two_mib_folio_splits_on_one_shared_page_and_merges_back() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, 2 * MIB2).unwrap();
    let base = GUEST_RAM + MIB2;
    vmm.vm.init_vcpu(0, 0, 0).unwrap();
    let h = ownership::GuestHandle(vmm.vm.handle() as u16);
    vmm.vm.hypervisor().arch.script(
        h,
        0,
        vec![
            GuestOp::Fill {
                ipa: base + 0x10000,
                byte: 5,
            },
            share(base + 0x3000, 1),
            unshare(base + 0x3000, 1),
        ],
    );
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert!(matches!(exit, VcpuExit::MemoryFault { .. }));
    let gmem = vmm.vm.gmem(vmm.ram).unwrap();
    let head = gmem.frame(512).unwrap().1;
    assert_eq!(head.order, 9, "a 2 MiB folio backs the block");
    let leaf = vmm
        .vm
        .hypervisor()
        .hyp
        .mem
        .guest_leaf(h, ownership::Gfn(base >> 12))
        .unwrap();
    assert_eq!(leaf.level.get(), 2, "donated as one guest block");
    vmm.convert(MIB2 + 0x3000, 4096, false).unwrap();
    let gmem = vmm.vm.gmem(vmm.ram).unwrap();
    assert_eq!(gmem.frame(512 + 3).unwrap().1.order, 0, "the folio split");
    let leaf = vmm
        .vm
        .hypervisor()
        .hyp
        .mem
        .guest_leaf(h, ownership::Gfn((base >> 12) + 3))
        .unwrap();
    assert_eq!(leaf.level.get(), 3, "the guest block split");
    let exit = vmm.vm.vcpu(0).run().unwrap();
    assert!(
        matches!(exit, VcpuExit::MemoryFault { flags, .. } if flags == KVM_MEMORY_EXIT_FLAG_PRIVATE)
    );
    vmm.convert(MIB2 + 0x3000, 4096, true).unwrap();
    let gmem = vmm.vm.gmem(vmm.ram).unwrap();
    assert_eq!(gmem.frame(512).unwrap().1.order, 9, "the folio merged back");
    assert_eq!(gmem.frame(512).unwrap().1.pfn, head.pfn);
    let leaf = vmm
        .vm
        .hypervisor()
        .hyp
        .mem
        .guest_leaf(h, ownership::Gfn((base >> 12) + 3))
        .unwrap();
    assert_eq!(leaf.level.get(), 2, "the guest block merged back");
    assert_eq!(vmm.vm.vcpu(0).run().unwrap(), VcpuExit::SystemEvent(0));
}

#[test]
fn teardown_reclaims_and_zeroes_every_guest_page() {
    let mut m = Machine::new();
    let mut vmm = ExampleVmm::new(&mut m, 2 * MIB2).unwrap();
    let exit = vmm
        .run(vec![
            GuestOp::Fill {
                ipa: GUEST_RAM,
                byte: 9,
            },
            GuestOp::Fill {
                ipa: GUEST_RAM + MIB2 + 0x5000,
                byte: 9,
            },
            share(GUEST_RAM, 1),
        ])
        .unwrap();
    assert_eq!(exit, 0);
    let gmem = vmm.vm.gmem(vmm.ram).unwrap();
    let private = gmem.pfn(512 + 5).unwrap();
    let shared = gmem.pfn(0).unwrap();
    let pages = vmm.vm.destroy().unwrap();
    assert_eq!(pages.in_use(), 0);
    assert!(
        m.host_read_page(private).unwrap().iter().all(|b| *b == 0),
        "guest-private page wiped"
    );
    assert!(
        m.host_read_page(shared).unwrap().iter().all(|b| *b == 9),
        "shared page kept"
    );
    m.check();
}
