//! The simulated machine the hypervisor targets run on, and what they
//! check after every step.
//!
//! The machine is `el2::sim::Machine` (the real hypervisor core, the
//! real host call decoder and dispatcher, scripted guests whose accesses go
//! through their stage-2) with 8 MiB of RAM instead of the 32 MiB of
//! `Machine::new`: the invariant checker and the host-access oracle walk
//! every page after every step, so a quarter of the pages is four times
//! the executions. Four 2 MiB blocks are plenty: the targets use one for
//! VM pages and single pages, two for 2 MiB shares and donations, and the
//! top one holds the hypervisor's 1 MiB carve-out (so the host stage-2
//! maps that block in pages).
//!
//! After every step, [`Oracle::check`]:
//! 1. runs the ownership invariant checker (`Machine::check`);
//! 2. for **every** page of RAM, reads the ownership table and checks
//!    whether the host stage-2 lets the host read the page, walking its
//!    raw descriptors with `el2::sim::translate_with` (the simulator's
//!    walker, written from the architecture, that `Machine`'s host
//!    accessors use): a page the hypervisor owns, or a guest owns
//!    privately (host state `NoPage`), must be unreadable; every other
//!    page (the host's, or a guest's page shared with the host) readable;
//! 3. the host then really reads and writes back (`Machine`'s
//!    `host_interface::hypervisor::Hypervisor` impl: `read`, `write`) every
//!    page whose access changed since the last check, and a rotating
//!    sample of eight others: both refused exactly when closed;
//! 4. after every host call ([`Oracle::after_call`]), a page the host could
//!    not access before the call and owns after it (a teardown, a reclaim,
//!    a relinquish, a force reclaim) must read as zeros through the host's
//!    mapping (`host_read_page`): nothing of a guest or of the hypervisor
//!    leaks through a page handed back;
//! 5. compares what the `PageState` host call reports (states, owner,
//!    share count and pins) with the table, for four pages (a different
//!    four each time).
//!
//! [`Sim::finish`] tears every VM down as a host would (teardown start,
//! reclaim of every 2 MiB region the VM was given memory in, teardown
//! finish, every hypervisor share ended) and then accounts for every page:
//! the carve-out and the pages donated to the hypervisor's pool are the
//! hypervisor's, every other page is the host's alone, with no share, no
//! pin and no VM left.

use el2::sim::{Machine, Reply, SimArch, translate_with};
use host_interface::abi::{GuestState, HostCall, encode_owner, errno, page_state};
use host_interface::hypervisor::Hypervisor as _;
use ownership::testing::{RecordingHyp, SimRam};
use ownership::{Layout, MemRegion, Owner, Ownership, PageState, Pfn};
use stage2::testing::ArenaPool;
use stage2::{PAGE_SIZE, PaRange, PhysAddr, TablePool};
use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

/// First frame of RAM (0x4000_0000, as `Machine::new`).
pub const RAM: u64 = Machine::RAM_BASE / PAGE_SIZE;
/// Pages of RAM: 8 MiB.
pub const RAM_PAGES: u64 = 2048;
/// One past the last frame of RAM.
pub const RAM_END: u64 = RAM + RAM_PAGES;
/// Pages of the hypervisor's carve-out at the top of RAM: 1 MiB.
pub const CARVE_PAGES: u64 = 256;
/// First frame of the carve-out.
pub const CARVE: u64 = RAM_END - CARVE_PAGES;
/// Pages of the arena the host stage-2's tables come from.
const ARENA_PAGES: usize = 256;
/// The host's MMIO (as `Machine::new`): 32 MiB at 0x0800_0000, the GIC
/// and the UART of QEMU's virt machine among it.
const MMIO: (u64, u64) = (0x0800_0000, 0x0200_0000);

