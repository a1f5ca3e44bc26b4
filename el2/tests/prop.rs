//! Property test: random host calls and guest actions across two VMs on
//! the simulated machine, each checked against a reference model.
//!
//! The model below is written from DESIGN.md (§2 transitions, §4 guest
//! ABI, §5 conversions), the ABI table of `host_interface::abi` and the
//! documented behaviour of el2's calls (`el2/src/hyp/`: host call decoding,
//! PSCI at EL2, the CPU_ON flow, MMIO_GUARD). It keeps page ownership (host
//! and hypervisor views, owner, share count, page bytes), each VM's
//! lifecycle (live, dying, gone; its pending conversion; its MMIO guard),
//! and each vCPU's power, what its last exit left pending, the guest's
//! x0..x3 and its place in its script. For every step it predicts, and the
//! test asserts:
//! - for every host call: the SMCCC status, the result (0 or the exact
//!   -errno) and, on success, the values (for `VcpuRun`, the exit);
//! - for every guest call: x0..x3 when it returns (x0 = status, x1 = pages
//!   done for the range calls), every load's value, every completed store;
//!   the entry point and x0 a started vCPU runs from;
//! - for the host's own stores: which ones fault.
//!
//! After every step, every page's ownership entry and bytes, every guest
//! page's state and frame, each VM's pending conversion and teardown state,
//! and each vCPU's power and pending exit must equal the model's; the
//! ownership invariant checker runs after every host call
//! (`Machine::call`).
//!
//! Each case starts with the host giving the VMs some memory; most steps
//! are then aimed (from the model) at pages, requests and vCPUs in the
//! state they need, so the success paths run as often as the refusals;
//! the rest go anywhere. Guest range calls draw their page count from 1,
//! 2, 0, 511, 512, 513, 600 and anything.
//!
//! Not modelled: `HostStats`' values (host stage-2 leaf counts), the bytes
//! of pages the hypervisor holds (memcache pages carry its free list), and
//! creating VMs (both are created up front; `VmCreate` only appears with a
//! non-zero register beyond its arity).

use el2::hyp::Completion;
use el2::hyp::vm::{Outcome, Power, Waiting};
use el2::sim::{GuestOp, Machine, SimEvent};
use host_interface::abi::errno::{E2BIG, EAGAIN, EBUSY, EFAULT, EHWPOISON, EINVAL, ENOENT, EPERM};
use host_interface::abi::*;
use ownership::{
    Conversion, ConversionKind, Gfn, GuestHandle, GuestPageState as GS, Owner, PageState as PS, Pfn,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const RAM: u64 = Machine::RAM_BASE >> 12;
const RAM_END: u64 = RAM + Machine::RAM_PAGES;
/// First page of the hypervisor's carve-out.
const CARVE: u64 = RAM_END - Machine::CARVE_PAGES;
/// Host pages the steps use: four single pages and a 2 MiB-aligned block.
const SINGLES: [u64; 4] = [RAM + 0x40, RAM + 0x41, RAM + 0x42, RAM + 0x43];
const BLOCK: u64 = RAM + 0x200;
/// Guest pages the steps use (0x200 and 0x80000 are 2 MiB-aligned).
const GFNS: [u64; 6] = [0x80000, 0x80001, 0x80002, 0x200, 0x201, 0x3ff];
/// First gfn past a 40-bit IPA space.
const GFN_LIMIT: u64 = 1 << 28;
/// An IPA the host would emulate (the PL011 of QEMU's virt), as a gfn.
const MMIO_GFN: u64 = 0x9000;
/// Where the guest's 8-byte stores go: never guest memory (no host call
/// or guest range reaches it), so every store is an MMIO exit.
const STORE_GFN: u64 = 0x9_0000;
/// Most pages one guest range call covers (DESIGN §4: ranges longer than
/// 512 pages are done 512 at a time).
const GUEST_RANGE: u64 = 512;
/// The two VMs: root, metadata, memcache (`MC_PAGES`), vCPUs.
const VMS: [(u64, u64, u64, u64); 2] = [
    (RAM + 0x100, RAM + 0x108, RAM + 0x110, 2),
    (RAM + 0x104, RAM + 0x10c, RAM + 0x130, 1),
];
const MC_PAGES: u64 = 32;
const HANDLE0: u64 = 0x1000;

// SMCCC / PSCI function ids and answers (Arm DEN0022, DEN0028).
const SMCCC_VERSION: u32 = 0x8000_0000;
const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
const PSCI_VERSION: u32 = 0x8400_0000;
const CPU_SUSPEND: u32 = 0x8400_0001;
const CPU_OFF: u32 = 0x8400_0002;
const CPU_ON: u32 = 0x8400_0003;
const AFFINITY_INFO: u32 = 0x8400_0004;
const MIGRATE: u32 = 0x8400_0005;
const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
const SYSTEM_OFF: u32 = 0x8400_0008;
const SYSTEM_RESET: u32 = 0x8400_0009;
const PSCI_FEATURES: u32 = 0x8400_000a;
const SYSTEM_RESET2: u32 = 0x8400_0012;
const SMC64: u32 = 0x4000_0000;
const V1_1: u64 = 0x1_0001;
const PSCI_INVALID_PARAMETERS: i64 = -2;
const PSCI_ALREADY_ON: i64 = -4;
const PSCI_ON_PENDING: i64 = -5;
const PSCI_INTERNAL_FAILURE: i64 = -6;
const PSCI_INVALID_ADDRESS: i64 = -9;

fn neg(v: i64) -> u64 {
    v as u64
}

// ---------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MOwner {
    Host,
    Hyp,
    Guest(usize, u64),
}

/// One page of RAM: the ownership entry and the byte every byte of the
/// page holds (`None`: not tracked).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct MPage {
    host: PS,
    hyp: PS,
    owner: MOwner,
    shares: u32,
    byte: Option<u8>,
}

impl MPage {
    const HOST: MPage = MPage {
        host: PS::Owned,
        hyp: PS::NoPage,
        owner: MOwner::Host,
        shares: 0,
        byte: Some(0),
    };
    const HYP: MPage = MPage {
        host: PS::NoPage,
        hyp: PS::Owned,
        owner: MOwner::Hyp,
        shares: 0,
        byte: None,
    };

    /// The host owns it and has lent it to nobody.
    fn host_owned(&self) -> bool {
        (self.host, self.hyp, self.owner, self.shares) == (PS::Owned, PS::NoPage, MOwner::Host, 0)
    }

    /// The host's alone again, holding `byte`.
    fn host_again(byte: Option<u8>) -> MPage {
        MPage {
            byte,
            ..MPage::HOST
        }
    }
}

/// One guest page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct MGPage {
    state: GS,
    pfn: Option<u64>,
    /// Part of a 2 MiB host share (unshared only as a block).
    block_share: bool,
}

const EMPTY: MGPage = MGPage {
    state: GS::NoPage,
    pfn: None,
    block_share: false,
};

fn mapped(s: GS) -> bool {
    matches!(s, GS::Owned | GS::SharedOwned | GS::SharedBorrowed)
}

#[derive(Clone, Debug, Default)]
struct MVcpu {
    power: Power,
    waiting: Waiting,
    /// Entry point and context id of a pending CPU_ON of this vCPU.
    boot: (u64, u64),
    /// The guest's x0..x3.
    x: [u64; 4],
    /// The script the simulated CPU runs (`None`: none given).
    ops: Option<Vec<GuestOp>>,
    /// The next op: the vCPU's PC relative to where its script started.
    pc: u64,
    /// The op whose trap is outstanding (the simulator reports how it ended
    /// when the vCPU next runs).
    trapped: Option<usize>,
    /// The script has run (its start PC is fixed).
    based: bool,
    /// Reset since its script was given: it needs a new one.
    reset: bool,
    /// Where the last reset started it: checked at the next script's
    /// first run.
    entry: Option<(u64, u64)>,
    /// The gfn of its last stage-2 fault exit (for aiming host calls).
    fault: Option<u64>,
}

impl MVcpu {
    fn power_on(&mut self, entry: u64, arg: u64) {
        self.power = Power::On;
        self.waiting = Waiting::Nothing;
        self.boot = (0, 0);
        self.x = [arg, 0, 0, 0];
        self.reset = true;
        self.entry = Some((entry, arg));
    }

    /// Its last guest call awaits an answer (a conversion, a hypercall
    /// fault, a CPU_ON): the script stays, so the guest sees the answer.
    fn awaiting(&self) -> bool {
        matches!(
            self.waiting,
            Waiting::Conversion { .. } | Waiting::Fault { hvc: true, .. } | Waiting::CpuOn { .. }
        )
    }

    fn finished(&self) -> bool {
        self.ops
            .as_ref()
            .is_none_or(|ops| self.pc >= ops.len() as u64)
    }
}

#[derive(Clone, Debug)]
struct MVm {
    gone: bool,
    dying: bool,
    started: bool,
    pending: Option<Conversion>,
    vcpus: Vec<MVcpu>,
    pages: BTreeMap<u64, MGPage>,
    /// Guarded MMIO gfns.
    guard: BTreeSet<u64>,
    /// Pages it holds at EL2 (root, metadata, memcache): the host's again,
    /// zeroed, when its teardown finishes.
    hyp_pages: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Model {
    pages: BTreeMap<u64, MPage>,
    vms: Vec<MVm>,
    finalized: bool,
}

/// What a host call should return.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    NotSupported,
    Err(i64),
    /// Success, with these values (`None`: not modelled).
    Ok(Option<[u64; 5]>),
}

/// What a run should show besides its result: the simulator's events and
/// the (pc, x0) each vCPU started its script at.
#[derive(Default, Debug)]
struct Seen {
    events: Vec<SimEvent>,
    entries: Vec<((u16, usize), (u64, u64))>,
}

/// A decoded host call.
#[derive(Clone, Copy, Debug)]
enum Req {
    Version,
    ShareHyp(u64),
    UnshareHyp(u64),
    VcpuInit(u16, u64, u64, u64),
    Topup(u16, u64, u64),
    ShareGuest(u16, u64, u64, u64),
    UnshareGuest(u16, u64, u64),
    DonateGuest(u16, u64, u64, u64),
    Run(u16, u64, Option<Completion>),
    Complete(u16, Conversion),
    Refuse(u16),
    Reclaim(u16, u64, u64),
    ForceReclaim(u64),
    TeardownStart(u16),
    TeardownFinish(u16),
    PageState(u64),
    GuestPageState(u16, u64),
    Finalize,
    PoolDonate(u64, u64),
    Stats,
    /// `CheckInvariants`: el2's checker must find nothing, at every step.
    Invariants,
    /// An SPI line's level: it changes nothing the model tracks.
    IrqLine(u16, u32),
}

