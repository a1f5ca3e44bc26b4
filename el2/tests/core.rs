//! The hypervisor core end to end on the simulated machine: every host
//! call and guest call, valid and invalid, VM lifecycles, and the
//! conversion protocol, with the ownership invariant checker after every
//! step.

use el2::hyp::vm::Waiting;
use el2::sim::{GuestOp, Machine, Reply};
use host_interface::abi::*;

const RAM: u64 = Machine::RAM_BASE >> 12;
const PGD: u64 = RAM + 0x100;
const META: u64 = RAM + 0x102;
const MC: u64 = RAM + 0x110;
const GPA: u64 = 0x8000_0000;

fn ok(r: Reply) -> [u64; 5] {
    assert!(r.is_ok(), "host call failed: {r:?}");
    r.vals
}

fn err(r: Reply) -> i64 {
    assert_eq!(r.status, SMCCC_SUCCESS, "{r:?}");
    assert!(r.ret < 0, "expected an error, got {r:?}");
    -r.ret
}

/// A machine with one VM (1 vCPU, entry 0), a memcache of `mc` pages.
fn vm(m: &mut Machine, mc: u64) -> u64 {
    let h = ok(m.call(HostCall::VmCreate, &[40, PGD, META, 1]))[0];
    ok(m.call(HostCall::VcpuInit, &[h, 0, 0, 0]));
    if mc > 0 {
        ok(m.call(HostCall::MemcacheTopup, &[h, MC, mc]));
    }
    m.check();
    h
}

fn run(m: &mut Machine, h: u64) -> Exit {
    let r = m.call(HostCall::VcpuRun, &[h, 0]);
    m.check();
    r.exit().unwrap_or_else(|| panic!("run failed: {r:?}"))
}

fn run_with(m: &mut Machine, h: u64, v0: u64, v1: u64) -> Exit {
    let r = m.call(HostCall::VcpuRun, &[h, 0, RUN_COMPLETE_ACCESS, v0, v1]);
    m.check();
    r.exit().unwrap_or_else(|| panic!("run failed: {r:?}"))
}

fn hvc(id: u64, args: [u64; 3]) -> GuestOp {
    GuestOp::Hvc { id, args }
}

fn handle(h: u64) -> ownership::GuestHandle {
    ownership::GuestHandle(h as u16)
}

fn page_state(m: &mut Machine, pfn: u64) -> (u64, u64) {
    let v = ok(m.call(HostCall::PageState, &[pfn]));
    (v[0], v[1])
}

fn guest_state(m: &mut Machine, h: u64, gfn: u64) -> (GuestState, u64) {
    let v = ok(m.call(HostCall::GuestPageState, &[h, gfn]));
    (GuestState::from_raw(v[0]).unwrap(), v[1])
}

#[test]
fn version_unknown_ids_and_reserved_registers() {
    let mut m = Machine::new();
    assert_eq!(ok(m.call(HostCall::Version, &[]))[0], ABI_VERSION);
    // The SVE hint bit is ignored.
    let r = m.raw_call([HostCall::Version.id() | SMCCC_SVE_HINT, 0, 0, 0, 0, 0]);
    assert!(r.is_ok());
    for id in [
        HOST_CALL_BASE + HostCall::ALL.len() as u64,
        HOST_CALL_BASE + 0xffff,
        0x8400_0000,
        0,
        u64::MAX,
    ] {
        let r = m.raw_call([id, 1, 2, 3, 4, 5]);
        assert_eq!(r.status, SMCCC_NOT_SUPPORTED, "id {id:#x}");
    }
    // Arguments beyond the call's arity must be zero.
    assert_eq!(err(m.call(HostCall::Version, &[1])), errno::EINVAL);
    assert_eq!(
        err(m.call(HostCall::ShareHyp, &[RAM + 5, 1])),
        errno::EINVAL
    );
    assert_eq!(
        page_state(&mut m, RAM + 5),
        (page_state::OWNED, page_state::NOPAGE)
    );
    m.check();
}

#[test]
fn init_only_calls_are_sealed_after_finalize() {
    let mut m = Machine::new();
    ok(m.call(HostCall::HypPoolDonate, &[RAM + 0x800, 4]));
    assert_eq!(m.arch.allocator_pages, 4);
    assert_eq!(
        page_state(&mut m, RAM + 0x800),
        (page_state::NOPAGE, page_state::OWNED)
    );
    ok(m.call(HostCall::Finalize, &[]));
    assert!(m.hyp.is_finalized());
    assert_eq!(
        m.call(HostCall::HypPoolDonate, &[RAM + 0x900, 1]).status,
        SMCCC_NOT_SUPPORTED
    );
    assert_eq!(m.call(HostCall::Finalize, &[]).status, SMCCC_NOT_SUPPORTED);
    assert_eq!(
        page_state(&mut m, RAM + 0x900),
        (page_state::OWNED, page_state::NOPAGE)
    );
    // Runtime calls still work.
    ok(m.call(HostCall::ShareHyp, &[RAM + 0x901]));
    m.check();
}