/// Keeps the machine's big allocations (simulated RAM, the table arena)
/// on fresh zero pages: glibc otherwise raises its mmap threshold after the
/// first machine is freed and serves the next one from the heap, where
/// `calloc` must clear 9 MiB (which then costs more than everything a
/// target does with the machine). Setting the threshold turns that
/// adjustment off.
fn fresh_zero_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            /// glibc's `M_MMAP_THRESHOLD`.
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: glibc's `mallopt` takes two ints and only changes an
            // allocator setting; it is safe to call at any time.
            unsafe { mallopt(M_MMAP_THRESHOLD, 256 * 1024) };
        });
    }
}

/// A simulated machine with 8 MiB of RAM (module docs). The invariant
/// checker is left to the oracle, which runs it after every step
/// (`check_calls` off: a step can make hundreds of host calls).
pub fn machine() -> Machine {
    fresh_zero_pages();
    let ram = SimRam::new(Machine::RAM_BASE, RAM_PAGES * PAGE_SIZE);
    let mut arch = SimArch::new(ram.mem());
    let layout = Layout {
        pa_range: PaRange::Bits40,
        ram: &[MemRegion {
            base: Pfn(RAM),
            pages: RAM_PAGES,
        }],
        mmio: &[(PhysAddr(MMIO.0), MMIO.1)],
        hyp: &[MemRegion {
            base: Pfn(CARVE),
            pages: CARVE_PAGES,
        }],
    };
    let own = Ownership::new(
        layout,
        ram.mem(),
        ArenaPool::new(ARENA_PAGES),
        RecordingHyp::default(),
        &mut arch.tlb,
    )
    .expect("simulated machine set-up");
    Machine {
        hyp: el2::hyp::Hypervisor::new(own),
        arch,
        ram,
        check_calls: false,
    }
}

/// What the host may do with a page, by the ownership table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    /// Read and write: the host's, or a guest's page shared with it.
    Open,
    /// Nothing: the hypervisor's, or a guest's private page.
    Closed,
}

fn access(e: ownership::PageEntry) -> Access {
    match e.owner() {
        Owner::Host => Access::Open,
        Owner::Hyp => Access::Closed,
        Owner::Guest { .. } if e.host() == PageState::NoPage => Access::Closed,
        Owner::Guest { .. } => Access::Open,
    }
}

/// Whether the host stage-2 lets the host read each page of RAM:
/// `el2::sim::translate_with` (the simulator's walker, written from the
/// architecture, which `Machine`'s host accessors use) over the raw
/// descriptors of the host stage-2.
fn host_walk(m: &Machine) -> Vec<bool> {
    m.hyp.mem.with_host(|h| {
        let (vttbr, vtcr) = (h.stage2().vttbr(), h.stage2().vtcr());
        let read = |table_pa: u64| {
            let page = h.pool().table_ptr(PhysAddr(table_pa & !(PAGE_SIZE - 1)));
            // SAFETY: a table page of the host stage-2 (`table_ptr` checks
            // it is in the arena), valid while the host lock is held; the
            // offset is inside it and 8-byte aligned.
            unsafe {
                page.as_ptr()
                    .add(((table_pa % PAGE_SIZE) / 8) as usize)
                    .read_volatile()
            }
        };
        (RAM..RAM_END)
            .map(|pfn| translate_with(read, vttbr, vtcr, pfn * PAGE_SIZE, false).is_ok())
            .collect()
    })
}

/// A page state as the `PageState` host call encodes it (pKVM's values).
fn state_code(s: PageState) -> u64 {
    match s {
        PageState::Owned => page_state::OWNED,
        PageState::SharedOwned => page_state::SHARED_OWNED,
        PageState::SharedBorrowed => page_state::SHARED_BORROWED,
        PageState::NoPage => page_state::NOPAGE,
    }
}

/// A snapshot of the ownership table, one entry per page of RAM.
fn table(m: &Machine) -> Vec<ownership::PageEntry> {
    m.hyp
        .mem
        .with_host(|h| h.table().iter().map(|(_, e)| e).collect())
}

/// The checks run after every step (module docs).
pub struct Oracle {
    /// Whether the host could access each page at the last step's check.
    open: Vec<bool>,
    /// Whether the host could access each page after the last host call.
    open_call: Vec<bool>,
    /// Checks so far (varies the byte accessed and the pages queried).
    checks: u64,
}

