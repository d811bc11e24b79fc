//! Durability around an engine shard: recovery at start (`recovery.rs`), the journaling
//! stage in front of the engine thread, and the snapshot writer behind it.
//!
//! With durability on, a shard is a three-stage pipeline:
//!
//! ```text
//! submitters ─▶ queue ─▶ journal thread ─▶ batch channel ─▶ engine thread ─▶ event ring
//!                         (stamp, append,                    (apply, publish)
//!                          write, fdatasync)                        │ every N commands
//!                                                                   ▼
//!                                                           snapshot thread
//!                                                  (write atomically, prune old files)
//! ```
//!
//! The journal thread takes every queued request at once (up to a batch limit), stamps
//! each command with its ingest time, appends them all, writes the batch with one `write`
//! and covers it with one `fdatasync` (group commit), and only then hands the batch to the
//! engine. The engine therefore never holds a command that is not on disk, so nothing it
//! says (execution reports, market data, query answers) can be undone by a crash. While
//! the disk syncs one batch, the engine applies the previous one and the next one gathers
//! in the queue: under load, batches grow until the disk keeps up.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::Stamper;
use crate::command::Command;
use crate::engine::{Engine, EngineSpec, EventSink};
use crate::event::{Event, EventDigest};
use crate::journal::{
    list_numbered, list_segments, read_segment, JournalError, JournalWriter, SyncMode,
};
use crate::retention::Retention;
use crate::snapshot::{list_snapshots, read_snapshot, snapshot_last_ts};
use crate::types::InstrumentId;

mod layout;
mod recovery;

pub use layout::{check_shards, matches_shards, recorded_shards, SHARDS_FILE};
pub use recovery::{recover, verify, Recovery, Verified, VerifiedShard};

/// Where and how commands are journaled.
#[derive(Clone, Debug)]
pub struct DurabilityConfig {
    /// Data directory; shard `i` keeps its files in `<dir>/shard-<i>`.
    pub dir: PathBuf,
    /// When a batch counts as written.
    pub mode: SyncMode,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Commands between two snapshots (0: never).
    pub snapshot_every: u64,
    /// Most commands one journal batch (one write, one sync) takes.
    pub batch_max: usize,
}

impl DurabilityConfig {
    /// Defaults for `dir`: fsync mode, 64 MiB segments, a snapshot every million commands.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DurabilityConfig {
            dir: dir.into(),
            mode: SyncMode::Fsync,
            segment_bytes: 64 << 20,
            snapshot_every: 1_000_000,
            batch_max: 16_384,
        }
    }

    /// Directory of shard `shard`.
    pub fn shard_dir(&self, shard: usize) -> PathBuf {
        shard_dir(&self.dir, shard)
    }
}

/// Directory of shard `shard` under a data directory.
pub fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}"))
}

/// Live durability counters of one shard.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Commands appended.
    pub records: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Journal sequence the engine has applied up to.
    pub applied_seq: AtomicU64,
    /// Journal sequence on disk as the mode defines it (synced for `fsync` and
    /// `batch-async`, written for `none`): snapshots never get ahead of it.
    pub durable_seq: AtomicU64,
}

/// Set when journaling failed: the shard stops taking commands (nothing unjournaled is
/// ever applied), and the error is kept for health checks.
#[derive(Debug, Default)]
pub struct Failure {
    failed: AtomicBool,
    message: Mutex<Option<String>>,
}