#[test]
fn share_with_hypervisor_through_host_calls() {
    let mut m = Machine::new();
    let p = RAM + 0x30;
    ok(m.call(HostCall::ShareHyp, &[p]));
    assert_eq!(
        page_state(&mut m, p),
        (page_state::SHARED_OWNED, page_state::SHARED_BORROWED)
    );
    assert_eq!(err(m.call(HostCall::ShareHyp, &[p])), errno::EPERM);
    ok(m.call(HostCall::UnshareHyp, &[p]));
    assert_eq!(err(m.call(HostCall::UnshareHyp, &[p])), errno::EPERM);
    let carve = RAM + Machine::RAM_PAGES - 1;
    assert_eq!(err(m.call(HostCall::ShareHyp, &[carve])), errno::EPERM);
    assert_eq!(
        err(m.call(HostCall::ShareHyp, &[RAM + Machine::RAM_PAGES])),
        errno::EINVAL
    );
    assert_eq!(err(m.call(HostCall::ShareHyp, &[u64::MAX])), errno::EINVAL);
    assert_eq!(err(m.call(HostCall::PageState, &[0])), errno::EINVAL);
    // The host cannot touch the carve-out: its stage-2 refuses.
    assert!(m.host_read_page(carve).is_err());
    assert!(m.host_read_page(p).is_ok());
    m.check();
}

#[test]
fn guest_shares_a_page_and_the_host_reads_it() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    let page = RAM + 0x40;
    // The VMM loads an image into a host page, then donates it in place.
    m.host_fill_page(page, b'K').unwrap();
    ok(m.call(HostCall::DonateGuest, &[h, page, GPA >> 12, 1]));
    assert!(m.host_read_page(page).is_err(), "the host lost access");
    m.arch.script(
        handle(h),
        0,
        vec![
            hvc(GuestCall::CallUid.id(), [0; 3]),
            hvc(GuestCall::Features.id(), [0; 3]),
            hvc(GuestCall::HypMeminfo.id(), [0; 3]),
            GuestOp::Load { ipa: GPA + 8 },
            hvc(GuestCall::MemShare.id(), [GPA, 1, 0]),
            GuestOp::Fill {
                ipa: GPA,
                byte: b'A',
            },
            hvc(GuestCall::MemUnshare.id(), [GPA, 0, 0]),
        ],
    );
    // The share request exits to the host as a memory fault (to shared).
    let exit = run(&mut m, h);
    assert_eq!(
        exit,
        Exit::MemoryFault {
            gpa: GPA,
            size: 4096,
            flags: 0
        }
    );
    assert_eq!(m.arch.hvc_result(0, 0), Some(KVM_UID));
    assert_eq!(m.arch.hvc_result(0, 1).unwrap()[0], GUEST_FEATURES);
    assert_eq!(m.arch.hvc_result(0, 2).unwrap()[..2], [4096, 1]);
    assert_eq!(
        m.arch.loaded(0, 3),
        Some(u64::from_ne_bytes([b'K'; 8])),
        "the guest sees the image in place"
    );
    // Nothing changed yet; running again without an answer repeats the exit.
    assert_eq!(guest_state(&mut m, h, GPA >> 12).0, GuestState::Owned);
    assert_eq!(run(&mut m, h), exit);
    ok(m.call(HostCall::ConvertComplete, &[h, GPA >> 12, 1, 1]));
    assert_eq!(guest_state(&mut m, h, GPA >> 12).0, GuestState::SharedOwned);
    // The guest's call returns 0 with one page done; it writes 'A' and asks
    // for the page back: a memory fault with the private flag.
    let exit = run(&mut m, h);
    assert_eq!(m.arch.hvc_result(0, 4).unwrap()[..2], [0, 1]);
    assert!(m.host_read_page(page).unwrap().iter().all(|b| *b == b'A'));
    assert_eq!(
        exit,
        Exit::MemoryFault {
            gpa: GPA,
            size: 4096,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
        }
    );
    // A completion that does not match the request is refused.
    assert_eq!(
        err(m.call(HostCall::ConvertComplete, &[h, GPA >> 12, 1, 1])),
        errno::EPERM
    );
    assert_eq!(
        err(m.call(HostCall::ConvertComplete, &[h, (GPA >> 12) + 1, 1, 0])),
        errno::EPERM
    );
    ok(m.call(HostCall::ConvertComplete, &[h, GPA >> 12, 1, 0]));
    assert!(m.host_read_page(page).is_err());
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    assert_eq!(m.arch.hvc_result(0, 6).unwrap()[..2], [0, 1]);
}

#[test]
fn refused_conversion_returns_invalid_parameter_and_changes_nothing() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    m.arch.script(
        handle(h),
        0,
        vec![hvc(GuestCall::MemShare.id(), [GPA, 1, 0])],
    );
    assert!(matches!(run(&mut m, h), Exit::MemoryFault { .. }));
    assert_eq!(
        err(m.call(HostCall::ConvertRefuse, &[h + 1])),
        errno::EINVAL
    );
    ok(m.call(HostCall::ConvertRefuse, &[h]));
    assert_eq!(err(m.call(HostCall::ConvertRefuse, &[h])), errno::EPERM);
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    assert_eq!(
        m.arch.hvc_result(0, 0).unwrap()[..2],
        [SMCCC_INVALID_PARAMETER as u64, 0]
    );
    assert_eq!(guest_state(&mut m, h, GPA >> 12).0, GuestState::Owned);
    assert_eq!(page_state(&mut m, RAM + 0x40).0, page_state::NOPAGE);
}

