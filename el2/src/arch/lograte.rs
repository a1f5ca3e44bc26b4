//! Rate limits for log lines a host can trigger at will (a refused device
//! register write, a refused ITS command): the console is slow, and a
//! host must not be able to keep el2 printing.

use core::sync::atomic::{AtomicU32, Ordering};

/// Lines logged in full before thinning out.
const BURST: u32 = 16;
/// After the burst, one line in this many.
const EVERY: u32 = 1024;

/// One call site's count of events.
pub struct Limit(AtomicU32);

impl Limit {
    /// A limit that has seen nothing.
    pub const fn new() -> Limit {
        Limit(AtomicU32::new(0))
    }

    /// Counts an event; `Some(n)` (its 1-based number) when it should be
    /// logged: the first [`BURST`], then one in [`EVERY`].
    pub fn allow(&self) -> Option<u32> {
        let n = self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        (n <= BURST || n.is_multiple_of(EVERY)).then_some(n)
    }
}

/// `log::warn!` through a per-call-site [`Limit`]; lines after the burst
/// carry the event's number.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::arch::lograte::Limit = $crate::arch::lograte::Limit::new();
        if let Some(n) = LIMIT.allow() {
            log::warn!("{} (event {n})", format_args!($($arg)+));
        }
    }};
}
pub(crate) use warn_limited;
