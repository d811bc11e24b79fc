//! Recovery: a shard rebuilt from its newest usable snapshot and the journal after it, and
//! the from-scratch replay that checks a data directory.

use super::*;
use crate::journal::SegmentScan;

/// What recovery of one shard did.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The shard.
    pub shard: usize,
    /// Snapshot the state started from, with its sequence.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Newer snapshots that failed verification and were passed over, with the reason.
    pub skipped_snapshots: Vec<String>,
    /// Journal records applied after the snapshot.
    pub replayed: u64,
    /// Torn tail cut from the last segment: file, bytes cut, and of those what the
    /// unfinished write had put there (the rest is zeroed space the writer prepares).
    pub torn: Option<(PathBuf, u64, u64)>,
    /// Sequence the next command gets.
    pub next_seq: u64,
    /// Ingest timestamp of the last recovered command (0 if none).
    pub last_ts: u64,
    /// Recovery could not start as early as the retention floor asked (see
    /// [`crate::Retention`]).
    pub retention_warning: Option<String>,
    /// Time recovery took.
    pub elapsed: Duration,
}

impl Recovery {
    /// Whether the shard started from nothing (no snapshot, no journal).
    pub fn is_fresh(&self) -> bool {
        self.next_seq == 1
    }
}

struct FnSink<'a>(&'a mut dyn FnMut(&Event));

impl EventSink for FnSink<'_> {
    #[inline]
    fn push(&mut self, event: Event) {
        (self.0)(&event);
    }
}

/// Rebuilds shard `shard` from `dir`: the newest snapshot that verifies, then every
/// journal record after it, in order, each event passed to `on_event`. A torn last record
/// is cut from the file (and reported); any other damage, a gap in sequences or an
/// unknown version is an error naming the file and offset, and nothing starts.
///
/// With a retention `floor` (see [`crate::Retention`]), the start is the newest snapshot
/// taken at or before it, so that `on_event` sees every event of the commands after it.
pub fn recover(
    dir: &Path,
    shard: usize,
    spec: &EngineSpec,
    owns: impl Fn(InstrumentId) -> bool + Copy,
    floor: Option<u64>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Engine, Recovery), JournalError> {
    let started = Instant::now();
    let mut report = Recovery { shard, ..Recovery::default() };
    let segments = list_segments(dir)?;
    let start = start_snapshot(dir, shard, spec, owns, floor, &segments, &mut report)?;
    let from_seq = start.as_ref().map_or(0, |s| s.seq);
    let mut engine = match start {
        Some(loaded) => {
            report.last_ts = loaded.last_ts;
            report.snapshot = Some((loaded.path, loaded.seq));
            loaded.engine
        }
        None => Engine::new(spec, owns).map_err(|e| JournalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            what: format!("engine spec: {e}"),
        })?,
    };
    let mut sink = FnSink(on_event);
    let replay = replay_segments(&segments, shard, from_seq + 1, &mut engine, &mut sink)
        .map_err(|e| with_skipped_snapshots(e, &report.skipped_snapshots))?;
    if let Some((path, valid, torn)) = replay.torn {
        cut(&path, valid)?;
        report.torn = Some((path, torn.torn_bytes, torn.torn_written));
    }
    if replay.records > 0 {
        report.last_ts = replay.last_ts;
    }
    report.replayed = replay.records;
    let next = replay.next;
    report.next_seq = next;
    report.elapsed = started.elapsed();
    Ok((engine, report))
}

/// The snapshot recovery starts from: the newest that verifies and, with a `floor`, was
/// taken at or before it. `None`: from the empty engine, which is right when there is no
/// usable snapshot, or when none is old enough and the journal still starts at sequence 1.
/// When none is old enough and the journal's start was pruned, the oldest snapshot that
/// verifies is the best there is; [`Recovery::retention_warning`] says so.
fn start_snapshot(
    dir: &Path,
    shard: usize,
    spec: &EngineSpec,
    owns: impl Fn(InstrumentId) -> bool + Copy,
    floor: Option<u64>,
    segments: &[(u64, PathBuf)],
    report: &mut Recovery,
) -> Result<Option<crate::snapshot::LoadedSnapshot>, JournalError> {
    let snapshots = list_snapshots(dir)?;
    let mut too_new = 0;
    for (_, path) in snapshots.iter().rev() {
        if let Some(floor) = floor {
            if snapshot_last_ts(path).is_ok_and(|ts| ts > floor) {
                too_new += 1;
                continue;
            }
        }
        match read_snapshot(path, shard as u32, spec, owns) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e) => report.skipped_snapshots.push(e.to_string()),
        }
    }
    let journal_from_start = segments.first().is_none_or(|(first, _)| *first <= 1);
    if too_new == 0 || journal_from_start {
        return Ok(None);
    }
    for (_, path) in &snapshots {
        if let Ok(loaded) = read_snapshot(path, shard as u32, spec, owns) {
            report.retention_warning = Some(format!(
                "no snapshot at or before the retention floor {floor:?} and the journal's \
                 start is pruned: recovery starts from {} (consumers may miss events before it)",
                path.display()
            ));
            return Ok(Some(loaded));
        }
    }
    Ok(None)
}