#[test]
fn faults_on_unmapped_memory_go_to_the_host() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Store {
                ipa: GPA + 0x10,
                value: 0x1122,
            },
            GuestOp::Load { ipa: 0x0900_0000 },
            GuestOp::Store {
                ipa: 0x0900_0004,
                value: 0x41,
            },
            hvc(GuestCall::MemShare.id(), [GPA + 0x1000, 1, 0]),
        ],
    );
    // A store to unmapped RAM: the host donates a page, the store retries.
    let exit = run(&mut m, h);
    assert_eq!(
        exit,
        Exit::Stage2Fault {
            gpa: GPA + 0x10,
            write: true,
            exec: false,
            isv: true,
            size: 8,
            reg: 1,
            data: 0x1122,
            hvc: false,
        }
    );
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x41, GPA >> 12, 1]));
    // A load from an address the host emulates (MMIO): it completes the
    // access with a value, which the guest reads.
    let exit = run(&mut m, h);
    assert_eq!(
        exit,
        Exit::Stage2Fault {
            gpa: 0x0900_0000,
            write: false,
            exec: false,
            isv: true,
            size: 8,
            reg: 1,
            data: 0,
            hvc: false,
        }
    );
    let word = m.ram.read_page(ownership::Pfn(RAM + 0x41));
    assert_eq!(
        u64::from_ne_bytes(word[0x10..0x18].try_into().unwrap()),
        0x1122
    );
    let exit = run_with(&mut m, h, 0xfeed, 0);
    assert_eq!(m.arch.loaded(0, 1), Some(0xfeed));
    assert!(matches!(
        exit,
        Exit::Stage2Fault {
            gpa: 0x0900_0004,
            write: true,
            data: 0x41,
            ..
        }
    ));
    // Completion values only complete an access or a hypercall.
    let exit = run_with(&mut m, h, 0, 0);
    // MEM_SHARE of a page not yet mapped: the host maps it, the HVC retries.
    assert!(
        matches!(exit, Exit::Stage2Fault { gpa, isv: false, hvc: true, .. } if gpa == GPA + 0x1000)
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_COMPLETE_ACCESS, 1, 0])),
        errno::EINVAL
    );
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x42, (GPA >> 12) + 1, 1]));
    assert!(matches!(run(&mut m, h), Exit::MemoryFault { gpa, .. } if gpa == GPA + 0x1000));
}

#[test]
fn relinquish_wipes_the_page_and_tells_the_host() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Fill {
                ipa: GPA,
                byte: 0x5a,
            },
            hvc(GuestCall::MemRelinquish.id(), [GPA, 1, 0]),
            GuestOp::Load { ipa: GPA },
        ],
    );
    assert_eq!(
        run(&mut m, h),
        Exit::Relinquished {
            gpa: GPA,
            size: 4096
        }
    );
    assert_eq!(
        m.arch.hvc_result(0, 1),
        None,
        "reported when the guest runs again"
    );
    assert!(
        m.host_read_page(RAM + 0x40)
            .unwrap()
            .iter()
            .all(|b| *b == 0)
    );
    assert_eq!(
        page_state(&mut m, RAM + 0x40),
        (page_state::OWNED, page_state::NOPAGE)
    );
    assert_eq!(
        guest_state(&mut m, h, GPA >> 12),
        (GuestState::Relinquished, u64::MAX)
    );
    // The next access to the IPA faults; the host gives a fresh page.
    let exit = run(&mut m, h);
    assert_eq!(m.arch.hvc_result(0, 1).unwrap()[..2], [0, 1]);
    assert!(matches!(
        exit,
        Exit::Stage2Fault {
            gpa: GPA,
            write: false,
            ..
        }
    ));
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x43, GPA >> 12, 1]));
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    assert_eq!(m.arch.loaded(0, 2), Some(0));
}

#[test]
fn memcache_empty_exits_and_retries() {
    let mut m = Machine::new();
    let h = vm(&mut m, 0);
    assert_eq!(
        err(m.call(HostCall::DonateGuest, &[h, RAM + 0x200, 0x200, 512])),
        errno::ENOMEM
    );
    ok(m.call(HostCall::MemcacheTopup, &[h, MC, 1]));
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x200, 0x200, 512]));
    // Relinquishing one page of the 2 MiB block needs a table: the memcache
    // is empty, so the vCPU exits and the HVC is retried after a top-up.
    m.arch.script(
        handle(h),
        0,
        vec![hvc(GuestCall::MemRelinquish.id(), [0x201 << 12, 1, 0])],
    );
    assert_eq!(run(&mut m, h), Exit::MemcacheEmpty { pages: 2 });
    assert_eq!(guest_state(&mut m, h, 0x201).0, GuestState::Owned);
    ok(m.call(HostCall::MemcacheTopup, &[h, MC + 1, 2]));
    assert_eq!(
        run(&mut m, h),
        Exit::Relinquished {
            gpa: 0x201 << 12,
            size: 4096
        }
    );
    assert_eq!(guest_state(&mut m, h, 0x201).0, GuestState::Relinquished);
    assert_eq!(guest_state(&mut m, h, 0x202).0, GuestState::Owned);
}

