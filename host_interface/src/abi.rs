//! The hypercall ABI between the hypervisor and its host (and the guest
//! calls the hypervisor answers), numbered once, here.
//!
//! # Host calls
//!
//! The host issues `HVC #0` with `x0` = [`HOST_CALL_BASE`] + n (SMCCC fast
//! call, 64-bit, vendor hypervisor service; bit 16, the SVE hint, is
//! ignored) and arguments in `x1`..`x5`. On return:
//!
//! - `x0` = SMCCC status: [`SMCCC_SUCCESS`] if the call exists, or
//!   [`SMCCC_NOT_SUPPORTED`] (unknown id, or an init-only call after
//!   [`HostCall::Finalize`]); nothing else is written then.
//! - `x1` = the result: 0 or a negative Linux errno ([`errno`]).
//! - `x2`.. = values, per call.
//!
//! | n | call | x1 (in) | x2 | x3 | x4 | x5 | values out |
//! |---|------|---------|----|----|----|----|------------|
//! | 0 | `Version` | – | – | – | – | – | x2 = [`ABI_VERSION`] |
//! | 1 | `ShareHyp` | pfn | – | – | – | – | – |
//! | 2 | `UnshareHyp` | pfn | – | – | – | – | – |
//! | 3 | `VmCreate` | ipa_bits | pgd pfn | meta pfn ([`VM_META_PAGES`] pages) | vcpus | – | x2 = handle |
//! | 4 | `VcpuInit` | handle | vcpu | entry IPA | x0 for the vCPU | – | – (only before the VM's first run) |
//! | 5 | `MemcacheTopup` | handle | pfn | pages | – | – | – |
//! | 6 | `ShareGuest` | handle | pfn | gfn | pages (1 or 512) | – | – |
//! | 7 | `UnshareGuest` | handle | gfn | pages (1 or 512) | – | – | – |
//! | 8 | `DonateGuest` | handle | pfn | gfn | pages (1 or 512) | – | – |
//! | 9 | `VcpuRun` | handle | vcpu | flags ([`RUN_COMPLETE_ACCESS`]) | value 0 | value 1 | x2 = exit reason, x3..x6 = exit data ([`Exit`]) |
//! | 10 | `ConvertComplete` | handle | gfn | pages | 1 = to shared, 0 = to private | – | – |
//! | 11 | `ConvertRefuse` | handle | – | – | – | – | – |
//! | 12 | `Reclaim` | handle | gfn | pages (1 or 512) | – | – | – |
//! | 13 | `ForceReclaim` | phys addr | – | – | – | – | – |
//! | 14 | `TeardownStart` | handle | – | – | – | – | – |
//! | 15 | `TeardownFinish` | handle | – | – | – | – | – |
//! | 16 | `PageState` | pfn | – | – | – | – | x2 = host state, x3 = hyp state, x4 = owner ([`encode_owner`]), x5 = share count << 16 \| pins |
//! | 17 | `GuestPageState` | handle | gfn | – | – | – | x2 = [`GuestState`], x3 = pfn or `u64::MAX` |
//! | 18 | `Finalize` | – | – | – | – | – | init-only: seals itself and every init-only call |
//! | 19 | `HypPoolDonate` | pfn | pages | – | – | – | init-only: pages for the hypervisor's allocator |
//! | 20 | `HostStats` | – | – | – | – | – | x2 = host-owned pages, x3 = host stage-2 leaves, x4 = its table pages, x5 = its annotated entries |
//! | 21 | `IrqLine` | handle | INTID (an SPI, 32..96) | level (0 or 1) | – | – | – (drives the line of a device the host emulates into the VM's virtual GIC) |
//! | 22 | `CheckInvariants` | – | – | – | – | – | x2 = 0, or 1 if el2's ownership invariant checker found a violation (el2 logs it); a debugging call that walks every page and stage-2 |
//!
//! # Starting vCPUs
//!
//! The host sets the entry point of the vCPUs it starts itself with
//! `VcpuInit`, which is only accepted before any vCPU of the VM has run
//! (it cannot steer a protected guest's vCPU later). Every other vCPU is
//! started by the guest: its PSCI `CPU_ON` names the target, the entry
//! point and the context id; el2 checks the target (a vCPU of this VM,
//! off, with no other `CPU_ON` pending) and asks the host with an
//! [`Exit::Hypercall`]; if the host completes it with x0 = 0 the target is
//! reset at the guest's entry point with the guest's context id in x0 (the
//! host never chooses them), else the call fails with the host's x0.
//! Running a vCPU that is off returns [`Exit::PoweredOff`] at once.
//!
//! # Guest calls (DESIGN §4, pKVM-compatible)
//!
//! HVC from a protected guest; SMCCC return values ([`SMCCC_SUCCESS`],
//! [`SMCCC_NOT_SUPPORTED`], [`SMCCC_INVALID_PARAMETER`]); x4–x17 are
//! preserved. See [`GuestCall`].