impl Failure {
    /// Records the first failure.
    pub fn set(&self, message: String) {
        if let Ok(mut m) = self.message.lock() {
            m.get_or_insert(message);
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Whether something failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// What failed.
    pub fn message(&self) -> Option<String> {
        self.message.lock().ok().and_then(|m| m.clone())
    }
}

/// A snapshot to write: sequence and file bytes.
pub(crate) struct SnapshotJob {
    pub(crate) seq: u64,
    pub(crate) bytes: Vec<u8>,
}

/// Writes snapshots handed over by the engine thread and prunes what they make
/// unnecessary (see [`prune`]).
///
/// A snapshot at sequence `S` is written only once the journal is durable up to `S`
/// (in `batch-async` mode the engine runs ahead of the last sync): otherwise a crash could
/// leave a snapshot newer than the journal, and a gap after it. It never waits for
/// consumers outside the engine: their [`Retention`] floor decides what pruning keeps.
///
/// A failed snapshot or prune loses nothing (the journal still has everything): it is
/// reported in `warning`, which does not stop the shard.
pub(crate) fn snapshot_loop(
    dir: PathBuf,
    jobs: Receiver<SnapshotJob>,
    stats: Arc<JournalStats>,
    journal_failure: Arc<Failure>,
    warning: Arc<Failure>,
    retention: Option<(Arc<Retention>, usize)>,
) {
    for job in jobs {
        while stats.durable_seq.load(Ordering::Acquire) < job.seq {
            if journal_failure.is_failed() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = crate::snapshot::write_snapshot(&dir, job.seq, &job.bytes) {
            warning.set(format!("snapshot: {e}"));
            continue;
        }
        stats.snapshots.fetch_add(1, Ordering::Relaxed);
        let floor = retention.as_ref().and_then(|(r, shard)| r.floor(*shard));
        if let Err(e) = prune(&dir, floor) {
            warning.set(format!("pruning: {e}"));
        }
    }
}

/// Deletes the snapshots and journal segments recovery can no longer need: it keeps the
/// two newest snapshots (so a damaged newest one still has a complete fallback), the
/// newest one taken at or before the retention `floor` (where recovery for the slowest
/// consumer starts), and every segment from the oldest snapshot kept. With a floor older
/// than every snapshot, nothing is deleted.
fn prune(dir: &Path, floor: Option<u64>) -> Result<(), JournalError> {
    let snapshots = list_snapshots(dir)?;
    if snapshots.len() < 2 {
        return Ok(());
    }
    let mut keep_from = snapshots[snapshots.len() - 2].0;
    if let Some(floor) = floor {
        let within =
            snapshots.iter().rev().find(|(_, p)| snapshot_last_ts(p).is_ok_and(|ts| ts <= floor));
        match within {
            Some((seq, _)) => keep_from = keep_from.min(*seq),
            None => return Ok(()),
        }
    }
    for (seq, path) in &snapshots[..snapshots.len() - 2] {
        if *seq != keep_from {
            fs::remove_file(path).map_err(|e| JournalError::io(path, e))?;
        }
    }
    // Temporary files of snapshots a crash interrupted.
    for (_, path) in list_numbered(dir, "snapshot-", ".tgs.tmp")? {
        fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
    }
    let segments = list_segments(dir)?;
    for pair in segments.windows(2) {
        // Every record of pair[0] is below pair[1]'s first sequence.
        if pair[1].0 <= keep_from + 1 {
            fs::remove_file(&pair[0].1).map_err(|e| JournalError::io(&pair[0].1, e))?;
        }
    }
    crate::journal::sync_dir(dir)
}

/// What the journal stage runs with.
pub(crate) struct JournalStage {
    pub(crate) writer: JournalWriter,
    pub(crate) mode: SyncMode,
    pub(crate) batch_max: usize,
    /// Stamps each command (after the last journaled one: stamps never go backwards).
    pub(crate) stamper: Stamper,
    pub(crate) stats: Arc<JournalStats>,
    pub(crate) failure: Arc<Failure>,
}

/// The journal stage: stamps, appends, group-commits, forwards. Returns when a stop
/// request has been forwarded, the engine is gone, or the disk failed.
pub(crate) fn journal_loop<R: JournalItem>(
    stage: JournalStage,
    rx: Receiver<R>,
    mut forward: impl FnMut(Vec<R>) -> bool,
) {
    let JournalStage { mut writer, mode, batch_max, mut stamper, stats, failure } = stage;
    let interval = match mode {
        SyncMode::BatchAsync(d) => Some(d),
        _ => None,
    };
    let mut last_sync = Instant::now();
    loop {
        let first = match interval {
            Some(d) if writer.is_dirty() => {
                match rx.recv_timeout(d.saturating_sub(last_sync.elapsed())) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = writer.sync() {
                            return failure.set(e.to_string());
                        }
                        stats.durable_seq.store(writer.next_seq() - 1, Ordering::Release);
                        stats.syncs.fetch_add(1, Ordering::Relaxed);
                        last_sync = Instant::now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            _ => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let mut batch = Vec::with_capacity(64);
        let mut records = 0u64;
        let mut next = Some(first);
        while let Some(mut item) = next.take() {
            if let Some(command) = item.command_mut() {
                // Strictly increasing per shard: every command's events carry a timestamp
                // no other command of the shard has (readers tell commands apart by it).
                command.ts = stamper.stamp_as(command.ts);
                writer.append(command);
                records += 1;
            }
            let stop = item.is_stop();
            batch.push(item);
            if !stop && batch.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        let stop = batch.last().is_some_and(JournalItem::is_stop);
        let before = writer.pending_bytes();
        let sync = match mode {
            SyncMode::Fsync => records > 0,
            SyncMode::BatchAsync(d) => stop || last_sync.elapsed() >= d,
            SyncMode::None => false,
        };
        if let Err(e) = writer.commit(sync) {
            failure.set(e.to_string());
            return;
        }
        if sync {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            last_sync = Instant::now();
        }
        if sync || mode == SyncMode::None {
            stats.durable_seq.store(writer.next_seq() - 1, Ordering::Release);
        }
        if records > 0 {
            stats.records.fetch_add(records, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(before as u64, Ordering::Relaxed);
        }
        if !forward(batch) || stop {
            match writer.sync() {
                Ok(()) => stats.durable_seq.store(writer.next_seq() - 1, Ordering::Release),
                Err(e) => failure.set(e.to_string()),
            }
            return;
        }
    }
}

/// What the journal stage needs to know about a queued request.
pub(crate) trait JournalItem: Send {
    /// The command to journal and stamp, if the request is one.
    fn command_mut(&mut self) -> Option<&mut crate::command::Command>;
    /// Whether the request stops the shard.
    fn is_stop(&self) -> bool;
}