#[test]
fn guest_call_errors() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    m.arch.script(
        handle(h),
        0,
        vec![
            hvc(GuestCall::HypMeminfo.id(), [1, 0, 0]),
            hvc(GuestCall::MemShare.id(), [GPA + 8, 1, 0]),
            hvc(GuestCall::MemShare.id(), [GPA, 1, 7]),
            hvc(GuestCall::MemUnshare.id(), [GPA, 1, 0]),
            hvc(GuestCall::MemRelinquish.id(), [1 << 45, 1, 0]),
            hvc(GuestCall::MmioGuard.id(), [0x0900_0000, 0, 0]),
            hvc(0xC600_0005, [0; 3]),
            hvc(0x8000_0000, [0; 3]),
            hvc(0x8400_0003, [1, 0x1000, 0]),
            GuestOp::Undefined { esr: 0x18 << 26 },
        ],
    );
    let exit = run(&mut m, h);
    let inval = SMCCC_INVALID_PARAMETER as u64;
    assert_eq!(
        m.arch.hvc_result(0, 0).unwrap()[0],
        inval,
        "MEMINFO with arguments"
    );
    assert_eq!(m.arch.hvc_result(0, 1).unwrap()[0], inval, "unaligned IPA");
    assert_eq!(
        m.arch.hvc_result(0, 2).unwrap()[0],
        inval,
        "reserved register"
    );
    assert_eq!(
        m.arch.hvc_result(0, 3).unwrap()[0],
        inval,
        "unshare of a private page"
    );
    assert_eq!(
        m.arch.hvc_result(0, 4).unwrap()[0],
        inval,
        "outside the IPA space"
    );
    assert_eq!(m.arch.hvc_result(0, 5).unwrap()[0], 0, "MMIO_GUARD");
    assert_eq!(
        m.arch.hvc_result(0, 6).unwrap()[0],
        SMCCC_NOT_SUPPORTED as u64
    );
    assert_eq!(m.arch.hvc_result(0, 7).unwrap()[0], 0x1_0001, "SMCCC 1.1");
    // CPU_ON of a vCPU the VM does not have: refused at EL2, no exit.
    assert_eq!(
        m.arch.hvc_result(0, 8).unwrap()[0],
        (-2i64) as u64,
        "INVALID_PARAMETERS"
    );
    // An undefined trap stops the vCPU for good; the host learns the
    // exception class only.
    assert_eq!(exit, Exit::Stopped { ec: 0x18 });
    assert_eq!(err(m.call(HostCall::VcpuRun, &[h, 0])), errno::EINVAL);
    assert_eq!(m.hyp.vcpu_waiting(handle(h), 0), Ok(Waiting::Stopped));
    m.check();
}

#[test]
fn vm_and_vcpu_arguments_are_checked() {
    let mut m = Machine::new();
    // Bad VM creations change nothing.
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[40, PGD, META, 0])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[40, PGD, META, 9])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[52, PGD, META, 1])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[40, PGD + 1, META, 1])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[40, PGD, PGD + 1, 1])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VmCreate, &[u64::MAX, PGD, META, 1])),
        errno::EINVAL
    );
    assert_eq!(page_state(&mut m, PGD).0, page_state::OWNED);
    assert_eq!(page_state(&mut m, META).0, page_state::OWNED);
    let h = ok(m.call(HostCall::VmCreate, &[40, PGD, META, 2]))[0];
    assert_eq!(h, 0x1000);
    assert_eq!(
        page_state(&mut m, META),
        (page_state::NOPAGE, page_state::OWNED)
    );
    // vCPUs.
    assert_eq!(
        ok(m.call(HostCall::VcpuRun, &[h, 0])),
        Exit::PoweredOff.to_regs(),
        "not started: off"
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_COMPLETE_ACCESS, 0, 0])),
        errno::EINVAL,
        "completing a run of a vCPU that is off"
    );
    assert_eq!(
        err(m.call(HostCall::VcpuInit, &[h, 2, 0, 0])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VcpuInit, &[h + 1, 0, 0, 0])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VcpuInit, &[1 << 20, 0, 0, 0])),
        errno::EINVAL
    );
    ok(m.call(HostCall::VcpuInit, &[h, 1, 0, 0]));
    assert_eq!(
        err(m.call(HostCall::VcpuInit, &[h, 1, 0, 0])),
        errno::EINVAL,
        "twice"
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 1, 2, 0, 0])),
        errno::EINVAL,
        "unknown flag"
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 1, 0, 5, 0])),
        errno::EINVAL,
        "value without flag"
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, usize::MAX as u64, 0])),
        errno::EINVAL
    );
    // Guest memory calls.
    let cases: &[(HostCall, &[u64], i64)] = &[
        (
            HostCall::DonateGuest,
            &[h, RAM + 0x41, GPA >> 12, 2],
            errno::EINVAL,
        ),
        (
            HostCall::DonateGuest,
            &[h, RAM + 0x41, 1 << 40, 1],
            errno::EINVAL,
        ),
        (
            HostCall::DonateGuest,
            &[h, RAM + 0x201, 0x200, 512],
            errno::EINVAL,
        ),
        (
            HostCall::DonateGuest,
            &[h, u64::MAX, GPA >> 12, 1],
            errno::EINVAL,
        ),
        (
            HostCall::DonateGuest,
            &[0x2000, RAM + 0x41, GPA >> 12, 1],
            errno::EINVAL,
        ),
        (
            HostCall::ShareGuest,
            &[h, RAM + 0x41, u64::MAX, 1],
            errno::EINVAL,
        ),
        (HostCall::UnshareGuest, &[h, GPA >> 12, 1], errno::ENOENT),
        (HostCall::Reclaim, &[h, GPA >> 12, 1], errno::EINVAL),
        (HostCall::MemcacheTopup, &[h, MC, 0], errno::EINVAL),
        (HostCall::MemcacheTopup, &[h, MC, 513], errno::EINVAL),
        (HostCall::ForceReclaim, &[0x1000], errno::EFAULT),
        (
            HostCall::ConvertComplete,
            &[h, GPA >> 12, 1, 2],
            errno::EINVAL,
        ),
        (HostCall::TeardownFinish, &[h], errno::EINVAL),
        (HostCall::GuestPageState, &[h, 1 << 40], errno::EINVAL),
        (HostCall::GuestPageState, &[0x1001, 0], errno::EINVAL),
    ];
    for (call, args, want) in cases {
        assert_eq!(err(m.call(*call, args)), *want, "{call:?} {args:x?}");
        m.check();
    }
}