/// Registers x1.. a host call reads; the rest must be zero.
fn arity(call: HostCall) -> usize {
    use HostCall::*;
    match call {
        Version | Finalize | HostStats | CheckInvariants => 0,
        ShareHyp | UnshareHyp | ConvertRefuse | ForceReclaim | TeardownStart | TeardownFinish
        | PageState => 1,
        GuestPageState | HypPoolDonate => 2,
        UnshareGuest | MemcacheTopup | Reclaim | IrqLine => 3,
        VmCreate | VcpuInit | ShareGuest | DonateGuest | ConvertComplete => 4,
        VcpuRun => 5,
    }
}

/// Decodes a host call as the ABI table says; `None`: `-EINVAL`.
fn decode(call: HostCall, a: [u64; 5]) -> Option<Req> {
    use HostCall::*;
    if a[arity(call)..].iter().any(|v| *v != 0) {
        return None;
    }
    let h = |v: u64| u16::try_from(v).ok();
    // A host↔guest extent is one page or a 2 MiB block.
    let ext = |v: u64| (v == 1 || v == 512).then_some(v);
    Some(match call {
        Version => Req::Version,
        ShareHyp => Req::ShareHyp(a[0]),
        UnshareHyp => Req::UnshareHyp(a[0]),
        VmCreate => unreachable!("VmCreate is only generated with a register beyond its arity"),
        VcpuInit => Req::VcpuInit(h(a[0])?, a[1], a[2], a[3]),
        MemcacheTopup => Req::Topup(h(a[0])?, a[1], a[2]),
        ShareGuest => Req::ShareGuest(h(a[0])?, a[1], a[2], ext(a[3])?),
        UnshareGuest => Req::UnshareGuest(h(a[0])?, a[1], ext(a[2])?),
        DonateGuest => Req::DonateGuest(h(a[0])?, a[1], a[2], ext(a[3])?),
        VcpuRun => {
            let complete = match (a[2], a[3], a[4]) {
                (0, 0, 0) => None,
                (RUN_COMPLETE_ACCESS, v0, v1) => Some(Completion::Values([v0, v1])),
                (RUN_FAIL_ACCESS, 0, 0) => Some(Completion::Fail),
                _ => return None,
            };
            Req::Run(h(a[0])?, a[1], complete)
        }
        ConvertComplete => {
            let kind = match a[3] {
                1 => ConversionKind::Share,
                0 => ConversionKind::Unshare,
                _ => return None,
            };
            Req::Complete(
                h(a[0])?,
                Conversion {
                    kind,
                    gfn: Gfn(a[1]),
                    pages: a[2],
                },
            )
        }
        ConvertRefuse => Req::Refuse(h(a[0])?),
        Reclaim => Req::Reclaim(h(a[0])?, a[1], ext(a[2])?),
        ForceReclaim => Req::ForceReclaim(a[0]),
        TeardownStart => Req::TeardownStart(h(a[0])?),
        TeardownFinish => Req::TeardownFinish(h(a[0])?),
        PageState => Req::PageState(a[0]),
        GuestPageState => Req::GuestPageState(h(a[0])?, a[1]),
        Finalize => Req::Finalize,
        HypPoolDonate => Req::PoolDonate(a[0], a[1]),
        HostStats => Req::Stats,
        CheckInvariants => Req::Invariants,
        IrqLine => {
            if a[2] > 1 {
                return None;
            }
            Req::IrqLine(h(a[0])?, u32::try_from(a[1]).ok()?)
        }
    })
}

fn is_ram(pfn: u64, n: u64) -> bool {
    n > 0 && pfn >= RAM && pfn.checked_add(n).is_some_and(|e| e <= RAM_END)
}

fn state_code(s: PS) -> u64 {
    match s {
        PS::Owned => page_state::OWNED,
        PS::SharedOwned => page_state::SHARED_OWNED,
        PS::SharedBorrowed => page_state::SHARED_BORROWED,
        PS::NoPage => page_state::NOPAGE,
    }
}

fn guest_code(s: GS) -> u64 {
    (match s {
        GS::Owned => GuestState::Owned,
        GS::SharedOwned => GuestState::SharedOwned,
        GS::SharedBorrowed => GuestState::SharedBorrowed,
        GS::NoPage => GuestState::NoPage,
        GS::Poisoned => GuestState::Poisoned,
        GS::Relinquished => GuestState::Relinquished,
    }) as u64
}

/// The guest's view of a conversion, and the host's.
fn conversion_states(kind: ConversionKind) -> ((GS, PS), (GS, PS)) {
    match kind {
        ConversionKind::Share => (
            (GS::Owned, PS::NoPage),
            (GS::SharedOwned, PS::SharedBorrowed),
        ),
        ConversionKind::Unshare => (
            (GS::SharedOwned, PS::SharedBorrowed),
            (GS::Owned, PS::NoPage),
        ),
    }
}

/// A trap of the simulated CPU.
enum Trap {
    Hvc,
    Abort {
        ipa: u64,
        write: bool,
        isv: bool,
        size: u8,
        reg: u8,
    },
    Wfi,
    Other(u64),
}

/// What el2 does after a trap.
enum Next {
    Resume,
    Exit(Result<Exit, i64>, Waiting),
}

impl Model {
    fn new() -> Model {
        let mut pages = BTreeMap::new();
        for p in SINGLES.iter().copied().chain(BLOCK..BLOCK + 512) {
            pages.insert(p, MPage::HOST);
        }
        pages.insert(CARVE, MPage::HYP);
        let mut vms = Vec::new();
        for (pgd, meta, mc, vcpus) in VMS {
            let hyp_pages: Vec<u64> = (pgd..pgd + 2)
                .chain(meta..meta + VM_META_PAGES)
                .chain(mc..mc + MC_PAGES)
                .collect();
            for p in &hyp_pages {
                pages.insert(*p, MPage::HYP);
            }
            let mut vm = MVm {
                gone: false,
                dying: false,
                started: false,
                pending: None,
                vcpus: vec![MVcpu::default(); vcpus as usize],
                pages: GFNS.iter().map(|g| (*g, EMPTY)).collect(),
                guard: BTreeSet::new(),
                hyp_pages,
            };
            // The host's VcpuInit of vCPU 0, entry 0, x0 0.
            vm.vcpus[0].power_on(0, 0);
            vms.push(vm);
        }
        Model {
            pages,
            vms,
            finalized: false,
        }
    }

    /// The VM behind a handle, if it exists.
    fn vm_of(&self, h: u16) -> Option<usize> {
        let i = usize::from(h.checked_sub(HANDLE0 as u16)?);
        (i < self.vms.len() && !self.vms[i].gone).then_some(i)
    }

    fn page(&self, pfn: u64) -> Option<MPage> {
        if !is_ram(pfn, 1) {
            return None;
        }
        Some(self.pages.get(&pfn).copied().unwrap_or(if pfn >= CARVE {
            MPage::HYP
        } else {
            MPage::HOST
        }))
    }

    fn set_page(&mut self, pfn: u64, p: MPage) {
        self.pages.insert(pfn, p);
    }

    fn g(&self, vm: usize, gfn: u64) -> MGPage {
        self.vms[vm].pages.get(&gfn).copied().unwrap_or(EMPTY)
    }

    fn set_g(&mut self, vm: usize, gfn: u64, gp: MGPage) {
        self.vms[vm].pages.insert(gfn, gp);
    }

    /// `EINVAL` unless `[gfn, gfn + n)` is a non-empty range inside the
    /// guest's IPA space.
    fn gfn_range(gfn: u64, n: u64) -> Result<(), i64> {
        match gfn.checked_add(n) {
            Some(end) if n > 0 && end <= GFN_LIMIT => Ok(()),
            _ => Err(EINVAL),
        }
    }

    /// A host↔guest extent: both frames aligned to its size, inside the IPA
    /// space.
    fn extent(pfn: Option<u64>, gfn: u64, n: u64) -> Result<(), i64> {
        if !gfn.is_multiple_of(n) || !pfn.is_none_or(|p| p.is_multiple_of(n)) {
            return Err(EINVAL);
        }
        Self::gfn_range(gfn, n)
    }

    /// `EINVAL` not RAM; `EPERM` unless every page is the host's alone.
    fn host_owned(&self, pfn: u64, n: u64) -> Result<(), i64> {
        if !is_ram(pfn, n) {
            return Err(EINVAL);
        }
        for p in pfn..pfn + n {
            if !self.page(p).is_some_and(|p| p.host_owned()) {
                return Err(EPERM);
            }
        }
        Ok(())
    }

    /// `EPERM` unless every guest page is empty (nothing mapped, or
    /// relinquished: not poisoned).
    fn guest_empty(&self, vm: usize, gfn: u64, n: u64) -> Result<(), i64> {
        for g in gfn..gfn + n {
            if !matches!(self.g(vm, g).state, GS::NoPage | GS::Relinquished) {
                return Err(EPERM);
            }
        }
        Ok(())
    }

    /// One host→guest share of `pfn` ended.
    fn drop_share(&mut self, pfn: u64) {
        let mut p = self.page(pfn).unwrap();
        p.shares -= 1;
        if p.shares == 0 {
            p.host = PS::Owned;
        }
        self.set_page(pfn, p);
    }

