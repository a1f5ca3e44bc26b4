//! Property test: random sequences of every transition, from the host and
//! from two guests, over a small window of RAM, run against a plain
//! reference model written straight from DESIGN §2. Guest ranges (share,
//! unshare, relinquish, conversions) draw their page count from 1–3, the
//! limit and either side of it (511, 512, 513), 0 and random counts up to
//! 1100. After every step:
//! - the call succeeded exactly when the model says it should;
//! - a failed call changed nothing (every page entry and guest state in the
//!   window, and every byte of the window's pages);
//! - every page entry and guest page state equals the model's;
//! - the bytes of every page equal the model's (pages leaving a guest are
//!   zeroed unless the guest had shared them);
//! - the invariant checker passes.

mod common;
use common::*;
use ownership::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Single test pages and two 2 MiB blocks of host RAM.
const SINGLES: [u64; 6] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25];
const BLOCKS: [u64; 2] = [0x200, 0x400];
/// Guest frames used: singles at 0x1000.., blocks at 0x2000 and 0x2200.
const GSINGLE: u64 = 0x1000;
const GBLOCK: [u64; 2] = [0x2000, 0x2200];
const PGD: [u64; 2] = [0x100, 0x102];
const MC: [u64; 2] = [0x110, 0x150];

fn pfn(i: u64) -> Pfn {
    Pfn(RAM_PFN + i)
}

/// Every page whose state the test compares.
fn window() -> impl Iterator<Item = u64> {
    SINGLES
        .iter()
        .copied()
        .chain(BLOCKS.iter().flat_map(|b| *b..*b + 512))
}

fn gwindow() -> impl Iterator<Item = u64> {
    (GSINGLE..GSINGLE + 8).chain(GBLOCK.iter().flat_map(|b| *b..*b + 512))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MOwner {
    Host,
    Hyp,
    Guest(usize, u64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct MPage {
    host: PageState,
    hyp: PageState,
    owner: MOwner,
    shares: u32,
    pins: u16,
    byte: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct MGPage {
    state: GuestPageState,
    pfn: Option<u64>,
    block_share: bool,
}

const EMPTY: MGPage = MGPage {
    state: GuestPageState::NoPage,
    pfn: None,
    block_share: false,
};

#[derive(Clone, Debug, Default)]
struct MGuest {
    pages: BTreeMap<u64, MGPage>,
    dying: bool,
    pending: Option<Conversion>,
    gone: bool,
}

#[derive(Clone, Debug)]
struct Model {
    pages: BTreeMap<u64, MPage>,
    guests: Vec<MGuest>,
}

use PageState::{NoPage as N, Owned as O, SharedBorrowed as SB, SharedOwned as SO};

impl Model {
    fn new() -> Model {
        let host = MPage {
            host: O,
            hyp: N,
            owner: MOwner::Host,
            shares: 0,
            pins: 0,
            byte: 0,
        };
        Model {
            pages: window().map(|p| (p, host)).collect(),
            guests: vec![MGuest::default(); 2],
        }
    }

    fn p(&self, i: u64) -> MPage {
        self.pages[&i]
    }

    fn g(&self, vm: usize, gfn: u64) -> MGPage {
        self.guests[vm].pages.get(&gfn).copied().unwrap_or(EMPTY)
    }

    fn host_plain(&self, i: u64) -> bool {
        let p = self.p(i);
        (p.host, p.hyp, p.owner) == (O, N, MOwner::Host)
    }
}

#[derive(Clone, Copy, Debug)]
enum Act {
    ShareHyp(u64),
    UnshareHyp(u64),
    Pin(u64),
    Unpin(u64),
    DonateHyp(u64),
    HypDonateHost(u64),
    ShareFfa(u64),
    UnshareFfa(u64),
    ShareGuest {
        vm: usize,
        page: u64,
        gfn: u64,
        block: bool,
    },
    UnshareGuest {
        vm: usize,
        gfn: u64,
        block: bool,
    },
    DonateGuest {
        vm: usize,
        page: u64,
        gfn: u64,
        block: bool,
    },
    GuestShare {
        vm: usize,
        gfn: u64,
        n: u64,
    },
    GuestUnshare {
        vm: usize,
        gfn: u64,
        n: u64,
    },
    Relinquish {
        vm: usize,
        gfn: u64,
        n: u64,
    },
    Request {
        vm: usize,
        share: bool,
        gfn: u64,
        n: u64,
    },
    Complete {
        vm: usize,
        share: bool,
        gfn: u64,
        n: u64,
    },
    Refuse(usize),
    StartTeardown(usize),
    Reclaim {
        vm: usize,
        gfn: u64,
        block: bool,
    },
    ForceReclaim(u64),
    FinishTeardown(usize),
    GuestWrite {
        vm: usize,
        gfn: u64,
        byte: u8,
    },
    HostWrite {
        page: u64,
        byte: u8,
    },
}

fn page() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(SINGLES.to_vec()),
        1 => (prop::sample::select(BLOCKS.to_vec()), 0..3u64).prop_map(|(b, o)| b + o),
    ]
}

fn block_page() -> impl Strategy<Value = u64> {
    prop::sample::select(BLOCKS.to_vec())
}

fn gfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => GSINGLE..GSINGLE + 8,
        1 => (prop::sample::select(GBLOCK.to_vec()), 0..3u64).prop_map(|(b, o)| b + o),
    ]
}

