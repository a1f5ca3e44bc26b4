//! Lifecycles, huge pages, out-of-memory and bad input, with the invariant
//! checker after every step.

mod common;
use common::*;
use ownership::*;
use stage2::testing::ArenaPool;
use stage2::{BlockPolicy, Ipa, Leaf, Level, PhysAddr};

const PGD: u64 = RAM_PFN + 0x100;
const MC: u64 = RAM_PFN + 0x110;
/// A 2 MiB-aligned host block.
const BLOCK: u64 = RAM_PFN + 0x400;
const GFN: u64 = 0x8_0000;

fn host_leaves(env: &Env) -> Vec<Leaf> {
    env.o.with_host(|h| {
        let mut v = Vec::new();
        h.stage2()
            .walk(h.pool(), Ipa(0), 1 << 40, |l| v.push(*l))
            .unwrap();
        v
    })
}

fn guest_leaf(env: &Env, h: GuestHandle, gfn: u64) -> Leaf {
    env.o.guest_leaf(h, Gfn(gfn)).unwrap()
}

#[test]
fn host_stage2_starts_with_largest_blocks() {
    let env = Env::new();
    let stats = env.o.with_host(|h| h.stage2().stats(h.pool()));
    // 16 MiB of RAM: 7 x 2 MiB blocks plus the carve-out's annotation;
    // 32 MiB of MMIO: 16 x 2 MiB blocks.
    assert_eq!(stats.leaves, [0, 0, 7 + 16, 0]);
    assert_eq!(stats.annotations, 1);
    assert_eq!(env.o.page(Pfn(CARVE_PFN)).unwrap(), PageEntry::HYP_OWNED);
    assert_eq!(env.o.page(Pfn(RAM_PFN)).unwrap(), PageEntry::HOST_OWNED);
    assert!(env.o.page(Pfn(RAM_PFN - 1)).is_none());
    assert!(env.o.with_hyp(|m| m.mapped.len()) == CARVE_PAGES as usize);
}

/// A guest, and `BLOCK` donated to it as one 2 MiB block: one guest
/// block and one host annotation entry, no page tables below. Returns the
/// guest and the host's leaves before and after the guest was created.
fn donate_block(env: &mut Env) -> (GuestHandle, Vec<Leaf>, Vec<Leaf>) {
    let start = host_leaves(env);
    let h = env.guest(PGD, MC, 16);
    let after_create = host_leaves(env);
    env.o
        .host_donate_guest(&mut env.tlb, h, Pfn(BLOCK), Gfn(GFN), Extent::Block)
        .unwrap();
    env.check();
    assert_eq!(guest_leaf(env, h, GFN + 7).level, Level::L2);
    let host = env
        .o
        .with_host(|m| m.stage2().lookup(m.pool(), Ipa(BLOCK << 12)).unwrap());
    assert_eq!(host.level, Level::L2);
    assert!(!host.is_valid());
    (h, start, after_create)
}

/// The guest dies and the host reclaims `BLOCK` as one block: the host's
/// leaves are `after_create` again.
fn reclaim_block(env: &mut Env, h: GuestHandle, after_create: &[Leaf]) {
    env.o.start_teardown(h).unwrap();
    env.o
        .host_reclaim(&mut env.tlb, h, Gfn(GFN), Extent::Block)
        .unwrap();
    env.check();
    assert_eq!(host_leaves(env), after_create);
}

#[test]
fn two_mib_donation_is_one_block_and_comes_back_block_for_block() {
    let mut env = Env::new();
    let (h, start, after_create) = donate_block(&mut env);
    // The guest shares one page back: the guest block splits, the host maps
    // that one page.
    env.ram.fill_page(Pfn(BLOCK + 3), 0xab);
    env.o
        .guest_share_host(&mut env.tlb, h, Gfn(GFN + 3), 1)
        .unwrap();
    env.check();
    assert_eq!(guest_leaf(&env, h, GFN + 3).level, Level::L3);
    assert_eq!(env.host(BLOCK + 3), PageState::SharedBorrowed);
    assert!(env.page_is(BLOCK + 3, 0xab));
    // Unshared again: both tables merge back.
    env.o
        .guest_unshare_host(&mut env.tlb, h, Gfn(GFN + 3), 1)
        .unwrap();
    env.check();
    assert_eq!(guest_leaf(&env, h, GFN + 3).level, Level::L2);
    let host = env
        .o
        .with_host(|m| m.stage2().lookup(m.pool(), Ipa((BLOCK + 3) << 12)).unwrap());
    assert_eq!(host.level, Level::L2);
    // Teardown: reclaim the block, finish; the host is as it was.
    reclaim_block(&mut env, h, &after_create);
    assert!(
        env.page_is(BLOCK + 3, 0),
        "reclaimed private page not zeroed"
    );
    env.o.finish_teardown(&mut env.tlb, h).unwrap();
    env.check();
    assert_eq!(host_leaves(&env), start);
    assert_eq!(env.o.with_hyp(|m| m.mapped.len()), CARVE_PAGES as usize);
    for p in [PGD, PGD + 1, MC, MC + 15] {
        assert_eq!(env.o.page(Pfn(p)).unwrap(), PageEntry::HOST_OWNED);
    }
}

