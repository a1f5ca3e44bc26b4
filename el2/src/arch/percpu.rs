//! Per-CPU state: which CPUs exist (from the device tree), their power
//! state as the PSCI relay sees it, and where the host asked a secondary to
//! start.
//!
//! A CPU's index is its position in the device tree's `/cpus` node (at most
//! [`MAX_CPUS`]); it selects the CPU's EL2 stack ([`super::entry::STACKS`])
//! and is kept in `TPIDR_EL2` while the CPU runs. On QEMU `virt` the index
//! equals MPIDR.Aff0.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// Most CPUs el2 supports; more in the device tree are ignored (with a
/// warning) and cannot be started.
pub use el2::fdt::{MAX_CPUS, MPIDR_AFF_MASK};

/// Power state of a CPU as seen by the PSCI relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Power {
    /// Off (or never started).
    Off = 0,
    /// CPU_ON accepted; the CPU has not reached the host yet.
    OnPending = 1,
    /// Running the host.
    On = 2,
    /// CPU_OFF was called: the CPU is on its way to the firmware's off
    /// state (which only the firmware can confirm).
    OffPending = 3,
}

/// One CPU's state.
pub struct PerCpu {
    mpidr: AtomicU64,
    power: AtomicU8,
    entry: AtomicU64,
    context: AtomicU64,
    /// Set while the CPU is in a PSCI CPU_SUSPEND / SYSTEM_SUSPEND call el2
    /// forwarded: a wake-up through [`super::entry::el2_secondary_entry`]
    /// is then a resume from a power-down state, not a CPU_ON.
    resuming: AtomicBool,
}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            mpidr: AtomicU64::new(u64::MAX),
            power: AtomicU8::new(Power::Off as u8),
            entry: AtomicU64::new(0),
            context: AtomicU64::new(0),
            resuming: AtomicBool::new(false),
        }
    }

    /// The CPU's MPIDR affinity value.
    pub fn mpidr(&self) -> u64 {
        self.mpidr.load(Ordering::Relaxed)
    }

    /// Moves the CPU from `from` to `to`; returns the state it was in if
    /// that was not `from`.
    pub fn transition(&self, from: Power, to: Power) -> Result<(), Power> {
        self.power
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|v| match v {
                0 => Power::Off,
                1 => Power::OnPending,
                3 => Power::OffPending,
                _ => Power::On,
            })
    }

    /// Sets the power state.
    pub fn set_power(&self, p: Power) {
        self.power.store(p as u8, Ordering::Release);
    }

    /// Records where the host wants the CPU to start.
    pub fn set_boot(&self, entry: u64, context: u64) {
        self.entry.store(entry, Ordering::Relaxed);
        self.context.store(context, Ordering::Release);
    }

    /// Marks the CPU as suspending (`true`, before the suspend call) or not
    /// (`false`, when the call returned).
    pub fn set_resuming(&self, resuming: bool) {
        self.resuming.store(resuming, Ordering::Release);
    }

    /// Whether the CPU is waking up from a suspend call (and clears it).
    pub fn take_resuming(&self) -> bool {
        self.resuming.swap(false, Ordering::AcqRel)
    }

    /// Where the host wants the CPU to start: `(entry, context)`.
    pub fn boot(&self) -> (u64, u64) {
        let context = self.context.load(Ordering::Acquire);
        (self.entry.load(Ordering::Relaxed), context)
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Registers the CPUs from the device tree (boot CPU only, at boot).
pub fn register(mpidrs: &[u64]) {
    let n = mpidrs.len().min(MAX_CPUS);
    for (cpu, &m) in CPUS.iter().zip(mpidrs) {
        cpu.mpidr.store(m & MPIDR_AFF_MASK, Ordering::Relaxed);
    }
    COUNT.store(n, Ordering::Release);
}

/// Number of registered CPUs.
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// The state of CPU `index`, if it exists.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    if index < count() {
        CPUS.get(index)
    } else {
        None
    }
}

/// The index of the CPU with MPIDR affinity `mpidr`.
pub fn index_of(mpidr: u64) -> Option<usize> {
    let m = mpidr & MPIDR_AFF_MASK;
    CPUS.iter().take(count()).position(|c| c.mpidr() == m)
}