    /// A guest share or unshare of `[gfn, gfn + n)`: the first bad page
    /// decides the error.
    fn check_conversion(
        &self,
        vm: usize,
        kind: ConversionKind,
        gfn: u64,
        n: u64,
    ) -> Result<(), i64> {
        if n == 0 || n > GUEST_RANGE {
            return Err(EINVAL);
        }
        Self::gfn_range(gfn, n)?;
        let ((from, _), _) = conversion_states(kind);
        for g in gfn..gfn + n {
            let gp = self.g(vm, g);
            match (gp.state, gp.pfn) {
                (GS::Poisoned, _) => return Err(EHWPOISON),
                (_, None) => return Err(ENOENT),
                (s, Some(_)) if s != from => return Err(EPERM),
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_conversion(&mut self, vm: usize, kind: ConversionKind, gfn: u64, n: u64) {
        let (_, (to, host_to)) = conversion_states(kind);
        for g in gfn..gfn + n {
            let mut gp = self.g(vm, g);
            gp.state = to;
            self.set_g(vm, g, gp);
            let pfn = gp.pfn.unwrap();
            let mut p = self.page(pfn).unwrap();
            p.host = host_to;
            self.set_page(pfn, p);
        }
    }

    /// Every host call: decode, the init-only seal, then the call.
    fn host_call(&mut self, call: HostCall, a: [u64; 5], seen: &mut Seen) -> Want {
        let Some(req) = decode(call, a) else {
            return Want::Err(EINVAL);
        };
        if matches!(call, HostCall::Finalize | HostCall::HypPoolDonate) && self.finalized {
            return Want::NotSupported;
        }
        match self.dispatch(req, seen) {
            Ok(v) => Want::Ok(v),
            Err(e) => Want::Err(e),
        }
    }

    fn dispatch(&mut self, req: Req, seen: &mut Seen) -> Result<Option<[u64; 5]>, i64> {
        const NONE: Result<Option<[u64; 5]>, i64> = Ok(Some([0; 5]));
        match req {
            Req::Version => Ok(Some([ABI_VERSION, 0, 0, 0, 0])),
            Req::ShareHyp(pfn) => {
                let p = self.page(pfn).ok_or(EINVAL)?;
                if (p.host, p.hyp, p.owner) != (PS::Owned, PS::NoPage, MOwner::Host) {
                    return Err(EPERM);
                }
                self.set_page(
                    pfn,
                    MPage {
                        host: PS::SharedOwned,
                        hyp: PS::SharedBorrowed,
                        ..p
                    },
                );
                NONE
            }
            Req::UnshareHyp(pfn) => {
                let p = self.page(pfn).ok_or(EINVAL)?;
                if (p.host, p.hyp) != (PS::SharedOwned, PS::SharedBorrowed) {
                    return Err(EPERM);
                }
                self.set_page(pfn, MPage::host_again(p.byte));
                NONE
            }
            Req::VcpuInit(h, vcpu, entry, x0) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                let started = self.vms[vm].started;
                let v = self.vms[vm].vcpus.get_mut(vcpu as usize).ok_or(EINVAL)?;
                if v.power != Power::Off {
                    return Err(EINVAL);
                }
                if started {
                    return Err(EPERM);
                }
                v.power_on(entry, x0);
                NONE
            }
            Req::Topup(h, pfn, n) => {
                if n == 0 || n > 512 {
                    return Err(EINVAL);
                }
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                self.host_owned(pfn, n)?;
                for p in pfn..pfn + n {
                    self.set_page(p, MPage::HYP);
                    self.vms[vm].hyp_pages.push(p);
                }
                NONE
            }
            Req::DonateGuest(h, pfn, gfn, n) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                Self::extent(Some(pfn), gfn, n)?;
                self.host_owned(pfn, n)?;
                self.guest_empty(vm, gfn, n)?;
                for i in 0..n {
                    let p = self.page(pfn + i).unwrap();
                    self.set_page(
                        pfn + i,
                        MPage {
                            host: PS::NoPage,
                            owner: MOwner::Guest(vm, gfn + i),
                            ..p
                        },
                    );
                    self.set_g(
                        vm,
                        gfn + i,
                        MGPage {
                            state: GS::Owned,
                            pfn: Some(pfn + i),
                            block_share: false,
                        },
                    );
                }
                NONE
            }
            Req::ShareGuest(h, pfn, gfn, n) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                Self::extent(Some(pfn), gfn, n)?;
                if !is_ram(pfn, n) {
                    return Err(EINVAL);
                }
                for p in pfn..pfn + n {
                    let e = self.page(p).unwrap();
                    let lendable = e.owner == MOwner::Host
                        && e.hyp == PS::NoPage
                        && (e.host == PS::Owned || (e.host == PS::SharedOwned && e.shares > 0));
                    if !lendable {
                        return Err(EPERM);
                    }
                }
                self.guest_empty(vm, gfn, n)?;
                for i in 0..n {
                    let p = self.page(pfn + i).unwrap();
                    self.set_page(
                        pfn + i,
                        MPage {
                            host: PS::SharedOwned,
                            shares: p.shares + 1,
                            ..p
                        },
                    );
                    self.set_g(
                        vm,
                        gfn + i,
                        MGPage {
                            state: GS::SharedBorrowed,
                            pfn: Some(pfn + i),
                            block_share: n == 512,
                        },
                    );
                }
                NONE
            }
            Req::UnshareGuest(h, gfn, n) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                Self::extent(None, gfn, n)?;
                let first = self.g(vm, gfn);
                let Some(pfn) = first.pfn else {
                    return Err(ENOENT);
                };
                if first.state != GS::SharedBorrowed {
                    return Err(EPERM);
                }
                if first.block_share != (n == 512) {
                    return Err(E2BIG);
                }
                for i in 0..n {
                    let gp = self.g(vm, gfn + i);
                    match gp.pfn {
                        None => return Err(ENOENT),
                        Some(p) if gp.state == GS::SharedBorrowed && p == pfn + i => {}
                        Some(_) => return Err(EPERM),
                    }
                }
                for i in 0..n {
                    self.set_g(vm, gfn + i, EMPTY);
                    self.drop_share(pfn + i);
                }
                NONE
            }
            Req::Run(h, vcpu, complete) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                match self.run(vm, vcpu, complete, seen) {
                    Ok(exit) => Ok(Some(exit.to_regs())),
                    Err(e) => Err(e),
                }
            }
            Req::Complete(h, c) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                if self.vms[vm].pending != Some(c) {
                    return Err(EPERM);
                }
                self.check_conversion(vm, c.kind, c.gfn.0, c.pages)?;
                self.apply_conversion(vm, c.kind, c.gfn.0, c.pages);
                self.answer(vm, Outcome::Done);
                NONE
            }
            Req::Refuse(h) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                if self.vms[vm].pending.is_none() {
                    return Err(EPERM);
                }
                self.answer(vm, Outcome::Refused);
                NONE
            }
            Req::Reclaim(h, gfn, n) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                if !self.vms[vm].dying {
                    return Err(EINVAL);
                }
                Self::extent(None, gfn, n)?;
                let pages: Vec<MGPage> = (gfn..gfn + n).map(|g| self.g(vm, g)).collect();
                if pages.iter().all(|p| p.state == GS::Poisoned) {
                    return NONE;
                }
                if pages.iter().all(|p| p.pfn.is_none()) {
                    return Err(ENOENT);
                }
                for (g, gp) in (gfn..).zip(pages) {
                    if gp.state == GS::Poisoned {
                        continue;
                    }
                    if let Some(pfn) = gp.pfn {
                        let p = self.page(pfn).unwrap();
                        match gp.state {
                            // Guest-private pages are wiped; pages the guest
                            // shared keep their contents.
                            GS::Owned => self.set_page(pfn, MPage::host_again(Some(0))),
                            GS::SharedOwned => self.set_page(pfn, MPage::host_again(p.byte)),
                            _ => self.drop_share(pfn),
                        }
                    }
                    self.set_g(vm, g, EMPTY);
                }
                NONE
            }
            Req::ForceReclaim(pa) => {
                let pfn = pa >> 12;
                let p = self.page(pfn).ok_or(EFAULT)?;
                if p.host != PS::NoPage {
                    return Err(EAGAIN);
                }
                let MOwner::Guest(vm, gfn) = p.owner else {
                    return Err(EPERM);
                };
                if self.vms[vm].gone {
                    return Err(EAGAIN);
                }
                let gp = self.g(vm, gfn);
                match (gp.state, gp.pfn) {
                    (GS::Poisoned, _) => return Err(EHWPOISON),
                    (_, None) => return Err(ENOENT),
                    (GS::Owned, Some(q)) if q == pfn => {}
                    _ => return Err(EPERM),
                }
                self.set_page(pfn, MPage::host_again(Some(0)));
                self.set_g(
                    vm,
                    gfn,
                    MGPage {
                        state: GS::Poisoned,
                        ..EMPTY
                    },
                );
                NONE
            }
            Req::TeardownStart(h) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                if self.vms[vm].dying {
                    return Err(EINVAL);
                }
                self.vms[vm].dying = true;
                NONE
            }
            Req::TeardownFinish(h) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                let v = &self.vms[vm];
                if !v.dying {
                    return Err(EINVAL);
                }
                if v.pages.values().any(|p| p.pfn.is_some()) {
                    return Err(EBUSY);
                }
                for p in v.hyp_pages.clone() {
                    self.set_page(p, MPage::HOST);
                }
                let v = &mut self.vms[vm];
                v.gone = true;
                v.pages.clear();
                NONE
            }
            Req::PageState(pfn) => {
                let p = self.page(pfn).ok_or(EINVAL)?;
                let owner = match p.owner {
                    MOwner::Host => 0,
                    MOwner::Hyp => 1,
                    MOwner::Guest(vm, gfn) => encode_owner(2, (HANDLE0 as usize + vm) as u16, gfn),
                };
                Ok(Some([
                    state_code(p.host),
                    state_code(p.hyp),
                    owner,
                    u64::from(p.shares) << 16,
                    0,
                ]))
            }
            Req::GuestPageState(h, gfn) => {
                let vm = self.vm_of(h).ok_or(EINVAL)?;
                if gfn >= GFN_LIMIT {
                    return Err(EINVAL);
                }
                let gp = self.g(vm, gfn);
                Ok(Some([
                    guest_code(gp.state),
                    gp.pfn.unwrap_or(u64::MAX),
                    0,
                    0,
                    0,
                ]))
            }
            Req::Finalize => {
                self.finalized = true;
                NONE
            }
            Req::PoolDonate(pfn, n) => {
                self.host_owned(pfn, n)?;
                for p in pfn..pfn + n {
                    let byte = self.page(p).unwrap().byte;
                    self.set_page(p, MPage { byte, ..MPage::HYP });
                }
                NONE
            }
            Req::Stats => Ok(None),
            Req::Invariants => NONE,
            Req::IrqLine(h, intid) => {
                self.vm_of(h).ok_or(EINVAL)?;
                // Only SPIs (32..96) are the host's to drive.
                if (32..96).contains(&intid) {
                    NONE
                } else {
                    Err(EINVAL)
                }
            }
        }
    }

    /// The host answered the pending conversion: it is no longer pending,
    /// and the vCPU waiting on it gets the answer when it runs.
    fn answer(&mut self, vm: usize, outcome: Outcome) {
        let v = &mut self.vms[vm];
        v.pending = None;
        for c in &mut v.vcpus {
            if let Waiting::Conversion {
                outcome: o @ Outcome::Pending,
                ..
            } = &mut c.waiting
            {
                *o = outcome;
            }
        }
    }

    /// `VcpuRun`: the checks, the host's answer to what the last exit left
    /// pending, then the guest until it exits.
    fn run(
        &mut self,
        vm: usize,
        vcpu: u64,
        complete: Option<Completion>,
        seen: &mut Seen,
    ) -> Result<Exit, i64> {
        let dying = self.vms[vm].dying;
        let i = vcpu as usize;
        let v = self.vms[vm].vcpus.get(i).ok_or(EINVAL)?;
        if dying || v.waiting == Waiting::Stopped {
            return Err(EINVAL);
        }
        if v.power != Power::On {
            return if complete.is_some() {
                Err(EINVAL)
            } else {
                Ok(Exit::PoweredOff)
            };
        }
        let allowed = match complete {
            None => true,
            Some(Completion::Values(_)) => matches!(
                v.waiting,
                Waiting::Fault { isv: true, .. } | Waiting::CpuOn { .. }
            ),
            Some(Completion::Fail) => matches!(v.waiting, Waiting::Fault { hvc: true, .. }),
        };
        if !allowed {
            return Err(EINVAL);
        }
        let mut waiting = v.waiting;
        if let Waiting::CpuOn { target } = waiting {
            // The host decides the guest's CPU_ON: 0 starts the target where
            // the guest asked; anything else fails the call (a PSCI error as
            // it is, anything else INTERNAL_FAILURE; no answer is
            // NOT_SUPPORTED).
            let answer = match complete {
                Some(Completion::Values([x0, _])) => x0,
                _ => neg(SMCCC_NOT_SUPPORTED),
            };
            let t = &mut self.vms[vm].vcpus[target];
            let x0 = if answer == 0 {
                let (entry, arg) = t.boot;
                t.power_on(entry, arg);
                0
            } else {
                t.power = Power::Off;
                t.boot = (0, 0);
                if (PSCI_INVALID_ADDRESS..0).contains(&(answer as i64)) {
                    answer
                } else {
                    neg(PSCI_INTERNAL_FAILURE)
                }
            };
            self.vms[vm].vcpus[i].x[0] = x0;
            waiting = Waiting::Nothing;
        }
        self.vms[vm].started = true;
        let (result, waiting) = self.run_loop(vm, i, waiting, complete, seen);
        let v = &mut self.vms[vm].vcpus[i];
        v.waiting = waiting;
        if result == Ok(Exit::PoweredOff) {
            v.power = Power::Off;
        }
        result
    }

    fn ret(&mut self, vm: usize, i: usize, x0: i64, x1: i64) {
        let x = &mut self.vms[vm].vcpus[i].x;
        x[0] = x0 as u64;
        x[1] = x1 as u64;
    }

    fn run_loop(
        &mut self,
        vm: usize,
        i: usize,
        waiting: Waiting,
        complete: Option<Completion>,
        seen: &mut Seen,
    ) -> (Result<Exit, i64>, Waiting) {
        match waiting {
            Waiting::Conversion {
                kind,
                gfn,
                pages,
                outcome,
            } => match outcome {
                // Not answered: the same exit again, the guest does not run.
                Outcome::Pending => return (Ok(memory_fault(kind, gfn, pages)), waiting),
                Outcome::Done => self.ret(vm, i, SMCCC_SUCCESS, pages as i64),
                Outcome::Refused => self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0),
            },
            Waiting::Fault { read, reg, .. } => {
                // el2 steps the PC past the access or call. (A script given
                // since has not started: it starts after that.)
                let v = &mut self.vms[vm].vcpus[i];
                let step = u64::from(v.based);
                if complete == Some(Completion::Fail) {
                    v.pc += step;
                    self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
                }
                if let Some(Completion::Values([value, _])) = complete {
                    let v = &mut self.vms[vm].vcpus[i];
                    // The only emulated reads here are 8-byte loads into x1.
                    if read {
                        assert_eq!(reg, 1);
                        v.x[1] = value;
                    }
                    v.pc += step;
                }
            }
            Waiting::Nothing | Waiting::Stopped | Waiting::CpuOn { .. } => {}
        }
        loop {
            let next = match self.sim_run(vm, i, seen) {
                Trap::Hvc => self.guest_call(vm, i),
                Trap::Abort {
                    ipa,
                    write,
                    isv,
                    size,
                    reg,
                } => self.stage2_fault(vm, i, ipa, write, isv, size, reg),
                Trap::Wfi => Next::Exit(Ok(Exit::Wfi), Waiting::Nothing),
                Trap::Other(esr) => Next::Exit(
                    Ok(Exit::Stopped {
                        ec: (esr >> 26) & 0x3f,
                    }),
                    Waiting::Stopped,
                ),
            };
            if let Next::Exit(r, w) = next {
                return (r, w);
            }
        }
    }

    /// The frame the guest's stage-2 maps at `ipa` (read/write/execute).
    fn translate(&self, vm: usize, ipa: u64) -> Option<u64> {
        if ipa >> 40 != 0 {
            return None;
        }
        let gp = self.g(vm, ipa >> 12);
        gp.pfn.filter(|_| mapped(gp.state))
    }

    /// The simulated CPU runs the vCPU's script until a trap (see
    /// `el2::sim::SimArch::run_vcpu`).
    fn sim_run(&mut self, vm: usize, i: usize, seen: &mut Seen) -> Trap {
        let h = (HANDLE0 as usize + vm) as u16;
        let v = &mut self.vms[vm].vcpus[i];
        let Some(ops) = v.ops.clone() else {
            return Trap::Other(u64::MAX);
        };
        if !v.based {
            v.based = true;
            if let Some(entry) = v.entry.take() {
                seen.entries.push(((h, i), entry));
            }
        }
        if let Some(step) = v.trapped.take()
            && v.pc == step as u64 + 1
        {
            let e = match ops[step] {
                GuestOp::Hvc { .. } | GuestOp::Smc { .. } => Some(SimEvent::HvcReturned {
                    vcpu: i,
                    step,
                    x: v.x,
                }),
                GuestOp::Load { .. } => Some(SimEvent::Loaded {
                    vcpu: i,
                    step,
                    value: v.x[1],
                }),
                GuestOp::Store { .. } | GuestOp::Fill { .. } => {
                    Some(SimEvent::Stored { vcpu: i, step })
                }
                _ => None,
            };
            seen.events.extend(e);
        }
        loop {
            let step = self.vms[vm].vcpus[i].pc as usize;
            let Some(op) = ops.get(step).copied() else {
                // The end of the script: SYSTEM_OFF.
                let v = &mut self.vms[vm].vcpus[i];
                v.x = [u64::from(SYSTEM_OFF), 0, 0, 0];
                v.pc += 1;
                return Trap::Hvc;
            };
            let abort = |ipa, write, isv, size, reg| Trap::Abort {
                ipa,
                write,
                isv,
                size,
                reg,
            };
            let target = match op {
                GuestOp::Load { ipa } | GuestOp::Store { ipa, .. } | GuestOp::Fill { ipa, .. } => {
                    self.translate(vm, ipa & !0xfff)
                }
                _ => None,
            };
            let v = &mut self.vms[vm].vcpus[i];
            match op {
                GuestOp::Hvc { id, args } | GuestOp::Smc { id, args } => {
                    v.x = [id, args[0], args[1], args[2]];
                    v.pc += 1;
                    v.trapped = Some(step);
                    return Trap::Hvc;
                }
                GuestOp::Load { ipa } => match target {
                    Some(pfn) => {
                        let b = self.pages[&pfn]
                            .byte
                            .expect("a guest page's bytes are known");
                        let value = u64::from_ne_bytes([b; 8]);
                        v.x[1] = value;
                        v.pc += 1;
                        seen.events.push(SimEvent::Loaded {
                            vcpu: i,
                            step,
                            value,
                        });
                    }
                    None => {
                        v.trapped = Some(step);
                        return abort(ipa, false, true, 8, 1);
                    }
                },
                GuestOp::Store { ipa, value } => {
                    v.x[1] = value;
                    assert!(target.is_none(), "stores only go to unmapped IPAs");
                    v.trapped = Some(step);
                    return abort(ipa, true, true, 8, 1);
                }
                GuestOp::Fill { ipa, byte } => match target {
                    Some(pfn) => {
                        v.pc += 1;
                        seen.events.push(SimEvent::Stored { vcpu: i, step });
                        self.pages.get_mut(&pfn).unwrap().byte = Some(byte);
                    }
                    None => {
                        v.trapped = Some(step);
                        return abort(ipa & !0xfff, true, false, 0, 0);
                    }
                },
                GuestOp::Wfi => {
                    v.pc += 1;
                    return Trap::Wfi;
                }
                GuestOp::Undefined { esr } => return Trap::Other(esr),
                GuestOp::Store32 { .. } | GuestOp::Sgi { .. } => {
                    unreachable!("not generated")
                }
            }
        }
    }

    /// A stage-2 fault on an unmapped IPA: the host learns the access (all
    /// of it only where the MMIO guard allows); a poisoned IPA is an error
    /// for the host.
    #[allow(clippy::too_many_arguments)]
    fn stage2_fault(
        &mut self,
        vm: usize,
        i: usize,
        ipa: u64,
        write: bool,
        isv: bool,
        size: u8,
        reg: u8,
    ) -> Next {
        let gfn = ipa >> 12;
        let state = if gfn < GFN_LIMIT {
            self.g(vm, gfn).state
        } else {
            GS::NoPage
        };
        match state {
            GS::Poisoned => Next::Exit(Err(EHWPOISON), Waiting::Nothing),
            GS::NoPage | GS::Relinquished => {
                self.vms[vm].vcpus[i].fault = Some(gfn);
                let g = &self.vms[vm].guard;
                let guarded = g.is_empty() || g.contains(&gfn);
                let (isv, size, reg) = if guarded {
                    (isv, size, reg)
                } else {
                    (false, 0, 0)
                };
                let data = if write && isv {
                    self.vms[vm].vcpus[i].x[reg as usize]
                } else {
                    0
                };
                let exit = Exit::Stage2Fault {
                    gpa: ipa,
                    write,
                    exec: false,
                    isv,
                    size,
                    reg,
                    data,
                    hvc: false,
                };
                let waiting = Waiting::Fault {
                    read: !write,
                    reg,
                    size,
                    isv,
                    hvc: false,
                    sign: false,
                    wide: guarded && isv,
                };
                Next::Exit(Ok(exit), waiting)
            }
            _ => unreachable!("the simulated CPU only faults on unmapped IPAs"),
        }
    }

    /// One guest SMCCC call, from x0..x3.
    fn guest_call(&mut self, vm: usize, i: usize) -> Next {
        let x = self.vms[vm].vcpus[i].x;
        let id = (x[0] as u32) & !(SMCCC_SVE_HINT as u32);
        let mut args = [x[1], x[2], x[3]];
        if id & SMC64 == 0 {
            for a in &mut args {
                *a &= 0xffff_ffff;
            }
        }
        let set = |m: &mut Model, regs: &[u64]| {
            m.vms[vm].vcpus[i].x[..regs.len()].copy_from_slice(regs);
        };
        match GuestCall::from_id(u64::from(id)) {
            Some(GuestCall::CallUid) => {
                set(self, &KVM_UID);
                return Next::Resume;
            }
            Some(GuestCall::Features) => {
                set(self, &[GUEST_FEATURES, 0, 0, 0]);
                return Next::Resume;
            }
            Some(GuestCall::HypMeminfo) => {
                if args == [0; 3] {
                    set(self, &[4096, 1, 0, 0]);
                } else {
                    self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
                }
                return Next::Resume;
            }
            Some(GuestCall::MemShare) => {
                return self.conversion(vm, i, ConversionKind::Share, args);
            }
            Some(GuestCall::MemUnshare) => {
                return self.conversion(vm, i, ConversionKind::Unshare, args);
            }
            Some(GuestCall::MemRelinquish) => return self.relinquish(vm, i, args),
            Some(GuestCall::MmioGuard) => {
                let ok = self.mmio_guard(vm, args);
                let x0 = if ok {
                    SMCCC_SUCCESS
                } else {
                    SMCCC_INVALID_PARAMETER
                };
                self.ret(vm, i, x0, 0);
                return Next::Resume;
            }
            None => {}
        }
        let fid32 = id & !SMC64;
        let x0 = match id {
            SMCCC_VERSION | PSCI_VERSION => V1_1,
            SMCCC_ARCH_FEATURES => {
                if args[0] as u32 == SMCCC_ARCH_FEATURES {
                    0
                } else {
                    neg(SMCCC_NOT_SUPPORTED)
                }
            }
            MIGRATE_INFO_TYPE => 2,
            PSCI_FEATURES => {
                if psci_implemented(args[0] as u32) {
                    0
                } else {
                    neg(SMCCC_NOT_SUPPORTED)
                }
            }
            _ if fid32 == CPU_SUSPEND => {
                self.vms[vm].vcpus[i].x[0] = 0;
                return Next::Exit(Ok(Exit::Wfi), Waiting::Nothing);
            }
            CPU_OFF => return Next::Exit(Ok(Exit::PoweredOff), Waiting::Nothing),
            _ if fid32 == CPU_ON => return self.cpu_on(vm, i, u64::from(id), args),
            _ if fid32 == AFFINITY_INFO => {
                let [mpidr, level, _] = args;
                let v = &self.vms[vm];
                match target(mpidr, v.vcpus.len()) {
                    Some(t) if level == 0 => match v.vcpus[t].power {
                        Power::On => 0,
                        Power::Off => 1,
                        Power::OnPending => 2,
                    },
                    _ => neg(PSCI_INVALID_PARAMETERS),
                }
            }
            SYSTEM_OFF | SYSTEM_RESET => {
                self.vms[vm].vcpus[i].x[0] = neg(PSCI_INTERNAL_FAILURE);
                let kind = u64::from(id == SYSTEM_RESET);
                return Next::Exit(Ok(Exit::SystemEvent { kind }), Waiting::Nothing);
            }
            _ if fid32 == SYSTEM_RESET2 => {
                let kind = args[0] as u32;
                if kind != 0 && kind & 0x8000_0000 == 0 {
                    neg(PSCI_INVALID_PARAMETERS)
                } else {
                    self.vms[vm].vcpus[i].x[0] = neg(PSCI_INTERNAL_FAILURE);
                    return Next::Exit(Ok(Exit::SystemEvent { kind: 1 }), Waiting::Nothing);
                }
            }
            _ => neg(SMCCC_NOT_SUPPORTED),
        };
        self.vms[vm].vcpus[i].x[0] = x0;
        Next::Resume
    }

    /// CPU_ON: the target must be a vCPU of this VM and off; then the host
    /// decides.
    fn cpu_on(&mut self, vm: usize, i: usize, id: u64, args: [u64; 3]) -> Next {
        let [mpidr, entry, context] = args;
        let n = self.vms[vm].vcpus.len();
        let x0 = match target(mpidr, n) {
            None => PSCI_INVALID_PARAMETERS,
            Some(t) => {
                let tv = &mut self.vms[vm].vcpus[t];
                match tv.power {
                    Power::On => PSCI_ALREADY_ON,
                    Power::OnPending => PSCI_ON_PENDING,
                    Power::Off => {
                        tv.power = Power::OnPending;
                        tv.boot = (entry, context);
                        return Next::Exit(
                            Ok(Exit::Hypercall { id, args }),
                            Waiting::CpuOn { target: t },
                        );
                    }
                }
            }
        };
        self.vms[vm].vcpus[i].x[0] = x0 as u64;
        Next::Resume
    }

    /// MMIO_GUARD: a page-aligned IPA where the guest has no memory, x2 and
    /// x3 zero.
    fn mmio_guard(&mut self, vm: usize, args: [u64; 3]) -> bool {
        let [ipa, a2, a3] = args;
        if a2 != 0 || a3 != 0 || !ipa.is_multiple_of(4096) {
            return false;
        }
        let gfn = ipa >> 12;
        if gfn >= GFN_LIMIT || self.g(vm, gfn).state != GS::NoPage {
            return false;
        }
        self.vms[vm].guard.insert(gfn);
        true
    }

    /// `(IPA, pages, reserved)`: the range a guest call covers.
    fn range_args(args: [u64; 3]) -> Option<(u64, u64)> {
        let [ipa, pages, reserved] = args;
        if reserved != 0 || !ipa.is_multiple_of(4096) {
            return None;
        }
        Some((ipa >> 12, pages.clamp(1, GUEST_RANGE)))
    }

    /// MEM_SHARE / MEM_UNSHARE: checked and recorded, then the host's turn.
    fn conversion(&mut self, vm: usize, i: usize, kind: ConversionKind, args: [u64; 3]) -> Next {
        let Some((gfn, pages)) = Self::range_args(args) else {
            self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
            return Next::Resume;
        };
        let checked = if self.vms[vm].pending.is_some() {
            Err(EBUSY)
        } else {
            self.check_conversion(vm, kind, gfn, pages)
        };
        match checked {
            Ok(()) => {
                self.vms[vm].pending = Some(Conversion {
                    kind,
                    gfn: Gfn(gfn),
                    pages,
                });
                Next::Exit(
                    Ok(memory_fault(kind, gfn, pages)),
                    Waiting::Conversion {
                        kind,
                        gfn,
                        pages,
                        outcome: Outcome::Pending,
                    },
                )
            }
            Err(ENOENT) if kind == ConversionKind::Share => {
                // Not mapped yet: the host maps it and the call is retried.
                let missing = (gfn..gfn + pages)
                    .find(|g| self.g(vm, *g).pfn.is_none())
                    .unwrap_or(gfn);
                self.vms[vm].vcpus[i].pc -= 1;
                self.vms[vm].vcpus[i].fault = Some(missing);
                let exit = Exit::Stage2Fault {
                    gpa: missing << 12,
                    write: true,
                    exec: false,
                    isv: false,
                    size: 0,
                    reg: 0,
                    data: 0,
                    hvc: true,
                };
                let waiting = Waiting::Fault {
                    read: false,
                    reg: 0,
                    size: 0,
                    isv: false,
                    hvc: true,
                    sign: false,
                    wide: false,
                };
                Next::Exit(Ok(exit), waiting)
            }
            Err(_) => {
                self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
                Next::Resume
            }
        }
    }

    /// MEM_RELINQUISH: done at EL2 at once.
    fn relinquish(&mut self, vm: usize, i: usize, args: [u64; 3]) -> Next {
        let Some((gfn, pages)) = Self::range_args(args) else {
            self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
            return Next::Resume;
        };
        let ok = Self::gfn_range(gfn, pages).is_ok()
            && (gfn..gfn + pages)
                .all(|g| !matches!(self.g(vm, g).state, GS::Poisoned | GS::SharedBorrowed));
        if !ok {
            self.ret(vm, i, SMCCC_INVALID_PARAMETER, 0);
            return Next::Resume;
        }
        for g in gfn..gfn + pages {
            let gp = self.g(vm, g);
            if let (GS::Owned | GS::SharedOwned, Some(pfn)) = (gp.state, gp.pfn) {
                let p = self.page(pfn).unwrap();
                // Wiped unless the guest had shared it.
                let byte = if gp.state == GS::Owned {
                    Some(0)
                } else {
                    p.byte
                };
                self.set_page(pfn, MPage::host_again(byte));
            }
            self.set_g(
                vm,
                g,
                MGPage {
                    state: GS::Relinquished,
                    ..EMPTY
                },
            );
        }
        self.ret(vm, i, SMCCC_SUCCESS, pages as i64);
        Next::Exit(
            Ok(Exit::Relinquished {
                gpa: gfn << 12,
                size: pages << 12,
            }),
            Waiting::Nothing,
        )
    }

    /// The host fills a page through its stage-2: only pages it can access.
    fn host_fill(&mut self, pfn: u64, byte: u8) -> bool {
        let p = self.page(pfn).unwrap();
        if p.host == PS::NoPage {
            return false;
        }
        self.set_page(
            pfn,
            MPage {
                byte: Some(byte),
                ..p
            },
        );
        true
    }

    /// The vCPU's next op is a memory access that will fault.
    fn next_faults(&self, vm: usize, i: usize) -> bool {
        let Some(v) = self.vms[vm].vcpus.get(i) else {
            return false;
        };
        let Some(op) = v.ops.as_ref().and_then(|ops| ops.get(v.pc as usize)) else {
            return false;
        };
        match *op {
            GuestOp::Load { ipa } | GuestOp::Store { ipa, .. } | GuestOp::Fill { ipa, .. } => {
                self.translate(vm, ipa & !0xfff).is_none()
            }
            _ => false,
        }
    }

    /// A new script for a vCPU, from its current PC.
    fn script(&mut self, vm: usize, i: usize, ops: Vec<GuestOp>) {
        let v = &mut self.vms[vm].vcpus[i];
        v.ops = Some(ops);
        v.pc = 0;
        v.trapped = None;
        v.based = false;
        v.reset = false;
    }
}

