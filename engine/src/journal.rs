//! The command journal: every state-changing command, in the order the engine applies it,
//! appended to segment files before any of its effects leave the process.
//!
//! On disk, a shard's journal is a directory of segments named
//! `journal-<first seq, 20 digits>.tgj`. A segment starts with a 24-byte header
//! (`b"TGJRNL01"`, format version `u32`, shard `u32`, first sequence `u64`) followed by
//! records:
//!
//! ```text
//! u32 payload length | u32 CRC32C of the payload | payload
//! payload = u64 seq | u64 ingest ts (ns) | u8 kind | fixed body of the kind
//! ```
//!
//! A new order with an idempotency key is kind 6: the body of kind 1 followed by the
//! 128-bit key, so recovery rebuilds the key table exactly (see [`crate::idempotency`]).
//!
//! Records are grouped into **batches**, one per group commit (one `write`, one sync):
//!
//! ```text
//! u32 batch length (from first_seq to the end) | u32 CRC32C of those bytes ^ 0xB47C4C0D | u64 first_seq | records
//! ```
//!
//! All integers little-endian. Sequences start at 1 and are contiguous across segments.
//! Reading distinguishes a **torn tail** from **corruption**. A batch is the unit that a
//! crash or a power loss can damage: until its sync returns, none of its records was
//! acknowledged, and the disk may have kept any subset of its pages. So in the last
//! segment, a damaged batch with no intact batch after it is a torn tail (cut, and
//! reported); damage anywhere else, or followed by an intact batch, is corruption
//! (refused with the file and offset).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::command::{
    CancelOrder, Command, CommandKind, NewOrder, OrderType, ReplaceOrder, StpMode, TradingStatus,
    Transfer,
};
use crate::idempotency::IdempotencyKey;
use crate::types::UnixNanos;
use crate::types::{AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Side};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"TGJRNL01";
/// Segment format version this build writes and reads.
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Bytes before a record's payload (length, checksum).
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest payload any command encodes to (a keyed new order: 76 bytes); a larger length
/// field is damage.
pub const PAYLOAD_MAX: usize = 96;
/// Bytes before a batch's records: length, checksum, first sequence.
pub const BATCH_HEADER_BYTES: usize = 16;
/// XORed into a batch's CRC, so that a record (whose frame has the same shape: length,
/// CRC of what follows, sequence) can never pass for a batch header.
const BATCH_CRC_TAG: u32 = 0xB47C_4C0D;
/// Largest batch length field accepted (well above what any group commit writes).
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// Smallest record (a framed cancel or status change): bounds how many sequences a byte
/// range can hold.
const RECORD_BYTES_MIN: usize = RECORD_HEADER_BYTES + 17 + 5;

const KIND_NEW: u8 = 1;
const KIND_CANCEL: u8 = 2;
const KIND_REPLACE: u8 = 3;
const KIND_TRANSFER: u8 = 4;
const KIND_STATUS: u8 = 5;
const KIND_NEW_KEYED: u8 = 6;

/// Why a journal could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged or inconsistent at a known place.
    #[error("journal {path} at offset {offset}: {what}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset of the bad record (or header).
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        JournalError::Io { path: path.to_path_buf(), source }
    }

    fn corrupt(path: &Path, offset: usize, what: impl Into<String>) -> Self {
        JournalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, what: what.into() }
    }
}

/// A command as journaled: its sequence and the command (with its ingest timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the shard's journal, from 1.
    pub seq: u64,
    /// The command.
    pub command: Command,
}

