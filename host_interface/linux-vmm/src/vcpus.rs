//! Running the VM: one thread per vCPU, the main thread for console
//! input, signals and the end.
//!
//! # Why a thread per vCPU
//!
//! Under the driver, `KVM_RUN` blocks: a vCPU that is off (not started
//! yet, or after `CPU_OFF`) waits in the driver until a `CPU_ON` starts
//! it, and a vCPU waiting for an interrupt (WFI) waits there too. One
//! thread running the vCPUs in turn would sit in such a wait while the
//! others have work (the test host's round-robin gets control back with
//! its own timer; here the driver, not the VMM, decides when a vCPU
//! runs). So each vCPU has its own thread that loops on `KVM_RUN`
//! ([`VcpuRunner::run`]) without any lock, and serves each exit under one
//! lock on the VMM ([`Vmm::handle_exit`]: the devices, memory and counts
//! are the VMM library's, shared by every vCPU), completing it in its own
//! run page before running again.
//!
//! # The main thread
//!
//! Waits in `poll` on standard input and a wake-up pipe, at most
//! [`TICK_MS`] at a time. Typed bytes are queued in the host and moved
//! into the guest's PL011 ([`Vmm::poll_console`]) — after each read and
//! on every tick, so the PL011 sees the line go idle (its receive
//! timeout). It ends the run when a vCPU thread reports the end (the guest
//! powered off, reset, crashed, or the VMM failed) or a `SIGINT`/`SIGTERM`
//! arrives ([`Outcome::Stopped`]).
//!
//! # Stopping
//!
//! Each vCPU's `immediate_exit` is set and its thread sent `SIGUSR1`
//! (a no-op handler installed without `SA_RESTART`), so a `KVM_RUN` in
//! progress returns `EINTR` and one about to start returns at once. The
//! threads are joined (within [`STOP_TIMEOUT`]), then the VMM tears the VM
//! down and reports. A thread that does not come back (a driver that does
//! not let a signal end `KVM_RUN`) is reported and the process exits
//! without touching the VM further: closing its fds on exit ends it.

use std::io::{Stderr, Stdout};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use host_interface::vmm::{Outcome, Step, Vmm, VmmReport};

use crate::driver::{LinuxVm, VcpuRunner};
use crate::host::LinuxHost;

/// The longest the main thread waits before polling the console again.
pub const TICK_MS: i32 = 10;
/// How long stopped vCPU threads have to come back.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub const KICK_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The VMM and its host, under one lock.
pub struct State {
    /// The VMM.
    pub vmm: Vmm<'static, LinuxVm>,
    /// Its host.
    pub host: LinuxHost<Stdout, Stderr>,
}

/// What the threads share.
struct Shared {
    state: Mutex<State>,
    /// The run is over: vCPU threads stop.
    done: AtomicBool,
    /// How it ended (the first report wins).
    outcome: Mutex<Option<Outcome>>,
    /// vCPU threads still running.
    running: AtomicUsize,
    /// The wake-up pipe's write end.
    wake: RawFd,
}

fn wake(fd: RawFd) {
    // SAFETY: a one-byte write from a live buffer; a full pipe (EAGAIN)
    // already has a wake-up in it.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the run with `outcome` unless it already ended.
    fn end(&self, outcome: Outcome) {
        let mut o = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if o.is_none() {
            *o = Some(outcome);
        }
        self.done.store(true, Ordering::SeqCst);
        wake(self.wake);
    }
}

/// The last `SIGINT`/`SIGTERM` (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The wake-up pipe's write end, for the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        wake(fd);
    }
}

extern "C" fn on_kick(_signal: libc::c_int) {}

fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is "no flags, empty mask".
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    // No SA_RESTART: a blocking call (KVM_RUN, poll) returns EINTR.
    sa.sa_flags = 0;
    // SAFETY: a live sigaction; the handlers only touch atomics and write
    // to a pipe (async-signal-safe).
    if unsafe { libc::sigaction(signal, &sa, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the handlers: `SIGINT`/`SIGTERM` stop the VM, [`KICK_SIGNAL`]
/// interrupts `KVM_RUN`. Call once, before the VM runs; a signal that
/// comes earlier is seen when the run starts.
pub fn install_signal_handlers() -> std::io::Result<()> {
    handle(libc::SIGINT, on_stop)?;
    handle(libc::SIGTERM, on_stop)?;
    handle(KICK_SIGNAL, on_kick)
}

/// A `SIGINT`/`SIGTERM` arrived (and is forgotten).
fn take_stop_signal() -> Option<u8> {
    match STOP_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(u8::try_from(s).unwrap_or(u8::MAX)),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a live two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh fds nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a live buffer from our non-blocking pipe.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// `poll` on `fds` for at most `ms` (an interrupted poll is a wake-up).
fn wait(fds: &mut [libc::pollfd], ms: i32) {
    // SAFETY: a live array of `fds.len()` pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

fn vcpu_thread(shared: &Shared, index: usize, runner: VcpuRunner) {
    while !shared.done.load(Ordering::SeqCst) {
        let result = runner.run();
        if shared.done.load(Ordering::SeqCst) {
            break;
        }
        let mut guard = shared.lock();
        let State { vmm, host } = &mut *guard;
        if let Step::End(outcome) = vmm.handle_exit(index, result, host) {
            drop(guard);
            shared.end(outcome);
            break;
        }
    }
    shared.running.fetch_sub(1, Ordering::SeqCst);
    wake(shared.wake);
}

/// Runs the loaded VM in `state` to its end (see the module docs), then
/// tears it down and returns the report; `None` if vCPU threads did not
/// stop (the VM is left to the process's exit).
pub fn run(mut state: State) -> Option<VmmReport> {
    let (wake_r, wake_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            let State { vmm, mut host } = state;
            let e = host_interface::vmm::VmmError::Host {
                what: "creating the wake-up pipe",
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            };
            return Some(vmm.finish(Outcome::Error(e), &mut host).0);
        }
    };
    WAKE_FD.store(wake_w.as_raw_fd(), Ordering::SeqCst);
    let vcpus = state.vmm.vcpus();
    // SAFETY: the runners are used by the threads below, which are joined
    // before the VMM (and its LinuxVm) is finished; if they cannot be
    // joined, the process exits without dropping the VM.
    let runners: Vec<VcpuRunner> = (0..vcpus)
        .filter_map(|i| unsafe { state.vmm.vm().runner(i) })
        .collect();
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        done: AtomicBool::new(false),
        outcome: Mutex::new(None),
        running: AtomicUsize::new(runners.len()),
        wake: wake_w.as_raw_fd(),
    });
    let start = Instant::now();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for (i, &runner) in runners.iter().enumerate() {
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu_thread(&s, i, runner));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared
                    .running
                    .fetch_sub(runners.len() - i, Ordering::SeqCst);
                shared.end(Outcome::Error(host_interface::vmm::VmmError::Host {
                    what: "starting a vCPU thread",
                    errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
                }));
                break;
            }
        }
    }
    supervise(&shared, wake_r.as_raw_fd());
    let stopped = stop(&shared, &handles, &runners, wake_r.as_raw_fd());
    let elapsed = start.elapsed();
    if !stopped {
        let stuck: Vec<String> = handles
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_finished())
            .map(|(i, _)| i.to_string())
            .collect();
        shared.lock().host_log_stuck(&stuck);
        return None;
    }
    for h in handles {
        let _ = h.join();
    }
    WAKE_FD.store(-1, Ordering::SeqCst);
    let outcome = shared
        .outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or(Outcome::Stopped { signal: 0 });
    let Ok(shared) = Arc::try_unwrap(shared) else {
        return None;
    };
    let State { mut vmm, mut host } = shared
        .state
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    vmm.set_run_time(elapsed.as_nanos() as u64);
    Some(vmm.finish(outcome, &mut host).0)
}

impl State {
    fn host_log_stuck(&mut self, stuck: &[String]) {
        use host_interface::vmm::VmmHost;
        self.host.log(format_args!(
            "vmm: error: vCPU thread(s) {} did not leave KVM_RUN within {} s; exiting (the driver \
             tears the VM down when its files close)",
            stuck.join(", "),
            STOP_TIMEOUT.as_secs()
        ));
    }
}

/// The main thread's loop until the run ends: console input, signals.
fn supervise(shared: &Shared, wake_r: RawFd) {
    let mut stdin_open = true;
    let mut buf = [0u8; 1024];
    while !shared.done.load(Ordering::SeqCst) {
        let room = shared.lock().host.input_room().min(buf.len());
        let mut fds = [
            libc::pollfd {
                fd: wake_r,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if stdin_open && room > 0 { 2 } else { 1 };
        wait(&mut fds[..n], TICK_MS);
        drain(wake_r);
        if let Some(signal) = take_stop_signal() {
            shared.end(Outcome::Stopped { signal });
            break;
        }
        if n == 2 && fds[1].revents != 0 {
            // SAFETY: reads at most `room` bytes into a live buffer.
            let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), room) };
            match got {
                g if g > 0 => shared.lock().host.push_input(&buf[..g as usize]),
                -1 if matches!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN)
                ) => {}
                // End of input, or an input we cannot read: no more input.
                _ => stdin_open = false,
            }
        }
        let mut guard = shared.lock();
        let State { vmm, host } = &mut *guard;
        if let Err(e) = vmm.poll_console(host) {
            drop(guard);
            shared.end(Outcome::Error(e));
        }
    }
}

/// Stops every vCPU thread; whether they all came back in time.
fn stop(
    shared: &Shared,
    handles: &[JoinHandle<()>],
    runners: &[VcpuRunner],
    wake_r: RawFd,
) -> bool {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        for (h, r) in handles.iter().zip(runners) {
            if !h.is_finished() {
                r.request_exit();
                // SAFETY: the thread is not joined yet, so its pthread_t
                // is valid; the kick's handler does nothing.
                unsafe { libc::pthread_kill(h.as_pthread_t() as _, KICK_SIGNAL) };
            }
        }
        if shared.running.load(Ordering::SeqCst) == 0 && handles.iter().all(JoinHandle::is_finished)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let mut fds = [libc::pollfd {
            fd: wake_r,
            events: libc::POLLIN,
            revents: 0,
        }];
        wait(&mut fds, 50);
        drain(wake_r);
    }
}