#[test]
fn full_lifecycle_with_bytes() {
    let mut env = Env::new();
    let h = env.guest(PGD, MC, 16);
    let t = &mut env.tlb;
    let o = &env.o;
    // The VMM loads an image into a host page, then donates it in place.
    env.ram.fill_page(Pfn(RAM_PFN + 0x40), b'K');
    o.host_donate_guest(t, h, Pfn(RAM_PFN + 0x40), Gfn(GFN), Extent::Page)
        .unwrap();
    assert_eq!(
        o.guest_state(h, Gfn(GFN)).unwrap(),
        (GuestPageState::Owned, Some(Pfn(RAM_PFN + 0x40)))
    );
    assert!(
        env.ram
            .read_page(Pfn(RAM_PFN + 0x40))
            .iter()
            .all(|b| *b == b'K'),
        "donation must keep contents"
    );
    o.host_donate_guest(t, h, Pfn(BLOCK), Gfn(GFN + 0x200), Extent::Block)
        .unwrap();
    env.check();
    // The guest shares page X and writes 'A'; the host reads 'A'.
    let t = &mut env.tlb;
    o.guest_share_host(t, h, Gfn(GFN), 1).unwrap();
    env.ram.fill_page(Pfn(RAM_PFN + 0x40), b'A');
    assert_eq!(env.host(RAM_PFN + 0x40), PageState::SharedBorrowed);
    assert!(env.page_is(RAM_PFN + 0x40, b'A'));
    env.check();
    // A host page lent to the guest.
    let t = &mut env.tlb;
    o.host_share_guest(t, h, Pfn(RAM_PFN + 0x41), Gfn(GFN + 1), Extent::Page)
        .unwrap();
    env.check();
    // The guest relinquishes one private page of its block.
    env.ram.fill_page(Pfn(BLOCK + 9), b'S');
    let t = &mut env.tlb;
    o.guest_relinquish(t, h, Gfn(GFN + 0x209), 1).unwrap();
    assert!(env.page_is(BLOCK + 9, 0));
    assert_eq!(env.host(BLOCK + 9), PageState::Owned);
    assert_eq!(env.gstate(h, GFN + 0x209), GuestPageState::Relinquished);
    env.check();
    // Teardown: EBUSY until every page is reclaimed.
    let t = &mut env.tlb;
    assert_eq!(o.finish_teardown(t, h), Err(Errno::Einval));
    o.start_teardown(h).unwrap();
    assert_eq!(o.start_teardown(h), Err(Errno::Einval));
    assert_eq!(o.finish_teardown(t, h), Err(Errno::Ebusy));
    env.ram.fill_page(Pfn(BLOCK + 10), b'P');
    o.host_reclaim(t, h, Gfn(GFN), Extent::Page).unwrap();
    assert!(
        env.ram
            .read_page(Pfn(RAM_PFN + 0x40))
            .iter()
            .all(|b| *b == b'A'),
        "shared page keeps contents"
    );
    o.host_reclaim(t, h, Gfn(GFN + 1), Extent::Page).unwrap();
    assert_eq!(
        env.o.page(Pfn(RAM_PFN + 0x41)).unwrap(),
        PageEntry::HOST_OWNED
    );
    o.host_reclaim(t, h, Gfn(GFN + 0x200), Extent::Block)
        .unwrap();
    assert!(env.page_is(BLOCK + 10, 0));
    env.check();
    let t = &mut env.tlb;
    o.finish_teardown(t, h).unwrap();
    env.check();
    assert_eq!(o.guest_state(h, Gfn(GFN)), Err(Errno::Einval));
    assert!(
        env.page_is(PGD, 0) && env.page_is(MC, 0),
        "hypervisor pages go back zeroed"
    );
}