fn memory_fault(kind: ConversionKind, gfn: u64, pages: u64) -> Exit {
    Exit::MemoryFault {
        gpa: gfn << 12,
        size: pages << 12,
        flags: if kind == ConversionKind::Unshare {
            KVM_MEMORY_EXIT_FLAG_PRIVATE
        } else {
            0
        },
    }
}

/// The vCPU a PSCI MPIDR names: Aff0 is the index; Aff1..3 must be zero.
fn target(mpidr: u64, count: usize) -> Option<usize> {
    let m = mpidr & 0xff_00ff_ffff;
    usize::try_from(m).ok().filter(|t| *t < count)
}

/// PSCI_FEATURES: the PSCI 1.1 functions el2 answers (and SMCCC_VERSION).
fn psci_implemented(fid: u32) -> bool {
    let both = [CPU_SUSPEND, CPU_ON, AFFINITY_INFO, SYSTEM_RESET2];
    matches!(
        fid,
        PSCI_VERSION
            | CPU_OFF
            | MIGRATE_INFO_TYPE
            | SYSTEM_OFF
            | SYSTEM_RESET
            | PSCI_FEATURES
            | SMCCC_VERSION
    ) || both.contains(&(fid & !SMC64))
}

// ---------------------------------------------------------------------
// Steps.

