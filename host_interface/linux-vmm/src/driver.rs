//! The VM backend over the pkvm-rs Linux host driver (`/dev/pkvm-rs`):
//! [`LinuxVm`] implements the VMM library's
//! [`VmBackend`] with the driver's ioctls, exactly as
//! `host_interface::uapi` (and `host_interface/driver/pkvm_rs_uapi.h`)
//! define them.
//!
//! | backend call | ioctl / system call |
//! |---|---|
//! | [`LinuxVm::open`] | `open(/dev/pkvm-rs)`, `KVM_GET_API_VERSION` (must be 1), `KVM_CREATE_VM(vcpus)`, `KVM_GET_VCPU_MMAP_SIZE`, per vCPU `KVM_CREATE_VCPU(i)` + `mmap` of its run page |
//! | `create_guest_memfd` | `KVM_CREATE_GUEST_MEMFD` on the VM fd, then `mmap(MAP_SHARED)` of the whole file (with `GUEST_MEMFD_FLAG_MMAP`) |
//! | `set_memory_region` | `KVM_SET_USER_MEMORY_REGION2` on the VM fd (`guest_memfd` is the fd: a [`GmemId`] here *is* the guest_memfd's fd) |
//! | `set_memory_attributes` | `KVM_SET_MEMORY_ATTRIBUTES2` on the guest_memfd (the driver writes `error_offset` back on failure) |
//! | `gmem_read` / `gmem_write` | the guest_memfd mapping, copied by the kernel ([`Bounce`]): a private page is `EFAULT`, never a SIGBUS |
//! | `gmem_punch_hole` | `fallocate(PUNCH_HOLE \| KEEP_SIZE)` on the guest_memfd |
//! | `gmem_allocate` | `fallocate(KEEP_SIZE)`: the loader backs the 2 MiB blocks a file touches first, so the driver gives them 2 MiB folios (a driver without it, `EOPNOTSUPP`, is left to back them on first touch) |
//! | `init_boot_vcpu` | `KVM_SET_ONE_REG` PC and X0 on vCPU 0 |
//! | `set_irq_line` | `KVM_IRQ_LINE` with `KVM_ARM_IRQ_TYPE_SPI << 24 \| intid` |
//! | `run_vcpu` | `KVM_RUN` on the vCPU fd, the exit decoded from its run page ([`decode_exit`]) |
//! | `set_mmio_data` / `set_hypercall_result` | written into the run page for the next `KVM_RUN` |
//! | `probe` | a one-page read through the guest_memfd mapping (the most direct access userspace has; refused = `EFAULT`) |
//! | `destroy` | `munmap` and `close` everything: the driver tears the VM down at el2 when its last fd closes ([`Teardown::Closed`]) |
//!
//! Exits the driver resolves itself (stage-2 faults, the memcache, WFI,
//! an off vCPU waiting for `CPU_ON`, host interrupts) never reach
//! userspace: `KVM_RUN` blocks in the driver. A signal makes it return
//! `EINTR` ([`VcpuExit::Interrupted`]); so does `immediate_exit`
//! ([`VcpuRunner::request_exit`]), set before the signal so a vCPU about
//! to enter `KVM_RUN` cannot miss it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, Ordering};

use host_interface::gmem::{MmapError, PAGE};
use host_interface::kvm::{
    GUEST_MEMFD_FLAG_MMAP, KvmCreateGuestMemfd, KvmMemoryAttributes2, KvmUserspaceMemoryRegion2,
};
use host_interface::uapi::{self, IrqLevel, OneReg, Run, exit};
use host_interface::vm::{GmemId, UnhandledAccess, VcpuExit, Vm};
use host_interface::vmm::backend::{Probe, VmBackend};
use host_interface::vmm::teardown::{HostStats, Teardown, TeardownError};