/// Appends the framed record of `command` at `seq` to `out`.
pub fn encode_record(seq: u64, command: &Command, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&command.ts.0.to_le_bytes());
    match &command.kind {
        CommandKind::New(o) => {
            out.push(if o.key.is_some() { KIND_NEW_KEYED } else { KIND_NEW });
            out.extend_from_slice(&o.order_id.0.to_le_bytes());
            out.extend_from_slice(&o.client_order_id.to_le_bytes());
            out.extend_from_slice(&o.account.0.to_le_bytes());
            out.extend_from_slice(&o.instrument.0.to_le_bytes());
            out.extend_from_slice(&[o.side.as_u8(), o.order_type.as_u8(), o.stp.as_u8()]);
            out.extend_from_slice(&o.price.0.to_le_bytes());
            out.extend_from_slice(&o.qty.0.to_le_bytes());
            if let Some(key) = o.key {
                out.extend_from_slice(&key.0.to_le_bytes());
            }
        }
        CommandKind::Cancel(c) => {
            out.push(KIND_CANCEL);
            out.extend_from_slice(&c.order_id.0.to_le_bytes());
            out.extend_from_slice(&c.account.0.to_le_bytes());
            out.extend_from_slice(&c.instrument.0.to_le_bytes());
        }
        CommandKind::Replace(r) => {
            out.push(KIND_REPLACE);
            out.extend_from_slice(&r.order_id.0.to_le_bytes());
            out.extend_from_slice(&r.account.0.to_le_bytes());
            out.extend_from_slice(&r.instrument.0.to_le_bytes());
            out.extend_from_slice(&r.price.0.to_le_bytes());
            out.extend_from_slice(&r.qty.0.to_le_bytes());
        }
        CommandKind::Status(st) => {
            out.push(KIND_STATUS);
            out.extend_from_slice(&st.instrument.0.to_le_bytes());
            out.push(u8::from(st.halted));
        }
        CommandKind::Transfer(t) => {
            out.push(KIND_TRANSFER);
            out.extend_from_slice(&t.account.0.to_le_bytes());
            out.extend_from_slice(&t.asset.0.to_le_bytes());
            out.extend_from_slice(&t.amount.0.to_le_bytes());
            out.extend_from_slice(&t.request_id.to_le_bytes());
        }
    }
    let payload = &out[start + RECORD_HEADER_BYTES..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A little-endian cursor over a payload whose length was checked by the caller.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let out = self.bytes.get(self.at..self.at + N)?.try_into().ok()?;
        self.at += N;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
}

/// Decodes a payload (checksum already verified). `None`: not a command this build knows.
pub fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor { bytes: payload, at: 0 };
    let seq = c.u64()?;
    let ts = UnixNanos(c.u64()?);
    let kind = match c.u8()? {
        kind @ (KIND_NEW | KIND_NEW_KEYED) => CommandKind::New(NewOrder {
            order_id: OrderId(c.u64()?),
            client_order_id: c.u64()?,
            account: AccountId(c.u32()?),
            instrument: InstrumentId(c.u32()?),
            side: Side::from_u8(c.u8()?)?,
            order_type: OrderType::from_u8(c.u8()?)?,
            stp: StpMode::from_u8(c.u8()?)?,
            price: Price(c.i64()?),
            qty: Qty(c.i64()?),
            key: match kind {
                KIND_NEW_KEYED => Some(IdempotencyKey(c.u128()?)),
                _ => None,
            },
        }),
        KIND_CANCEL => CommandKind::Cancel(CancelOrder {
            order_id: OrderId(c.u64()?),
            account: AccountId(c.u32()?),
            instrument: InstrumentId(c.u32()?),
        }),
        KIND_REPLACE => CommandKind::Replace(ReplaceOrder {
            order_id: OrderId(c.u64()?),
            account: AccountId(c.u32()?),
            instrument: InstrumentId(c.u32()?),
            price: Price(c.i64()?),
            qty: Qty(c.i64()?),
        }),
        KIND_TRANSFER => CommandKind::Transfer(Transfer {
            account: AccountId(c.u32()?),
            asset: AssetId(c.u16()?),
            amount: Amount(c.i64()?),
            request_id: c.u64()?,
        }),
        KIND_STATUS => CommandKind::Status(TradingStatus {
            instrument: InstrumentId(c.u32()?),
            halted: match c.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            },
        }),
        _ => return None,
    };
    (c.at == payload.len()).then_some(Record { seq, command: Command { ts, kind } })
}

/// File name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.tgj")
}

