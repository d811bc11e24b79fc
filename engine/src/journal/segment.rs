//! Reading a shard's journal: segment names, the listing in sequence order, and the
//! scan of one segment that tells a torn tail (cut, reported) from corruption (refused
//! with the file and offset). See the module docs of [`crate::journal`] for the layout.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    decode_payload, JournalError, Record, BATCH_BYTES_MAX, BATCH_CRC_TAG, BATCH_HEADER_BYTES,
    PAYLOAD_MAX, RECORD_BYTES_MIN, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
    SEGMENT_VERSION,
};
use crate::binary::ByteReader;

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
    /// Bytes after the last valid record that were a torn write (last segment only), the
    /// zeroed space the writer prepares after its batches included.
    pub torn_bytes: u64,
    /// Of those, up to the last byte that is not zero: what the unfinished write put there.
    pub torn_written: u64,
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
            let (torn_bytes, torn_written) = torn(&bytes);
            return Ok(SegmentScan { records: 0, valid_bytes: 0, torn_bytes, torn_written });
        }
        return Err(JournalError::corrupt(path, 0, "segment header is incomplete"));
    }
    let first_seq = check_header(path, &bytes, shard)?;
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
        if bytes[at..].iter().all(|&b| b == 0) {
            // Space the writer zeroed ahead of its batches: the end of the segment.
            break;
        }
        let batch = match check_batch(&bytes, at, expect) {
            Ok(batch) => batch,
            Err(what) => {
                // A damaged batch is a torn tail only at the end of the last segment: no
                // intact batch may follow it.
                if last && !intact_batch_after(&bytes, at, expect) {
                    let (torn_bytes, torn_written) = torn(&bytes[at..]);
                    let valid_bytes = at as u64;
                    return Ok(SegmentScan { records, valid_bytes, torn_bytes, torn_written });
                }
                return Err(JournalError::corrupt(path, at, what));
            }
        };
        records += read_batch(path, &bytes, &batch, &mut expect, &mut each)?;
        at = batch.end;
    }
    Ok(SegmentScan { records, valid_bytes: at as u64, torn_bytes: 0, torn_written: 0 })
}

/// A torn tail's length, and its length up to its last byte that is not zero.
fn torn(tail: &[u8]) -> (u64, u64) {
    let written = tail.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
    (tail.len() as u64, written as u64)
}

/// Checks a whole segment header (magic, version, shard) and returns its first sequence.
fn check_header(path: &Path, bytes: &[u8], shard: u32) -> Result<u64, JournalError> {
    let mut r = ByteReader::new(bytes);
    let incomplete = |_| JournalError::corrupt(path, 0, "segment header is incomplete");
    if r.bytes(SEGMENT_MAGIC.len()).map_err(incomplete)? != SEGMENT_MAGIC {
        return Err(JournalError::corrupt(path, 0, "not a tickgate journal segment"));
    }
    let version = r.u32().map_err(incomplete)?;
    if version != SEGMENT_VERSION {
        return Err(JournalError::corrupt(
            path,
            8,
            format!("unknown segment version {version} (this build reads {SEGMENT_VERSION})"),
        ));
    }
    let file_shard = r.u32().map_err(incomplete)?;
    if file_shard != shard {
        return Err(JournalError::corrupt(
            path,
            12,
            format!("segment belongs to shard {file_shard}, expected {shard}"),
        ));
    }
    r.u64().map_err(incomplete)
}

/// Reads the records of a verified batch (whose checksum covers them, so damage here is
/// corruption, never a torn tail), checking each one's frame, checksum and sequence.
/// Returns how many it read.
fn read_batch(
    path: &Path,
    bytes: &[u8],
    batch: &Batch,
    expect: &mut u64,
    each: &mut impl FnMut(Record),
) -> Result<u64, JournalError> {
    let mut records = 0;
    let mut at = batch.start;
    while at < batch.end {
        let mut r = ByteReader::new(&bytes[at..batch.end]);
        let len = r.u32().map_or(0, |len| len as usize);
        let end = RECORD_HEADER_BYTES + len;
        let invalid_length =
            || JournalError::corrupt(path, at, format!("invalid record length {len}"));
        if len == 0 || len > PAYLOAD_MAX || r.remaining() + 4 < end {
            return Err(invalid_length());
        }
        let crc = r.u32().map_err(|_| invalid_length())?;
        let payload = r.bytes(len).map_err(|_| invalid_length())?;
        if crc32c::crc32c(payload) != crc {
            return Err(JournalError::corrupt(path, at, "record checksum mismatch"));
        }
        let Some(record) = decode_payload(payload) else {
            return Err(JournalError::corrupt(path, at, "record is not a known command"));
        };
        if record.seq != *expect {
            return Err(JournalError::corrupt(
                path,
                at,
                format!("record sequence {} where {expect} was expected (gap)", record.seq),
            ));
        }
        each(record);
        *expect += 1;
        records += 1;
        at += end;
    }
    Ok(records)
}

/// The records of a verified batch: `bytes[start..end]`.
struct Batch {
    start: usize,
    end: usize,
}

/// Verifies the batch at `at`, which must start at sequence `expect`.
fn check_batch(bytes: &[u8], at: usize, expect: u64) -> Result<Batch, String> {
    let mut r = ByteReader::new(&bytes[at..]);
    if r.remaining() < BATCH_HEADER_BYTES {
        return Err("batch header cut short".into());
    }
    let (Ok(len), Ok(crc)) = (r.u32(), r.u32()) else {
        return Err("batch header cut short".into());
    };
    let len = len as usize;
    if !(8 + RECORD_BYTES_MIN..=BATCH_BYTES_MAX).contains(&len) || r.remaining() < len {
        return Err(format!("invalid batch length {len}"));
    }
    let body = r.bytes(len).map_err(|_| format!("invalid batch length {len}"))?;
    if crc32c::crc32c(body) ^ BATCH_CRC_TAG != crc {
        return Err("batch checksum mismatch".into());
    }
    let first = ByteReader::new(body).u64().map_err(|_| format!("invalid batch length {len}"))?;
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
        let first = ByteReader::new(&bytes[off + 8..]).u64().unwrap_or_default();
        plausible(first) && check_batch(bytes, off, first).is_ok()
    })
}