/// The errno of the last failed system call.
fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `ioctl(fd, request, arg)`: the result, or the errno.
///
/// # Safety
///
/// `arg` must be what `request` expects: a value, or a pointer to a live
/// structure of the request's size (written back for `_IOWR` requests).
unsafe fn ioctl(fd: RawFd, request: u32, arg: libc::c_ulong) -> Result<libc::c_int, i32> {
    // The request is `c_ulong` for glibc and `c_int` for musl; the kernel
    // takes the low 32 bits either way.
    // SAFETY: the caller's contract.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

/// A pointer as an ioctl argument.
fn arg<T>(p: *const T) -> libc::c_ulong {
    p as usize as libc::c_ulong
}

/// A shared mapping of `len` bytes of `fd` from offset 0, unmapped on
/// drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize) -> Result<Mapping, i32> {
        // SAFETY: a fresh mapping chosen by the kernel; nothing of ours is
        // there.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_errno());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or(libc::EINVAL)?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing refers to it any more (its
        // owner is being dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Copies between our memory and a mapping that may refuse an access
/// (a guest_memfd's private pages are SIGBUS to a userspace load or
/// store), through the kernel: `pwrite`/`pread` on a memfd. The kernel's
/// copy from or to the mapping faults like a userspace access would, but
/// a kernel-mode fault it cannot resolve is `EFAULT` for the system call,
/// not a signal: the VMM learns where the refusal is and carries on.
pub struct Bounce {
    fd: OwnedFd,
}

/// The most one `pwrite`/`pread` pair of [`Bounce`] copies.
const BOUNCE_CHUNK: usize = 1 << 20;

impl Bounce {
    /// An empty memfd.
    pub fn new() -> Result<Bounce, i32> {
        // SAFETY: a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"pkvm-vmm-copy".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_errno());
        }
        Ok(Bounce { fd: owned(fd) })
    }

    /// `pwrite` of all of `len` bytes at `src` to the memfd's start, or
    /// as many as the kernel could read.
    fn put(&self, src: *const u8, len: usize) -> usize {
        let mut done = 0;
        while done < len {
            // SAFETY: the kernel reads user memory at `src + done` and
            // reports an unreadable byte as EFAULT.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    src.wrapping_add(done).cast(),
                    len - done,
                    done as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                -1 if last_errno() == libc::EINTR => {}
                _ => break,
            }
        }
        done
    }

    /// `pread` of `len` bytes at the memfd's start into `dst`, or as many
    /// as the kernel could write.
    fn get(&self, dst: *mut u8, len: usize) -> usize {
        let mut done = 0;
        while done < len {
            // SAFETY: the kernel writes user memory at `dst + done` (the
            // callers' contracts say it may) and reports an unwritable
            // byte as EFAULT.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    dst.wrapping_add(done).cast(),
                    len - done,
                    done as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                -1 if last_errno() == libc::EINTR => {}
                _ => break,
            }
        }
        done
    }

    /// Copies `dst.len()` bytes from `src` into `dst`; `Err(n)`: the
    /// kernel could not read `src + n` (bytes before it are copied).
    ///
    /// # Safety
    ///
    /// None needed for `src`: any address is either readable or refused.
    /// (It is `unsafe` for symmetry with [`Bounce::write_to`] only.)
    pub unsafe fn read_from(&self, src: *const u8, dst: &mut [u8]) -> Result<(), usize> {
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(BOUNCE_CHUNK);
            let got = self.put(src.wrapping_add(done), n);
            let back = self.get(dst[done..].as_mut_ptr(), got);
            done += back;
            if back < n {
                return Err(done);
            }
        }
        Ok(())
    }

    /// Copies `src` to `dst`; `Err(n)`: the kernel could not write
    /// `dst + n` (bytes before it are copied).
    ///
    /// # Safety
    ///
    /// `[dst, dst + src.len())` must be memory the caller may have the
    /// kernel write (a mapping no Rust reference points into), or
    /// unmapped/refused memory (`EFAULT`).
    pub unsafe fn write_to(&self, dst: *mut u8, src: &[u8]) -> Result<(), usize> {
        let mut done = 0;
        while done < src.len() {
            let n = (src.len() - done).min(BOUNCE_CHUNK);
            let put = self.put(src[done..].as_ptr(), n);
            if put < n {
                // Our own buffer is always readable; the memfd is full.
                return Err(done);
            }
            let back = self.get(dst.wrapping_add(done), n);
            done += back;
            if back < n {
                return Err(done);
            }
        }
        Ok(())
    }
}

