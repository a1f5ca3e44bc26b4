//! Host calls: decoded centrally into typed requests, then dispatched.
//!
//! Registers follow `host_interface::abi`: `x0` = id in, SMCCC status out;
//! `x1` = result (0 or -errno); `x2`.. = values. Arguments beyond a call's
//! arity must be zero (`-EINVAL` otherwise). Init-only calls answer
//! NOT_SUPPORTED once the host has called `Finalize`, as do unknown ids.

use super::arch::Arch;
use super::vm::{MAX_VCPUS, META_PAGES, Outcome, Power, VmState, Waiting};
use super::{CallResult, Hypervisor};
use host_interface::abi::{self, HostCall, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS, encode_owner};
use ownership::{
    Conversion, ConversionKind, Errno, Extent, Gfn, GuestHandle, GuestPageState, HypMappings,
    Owner, Pfn, PhysMem,
};
use stage2::{PhysAddr, TablePool};

/// A host call with its arguments decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostRequest {
    /// ABI version.
    Version,
    /// Share a page with the hypervisor.
    ShareHyp(Pfn),
    /// End a share with the hypervisor.
    UnshareHyp(Pfn),
    /// Create a VM.
    VmCreate {
        /// IPA size.
        ipa_bits: u8,
        /// Root table pages.
        pgd: Pfn,
        /// Metadata page.
        meta: Pfn,
        /// vCPUs.
        vcpus: usize,
    },
    /// Initialise a vCPU.
    VcpuInit {
        /// VM.
        handle: GuestHandle,
        /// vCPU index.
        vcpu: usize,
        /// Entry IPA.
        entry: u64,
        /// x0 at entry.
        x0: u64,
    },
    /// Donate pages to a VM's memcache.
    MemcacheTopup {
        /// VM.
        handle: GuestHandle,
        /// First page.
        pfn: Pfn,
        /// Pages.
        pages: u64,
    },
    /// Lend a page or block to a guest.
    ShareGuest(GuestHandle, Pfn, Gfn, Extent),
    /// End a lend.
    UnshareGuest(GuestHandle, Gfn, Extent),
    /// Donate a page or block to a guest.
    DonateGuest(GuestHandle, Pfn, Gfn, Extent),
    /// Run a vCPU.
    VcpuRun {
        /// VM.
        handle: GuestHandle,
        /// vCPU index.
        vcpu: usize,
        /// How the last exit is completed.
        complete: Option<super::Completion>,
    },
    /// Complete the pending conversion.
    ConvertComplete(GuestHandle, Conversion),
    /// Refuse the pending conversion.
    ConvertRefuse(GuestHandle),
    /// Reclaim after teardown started.
    Reclaim(GuestHandle, Gfn, Extent),
    /// Force-reclaim a faulted-on page.
    ForceReclaim(PhysAddr),
    /// Start teardown.
    TeardownStart(GuestHandle),
    /// Finish teardown.
    TeardownFinish(GuestHandle),
    /// Read a page's ownership.
    PageState(Pfn),
    /// Read a guest page's state.
    GuestPageState(GuestHandle, Gfn),
    /// Seal init-only calls.
    Finalize,
    /// Pages for the hypervisor's allocator.
    HypPoolDonate(Pfn, u64),
    /// Counts of the host's memory.
    HostStats,
    /// Run the ownership invariant checker.
    CheckInvariants,
    /// Drive an SPI line of a VM's virtual GIC.
    IrqLine {
        /// VM.
        handle: GuestHandle,
        /// INTID.
        intid: u32,
        /// Line level.
        level: bool,
    },
}

/// Why a call was not decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// Unknown id: SMCCC NOT_SUPPORTED.
    Unknown,
    /// Bad argument: `x1` = -errno.
    Invalid(Errno),
}

fn handle(v: u64) -> Result<GuestHandle, DecodeError> {
    u16::try_from(v)
        .map(GuestHandle)
        .map_err(|_| DecodeError::Invalid(Errno::Einval))
}

