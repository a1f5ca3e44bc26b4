//! Linux errno values returned by transitions (the ABI returns them
//! negated).

use core::fmt;

/// Why a transition was refused. Every refusal happens before anything
/// changed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Errno {
    /// A page or principal is in the wrong state.
    Eperm,
    /// Nothing is mapped where the call expected a mapping.
    Enoent,
    /// The request's size differs from the mapping's size.
    E2big,
    /// Retry: the state changed under the caller or the access would no
    /// longer fault.
    Eagain,
    /// Not enough page-table pages (pool or guest memcache).
    Enomem,
    /// The address is not memory the hypervisor tracks.
    Efault,
    /// A count is saturated, a page is pinned, or work is still pending.
    Ebusy,
    /// Bad argument: alignment, size, range, unknown guest.
    Einval,
    /// The guest page was poisoned by a forced reclaim.
    Ehwpoison,
}

impl Errno {
    /// The positive errno value.
    pub const fn code(self) -> i32 {
        match self {
            Errno::Eperm => 1,
            Errno::Enoent => 2,
            Errno::E2big => 7,
            Errno::Eagain => 11,
            Errno::Enomem => 12,
            Errno::Efault => 14,
            Errno::Ebusy => 16,
            Errno::Einval => 22,
            Errno::Ehwpoison => 133,
        }
    }

    /// The value as the ABI returns it: `-code`.
    pub const fn as_ret(self) -> i64 {
        -(self.code() as i64)
    }

    /// The errno for a value returned by the `-code` convention.
    pub const fn from_ret(ret: i64) -> Option<Errno> {
        Some(match ret {
            -1 => Errno::Eperm,
            -2 => Errno::Enoent,
            -7 => Errno::E2big,
            -11 => Errno::Eagain,
            -12 => Errno::Enomem,
            -14 => Errno::Efault,
            -16 => Errno::Ebusy,
            -22 => Errno::Einval,
            -133 => Errno::Ehwpoison,
            _ => return None,
        })
    }
}

impl From<stage2::Error> for Errno {
    fn from(e: stage2::Error) -> Errno {
        match e {
            stage2::Error::OutOfMemory { .. } => Errno::Enomem,
            stage2::Error::NotMapped(_) => Errno::Enoent,
            _ => Errno::Einval,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Errno::Eperm => "EPERM",
            Errno::Enoent => "ENOENT",
            Errno::E2big => "E2BIG",
            Errno::Eagain => "EAGAIN",
            Errno::Enomem => "ENOMEM",
            Errno::Efault => "EFAULT",
            Errno::Ebusy => "EBUSY",
            Errno::Einval => "EINVAL",
            Errno::Ehwpoison => "EHWPOISON",
        };
        write!(f, "{name} ({})", self.as_ret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            Errno::Eperm,
            Errno::Enoent,
            Errno::E2big,
            Errno::Eagain,
            Errno::Enomem,
            Errno::Efault,
            Errno::Ebusy,
            Errno::Einval,
            Errno::Ehwpoison,
        ] {
            assert_eq!(Errno::from_ret(e.as_ret()), Some(e));
        }
        assert_eq!(Errno::from_ret(-99), None);
        assert_eq!(Errno::Eperm.as_ret(), -1);
        assert_eq!(Errno::Ehwpoison.code(), 133);
    }
}