/// Decodes the exit a `KVM_RUN` that returned 0 left in `run`.
///
/// | `exit_reason` | [`VcpuExit`] |
/// |---|---|
/// | `KVM_EXIT_MMIO` | `Mmio` (`len` must be 1, 2, 4 or 8; a write's `data` little-endian) |
/// | `KVM_EXIT_HYPERCALL` | `Hypercall { id: nr, args: args[0..3] }` |
/// | `KVM_EXIT_SYSTEM_EVENT` | `SystemEvent(0)` for SHUTDOWN, `SystemEvent(1)` for RESET, any other type `t` ≥ 3 as `SystemEvent(t)` (the VMM reports it unknown) |
/// | `KVM_EXIT_MEMORY_FAULT` | `MemoryFault { gpa, size, flags }` |
/// | `KVM_EXIT_INTERNAL_ERROR` | `InternalError { ec: data[0] }` for the `STOPPED` suberror |
/// | anything else | `Err(EPROTO)` |
pub fn decode_exit(run: &Run) -> Result<VcpuExit, i32> {
    match run.exit_reason {
        exit::MMIO => {
            let m = run.mmio();
            let size = match m.len {
                1 | 2 | 4 | 8 => m.len as u8,
                _ => return Err(libc::EPROTO),
            };
            Ok(VcpuExit::Mmio {
                address: m.phys_addr,
                size,
                write: m.is_write,
                data: if m.is_write {
                    u64::from_le_bytes(m.data)
                } else {
                    0
                },
            })
        }
        exit::HYPERCALL => {
            let h = run.hypercall();
            Ok(VcpuExit::Hypercall {
                id: h.nr,
                args: [h.args[0], h.args[1], h.args[2]],
            })
        }
        exit::SYSTEM_EVENT => match run.system_event() {
            exit::SYSTEM_EVENT_SHUTDOWN => Ok(VcpuExit::SystemEvent(0)),
            exit::SYSTEM_EVENT_RESET => Ok(VcpuExit::SystemEvent(1)),
            0 => Err(libc::EPROTO),
            t => Ok(VcpuExit::SystemEvent(u64::from(t))),
        },
        exit::MEMORY_FAULT => {
            let f = run.memory_fault();
            Ok(VcpuExit::MemoryFault {
                gpa: f.gpa,
                size: f.size,
                flags: f.flags,
            })
        }
        exit::INTERNAL_ERROR => match run.internal() {
            (exit::INTERNAL_STOPPED, ec) => Ok(VcpuExit::InternalError { ec }),
            _ => Err(libc::EPROTO),
        },
        _ => Err(libc::EPROTO),
    }
}

/// The `KVM_IRQ_LINE` argument for SPI `intid` at `level`.
pub fn irq_level(intid: u32, high: bool) -> IrqLevel {
    IrqLevel {
        irq: uapi::IRQ_TYPE_SPI | intid,
        level: u32::from(high),
    }
}

/// What runs one vCPU: its fd and its run page. Cheap to copy, `Send`:
/// each vCPU thread has its own.
#[derive(Clone, Copy, Debug)]
pub struct VcpuRunner {
    fd: RawFd,
    run: NonNull<Run>,
}

// SAFETY: the run page is shared memory the kernel and the vCPU's thread
// use in turn (the kernel only during KVM_RUN); the one field another
// thread touches, `immediate_exit`, is written atomically.
unsafe impl Send for VcpuRunner {}
// SAFETY: as for Send: `&VcpuRunner` only allows `request_exit` from
// another thread.
unsafe impl Sync for VcpuRunner {}

impl VcpuRunner {
    /// The run page's exit fields, as the kernel left them.
    fn page(&self) -> Run {
        let p = self.run.as_ptr();
        // SAFETY: the run page is mapped while the runner may be used
        // (`LinuxVm::runner`'s contract); only the exit fields are read,
        // which nothing writes while this vCPU's thread is here.
        unsafe {
            Run {
                exit_reason: ptr::read_volatile(&raw const (*p).exit_reason),
                exit: ptr::read_volatile(&raw const (*p).exit),
                ..Run::default()
            }
        }
    }

    /// Changes the exit union for the next `KVM_RUN`.
    fn complete(&self, f: impl FnOnce(&mut Run)) {
        let mut r = self.page();
        f(&mut r);
        // SAFETY: as for `page`.
        unsafe { ptr::write_volatile(&raw mut (*self.run.as_ptr()).exit, r.exit) };
    }

    /// `KVM_RUN`: the exit, [`VcpuExit::Interrupted`] on `EINTR` (a signal
    /// or `immediate_exit`), or the errno.
    pub fn run(&self) -> Result<VcpuExit, i32> {
        // SAFETY: KVM_RUN takes no argument; the driver writes the run
        // page, which stays mapped (the runner's contract).
        match unsafe { ioctl(self.fd, uapi::RUN, 0) } {
            Ok(_) => decode_exit(&self.page()),
            Err(libc::EINTR) => Ok(VcpuExit::Interrupted),
            Err(e) => Err(e),
        }
    }