fn extent(pages: u64) -> Result<Extent, DecodeError> {
    Extent::from_pages(pages).ok_or(DecodeError::Invalid(Errno::Einval))
}

fn index(v: u64) -> Result<usize, DecodeError> {
    usize::try_from(v).map_err(|_| DecodeError::Invalid(Errno::Einval))
}

impl HostRequest {
    /// Decodes `x0`..`x5`.
    pub fn decode(x: &[u64; 6]) -> Result<(HostCall, HostRequest), DecodeError> {
        let call = HostCall::from_id(x[0]).ok_or(DecodeError::Unknown)?;
        let arity = match call {
            HostCall::Version
            | HostCall::Finalize
            | HostCall::HostStats
            | HostCall::CheckInvariants => 0,
            HostCall::ShareHyp
            | HostCall::UnshareHyp
            | HostCall::ConvertRefuse
            | HostCall::ForceReclaim
            | HostCall::TeardownStart
            | HostCall::TeardownFinish
            | HostCall::PageState => 1,
            HostCall::GuestPageState | HostCall::HypPoolDonate => 2,
            HostCall::UnshareGuest
            | HostCall::MemcacheTopup
            | HostCall::Reclaim
            | HostCall::IrqLine => 3,
            HostCall::VmCreate
            | HostCall::VcpuInit
            | HostCall::ShareGuest
            | HostCall::DonateGuest
            | HostCall::ConvertComplete => 4,
            HostCall::VcpuRun => 5,
        };
        if x[1 + arity..].iter().any(|v| *v != 0) {
            return Err(DecodeError::Invalid(Errno::Einval));
        }
        let a = [x[1], x[2], x[3], x[4], x[5]];
        let req = match call {
            HostCall::Version => HostRequest::Version,
            HostCall::ShareHyp => HostRequest::ShareHyp(Pfn(a[0])),
            HostCall::UnshareHyp => HostRequest::UnshareHyp(Pfn(a[0])),
            HostCall::VmCreate => HostRequest::VmCreate {
                ipa_bits: u8::try_from(a[0]).map_err(|_| DecodeError::Invalid(Errno::Einval))?,
                pgd: Pfn(a[1]),
                meta: Pfn(a[2]),
                vcpus: index(a[3])?,
            },
            HostCall::VcpuInit => HostRequest::VcpuInit {
                handle: handle(a[0])?,
                vcpu: index(a[1])?,
                entry: a[2],
                x0: a[3],
            },
            HostCall::MemcacheTopup => HostRequest::MemcacheTopup {
                handle: handle(a[0])?,
                pfn: Pfn(a[1]),
                pages: a[2],
            },
            HostCall::ShareGuest => {
                HostRequest::ShareGuest(handle(a[0])?, Pfn(a[1]), Gfn(a[2]), extent(a[3])?)
            }
            HostCall::UnshareGuest => {
                HostRequest::UnshareGuest(handle(a[0])?, Gfn(a[1]), extent(a[2])?)
            }
            HostCall::DonateGuest => {
                HostRequest::DonateGuest(handle(a[0])?, Pfn(a[1]), Gfn(a[2]), extent(a[3])?)
            }
            HostCall::VcpuRun => {
                let complete = match a[2] {
                    0 => {
                        if a[3] != 0 || a[4] != 0 {
                            return Err(DecodeError::Invalid(Errno::Einval));
                        }
                        None
                    }
                    abi::RUN_COMPLETE_ACCESS => Some(super::Completion::Values([a[3], a[4]])),
                    abi::RUN_FAIL_ACCESS if a[3] == 0 && a[4] == 0 => Some(super::Completion::Fail),
                    _ => return Err(DecodeError::Invalid(Errno::Einval)),
                };
                HostRequest::VcpuRun {
                    handle: handle(a[0])?,
                    vcpu: index(a[1])?,
                    complete,
                }
            }
            HostCall::ConvertComplete => {
                let kind = match a[3] {
                    1 => ConversionKind::Share,
                    0 => ConversionKind::Unshare,
                    _ => return Err(DecodeError::Invalid(Errno::Einval)),
                };
                HostRequest::ConvertComplete(
                    handle(a[0])?,
                    Conversion {
                        kind,
                        gfn: Gfn(a[1]),
                        pages: a[2],
                    },
                )
            }
            HostCall::ConvertRefuse => HostRequest::ConvertRefuse(handle(a[0])?),
            HostCall::Reclaim => HostRequest::Reclaim(handle(a[0])?, Gfn(a[1]), extent(a[2])?),
            HostCall::ForceReclaim => HostRequest::ForceReclaim(PhysAddr(a[0])),
            HostCall::TeardownStart => HostRequest::TeardownStart(handle(a[0])?),
            HostCall::TeardownFinish => HostRequest::TeardownFinish(handle(a[0])?),
            HostCall::PageState => HostRequest::PageState(Pfn(a[0])),
            HostCall::GuestPageState => HostRequest::GuestPageState(handle(a[0])?, Gfn(a[1])),
            HostCall::Finalize => HostRequest::Finalize,
            HostCall::HypPoolDonate => HostRequest::HypPoolDonate(Pfn(a[0]), a[1]),
            HostCall::HostStats => HostRequest::HostStats,
            HostCall::CheckInvariants => HostRequest::CheckInvariants,
            HostCall::IrqLine => HostRequest::IrqLine {
                handle: handle(a[0])?,
                intid: u32::try_from(a[1]).map_err(|_| DecodeError::Invalid(Errno::Einval))?,
                level: match a[2] {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid(Errno::Einval)),
                },
            },
        };
        Ok((call, req))
    }
}