#[test]
fn memcache_exhaustion_changes_nothing() {
    let mut env = Env::new();
    let h = env.guest(PGD, MC, 0);
    let before = host_leaves(&env);
    // One page needs a level-2 and a level-3 table in the guest.
    let r = env
        .o
        .host_donate_guest(&mut env.tlb, h, Pfn(RAM_PFN + 0x40), Gfn(GFN), Extent::Page);
    assert_eq!(r, Err(Errno::Enomem));
    assert_eq!(
        env.o.page(Pfn(RAM_PFN + 0x40)).unwrap(),
        PageEntry::HOST_OWNED
    );
    assert_eq!(env.gstate(h, GFN), GuestPageState::NoPage);
    assert_eq!(host_leaves(&env), before);
    env.check();
    env.o.topup_memcache(&mut env.tlb, h, Pfn(MC), 1).unwrap();
    let r = env
        .o
        .host_donate_guest(&mut env.tlb, h, Pfn(RAM_PFN + 0x40), Gfn(GFN), Extent::Page);
    assert_eq!(r, Err(Errno::Enomem));
    env.o
        .topup_memcache(&mut env.tlb, h, Pfn(MC + 1), 1)
        .unwrap();
    env.o
        .host_donate_guest(&mut env.tlb, h, Pfn(RAM_PFN + 0x40), Gfn(GFN), Extent::Page)
        .unwrap();
    env.check();
    // A 2 MiB guest block needs a split (one more page) to share one page.
    env.o
        .host_donate_guest(&mut env.tlb, h, Pfn(BLOCK), Gfn(GFN + 0x200), Extent::Block)
        .unwrap();
    let r = env.o.guest_share_host(&mut env.tlb, h, Gfn(GFN + 0x201), 1);
    assert_eq!(r, Err(Errno::Enomem));
    assert_eq!(env.gstate(h, GFN + 0x201), GuestPageState::Owned);
    assert_eq!(env.host(BLOCK + 1), PageState::NoPage);
    env.check();
}

#[test]
fn host_pool_exhaustion_changes_nothing() {
    let mut pool = ArenaPool::new(64);
    pool.set_alloc_limit(Some(8));
    let mut env = Env::with_pool(pool);
    let h = env.guest(PGD, MC, 16);
    // Use up the host pool's remaining budget: each single-page donation
    // inside a fresh 2 MiB host block needs one host table.
    let mut donated = 0;
    let mut err = None;
    for i in 0..8u64 {
        match env.o.host_donate_guest(
            &mut env.tlb,
            h,
            Pfn(RAM_PFN + 0x200 * (i + 2)),
            Gfn(GFN + i),
            Extent::Page,
        ) {
            Ok(()) => donated += 1,
            Err(e) => {
                err = Some((e, i));
                break;
            }
        }
    }
    let (e, i) = err.expect("the host pool should run out");
    assert_eq!(e, Errno::Enomem);
    assert!(donated > 0);
    assert_eq!(
        env.o.page(Pfn(RAM_PFN + 0x200 * (i + 2))).unwrap(),
        PageEntry::HOST_OWNED
    );
    assert_eq!(env.gstate(h, GFN + i), GuestPageState::NoPage);
    env.check();
}

