//! Snapshots: the whole state of one engine shard at a journal sequence, in one file.
//!
//! File `snapshot-<seq, 20 digits>.tgs`:
//!
//! ```text
//! b"TGSNAP01" | u32 version | u32 shard | u64 journal seq | u64 last ingest ts | state... | u32 CRC32C
//! ```
//!
//! The CRC covers every byte before it. The state section is written by
//! [`Engine::encode_state`] (`engine/codec.rs`): table sizes, counters, the ledger, every
//! owned book's channel sequences and resting orders in priority order (so restoring
//! re-inserts them in the same queue positions), and (from version 3) the idempotency
//! keys. Files are written atomically: a temporary file, fsync, rename, fsync of the
//! directory; a reader never sees half a snapshot.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::binary::{ByteReader, Truncated};
use crate::engine::{Engine, EngineSpec};
use crate::journal::{list_numbered, sync_dir, JournalError};
pub use crate::state_error::StateError;
use crate::types::InstrumentId;

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TGSNAP01";
/// Snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 3;
/// Oldest snapshot version this build still reads (version 2 has no idempotency keys).
pub const SNAPSHOT_VERSION_MIN: u32 = 2;
const HEADER_BYTES: usize = 32;
const _: () = assert!(
    HEADER_BYTES == SNAPSHOT_MAGIC.len() + 4 + 4 + 8 + 8,
    "magic, version, shard, journal seq, last ingest ts"
);
const _: () = assert!(SNAPSHOT_VERSION_MIN <= SNAPSHOT_VERSION);

/// A snapshot read back from disk.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The file.
    pub path: PathBuf,
    /// Journal sequence of the last command the state includes.
    pub seq: u64,
    /// Ingest timestamp of that command (timestamps continue from it).
    pub last_ts: u64,
    /// The restored engine.
    pub engine: Engine,
}

/// File name of the snapshot at `seq`.
pub fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.tgs")
}

/// The snapshots in `dir`, ordered by sequence.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(dir, "snapshot-", ".tgs")
}

/// The ingest timestamp of the last command a snapshot includes, from its header alone
/// (not checked against the file's checksum: for choosing which snapshot to read or
/// keep, never for trusting its content).
pub fn snapshot_last_ts(path: &Path) -> Result<u64, JournalError> {
    use std::io::Read;
    let mut header = [0u8; HEADER_BYTES];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| JournalError::io(path, e))?;
    let corrupt = |offset: u64, what: &str| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    };
    let mut r = ByteReader::new(&header);
    if r.bytes(SNAPSHOT_MAGIC.len()) != Ok(&SNAPSHOT_MAGIC[..]) {
        return Err(corrupt(0, "not a tickgate snapshot"));
    }
    // Version (u32), shard (u32), sequence (u64), then the last timestamp (u64). The reads
    // cannot fail on a whole header, but nothing from a file is indexed unchecked.
    r.bytes(4 + 4 + 8).and_then(|_| r.u64()).map_err(|e| corrupt(e.at as u64, "truncated"))
}

/// Frames an engine's state as a snapshot file's bytes.
pub fn encode_snapshot(engine: &Engine, shard: u32, seq: u64, last_ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&last_ts.to_le_bytes());
    engine.encode_state(&mut out);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Writes snapshot bytes for `seq` into `dir` atomically and returns the file's path.
pub fn write_snapshot(dir: &Path, seq: u64, bytes: &[u8]) -> Result<PathBuf, JournalError> {
    fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
    let path = dir.join(snapshot_name(seq));
    let temp = dir.join(format!("{}.tmp", snapshot_name(seq)));
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| JournalError::io(&temp, e))?;
    file.write_all(bytes).map_err(|e| JournalError::io(&temp, e))?;
    file.sync_all().map_err(|e| JournalError::io(&temp, e))?;
    drop(file);
    fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads and verifies a snapshot file and restores the engine it holds.
