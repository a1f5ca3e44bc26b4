//! Focused races (stress mode, after the random stress): the collisions
//! the random stress can only hit now and then, set up on purpose between
//! the boot CPU and one helper CPU, many rounds each, on a VM of their own
//! built from the (by then idle) stress pool. Each ends with its own check.
//!
//! 1. **A conversion answered while another CPU runs the vCPU**: the guest
//!    asked for MEM_SHARE (its vCPU waits on the conversion); the helper
//!    runs that vCPU again and again (each run returns the same
//!    MemoryFault at once) while the boot CPU completes the conversion.
//!    The guest must then go on: the next run gives its MEM_UNSHARE.
//! 2. **A stage-2 fault racing a mapping of the same page**: the guest
//!    keeps storing to its data page while the helper lends a page there
//!    and takes it back (ShareGuest/UnshareGuest) over and over; a store
//!    that faulted while nothing was mapped must reach the host as a
//!    stage-2 fault (or be retried), never stop the vCPU.
//! 3. **A run racing TeardownStart**: the boot CPU runs the guest (which
//!    spins on its own page between exits) while the helper calls
//!    TeardownStart until it succeeds and then reclaims the program page
//!    first. Once the teardown started the VM must not run: a run either
//!    holds the teardown off (EBUSY) or is refused (EINVAL); the guest
//!    faulting on its reclaimed program page proves it ran after.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host_interface::abi::{
    Exit, GuestState, HostCall, KVM_MEMORY_EXIT_FLAG_PRIVATE, RUN_COMPLETE_ACCESS, RUN_FAIL_ACCESS,
};
use smccc::psci;

use super::arch::{self, hvc7, println, smc};
use super::checks::Summary;
use super::entry::secondary_entry;
use super::race;
use super::stress::{
    DATA_GFN, DATA_IPA, GFNS, MMIO_IPA, PAGE, PROG_GFN, guest_program, pool_pfn, program_pfn,
};

/// Context id of the helper CPU (slot in the low byte).
const HELPER_TAG: u64 = 0xf0c5_0000_0000_0000;

/// Whether a CPU_ON context id starts the helper.
pub fn is_helper(context: u64) -> bool {
    context & !0xff == HELPER_TAG
}

/// Rounds of the first and third race; exits of the second.
const CONVERSION_ROUNDS: u64 = 20;
const FAULT_EXITS: u64 = 1500;
/// Each race stops once it has seen this many failures (evidence enough).
const ENOUGH: u64 = 3;
/// At most this long for the second race, and for one round of the third.
const FAULT_US: u64 = 1_000_000;
const TEARDOWN_ROUND_US: u64 = 500_000;
/// At most this long for all rounds of the third race.
const TEARDOWN_US: u64 = 3_000_000;
/// In the third race the boot CPU pauses this long after every
/// `TEARDOWN_PAUSE_EVERY`th run, so that the helper's TeardownStart finds
/// the vCPU idle at last (else it may get EBUSY for as long as it tries).
const TEARDOWN_PAUSE_US: u64 = 50;
const TEARDOWN_PAUSE_EVERY: u64 = 4;
const TEARDOWN_ROUNDS: u64 = 25;
/// Helper runs to wait for before answering the conversion.
const HELPER_RUNS_FIRST: u64 = 20;
/// The guest's spin per loop in the teardown race.
const TEARDOWN_SPIN: u64 = 1000;

/// Commands.
const CMD_NONE: u64 = 0;
const CMD_RUN: u64 = 1;
const CMD_TOGGLE: u64 = 2;
const CMD_TEARDOWN: u64 = 3;
const CMD_QUIT: u64 = 9;

/// The helper's mailbox.
struct Helper {
    arrived: AtomicBool,
    /// The command and its VM handle.
    cmd: AtomicU64,
    handle: AtomicU64,
    /// Stop the looping commands.
    stop: AtomicBool,
    /// Bumped when a command is over.
    finished: AtomicU64,
    /// Calls made by the last command, and how many succeeded.
    calls: AtomicU64,
    ok: AtomicU64,
    /// Results the command's calls may not give (counted), and the last
    /// one: call number << 32 | x1 low bits.
    odd: AtomicU64,
    last_odd: AtomicU64,
}