#[test]
fn bad_arguments_are_refused() {
    let mut env = Env::new();
    let h = env.guest(PGD, MC, 16);
    let t = &mut env.tlb;
    let o = &env.o;
    let bad = GuestHandle(0x1234);
    let cases: Vec<(&str, Result<(), Errno>)> = vec![
        ("share hyp outside RAM", o.host_share_hyp(Pfn(RAM_PFN - 1))),
        (
            "share hyp beyond RAM",
            o.host_share_hyp(Pfn(RAM_PFN + RAM_PAGES)),
        ),
        (
            "donate hyp huge count",
            o.host_donate_hyp(t, Pfn(RAM_PFN), u64::MAX),
        ),
        (
            "donate hyp zero pages",
            o.host_donate_hyp(t, Pfn(RAM_PFN), 0),
        ),
        (
            "donate hyp crossing the end",
            o.host_donate_hyp(t, Pfn(RAM_PFN + RAM_PAGES - 1), 2),
        ),
        ("pfn overflow", o.host_share_ffa(Pfn(u64::MAX), 2)),
        (
            "unknown guest",
            o.host_donate_guest(t, bad, Pfn(RAM_PFN + 0x40), Gfn(GFN), Extent::Page),
        ),
        (
            "handle below offset",
            o.host_donate_guest(
                t,
                GuestHandle(1),
                Pfn(RAM_PFN + 0x40),
                Gfn(GFN),
                Extent::Page,
            ),
        ),
        (
            "unaligned block pfn",
            o.host_donate_guest(t, h, Pfn(BLOCK + 1), Gfn(GFN), Extent::Block),
        ),
        (
            "unaligned block gfn",
            o.host_share_guest(t, h, Pfn(BLOCK), Gfn(GFN + 1), Extent::Block),
        ),
        (
            "gfn beyond the IPA size",
            o.host_donate_guest(t, h, Pfn(RAM_PFN + 0x40), Gfn(1 << 28), Extent::Page),
        ),
        (
            "gfn overflow",
            o.host_share_guest(t, h, Pfn(RAM_PFN + 0x40), Gfn(u64::MAX), Extent::Page),
        ),
        (
            "block past RAM",
            o.host_donate_guest(t, h, Pfn(RAM_PFN + RAM_PAGES), Gfn(GFN), Extent::Block),
        ),
        ("guest range zero", o.guest_share_host(t, h, Gfn(GFN), 0)),
        (
            "guest range too long",
            o.guest_relinquish(t, h, Gfn(GFN), 513),
        ),
        (
            "guest range overflow",
            o.guest_unshare_host(t, h, Gfn(u64::MAX - 1), 4),
        ),
        (
            "reclaim before teardown",
            o.host_reclaim(t, h, Gfn(GFN), Extent::Page),
        ),
        ("topup zero", o.topup_memcache(t, h, Pfn(RAM_PFN + 0x50), 0)),
        (
            "topup from the hypervisor",
            o.topup_memcache(t, h, Pfn(CARVE_PFN), 1),
        ),
        (
            "guest root unaligned",
            o.create_guest(t, 40, Pfn(RAM_PFN + 0x51)).map(|_| ()),
        ),
        (
            "guest root not the host's",
            o.create_guest(t, 40, Pfn(CARVE_PFN)).map(|_| ()),
        ),
        (
            "guest IPA size",
            o.create_guest(t, 52, Pfn(RAM_PFN + 0x60)).map(|_| ()),
        ),
        (
            "conversion of nothing",
            o.host_complete_conversion(
                t,
                h,
                Conversion {
                    kind: ConversionKind::Share,
                    gfn: Gfn(GFN),
                    pages: 1,
                },
            ),
        ),
    ];
    let expect = [
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Einval,
        Errno::Eperm,
        Errno::Einval,
        Errno::Eperm,
        Errno::Einval,
        Errno::Eperm,
    ];
    assert_eq!(cases.len(), expect.len());
    for ((what, got), want) in cases.into_iter().zip(expect) {
        assert_eq!(got, Err(want), "{what}");
    }
    assert_eq!(
        o.host_force_reclaim(t, PhysAddr(0x1000)),
        Err(Errno::Efault)
    );
    assert_eq!(
        o.host_force_reclaim(t, PhysAddr(RAM_BASE)),
        Err(Errno::Eagain)
    );
    assert_eq!(
        o.host_force_reclaim(t, PhysAddr(CARVE_PFN << 12)),
        Err(Errno::Eperm)
    );
    assert_eq!(o.host_refuse_conversion(h), Err(Errno::Eperm));
    assert_eq!(o.start_teardown(GuestHandle(0xffff)), Err(Errno::Einval));
    env.check();
}

#[test]
fn pins_and_hypervisor_mappings() {
    let env = Env::new();
    let p = Pfn(RAM_PFN + 0x30);
    env.o.host_share_hyp(p).unwrap();
    assert!(!env.o.with_hyp(|m| m.mapped.contains(&p.0)));
    env.o.hyp_pin_shared(p, 1).unwrap();
    env.o.hyp_pin_shared(p, 1).unwrap();
    assert!(env.o.with_hyp(|m| m.mapped.contains(&p.0)));
    assert_eq!(env.o.host_unshare_hyp(p), Err(Errno::Ebusy));
    env.check();
    env.o.hyp_unpin_shared(p, 1).unwrap();
    env.o.hyp_unpin_shared(p, 1).unwrap();
    assert_eq!(env.o.hyp_unpin_shared(p, 1), Err(Errno::Eperm));
    assert!(!env.o.with_hyp(|m| m.mapped.contains(&p.0)));
    env.o.host_unshare_hyp(p).unwrap();
    env.check();
}

