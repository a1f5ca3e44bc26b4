//! The byte formats of the targets' inputs: a reader that never fails
//! (missing bytes read as zero) and a writer that builds the same bytes, so
//! seeds can be written as typed steps.
//!
//! Values are mostly *aimed*: one selector byte picks an entry of a table
//! of values that matter to the code under test (valid frames, block
//! edges, the ends of RAM, the limits of every field), and the selector
//! [`RAW`] is followed by a little-endian `u64` for anything else. A
//! mutation then changes one meaningful value at a time, and libFuzzer's
//! comparison tracing can still reach any value through the raw form.

use std::vec::Vec;

/// The selector that introduces a raw little-endian `u64`.
pub const RAW: u8 = 0xff;

/// Reads an input from the front; past its end every byte reads as 0.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = (self.pos + 1).min(self.data.len());
        b
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        b.iter_mut().for_each(|x| *x = self.byte());
        u32::from_le_bytes(b)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = self.byte());
        u64::from_le_bytes(b)
    }

    /// A boolean (the low bit of a byte).
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    /// An entry of `table` (which must not be empty), chosen by one byte.
    pub fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[self.byte() as usize % table.len()]
    }

    /// An aimed value: a selector byte indexing `table`, or [`RAW`] and a
    /// `u64`.
    pub fn value(&mut self, table: &[u64]) -> u64 {
        match self.byte() {
            RAW => self.u64(),
            b => table[b as usize % table.len()],
        }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let end = self.pos.saturating_add(n).min(self.data.len());
        let out = &self.data[self.pos..end];
        self.pos = end;
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        out
    }
}

/// Builds inputs in the format [`Input`] reads.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl Output {
    /// An empty input.
    pub fn new() -> Output {
        Output::default()
    }

    /// One byte.
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.bytes.push(b);
        self
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.byte(u8::from(v))
    }

    /// The selector of `v` in `table` (which must hold it).
    pub fn pick<T: PartialEq + core::fmt::Debug>(&mut self, table: &[T], v: T) -> &mut Self {
        let i = table
            .iter()
            .position(|t| *t == v)
            .unwrap_or_else(|| panic!("{v:?} is not in the table"));
        self.byte(i as u8)
    }

    /// `v` as [`Input::value`] reads it: its selector in `table` if it is
    /// there (below [`RAW`]), else [`RAW`] and the raw value.
    pub fn value(&mut self, table: &[u64], v: u64) -> &mut Self {
        match table.iter().take(RAW as usize).position(|t| *t == v) {
            Some(i) => self.byte(i as u8),
            None => self.byte(RAW).u64(v),
        }
    }

    /// Raw bytes.
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    /// The input.
    pub fn finish(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let table = [0u64, 7, 512];
        let mut o = Output::new();
        o.value(&table, 512)
            .value(&table, 99)
            .byte(3)
            .u32(0xdead_beef);
        let bytes = o.finish();
        let mut i = Input::new(&bytes);
        assert_eq!(i.value(&table), 512);
        assert_eq!(i.value(&table), 99);
        assert_eq!(i.pick(&table), 0, "3 % 3");
        assert_eq!(i.u32(), 0xdead_beef);
        assert!(i.is_empty());
        assert_eq!(i.u64(), 0, "past the end");
    }
}
