//! Shared set-up for the ownership tests: 16 MiB of simulated RAM at
//! 0x4000_0000 with the top 2 MiB carved out for the hypervisor, MMIO below
//! RAM, a host stage-2 pool, and recorded TLB maintenance and hypervisor
//! mappings.
#![allow(dead_code)]

use ownership::check::check;
use ownership::testing::{RecordingHyp, SimMem, SimRam};
use ownership::*;
use stage2::testing::ArenaPool;
use stage2::tlb::record::RecordingTlb;
use stage2::{BlockPolicy, PaRange, PhysAddr};

pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_PAGES: u64 = 4096;
pub const CARVE_PAGES: u64 = 512;
pub const RAM_PFN: u64 = RAM_BASE >> 12;
/// First page of the hypervisor carve-out.
pub const CARVE_PFN: u64 = RAM_PFN + RAM_PAGES - CARVE_PAGES;

pub type Own = Ownership<SimMem, ArenaPool, RecordingHyp>;

pub struct Env {
    pub ram: SimRam,
    pub tlb: RecordingTlb,
    pub o: Own,
}

impl Env {
    pub fn new() -> Env {
        Env::with_pool(ArenaPool::new(512))
    }

    pub fn with_pool(pool: ArenaPool) -> Env {
        Env::build(pool, BlockPolicy::Largest)
    }

    /// The host's RAM mapped with 4 KiB pages only.
    #[allow(dead_code)]
    pub fn pages_only() -> Env {
        Env::build(ArenaPool::new(512), BlockPolicy::PagesOnly)
    }

    fn build(pool: ArenaPool, policy: BlockPolicy) -> Env {
        let ram = SimRam::new(RAM_BASE, RAM_PAGES * 4096);
        let mut tlb = RecordingTlb::new();
        let layout = Layout {
            pa_range: PaRange::Bits40,
            ram: &[MemRegion {
                base: Pfn(RAM_PFN),
                pages: RAM_PAGES,
            }],
            mmio: &[(PhysAddr(0x0800_0000), 0x0200_0000)],
            hyp: &[MemRegion {
                base: Pfn(CARVE_PFN),
                pages: CARVE_PAGES,
            }],
        };
        let o = Ownership::new_with_policy(
            layout,
            policy,
            ram.mem(),
            pool,
            RecordingHyp::default(),
            &mut tlb,
        )
        .unwrap();
        let env = Env { ram, tlb, o };
        env.check();
        env
    }

    /// Runs the invariant checker; panics with the violation.
    pub fn check(&self) {
        if let Err(v) = check(&self.o) {
            panic!("invariant broken: {v}");
        }
    }

    /// A guest with a 40-bit IPA space, its root at `pgd` (2 pages) and
    /// `memcache` pages from `mc`.
    pub fn guest(&mut self, pgd: u64, mc: u64, memcache: u64) -> GuestHandle {
        let h = self.o.create_guest(&mut self.tlb, 40, Pfn(pgd)).unwrap();
        if memcache > 0 {
            self.o
                .topup_memcache(&mut self.tlb, h, Pfn(mc), memcache)
                .unwrap();
        }
        self.check();
        h
    }

    pub fn host(&self, pfn: u64) -> PageState {
        self.o.page(Pfn(pfn)).unwrap().host()
    }

    pub fn gstate(&self, h: GuestHandle, gfn: u64) -> GuestPageState {
        self.o.guest_state(h, Gfn(gfn)).unwrap().0
    }

    /// Host, hypervisor and two guest states as pKVM's table writes them.
    pub fn states(&self, pfn: u64, h: GuestHandle, gfn: u64) -> String {
        let e = self.o.page(Pfn(pfn)).unwrap();
        format!(
            "{}/{}/{}/{}",
            e.host().short(),
            e.hyp().short(),
            self.gstate(h, gfn).short(),
            self.gstate(h, gfn + 1).short()
        )
    }

    pub fn page_is(&self, pfn: u64, byte: u8) -> bool {
        self.ram.read_page(Pfn(pfn)).iter().all(|b| *b == byte)
    }
}