#[test]
fn one_page_lent_to_two_guests() {
    let mut env = Env::new();
    let a = env.guest(PGD, MC, 16);
    let b = env.guest(PGD + 2, MC + 16, 16);
    let p = Pfn(RAM_PFN + 0x30);
    env.o
        .host_share_guest(&mut env.tlb, a, p, Gfn(GFN), Extent::Page)
        .unwrap();
    env.o
        .host_share_guest(&mut env.tlb, b, p, Gfn(GFN + 5), Extent::Page)
        .unwrap();
    env.o
        .host_share_guest(&mut env.tlb, a, p, Gfn(GFN + 1), Extent::Page)
        .unwrap();
    assert_eq!(env.o.page(p).unwrap().share_count(), 3);
    assert_eq!(
        env.o
            .host_donate_guest(&mut env.tlb, b, p, Gfn(GFN), Extent::Page),
        Err(Errno::Eperm)
    );
    assert_eq!(env.o.host_share_hyp(p), Err(Errno::Eperm));
    env.check();
    env.o
        .host_unshare_guest(&mut env.tlb, a, Gfn(GFN), Extent::Page)
        .unwrap();
    env.o
        .host_unshare_guest(&mut env.tlb, b, Gfn(GFN + 5), Extent::Page)
        .unwrap();
    assert_eq!(env.host(p.0), PageState::SharedOwned);
    env.o
        .host_unshare_guest(&mut env.tlb, a, Gfn(GFN + 1), Extent::Page)
        .unwrap();
    assert_eq!(env.o.page(p).unwrap(), PageEntry::HOST_OWNED);
    env.check();
}

#[test]
fn guest_metadata_pages_are_donated_and_returned() {
    let mut env = Env::new();
    let meta = Some((Pfn(RAM_PFN + 0x90), 2));
    // Overlapping the root, or not the host's: refused, nothing changes.
    let r = env
        .o
        .create_guest_with_meta(&mut env.tlb, 40, Pfn(PGD), Some((Pfn(PGD + 1), 1)));
    assert_eq!(r, Err(Errno::Einval));
    let r = env
        .o
        .create_guest_with_meta(&mut env.tlb, 40, Pfn(PGD), Some((Pfn(CARVE_PFN), 1)));
    assert_eq!(r, Err(Errno::Eperm));
    assert_eq!(env.o.page(Pfn(PGD)).unwrap(), PageEntry::HOST_OWNED);
    env.ram.fill_page(Pfn(RAM_PFN + 0x90), 0x99);
    let h = env
        .o
        .create_guest_with_meta(&mut env.tlb, 40, Pfn(PGD), meta)
        .unwrap();
    assert_eq!(
        env.o.page(Pfn(RAM_PFN + 0x91)).unwrap(),
        PageEntry::HYP_OWNED
    );
    assert!(
        env.page_is(RAM_PFN + 0x90, 0),
        "metadata pages start zeroed"
    );
    assert_eq!(env.o.with_guest(h, |g| g.meta()).unwrap(), meta);
    env.check();
    env.o.start_teardown(h).unwrap();
    env.o.finish_teardown(&mut env.tlb, h).unwrap();
    assert_eq!(
        env.o.page(Pfn(RAM_PFN + 0x90)).unwrap(),
        PageEntry::HOST_OWNED
    );
    env.check();
}

#[test]
fn block_unshare_after_one_page_was_reclaimed_changes_nothing() {
    let mut env = Env::new();
    let a = env.guest(PGD, MC, 16);
    let b = env.guest(PGD + 2, MC + 16, 16);
    // A 2 MiB share to guest a; one of its pages also lent to guest b.
    env.o
        .host_share_guest(&mut env.tlb, a, Pfn(BLOCK), Gfn(0x200), Extent::Block)
        .unwrap();
    env.o
        .host_share_guest(&mut env.tlb, b, Pfn(BLOCK + 3), Gfn(GFN), Extent::Page)
        .unwrap();
    assert_eq!(env.o.page(Pfn(BLOCK + 3)).unwrap().share_count(), 2);
    // Teardown of a reclaims page 3 alone.
    env.o.start_teardown(a).unwrap();
    env.o
        .host_reclaim(&mut env.tlb, a, Gfn(0x203), Extent::Page)
        .unwrap();
    assert_eq!(env.o.page(Pfn(BLOCK + 3)).unwrap().share_count(), 1);
    env.check();
    // The block share is no longer whole: refused, and b's share intact.
    let r = env
        .o
        .host_unshare_guest(&mut env.tlb, a, Gfn(0x200), Extent::Block);
    assert_eq!(r, Err(Errno::Enoent));
    assert_eq!(env.o.page(Pfn(BLOCK + 3)).unwrap().share_count(), 1);
    assert_eq!(env.o.page(Pfn(BLOCK)).unwrap().share_count(), 1);
    env.check();
    // Reclaiming the rest as a block works.
    env.o
        .host_reclaim(&mut env.tlb, a, Gfn(0x200), Extent::Block)
        .unwrap();
    assert_eq!(env.o.page(Pfn(BLOCK)).unwrap(), PageEntry::HOST_OWNED);
    env.check();
}

