//! The conduit to the hypervisor: host calls, and the host's own accesses
//! to physical memory (which the hypervisor's stage-2 may refuse).
//!
//! Two implementations: [`hvc::Hvc`] issues real `HVC #0` instructions (an
//! EL1 host on aarch64), and `el2::sim::Machine` dispatches in process to
//! the same core on a simulated machine, so everything above runs in
//! `cargo test` unchanged.

use crate::abi::HostCall;

/// Why a host call did not succeed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallError {
    /// SMCCC NOT_SUPPORTED: unknown or sealed call.
    NotSupported,
    /// The call failed with this errno (positive).
    Errno(i64),
}

/// A host access to physical memory the hypervisor refused (it would be a
/// synchronous external abort injected into the host).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AccessFault {
    /// The faulting physical address.
    pub pa: u64,
}

/// The host's view of the hypervisor.
pub trait Hypervisor {
    /// Issues `call` with `args` in x1.. (at most 5); returns x2..x6.
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError>;

    /// Reads host physical memory at `pa` (through the host's mapping).
    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault>;

    /// Writes host physical memory at `pa`.
    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault>;
}

impl<T: Hypervisor + ?Sized> Hypervisor for &mut T {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        (**self).call(call, args)
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        (**self).read(pa, buf)
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        (**self).write(pa, data)
    }
}

/// Decodes x0..x6 as the ABI defines them.
pub fn decode(x: [u64; 7]) -> Result<[u64; 5], CallError> {
    if x[0] as i64 != crate::abi::SMCCC_SUCCESS {
        return Err(CallError::NotSupported);
    }
    if x[1] != 0 {
        return Err(CallError::Errno((x[1] as i64).saturating_neg()));
    }
    Ok([x[2], x[3], x[4], x[5], x[6]])
}

/// Real `HVC #0` calls, for a host at EL1 on aarch64.
#[cfg(target_arch = "aarch64")]
pub mod hvc {
    use super::{AccessFault, CallError, Hypervisor, decode};
    use crate::abi::HostCall;
    use core::arch::asm;

    /// Issues host calls with `HVC #0`. Memory accesses assume the caller
    /// runs with an identity map of RAM (or the MMU off), as the built-in
    /// test host does; a refused access is taken by the caller's exception
    /// vector, not reported here.
    #[derive(Debug, Default)]
    pub struct Hvc;

    impl Hypervisor for Hvc {
        fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
            let mut a = [0u64; 5];
            for (d, s) in a.iter_mut().zip(args) {
                *d = *s;
            }
            let mut x = [call.id(), a[0], a[1], a[2], a[3], a[4], 0];
            // SAFETY: HVC #0 traps to the hypervisor, which reads x0..x5 and
            // writes x0..x6 (declared here) and preserves the rest
            // (SMCCC 1.1); it touches no memory of ours.
            unsafe {
                asm!(
                    "hvc #0",
                    inout("x0") x[0], inout("x1") x[1], inout("x2") x[2], inout("x3") x[3],
                    inout("x4") x[4], inout("x5") x[5], inout("x6") x[6],
                    options(nostack),
                );
            }
            decode(x)
        }

        fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: identity-mapped RAM (see the type's docs); a
                // refused access traps to the caller's vector.
                *b = unsafe { core::ptr::read_volatile((pa as usize + i) as *const u8) };
            }
            Ok(())
        }

        fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
            for (i, b) in data.iter().enumerate() {
                // SAFETY: as for `read`.
                unsafe { core::ptr::write_volatile((pa as usize + i) as *mut u8, *b) };
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_register_convention() {
        assert_eq!(decode([0, 0, 1, 2, 3, 4, 5]), Ok([1, 2, 3, 4, 5]));
        assert_eq!(
            decode([u64::MAX, 0, 0, 0, 0, 0, 0]),
            Err(CallError::NotSupported)
        );
        assert_eq!(
            decode([0, (-22i64) as u64, 9, 0, 0, 0, 0]),
            Err(CallError::Errno(22))
        );
    }
}
