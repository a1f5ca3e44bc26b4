//! Guest ranges at the size limit: 511, 512 (`MAX_GUEST_RANGE`) and 513
//! pages, for share and unshare (requested by the guest, completed by the
//! host, and the direct transitions) and for relinquish.
//!
//! The guest owns 514 consecutive pages: one page, a 2 MiB block and one
//! more page, so a 513-page range is refused for its size alone (every
//! page of it would otherwise qualify) and a 512-page range may start off
//! the block's alignment. A refused call changes nothing; an accepted one
//! changes exactly its pages.

mod common;
use common::*;
use ownership::transitions::MAX_GUEST_RANGE;
use ownership::*;

const PGD: u64 = RAM_PFN + 0x100;
const MC: u64 = RAM_PFN + 0x110;
/// A 2 MiB-aligned host block, and two single pages.
const BLOCK: u64 = RAM_PFN + 0x400;
const BEFORE: u64 = RAM_PFN + 0x20;
const AFTER: u64 = RAM_PFN + 0x21;
/// The block's gfn: the guest owns `GFN - 1 ..= GFN + 512`.
const GFN: u64 = 0x8_0000;
const FIRST: u64 = GFN - 1;
const LAST: u64 = GFN + 512;

/// The host frame behind guest page `gfn`.
fn frame(gfn: u64) -> u64 {
    match gfn {
        FIRST => BEFORE,
        LAST => AFTER,
        g => BLOCK + (g - GFN),
    }
}

struct T {
    env: Env,
    h: GuestHandle,
}

impl T {
    /// 514 guest-owned pages, each page's bytes its index + 1.
    fn new() -> T {
        let mut env = Env::new();
        let h = env.guest(PGD, MC, 64);
        let o = &env.o;
        let t = &mut env.tlb;
        o.host_donate_guest(t, h, Pfn(BLOCK), Gfn(GFN), Extent::Block)
            .unwrap();
        o.host_donate_guest(t, h, Pfn(BEFORE), Gfn(FIRST), Extent::Page)
            .unwrap();
        o.host_donate_guest(t, h, Pfn(AFTER), Gfn(LAST), Extent::Page)
            .unwrap();
        for g in FIRST..=LAST {
            env.ram.fill_page(Pfn(frame(g)), byte(g));
        }
        env.check();
        T { env, h }
    }

    /// Guest state, host state and first byte of every page.
    fn snapshot(&self) -> Vec<(u64, GuestPageState, PageState, u8)> {
        (FIRST..=LAST)
            .map(|g| {
                let (s, p) = self.env.o.guest_state(self.h, Gfn(g)).unwrap();
                let host = self.env.host(frame(g));
                assert!(p.is_none_or(|p| p.0 == frame(g)), "gfn {g:#x} moved");
                (g, s, host, self.env.ram.read_page(Pfn(frame(g)))[0])
            })
            .collect()
    }

    fn pending(&self) -> Option<Conversion> {
        self.env.o.with_guest(self.h, |g| g.pending()).unwrap()
    }

    /// Request then complete a conversion, as el2 does for MEM_SHARE and
    /// MEM_UNSHARE.
    fn convert(&mut self, kind: ConversionKind, gfn: u64, n: u64) -> Result<(), Errno> {
        let c = Conversion {
            kind,
            gfn: Gfn(gfn),
            pages: n,
        };
        self.env.o.guest_request_conversion(self.h, c)?;
        assert_eq!(self.pending(), Some(c));
        let r = self
            .env
            .o
            .host_complete_conversion(&mut self.env.tlb, self.h, c);
        assert_eq!(r, Ok(()), "a checked request completes");
        assert_eq!(self.pending(), None);
        self.env.check();
        Ok(())
    }

    /// Shares every page (in ranges the limit allows).
    fn share_all(&mut self) {
        self.convert(ConversionKind::Share, GFN, 512).unwrap();
        self.convert(ConversionKind::Share, FIRST, 1).unwrap();
        self.convert(ConversionKind::Share, LAST, 1).unwrap();
    }
}

fn byte(gfn: u64) -> u8 {
    (gfn % 251) as u8 + 1
}

/// Each range tried: (first gfn, pages), all inside the guest's 514 pages.
fn ranges() -> Vec<(u64, u64)> {
    vec![
        (FIRST, 511),
        (GFN, 511),
        (GFN + 1, 511),
        (FIRST, 512),
        (GFN, 512),
        (GFN + 1, 512),
        (FIRST, 513),
        (GFN, 513),
    ]
}

/// `after` is `before` with exactly `[gfn, gfn + n)` changed by `f`.
fn assert_changed(
    before: &[(u64, GuestPageState, PageState, u8)],
    after: &[(u64, GuestPageState, PageState, u8)],
    gfn: u64,
    n: u64,
    f: impl Fn((u64, GuestPageState, PageState, u8)) -> (u64, GuestPageState, PageState, u8),
    what: &str,
) {
    for (b, a) in before.iter().zip(after) {
        let want = if (gfn..gfn + n).contains(&b.0) {
            f(*b)
        } else {
            *b
        };
        assert_eq!(*a, want, "{what} [{gfn:#x}, +{n}): page {:#x}", b.0);
    }
}

#[test]
fn the_limit_is_512_pages() {
    assert_eq!(MAX_GUEST_RANGE, 512);
    assert_eq!(MAX_GUEST_RANGE, BLOCK_PAGES);
}

