//! The VMM library (`host_interface::vmm`) on the simulated machine: a
//! scripted guest (`el2::sim::GuestOp`) is loaded, run and torn down by
//! the same code the test host runs over real HVCs.
//!
//! Covered: the kernel, initrd and device tree land in place (the guest's
//! loads read them back; the kernel's 2 MiB is one guest block with 2 MiB
//! folios and 4 KiB pages without), vCPU 0's entry and `x0`, the device
//! tree's contents, the PL011 (console hook, flag and id registers), every
//! test-device command's result (PROBE_PHYS refused on a private page and
//! counted), unbacked MMIO, guest conversions and relinquish, PSCI
//! `CPU_ON` (outside RAM -9; inside RAM vCPU 1 starts there), the run's
//! outcomes (powered off, reset, crashed, all vCPUs off, VMM error) with
//! their exit statuses and exact log lines (the conversions and exits
//! counts included), the verified teardown (HostStats equal before and
//! after, private pages read back zero, and a page that is not zero
//! caught), and console input: the host's bytes reach the guest through
//! the PL011's receive FIFO, never more than it has room for, and its
//! interrupt line drives SPI 33 with the `IrqLine` host call.
//!
//! The backend abstraction (`VmBackend`): the loop's parts driven by the
//! host (`handle_exit`, `poll_console`, `set_run_time`: what the Linux
//! VMM's vCPU threads call) serve a guest as `Vmm::run` does; and the
//! whole library over a backend that is not `KvmVm` (a scripted one that,
//! like the Linux driver's, cannot verify its teardown): loading in place
//! through its mapping, the boot vCPU, every exit completed through it,
//! PROBE_PHYS refused on a private page, `Teardown::Closed` and status 0,
//! and a VM the host stopped (status 128 + signal).

use el2::sim::{GuestOp, Machine, SimPages};
use flat_device_tree::Fdt;
use host_interface::abi::{GuestCall, GuestState, HostCall};
use host_interface::gmem::MmapError;
use host_interface::hypervisor::{AccessFault, CallError, Hypervisor};
use host_interface::kvm::errno;
use host_interface::platform::{RAM_BASE, TEST_DEVICE, UART, testdev};
use host_interface::vm::KvmVm;
use host_interface::vmm::image::{HEADER_SIZE, MAGIC, MAGIC_OFFSET};
use host_interface::vmm::stats::{self, ExitKind};
use host_interface::vmm::teardown::{TeardownError, TeardownReport};
use host_interface::vmm::{
    GuestReport, Outcome, STATUS_CRASHED, STATUS_GUEST_FAILED, STATUS_OK, STATUS_RESET,
    STATUS_VMM_ERROR, Vmm, VmmConfig, VmmError, VmmHost, VmmReport, run_guest,
};
use ownership::{Gfn, GuestHandle};
use tests::RecordingHost;

const MIB2: u64 = 2 << 20;
/// Guest RAM: 4 blocks (kernel, initrd or free, free, device tree).
const MEM: u64 = 8 << 20;
/// The third block of RAM: nothing is loaded there.
const FREE: u64 = RAM_BASE + 2 * MIB2;
/// The fourth block: where the device tree goes.
const FDT_IPA: u64 = RAM_BASE + 3 * MIB2;
const PSCI_CPU_OFF: u64 = 0x8400_0002;
const PSCI_CPU_ON_64: u64 = 0xC400_0003;
const PSCI_CPU_ON_32: u64 = 0x8400_0003;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;

/// A kernel `Image` of `len` bytes: the header, then a byte pattern.
fn kernel(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
    let mut k: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    k[..HEADER_SIZE].fill(0);
    k[8..16].copy_from_slice(&text_offset.to_le_bytes());
    k[16..24].copy_from_slice(&image_size.to_le_bytes());
    k[24..32].copy_from_slice(&0xau64.to_le_bytes());
    k[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    k
}

fn initrd(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 241) as u8 ^ 0x5a).collect()
}

fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn config<'a>(kernel: &'a [u8], initrd: Option<&'a [u8]>, vcpus: usize) -> VmmConfig<'a> {
    VmmConfig {
        mem: MEM,
        vcpus,
        cmdline: "console=ttyAMA0 testguest.fail",
        small_pages: false,
        kernel,
        initrd,
    }
}

/// A guest script, with the step of each op it adds.
#[derive(Default)]
struct Script(Vec<GuestOp>);

impl Script {
    fn op(&mut self, op: GuestOp) -> usize {
        self.0.push(op);
        self.0.len() - 1
    }

    fn load(&mut self, ipa: u64) -> usize {
        self.op(GuestOp::Load { ipa })
    }

    fn hvc(&mut self, id: u64, args: [u64; 3]) -> usize {
        self.op(GuestOp::Hvc { id, args })
    }

    /// A test-device command; returns the step of its RESULT load.
    fn cmd(&mut self, cmd: u64, args: [u64; 3]) -> usize {
        for (reg, value) in [testdev::ARG0, testdev::ARG1, testdev::ARG2]
            .into_iter()
            .zip(args)
        {
            self.op(GuestOp::Store {
                ipa: TEST_DEVICE + reg,
                value,
            });
        }
        self.op(GuestOp::Store {
            ipa: TEST_DEVICE + testdev::CMD,
            value: cmd,
        });
        self.load(TEST_DEVICE + testdev::RESULT)
    }
}

type SimVmm<'a, 'm> = Vmm<'a, KvmVm<&'m mut Machine, SimPages>>;

fn handle(vmm: &mut SimVmm<'_, '_>) -> GuestHandle {
    GuestHandle(vmm.vm().handle() as u16)
}

/// Creates and loads the VM, scripts its vCPUs, runs it; returns the
/// outcome (the VM still exists).
fn start<'a, 'm>(
    m: &'m mut Machine,
    config: VmmConfig<'a>,
    scripts: Vec<Vec<GuestOp>>,
    host: &mut RecordingHost,
) -> (SimVmm<'a, 'm>, Outcome) {
    let mut vmm = Vmm::create(m, SimPages::for_machine(), config).unwrap();
    vmm.load().unwrap();
    let h = handle(&mut vmm);
    for (i, s) in scripts.into_iter().enumerate() {
        vmm.vm().hypervisor().arch.script(h, i, s);
    }
    let outcome = vmm.run(host);
    (vmm, outcome)
}

fn loaded(vmm: &mut SimVmm<'_, '_>, vcpu: usize, step: usize) -> Option<u64> {
    vmm.vm().hypervisor().arch.loaded(vcpu, step)
}

fn hvc_x0(vmm: &mut SimVmm<'_, '_>, vcpu: usize, step: usize) -> i64 {
    vmm.vm().hypervisor().arch.hvc_result(vcpu, step).unwrap()[0] as i64
}

/// Tears down; checks every page came back and the machine's invariants.
fn finish(vmm: SimVmm<'_, '_>, outcome: Outcome, host: &mut RecordingHost) -> VmmReport {
    let (report, parts) = vmm.finish(outcome, host);
    let (m, pages) = parts.expect("teardown calls succeed");
    assert_eq!(pages.in_use(), 0, "every page back with the allocator");
    m.check();
    report
}

/// The verified teardown of a run over [`KvmVm`].
fn verified(report: &VmmReport) -> TeardownReport {
    *report
        .teardown
        .expect("a VM was created")
        .expect("the teardown passed")
        .verified()
        .expect("KvmVm verifies its teardown")
}

fn verified_line(report: &VmmReport) -> String {
    let t = verified(report);
    format!(
        "vmm: teardown verified: {} pages reclaimed, {} private pages read back zero; host pages \
         {} -> {}, host stage-2 leaves {} -> {}",
        t.reclaimed,
        t.private_zeroed,
        t.before.owned_pages,
        t.after.owned_pages,
        t.before.leaves,
        t.after.leaves
    )
}