/// A replay that could not start names the snapshots passed over on the way: when every
/// snapshot that could have started it is damaged, the gap it reports is their doing, not
/// a missing segment's.
fn with_skipped_snapshots(e: JournalError, skipped: &[String]) -> JournalError {
    match e {
        JournalError::Corrupt { path, offset, what } if !skipped.is_empty() => {
            let what = format!(
                "{what}; snapshots passed over as unreadable (the journal before them was \
                 pruned, so recovery needs one): {}",
                skipped.join("; ")
            );
            JournalError::Corrupt { path, offset, what }
        }
        e => e,
    }
}

struct Replay {
    records: u64,
    next: u64,
    last_ts: u64,
    /// Torn tail found: file, valid bytes, and the scan that found it.
    torn: Option<(PathBuf, u64, SegmentScan)>,
}

/// Commands one hand-over from the reading thread to the replaying one carries.
const REPLAY_CHUNK: usize = 4096;

/// Applies every record from sequence `next` on, checking that segments follow each
/// other without gap or overlap. Segments wholly before `next` are not read.
///
/// Two threads: one reads, checks (CRC32C) and decodes the segments, the calling one
/// applies the commands, so the engine never waits for the disk or the checksums. Records
/// are applied strictly in journal order, so the result is the same as one thread's.
fn replay_segments(
    segments: &[(u64, PathBuf)],
    shard: usize,
    next: u64,
    engine: &mut Engine,
    sink: &mut FnSink<'_>,
) -> Result<Replay, JournalError> {
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Vec<Command>>(8);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<Command>>(16);
    std::thread::scope(|scope| {
        // Owned by this closure, so that if applying panics, unwinding drops them and the
        // reader's next hand-over fails instead of blocking the scope forever.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        let reader = std::thread::Builder::new()
            .name(format!("replay-read-{shard}"))
            .spawn_scoped(scope, move || {
                let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
                let read = read_segments(segments, shard, next, |command| {
                    chunk.push(command);
                    if chunk.len() == REPLAY_CHUNK {
                        let fresh = empty_rx
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(REPLAY_CHUNK));
                        // The replaying side only stops early if it panicked.
                        let _ = full_tx.send(std::mem::replace(&mut chunk, fresh));
                    }
                });
                if !chunk.is_empty() {
                    let _ = full_tx.send(chunk);
                }
                read
            })
            .map_err(|e| JournalError::io(Path::new("replay reader thread"), e))?;
        let (mut records, mut last_ts) = (0u64, 0u64);
        for mut chunk in full_rx.iter() {
            for command in &chunk {
                engine.process(command, sink);
            }
            if let Some(last) = chunk.last() {
                last_ts = last.ts.0;
            }
            records += chunk.len() as u64;
            chunk.clear();
            let _ = empty_tx.try_send(chunk);
        }
        let mut out = reader.join().map_err(|_| {
            JournalError::io(Path::new("replay reader thread"), std::io::Error::other("panicked"))
        })??;
        debug_assert_eq!(out.records, records);
        out.records = records;
        out.last_ts = last_ts;
        Ok(out)
    })
}

/// Reads, checks and decodes every record from sequence `next` on, handing each command
/// to `each` (see [`replay_segments`]); `last_ts` of the result is left 0.
fn read_segments(
    segments: &[(u64, PathBuf)],
    shard: usize,
    mut next: u64,
    mut each: impl FnMut(Command),
) -> Result<Replay, JournalError> {
    // A segment's records end where the next segment begins.
    let first = (0..segments.len())
        .position(|i| segments.get(i + 1).is_none_or(|(following, _)| *following > next))
        .unwrap_or(segments.len());
    let mut out = Replay { records: 0, next, last_ts: 0, torn: None };
    for (i, (first_seq, path)) in segments.iter().enumerate().skip(first) {
        let joins = if i == first { *first_seq <= next } else { *first_seq == next };
        if !joins {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                offset: 16,
                what: format!(
                    "segment starts at sequence {first_seq} but the state before it ends at {} \
                     (gap or overlap)",
                    next - 1
                ),
            });
        }
        let last = i + 1 == segments.len();
        let mut records = 0u64;
        let scan = read_segment(path, shard as u32, None, last, |record| {
            if record.seq >= next {
                each(record.command);
                records += 1;
            }
        })?;
        // Records before `next` (already in the snapshot) were skipped, the rest applied.
        next = next.max(first_seq + scan.records);
        out.records += records;
        if scan.torn_bytes > 0 {
            out.torn = Some((path.clone(), scan.valid_bytes, scan));
        }
    }
    out.next = next;
    Ok(out)
}

