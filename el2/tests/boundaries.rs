//! Guest range calls at the size limit, through the guest's HVCs on the
//! simulated machine: MEM_SHARE, MEM_UNSHARE and MEM_RELINQUISH with
//! x2 = 511, 512 (`MAX_GUEST_RANGE`), 513 and 600 pages. A call covers at
//! most 512 pages (DESIGN §4: "Ranges longer than 512 pages are done 512
//! at a time") and returns the pages done in x1; the pages past the first
//! 512 are left exactly as they were.
//!
//! The guest owns 514 consecutive pages: gfn 0x1ff (one page), the 2 MiB
//! block at gfn 0x200 and gfn 0x400 (one page), so every range below is
//! made of pages the call could take.

use el2::sim::{GuestOp, Machine, Reply};
use host_interface::abi::*;

const RAM: u64 = Machine::RAM_BASE >> 12;
const PGD: u64 = RAM + 0x100;
const META: u64 = RAM + 0x102;
const MC: u64 = RAM + 0x110;
/// Host frames: a 2 MiB-aligned block and two single pages.
const BLOCK: u64 = RAM + 0x200;
const BEFORE: u64 = RAM + 0x40;
const AFTER: u64 = RAM + 0x41;
/// Guest frames: the block's gfn; the guest owns `FIRST..=LAST`.
const GFN: u64 = 0x200;
const FIRST: u64 = GFN - 1;
const LAST: u64 = GFN + 512;

const INVAL: u64 = SMCCC_INVALID_PARAMETER as u64;

fn ok(r: Reply) -> [u64; 5] {
    assert!(r.is_ok(), "host call failed: {r:?}");
    r.vals
}

fn frame(gfn: u64) -> u64 {
    match gfn {
        FIRST => BEFORE,
        LAST => AFTER,
        g => BLOCK + (g - GFN),
    }
}

fn hvc(call: GuestCall, gfn: u64, pages: u64) -> GuestOp {
    GuestOp::Hvc {
        id: call.id(),
        args: [gfn << 12, pages, 0],
    }
}

/// A machine with one VM owning `FIRST..=LAST`, each page filled with a
/// byte of its own.
fn setup() -> (Machine, u64) {
    let mut m = Machine::new();
    let h = ok(m.call(HostCall::VmCreate, &[40, PGD, META, 1]))[0];
    ok(m.call(HostCall::VcpuInit, &[h, 0, 0, 0]));
    ok(m.call(HostCall::MemcacheTopup, &[h, MC, 32]));
    for g in FIRST..=LAST {
        m.host_fill_page(frame(g), byte(g)).unwrap();
    }
    ok(m.call(HostCall::DonateGuest, &[h, BLOCK, GFN, 512]));
    ok(m.call(HostCall::DonateGuest, &[h, BEFORE, FIRST, 1]));
    ok(m.call(HostCall::DonateGuest, &[h, AFTER, LAST, 1]));
    (m, h)
}

fn byte(gfn: u64) -> u8 {
    (gfn % 251) as u8 + 1
}

fn run(m: &mut Machine, h: u64) -> Exit {
    let r = m.call(HostCall::VcpuRun, &[h, 0]);
    r.exit().unwrap_or_else(|| panic!("run failed: {r:?}"))
}

/// Guest state and host state of every page the guest owns (as the
/// `GuestPageState` and `PageState` host calls encode them), and its first
/// byte. Read directly: through host calls, each read would run the
/// invariant checker.
fn snapshot(m: &Machine, h: u64) -> Vec<(u64, u64, u64, u8)> {
    let o = &m.hyp.mem;
    (FIRST..=LAST)
        .map(|g| {
            let (gs, pfn) = o
                .guest_state(ownership::GuestHandle(h as u16), ownership::Gfn(g))
                .unwrap();
            assert!(pfn.is_none_or(|p| p.0 == frame(g)), "gfn {g:#x} moved");
            let gs = match gs {
                ownership::GuestPageState::Owned => GuestState::Owned,
                ownership::GuestPageState::SharedOwned => GuestState::SharedOwned,
                ownership::GuestPageState::SharedBorrowed => GuestState::SharedBorrowed,
                ownership::GuestPageState::NoPage => GuestState::NoPage,
                ownership::GuestPageState::Poisoned => GuestState::Poisoned,
                ownership::GuestPageState::Relinquished => GuestState::Relinquished,
            };
            let hs = match o.page(ownership::Pfn(frame(g))).unwrap().host() {
                ownership::PageState::Owned => page_state::OWNED,
                ownership::PageState::SharedOwned => page_state::SHARED_OWNED,
                ownership::PageState::SharedBorrowed => page_state::SHARED_BORROWED,
                ownership::PageState::NoPage => page_state::NOPAGE,
            };
            let b = m.ram.read_page(ownership::Pfn(frame(g)))[0];
            (g, gs as u64, hs, b)
        })
        .collect()
}