#[test]
fn loading_puts_kernel_initrd_and_device_tree_in_place() {
    let mut m = Machine::new();
    let k = kernel(0, 0x10_0000, 3 * 4096 + 100);
    let rd = initrd(2 * 4096 + 24);
    let mut s = Script::default();
    let k0 = s.load(RAM_BASE);
    let kmagic = s.load(RAM_BASE + MAGIC_OFFSET as u64);
    let kmid = s.load(RAM_BASE + 0x2000 + 8);
    let ktail = s.load(RAM_BASE + 3 * 4096 + 88);
    let kbss = s.load(RAM_BASE + 0x8_0000);
    let r0 = s.load(RAM_BASE + MIB2);
    let rtail = s.load(RAM_BASE + MIB2 + 2 * 4096 + 16);
    let f0 = s.load(FDT_IPA);
    let mut host = RecordingHost::default();
    let (mut vmm, outcome) = start(&mut m, config(&k, Some(&rd), 1), vec![s.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    let l = *vmm.layout();
    assert_eq!(l.entry(), RAM_BASE);
    assert_eq!(
        l.initrd.unwrap().ipa(),
        RAM_BASE + MIB2,
        "next 2 MiB after image_size"
    );
    assert_eq!(l.fdt.ipa(), FDT_IPA, "the last 2 MiB of RAM");
    let fdt = vmm.device_tree().to_vec();
    // The guest read the files in place.
    assert_eq!(loaded(&mut vmm, 0, k0), Some(word(&k, 0)));
    assert_eq!(loaded(&mut vmm, 0, kmagic), Some(word(&k, MAGIC_OFFSET)));
    assert_eq!(loaded(&mut vmm, 0, kmid), Some(word(&k, 0x2008)));
    assert_eq!(loaded(&mut vmm, 0, ktail), Some(word(&k, 3 * 4096 + 88)));
    assert_eq!(
        loaded(&mut vmm, 0, kbss),
        Some(0),
        "the kernel's BSS is zero"
    );
    assert_eq!(loaded(&mut vmm, 0, r0), Some(word(&rd, 0)));
    assert_eq!(loaded(&mut vmm, 0, rtail), Some(word(&rd, 2 * 4096 + 16)));
    assert_eq!(loaded(&mut vmm, 0, f0), Some(word(&fdt, 0)));
    assert_eq!(&fdt[..4], &[0xd0, 0x0d, 0xfe, 0xed], "a device tree");
    // vCPU 0 started at the kernel's entry with x0 = the device tree.
    let h = handle(&mut vmm);
    let entries = vmm.vm().hypervisor().arch.entries.clone();
    assert_eq!(entries.get(&(h.0, 0)), Some(&(RAM_BASE, FDT_IPA)));
    // The files are private: the VMM's mapping refuses them.
    let mut b = [0u8; 8];
    for offset in [0, MIB2, 3 * MIB2] {
        assert_eq!(
            vmm.memory().read(offset, &mut b),
            Err(MmapError::Sigbus { offset })
        );
    }
    // 2 MiB folios: each loaded block is one folio, and one guest block.
    let ram = vmm.memory().ram();
    for page in [0, 512, 3 * 512] {
        let g = vmm.vm().gmem(ram).unwrap();
        assert_eq!(g.frame(page).unwrap().1.order, 9, "page {page}");
    }
    let leaf = vmm
        .vm()
        .hypervisor()
        .hyp
        .mem
        .guest_leaf(h, Gfn(RAM_BASE >> 12))
        .unwrap();
    assert_eq!(leaf.level.get(), 2, "the kernel is one 2 MiB guest block");
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
    let t = verified(&report);
    assert_eq!(t.before, t.after);
    assert_eq!(t.reclaimed, 3 * 512, "three blocks the guest touched");
    assert_eq!(t.private_zeroed, 3 * 512);
}

#[test]
fn small_pages_load_and_map_4k() {
    let mut m = Machine::new();
    let k = kernel(0x8_0000, 0x2_0000, 8192);
    let mut s = Script::default();
    let k0 = s.load(RAM_BASE + 0x8_0000 + 0x1000);
    let mut host = RecordingHost::default();
    let cfg = VmmConfig {
        small_pages: true,
        ..config(&k, None, 1)
    };
    let (mut vmm, outcome) = start(&mut m, cfg, vec![s.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(loaded(&mut vmm, 0, k0), Some(word(&k, 0x1000)));
    let h = handle(&mut vmm);
    let entries = vmm.vm().hypervisor().arch.entries.clone();
    assert_eq!(
        entries.get(&(h.0, 0)),
        Some(&(RAM_BASE + 0x8_0000, FDT_IPA)),
        "entry at text_offset"
    );
    let ram = vmm.memory().ram();
    let g = vmm.vm().gmem(ram).unwrap();
    assert_eq!(g.frame(0x80 + 1).unwrap().1.order, 0);
    assert_eq!(g.frame(0).map(|f| f.1), None, "nothing below text_offset");
    let leaf = vmm
        .vm()
        .hypervisor()
        .hyp
        .mem
        .guest_leaf(h, Gfn((RAM_BASE >> 12) + 0x81))
        .unwrap();
    assert_eq!(leaf.level.get(), 3, "4 KiB guest pages");
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
    let t = verified(&report);
    assert_eq!(t.before, t.after, "small pages merge back too");
    assert_eq!(t.reclaimed, 1);
}

#[test]
fn the_device_tree_names_the_platform() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let rd = initrd(5000);
    let mut vmm = Vmm::create(&mut m, SimPages::for_machine(), config(&k, Some(&rd), 3)).unwrap();
    let l = *vmm.layout();
    let blob = vmm.device_tree().to_vec();
    let fdt = Fdt::new(&blob).unwrap();
    let chosen = fdt.chosen().unwrap();
    assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 testguest.fail"));
    let node = fdt.find_node("/chosen").unwrap();
    let initrd = l.initrd.unwrap();
    assert_eq!(
        node.property("linux,initrd-start").unwrap().value,
        initrd.ipa().to_be_bytes()
    );
    assert_eq!(
        node.property("linux,initrd-end").unwrap().value,
        (initrd.ipa() + 5000).to_be_bytes()
    );
    let stdout = node.property("stdout-path").unwrap().as_str().unwrap();
    let uart = fdt.find_node(stdout).unwrap();
    assert_eq!(uart.reg().next().unwrap().starting_address as u64, UART);
    let mem = fdt.find_node("/memory@80000000").unwrap();
    let r = mem.reg().next().unwrap();
    assert_eq!(
        (r.starting_address as u64, r.size),
        (RAM_BASE, Some(MEM as usize))
    );
    assert_eq!(fdt.cpus().count(), 3);
    let dev = fdt.find_compatible(&[testdev::COMPATIBLE]).unwrap();
    assert_eq!(
        dev.reg().next().unwrap().starting_address as u64,
        TEST_DEVICE
    );
    assert_eq!(
        fdt.find_node("/psci")
            .unwrap()
            .property("method")
            .unwrap()
            .as_str(),
        Some("hvc")
    );
    vmm.load().unwrap();
    let mut host = RecordingHost::default();
    let report = finish(vmm, Outcome::PoweredOff, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK, "a VM that never ran");
}

#[test]
fn pl011_output_reaches_the_console_hook() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    for b in b"ok\n" {
        s.op(GuestOp::Store32 {
            ipa: UART,
            value: u32::from(*b),
        });
    }
    let fr = s.load(UART + 0x18);
    let pid0 = s.load(UART + 0xfe0);
    let cid3 = s.load(UART + 0xffc);
    let cr = s.load(UART + 0x30);
    s.op(GuestOp::Store32 {
        ipa: UART + 0x30,
        value: 0x301,
    });
    let mut host = RecordingHost::default();
    let (mut vmm, outcome) = start(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(host.console, b"ok\n");
    assert_eq!(loaded(&mut vmm, 0, fr), Some(0x90), "TXFE | RXFE");
    assert_eq!(loaded(&mut vmm, 0, pid0), Some(0x11));
    assert_eq!(loaded(&mut vmm, 0, cid3), Some(0xb1));
    assert_eq!(loaded(&mut vmm, 0, cr), Some(0x300), "UARTCR's reset value");
    assert_eq!(vmm.unbacked_mmio(), 0, "the UART is a device");
    assert!(host.runs.iter().all(|v| *v == 0) && !host.runs.is_empty());
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(
        host.log,
        [
            "vmm: guest powered off".to_owned(),
            "vmm: conversions: 0 to shared (0 pages), 0 to private (0 pages), 0 refused".to_owned(),
            // 4 stores and 4 loads; the end of the script powers off.
            "vmm: exits: mmio-uart 8, mmio-testdev 0, mmio-unbacked 0, memory-fault 0, \
             relinquished 0, wfi 0, interrupted 0, hypercall 0, powered-off 0, system-event 1, \
             stopped 0, total 9"
                .to_owned(),
            "vmm: 0 host accesses to guest-private memory were refused (injected aborts)"
                .to_owned(),
            verified_line(&report),
        ]
    );
}

#[test]
fn every_test_device_command() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let neg = |e: i32| -i64::from(e) as u64;
    let p = FREE; // filled, shared, unshared by the guest
    let q = FREE + 0x1000; // the guest's private page
    let r = RAM_BASE + MIB2 + 0x10000; // host-owned (no initrd: block 1 is free)
    let mut s = Script::default();
    let id = s.load(TEST_DEVICE + testdev::ID);
    s.op(GuestOp::Store32 {
        ipa: TEST_DEVICE + testdev::ARG0,
        value: 5,
    });
    let arg0 = s.load(TEST_DEVICE + testdev::ARG0);
    // A page the guest shares.
    s.op(GuestOp::Fill { ipa: p, byte: 0xa5 });
    let share = s.hvc(GuestCall::MemShare.id(), [p, 1, 0]);
    let chk_ok = s.cmd(testdev::CHECK_PATTERN, [p, 0xa5, 0]);
    let chk_bad = s.cmd(testdev::CHECK_PATTERN, [p, 0x00, 0]);
    let fill = s.cmd(testdev::FILL_PATTERN, [p, 0x5a, 0]);
    let seen = s.load(p + 0x800);
    let probe_shared = s.cmd(testdev::PROBE_PHYS, [p, 0, 0]);
    let unshare = s.hvc(GuestCall::MemUnshare.id(), [p, 1, 0]);
    let chk_unshared = s.cmd(testdev::CHECK_PATTERN, [p, 0x5a, 0]);
    let probe_unshared = s.cmd(testdev::PROBE_PHYS, [p, 0, 0]);
    let kept = s.load(p);
    // A private page.
    s.op(GuestOp::Fill { ipa: q, byte: 0xc3 });
    let chk_priv = s.cmd(testdev::CHECK_PATTERN, [q, 0xc3, 0]);
    let fill_priv = s.cmd(testdev::FILL_PATTERN, [q, 0x3c, 0]);
    let probe_priv = s.cmd(testdev::PROBE_PHYS, [q, 0, 0]);
    let punch_priv = s.cmd(testdev::PUNCH, [q, 0x1000, 0]);
    let conv_priv = s.cmd(testdev::CONVERT, [q, 0x1000, 0]);
    let q_kept = s.load(q + 8);
    let aborts = s.cmd(testdev::ABORTS, [0; 3]);
    // Host-owned memory the guest never touched.
    let probe_none = s.cmd(testdev::PROBE_PHYS, [r, 0, 0]);
    let conv_host = s.cmd(testdev::CONVERT, [r, 0x2000, 0]);
    let fill_host = s.cmd(testdev::FILL_PATTERN, [r + 0x1000, 0x11, 0]);
    let chk_host = s.cmd(testdev::CHECK_PATTERN, [r + 0x1000, 0x11, 0]);
    let probe_host = s.cmd(testdev::PROBE_PHYS, [r + 0x1000, 0, 0]);
    let punch_host = s.cmd(testdev::PUNCH, [r, 0x2000, 0]);
    let probe_punched = s.cmd(testdev::PROBE_PHYS, [r + 0x1000, 0, 0]);
    let conv_back = s.cmd(testdev::CONVERT, [r, 0x2000, 1]);
    // Bad arguments.
    let bad = [
        s.cmd(testdev::CHECK_PATTERN, [r + 1, 0, 0]),
        s.cmd(testdev::CHECK_PATTERN, [0x1000, 0, 0]),
        s.cmd(testdev::CHECK_PATTERN, [r, 0x100, 0]),
        s.cmd(testdev::PROBE_PHYS, [RAM_BASE + MEM, 0, 0]),
        s.cmd(testdev::PUNCH, [r, 0, 0]),
        s.cmd(testdev::PUNCH, [r, 100, 0]),
        s.cmd(testdev::PUNCH, [RAM_BASE + MEM - 0x1000, 0x2000, 0]),
        s.cmd(testdev::CONVERT, [r, 0x1000, 2]),
        s.cmd(99, [0; 3]),
    ];
    // Unbacked MMIO.
    let unbacked = s.load(0x0c00_0000);
    s.op(GuestOp::Store {
        ipa: 0x0c00_0000,
        value: 7,
    });
    let report = s.cmd(testdev::REPORT, [7, 0, 0]);
    let mut host = RecordingHost::default();
    let (mut vmm, outcome) = start(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    let mut at = |step| loaded(&mut vmm, 0, step).unwrap();
    assert_eq!(at(id), testdev::MAGIC);
    assert_eq!(at(arg0), 0, "a 4-byte store is ignored");
    assert_eq!(at(chk_ok), 0);
    assert_eq!(at(chk_bad), 1);
    assert_eq!(at(fill), 0);
    assert_eq!(
        at(seen),
        0x5a5a_5a5a_5a5a_5a5a,
        "the guest sees the host's bytes"
    );
    assert_eq!(at(probe_shared), 0, "a shared page is the host's to read");
    assert_eq!(at(chk_unshared), neg(errno::EFAULT));
    assert_eq!(at(probe_unshared), 1, "refused once unshared");
    assert_eq!(at(kept), 0x5a5a_5a5a_5a5a_5a5a, "converted in place");
    assert_eq!(at(chk_priv), neg(errno::EFAULT));
    assert_eq!(at(fill_priv), neg(errno::EFAULT));
    assert_eq!(at(probe_priv), 1);
    assert_eq!(at(punch_priv), neg(errno::EBUSY));
    assert_eq!(at(conv_priv), neg(errno::EPERM));
    assert_eq!(at(q_kept), 0xc3c3_c3c3_c3c3_c3c3);
    assert_eq!(at(aborts), 2);
    assert_eq!(at(probe_none), neg(errno::ENOENT));
    assert_eq!(at(conv_host), 0);
    assert_eq!(at(fill_host), 0);
    assert_eq!(at(chk_host), 0);
    assert_eq!(at(probe_host), 0);
    assert_eq!(at(punch_host), 0);
    assert_eq!(at(probe_punched), neg(errno::ENOENT));
    assert_eq!(at(conv_back), 0);
    for step in bad {
        assert_eq!(at(step), neg(errno::EINVAL), "step {step}");
    }
    assert_eq!(at(unbacked), 0);
    assert_eq!(at(report), 0);
    assert_eq!(hvc_x0(&mut vmm, 0, share), 0);
    assert_eq!(hvc_x0(&mut vmm, 0, unshare), 0);
    assert_eq!(vmm.unbacked_mmio(), 2);
    assert_eq!(vmm.refused(), 2);
    assert_eq!(
        vmm.guest_report(),
        Some(GuestReport {
            passed: 7,
            failed: 0
        })
    );
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
    assert_eq!(
        host.log,
        [
            "vmm: guest powered off".to_owned(),
            // MEM_SHARE and MEM_UNSHARE of one page.
            "vmm: conversions: 1 to shared (1 pages), 1 to private (1 pages), 0 refused".to_owned(),
            "vmm: exits: mmio-uart 0, mmio-testdev 153, mmio-unbacked 2, memory-fault 2, \
             relinquished 0, wfi 0, interrupted 0, hypercall 0, powered-off 0, system-event 1, \
             stopped 0, total 158"
                .to_owned(),
            "vmm: guest reported 7 passed, 0 failed".to_owned(),
            "vmm: 2 host accesses to guest-private memory were refused (injected aborts)"
                .to_owned(),
            verified_line(&report),
        ]
    );
    let t = verified(&report);
    assert_eq!(t.before, t.after);
    assert!(t.private_zeroed >= 2, "{t:?}");
}

#[test]
fn a_failing_report_is_status_8() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    s.cmd(testdev::REPORT, [40, 1, 0]);
    let mut host = RecordingHost::default();
    let report = run_scripted(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(report.outcome, Outcome::PoweredOff);
    assert_eq!(report.exit_status(), STATUS_GUEST_FAILED);
    assert_eq!(host.log[3], "vmm: guest reported 40 passed, 1 failed");
}

fn run_scripted(
    m: &mut Machine,
    config: VmmConfig<'_>,
    scripts: Vec<Vec<GuestOp>>,
    host: &mut RecordingHost,
) -> VmmReport {
    let (vmm, outcome) = start(m, config, scripts, host);
    finish(vmm, outcome, host)
}

#[test]
fn guest_conversions_and_relinquish_are_served() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    s.op(GuestOp::Fill {
        ipa: FREE,
        byte: 0x77,
    });
    let share = s.hvc(GuestCall::MemShare.id(), [FREE, 4, 0]);
    let rel = s.hvc(GuestCall::MemRelinquish.id(), [FREE + 0x10000, 1, 0]);
    let zero = s.load(FREE + 0x10000);
    let mut host = RecordingHost::default();
    let (mut vmm, outcome) = start(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(hvc_x0(&mut vmm, 0, share), 0, "the VMM converted it");
    assert_eq!(hvc_x0(&mut vmm, 0, rel), 0);
    assert_eq!(
        loaded(&mut vmm, 0, zero),
        Some(0),
        "a fresh page after the punch"
    );
    let mut b = [0u8; 8];
    vmm.memory().read(2 * MIB2 + 8, &mut b).unwrap();
    assert_eq!(b, [0x77; 8], "the VMM reads the shared pages");
    let h = handle(&mut vmm);
    let state = vmm
        .vm()
        .hypervisor()
        .call(HostCall::GuestPageState, &[u64::from(h.0), FREE >> 12])
        .unwrap();
    assert_eq!(
        GuestState::from_raw(state[0]),
        Some(GuestState::SharedOwned)
    );
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
}

#[test]
fn cpu_on_checks_the_entry_and_starts_vcpu_1_there() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let entry = RAM_BASE + 0x3000;
    let mut s0 = Script::default();
    let outside = s0.hvc(PSCI_CPU_ON_64, [1, 0x1000, 0]);
    let past_end = s0.hvc(PSCI_CPU_ON_32, [1, RAM_BASE + MEM, 0]);
    let on = s0.hvc(PSCI_CPU_ON_64, [1, entry, 0x55]);
    s0.op(GuestOp::Wfi);
    s0.op(GuestOp::Wfi);
    let mut s1 = Script::default();
    s1.hvc(PSCI_CPU_OFF, [0; 3]);
    let mut host = RecordingHost::default();
    let (mut vmm, outcome) = start(&mut m, config(&k, None, 2), vec![s0.0, s1.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(hvc_x0(&mut vmm, 0, outside), -9, "INVALID_ADDRESS");
    assert_eq!(hvc_x0(&mut vmm, 0, past_end), -9);
    assert_eq!(hvc_x0(&mut vmm, 0, on), 0);
    let h = handle(&mut vmm);
    let entries = vmm.vm().hypervisor().arch.entries.clone();
    assert_eq!(
        entries.get(&(h.0, 1)),
        Some(&(entry, 0x55)),
        "vCPU 1 started at the guest's entry with its context id"
    );
    assert!(host.runs.contains(&1), "vCPU 1 ran: {:?}", host.runs);
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
}

#[test]
fn system_reset_is_the_reset_outcome() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    s.hvc(PSCI_SYSTEM_RESET, [0; 3]);
    let mut host = RecordingHost::default();
    let report = run_scripted(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(report.outcome, Outcome::Reset);
    assert_eq!(report.exit_status(), STATUS_RESET);
    assert_eq!(host.log[0], "vmm: guest reset");
}

#[test]
fn a_stopped_vcpu_is_the_crashed_outcome() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    s.load(RAM_BASE);
    s.op(GuestOp::Undefined {
        esr: (0x18 << 26) | 0x1234,
    });
    let mut host = RecordingHost::default();
    let report = run_scripted(&mut m, config(&k, None, 1), vec![s.0], &mut host);
    assert_eq!(report.outcome, Outcome::Crashed { vcpu: 0, ec: 0x18 });
    assert_eq!(report.exit_status(), STATUS_CRASHED);
    assert_eq!(host.log[0], "vmm: guest stopped: exception class 0x18");
    assert!(
        host.log[2].ends_with(", stopped 1, total 1"),
        "{:?}",
        host.log
    );
    assert!(host.log[4].starts_with("vmm: teardown verified: "));
}

#[test]
fn every_vcpu_off_ends_the_run() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    s.hvc(PSCI_CPU_OFF, [0; 3]);
    let mut host = RecordingHost::default();
    let report = run_scripted(&mut m, config(&k, None, 2), vec![s.0], &mut host);
    assert_eq!(report.outcome, Outcome::AllVcpusOff);
    assert_eq!(report.exit_status(), STATUS_CRASHED);
    assert_eq!(host.log[0], "vmm: all vCPUs off");
}

#[test]
fn bad_images_and_configurations_create_nothing() {
    let mut m = Machine::new();
    let before = m.call(HostCall::HostStats, &[]).vals;
    let good = kernel(0, 0x1000, 4096);
    let mut bad_magic = good.clone();
    bad_magic[MAGIC_OFFSET] = b'X';
    let too_big = kernel(0, 7 << 20, 4096);
    let cases: Vec<(VmmConfig<'_>, &str)> = vec![
        (
            config(&bad_magic, None, 1),
            "vmm: error: kernel Image: bad magic (no \"ARM\\x64\" at offset 0x38)",
        ),
        (
            config(&good[..10], None, 1),
            "vmm: error: kernel Image: 10 bytes, shorter than its 64-byte header",
        ),
        (
            config(&too_big, None, 1),
            "vmm: error: the kernel (text_offset + image_size) ends at RAM offset 0x700000, \
             past 0x600000 where the device tree's last 2 MiB of RAM start",
        ),
        (
            VmmConfig {
                mem: 3 << 20,
                ..config(&good, None, 1)
            },
            "vmm: error: bad configuration: guest RAM must be a non-zero multiple of 2 MiB",
        ),
        (
            config(&good, None, 9),
            "vmm: error: bad configuration: the vCPU count must be 1 to 8",
        ),
        (
            config(&good, None, 0),
            "vmm: error: bad configuration: the vCPU count must be 1 to 8",
        ),
        (
            VmmConfig {
                cmdline: "a\0b",
                ..config(&good, None, 1)
            },
            "vmm: error: writing the device tree: Strings cannot contain NUL",
        ),
    ];
    for (cfg, line) in cases {
        let mut host = RecordingHost::default();
        let report = run_guest(&mut m, SimPages::for_machine(), cfg, &mut host);
        assert!(matches!(report.outcome, Outcome::Error(_)), "{line}");
        assert_eq!(report.teardown, None);
        assert_eq!(report.exit_status(), STATUS_VMM_ERROR);
        assert_eq!(host.log, [line.to_owned()]);
        assert!(host.runs.is_empty());
    }
    assert_eq!(m.call(HostCall::HostStats, &[]).vals, before);
    assert!(matches!(
        Vmm::create(&mut m, SimPages::for_machine(), config(&bad_magic, None, 1)),
        Err(VmmError::Image(_))
    ));
}

#[test]
fn run_guest_runs_everything() {
    // No script for vCPU 0: the simulated CPU stops it (Other { esr: MAX }).
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut host = RecordingHost::default();
    let report = run_guest(
        &mut m,
        SimPages::for_machine(),
        config(&k, None, 1),
        &mut host,
    );
    assert_eq!(report.outcome, Outcome::Crashed { vcpu: 0, ec: 0x3f });
    assert!(matches!(report.teardown, Some(Ok(_))));
    assert_eq!(host.runs, [0]);
    m.check();
}

/// A conduit over the simulated machine that can corrupt what the host
/// reads, to prove the teardown check looks at the bytes.
struct Corrupting<'m> {
    m: &'m mut Machine,
    corrupt: bool,
}

impl Hypervisor for Corrupting<'_> {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        Hypervisor::call(&mut *self.m, call, args)
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        self.m.read(pa, buf)?;
        if self.corrupt && !buf.is_empty() {
            buf[buf.len() - 1] = 0xee;
        }
        Ok(())
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        self.m.write(pa, data)
    }
}