impl Oracle {
    /// After every host call: a page the host could not access after the
    /// previous call and owns now must read as zeros through the host's
    /// mapping (`host_read_page`).
    pub fn after_call(&mut self, m: &Machine) {
        let mut back = Vec::new();
        let open_call = &mut self.open_call;
        m.hyp.mem.with_host(|h| {
            for (i, ((_, e), was)) in h.table().iter().zip(open_call.iter_mut()).enumerate() {
                let open = access(e) == Access::Open;
                if open && !*was && e.owner() == Owner::Host {
                    back.push(RAM + i as u64);
                }
                *was = open;
            }
        });
        for pfn in back {
            let page = m.host_read_page(pfn).expect("an open page reads");
            if let Some(at) = page.iter().position(|b| *b != 0) {
                panic!(
                    "page {pfn:#x} came back to the host with data: byte {at:#x} is {:#04x}",
                    page[at]
                );
            }
        }
    }

    /// Reads and writes back one page as the host would
    /// (`Machine`'s `Hypervisor::read`/`write`): refused exactly if the page
    /// is closed to the host.
    fn access(&self, m: &mut Machine, pfn: u64, offset: u64, e: ownership::PageEntry) {
        let pa = pfn * PAGE_SIZE + offset;
        let mut buf = [0u8; 8];
        let read = m.read(pa, &mut buf);
        match access(e) {
            Access::Closed => {
                assert!(
                    read.is_err(),
                    "the host read page {pfn:#x} ({:?}, host {:?}): {buf:02x?}",
                    e.owner(),
                    e.host()
                );
                assert!(
                    m.write(pa, &[0x5a]).is_err(),
                    "the host wrote page {pfn:#x} ({:?}, host {:?})",
                    e.owner(),
                    e.host()
                );
            }
            Access::Open => {
                assert!(
                    read.is_ok(),
                    "the host cannot read page {pfn:#x} ({:?}, host {:?})",
                    e.owner(),
                    e.host()
                );
                // The same bytes back: the contents do not change.
                assert!(
                    m.write(pa, &buf).is_ok(),
                    "the host cannot write page {pfn:#x} ({:?}, host {:?})",
                    e.owner(),
                    e.host()
                );
            }
        }
    }

    /// The oracle of a fresh machine (checked once, invariants included).
    pub fn new(m: &mut Machine) -> Oracle {
        m.check();
        let open: Vec<bool> = table(m)
            .iter()
            .map(|e| access(*e) == Access::Open)
            .collect();
        let mut o = Oracle {
            open_call: open.clone(),
            open,
            checks: 0,
        };
        o.check(m);
        o
    }

    /// Runs every check; panics with what is wrong.
    pub fn check(&mut self, m: &mut Machine) {
        m.check();
        let entries = table(m);
        assert_eq!(entries.len() as u64, RAM_PAGES, "the table covers RAM");
        self.checks += 1;
        // Every page, through the host stage-2.
        let walked = host_walk(m);
        for (i, e) in entries.iter().enumerate() {
            let open = access(*e) == Access::Open;
            assert!(
                walked[i] == open,
                "host stage-2 of page {:#x} ({:?}, host {:?}): readable {}",
                RAM + i as u64,
                e.owner(),
                e.host(),
                walked[i]
            );
        }
        // The host's own accessors on the pages whose access changed and
        // on eight more (a different byte each time).
        let offset = (self.checks * 8 * 37) % PAGE_SIZE;
        for (i, e) in entries.iter().enumerate() {
            let open = access(*e) == Access::Open;
            let sampled = (i as u64 + self.checks * 13).is_multiple_of(RAM_PAGES / 8);
            if open != self.open[i] || sampled {
                self.access(m, RAM + i as u64, offset, *e);
            }
            self.open[i] = open;
        }
        // The PageState call reports what the table holds, for a few pages.
        let was = m.check_calls;
        m.check_calls = false;
        for k in 0..4u64 {
            let i = ((self.checks * 4 + k) * 97 % RAM_PAGES) as usize;
            let pfn = RAM + i as u64;
            let r = m.call(HostCall::PageState, &[pfn]);
            assert!(r.is_ok(), "PageState of a RAM page: {r:?}");
            let e = entries[i];
            let owner = match e.owner() {
                Owner::Host => 0,
                Owner::Hyp => 1,
                Owner::Guest { handle, gfn } => encode_owner(2, handle.0, gfn.0),
            };
            let counts = (u64::from(e.share_count()) << 16) | u64::from(e.pins());
            let want = [state_code(e.host()), state_code(e.hyp()), owner, counts];
            assert_eq!(r.vals[..4], want, "PageState of {pfn:#x}");
        }
        m.check_calls = was;
    }
}

