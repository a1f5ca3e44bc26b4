//! The ABI both the hypervisor and its host compile against.
//!
//! Not implemented yet: the hypercall table, the guest_memfd model and the
//! VMM API land with the hypervisor-core and guest_memfd issues. The crate
//! exists so the workspace layout is complete and builds for both targets.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