#[test]
fn the_teardown_check_catches_a_page_that_is_not_zero() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let hv = Corrupting {
        m: &mut m,
        corrupt: false,
    };
    let mut vmm = Vmm::create(hv, SimPages::for_machine(), config(&k, None, 1)).unwrap();
    vmm.load().unwrap();
    let h = GuestHandle(vmm.vm().handle() as u16);
    let mut s = Script::default();
    s.op(GuestOp::Fill { ipa: FREE, byte: 1 });
    vmm.vm().hypervisor().m.arch.script(h, 0, s.0);
    let mut host = RecordingHost::default();
    let outcome = vmm.run(&mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    vmm.vm().hypervisor().corrupt = true;
    let (report, parts) = vmm.finish(outcome, &mut host);
    assert!(
        matches!(
            report.teardown,
            Some(Err(TeardownError::NotZero {
                offset: 4095,
                byte: 0xee,
                ..
            }))
        ),
        "{:?}",
        report.teardown
    );
    assert_eq!(report.exit_status(), STATUS_VMM_ERROR);
    assert!(
        host.log[4].starts_with("vmm: TEARDOWN-CHECK-FAILED: guest-private page "),
        "{:?}",
        host.log
    );
    let (_, pages) = parts.unwrap();
    assert_eq!(pages.in_use(), 0);
}