/// SMCCC: success.
pub const SMCCC_SUCCESS: i64 = 0;
/// SMCCC: unknown function.
pub const SMCCC_NOT_SUPPORTED: i64 = -1;
/// SMCCC: not required.
pub const SMCCC_NOT_REQUIRED: i64 = -2;
/// SMCCC: invalid parameter.
pub const SMCCC_INVALID_PARAMETER: i64 = -3;

/// Bit 16 of a function id: the SMCCC 1.3 SVE hint, ignored.
pub const SMCCC_SVE_HINT: u64 = 1 << 16;

/// First host call id: SMCCC fast, SMC64/HVC64, vendor-hypervisor owner.
pub const HOST_CALL_BASE: u64 = 0xC600_0000;

/// ABI version returned by [`HostCall::Version`]: major in bits 31:16,
/// minor in 15:0.
pub const ABI_VERSION: u64 = 2 << 16;

/// Pages of metadata the host donates at `VmCreate` (physically
/// contiguous from the `meta` pfn): the VM's vCPU contexts live there,
/// in hypervisor memory, for the VM's life.
pub const VM_META_PAGES: u64 = 4;

/// Linux errno values, returned negated in `x1`.
pub mod errno {
    /// Operation not permitted: wrong state, wrong owner.
    pub const EPERM: i64 = 1;
    /// No such entry: nothing mapped where one was expected.
    pub const ENOENT: i64 = 2;
    /// Size differs from the mapping's.
    pub const E2BIG: i64 = 7;
    /// Try again.
    pub const EAGAIN: i64 = 11;
    /// Out of memory (pool or guest memcache).
    pub const ENOMEM: i64 = 12;
    /// Bad address: not memory.
    pub const EFAULT: i64 = 14;
    /// Busy: pinned, saturated, still in use.
    pub const EBUSY: i64 = 16;
    /// Already exists.
    pub const EEXIST: i64 = 17;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// Memory page has hardware error (poisoned).
    pub const EHWPOISON: i64 = 133;
}