/// A guest range's page count: mostly small, often exactly at the limit
/// (`MAX_GUEST_RANGE` = 512) or one either side of it, sometimes 0 or
/// anything up to twice the limit.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1..4u64,
        2 => Just(511u64),
        3 => Just(512u64),
        2 => Just(513u64),
        1 => Just(0u64),
        1 => 0..1100u64,
    ]
}

fn act() -> impl Strategy<Value = Act> {
    let vm = 0..2usize;
    prop_oneof![
        1 => page().prop_map(Act::ShareHyp),
        1 => page().prop_map(Act::UnshareHyp),
        1 => page().prop_map(Act::Pin),
        1 => page().prop_map(Act::Unpin),
        1 => page().prop_map(Act::DonateHyp),
        1 => page().prop_map(Act::HypDonateHost),
        1 => page().prop_map(Act::ShareFfa),
        1 => page().prop_map(Act::UnshareFfa),
        3 => (vm.clone(), page(), gfn()).prop_map(|(vm, page, gfn)| Act::ShareGuest { vm, page, gfn, block: false }),
        1 => (vm.clone(), block_page(), prop::sample::select(GBLOCK.to_vec()))
            .prop_map(|(vm, page, gfn)| Act::ShareGuest { vm, page, gfn, block: true }),
        2 => (vm.clone(), gfn(), any::<bool>()).prop_map(|(vm, gfn, block)| Act::UnshareGuest { vm, gfn, block }),
        4 => (vm.clone(), page(), gfn()).prop_map(|(vm, page, gfn)| Act::DonateGuest { vm, page, gfn, block: false }),
        2 => (vm.clone(), block_page(), prop::sample::select(GBLOCK.to_vec()))
            .prop_map(|(vm, page, gfn)| Act::DonateGuest { vm, page, gfn, block: true }),
        2 => (vm.clone(), gfn(), count()).prop_map(|(vm, gfn, n)| Act::GuestShare { vm, gfn, n }),
        2 => (vm.clone(), gfn(), count()).prop_map(|(vm, gfn, n)| Act::GuestUnshare { vm, gfn, n }),
        2 => (vm.clone(), gfn(), count()).prop_map(|(vm, gfn, n)| Act::Relinquish { vm, gfn, n }),
        2 => (vm.clone(), any::<bool>(), gfn(), count()).prop_map(|(vm, share, gfn, n)| Act::Request { vm, share, gfn, n }),
        2 => (vm.clone(), any::<bool>(), gfn(), count()).prop_map(|(vm, share, gfn, n)| Act::Complete { vm, share, gfn, n }),
        1 => vm.clone().prop_map(Act::Refuse),
        1 => vm.clone().prop_map(Act::StartTeardown),
        2 => (vm.clone(), gfn(), any::<bool>()).prop_map(|(vm, gfn, block)| Act::Reclaim { vm, gfn, block }),
        1 => page().prop_map(Act::ForceReclaim),
        1 => vm.clone().prop_map(Act::FinishTeardown),
        3 => (vm.clone(), gfn(), 1..255u8).prop_map(|(vm, gfn, byte)| Act::GuestWrite { vm, gfn, byte }),
        2 => (page(), 1..255u8).prop_map(|(page, byte)| Act::HostWrite { page, byte }),
    ]
}

