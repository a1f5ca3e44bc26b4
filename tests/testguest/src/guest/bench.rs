//! Bench mode (`testguest.bench` in bootargs): instead of the checks, one
//! line per figure,
//! `testguest: bench <name> iters=<n> ticks=<t> hz=<cntfrq>`, where
//! `ticks` is the total `CNTVCT_EL0` delta over the `n` timed iterations
//! (after a warm-up):
//!
//! | name | what one iteration is | n |
//! |------|-----------------------|---|
//! | `hvc_null` | SMCCC_VERSION over HVC | 10000 |
//! | `mmio_exit` | a load of the test device's ID | 2000 |
//! | `share_1` / `unshare_1` | MEM_SHARE / MEM_UNSHARE of one page, alternating | 200 each |
//! | `share_512` / `unshare_512` | the same for 512 pages, 2 MiB aligned | 20 each |
//! | `touch_64m` | one byte written to each 4 KiB page of 64 MiB never touched before (2 MiB aligned) | 1 |
//!
//! Test memory (inside [`Platform::free`]): the page at its start, the
//! 2 MiB block after it, and 64 MiB after that for `touch_64m` (skipped
//! with `testguest: bench touch_64m skipped (RAM too small)` when RAM is
//! smaller). A call that fails prints `testguest: bench <name> error: ...`
//! and makes the run report one failure.

use host_interface::abi::GuestCall;
use host_interface::platform::testdev::MAGIC;

use super::arch::{self, hvc, println};
use super::checks::SMCCC_VERSION;
use super::{BLOCK, PAGE, Platform, testdev};

/// Bytes `touch_64m` touches.
const TOUCH: u64 = 64 << 20;

fn line(name: &str, iters: u64, ticks: u64, hz: u64) {
    println!("testguest: bench {name} iters={iters} ticks={ticks} hz={hz}");
}

/// Times `iters` alternating MEM_SHARE / MEM_UNSHARE calls of `pages`
/// pages at `ipa` (after one untimed pair); `(share ticks, unshare
/// ticks)`, or the first failing call's name and `(x0, x1)`.
fn share_unshare(ipa: u64, pages: u64, iters: u64) -> Result<(u64, u64), (&'static str, [u64; 2])> {
    let pair = |timed: bool, acc: &mut (u64, u64)| {
        let t0 = arch::ticks();
        let s = hvc([GuestCall::MemShare.id(), ipa, pages, 0]);
        let t1 = arch::ticks();
        let u = hvc([GuestCall::MemUnshare.id(), ipa, pages, 0]);
        let t2 = arch::ticks();
        if s[..2] != [0, pages] {
            return Err(("MEM_SHARE", [s[0], s[1]]));
        }
        if u[..2] != [0, pages] {
            return Err(("MEM_UNSHARE", [u[0], u[1]]));
        }
        if timed {
            acc.0 += t1 - t0;
            acc.1 += t2 - t1;
        }
        Ok(())
    };
    let mut acc = (0, 0);
    pair(false, &mut acc)?;
    for _ in 0..iters {
        pair(true, &mut acc)?;
    }
    Ok(acc)
}

/// Runs the benchmark; whether every call succeeded.
pub fn run(p: &Platform) -> bool {
    let hz = arch::hz();
    let mut ok = true;

    let n = 10_000;
    for _ in 0..100 {
        let _ = hvc([SMCCC_VERSION, 0, 0, 0]);
    }
    let t0 = arch::ticks();
    let mut bad = 0;
    for _ in 0..n {
        if hvc([SMCCC_VERSION, 0, 0, 0])[0] >= 1 << 31 {
            bad += 1;
        }
    }
    line("hvc_null", n, arch::ticks() - t0, hz);
    if bad != 0 {
        println!("testguest: bench hvc_null error: {bad} calls returned an error");
        ok = false;
    }

    let n = 2_000;
    for _ in 0..50 {
        let _ = testdev::id();
    }
    let t0 = arch::ticks();
    let mut bad = 0;
    for _ in 0..n {
        if testdev::id() != MAGIC {
            bad += 1;
        }
    }
    line("mmio_exit", n, arch::ticks() - t0, hz);
    if bad != 0 {
        println!("testguest: bench mmio_exit error: {bad} loads did not read MAGIC");
        ok = false;
    }

    let (start, end) = p.free();
    if end - start < 2 * BLOCK {
        println!("testguest: bench share_1 skipped (RAM too small)");
        println!("testguest: bench share_512 skipped (RAM too small)");
        println!("testguest: bench touch_64m skipped (RAM too small)");
        return ok;
    }
    for (what, ipa, pages, n) in [("1", start, 1, 200), ("512", start + BLOCK, 512, 20)] {
        match share_unshare(ipa, pages, n) {
            Ok((s, u)) => {
                println!("testguest: bench share_{what} iters={n} ticks={s} hz={hz}");
                println!("testguest: bench unshare_{what} iters={n} ticks={u} hz={hz}");
            }
            Err((call, r)) => {
                println!(
                    "testguest: bench share_{what} error: {call} of {pages} page(s) at {ipa:#x} -> x0 = {:#x}, x1 = {:#x}",
                    r[0], r[1]
                );
                ok = false;
            }
        }
    }

    let touch = start + 2 * BLOCK;
    if end - touch < TOUCH {
        println!("testguest: bench touch_64m skipped (RAM too small)");
        return ok;
    }
    let t0 = arch::ticks();
    let mut a = touch;
    while a < touch + TOUCH {
        // SAFETY: a page of the suite's free RAM (2 MiB aligned, inside
        // guest RAM below the device tree, never used before), mapped
        // Normal; the first write makes the VMM back it.
        unsafe { (a as *mut u8).write_volatile(1) };
        a += PAGE;
    }
    line("touch_64m", 1, arch::ticks() - t0, hz);
    ok
}