    /// Sets `immediate_exit`: this vCPU's next (or current, with a signal
    /// to its thread) `KVM_RUN` returns `EINTR`.
    pub fn request_exit(&self) {
        // SAFETY: `immediate_exit` is byte 1 of the mapped run page, a
        // byte the kernel reads and this is the only writer; an atomic
        // store keeps it a single access.
        let flag = unsafe { AtomicU8::from_ptr(self.run.as_ptr().cast::<u8>().add(1)) };
        flag.store(1, Ordering::SeqCst);
    }

    /// The MMIO read's answer.
    pub fn set_mmio_data(&self, value: u64) {
        self.complete(|r| r.set_mmio_data(value.to_le_bytes()));
    }

    /// The hypercall's answer (x0; the driver's ABI has no x1).
    pub fn set_hypercall_ret(&self, x0: u64) {
        self.complete(|r| r.set_hypercall_ret(x0));
    }
}

struct Vcpu {
    fd: OwnedFd,
    page: Mapping,
}

impl Vcpu {
    fn runner(&self) -> VcpuRunner {
        VcpuRunner {
            fd: self.fd.as_raw_fd(),
            run: self.page.ptr.cast(),
        }
    }
}

struct Gmem {
    fd: OwnedFd,
    size: u64,
    map: Option<Mapping>,
}

/// A protected VM of the Linux driver.
pub struct LinuxVm {
    vm: OwnedFd,
    vcpus: Vec<Vcpu>,
    gmems: Vec<Gmem>,
    bounce: Bounce,
}

// SAFETY: the raw pointers are our own mappings (run pages, guest_memfd
// mappings), used through `&mut self` or by the kernel; a `VcpuRunner`
// handed to another thread is covered by `LinuxVm::runner`'s contract.
unsafe impl Send for LinuxVm {}

/// Opening the driver or creating the VM failed: the step and the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenError {
    /// What failed.
    pub what: &'static str,
    /// The errno.
    pub errno: i32,
}

fn step<T>(what: &'static str, r: Result<T, i32>) -> Result<T, OpenError> {
    r.map_err(|errno| OpenError { what, errno })
}