/// The segments in `dir`, ordered by first sequence.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(dir, "journal-", ".tgj")
}

/// Files in `dir` named `<prefix><number><suffix>`, ordered by number.
pub(crate) fn list_numbered(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(JournalError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            out.push((n, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// What reading one segment found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Records read.
    pub records: u64,
    /// Bytes of valid header and records (where a torn tail was cut).
    pub valid_bytes: u64,
    /// Bytes after the last valid record that were a torn write (last segment only).
    pub torn_bytes: u64,
}

/// Reads one segment, calling `each` for every record in order. `expect_seq` is the
/// sequence the first record must carry (`None`: take the header's). In the last segment
/// (`last`), an incomplete or unverifiable final record is a torn tail and is reported in
/// the result; anywhere else, damage is an error naming the file and offset.
pub fn read_segment(
    path: &Path,
    shard: u32,
    expect_seq: Option<u64>,
    last: bool,
    mut each: impl FnMut(Record),
) -> Result<SegmentScan, JournalError> {
    let bytes = fs::read(path).map_err(|e| JournalError::io(path, e))?;
    if bytes.len() < SEGMENT_HEADER_BYTES {
        if last && SEGMENT_MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            // Created but its header never fully reached the disk: nothing in it was acked.
            return Ok(SegmentScan { records: 0, valid_bytes: 0, torn_bytes: bytes.len() as u64 });
        }
        return Err(JournalError::corrupt(path, 0, "segment header is incomplete"));
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return Err(JournalError::corrupt(path, 0, "not a tickgate journal segment"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != SEGMENT_VERSION {
        return Err(JournalError::corrupt(
            path,
            8,
            format!("unknown segment version {version} (this build reads {SEGMENT_VERSION})"),
        ));
    }
    let file_shard = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
    if file_shard != shard {
        return Err(JournalError::corrupt(
            path,
            12,
            format!("segment belongs to shard {file_shard}, expected {shard}"),
        ));
    }
    let first_seq = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    let mut expect = expect_seq.unwrap_or(first_seq);
    if first_seq != expect {
        return Err(JournalError::corrupt(
            path,
            16,
            format!("segment starts at sequence {first_seq}, expected {expect} (gap)"),
        ));
    }
    let mut at = SEGMENT_HEADER_BYTES;
    let mut records = 0u64;
    while at < bytes.len() {
        let batch = match check_batch(&bytes, at, expect) {
            Ok(batch) => batch,
            Err(what) => {
                // A damaged batch is a torn tail only at the end of the last segment: no
                // intact batch may follow it.
                if last && !intact_batch_after(&bytes, at, expect) {
                    let torn_bytes = (bytes.len() - at) as u64;
                    return Ok(SegmentScan { records, valid_bytes: at as u64, torn_bytes });
                }
                return Err(JournalError::corrupt(path, at, what));
            }
        };
        let mut r = batch.start;
        while r < batch.end {
            let rest = &bytes[r..batch.end];
            let len = rest
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
            let end = RECORD_HEADER_BYTES + len;
            if len == 0 || len > PAYLOAD_MAX || rest.len() < end {
                return Err(JournalError::corrupt(path, r, format!("invalid record length {len}")));
            }
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
            let payload = &rest[RECORD_HEADER_BYTES..end];
            if crc32c::crc32c(payload) != crc {
                return Err(JournalError::corrupt(path, r, "record checksum mismatch"));
            }
            let Some(record) = decode_payload(payload) else {
                return Err(JournalError::corrupt(path, r, "record is not a known command"));
            };
            if record.seq != expect {
                return Err(JournalError::corrupt(
                    path,
                    r,
                    format!("record sequence {} where {expect} was expected (gap)", record.seq),
                ));
            }
            each(record);
            expect += 1;
            records += 1;
            r += end;
        }
        at = batch.end;
    }
    Ok(SegmentScan { records, valid_bytes: at as u64, torn_bytes: 0 })
}

/// The records of a verified batch: `bytes[start..end]`.
struct Batch {
    start: usize,
    end: usize,
}

/// Verifies the batch at `at`, which must start at sequence `expect`.
fn check_batch(bytes: &[u8], at: usize, expect: u64) -> Result<Batch, String> {
    let rest = &bytes[at..];
    if rest.len() < BATCH_HEADER_BYTES {
        return Err("batch header cut short".into());
    }
    let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap_or_default());
    let len = word(0) as usize;
    if !(8 + RECORD_BYTES_MIN..=BATCH_BYTES_MAX).contains(&len) || rest.len() < 8 + len {
        return Err(format!("invalid batch length {len}"));
    }
    let body = &rest[8..8 + len];
    if crc32c::crc32c(body) ^ BATCH_CRC_TAG != word(4) {
        return Err("batch checksum mismatch".into());
    }
    let first = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    if first != expect {
        return Err(format!("batch starts at sequence {first} where {expect} was expected (gap)"));
    }
    Ok(Batch { start: at + BATCH_HEADER_BYTES, end: at + 8 + len })
}

/// Whether an intact batch starts anywhere after the damaged one at `at` (which should
/// have started at sequence `expect`): then the damage is not a torn tail.
fn intact_batch_after(bytes: &[u8], at: usize, expect: u64) -> bool {
    // A later batch starts at a later sequence, at most one per minimal record in between.
    let span = (bytes.len() - at) / RECORD_BYTES_MIN + 1;
    let plausible = |first: u64| first > expect && first <= expect + span as u64;
    (at + 1..bytes.len().saturating_sub(BATCH_HEADER_BYTES - 1)).any(|off| {
        let first = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap_or_default());
        plausible(first) && check_batch(bytes, off, first).is_ok()
    })
}

/// When an appended batch counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` after every batch, before the batch reaches the engine: acknowledged
    /// means on disk. One sync covers every command of the batch (group commit).
    Fsync,
    /// Batches are written at once but synced on an interval: a crash can lose the
    /// acknowledged commands of the last interval.
    BatchAsync(std::time::Duration),
    /// Written, never synced (the operating system decides): for benchmarks only.
    None,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Fsync => f.write_str("fsync"),
            SyncMode::BatchAsync(d) => write!(f, "batch-async ({} ms)", d.as_millis()),
            SyncMode::None => f.write_str("none"),
        }
    }
}