struct H {
    env: Env,
    hs: [GuestHandle; 2],
    m: Model,
}

impl H {
    /// `pages_only`: the host's RAM mapped with 4 KiB pages only (the
    /// model is the same: the policy changes how, never whether, the host
    /// maps a page).
    fn new(pages_only: bool) -> H {
        let mut env = if pages_only {
            Env::pages_only()
        } else {
            Env::new()
        };
        let a = env.guest(RAM_PFN + PGD[0], RAM_PFN + MC[0], 64);
        let b = env.guest(RAM_PFN + PGD[1], RAM_PFN + MC[1], 64);
        H {
            env,
            hs: [a, b],
            m: Model::new(),
        }
    }

    /// Every observable of the window.
    fn snapshot(&self) -> Vec<String> {
        let mut v: Vec<String> = window()
            .map(|p| {
                format!(
                    "{p:#x} {:?} {}",
                    self.env.o.page(pfn(p)),
                    self.env.ram.read_page(pfn(p))[0]
                )
            })
            .collect();
        for (vm, h) in self.hs.iter().enumerate() {
            if self.m.guests[vm].gone {
                continue;
            }
            for g in gwindow() {
                v.push(format!(
                    "{vm} {g:#x} {:?}",
                    self.env.o.guest_state(*h, Gfn(g))
                ));
            }
        }
        v
    }