#[test]
fn full_lifecycle_with_block_and_zeroing() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x200, 0x200, 512]));
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    ok(m.call(HostCall::ShareGuest, &[h, RAM + 0x41, (GPA >> 12) + 1, 1]));
    m.host_fill_page(RAM + 0x41, b'H').unwrap();
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Fill {
                ipa: 0x200 << 12,
                byte: 1,
            },
            GuestOp::Fill {
                ipa: 0x3ff << 12,
                byte: 2,
            },
            GuestOp::Fill { ipa: GPA, byte: 3 },
            GuestOp::Load { ipa: GPA + 0x1000 },
            hvc(GuestCall::MemShare.id(), [0x3ff << 12, 1, 0]),
        ],
    );
    assert!(matches!(run(&mut m, h), Exit::MemoryFault { .. }));
    assert_eq!(
        m.arch.loaded(0, 3),
        Some(u64::from_ne_bytes([b'H'; 8])),
        "the guest reads the host's page"
    );
    ok(m.call(HostCall::ConvertComplete, &[h, 0x3ff, 1, 1]));
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    // Teardown: the vCPU cannot run; pages come back, private ones zeroed.
    assert_eq!(
        err(m.call(HostCall::Reclaim, &[h, GPA >> 12, 1])),
        errno::EINVAL
    );
    ok(m.call(HostCall::TeardownStart, &[h]));
    assert_eq!(err(m.call(HostCall::TeardownStart, &[h])), errno::EINVAL);
    assert_eq!(err(m.call(HostCall::VcpuRun, &[h, 0])), errno::EINVAL);
    assert_eq!(err(m.call(HostCall::TeardownFinish, &[h])), errno::EBUSY);
    ok(m.call(HostCall::Reclaim, &[h, 0x200, 512]));
    ok(m.call(HostCall::Reclaim, &[h, GPA >> 12, 1]));
    ok(m.call(HostCall::Reclaim, &[h, (GPA >> 12) + 1, 1]));
    m.check();
    ok(m.call(HostCall::TeardownFinish, &[h]));
    m.check();
    let page = |m: &Machine, p: u64| m.host_read_page(p).unwrap()[0];
    assert_eq!(page(&m, RAM + 0x200), 0);
    assert_eq!(page(&m, RAM + 0x3ff), 2, "shared with the host: kept");
    assert_eq!(page(&m, RAM + 0x40), 0);
    assert_eq!(page(&m, RAM + 0x41), b'H', "the host's own page");
    for p in [PGD, PGD + 1, META, MC, MC + 15] {
        assert_eq!(
            page_state(&mut m, p),
            (page_state::OWNED, page_state::NOPAGE)
        );
        assert_eq!(page(&m, p), 0);
    }
    assert_eq!(err(m.call(HostCall::VcpuRun, &[h, 0])), errno::EINVAL);
    // The handle is reused by the next VM.
    assert_eq!(ok(m.call(HostCall::VmCreate, &[40, PGD, META, 1]))[0], h);
}

#[test]
fn force_reclaim_and_poison() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Fill { ipa: GPA, byte: 9 },
            GuestOp::Load { ipa: GPA },
        ],
    );
    assert_eq!(
        err(m.call(HostCall::ForceReclaim, &[(RAM + 0x41) << 12])),
        errno::EAGAIN
    );
    ok(m.call(HostCall::ForceReclaim, &[(RAM + 0x40) << 12 | 0x123]));
    assert_eq!(guest_state(&mut m, h, GPA >> 12).0, GuestState::Poisoned);
    assert!(
        m.host_read_page(RAM + 0x40)
            .unwrap()
            .iter()
            .all(|b| *b == 0)
    );
    // The guest's next access hits the poisoned IPA: an error for the host.
    assert_eq!(err(m.call(HostCall::VcpuRun, &[h, 0])), errno::EHWPOISON);
    assert_eq!(
        err(m.call(HostCall::DonateGuest, &[h, RAM + 0x41, GPA >> 12, 1])),
        errno::EPERM
    );
}

#[test]
fn a_share_the_host_cannot_back_fails_with_invalid_parameter() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    m.arch.script(
        handle(h),
        0,
        vec![hvc(GuestCall::MemShare.id(), [GPA, 1, 0]), GuestOp::Wfi],
    );
    let exit = run(&mut m, h);
    assert!(matches!(exit, Exit::Stage2Fault { hvc: true, .. }));
    // Values do not complete a hypercall's fault; Fail does, once.
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_COMPLETE_ACCESS, 1, 0])),
        errno::EINVAL
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_FAIL_ACCESS, 1, 0])),
        errno::EINVAL
    );
    let r = m.call(HostCall::VcpuRun, &[h, 0, RUN_FAIL_ACCESS]);
    assert_eq!(r.exit(), Some(Exit::Wfi));
    assert_eq!(
        m.arch.hvc_result(0, 0).unwrap()[..2],
        [SMCCC_INVALID_PARAMETER as u64, 0]
    );
    // A data abort is not a hypercall: Fail is refused for it.
    m.arch
        .script(handle(h), 0, vec![GuestOp::Load { ipa: GPA }]);
    assert!(matches!(
        run(&mut m, h),
        Exit::Stage2Fault { hvc: false, .. }
    ));
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_FAIL_ACCESS])),
        errno::EINVAL
    );
}

