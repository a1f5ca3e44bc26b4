//! pKVM's `pkvm_ownership_selftest()` table (pkvm.md §6, 103 rows), as
//! data, run row by row against the ownership crate; then new rows for
//! relinquish, conversions, forced reclaim and 2 MiB blocks. After every row
//! the result, the host/hyp/guest states and every invariant are checked.
//!
//! Set-up as in pKVM: the test page starts hypervisor-owned (it comes from
//! the carve-out); one guest; `gfn = BIT(ia_bits - 1) >> 12` and `gfn + 1`.
//! Deviation: pKVM's selftest calls the reclaim function directly, without
//! the "VM is dying" check its hypercall makes; here reclaim goes through
//! the same checks as the host's call, so the runner starts the guest's
//! teardown before the first reclaim row.

mod common;
use common::*;
use ownership::*;

#[derive(Clone, Copy, Debug)]
enum T {
    Assert,
    DonateHyp,
    HypDonateHost,
    ShareHyp,
    UnshareHyp,
    ShareFfa,
    UnshareFfa,
    Pin,
    Unpin { pins_after: u16 },
    ShareGuest(u64),
    UnshareGuest(u64),
    DonateGuest(u64),
    GuestShareHost(u64),
    GuestUnshareHost(u64),
    ForceReclaim,
    Reclaim(u64),
    // New rows.
    Relinquish(u64),
    RequestShare(u64),
    RequestUnshare(u64),
    CompleteShare(u64),
    CompleteUnshare(u64),
    Refuse,
    GuestFill(u8),
    ShareGuestBlock,
    UnshareGuestBlock,
    DonateGuestBlock,
    ReclaimBlock,
}
use T::*;

#[derive(Clone, Copy, Debug)]
struct Row {
    num: u32,
    op: T,
    expect: Result<(), Errno>,
    after: &'static str,
    shares: Option<u32>,
    pins: Option<u16>,
    zeroed: bool,
    kept: Option<u8>,
}

const fn row(num: u32, op: T, expect: Result<(), Errno>, after: &'static str) -> Row {
    Row {
        num,
        op,
        expect,
        after,
        shares: None,
        pins: None,
        zeroed: false,
        kept: None,
    }
}

impl Row {
    const fn shares(self, n: u32) -> Row {
        Row {
            shares: Some(n),
            ..self
        }
    }
    const fn pins(self, n: u16) -> Row {
        Row {
            pins: Some(n),
            ..self
        }
    }
    const fn zeroed(self) -> Row {
        Row {
            zeroed: true,
            ..self
        }
    }
    /// The page still holds `byte` (contents kept).
    const fn kept(self, byte: u8) -> Row {
        Row {
            kept: Some(byte),
            ..self
        }
    }
}

