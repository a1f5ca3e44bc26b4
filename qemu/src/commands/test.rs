//! `cargo qemu test`: the tests that boot el2 (and a host) under QEMU.
//!
//! Pass or fail comes from QEMU's exit status (set by el2: the test host's
//! SYSTEM_OFF status, or el2's own error statuses), plus strings the
//! console must show; for runs of the test host its closing
//! `testhost: N passed, M failed, K skipped` line is parsed and checked
//! too (so a test host that silently ran nothing cannot pass). Runs with
//! the test guest (the test host as its VMM) are judged on the VMM's
//! `vmm: guest reported P passed, F failed` line instead; runs of the
//! pKVM Linux guest (`cargo qemu guest-kernel`) on its init's `GUEST-*`
//! lines, el2's MMIO guard line, and the VMM's outcome, conversions and
//! teardown lines.
//!
//! The Linux-guest tests need the guest kernel: it is built (or found in
//! the cache) before the first of them, and the time that took is shown.
//! If it cannot be built on this machine (its "unavailable" error: no
//! network to the archive, tools missing and not root...), those tests
//! print `SKIPPED: <why>` and count as skipped; any other failure to
//! build it fails them. Every test's result line shows how long it took.
//!
//! The Linux VMM test boots the VMM boot + vendor boot pair (`cargo qemu
//! vmm-images`), built (or found in the caches) before it runs: the Linux
//! host finds its payloads in the vendor ramdisk, loads the host driver,
//! runs its smoke test and `pkvm-vmm` with the test guest and the pKVM
//! Linux guest, and unloads the driver; it is judged on its init's
//! `VMM-*` lines, the test guest's report and the guests' own lines. When a part the image cannot do without (the host driver)
//! cannot be built here, the test is skipped; when only the Linux guest
//! cannot, the image is made without it, its init says so
//! (`VMM-LINUX-GUEST-SKIPPED`) and the test's result line gives the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host_interface::vmm::stats::{CONVERSIONS_PREFIX, parse_conversions};

use crate::commands::run::describe_exit;
use crate::dtb;
use crate::failure::{EXIT_UNAVAILABLE, Failure};
use crate::linux::LinuxImages;
use crate::linux::guest_kernel::{self, GUEST_CMDLINE, GuestKernel as BuiltGuest};
use crate::linux::vmm_images::{self, VmmImages};
use crate::process::{self, Expect};
use crate::qemu::{self, Boot, Guest, Host, Machine};
use crate::workspace::{self, Images};

/// Which el2 image QEMU boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The ELF: device tree at the start of RAM, `x0` = 0.
    Elf,
    /// The raw Image (`el2.bin`): QEMU's Image loader, `x0` = device tree.
    Raw,
}

/// What the test host's summary line must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Exactly this many failed checks.
    pub failed: u32,
    /// At least this many passed checks.
    pub min_passed: u32,
    /// Exactly this many skipped checks.
    pub skipped: u32,
}

/// One QEMU test: boot el2, then judge QEMU's exit status and the console.
#[derive(Debug, Clone)]
pub struct QemuTest {
    /// Name shown in the results.
    pub name: &'static str,
    /// The machine to boot on.
    pub machine: fn() -> Machine,
    /// The el2 image.
    pub kernel: Kernel,
    /// The host el2 boots.
    pub host: TestHost,
    /// The kernel command line (`-append`).
    pub append: Option<&'static str>,
    /// A device tree of the test's own instead of QEMU's (`-dtb`).
    pub dtb: Option<fn() -> Vec<u8>>,
    /// QEMU is killed, and the test fails, after this long.
    pub timeout: Duration,
    /// Expected exit status of QEMU.
    pub exit_code: i32,
    /// Strings the console output must contain.
    pub output: &'static [&'static str],
    /// Strings it must not contain.
    pub absent: &'static [&'static str],
    /// The test host's summary, when it runs its own suite.
    pub summary: Option<Expected>,
    /// A guest the test host runs as its VMM (with [`TestHost::Builtin`]);
    /// the test host then reports the guest's results instead of running
    /// its suite.
    pub guest: Option<TestGuest>,
    /// What to type on the console, and when (QEMU's stdin is a pipe for
    /// it; empty: stdin is closed).
    pub input: &'static [Expect<'static>],
}

/// The guest of a QEMU test.
#[derive(Debug, Clone, Copy)]
pub struct TestGuest {
    /// The guest's kernel.
    pub kernel: GuestKernel,
    /// The guest's kernel command line.
    pub append: Option<&'static str>,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// vCPUs.
    pub smp: u32,
    /// Back guest memory with 4 KiB pages only.
    pub small_pages: bool,
    /// What the VMM's `vmm: guest reported P passed, F failed` line must
    /// say; `None` for a guest that does not report (Linux).
    pub report: Option<GuestExpected>,
}

/// A test guest's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKernel {
    /// The built `testguest.bin`.
    Testguest,
    /// A raw arm64 Image file.
    #[allow(
        dead_code,
        reason = "the guest tests run the test guest or the pKVM Linux guest today; tests of \
                  other guest Images name their file here"
    )]
    File(&'static str),
    /// The pKVM Linux guest kernel and its initramfs (`cargo qemu
    /// guest-kernel`, [`guest_kernel::ensure`]).
    Linux,
}

/// What the VMM's report of the guest's checks must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExpected {
    /// Exactly this many failed checks.
    pub failed: u32,
    /// At least this many passed checks.
    pub min_passed: u32,
}

/// The host a test boots.
#[derive(Debug, Clone, Copy)]
pub enum TestHost {
    /// None: el2 must report it.
    None,
    /// The built-in test host (run in place, no descriptor).
    Builtin,
    /// A Linux host built by `cargo qemu linux-images`.
    Linux(LinuxHost),
    /// The VMM boot + vendor boot pair built by `cargo qemu vmm-images`:
    /// the Linux host runs the host driver's smoke test and `pkvm-vmm`
    /// with its guests, all from the vendor ramdisk.
    Vmm,
    /// A boot image (and vendor boot image) the test makes itself.
    Made(fn() -> MadeImages),
}

/// A boot image and an optional vendor boot image made by a test.
pub type MadeImages = (Vec<u8>, Option<Vec<u8>>);

/// Which `linux-images` output a Linux test boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxHost {
    /// Header v2 with the DTB.
    BootV2,
    /// Header v4 alone (QEMU's DTB).
    BootV4,
    /// Header v4 + vendor boot v4.
    BootV4Vendor,
    /// The raw kernel Image with the initramfs (`--initrd`).
    RawInitrd,
}

const TIMEOUT: Duration = Duration::from_secs(20);
/// A Linux boot takes about 2 s under TCG; leave room for a loaded CI
/// machine.
const LINUX_TIMEOUT: Duration = Duration::from_secs(60);

/// What every Linux host run must show: el2 entered the host, CPU 1 came
/// up through el2's CPU_ON, the kernel saw every CPU at EL1, init ran its
/// checks, both hypervisor ranges were probed from user space through
/// /dev/mem and each read was refused (el2 injected an abort, the reader
/// got a signal), the kernel survived and powered off through el2.
pub const LINUX_OUTPUT: &[&str] = &[
    "el2[0]: entering the host at EL1",
    "el2[1]: CPU 1 up at EL2",
    "CPU: All CPU(s) started at EL1",
    "HOST-USERSPACE-OK",
    "HOST-EL1-OK",
    "HOST-CPUS: 2 online",
    "HOST-PROBE-REFUSED: 0x40200000",
    "HOST-PROBE-REFUSED: 0x7e000000",
    "hypervisor memory): injecting an abort",
    "HOST-ALIVE",
    "reboot: Power down",
    "host requested SYSTEM_OFF",
];

/// What no Linux host run may show.
pub const LINUX_ABSENT: &[&str] = &[
    "HOST-PROBE-NOT-REFUSED",
    "HOST-PROBE-SKIPPED",
    "HOST-CHECK-FAILED",
    "Kernel panic",
];

/// Checks the full suite has: fewer passing means checks went missing.
const FULL_SUITE: u32 = 60;

/// The Linux VMM end to end: 12 s measured under TCG on 2 host cores
/// (up to 22 s on a loaded machine): host boot 2 s, smoke test 2.5 s (its
/// conversion figures included), test guest on 2 vCPUs 2.2–4.4 s, Linux
/// guest 3–7 s, init's checks and the power-off; the rest is room for a
/// loaded CI machine.
const VMM_TIMEOUT: Duration = Duration::from_secs(120);

/// What every run of the VMM image pair must show: el2 booted the boot
/// image's Linux with the vendor boot image (its DTB), init (the boot
/// ramdisk's) found its payloads in the vendor ramdisk, loaded the driver
/// (el2 answered its Version call), the smoke test passed, the test guest
/// ran in pkvm-vmm and its VM was torn down with every page back, the
/// driver unloaded with no page left, the kernel log stayed clean, and
/// the host powered off through el2.
pub const VMM_OUTPUT: &[&str] = &[
    "el2[0]: entering the host at EL1",
    "Android boot image v4 at ",
    " with a vendor boot image",
    "bytes (vendor boot)",
    "VMM-INIT: init (pid 1) runs on Linux",
    "image vmm-boot+vmm-vendor_boot",
    vmm_images::VENDOR_RAMDISK_PRESENT,
    "VMM-INSMOD-OK: pkvm_rs: el2 host ABI 2.",
    "smoke: ",
    SMOKE_FIGURE,
    "VMM-SMOKE-OK",
    "vmm: guest powered off",
    "VMM-TEARDOWN-OK: testguest: ",
    "VMM-TESTGUEST-OK",
    "VMM-RMMOD-OK",
    "VMM-KERNEL-LOG-CLEAN",
    "VMM-ALL-OK",
    "host requested SYSTEM_OFF",
];

/// The smoke test's conversion figure for 512 guest-owned pages, which the
/// driver README quotes (printed once every timed conversion succeeded).
pub const SMOKE_FIGURE: &str =
    "smoke: figure: KVM_SET_MEMORY_ATTRIBUTES2, 512 guest-owned pages (2 MiB)";

/// What no run of the VMM boot image may show: a failed step, an el2
/// warning or fatal error, a failed smoke check, a panic, a VMM error.
pub const VMM_ABSENT: &[&str] = &[
    vmm_images::FAILED,
    " WARN: ",
    "FATAL",
    "SMOKE-FAIL:",
    "Kernel panic",
    "vmm: error",
];

/// What the run shows on top of [`VMM_OUTPUT`] when the image has the
/// pKVM Linux guest: it reached its init and powered off, and its VM was
/// torn down too.
pub const VMM_LINUX_GUEST_OUTPUT: &[&str] = &[
    "GUEST-USERSPACE-OK",
    "GUEST-POWEROFF",
    "VMM-TEARDOWN-OK: Linux guest: ",
    "VMM-LINUX-GUEST-OK",
];

