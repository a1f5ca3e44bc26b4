//! The Linux host driver's C header (`host_interface/driver/pkvm_rs_uapi.h`)
//! and its Rust side (`host_interface::uapi`) must agree: the driver is
//! built from one, the userspace VMM from the other, and nothing else
//! would notice a drift until a VMM misread an exit on a real machine.
//!
//! Two checks: every numeric `#define` of the header is read as text and
//! compared with the Rust constant of the same meaning (no compiler
//! needed); and, where a C compiler is installed, a probe built from the
//! header prints its ioctl numbers, structure sizes and field offsets,
//! which are compared with the Rust types'. x86-64 and arm64 share Linux's
//! generic ioctl encoding and these structures' layouts (fixed-size
//! fields, natural alignment), so the host's compiler answers for arm64.

use host_interface::kvm::{
    self, KvmCreateGuestMemfd, KvmMemoryAttributes2, KvmUserspaceMemoryRegion2,
};
use host_interface::uapi::{self, IrqLevel, OneReg, Run, exit};
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host_interface/driver/pkvm_rs_uapi.h")
}

fn header() -> String {
    std::fs::read_to_string(header_path()).expect("pkvm_rs_uapi.h is readable")
}

/// Evaluates the constant expressions the header uses: a decimal or hex
/// literal with `U`/`UL`/`ULL` suffixes, optionally `(a << b)`.
fn eval(expr: &str) -> Option<u64> {
    let e = expr.trim();
    let e = e
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(e);
    if let Some((a, b)) = e.split_once("<<") {
        return Some(eval(a)? << eval(b)?);
    }
    let lit = e.trim_end_matches(['U', 'L', 'u', 'l']);
    match lit.strip_prefix("0x").or_else(|| lit.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => lit.parse().ok(),
    }
}

/// `PKVM_RS_*` defines with a numeric value (comments stripped).
fn numeric_defines(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("#define ") else {
            continue;
        };
        let rest = rest.split("/*").next().unwrap_or("").trim();
        let Some((name, value)) = rest.split_once(char::is_whitespace) else {
            continue;
        };
        if let Some(v) = eval(value) {
            out.insert(name.to_owned(), v);
        }
    }
    out
}

/// What each numeric define must equal on the Rust side.
fn rust_values() -> Vec<(&'static str, u64)> {
    vec![
        ("PKVM_RS_API_VERSION", u64::from(uapi::API_VERSION)),
        ("PKVM_RS_IO", u64::from(uapi::IO_TYPE)),
        ("PKVM_RS_IRQ_TYPE_SPI", u64::from(uapi::IRQ_TYPE_SPI)),
        ("PKVM_RS_REG_X0", uapi::REG_X0),
        ("PKVM_RS_REG_PC", uapi::REG_PC),
        ("PKVM_RS_EXIT_HYPERCALL", u64::from(exit::HYPERCALL)),
        ("PKVM_RS_EXIT_MMIO", u64::from(exit::MMIO)),
        ("PKVM_RS_EXIT_INTR", u64::from(exit::INTR)),
        (
            "PKVM_RS_EXIT_INTERNAL_ERROR",
            u64::from(exit::INTERNAL_ERROR),
        ),
        ("PKVM_RS_EXIT_SYSTEM_EVENT", u64::from(exit::SYSTEM_EVENT)),
        ("PKVM_RS_EXIT_MEMORY_FAULT", u64::from(exit::MEMORY_FAULT)),
        (
            "PKVM_RS_SYSTEM_EVENT_SHUTDOWN",
            u64::from(exit::SYSTEM_EVENT_SHUTDOWN),
        ),
        (
            "PKVM_RS_SYSTEM_EVENT_RESET",
            u64::from(exit::SYSTEM_EVENT_RESET),
        ),
        (
            "PKVM_RS_INTERNAL_STOPPED",
            u64::from(exit::INTERNAL_STOPPED),
        ),
        (
            "PKVM_RS_MEMORY_EXIT_FLAG_PRIVATE",
            kvm::KVM_MEMORY_EXIT_FLAG_PRIVATE,
        ),
    ]
}

#[test]
fn the_header_parser_reads_the_header_forms() {
    assert_eq!(eval("1"), Some(1));
    assert_eq!(eval("0xAE"), Some(0xae));
    assert_eq!(eval("0x6030000000100040ULL"), Some(0x6030_0000_0010_0040));
    assert_eq!(eval("(1U << 24)"), Some(1 << 24));
    assert_eq!(eval("(1ULL << 3)"), Some(8));
    assert_eq!(eval("\"/dev/pkvm-rs\""), None);
    assert_eq!(eval("_IO(PKVM_RS_IO, 0x00)"), None);
}