#[derive(Clone, Copy, Debug)]
enum Complete {
    No,
    Values(u64),
    Fail,
}

#[derive(Clone, Debug)]
enum Step {
    Host(HostCall, [u64; 5]),
    /// The host stores to a page through its identity map.
    HostFill(u64, u8),
    /// Run a vCPU; `ops` becomes its script unless its last call still
    /// awaits an answer (then it goes on with the script it has), or
    /// `fresh` is false and its script has not ended.
    Run {
        vm: usize,
        vcpu: u64,
        ops: Vec<GuestOp>,
        complete: Complete,
        fresh: bool,
    },
}

fn handle() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (0..2u64).prop_map(|v| HANDLE0 + v),
        1 => Just(HANDLE0 + 2),
        1 => Just(0x1_0000),
    ]
}

fn pfn() -> impl Strategy<Value = u64> {
    let ours: Vec<u64> = SINGLES
        .iter()
        .copied()
        .chain([BLOCK, BLOCK + 1, BLOCK + 0x1ff])
        .collect();
    prop_oneof![
        12 => prop::sample::select(ours),
        1 => Just(CARVE),
        1 => Just(VMS[0].2),
        1 => Just(RAM_END),
        1 => Just(u64::MAX),
    ]
}

fn gfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => prop::sample::select(GFNS.to_vec()),
        1 => Just(GFN_LIMIT),
        1 => Just(MMIO_GFN),
    ]
}

