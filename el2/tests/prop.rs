//! Property test: random host calls and guest actions across two VMs on
//! the simulated machine. After every step the ownership invariant checker
//! runs (inside `Machine::call`), no call panics, and a host call that
//! fails leaves every page and guest state of the window as it was.

use el2::sim::{GuestOp, Machine};
use host_interface::abi::*;
use proptest::prelude::*;

const RAM: u64 = Machine::RAM_BASE >> 12;
const PAGES: [u64; 6] = [0x40, 0x41, 0x42, 0x43, 0x200, 0x201];
const GFNS: [u64; 5] = [0x80000, 0x80001, 0x80002, 0x200, 0x201];

#[derive(Clone, Debug)]
enum Step {
    Host(HostCall, [u64; 5]),
    Run {
        vm: usize,
        ops: Vec<GuestOp>,
        complete: Option<u64>,
    },
}

fn guest_op() -> impl Strategy<Value = GuestOp> {
    let gfn = prop::sample::select(GFNS.to_vec());
    prop_oneof![
        (gfn.clone(), 1..3u64).prop_map(|(g, n)| GuestOp::Hvc {
            id: GuestCall::MemShare.id(),
            args: [g << 12, n, 0]
        }),
        (gfn.clone(), 1..3u64).prop_map(|(g, n)| GuestOp::Hvc {
            id: GuestCall::MemUnshare.id(),
            args: [g << 12, n, 0]
        }),
        gfn.clone().prop_map(|g| GuestOp::Hvc {
            id: GuestCall::MemRelinquish.id(),
            args: [g << 12, 1, 0]
        }),
        (gfn.clone(), any::<u8>()).prop_map(|(g, b)| GuestOp::Fill {
            ipa: g << 12,
            byte: b
        }),
        gfn.clone().prop_map(|g| GuestOp::Load { ipa: g << 12 }),
        Just(GuestOp::Hvc {
            id: 0x8400_0003,
            args: [1, 0, 0]
        }),
        Just(GuestOp::Wfi),
        any::<u64>().prop_map(|id| GuestOp::Hvc {
            id,
            args: [1, 2, 3]
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let vm = 0..2usize;
    let pfn = prop::sample::select(PAGES.to_vec()).prop_map(|p| RAM + p);
    let gfn = prop::sample::select(GFNS.to_vec());
    let pages = prop_oneof![4 => Just(1u64), 1 => Just(512u64), 1 => any::<u64>()];
    let h = vm.clone().prop_map(|v| 0x1000 + v as u64);
    prop_oneof![
        1 => (h.clone(), pfn.clone(), gfn.clone(), pages.clone()).prop_map(|(h, p, g, n)| Step::Host(HostCall::DonateGuest, [h, p, g, n, 0])),
        1 => (h.clone(), pfn.clone(), gfn.clone(), pages.clone()).prop_map(|(h, p, g, n)| Step::Host(HostCall::ShareGuest, [h, p, g, n, 0])),
        1 => (h.clone(), gfn.clone(), pages.clone()).prop_map(|(h, g, n)| Step::Host(HostCall::UnshareGuest, [h, g, n, 0, 0])),
        1 => (h.clone(), gfn.clone(), 1..3u64, 0..2u64).prop_map(|(h, g, n, s)| Step::Host(HostCall::ConvertComplete, [h, g, n, s, 0])),
        1 => h.clone().prop_map(|h| Step::Host(HostCall::ConvertRefuse, [h, 0, 0, 0, 0])),
        1 => (h.clone(), gfn.clone(), pages.clone()).prop_map(|(h, g, n)| Step::Host(HostCall::Reclaim, [h, g, n, 0, 0])),
        1 => pfn.clone().prop_map(|p| Step::Host(HostCall::ForceReclaim, [p << 12, 0, 0, 0, 0])),
        1 => pfn.clone().prop_map(|p| Step::Host(HostCall::ShareHyp, [p, 0, 0, 0, 0])),
        1 => pfn.clone().prop_map(|p| Step::Host(HostCall::UnshareHyp, [p, 0, 0, 0, 0])),
        1 => h.clone().prop_map(|h| Step::Host(HostCall::TeardownStart, [h, 0, 0, 0, 0])),
        1 => h.clone().prop_map(|h| Step::Host(HostCall::TeardownFinish, [h, 0, 0, 0, 0])),
        1 => (0..20u64, any::<[u64; 5]>()).prop_map(|(n, a)| Step::Host(HostCall::ALL[n as usize], a)),
        3 => (vm, prop::collection::vec(guest_op(), 0..6), prop::option::of(any::<u64>()))
            .prop_map(|(vm, ops, complete)| Step::Run { vm, ops, complete }),
    ]
}

fn snapshot(m: &mut Machine) -> Vec<Reply2> {
    let mut v = Vec::new();
    for p in PAGES {
        v.push(Reply2(m.call(HostCall::PageState, &[RAM + p]).vals));
    }
    for h in [0x1000u64, 0x1001] {
        for g in GFNS {
            v.push(Reply2(m.call(HostCall::GuestPageState, &[h, g]).vals));
        }
    }
    v
}

#[derive(PartialEq, Debug)]
struct Reply2([u64; 5]);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_host_and_guest_actions(steps in prop::collection::vec(step(), 1..40)) {
        let mut m = Machine::new();
        for (i, (pgd, meta, mc)) in [(0x100u64, 0x108u64, 0x110u64), (0x104, 0x10c, 0x130)].into_iter().enumerate() {
            let r = m.call(HostCall::VmCreate, &[40, RAM + pgd, RAM + meta, 1]);
            prop_assert!(r.is_ok());
            prop_assert_eq!(r.vals[0], 0x1000 + i as u64);
            prop_assert!(m.call(HostCall::VcpuInit, &[0x1000 + i as u64, 0, 0, 0]).is_ok());
            prop_assert!(m.call(HostCall::MemcacheTopup, &[0x1000 + i as u64, RAM + mc, 16]).is_ok());
        }
        for s in steps {
            match s {
                Step::Host(call, args) => {
                    let before = snapshot(&mut m);
                    let r = m.call(call, &args);
                    if r.status != SMCCC_SUCCESS || r.ret != 0 {
                        prop_assert_eq!(snapshot(&mut m), before, "failed {:?} {:x?} changed state", call, args);
                    }
                }
                Step::Run { vm, ops, complete } => {
                    let h = 0x1000 + vm as u64;
                    // A new script runs from the vCPU's current PC.
                    m.arch.script(ownership::GuestHandle(h as u16), 0, ops);
                    let args = match complete { Some(v) => vec![h, 0, RUN_COMPLETE_ACCESS, v, 0], None => vec![h, 0] };
                    let _ = m.call(HostCall::VcpuRun, &args);
                }
            }
        }
    }
}