/// A fresh fd a system call returned (not negative).
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: a fresh fd the kernel just created for us, owned by nothing
    // else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl LinuxVm {
    /// Opens `device`, checks its API version, creates a VM with `vcpus`
    /// vCPUs and maps each vCPU's run page.
    pub fn open(device: &Path, vcpus: usize) -> Result<LinuxVm, OpenError> {
        let path = std::ffi::CString::new(device.as_os_str().as_encoded_bytes()).map_err(|_| {
            OpenError {
                what: "opening the driver's device (a NUL in its path)",
                errno: libc::EINVAL,
            }
        })?;
        // SAFETY: a NUL-terminated path; the result is checked.
        let dev = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if dev < 0 {
            return Err(OpenError {
                what: "opening the driver's device",
                errno: last_errno(),
            });
        }
        let dev = owned(dev);
        let d = dev.as_raw_fd();
        // SAFETY: GET_API_VERSION, CREATE_VM and GET_VCPU_MMAP_SIZE take
        // values, not pointers.
        let version = step("KVM_GET_API_VERSION", unsafe {
            ioctl(d, uapi::GET_API_VERSION, 0)
        })?;
        if version as u32 != uapi::API_VERSION {
            return Err(OpenError {
                what: "checking the driver's API version (KVM_GET_API_VERSION is not 1)",
                errno: libc::EPROTO,
            });
        }
        // SAFETY: as above.
        let vm = owned(step("creating the VM (KVM_CREATE_VM)", unsafe {
            ioctl(d, uapi::CREATE_VM, vcpus as libc::c_ulong)
        })?);
        // SAFETY: as above.
        let size = step("KVM_GET_VCPU_MMAP_SIZE", unsafe {
            ioctl(d, uapi::GET_VCPU_MMAP_SIZE, 0)
        })? as usize;
        if size < size_of::<Run>() {
            return Err(OpenError {
                what: "KVM_GET_VCPU_MMAP_SIZE is smaller than the run page's fields",
                errno: libc::EPROTO,
            });
        }
        let mut list = Vec::with_capacity(vcpus);
        for i in 0..vcpus {
            // SAFETY: CREATE_VCPU takes the index as a value.
            let fd = owned(step("creating a vCPU (KVM_CREATE_VCPU)", unsafe {
                ioctl(vm.as_raw_fd(), uapi::CREATE_VCPU, i as libc::c_ulong)
            })?);
            let page = step(
                "mapping a vCPU's run page",
                Mapping::new(fd.as_raw_fd(), size),
            )?;
            list.push(Vcpu { fd, page });
        }
        let bounce = step("creating the copy buffer (memfd_create)", Bounce::new())?;
        Ok(LinuxVm {
            vm,
            vcpus: list,
            gmems: Vec::new(),
            bounce,
        })
    }

    /// What runs vCPU `index`, for its own thread.
    ///
    /// # Safety
    ///
    /// The runner points into this VM's run page: the caller stops using
    /// it before the VM is destroyed or dropped.
    pub unsafe fn runner(&self, index: usize) -> Option<VcpuRunner> {
        self.vcpus.get(index).map(Vcpu::runner)
    }

    fn gmem(&self, id: GmemId) -> Option<&Gmem> {
        self.gmems.iter().find(|g| g.fd.as_raw_fd() as u32 == id.0)
    }

    /// The mapping of `[offset, offset + len)` of guest_memfd `id`.
    fn span(&self, id: GmemId, offset: u64, len: usize) -> Result<*mut u8, MmapError> {
        let g = self.gmem(id).ok_or(MmapError::NoMmap)?;
        let map = g.map.as_ref().ok_or(MmapError::NoMmap)?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > g.size) {
            return Err(MmapError::Sigbus {
                offset: g.size.max(offset),
            });
        }
        Ok(map.ptr.as_ptr().wrapping_add(offset as usize))
    }

    fn fallocate(&self, gmem: GmemId, mode: libc::c_int, offset: u64, len: u64) -> Result<(), i32> {
        let fd = self.gmem(gmem).ok_or(libc::EBADF)?.fd.as_raw_fd();
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(libc::EINVAL);
        };
        // SAFETY: fallocate on our guest_memfd touches no memory of ours.
        if unsafe { libc::fallocate(fd, mode, o, l) } < 0 {
            Err(last_errno())
        } else {
            Ok(())
        }
    }

    fn vcpu(&self, index: usize) -> Option<VcpuRunner> {
        self.vcpus.get(index).map(Vcpu::runner)
    }

    fn set_reg(&self, id: u64, value: u64) -> Result<(), i32> {
        let vcpu = self.vcpus.first().ok_or(libc::EINVAL)?;
        let reg = OneReg {
            id,
            addr: &raw const value as usize as u64,
        };
        // SAFETY: SET_ONE_REG reads a `kvm_one_reg` whose `addr` points to
        // a u64; both live across the call.
        unsafe { ioctl(vcpu.fd.as_raw_fd(), uapi::SET_ONE_REG, arg(&raw const reg)) }.map(|_| ())
    }
}

impl Vm for LinuxVm {
    fn create_guest_memfd(&mut self, args: &KvmCreateGuestMemfd) -> Result<GmemId, i32> {
        let mut a = *args;
        // SAFETY: CREATE_GUEST_MEMFD reads (and may write back) a
        // 64-byte `kvm_create_guest_memfd`; a copy lives across the call.
        let fd = owned(unsafe {
            ioctl(
                self.vm.as_raw_fd(),
                uapi::CREATE_GUEST_MEMFD,
                arg(&raw mut a),
            )
        }?);
        let map = if args.flags & GUEST_MEMFD_FLAG_MMAP != 0 {
            let len = usize::try_from(args.size).map_err(|_| libc::ENOMEM)?;
            Some(Mapping::new(fd.as_raw_fd(), len)?)
        } else {
            None
        };
        let id = GmemId(fd.as_raw_fd() as u32);
        self.gmems.push(Gmem {
            fd,
            size: args.size,
            map,
        });
        Ok(id)
    }

    fn set_memory_region(&mut self, region: &KvmUserspaceMemoryRegion2) -> Result<(), i32> {
        if self.gmem(GmemId(region.guest_memfd)).is_none() {
            return Err(libc::EBADF);
        }
        // SAFETY: SET_USER_MEMORY_REGION2 reads a 160-byte
        // `kvm_userspace_memory_region2`, live across the call.
        unsafe {
            ioctl(
                self.vm.as_raw_fd(),
                uapi::SET_USER_MEMORY_REGION2,
                arg(ptr::from_ref(region)),
            )
        }
        .map(|_| ())
    }