pub fn read_snapshot(
    path: &Path,
    shard: u32,
    spec: &EngineSpec,
    owns: impl Fn(InstrumentId) -> bool,
) -> Result<LoadedSnapshot, JournalError> {
    let bytes = fs::read(path).map_err(|e| JournalError::io(path, e))?;
    let restored = decode_snapshot(&bytes, shard, spec, owns).map_err(|(offset, what)| {
        JournalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, what }
    })?;
    let RestoredSnapshot { seq, last_ts, engine } = restored;
    Ok(LoadedSnapshot { path: path.to_path_buf(), seq, last_ts, engine })
}

/// A snapshot's state, restored from its bytes (a file's, or a message's: a replica
/// starts from the bytes its primary sends).
#[derive(Debug)]
pub struct RestoredSnapshot {
    /// Sequence of the last command the state includes.
    pub seq: u64,
    /// Ingest timestamp of that command (timestamps continue from it).
    pub last_ts: u64,
    /// The restored engine.
    pub engine: Engine,
}

/// Verifies snapshot bytes (magic, version, shard, checksum) and restores the engine they
/// hold. `Err((offset, what))`: where and why they are not a snapshot of `shard`.
pub fn decode_snapshot(
    bytes: &[u8],
    shard: u32,
    spec: &EngineSpec,
    owns: impl Fn(InstrumentId) -> bool,
) -> Result<RestoredSnapshot, (usize, String)> {
    if bytes.len() < HEADER_BYTES + 4 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err((0, "not a tickgate snapshot".into()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = ByteReader::new(crc).u32().unwrap_or_default();
    if crc32c::crc32c(body) != crc {
        return Err((body.len(), "snapshot checksum mismatch".into()));
    }
    let mut header = ByteReader::new(&body[8..HEADER_BYTES]);
    // Cannot fail (the length was checked above), but a header field is still read as
    // one that could: nothing from outside is indexed unchecked.
    let field = |r: Result<u64, Truncated>| r.map_err(|e| (8 + e.at, "truncated".to_string()));
    let version = field(header.u32().map(u64::from))?;
    if !(u64::from(SNAPSHOT_VERSION_MIN)..=u64::from(SNAPSHOT_VERSION)).contains(&version) {
        return Err((
            8,
            format!(
                "unknown snapshot version {version} (this build reads \
                 {SNAPSHOT_VERSION_MIN} to {SNAPSHOT_VERSION})"
            ),
        ));
    }
    let file_shard = field(header.u32().map(u64::from))?;
    if file_shard != u64::from(shard) {
        return Err((12, format!("snapshot of shard {file_shard}, expected {shard}")));
    }
    let seq = field(header.u64())?;
    let last_ts = field(header.u64())?;
    let with_keys = version >= 3;
    let engine = Engine::restore_state(spec, owns, &body[HEADER_BYTES..], with_keys)
        .map_err(|e| (HEADER_BYTES + e.at, e.what))?;
    Ok(RestoredSnapshot { seq, last_ts, engine })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{
        Command, CommandKind, NewOrder, OrderType, StpMode, TradingStatus, Transfer,
    };
    use crate::event::Event;
    use crate::idempotency::IdempotencyKey;
    use crate::types::{AccountId, Amount, AssetId, OrderId, Price, Qty, Side, UnixNanos};

    fn busy_engine() -> (EngineSpec, Engine) {
        let spec = EngineSpec { accounts_max: 8, ..EngineSpec::default() };
        let mut e = Engine::new(&spec, |_| true).unwrap();
        let mut out: Vec<Event> = Vec::new();
        for a in 1..4u32 {
            for asset in 0..spec.assets.len() as u16 {
                let t = Transfer {
                    account: AccountId(a),
                    asset: AssetId(asset),
                    amount: Amount(1_000_000_000_000),
                    request_id: 0,
                };
                e.process(&Command { ts: UnixNanos(1), kind: CommandKind::Transfer(t) }, &mut out);
            }
        }
        let tick = spec.instruments[0].tick_size.0;
        let lot = spec.instruments[0].lot_size.0;
        for i in 0..60u64 {
            let o = NewOrder {
                key: i.is_multiple_of(5).then_some(IdempotencyKey(u128::from(i) << 70 | 3)),
                order_id: OrderId(i + 1),
                client_order_id: i,
                account: AccountId(1 + (i % 3) as u32),
                instrument: InstrumentId((i % 2) as u32),
                side: if (i / 2) % 2 == 0 { Side::Buy } else { Side::Sell },
                order_type: OrderType::Limit,
                price: Price(tick * (1000 + (i as i64 % 7) - if (i / 2) % 2 == 0 { 5 } else { 0 })),
                qty: Qty(lot * (1 + i as i64 % 4)),
                stp: StpMode::None,
            };
            e.process(&Command { ts: UnixNanos(2 + i), kind: CommandKind::New(o) }, &mut out);
        }
        let halt = TradingStatus { instrument: InstrumentId(1), halted: true };
        e.process(&Command { ts: UnixNanos(70), kind: CommandKind::Status(halt) }, &mut out);
        (spec, e)
    }

    #[test]
    fn snapshot_round_trip_restores_the_same_state_and_behaviour() {
        let (spec, mut original) = busy_engine();
        let bytes = encode_snapshot(&original, 0, 63, 61);
        let dir = std::env::temp_dir().join(format!("tickgate-snap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = write_snapshot(&dir, 63, &bytes).unwrap();
        assert_eq!(list_snapshots(&dir).unwrap(), vec![(63, path.clone())]);
        let loaded = read_snapshot(&path, 0, &spec, |_| true).unwrap();
        assert_eq!((loaded.seq, loaded.last_ts), (63, 61));
        let mut restored = loaded.engine;
        assert_eq!(restored.state_digest(), original.state_digest());
        assert_eq!(restored.counters(), original.counters());
        assert_eq!(restored.max_order_id(), original.max_order_id());
        assert_eq!(restored.is_halted(InstrumentId(1)), Some(true));
        assert_eq!(restored.is_halted(InstrumentId(0)), Some(false));
        let keys: Vec<_> = original.key_records().collect();
        assert_eq!(keys.len(), 12);
        assert_eq!(restored.key_records().collect::<Vec<_>>(), keys, "idempotency keys kept");
        restored.check_invariants();
        // The same next command gives the same events (queue positions were kept).
        let sweep = NewOrder {
            key: None,
            order_id: OrderId(500),
            client_order_id: 9,
            account: AccountId(2),
            instrument: InstrumentId(0),
            side: Side::Sell,
            order_type: OrderType::Market,
            price: Price(0),
            qty: Qty(spec.instruments[0].lot_size.0 * 20),
            stp: StpMode::None,
        };
        let cmd = Command { ts: UnixNanos(99), kind: CommandKind::New(sweep) };
        let (mut a, mut b): (Vec<Event>, Vec<Event>) = (Vec::new(), Vec::new());
        original.process(&cmd, &mut a);
        restored.process(&cmd, &mut b);
        assert!(a.len() > 3);
        assert_eq!(a, b);
        assert_eq!(restored.state_digest(), original.state_digest());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let (spec, e) = busy_engine();
        let bytes = encode_snapshot(&e, 0, 5, 5);
        let dir = std::env::temp_dir().join(format!("tickgate-snap-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        let path = write_snapshot(&dir, 5, &flipped).unwrap();
        let err = read_snapshot(&path, 0, &spec, |_| true).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        let path = write_snapshot(&dir, 6, &bytes[..bytes.len() - 10]).unwrap();
        assert!(read_snapshot(&path, 0, &spec, |_| true).is_err());
        let path = write_snapshot(&dir, 7, &bytes).unwrap();
        let err = read_snapshot(&path, 1, &spec, |_| true).unwrap_err().to_string();
        assert!(err.contains("shard 0, expected 1"), "{err}");
        // A spec with other tables does not silently accept the state.
        let small = EngineSpec { accounts_max: 4, ..spec.clone() };
        assert!(read_snapshot(&path, 0, &small, |_| true).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
