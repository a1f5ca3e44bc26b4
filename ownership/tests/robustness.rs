//! Whatever the host or a guest passes, no call panics, and a refused call
//! leaves every invariant intact.

mod common;
use common::*;
use ownership::*;
use proptest::prelude::*;
use stage2::PhysAddr;

fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(u64::MAX),
        Just(0u64),
        (0..RAM_PAGES + 8).prop_map(|o| RAM_PFN + o),
        (0..1024u64).prop_map(|o| 0x8_0000 + o),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_arguments_never_panic(
        calls in prop::collection::vec((0..16u8, any_u64(), any_u64(), any_u64(), any::<u16>()), 1..24)
    ) {
        let mut env = Env::new();
        let good = env.guest(RAM_PFN + 0x100, RAM_PFN + 0x110, 8);
        for (which, a, b, c, handle) in calls {
            let h = if handle % 2 == 0 { good } else { GuestHandle(handle) };
            let ext = if c % 2 == 0 { Extent::Page } else { Extent::Block };
            let conv = Conversion {
                kind: if c % 3 == 0 { ConversionKind::Share } else { ConversionKind::Unshare },
                gfn: Gfn(b),
                pages: c % 600,
            };
            let t = &mut env.tlb;
            let o = &env.o;
            let _ = match which {
                0 => o.host_share_hyp(Pfn(a)),
                1 => o.host_unshare_hyp(Pfn(a)),
                2 => o.hyp_pin_shared(Pfn(a), c),
                3 => o.host_donate_hyp(t, Pfn(a), c % 1024),
                4 => o.hyp_donate_host(t, Pfn(a), c),
                5 => o.host_share_guest(t, h, Pfn(a), Gfn(b), ext),
                6 => o.host_unshare_guest(t, h, Gfn(b), ext),
                7 => o.host_donate_guest(t, h, Pfn(a), Gfn(b), ext),
                8 => o.guest_share_host(t, h, Gfn(b), c),
                9 => o.guest_unshare_host(t, h, Gfn(b), c),
                10 => o.guest_relinquish(t, h, Gfn(b), c),
                11 => o.guest_request_conversion(h, conv),
                12 => o.host_complete_conversion(t, h, conv),
                13 => o.host_force_reclaim(t, PhysAddr(a)),
                14 => o.start_teardown(h).and_then(|_| o.host_reclaim(t, h, Gfn(b), ext)),
                _ => o.topup_memcache(t, h, Pfn(a), c),
            };
            let _ = o.guest_state(h, Gfn(b));
            let _ = o.page(Pfn(a));
            env.check();
        }
    }
}