/// Syncs a directory so that file creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| JournalError::io(dir, e))
}

/// Appends records to a shard's segments, rotating by size.
#[derive(Debug)]
pub struct JournalWriter {
    dir: PathBuf,
    shard: u32,
    segment_bytes: u64,
    file: File,
    path: PathBuf,
    written: u64,
    next_seq: u64,
    buf: Vec<u8>,
    dirty: bool,
}

impl JournalWriter {
    /// Opens a fresh segment in `dir` whose first record will be `next_seq` (recovery
    /// has already read and, if needed, cut the previous ones).
    pub fn open(
        dir: &Path,
        shard: u32,
        next_seq: u64,
        segment_bytes: u64,
    ) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        // The shard directory's own entry must be durable too.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let (file, path) = Self::create_segment(dir, shard, next_seq)?;
        Ok(JournalWriter {
            dir: dir.to_path_buf(),
            shard,
            segment_bytes: segment_bytes.max(4096),
            file,
            path,
            written: SEGMENT_HEADER_BYTES as u64,
            next_seq,
            buf: Vec::with_capacity(1 << 20),
            dirty: false,
        })
    }

    fn create_segment(
        dir: &Path,
        shard: u32,
        first_seq: u64,
    ) -> Result<(File, PathBuf), JournalError> {
        let path = dir.join(segment_name(first_seq));
        // A segment of that name can only be an empty leftover (recovery found no record
        // in it): start it again.
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&shard.to_le_bytes());
        header[16..24].copy_from_slice(&first_seq.to_le_bytes());
        file.write_all(&header).map_err(|e| JournalError::io(&path, e))?;
        file.sync_all().map_err(|e| JournalError::io(&path, e))?;
        sync_dir(dir)?;
        Ok((file, path))
    }

    /// Sequence the next appended command gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes appended but not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Current segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames `command` into the pending batch and returns its sequence.
    pub fn append(&mut self, command: &Command) -> u64 {
        let seq = self.next_seq;
        if self.buf.is_empty() {
            // Room for the batch header, filled in by `commit`.
            self.buf.extend_from_slice(&[0; 8]);
            self.buf.extend_from_slice(&seq.to_le_bytes());
        }
        encode_record(seq, command, &mut self.buf);
        self.next_seq += 1;
        seq
    }

    /// Writes the pending batch to the segment (one `write`), syncs it if `sync`, and
    /// rotates to a new segment when this one is full.
    pub fn commit(&mut self, sync: bool) -> Result<(), JournalError> {
        if !self.buf.is_empty() {
            let body = &self.buf[8..];
            let (len, crc) = (body.len() as u32, crc32c::crc32c(body) ^ BATCH_CRC_TAG);
            self.buf[..4].copy_from_slice(&len.to_le_bytes());
            self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
            self.file.write_all(&self.buf).map_err(|e| JournalError::io(&self.path, e))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
            self.dirty = true;
        }
        if sync {
            self.sync()?;
        }
        if self.written >= self.segment_bytes {
            self.sync()?;
            let (file, path) = Self::create_segment(&self.dir, self.shard, self.next_seq)?;
            self.file = file;
            self.path = path;
            self.written = SEGMENT_HEADER_BYTES as u64;
        }
        Ok(())
    }

    /// `fdatasync`s what was written since the last sync.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.dirty {
            self.file.sync_data().map_err(|e| JournalError::io(&self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether written data awaits a sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(i: u64) -> Command {
        let kind = match i % 5 {
            0 => CommandKind::New(NewOrder {
                key: i.is_multiple_of(10).then_some(IdempotencyKey(u128::MAX - u128::from(i))),
                order_id: OrderId(i),
                client_order_id: i * 7,
                account: AccountId(3),
                instrument: InstrumentId(1),
                side: Side::Sell,
                order_type: OrderType::PostOnly,
                price: Price(-5 + i as i64),
                qty: Qty(100),
                stp: StpMode::CancelBoth,
            }),
            1 => CommandKind::Cancel(CancelOrder {
                order_id: OrderId(i),
                account: AccountId(4),
                instrument: InstrumentId(2),
            }),
            2 => CommandKind::Replace(ReplaceOrder {
                order_id: OrderId(i),
                account: AccountId(5),
                instrument: InstrumentId(0),
                price: Price(77),
                qty: Qty(3),
            }),
            3 => CommandKind::Status(TradingStatus {
                instrument: InstrumentId(4),
                halted: i.is_multiple_of(2),
            }),
            _ => CommandKind::Transfer(Transfer {
                account: AccountId(6),
                asset: AssetId(2),
                amount: Amount(-9),
                request_id: u64::MAX,
            }),
        };
        Command { ts: UnixNanos(1_000 + i), kind }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tickgate-journal-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn write(dir: &Path, n: u64, segment_bytes: u64) {
        let mut w = JournalWriter::open(dir, 0, 1, segment_bytes).unwrap();
        for i in 0..n {
            w.append(&cmd(i));
            if i % 10 == 9 {
                w.commit(true).unwrap();
            }
        }
        w.commit(true).unwrap();
    }

    fn read_all(dir: &Path) -> Result<(Vec<Record>, u64), JournalError> {
        let segments = list_segments(dir)?;
        let mut out = Vec::new();
        let mut torn = 0;
        let mut expect = None;
        for (i, (_, path)) in segments.iter().enumerate() {
            let scan = read_segment(path, 0, expect, i + 1 == segments.len(), |r| out.push(r))?;
            torn += scan.torn_bytes;
            expect = Some(out.last().map_or(1, |r: &Record| r.seq + 1));
        }
        Ok((out, torn))
    }

    #[test]
    fn every_command_kind_round_trips() {
        for i in 0..8 {
            let mut buf = Vec::new();
            encode_record(i + 1, &cmd(i), &mut buf);
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(buf.len(), RECORD_HEADER_BYTES + len);
            assert!(len <= PAYLOAD_MAX);
            let r = decode_payload(&buf[RECORD_HEADER_BYTES..]).unwrap();
            assert_eq!(r, Record { seq: i + 1, command: cmd(i) });
        }
        // A truncated or padded payload is not a command.
        let mut buf = Vec::new();
        encode_record(1, &cmd(0), &mut buf);
        assert!(decode_payload(&buf[RECORD_HEADER_BYTES..buf.len() - 1]).is_none());
        buf.push(0);
        assert!(decode_payload(&buf[RECORD_HEADER_BYTES..]).is_none());
    }

    #[test]
    fn write_rotate_and_read_back() {
        let dir = temp_dir("rotate");
        write(&dir, 1000, 8192);
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() > 3, "{} segments", segments.len());
        assert_eq!(segments[0].0, 1);
        let (records, torn) = read_all(&dir).unwrap();
        assert_eq!(torn, 0);
        assert_eq!(records.len(), 1000);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.command, cmd(i as u64));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_not_fatal() {
        let dir = temp_dir("torn");
        write(&dir, 50, 1 << 20);
        let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
        let full = fs::read(&path).unwrap();
        // Batches of 10 (one per commit): a cut anywhere in the last batch loses that
        // batch (never acknowledged), and only that batch.
        for cut in [1usize, 5, 9, 20, 300] {
            fs::write(&path, &full[..full.len() - cut]).unwrap();
            let (records, torn) = read_all(&dir).unwrap();
            assert_eq!(records.len(), 40, "cut {cut}");
            assert!(torn > 0);
        }
        let mut garbled = full.clone();
        let n = garbled.len();
        garbled[n - 3] ^= 0xff;
        fs::write(&path, &garbled).unwrap();
        assert_eq!(read_all(&dir).unwrap().0.len(), 40);
        // A power loss that kept the end of the last batch but not its middle.
        let mut holed = full.clone();
        let n = holed.len();
        holed[n - 250..n - 100].fill(0);
        fs::write(&path, &holed).unwrap();
        assert_eq!(read_all(&dir).unwrap().0.len(), 40);
        // Zeros after the last good record (a torn write that only extended the file).
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0; 40]);
        fs::write(&path, &zeros).unwrap();
        let (records, torn) = read_all(&dir).unwrap();
        assert_eq!((records.len(), torn), (50, 40));
        // Damage in the batch before the last, with the last batch intact: corruption.
        let mut earlier = full.clone();
        let n = earlier.len();
        earlier[n - 700] ^= 0x01;
        fs::write(&path, &earlier).unwrap();
        let err = read_all(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum") || err.contains("length"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_offset() {
        let dir = temp_dir("corrupt");
        write(&dir, 50, 1 << 20);
        let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let offset = SEGMENT_HEADER_BYTES + 10 * 51 + 20;
        bytes[offset] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = read_all(&dir).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(path.to_str().unwrap()), "{text}");
        assert!(matches!(err, JournalError::Corrupt { offset: o, .. } if o as usize <= offset));
        assert!(text.contains("checksum") || text.contains("length"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gap_between_segments_and_unknown_version_are_refused() {
        let dir = temp_dir("gap");
        write(&dir, 1000, 8192);
        let segments = list_segments(&dir).unwrap();
        fs::remove_file(&segments[1].1).unwrap();
        let err = read_all(&dir).unwrap_err().to_string();
        assert!(err.contains("gap"), "{err}");
        assert!(err.contains(&segment_name(segments[2].0)), "{err}");

        let dir2 = temp_dir("version");
        write(&dir2, 5, 1 << 20);
        let (_, path) = list_segments(&dir2).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 9;
        fs::write(&path, &bytes).unwrap();
        let err = read_all(&dir2).unwrap_err().to_string();
        assert!(err.contains("unknown segment version 9"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&dir2).unwrap();
    }
}