#[test]
fn every_numeric_define_matches_its_rust_constant() {
    let defines = numeric_defines(&header());
    let want = rust_values();
    for (name, rust) in &want {
        let c = defines
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing from pkvm_rs_uapi.h"));
        assert_eq!(*c, *rust, "{name}: header {c:#x}, Rust {rust:#x}");
    }
    // A define added to the header must be added here too.
    for name in defines.keys() {
        assert!(
            want.iter().any(|(n, _)| n == name),
            "{name} in pkvm_rs_uapi.h has no Rust counterpart checked here"
        );
    }
    assert!(
        header().contains(&format!("#define PKVM_RS_DEVICE \"{}\"", uapi::DEVICE)),
        "device node"
    );
}

/// The probe: C that prints `name value` lines from the header.
const PROBE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include "pkvm_rs_uapi.h"
#define N(x) printf("%s %llu\n", #x, (unsigned long long)(x))
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t))
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f))
int main(void) {
    N(PKVM_RS_GET_API_VERSION); N(PKVM_RS_CREATE_VM);
    N(PKVM_RS_GET_VCPU_MMAP_SIZE); N(PKVM_RS_CREATE_VCPU);
    N(PKVM_RS_SET_USER_MEMORY_REGION2); N(PKVM_RS_IRQ_LINE);
    N(PKVM_RS_RUN); N(PKVM_RS_SET_ONE_REG);
    N(PKVM_RS_SET_MEMORY_ATTRIBUTES2); N(PKVM_RS_CREATE_GUEST_MEMFD);
    S(pkvm_rs_run); S(pkvm_rs_irq_level); S(pkvm_rs_one_reg);
    S(pkvm_rs_create_guest_memfd); S(pkvm_rs_userspace_memory_region2);
    S(pkvm_rs_memory_attributes2);
    O(pkvm_rs_run, immediate_exit); O(pkvm_rs_run, exit_reason);
    O(pkvm_rs_run, cr8); O(pkvm_rs_run, apic_base); O(pkvm_rs_run, mmio);
    O(pkvm_rs_run, mmio.data); O(pkvm_rs_run, mmio.len);
    O(pkvm_rs_run, mmio.is_write); O(pkvm_rs_run, hypercall.args);
    O(pkvm_rs_run, hypercall.ret); O(pkvm_rs_run, memory_fault.gpa);
    O(pkvm_rs_run, memory_fault.size); O(pkvm_rs_run, internal.data);
    O(pkvm_rs_userspace_memory_region2, guest_phys_addr);
    O(pkvm_rs_userspace_memory_region2, guest_memfd_offset);
    O(pkvm_rs_userspace_memory_region2, guest_memfd);
    O(pkvm_rs_memory_attributes2, attributes);
    O(pkvm_rs_memory_attributes2, error_offset);
    return 0;
}
"#;

/// Builds and runs the probe; `None` (said on stderr) without a compiler
/// or Linux's uapi headers.
fn probe() -> Option<BTreeMap<String, u64>> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uapi-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let include = header_path().parent().unwrap().to_owned();
    let built = Command::new("cc")
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output();
    match built {
        Err(e) => {
            eprintln!("SKIPPED the C probe of pkvm_rs_uapi.h: no C compiler (cc: {e})");
            return None;
        }
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("linux/types.h") || err.contains("linux/ioctl.h") {
                eprintln!("SKIPPED the C probe of pkvm_rs_uapi.h: Linux uapi headers missing");
                return None;
            }
            panic!("the C probe of pkvm_rs_uapi.h does not build:\n{err}");
        }
        Ok(_) => {}
    }
    let out = Command::new(&bin).output().expect("the probe runs");
    assert!(out.status.success(), "the probe failed");
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect(),
    )
}