    /// The model's prediction and update for `a`; `None` means "must fail".
    fn model(&self, a: Act) -> Option<Model> {
        let mut m = self.m.clone();
        let gone = |vm: usize| m.guests[vm].gone;
        match a {
            Act::ShareHyp(i) => {
                if !m.host_plain(i) {
                    return None;
                }
                let p = m.pages.get_mut(&i)?;
                (p.host, p.hyp) = (SO, SB);
            }
            Act::UnshareHyp(i) => {
                let p = m.pages.get_mut(&i)?;
                if (p.host, p.hyp) != (SO, SB) || p.pins > 0 {
                    return None;
                }
                (p.host, p.hyp) = (O, N);
            }
            Act::Pin(i) => {
                let p = m.pages.get_mut(&i)?;
                if (p.host, p.hyp) != (SO, SB) {
                    return None;
                }
                p.pins += 1;
            }
            Act::Unpin(i) => {
                let p = m.pages.get_mut(&i)?;
                if (p.host, p.hyp) != (SO, SB) || p.pins == 0 {
                    return None;
                }
                p.pins -= 1;
            }
            Act::DonateHyp(i) => {
                if !m.host_plain(i) {
                    return None;
                }
                let p = m.pages.get_mut(&i)?;
                (p.host, p.hyp, p.owner) = (N, O, MOwner::Hyp);
            }
            Act::HypDonateHost(i) => {
                let p = m.pages.get_mut(&i)?;
                if p.owner != MOwner::Hyp {
                    return None;
                }
                (p.host, p.hyp, p.owner, p.byte) = (O, N, MOwner::Host, 0);
            }
            Act::ShareFfa(i) => {
                if !m.host_plain(i) {
                    return None;
                }
                m.pages.get_mut(&i)?.host = SO;
            }
            Act::UnshareFfa(i) => {
                let p = m.pages.get_mut(&i)?;
                if (p.host, p.hyp, p.owner, p.shares) != (SO, N, MOwner::Host, 0) {
                    return None;
                }
                p.host = O;
            }
            Act::ShareGuest {
                vm,
                page,
                gfn,
                block,
            }
            | Act::DonateGuest {
                vm,
                page,
                gfn,
                block,
            } => {
                let donate = matches!(a, Act::DonateGuest { .. });
                let n = if block { 512 } else { 1 };
                if gone(vm) || (block && (page % 512 != 0 || gfn % 512 != 0)) {
                    return None;
                }
                for k in 0..n {
                    let p = m.p(page + k);
                    let ok = if donate {
                        m.host_plain(page + k)
                    } else {
                        p.owner == MOwner::Host
                            && p.hyp == N
                            && (p.host == O || (p.host == SO && p.shares > 0))
                    };
                    if !ok || !m.g(vm, gfn + k).state.is_empty() {
                        return None;
                    }
                }
                for k in 0..n {
                    let p = m.pages.get_mut(&(page + k))?;
                    let state = if donate {
                        (p.host, p.owner) = (N, MOwner::Guest(vm, gfn + k));
                        GuestPageState::Owned
                    } else {
                        (p.host, p.shares) = (SO, p.shares + 1);
                        GuestPageState::SharedBorrowed
                    };
                    let gp = MGPage {
                        state,
                        pfn: Some(page + k),
                        block_share: block && !donate,
                    };
                    m.guests[vm].pages.insert(gfn + k, gp);
                }
            }
            Act::UnshareGuest { vm, gfn, block } => {
                let n = if block { 512 } else { 1 };
                if gone(vm) || (block && gfn % 512 != 0) {
                    return None;
                }
                let first = m.g(vm, gfn);
                if first.state != GuestPageState::SharedBorrowed || first.block_share != block {
                    return None;
                }
                for k in 0..n {
                    let gp = m.g(vm, gfn + k);
                    let p = m.pages.get_mut(&gp.pfn?)?;
                    p.shares -= 1;
                    if p.shares == 0 {
                        p.host = O;
                    }
                    m.guests[vm].pages.remove(&(gfn + k));
                }
            }
            Act::GuestShare { vm, gfn, n } | Act::GuestUnshare { vm, gfn, n } => {
                let share = matches!(a, Act::GuestShare { .. });
                if gone(vm) {
                    return None;
                }
                change_share(&mut m, vm, gfn, n, share)?;
            }
            Act::Request { vm, share, gfn, n } => {
                if gone(vm) || m.guests[vm].pending.is_some() {
                    return None;
                }
                change_share(&mut m.clone(), vm, gfn, n, share)?;
                let kind = if share {
                    ConversionKind::Share
                } else {
                    ConversionKind::Unshare
                };
                m.guests[vm].pending = Some(Conversion {
                    kind,
                    gfn: Gfn(gfn),
                    pages: n,
                });
            }
            Act::Complete { vm, share, gfn, n } => {
                let kind = if share {
                    ConversionKind::Share
                } else {
                    ConversionKind::Unshare
                };
                if gone(vm)
                    || m.guests[vm].pending
                        != Some(Conversion {
                            kind,
                            gfn: Gfn(gfn),
                            pages: n,
                        })
                {
                    return None;
                }
                change_share(&mut m, vm, gfn, n, share)?;
                m.guests[vm].pending = None;
            }
            Act::Refuse(vm) => {
                if gone(vm) || m.guests[vm].pending.take().is_none() {
                    return None;
                }
            }
            Act::Relinquish { vm, gfn, n } => {
                if gone(vm) || !range_ok(n) {
                    return None;
                }
                for k in 0..n {
                    match m.g(vm, gfn + k).state {
                        GuestPageState::Poisoned | GuestPageState::SharedBorrowed => return None,
                        _ => {}
                    }
                }
                for k in 0..n {
                    let gp = m.g(vm, gfn + k);
                    if let (GuestPageState::Owned | GuestPageState::SharedOwned, Some(i)) =
                        (gp.state, gp.pfn)
                    {
                        let p = m.pages.get_mut(&i)?;
                        if gp.state == GuestPageState::Owned {
                            p.byte = 0;
                        }
                        (p.host, p.owner) = (O, MOwner::Host);
                    }
                    m.guests[vm].pages.insert(
                        gfn + k,
                        MGPage {
                            state: GuestPageState::Relinquished,
                            ..EMPTY
                        },
                    );
                }
            }
            Act::StartTeardown(vm) => {
                if gone(vm) || m.guests[vm].dying {
                    return None;
                }
                m.guests[vm].dying = true;
            }
            Act::Reclaim { vm, gfn, block } => {
                let n = if block { 512 } else { 1 };
                if gone(vm) || !m.guests[vm].dying || (block && gfn % 512 != 0) {
                    return None;
                }
                let pages: Vec<MGPage> = (0..n).map(|k| m.g(vm, gfn + k)).collect();
                if pages.iter().all(|g| g.state == GuestPageState::Poisoned) {
                    return Some(m);
                }
                if pages.iter().all(|g| g.pfn.is_none()) {
                    return None;
                }
                for (k, gp) in pages.iter().enumerate() {
                    let k = k as u64;
                    if gp.state == GuestPageState::Poisoned {
                        continue;
                    }
                    if let Some(i) = gp.pfn {
                        let p = m.pages.get_mut(&i)?;
                        match gp.state {
                            GuestPageState::Owned => {
                                (p.host, p.owner, p.byte) = (O, MOwner::Host, 0)
                            }
                            GuestPageState::SharedOwned => (p.host, p.owner) = (O, MOwner::Host),
                            _ => {
                                p.shares -= 1;
                                if p.shares == 0 {
                                    p.host = O;
                                }
                            }
                        }
                    }
                    m.guests[vm].pages.remove(&(gfn + k));
                }
            }
            Act::ForceReclaim(i) => {
                let p = m.p(i);
                if p.host != N {
                    return None;
                }
                let MOwner::Guest(vm, gfn) = p.owner else {
                    return None;
                };
                if m.g(vm, gfn).state != GuestPageState::Owned {
                    return None;
                }
                let p = m.pages.get_mut(&i)?;
                (p.host, p.owner, p.byte) = (O, MOwner::Host, 0);
                m.guests[vm].pages.insert(
                    gfn,
                    MGPage {
                        state: GuestPageState::Poisoned,
                        ..EMPTY
                    },
                );
            }
            Act::FinishTeardown(vm) => {
                let g = &m.guests[vm];
                if g.gone || !g.dying || g.pages.values().any(|p| p.pfn.is_some()) {
                    return None;
                }
                m.guests[vm] = MGuest {
                    gone: true,
                    ..MGuest::default()
                };
            }
            Act::GuestWrite { vm, gfn, byte } => {
                if gone(vm) {
                    return None;
                }
                if let Some(i) = m.g(vm, gfn).pfn {
                    m.pages.get_mut(&i)?.byte = byte;
                }
            }
            Act::HostWrite { page, byte } => {
                let p = m.pages.get_mut(&page)?;
                if !matches!(p.host, O | SO | SB) {
                    return None;
                }
                p.byte = byte;
            }
        }
        Some(m)
    }