/// A host↔guest extent: 1 or 512 pages, or a bad size.
fn extent() -> impl Strategy<Value = u64> {
    prop_oneof![6 => Just(1u64), 3 => Just(512u64), 1 => Just(2u64), 1 => Just(0u64), 1 => any::<u64>()]
}

/// A guest range call's x2: small, at the limit and either side of it,
/// past it, 0, anything.
fn range_pages() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1..3u64,
        1 => Just(0u64),
        2 => Just(511u64),
        4 => Just(512u64),
        2 => Just(513u64),
        2 => Just(600u64),
        1 => any::<u64>(),
    ]
}

fn reserved() -> impl Strategy<Value = u64> {
    prop_oneof![20 => Just(0u64), 1 => Just(1u64), 1 => Just(1u64 << 63), 1 => any::<u64>()]
}

fn range_call(call: GuestCall) -> impl Strategy<Value = GuestOp> {
    (gfn(), prop::bool::weighted(0.1), range_pages(), reserved()).prop_map(
        move |(g, unaligned, pages, reserved)| GuestOp::Hvc {
            id: call.id(),
            args: [(g << 12) + if unaligned { 8 } else { 0 }, pages, reserved],
        },
    )
}

/// An SMCCC call over either conduit.
fn call(id: u64, args: [u64; 3], smc: bool) -> GuestOp {
    if smc {
        GuestOp::Smc { id, args }
    } else {
        GuestOp::Hvc { id, args }
    }
}

fn psci_op() -> impl Strategy<Value = GuestOp> {
    let mpidr = prop::sample::select(vec![0u64, 1, 2, 1 << 8, 0x1_0000_0001]);
    let fid = prop::sample::select(vec![
        SMCCC_VERSION,
        CPU_ON,
        CPU_ON | SMC64,
        CPU_OFF,
        MIGRATE,
        SYSTEM_RESET2 | SMC64,
        0x8400_00ff,
        GuestCall::MemShare.id() as u32,
    ]);
    let simple = prop::sample::select(vec![
        (GuestCall::CallUid.id(), [0, 0, 0]),
        (GuestCall::Features.id(), [0, 0, 0]),
        (GuestCall::HypMeminfo.id(), [0, 0, 0]),
        (GuestCall::HypMeminfo.id(), [1, 0, 0]),
        (u64::from(SMCCC_VERSION), [0, 0, 0]),
        (u64::from(SMCCC_ARCH_FEATURES), [0x8000_0001, 0, 0]),
        (u64::from(SMCCC_ARCH_FEATURES), [0x8000_8000, 0, 0]),
        (u64::from(PSCI_VERSION), [0, 0, 0]),
        (u64::from(MIGRATE_INFO_TYPE), [0, 0, 0]),
        (u64::from(MIGRATE), [0, 0, 0]),
        (u64::from(CPU_SUSPEND | SMC64), [0, 0, 0]),
        (0xffff_ffff_0000_0000 | u64::from(PSCI_VERSION), [0, 0, 0]),
        (u64::from(PSCI_VERSION) | SMCCC_SVE_HINT, [0, 0, 0]),
    ]);
    prop_oneof![
        6 => (simple, any::<bool>()).prop_map(|((id, a), smc)| call(id, a, smc)),
        2 => (fid, any::<bool>()).prop_map(|(f, smc)| call(u64::from(PSCI_FEATURES), [u64::from(f), 0, 0], smc)),
        4 => (mpidr.clone(), any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(t, e, c, wide, smc)| {
                let id = if wide { CPU_ON | SMC64 } else { CPU_ON };
                call(u64::from(id), [t, e, c], smc)
            }),
        2 => (mpidr, 0..2u64, any::<bool>()).prop_map(|(t, level, smc)| {
            call(u64::from(AFFINITY_INFO | SMC64), [t, level, 0], smc)
        }),
        1 => Just(GuestOp::Hvc { id: u64::from(CPU_OFF), args: [0; 3] }),
        1 => prop::sample::select(vec![
            (SYSTEM_OFF, 0u64),
            (SYSTEM_RESET, 0),
            (SYSTEM_RESET2 | SMC64, 0),
            (SYSTEM_RESET2 | SMC64, 1),
            (SYSTEM_RESET2, 0x8000_0000),
        ])
        .prop_map(|(id, t)| GuestOp::Hvc { id: u64::from(id), args: [t, 0, 0] }),
    ]
}

fn guest_op() -> impl Strategy<Value = GuestOp> {
    // An undefined instruction stops the vCPU for good: rare.
    prop_oneof![
        300 => live_op(),
        1 => Just(GuestOp::Undefined { esr: 0x18 << 26 }),
    ]
}

fn live_op() -> impl Strategy<Value = GuestOp> {
    let ipa = prop_oneof![5 => gfn().prop_map(|g| g << 12), 1 => Just(MMIO_GFN << 12)];
    prop_oneof![
        6 => range_call(GuestCall::MemShare),
        4 => range_call(GuestCall::MemUnshare),
        2 => range_call(GuestCall::MemRelinquish),
        2 => (ipa.clone(), prop::sample::select(vec![0u64, 0, 0, 1]), any::<bool>()).prop_map(|(ipa, a2, odd)| GuestOp::Hvc {
            id: GuestCall::MmioGuard.id(),
            args: [ipa + if odd { 8 } else { 0 }, a2, 0],
        }),
        3 => (gfn(), any::<u8>()).prop_map(|(g, byte)| GuestOp::Fill { ipa: g << 12, byte }),
        3 => ipa.prop_map(|ipa| GuestOp::Load { ipa }),
        1 => any::<u64>().prop_map(|value| GuestOp::Store { ipa: (STORE_GFN << 12) + 8, value }),
        5 => psci_op(),
        1 => Just(GuestOp::Wfi),
        1 => (any::<u64>(), any::<[u64; 3]>()).prop_map(|(id, args)| GuestOp::Hvc { id, args }),
    ]
}