#[test]
fn the_compiled_header_has_the_rust_numbers_sizes_and_offsets() {
    let Some(c) = probe() else { return };
    let get = |k: &str| -> u64 { *c.get(k).unwrap_or_else(|| panic!("probe lacks {k}")) };
    let ioctls = [
        ("PKVM_RS_GET_API_VERSION", uapi::GET_API_VERSION),
        ("PKVM_RS_CREATE_VM", uapi::CREATE_VM),
        ("PKVM_RS_GET_VCPU_MMAP_SIZE", uapi::GET_VCPU_MMAP_SIZE),
        ("PKVM_RS_CREATE_VCPU", uapi::CREATE_VCPU),
        (
            "PKVM_RS_SET_USER_MEMORY_REGION2",
            uapi::SET_USER_MEMORY_REGION2,
        ),
        ("PKVM_RS_IRQ_LINE", uapi::IRQ_LINE),
        ("PKVM_RS_RUN", uapi::RUN),
        ("PKVM_RS_SET_ONE_REG", uapi::SET_ONE_REG),
        (
            "PKVM_RS_SET_MEMORY_ATTRIBUTES2",
            uapi::SET_MEMORY_ATTRIBUTES2,
        ),
        ("PKVM_RS_CREATE_GUEST_MEMFD", uapi::CREATE_GUEST_MEMFD),
    ];
    for (name, rust) in ioctls {
        assert_eq!(get(name), u64::from(rust), "{name}");
    }
    let sizes = [
        ("pkvm_rs_run", size_of::<Run>()),
        ("pkvm_rs_irq_level", size_of::<IrqLevel>()),
        ("pkvm_rs_one_reg", size_of::<OneReg>()),
        (
            "pkvm_rs_create_guest_memfd",
            size_of::<KvmCreateGuestMemfd>(),
        ),
        (
            "pkvm_rs_userspace_memory_region2",
            size_of::<KvmUserspaceMemoryRegion2>(),
        ),
        (
            "pkvm_rs_memory_attributes2",
            size_of::<KvmMemoryAttributes2>(),
        ),
    ];
    for (name, rust) in sizes {
        assert_eq!(get(&format!("sizeof {name}")), rust as u64, "sizeof {name}");
    }
    // The run page: the Rust side keeps the union as bytes at `exit` and
    // decodes it by offset (uapi.rs's accessors); these are those offsets.
    let union = offset_of!(Run, exit) as u64;
    let run = [
        ("immediate_exit", offset_of!(Run, immediate_exit) as u64),
        ("exit_reason", offset_of!(Run, exit_reason) as u64),
        ("cr8", offset_of!(Run, cr8) as u64),
        ("apic_base", offset_of!(Run, apic_base) as u64),
        ("mmio", union),
        ("mmio.data", union + 8),
        ("mmio.len", union + 16),
        ("mmio.is_write", union + 20),
        ("hypercall.args", union + 8),
        ("hypercall.ret", union + 56),
        ("memory_fault.gpa", union + 8),
        ("memory_fault.size", union + 16),
        ("internal.data", union + 8),
    ];
    for (field, rust) in run {
        assert_eq!(
            get(&format!("offsetof pkvm_rs_run.{field}")),
            rust,
            "pkvm_rs_run.{field}"
        );
    }
    assert_eq!(union, 32);
    let region = [
        (
            "guest_phys_addr",
            offset_of!(KvmUserspaceMemoryRegion2, guest_phys_addr),
        ),
        (
            "guest_memfd_offset",
            offset_of!(KvmUserspaceMemoryRegion2, guest_memfd_offset),
        ),
        (
            "guest_memfd",
            offset_of!(KvmUserspaceMemoryRegion2, guest_memfd),
        ),
    ];
    for (field, rust) in region {
        assert_eq!(
            get(&format!(
                "offsetof pkvm_rs_userspace_memory_region2.{field}"
            )),
            rust as u64,
            "{field}"
        );
    }
    assert_eq!(
        get("offsetof pkvm_rs_memory_attributes2.attributes"),
        offset_of!(KvmMemoryAttributes2, attributes) as u64
    );
    assert_eq!(
        get("offsetof pkvm_rs_memory_attributes2.error_offset"),
        offset_of!(KvmMemoryAttributes2, error_offset) as u64
    );
}

/// The Rust decoders read the union at the offsets the probe pins.
#[test]
fn the_run_page_accessors_read_the_c_offsets() {
    let mut run = Run::default();
    let put = |run: &mut Run, at: usize, bytes: &[u8]| {
        run.exit[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut run, 0, &0x0900_0000u64.to_le_bytes());
    put(&mut run, 8, &[1, 2, 3, 4, 0, 0, 0, 0]);
    put(&mut run, 16, &4u32.to_le_bytes());
    put(&mut run, 20, &[1]);
    let m = run.mmio();
    assert_eq!(
        (m.phys_addr, m.data, m.len, m.is_write),
        (0x0900_0000, [1, 2, 3, 4, 0, 0, 0, 0], 4, true)
    );
    let mut run = Run::default();
    put(
        &mut run,
        0,
        &kvm::KVM_MEMORY_EXIT_FLAG_PRIVATE.to_le_bytes(),
    );
    put(&mut run, 8, &0x8000_0000u64.to_le_bytes());
    put(&mut run, 16, &0x2000u64.to_le_bytes());
    let f = run.memory_fault();
    assert_eq!(
        (f.flags, f.gpa, f.size),
        (kvm::KVM_MEMORY_EXIT_FLAG_PRIVATE, 0x8000_0000, 0x2000)
    );
    let mut run = Run::default();
    run.set_hypercall_ret(7);
    assert_eq!(run.exit[56..64], 7u64.to_le_bytes());
}