    fn exec(&mut self, a: Act) -> Result<(), Errno> {
        let (o, t) = (&self.env.o, &mut self.env.tlb);
        let hs = self.hs;
        let ext = |b: bool| if b { Extent::Block } else { Extent::Page };
        let conv = |share: bool, gfn: u64, n: u64| Conversion {
            kind: if share {
                ConversionKind::Share
            } else {
                ConversionKind::Unshare
            },
            gfn: Gfn(gfn),
            pages: n,
        };
        match a {
            Act::ShareHyp(i) => o.host_share_hyp(pfn(i)),
            Act::UnshareHyp(i) => o.host_unshare_hyp(pfn(i)),
            Act::Pin(i) => o.hyp_pin_shared(pfn(i), 1),
            Act::Unpin(i) => o.hyp_unpin_shared(pfn(i), 1),
            Act::DonateHyp(i) => o.host_donate_hyp(t, pfn(i), 1),
            Act::HypDonateHost(i) => o.hyp_donate_host(t, pfn(i), 1),
            Act::ShareFfa(i) => o.host_share_ffa(pfn(i), 1),
            Act::UnshareFfa(i) => o.host_unshare_ffa(pfn(i), 1),
            Act::ShareGuest {
                vm,
                page,
                gfn,
                block,
            } => o.host_share_guest(t, hs[vm], pfn(page), Gfn(gfn), ext(block)),
            Act::UnshareGuest { vm, gfn, block } => {
                o.host_unshare_guest(t, hs[vm], Gfn(gfn), ext(block))
            }
            Act::DonateGuest {
                vm,
                page,
                gfn,
                block,
            } => o.host_donate_guest(t, hs[vm], pfn(page), Gfn(gfn), ext(block)),
            Act::GuestShare { vm, gfn, n } => o.guest_share_host(t, hs[vm], Gfn(gfn), n),
            Act::GuestUnshare { vm, gfn, n } => o.guest_unshare_host(t, hs[vm], Gfn(gfn), n),
            Act::Relinquish { vm, gfn, n } => o.guest_relinquish(t, hs[vm], Gfn(gfn), n),
            Act::Request { vm, share, gfn, n } => {
                o.guest_request_conversion(hs[vm], conv(share, gfn, n))
            }
            Act::Complete { vm, share, gfn, n } => {
                o.host_complete_conversion(t, hs[vm], conv(share, gfn, n))
            }
            Act::Refuse(vm) => o.host_refuse_conversion(hs[vm]).map(|_| ()),
            Act::StartTeardown(vm) => o.start_teardown(hs[vm]),
            Act::Reclaim { vm, gfn, block } => o.host_reclaim(t, hs[vm], Gfn(gfn), ext(block)),
            Act::ForceReclaim(i) => o.host_force_reclaim(t, pfn(i).addr().unwrap()),
            Act::FinishTeardown(vm) => o.finish_teardown(t, hs[vm]),
            Act::GuestWrite { vm, gfn, byte } => {
                let (_, p) = o.guest_state(hs[vm], Gfn(gfn))?;
                if let Some(p) = p {
                    self.env.ram.fill_page(p, byte);
                }
                Ok(())
            }
            Act::HostWrite { page, byte } => {
                if !matches!(self.env.host(RAM_PFN + page), O | SO | SB) {
                    return Err(Errno::Eperm);
                }
                self.env.ram.fill_page(pfn(page), byte);
                Ok(())
            }
        }
    }