    fn set_memory_attributes(
        &mut self,
        gmem: GmemId,
        attrs: &mut KvmMemoryAttributes2,
    ) -> Result<(), i32> {
        let fd = self.gmem(gmem).ok_or(libc::EBADF)?.fd.as_raw_fd();
        // SAFETY: SET_MEMORY_ATTRIBUTES2 reads and writes back a 128-byte
        // `kvm_memory_attributes2` (`error_offset` on failure), live and
        // exclusively ours across the call.
        unsafe { ioctl(fd, uapi::SET_MEMORY_ATTRIBUTES2, arg(ptr::from_mut(attrs))) }.map(|_| ())
    }
}

impl VmBackend for LinuxVm {
    type Remains = ();

    fn gmem_size(&self, gmem: GmemId) -> Option<u64> {
        self.gmem(gmem).map(|g| g.size)
    }

    fn gmem_read(&mut self, gmem: GmemId, offset: u64, buf: &mut [u8]) -> Result<(), MmapError> {
        let src = self.span(gmem, offset, buf.len())?;
        // SAFETY: reading through the kernel needs no promise.
        unsafe { self.bounce.read_from(src, buf) }.map_err(|n| MmapError::Sigbus {
            offset: offset + n as u64,
        })
    }

    fn gmem_write(&mut self, gmem: GmemId, offset: u64, data: &[u8]) -> Result<(), MmapError> {
        let dst = self.span(gmem, offset, data.len())?;
        // SAFETY: `dst` is inside our guest_memfd mapping, which no Rust
        // reference points into.
        unsafe { self.bounce.write_to(dst, data) }.map_err(|n| MmapError::Sigbus {
            offset: offset + n as u64,
        })
    }