#[test]
fn a_second_vm_after_the_first_finds_the_host_as_it_was() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let rd = initrd(100);
    let before = m.call(HostCall::HostStats, &[]).vals;
    for small_pages in [false, true] {
        let mut s = Script::default();
        s.op(GuestOp::Fill {
            ipa: FREE + 0x5000,
            byte: 3,
        });
        s.hvc(GuestCall::MemShare.id(), [FREE + 0x5000, 1, 0]);
        let mut host = RecordingHost::default();
        let cfg = VmmConfig {
            small_pages,
            ..config(&k, Some(&rd), 2)
        };
        let report = run_scripted(&mut m, cfg, vec![s.0], &mut host);
        assert_eq!(report.exit_status(), STATUS_OK, "{:?}", host.log);
    }
    assert_eq!(m.call(HostCall::HostStats, &[]).vals, before);
}

#[test]
fn gmem_allocate_backs_ranges_with_2m_folios_split_when_mixed() {
    use host_interface::kvm::{GUEST_MEMFD_FLAG_MMAP, KvmCreateGuestMemfd};
    use host_interface::vm::{KvmVm, Vm};
    use host_interface::vmm::memory;
    let mut m = Machine::new();
    let mut vm = KvmVm::new(&mut m, SimPages::for_machine(), 1).unwrap();
    let id = vm
        .create_guest_memfd(&KvmCreateGuestMemfd {
            size: 3 * MIB2,
            flags: GUEST_MEMFD_FLAG_MMAP,
            reserved: [0; 6],
        })
        .unwrap();
    // Block 1 gets one shared page: mixed attributes.
    memory::convert(&mut vm, id, MIB2 + 0x5000, 0x1000, false).unwrap();
    for (offset, len) in [
        (1, 0x1000),
        (0, 0x1001),
        (0, 0),
        (0, 4 * MIB2),
        (!0xfff, 0x2000),
    ] {
        assert_eq!(
            vm.gmem_allocate(id, offset, len),
            Err(errno::EINVAL),
            "{offset:#x}+{len:#x}"
        );
    }
    vm.gmem_allocate(id, 0, 2 * MIB2 + 0x3000).unwrap();
    let g = vm.gmem(id).unwrap();
    assert_eq!(
        g.frame(0).unwrap().1.order,
        9,
        "a whole private block: one folio"
    );
    let (_, split) = g.frame(512 + 5).unwrap();
    assert_eq!(split.order, 0, "mixed attributes: split at once");
    assert!(split.split_from.is_some(), "and can merge back");
    assert_eq!(
        g.frame(1024 + 2).unwrap().1.order,
        0,
        "the tail: 4 KiB pages"
    );
    assert_eq!(g.frame(1024 + 3), None, "nothing past the range");
    // Converting the page back merges the block.
    memory::convert(&mut vm, id, MIB2 + 0x5000, 0x1000, true).unwrap();
    assert_eq!(vm.gmem(id).unwrap().frame(512).unwrap().1.order, 9);
    // Allocating again changes nothing; small pages allocate 4 KiB.
    let before = vm.gmem(id).unwrap().pfn(7);
    vm.gmem_allocate(id, 0, MIB2).unwrap();
    assert_eq!(vm.gmem(id).unwrap().pfn(7), before);
    vm.gmem_punch_hole(id, 2 * MIB2, MIB2).unwrap();
    vm.set_huge_folios(false);
    vm.gmem_allocate(id, 2 * MIB2, MIB2).unwrap();
    assert_eq!(vm.gmem(id).unwrap().frame(1024).unwrap().1.order, 0);
    let pages = vm.destroy().unwrap();
    assert_eq!(pages.in_use(), 0);
    m.check();
}