    fn step(&mut self, a: Act) -> Result<(), TestCaseError> {
        let before = self.snapshot();
        let want = self.model(a);
        let got = self.exec(a);
        match (&want, got) {
            (Some(m), Ok(())) => self.m = m.clone(),
            (None, Err(_)) => {
                prop_assert_eq!(self.snapshot(), before, "failed {:?} changed something", a);
            }
            (w, g) => prop_assert!(
                false,
                "{:?}: model says {}, got {:?}",
                a,
                if w.is_some() { "ok" } else { "error" },
                g
            ),
        }
        // Every page and guest page matches the model.
        for i in window() {
            let mp = self.m.p(i);
            let e = self.env.o.page(pfn(i)).unwrap();
            let owner = match e.owner() {
                Owner::Host => MOwner::Host,
                Owner::Hyp => MOwner::Hyp,
                Owner::Guest { handle, gfn } => {
                    MOwner::Guest(self.hs.iter().position(|h| *h == handle).unwrap(), gfn.0)
                }
            };
            let got = (e.host(), e.hyp(), owner, e.share_count(), e.pins());
            prop_assert_eq!(
                got,
                (mp.host, mp.hyp, mp.owner, mp.shares, mp.pins),
                "page {:#x} after {:?}",
                i,
                a
            );
            let bytes = self.env.ram.read_page(pfn(i));
            prop_assert!(
                bytes.iter().all(|b| *b == mp.byte),
                "bytes of {:#x} after {:?}: {} want {}",
                i,
                a,
                bytes[0],
                mp.byte
            );
        }
        for vm in 0..2 {
            if self.m.guests[vm].gone {
                prop_assert_eq!(
                    self.env.o.guest_state(self.hs[vm], Gfn(GSINGLE)),
                    Err(Errno::Einval)
                );
                continue;
            }
            for g in gwindow() {
                let mg = self.m.g(vm, g);
                let (state, p) = self.env.o.guest_state(self.hs[vm], Gfn(g)).unwrap();
                prop_assert_eq!(
                    (state, p.map(|p| p.0 - RAM_PFN)),
                    (mg.state, mg.pfn),
                    "guest {} gfn {:#x} after {:?}",
                    vm,
                    g,
                    a
                );
            }
        }
        if let Err(v) = ownership::check::check(&self.env.o) {
            prop_assert!(false, "invariant after {:?}: {}", a, v);
        }
        Ok(())
    }
}