/// The host calls, numbered as in the module table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum HostCall {
    /// ABI version.
    Version = 0,
    /// Share a host page with the hypervisor.
    ShareHyp = 1,
    /// End a share with the hypervisor.
    UnshareHyp = 2,
    /// Create a protected VM.
    VmCreate = 3,
    /// Initialise one vCPU of a VM.
    VcpuInit = 4,
    /// Donate pages for a VM's stage-2 tables.
    MemcacheTopup = 5,
    /// Lend a host page (or 2 MiB block) to a guest.
    ShareGuest = 6,
    /// End a host→guest share.
    UnshareGuest = 7,
    /// Donate a host page (or 2 MiB block) to a guest.
    DonateGuest = 8,
    /// Run a vCPU until it exits to the host.
    VcpuRun = 9,
    /// Complete a guest-requested conversion.
    ConvertComplete = 10,
    /// Refuse a guest-requested conversion.
    ConvertRefuse = 11,
    /// Reclaim a guest page after teardown started.
    Reclaim = 12,
    /// Force-reclaim a donated page the host faulted on.
    ForceReclaim = 13,
    /// Start a VM's teardown.
    TeardownStart = 14,
    /// Finish a VM's teardown.
    TeardownFinish = 15,
    /// Read a page's ownership state.
    PageState = 16,
    /// Read how a guest sees one of its pages.
    GuestPageState = 17,
    /// Seal the init-only calls.
    Finalize = 18,
    /// Give pages to the hypervisor's allocator (init only).
    HypPoolDonate = 19,
    /// Counts of the host's memory: owned pages, stage-2 leaves and tables.
    HostStats = 20,
    /// Drive an SPI line of a VM's virtual GIC.
    IrqLine = 21,
    /// Run el2's ownership invariant checker.
    CheckInvariants = 22,
}

impl HostCall {
    /// Every call, in number order.
    pub const ALL: [HostCall; 23] = [
        HostCall::Version,
        HostCall::ShareHyp,
        HostCall::UnshareHyp,
        HostCall::VmCreate,
        HostCall::VcpuInit,
        HostCall::MemcacheTopup,
        HostCall::ShareGuest,
        HostCall::UnshareGuest,
        HostCall::DonateGuest,
        HostCall::VcpuRun,
        HostCall::ConvertComplete,
        HostCall::ConvertRefuse,
        HostCall::Reclaim,
        HostCall::ForceReclaim,
        HostCall::TeardownStart,
        HostCall::TeardownFinish,
        HostCall::PageState,
        HostCall::GuestPageState,
        HostCall::Finalize,
        HostCall::HypPoolDonate,
        HostCall::HostStats,
        HostCall::IrqLine,
        HostCall::CheckInvariants,
    ];

    /// The SMCCC function id.
    pub const fn id(self) -> u64 {
        HOST_CALL_BASE + self as u64
    }

    /// The call a function id names, if any (the SVE hint bit ignored).
    pub fn from_id(id: u64) -> Option<HostCall> {
        let n = (id & !SMCCC_SVE_HINT).checked_sub(HOST_CALL_BASE)?;
        HostCall::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// Whether the call is only allowed before [`HostCall::Finalize`].
    pub const fn init_only(self) -> bool {
        matches!(self, HostCall::Finalize | HostCall::HypPoolDonate)
    }
}

/// Owner encoding of [`HostCall::PageState`]'s x4: 0 host, 1 hypervisor,
/// 2 | handle << 16 | gfn << 32 for a guest.
pub const fn encode_owner(kind: u64, handle: u16, gfn: u64) -> u64 {
    kind | ((handle as u64) << 16) | (gfn << 32)
}

/// Page-state encoding (host and hypervisor views): pKVM's values.
pub mod page_state {
    /// Owned.
    pub const OWNED: u64 = 0;
    /// Owned and shared.
    pub const SHARED_OWNED: u64 = 1;
    /// Borrowed.
    pub const SHARED_BORROWED: u64 = 2;
    /// No access.
    pub const NOPAGE: u64 = 3;
}

/// How a guest sees a page ([`HostCall::GuestPageState`]'s x2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum GuestState {
    /// Guest-private.
    Owned = 0,
    /// Guest-owned, shared with the host.
    SharedOwned = 1,
    /// Host page lent to the guest.
    SharedBorrowed = 2,
    /// Nothing mapped.
    NoPage = 3,
    /// Force-reclaimed by the host.
    Poisoned = 4,
    /// Given back by the guest.
    Relinquished = 5,
}

impl GuestState {
    /// Decodes x2.
    pub const fn from_raw(v: u64) -> Option<GuestState> {
        Some(match v {
            0 => GuestState::Owned,
            1 => GuestState::SharedOwned,
            2 => GuestState::SharedBorrowed,
            3 => GuestState::NoPage,
            4 => GuestState::Poisoned,
            5 => GuestState::Relinquished,
            _ => return None,
        })
    }
}

