//! Host calls (HVC from the host), until the hypervisor-core dispatcher in
//! `el2/src/hyp/` replaces [`host_hvc`].
//!
//! The ABI is `host_interface::abi`: `x0` = function id (`0xC600_0000 + n`,
//! SVE hint bit ignored), arguments in `x1`..; on return `x0` = SMCCC
//! status, `x1` = 0 or a negative errno, `x2`.. = values. This boot-time
//! table implements four calls straight on the ownership crate:
//!
//! | call | x1 in | result |
//! |---|---|---|
//! | `Version` | – | x1 = 0, x2 = `ABI_VERSION` |
//! | `ShareHyp` | pfn | x1 = 0, -EPERM (state), -EINVAL (not RAM) |
//! | `UnshareHyp` | pfn | x1 = 0, -EPERM, -EBUSY (pinned), -EINVAL |
//! | `PageState` | pfn | x1 = 0 or -EINVAL (not RAM); x2 = host state, x3 = hyp state, x4 = owner (`encode_owner`), x5 = share count << 16 \| pins |
//!
//! Every other id (known to the ABI or not) gets `x0` =
//! `SMCCC_NOT_SUPPORTED` and no other register is written.

use host_interface::abi::{
    self, ABI_VERSION, HostCall, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS, encode_owner,
};
use ownership::{Errno, Owner, PageState, Pfn};

use super::entry::TrapFrame;
use super::host::Hypervisor;

fn state_code(s: PageState) -> u64 {
    match s {
        PageState::Owned => abi::page_state::OWNED,
        PageState::SharedOwned => abi::page_state::SHARED_OWNED,
        PageState::SharedBorrowed => abi::page_state::SHARED_BORROWED,
        PageState::NoPage => abi::page_state::NOPAGE,
    }
}

fn ret(r: Result<(), Errno>) -> u64 {
    match r {
        Ok(()) => 0,
        Err(e) => e.as_ret() as u64,
    }
}

/// Handles one host call: reads the id and arguments from `frame` and
/// writes the results back into it (module docs). The single entry point
/// the hypervisor-core dispatcher will replace.
pub fn host_hvc(hyp: &Hypervisor, frame: &mut TrapFrame) {
    let [id, a1] = [frame.x[0], frame.x[1]];
    let Some(call) = HostCall::from_id(id) else {
        frame.x[0] = SMCCC_NOT_SUPPORTED as u64;
        return;
    };
    let own = &hyp.ownership;
    match call {
        HostCall::Version => {
            frame.x[0] = SMCCC_SUCCESS as u64;
            frame.x[1] = 0;
            frame.x[2] = ABI_VERSION;
        }
        HostCall::ShareHyp => {
            frame.x[0] = SMCCC_SUCCESS as u64;
            frame.x[1] = ret(own.host_share_hyp(Pfn(a1)));
        }
        HostCall::UnshareHyp => {
            frame.x[0] = SMCCC_SUCCESS as u64;
            frame.x[1] = ret(own.host_unshare_hyp(Pfn(a1)));
        }
        HostCall::PageState => {
            frame.x[0] = SMCCC_SUCCESS as u64;
            match own.page(Pfn(a1)) {
                Some(e) => {
                    let owner = match e.owner() {
                        Owner::Host => encode_owner(0, 0, 0),
                        Owner::Hyp => encode_owner(1, 0, 0),
                        Owner::Guest { handle, gfn } => encode_owner(2, handle.0, gfn.0),
                    };
                    frame.x[1] = 0;
                    frame.x[2] = state_code(e.host());
                    frame.x[3] = state_code(e.hyp());
                    frame.x[4] = owner;
                    frame.x[5] = (u64::from(e.share_count()) << 16) | u64::from(e.pins());
                }
                None => frame.x[1] = Errno::Einval.as_ret() as u64,
            }
        }
        _ => frame.x[0] = SMCCC_NOT_SUPPORTED as u64,
    }
}
