//! The CPU_OFF vs CPU_ON race (stress mode, after the stress): a
//! secondary CPU calls PSCI CPU_OFF while the boot CPU immediately and
//! repeatedly calls CPU_ON on it, [`ROUNDS`] times, the secondaries taking
//! turns.
//!
//! Each round: the boot CPU lets the round's target (up since its last
//! round, or off after the stress) turn itself off, and at once calls
//! CPU_ON on it with a new context id, again and again: el2 must answer
//! ALREADY_ON while the firmware still has the CPU on and SUCCESS once it
//! is off — nothing else. Between two CPU_ONs the boot CPU asks
//! AFFINITY_INFO, which must say ON (0) or OFF (1); once it said OFF the
//! next CPU_ON must succeed (nobody else starts the CPU). The target must
//! then come up at its entry, at EL1, with that round's context id, make
//! a host call, and AFFINITY_INFO must say ON while it waits for its next
//! round. At the end every target turns off and AFFINITY_INFO must say OFF.
//! el2 logs each CPU_ON and CPU_OFF; the QEMU test checks no el2 warning,
//! error or FATAL line appears.

use core::sync::atomic::{AtomicU64, Ordering};

use host_interface::abi::{ABI_VERSION, HostCall};
use smccc::psci;

use super::arch::{self, hvc, mrs, println, smc};
use super::checks::Summary;
use super::entry::{MAX_CPUS, secondary_entry};

/// Rounds of the race.
pub const ROUNDS: u64 = 50;
/// Context ids of the race: this tag, the round in bits 31:8, the slot in
/// the low byte.
const RACE_TAG: u64 = 0x7ace_0000_0000_0000;
/// PSCI ALREADY_ON.
const ALREADY_ON: u64 = -4i64 as u64;
/// AFFINITY_INFO: ON, OFF.
const AFF_ON: u64 = 0;
pub const AFF_OFF: u64 = 1;
/// How long one round may take.
const ROUND_US: u64 = 2_000_000;

/// Whether a CPU_ON context id starts the race's secondary program.
pub fn is_race(context: u64) -> bool {
    context >> 48 == RACE_TAG >> 48
}

/// One secondary's reports.
struct Mailbox {
    /// The context id it came up with (written last).
    seen: AtomicU64,
    /// Its exception level and whether its host call worked.
    el: AtomicU64,
    version_ok: AtomicU64,
    /// The round up to which it may turn off (set by the boot CPU).
    go_off: AtomicU64,
}

static MAILBOXES: [Mailbox; MAX_CPUS] = [const {
    Mailbox {
        seen: AtomicU64::new(0),
        el: AtomicU64::new(0),
        version_ok: AtomicU64::new(0),
        go_off: AtomicU64::new(0),
    }
}; MAX_CPUS];

fn round_of(context: u64) -> u64 {
    (context >> 8) & 0xff_ffff
}