/// Cuts a torn tail off `path` (or removes a segment whose header never made it).
fn cut(path: &Path, valid_bytes: u64) -> Result<(), JournalError> {
    if valid_bytes == 0 {
        return fs::remove_file(path).map_err(|e| JournalError::io(path, e));
    }
    let file = OpenOptions::new().write(true).open(path).map_err(|e| JournalError::io(path, e))?;
    file.set_len(valid_bytes).map_err(|e| JournalError::io(path, e))?;
    file.sync_all().map_err(|e| JournalError::io(path, e))
}

/// What a from-scratch replay of a data directory found.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Per shard: journal records replayed, state digest, event digest and event count.
    pub shards: Vec<VerifiedShard>,
}

/// One shard's replay.
#[derive(Clone, Debug)]
pub struct VerifiedShard {
    /// The shard.
    pub shard: usize,
    /// Snapshot the replay had to start from (the journal before it was pruned), if any.
    pub from_snapshot: Option<u64>,
    /// Records replayed.
    pub records: u64,
    /// Sequence of the last record.
    pub last_seq: u64,
    /// [`Engine::state_digest`] after the last record.
    pub state_digest: u64,
    /// Digest of every event the replay produced.
    pub event_digest: u64,
    /// Events produced.
    pub events: u64,
    /// Per asset: the sum over every account after the replay.
    pub asset_totals: Vec<i128>,
    /// Per asset: the sum of every applied transfer, the only way money enters or leaves
    /// (`None` when the replay started from a snapshot and cannot see earlier transfers).
    /// Equal to `asset_totals` when no money was created or lost.
    pub transfers: Option<Vec<i128>>,
}

/// Replays every shard's journal in `dir` from the beginning (from the oldest snapshot if
/// older segments were pruned) without changing any file, and digests the result. Two
/// runs over the same files give the same digests; the state digest equals what the live
/// engine reported at the same sequence.
pub fn verify(dir: &Path, spec: &EngineSpec, shards: usize) -> Result<Verified, JournalError> {
    let mut out = Vec::with_capacity(shards);
    for shard in 0..shards {
        let sdir = shard_dir(dir, shard);
        let owns = move |i: InstrumentId| i.shard(shards) == shard;
        let segments = list_segments(&sdir)?;
        let (mut engine, from_snapshot, next) = match segments.first() {
            Some((1, _)) | None => (
                Engine::new(spec, owns).map_err(|e| JournalError::Corrupt {
                    path: sdir.clone(),
                    offset: 0,
                    what: format!("engine spec: {e}"),
                })?,
                None,
                1,
            ),
            Some((first, path)) => {
                // Pruned: the oldest snapshot that reaches the first segment.
                let snapshot = list_snapshots(&sdir)?
                    .into_iter()
                    .find(|(seq, _)| seq + 1 >= *first)
                    .ok_or_else(|| JournalError::Corrupt {
                        path: path.clone(),
                        offset: 16,
                        what: format!("journal starts at {first} and no snapshot covers before"),
                    })?;
                let loaded = read_snapshot(&snapshot.1, shard as u32, spec, owns)?;
                (loaded.engine, Some(loaded.seq), loaded.seq + 1)
            }
        };
        let mut digest = EventDigest::default();
        let mut transfers = vec![0i128; spec.assets.len()];
        let mut add = |e: &Event| {
            digest.add(e);
            if let Event::Transfer(r) = e {
                if let Some(t) = transfers.get_mut(usize::from(r.asset.0)) {
                    *t += i128::from(r.amount.0);
                }
            }
        };
        let replay = replay_segments(&segments, shard, next, &mut engine, &mut FnSink(&mut add))?;
        let (records, next) = (replay.records, replay.next);
        out.push(VerifiedShard {
            shard,
            from_snapshot,
            records,
            last_seq: next - 1,
            state_digest: engine.state_digest(),
            event_digest: digest.value(),
            events: digest.count,
            asset_totals: (0..spec.assets.len())
                .map(|a| engine.ledger().asset_total(crate::types::AssetId(a as u16)))
                .collect(),
            transfers: from_snapshot.is_none().then_some(transfers),
        });
    }
    Ok(Verified { shards: out })
}
