//! A writer for the cpio "newc" format the Linux initramfs uses. Entries
//! (including device nodes) are described, not copied from the file
//! system, so building an initramfs needs no root.

/// One archive entry.
pub enum Entry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A regular file with its mode bits (e.g. 0o755) and contents.
    File(&'a str, u32, &'a [u8]),
    /// A character device `major:minor`.
    CharDev(&'a str, u32, u32),
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive of `entries`, with the trailer.
pub fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(name) => header(&mut out, ino, 0o040755, 0, (0, 0), name),
            Entry::File(name, mode, data) => {
                header(&mut out, ino, 0o100000 | mode, data.len(), (0, 0), name);
                out.extend_from_slice(data);
                pad(&mut out);
            }
            Entry::CharDev(name, major, minor) => {
                header(&mut out, ino, 0o020600, 0, (*major, *minor), name)
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = archive(&[
            Entry::Dir("dev"),
            Entry::CharDev("dev/console", 5, 1),
            Entry::File("init", 0o755, b"#!x\n"),
        ]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // The first header: ino 1, directory mode.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ed");
        // The console node carries rdev 5:1.
        let at = a.windows(11).position(|w| w == b"dev/console").unwrap();
        let hdr = &a[at - 110..at];
        assert_eq!(&hdr[78..86], b"00000005");
        assert_eq!(&hdr[86..94], b"00000001");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        let init = a.windows(4).position(|w| w == b"#!x\n").unwrap();
        assert_eq!(init % 4, 0);
    }
}