fn complete() -> impl Strategy<Value = Complete> {
    prop_oneof![
        6 => Just(Complete::No),
        3 => any::<u64>().prop_map(Complete::Values),
        1 => Just(Complete::Fail),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    use HostCall::*;
    let h = handle;
    let host = |c: HostCall, a: [u64; 5]| Step::Host(c, a);
    prop_oneof![
        3 => (h(), pfn(), gfn(), extent()).prop_map(move |(h, p, g, n)| host(DonateGuest, [h, p, g, n, 0])),
        2 => (h(), pfn(), gfn(), extent()).prop_map(move |(h, p, g, n)| host(ShareGuest, [h, p, g, n, 0])),
        1 => (h(), gfn(), extent()).prop_map(move |(h, g, n)| host(UnshareGuest, [h, g, n, 0, 0])),
        5 => (h(), gfn(), range_pages(), 0..3u64).prop_map(move |(h, g, n, s)| host(ConvertComplete, [h, g, n, s, 0])),
        2 => h().prop_map(move |h| host(ConvertRefuse, [h, 0, 0, 0, 0])),
        2 => (h(), gfn(), extent()).prop_map(move |(h, g, n)| host(Reclaim, [h, g, n, 0, 0])),
        1 => (pfn(), 0..0x1000u64).prop_map(move |(p, o)| host(ForceReclaim, [p.wrapping_shl(12) | o, 0, 0, 0, 0])),
        1 => pfn().prop_map(move |p| host(ShareHyp, [p, 0, 0, 0, 0])),
        1 => pfn().prop_map(move |p| host(UnshareHyp, [p, 0, 0, 0, 0])),
        // Mostly the second VM: the first, with two vCPUs, lives longer.
        1 => prop_oneof![1 => Just(HANDLE0), 3 => Just(HANDLE0 + 1), 1 => h()]
            .prop_map(move |h| host(TeardownStart, [h, 0, 0, 0, 0])),
        1 => h().prop_map(move |h| host(TeardownFinish, [h, 0, 0, 0, 0])),
        1 => pfn().prop_map(move |p| host(PageState, [p, 0, 0, 0, 0])),
        1 => (h(), gfn()).prop_map(move |(h, g)| host(GuestPageState, [h, g, 0, 0, 0])),
        1 => (h(), 0..3u64, any::<u64>(), any::<u64>()).prop_map(move |(h, v, e, x)| host(VcpuInit, [h, v, e, x, 0])),
        1 => (h(), pfn(), prop::sample::select(vec![1u64, 2, 0, 513])).prop_map(move |(h, p, n)| host(MemcacheTopup, [h, p, n, 0, 0])),
        1 => prop::sample::select(vec![Version, Finalize, HostStats, CheckInvariants]).prop_map(move |c| host(c, [0; 5])),
        1 => (pfn(), 0..3u64).prop_map(move |(p, n)| host(HypPoolDonate, [p, n, 0, 0, 0])),
        1 => (h(), prop::sample::select(vec![0u64, 31, 32, 95, 96, 1 << 33]), 0..3u64).prop_map(move |(h, i, l)| host(IrqLine, [h, i, l, 0, 0])),
        1 => (0..HostCall::ALL.len(), any::<[u64; 5]>(), any::<prop::sample::Index>()).prop_map(move |(n, mut a, at)| {
            // A non-zero register beyond the call's arity.
            let c = HostCall::ALL[n];
            let arity = arity(c);
            if arity < 5 {
                a[arity + at.index(5 - arity)] |= 1;
            }
            host(c, a)
        }),
        1 => (0..HostCall::ALL.len(), prop::array::uniform5(1..=u64::MAX)).prop_map(move |(n, a)| host(HostCall::ALL[n], a)),
        2 => (pfn(), any::<u8>()).prop_map(|(p, b)| Step::HostFill(p, b)),
        20 => (
            // VM 0 has vCPUs 0 and 1, VM 1 only vCPU 0.
            prop_oneof![5 => Just(0u64), 4 => Just(1u64), 1 => Just(2u64)],
            prop_oneof![9 => Just(0u64), 1 => Just(1u64)],
            any::<bool>(),
            prop::collection::vec(guest_op(), 0..7),
            complete(),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(v0, v1, second, ops, complete, fresh)| {
                let (vm, vcpu) = if second { (1, v1) } else { (0, v0) };
                Step::Run { vm, vcpu, ops, complete, fresh }
            }),
    ]
}

/// The host donates or lends a page or a block to a VM (aimed at pages
/// and gfns it can use).
fn memory_step() -> impl Strategy<Value = Step> {
    (
        0..2u64,
        prop::bool::weighted(0.75),
        prop_oneof![2 => Just(1u64), 1 => Just(512u64)],
    )
        .prop_map(|(vm, donate, n)| {
            let c = if donate {
                HostCall::DonateGuest
            } else {
                HostCall::ShareGuest
            };
            Step::Host(c, [HANDLE0 + vm, SINGLES[0], GFNS[0], n, 0])
        })
}

// ---------------------------------------------------------------------
// Aiming: most steps are pointed at pages and requests in the state they
// need, so that the success paths run as often as the refusals.

/// A small deterministic generator from the step's seed.
struct Pick(u64);

impl Pick {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn one<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.next() as usize % v.len()])
        }
    }
}

fn vm_index(h: u64) -> Option<usize> {
    h.checked_sub(HANDLE0)
        .filter(|i| *i < 2)
        .map(|i| i as usize)
}

fn gfns_where(m: &Model, vm: usize, f: impl Fn(&MGPage) -> bool) -> Vec<u64> {
    m.vms[vm]
        .pages
        .iter()
        .filter(|(_, p)| f(p))
        .map(|(g, _)| *g)
        .collect()
}

fn pages_where(m: &Model, f: impl Fn(&MPage) -> bool) -> Vec<u64> {
    m.pages
        .iter()
        .filter(|(p, e)| **p < CARVE && f(e))
        .map(|(p, _)| *p)
        .collect()
}

/// A range of `n` pages around `g`: `g` itself, or for a long range the
/// start of its 2 MiB block or the page before or after it.
fn range_at(g: u64, n: u64, pick: &mut Pick) -> u64 {
    if n < 8 {
        g
    } else {
        let b = g & !511;
        pick.one(&[b, b, b + 1, b.saturating_sub(1)]).unwrap()
    }
}

fn aim_host(m: &Model, c: HostCall, a: [u64; 5], pick: &mut Pick) -> [u64; 5] {
    use HostCall::*;
    let mut a = a;
    // Answers go to a VM with a pending request, reclaims to a dying VM.
    let wanted = |v: &MVm| match c {
        ConvertComplete | ConvertRefuse => v.pending.is_some(),
        Reclaim => v.dying,
        _ => true,
    };
    if let Some(vm) = vm_index(a[0])
        && (m.vms[vm].gone || !wanted(&m.vms[vm]))
        && !pick.one_in(4)
        && let Some(other) = (0..2).find(|o| !m.vms[*o].gone && wanted(&m.vms[*o]))
    {
        a[0] = HANDLE0 + other as u64;
    }
    let Some(vm) = vm_index(a[0]).filter(|vm| !m.vms[*vm].gone) else {
        return a;
    };
    match c {
        DonateGuest | ShareGuest => {
            let n = a[3];
            let lend = |p: &MPage| {
                if c == DonateGuest {
                    p.host_owned()
                } else {
                    p.owner == MOwner::Host
                        && p.hyp == PS::NoPage
                        && (p.host == PS::Owned || p.host == PS::SharedOwned && p.shares > 0)
                }
            };
            let empty = |g: u64| matches!(m.g(vm, g).state, GS::NoPage | GS::Relinquished);
            if n == 512 {
                if (BLOCK..BLOCK + 512).all(|p| lend(&m.page(p).unwrap())) {
                    a[1] = BLOCK;
                }
                let gs: Vec<u64> = [0x200, 0x80000]
                    .into_iter()
                    .filter(|g| (*g..*g + 512).all(empty))
                    .collect();
                a[2] = pick.one(&gs).unwrap_or(a[2]);
            } else if n == 1 {
                let ps = pages_where(m, |p| lend(p));
                a[1] = pick.one(&ps).unwrap_or(a[1]);
                // Where a vCPU faulted (so that it can go on), or one of ours.
                let faults: Vec<u64> = m.vms[vm]
                    .vcpus
                    .iter()
                    .filter_map(|v| v.fault)
                    .filter(|g| *g < GFN_LIMIT && *g != STORE_GFN && empty(*g))
                    .collect();
                let gs: Vec<u64> = GFNS.iter().copied().filter(|g| empty(*g)).collect();
                let from = if !faults.is_empty() && !pick.one_in(3) {
                    faults
                } else {
                    gs
                };
                a[2] = pick.one(&from).unwrap_or(a[2]);
            }
        }
        UnshareGuest => {
            if let Some(g) = pick.one(&gfns_where(m, vm, |p| p.state == GS::SharedBorrowed)) {
                let block = m.g(vm, g).block_share;
                a[1] = if block { g & !511 } else { g };
                a[2] = if block { 512 } else { 1 };
            }
        }
        Reclaim => {
            // Live VMs too: reclaiming from them must be refused.
            let gs = gfns_where(m, vm, |p| p.pfn.is_some() || p.state == GS::Poisoned);
            if let Some(g) = pick.one(&gs) {
                a[1] = if a[2] == 512 { g & !511 } else { g };
            }
        }
        ConvertComplete => {
            if let Some(c) = m.vms[vm].pending
                && !pick.one_in(5)
            {
                a[1] = c.gfn.0;
                a[2] = c.pages;
                a[3] = u64::from(c.kind == ConversionKind::Share);
            }
        }
        _ => {}
    }
    a
}

fn aim_pfn(m: &Model, c: HostCall, a: [u64; 5], pick: &mut Pick) -> [u64; 5] {
    let mut a = a;
    let ps = match c {
        HostCall::ForceReclaim => pages_where(m, |p| {
            matches!(p.owner, MOwner::Guest(..)) && p.host == PS::NoPage
        }),
        HostCall::ShareHyp => pages_where(m, |p| p.host_owned()),
        HostCall::UnshareHyp => pages_where(m, |p| {
            (p.host, p.hyp) == (PS::SharedOwned, PS::SharedBorrowed)
        }),
        _ => return a,
    };
    if let Some(p) = pick.one(&ps) {
        a[0] = if c == HostCall::ForceReclaim {
            (p << 12) | (a[0] & 0xfff)
        } else {
            p
        };
    }
    a
}

/// Points guest range calls and accesses at pages in the state they need.
fn aim_ops(m: &Model, vm: usize, ops: Vec<GuestOp>, pick: &mut Pick) -> Vec<GuestOp> {
    let owned = gfns_where(m, vm, |p| p.state == GS::Owned);
    let shared = gfns_where(m, vm, |p| p.state == GS::SharedOwned);
    let mine = gfns_where(m, vm, |p| matches!(p.state, GS::Owned | GS::SharedOwned));
    let mapped = gfns_where(m, vm, |p| mapped(p.state));
    ops.into_iter()
        .map(|op| {
            if pick.one_in(4) {
                return op;
            }
            match op {
                GuestOp::Hvc { id, args } => {
                    let from = match GuestCall::from_id(id) {
                        Some(GuestCall::MemShare) => &owned,
                        Some(GuestCall::MemUnshare) => &shared,
                        Some(GuestCall::MemRelinquish) => &mine,
                        _ => return op,
                    };
                    let Some(g) = pick.one(from) else {
                        return op;
                    };
                    let start = range_at(g, args[1], pick);
                    let n = args[1].clamp(1, GUEST_RANGE);
                    // A range that cannot be converted as a whole mostly
                    // becomes the one page.
                    let whole = start
                        .checked_add(n)
                        .is_some_and(|end| (start..end).all(|g| from.contains(&g)));
                    let pages = if whole || pick.one_in(2) { args[1] } else { 1 };
                    let start = if pages == args[1] { start } else { g };
                    GuestOp::Hvc {
                        id,
                        args: [start << 12, pages, args[2]],
                    }
                }
                GuestOp::Fill { byte, .. } => match pick.one(&mapped) {
                    Some(g) => GuestOp::Fill { ipa: g << 12, byte },
                    None => op,
                },
                GuestOp::Load { .. } => match pick.one(&mapped) {
                    Some(g) => GuestOp::Load { ipa: g << 12 },
                    None => op,
                },
                _ => op,
            }
        })
        .collect()
}

