//! The guest descriptor: how the `cargo qemu` runner tells the built-in
//! test host which guest to run as its VMM (`cargo qemu run --guest`).
//!
//! The runner loads the guest's files raw into host RAM with QEMU's
//! `-device loader` (the kernel `Image` at [`FILES_ADDR`], then each
//! further file at the next 2 MiB boundary) and writes this descriptor, as
//! [`WORDS`] little-endian `u64`s, at [`DESC_ADDR`] (one word per
//! `-device loader,addr=...,data=...,data-len=8`):
//!
//! | word | meaning |
//! |------|---------|
//! | 0 | [`MAGIC`] (`PKVMGUES`) |
//! | 1 | [`VERSION`] |
//! | 2, 3 | kernel `Image`: address, size in bytes |
//! | 4, 5 | initrd: address, size (0, 0 for none) |
//! | 6, 7 | kernel command line (bytes, no NUL needed): address, size (0, 0 for none) |
//! | 8 | guest RAM in bytes (a multiple of 2 MiB) |
//! | 9 | vCPUs (1..=8) |
//! | 10 | flags ([`FLAG_SMALL_PAGES`]) |
//!
//! The test host checks every field (magic, version, ranges inside its
//! RAM and clear of each other, sizes) before it reads a byte of the
//! files, and excludes the files from the pages it hands out.

/// Where the descriptor is written: the page below el2's host
/// descriptor (0x43ff_f000).
pub const DESC_ADDR: u64 = 0x43ff_e000;

/// Where the first guest file (the kernel `Image`) is loaded: 64 MiB
/// above the test host's own image (0x4400_0000).
pub const FILES_ADDR: u64 = 0x4800_0000;

/// Number of `u64` words in the descriptor.
pub const WORDS: usize = 11;

/// Word 0: the bytes `PKVMGUES`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PKVMGUES");

/// Word 1: the descriptor version this code reads and writes.
pub const VERSION: u64 = 1;

/// Flag: back guest memory with 4 KiB pages only (no 2 MiB folios), for
/// the first-touch benchmark's comparison.
pub const FLAG_SMALL_PAGES: u64 = 1 << 0;

/// Most vCPUs a descriptor may ask for.
pub const MAX_VCPUS: u64 = 8;

/// A file the runner loaded: where and how long.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Blob {
    /// Physical address.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
}

impl Blob {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// A decoded descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestDesc {
    /// The kernel `Image`.
    pub kernel: Blob,
    /// The initrd, if any.
    pub initrd: Option<Blob>,
    /// The command line, if any.
    pub cmdline: Option<Blob>,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// vCPUs.
    pub vcpus: u64,
    /// Flags.
    pub flags: u64,
}

/// Why a descriptor was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DescError {
    /// Word 0 is not [`MAGIC`]: no guest was given.
    NoMagic,
    /// Word 1 is not [`VERSION`].
    Version(u64),
    /// A field is out of range; the name says which.
    Field(&'static str),
}

impl core::fmt::Display for DescError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DescError::NoMagic => f.write_str("no guest descriptor"),
            DescError::Version(v) => write!(f, "guest descriptor version {v}, expected {VERSION}"),
            DescError::Field(name) => write!(f, "guest descriptor: bad {name}"),
        }
    }
}

const MIB2: u64 = 2 << 20;

impl GuestDesc {
    /// Decodes and checks the words (not the ranges against RAM, which is
    /// the reader's business: see [`GuestDesc::files`]).
    pub fn decode(w: &[u64; WORDS]) -> Result<GuestDesc, DescError> {
        if w[0] != MAGIC {
            return Err(DescError::NoMagic);
        }
        if w[1] != VERSION {
            return Err(DescError::Version(w[1]));
        }
        let blob = |i: usize, name: &'static str| -> Result<Option<Blob>, DescError> {
            let b = Blob {
                addr: w[i],
                size: w[i + 1],
            };
            if b.addr == 0 && b.size == 0 {
                return Ok(None);
            }
            if b.size == 0 || b.addr.checked_add(b.size).is_none() {
                return Err(DescError::Field(name));
            }
            Ok(Some(b))
        };
        let kernel = blob(2, "kernel")?.ok_or(DescError::Field("kernel"))?;
        let initrd = blob(4, "initrd")?;
        let cmdline = blob(6, "command line")?;
        if cmdline.is_some_and(|c| c.size > 4096) {
            return Err(DescError::Field("command line"));
        }
        let mem = w[8];
        if mem == 0 || !mem.is_multiple_of(MIB2) || mem > 1 << 40 {
            return Err(DescError::Field("memory size"));
        }
        let vcpus = w[9];
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(DescError::Field("vCPU count"));
        }
        if w[10] & !FLAG_SMALL_PAGES != 0 {
            return Err(DescError::Field("flags"));
        }
        let d = GuestDesc {
            kernel,
            initrd,
            cmdline,
            mem,
            vcpus,
            flags: w[10],
        };
        let files = d.files();
        for (i, a) in files.iter().flatten().enumerate() {
            for b in files.iter().flatten().skip(i + 1) {
                if a.addr < b.end() && b.addr < a.end() {
                    return Err(DescError::Field("overlapping files"));
                }
            }
        }
        Ok(d)
    }

    /// Encodes the descriptor (what the runner writes).
    pub fn encode(&self) -> [u64; WORDS] {
        let i = self.initrd.unwrap_or_default();
        let c = self.cmdline.unwrap_or_default();
        [
            MAGIC,
            VERSION,
            self.kernel.addr,
            self.kernel.size,
            i.addr,
            i.size,
            c.addr,
            c.size,
            self.mem,
            self.vcpus,
            self.flags,
        ]
    }

    /// The loaded files: kernel, initrd, command line.
    pub fn files(&self) -> [Option<Blob>; 3] {
        [Some(self.kernel), self.initrd, self.cmdline]
    }

    /// Where the runner loads a file after one ending at `end`: the next
    /// 2 MiB boundary.
    pub const fn next_file_addr(end: u64) -> u64 {
        end.next_multiple_of(MIB2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> GuestDesc {
        GuestDesc {
            kernel: Blob {
                addr: FILES_ADDR,
                size: 0x1234,
            },
            initrd: Some(Blob {
                addr: FILES_ADDR + MIB2,
                size: 10,
            }),
            cmdline: None,
            mem: 64 << 20,
            vcpus: 2,
            flags: 0,
        }
    }

    #[test]
    fn round_trips() {
        let d = good();
        assert_eq!(GuestDesc::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn refuses_bad_fields() {
        let mut w = good().encode();
        w[0] = 0;
        assert_eq!(GuestDesc::decode(&w), Err(DescError::NoMagic));
        let mut w = good().encode();
        w[1] = 2;
        assert_eq!(GuestDesc::decode(&w), Err(DescError::Version(2)));
        for (i, v) in [
            (3, 0),
            (8, 3 << 20),
            (8, 0),
            (9, 0),
            (9, 9),
            (10, 2),
            (5, u64::MAX),
            (4, FILES_ADDR),
        ] {
            let mut w = good().encode();
            w[i] = v;
            assert!(
                matches!(GuestDesc::decode(&w), Err(DescError::Field(_))),
                "word {i} = {v:#x}"
            );
        }
        let mut w = good().encode();
        w[6] = 0x5000_0000;
        w[7] = 5000;
        assert_eq!(GuestDesc::decode(&w), Err(DescError::Field("command line")));
    }
}
