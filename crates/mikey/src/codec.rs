//! Bounded byte reader and writer shared by every payload codec. Parsers never index raw
//! slices: every read goes through [`Reader`], which checks bounds once and reports the
//! absolute offset of a short field.

use crate::error::{Error, Result};

/// A cursor over a byte slice. `base` is the absolute offset of `buf[0]` in the outermost
/// message, so errors in nested structures still name the right byte.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn offset(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos = self.pos.saturating_add(n);
                Ok(s)
            }
            None => Err(Error::Truncated {
                offset: self.offset(),
                field,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let s = self.bytes(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a length-prefixed field whose length was already read.
    pub(crate) fn vec(&mut self, n: usize, field: &'static str) -> Result<Vec<u8>> {
        Ok(self.bytes(n, field)?.to_vec())
    }

    /// A sub-reader over the next `n` bytes (advancing this reader past them).
    pub(crate) fn sub(&mut self, n: usize, field: &'static str) -> Result<Self> {
        let base = self.offset();
        let s = self.bytes(n, field)?;
        Ok(Reader::new(s, base))
    }

    /// Fails if bytes remain.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes { offset: self.offset(), count: self.remaining() })
        }
    }
}

/// Growable output buffer with checked length fields.
#[derive(Debug)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

/// Octets a [`Writer`] starts with: the messages and sub-chains of this system are mostly
/// 100–500 octets, so growing from empty cost four to six reallocations each (measured with
/// DHAT over `bench kms --tickets`: ~45 of the ~225 allocations of a ticket request).
const INITIAL_CAPACITY: usize = 256;

impl Writer {
    pub(crate) fn new() -> Self {
        Self { buf: Vec::with_capacity(INITIAL_CAPACITY) }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Writes `data.len()` as an 8-bit length, then `data`.
    pub(crate) fn len8(&mut self, data: &[u8], field: &'static str) -> Result<()> {
        let n = u8::try_from(data.len())
            .map_err(|_| Error::encode(field, format!("{} octets exceed 255", data.len())))?;
        self.u8(n);
        self.bytes(data);
        Ok(())
    }

    /// Writes `data.len()` as a 16-bit length, then `data`.
    pub(crate) fn len16(&mut self, data: &[u8], field: &'static str) -> Result<()> {
        let n = u16::try_from(data.len())
            .map_err(|_| Error::encode(field, format!("{} octets exceed 65535", data.len())))?;
        self.u16(n);
        self.bytes(data);
        Ok(())
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Checks that a value fits in `bits` bits.
pub(crate) fn fits(value: usize, bits: u32, field: &'static str) -> Result<u16> {
    if value < (1usize << bits) {
        u16::try_from(value).map_err(|_| Error::encode(field, "does not fit 16 bits"))
    } else {
        Err(Error::encode(field, format!("{value} does not fit in {bits} bits")))
    }
}