/// A VM with `vcpus` vCPUs, vCPU 0 started at entry 0.
fn vm_n(m: &mut Machine, vcpus: u64) -> u64 {
    let h = ok(m.call(HostCall::VmCreate, &[40, PGD, META, vcpus]))[0];
    ok(m.call(HostCall::VcpuInit, &[h, 0, 0, 0]));
    ok(m.call(HostCall::MemcacheTopup, &[h, MC, 16]));
    h
}

fn run_vcpu(m: &mut Machine, h: u64, vcpu: u64, complete: Option<u64>) -> Exit {
    let args = match complete {
        Some(v) => vec![h, vcpu, RUN_COMPLETE_ACCESS, v, 0],
        None => vec![h, vcpu],
    };
    let r = m.call(HostCall::VcpuRun, &args);
    m.check();
    r.exit().unwrap_or_else(|| panic!("run failed: {r:?}"))
}

const NEG: fn(i64) -> u64 = |v| v as u64;

#[test]
fn psci_discovery_is_answered_at_el2() {
    let mut m = Machine::new();
    let h = vm_n(&mut m, 2);
    m.arch.script(
        handle(h),
        0,
        vec![
            hvc(0x8400_0000, [0; 3]),              // PSCI_VERSION
            hvc(0x8400_000a, [0x8000_0000, 0, 0]), // FEATURES(SMCCC_VERSION)
            hvc(0x8400_000a, [0xc400_0003, 0, 0]), // FEATURES(CPU_ON64)
            hvc(0x8400_000a, [0x8400_0005, 0, 0]), // FEATURES(MIGRATE): no
            hvc(0x8400_0006, [0; 3]),              // MIGRATE_INFO_TYPE
            hvc(0xffff_ffff_8000_0000, [0; 3]),    // upper half ignored
            GuestOp::Smc {
                id: 0x8000_0000,
                args: [0; 3],
            }, // the SMC conduit
            hvc(0x8000_0001, [0x8000_8000, 0, 0]), // WORKAROUND_1: not claimed
            hvc(0x8000_0001, [0x8000_0001, 0, 0]), // ARCH_FEATURES itself
            hvc(0x8400_0005, [0; 3]),              // MIGRATE: not supported
            hvc(0xc400_0004, [1, 0, 0]),           // AFFINITY_INFO(1): off
            hvc(0xc400_0004, [1, 1, 0]),           // level 1: refused
            hvc(0xc400_0004, [9, 0, 0]),           // no such vCPU
            hvc(0xc400_0004, [0, 0, 0]),           // itself: on
            hvc(0xc400_0003, [0, 0x1000, 0]),      // CPU_ON itself: already on
            hvc(0xc400_0003, [2, 0x1000, 0]),      // no vCPU 2
            hvc(0xc400_0003, [1 << 8, 0x1000, 0]), // Aff1 set: no such vCPU
            hvc(0xc400_0012, [1, 0, 0]),           // SYSTEM_RESET2 type 1: invalid
            hvc(0xc400_0001, [0, 0, 0]),           // CPU_SUSPEND: a WFI
        ],
    );
    let exit = run(&mut m, h);
    assert_eq!(exit, Exit::Wfi, "CPU_SUSPEND waits like WFI");
    let x0 = |m: &Machine, step| m.arch.hvc_result(0, step).unwrap()[0];
    let want = [
        0x1_0001,
        0,
        0,
        NEG(-1),
        2,
        0x1_0001,
        0x1_0001,
        NEG(-1),
        0,
        NEG(-1),
        1,
        NEG(-2),
        NEG(-2),
        0,
        NEG(-4),
        NEG(-2),
        NEG(-2),
        NEG(-2),
    ];
    for (step, w) in want.into_iter().enumerate() {
        assert_eq!(x0(&m, step), w, "step {step}");
    }
    // The suspend returns SUCCESS when the vCPU runs again; the end of
    // the script powers off.
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    assert_eq!(x0(&m, 18), 0);
}

