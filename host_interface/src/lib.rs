//! The ABI both the hypervisor and its host compile against.
//!
//! - [`abi`]: host call ids, arguments and errno values, guest call ids,
//!   and the exit record `VcpuRun` returns — one numbered table.
//!
//! The guest_memfd model and the VMM API land with the guest_memfd issue.
//! This crate must not depend on `el2`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod abi;
