//! A minimal flattened-device-tree writer for the QEMU tests that boot el2
//! on a device tree of their own (`-dtb`): a small valid `virt`-like tree,
//! and the same tree with nodes nested deeper than el2 accepts.
//!
//! QEMU edits a `-dtb` tree before booting: it replaces the `/memory`
//! nodes with `FDT_NOP` tokens, adds its own memory node and fills
//! `/chosen`. So these trees also check that el2 copes with NOPs.

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;

/// Builds a device tree blob (version 17) node by node.
#[derive(Debug, Default)]
pub struct Writer {
    structure: Vec<u8>,
    strings: Vec<u8>,
}

impl Writer {
    fn u32(&mut self, v: u32) {
        self.structure.extend_from_slice(&v.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    /// Opens a node (`""` for the root).
    pub fn begin(&mut self, name: &str) -> &mut Self {
        self.u32(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }

    /// Closes the innermost open node.
    pub fn end(&mut self) -> &mut Self {
        self.u32(FDT_END_NODE);
        self
    }

    /// Adds a property with a raw value.
    pub fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let key: Vec<u8> = name.bytes().chain([0]).collect();
        let offset = match self
            .strings
            .windows(key.len())
            .position(|w| w == key.as_slice())
        {
            Some(o) => o,
            None => {
                let o = self.strings.len();
                self.strings.extend_from_slice(&key);
                o
            }
        };
        self.u32(FDT_PROP);
        self.u32(u32::try_from(value.len()).expect("small property"));
        self.u32(u32::try_from(offset).expect("small strings block"));
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }

    /// Adds a property of 32-bit cells.
    pub fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &v)
    }

    /// Adds a string property.
    pub fn string(&mut self, name: &str, value: &str) -> &mut Self {
        let v: Vec<u8> = value.bytes().chain([0]).collect();
        self.prop(name, &v)
    }

    /// The blob: header, an empty memory reservation block, structure and
    /// strings.
    pub fn finish(mut self) -> Vec<u8> {
        self.u32(FDT_END);
        let off_rsv = 40u32;
        let off_struct = off_rsv + 16;
        let size_struct = u32::try_from(self.structure.len()).expect("small tree");
        let off_strings = off_struct + size_struct;
        let size_strings = u32::try_from(self.strings.len()).expect("small tree");
        let total = off_strings + size_strings;
        let header = [
            FDT_MAGIC,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            size_strings,
            size_struct,
        ];
        let mut blob: Vec<u8> = header.iter().flat_map(|v| v.to_be_bytes()).collect();
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// A small QEMU `virt`-like tree for one CPU: memory, `/cpus`, PSCI over
/// SMC and the PL011, with `extra_depth` empty nodes nested under `/deep`.
pub fn virt_tree(extra_depth: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .string("compatible", "linux,dummy-virt");
    w.begin("chosen").end();
    w.begin("memory@40000000")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
        .end();
    w.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    w.begin("cpu@0")
        .string("device_type", "cpu")
        .string("compatible", "arm,cortex-a72")
        .cells("reg", &[0])
        .string("enable-method", "psci")
        .end();
    w.end();
    w.begin("psci")
        .string("compatible", "arm,psci-1.0")
        .string("method", "smc")
        .end();
    w.begin("pl011@9000000")
        .string("compatible", "arm,pl011")
        .cells("reg", &[0, 0x0900_0000, 0, 0x1000])
        .end();
    w.begin("deep");
    for i in 0..extra_depth {
        w.begin(&format!("n{i}"));
    }
    for _ in 0..extra_depth {
        w.end();
    }
    w.end();
    w.end();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn header_describes_the_blob() {
        let blob = virt_tree(2);
        assert_eq!(be32(&blob, 0), FDT_MAGIC);
        assert_eq!(be32(&blob, 4) as usize, blob.len());
        let (off_struct, size_struct) = (be32(&blob, 8) as usize, be32(&blob, 36) as usize);
        assert_eq!(be32(&blob, off_struct), FDT_BEGIN_NODE);
        assert_eq!(be32(&blob, off_struct + size_struct - 4), FDT_END);
        assert_eq!(be32(&blob, 12) as usize, off_struct + size_struct);
        assert_eq!(be32(&blob, 20), 17);
    }

    #[test]
    fn strings_are_shared_and_depth_grows_the_tree() {
        let shallow = virt_tree(0);
        let deep = virt_tree(30);
        assert_eq!(deep.len() - shallow.len(), 30 * (4 + 4 + 4));
        let text = String::from_utf8_lossy(&shallow);
        assert_eq!(text.matches("device_type\0").count(), 1);
    }
}