    fn gmem_punch_hole(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        self.fallocate(
            gmem,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn huge_folios(&self) -> bool {
        true
    }

    fn gmem_allocate(&mut self, gmem: GmemId, offset: u64, len: u64) -> Result<(), i32> {
        match self.fallocate(gmem, libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Err(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn init_boot_vcpu(&mut self, pc: u64, x0: u64) -> Result<(), i32> {
        self.set_reg(uapi::REG_PC, pc)?;
        self.set_reg(uapi::REG_X0, x0)
    }

    fn set_irq_line(&mut self, intid: u32, high: bool) -> Result<(), i32> {
        let level = irq_level(intid, high);
        // SAFETY: IRQ_LINE reads an 8-byte `kvm_irq_level`, live across
        // the call.
        unsafe { ioctl(self.vm.as_raw_fd(), uapi::IRQ_LINE, arg(&raw const level)) }.map(|_| ())
    }

    fn run_vcpu(&mut self, index: usize) -> Result<VcpuExit, i32> {
        self.vcpu(index).ok_or(libc::EINVAL)?.run()
    }

    fn set_mmio_data(&mut self, index: usize, value: u64) {
        if let Some(v) = self.vcpu(index) {
            v.set_mmio_data(value);
        }
    }

    fn set_hypercall_result(&mut self, index: usize, x0: u64, _x1: u64) {
        if let Some(v) = self.vcpu(index) {
            v.set_hypercall_ret(x0);
        }
    }

    fn unhandled_access(&self) -> Option<UnhandledAccess> {
        None
    }

    fn probe(&mut self, gmem: GmemId, offset: u64) -> Probe {
        let mut page = vec![0u8; PAGE as usize];
        match self.gmem_read(gmem, offset - offset % PAGE, &mut page) {
            Ok(()) => Probe::Read,
            Err(MmapError::Sigbus { .. }) => Probe::Refused,
            Err(MmapError::NoMmap) => Probe::Unbacked,
        }
    }

    fn destroy(
        self,
        _baseline: Option<HostStats>,
    ) -> (Result<Teardown, TeardownError>, Option<Self::Remains>) {
        // Mappings first, then the vCPU and guest_memfd fds, then the VM's:
        // the driver tears the VM down when the last one closes.
        drop(self);
        (Ok(Teardown::Closed), Some(()))
    }
}

impl Drop for LinuxVm {
    fn drop(&mut self) {
        for g in &mut self.gmems {
            g.map = None;
        }
        self.gmems.clear();
        self.vcpus.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_interface::kvm::KVM_MEMORY_EXIT_FLAG_PRIVATE;

    /// A run page with `reason` and the union's bytes at KVM's offsets
    /// (`pkvm_rs_uapi.h`: the union starts at byte 32 of the page).
    fn page(reason: u32, union: &[(usize, &[u8])]) -> Run {
        let mut bytes = [0u8; size_of::<Run>()];
        bytes[8..12].copy_from_slice(&reason.to_le_bytes());
        for (at, b) in union {
            bytes[32 + at..32 + at + b.len()].copy_from_slice(b);
        }
        // SAFETY: `Run` is repr(C) plain bytes and integers, every bit
        // pattern valid, of exactly this size.
        unsafe { std::mem::transmute::<[u8; size_of::<Run>()], Run>(bytes) }
    }

    #[test]
    fn mmio_exits_decode_at_kvms_offsets() {
        let w = page(
            6,
            &[
                (0, &0x0900_0000u64.to_le_bytes()),
                (8, &[0x41, 0, 0, 0, 0, 0, 0, 0]),
                (16, &1u32.to_le_bytes()),
                (20, &[1]),
            ],
        );
        assert_eq!(
            decode_exit(&w),
            Ok(VcpuExit::Mmio {
                address: 0x0900_0000,
                size: 1,
                write: true,
                data: 0x41
            })
        );
        let r = page(
            6,
            &[
                (0, &0x0a00_0028u64.to_le_bytes()),
                (8, &[0xff; 8]),
                (16, &8u32.to_le_bytes()),
            ],
        );
        assert_eq!(
            decode_exit(&r),
            Ok(VcpuExit::Mmio {
                address: 0x0a00_0028,
                size: 8,
                write: false,
                data: 0
            }),
            "a read's stale data is not the guest's"
        );
        let bad = page(6, &[(16, &3u32.to_le_bytes())]);
        assert_eq!(decode_exit(&bad), Err(libc::EPROTO));
    }

    #[test]
    fn the_other_exits_decode() {
        let h = page(
            3,
            &[
                (0, &0xC400_0003u64.to_le_bytes()),
                (8, &0x101u64.to_le_bytes()),
                (16, &0x4008_0000u64.to_le_bytes()),
                (24, &7u64.to_le_bytes()),
                (32, &99u64.to_le_bytes()),
            ],
        );
        assert_eq!(
            decode_exit(&h),
            Ok(VcpuExit::Hypercall {
                id: 0xC400_0003,
                args: [0x101, 0x4008_0000, 7]
            })
        );
        for (t, e) in [
            (1u32, Ok(VcpuExit::SystemEvent(0))),
            (2, Ok(VcpuExit::SystemEvent(1))),
        ] {
            assert_eq!(decode_exit(&page(24, &[(0, &t.to_le_bytes())])), e);
        }
        assert_eq!(
            decode_exit(&page(24, &[(0, &3u32.to_le_bytes())])),
            Ok(VcpuExit::SystemEvent(3)),
            "KVM's CRASH: an unknown event for the VMM"
        );
        assert_eq!(decode_exit(&page(24, &[])), Err(libc::EPROTO));
        let f = page(
            39,
            &[
                (0, &KVM_MEMORY_EXIT_FLAG_PRIVATE.to_le_bytes()),
                (8, &0x4020_0000u64.to_le_bytes()),
                (16, &0x2000u64.to_le_bytes()),
            ],
        );
        assert_eq!(
            decode_exit(&f),
            Ok(VcpuExit::MemoryFault {
                gpa: 0x4020_0000,
                size: 0x2000,
                flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
            })
        );
        let s = page(
            17,
            &[(0, &0x100u32.to_le_bytes()), (8, &0x24u64.to_le_bytes())],
        );
        assert_eq!(decode_exit(&s), Ok(VcpuExit::InternalError { ec: 0x24 }));
        let other = page(17, &[(0, &1u32.to_le_bytes())]);
        assert_eq!(decode_exit(&other), Err(libc::EPROTO));
        assert_eq!(decode_exit(&page(2, &[])), Err(libc::EPROTO), "KVM_EXIT_IO");
    }

    #[test]
    fn completions_land_where_the_driver_reads_them() {
        let mut buf = Box::new([0u64; 512]);
        let runner = VcpuRunner {
            fd: -1,
            run: NonNull::new(buf.as_mut_ptr().cast::<Run>()).unwrap(),
        };
        let bytes =
            |b: &[u64; 512]| -> Vec<u8> { b.iter().flat_map(|w| w.to_le_bytes()).collect() };
        runner.set_mmio_data(0x1122_3344_5566_7788);
        assert_eq!(
            &bytes(&buf)[32 + 8..32 + 16],
            &0x1122_3344_5566_7788u64.to_le_bytes(),
            "mmio.data"
        );
        runner.set_hypercall_ret(u64::MAX - 8);
        assert_eq!(
            &bytes(&buf)[32 + 56..32 + 64],
            &(u64::MAX - 8).to_le_bytes(),
            "hypercall.ret"
        );
        runner.request_exit();
        assert_eq!(bytes(&buf)[1], 1, "immediate_exit");
        assert_eq!(bytes(&buf)[0], 0);
    }

    #[test]
    fn argument_structures_match_the_header() {
        assert_eq!(
            irq_level(33, true),
            IrqLevel {
                irq: 0x0100_0021,
                level: 1
            }
        );
        assert_eq!(irq_level(95, false).level, 0);
        assert_eq!(size_of::<KvmCreateGuestMemfd>(), 64);
        assert_eq!(size_of::<KvmUserspaceMemoryRegion2>(), 160);
        assert_eq!(size_of::<KvmMemoryAttributes2>(), 128);
        assert_eq!(std::mem::offset_of!(KvmMemoryAttributes2, error_offset), 32);
        assert_eq!(
            std::mem::offset_of!(KvmUserspaceMemoryRegion2, guest_memfd),
            40
        );
        assert_eq!(size_of::<OneReg>(), 16);
        // The ioctl numbers encode these sizes (_IOC_SIZE, bits 29:16).
        let size = |nr: u32| ((nr >> 16) & 0x3fff) as usize;
        assert_eq!(size(uapi::SET_USER_MEMORY_REGION2), 160);
        assert_eq!(size(uapi::SET_MEMORY_ATTRIBUTES2), 128);
        assert_eq!(size(uapi::CREATE_GUEST_MEMFD), 64);
        assert_eq!(size(uapi::IRQ_LINE), 8);
        assert_eq!(size(uapi::SET_ONE_REG), 16);
    }

    /// Three anonymous pages, the middle one `PROT_NONE`: a stand-in for
    /// a guest_memfd mapping with a private page in it.
    fn holed() -> Mapping {
        let fd = Bounce::new().unwrap();
        // SAFETY: our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.fd.as_raw_fd(), 3 * 4096) }, 0);
        let m = Mapping::new(fd.fd.as_raw_fd(), 3 * 4096).unwrap();
        // SAFETY: our own fresh mapping.
        let r = unsafe { libc::mprotect(m.ptr.as_ptr().add(4096).cast(), 4096, libc::PROT_NONE) };
        assert_eq!(r, 0);
        m
    }

    #[test]
    fn the_kernel_copies_and_reports_a_refused_page_without_a_signal() {
        let m = holed();
        let b = Bounce::new().unwrap();
        let p = m.ptr.as_ptr();
        let data: Vec<u8> = (0..6000).map(|i| (i % 251) as u8).collect();
        // The writes below go to our own mapping, which no reference
        // points into; reads need no promise.
        // SAFETY: as above.
        let r = unsafe { b.write_to(p, &data[..4096]) };
        assert_eq!(r, Ok(()));
        let mut back = vec![0u8; 4096];
        // SAFETY: as above.
        let r = unsafe { b.read_from(p, &mut back) };
        assert_eq!(r, Ok(()));
        assert_eq!(back, data[..4096]);
        // Across the refused page: everything before it is copied.
        // SAFETY: as above.
        let r = unsafe { b.write_to(p.wrapping_add(100), &data) };
        assert_eq!(r, Err(3996));
        let mut long = vec![0u8; 6000];
        // SAFETY: as above.
        let r = unsafe { b.read_from(p.wrapping_add(100), &mut long) };
        assert_eq!(r, Err(3996));
        assert_eq!(long[..3996], data[..3996]);
        // Inside it, nothing.
        let mut one = [0u8; 8];
        // SAFETY: as above.
        let r = unsafe { b.read_from(p.wrapping_add(4096 + 8), &mut one) };
        assert_eq!(r, Err(0));
        // SAFETY: as above.
        let r = unsafe { b.write_to(p.wrapping_add(4096), &one) };
        assert_eq!(r, Err(0));
        // After it, fine again.
        // SAFETY: as above.
        let r = unsafe { b.write_to(p.wrapping_add(8192), &[7; 4096]) };
        assert_eq!(r, Ok(()));
        // More than one chunk.
        let mut big = vec![1u8; BOUNCE_CHUNK + 4096];
        let src = vec![9u8; BOUNCE_CHUNK + 4096];
        // SAFETY: a plain Vec of ours, no reference to it held meanwhile.
        let r = unsafe { b.write_to(big.as_mut_ptr(), &src) };
        assert_eq!(r, Ok(()));
        assert!(big.iter().all(|x| *x == 9));
    }
}