/// Most pages one guest call (share, unshare, relinquish) covers: a
/// whole 2 MiB block, written here rather than taken from the crate.
const GUEST_RANGE_LIMIT: u64 = 512;

/// A guest range covers 1 to `GUEST_RANGE_LIMIT` pages.
fn range_ok(n: u64) -> bool {
    (1..=GUEST_RANGE_LIMIT).contains(&n)
}

/// Guest share (O/N → SO/SB) or unshare (SO/SB → O/N) of `n` pages.
fn change_share(m: &mut Model, vm: usize, gfn: u64, n: u64, share: bool) -> Option<()> {
    if !range_ok(n) {
        return None;
    }
    let (from, to, host_to) = if share {
        (GuestPageState::Owned, GuestPageState::SharedOwned, SB)
    } else {
        (GuestPageState::SharedOwned, GuestPageState::Owned, N)
    };
    for k in 0..n {
        if m.g(vm, gfn + k).state != from {
            return None;
        }
    }
    for k in 0..n {
        let gp = m.guests[vm].pages.get_mut(&(gfn + k))?;
        gp.state = to;
        m.pages.get_mut(&gp.pfn?)?.host = host_to;
    }
    Some(())
}

/// A targeted range of `n` pages around the candidate `gfn`: the page
/// itself for a few pages; for a range near the limit, the start of its
/// 2 MiB block or the page after (so a 512-page range may cover a whole
/// block or straddle two: the blocks at `GBLOCK` are adjacent).
fn range_start(gfn: u64, n: u64, seed: usize) -> u64 {
    if n < 8 {
        gfn
    } else {
        (gfn & !511) + (seed as u64 / 7) % 2
    }
}

/// Keeps the counts at the limit and one either side; other counts become
/// one page, so that most targeted conversions can succeed.
fn small(n: u64) -> u64 {
    if (511..=513).contains(&n) { n } else { 1 }
}

