//! Page ownership table and memory transitions between the host, the
//! hypervisor and protected guests.
//!
//! Not implemented yet: this crate is filled by the ownership issue. It
//! exists so the workspace layout is complete and builds for both targets.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