#[test]
fn share_of_511_and_512_pages_succeeds_513_is_refused() {
    for (gfn, n) in ranges() {
        let mut t = T::new();
        let before = t.snapshot();
        let r = t.convert(ConversionKind::Share, gfn, n);
        let after = t.snapshot();
        if n <= 512 {
            assert_eq!(r, Ok(()), "share [{gfn:#x}, +{n})");
            assert_changed(
                &before,
                &after,
                gfn,
                n,
                |(g, _, _, b)| (g, GuestPageState::SharedOwned, PageState::SharedBorrowed, b),
                "share",
            );
        } else {
            assert_eq!(r, Err(Errno::Einval), "share [{gfn:#x}, +{n})");
            assert_eq!(t.pending(), None, "nothing recorded");
            assert_eq!(after, before, "a refused share changed something");
        }
        t.env.check();
    }
}

#[test]
fn unshare_of_511_and_512_pages_succeeds_513_is_refused() {
    for (gfn, n) in ranges() {
        let mut t = T::new();
        t.share_all();
        let before = t.snapshot();
        let r = t.convert(ConversionKind::Unshare, gfn, n);
        let after = t.snapshot();
        if n <= 512 {
            assert_eq!(r, Ok(()), "unshare [{gfn:#x}, +{n})");
            assert_changed(
                &before,
                &after,
                gfn,
                n,
                |(g, _, _, b)| (g, GuestPageState::Owned, PageState::NoPage, b),
                "unshare",
            );
        } else {
            assert_eq!(r, Err(Errno::Einval), "unshare [{gfn:#x}, +{n})");
            assert_eq!(t.pending(), None);
            assert_eq!(after, before, "a refused unshare changed something");
        }
        t.env.check();
    }
}

#[test]
fn direct_share_and_unshare_transitions_have_the_same_limit() {
    for (gfn, n) in ranges() {
        let mut t = T::new();
        let before = t.snapshot();
        let o = &t.env.o;
        let r = o.guest_share_host(&mut t.env.tlb, t.h, Gfn(gfn), n);
        assert_eq!(r.is_ok(), n <= 512, "share [{gfn:#x}, +{n}): {r:?}");
        if r.is_err() {
            assert_eq!(r, Err(Errno::Einval));
            assert_eq!(t.snapshot(), before);
            continue;
        }
        let r = o.guest_unshare_host(&mut t.env.tlb, t.h, Gfn(gfn), n);
        assert_eq!(r, Ok(()), "unshare [{gfn:#x}, +{n})");
        assert_eq!(t.snapshot(), before, "share then unshare: as before");
        t.env.check();
    }
    // 513 shared pages cannot be unshared in one call either.
    let mut t = T::new();
    t.share_all();
    let before = t.snapshot();
    let r = t
        .env
        .o
        .guest_unshare_host(&mut t.env.tlb, t.h, Gfn(FIRST), 513);
    assert_eq!(r, Err(Errno::Einval));
    assert_eq!(t.snapshot(), before);
}

#[test]
fn relinquish_of_511_and_512_pages_succeeds_513_is_refused() {
    for shared in [false, true] {
        for (gfn, n) in ranges() {
            let mut t = T::new();
            if shared {
                t.share_all();
            }
            let before = t.snapshot();
            let r = t.env.o.guest_relinquish(&mut t.env.tlb, t.h, Gfn(gfn), n);
            let after = t.snapshot();
            if n <= 512 {
                assert_eq!(r, Ok(()), "relinquish [{gfn:#x}, +{n})");
                // Private pages are wiped; pages the guest shared keep
                // their contents.
                assert_changed(
                    &before,
                    &after,
                    gfn,
                    n,
                    |(g, _, _, b)| {
                        let b = if shared { b } else { 0 };
                        (g, GuestPageState::Relinquished, PageState::Owned, b)
                    },
                    "relinquish",
                );
                for g in gfn..gfn + n {
                    let e = t.env.o.page(Pfn(frame(g))).unwrap();
                    assert_eq!(e, PageEntry::HOST_OWNED, "frame of gfn {g:#x}");
                }
            } else {
                assert_eq!(r, Err(Errno::Einval), "relinquish [{gfn:#x}, +{n})");
                assert_eq!(after, before, "a refused relinquish changed something");
            }
            t.env.check();
        }
    }
}

#[test]
fn empty_ranges_relinquish_at_512_and_not_at_513() {
    // Nothing mapped: relinquishing is allowed (the IPAs become
    // Relinquished), up to the same limit.
    let mut t = T::new();
    let far = 0x10_0000;
    let o = &t.env.o;
    assert_eq!(
        o.guest_relinquish(&mut t.env.tlb, t.h, Gfn(far), 513),
        Err(Errno::Einval)
    );
    assert_eq!(
        o.guest_state(t.h, Gfn(far)).unwrap().0,
        GuestPageState::NoPage
    );
    assert_eq!(
        o.guest_relinquish(&mut t.env.tlb, t.h, Gfn(far + 1), 512),
        Ok(())
    );
    for g in [far, far + 1, far + 512, far + 513] {
        let want = if (far + 1..far + 513).contains(&g) {
            GuestPageState::Relinquished
        } else {
            GuestPageState::NoPage
        };
        assert_eq!(o.guest_state(t.h, Gfn(g)).unwrap().0, want, "gfn {g:#x}");
    }
    // Zero pages is refused as well.
    assert_eq!(
        o.guest_relinquish(&mut t.env.tlb, t.h, Gfn(far), 0),
        Err(Errno::Einval)
    );
    let c = Conversion {
        kind: ConversionKind::Share,
        gfn: Gfn(GFN),
        pages: 0,
    };
    assert_eq!(o.guest_request_conversion(t.h, c), Err(Errno::Einval));
    t.env.check();
}