/// Points an action at pages in the state it needs, so that most actions
/// exercise the success path; `seed` picks among the candidates.
fn retarget(m: &Model, a: Act, seed: usize) -> Act {
    let pick = |v: Vec<u64>| {
        if v.is_empty() {
            None
        } else {
            Some(v[seed % v.len()])
        }
    };
    let pages_where = |f: &dyn Fn(&MPage) -> bool| {
        pick(
            m.pages
                .iter()
                .filter(|(_, p)| f(p))
                .map(|(i, _)| *i)
                .collect(),
        )
    };
    let gfns_where = |vm: usize, f: &dyn Fn(&MGPage) -> bool| {
        pick(
            m.guests[vm]
                .pages
                .iter()
                .filter(|(_, p)| f(p))
                .map(|(g, _)| *g)
                .collect(),
        )
    };
    let live = |vm: usize| !m.guests[vm].gone;
    match a {
        Act::Pin(_) | Act::Unpin(_) | Act::UnshareHyp(_) => {
            let i = pages_where(&|p| (p.host, p.hyp) == (SO, SB));
            i.map_or(a, |i| match a {
                Act::Pin(_) => Act::Pin(i),
                Act::Unpin(_) => Act::Unpin(i),
                _ => Act::UnshareHyp(i),
            })
        }
        Act::UnshareFfa(_) => {
            pages_where(&|p| (p.host, p.hyp, p.shares, p.owner) == (SO, N, 0, MOwner::Host))
                .map_or(a, Act::UnshareFfa)
        }
        Act::HypDonateHost(_) => {
            pages_where(&|p| p.owner == MOwner::Hyp).map_or(a, Act::HypDonateHost)
        }
        Act::ForceReclaim(_) => {
            pages_where(&|p| matches!(p.owner, MOwner::Guest(..)) && p.host == N)
                .map_or(a, Act::ForceReclaim)
        }
        Act::GuestShare { vm, n, .. } | Act::Relinquish { vm, n, .. } if live(vm) => {
            let want = |p: &MGPage| p.state == GuestPageState::Owned;
            match (a, gfns_where(vm, &want)) {
                (Act::GuestShare { .. }, Some(gfn)) => Act::GuestShare {
                    vm,
                    gfn: range_start(gfn, n, seed),
                    n: small(n),
                },
                (Act::Relinquish { .. }, Some(gfn)) => Act::Relinquish {
                    vm,
                    gfn: range_start(gfn, n, seed),
                    n,
                },
                _ => a,
            }
        }
        Act::GuestUnshare { vm, n, .. } if live(vm) => gfns_where(vm, &|p| {
            p.state == GuestPageState::SharedOwned
        })
        .map_or(a, |gfn| Act::GuestUnshare {
            vm,
            gfn: range_start(gfn, n, seed),
            n: small(n),
        }),
        Act::Request { vm, share, n, .. } if live(vm) => {
            let from = if share {
                GuestPageState::Owned
            } else {
                GuestPageState::SharedOwned
            };
            gfns_where(vm, &|p| p.state == from).map_or(a, |gfn| Act::Request {
                vm,
                share,
                gfn: range_start(gfn, n, seed),
                n: small(n),
            })
        }
        Act::Complete { vm, .. } if live(vm) => match m.guests[vm].pending {
            Some(c) => Act::Complete {
                vm,
                share: c.kind == ConversionKind::Share,
                gfn: c.gfn.0,
                n: c.pages,
            },
            None => a,
        },
        Act::UnshareGuest { vm, .. } if live(vm) => {
            gfns_where(vm, &|p| p.state == GuestPageState::SharedBorrowed).map_or(a, |gfn| {
                let gp = m.g(vm, gfn);
                Act::UnshareGuest {
                    vm,
                    gfn: if gp.block_share { gfn & !511 } else { gfn },
                    block: gp.block_share,
                }
            })
        }
        Act::Reclaim { vm, block, .. } if live(vm) && m.guests[vm].dying => {
            gfns_where(vm, &|p| p.pfn.is_some()).map_or(a, |gfn| Act::Reclaim {
                vm,
                gfn: if block { gfn & !511 } else { gfn },
                block,
            })
        }
        _ => a,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_transitions_match_the_model(
        acts in prop::collection::vec((act(), any::<usize>(), prop::bool::weighted(0.7)), 1..80),
        pages_only in prop::bool::weighted(0.25),
    ) {
        let mut h = H::new(pages_only);
        for (a, seed, targeted) in acts {
            let a = if targeted { retarget(&h.m, a, seed) } else { a };
            h.step(a)?;
        }
    }
}