/// What the host gave away, from the successful host calls (to take it
/// back and account for every page at the end).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// VMs created and not finished.
    pub vms: BTreeSet<u64>,
    /// Per VM: the 2 MiB regions (first gfn) it was given memory in.
    pub regions: BTreeMap<u64, BTreeSet<u64>>,
    /// Pages shared with the hypervisor, and how many times.
    pub hyp_shares: BTreeMap<u64, u64>,
    /// Pages donated to the hypervisor's pool (the hypervisor's for good).
    pub pool: BTreeSet<u64>,
}

impl Ledger {
    /// Records what a host call with registers `x` did, if it succeeded.
    pub fn record(&mut self, x: &[u64; 6], reply: &Reply) {
        if !reply.is_ok() {
            return;
        }
        let Some(call) = HostCall::from_id(x[0]) else {
            return;
        };
        match call {
            HostCall::VmCreate => {
                self.vms.insert(reply.vals[0]);
            }
            HostCall::ShareGuest | HostCall::DonateGuest => {
                let region = x[3] - x[3] % 512;
                self.regions.entry(x[1]).or_default().insert(region);
            }
            HostCall::TeardownFinish => {
                self.vms.remove(&x[1]);
                self.regions.remove(&x[1]);
            }
            HostCall::ShareHyp => *self.hyp_shares.entry(x[1]).or_default() += 1,
            HostCall::UnshareHyp => {
                if let Some(n) = self.hyp_shares.get_mut(&x[1]) {
                    *n -= 1;
                    if *n == 0 {
                        self.hyp_shares.remove(&x[1]);
                    }
                }
            }
            HostCall::HypPoolDonate => self.pool.extend(x[1]..x[1] + x[2]),
            _ => {}
        }
    }
}

/// A simulated machine with its oracle and ledger: what the hypervisor
/// targets drive.
pub struct Sim {
    /// The machine.
    pub m: Machine,
    /// What the host gave away.
    pub ledger: Ledger,
    oracle: Oracle,
}

impl Default for Sim {
    fn default() -> Sim {
        Sim::new()
    }
}

impl Sim {
    /// A fresh machine, checked once.
    pub fn new() -> Sim {
        let mut m = machine();
        let oracle = Oracle::new(&mut m);
        Sim {
            m,
            ledger: Ledger::default(),
            oracle,
        }
    }

    /// A host call with raw `x0`..`x5` (the invariant checker runs after
    /// it), recorded in the ledger.
    pub fn raw(&mut self, x: [u64; 6]) -> Reply {
        let r = self.m.raw_call(x);
        self.ledger.record(&x, &r);
        self.oracle.after_call(&self.m);
        r
    }

    /// A host call with `args` in `x1`...
    pub fn call(&mut self, call: HostCall, args: &[u64]) -> Reply {
        let mut x = [0u64; 6];
        x[0] = call.id();
        for (d, a) in x[1..].iter_mut().zip(args) {
            *d = *a;
        }
        self.raw(x)
    }

    /// A read-only query (no invariant check after it).
    pub fn query(&mut self, call: HostCall, args: &[u64]) -> Reply {
        let was = self.m.check_calls;
        self.m.check_calls = false;
        let r = self.call(call, args);
        self.m.check_calls = was;
        r
    }