/// The guest calls (HVC from a protected guest).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestCall {
    /// Vendor-hypervisor UID.
    CallUid,
    /// Bitmap of available KVM vendor services.
    Features,
    /// Protection granule and range support.
    HypMeminfo,
    /// Share pages with the host.
    MemShare,
    /// Take shared pages back.
    MemUnshare,
    /// Guard an MMIO granule.
    MmioGuard,
    /// Give pages back to the host.
    MemRelinquish,
}

impl GuestCall {
    /// The SMCCC function id.
    pub const fn id(self) -> u64 {
        match self {
            GuestCall::CallUid => 0x8600_FF01,
            GuestCall::Features => 0x8600_0000,
            GuestCall::HypMeminfo => 0xC600_0002,
            GuestCall::MemShare => 0xC600_0003,
            GuestCall::MemUnshare => 0xC600_0004,
            GuestCall::MmioGuard => 0xC600_0007,
            GuestCall::MemRelinquish => 0xC600_0009,
        }
    }

    /// The call a function id names, if any (the SVE hint bit ignored).
    pub fn from_id(id: u64) -> Option<GuestCall> {
        let id = id & !SMCCC_SVE_HINT;
        [
            GuestCall::CallUid,
            GuestCall::Features,
            GuestCall::HypMeminfo,
            GuestCall::MemShare,
            GuestCall::MemUnshare,
            GuestCall::MmioGuard,
            GuestCall::MemRelinquish,
        ]
        .into_iter()
        .find(|c| c.id() == id)
    }
}

/// KVM's vendor-hypervisor UID, as CALL_UID returns it in x0..x3.
pub const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// FEATURES bits: FEATURES (0), HYP_MEMINFO (2), MEM_SHARE (3),
/// MEM_UNSHARE (4), MMIO_GUARD (7), MEM_RELINQUISH (9).
pub const GUEST_FEATURES: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 9);