/// The guest slots are a fixed array: all `MAX_GUESTS` can be live at
/// once, one more is `EBUSY` with nothing changed, a torn-down slot is
/// reused (lowest first) and its old handle refused until then.
#[test]
fn guest_slots_fill_up_and_are_reused() {
    let mut env = Env::new();
    let first_pgd = RAM_PFN + 0x800;
    let pgd = |i: usize| Pfn(first_pgd + 2 * i as u64);
    let handles: Vec<GuestHandle> = (0..state::MAX_GUESTS)
        .map(|i| env.o.create_guest(&mut env.tlb, 40, pgd(i)).unwrap())
        .collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.0, state::HANDLE_OFFSET + i as u16);
    }
    assert_eq!(env.o.guest_handles(), handles);
    let spare = pgd(state::MAX_GUESTS);
    assert_eq!(
        env.o.create_guest(&mut env.tlb, 40, spare),
        Err(Errno::Ebusy)
    );
    assert_eq!(env.o.page(spare).unwrap(), PageEntry::HOST_OWNED);
    env.check();
    // Free two slots; the handles die with them.
    for &i in &[7usize, 3] {
        env.o.start_teardown(handles[i]).unwrap();
        env.o.finish_teardown(&mut env.tlb, handles[i]).unwrap();
        assert_eq!(env.o.start_teardown(handles[i]), Err(Errno::Einval));
        assert_eq!(
            env.o.with_guest(handles[i], |g| g.handle()),
            Err(Errno::Einval)
        );
    }
    env.check();
    let again = env.o.create_guest(&mut env.tlb, 40, spare).unwrap();
    assert_eq!(again, handles[3], "lowest free slot first");
    let again = env.o.create_guest(&mut env.tlb, 40, pgd(3)).unwrap();
    assert_eq!(again, handles[7]);
    assert_eq!(
        env.o.create_guest(&mut env.tlb, 40, pgd(7)),
        Err(Errno::Ebusy)
    );
    env.check();
}

/// With 4 KiB host mappings the host's RAM is pages from the start and
/// stays pages: a 2 MiB donation still annotates one host entry and maps
/// one guest block, but what comes back to the host is mapped page by
/// page and never merged (the checker refuses a RAM block in such a host).
#[test]
fn pages_only_host_never_maps_ram_with_blocks() {
    let mut env = Env::pages_only();
    let stats = env.o.with_host(|h| h.stage2().stats(h.pool()));
    // 14 MiB of host RAM in pages; MMIO keeps its 16 x 2 MiB blocks.
    assert_eq!(stats.leaves, [0, 0, 16, 7 * 512]);
    assert_eq!(env.o.with_host(|h| h.policy()), BlockPolicy::PagesOnly);
    let (h, start, after_create) = donate_block(&mut env);
    // Shared back and unshared: the host maps that page alone.
    env.o
        .guest_share_host(&mut env.tlb, h, Gfn(GFN + 3), 1)
        .unwrap();
    env.check();
    let leaf = env
        .o
        .with_host(|m| m.stage2().lookup(m.pool(), Ipa((BLOCK + 3) << 12)).unwrap());
    assert!(leaf.is_valid());
    assert_eq!(leaf.level, Level::L3);
    env.o
        .guest_unshare_host(&mut env.tlb, h, Gfn(GFN + 3), 1)
        .unwrap();
    env.check();
    // Reclaimed: 512 pages again, not a block.
    reclaim_block(&mut env, h, &after_create);
    let leaf = env.o.with_host(|m| {
        m.stage2()
            .lookup(m.pool(), Ipa((BLOCK + 511) << 12))
            .unwrap()
    });
    assert_eq!(leaf.level, Level::L3);
    env.o.finish_teardown(&mut env.tlb, h).unwrap();
    env.check();
    assert_eq!(host_leaves(&env), start);
}
