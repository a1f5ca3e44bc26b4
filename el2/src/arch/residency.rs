//! Where el2's time goes once the host runs: counter ticks spent in el2's
//! trap handlers, by kind of trap, summed over every CPU.
//!
//! A boot under el2 costs the host twice: el2's own boot (logged once, as
//! `boot took`), and every trap the host takes to EL2 afterwards. This
//! module measures the second from the architected counter (`CNTPCT_EL0`,
//! the same clock on hardware and under QEMU), read at the start and the
//! end of each host trap's handling; the entry and exit assembly around it
//! (a few dozen instructions) is not counted. [`report`] logs the totals
//! when the host powers off or resets, as a share of the time since el2
//! was entered, so `cargo qemu bench-boot` can report el2's residency
//! during a Linux boot — the figure that carries over to hardware, unlike
//! QEMU's wall clock.
//!
//! Host calls that run a vCPU are counted apart ([`Kind::GuestRun`]): that
//! time is the guest's, not el2's overhead on the host. Nor is the time
//! of PSCI calls el2 forwards to the firmware ([`firmware`]): the host
//! would spend it without el2.

use core::sync::atomic::{AtomicU64, Ordering};

use super::sysreg;

/// What a host trap was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A host call (HVC) other than `VcpuRun`.
    HostCall,
    /// `VcpuRun`: the guest's time, world switches and its exits at EL2.
    GuestRun,
    /// A PSCI or SMCCC call (SMC) relayed or answered.
    Psci,
    /// A host access to a device register el2 emulates (GIC
    /// redistributor frames, the ITS).
    DeviceEmulation,
    /// Any other stage-2 fault (refused with an injected abort, or
    /// retried) or unexpected trap.
    Other,
}

const KINDS: usize = 5;
const NAMES: [&str; KINDS] = [
    "host calls",
    "vCPU runs",
    "PSCI/SMCCC",
    "device emulation",
    "other",
];

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::HostCall => 0,
            Kind::GuestRun => 1,
            Kind::Psci => 2,
            Kind::DeviceEmulation => 3,
            Kind::Other => 4,
        }
    }
}

static COUNT: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
static TICKS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
/// The counter when el2 was entered, and when the host first ran.
static EL2_ENTRY: AtomicU64 = AtomicU64::new(0);
static HOST_ENTRY: AtomicU64 = AtomicU64::new(0);
/// Ticks spent in the firmware (forwarded SMCs) within the traps above:
/// the host would spend them without el2 too.
static FIRMWARE: AtomicU64 = AtomicU64::new(0);

/// Records el2's entry and the host's first instruction (counter values).
pub fn set_boot(el2_entry: u64, host_entry: u64) {
    EL2_ENTRY.store(el2_entry, Ordering::Relaxed);
    HOST_ENTRY.store(host_entry, Ordering::Relaxed);
}

/// Adds one trap of `kind` whose handling started at counter `t0`.
pub fn record(kind: Kind, t0: u64) {
    let dt = sysreg::counter().saturating_sub(t0);
    COUNT[kind.index()].fetch_add(1, Ordering::Relaxed);
    TICKS[kind.index()].fetch_add(dt, Ordering::Relaxed);
}

/// Adds the time of one call into the firmware that started at `t0`.
pub fn firmware(t0: u64) {
    FIRMWARE.fetch_add(sysreg::counter().saturating_sub(t0), Ordering::Relaxed);
}

/// Logs el2's residency so far (`why`: what ended the run), e.g.
/// `residency at SYSTEM_OFF: 3021 us in 2210 host traps over 4.812 s
/// since el2 entry (0.063%; boot 31204 us, 0.648%; with boot 0.711%): host
/// calls 0 (0 us), ...`.
pub fn report(why: &str) {
    let now = sysreg::counter();
    let entry = EL2_ENTRY.load(Ordering::Relaxed);
    let host = HOST_ENTRY.load(Ordering::Relaxed);
    let span = sysreg::ticks_to_us(now.saturating_sub(entry)).max(1);
    let boot = sysreg::ticks_to_us(host.saturating_sub(entry));
    let mut traps = 0;
    let mut ticks = 0;
    // The guest's own time is not el2's overhead: leave it out of the sum.
    for (i, (c, t)) in COUNT.iter().zip(&TICKS).enumerate() {
        if i != Kind::GuestRun.index() {
            traps += c.load(Ordering::Relaxed);
            ticks += t.load(Ordering::Relaxed);
        }
    }
    let firmware = FIRMWARE.load(Ordering::Relaxed);
    let in_traps = sysreg::ticks_to_us(ticks.saturating_sub(firmware));
    // Percent with three decimals, in integers (no FP at EL2 for a log).
    let pct = |us: u64| {
        let milli = u128::from(us) * 100_000 / u128::from(span);
        alloc::format!("{}.{:03}", milli / 1000, milli % 1000)
    };
    let mut by_kind = alloc::string::String::new();
    for (i, name) in NAMES.iter().enumerate() {
        if !by_kind.is_empty() {
            by_kind.push_str(", ");
        }
        let _ = core::fmt::Write::write_fmt(
            &mut by_kind,
            format_args!(
                "{name} {} ({} us)",
                COUNT[i].load(Ordering::Relaxed),
                sysreg::ticks_to_us(TICKS[i].load(Ordering::Relaxed))
            ),
        );
    }
    log::info!(
        "residency at {why}: {in_traps} us in {traps} host traps over {}.{:06} s since el2 \
         entry ({}%; boot {boot} us, {}%; with boot {}%): {by_kind}; the firmware's {} us \
         (forwarded PSCI calls) not counted",
        span / 1_000_000,
        span % 1_000_000,
        pct(in_traps),
        pct(boot),
        pct(in_traps + boot),
        sysreg::ticks_to_us(firmware),
    );
}