/// `after` equals `before` but for `[gfn, gfn + n)`, which `f` maps.
fn assert_only(
    before: &[(u64, u64, u64, u8)],
    after: &[(u64, u64, u64, u8)],
    gfn: u64,
    n: u64,
    f: impl Fn((u64, u64, u64, u8)) -> (u64, u64, u64, u8),
) {
    for (b, a) in before.iter().zip(after) {
        let want = if (gfn..gfn + n).contains(&b.0) {
            f(*b)
        } else {
            *b
        };
        assert_eq!(*a, want, "[{gfn:#x}, +{n}): page {:#x}", b.0);
    }
}

/// Runs one MEM_SHARE or MEM_UNSHARE of `x2` pages from `gfn` through the
/// conversion protocol: the exit names `done` pages, nothing changes until
/// the host completes it, then exactly those pages change and the guest
/// gets x0 = 0, x1 = `done`.
fn convert(m: &mut Machine, h: u64, share: bool, gfn: u64, x2: u64, done: u64) {
    let call = if share {
        GuestCall::MemShare
    } else {
        GuestCall::MemUnshare
    };
    let what = format!("{call:?} x1 = {gfn:#x} << 12, x2 = {x2}");
    m.arch.script(
        ownership::GuestHandle(h as u16),
        0,
        vec![hvc(call, gfn, x2), GuestOp::Wfi],
    );
    let before = snapshot(m, h);
    let exit = run(m, h);
    let flags = if share {
        0
    } else {
        KVM_MEMORY_EXIT_FLAG_PRIVATE
    };
    assert_eq!(
        exit,
        Exit::MemoryFault {
            gpa: gfn << 12,
            size: done << 12,
            flags
        },
        "{what}"
    );
    assert_eq!(snapshot(m, h), before, "{what}: nothing before the host");
    ok(m.call(HostCall::ConvertComplete, &[h, gfn, done, u64::from(share)]));
    assert_eq!(run(m, h), Exit::Wfi, "{what}");
    assert_eq!(
        m.arch.hvc_result(0, 0).unwrap()[..2],
        [0, done],
        "{what}: x0 = SUCCESS, x1 = pages done"
    );
    let (gs, hs) = if share {
        (GuestState::SharedOwned as u64, page_state::SHARED_BORROWED)
    } else {
        (GuestState::Owned as u64, page_state::NOPAGE)
    };
    assert_only(&before, &snapshot(m, h), gfn, done, |(g, _, _, b)| {
        (g, gs, hs, b)
    });
    m.check();
}

#[test]
fn mem_share_and_unshare_of_512_pages_report_512_done() {
    let (mut m, h) = setup();
    convert(&mut m, h, true, GFN, 512, 512);
    convert(&mut m, h, false, GFN, 512, 512);
    // Off the block's alignment: one page before it and 511 of it.
    convert(&mut m, h, true, FIRST, 512, 512);
    convert(&mut m, h, false, FIRST, 512, 512);
}

#[test]
fn mem_share_and_unshare_of_more_than_512_pages_do_512() {
    for x2 in [513, 600, u64::MAX] {
        let (mut m, h) = setup();
        // Every one of the 514 pages could be shared: the call does 512
        // and the guest calls again for the rest.
        convert(&mut m, h, true, FIRST, x2, 512);
        convert(&mut m, h, true, LAST - 1, 2, 2);
        convert(&mut m, h, false, FIRST, x2, 512);
        convert(&mut m, h, false, LAST - 1, 2, 2);
    }
}

