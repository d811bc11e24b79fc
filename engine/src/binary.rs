//! Little-endian bytes: one reader and one writer for every binary format tickgate keeps
//! (journal records, snapshots, the gateway's order history, market-data captures), and
//! the one FNV-1a hash behind the state and event digests.
//!
//! The reader never panics on its input: every read is bounds-checked and a read past the
//! end is a [`Truncated`] error naming the offset, so a damaged or hostile file is an error
//! for its caller to report, never a crash. Formats check their own framing (magic,
//! lengths, checksums) on top of it.

/// A read wanted more bytes than were left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated at byte {at}: {wanted} bytes wanted, {left} left")]
pub struct Truncated {
    /// Offset of the read that failed (from the start of the reader's bytes).
    pub at: usize,
    /// Bytes the read needed.
    pub wanted: usize,
    /// Bytes that were left.
    pub left: usize,
}

/// A little-endian cursor over a byte slice; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        ByteReader { bytes, at: 0 }
    }

    /// Offset of the next read.
    #[inline]
    pub fn position(&self) -> usize {
        self.at
    }

    /// Bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Whether every byte was read.
    #[inline]
    pub fn finished(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The next `len` bytes, as a slice of the input.
    #[inline]
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], Truncated> {
        let truncated = Truncated { at: self.at, wanted: len, left: self.remaining() };
        let end = self.at.checked_add(len).ok_or(truncated)?;
        let out = self.bytes.get(self.at..end).ok_or(truncated)?;
        self.at = end;
        debug_assert!(self.at <= self.bytes.len());
        Ok(out)
    }

    /// The next `N` bytes, as an array.
    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads a `u8`.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        self.array::<1>().map(|b| b[0])
    }

    /// Reads a little-endian `u16`.
    #[inline]
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reads a little-endian `i64`.
    #[inline]
    pub fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }

    /// Reads a little-endian `u128`.
    #[inline]
    pub fn u128(&mut self) -> Result<u128, Truncated> {
        self.array().map(u128::from_le_bytes)
    }
}

/// Appends little-endian values to a byte vector (the layouts [`ByteReader`] reads).
#[derive(Debug)]
pub struct ByteWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ByteWriter<'a> {
    /// A writer appending to `out` (what it holds already stays).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        ByteWriter { out }
    }

    /// Length of the vector so far: the offset the next value is written at.
    #[inline]
    pub fn position(&self) -> usize {
        self.out.len()
    }

    /// Appends raw bytes.
    #[inline]
    pub fn put_bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Appends a `u8`.
    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Appends a little-endian `u16`.
    #[inline]
    pub fn put_u16(&mut self, v: u16) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u32`.
    #[inline]
    pub fn put_u32(&mut self, v: u32) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u64`.
    #[inline]
    pub fn put_u64(&mut self, v: u64) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `i64`.
    #[inline]
    pub fn put_i64(&mut self, v: i64) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u128`.
    #[inline]
    pub fn put_u128(&mut self, v: u128) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Overwrites the `u32` at `at` (a length or checksum field reserved earlier).
    /// Panics if `at + 4` is past the end: reserving the field first is the caller's
    /// invariant, not something input can break.
    #[inline]
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        assert!(at + 4 <= self.out.len(), "patch_u32 past the end: reserve the field first");
        self.out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The bytes written from `start` on.
    #[inline]
    pub fn written_since(&self, start: usize) -> &[u8] {
        &self.out[start..]
    }
}

/// 64-bit FNV-1a (Fowler, Noll, Vo): order-sensitive, stable across builds and platforms,
/// fast on a few bytes at a time. For digests that compare states and event streams, never
/// for anything an adversary chooses keys for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv64 {
    state: u64,
}

impl Fnv64 {
    /// The FNV-1a 64-bit offset basis: the hash of nothing.
    pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    /// The FNV 64-bit prime.
    pub const PRIME: u64 = 0x0100_0000_01b3;

    /// A hash of nothing yet.
    pub const fn new() -> Self {
        Fnv64 { state: Self::OFFSET_BASIS }
    }

    /// Continues a hash whose state so far is `state` (a [`Fnv64::value`]).
    pub const fn resume(state: u64) -> Self {
        Fnv64 { state }
    }

    /// Folds in bytes, one at a time.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(Self::PRIME);
        }
    }

    /// Folds in the 8 little-endian bytes of `v`.
    #[inline]
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    /// The hash so far.
    #[inline]
    pub fn value(&self) -> u64 {
        self.state
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = vec![0xee]; // a writer appends after what is there
        let mut w = ByteWriter::new(&mut out);
        assert_eq!(w.position(), 1);
        w.put_u8(7);
        w.put_u16(0xbeef);
        w.put_u32(0);
        w.put_u64(u64::MAX - 3);
        w.put_i64(-42);
        w.put_u128(u128::MAX / 3);
        w.put_bytes(b"end");
        w.patch_u32(4, 0xdead_beef);
        assert_eq!(w.written_since(w.position() - 3), b"end");
        out
    }

    #[test]
    fn every_width_round_trips() {
        let bytes = sample();
        assert_eq!(bytes.len(), 1 + 1 + 2 + 4 + 8 + 8 + 16 + 3);
        let mut r = ByteReader::new(&bytes);
        assert_eq!(r.u8(), Ok(0xee));
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(0xbeef));
        assert_eq!(r.u32(), Ok(0xdead_beef), "patched in place");
        assert_eq!(r.u64(), Ok(u64::MAX - 3));
        assert_eq!(r.i64(), Ok(-42));
        assert_eq!(r.u128(), Ok(u128::MAX / 3));
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.bytes(3), Ok(&b"end"[..]));
        assert!(r.finished());
    }

    #[test]
    fn truncated_input_is_an_error_at_every_cut() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let mut r = ByteReader::new(&bytes[..cut]);
            let result = (|| {
                r.u8()?;
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.i64()?;
                r.u128()?;
                r.bytes(3).map(|_| ())
            })();
            let err = result.expect_err("a cut input cannot read whole");
            assert!(err.at <= cut && err.left == cut - err.at && err.wanted > err.left, "{err}");
        }
        // A failed read consumes nothing; a huge length does not overflow.
        let mut r = ByteReader::new(&bytes[..3]);
        assert_eq!(r.u32(), Err(Truncated { at: 0, wanted: 4, left: 3 }));
        assert_eq!(r.position(), 0);
        assert_eq!(
            r.bytes(usize::MAX).map(<[u8]>::len),
            Err(Truncated { at: 0, wanted: usize::MAX, left: 3 })
        );
        assert_eq!(r.u16(), Ok(u16::from_le_bytes([bytes[0], bytes[1]])));
    }

    #[test]
    #[should_panic(expected = "reserve the field first")]
    fn patching_past_the_end_is_a_bug() {
        let mut out = vec![0; 3];
        ByteWriter::new(&mut out).patch_u32(0, 1);
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, 64-bit FNV-1a).
        assert_eq!(Fnv64::new().value(), 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv64::default();
        h.write(b"a");
        assert_eq!(h.value(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv64::new();
        h.write(b"foobar");
        assert_eq!(h.value(), 0x8594_4171_f739_67e8);
        // Words fold as their little-endian bytes, and a hash resumes where it stopped.
        let (mut words, mut bytes) = (Fnv64::new(), Fnv64::new());
        words.write_u64(0x0102_0304_0506_0708);
        bytes.write(&[8, 7, 6, 5]);
        let mut resumed = Fnv64::resume(bytes.value());
        resumed.write(&[4, 3, 2, 1]);
        assert_eq!(words, resumed);
    }
}
