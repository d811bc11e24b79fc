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
//! The writer zeroes space ahead of its batches (a batch then overwrites zeros instead of
//! growing the file, see `writer.rs`), so a segment may end in zeros: where nothing but
//! zeros follows a batch, the segment ends.
//! Reading distinguishes a **torn tail** from **corruption**. A batch is the unit that a
//! crash or a power loss can damage: until its sync returns, none of its records was
//! acknowledged, and the disk may have kept any subset of its pages. So in the last
//! segment, a damaged batch with no intact batch after it is a torn tail (cut, and
//! reported); damage anywhere else, or followed by an intact batch, is corruption
//! (refused with the file and offset).
//!
//! Files: `record.rs` (a command as a record's payload), `segment.rs` (naming, listing and
//! reading segments, torn tail versus corruption), `writer.rs` (appending batches, group
//! commit, rotation, [`SyncMode`]), `error.rs` ([`JournalError`]).

mod error;
mod record;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

pub use error::JournalError;
pub use record::{decode_payload, decode_records, encode_record};
pub(crate) use segment::list_numbered;
pub use segment::{list_segments, read_segment, segment_name, SegmentScan};
pub use writer::{sync_dir, JournalWriter, SyncMode};

use crate::command::Command;

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
/// Smallest record (a framed status change): bounds how many sequences a byte range can
/// hold.
const RECORD_BYTES_MIN: usize = RECORD_HEADER_BYTES + record::PAYLOAD_BYTES_MIN;

// The layout constants depend on each other; a change to one that breaks another fails the
// build rather than a recovery.
const _: () = assert!(SEGMENT_HEADER_BYTES == 8 + 4 + 4 + 8, "magic, version, shard, first seq");
const _: () = assert!(SEGMENT_MAGIC.len() == 8);
const _: () = assert!(BATCH_HEADER_BYTES == 4 + 4 + 8, "length, checksum, first seq");
const _: () = assert!(RECORD_HEADER_BYTES == 4 + 4, "length, checksum");
const _: () = assert!(
    record::PAYLOAD_BYTES_MAX <= PAYLOAD_MAX,
    "every command's payload passes the length check on read"
);
const _: () = assert!(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + PAYLOAD_MAX <= BATCH_BYTES_MAX);

/// A command as journaled: its sequence and the command (with its ingest timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the shard's journal, from 1.
    pub seq: u64,
    /// The command.
    pub command: Command,
}