#[test]
fn cpu_on_is_checked_at_el2_and_decided_by_the_host() {
    let mut m = Machine::new();
    let h = vm_n(&mut m, 2);
    let cpu_on = hvc(0xc400_0003, [1, 0x8000_1000, 42]);
    m.arch.script(
        handle(h),
        0,
        vec![
            cpu_on,
            cpu_on,
            cpu_on,
            hvc(0x8400_0003, [0x1_0000_0001, 0x8000_2000, 43]), // SMC32: truncated
            hvc(0xc400_0004, [1, 0, 0]),
            cpu_on,
        ],
    );
    // Off until the guest starts it.
    assert_eq!(run_vcpu(&mut m, h, 1, None), Exit::PoweredOff);
    // 1. The host refuses with a PSCI error: the guest gets it.
    let exit = run(&mut m, h);
    assert_eq!(
        exit,
        Exit::Hypercall {
            id: 0xc400_0003,
            args: [1, 0x8000_1000, 42]
        }
    );
    assert_eq!(
        m.hyp.vcpu_power(handle(h), 1),
        Ok(el2::hyp::vm::Power::OnPending)
    );
    assert_eq!(run_vcpu(&mut m, h, 1, None), Exit::PoweredOff, "pending");
    let exit = run_vcpu(&mut m, h, 0, Some(NEG(-9)));
    assert_eq!(m.arch.hvc_result(0, 0).unwrap()[0], NEG(-9));
    // 2. (The next CPU_ON is pending again.) The host answers nonsense:
    // INTERNAL_FAILURE.
    assert!(matches!(exit, Exit::Hypercall { .. }));
    let exit = run_vcpu(&mut m, h, 0, Some(5));
    assert_eq!(m.arch.hvc_result(0, 1).unwrap()[0], NEG(-6));
    // 3. The host runs the caller without answering: NOT_SUPPORTED.
    assert!(matches!(exit, Exit::Hypercall { .. }));
    let exit = run_vcpu(&mut m, h, 0, None);
    assert_eq!(m.arch.hvc_result(0, 2).unwrap()[0], NEG(-1));
    // 4. A 32-bit CPU_ON: arguments truncated; the host agrees.
    assert_eq!(
        exit,
        Exit::Hypercall {
            id: 0x8400_0003,
            args: [1, 0x8000_2000, 43]
        }
    );
    m.arch.script(
        handle(h),
        1,
        vec![hvc(0x8400_0000, [0; 3]), hvc(0x8400_0002, [0; 3])],
    );
    let exit = run_vcpu(&mut m, h, 0, Some(0));
    assert_eq!(m.arch.hvc_result(0, 3).unwrap()[0], 0, "CPU_ON succeeded");
    assert_eq!(m.arch.hvc_result(0, 4).unwrap()[0], 0, "AFFINITY_INFO: on");
    assert_eq!(m.arch.hvc_result(0, 5).unwrap()[0], NEG(-4), "ALREADY_ON");
    assert_eq!(
        exit,
        Exit::SystemEvent { kind: 0 },
        "end of vCPU 0's script"
    );
    // The target starts where the guest said, with its context id; it
    // turns itself off with CPU_ON's counterpart.
    assert_eq!(run_vcpu(&mut m, h, 1, None), Exit::PoweredOff, "CPU_OFF");
    assert_eq!(m.arch.hvc_result(1, 0).unwrap()[0], 0x1_0001);
    assert_eq!(m.arch.entries.get(&(h as u16, 1)), Some(&(0x8000_2000, 43)));
    assert_eq!(m.hyp.vcpu_power(handle(h), 1), Ok(el2::hyp::vm::Power::Off));
    assert_eq!(run_vcpu(&mut m, h, 1, None), Exit::PoweredOff, "stays off");
    // The host's VcpuInit can no longer steer any vCPU.
    assert_eq!(
        err(m.call(HostCall::VcpuInit, &[h, 1, 0x6666, 0])),
        errno::EPERM,
        "the VM has run: only the guest starts vCPUs"
    );
    m.check();
}

#[test]
fn host_stats_count_the_hosts_memory() {
    let mut m = Machine::new();
    let before = ok(m.call(HostCall::HostStats, &[]));
    assert_eq!(err(m.call(HostCall::HostStats, &[1])), errno::EINVAL);
    let h = vm(&mut m, 16);
    let during = ok(m.call(HostCall::HostStats, &[]));
    // PGD (2), metadata (4) and memcache (16) pages left the host.
    assert_eq!(during[0], before[0] - 2 - VM_META_PAGES - 16);
    assert!(during[1] > before[1], "the donations split host blocks");
    ok(m.call(HostCall::TeardownStart, &[h]));
    ok(m.call(HostCall::TeardownFinish, &[h]));
    let after = ok(m.call(HostCall::HostStats, &[]));
    assert_eq!(after, before, "everything back, blocks merged again");
}

#[test]
fn the_virtual_gic_is_emulated_at_el2() {
    let mut m = Machine::new();
    let h = vm_n(&mut m, 2);
    let gicd = host_interface::platform::GIC_DIST;
    let gicr1 = host_interface::platform::GIC_REDIST + 0x2_0000;
    m.arch.script(
        handle(h),
        0,
        vec![
            // Distributor and redistributor accesses never reach the host.
            GuestOp::Load { ipa: gicd + 0x4 },
            GuestOp::Store {
                ipa: gicd,
                value: 2,
            },
            GuestOp::Store32 {
                ipa: gicr1 + 0x1_0100,
                value: 0xffff,
            },
            // SGI 3 to vCPU 1.
            GuestOp::Sgi {
                value: (3 << 24) | 0b10,
            },
            GuestOp::Wfi,
        ],
    );
    assert_eq!(run_vcpu(&mut m, h, 0, None), Exit::Wfi);
    assert_eq!(m.arch.loaded(0, 0), Some(2 | (9 << 19)), "GICD_TYPER");
    // vCPU 1 (started with CPU_ON's help) is entered with SGI 3 pending.
    let v1 = ownership::GuestHandle(h as u16);
    m.arch.script(v1, 1, vec![GuestOp::Wfi]);
    m.arch
        .script(handle(h), 0, vec![hvc(0xc400_0003, [1, 0x8000_0000, 0])]);
    assert!(matches!(
        run_vcpu(&mut m, h, 0, None),
        Exit::Hypercall { .. }
    ));
    run_vcpu(&mut m, h, 0, Some(0));
    // Its WFI does not wait: an interrupt is pending; the script's end
    // powers it off... through SYSTEM_OFF.
    assert_eq!(run_vcpu(&mut m, h, 1, None), Exit::SystemEvent { kind: 0 });
    let lrs = m.arch.lrs[&(h as u16, 1)];
    assert_eq!(lrs.used, 1);
    assert_eq!(lrs.lr[0] & 0xffff_ffff, 3, "SGI 3 in a list register");
    assert_eq!(lrs.lr[0] >> 62, 1, "pending");
    m.check();
}