/// An SMP stress run (`--append testhost.stress`): about 3 s of stress on
/// every CPU, the focused races and the CPU_OFF/CPU_ON race, 5 to 10 s in
/// all under TCG on 2 host cores; the rest is room for a loaded machine.
const STRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The stress mode's checks with 2 CPUs (one per CPU, 18 others); 4 CPUs
/// add two.
const STRESS_CHECKS_2: u32 = 20;

/// What every stress run must show: the seed, each CPU's counts and the
/// totals, every CPU back in time, the VMs torn down, the invariant
/// checker clean during and after, the host's memory back as before, the
/// focused races and the CPU_OFF/CPU_ON race.
pub const STRESS_OUTPUT: &[&str] = &[
    "testhost: stress: seed ",
    "testhost: ok   stress: every CPU started (CPU_ON) and reached the test host",
    "testhost: ok   stress: every CPU reported back within the timeout",
    "testhost: stress cpu 0: ",
    "testhost: stress cpu 1: ",
    "testhost: ok   stress: cpu 0: every result one the ABI allows",
    "testhost: ok   stress: cpu 1: every result one the ABI allows",
    "testhost: stress calls: ",
    "testhost: ok   stress: the calls collided",
    "testhost: ok   stress: a guest ran while the other CPUs hammered its VM",
    "testhost: ok   stress: CheckInvariants during the stress -> 0 violations",
    "testhost: ok   stress: every VM torn down and its pages reclaimed",
    "testhost: ok   focused race: a conversion completed while another CPU runs the vCPU",
    "testhost: ok   focused race: a stage-2 fault racing a mapping of the page",
    "testhost: ok   focused race: once TeardownStart succeeded the VM does not run",
    "testhost: ok   stress: every pool and program page host-owned again",
    "testhost: ok   stress: CheckInvariants after the stress -> 0 violations",
    "testhost: ok   stress: HostStats host-owned pages and host stage-2 leaves as before",
    "testhost: race: 50 rounds",
    "testhost: ok   CPU_OFF/CPU_ON race: 50 rounds",
    "testhost: ok   CPU_OFF/CPU_ON race: each round the target came up at its entry",
    "testhost: ok   CPU_OFF/CPU_ON race: AFFINITY_INFO agreed",
    "testhost: ok   CPU_OFF/CPU_ON race: every target off at the end",
    "host requested SYSTEM_OFF",
];

/// What no stress run may show: an el2 warning, error or FATAL line, a
/// panic (el2's or the test host's), a result the ABI does not allow.
pub const STRESS_ABSENT: &[&str] = &["FATAL", "WARN", "ERROR", "panic", "UNEXPECTED"];

/// What a 4-CPU stress run shows on top of [`STRESS_OUTPUT`].
const STRESS_OUTPUT_4: &[&str] = &[
    "4 CPU(s)",
    "testhost: stress cpu 2: ",
    "testhost: stress cpu 3: ",
    "testhost: ok   stress: cpu 2: every result one the ABI allows",
    "testhost: ok   stress: cpu 3: every result one the ABI allows",
    "testhost: race: 50 rounds on 3 CPU(s)",
];

/// Whether `test` runs the stress mode.
fn runs_stress(test: &QemuTest) -> bool {
    test.append.is_some_and(|a| {
        a.split_whitespace()
            .any(|w| w.starts_with("testhost.stress"))
    })
}

/// A guest run: the test host boots, builds the VM, runs the guest's suite
/// and tears the VM down, all under TCG; a minute leaves room.
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks the test guest's full suite has, at least.
const GUEST_SUITE: u32 = 40;

/// Checks the test guest passes, at least, on 2 vCPUs in pkvm-vmm: every
/// check of its suite runs there (94 measured; 87 with 1 vCPU).
const VMM_GUEST_SUITE: u32 = 90;

/// What every guest run must show: the guest started, powered off
/// through the VMM, and the VMM checked after tearing the VM down that
/// every page came back to the host.
pub const GUEST_OUTPUT: &[&str] = &[
    "guest: testguest: started",
    "vmm: guest powered off",
    "vmm: teardown verified",
];

/// What no guest run may show.
pub const GUEST_ABSENT: &[&str] = &[
    "TEARDOWN-CHECK-FAILED",
    "vmm: error",
    "FATAL",
    "testguest: unexpected exception",
];

/// The VMM's report line, before `<P> passed, <F> failed`.
pub const GUEST_REPORT: &str = "vmm: guest reported ";

/// A Linux guest run: el2 and the test host boot, the VMM loads the
/// kernel and initramfs, the guest boots to its init under TCG (about 3 s
/// here; about 10 s with two vCPUs on a loaded machine) and powers off.
const LINUX_GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Guest RAM of the Linux guest tests.
const LINUX_GUEST_MEM: u64 = 256 << 20;

/// The Linux guest's command line when it powers off by itself.
const LINUX_GUEST_APPEND: &str = GUEST_CMDLINE;

/// The Linux guest's command line with the interactive shell.
const LINUX_SHELL_APPEND: &str = "console=ttyAMA0 panic=-1 guest.shell";

/// What every Linux guest run must show: its init ran, found the
/// hypervisor's services (the KVM UID over SMCCC) and MMIO_GUARD among
/// them, el2 saw the guest turn the MMIO guard on, the guest powered off
/// through the VMM, and the VMM verified the teardown.
pub const LINUX_GUEST_OUTPUT: &[&str] = &[
    "GUEST-USERSPACE-OK",
    "GUEST-PKVM: ",
    "GUEST-MMIO-GUARD: advertised",
    "MMIO guard on",
    "vmm: guest powered off",
    "vmm: teardown verified",
];

/// Words the `GUEST-PKVM: ` line itself must have.
const GUEST_PKVM_DETECTED: &str = "hypervisor services detected";

/// What no Linux guest run may show.
pub const LINUX_GUEST_ABSENT: &[&str] = &[
    "Kernel panic",
    "GUEST-PKVM-MISSING",
    "vmm: error",
    "TEARDOWN-CHECK-FAILED",
    "FATAL",
];

/// The pKVM Linux guest with `smp` vCPUs on 256 MiB, powering off after
/// its checks.
const fn linux_guest(smp: u32) -> TestGuest {
    TestGuest {
        kernel: GuestKernel::Linux,
        append: Some(LINUX_GUEST_APPEND),
        mem: LINUX_GUEST_MEM,
        smp,
        small_pages: false,
        report: None,
    }
}

/// What the console test types: a command once the shell's prompt shows,
/// then `exit` once its output (not the echo of the command) is back.
const SHELL_INPUT: &[Expect<'static>] = &[
    Expect {
        after: "pkvm-guest# ",
        send: "echo hello-from-shell-$((6*7))\n",
    },
    Expect {
        after: "hello-from-shell-42",
        send: "exit\n",
    },
];

/// The test guest with `smp` vCPUs on 128 MiB, the whole suite passing.
const fn testguest(smp: u32) -> TestGuest {
    TestGuest {
        kernel: GuestKernel::Testguest,
        append: None,
        mem: crate::args::DEFAULT_GUEST_MEM,
        smp,
        small_pages: false,
        report: Some(GuestExpected {
            failed: 0,
            min_passed: GUEST_SUITE,
        }),
    }
}

fn machine_smp1() -> Machine {
    Machine {
        smp: 1,
        ..Machine::default()
    }
}

fn machine_512m() -> Machine {
    Machine {
        mem: "512M".to_owned(),
        ..Machine::default()
    }
}

fn machine_smp4() -> Machine {
    Machine {
        smp: 4,
        ..Machine::default()
    }
}

fn machine_virtio_rng() -> Machine {
    Machine {
        devices: vec!["virtio-rng-pci".to_owned()],
        ..Machine::default()
    }
}

fn machine_max() -> Machine {
    Machine {
        cpu: "max".to_owned(),
        smp: 4,
        ..Machine::default()
    }
}