const fn guest_state_code(s: GuestPageState) -> u64 {
    match s {
        GuestPageState::Owned => abi::GuestState::Owned as u64,
        GuestPageState::SharedOwned => abi::GuestState::SharedOwned as u64,
        GuestPageState::SharedBorrowed => abi::GuestState::SharedBorrowed as u64,
        GuestPageState::NoPage => abi::GuestState::NoPage as u64,
        GuestPageState::Poisoned => abi::GuestState::Poisoned as u64,
        GuestPageState::Relinquished => abi::GuestState::Relinquished as u64,
    }
}

const fn state_code(s: ownership::PageState) -> u64 {
    match s {
        ownership::PageState::Owned => abi::page_state::OWNED,
        ownership::PageState::SharedOwned => abi::page_state::SHARED_OWNED,
        ownership::PageState::SharedBorrowed => abi::page_state::SHARED_BORROWED,
        ownership::PageState::NoPage => abi::page_state::NOPAGE,
    }
}

impl<M: PhysMem, P: TablePool, H: HypMappings> Hypervisor<M, P, H> {
    /// Handles one host HVC: `x` holds the host's x0..x30 and gets the
    /// results. Never panics, whatever the registers hold.
    pub fn handle_host_call<A: Arch>(&self, arch: &mut A, x: &mut [u64; 31]) {
        let args = [x[0], x[1], x[2], x[3], x[4], x[5]];
        let (call, req) = match HostRequest::decode(&args) {
            Ok(r) => r,
            Err(DecodeError::Unknown) => {
                x[0] = SMCCC_NOT_SUPPORTED as u64;
                return;
            }
            Err(DecodeError::Invalid(e)) => {
                x[0] = SMCCC_SUCCESS as u64;
                x[1] = e.as_ret() as u64;
                return;
            }
        };
        if call.init_only() && self.is_finalized() {
            x[0] = SMCCC_NOT_SUPPORTED as u64;
            return;
        }
        x[0] = SMCCC_SUCCESS as u64;
        match self.dispatch(arch, req) {
            Ok(values) => {
                x[1] = 0;
                x[2..7].copy_from_slice(&values);
            }
            Err(e) => {
                x[1] = e.as_ret() as u64;
                x[2..7].fill(0);
            }
        }
    }