#[test]
fn mem_share_and_unshare_of_511_pages_and_of_0_pages() {
    let (mut m, h) = setup();
    convert(&mut m, h, true, GFN + 1, 511, 511);
    convert(&mut m, h, false, GFN + 1, 511, 511);
    // 0 means one page.
    convert(&mut m, h, true, GFN, 0, 1);
    convert(&mut m, h, false, GFN, 0, 1);
}

/// MEM_RELINQUISH of `x2` pages from `gfn`: done at EL2 at once; the exit
/// names `done` pages, the guest gets x1 = `done`, exactly those pages are
/// the host's (wiped: they were private) and the rest as before.
fn relinquish(m: &mut Machine, h: u64, gfn: u64, x2: u64, done: u64) {
    let what = format!("MEM_RELINQUISH x1 = {gfn:#x} << 12, x2 = {x2}");
    m.arch.script(
        ownership::GuestHandle(h as u16),
        0,
        vec![hvc(GuestCall::MemRelinquish, gfn, x2), GuestOp::Wfi],
    );
    let before = snapshot(m, h);
    assert_eq!(
        run(m, h),
        Exit::Relinquished {
            gpa: gfn << 12,
            size: done << 12
        },
        "{what}"
    );
    assert_eq!(run(m, h), Exit::Wfi, "{what}");
    assert_eq!(
        m.arch.hvc_result(0, 0).unwrap()[..2],
        [0, done],
        "{what}: x0 = SUCCESS, x1 = pages done"
    );
    let after = snapshot(m, h);
    assert_only(&before, &after, gfn, done, |(g, gs, hs, b)| {
        if gs == GuestState::Owned as u64 {
            (g, GuestState::Relinquished as u64, page_state::OWNED, 0)
        } else {
            // Already given back: stays so.
            (g, gs, hs, b)
        }
    });
    m.check();
}

#[test]
fn mem_relinquish_of_512_and_600_pages_reports_512_done() {
    for x2 in [512, 600] {
        let (mut m, h) = setup();
        relinquish(&mut m, h, GFN, x2, 512);
        let s = snapshot(&m, h);
        for i in [0, 513] {
            let g = FIRST + i;
            assert_eq!(
                s[i as usize],
                (g, GuestState::Owned as u64, page_state::NOPAGE, byte(g)),
                "x2 = {x2}"
            );
        }
    }
    for x2 in [512, 513, 600, u64::MAX] {
        // From the page before the block: 512 pages, the last one left.
        let (mut m, h) = setup();
        relinquish(&mut m, h, FIRST, x2, 512);
        let s = snapshot(&m, h);
        assert_eq!(s[511].1, GuestState::Relinquished as u64);
        for i in [512, 513] {
            let g = FIRST + i;
            assert_eq!(
                s[i as usize],
                (g, GuestState::Owned as u64, page_state::NOPAGE, byte(g)),
                "x2 = {x2}: pages past the 512th are untouched"
            );
        }
    }
}

#[test]
fn mem_relinquish_of_511_pages() {
    let (mut m, h) = setup();
    relinquish(&mut m, h, GFN + 1, 511, 511);
    let (mut m, h) = setup();
    relinquish(&mut m, h, FIRST, 511, 511);
}

#[test]
fn a_non_zero_reserved_register_refuses_every_range_call() {
    let (mut m, h) = setup();
    let before = snapshot(&m, h);
    let calls = [
        GuestCall::MemShare,
        GuestCall::MemUnshare,
        GuestCall::MemRelinquish,
    ];
    let mut ops = Vec::new();
    for call in calls {
        for (gfn, x2) in [(GFN, 512), (GFN, 1), (FIRST, 513)] {
            for x3 in [1, 1 << 63] {
                ops.push(GuestOp::Hvc {
                    id: call.id(),
                    args: [gfn << 12, x2, x3],
                });
            }
        }
    }
    let n = ops.len();
    m.arch.script(ownership::GuestHandle(h as u16), 0, ops);
    assert_eq!(run(&mut m, h), Exit::SystemEvent { kind: 0 });
    for step in 0..n {
        assert_eq!(
            m.arch.hvc_result(0, step).unwrap()[..2],
            [INVAL, 0],
            "step {step}"
        );
    }
    assert_eq!(snapshot(&m, h), before);
    m.check();
}