/// Every QEMU test.
pub const TESTS: &[QemuTest] = &[
    QemuTest {
        // The README's `cargo qemu run`: el2 boots, enters the test host at
        // EL1 under stage-2, every check passes, the host powers off
        // through el2 (PSCI SYSTEM_OFF forwarded, exit 0).
        name: "testhost_all_checks_pass",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 0,
        output: &[
            "el2[0]: entering the host at EL1",
            "testhost: started at EL1",
            "el2[1]: CPU 1 up at EL2",
            "host requested SYSTEM_OFF",
        ],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: FULL_SUITE,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // Failures are detected: `testhost.fail` adds one failing check,
        // and the status travels test host -> SYSTEM_OFF x1 -> el2 ->
        // semihosting -> QEMU's exit status 1.
        name: "failing_check_is_detected",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: Some("testhost.fail"),
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 1,
        output: &[
            "testhost: FAIL deliberate failure",
            "host requested SYSTEM_OFF with exit status 1",
        ],
        absent: &[],
        summary: Some(Expected {
            failed: 1,
            min_passed: FULL_SUITE,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // `el2.log=warn`: el2 prints no info line (not even its own boot
        // option), the test host's suite runs as usual.
        name: "el2_log_warn_is_quiet",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: Some("el2.log=warn"),
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 0,
        output: &["testhost: started at EL1"],
        absent: &[
            "el2[0]: entering the host at EL1",
            "el2[0]: boot option",
            "el2[1]: CPU 1 up at EL2",
            "el2.log",
        ],
        summary: Some(Expected {
            failed: 0,
            min_passed: FULL_SUITE,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // One CPU: everything but the secondary-CPU checks; with the
        // host's RAM mapped by 4 KiB pages (el2's `el2.host_map=pages`),
        // which the whole suite must not notice.
        name: "single_cpu_boots",
        machine: machine_smp1,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: Some("el2.host_map=pages"),
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 0,
        output: &[
            "1 CPU(s), PSCI method smc",
            "boot option el2.host_map=pages",
            "RAM mapped with 4 KiB pages only",
        ],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: 45,
            skipped: 3,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // el2 as a raw arm64 Image (QEMU's Image loader puts the device
        // tree at 0x4800_0000 and passes it in x0), on 512 MiB of RAM.
        name: "raw_image_boot_512m",
        machine: machine_512m,
        kernel: Kernel::Raw,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 0,
        output: &["device tree at 0x48000000", "RAM 0x40000000..0x60000000"],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: FULL_SUITE,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // `-cpu max` (pointer authentication, SVE, SME, PAN, SSBS: the
        // feature-dependent EL2 setup) with 4 CPUs.
        name: "cpu_max_4_cpus",
        machine: machine_max,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 0,
        output: &["4 CPU(s)"],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: FULL_SUITE,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // SMP stress (2 CPUs): both CPUs hammer el2 with colliding host
        // calls on the same pages and VMs for about 3 s while one at a
        // time runs a guest; every answer one the ABI allows, no deadlock,
        // everything reclaimed, invariants and HostStats as before; then
        // the focused races and 50 rounds of CPU_OFF racing CPU_ON.
        name: "smp_stress_2_cpus",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: Some("testhost.stress"),
        dtb: None,
        timeout: STRESS_TIMEOUT,
        exit_code: 0,
        output: &["2 CPU(s)", "testhost: race: 50 rounds on 1 CPU(s)"],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: STRESS_CHECKS_2,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // The same on 4 CPUs (`-smp 4`, 2 host cores: el2's locks under
        // contention, the race on three secondaries in turn).
        name: "smp_stress_4_cpus",
        machine: machine_smp4,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: Some("testhost.stress"),
        dtb: None,
        timeout: STRESS_TIMEOUT,
        exit_code: 0,
        output: STRESS_OUTPUT_4,
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: STRESS_CHECKS_2 + 2,
            skipped: 0,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // No host image: a clear boot error and el2's status 5, not a hang.
        name: "missing_host_image_is_reported",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::None,
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 5,
        output: &["boot failed: no arm64 Image"],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A device tree of our own, which QEMU edits with libfdt (its
        // /memory node becomes FDT_NOP tokens): el2 copes, and the test
        // host runs on a machine without a GIC in the tree.
        name: "own_device_tree_with_nops_boots",
        machine: machine_smp1,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: Some(minimal_tree),
        timeout: TIMEOUT,
        exit_code: 0,
        output: &["no GIC in the device tree", "is well formed"],
        absent: &[],
        summary: Some(Expected {
            failed: 0,
            min_passed: 45,
            // 3 need a second CPU or a GIC, the ITS and LPI groups a GICv3.
            skipped: 5,
        }),
        guest: None,
        input: &[],
    },
    QemuTest {
        // A tree nested deeper than el2 accepts (the reader would index
        // past its 64-entry stack or recurse without bound): a clear error
        // on the UART and status 5, no panic, no hang.
        name: "malformed_device_tree_is_reported",
        machine: machine_smp1,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: Some(too_deep_tree),
        timeout: TIMEOUT,
        exit_code: 5,
        output: &[
            "boot failed: malformed device tree",
            "nodes nested too deep",
        ],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // Debian's kernel from a header v2 boot image (its DTB: QEMU's
        // own, dumped by linux-images) under el2 with 2 CPUs.
        name: "linux_boot_v2",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::BootV2),
        append: None,
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 0,
        output: &[
            "Android boot image v2",
            "(boot image)",
            "HOST-USERSPACE-OK: init (pid 1) runs on Linux",
            "image boot-v2",
            "HOST-VENDOR-RAMDISK: absent",
        ],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // The same from a header v4 boot image: no DTB in the image, so
        // QEMU's tree is the base.
        name: "linux_boot_v4",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::BootV4),
        append: None,
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 0,
        output: &[
            "Android boot image v4",
            "DTB none (QEMU's)",
            "image boot-v4",
            "HOST-VENDOR-RAMDISK: absent",
        ],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A v4 boot image with a vendor boot v4 image: vendor ramdisk
        // (busybox) then boot ramdisk (/init), vendor command line then
        // boot command line, the vendor boot image's DTB. The runner loads
        // the boot image one 4 KiB header page below 0x44200000, so its
        // kernel (text_offset 0) lies on a 2 MiB boundary and el2 boots
        // it in place (`qemu::android_load_addr`).
        name: "linux_boot_v4_vendor_boot",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::BootV4Vendor),
        append: None,
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 0,
        output: &[
            "Android boot image v4 at 0x441ff000..",
            "with a vendor boot image",
            "(vendor boot)",
            "HOST-CMDLINE: console=ttyAMA0 panic=-1 pkvm_vendor_cmdline=1 \
             pkvm_image=boot-v4+vendor_boot",
            "image boot-v4+vendor_boot",
            "HOST-VENDOR-RAMDISK: present",
        ],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // The raw kernel Image with the initramfs as --initrd, command line
        // from -append, less el2's own words (`el2.host_map=pages`:
        // Linux's RAM in 4 KiB stage-2 pages; an unknown one, dropped with
        // a warning).
        name: "linux_raw_image_initrd",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::RawInitrd),
        append: Some("console=ttyAMA0 el2.host_map=pages panic=-1 el2.bogus=1 pkvm_image=raw"),
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 0,
        output: &[
            "host: raw arm64 Image at 0x44000000",
            "image raw",
            "RAM mapped with 4 KiB pages only",
            "boot option el2.bogus=1 not understood",
            "Kernel command line: console=ttyAMA0 panic=-1 pkvm_image=raw",
        ],
        absent: &["el2.host_map=pages panic", "el2.bogus=1 pkvm_image"],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A PCI device using MSIs (virtio-rng-pci; init loads the kernel
        // package's virtio modules and reads /dev/hwrng): Linux programs
        // the ITS el2 mediates (tables donated or pinned, every command
        // checked) and the device's interrupts arrive through it.
        name: "linux_msis_through_the_its",
        machine: machine_virtio_rng,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::BootV2),
        append: None,
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 0,
        output: &[
            "GICv3 ITS at 0x8080000: control frame mediated by el2",
            "ITS@0x0000000008080000: allocated",
            "HOST-MSI: ",
        ],
        absent: &["HOST-MSI-FAILED", "HOST-MSI-SKIPPED", " WARN: "],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A host that resets (Linux without an init panics, and panic=-1
        // resets) must not end the run with status 0, as QEMU's
        // -no-reboot alone would: el2 exits with 12 and says why.
        name: "linux_reset_is_not_success",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Linux(LinuxHost::RawInitrd),
        append: Some("console=ttyAMA0 panic=-1 rdinit=/nonexistent init=/nonexistent"),
        dtb: None,
        timeout: LINUX_TIMEOUT,
        exit_code: 12,
        output: &["Kernel panic", "host requested a system reset"],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A boot image whose kernel_size runs past its end: refused with
        // the field named, el2's status 5, no hang.
        name: "truncated_boot_image_is_refused",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Made(truncated_boot_image),
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 5,
        output: &["boot failed: boot image: kernel_size runs past the end of the image"],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // A vendor boot image with a wrong header_size.
        name: "bad_vendor_boot_is_refused",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Made(bad_vendor_boot),
        append: None,
        dtb: None,
        timeout: TIMEOUT,
        exit_code: 5,
        output: &["boot failed: boot image: vendor header_size invalid"],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
    QemuTest {
        // `cargo qemu run --guest testguest`: the test host runs the test
        // guest as a protected VM with one vCPU; the guest's checks pass,
        // it powers off, the VMM tears the VM down and verifies it.
        name: "guest_suite_1vcpu",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: GUEST_TIMEOUT,
        exit_code: 0,
        output: &[],
        absent: &[],
        summary: None,
        guest: Some(testguest(1)),
        input: &[],
    },
    QemuTest {
        // The same with two vCPUs (`--guest-smp 2`).
        name: "guest_suite_2vcpus",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: GUEST_TIMEOUT,
        exit_code: 0,
        output: &[],
        absent: &[],
        summary: None,
        guest: Some(testguest(2)),
        input: &[],
    },
    QemuTest {
        // Guest memory backed by 4 KiB pages only (`--guest-small-pages`).
        name: "guest_small_pages",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: GUEST_TIMEOUT,
        exit_code: 0,
        output: &[],
        absent: &[],
        summary: None,
        guest: Some(TestGuest {
            small_pages: true,
            ..testguest(1)
        }),
        input: &[],
    },
    QemuTest {
        // `--guest-append testguest.fail`: one failing guest check reaches
        // QEMU's exit status (guest -> VMM -> SYSTEM_OFF x1 = 8 -> el2).
        name: "guest_failing_check_is_detected",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: GUEST_TIMEOUT,
        exit_code: 8,
        output: &[],
        absent: &[],
        summary: None,
        guest: Some(TestGuest {
            append: Some("testguest.fail"),
            report: Some(GuestExpected {
                failed: 1,
                min_passed: GUEST_SUITE,
            }),
            ..testguest(1)
        }),
        input: &[],
    },
    QemuTest {
        // An unmodified upstream Linux 6.12 pKVM guest (`cargo qemu
        // guest-kernel`) boots to user space as a protected guest in the
        // test host's VMM, one vCPU: its init sees the KVM hypervisor
        // services and MMIO_GUARD, the guest shares memory with MEM_SHARE
        // (conversions to shared, none refused), powers off, and the VMM
        // verifies the teardown.
        name: "linux_guest_1vcpu",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: LINUX_GUEST_TIMEOUT,
        exit_code: 0,
        output: &["GUEST-CPUS: 1 online"],
        absent: &[],
        summary: None,
        guest: Some(linux_guest(1)),
        input: &[],
    },
    QemuTest {
        // The same with two vCPUs: the second comes up through PSCI
        // CPU_ON (the VMM's answer).
        name: "linux_guest_2vcpus",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: LINUX_GUEST_TIMEOUT,
        exit_code: 0,
        output: &["GUEST-CPUS: 2 online"],
        absent: &[],
        summary: None,
        guest: Some(linux_guest(2)),
        input: &[],
    },
    QemuTest {
        // The guest's console takes input: with `guest.shell` its init
        // starts a shell; a command typed on QEMU's stdin goes through the
        // test host's UART, the VMM and the guest's emulated PL011 (receive
        // FIFO, interrupt on SPI 33) to the shell, and its output comes
        // back; `exit` powers the guest off.
        name: "linux_guest_console",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Builtin,
        append: None,
        dtb: None,
        timeout: LINUX_GUEST_TIMEOUT,
        exit_code: 0,
        output: &[
            "GUEST-CPUS: 1 online",
            "GUEST-SHELL: ",
            "hello-from-shell-42",
            "GUEST-SHELL-EXIT: the shell exited with status 0",
        ],
        absent: &[],
        summary: None,
        guest: Some(TestGuest {
            append: Some(LINUX_SHELL_APPEND),
            ..linux_guest(1)
        }),
        input: SHELL_INPUT,
    },
    QemuTest {
        // `cargo qemu vmm-images` end to end: Debian's kernel (boot
        // image, /init alone) with the vendor boot image (the vendor
        // ramdisk with every payload, the DTB) as el2's host loads
        // pkvm_rs.ko, passes the driver's smoke test, runs the test guest
        // (2 vCPUs) and the pKVM Linux guest in pkvm-vmm, each VM torn
        // down with every page back, and unloads the driver (its refcount
        // 0, no page left).
        name: "linux_host_vmm_end_to_end",
        machine: Machine::default,
        kernel: Kernel::Elf,
        host: TestHost::Vmm,
        append: None,
        dtb: None,
        timeout: VMM_TIMEOUT,
        exit_code: 0,
        output: &[],
        absent: &[],
        summary: None,
        guest: None,
        input: &[],
    },
];

/// A small v4 boot image with a fake kernel (it is never entered).
fn small_v4() -> Vec<u8> {
    let kernel = el2::bootimg::pack::arm64_image(&[0; 4096], 1 << 20);
    el2::bootimg::pack::boot_v3_v4(4, &kernel, &[0x11; 5000], "x")
}

fn truncated_boot_image() -> MadeImages {
    let mut img = small_v4();
    img[8..12].copy_from_slice(&0x0100_0000u32.to_le_bytes());
    (img, None)
}

fn bad_vendor_boot() -> MadeImages {
    let mut vendor = el2::bootimg::pack::vendor_boot(4, &[0x22; 100], &[], "", b"");
    vendor[2096..2100].copy_from_slice(&2000u32.to_le_bytes());
    (small_v4(), Some(vendor))
}

fn minimal_tree() -> Vec<u8> {
    dtb::virt_tree(3)
}

fn too_deep_tree() -> Vec<u8> {
    dtb::virt_tree(70)
}

/// Counts of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that could not run on this machine (the Linux guest kernel
    /// cannot be built here).
    pub skipped: usize,
}

/// Why the tests that need something built (the Linux guest kernel, the
/// VMM boot image) do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotBuilt {
    /// It cannot be built on this machine: they are skipped.
    Skip(String),
    /// Building it failed: they fail.
    Fail(String),
}

/// Whether `test` runs the pKVM Linux guest.
fn runs_linux_guest(test: &QemuTest) -> bool {
    test.guest.is_some_and(|g| g.kernel == GuestKernel::Linux)
}

/// What to make of the guest kernel's build for the tests that need it:
/// the kernel, a reason to skip them ("cannot be built here"), or a
/// failure.
fn guest_kernel_verdict(built: Result<BuiltGuest, Failure>) -> Result<BuiltGuest, NotBuilt> {
    build_verdict(built, "the pKVM guest kernel")
}

/// What to make of the build of `what` for the tests that need it: the
/// result, a reason to skip them (its "unavailable" error: it cannot be
/// built here), or a failure.
fn build_verdict<T>(built: Result<T, Failure>, what: &str) -> Result<T, NotBuilt> {
    match built {
        Ok(b) => Ok(b),
        Err(f) if f.code == EXIT_UNAVAILABLE => Err(NotBuilt::Skip(format!(
            "{what} cannot be built here: {}",
            f.message
        ))),
        Err(f) => Err(NotBuilt::Fail(format!(
            "building {what} failed: {}",
            f.message
        ))),
    }
}

/// What a run of the VMM boot image must show about the Linux guest, on
/// top of [`judge`]: with the guest in the image (`skipped` is `None`),
/// [`VMM_LINUX_GUEST_OUTPUT`]; without it, init's
/// `VMM-LINUX-GUEST-SKIPPED` line, and no line claiming the guest ran.
fn judge_vmm_linux_guest(output: &str, skipped: Option<&str>) -> Result<(), String> {
    match skipped {
        None => match VMM_LINUX_GUEST_OUTPUT
            .iter()
            .find(|want| !output.contains(*want))
        {
            Some(missing) => Err(format!("console output lacks {missing:?}")),
            None if output.contains(vmm_images::LINUX_GUEST_SKIPPED) => Err(format!(
                "console output shows {:?} although the image has the Linux guest",
                vmm_images::LINUX_GUEST_SKIPPED
            )),
            None => Ok(()),
        },
        Some(_) if !output.contains(vmm_images::LINUX_GUEST_SKIPPED) => Err(format!(
            "console output lacks {:?} (the image has no Linux guest)",
            vmm_images::LINUX_GUEST_SKIPPED
        )),
        Some(_) if output.contains("VMM-LINUX-GUEST-OK") => Err(
            "console output shows \"VMM-LINUX-GUEST-OK\" from an image without the Linux guest"
                .to_owned(),
        ),
        Some(_) => Ok(()),
    }
}

fn kernel_of<'a>(test: &QemuTest, images: &'a Images) -> Result<&'a Path, String> {
    match test.kernel {
        Kernel::Elf => Ok(&images.el2),
        Kernel::Raw => images
            .el2_raw
            .as_deref()
            .ok_or_else(|| "el2.bin was not made (rust-objcopy missing)".to_owned()),
    }
}

