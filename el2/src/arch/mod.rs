//! The aarch64 edge of el2 (`target_os = "none"` only): boot, exception
//! vectors, the host's traps, the vCPU world switch, the GIC and timer
//! handling around it, and the PSCI relay.
//!
//! - Boot: [`boot`] (the sequence), [`entry`] (Image header, `_start`,
//!   vectors, the assembly edge), [`mmu`], `el2::fdt`, [`layout`],
//!   [`hostimg`], [`mem`], [`percpu`], [`console`]/[`pl011`].
//! - The host's traps: [`trap`] (dispatch), [`hvc`] (host calls into the
//!   core), [`psci`] (the PSCI relay), [`abort`] (stage-2 faults: injected
//!   aborts), [`inject`] (exceptions el2 makes a lower EL take).
//! - Guests: [`vcpu`] (the world switch: el2's `Arch` for the core),
//!   [`guest_sysreg`] (trapped system registers, ID register
//!   sanitising), [`timer`] (the host's and the guests' timers),
//!   [`gic`] (the GICv3 CPU interface and redistributors).
//! - Devices that write memory by physical address: [`its`] (the GICv3
//!   ITS), [`gicr_lpi`] (the redistributors' LPI tables), [`devpin`] (the
//!   host memory they use), [`lograte`] (host-triggered warnings).
//! - [`residency`]: el2's time in the host's traps, by kind, logged when
//!   the host powers off or resets.
//!
//! From the host's first instruction on, el2 runs only in its trap
//! handlers ([`trap`]): host calls ([`hvc`], which runs vCPUs through
//! [`vcpu`]), the PSCI relay ([`psci`]; CPU_ON brings secondaries up
//! through [`boot::secondary_main`]) and stage-2 faults ([`abort`]).

#[cfg(not(target_arch = "aarch64"))]
compile_error!("the el2 binary only supports aarch64 bare-metal targets (aarch64-unknown-none)");

mod abort;
mod boot;
mod console;
mod devpin;
mod entry;
mod exit;
mod gic;
mod gicr_lpi;
mod guest_sysreg;
mod host;
mod hostimg;
mod hvc;
mod inject;
mod its;
pub mod layout;
mod lograte;
mod mem;
mod mmu;
mod percpu;
mod pl011;
mod psci;
mod residency;
mod sysreg;
mod timer;
mod trap;
mod vcpu;