/// The completion a run is most likely to need.
fn aim_complete(m: &Model, vm: usize, vcpu: u64, c: Complete, pick: &mut Pick) -> Complete {
    let Some(v) = m.vms[vm].vcpus.get(vcpu as usize) else {
        return c;
    };
    match v.waiting {
        Waiting::Fault { isv: true, .. } => match c {
            Complete::Values(_) => c,
            _ => Complete::Values(pick.next()),
        },
        Waiting::Fault { hvc: true, .. } => {
            if pick.one_in(2) {
                Complete::Fail
            } else {
                Complete::No
            }
        }
        Waiting::CpuOn { .. } => match pick.next() % 4 {
            0 => Complete::No,
            1 => Complete::Values(neg(PSCI_INVALID_ADDRESS)),
            2 => Complete::Values(7),
            _ => Complete::Values(0),
        },
        _ => Complete::No,
    }
}

// ---------------------------------------------------------------------
// The test.

struct T {
    m: Machine,
    model: Model,
}

fn gh(vm: usize) -> GuestHandle {
    GuestHandle((HANDLE0 as usize + vm) as u16)
}

impl T {
    fn new() -> T {
        let mut m = Machine::new();
        for (i, (pgd, meta, mc, vcpus)) in VMS.into_iter().enumerate() {
            let r = m.call(HostCall::VmCreate, &[40, pgd, meta, vcpus]);
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(r.vals[0], HANDLE0 + i as u64);
            let h = HANDLE0 + i as u64;
            assert!(m.call(HostCall::VcpuInit, &[h, 0, 0, 0]).is_ok());
            assert!(m.call(HostCall::MemcacheTopup, &[h, mc, MC_PAGES]).is_ok());
        }
        let t = T {
            m,
            model: Model::new(),
        };
        t.compare("set-up").unwrap();
        t
    }

    fn host_call(&mut self, call: HostCall, a: [u64; 5], what: &str) -> Result<(), TestCaseError> {
        let events = self.m.arch.events.len();
        let mut seen = Seen::default();
        let want = self.model.host_call(call, a, &mut seen);
        let r = self.m.call(call, &a);
        match want {
            Want::NotSupported => {
                prop_assert_eq!(r.status, SMCCC_NOT_SUPPORTED, "{}: {:?}", what, r)
            }
            Want::Err(e) => {
                prop_assert_eq!((r.status, r.ret), (SMCCC_SUCCESS, -e), "{}: {:?}", what, r)
            }
            Want::Ok(v) => {
                prop_assert_eq!((r.status, r.ret), (SMCCC_SUCCESS, 0), "{}: {:?}", what, r);
                if let Some(v) = v {
                    prop_assert_eq!(
                        r.vals,
                        v,
                        "{}: values (exit {:?}, predicted {:?})",
                        what,
                        Exit::from_regs(r.vals),
                        Exit::from_regs(v)
                    );
                }
            }
        }
        let got = &self.m.arch.events[events..];
        prop_assert_eq!(got, &seen.events[..], "{}: what the guest saw", what);
        for (key, entry) in seen.entries {
            prop_assert_eq!(
                self.m.arch.entries.get(&key),
                Some(&entry),
                "{}: vCPU {:?} started at (pc, x0)",
                what,
                key
            );
        }
        Ok(())
    }

    fn step(&mut self, s: Step, seed: u64, aimed: bool) -> Result<(), TestCaseError> {
        let mut pick = Pick(seed);
        match s {
            Step::Host(c, a) => {
                let a = if aimed {
                    aim_pfn(
                        &self.model,
                        c,
                        aim_host(&self.model, c, a, &mut pick),
                        &mut pick,
                    )
                } else {
                    a
                };
                let what = format!("{c:?} {a:#x?}");
                self.host_call(c, a, &what)?;
                self.compare(&what)?;
            }
            Step::HostFill(pfn, byte) => {
                // (The simulator's host access takes a frame that fits an
                // address: u64::MAX would overflow it.)
                let pfn = pfn.min(RAM_END);
                let pfn = if aimed {
                    pick.one(&pages_where(&self.model, |p| p.host != PS::NoPage))
                        .unwrap_or(pfn)
                } else {
                    pfn
                };
                let what = format!("host fill of {pfn:#x} with {byte:#x}");
                let want = is_ram(pfn, 1) && self.model.host_fill(pfn, byte);
                let got = self.m.host_fill_page(pfn, byte);
                prop_assert_eq!(got.is_ok(), want, "{}: {:?}", what, got);
                self.compare(&what)?;
            }
            Step::Run {
                vm,
                vcpu,
                ops,
                complete,
                fresh,
            } => {
                let mut vm = vm;
                let usable = |v: &MVm| !v.gone && !v.dying;
                if aimed && !usable(&self.model.vms[vm]) && !pick.one_in(4) {
                    // Mostly run a VM that can run.
                    let other = 1 - vm;
                    if usable(&self.model.vms[other]) {
                        vm = other;
                    }
                }
                let mut vcpu = vcpu;
                let vcpus = &self.model.vms[vm].vcpus;
                if aimed
                    && vcpus
                        .get(vcpu as usize)
                        .is_none_or(|v| v.power != Power::On)
                {
                    // Mostly run a vCPU that is on.
                    let on: Vec<u64> = (0..vcpus.len() as u64)
                        .filter(|i| vcpus[*i as usize].power == Power::On)
                        .collect();
                    if !pick.one_in(4) {
                        vcpu = pick.one(&on).unwrap_or(vcpu);
                    }
                }
                let complete = if aimed {
                    aim_complete(&self.model, vm, vcpu, complete, &mut pick)
                } else {
                    complete
                };
                let live = !self.model.vms[vm].gone;
                // A script stuck on an access the host has not mapped is
                // mostly replaced (else the vCPU retries it).
                let stuck = self.model.next_faults(vm, vcpu as usize)
                    && !matches!(complete, Complete::Values(_))
                    && !pick.one_in(3);
                if let Some(v) = self.model.vms[vm].vcpus.get(vcpu as usize)
                    && live
                    && !v.awaiting()
                    && (fresh || v.reset || v.finished() || stuck)
                {
                    let ops = if aimed {
                        aim_ops(&self.model, vm, ops, &mut pick)
                    } else {
                        ops
                    };
                    self.model.script(vm, vcpu as usize, ops.clone());
                    self.m.arch.script(gh(vm), vcpu as usize, ops);
                }
                let h = HANDLE0 + vm as u64;
                let a = match complete {
                    Complete::No => [h, vcpu, 0, 0, 0],
                    Complete::Values(v) => [h, vcpu, RUN_COMPLETE_ACCESS, v, 0],
                    Complete::Fail => [h, vcpu, RUN_FAIL_ACCESS, 0, 0],
                };
                let what = format!(
                    "run VM {vm} vCPU {vcpu} ({complete:?}), script {:x?} at {}",
                    self.model.vms[vm].vcpus.get(vcpu as usize).map(|v| &v.ops),
                    self.model.vms[vm]
                        .vcpus
                        .get(vcpu as usize)
                        .map_or(0, |v| v.pc),
                );
                self.host_call(HostCall::VcpuRun, a, &what)?;
                self.compare(&what)?;
            }
        }
        Ok(())
    }

    /// Everything the model tracks equals the machine's.
    fn compare(&self, what: &str) -> Result<(), TestCaseError> {
        let o = &self.m.hyp.mem;
        prop_assert_eq!(self.m.hyp.is_finalized(), self.model.finalized, "{}", what);
        for (&pfn, p) in &self.model.pages {
            let e = o.page(Pfn(pfn)).unwrap();
            let owner = match e.owner() {
                Owner::Host => MOwner::Host,
                Owner::Hyp => MOwner::Hyp,
                Owner::Guest { handle, gfn } => {
                    MOwner::Guest(usize::from(handle.0) - HANDLE0 as usize, gfn.0)
                }
            };
            prop_assert_eq!(
                (e.host(), e.hyp(), owner, e.share_count(), e.pins()),
                (p.host, p.hyp, p.owner, p.shares, 0),
                "page {:#x} after {}",
                pfn,
                what
            );
            if let Some(b) = p.byte {
                let bytes = self.m.ram.read_page(Pfn(pfn));
                prop_assert!(
                    bytes.iter().all(|x| *x == b),
                    "bytes of page {:#x} after {}: {:#x}.. want {:#x}",
                    pfn,
                    what,
                    bytes[0],
                    b
                );
            }
        }
        for (vm, mv) in self.model.vms.iter().enumerate() {
            let h = gh(vm);
            if mv.gone {
                prop_assert_eq!(
                    o.guest_state(h, Gfn(GFNS[0])),
                    Err(ownership::Errno::Einval)
                );
                prop_assert!(self.m.hyp.vcpu_waiting(h, 0).is_err(), "VM {} gone", vm);
                continue;
            }
            for (&g, gp) in &mv.pages {
                let (s, p) = o.guest_state(h, Gfn(g)).unwrap();
                prop_assert_eq!(
                    (s, p.map(|p| p.0)),
                    (gp.state, gp.pfn),
                    "VM {} gfn {:#x} after {}",
                    vm,
                    g,
                    what
                );
            }
            let (pending, dying) = o.with_guest(h, |g| (g.pending(), g.is_dying())).unwrap();
            prop_assert_eq!(
                (pending, dying),
                (mv.pending, mv.dying),
                "VM {} after {}",
                vm,
                what
            );
            for (i, v) in mv.vcpus.iter().enumerate() {
                prop_assert_eq!(
                    (self.m.hyp.vcpu_power(h, i), self.m.hyp.vcpu_waiting(h, i)),
                    (Ok(v.power), Ok(v.waiting)),
                    "VM {} vCPU {} after {}",
                    vm,
                    i,
                    what
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn host_and_guest_calls_match_the_model(
        memory in prop::collection::vec((memory_step(), any::<u64>()), 1..6),
        steps in prop::collection::vec((step(), any::<u64>(), prop::bool::weighted(0.7)), 1..60)
    ) {
        let mut t = T::new();
        // The host first gives the VMs some memory, then anything goes.
        for (s, seed) in memory {
            t.step(s, seed, true)?;
        }
        for (s, seed, aimed) in steps {
            t.step(s, seed, aimed)?;
        }
    }
}