/// Builds el2, the test host and the test guest, makes sure QEMU is there,
/// runs every test in [`TESTS`] and prints one result line per test and a
/// closing `N passed, M failed` line. The Linux images are built (or found in the
/// cache) before the first Linux test.
pub fn run_all() -> Result<Summary, Failure> {
    let qemu = qemu::ensure()?;
    let images = workspace::build_images()?;
    println!("running {} QEMU test(s)", TESTS.len());
    let mut summary = Summary {
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    let mut failures = Vec::new();
    let mut linux: Option<Result<LinuxImages, String>> = None;
    // The guest kernel, or why its tests do not run.
    let mut guest_linux: Option<Result<BuiltGuest, NotBuilt>> = None;
    // The VMM boot image, or why its test does not run.
    let mut vmm: Option<Result<VmmImages, NotBuilt>> = None;
    for test in TESTS {
        let machine = (test.machine)();
        if matches!(test.host, TestHost::Linux(_)) && linux.is_none() {
            println!("--- building the Linux host images (cargo qemu linux-images)");
            linux = Some(crate::linux::ensure().map_err(|f| f.message));
        }
        if runs_linux_guest(test) && guest_linux.is_none() {
            println!("--- building the pKVM guest kernel (cargo qemu guest-kernel)");
            let t = Instant::now();
            let built = guest_kernel_verdict(guest_kernel::ensure());
            println!(
                "--- guest kernel {} in {:.1} s",
                if built.is_ok() {
                    "ready"
                } else {
                    "unavailable"
                },
                t.elapsed().as_secs_f64()
            );
            guest_linux = Some(built);
        }
        if matches!(test.host, TestHost::Vmm) && vmm.is_none() {
            println!("--- building the VMM boot image (cargo qemu vmm-images)");
            let t = Instant::now();
            let built = build_verdict(vmm_images::ensure(&images.testguest), "the VMM boot image");
            println!(
                "--- VMM boot image {} in {:.1} s",
                if built.is_ok() {
                    "ready"
                } else {
                    "unavailable"
                },
                t.elapsed().as_secs_f64()
            );
            vmm = Some(built);
        }
        let not_built = match (runs_linux_guest(test), &guest_linux, &test.host, &vmm) {
            (true, Some(Err(e)), _, _) | (_, _, TestHost::Vmm, Some(Err(e))) => Some(e),
            _ => None,
        };
        match not_built {
            Some(NotBuilt::Skip(why)) => {
                summary.skipped += 1;
                println!("test {} ... SKIPPED: {why}", test.name);
                continue;
            }
            Some(NotBuilt::Fail(why)) => {
                summary.failed += 1;
                println!("test {} ... FAILED: {why}", test.name);
                failures.push(test.name);
                continue;
            }
            None => {}
        }
        let linux_guest = match (runs_linux_guest(test), &guest_linux) {
            (true, Some(Ok(g))) => Some(g),
            _ => None,
        };
        let vmm_image = match (&test.host, &vmm) {
            (TestHost::Vmm, Some(Ok(v))) => Some(v),
            _ => None,
        };
        let started = Instant::now();
        let verdict = kernel_of(test, &images).and_then(|kernel| {
            let dtb_path = match test.dtb {
                Some(make) => Some(write_file(test.name, "dtb", &make())?),
                None => None,
            };
            let made = match test.host {
                TestHost::Made(make) => {
                    let (boot, vendor) = make();
                    let boot = write_file(test.name, "img", &boot)?;
                    let vendor = match vendor {
                        Some(v) => Some(write_file(&format!("{}-vendor", test.name), "img", &v)?),
                        None => None,
                    };
                    Some((boot, vendor))
                }
                _ => None,
            };
            let host = match test.host {
                TestHost::None => Host::None,
                TestHost::Builtin => Host::InPlace(&images.testhost),
                TestHost::Made(_) => {
                    let (boot, vendor) = made.as_ref().ok_or("no image made")?;
                    Host::Android {
                        boot,
                        vendor: vendor.as_deref(),
                    }
                }
                TestHost::Linux(which) => {
                    let l = match &linux {
                        Some(Ok(l)) => l,
                        Some(Err(e)) => {
                            return Err(format!("the Linux host images are unavailable: {e}"));
                        }
                        None => return Err("the Linux host images were not built".to_owned()),
                    };
                    linux_host(l, which)
                }
                TestHost::Vmm => {
                    let v = vmm_image.ok_or("the VMM images were not built")?;
                    Host::Android {
                        boot: &v.boot,
                        vendor: Some(&v.vendor_boot),
                    }
                }
            };
            let cmdline = match test.guest.and_then(|g| g.append) {
                Some(text) => qemu::write_guest_cmdline(&test_file(test.name, "cmdline")?, text)?,
                None => None,
            };
            let guest = test
                .guest
                .as_ref()
                .map(|g| guest_of(g, &images, linux_guest, cmdline.as_deref()))
                .transpose()?;
            let boot = Boot {
                kernel,
                host,
                append: test.append,
                dtb: dtb_path.as_deref(),
                machine: &machine,
                guest,
            };
            let mut cmd = qemu::boot_command(&qemu, &boot)?;
            if !test.input.is_empty() {
                // The console `cargo qemu run --guest` gives.
                cmd.args(qemu::interactive_console_args());
            }
            println!("--- {} ({} s timeout)", test.name, test.timeout.as_secs());
            println!("    {}", process::display(&cmd));
            let timed = process::run_scripted(&mut cmd, test.timeout, &[], true, test.input)
                .map_err(|f| f.message)?;
            judge(test, timed.status.code(), timed.timed_out, &timed.output)
                .and_then(|()| match vmm_image {
                    Some(v) if test.exit_code == 0 => judge_vmm_linux_guest(
                        &timed.output,
                        v.linux_guest.as_ref().err().map(String::as_str),
                    ),
                    _ => Ok(()),
                })
                .map(|()| timed.elapsed)
                .map_err(|why| match test.input.len() {
                    0 => why,
                    n => format!("{why} (typed {} of {n} console inputs)", timed.sent),
                })
        });
        match verdict {
            Ok(elapsed) => {
                summary.passed += 1;
                // A part left out of the VMM image: say so on the result line.
                let left_out = match vmm_image.map(|v| &v.linux_guest) {
                    Some(Err(why)) => format!("; its Linux guest part SKIPPED: {why}"),
                    _ => String::new(),
                };
                println!(
                    "test {} ... ok ({:.2} s{left_out})",
                    test.name,
                    elapsed.as_secs_f64()
                );
            }
            Err(why) => {
                summary.failed += 1;
                println!(
                    "test {} ... FAILED after {:.2} s: {why}",
                    test.name,
                    started.elapsed().as_secs_f64()
                );
                failures.push(test.name);
            }
        }
    }
    if !failures.is_empty() {
        println!("failed: {}", failures.join(", "));
    }
    if summary.skipped == 0 {
        println!("{} passed, {} failed", summary.passed, summary.failed);
    } else {
        println!(
            "{} passed, {} failed, {} skipped",
            summary.passed, summary.failed, summary.skipped
        );
    }
    Ok(summary)
}

/// The [`Host`] of a Linux test.
pub fn linux_host(l: &LinuxImages, which: LinuxHost) -> Host<'_> {
    match which {
        LinuxHost::BootV2 => Host::Android {
            boot: &l.boot_v2,
            vendor: None,
        },
        LinuxHost::BootV4 => Host::Android {
            boot: &l.boot_v4,
            vendor: None,
        },
        LinuxHost::BootV4Vendor => Host::Android {
            boot: &l.boot_v4_pair,
            vendor: Some(&l.vendor_boot),
        },
        LinuxHost::RawInitrd => Host::Raw {
            kernel: &l.kernel,
            initrd: Some(&l.initramfs),
        },
    }
}

