//! Replays a recorded command journal into a live engine: the same commands in the same
//! order, paced by their recorded ingest times at 1x, Nx or full speed. The engine is
//! deterministic, so with the recording's stamps ([`ReplayStamps::Recorded`]) the
//! replaying engine reaches the recorded state and publishes the recorded events; with
//! its own clock's ([`ReplayStamps::Clock`]) its events carry fresh times, so
//! `tickgate-tools load` measures the gateway's latency under a realistic, bursty and
//! reproducible stream, and the state differs only where time counts (when idempotency
//! keys were used, and so which have expired).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickgate_engine::durable::{recorded_shards, shard_dir};
use tickgate_engine::journal::{list_segments, read_segment, JournalError, Record};
use tickgate_engine::runtime::{EngineHandle, SubmitError};
use tickgate_engine::{CommandKind, UnixNanos};

use crate::worker::Worker;

/// What a replay has done so far.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Commands queued on the engine.
    pub submitted: AtomicU64,
    /// Commands in the journal.
    pub total: AtomicU64,
    /// Set when every command was submitted.
    pub done: AtomicBool,
}

/// Which stamps replayed commands get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayStamps {
    /// The recording's: the recorded state and events, byte for byte (as long as nothing
    /// else is submitted meanwhile: a later stamp given to another command makes the
    /// recorded ones after it take the clock's).
    #[default]
    Recorded,
    /// This engine's clock's, as live commands get: latency from the events' stamps means
    /// what it means live.
    Clock,
}

/// A running replay thread; stops when dropped or on [`JournalReplay::stop`].
#[derive(Debug)]
pub struct JournalReplay {
    stats: Arc<ReplayStats>,
    worker: Worker,
}

/// The commands of one shard's journal, in order (segments read in full; a torn tail is
/// left out, damage is an error).
pub fn load(dir: &Path, shard: usize) -> Result<Vec<Record>, JournalError> {
    let dir = shard_dir(dir, shard);
    let segments = list_segments(&dir)?;
    let mut out = Vec::new();
    let mut expect = None;
    for (i, (_, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        read_segment(path, shard as u32, expect, last, |r| out.push(r))?;
        expect = out.last().map(|r: &Record| r.seq + 1);
    }
    Ok(out)
}

impl JournalReplay {
    /// Loads shard 0's journal of `data_dir` and starts replaying it into `handle` at
    /// `speed` times the recorded pace (`None`: as fast as the engine takes it), with
    /// `stamps`. Order ids the handle allocates afterwards are moved above every id in the
    /// journal, so live orders never collide with replayed ones.
    pub fn start(
        handle: EngineHandle,
        data_dir: PathBuf,
        speed: Option<f64>,
        stamps: ReplayStamps,
    ) -> Result<JournalReplay, JournalError> {
        // Replays are single-shard: a recording of several would lose all but shard 0.
        if let Some(shards) = recorded_shards(&data_dir)?.filter(|n| *n > 1) {
            return Err(JournalError::Corrupt {
                path: data_dir,
                offset: 0,
                what: format!("a recording of {shards} shards: replays take one-shard recordings"),
            });
        }
        let records = load(&data_dir, 0)?;
        let max_id = records
            .iter()
            .filter_map(|r| match r.command.kind {
                CommandKind::New(o) => Some(o.order_id.0),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let _ = handle.reserve_order_ids(max_id);
        let stats = Arc::new(ReplayStats::default());
        stats.total.store(records.len() as u64, Ordering::Relaxed);
        let st = Arc::clone(&stats);
        let worker =
            Worker::spawn("replay", move |stop| run(&handle, &records, (speed, stamps), stop, &st));
        Ok(JournalReplay { stats, worker })
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<ReplayStats> {
        &self.stats
    }

    /// Stops the thread and waits for it (dropping the replay does the same).
    pub fn stop(self) {
        self.worker.stop();
    }
}

/// The longest a paced replay sleeps before it looks at its stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(50);

fn run(
    handle: &EngineHandle,
    records: &[Record],
    (speed, stamps): (Option<f64>, ReplayStamps),
    stop: &AtomicBool,
    stats: &ReplayStats,
) {
    let Some(first) = records.first() else {
        stats.done.store(true, Ordering::Release);
        return;
    };
    let start = Instant::now();
    for r in records {
        if let Some(speed) = speed.filter(|s| *s > 0.0) {
            let offset = r.command.ts.0.saturating_sub(first.command.ts.0) as f64 / speed;
            let due = start + Duration::from_nanos(offset as u64);
            // In slices: a stop (the server shutting down) must not wait for a command
            // the recording has minutes later.
            loop {
                let now = Instant::now();
                if stop.load(Ordering::Acquire) {
                    return;
                }
                if due <= now {
                    break;
                }
                std::thread::sleep((due - now).min(STOP_CHECK));
            }
        }
        let submitted = loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            // Transfers go to shard 0 like the recorded ones (replays are single-shard).
            let ts = match stamps {
                ReplayStamps::Recorded => r.command.ts,
                ReplayStamps::Clock => UnixNanos(0),
            };
            match handle.submit_stamped(r.command.kind, ts) {
                Ok(()) => break true,
                Err(SubmitError::QueueFull) => std::thread::sleep(Duration::from_micros(50)),
                Err(_) => break false,
            }
        };
        if !submitted {
            return;
        }
        stats.submitted.fetch_add(1, Ordering::Relaxed);
    }
    stats.done.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::runtime::{EngineRuntime, RuntimeConfig};
    use tickgate_engine::{AccountId, Amount, AssetId, Command, Transfer};

    /// A paced replay whose next command is an hour away stops when told, not an hour
    /// later (a server shutting down waits for it).
    #[test]
    fn a_paced_replay_stops_between_distant_commands() {
        let runtime = EngineRuntime::start(RuntimeConfig::default()).expect("engine");
        let transfer = |ts: u64| Record {
            seq: 1,
            command: Command {
                ts: UnixNanos(ts),
                kind: CommandKind::Transfer(Transfer {
                    account: AccountId(1),
                    asset: AssetId(0),
                    amount: Amount(1),
                    request_id: 0,
                }),
            },
        };
        let records = vec![transfer(0), transfer(3_600_000_000_000)];
        let stats = Arc::new(ReplayStats::default());
        let (handle, st) = (runtime.handle(), Arc::clone(&stats));
        let worker = Worker::spawn("replay-test", move |stop| {
            run(&handle, &records, (Some(1.0), ReplayStamps::Clock), stop, &st)
        });
        while stats.submitted.load(Ordering::Acquire) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            worker.stop();
            let _ = done.send(());
        });
        // Bounded, so a regression fails instead of hanging the run.
        assert!(stopped.recv_timeout(Duration::from_secs(30)).is_ok(), "the replay never stopped");
        assert_eq!(stats.submitted.load(Ordering::Relaxed), 1);
        runtime.shutdown();
    }
}
