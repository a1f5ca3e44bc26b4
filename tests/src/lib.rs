//! Conformance and QEMU tests for the hypervisor.
//!
//! The test files live in `tests/tests/`; this library holds helpers they
//! share. Conformance suites land with the ownership, hypervisor-core and
//! guest_memfd issues, QEMU boot tests with the boot issue.