/// The [`Guest`] of a guest test: `linux` is the built pKVM guest kernel
/// (needed for [`GuestKernel::Linux`]), `cmdline` the file holding the
/// guest's command line.
pub fn guest_of<'a>(
    g: &TestGuest,
    images: &'a Images,
    linux: Option<&'a BuiltGuest>,
    cmdline: Option<&'a Path>,
) -> Result<Guest<'a>, String> {
    let (kernel, initrd) = match g.kernel {
        GuestKernel::Testguest => (images.testguest.as_path(), None),
        GuestKernel::File(f) => (Path::new(f), None),
        GuestKernel::Linux => {
            let l = linux.ok_or("the pKVM guest kernel was not built")?;
            (l.image.as_path(), Some(l.initramfs.as_path()))
        }
    };
    Ok(Guest {
        kernel,
        initrd,
        cmdline,
        mem: g.mem,
        vcpus: g.smp,
        small_pages: g.small_pages,
    })
}

/// Where a test's file `<name>.<ext>` goes: `target/qemu-tests/` (created),
/// kept after the run for a look at what QEMU was given.
fn test_file(name: &str, ext: &str) -> Result<PathBuf, String> {
    let dir = workspace::root().join("target").join("qemu-tests");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join(format!("{name}.{ext}")))
}

/// Writes a test's file (device tree, boot image) under
/// `target/qemu-tests/`.
fn write_file(name: &str, ext: &str, blob: &[u8]) -> Result<PathBuf, String> {
    let path = test_file(name, ext)?;
    std::fs::write(&path, blob).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The last `testhost: N passed, M failed, K skipped` line of `output`.
pub fn parse_summary(output: &str) -> Option<(u32, u32, u32)> {
    output.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("testhost: ")?;
        let mut nums = rest.split(", ").map(|part| {
            let (n, word) = part.split_once(' ')?;
            Some((n.parse::<u32>().ok()?, word))
        });
        let (p, "passed") = nums.next()?? else {
            return None;
        };
        let (f, "failed") = nums.next()?? else {
            return None;
        };
        let (s, "skipped") = nums.next()?? else {
            return None;
        };
        Some((p, f, s))
    })
}

/// The last `vmm: guest reported <P> passed, <F> failed` line of `output`
/// (anywhere in the line, so a prefix such as `testhost: ` does not
/// matter; anything after `failed` is ignored).
pub fn parse_guest_report(output: &str) -> Option<(u32, u32)> {
    output.lines().rev().find_map(|line| {
        let at = line.find(GUEST_REPORT)? + GUEST_REPORT.len();
        let mut words = line[at..].split_whitespace();
        let passed = words.next()?.parse::<u32>().ok()?;
        if words.next()? != "passed," {
            return None;
        }
        let failed = words.next()?.parse::<u32>().ok()?;
        let word = words.next()?;
        (word == "failed" || word.starts_with("failed,")).then_some((passed, failed))
    })
}

/// Whether a run of `test` that ended with `code` (`None`: killed by a
/// signal) and printed `output` passed; if not, why.
fn judge(test: &QemuTest, code: Option<i32>, timed_out: bool, output: &str) -> Result<(), String> {
    if timed_out {
        return Err(format!("timed out after {} s", test.timeout.as_secs()));
    }
    match code {
        None => return Err("QEMU was killed by a signal".to_owned()),
        Some(code) if code != test.exit_code => {
            let hint = describe_exit(code)
                .map(|why| format!(" ({why})"))
                .unwrap_or_default();
            return Err(format!(
                "QEMU exited with code {code}, expected {}{hint}",
                test.exit_code
            ));
        }
        Some(_) => {}
    }
    // A Linux run expected to fail (status not 0) does not reach init.
    let linux = matches!(test.host, TestHost::Linux(_)) && test.exit_code == 0;
    let (more, forbidden): (&[&str], &[&str]) = if linux {
        (LINUX_OUTPUT, LINUX_ABSENT)
    } else if runs_stress(test) {
        (STRESS_OUTPUT, STRESS_ABSENT)
    } else if runs_linux_guest(test) {
        (LINUX_GUEST_OUTPUT, LINUX_GUEST_ABSENT)
    } else if matches!(test.host, TestHost::Vmm) && test.exit_code == 0 {
        (VMM_OUTPUT, VMM_ABSENT)
    } else if test.guest.is_some() {
        (GUEST_OUTPUT, GUEST_ABSENT)
    } else {
        (&[], &[])
    };
    if let Some(missing) = test
        .output
        .iter()
        .chain(more)
        .find(|want| !output.contains(*want))
    {
        return Err(format!("console output lacks {missing:?}"));
    }
    if let Some(bad) = test
        .absent
        .iter()
        .chain(forbidden)
        .find(|no| output.contains(*no))
    {
        return Err(format!("console output shows {bad:?}"));
    }
    if let Some(want) = test.summary {
        let Some((passed, failed, skipped)) = parse_summary(output) else {
            return Err("no `testhost: N passed, M failed, K skipped` line".to_owned());
        };
        if failed != want.failed || skipped != want.skipped || passed < want.min_passed {
            return Err(format!(
                "test host: {passed} passed, {failed} failed, {skipped} skipped; expected \
                 {} failed, {} skipped and at least {} passed",
                want.failed, want.skipped, want.min_passed
            ));
        }
    }
    if runs_linux_guest(test) {
        judge_linux_guest(output)?;
    }
    if matches!(test.host, TestHost::Vmm) && test.exit_code == 0 {
        judge_vmm_testguest(output)?;
    }
    if let Some(want) = test.guest.and_then(|g| g.report) {
        let Some((passed, failed)) = parse_guest_report(output) else {
            return Err(format!("no `{GUEST_REPORT}<P> passed, <F> failed` line"));
        };
        if failed != want.failed || passed < want.min_passed {
            return Err(format!(
                "guest: {passed} passed, {failed} failed; expected {} failed and at least {} \
                 passed",
                want.failed, want.min_passed
            ));
        }
    }
    Ok(())
}

/// What a run of the VMM boot image must show of the test guest: its
/// report through pkvm-vmm, the whole suite passing.
fn judge_vmm_testguest(output: &str) -> Result<(), String> {
    let Some((passed, failed)) = parse_guest_report(output) else {
        return Err(format!("no `{GUEST_REPORT}<P> passed, <F> failed` line"));
    };
    if failed != 0 || passed < VMM_GUEST_SUITE {
        return Err(format!(
            "test guest in pkvm-vmm: {passed} passed, {failed} failed; expected 0 failed and \
             at least {VMM_GUEST_SUITE} passed"
        ));
    }
    Ok(())
}