    /// Executes a decoded host request.
    pub fn dispatch<A: Arch>(&self, arch: &mut A, req: HostRequest) -> CallResult {
        let none = |r: Result<(), Errno>| r.map(|()| [0u64; 5]);
        let m = &self.mem;
        match req {
            HostRequest::Version => Ok([abi::ABI_VERSION, 0, 0, 0, 0]),
            HostRequest::ShareHyp(pfn) => none(m.host_share_hyp(pfn)),
            HostRequest::UnshareHyp(pfn) => none(m.host_unshare_hyp(pfn)),
            HostRequest::VmCreate {
                ipa_bits,
                pgd,
                meta,
                vcpus,
            } => self.vm_create(arch, ipa_bits, pgd, meta, vcpus),
            HostRequest::VcpuInit {
                handle,
                vcpu,
                entry,
                x0,
            } => self
                .with_vm(handle, |vm| {
                    // Once the guest runs, only it starts vCPUs (CPU_ON):
                    // the host cannot steer a protected vCPU.
                    let started = vm.started;
                    let v = vm.vcpu_mut(vcpu).ok_or(Errno::Einval)?;
                    if v.power != Power::Off {
                        return Err(Errno::Einval);
                    }
                    if started {
                        return Err(Errno::Eperm);
                    }
                    v.power_on(entry, x0);
                    Ok([0; 5])
                })
                .and_then(|r| r),
            HostRequest::MemcacheTopup { handle, pfn, pages } => {
                none(m.topup_memcache(arch.tlb(), handle, pfn, pages))
            }
            HostRequest::ShareGuest(h, pfn, gfn, ext) => {
                none(m.host_share_guest(arch.tlb(), h, pfn, gfn, ext))
            }
            HostRequest::UnshareGuest(h, gfn, ext) => {
                none(m.host_unshare_guest(arch.tlb(), h, gfn, ext))
            }
            HostRequest::DonateGuest(h, pfn, gfn, ext) => {
                none(m.host_donate_guest(arch.tlb(), h, pfn, gfn, ext))
            }
            HostRequest::VcpuRun {
                handle,
                vcpu,
                complete,
            } => self
                .run_vcpu(arch, handle, vcpu, complete)
                .map(|exit| exit.to_regs()),
            HostRequest::ConvertComplete(h, conv) => self.convert(arch, h, Some(conv)),
            HostRequest::ConvertRefuse(h) => self.convert(arch, h, None),
            HostRequest::Reclaim(h, gfn, ext) => none(m.host_reclaim(arch.tlb(), h, gfn, ext)),
            HostRequest::ForceReclaim(pa) => none(m.host_force_reclaim(arch.tlb(), pa)),
            HostRequest::TeardownStart(h) => self
                .with_vm(h, |vm| {
                    if vm.any_running() {
                        Err(Errno::Ebusy)
                    } else {
                        m.start_teardown(h)
                    }
                })
                .and_then(none),
            HostRequest::TeardownFinish(h) => {
                let mut table = self.vm_table();
                table.get(h).ok_or(Errno::Einval)?;
                m.finish_teardown(arch.tlb(), h)?;
                table.set(h, None);
                Ok([0; 5])
            }
            HostRequest::PageState(pfn) => {
                let e = m.page(pfn).ok_or(Errno::Einval)?;
                let owner = match e.owner() {
                    Owner::Host => 0,
                    Owner::Hyp => 1,
                    Owner::Guest { handle, gfn } => encode_owner(2, handle.0, gfn.0),
                };
                let counts = ((e.share_count() as u64) << 16) | e.pins() as u64;
                Ok([state_code(e.host()), state_code(e.hyp()), owner, counts, 0])
            }
            HostRequest::GuestPageState(h, gfn) => {
                let (s, pfn) = m.guest_state(h, gfn)?;
                Ok([guest_state_code(s), pfn.map_or(u64::MAX, |p| p.0), 0, 0, 0])
            }
            HostRequest::Finalize => {
                self.seal();
                Ok([0; 5])
            }
            HostRequest::IrqLine {
                handle,
                intid,
                level,
            } => {
                if self.with_vm(handle, |vm| vm.vgic().set_spi_line(intid, level))? {
                    Ok([0; 5])
                } else {
                    Err(Errno::Einval)
                }
            }
            HostRequest::CheckInvariants => match ownership::check::check(m) {
                Ok(()) => Ok([0; 5]),
                Err(v) => {
                    log::warn!("ownership invariant broken: {v}");
                    Ok([1, 0, 0, 0, 0])
                }
            },
            HostRequest::HostStats => {
                let owned = m.with_host(|h| {
                    h.table()
                        .iter()
                        .filter(|(_, e)| {
                            e.owner() == Owner::Host && e.host() == ownership::PageState::Owned
                        })
                        .count() as u64
                });
                let s = m.with_host(|h| h.stage2().stats(h.pool()));
                Ok([
                    owned,
                    s.total_leaves() as u64,
                    s.tables as u64,
                    s.annotations as u64,
                    0,
                ])
            }
            HostRequest::HypPoolDonate(pfn, pages) => {
                m.host_donate_hyp(arch.tlb(), pfn, pages)?;
                let pa = pfn.addr().ok_or(Errno::Einval)?;
                arch.add_to_allocator(pa, pages);
                Ok([0; 5])
            }
        }
    }