    /// How guest `h` sees `gfn`.
    pub fn guest_state(&mut self, h: u64, gfn: u64) -> Option<(GuestState, u64)> {
        let r = self.query(HostCall::GuestPageState, &[h, gfn]);
        r.is_ok()
            .then(|| GuestState::from_raw(r.vals[0]).map(|s| (s, r.vals[1])))
            .flatten()
    }

    /// The ownership entry of `pfn`.
    pub fn page(&self, pfn: u64) -> Option<ownership::PageEntry> {
        self.m.hyp.mem.page(Pfn(pfn))
    }

    /// Whether the host owns `pfn` alone (it could give it away).
    pub fn host_free(&self, pfn: u64) -> bool {
        self.page(pfn).is_some_and(|e| {
            e.owner() == Owner::Host && e.host() == PageState::Owned && e.share_count() == 0
        })
    }

    /// The first page from `from` (up to the carve-out) the host owns
    /// alone.
    pub fn free_page(&self, from: u64) -> Option<u64> {
        (from.max(RAM)..CARVE).find(|p| self.host_free(*p))
    }

    /// Runs the oracle (module docs).
    pub fn check(&mut self) {
        self.oracle.check(&mut self.m);
    }

    /// Tears every VM down and accounts for every page (module docs).
    pub fn finish(mut self) {
        for h in self.ledger.vms.clone() {
            let r = self.call(HostCall::TeardownStart, &[h]);
            assert!(
                r.is_ok() || r.ret == -errno::EINVAL,
                "TeardownStart of VM {h:#x}: {r:?}"
            );
            let regions = self.ledger.regions.get(&h).cloned().unwrap_or_default();
            for gfn in regions {
                // A whole 2 MiB region at a time: never splits a block.
                let mut tries = 0;
                loop {
                    let r = self.call(HostCall::Reclaim, &[h, gfn, 512]);
                    if r.ret == -errno::ENOMEM && tries < 8 {
                        tries += 1;
                        let pfn = self.free_page(RAM).expect("a free host page");
                        let t = self.call(HostCall::MemcacheTopup, &[h, pfn, 1]);
                        assert!(t.is_ok(), "memcache top-up in teardown: {t:?}");
                        continue;
                    }
                    assert!(
                        r.is_ok() || r.ret == -errno::ENOENT,
                        "Reclaim of VM {h:#x} gfn {gfn:#x}+512: {r:?}"
                    );
                    break;
                }
            }
            let r = self.call(HostCall::TeardownFinish, &[h]);
            assert!(
                r.is_ok(),
                "TeardownFinish of VM {h:#x} (pages leaked): {r:?}"
            );
            self.check();
        }
        for (pfn, n) in self.ledger.hyp_shares.clone() {
            for _ in 0..n {
                let r = self.call(HostCall::UnshareHyp, &[pfn]);
                assert!(r.is_ok(), "UnshareHyp of {pfn:#x}: {r:?}");
            }
        }
        self.check();
        assert!(
            self.m.hyp.mem.guest_handles().is_empty(),
            "VMs left after teardown: {:?}",
            self.m.hyp.mem.guest_handles()
        );
        for (i, e) in table(&self.m).into_iter().enumerate() {
            let pfn = RAM + i as u64;
            if pfn >= CARVE || self.ledger.pool.contains(&pfn) {
                assert_eq!(
                    e.owner(),
                    Owner::Hyp,
                    "page {pfn:#x} stays the hypervisor's"
                );
            } else {
                let alone = e.owner() == Owner::Host
                    && (e.host(), e.hyp()) == (PageState::Owned, PageState::NoPage)
                    && e.share_count() == 0
                    && e.pins() == 0;
                assert!(
                    alone,
                    "page {pfn:#x} not back with the host after teardown: {:?} host {:?} hyp {:?} shares {} pins {}",
                    e.owner(),
                    e.host(),
                    e.hyp(),
                    e.share_count(),
                    e.pins()
                );
            }
        }
    }
}