/// Why [`HostCall::VcpuRun`] returned: x2, with data in x3..x6.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exit {
    /// The guest asked to convert `[gpa, gpa + size)`; `private` is
    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE` (the guest wants it private). The
    /// host completes or refuses the conversion and runs the vCPU again.
    /// x3 = gpa, x4 = size, x5 = flags.
    MemoryFault {
        /// Guest physical address.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// KVM memory-fault flags.
        flags: u64,
    },
    /// A stage-2 fault on a gfn with nothing mapped. The host either maps
    /// memory there (donates or shares a page) and runs the vCPU again,
    /// which retries the access, or, for an address it emulates, completes
    /// the access as MMIO with the next [`HostCall::VcpuRun`] (flag
    /// [`RUN_COMPLETE_ACCESS`]: a read's value in x4; the instruction is
    /// then skipped). x3 = gpa, x4 = write | exec << 1 | isv << 2 |
    /// size << 8 | reg << 16 | hvc << 3, x5 = the data a write stores.
    Stage2Fault {
        /// Faulting guest physical address.
        gpa: u64,
        /// Write access.
        write: bool,
        /// Instruction fetch.
        exec: bool,
        /// The syndrome is valid: `size`, `reg` and `data` describe the
        /// access (a single load or store), so it can be emulated.
        isv: bool,
        /// Access size in bytes.
        size: u8,
        /// Register the data comes from or goes to.
        reg: u8,
        /// Data a write stores.
        data: u64,
        /// The fault was raised for a guest hypercall (a MEM_SHARE of a
        /// page not mapped yet) that is retried once the host maps it; if
        /// the host cannot, [`RUN_FAIL_ACCESS`] makes the call fail.
        hvc: bool,
    },
    /// A hypercall for the host: x3 = the function id, x4..x6 = the
    /// guest's x1..x3 (32-bit calls: the low halves). The host answers
    /// with the next run ([`RUN_COMPLETE_ACCESS`]; without it the guest
    /// gets NOT_SUPPORTED). Today this is only PSCI `CPU_ON`, which el2
    /// has already checked (see "Starting vCPUs" above): x0 = 0 starts the
    /// target, anything else fails the call with that value.
    Hypercall {
        /// Function id.
        id: u64,
        /// Arguments x1..x3.
        args: [u64; 3],
    },
    /// The guest asked to power off (x3 = 0) or reset (x3 = 1).
    SystemEvent {
        /// 0 off, 1 reset.
        kind: u64,
    },
    /// The guest relinquished `[gpa, gpa + size)`: already host-owned and
    /// zeroed; the VMM punches that range. x3 = gpa, x4 = size.
    Relinquished {
        /// Guest physical address.
        gpa: u64,
        /// Bytes.
        size: u64,
    },
    /// The guest's memcache ran out: top it up with at least x3 pages and
    /// run again.
    MemcacheEmpty {
        /// Pages needed.
        pages: u64,
    },
    /// The vCPU halted (WFI, WFE, PSCI CPU_SUSPEND): run it again when
    /// there is work.
    Wfi,
    /// A trap the hypervisor cannot handle or hand on (e.g. an SError, a
    /// permission fault on a page mapped read/write/execute): x3 = the
    /// exception class (ESR_EL2.EC) of the trap, and nothing else — a
    /// protected guest's registers and syndrome stay private. The vCPU is
    /// stopped; running it again gives `-EINVAL`.
    Stopped {
        /// ESR_EL2.EC of the trap (or the simulator's code).
        ec: u64,
    },
    /// A physical interrupt arrived while the guest ran (or el2 ended the
    /// run to bound its time): the host takes it once it is back at EL1;
    /// run the vCPU again when it likes.
    Interrupted,
    /// The vCPU is off (never started, or it called PSCI `CPU_OFF`):
    /// nothing ran. The guest starts it again with `CPU_ON`.
    PoweredOff,
}

/// [`HostCall::VcpuRun`] x3 flag: the host cannot map the address of the
/// vCPU's last [`Exit::Stage2Fault`], which a guest hypercall raised
/// (`hvc`): the call is skipped and returns INVALID_PARAMETER to the guest.
/// For a fault without `hvc` the flag is refused (`-EINVAL`).
pub const RUN_FAIL_ACCESS: u64 = 2;

/// [`HostCall::VcpuRun`] x3 flag: the host completes the vCPU's last exit
/// with values: for a [`Exit::Stage2Fault`] emulated as MMIO, x4 is the
/// value a read loads; for a [`Exit::Hypercall`], x4 and x5 are the
/// guest's x0 and x1 (without the flag the guest gets NOT_SUPPORTED).
pub const RUN_COMPLETE_ACCESS: u64 = 1;

/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the access (or request) is to private
/// memory.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;

impl Exit {
    /// The exit as the registers x2..x6 carry it.
    pub const fn to_regs(self) -> [u64; 5] {
        match self {
            Exit::MemoryFault { gpa, size, flags } => [1, gpa, size, flags, 0],
            Exit::Stage2Fault {
                gpa,
                write,
                exec,
                isv,
                size,
                reg,
                data,
                hvc,
            } => [
                2,
                gpa,
                write as u64
                    | ((exec as u64) << 1)
                    | ((isv as u64) << 2)
                    | ((hvc as u64) << 3)
                    | ((size as u64) << 8)
                    | ((reg as u64) << 16),
                data,
                0,
            ],
            Exit::Hypercall { id, args } => [4, id, args[0], args[1], args[2]],
            Exit::SystemEvent { kind } => [5, kind, 0, 0, 0],
            Exit::Relinquished { gpa, size } => [6, gpa, size, 0, 0],
            Exit::MemcacheEmpty { pages } => [7, pages, 0, 0, 0],
            Exit::Wfi => [8, 0, 0, 0, 0],
            Exit::Stopped { ec } => [9, ec, 0, 0, 0],
            Exit::Interrupted => [10, 0, 0, 0, 0],
            Exit::PoweredOff => [11, 0, 0, 0, 0],
        }
    }

    /// Decodes x2..x6.
    pub const fn from_regs(r: [u64; 5]) -> Option<Exit> {
        Some(match r[0] {
            1 => Exit::MemoryFault {
                gpa: r[1],
                size: r[2],
                flags: r[3],
            },
            2 => Exit::Stage2Fault {
                gpa: r[1],
                write: r[2] & 1 != 0,
                exec: r[2] & 2 != 0,
                isv: r[2] & 4 != 0,
                size: ((r[2] >> 8) & 0xff) as u8,
                reg: ((r[2] >> 16) & 0xff) as u8,
                data: r[3],
                hvc: r[2] & 8 != 0,
            },
            4 => Exit::Hypercall {
                id: r[1],
                args: [r[2], r[3], r[4]],
            },
            5 => Exit::SystemEvent { kind: r[1] },
            6 => Exit::Relinquished {
                gpa: r[1],
                size: r[2],
            },
            7 => Exit::MemcacheEmpty { pages: r[1] },
            8 => Exit::Wfi,
            9 => Exit::Stopped { ec: r[1] },
            10 => Exit::Interrupted,
            11 => Exit::PoweredOff,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_call_ids_are_numbered_once() {
        for (n, c) in HostCall::ALL.iter().enumerate() {
            assert_eq!(*c as usize, n);
            assert_eq!(c.id(), 0xC600_0000 + n as u64);
            assert_eq!(HostCall::from_id(c.id()), Some(*c));
            assert_eq!(HostCall::from_id(c.id() | SMCCC_SVE_HINT), Some(*c));
        }
        assert_eq!(HostCall::from_id(HOST_CALL_BASE + 23), None);
        assert_eq!(HostCall::from_id(0x8400_0000), None);
        assert_eq!(HostCall::from_id(u64::MAX), None);
        assert!(HostCall::Finalize.init_only() && !HostCall::ShareHyp.init_only());
    }

    #[test]
    fn guest_call_ids() {
        assert_eq!(GuestCall::from_id(0xC600_0003), Some(GuestCall::MemShare));
        assert_eq!(
            GuestCall::from_id(0xC601_0009),
            Some(GuestCall::MemRelinquish)
        );
        assert_eq!(GuestCall::from_id(0xC600_0005), None);
        assert_eq!(GUEST_FEATURES, 0x29d);
    }

    #[test]
    fn exits_round_trip() {
        let exits = [
            Exit::MemoryFault {
                gpa: 0x8000_0000,
                size: 0x2000,
                flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
            },
            Exit::Stage2Fault {
                gpa: 0x1000,
                write: true,
                exec: false,
                isv: true,
                size: 4,
                reg: 7,
                data: 0x41,
                hvc: false,
            },
            Exit::Stage2Fault {
                gpa: 0x2000,
                write: false,
                exec: true,
                isv: false,
                size: 0,
                reg: 0,
                data: 0,
                hvc: true,
            },
            Exit::Stopped { ec: 0x24 },
            Exit::Interrupted,
            Exit::PoweredOff,
            Exit::Hypercall {
                id: 0x8400_0008,
                args: [1, 2, 3],
            },
            Exit::SystemEvent { kind: 1 },
            Exit::Relinquished {
                gpa: 0x4000,
                size: 0x1000,
            },
            Exit::MemcacheEmpty { pages: 2 },
            Exit::Wfi,
        ];
        for e in exits {
            assert_eq!(Exit::from_regs(e.to_regs()), Some(e));
        }
        assert_eq!(Exit::from_regs([0; 5]), None);
    }
}