    fn vm_create<A: Arch>(
        &self,
        arch: &mut A,
        ipa_bits: u8,
        pgd: Pfn,
        meta: Pfn,
        vcpus: usize,
    ) -> CallResult {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(Errno::Einval);
        }
        let mut table = self.vm_table();
        let h =
            self.mem
                .create_guest_with_meta(arch.tlb(), ipa_bits, pgd, Some((meta, META_PAGES)))?;
        let pa = meta.addr().ok_or(Errno::Einval)?;
        let ptr = self.mem.mem().page_ptr(pa).cast::<VmState>();
        // SAFETY: the metadata page was just donated to the hypervisor,
        // zeroed, and nothing else refers to it; `VmState` fits in it (a
        // compile-time assertion) and the page is suitably aligned.
        unsafe { ptr.as_ptr().write(VmState::new(h, vcpus)) };
        table.set(h, Some(pa));
        Ok([h.0 as u64, 0, 0, 0, 0])
    }

    /// Completes (`Some`) or refuses (`None`) the pending conversion and
    /// records the answer for the vCPU waiting on it.
    fn convert<A: Arch>(
        &self,
        arch: &mut A,
        h: GuestHandle,
        conv: Option<Conversion>,
    ) -> CallResult {
        self.with_vm(h, |vm| {
            let outcome = match conv {
                Some(c) => {
                    self.mem.host_complete_conversion(arch.tlb(), h, c)?;
                    Outcome::Done
                }
                None => {
                    self.mem.host_refuse_conversion(h)?;
                    Outcome::Refused
                }
            };
            // The vCPU that asked waits with the request, or is still
            // running on another CPU and has not saved its exit yet: then
            // the answer waits for that save (see `VmState::unclaimed`).
            let mut claimed = false;
            for v in vm.vcpus.iter_mut().filter(|v| !v.running) {
                if let Waiting::Conversion {
                    outcome: o @ Outcome::Pending,
                    ..
                } = &mut v.waiting
                {
                    *o = outcome;
                    claimed = true;
                }
            }
            if !claimed {
                vm.unclaimed = Some(outcome);
            }
            Ok([0; 5])
        })?
    }
}