static HELPER: Helper = Helper {
    arrived: AtomicBool::new(false),
    cmd: AtomicU64::new(CMD_NONE),
    handle: AtomicU64::new(0),
    stop: AtomicBool::new(false),
    finished: AtomicU64::new(0),
    calls: AtomicU64::new(0),
    ok: AtomicU64::new(0),
    odd: AtomicU64::new(0),
    last_odd: AtomicU64::new(0),
};

fn raw(c: HostCall, a: [u64; 5]) -> [u64; 7] {
    hvc7([c.id(), a[0], a[1], a[2], a[3], a[4]])
}

const ENOENT: u64 = -2i64 as u64;
const EBUSY: u64 = -16i64 as u64;
const EINVAL: u64 = -22i64 as u64;

/// The helper CPU: runs commands until told to quit, then turns off.
pub fn helper(_context: u64) -> ! {
    let m = &HELPER;
    m.arrived.store(true, Ordering::Release);
    loop {
        let cmd = m.cmd.load(Ordering::Acquire);
        if cmd == CMD_NONE {
            core::hint::spin_loop();
            continue;
        }
        if cmd == CMD_QUIT {
            break;
        }
        let h = m.handle.load(Ordering::Relaxed);
        let (mut calls, mut ok) = (0u64, 0u64);
        let odd = |c: HostCall, r: [u64; 7], fine: bool| {
            if !fine {
                m.odd.fetch_add(1, Ordering::Relaxed);
                m.last_odd
                    .store(((c as u64) << 32) | (r[1] & 0xffff_ffff), Ordering::Relaxed);
            }
        };
        match cmd {
            CMD_RUN => {
                while !m.stop.load(Ordering::Acquire) {
                    let r = raw(HostCall::VcpuRun, [h, 0, 0, 0, 0]);
                    calls += 1;
                    ok += u64::from(r[1] == 0);
                    odd(
                        HostCall::VcpuRun,
                        r,
                        r[0] == 0 && (r[1] == 0 || r[1] == EBUSY),
                    );
                    m.calls.store(calls, Ordering::Release);
                }
            }
            CMD_TOGGLE => {
                let pfn = pool_pfn(8);
                while !m.stop.load(Ordering::Acquire) {
                    let r = raw(HostCall::ShareGuest, [h, pfn, DATA_GFN, 1, 0]);
                    odd(HostCall::ShareGuest, r, r[0] == 0 && r[1] == 0);
                    let r = raw(HostCall::UnshareGuest, [h, DATA_GFN, 1, 0, 0]);
                    odd(HostCall::UnshareGuest, r, r[0] == 0 && r[1] == 0);
                    calls += 2;
                    m.calls.store(calls, Ordering::Release);
                }
            }
            CMD_TEARDOWN => loop {
                let r = raw(HostCall::TeardownStart, [h, 0, 0, 0, 0]);
                calls += 1;
                if r[1] == 0 {
                    ok += 1;
                    // The program page first: a guest still running would
                    // fault on it.
                    for gfn in core::iter::once(PROG_GFN).chain(0..GFNS) {
                        let r = raw(HostCall::Reclaim, [h, gfn, 1, 0, 0]);
                        odd(
                            HostCall::Reclaim,
                            r,
                            r[0] == 0 && (r[1] == 0 || r[1] == ENOENT),
                        );
                    }
                    break;
                }
                odd(HostCall::TeardownStart, r, r[0] == 0 && r[1] == EBUSY);
                if r[1] != EBUSY || m.stop.load(Ordering::Acquire) {
                    break;
                }
            },
            _ => {}
        }
        m.calls.store(calls, Ordering::Release);
        m.ok.store(ok, Ordering::Relaxed);
        m.cmd.store(CMD_NONE, Ordering::Release);
        m.finished.fetch_add(1, Ordering::AcqRel);
    }
    let _ = smc([u64::from(psci::PSCI_CPU_OFF), 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}

/// Starts a helper command on VM `h`.
fn start(cmd: u64, h: u64) -> u64 {
    let m = &HELPER;
    let before = m.finished.load(Ordering::Acquire);
    m.stop.store(false, Ordering::Relaxed);
    m.calls.store(0, Ordering::Relaxed);
    m.ok.store(0, Ordering::Relaxed);
    m.handle.store(h, Ordering::Relaxed);
    m.cmd.store(cmd, Ordering::Release);
    before
}

/// Stops the helper's command (started when `finished` was `before`) and
/// waits for it to end.
fn finish(before: u64) -> bool {
    let m = &HELPER;
    m.stop.store(true, Ordering::Release);
    arch::wait_for(2_000_000, || m.finished.load(Ordering::Acquire) > before)
}

/// A VM of the focused races: the pool's first pages for its root (0-1),
/// metadata (2-5) and memcache (6-7), slot 0's program page with the
/// guest program spinning `spin` times per loop, vCPU 0 at it.
fn make_vm(spin: u64) -> Result<u64, &'static str> {
    let ok = |r: [u64; 7]| r[0] == 0 && r[1] == 0;
    let r = raw(HostCall::VmCreate, [40, pool_pfn(0), pool_pfn(2), 1, 0]);
    if !ok(r) {
        return Err("VmCreate failed");
    }
    let h = r[2];
    if !ok(raw(HostCall::MemcacheTopup, [h, pool_pfn(6), 2, 0, 0])) {
        return Err("MemcacheTopup failed");
    }
    let program = guest_program(0xf0c5, spin);
    // SAFETY: slot 0's program page, host-owned and unused now.
    if unsafe { arch::write_phys(program_pfn(0) << 12, &program) }.is_err() {
        return Err("the program page is not the host's");
    }
    if !ok(raw(
        HostCall::DonateGuest,
        [h, program_pfn(0), PROG_GFN, 1, 0],
    )) {
        return Err("DonateGuest of the program failed");
    }
    if !ok(raw(HostCall::VcpuInit, [h, 0, PROG_GFN * PAGE, 0, 0])) {
        return Err("VcpuInit failed");
    }
    Ok(h)
}

/// Tears VM `h` down completely; whether it went.
fn destroy_vm(h: u64) -> bool {
    let _ = raw(HostCall::TeardownStart, [h, 0, 0, 0, 0]);
    for gfn in (0..GFNS).chain([PROG_GFN]) {
        let _ = raw(HostCall::Reclaim, [h, gfn, 1, 0, 0]);
    }
    let r = raw(HostCall::TeardownFinish, [h, 0, 0, 0, 0]);
    r[0] == 0 && r[1] == 0
}

fn run_vcpu(h: u64, flags: u64) -> Result<Option<Exit>, u64> {
    let r = raw(HostCall::VcpuRun, [h, 0, flags, 0, 0]);
    if r[0] != 0 || r[1] != 0 {
        return Err(r[1]);
    }
    Ok(Exit::from_regs([r[2], r[3], r[4], r[5], r[6]]))
}

const SHARE_EXIT: Exit = Exit::MemoryFault {
    gpa: DATA_IPA,
    size: PAGE,
    flags: 0,
};
const UNSHARE_EXIT: Exit = Exit::MemoryFault {
    gpa: DATA_IPA,
    size: PAGE,
    flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
};

fn is_mmio(e: Option<Exit>) -> bool {
    matches!(e, Some(Exit::Stage2Fault { gpa: MMIO_IPA, .. }))
}

/// Runs the focused races with the helper on `helper` (`(slot, MPIDR)`).
pub fn run(s: &mut Summary, helper: Option<(usize, u64)>) {
    let names = [
        "focused race: a conversion completed while another CPU runs the vCPU reaches the guest",
        "focused race: a stage-2 fault racing a mapping of the page never stops the vCPU",
        "focused race: once TeardownStart succeeded the VM does not run (no run slips past it)",
    ];
    let Some((slot, mpidr)) = helper else {
        for n in names {
            s.skip(n, "only one CPU");
        }
        return;
    };
    let entry = secondary_entry as *const () as u64;
    let r = smc([
        u64::from(psci::PSCI_CPU_ON_64),
        mpidr,
        entry,
        HELPER_TAG | slot as u64,
    ])[0];
    if r != 0 || !arch::wait_for(2_000_000, || HELPER.arrived.load(Ordering::Acquire)) {
        for n in names {
            s.check(
                n,
                false,
                format_args!("the helper CPU did not start ({r:#x})"),
            );
        }
        return;
    }
    let t = arch::now().0;
    conversion_race(s, names[0]);
    println!(
        "testhost: focused race 1 took {} ms",
        arch::us_since(t) / 1000
    );
    let t = arch::now().0;
    fault_race(s, names[1]);
    println!(
        "testhost: focused race 2 took {} ms",
        arch::us_since(t) / 1000
    );
    let t = arch::now().0;
    teardown_race(s, names[2]);
    println!(
        "testhost: focused race 3 took {} ms",
        arch::us_since(t) / 1000
    );
    HELPER.cmd.store(CMD_QUIT, Ordering::Release);
    let _ = arch::wait_for(2_000_000, || race::affinity(mpidr) == race::AFF_OFF);
}

/// Race 1 (module docs).
fn conversion_race(s: &mut Summary, name: &str) {
    let mut lost = 0;
    let mut rounds = 0;
    let mut helper_runs = 0;
    let mut trouble: Option<&'static str> = None;
    for _ in 0..CONVERSION_ROUNDS {
        let h = match make_vm(0) {
            Ok(h) => h,
            Err(e) => {
                trouble = Some(e);
                break;
            }
        };
        // Its data page, so that MEM_SHARE can be asked for.
        let r = raw(HostCall::DonateGuest, [h, pool_pfn(8), DATA_GFN, 1, 0]);
        let first = run_vcpu(h, 0);
        if r[1] != 0 || first != Ok(Some(SHARE_EXIT)) {
            trouble = Some("the guest did not ask for MEM_SHARE first");
            destroy_vm(h);
            break;
        }
        let before = start(CMD_RUN, h);
        arch::wait_for(1_000_000, || {
            HELPER.calls.load(Ordering::Acquire) >= HELPER_RUNS_FIRST
        });
        // el2 may refuse it while the vCPU runs (EBUSY): then it is
        // answered once the helper stopped.
        let mut done = raw(HostCall::ConvertComplete, [h, DATA_GFN, 1, 1, 0]);
        arch::wait_for(1_000_000, || {
            HELPER.calls.load(Ordering::Acquire) >= 2 * HELPER_RUNS_FIRST
        });
        if !finish(before) {
            trouble = Some("the helper did not stop");
            break;
        }
        helper_runs += HELPER.calls.load(Ordering::Acquire);
        rounds += 1;
        if done[1] == EBUSY {
            done = raw(HostCall::ConvertComplete, [h, DATA_GFN, 1, 1, 0]);
        }
        if done[0] != 0 || done[1] != 0 {
            trouble = Some("ConvertComplete of the pending MEM_SHARE failed");
        } else {
            let next = run_vcpu(h, 0);
            if next != Ok(Some(UNSHARE_EXIT)) {
                lost += 1;
                let again = raw(HostCall::ConvertComplete, [h, DATA_GFN, 1, 1, 0]);
                let refuse = raw(HostCall::ConvertRefuse, [h, 0, 0, 0, 0]);
                if lost == 1 {
                    println!(
                        "testhost: focused race: VM {h:#x}: ConvertComplete(share) -> 0 while the \
                         helper ran vCPU 0; the next run -> {next:x?} (want the MEM_UNSHARE \
                         exit); ConvertComplete again -> {}, ConvertRefuse -> {}: the vCPU \
                         waits on a conversion el2 already made",
                        again[1] as i64, refuse[1] as i64
                    );
                }
            }
        }
        if !destroy_vm(h) {
            trouble = Some("the VM could not be torn down");
            break;
        }
        if lost >= ENOUGH {
            break;
        }
    }
    s.check(
        name,
        lost == 0 && trouble.is_none(),
        format_args!(
            "lost in {lost} of {rounds} rounds ({helper_runs} helper runs, {} odd results){}",
            HELPER.odd.load(Ordering::Relaxed),
            trouble.map(|t| alloc::format!("; {t}")).unwrap_or_default()
        ),
    );
}

/// Race 2 (module docs).
fn fault_race(s: &mut Summary, name: &str) {
    let mut h = match make_vm(0) {
        Ok(h) => h,
        Err(e) => {
            s.check(name, false, format_args!("{e}"));
            return;
        }
    };
    let odd_before = HELPER.odd.load(Ordering::Relaxed);
    let mut before = start(CMD_TOGGLE, h);
    let (mut faults, mut stopped, mut other) = (0u64, 0u64, None);
    let mut toggles = 0;
    let mut next = 0;
    let t0 = arch::now().0;
    let mut exits = 0;
    while exits < FAULT_EXITS && arch::us_since(t0) < FAULT_US && stopped < ENOUGH {
        exits += 1;
        let e = match run_vcpu(h, next) {
            Ok(e) => e,
            Err(EBUSY) => continue,
            Err(x) => {
                other.get_or_insert(alloc::format!("VcpuRun -> {}", x as i64));
                break;
            }
        };
        next = 0;
        match e {
            Some(Exit::Stage2Fault {
                gpa: DATA_IPA,
                hvc: true,
                ..
            }) => next = RUN_FAIL_ACCESS,
            Some(Exit::Stage2Fault { gpa: DATA_IPA, .. }) => {
                faults += 1;
                next = RUN_COMPLETE_ACCESS;
            }
            _ if is_mmio(e) => next = RUN_COMPLETE_ACCESS,
            Some(Exit::Interrupted) => {}
            Some(Exit::Stopped { ec }) => {
                stopped += 1;
                if stopped == 1 {
                    println!(
                        "testhost: focused race: VM {h:#x}: el2 stopped vCPU 0 (EC {ec:#x}) while \
                         the helper lent and took back a page at its data page, which it stores \
                         to; the data page is now {:x?}",
                        GuestState::from_raw(
                            raw(HostCall::GuestPageState, [h, DATA_GFN, 0, 0, 0])[2]
                        )
                    );
                }
                // A stopped vCPU does not run again: a new VM.
                let stopped_helper = finish(before);
                toggles += HELPER.calls.load(Ordering::Acquire);
                if !stopped_helper || !destroy_vm(h) {
                    other.get_or_insert("could not replace the stopped VM".into());
                    break;
                }
                h = match make_vm(0) {
                    Ok(h) => h,
                    Err(e) => {
                        other.get_or_insert(e.into());
                        break;
                    }
                };
                before = start(CMD_TOGGLE, h);
            }
            e => {
                other.get_or_insert(alloc::format!("exit {e:x?}"));
                break;
            }
        }
    }
    let stopped_helper = finish(before);
    toggles += HELPER.calls.load(Ordering::Acquire);
    let destroyed = destroy_vm(h);
    let odd = HELPER.odd.load(Ordering::Relaxed) - odd_before;
    println!(
        "testhost: focused race: {exits} runs, {faults} stores faulted on the unmapped data page \
         while the helper made {toggles} ShareGuest/UnshareGuest calls; {stopped} stopped"
    );
    s.check(
        name,
        stopped == 0 && other.is_none() && stopped_helper && destroyed && faults > 0,
        format_args!(
            "{stopped} of {faults} faults stopped the vCPU; {}{}",
            other.as_deref().unwrap_or("no other trouble"),
            if odd > 0 {
                alloc::format!(
                    ", helper: {odd} odd results (last {:#x})",
                    HELPER.last_odd.load(Ordering::Relaxed)
                )
            } else {
                alloc::string::String::new()
            }
        ),
    );
}

/// Race 3 (module docs).
fn teardown_race(s: &mut Summary, name: &str) {
    let mut slipped = 0;
    let mut rounds = 0;
    let mut runs = 0u64;
    let mut trouble: Option<alloc::string::String> = None;
    let mut starved = 0;
    let start_all = arch::now().0;
    for _ in 0..TEARDOWN_ROUNDS {
        if arch::us_since(start_all) > TEARDOWN_US {
            break;
        }
        let h = match make_vm(TEARDOWN_SPIN) {
            Ok(h) => h,
            Err(e) => {
                trouble = Some(e.into());
                break;
            }
        };
        let r = raw(HostCall::DonateGuest, [h, pool_pfn(8), DATA_GFN, 1, 0]);
        if r[1] != 0 {
            trouble = Some("DonateGuest of the data page failed".into());
            break;
        }
        let before = start(CMD_TEARDOWN, h);
        let mut next = 0;
        let t0 = arch::now().0;
        loop {
            if arch::us_since(t0) > TEARDOWN_ROUND_US {
                // The helper kept finding the vCPU running (EBUSY, as it
                // should): no verdict this round.
                starved += 1;
                break;
            }
            runs += 1;
            if runs.is_multiple_of(TEARDOWN_PAUSE_EVERY) {
                let (p0, _) = arch::now();
                while arch::us_since(p0) < TEARDOWN_PAUSE_US {
                    core::hint::spin_loop();
                }
            }
            let e = match run_vcpu(h, next) {
                Ok(e) => e,
                Err(EINVAL) => break,
                Err(EBUSY) => continue,
                Err(x) => {
                    trouble.get_or_insert(alloc::format!("VcpuRun -> {}", x as i64));
                    break;
                }
            };
            next = 0;
            match e {
                Some(Exit::MemoryFault { flags, .. }) => {
                    let share = u64::from(flags == 0);
                    let _ = raw(HostCall::ConvertComplete, [h, DATA_GFN, 1, share, 0]);
                }
                _ if is_mmio(e) => next = RUN_COMPLETE_ACCESS,
                Some(Exit::Interrupted) => {}
                Some(Exit::Stage2Fault { gpa, .. }) if gpa >> 12 == PROG_GFN => {
                    slipped += 1;
                    if slipped == 1 {
                        println!(
                            "testhost: focused race: VM {h:#x}: the helper's TeardownStart -> 0 \
                             and its Reclaim of the program page, yet VcpuRun ran the guest \
                             afterwards: it faulted at {gpa:#x} (its program page)"
                        );
                    }
                    break;
                }
                Some(Exit::Stage2Fault { gpa: DATA_IPA, .. }) => {
                    // The data page reclaimed under a guest still running.
                    slipped += 1;
                    break;
                }
                e => {
                    trouble.get_or_insert(alloc::format!("exit {e:x?}"));
                    break;
                }
            }
        }
        if !finish(before) {
            trouble.get_or_insert("the helper did not stop".into());
            break;
        }
        if !destroy_vm(h) {
            trouble.get_or_insert("the VM could not be torn down".into());
            break;
        }
        rounds += 1;
        if slipped >= ENOUGH {
            break;
        }
    }
    s.check(
        name,
        slipped == 0 && trouble.is_none(),
        format_args!(
            "the guest ran after TeardownStart in {slipped} of {rounds} rounds ({runs} runs){}",
            trouble.map(|t| alloc::format!("; {t}")).unwrap_or_default()
        ),
    );
    println!(
        "testhost: focused race: {rounds} teardown rounds, {runs} runs, {slipped} slipped past \
         TeardownStart, {starved} rounds where TeardownStart never found the vCPU idle"
    );
}