/// A conduit over the simulated machine that records every `IrqLine`
/// call: `(INTID, level)`.
struct Spying<'m> {
    m: &'m mut Machine,
    irq_lines: Vec<(u64, u64)>,
    /// Fail every `IrqLine` call with EINVAL.
    refuse_irq: bool,
}

impl Hypervisor for Spying<'_> {
    fn call(&mut self, call: HostCall, args: &[u64]) -> Result<[u64; 5], CallError> {
        if call == HostCall::IrqLine {
            self.irq_lines.push((args[1], args[2]));
            if self.refuse_irq {
                return Err(CallError::Errno(i64::from(errno::EINVAL)));
            }
        }
        Hypervisor::call(&mut *self.m, call, args)
    }

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        self.m.read(pa, buf)
    }

    fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), AccessFault> {
        self.m.write(pa, data)
    }
}

/// A host with console input and a clock (1 ms per reading), recording
/// like [`RecordingHost`].
#[derive(Default)]
struct ConsoleHost {
    rec: RecordingHost,
    input: std::collections::VecDeque<u8>,
    /// The room the VMM offered at each call of `input`.
    offered: Vec<usize>,
    clock: u64,
}

impl VmmHost for ConsoleHost {
    fn console(&mut self, bytes: &[u8]) {
        self.rec.console(bytes);
    }

    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        self.rec.log(line);
    }

    fn before_run(&mut self, vcpu: usize) {
        self.rec.before_run(vcpu);
    }

    fn input(&mut self, buf: &mut [u8]) -> usize {
        self.offered.push(buf.len());
        let n = buf.len().min(self.input.len());
        for b in buf.iter_mut().take(n) {
            *b = self.input.pop_front().unwrap();
        }
        n
    }

    fn now_ns(&mut self) -> Option<u64> {
        self.clock += 1_000_000;
        Some(self.clock)
    }
}

const GICD_CTLR: u64 = host_interface::platform::GIC_DIST;
const GICD_ISENABLER1: u64 = host_interface::platform::GIC_DIST + 0x104;

fn store32(s: &mut Script, ipa: u64, value: u32) -> usize {
    s.op(GuestOp::Store32 { ipa, value })
}

