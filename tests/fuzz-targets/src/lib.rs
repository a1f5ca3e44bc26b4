//! The fuzz targets' logic, as plain functions of the input bytes, shared
//! by the cargo-fuzz crate (`fuzz/`, nightly, coverage-guided) and the
//! stable replay test (`tests/replay.rs`: every seed corpus file, then
//! random inputs with a fixed seed).
//!
//! | target | what | checked after every step |
//! |---|---|---|
//! | [`host_call`] | the host call decoder and dispatcher, any registers | [`machine::Oracle`] |
//! | [`guest_call`] | the guest call handler through `VcpuRun` | [`machine::Oracle`] |
//! | [`boot_image`] | boot image and vendor boot parsing, the load planner | (pure: the parse and plan contracts) |
//! | [`device_tree`] | validate, strip_nops, Platform::parse, write_host_tree | (pure: the tree el2 writes) |
//! | [`vm_layer`] | `KvmVm`: guest_memfds, memslots, conversions, runs | [`machine::Oracle`] |
//!
//! Inputs are decoded by hand ([`input`]): a step is an opcode byte and
//! aimed selectors, so a mutation changes one meaningful value and every
//! target has an encoder its hand-made seeds are written with.

pub mod boot_image;
pub mod device_tree;
pub mod guest_call;
pub mod guest_ops;
pub mod host_call;
pub mod input;
pub mod machine;
pub mod seeds;
pub mod vm_layer;

/// A target: its name (the cargo-fuzz binary and corpus directory) and
/// its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 5] = [
    ("host_call", host_call::run),
    ("guest_call", guest_call::run),
    ("boot_image", boot_image::run),
    ("device_tree", device_tree::run),
    ("vm_layer", vm_layer::run),
];
