//! Durable order history: the closed orders and fills `GET /api/v1/orders` and
//! `/api/v1/fills` answer survive restarts, however old their snapshot.
//!
//! The engine's snapshot holds books, balances and positions, not closed orders or fills,
//! and recovery replays only the journal after the newest snapshot. So the order store
//! keeps its own file, `<data-dir>/history/orders.tgh`: every user execution report it
//! applies is appended (written after every hub pass; synced to disk every second). At
//! start the file is read back, then the journal's replayed reports are applied on top,
//! each only where it is news: an order takes a report only if its per-account sequence is
//! past the last one the order took (it never goes back to an older state), and a fill
//! already kept is not added twice. The file is then rewritten compactly from the store's
//! content, and again whenever appends have
//! grown it well past that size.
//!
//! Layout: an 8-byte header `TGHIST01`, then fixed records of [`RECORD`] bytes:
//! `u32 crc32c` of the rest of the record, `u8 kind`, 3 zero bytes, and an execution
//! report as [`Event::to_words`] encodes it (11 little-endian u64s). A short or
//! mis-checksummed last record is a torn write and is cut; damage anywhere else refuses
//! the start with the file and offset, like the journal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tickgate_engine::binary::{ByteReader, ByteWriter};
use tickgate_engine::{Event, ExecReport, EVENT_WORDS};

/// File name inside the history directory.
pub const FILE: &str = "orders.tgh";
const MAGIC: &[u8; 8] = b"TGHIST01";
/// Bytes per record.
pub const RECORD: usize = 8 + EVENT_WORDS * 8;
/// Appends past this size (and past four times the last compact size) trigger a rewrite.
const COMPACT_MIN: u64 = 64 << 20;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An execution report, applied as it came from the engine.
    Report(ExecReport),
    /// An order as the store last saw it (a compaction record): id, client id, market,
    /// side, type, price, leaves (`leaves_qty`), filled (`cum_qty`), status (`kind`),
    /// reason, timestamp, the sequence of the report that last changed it, and when it
    /// was placed (`last_qty`: its engine timestamp; 0 in files from before 2026-12-07).
    Order(ExecReport),
    /// A fill (a compaction record): its sequence, time, order, market, side, price and
    /// quantity (`last_price`, `last_qty`).
    Fill(ExecReport),
}

impl Entry {
    fn parts(&self) -> (u8, &ExecReport) {
        match self {
            Entry::Report(r) => (0, r),
            Entry::Order(r) => (1, r),
            Entry::Fill(r) => (2, r),
        }
    }

    /// The report inside.
    pub fn report(&self) -> &ExecReport {
        self.parts().1
    }

    /// Appends the record's [`RECORD`] bytes (checksummed) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, r) = self.parts();
        let mut w = ByteWriter::new(out);
        let start = w.position();
        w.put_u32(0); // the checksum, once the rest is written
        w.put_bytes(&[kind, 0, 0, 0]);
        for word in Event::Exec(*r).to_words() {
            w.put_u64(word);
        }
        let crc = crc32c::crc32c(w.written_since(start + 4));
        w.patch_u32(start, crc);
    }

    /// The entry of one record's bytes; `None` if damaged or unknown.
    pub fn decode(record: &[u8]) -> Option<Entry> {
        let mut reader = ByteReader::new(record);
        let crc = reader.u32().ok()?;
        if crc32c::crc32c(record.get(4..)?) != crc {
            return None;
        }
        let kind = reader.u8().ok()?;
        reader.bytes(3).ok()?;
        let mut words = [0u64; EVENT_WORDS];
        for w in &mut words {
            *w = reader.u64().ok()?;
        }
        let Some(Event::Exec(r)) = Event::from_words(&words) else { return None };
        Some(match kind {
            0 => Entry::Report(r),
            1 => Entry::Order(r),
            2 => Entry::Fill(r),
            _ => return None,
        })
    }
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every intact record, in file order.
    pub entries: Vec<Entry>,
    /// Bytes of a torn last record that were cut.
    pub torn_bytes: u64,
}

/// Reads `<dir>/orders.tgh` (missing: nothing). A torn last record is cut; a bad header or
/// a damaged record with intact records after it is an error naming the file and offset.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    let path = dir.join(FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let damaged = |offset: usize, what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("order history {} at offset {offset}: {what}", path.display()),
        )
    };
    if bytes.len() < MAGIC.len() {
        // A crash while the header was written: nothing was recorded yet.
        return Ok(Loaded { entries: Vec::new(), torn_bytes: bytes.len() as u64 });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(damaged(0, "not an order history file of this version"));
    }
    let body = &bytes[MAGIC.len()..];
    let whole = body.len() / RECORD;
    let mut loaded = Loaded { entries: Vec::with_capacity(whole), torn_bytes: 0 };
    let records: Vec<&[u8]> = body.chunks_exact(RECORD).collect();
    for (i, record) in records.iter().enumerate() {
        if let Some(e) = Entry::decode(record) {
            loaded.entries.push(e);
            continue;
        }
        // Damage that runs to the end of the file is a torn write (a crash, or a power
        // loss that left unwritten blocks); damage with an intact record after it is not.
        if records[i + 1..].iter().any(|r| Entry::decode(r).is_some()) {
            return Err(damaged(MAGIC.len() + i * RECORD, "damaged record (checksum)"));
        }
        loaded.torn_bytes = ((whole - i) * RECORD) as u64;
        break;
    }
    loaded.torn_bytes += (body.len() % RECORD) as u64;
    Ok(loaded)
}