#[test]
fn console_input_reaches_the_guest_through_the_fifo_and_spi_33() {
    use host_interface::vmm::pl011::{self, UART_INTID};
    assert_eq!(UART_INTID, 33, "SPI 1, as the device tree says");
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    // As Linux's driver: FIFOs on, UART and receiver on, then the RX and
    // RX-timeout interrupts unmasked, and SPI 33 enabled in the GIC.
    store32(&mut s, UART + pl011::UARTLCR_H, 0x70);
    store32(&mut s, UART + pl011::UARTCR, 0x301);
    // By now the VMM has polled: "hi\r" is in the FIFO and, on the next
    // poll with nothing new, the receive timeout is raised (masked yet).
    store32(&mut s, UART + pl011::UARTIFLS, 0x12);
    store32(&mut s, UART + pl011::UARTIMSC, 0x50);
    store32(&mut s, GICD_CTLR, 2);
    store32(&mut s, GICD_ISENABLER1, 1 << 1);
    // The line is high and SPI 33 enabled: the WFI does not wait.
    s.op(GuestOp::Wfi);
    let mis = s.load(UART + pl011::UARTMIS);
    let fr = s.load(UART + pl011::UARTFR);
    let bytes = [
        s.load(UART + pl011::UARTDR),
        s.load(UART + pl011::UARTDR),
        s.load(UART + pl011::UARTDR),
    ];
    let fr_empty = s.load(UART + pl011::UARTFR);
    let mis_after = s.load(UART + pl011::UARTMIS);
    let hv = Spying {
        m: &mut m,
        irq_lines: Vec::new(),
        refuse_irq: false,
    };
    let mut vmm = Vmm::create(hv, SimPages::for_machine(), config(&k, None, 1)).unwrap();
    vmm.load().unwrap();
    let h = GuestHandle(vmm.vm().handle() as u16);
    vmm.vm().hypervisor().m.arch.script(h, 0, s.0);
    let mut host = ConsoleHost::default();
    host.input.extend(b"hi\r");
    let outcome = vmm.run(&mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    let mut at = |step| vmm.vm().hypervisor().m.arch.loaded(0, step).unwrap();
    assert_eq!(at(mis), u64::from(pl011::INT_RT), "the receive timeout");
    assert_eq!(at(fr), 0x80, "TXFE, data waiting");
    assert_eq!(bytes.map(&mut at), [b'h', b'i', b'\r'].map(u64::from));
    assert_eq!(at(fr_empty), 0x90);
    assert_eq!(at(mis_after), 0, "reading the FIFO empty cleared it");
    assert_eq!(
        vmm.vm().hypervisor().irq_lines,
        [(33, 1), (33, 0)],
        "the line rose when RT was unmasked and fell when the FIFO emptied"
    );
    assert_eq!(vmm.uart().rx_pending(), 0);
    assert!(!vmm.uart().level());
    // Nothing was offered before the receiver was on, and never more than
    // the FIFO's room.
    assert!(host.offered.iter().all(|&n| n <= 16), "{:?}", host.offered);
    assert!(host.offered.contains(&16), "{:?}", host.offered);
    let stats = *vmm.stats();
    assert_eq!(stats.exits_of(ExitKind::Wfi), 0, "the WFI did not wait");
    assert_eq!(stats.exits_of(ExitKind::MmioUart), 11);
    assert!(stats.run_ns.is_some());
    let (report, parts) = vmm.finish(outcome, &mut host);
    assert!(parts.is_some());
    assert_eq!(report.exit_status(), STATUS_OK);
    let exits = &host.rec.log[2];
    // 11 UART accesses (the GIC's are el2's) and the power-off.
    assert!(
        exits.starts_with("vmm: exits: mmio-uart 11, ") && exits.contains(", total 12 in "),
        "{exits}"
    );
    let parsed = stats::parse_exits(exits).unwrap();
    assert_eq!(parsed.total, 12);
    assert_eq!(parsed.count("mmio-uart"), Some(11));
    let (ms, rate) = parsed.time.unwrap();
    assert_eq!(ms, stats.run_ns.unwrap() / 1_000_000);
    assert_eq!(rate, 12 * 1000 / ms, "{exits}");
}

#[test]
fn input_waits_on_the_host_side_while_the_receiver_is_off() {
    use host_interface::vmm::pl011;
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    // FIFOs off: one byte at a time; the UART is enabled late.
    let early = s.load(UART + pl011::UARTFR);
    store32(&mut s, UART + pl011::UARTCR, 0x301);
    store32(&mut s, UART + pl011::UARTCR, 0x301);
    let first = s.load(UART + pl011::UARTDR);
    let second = s.load(UART + pl011::UARTDR);
    let third = s.load(UART + pl011::UARTDR);
    let mut host = ConsoleHost::default();
    host.input.extend(b"abc");
    let (mut vmm, outcome) = {
        let mut vmm = Vmm::create(&mut m, SimPages::for_machine(), config(&k, None, 1)).unwrap();
        vmm.load().unwrap();
        let h = handle(&mut vmm);
        vmm.vm().hypervisor().arch.script(h, 0, s.0);
        let outcome = vmm.run(&mut host);
        (vmm, outcome)
    };
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(loaded(&mut vmm, 0, early), Some(0x90), "nothing taken yet");
    // One byte per poll, each read making room for the next.
    assert_eq!(loaded(&mut vmm, 0, first), Some(u64::from(b'a')));
    assert_eq!(loaded(&mut vmm, 0, second), Some(u64::from(b'b')));
    assert_eq!(loaded(&mut vmm, 0, third), Some(u64::from(b'c')));
    assert!(host.offered.iter().all(|&n| n == 1), "{:?}", host.offered);
    assert!(host.input.is_empty());
    let report = finish(vmm, outcome, &mut host.rec);
    assert_eq!(report.exit_status(), STATUS_OK);
}

#[test]
fn exits_and_conversions_are_counted_by_kind() {
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s0 = Script::default();
    s0.hvc(GuestCall::MemShare.id(), [FREE, 3, 0]);
    s0.hvc(GuestCall::MemUnshare.id(), [FREE, 2, 0]);
    s0.hvc(GuestCall::MemRelinquish.id(), [FREE + 0x10000, 1, 0]);
    s0.load(0x0c00_0000);
    s0.op(GuestOp::Store32 {
        ipa: UART,
        value: u32::from(b'x'),
    });
    s0.cmd(testdev::ABORTS, [0; 3]);
    s0.hvc(PSCI_CPU_ON_64, [1, RAM_BASE + 0x3000, 0]);
    s0.op(GuestOp::Wfi);
    s0.op(GuestOp::Wfi);
    let mut s1 = Script::default();
    s1.hvc(PSCI_CPU_OFF, [0; 3]);
    let mut host = RecordingHost::default();
    let (vmm, outcome) = start(&mut m, config(&k, None, 2), vec![s0.0, s1.0], &mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    let st = *vmm.stats();
    assert_eq!(st.run_ns, None, "RecordingHost has no clock");
    let c = st.conversions;
    assert_eq!((c.to_shared, c.to_shared_pages), (1, 3));
    assert_eq!((c.to_private, c.to_private_pages), (1, 2));
    assert_eq!((c.refused, c.failed), (0, 0));
    for (kind, n) in [
        (ExitKind::MemoryFault, 2),
        (ExitKind::Relinquished, 1),
        (ExitKind::MmioUnbacked, 1),
        (ExitKind::MmioUart, 1),
        (ExitKind::MmioTestdev, 5),
        (ExitKind::Hypercall, 1),
        (ExitKind::SystemEvent, 1),
        (ExitKind::Stopped, 0),
    ] {
        assert_eq!(st.exits_of(kind), n, "{kind:?}");
    }
    assert!(st.exits_of(ExitKind::Wfi) >= 1, "{st:?}");
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.stats, st);
    assert_eq!(report.unbacked_mmio, 1);
    assert_eq!(
        host.log[1],
        "vmm: conversions: 1 to shared (3 pages), 1 to private (2 pages), 0 refused"
    );
    let parsed = stats::parse_exits(&host.log[2]).unwrap();
    assert_eq!(parsed.total, st.total());
    assert_eq!(parsed.time, None);
}

#[test]
fn a_refused_irq_line_ends_the_run_with_a_vmm_error() {
    use host_interface::vmm::pl011;
    let mut m = Machine::new();
    let k = kernel(0, 0x1000, 4096);
    let mut s = Script::default();
    // Unmasking TX (always pending) raises the line at once.
    store32(&mut s, UART + pl011::UARTIMSC, pl011::INT_TX);
    let never = s.load(UART + pl011::UARTFR);
    let hv = Spying {
        m: &mut m,
        irq_lines: Vec::new(),
        refuse_irq: true,
    };
    let mut vmm = Vmm::create(hv, SimPages::for_machine(), config(&k, None, 1)).unwrap();
    vmm.load().unwrap();
    let h = GuestHandle(vmm.vm().handle() as u16);
    vmm.vm().hypervisor().m.arch.script(h, 0, s.0);
    let mut host = RecordingHost::default();
    let outcome = vmm.run(&mut host);
    assert_eq!(
        outcome,
        Outcome::Error(VmmError::Host {
            what: "driving the UART's interrupt line (IrqLine)",
            errno: errno::EINVAL,
        })
    );
    assert_eq!(vmm.vm().hypervisor().irq_lines, [(33, 1)], "tried once");
    assert_eq!(vmm.vm().hypervisor().m.arch.loaded(0, never), None);
    let (report, parts) = vmm.finish(outcome, &mut host);
    assert!(parts.is_some());
    assert_eq!(report.exit_status(), STATUS_VMM_ERROR);
    assert_eq!(
        host.log[0],
        "vmm: error: driving the UART's interrupt line (IrqLine) failed: errno 22"
    );
    assert!(
        matches!(report.teardown, Some(Ok(_))),
        "torn down all the same"
    );
}

// ---------------------------------------------------------------------
// The backend abstraction: the loop's parts driven by the host, and a
// backend that is not KvmVm.

#[test]
fn a_host_driven_loop_serves_exits_as_the_round_robin_does() {
    use host_interface::vmm::{Step, VmBackend};
    // The same guest twice: once with `Vmm::run`, once with the calls a
    // host that schedules vCPUs itself makes (the Linux VMM's threads).
    let k = kernel(0, 0x1000, 4096);
    let script = || {
        let mut s = Script::default();
        for b in b"hi\n" {
            s.op(GuestOp::Store32 {
                ipa: UART,
                value: u32::from(*b),
            });
        }
        let on = s.hvc(PSCI_CPU_ON_64, [1, RAM_BASE + 0x2000, 5]);
        s.cmd(testdev::REPORT, [3, 0, 0]);
        (s.0, on)
    };
    let second = vec![GuestOp::Hvc {
        id: PSCI_CPU_OFF,
        args: [0; 3],
    }];
    let mut m = Machine::new();
    let mut rr = RecordingHost::default();
    let (s0, _) = script();
    let report_rr = run_scripted(
        &mut m,
        config(&k, None, 2),
        vec![s0, second.clone()],
        &mut rr,
    );

    let mut m = Machine::new();
    let mut host = RecordingHost::default();
    let mut vmm: SimVmm<'_, '_> = Vmm::create_with(config(&k, None, 2), |c| {
        assert_eq!(c.vcpus, 2);
        let before = m.call(HostCall::HostStats, &[]).vals;
        let vm = KvmVm::new(&mut m, SimPages::for_machine(), c.vcpus).unwrap();
        Ok((
            vm,
            Some(host_interface::vmm::teardown::HostStats {
                owned_pages: before[0],
                leaves: before[1],
                tables: before[2],
            }),
        ))
    })
    .unwrap();
    assert_eq!(vmm.vcpus(), 2);
    vmm.load().unwrap();
    let h = handle(&mut vmm);
    let (s0, on) = script();
    vmm.vm().hypervisor().arch.script(h, 0, s0);
    vmm.vm().hypervisor().arch.script(h, 1, second);
    // Run vCPU 0 to its end, then vCPU 1 (which the guest started).
    let mut outcome = None;
    'vcpus: for vcpu in [0, 1] {
        for _ in 0..1000 {
            vmm.poll_console(&mut host).unwrap();
            let result = vmm.vm().run_vcpu(vcpu);
            match vmm.handle_exit(vcpu, result, &mut host) {
                Step::End(o) => {
                    outcome = Some(o);
                    break 'vcpus;
                }
                Step::Yield => break,
                Step::Continue => {}
            }
        }
    }
    assert_eq!(hvc_x0(&mut vmm, 0, on), 0, "CPU_ON accepted");
    let outcome = outcome.expect("the guest powered off");
    assert_eq!(outcome, Outcome::PoweredOff);
    vmm.set_run_time(1_000_000);
    let report = finish(vmm, outcome, &mut host);
    assert_eq!(report.exit_status(), STATUS_OK);
    assert_eq!(host.console, rr.console);
    assert_eq!(report.guest, report_rr.guest);
    assert_eq!(report.stats.conversions, report_rr.stats.conversions);
    assert!(host.log[2].contains(" in 1 ms ("), "{:?}", host.log);
}