/// The race's secondary program: report, wait for permission, CPU_OFF.
pub fn secondary(context: u64) -> ! {
    let m = &MAILBOXES[arch::slot()];
    m.el.store((mrs!("CurrentEL") >> 2) & 3, Ordering::Relaxed);
    let r = hvc([HostCall::Version.id(), 0, 0, 0, 0, 0]);
    m.version_ok.store(
        u64::from(r[0] == 0 && r[2] == ABI_VERSION),
        Ordering::Relaxed,
    );
    m.seen.store(context, Ordering::Release);
    let round = round_of(context);
    let _ = arch::wait_for(10_000_000, || m.go_off.load(Ordering::Acquire) >= round);
    let _ = smc([u64::from(psci::PSCI_CPU_OFF), 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}

fn cpu_on(mpidr: u64, context: u64) -> u64 {
    let entry = secondary_entry as *const () as u64;
    smc([u64::from(psci::PSCI_CPU_ON_64), mpidr, entry, context])[0]
}

/// PSCI AFFINITY_INFO (level 0) of `mpidr`.
pub fn affinity(mpidr: u64) -> u64 {
    smc([u64::from(psci::PSCI_AFFINITY_INFO_64), mpidr, 0, 0])[0]
}

/// Runs the race on the secondaries of `cpus` (`(slot, MPIDR)`).
pub fn run(s: &mut Summary, cpus: &[(usize, u64)]) {
    let targets: alloc::vec::Vec<(usize, u64)> = cpus
        .iter()
        .copied()
        .filter(|&(slot, _)| slot != 0)
        .collect();
    if targets.is_empty() {
        s.skip("CPU_OFF/CPU_ON race", "only one CPU");
        return;
    }
    let t0 = arch::now().0;
    let mut already_on = 0u64;
    let mut most = 0u64;
    let mut queries = 0u64;
    let mut psci_bad: Option<alloc::string::String> = None;
    let mut up_bad: Option<alloc::string::String> = None;
    let mut aff_bad: Option<alloc::string::String> = None;
    // The round each target last came up in (0: the stress worker, which
    // turns itself off when done).
    let mut last_round = [0u64; MAX_CPUS];
    let mut rounds_done = 0;
    'rounds: for round in 1..=ROUNDS {
        let (slot, mpidr) = targets[(round as usize - 1) % targets.len()];
        let m = &MAILBOXES[slot];
        let context = RACE_TAG | (round << 8) | slot as u64;
        // Let it turn off, and start it again at once.
        m.go_off.store(last_round[slot], Ordering::Release);
        let (start, _) = arch::now();
        let mut tries = 0u64;
        let mut saw_off = false;
        loop {
            let r = cpu_on(mpidr, context);
            if r == 0 {
                break;
            }
            if r != ALREADY_ON {
                psci_bad.get_or_insert(alloc::format!(
                    "round {round}: CPU_ON -> {:#x} (only ALREADY_ON or SUCCESS)",
                    r as i64
                ));
                break 'rounds;
            }
            if saw_off {
                psci_bad.get_or_insert(alloc::format!(
                    "round {round}: CPU_ON -> ALREADY_ON after AFFINITY_INFO said OFF"
                ));
                break 'rounds;
            }
            tries += 1;
            if arch::us_since(start) > ROUND_US {
                psci_bad.get_or_insert(alloc::format!(
                    "round {round}: still ALREADY_ON after {tries} tries in {} ms",
                    ROUND_US / 1000
                ));
                break 'rounds;
            }
            let a = affinity(mpidr);
            queries += 1;
            match a {
                AFF_ON => {}
                AFF_OFF => saw_off = true,
                _ => {
                    aff_bad.get_or_insert(alloc::format!(
                        "round {round}: AFFINITY_INFO -> {:#x} between CPU_ONs (ON or OFF only)",
                        a as i64
                    ));
                }
            }
        }
        already_on += tries;
        most = most.max(tries);
        let up = arch::wait_for(ROUND_US, || m.seen.load(Ordering::Acquire) == context);
        let (el, version) = (
            m.el.load(Ordering::Relaxed),
            m.version_ok.load(Ordering::Relaxed),
        );
        if !up || el != 1 || version != 1 {
            up_bad.get_or_insert(alloc::format!(
                "round {round}: CPU {mpidr:#x} {}: context {:#x} (want {context:#x}), EL{el}, \
                 host call {}",
                if up { "came up" } else { "did not come up" },
                m.seen.load(Ordering::Relaxed),
                if version == 1 { "ok" } else { "failed" }
            ));
            break;
        }
        last_round[slot] = round;
        let a = affinity(mpidr);
        queries += 1;
        if a != AFF_ON {
            aff_bad.get_or_insert(alloc::format!(
                "round {round}: AFFINITY_INFO -> {:#x} while the CPU is up (want ON)",
                a as i64
            ));
        }
        rounds_done = round;
    }
    // Everyone off.
    for &(slot, _) in &targets {
        MAILBOXES[slot]
            .go_off
            .store(last_round[slot].max(1), Ordering::Release);
    }
    let all_off = targets
        .iter()
        .all(|&(_, mpidr)| arch::wait_for(ROUND_US, || affinity(mpidr) == AFF_OFF));
    let ms = arch::us_since(t0) / 1000;
    println!(
        "testhost: race: {rounds_done} rounds on {} CPU(s) in {ms} ms: {already_on} ALREADY_ON \
         answers (at most {most} in a round), {queries} AFFINITY_INFO queries",
        targets.len()
    );
    s.check(
        &alloc::format!(
            "CPU_OFF/CPU_ON race: {ROUNDS} rounds, CPU_ON -> ALREADY_ON until the target was off, \
             then SUCCESS"
        ),
        psci_bad.is_none() && rounds_done == ROUNDS,
        format_args!("{}", psci_bad.as_deref().unwrap_or("rounds cut short")),
    );
    s.check(
        "CPU_OFF/CPU_ON race: each round the target came up at its entry, at EL1, with the \
         round's context id",
        up_bad.is_none(),
        format_args!("{}", up_bad.as_deref().unwrap_or("")),
    );
    s.check(
        "CPU_OFF/CPU_ON race: AFFINITY_INFO agreed (ON or OFF between CPU_ONs, ON while up)",
        aff_bad.is_none(),
        format_args!("{}", aff_bad.as_deref().unwrap_or("")),
    );
    s.check(
        "CPU_OFF/CPU_ON race: every target off at the end (AFFINITY_INFO OFF)",
        all_off,
        format_args!("a CPU still on"),
    );
}