#[test]
fn a_timer_interrupt_that_ends_a_run_is_taken_back_to_the_guest() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    let gicr = host_interface::platform::GIC_REDIST;
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Store {
                ipa: host_interface::platform::GIC_DIST,
                value: 2,
            },
            GuestOp::Store32 {
                ipa: gicr + 0x1_0100,
                value: 1 << 27,
            },
            GuestOp::Wfi,
        ],
    );
    // The line is low: the WFI waits (exits).
    assert_eq!(run(&mut m, h), Exit::Wfi);
    // The timer fires: the next entry has PPI 27 as a hardware interrupt,
    // and the WFI... (script end) powers off without another exit.
    m.arch.timer = true;
    m.arch.script(handle(h), 0, vec![GuestOp::Wfi]);
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    let lrs = m.arch.lrs[&(h as u16, 0)];
    assert_eq!(lrs.lr[0] & 0xffff_ffff, 27);
    assert_eq!(lrs.lr[0] >> 61 & 1, 1, "HW");
    assert_eq!(lrs.timer_hw_active, 1);
}

#[test]
fn the_host_drives_spi_lines_of_its_devices() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    assert_eq!(
        err(m.call(HostCall::IrqLine, &[h, 31, 1])),
        errno::EINVAL,
        "a PPI"
    );
    assert_eq!(
        err(m.call(HostCall::IrqLine, &[h, 96, 1])),
        errno::EINVAL,
        "no such SPI"
    );
    assert_eq!(
        err(m.call(HostCall::IrqLine, &[h, 33, 2])),
        errno::EINVAL,
        "level"
    );
    assert_eq!(
        err(m.call(HostCall::IrqLine, &[h + 1, 33, 1])),
        errno::EINVAL,
        "VM"
    );
    ok(m.call(HostCall::IrqLine, &[h, 33, 1]));
    let gicd = host_interface::platform::GIC_DIST;
    m.arch.script(
        handle(h),
        0,
        vec![
            GuestOp::Store32 {
                ipa: gicd,
                value: 2,
            },
            GuestOp::Store32 {
                ipa: gicd + 0x104,
                value: 1 << 1,
            },
            GuestOp::Wfi,
        ],
    );
    // The line is high and the SPI enabled: the WFI does not wait.
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    assert_eq!(m.arch.lrs[&(h as u16, 0)].lr[0] & 0xffff_ffff, 33);
}

#[test]
fn once_the_guest_guards_mmio_only_guarded_granules_are_emulatable() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    let uart = host_interface::platform::UART;
    let other = 0x0c00_0000;
    m.arch.script(
        handle(h),
        0,
        vec![
            // Unguarded: an emulatable access, before the guard is on.
            GuestOp::Store {
                ipa: other,
                value: 1,
            },
            hvc(GuestCall::MmioGuard.id(), [GPA, 0, 0]), // its RAM: refused
            hvc(GuestCall::MmioGuard.id(), [uart + 4, 0, 0]), // unaligned
            hvc(GuestCall::MmioGuard.id(), [uart, 1, 0]), // reserved
            hvc(GuestCall::MmioGuard.id(), [uart, 0, 0]),
            GuestOp::Store {
                ipa: uart,
                value: b'x' as u64,
            },
            GuestOp::Store {
                ipa: other,
                value: 2,
            },
        ],
    );
    assert!(matches!(
        run(&mut m, h),
        Exit::Stage2Fault {
            isv: true,
            data: 1,
            ..
        }
    ));
    let exit = run_with(&mut m, h, 0, 0);
    let inval = SMCCC_INVALID_PARAMETER as u64;
    for step in [1, 2, 3] {
        assert_eq!(m.arch.hvc_result(0, step).unwrap()[0], inval, "step {step}");
    }
    assert_eq!(m.arch.hvc_result(0, 4).unwrap()[0], 0, "guarded");
    assert_eq!(GUEST_FEATURES & (1 << 7), 1 << 7, "advertised");
    assert!(
        matches!(exit, Exit::Stage2Fault { gpa, isv: true, data: 0x78, .. } if gpa == uart),
        "{exit:x?}"
    );
    // Not guarded: the host gets the address only, and cannot emulate it.
    let exit = run_with(&mut m, h, 0, 0);
    assert_eq!(
        exit,
        Exit::Stage2Fault {
            gpa: other,
            write: true,
            exec: false,
            isv: false,
            size: 0,
            reg: 0,
            data: 0,
            hvc: false
        }
    );
    assert_eq!(
        err(m.call(HostCall::VcpuRun, &[h, 0, RUN_COMPLETE_ACCESS, 0, 0])),
        errno::EINVAL
    );
}

#[test]
fn the_invariant_checker_is_a_host_call() {
    let mut m = Machine::new();
    let h = vm(&mut m, 16);
    ok(m.call(HostCall::DonateGuest, &[h, RAM + 0x40, GPA >> 12, 1]));
    assert_eq!(ok(m.call(HostCall::CheckInvariants, &[]))[0], 0);
    assert_eq!(
        err(m.call(HostCall::CheckInvariants, &[1])),
        errno::EINVAL,
        "no arguments"
    );
}