/// A backend that is not [`KvmVm`]: RAM is a byte vector with a private
/// bit per page (a private page is refused, as a guest_memfd mapping
/// refuses it), exits come from a script, and destroying it is all it
/// can do (like the Linux driver's backend).
#[derive(Default)]
struct ScriptedVm {
    ram: Vec<u8>,
    private: Vec<bool>,
    regions: Vec<host_interface::kvm::KvmUserspaceMemoryRegion2>,
    allocated: Vec<(u64, u64)>,
    boot: Option<(u64, u64)>,
    exits: std::collections::VecDeque<Result<host_interface::vm::VcpuExit, i32>>,
    runs: Vec<usize>,
    mmio_data: Vec<(usize, u64)>,
    hypercall_results: Vec<(usize, u64)>,
    irq: Vec<(u32, bool)>,
    punched: Vec<(u64, u64)>,
}

const SCRIPTED_GMEM: host_interface::vm::GmemId = host_interface::vm::GmemId(7);
const PAGE: usize = 4096;

impl ScriptedVm {
    fn first_private(&self, offset: u64, len: usize) -> Option<u64> {
        let first = offset as usize / PAGE;
        let end = (offset as usize + len).div_ceil(PAGE);
        (first..end)
            .find(|p| self.private[*p])
            .map(|p| (p * PAGE).max(offset as usize) as u64)
    }
}

impl host_interface::vm::Vm for ScriptedVm {
    fn create_guest_memfd(
        &mut self,
        args: &host_interface::kvm::KvmCreateGuestMemfd,
    ) -> Result<host_interface::vm::GmemId, i32> {
        self.ram = vec![0; args.size as usize];
        // guest_memfd is private by default.
        self.private = vec![true; args.size as usize / PAGE];
        Ok(SCRIPTED_GMEM)
    }

    fn set_memory_region(
        &mut self,
        region: &host_interface::kvm::KvmUserspaceMemoryRegion2,
    ) -> Result<(), i32> {
        assert_eq!(region.guest_memfd, SCRIPTED_GMEM.0);
        self.regions.push(*region);
        Ok(())
    }

    fn set_memory_attributes(
        &mut self,
        gmem: host_interface::vm::GmemId,
        a: &mut host_interface::kvm::KvmMemoryAttributes2,
    ) -> Result<(), i32> {
        assert_eq!(gmem, SCRIPTED_GMEM);
        let (first, end) = (
            a.offset as usize / PAGE,
            (a.offset + a.size) as usize / PAGE,
        );
        if end > self.private.len() {
            a.error_offset = a.offset;
            return Err(errno::EINVAL);
        }
        let private = a.attributes != 0;
        self.private[first..end].fill(private);
        Ok(())
    }
}

impl host_interface::vmm::VmBackend for ScriptedVm {
    type Remains = ScriptedVm;

    fn gmem_size(&self, _gmem: host_interface::vm::GmemId) -> Option<u64> {
        Some(self.ram.len() as u64)
    }