/// pkvm.md §6, rows 0–102, exactly as documented.
const PKVM_TABLE: &[Row] = &[
    row(0, Assert, Ok(()), "N/O/N/N"),
    row(1, DonateHyp, Err(Errno::Eperm), "N/O/N/N"),
    row(2, ShareHyp, Err(Errno::Eperm), "N/O/N/N"),
    row(3, UnshareHyp, Err(Errno::Eperm), "N/O/N/N"),
    row(4, ShareFfa, Err(Errno::Eperm), "N/O/N/N"),
    row(5, UnshareFfa, Err(Errno::Eperm), "N/O/N/N"),
    row(6, Pin, Err(Errno::Eperm), "N/O/N/N"),
    row(7, ShareGuest(0), Err(Errno::Eperm), "N/O/N/N"),
    row(8, UnshareGuest(0), Err(Errno::Enoent), "N/O/N/N"),
    row(9, DonateGuest(0), Err(Errno::Eperm), "N/O/N/N"),
    row(10, HypDonateHost, Ok(()), "O/N/N/N"),
    row(11, HypDonateHost, Err(Errno::Eperm), "O/N/N/N"),
    row(12, UnshareHyp, Err(Errno::Eperm), "O/N/N/N"),
    row(13, UnshareFfa, Err(Errno::Eperm), "O/N/N/N"),
    row(14, UnshareGuest(0), Err(Errno::Enoent), "O/N/N/N"),
    row(15, Pin, Err(Errno::Eperm), "O/N/N/N"),
    row(16, ShareHyp, Ok(()), "SO/SB/N/N"),
    row(17, ShareHyp, Err(Errno::Eperm), "SO/SB/N/N"),
    row(18, DonateHyp, Err(Errno::Eperm), "SO/SB/N/N"),
    row(19, ShareFfa, Err(Errno::Eperm), "SO/SB/N/N"),
    row(20, HypDonateHost, Err(Errno::Eperm), "SO/SB/N/N"),
    row(21, ShareGuest(0), Err(Errno::Eperm), "SO/SB/N/N"),
    row(22, UnshareGuest(0), Err(Errno::Enoent), "SO/SB/N/N"),
    row(23, DonateGuest(0), Err(Errno::Eperm), "SO/SB/N/N"),
    row(24, Pin, Ok(()), "SO/SB/N/N").pins(1),
    row(25, Pin, Ok(()), "SO/SB/N/N").pins(2),
    row(26, Unpin { pins_after: 1 }, Ok(()), "SO/SB/N/N"),
    row(27, UnshareHyp, Err(Errno::Ebusy), "SO/SB/N/N"),
    row(28, ShareHyp, Err(Errno::Eperm), "SO/SB/N/N"),
    row(29, DonateHyp, Err(Errno::Eperm), "SO/SB/N/N"),
    row(30, ShareFfa, Err(Errno::Eperm), "SO/SB/N/N"),
    row(31, HypDonateHost, Err(Errno::Eperm), "SO/SB/N/N"),
    row(32, ShareGuest(0), Err(Errno::Eperm), "SO/SB/N/N"),
    row(33, UnshareGuest(0), Err(Errno::Enoent), "SO/SB/N/N"),
    row(34, DonateGuest(0), Err(Errno::Eperm), "SO/SB/N/N"),
    row(35, Unpin { pins_after: 0 }, Ok(()), "SO/SB/N/N"),
    row(36, UnshareHyp, Ok(()), "O/N/N/N"),
    row(37, ShareFfa, Ok(()), "SO/N/N/N"),
    row(38, ShareFfa, Err(Errno::Eperm), "SO/N/N/N"),
    row(39, DonateHyp, Err(Errno::Eperm), "SO/N/N/N"),
    row(40, ShareHyp, Err(Errno::Eperm), "SO/N/N/N"),
    row(41, UnshareHyp, Err(Errno::Eperm), "SO/N/N/N"),
    row(42, HypDonateHost, Err(Errno::Eperm), "SO/N/N/N"),
    row(43, ShareGuest(0), Err(Errno::Eperm), "SO/N/N/N"),
    row(44, UnshareGuest(0), Err(Errno::Enoent), "SO/N/N/N"),
    row(45, DonateGuest(0), Err(Errno::Eperm), "SO/N/N/N"),
    row(46, Pin, Err(Errno::Eperm), "SO/N/N/N"),
    row(47, UnshareFfa, Ok(()), "O/N/N/N"),
    row(48, UnshareFfa, Err(Errno::Eperm), "O/N/N/N"),
    row(49, ShareGuest(0), Ok(()), "SO/N/SB/N"),
    row(50, ShareGuest(0), Err(Errno::Eperm), "SO/N/SB/N"),
    row(51, ShareFfa, Err(Errno::Eperm), "SO/N/SB/N"),
    row(52, DonateHyp, Err(Errno::Eperm), "SO/N/SB/N"),
    row(53, ShareHyp, Err(Errno::Eperm), "SO/N/SB/N"),
    row(54, UnshareHyp, Err(Errno::Eperm), "SO/N/SB/N"),
    row(55, HypDonateHost, Err(Errno::Eperm), "SO/N/SB/N"),
    row(56, DonateGuest(0), Err(Errno::Eperm), "SO/N/SB/N"),
    row(57, Pin, Err(Errno::Eperm), "SO/N/SB/N"),
    row(58, ShareGuest(1), Ok(()), "SO/N/SB/SB").shares(2),
    row(59, UnshareGuest(0), Ok(()), "SO/N/N/SB").shares(1),
    row(60, UnshareGuest(1), Ok(()), "O/N/N/N"),
    row(61, DonateGuest(0), Ok(()), "N/N/O/N"),
    row(62, DonateGuest(0), Err(Errno::Eperm), "N/N/O/N"),
    row(63, DonateGuest(1), Err(Errno::Eperm), "N/N/O/N"),
    row(64, ShareGuest(0), Err(Errno::Eperm), "N/N/O/N"),
    row(65, ShareGuest(1), Err(Errno::Eperm), "N/N/O/N"),
    row(66, ShareFfa, Err(Errno::Eperm), "N/N/O/N"),
    row(67, DonateHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(68, ShareHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(69, UnshareHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(70, HypDonateHost, Err(Errno::Eperm), "N/N/O/N"),
    row(71, GuestShareHost(0), Ok(()), "SB/N/SO/N"),
    row(72, GuestShareHost(0), Err(Errno::Eperm), "SB/N/SO/N"),
    row(73, DonateGuest(0), Err(Errno::Eperm), "SB/N/SO/N"),
    row(74, DonateGuest(1), Err(Errno::Eperm), "SB/N/SO/N"),
    row(75, ShareGuest(0), Err(Errno::Eperm), "SB/N/SO/N"),
    row(76, ShareGuest(1), Err(Errno::Eperm), "SB/N/SO/N"),
    row(77, ShareFfa, Err(Errno::Eperm), "SB/N/SO/N"),
    row(78, DonateHyp, Err(Errno::Eperm), "SB/N/SO/N"),
    row(79, ShareHyp, Err(Errno::Eperm), "SB/N/SO/N"),
    row(80, UnshareHyp, Err(Errno::Eperm), "SB/N/SO/N"),
    row(81, HypDonateHost, Err(Errno::Eperm), "SB/N/SO/N"),
    row(82, GuestUnshareHost(0), Ok(()), "N/N/O/N"),
    row(83, GuestUnshareHost(0), Err(Errno::Eperm), "N/N/O/N"),
    row(84, DonateGuest(0), Err(Errno::Eperm), "N/N/O/N"),
    row(85, DonateGuest(1), Err(Errno::Eperm), "N/N/O/N"),
    row(86, ShareGuest(0), Err(Errno::Eperm), "N/N/O/N"),
    row(87, ShareGuest(1), Err(Errno::Eperm), "N/N/O/N"),
    row(88, ShareFfa, Err(Errno::Eperm), "N/N/O/N"),
    row(89, DonateHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(90, ShareHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(91, UnshareHyp, Err(Errno::Eperm), "N/N/O/N"),
    row(92, HypDonateHost, Err(Errno::Eperm), "N/N/O/N"),
    row(93, ForceReclaim, Ok(()), "O/N/P/N").zeroed(),
    row(94, DonateGuest(0), Err(Errno::Eperm), "O/N/P/N"),
    row(95, ShareGuest(0), Err(Errno::Eperm), "O/N/P/N"),
    row(96, GuestShareHost(0), Err(Errno::Ehwpoison), "O/N/P/N"),
    row(97, GuestUnshareHost(0), Err(Errno::Ehwpoison), "O/N/P/N"),
    row(98, DonateGuest(1), Ok(()), "N/N/P/O"),
    row(99, Reclaim(1), Ok(()), "O/N/P/N").zeroed(),
    row(100, DonateGuest(0), Err(Errno::Eperm), "O/N/P/N"),
    row(101, ShareGuest(0), Err(Errno::Eperm), "O/N/P/N"),
    row(102, DonateHyp, Ok(()), "N/O/P/N"),
];

/// New rows: relinquish, guest-requested conversions, forced reclaim and
/// poison, on the same page and guest, starting from N/O/N/N.
const EXTRA_TABLE: &[Row] = &[
    row(200, Assert, Ok(()), "N/O/N/N"),
    row(201, HypDonateHost, Ok(()), "O/N/N/N"),
    row(202, DonateGuest(0), Ok(()), "N/N/O/N"),
    row(203, GuestFill(0x5a), Ok(()), "N/N/O/N"),
    // Conversions: a request alone changes nothing; completion must match.
    row(204, CompleteShare(0), Err(Errno::Eperm), "N/N/O/N"),
    row(205, RequestUnshare(0), Err(Errno::Eperm), "N/N/O/N"),
    row(206, RequestShare(1), Err(Errno::Enoent), "N/N/O/N"),
    row(207, RequestShare(0), Ok(()), "N/N/O/N"),
    row(208, RequestShare(0), Err(Errno::Ebusy), "N/N/O/N"),
    row(209, CompleteUnshare(0), Err(Errno::Eperm), "N/N/O/N"),
    row(210, CompleteShare(1), Err(Errno::Eperm), "N/N/O/N"),
    row(211, CompleteShare(0), Ok(()), "SB/N/SO/N").kept(0x5a),
    row(212, CompleteShare(0), Err(Errno::Eperm), "SB/N/SO/N"),
    row(213, Refuse, Err(Errno::Eperm), "SB/N/SO/N"),
    row(214, RequestUnshare(0), Ok(()), "SB/N/SO/N"),
    row(215, Refuse, Ok(()), "SB/N/SO/N"),
    row(216, CompleteUnshare(0), Err(Errno::Eperm), "SB/N/SO/N"),
    row(217, RequestUnshare(0), Ok(()), "SB/N/SO/N"),
    row(218, CompleteUnshare(0), Ok(()), "N/N/O/N").kept(0x5a),
    // Relinquish of a private page: zeroed, host-owned, IPA relinquished.
    row(219, Relinquish(0), Ok(()), "O/N/R/N").zeroed(),
    row(220, Relinquish(0), Ok(()), "O/N/R/N"),
    row(221, GuestShareHost(0), Err(Errno::Enoent), "O/N/R/N"),
    row(222, ShareHyp, Ok(()), "SO/SB/R/N"),
    row(223, DonateGuest(0), Err(Errno::Eperm), "SO/SB/R/N"),
    row(224, UnshareHyp, Ok(()), "O/N/R/N"),
    // A relinquished IPA takes a new page.
    row(225, DonateGuest(0), Ok(()), "N/N/O/N"),
    row(226, GuestFill(0x77), Ok(()), "N/N/O/N"),
    row(227, GuestShareHost(0), Ok(()), "SB/N/SO/N"),
    // Relinquish of a shared page: contents kept.
    row(228, Relinquish(0), Ok(()), "O/N/R/N").kept(0x77),
    // A page the host lent cannot be relinquished.
    row(229, ShareGuest(1), Ok(()), "SO/N/R/SB").shares(1),
    row(230, Relinquish(1), Err(Errno::Eperm), "SO/N/R/SB"),
    row(231, UnshareGuest(1), Ok(()), "O/N/R/N"),
    // Forced reclaim: only of a guest-private page.
    row(232, ForceReclaim, Err(Errno::Eagain), "O/N/R/N"),
    row(233, DonateGuest(1), Ok(()), "N/N/R/O"),
    row(234, GuestFill(0x33), Ok(()), "N/N/R/O"),
    row(235, ForceReclaim, Ok(()), "O/N/R/P").zeroed(),
    row(236, ForceReclaim, Err(Errno::Eagain), "O/N/R/P"),
    row(237, RequestShare(1), Err(Errno::Ehwpoison), "O/N/R/P"),
    row(238, Relinquish(1), Err(Errno::Ehwpoison), "O/N/R/P"),
    row(239, ShareGuest(1), Err(Errno::Eperm), "O/N/R/P"),
    row(240, DonateGuest(0), Ok(()), "N/N/O/P"),
    row(241, GuestShareHost(0), Ok(()), "SB/N/SO/P"),
    row(242, ForceReclaim, Err(Errno::Eagain), "SB/N/SO/P"),
    // Reclaim after teardown starts: shared pages keep their contents.
    row(243, GuestFill(0x42), Ok(()), "SB/N/SO/P"),
    row(244, Reclaim(0), Ok(()), "O/N/N/P").kept(0x42),
    row(245, Reclaim(1), Ok(()), "O/N/N/P"),
    row(246, Reclaim(0), Err(Errno::Enoent), "O/N/N/P"),
    row(247, DonateHyp, Ok(()), "N/O/N/P"),
];

/// New rows for 2 MiB blocks, on a 2 MiB-aligned host block and guest
/// range; states are of the block's first page and of gfn, gfn + 1.
const BLOCK_TABLE: &[Row] = &[
    row(300, Assert, Ok(()), "O/N/N/N"),
    row(301, ShareGuestBlock, Ok(()), "SO/N/SB/SB").shares(1),
    row(302, ShareGuestBlock, Err(Errno::Eperm), "SO/N/SB/SB"),
    row(303, UnshareGuest(0), Err(Errno::E2big), "SO/N/SB/SB"),
    row(304, UnshareGuest(1), Err(Errno::E2big), "SO/N/SB/SB"),
    row(305, DonateGuestBlock, Err(Errno::Eperm), "SO/N/SB/SB"),
    row(306, UnshareGuestBlock, Ok(()), "O/N/N/N"),
    row(307, UnshareGuestBlock, Err(Errno::Enoent), "O/N/N/N"),
    row(308, ShareGuest(1), Ok(()), "O/N/N/SB"),
    row(309, UnshareGuestBlock, Err(Errno::Enoent), "O/N/N/SB"),
    row(310, UnshareGuest(1), Ok(()), "O/N/N/N"),
    row(311, ShareGuest(0), Ok(()), "SO/N/SB/N"),
    row(312, DonateGuestBlock, Err(Errno::Eperm), "SO/N/SB/N"),
    row(313, UnshareGuestBlock, Err(Errno::E2big), "SO/N/SB/N"),
    row(314, UnshareGuest(0), Ok(()), "O/N/N/N"),
    row(315, DonateGuestBlock, Ok(()), "N/N/O/O"),
    row(316, DonateGuestBlock, Err(Errno::Eperm), "N/N/O/O"),
    row(317, GuestFill(0x11), Ok(()), "N/N/O/O"),
    // One page of the block shared back: the guest block splits.
    row(318, GuestShareHost(1), Ok(()), "N/N/O/SO").kept(0x11),
    row(319, GuestUnshareHost(1), Ok(()), "N/N/O/O"),
    row(320, Relinquish(1), Ok(()), "N/N/O/R"),
    row(321, DonateGuest(1), Err(Errno::Eperm), "N/N/O/R"),
    row(322, ReclaimBlock, Ok(()), "O/N/N/N").zeroed(),
    row(323, ReclaimBlock, Err(Errno::Enoent), "O/N/N/N"),
];

struct Runner {
    env: Env,
    h: GuestHandle,
    pfn: u64,
    gfn: u64,
    /// Frame offset between the pages mapped at gfn and gfn + 1: 0 in
    /// pKVM's table (one test page), 1 in the block table.
    step: u64,
    rows: usize,
}

impl Runner {
    fn new(pfn: u64) -> Runner {
        let mut env = Env::new();
        // Guest root and memcache from ordinary host RAM.
        let h = env.guest(RAM_PFN + 0x100, RAM_PFN + 0x110, 32);
        Runner {
            env,
            h,
            pfn,
            gfn: (1u64 << 39) >> 12,
            step: 0,
            rows: 0,
        }
    }

    fn exec(&mut self, op: T) -> Result<(), Errno> {
        let step = self.step;
        let frame = self.guest_frame();
        let (o, tlb, h) = (&self.env.o, &mut self.env.tlb, self.h);
        let pfn = Pfn(self.pfn);
        let g = |d: u64| Gfn(self.gfn + d);
        let conv = |kind, d| Conversion {
            kind,
            gfn: g(d),
            pages: 1,
        };
        match op {
            Assert => Ok(()),
            DonateHyp => o.host_donate_hyp(tlb, pfn, 1),
            HypDonateHost => o.hyp_donate_host(tlb, pfn, 1),
            ShareHyp => o.host_share_hyp(pfn),
            UnshareHyp => o.host_unshare_hyp(pfn),
            ShareFfa => o.host_share_ffa(pfn, 1),
            UnshareFfa => o.host_unshare_ffa(pfn, 1),
            Pin => o.hyp_pin_shared(pfn, 1),
            Unpin { .. } => o.hyp_unpin_shared(pfn, 1),
            ShareGuest(d) => {
                o.host_share_guest(tlb, h, Pfn(pfn.0 + d % 2 * step), g(d), Extent::Page)
            }
            UnshareGuest(d) => o.host_unshare_guest(tlb, h, g(d), Extent::Page),
            DonateGuest(d) => o.host_donate_guest(tlb, h, pfn, g(d), Extent::Page),
            GuestShareHost(d) => o.guest_share_host(tlb, h, g(d), 1),
            GuestUnshareHost(d) => o.guest_unshare_host(tlb, h, g(d), 1),
            ForceReclaim => {
                // The page the row is about: the one the guest holds, if any.
                let target = frame.unwrap_or(pfn);
                o.host_force_reclaim(tlb, target.addr().unwrap())
            }
            Reclaim(d) => {
                let _ = o.start_teardown(h);
                o.host_reclaim(tlb, h, g(d), Extent::Page)
            }
            Relinquish(d) => o.guest_relinquish(tlb, h, g(d), 1),
            RequestShare(d) => o.guest_request_conversion(h, conv(ConversionKind::Share, d)),
            RequestUnshare(d) => o.guest_request_conversion(h, conv(ConversionKind::Unshare, d)),
            CompleteShare(d) => o.host_complete_conversion(tlb, h, conv(ConversionKind::Share, d)),
            CompleteUnshare(d) => {
                o.host_complete_conversion(tlb, h, conv(ConversionKind::Unshare, d))
            }
            Refuse => o.host_refuse_conversion(h).map(|_| ()),
            GuestFill(byte) => {
                // The guest writes its page(s).
                for d in 0..2 {
                    if let (_, Some(p)) = o.guest_state(h, g(d)).unwrap() {
                        self.env.ram.fill_page(p, byte);
                    }
                }
                Ok(())
            }
            ShareGuestBlock => o.host_share_guest(tlb, h, pfn, g(0), Extent::Block),
            UnshareGuestBlock => o.host_unshare_guest(tlb, h, g(0), Extent::Block),
            DonateGuestBlock => o.host_donate_guest(tlb, h, pfn, g(0), Extent::Block),
            ReclaimBlock => {
                let _ = o.start_teardown(h);
                o.host_reclaim(tlb, h, g(0), Extent::Block)
            }
        }
    }

    /// The frame the guest maps at gfn or gfn + 1 that is the test page.
    fn guest_frame(&self) -> Option<Pfn> {
        (0..2).find_map(|d| self.env.o.guest_state(self.h, Gfn(self.gfn + d)).ok()?.1)
    }

    fn run(&mut self, table: &[Row]) {
        for r in table {
            let before = self.env.states(self.pfn, self.h, self.gfn);
            if r.zeroed {
                // Give the guest's page contents worth wiping.
                let _ = self.exec(GuestFill(0xee));
            }
            let got = self.exec(r.op);
            let after = self.env.states(self.pfn, self.h, self.gfn);
            assert_eq!(
                got, r.expect,
                "row {} {:?}: result (states {before} -> {after})",
                r.num, r.op
            );
            assert_eq!(after, r.after, "row {} {:?}: states after", r.num, r.op);
            if r.expect.is_err() {
                assert_eq!(before, after, "row {}: a failed call changed states", r.num);
            }
            let e = self.env.o.page(Pfn(self.pfn)).unwrap();
            if let Some(n) = r.shares {
                assert_eq!(e.share_count(), n, "row {}: share count", r.num);
            }
            if let Some(n) = r.pins {
                assert_eq!(e.pins(), n, "row {}: pins", r.num);
            }
            if let Unpin { pins_after } = r.op {
                assert_eq!(e.pins(), pins_after, "row {}: pins after unpin", r.num);
            }
            if r.zeroed {
                assert!(
                    self.env.page_is(self.pfn, 0),
                    "row {}: page not zeroed",
                    r.num
                );
            }
            if let Some(b) = r.kept {
                assert!(
                    self.env.page_is(self.pfn, b),
                    "row {}: contents not kept",
                    r.num
                );
            }
            self.env.check();
            self.rows += 1;
        }
    }
}

#[test]
fn pkvm_selftest_table() {
    assert_eq!(PKVM_TABLE.len(), 103);
    let mut r = Runner::new(CARVE_PFN);
    r.run(PKVM_TABLE);
    println!("pkvm selftest table: {} rows ran", r.rows);
    assert_eq!(r.rows, 103);
}

#[test]
fn new_rows_relinquish_conversions_poison() {
    let mut r = Runner::new(CARVE_PFN);
    r.run(EXTRA_TABLE);
    println!("extra rows: {} rows ran", r.rows);
    // Teardown completes once nothing is mapped (gfn + 1 is poisoned only).
    let h = r.h;
    r.env.o.finish_teardown(&mut r.env.tlb, h).unwrap();
    r.env.check();
}

#[test]
fn new_rows_two_mib_blocks() {
    // A 2 MiB-aligned host block inside RAM.
    let mut r = Runner::new(RAM_PFN + 0x400);
    r.gfn = ((1u64 << 39) >> 12) + 0x200;
    r.step = 1;
    r.run(BLOCK_TABLE);
    println!("block rows: {} rows ran", r.rows);
    for i in 0..512 {
        assert!(r.env.page_is(RAM_PFN + 0x400 + i, 0), "page {i} not zeroed");
    }
}