/// The open history file, appended to by the order store.
#[derive(Debug)]
pub struct HistoryWriter {
    dir: PathBuf,
    file: File,
    pending: Vec<u8>,
    len: u64,
    compact_at: u64,
    unsynced: bool,
}

impl HistoryWriter {
    /// Replaces `<dir>/orders.tgh` with exactly `entries`, atomically (temporary file,
    /// sync, rename, directory sync), and opens it for appending.
    pub fn create(dir: &Path, entries: impl IntoIterator<Item = Entry>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut bytes = MAGIC.to_vec();
        for e in entries {
            e.encode(&mut bytes);
        }
        let path = dir.join(FILE);
        crate::atomic_file::replace(&path, &bytes)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = bytes.len() as u64;
        Ok(HistoryWriter {
            dir: dir.to_path_buf(),
            file,
            pending: Vec::new(),
            len,
            compact_at: COMPACT_MIN.max(len.saturating_mul(4)),
            unsynced: false,
        })
    }

    /// Queues one record (written by [`HistoryWriter::flush`]).
    pub fn push(&mut self, entry: Entry) {
        entry.encode(&mut self.pending);
    }

    /// Writes what was queued (into the page cache: it survives the process). On failure
    /// (a full disk) the queued records are dropped and a partial append is cut off, so
    /// the file stays whole: what it holds is still exact, only incomplete.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.pending);
        let bytes = self.pending.len() as u64;
        self.pending.clear();
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes;
        self.unsynced = true;
        Ok(())
    }

    /// A compaction failed: try again only after the file has doubled.
    pub fn postpone_compaction(&mut self) {
        self.compact_at = self.len.saturating_mul(2).max(self.compact_at);
    }

    /// Whether the file has grown enough to be rewritten from the store.
    pub fn wants_compaction(&self) -> bool {
        self.len >= self.compact_at
    }

    /// The directory the file lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A handle to sync when something was written since the last call.
    pub fn take_unsynced(&mut self) -> Option<io::Result<File>> {
        std::mem::take(&mut self.unsynced).then(|| self.file.try_clone())
    }

    /// Current size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{
        AccountId, ExecKind, InstrumentId, OrderId, OrderType, Price, Qty, Seq, Side, UnixNanos,
    };

    fn report(seq: u64) -> ExecReport {
        ExecReport {
            account: AccountId(3),
            seq: Seq(seq),
            ts: UnixNanos(seq * 10),
            kind: ExecKind::PartiallyFilled,
            reason: None,
            instrument: InstrumentId(1),
            order_id: OrderId(seq),
            client_order_id: 9,
            side: Side::Sell,
            order_type: OrderType::Limit,
            price: Price(100),
            last_price: Price(101),
            last_qty: Qty(2),
            leaves_qty: Qty(3),
            cum_qty: Qty(4),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tickgate-history-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_then_appends() {
        let dir = temp_dir("round");
        let mut w = HistoryWriter::create(&dir, [Entry::Order(report(1)), Entry::Fill(report(2))])
            .expect("create");
        w.push(Entry::Report(report(3)));
        w.push(Entry::Fill(report(4)));
        w.flush().expect("flush");
        assert!(w.take_unsynced().is_some());
        assert!(w.take_unsynced().is_none(), "nothing new since");
        let loaded = load(&dir).expect("load");
        assert_eq!(
            loaded.entries,
            vec![
                Entry::Order(report(1)),
                Entry::Fill(report(2)),
                Entry::Report(report(3)),
                Entry::Fill(report(4))
            ]
        );
        assert_eq!(loaded.torn_bytes, 0);
        assert_eq!(w.len(), (8 + 4 * RECORD) as u64);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn torn_tail_is_cut_and_damage_inside_refuses() {
        let dir = temp_dir("torn");
        let mut w = HistoryWriter::create(&dir, []).expect("create");
        for seq in 1..=3 {
            w.push(Entry::Report(report(seq)));
        }
        w.flush().expect("flush");
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).expect("read");

        // Half a record at the end: cut.
        std::fs::write(&path, &bytes[..bytes.len() - RECORD / 2]).expect("write");
        let loaded = load(&dir).expect("a torn tail loads");
        assert_eq!(loaded.entries.len(), 2);
        assert_eq!(loaded.torn_bytes, (RECORD - RECORD / 2) as u64);

        // A whole last record with a bad checksum: also a torn write.
        let mut last = bytes.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        std::fs::write(&path, &last).expect("write");
        let loaded = load(&dir).expect("a torn last record loads");
        assert_eq!((loaded.entries.len(), loaded.torn_bytes), (2, RECORD as u64));

        // The last two records zeroed (blocks a power loss never wrote): torn as well.
        let mut zeroed = bytes.clone();
        zeroed[8 + RECORD..].fill(0);
        std::fs::write(&path, &zeroed).expect("write");
        let loaded = load(&dir).expect("a zeroed tail loads");
        assert_eq!((loaded.entries.len(), loaded.torn_bytes), (1, 2 * RECORD as u64));

        // The first record damaged, intact ones after it: refused, with file and offset.
        let mut inside = bytes.clone();
        inside[8 + 20] ^= 1;
        std::fs::write(&path, &inside).expect("write");
        let err = load(&dir).expect_err("damage inside is refused").to_string();
        assert!(err.contains("orders.tgh") && err.contains("offset 8"), "{err}");

        // Another format.
        std::fs::write(&path, b"TGHIST99").expect("write");
        assert!(load(&dir).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(load(&dir).expect("missing file").entries.is_empty());
    }
}