    fn gmem_read(
        &mut self,
        _gmem: host_interface::vm::GmemId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), MmapError> {
        if let Some(offset) = self.first_private(offset, buf.len()) {
            return Err(MmapError::Sigbus { offset });
        }
        buf.copy_from_slice(&self.ram[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn gmem_write(
        &mut self,
        _gmem: host_interface::vm::GmemId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), MmapError> {
        if let Some(offset) = self.first_private(offset, data.len()) {
            return Err(MmapError::Sigbus { offset });
        }
        self.ram[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn gmem_punch_hole(
        &mut self,
        _gmem: host_interface::vm::GmemId,
        offset: u64,
        len: u64,
    ) -> Result<(), i32> {
        self.punched.push((offset, len));
        Ok(())
    }

    fn huge_folios(&self) -> bool {
        true
    }

    fn gmem_allocate(
        &mut self,
        _gmem: host_interface::vm::GmemId,
        offset: u64,
        len: u64,
    ) -> Result<(), i32> {
        self.allocated.push((offset, len));
        Ok(())
    }

    fn init_boot_vcpu(&mut self, pc: u64, x0: u64) -> Result<(), i32> {
        self.boot = Some((pc, x0));
        Ok(())
    }

    fn set_irq_line(&mut self, intid: u32, high: bool) -> Result<(), i32> {
        self.irq.push((intid, high));
        Ok(())
    }

    fn run_vcpu(&mut self, index: usize) -> Result<host_interface::vm::VcpuExit, i32> {
        self.runs.push(index);
        self.exits
            .pop_front()
            .unwrap_or(Ok(host_interface::vm::VcpuExit::SystemEvent(0)))
    }

    fn set_mmio_data(&mut self, index: usize, value: u64) {
        self.mmio_data.push((index, value));
    }

    fn set_hypercall_result(&mut self, index: usize, x0: u64, _x1: u64) {
        self.hypercall_results.push((index, x0));
    }

    fn probe(
        &mut self,
        gmem: host_interface::vm::GmemId,
        offset: u64,
    ) -> host_interface::vmm::backend::Probe {
        let mut page = [0u8; PAGE];
        match self.gmem_read(gmem, offset, &mut page) {
            Ok(()) => host_interface::vmm::backend::Probe::Read,
            Err(_) => host_interface::vmm::backend::Probe::Refused,
        }
    }

    fn destroy(
        self,
        baseline: Option<host_interface::vmm::teardown::HostStats>,
    ) -> (
        Result<host_interface::vmm::teardown::Teardown, TeardownError>,
        Option<ScriptedVm>,
    ) {
        assert_eq!(baseline, None, "no baseline was given");
        (
            Ok(host_interface::vmm::teardown::Teardown::Closed),
            Some(self),
        )
    }
}

fn mmio(address: u64, write: bool, data: u64) -> Result<host_interface::vm::VcpuExit, i32> {
    Ok(host_interface::vm::VcpuExit::Mmio {
        address,
        size: if address >= TEST_DEVICE { 8 } else { 4 },
        write,
        data,
    })
}

/// A test-device command as exits: the three argument stores, the
/// command, the RESULT load.
fn cmd_exits(cmd: u64, args: [u64; 3]) -> Vec<Result<host_interface::vm::VcpuExit, i32>> {
    let mut v: Vec<_> = [testdev::ARG0, testdev::ARG1, testdev::ARG2]
        .into_iter()
        .zip(args)
        .map(|(r, a)| mmio(TEST_DEVICE + r, true, a))
        .collect();
    v.push(mmio(TEST_DEVICE + testdev::CMD, true, cmd));
    v.push(mmio(TEST_DEVICE + testdev::RESULT, false, 0));
    v
}

#[test]
fn the_library_runs_over_a_backend_that_cannot_verify_its_teardown() {
    use host_interface::vm::VcpuExit;
    use host_interface::vmm::teardown::Teardown;
    let k = kernel(0, 0x1000, 5000);
    let rd = initrd(3000);
    let mut exits = vec![
        mmio(UART, true, u64::from(b'o')),
        mmio(UART, true, u64::from(b'k')),
        mmio(UART + 0x18, false, 0),
        Ok(VcpuExit::MemoryFault {
            gpa: FREE,
            size: 0x2000,
            flags: 0,
        }),
    ];
    // The kernel's first page is private: PROBE_PHYS is refused; the
    // converted page reads fine.
    exits.extend(cmd_exits(testdev::PROBE_PHYS, [RAM_BASE, 0, 0]));
    exits.extend(cmd_exits(testdev::FILL_PATTERN, [FREE, 0x5a, 0]));
    exits.extend(cmd_exits(testdev::CHECK_PATTERN, [FREE, 0x5a, 0]));
    exits.extend(cmd_exits(testdev::CHECK_PATTERN, [RAM_BASE, 0, 0]));
    exits.extend(cmd_exits(testdev::PROBE_PHYS, [FREE, 0, 0]));
    exits.push(Ok(VcpuExit::Hypercall {
        id: PSCI_CPU_ON_64,
        args: [1, RAM_BASE + 0x1000, 0],
    }));
    // vCPU 0 waits: vCPU 1 (on now) gets the next turn, and the rest of
    // the script (exits are one queue here).
    exits.push(Ok(VcpuExit::Wfi));
    exits.extend(cmd_exits(testdev::REPORT, [5, 0, 0]));
    exits.push(Ok(VcpuExit::Relinquished {
        gpa: FREE + 0x1000,
        size: 0x1000,
    }));
    exits.push(Ok(VcpuExit::SystemEvent(0)));
    let vm = ScriptedVm {
        exits: exits.into(),
        ..ScriptedVm::default()
    };
    let mut host = RecordingHost::default();
    let mut vmm = Vmm::create_with(config(&k, Some(&rd), 2), |_| Ok((vm, None))).unwrap();
    assert_eq!(vmm.stats_before(), None);
    vmm.load().unwrap();
    let l = *vmm.layout();
    let fdt = vmm.device_tree().to_vec();
    {
        let vm = vmm.vm();
        assert_eq!(vm.regions.len(), 1);
        assert_eq!(vm.regions[0].guest_phys_addr, RAM_BASE);
        assert_eq!(vm.regions[0].memory_size, MEM);
        assert_eq!(vm.boot, Some((l.entry(), l.fdt.ipa())));
        // Loaded in place: the bytes are there, and private.
        let at = l.kernel.offset as usize;
        assert_eq!(&vm.ram[at..at + k.len()], &k[..]);
        let at = l.initrd.unwrap().offset as usize;
        assert_eq!(&vm.ram[at..at + rd.len()], &rd[..]);
        let at = l.fdt.offset as usize;
        assert_eq!(&vm.ram[at..at + fdt.len()], &fdt[..]);
        assert!(vm.private[l.kernel.offset as usize / PAGE]);
        // 2 MiB folios: whole blocks allocated before each file.
        assert!(
            vm.allocated
                .iter()
                .all(|(o, n)| o % MIB2 == 0 && n % MIB2 == 0),
            "{:?}",
            vm.allocated
        );
        assert_eq!(vm.allocated.len(), 3);
    }
    let outcome = vmm.run(&mut host);
    assert_eq!(outcome, Outcome::PoweredOff);
    assert_eq!(host.console, b"ok");
    let (report, vm) = vmm.finish(outcome, &mut host);
    let vm = vm.unwrap();
    assert_eq!(report.teardown, Some(Ok(Teardown::Closed)));
    assert_eq!(report.exit_status(), STATUS_OK);
    assert_eq!(
        report.guest,
        Some(GuestReport {
            passed: 5,
            failed: 0
        })
    );
    assert_eq!(report.refused, 1, "the private page's probe");
    // Every MMIO exit is completed (stores with 0); the non-zero answers
    // are the UART's flag register, the refused probe, the refused read.
    let results: Vec<u64> = vm.mmio_data.iter().map(|(_, v)| *v).collect();
    assert_eq!(results.len(), 3 + 6 * 5);
    let neg_efault = -i64::from(errno::EFAULT) as u64;
    let nonzero: Vec<u64> = results.into_iter().filter(|v| *v != 0).collect();
    assert_eq!(nonzero, [0x90, 1, neg_efault]);
    assert_eq!(vm.hypercall_results, [(0, 0)], "CPU_ON accepted");
    assert_eq!(vm.punched, [(2 * MIB2 + 0x1000, 0x1000)]);
    assert!(
        !vm.private[(2 * MIB2) as usize / PAGE],
        "converted to shared"
    );
    // vCPU 1 got turns once vCPU 0's CPU_ON was answered.
    let first_1 = vm.runs.iter().position(|v| *v == 1).unwrap();
    assert_eq!(first_1, 3 + 1 + 5 * 5 + 2, "{:?}", vm.runs);
    let n = host.log.len();
    assert_eq!(
        host.log[n - 2..],
        [
            "vmm: 1 host accesses to guest-private memory were refused (EFAULT from the host \
             kernel)"
                .to_owned(),
            "vmm: teardown: VM closed; the host kernel reclaims and frees its pages (not \
             verifiable here)"
                .to_owned()
        ]
    );
}

#[test]
fn a_vm_the_host_stopped_exits_128_plus_the_signal() {
    use host_interface::vmm::Step;
    let k = kernel(0, 0x1000, 4096);
    let vm = ScriptedVm {
        exits: vec![Ok(host_interface::vm::VcpuExit::Interrupted)].into(),
        ..ScriptedVm::default()
    };
    let mut host = RecordingHost::default();
    let mut vmm = Vmm::create_with(config(&k, None, 1), |_| Ok((vm, None))).unwrap();
    vmm.load().unwrap();
    let result = host_interface::vmm::VmBackend::run_vcpu(vmm.vm(), 0);
    assert_eq!(vmm.handle_exit(0, result, &mut host), Step::Yield);
    let (report, _) = vmm.finish(Outcome::Stopped { signal: 2 }, &mut host);
    assert_eq!(report.exit_status(), 130);
    assert_eq!(report.meaning(), "stopped by the host");
    assert_eq!(host.log[0], "vmm: stopped by the host (signal 2)");
    assert!(host.log[2].contains("interrupted 1,"), "{:?}", host.log);
    let failed = VmmReport::failed(VmmError::Config("x"));
    assert_eq!(failed.exit_status(), STATUS_VMM_ERROR);
    // A run that fails to create its VM creates nothing.
    let mut called = false;
    let bad = VmmConfig {
        vcpus: 9,
        ..config(&k, None, 1)
    };
    let r = Vmm::<ScriptedVm>::create_with(bad, |_| {
        called = true;
        Ok((ScriptedVm::default(), None))
    });
    assert!(matches!(r, Err(VmmError::Config(_))));
    assert!(!called);
}