/// What a Linux guest run must show beyond its strings: the `GUEST-PKVM: `
/// line names the hypervisor services, and the VMM's conversions line
/// shows conversions to shared (the guest's MEM_SHARE calls) and none
/// refused.
fn judge_linux_guest(output: &str) -> Result<(), String> {
    if !output
        .lines()
        .any(|l| l.contains("GUEST-PKVM: ") && l.contains(GUEST_PKVM_DETECTED))
    {
        return Err(format!(
            "no `GUEST-PKVM: ` line with {GUEST_PKVM_DETECTED:?}"
        ));
    }
    let Some(c) = parse_conversions(output) else {
        return Err(format!(
            "no `{CONVERSIONS_PREFIX}<n> to shared (<p> pages), <m> to private (<q> pages), <r> \
             refused` line"
        ));
    };
    if c.refused != 0 {
        return Err(format!(
            "the VMM refused or failed {} of the guest's conversions",
            c.refused
        ));
    }
    if c.to_shared == 0 {
        return Err("the guest converted nothing to shared (no MEM_SHARE reached the VMM)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_named(name: &str) -> &'static QemuTest {
        TESTS.iter().find(|t| t.name == name).unwrap()
    }

    const GOOD: &str = "el2[0]: entering the host at EL1\r\ntesthost: started at EL1\r\n\
        el2[1]: CPU 1 up at EL2\r\ntesthost: 64 passed, 0 failed, 0 skipped\r\n\
        el2[0]: host requested SYSTEM_OFF\r\n";

    #[test]
    fn summary_lines_parse() {
        assert_eq!(parse_summary(GOOD), Some((64, 0, 0)));
        assert_eq!(
            parse_summary("testhost: 1 passed, 2 failed, 3 skipped\ntestall"),
            Some((1, 2, 3))
        );
        assert_eq!(parse_summary("testhost: ok   Version"), None);
        assert_eq!(parse_summary("5 passed, 0 failed"), None);
    }

    #[test]
    fn passes_on_expected_exit_output_and_summary() {
        assert_eq!(
            judge(test_named("testhost_all_checks_pass"), Some(0), false, GOOD),
            Ok(())
        );
    }

    #[test]
    fn fails_on_timeout_wrong_code_missing_output_or_bad_summary() {
        let t = test_named("testhost_all_checks_pass");
        assert!(
            judge(t, Some(0), true, GOOD)
                .unwrap_err()
                .contains("timed out")
        );
        assert!(judge(t, None, false, GOOD).is_err());
        assert!(
            judge(t, Some(1), false, GOOD)
                .unwrap_err()
                .contains("check failed")
        );
        assert!(
            judge(t, Some(0), false, "nothing")
                .unwrap_err()
                .contains("lacks")
        );
        let few = GOOD.replace("64 passed", "3 passed");
        assert!(
            judge(t, Some(0), false, &few)
                .unwrap_err()
                .contains("at least")
        );
        let failed = GOOD.replace("0 failed", "2 failed");
        assert!(judge(t, Some(0), false, &failed).is_err());
        let no_summary = GOOD.replace("testhost: 64", "64");
        assert!(
            judge(t, Some(0), false, &no_summary)
                .unwrap_err()
                .contains("no `testhost")
        );
    }

    #[test]
    fn linux_runs_are_judged_on_markers_and_status() {
        let t = test_named("linux_boot_v4");
        let mut good: String = LINUX_OUTPUT.join("\n");
        good.push_str("\nAndroid boot image v4\nDTB none (QEMU's)\nimage boot-v4\n");
        good.push_str("HOST-VENDOR-RAMDISK: absent\n");
        assert_eq!(judge(t, Some(0), false, &good), Ok(()));
        assert!(judge(t, Some(1), false, &good).is_err());
        let refused = good.replace(
            "HOST-PROBE-REFUSED: 0x7e000000",
            "HOST-PROBE-NOT-REFUSED: 0x7e000000",
        );
        assert!(
            judge(t, Some(0), false, &refused)
                .unwrap_err()
                .contains("lacks")
        );
        let both = format!("{good}HOST-PROBE-NOT-REFUSED: 0x1\n");
        assert!(
            judge(t, Some(0), false, &both)
                .unwrap_err()
                .contains("shows")
        );
        let panic = format!("{good}Kernel panic - not syncing\n");
        assert!(judge(t, Some(0), false, &panic).is_err());
    }

    /// A guest run as the VMM and guest are asked to print it.
    const GOOD_GUEST: &str = "el2[0]: entering the host at EL1\r\n\
        testhost: started at EL1\r\nvmm: running guest testguest.bin, 1 vCPU(s)\r\n\
        guest: testguest: started\r\nguest: testguest: ok hvc_null\r\n\
        vmm: guest powered off\r\nvmm: guest reported 42 passed, 0 failed\r\n\
        vmm: teardown verified\r\nel2[0]: host requested SYSTEM_OFF\r\n";

    #[test]
    fn guest_reports_parse() {
        assert_eq!(parse_guest_report(GOOD_GUEST), Some((42, 0)));
        assert_eq!(
            parse_guest_report("testhost: vmm: guest reported 40 passed, 1 failed\n"),
            Some((40, 1)),
            "a prefix is allowed"
        );
        assert_eq!(
            parse_guest_report("vmm: guest reported 40 passed, 1 failed, 2 skipped"),
            Some((40, 1)),
            "anything after `failed` is ignored"
        );
        // The last report counts.
        assert_eq!(
            parse_guest_report(
                "vmm: guest reported 1 passed, 0 failed\nvmm: guest reported 2 passed, 3 failed\n"
            ),
            Some((2, 3))
        );
        for bad in [
            "vmm: guest reported",
            "vmm: guest reported 40 passed",
            "vmm: guest reported 40 passed 0 failed",
            "vmm: guest reported forty passed, 0 failed",
            "vmm: guest reported 40 passed, -1 failed",
            "vmm: guest reported 40 passed, 0 failures",
            "testhost: 40 passed, 0 failed, 0 skipped",
        ] {
            assert_eq!(parse_guest_report(bad), None, "{bad}");
        }
    }

    #[test]
    fn guest_runs_are_judged_on_markers_report_and_status() {
        let t = test_named("guest_suite_1vcpu");
        assert_eq!(judge(t, Some(0), false, GOOD_GUEST), Ok(()));
        // No test host summary is asked for: the test host ran the VMM.
        assert_eq!(t.summary, None);
        assert!(
            judge(t, Some(11), false, GOOD_GUEST)
                .unwrap_err()
                .contains("the VMM failed")
        );
        for marker in GUEST_OUTPUT {
            let without = GOOD_GUEST.replace(marker, "");
            assert!(
                judge(t, Some(0), false, &without)
                    .unwrap_err()
                    .contains("lacks"),
                "{marker}"
            );
        }
        for bad in GUEST_ABSENT {
            let with = format!("{GOOD_GUEST}{bad}\n");
            assert!(
                judge(t, Some(0), false, &with)
                    .unwrap_err()
                    .contains("shows"),
                "{bad}"
            );
        }
        let few = GOOD_GUEST.replace("42 passed", "39 passed");
        assert!(
            judge(t, Some(0), false, &few)
                .unwrap_err()
                .contains("at least 40 passed")
        );
        let failed = GOOD_GUEST.replace("0 failed", "1 failed");
        assert!(judge(t, Some(0), false, &failed).is_err());
        let no_report = GOOD_GUEST.replace("guest reported", "guest said");
        assert!(
            judge(t, Some(0), false, &no_report)
                .unwrap_err()
                .contains("no `vmm: guest reported")
        );
        // The failing-check test wants exactly one failure and status 8.
        let f = test_named("guest_failing_check_is_detected");
        assert_eq!(judge(f, Some(8), false, &failed), Ok(()));
        assert!(judge(f, Some(8), false, GOOD_GUEST).is_err());
        assert!(
            judge(f, Some(0), false, &failed)
                .unwrap_err()
                .contains("expected 8")
        );
    }

    #[test]
    fn guest_tests_are_the_documented_ones() {
        let guest = |name| test_named(name).guest.unwrap();
        for name in [
            "guest_suite_1vcpu",
            "guest_suite_2vcpus",
            "guest_small_pages",
            "guest_failing_check_is_detected",
        ] {
            let t = test_named(name);
            let g = guest(name);
            assert!(matches!(t.host, TestHost::Builtin), "{name}");
            assert_eq!(t.timeout, GUEST_TIMEOUT, "{name}");
            assert_eq!(t.summary, None, "{name}");
            assert_eq!(g.kernel, GuestKernel::Testguest, "{name}");
            assert_eq!(g.mem, 128 << 20, "{name}");
            assert_eq!(g.report.unwrap().min_passed, 40, "{name}");
            assert!(t.input.is_empty(), "{name}");
        }
        assert_eq!(guest("guest_suite_1vcpu").smp, 1);
        assert_eq!(guest("guest_suite_2vcpus").smp, 2);
        assert!(guest("guest_small_pages").small_pages);
        assert!(!guest("guest_suite_2vcpus").small_pages);
        let fail = guest("guest_failing_check_is_detected");
        assert_eq!(fail.append, Some("testguest.fail"));
        assert_eq!(fail.report.unwrap().failed, 1);
        assert_eq!(test_named("guest_failing_check_is_detected").exit_code, 8);
        // The Linux guest: 256 MiB, the documented command lines, 120 s.
        for (name, smp, append) in [
            ("linux_guest_1vcpu", 1, "console=ttyAMA0 panic=-1"),
            ("linux_guest_2vcpus", 2, "console=ttyAMA0 panic=-1"),
            (
                "linux_guest_console",
                1,
                "console=ttyAMA0 panic=-1 guest.shell",
            ),
        ] {
            let t = test_named(name);
            let g = guest(name);
            assert!(matches!(t.host, TestHost::Builtin), "{name}");
            assert_eq!(t.timeout, Duration::from_secs(120), "{name}");
            assert_eq!(t.exit_code, 0, "{name}");
            assert_eq!(g.kernel, GuestKernel::Linux, "{name}");
            assert_eq!((g.mem, g.smp, g.append), (256 << 20, smp, Some(append)));
            assert_eq!(g.report, None, "Linux does not REPORT");
            assert!(
                t.output
                    .contains(&format!("GUEST-CPUS: {smp} online").as_str()),
                "{name}"
            );
        }
        assert!(test_named("linux_guest_1vcpu").input.is_empty());
        let console = test_named("linux_guest_console");
        assert_eq!(console.input.len(), 2);
        assert!(console.output.contains(&"hello-from-shell-42"));
        assert!(
            !console.input[0].send.contains("hello-from-shell-42"),
            "the echo of the command must not pass for its output"
        );
        // Every other test runs no guest.
        assert_eq!(TESTS.iter().filter(|t| t.guest.is_some()).count(), 7);
        assert_eq!(TESTS.iter().filter(|t| !t.input.is_empty()).count(), 1);
    }

    /// A Linux guest run as the test host, el2 and the guest print it.
    fn good_linux_guest(cpus: u32) -> String {
        format!(
            "el2[0]: entering the host at EL1\r\n\
             testhost: running a guest as a VMM: kernel 4714504 bytes\r\n\
             el2[0]: VM 0x1000: MMIO guard on (first granule 0x8000000): only guarded MMIO \
             reaches the host\r\n\
             guest: [    0.000000] smccc: KVM: hypervisor services detected (0x0 0x0 0x0 0x29d)\r\n\
             guest: GUEST-USERSPACE-OK: Linux 6.12.117\r\n\
             guest: GUEST-CPUS: {cpus} online (0-{})\r\n\
             guest: GUEST-PKVM: [    0.000000] smccc: KVM: hypervisor services detected (0x0 \
             0x0 0x0 0x29d)\r\n\
             guest: GUEST-MMIO-GUARD: advertised (KVM_FEATURES bit 7 set in a0=0x29d)\r\n\
             guest: GUEST-POWEROFF\r\n\
             guest: [    1.952085] reboot: Power down\r\n\
             vmm: guest powered off\r\n\
             vmm: conversions: 96 to shared (96 pages), 0 to private (0 pages), 0 refused\r\n\
             vmm: exits: mmio-uart 15326, wfi 95404, total 110730 in 2000 ms (55365/s)\r\n\
             vmm: 0 host accesses to guest-private memory were refused (injected aborts)\r\n\
             vmm: teardown verified: 6144 pages reclaimed\r\n\
             el2[0]: host requested SYSTEM_OFF\r\n",
            cpus - 1
        )
    }

    #[test]
    fn linux_guest_runs_are_judged_on_markers_conversions_and_status() {
        let t1 = test_named("linux_guest_1vcpu");
        let t2 = test_named("linux_guest_2vcpus");
        let good = good_linux_guest(1);
        assert_eq!(judge(t1, Some(0), false, &good), Ok(()));
        assert!(
            judge(t2, Some(0), false, &good)
                .unwrap_err()
                .contains("GUEST-CPUS: 2 online")
        );
        assert_eq!(judge(t2, Some(0), false, &good_linux_guest(2)), Ok(()));
        assert!(
            judge(t1, Some(11), false, &good)
                .unwrap_err()
                .contains("the VMM failed")
        );
        assert!(
            judge(t1, Some(0), true, &good)
                .unwrap_err()
                .contains("timed out")
        );
        for marker in LINUX_GUEST_OUTPUT {
            let without = good.replace(marker, "");
            assert!(
                judge(t1, Some(0), false, &without)
                    .unwrap_err()
                    .contains("lacks"),
                "{marker}"
            );
        }
        for bad in LINUX_GUEST_ABSENT {
            let with = format!("{good}{bad}\n");
            assert!(
                judge(t1, Some(0), false, &with)
                    .unwrap_err()
                    .contains("shows"),
                "{bad}"
            );
        }
        // The services must be on the GUEST-PKVM line itself.
        let elsewhere = good.replace(
            "GUEST-PKVM: [    0.000000] smccc: KVM: hypervisor services detected",
            "GUEST-PKVM: [    0.000000] smccc: KVM: something else",
        );
        assert!(
            judge(t1, Some(0), false, &elsewhere)
                .unwrap_err()
                .contains("hypervisor services detected")
        );
        // Conversions: some to shared, none refused, the line present.
        let refused = good.replace("0 refused", "2 refused");
        assert!(
            judge(t1, Some(0), false, &refused)
                .unwrap_err()
                .contains("refused or failed 2")
        );
        let none = good.replace("96 to shared (96 pages)", "0 to shared (0 pages)");
        assert!(
            judge(t1, Some(0), false, &none)
                .unwrap_err()
                .contains("converted nothing to shared")
        );
        let no_line = good.replace("vmm: conversions:", "vmm: conv:");
        assert!(
            judge(t1, Some(0), false, &no_line)
                .unwrap_err()
                .contains("no `vmm: conversions: ")
        );
        // No test-guest report is asked of Linux.
        assert!(!good.contains(GUEST_REPORT));
        // The console test wants its shell's output on top.
        let c = test_named("linux_guest_console");
        assert!(
            judge(c, Some(0), false, &good)
                .unwrap_err()
                .contains("lacks")
        );
        let shell = format!(
            "{good}guest: GUEST-SHELL: an interactive shell\r\nguest: pkvm-guest# echo \
             hello-from-shell-$((6*7))\r\nguest: hello-from-shell-42\r\nguest: pkvm-guest# \
             exit\r\nguest: GUEST-SHELL-EXIT: the shell exited with status 0\r\n"
        );
        assert_eq!(judge(c, Some(0), false, &shell), Ok(()));
    }

    #[test]
    fn an_unbuildable_guest_kernel_skips_and_a_failed_build_fails() {
        let skip = guest_kernel_verdict(Err(Failure::unavailable("no network"))).unwrap_err();
        assert_eq!(
            skip,
            NotBuilt::Skip("the pKVM guest kernel cannot be built here: no network".into())
        );
        let fail = guest_kernel_verdict(Err(Failure::failed("gcc died"))).unwrap_err();
        assert_eq!(
            fail,
            NotBuilt::Fail("building the pKVM guest kernel failed: gcc died".into())
        );
        // The VMM boot image the same way.
        assert_eq!(
            build_verdict::<()>(
                Err(Failure::unavailable("no headers")),
                "the VMM boot image"
            ),
            Err(NotBuilt::Skip(
                "the VMM boot image cannot be built here: no headers".into()
            ))
        );
        assert_eq!(
            build_verdict::<()>(Err(Failure::failed("make died")), "the VMM boot image"),
            Err(NotBuilt::Fail(
                "building the VMM boot image failed: make died".into()
            ))
        );
        assert_eq!(build_verdict(Ok(7), "x"), Ok(7));
        assert!(runs_linux_guest(test_named("linux_guest_console")));
        assert!(!runs_linux_guest(test_named("guest_suite_1vcpu")));
        assert!(!runs_linux_guest(test_named("linux_boot_v4")));
    }

    #[test]
    fn test_guests_become_guests() {
        let images = Images {
            el2: "el2".into(),
            el2_raw: None,
            testhost: "testhost.bin".into(),
            testguest: "t/testguest.bin".into(),
        };
        let t = test_named("guest_small_pages").guest.unwrap();
        let g = guest_of(&t, &images, None, None).unwrap();
        assert_eq!(g.kernel, Path::new("t/testguest.bin"));
        assert_eq!(g.initrd, None);
        assert_eq!((g.mem, g.vcpus, g.small_pages), (128 << 20, 1, true));
        let other = TestGuest {
            kernel: GuestKernel::File("other/Image"),
            ..t
        };
        let g = guest_of(&other, &images, None, Some(Path::new("c"))).unwrap();
        assert_eq!(g.kernel, Path::new("other/Image"));
        assert_eq!(g.cmdline, Some(Path::new("c")));
        // The Linux guest: the built kernel and its initramfs.
        let linux = test_named("linux_guest_2vcpus").guest.unwrap();
        assert!(guest_of(&linux, &images, None, None).is_err());
        let built = BuiltGuest {
            source_version: "6.12.117-1".into(),
            key: "k".into(),
            image: "out/k/Image".into(),
            config: "out/k/config".into(),
            system_map: "out/k/System.map".into(),
            log: "out/k/build.log".into(),
            initramfs: "initramfs.cpio".into(),
        };
        let g = guest_of(&linux, &images, Some(&built), None).unwrap();
        assert_eq!(g.kernel, Path::new("out/k/Image"));
        assert_eq!(g.initrd, Some(Path::new("initramfs.cpio")));
        assert_eq!((g.mem, g.vcpus), (256 << 20, 2));
    }

    #[test]
    fn made_images_are_refused_for_the_named_field() {
        let (img, _) = truncated_boot_image();
        let e = el2::bootimg::BootImage::parse(&img, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "boot image: kernel_size runs past the end of the image"
        );
        let (img, vendor) = bad_vendor_boot();
        let e = el2::bootimg::BootImage::parse(&img, vendor.as_deref()).unwrap_err();
        assert_eq!(e.to_string(), "boot image: vendor header_size invalid");
    }

    /// A stress run as the test host and el2 print it (`cpus` CPUs).
    fn good_stress(cpus: u32) -> String {
        let mut out = format!(
            "el2[0]: entering the host at EL1\r\n\
             testhost: started at EL1\r\n\
             testhost: stress: seed 0x5eed (testhost.seed=0x5eed repeats the sequences), {cpus} \
             CPU(s), 3000 ms, pool of 32 pages at 0x44050000, 2 VM slots\r\n"
        );
        for line in STRESS_OUTPUT
            .iter()
            .chain(if cpus == 4 { STRESS_OUTPUT_4 } else { &[] })
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(&format!(
            "testhost: race: 50 rounds on {} CPU(s) in 40 ms\r\n",
            cpus - 1
        ));
        let passed = STRESS_CHECKS_2 + if cpus == 4 { 2 } else { 0 };
        out.push_str(&format!(
            "testhost: {passed} passed, 0 failed, 0 skipped\r\n"
        ));
        out
    }

    #[test]
    fn stress_tests_are_the_documented_ones() {
        for (name, smp) in [("smp_stress_2_cpus", 2), ("smp_stress_4_cpus", 4)] {
            let t = test_named(name);
            assert!(matches!(t.host, TestHost::Builtin), "{name}");
            assert_eq!(t.append, Some("testhost.stress"), "{name}");
            assert!(runs_stress(t), "{name}");
            assert_eq!((t.machine)().smp, smp, "{name}");
            assert_eq!((t.machine)().cpu, Machine::default().cpu, "{name}");
            assert_eq!(t.timeout, STRESS_TIMEOUT, "{name}");
            assert!(t.timeout <= Duration::from_secs(30), "{name}: CI budget");
            assert_eq!(t.exit_code, 0, "{name}");
            assert!(t.guest.is_none() && t.input.is_empty(), "{name}");
            let want = t.summary.unwrap();
            assert_eq!((want.failed, want.skipped), (0, 0), "{name}");
            assert!(want.min_passed >= STRESS_CHECKS_2, "{name}");
            assert_eq!(
                judge(t, Some(0), false, &good_stress(smp)),
                Ok(()),
                "{name}"
            );
        }
        for bad in ["FATAL", "WARN", "panic"] {
            assert!(STRESS_ABSENT.contains(&bad));
        }
        for want in [
            "CheckInvariants after the stress -> 0 violations",
            "HostStats host-owned pages and host stage-2 leaves as before",
            "testhost: stress cpu 0: ",
            "testhost: stress calls: ",
            "CPU_OFF/CPU_ON race: 50 rounds",
        ] {
            assert!(STRESS_OUTPUT.iter().any(|s| s.contains(want)), "{want}");
        }
        assert!(!runs_stress(test_named("testhost_all_checks_pass")));
        assert!(!runs_stress(test_named("failing_check_is_detected")));
    }

    #[test]
    fn stress_runs_are_judged_on_counts_invariants_and_absent_lines() {
        let t = test_named("smp_stress_2_cpus");
        let good = good_stress(2);
        assert_eq!(judge(t, Some(0), false, &good), Ok(()));
        assert!(
            judge(t, Some(0), true, &good)
                .unwrap_err()
                .contains("timed out")
        );
        assert!(judge(t, Some(1), false, &good).is_err());
        let warned = format!("{good}el2[1] WARN: ownership invariant broken: x\r\n");
        assert!(
            judge(t, Some(0), false, &warned)
                .unwrap_err()
                .contains("WARN")
        );
        let fatal = format!("{good}el2[0] FATAL: panic: x\r\n");
        assert!(judge(t, Some(0), false, &fatal).is_err());
        let unexpected =
            format!("{good}testhost: stress cpu 1: UNEXPECTED ShareHyp([0x1]) -> x1 -16\r\n");
        assert!(
            judge(t, Some(0), false, &unexpected)
                .unwrap_err()
                .contains("UNEXPECTED")
        );
        let violated = good.replace(
            "testhost: ok   stress: CheckInvariants after",
            "testhost: FAIL stress: CheckInvariants after",
        );
        assert!(
            judge(t, Some(0), false, &violated)
                .unwrap_err()
                .contains("lacks")
        );
        let no_counts = good.replace("testhost: stress cpu 1: ", "");
        assert!(judge(t, Some(0), false, &no_counts).is_err());
        let few = good.replace("20 passed", "19 passed");
        assert!(
            judge(t, Some(0), false, &few)
                .unwrap_err()
                .contains("at least")
        );
        let no_race = good.replace("testhost: race: 50 rounds on 1 CPU(s)", "");
        assert!(judge(t, Some(0), false, &no_race).is_err());
        // The 4-CPU test wants every CPU's counts.
        let t4 = test_named("smp_stress_4_cpus");
        assert!(judge(t4, Some(0), false, &good).is_err());
        assert_eq!(judge(t4, Some(0), false, &good_stress(4)), Ok(()));
    }

    /// A run of the VMM boot image as el2, the Linux host, its init,
    /// the smoke test, pkvm-vmm and the guests print it (the Linux guest
    /// in the image when `linux_guest`).
    fn good_vmm(linux_guest: bool) -> String {
        let mut out = String::from(
            "el2[0]: host: Android boot image v4 at 0x441ff000..0x4639a000 with a vendor boot \
             image: kernel 32956352 bytes, ramdisks 10257408 + 5632 bytes, DTB 1048576 bytes \
             (vendor boot)\r\n\
             el2[0]: entering the host at EL1\r\n\
             VMM-INIT: init (pid 1) runs on Linux 6.1.0-57-arm64, image \
             vmm-boot+vmm-vendor_boot\r\n\
             VMM-VENDOR-RAMDISK: present (from the vendor boot image): /lib/modules/pkvm_rs.ko, \
             /bin/pkvm-rs-smoke, /bin/pkvm-vmm, /guest/Image, /guest/initramfs.cpio, \
             /guest/params, /guest/testguest.bin\r\n\
             [    4.876019] pkvm_rs: el2 host ABI 2.0; /dev/pkvm-rs ready (API 1)\r\n\
             VMM-INSMOD-OK: pkvm_rs: el2 host ABI 2.0; /dev/pkvm-rs ready (API 1)\r\n\
             SMOKE-OK: open /dev/pkvm-rs: ok\r\n\
             smoke: figure: KVM_SET_MEMORY_ATTRIBUTES2, 512 guest-owned pages (2 MiB) at the \
             guest's request (its MEM_SHARE/MEM_UNSHARE exit; el2 ConvertComplete): \
             private->shared min 310.2 us, median 402.9 us; shared->private min 655.0 us, \
             median 801.3 us (15 runs)\r\n\
             smoke: 126 passed, 0 failed\r\n\
             VMM-SMOKE-OK: pkvm-rs-smoke passed every check\r\n\
             vmm: pkvm-vmm: kernel /guest/testguest.bin (75240 bytes), initrd 0 bytes, 256 MiB, \
             2 vCPU(s) (a thread each), driver /dev/pkvm-rs\r\n\
             testguest: 94 passed, 0 failed\r\n\
             vmm: guest powered off\r\n\
             vmm: guest reported 94 passed, 0 failed\r\n\
             vmm: teardown: VM closed; the host kernel reclaims and frees its pages (not \
             verifiable here)\r\n\
             VMM-TEARDOWN-OK: testguest: pkvm_rs: VM 4096 torn down: 3072 guest pages \
             reclaimed (6 in 2 MiB blocks, 0 single), 0 reclaim failures; freed 3070 \
             guest_memfd pages, 6 memcache pages, 6 root+metadata pages; driver pages in use: \
             0\r\n\
             VMM-TESTGUEST-OK: the test guest passed its checks and powered off\r\n",
        );
        if linux_guest {
            out.push_str(
                "GUEST-USERSPACE-OK: Linux 6.12.117\r\nGUEST-POWEROFF\r\n\
                 vmm: guest powered off\r\n\
                 VMM-TEARDOWN-OK: Linux guest: pkvm_rs: VM 4096 torn down: 5632 guest pages \
                 reclaimed (11 in 2 MiB blocks, 0 single), 0 reclaim failures; freed 5632 \
                 guest_memfd pages, 4 memcache pages, 6 root+metadata pages; driver pages in \
                 use: 0\r\n\
                 VMM-LINUX-GUEST-OK: the pKVM Linux guest booted, ran its init and powered \
                 off\r\n",
            );
        } else {
            out.push_str(
                "VMM-LINUX-GUEST-SKIPPED: the pKVM guest kernel cannot be built here: no \
                 network\r\n",
            );
        }
        out.push_str(
            "VMM-RMMOD-OK: pkvm_rs unloaded (refcount was 0, driver pages in use: 0), \
             /dev/pkvm-rs gone\r\n\
             VMM-KERNEL-LOG-CLEAN: no oops, BUG or WARNING in the kernel log\r\n\
             VMM-ALL-OK\r\nVMM-POWEROFF\r\n[   23.947440] reboot: Power down\r\n\
             el2[0]: host requested SYSTEM_OFF\r\n",
        );
        out
    }

    #[test]
    fn the_vmm_test_is_the_documented_one() {
        let t = test_named("linux_host_vmm_end_to_end");
        assert!(matches!(t.host, TestHost::Vmm));
        assert_eq!((t.machine)(), Machine::default());
        assert_eq!(t.kernel, Kernel::Elf);
        assert_eq!((t.append, t.exit_code), (None, 0));
        assert_eq!(t.timeout, VMM_TIMEOUT);
        assert!(t.timeout <= Duration::from_secs(120), "CI budget");
        assert!(t.guest.is_none() && t.input.is_empty() && t.summary.is_none());
        assert_eq!(
            TESTS
                .iter()
                .filter(|t| matches!(t.host, TestHost::Vmm))
                .count(),
            1
        );
        // After the Linux guest tests: the guest kernel the image carries
        // is built (or found unbuildable) by then, not inside its timing.
        let at = |name| TESTS.iter().position(|t| t.name == name).unwrap();
        assert!(at("linux_host_vmm_end_to_end") > at("linux_guest_console"));
        // The pair, not the boot image alone: el2 took the vendor boot
        // image, init its payloads from there.
        for want in [
            " with a vendor boot image",
            "bytes (vendor boot)",
            vmm_images::VENDOR_RAMDISK_PRESENT,
        ] {
            assert!(VMM_OUTPUT.contains(&want), "{want}");
        }
        assert!(
            VMM_OUTPUT
                .iter()
                .any(|m| m.ends_with(vmm_images::IMAGE_NAME))
        );
        // The smoke test's figure the README quotes.
        assert!(VMM_OUTPUT.contains(&SMOKE_FIGURE));
        // Every marker vmm-init.sh prints on success is asked for.
        for marker in vmm_images::MARKERS {
            assert!(
                VMM_OUTPUT
                    .iter()
                    .chain(VMM_LINUX_GUEST_OUTPUT)
                    .any(|m| m.starts_with(marker)),
                "{marker}"
            );
            assert!(vmm_images::VMM_INIT.contains(marker), "{marker}");
        }
        for bad in ["VMM-FAILED", " WARN: ", "FATAL"] {
            assert!(VMM_ABSENT.iter().any(|a| a.starts_with(bad)), "{bad}");
        }
        assert!(vmm_images::VMM_INIT.contains(vmm_images::LINUX_GUEST_SKIPPED));
    }

    #[test]
    fn vmm_runs_are_judged_on_markers_status_and_the_guests() {
        let t = test_named("linux_host_vmm_end_to_end");
        let good = good_vmm(true);
        assert_eq!(judge(t, Some(0), false, &good), Ok(()));
        assert_eq!(judge_vmm_linux_guest(&good, None), Ok(()));
        assert!(
            judge(t, Some(0), true, &good)
                .unwrap_err()
                .contains("timed out")
        );
        // A failed step reboots: el2's status 12, said as such.
        let failed = good.replace(
            "VMM-TESTGUEST-OK",
            "VMM-FAILED: pkvm-vmm run --cpus 2 --protected-vm /guest/testguest.bin: the guest \
             reported failing checks (status 8)",
        );
        assert!(
            judge(t, Some(12), false, &failed)
                .unwrap_err()
                .contains("the host reset the machine")
        );
        assert!(
            judge(t, Some(0), false, &failed)
                .unwrap_err()
                .contains("lacks \"VMM-TESTGUEST-OK\"")
        );
        for marker in VMM_OUTPUT {
            let without = good.replace(marker, "");
            assert!(
                judge(t, Some(0), false, &without)
                    .unwrap_err()
                    .contains("lacks"),
                "{marker}"
            );
        }
        for bad in VMM_ABSENT {
            let with = format!("{good}{bad}\r\n");
            assert!(
                judge(t, Some(0), false, &with)
                    .unwrap_err()
                    .contains("shows"),
                "{bad}"
            );
        }
        let warned = format!("{good}el2[1] WARN: something\r\n");
        assert!(judge(t, Some(0), false, &warned).is_err());
        // The test guest's report: the whole suite, nothing failed.
        let few = good.replace("guest reported 94 passed", "guest reported 87 passed");
        assert!(
            judge(t, Some(0), false, &few)
                .unwrap_err()
                .contains("at least 90 passed")
        );
        let one_failed = good.replace("94 passed, 0 failed", "93 passed, 1 failed");
        assert!(
            judge(t, Some(0), false, &one_failed)
                .unwrap_err()
                .contains("1 failed")
        );
        let no_report = good.replace("vmm: guest reported", "vmm: guest said");
        assert!(
            judge(t, Some(0), false, &no_report)
                .unwrap_err()
                .contains("no `vmm: guest reported")
        );
        // The Linux guest: asked for when the image has it...
        for marker in VMM_LINUX_GUEST_OUTPUT {
            let without = good.replace(marker, "");
            assert!(
                judge_vmm_linux_guest(&without, None)
                    .unwrap_err()
                    .contains("lacks"),
                "{marker}"
            );
        }
        let skipped = good_vmm(false);
        assert!(
            judge_vmm_linux_guest(&skipped, None)
                .unwrap_err()
                .contains("lacks")
        );
        let both = format!("{good}VMM-LINUX-GUEST-SKIPPED: ?\r\n");
        assert!(
            judge_vmm_linux_guest(&both, None)
                .unwrap_err()
                .contains("although the image has the Linux guest")
        );
        // ...and its skip line when it has not.
        assert_eq!(judge(t, Some(0), false, &skipped), Ok(()));
        assert_eq!(judge_vmm_linux_guest(&skipped, Some("no network")), Ok(()));
        assert!(
            judge_vmm_linux_guest(&good, Some("no network"))
                .unwrap_err()
                .contains("the image has no Linux guest")
        );
        let claimed = format!("{skipped}VMM-LINUX-GUEST-OK\r\n");
        assert!(
            judge_vmm_linux_guest(&claimed, Some("no network"))
                .unwrap_err()
                .contains("without the Linux guest")
        );
    }

    #[test]
    fn every_test_has_a_timeout() {
        for t in TESTS {
            let limit = if matches!(t.host, TestHost::Linux(_)) {
                LINUX_TIMEOUT
            } else if matches!(t.host, TestHost::Vmm) {
                VMM_TIMEOUT
            } else if runs_stress(t) {
                STRESS_TIMEOUT
            } else if runs_linux_guest(t) {
                LINUX_GUEST_TIMEOUT
            } else if t.guest.is_some() {
                GUEST_TIMEOUT
            } else {
                TIMEOUT
            };
            assert!(t.timeout <= limit, "{}", t.name);
        }
        let names: std::collections::HashSet<_> = TESTS.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), TESTS.len(), "test names are unique");
    }
}
